//! A plugin written by hand against the C ABI (no dependency on
//! mayfly-provider-api, as a plugin in another language would be). By
//! default its header is valid, `create` succeeds, and then its calls break
//! the protocol: `list` answers malformed JSON, `identify` never answers, and
//! every other method answers a malformed error. Features break the header
//! itself instead (see Cargo.toml).
#![allow(unsafe_code)]
// With `no-header` nothing is exported, so the rest goes unused.
#![cfg_attr(feature = "no-header", allow(dead_code))]

use std::ffi::c_void;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    ptr: *const u8,
    len: usize,
}

type Done = unsafe extern "C" fn(ctx: *mut c_void, status: u32, body: Buf);

#[repr(C)]
#[derive(Debug)]
pub struct FnTable {
    size: usize,
    create: unsafe extern "C" fn(Buf, *const c_void, Done, *mut c_void) -> *mut c_void,
    call: Option<unsafe extern "C" fn(*mut c_void, Buf, Buf, Done, *mut c_void)>,
    destroy: unsafe extern "C" fn(*mut c_void),
}

#[repr(C)]
#[derive(Debug)]
pub struct Header {
    magic: u64,
    abi_major: u32,
    abi_minor: u32,
    table: &'static FnTable,
}

fn buf(bytes: &[u8]) -> Buf {
    Buf { ptr: bytes.as_ptr(), len: bytes.len() }
}

const INFO: &[u8] = br#"{"name":"raw","limits":{"bootstrap_limit_ms":60000,"credential_ttl_ms":60000,"max_nodes":4},"capabilities":{"entrypoint":null},"schemes":["file"]}"#;

unsafe extern "C" fn create(_settings: Buf, _host: *const c_void, done: Done, ctx: *mut c_void) -> *mut c_void {
    // SAFETY: the host's callback and context, completed once before returning.
    unsafe { done(ctx, 0, buf(INFO)) };
    // Any non-null pointer: this plugin keeps no state.
    std::ptr::NonNull::<u8>::dangling().as_ptr().cast()
}

unsafe extern "C" fn call(_instance: *mut c_void, method: Buf, _request: Buf, done: Done, ctx: *mut c_void) {
    // SAFETY: the host lends the method name for this call.
    let method = unsafe { std::slice::from_raw_parts(method.ptr, method.len) };
    match method {
        // Never answers: the host's timeout must end the wait.
        b"identify" => {}
        // SAFETY: as in `create`.
        b"list" => unsafe { done(ctx, 0, buf(b"{\"not json")) },
        // SAFETY: as in `create`.
        _ => unsafe { done(ctx, 1, buf(b"<html>error</html>")) },
    }
}

unsafe extern "C" fn destroy(_instance: *mut c_void) {}

const SIZE: usize = if cfg!(feature = "small-table") { 2 * size_of::<usize>() } else { size_of::<FnTable>() };

static TABLE: FnTable =
    FnTable { size: SIZE, create, call: if cfg!(feature = "null-call") { None } else { Some(call) }, destroy };

const MAGIC: u64 = if cfg!(feature = "wrong-magic") { 0x0BAD_0BAD_0BAD_0BAD } else { u64::from_le_bytes(*b"MAYFLYPV") };

#[cfg(not(feature = "no-header"))]
#[unsafe(no_mangle)]
#[allow(non_upper_case_globals)]
pub static mayfly_provider_header: Header = Header {
    magic: MAGIC,
    abi_major: if cfg!(feature = "major-next") { 3 } else { 2 },
    abi_minor: if cfg!(feature = "minor-next") { 7 } else { 0 },
    table: &TABLE,
};

/// Without a header, something else is exported, so the library still loads.
#[cfg(feature = "no-header")]
#[unsafe(no_mangle)]
pub extern "C" fn mayfly_provider_something_else() -> u32 {
    42
}
