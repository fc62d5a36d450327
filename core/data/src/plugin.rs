//! The plugin loader: provider plugins are `cdylib`s loaded with libloading
//! and driven through the C ABI of [`mayfly_provider_api::abi`].
//!
//! Before anything in a library is called, its header is read and checked:
//! the magic, the ABI major (equal), the minor (not newer), the function
//! table's size (not smaller than this host's). A file or directory that
//! other users can write is refused before it is opened. Libraries are never
//! unloaded. Every call completes through a callback and is bounded by a
//! timeout; a panic in the plugin comes back as an error naming the plugin.
//!
//! This module and the compile cache's `Component::deserialize` are the only
//! `unsafe` code in core; each block says why it is sound.
//!
//! In `mayfly-data`'s flow (`core/tests/flow.rs` checks it) it must not import `provider`
//! or anything above, nor its peers `nodelog` and `readahead`; like its crate, it must
//! not import `mayfly-core`, `mayfly-ops` or the binary.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::c_void;
use std::os::unix::fs::MetadataExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use mayfly_provider_api::abi::{
    Buf, Done, FnTable, HEADER_SYMBOL, HostTable, STATUS_ERROR, STATUS_OK, SendSyncPtr, raw,
};
use mayfly_provider_api::{
    BootstrapReply, BootstrapRequest, Credential, CredentialRequest, ErrorKind, Host, LaunchRequest, Level,
    ListRequest, NodeInfo, Provider, ProviderError, ProviderInfo, Settings, StoreConfig, TerminateRequest, async_trait,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What a plugin may ask of core, on the plugin's own threads: to log a
/// line, and to bootstrap a job (blocking until it is). Implemented by
/// `provider::CoreHost`; this module, below it, names only the trait.
pub trait CoreServices: Send + Sync {
    /// Writes a provider's log line.
    fn write_log(&self, level: Level, message: &str);
    /// Bootstraps `request` with the provider this host serves.
    fn bootstrap_blocking(&self, request: &BootstrapRequest) -> Result<BootstrapReply, ProviderError>;
}

/// The host table's context: what `ctx` points to.
type HostCtx = Arc<dyn CoreServices>;

/// Why a plugin could not be loaded; names the plugin's file.
#[derive(Debug, thiserror::Error)]
#[error("plugin {}: {message}", path.display())]
pub struct PluginError {
    /// The plugin's file.
    pub path: PathBuf,
    /// What was wrong.
    pub message: String,
}

impl PluginError {
    /// An error about the plugin at `path`.
    pub fn new(path: &Path, message: impl Into<String>) -> Self {
        PluginError { path: path.to_owned(), message: message.into() }
    }
}

/// A loaded library's checked function table.
#[derive(Debug, Clone, Copy)]
struct Library {
    table: FnTable,
}

fn loaded() -> &'static Mutex<HashMap<PathBuf, Library>> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, Library>>> = OnceLock::new();
    LOADED.get_or_init(Default::default)
}

/// Why a plugin's file, or its directory, is not loaded.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("{}: {source}", path.display())]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("refused: the {what} {} is writable by other users (mode {mode:o}); `chmod go-w` it", path.display())]
    Writable { what: &'static str, path: PathBuf, mode: u32 },
    #[error("refused: the {what} {} belongs to another user (uid {owner}), not to you (uid {me}) or root", path.display())]
    OtherOwner { what: &'static str, path: PathBuf, owner: u32, me: u32 },
}

/// Refuses a file or directory that someone other than its owner (this user
/// or root) can write: whoever can write it can run code as this user.
fn check_permissions(path: &Path) -> Result<(), Refused> {
    let me = nix::unistd::getuid().as_raw();
    let mut checked = Vec::new();
    checked.push(path.to_owned());
    if let Some(dir) = path.parent() {
        checked.push(dir.to_owned());
    }
    for p in checked {
        let meta = std::fs::metadata(&p).map_err(|source| Refused::Unreadable { path: p.clone(), source })?;
        let what = if meta.is_dir() { "directory" } else { "file" };
        if meta.mode() & 0o022 != 0 {
            return Err(Refused::Writable { what, path: p, mode: meta.mode() & 0o777 });
        }
        if meta.uid() != me && meta.uid() != 0 {
            return Err(Refused::OtherOwner { what, path: p, owner: meta.uid(), me });
        }
    }
    Ok(())
}

/// Opens (once per process) and checks the plugin library at `path`.
fn open(path: &Path) -> Result<Library, PluginError> {
    let err = |m: String| PluginError::new(path, m);
    let canonical = path.canonicalize().map_err(|e| err(format!("cannot open it: {e}")))?;
    let mut map = loaded().lock().map_err(|_| err("the plugin registry is poisoned".into()))?;
    if let Some(lib) = map.get(&canonical) {
        return Ok(*lib);
    }
    if !canonical.is_file() {
        return Err(err("not a file".into()));
    }
    check_permissions(&canonical).map_err(|refused| err(refused.to_string()))?;
    // SAFETY: loading a library runs its initialisers. The file passed the
    // permission check, so only its owner (this user or root) could have put
    // code there; running it is what loading a provider means.
    let lib =
        unsafe { libloading::Library::new(&canonical) }.map_err(|e| err(format!("not a loadable library ({e})")))?;
    // Never unloaded, even when refused below: its initialisers may have
    // started threads whose code must stay mapped.
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
    // SAFETY: the symbol is only read as an address here; `raw::read` reads
    // its contents, which any library exporting this symbol name promises to
    // be a header.
    let header: *const raw::Header = unsafe { lib.get::<*const raw::Header>(HEADER_SYMBOL) }
        .map(|s| *s)
        .map_err(|_| err("not a mayfly provider plugin: it has no `mayfly_provider_header` symbol".into()))?;
    // SAFETY: as above: null, or a header (and its table) as the ABI lays them out.
    let table = unsafe { raw::read(header) }.map_err(|e| err(e.to_string()))?;
    let library = Library { table };
    map.insert(canonical, library);
    Ok(library)
}

/// What a call's completion sends back: status and body.
type Answer = (u32, Vec<u8>);

/// Completes a call started by [`PluginProvider::call`]: `ctx` is the boxed
/// sender, consumed here.
unsafe extern "C" fn call_done(ctx: *mut c_void, status: u32, body: Buf) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if ctx.is_null() {
            return;
        }
        // SAFETY: `ctx` is the `Box<Sender>` made in `call`, and the ABI says a
        // call completes exactly once.
        let tx = unsafe { Box::from_raw(ctx.cast::<tokio::sync::oneshot::Sender<Answer>>()) };
        // SAFETY: the plugin lends `body` for the length of this callback; it is copied.
        let _ = tx.send((status, unsafe { body.as_slice() }.to_vec()));
    }));
}

unsafe extern "C" fn host_log(ctx: *const c_void, level: u32, message: Buf) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the leaked `Box<HostCtx>` of this host table, alive forever.
        let host = unsafe { &*ctx.cast::<HostCtx>() };
        // SAFETY: the plugin lends `message` for this call.
        let text = String::from_utf8_lossy(unsafe { message.as_slice() });
        host.write_log(Level::from_u32(level), &text);
    }));
}

unsafe extern "C" fn host_bootstrap(ctx: *const c_void, request: Buf, done: Done, done_ctx: *mut c_void) {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the leaked `Box<HostCtx>` of this host table, alive forever.
        let host = unsafe { &*ctx.cast::<HostCtx>() };
        // SAFETY: the plugin lends `request` for this call.
        let bytes = unsafe { request.as_slice() };
        let request: BootstrapRequest = serde_json::from_slice(bytes).map_err(|e| {
            ProviderError::new("host", ErrorKind::Protocol, format!("malformed bootstrap request: {e}"))
        })?;
        host.bootstrap_blocking(&request)
    }));
    let (status, body) = match outcome {
        Ok(Ok(reply)) => (STATUS_OK, serde_json::to_vec(&reply).unwrap_or_default()),
        Ok(Err(e)) => (STATUS_ERROR, serde_json::to_vec(&e).unwrap_or_default()),
        Err(_) => {
            let e = ProviderError::new("host", ErrorKind::Panic, "mayfly's bootstrap panicked; see the log");
            (STATUS_ERROR, serde_json::to_vec(&e).unwrap_or_default())
        }
    };
    // SAFETY: the plugin passes a callback and context valid until called,
    // once; `body` outlives the call.
    unsafe { done(done_ctx, status, Buf::of(&body)) }
}

/// The host table handed to plugins: leaked, so it outlives every plugin thread.
fn host_table(host: HostCtx) -> &'static HostTable {
    let ctx: *const c_void = Box::into_raw(Box::new(host)).cast_const().cast();
    Box::leak(Box::new(HostTable {
        size: std::mem::size_of::<HostTable>(),
        ctx,
        log: host_log,
        bootstrap: host_bootstrap,
    }))
}

/// A provider loaded from a plugin; implements the same trait as a built-in one.
#[derive(Debug)]
pub struct PluginProvider {
    path: PathBuf,
    table: FnTable,
    /// The plugin's instance (the ABI lets any thread call it).
    instance: SendSyncPtr,
    info: ProviderInfo,
    timeout: Duration,
}

impl Drop for PluginProvider {
    fn drop(&mut self) {
        // SAFETY: the instance came from this table's `create` and is destroyed once.
        unsafe { (self.table.destroy)(self.instance.get()) }
    }
}

impl PluginProvider {
    /// Loads the plugin at `path` and creates its provider with `settings`.
    pub fn load(
        path: &Path,
        settings: &serde_json::Map<String, serde_json::Value>,
        host: Arc<dyn CoreServices>,
        timeout: Duration,
    ) -> Result<PluginProvider, PluginError> {
        let lib = open(path)?;
        let err = |m: String| PluginError::new(path, m);
        let json = serde_json::to_vec(settings).map_err(|e| err(e.to_string()))?;
        // As an address: the table is `'static` and only the plugin reads it.
        let table = std::ptr::from_ref(host_table(host)) as usize;
        let (tx, mut rx) = tokio::sync::oneshot::channel::<Answer>();
        let ctx = SendSyncPtr::new(Box::into_raw(Box::new(tx)).cast());
        let create = lib.table.create;
        // `create` runs on a thread of its own, so a plugin that blocks in it
        // cannot hang the host past the timeout (the thread is then left behind).
        let (made_tx, made_rx) = std::sync::mpsc::sync_channel::<SendSyncPtr>(1);
        std::thread::Builder::new()
            .name("mayfly-plugin-create".into())
            .spawn(move || {
                let ctx = ctx;
                // SAFETY: `create` is the checked table's; the settings are lent
                // for the call (owned by this thread until it returns); the
                // host table lives forever; `ctx` is completed once by
                // `call_done` (the ABI says before `create` returns).
                let instance = unsafe { create(Buf::of(&json), table as *const HostTable, call_done, ctx.get()) };
                let _ = made_tx.send(SendSyncPtr::new(instance));
            })
            .map_err(|e| err(format!("starting a thread for its `create`: {e}")))?;
        let instance = made_rx.recv_timeout(timeout).map_err(|_| {
            err(format!("its `create` did not return within {}", mayfly_model::units::HumanDuration(timeout)))
        })?;
        let instance = instance.get();
        // An instance made but refused is destroyed.
        let refuse = |m: String| {
            if !instance.is_null() {
                // SAFETY: the instance came from this table's `create` and is not used again.
                unsafe { (lib.table.destroy)(instance) }
            }
            err(m)
        };
        let (status, body) = rx.try_recv().map_err(|_| refuse("its `create` returned without answering".into()))?;
        match status {
            STATUS_OK if !instance.is_null() => {
                let info: ProviderInfo = serde_json::from_slice(&body)
                    .map_err(|e| refuse(format!("malformed JSON from its `create` ({e}): {}", preview(&body))))?;
                Ok(PluginProvider {
                    path: path.to_owned(),
                    table: lib.table,
                    instance: SendSyncPtr::new(instance),
                    info,
                    timeout,
                })
            }
            STATUS_OK => Err(err("its `create` answered but returned no instance".into())),
            STATUS_ERROR => Err(refuse(match serde_json::from_slice::<ProviderError>(&body) {
                Ok(e) => e.to_string(),
                Err(e) => format!("its `create` failed with a malformed error ({e}): {}", preview(&body)),
            })),
            _ => Err(refuse(format!("it panicked in `create`: {}", String::from_utf8_lossy(&body)))),
        }
    }

    /// The plugin's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fail(&self, kind: ErrorKind, message: String) -> ProviderError {
        ProviderError::new(self.info.name.clone(), kind, format!("{message} (plugin {})", self.path.display()))
    }

    /// Calls `method` with `request`, waiting at most `timeout`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        request: &impl Serialize,
        timeout: Option<Duration>,
    ) -> Result<T, ProviderError> {
        let json = serde_json::to_vec(request).map_err(|e| self.fail(ErrorKind::Protocol, e.to_string()))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<Answer>();
        let ctx: *mut c_void = Box::into_raw(Box::new(tx)).cast();
        // SAFETY: `call` is the checked table's and the instance its own; the
        // method and request are lent for the call; `ctx` is completed once by
        // `call_done` (if the plugin never completes it, the box leaks).
        unsafe { (self.table.call)(self.instance.get(), Buf::of(method.as_bytes()), Buf::of(&json), call_done, ctx) };
        let answer = match timeout {
            Some(t) => tokio::time::timeout(t, rx).await.map_err(|_| {
                self.fail(
                    ErrorKind::Timeout,
                    format!("`{method}` did not answer within {}", mayfly_model::units::HumanDuration(t)),
                )
            })?,
            None => rx.await,
        };
        let (status, body) =
            answer.map_err(|_| self.fail(ErrorKind::Protocol, format!("`{method}` was dropped without an answer")))?;
        decode_answer(&self.info.name, &self.path, method, status, &body)
    }

    /// Adapts an entrypoint event and bootstraps it through the host callback.
    pub async fn invoke(&self, event: serde_json::Value) -> Result<BootstrapReply, ProviderError> {
        let limit = Duration::from_millis(self.info.limits.bootstrap_limit_ms) + self.timeout;
        self.call("invoke", &event, Some(limit)).await
    }
}

/// Decodes a plugin's answer to `method` (status and body, as the ABI's
/// completion callback delivers them): its value, its error, or an error that
/// names the plugin and shows what it sent.
pub fn decode_answer<T: DeserializeOwned>(
    name: &str,
    path: &Path,
    method: &str,
    status: u32,
    body: &[u8],
) -> Result<T, ProviderError> {
    let fail = |kind, message: String| ProviderError::new(name, kind, format!("{message} (plugin {})", path.display()));
    match status {
        STATUS_OK => serde_json::from_slice(body)
            .map_err(|e| fail(ErrorKind::Protocol, format!("malformed JSON from `{method}` ({e}): {}", preview(body)))),
        STATUS_ERROR => Err(serde_json::from_slice::<ProviderError>(body).unwrap_or_else(|e| {
            fail(ErrorKind::Protocol, format!("`{method}` failed with a malformed error ({e}): {}", preview(body)))
        })),
        _ => Err(fail(ErrorKind::Panic, format!("it panicked in `{method}`: {}", String::from_utf8_lossy(body)))),
    }
}

fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let cut: String = text.chars().take(80).collect();
    if cut.len() < text.len() { format!("{cut:?}...") } else { format!("{cut:?}") }
}

#[async_trait]
impl Provider for PluginProvider {
    fn create(settings: Settings, _host: Arc<dyn Host>) -> Result<Self, ProviderError> {
        Err(ProviderError::new(
            settings.provider(),
            ErrorKind::Unsupported,
            "a plugin is made by the loader (PluginProvider::load), not by create",
        ))
    }

    fn info(&self) -> ProviderInfo {
        self.info.clone()
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Vec<NodeInfo>, ProviderError> {
        self.call("launch", &request, Some(self.timeout)).await
    }

    async fn list(&self, request: ListRequest) -> Result<Vec<NodeInfo>, ProviderError> {
        self.call("list", &request, Some(self.timeout)).await
    }

    async fn terminate(&self, request: TerminateRequest) -> Result<(), ProviderError> {
        let t = self.timeout + Duration::from_millis(request.grace_ms);
        self.call("terminate", &request, Some(t)).await
    }

    async fn identify(&self) -> Result<Option<NodeInfo>, ProviderError> {
        self.call("identify", &(), Some(self.timeout)).await
    }

    async fn terminate_self(&self) -> Result<(), ProviderError> {
        self.call("terminate_self", &(), Some(self.timeout)).await
    }

    async fn credentials(&self, request: CredentialRequest) -> Result<Credential, ProviderError> {
        self.call("credentials", &request, Some(self.timeout)).await
    }

    async fn object_store(&self, url: String) -> Result<StoreConfig, ProviderError> {
        self.call("object_store", &url, Some(self.timeout)).await
    }

    async fn adapt_event(
        &self,
        event: serde_json::Value,
    ) -> Result<mayfly_provider_api::BootstrapRequest, ProviderError> {
        self.call("adapt_event", &event, Some(self.timeout)).await
    }

    async fn permissions(
        &self,
        request: mayfly_provider_api::PermissionsRequest,
    ) -> Result<serde_json::Value, ProviderError> {
        self.call("permissions", &request, Some(self.timeout)).await
    }

    async fn sweep(&self) -> Result<Vec<String>, ProviderError> {
        match self.call("sweep", &(), Some(self.timeout)).await {
            // A plugin older than `sweep` makes nothing to sweep.
            Err(e) if e.message.contains("unknown method `sweep`") => Ok(Vec::new()),
            other => other,
        }
    }

    async fn deploy(&self, request: mayfly_provider_api::DeployRequest) -> Result<serde_json::Value, ProviderError> {
        self.call("deploy", &request, None).await
    }

    async fn prices(
        &self,
        request: mayfly_provider_api::PricesRequest,
    ) -> Result<mayfly_provider_api::PriceList, ProviderError> {
        match self.call("prices", &request, Some(self.timeout)).await {
            // A plugin older than `prices` (ABI 2.0) fetches none.
            Err(e) if e.message.contains("unknown method `prices`") => Err(self.fail(
                ErrorKind::Unsupported,
                "it was built before live prices (ABI 2.0): it has no price list to fetch".into(),
            )),
            other => other,
        }
    }

    async fn serve(&self) -> Result<(), ProviderError> {
        self.call("serve", &(), None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_and_directories_others_can_write_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("libmayfly_provider_x.so");
        std::fs::write(&file, b"not a library").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = check_permissions(&file).unwrap_err();
        assert!(matches!(&e, Refused::Writable { what: "file", mode: 0o666, .. }), "{e}");
        assert!(
            e.to_string().contains("the file") && e.to_string().contains("writable by other users (mode 666)"),
            "{e}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_permissions(&file).unwrap_err();
        assert!(matches!(&e, Refused::Writable { what: "directory", mode: 0o777, .. }), "{e}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check_permissions(&file).is_ok());
        let e = open(&file).unwrap_err().to_string();
        assert!(e.contains("libmayfly_provider_x.so: not a loadable library"), "{e}");
    }
}
