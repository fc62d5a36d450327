//! The C ABI between the `mayfly` binary (the host) and a provider plugin.
//!
//! A plugin is a `cdylib` exporting one data symbol, [`HEADER_SYMBOL`], a
//! [`Header`]. The host reads it before calling anything: the magic must be
//! [`MAGIC`], the ABI major equal to the host's, the minor not newer than the
//! host's, and the function table at least as large as the host's
//! [`FnTable`] (tables only grow, by appending fields; `size` comes first).
//!
//! Messages are JSON. Every buffer is released by the side that allocated it:
//! a [`Buf`] passed into a call is only borrowed for that call (the callee
//! copies what it keeps), and a [`Buf`] passed to a [`Done`] callback only
//! for the callback. Calls complete through `Done`, exactly once, from any
//! thread — at once if the answer is ready, later from the plugin's own tokio
//! runtime otherwise — so the host can bound every call with a timeout.
//! Every exported function catches panics and reports them as
//! [`STATUS_PANIC`]. Libraries are never unloaded.
//!
//! The glue polls each call once on the caller's thread (a ready answer
//! then costs no thread hop), so a provider must not block before its first
//! `.await`: blocking work belongs in `tokio::task::spawn_blocking`. The host
//! bounds its own wait on every call anyway.
//!
//! Methods of [`FnTable::call`]: `launch`, `list`, `terminate`, `identify`,
//! `terminate_self`, `credentials`, `object_store`, `adapt_event`, `invoke`
//! (adapt an event and bootstrap it through the host), `serve`; each takes
//! and returns the JSON of the matching [`crate::Provider`] method's request
//! and result. [`FnTable::create`] answers with the [`crate::ProviderInfo`].

use std::ffi::c_void;

/// The name of the exported header symbol.
pub const HEADER_SYMBOL: &[u8] = b"mayfly_provider_header\0";
/// The header's magic value: `MAYFLYPV` read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"MAYFLYPV");
/// The ABI's major version: the host refuses any other. 2: a credential's
/// secret is typed ([`crate::Secret`]), no longer a string core parses.
pub const ABI_MAJOR: u32 = 2;
/// The ABI's minor version: the host refuses a newer one. 1: `prices`.
pub const ABI_MINOR: u32 = 1;

/// The call succeeded: the body is the result's JSON.
pub const STATUS_OK: u32 = 0;
/// The call failed: the body is a [`crate::ProviderError`]'s JSON.
pub const STATUS_ERROR: u32 = 1;
/// The plugin panicked: the body is the panic's message (UTF-8 text).
pub const STATUS_PANIC: u32 = 2;

/// Borrowed bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    /// The first byte (may dangle when `len` is 0).
    pub ptr: *const u8,
    /// How many bytes.
    pub len: usize,
}

impl Buf {
    /// Borrows `bytes` for the length of a call.
    pub fn of(bytes: &[u8]) -> Buf {
        Buf { ptr: bytes.as_ptr(), len: bytes.len() }
    }

    /// The bytes.
    ///
    /// # Safety
    /// `ptr` must point to `len` readable bytes that stay valid for `'a`.
    #[allow(unsafe_code)]
    pub unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.len == 0 || self.ptr.is_null() {
            return &[];
        }
        // SAFETY: the caller guarantees ptr/len describe live bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Completes a call: `status` is one of the `STATUS_*` values, `body` is
/// borrowed for the length of the callback.
pub type Done = unsafe extern "C" fn(ctx: *mut c_void, status: u32, body: Buf);

/// The plugin's functions.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct FnTable {
    /// `size_of::<FnTable>()` as the plugin was built: fields are only ever
    /// appended, so a host reads the prefix it knows.
    pub size: usize,
    /// Creates a provider from its settings (a JSON object) and the host's
    /// callback table (which must outlive the instance). Calls `done` before
    /// returning, with the [`crate::ProviderInfo`] or the error; returns the
    /// instance, or null on failure.
    pub create:
        unsafe extern "C" fn(settings: Buf, host: *const HostTable, done: Done, ctx: *mut c_void) -> *mut c_void,
    /// Calls `method` of an instance with a JSON request; completes through `done`.
    pub call: unsafe extern "C" fn(instance: *mut c_void, method: Buf, request: Buf, done: Done, ctx: *mut c_void),
    /// Drops an instance (calls still running keep what they need).
    pub destroy: unsafe extern "C" fn(instance: *mut c_void),
}

/// The header a plugin exports as [`HEADER_SYMBOL`].
#[repr(C)]
#[derive(Debug)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`ABI_MAJOR`] as the plugin was built.
    pub abi_major: u32,
    /// [`ABI_MINOR`] as the plugin was built.
    pub abi_minor: u32,
    /// The function table.
    pub table: &'static FnTable,
}

impl Header {
    /// The header of a plugin built against this crate.
    pub const fn new(table: &'static FnTable) -> Header {
        Header { magic: MAGIC, abi_major: ABI_MAJOR, abi_minor: ABI_MINOR, table }
    }
}

/// What the host offers a plugin (see [`crate::Host`]). The host keeps it,
/// and `ctx`, alive for as long as the process runs.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HostTable {
    /// `size_of::<HostTable>()` as the host was built.
    pub size: usize,
    /// The host's context, passed back to every callback.
    pub ctx: *const c_void,
    /// Writes a log line (`level` as [`crate::Level`]).
    pub log: unsafe extern "C" fn(ctx: *const c_void, level: u32, message: Buf),
    /// Bootstraps a job: `request` is a [`crate::BootstrapRequest`]'s JSON; completes
    /// through `done` with a [`crate::BootstrapReply`] or a [`crate::ProviderError`].
    /// It may block the calling thread for as long as the bootstrap runs.
    pub bootstrap: unsafe extern "C" fn(ctx: *const c_void, request: Buf, done: Done, done_ctx: *mut c_void),
}

/// A pointer the ABI lets any thread use: a plugin's instance, a `done`
/// callback's context, the host's context. The one place either side of the
/// ABI says that a raw pointer may cross threads.
#[derive(Debug, Clone, Copy)]
pub struct SendSyncPtr(*mut c_void);

impl SendSyncPtr {
    /// Wraps `ptr`, which the ABI lets any thread use.
    pub fn new(ptr: *mut c_void) -> Self {
        SendSyncPtr(ptr)
    }

    /// The pointer (a method, so that a closure captures the whole wrapper).
    pub fn get(self) -> *mut c_void {
        self.0
    }
}

// SAFETY: the ABI requires instances to be callable from any thread at once,
// `done` contexts to be completed from any thread, and the host's context to
// be usable from any thread for as long as the process runs.
#[allow(unsafe_code)]
unsafe impl Send for SendSyncPtr {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for SendSyncPtr {}

/// The header and function table as a host reads them from a library it does
/// not trust: the table as a raw pointer and each function as an `Option`
/// (a broken plugin may leave them null, and a null `fn` pointer may not
/// exist in Rust; an `Option` of one has the same layout as a nullable C
/// function pointer). Their layout is [`Header`]'s and [`FnTable`]'s, checked
/// at compile time below.
#[allow(unsafe_code)]
pub mod raw {
    use std::ffi::c_void;
    use std::mem::{offset_of, size_of};

    use super::{ABI_MAJOR, ABI_MINOR, Buf, Done, HostTable, MAGIC};

    /// [`super::Header`] as read from a library.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct Header {
        /// [`MAGIC`], if it is a plugin's.
        pub magic: u64,
        /// The ABI major it was built for.
        pub abi_major: u32,
        /// The ABI minor it was built for.
        pub abi_minor: u32,
        /// Its function table (may be null).
        pub table: *const FnTable,
    }

    /// [`super::FnTable`] as read from a library: any function may be null.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct FnTable {
        /// Its size as the plugin was built.
        pub size: usize,
        /// [`super::FnTable::create`].
        pub create: Option<unsafe extern "C" fn(Buf, *const HostTable, Done, *mut c_void) -> *mut c_void>,
        /// [`super::FnTable::call`].
        pub call: Option<unsafe extern "C" fn(*mut c_void, Buf, Buf, Done, *mut c_void)>,
        /// [`super::FnTable::destroy`].
        pub destroy: Option<unsafe extern "C" fn(*mut c_void)>,
    }

    // The raw types read exactly the bytes the real ones are.
    const _: () = {
        assert!(size_of::<Header>() == size_of::<super::Header>());
        assert!(offset_of!(Header, magic) == offset_of!(super::Header, magic));
        assert!(offset_of!(Header, abi_major) == offset_of!(super::Header, abi_major));
        assert!(offset_of!(Header, abi_minor) == offset_of!(super::Header, abi_minor));
        assert!(offset_of!(Header, table) == offset_of!(super::Header, table));
        assert!(size_of::<FnTable>() == size_of::<super::FnTable>());
        assert!(offset_of!(FnTable, size) == offset_of!(super::FnTable, size));
        assert!(offset_of!(FnTable, create) == offset_of!(super::FnTable, create));
        assert!(offset_of!(FnTable, call) == offset_of!(super::FnTable, call));
        assert!(offset_of!(FnTable, destroy) == offset_of!(super::FnTable, destroy));
    };

    /// Why a library's header is not one this host can use.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum HeaderError {
        /// The header symbol's address is null.
        #[error("its header symbol is null")]
        Null,
        /// Not a mayfly plugin's header.
        #[error(
            "its header has the wrong magic value ({0:#018x}, expected {MAGIC:#018x}): not a mayfly provider plugin"
        )]
        Magic(u64),
        /// Another major version.
        #[error(
            "it was built for plugin ABI {0}.{1}, and this mayfly speaks ABI {ABI_MAJOR}.{ABI_MINOR}: rebuild the plugin against mayfly-provider-api {ABI_MAJOR}.x"
        )]
        Major(u32, u32),
        /// A newer minor version.
        #[error(
            "it was built for plugin ABI {0}.{1}, newer than this mayfly's {ABI_MAJOR}.{ABI_MINOR}: upgrade mayfly"
        )]
        Minor(u32, u32),
        /// The table pointer is null.
        #[error("its function table is null")]
        NullTable,
        /// The table is smaller than this host's.
        #[error(
            "its function table is {0} bytes, smaller than the {need} this mayfly needs: the plugin is broken or from an unreleased ABI",
            need = size_of::<super::FnTable>()
        )]
        SmallTable(usize),
        /// A function is null.
        #[error("its function table has no `{0}` function (null)")]
        Missing(&'static str),
    }

    /// Reads and checks the header at `header` (a library's
    /// [`super::HEADER_SYMBOL`]): the magic, the ABI version, the table's
    /// size and functions. Returns the table this host calls.
    ///
    /// # Safety
    /// `header` is null or points to at least a header's bytes (any
    /// alignment), and a non-null table pointer in it points to at least a
    /// `usize`, and to a whole table when that `usize` says so: what any
    /// library exporting the symbol name promises.
    pub unsafe fn read(header: *const Header) -> Result<super::FnTable, HeaderError> {
        if header.is_null() {
            return Err(HeaderError::Null);
        }
        // SAFETY: by the caller; every field is an integer or a raw pointer,
        // so any bytes are a valid value; read unaligned, as a foreign library
        // need not align it.
        let h = unsafe { std::ptr::read_unaligned(header) };
        if h.magic != MAGIC {
            return Err(HeaderError::Magic(h.magic));
        }
        if h.abi_major != ABI_MAJOR {
            return Err(HeaderError::Major(h.abi_major, h.abi_minor));
        }
        if h.abi_minor > ABI_MINOR {
            return Err(HeaderError::Minor(h.abi_major, h.abi_minor));
        }
        if h.table.is_null() {
            return Err(HeaderError::NullTable);
        }
        // SAFETY: the table starts with its size, a usize, whatever its
        // version; only that field is read before the size is checked.
        let size = unsafe { std::ptr::read_unaligned(std::ptr::addr_of!((*h.table).size)) };
        if size < size_of::<super::FnTable>() {
            return Err(HeaderError::SmallTable(size));
        }
        // SAFETY: the table is at least as large as this host's, and the ABI
        // says its prefix has this layout; every field is an integer or a
        // nullable function pointer, so any bytes are a valid value.
        let raw = unsafe { std::ptr::read_unaligned(h.table) };
        Ok(super::FnTable {
            size: raw.size,
            create: raw.create.ok_or(HeaderError::Missing("create"))?,
            call: raw.call.ok_or(HeaderError::Missing("call"))?,
            destroy: raw.destroy.ok_or(HeaderError::Missing("destroy"))?,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        unsafe extern "C" fn create(_: Buf, _: *const HostTable, _: Done, _: *mut c_void) -> *mut c_void {
            std::ptr::null_mut()
        }
        unsafe extern "C" fn call(_: *mut c_void, _: Buf, _: Buf, _: Done, _: *mut c_void) {}
        unsafe extern "C" fn destroy(_: *mut c_void) {}

        fn table() -> FnTable {
            FnTable {
                size: size_of::<super::super::FnTable>(),
                create: Some(create),
                call: Some(call),
                destroy: Some(destroy),
            }
        }

        fn header(table: *const FnTable) -> Header {
            Header { magic: MAGIC, abi_major: ABI_MAJOR, abi_minor: ABI_MINOR, table }
        }

        #[test]
        fn a_good_header_reads_and_each_fault_is_named() {
            let good = table();
            // SAFETY: every header and table below is a whole, live value.
            let check = |h: &Header| unsafe { read(h) };
            assert!(check(&header(&good)).is_ok());
            assert_eq!(unsafe { read(std::ptr::null()) }.unwrap_err(), HeaderError::Null);
            assert_eq!(check(&Header { magic: 7, ..header(&good) }).unwrap_err(), HeaderError::Magic(7));
            let major = Header { abi_major: ABI_MAJOR + 1, ..header(&good) };
            assert!(check(&major).unwrap_err().to_string().contains("rebuild the plugin"));
            let minor = Header { abi_minor: ABI_MINOR + 1, ..header(&good) };
            assert!(check(&minor).unwrap_err().to_string().contains("upgrade mayfly"));
            assert_eq!(check(&header(std::ptr::null())).unwrap_err(), HeaderError::NullTable);
            let small = FnTable { size: 8, ..good };
            assert_eq!(check(&header(&small)).unwrap_err(), HeaderError::SmallTable(8));
            let no_call = FnTable { call: None, ..good };
            assert_eq!(check(&header(&no_call)).unwrap_err(), HeaderError::Missing("call"));
        }
    }
}

/// Exports a type implementing [`crate::Provider`] as a plugin: the header
/// symbol, the function table, and the glue behind it.
///
/// ```ignore
/// mayfly_provider_api::export_provider!(MyProvider);
/// ```
#[macro_export]
macro_rules! export_provider {
    ($provider:ty) => {
        #[doc(hidden)]
        static __MAYFLY_PROVIDER_TABLE: $crate::abi::FnTable = $crate::abi::plugin::table::<$provider>();

        /// The plugin's header, read by the `mayfly` binary before anything else.
        #[allow(unsafe_code, non_upper_case_globals)]
        #[unsafe(no_mangle)]
        pub static mayfly_provider_header: $crate::abi::Header = $crate::abi::Header::new(&__MAYFLY_PROVIDER_TABLE);
    };
}

/// The plugin side of the ABI, generated for a provider by [`export_provider!`].
#[doc(hidden)]
#[allow(unsafe_code)]
pub mod plugin {
    use std::future::Future;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::pin::Pin;
    use std::sync::{Arc, OnceLock};
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::{
        BootstrapReply, BootstrapRequest, ErrorKind, Host, Level, Provider, ProviderError, Settings, async_trait,
    };

    type Answer = Result<Vec<u8>, ProviderError>;
    type Call = Pin<Box<dyn Future<Output = Answer> + Send>>;

    /// The plugin's tokio runtime: one per library, made on first use.
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();

    fn runtime() -> Result<&'static tokio::runtime::Runtime, String> {
        RUNTIME
            .get_or_init(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("mayfly-plugin")
                    .enable_all()
                    .build()
                    .map_err(|e| format!("starting the plugin's async runtime: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The function table for `P`.
    pub const fn table<P: Provider>() -> FnTable {
        FnTable { size: std::mem::size_of::<FnTable>(), create: create::<P>, call: call::<P>, destroy: destroy::<P> }
    }

    struct Instance<P> {
        provider: Arc<P>,
        host: Arc<dyn Host>,
        name: String,
    }

    fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
        p.downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned())
    }

    /// Completes a call, exactly once.
    fn complete(done: Done, ctx: SendSyncPtr, outcome: Result<Answer, String>) {
        let (status, body) = match outcome {
            Ok(Ok(json)) => (STATUS_OK, json),
            Ok(Err(e)) => (STATUS_ERROR, serde_json::to_vec(&e).unwrap_or_default()),
            Err(panic) => (STATUS_PANIC, panic.into_bytes()),
        };
        // SAFETY: `done` and `ctx` come from the host, which guarantees them
        // valid until `done` is called; `body` outlives the callback.
        unsafe { done(ctx.get(), status, Buf::of(&body)) }
    }

    unsafe extern "C" fn create<P: Provider>(
        settings: Buf,
        host: *const HostTable,
        done: Done,
        ctx: *mut c_void,
    ) -> *mut c_void {
        let ctx = SendSyncPtr::new(ctx);
        let made = catch_unwind(AssertUnwindSafe(|| -> Result<(Box<Instance<P>>, Vec<u8>), ProviderError> {
            let protocol = |m: String| ProviderError::new("plugin", ErrorKind::Protocol, m);
            let rt = runtime().map_err(|e| ProviderError::new("plugin", ErrorKind::Other, e))?;
            // The provider may spawn tasks while it is created.
            let _entered = rt.enter();
            if host.is_null() {
                return Err(protocol("no host callback table".into()));
            }
            // SAFETY: the host passes a table that lives as long as the process;
            // its size comes first whatever its version, and only the size is
            // read before it is checked.
            let size = unsafe { std::ptr::read_unaligned(std::ptr::addr_of!((*host).size)) };
            if size < std::mem::size_of::<HostTable>() {
                return Err(protocol(format!(
                    "the host's callback table is {size} bytes, smaller than the {} this plugin needs",
                    std::mem::size_of::<HostTable>()
                )));
            }
            // SAFETY: at least as large as this plugin's `HostTable`, whose layout its prefix has.
            let table = unsafe { std::ptr::read_unaligned(host) };
            // SAFETY: the host borrows the settings for this call.
            let bytes = unsafe { settings.as_slice() };
            let settings = decode_settings(&name_hint::<P>(), bytes)?;
            let host: Arc<dyn Host> = Arc::new(AbiHost {
                ctx: SendSyncPtr::new(table.ctx.cast_mut()),
                log: table.log,
                bootstrap: table.bootstrap,
            });
            // The name is the provider's; settings errors name it themselves.
            let provider = P::create(settings, host.clone())?;
            let info = provider.info();
            let json = serde_json::to_vec(&info).map_err(|e| protocol(e.to_string()))?;
            Ok((Box::new(Instance { provider: Arc::new(provider), host, name: info.name }), json))
        }));
        match made {
            Ok(Ok((instance, info))) => {
                complete(done, ctx, Ok(Ok(info)));
                Box::into_raw(instance).cast()
            }
            Ok(Err(e)) => {
                complete(done, ctx, Ok(Err(e)));
                std::ptr::null_mut()
            }
            Err(p) => {
                complete(done, ctx, Err(panic_message(p.as_ref())));
                std::ptr::null_mut()
            }
        }
    }

    /// The crate name of the provider type, for errors made before it can name itself.
    fn name_hint<P>() -> String {
        std::any::type_name::<P>().rsplit("::").next().unwrap_or("plugin").to_ascii_lowercase()
    }

    unsafe extern "C" fn call<P: Provider>(
        instance: *mut c_void,
        method: Buf,
        request: Buf,
        done: Done,
        ctx: *mut c_void,
    ) {
        let ctx = SendSyncPtr::new(ctx);
        let started = catch_unwind(AssertUnwindSafe(|| -> Result<(), Answer> {
            let rt = runtime().map_err(|e| Err(ProviderError::new("plugin", ErrorKind::Other, e)))?;
            if instance.is_null() {
                return Err(Err(ProviderError::new("plugin", ErrorKind::Protocol, "call on a null instance")));
            }
            // SAFETY: the host passes an instance this table's `create` returned
            // and has not destroyed.
            let inst = unsafe { &*instance.cast::<Instance<P>>() };
            // SAFETY: the host borrows method and request for this call; both are copied.
            let (method, request) = unsafe { (method.as_slice(), request.as_slice().to_vec()) };
            let method = String::from_utf8_lossy(method).into_owned();
            let mut fut: Call = dispatch(inst.provider.clone(), inst.host.clone(), inst.name.clone(), method, request);
            // Poll once here: an answer that is ready (most are) needs no
            // thread hop. Otherwise the runtime finishes it.
            let _entered = rt.enter();
            match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut Context::from_waker(Waker::noop())))) {
                Ok(Poll::Ready(answer)) => complete(done, ctx, Ok(answer)),
                Ok(Poll::Pending) => {
                    rt.spawn(async move {
                        let outcome = CatchUnwind(fut).await;
                        complete(done, ctx, outcome);
                    });
                }
                Err(p) => complete(done, ctx, Err(panic_message(p.as_ref()))),
            }
            Ok(())
        }));
        match started {
            Ok(Ok(())) => {}
            Ok(Err(answer)) => complete(done, ctx, Ok(answer)),
            Err(p) => complete(done, ctx, Err(panic_message(p.as_ref()))),
        }
    }

    unsafe extern "C" fn destroy<P: Provider>(instance: *mut c_void) {
        if instance.is_null() {
            return;
        }
        // A panic in a provider's Drop must not cross the boundary.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: `instance` came from `create` and is destroyed once.
            drop(unsafe { Box::from_raw(instance.cast::<Instance<P>>()) });
        }));
    }

    /// A future whose panic becomes an error message.
    struct CatchUnwind(Call);

    impl Future for CatchUnwind {
        type Output = Result<Answer, String>;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            match catch_unwind(AssertUnwindSafe(|| self.0.as_mut().poll(cx))) {
                Ok(Poll::Ready(answer)) => Poll::Ready(Ok(answer)),
                Ok(Poll::Pending) => Poll::Pending,
                Err(p) => Poll::Ready(Err(panic_message(p.as_ref()))),
            }
        }
    }

    /// Decodes the settings the host passes to `create`.
    pub fn decode_settings(provider: &str, bytes: &[u8]) -> Result<Settings, ProviderError> {
        let values: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes).map_err(|e| {
            ProviderError::new("plugin", ErrorKind::Protocol, format!("settings are not a JSON object: {e}"))
        })?;
        Ok(Settings::new(provider, values))
    }

    /// Decodes a host's request for `method` into the type `dispatch` gives
    /// the provider, without calling one (the fuzzer's way in).
    pub fn decode_request(method: &str, body: &[u8]) -> Result<(), ProviderError> {
        let n = "plugin";
        match method {
            "launch" => parse::<crate::LaunchRequest>(n, method, body).map(drop),
            "list" => parse::<crate::ListRequest>(n, method, body).map(drop),
            "terminate" => parse::<crate::TerminateRequest>(n, method, body).map(drop),
            "credentials" => parse::<crate::CredentialRequest>(n, method, body).map(drop),
            "object_store" => parse::<String>(n, method, body).map(drop),
            "adapt_event" | "invoke" => parse::<serde_json::Value>(n, method, body).map(drop),
            "permissions" => parse::<crate::PermissionsRequest>(n, method, body).map(drop),
            "deploy" => parse::<crate::DeployRequest>(n, method, body).map(drop),
            "prices" => parse::<crate::PricesRequest>(n, method, body).map(drop),
            "identify" | "terminate_self" | "sweep" | "serve" => Ok(()),
            other => Err(ProviderError::new(n, ErrorKind::Unsupported, format!("unknown method `{other}`"))),
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(name: &str, method: &str, body: &[u8]) -> Result<T, ProviderError> {
        serde_json::from_slice(body).map_err(|e| {
            ProviderError::new(name, ErrorKind::Protocol, format!("`{method}`: malformed request from the host: {e}"))
        })
    }

    fn answer<T: serde::Serialize>(name: &str, value: &T) -> Answer {
        serde_json::to_vec(value).map_err(|e| ProviderError::new(name, ErrorKind::Protocol, e.to_string()))
    }

    fn dispatch<P: Provider>(p: Arc<P>, host: Arc<dyn Host>, name: String, method: String, body: Vec<u8>) -> Call {
        Box::pin(async move {
            let n = name.as_str();
            match method.as_str() {
                "launch" => answer(n, &p.launch(parse(n, &method, &body)?).await?),
                "list" => answer(n, &p.list(parse(n, &method, &body)?).await?),
                "terminate" => answer(n, &p.terminate(parse(n, &method, &body)?).await?),
                "identify" => answer(n, &p.identify().await?),
                "terminate_self" => answer(n, &p.terminate_self().await?),
                "credentials" => answer(n, &p.credentials(parse(n, &method, &body)?).await?),
                "object_store" => answer(n, &p.object_store(parse(n, &method, &body)?).await?),
                "adapt_event" => answer(n, &p.adapt_event(parse(n, &method, &body)?).await?),
                "permissions" => answer(n, &p.permissions(parse(n, &method, &body)?).await?),
                "deploy" => answer(n, &p.deploy(parse(n, &method, &body)?).await?),
                "sweep" => answer(n, &p.sweep().await?),
                "prices" => answer(n, &p.prices(parse(n, &method, &body)?).await?),
                "invoke" => {
                    let request = p.adapt_event(parse(n, &method, &body)?).await?;
                    answer(n, &host.bootstrap(request).await?)
                }
                "serve" => answer(n, &p.serve().await?),
                other => Err(ProviderError::new(
                    n,
                    ErrorKind::Unsupported,
                    format!("unknown method `{other}` (this plugin speaks ABI {ABI_MAJOR}.{ABI_MINOR})"),
                )),
            }
        })
    }

    /// The host's callback table as a [`Host`].
    struct AbiHost {
        /// The host's context, passed back to its callbacks.
        ctx: SendSyncPtr,
        log: unsafe extern "C" fn(ctx: *const c_void, level: u32, message: Buf),
        bootstrap: unsafe extern "C" fn(ctx: *const c_void, request: Buf, done: Done, done_ctx: *mut c_void),
    }

    unsafe extern "C" fn bootstrap_done(ctx: *mut c_void, status: u32, body: Buf) {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: `ctx` is the sender boxed in `AbiHost::bootstrap`, completed once.
            let tx = unsafe { Box::from_raw(ctx.cast::<tokio::sync::oneshot::Sender<(u32, Vec<u8>)>>()) };
            // SAFETY: the host borrows `body` for this callback; it is copied.
            let _ = tx.send((status, unsafe { body.as_slice() }.to_vec()));
        }));
    }

    #[async_trait]
    impl Host for AbiHost {
        fn log(&self, level: Level, message: &str) {
            // SAFETY: the host's callbacks and context live as long as the process.
            unsafe { (self.log)(self.ctx.get().cast_const(), level as u32, Buf::of(message.as_bytes())) }
        }

        async fn bootstrap(&self, request: BootstrapRequest) -> Result<BootstrapReply, ProviderError> {
            let host_err = |kind, m: String| ProviderError::new("host", kind, m);
            let json = serde_json::to_vec(&request).map_err(|e| host_err(ErrorKind::Protocol, e.to_string()))?;
            let (tx, rx) = tokio::sync::oneshot::channel::<(u32, Vec<u8>)>();
            let (host, bootstrap) = (self.ctx, self.bootstrap);
            let rt = runtime().map_err(|e| host_err(ErrorKind::Other, e))?;
            // The host's bootstrap blocks for as long as it runs: not on a runtime worker.
            rt.spawn_blocking(move || {
                let ctx: *mut c_void = Box::into_raw(Box::new(tx)).cast();
                // SAFETY: the callback and the host's context live as long as
                // the process; the request is borrowed for the call; `ctx` is
                // completed once.
                unsafe { bootstrap(host.get().cast_const(), Buf::of(&json), bootstrap_done, ctx) }
            });
            let (status, body) =
                rx.await.map_err(|_| host_err(ErrorKind::Protocol, "the host dropped a bootstrap call".into()))?;
            match status {
                STATUS_OK => serde_json::from_slice(&body)
                    .map_err(|e| host_err(ErrorKind::Protocol, format!("malformed bootstrap reply: {e}"))),
                STATUS_ERROR => Err(serde_json::from_slice(&body)
                    .unwrap_or_else(|e| host_err(ErrorKind::Protocol, format!("malformed bootstrap error: {e}")))),
                _ => Err(host_err(ErrorKind::Panic, String::from_utf8_lossy(&body).into_owned())),
            }
        }
    }
}
