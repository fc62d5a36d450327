//! Providers as core sees them: the `[provider]` selection of a job file, the
//! built-in provider (local, the embedded default), plugins loaded through the
//! C ABI ([`crate::plugin`]), and [`ProviderHandle`], the blocking handle
//! core's threads call them through.
//!
//! The trait itself, [`mayfly_provider_api::Provider`], lives in
//! `providers/api` so that a plugin depends on it and nothing else. A provider
//! only declares numbers and performs actions; every decision is made in core
//! ([`mayfly_model::policy`]).
//!
//! In `mayfly-data`'s flow (`core/tests/flow.rs` checks it) it must not import `store` or
//! anything above; like its crate, it must not import `mayfly-core`, `mayfly-ops` or the
//! binary.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use mayfly_provider_api::{
    BootstrapReply, BootstrapRequest, Credential, CredentialRequest, ErrorKind, LaunchRequest, Limits, ListRequest,
    NodeInfo, NodeSpec, Provider, ProviderError, ProviderInfo, Role, Secret, Settings, StoreConfig, TerminateRequest,
};
use mayfly_provider_api::{Host, Level, async_trait};
use serde::{Deserialize, Serialize};

use crate::plugin::{PluginError, PluginProvider};

/// The name of the built-in provider.
pub const BUILT_IN: &str = "local";

/// How long a provider call may take unless `[provider] timeout` says otherwise.
pub const DEFAULT_TIMEOUT_MS: u64 = 120_000;

/// Which provider a job uses and how it is configured: a job file's
/// `[provider]` section, recorded in the manifest so that every node of the
/// job makes the same provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// `name`: the built-in `local`, or a plugin found as
    /// `libmayfly_provider_<name>.so` in the plugin directories.
    pub name: Option<String>,
    /// `path`: a plugin library, loaded by path.
    pub path: Option<PathBuf>,
    /// `timeout`: how long a plugin may take to answer a call (default 120 s).
    pub timeout_ms: Option<u64>,
    /// The provider's own keys.
    pub settings: serde_json::Map<String, serde_json::Value>,
}

impl Default for Selection {
    fn default() -> Self {
        Selection { name: Some(BUILT_IN.into()), path: None, timeout_ms: None, settings: Default::default() }
    }
}

impl Selection {
    /// How it reads in messages: the name, or the plugin's path.
    pub fn label(&self) -> String {
        match (&self.name, &self.path) {
            (_, Some(p)) => p.display().to_string(),
            (Some(n), None) => n.clone(),
            (None, None) => BUILT_IN.into(),
        }
    }
}

/// Why a provider could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// The plugin could not be loaded.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The provider refused its settings or failed to start.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// No provider by that name.
    #[error(
        "provider {name:?} not found: it is not built in (only \"local\" is) and no {file} is in the plugin directories ({dirs}); \
         build it (`cargo build --release -p mayfly-provider-{name}`), add its directory to MAYFLY_PLUGIN_PATH, or set `[provider] path`"
    )]
    NotFound {
        /// The name asked for.
        name: String,
        /// The file looked for.
        file: String,
        /// Where.
        dirs: String,
    },
}

/// The provider bridge: the async runtime core drives providers and remote
/// stores on (built-in providers run their futures here; plugins' futures run
/// on their own runtime). It is the one runtime mayfly builds besides the process's own
/// (the entry point's, handed down to the master, worker, reduce, replay and
/// exec): [`ProviderHandle`] and `Store` are blocking, and they are called
/// from inside the process runtime's tasks, where waiting on a task of that
/// same runtime could starve it. `Err` says why it could not be started (the
/// process's threads exhausted).
pub(crate) fn runtime() -> Result<&'static tokio::runtime::Runtime, mayfly_model::error::Internal> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, mayfly_model::error::Internal>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mayfly-provider")
            .enable_all()
            .build()
            .map_err(|e| mayfly_model::error::Internal(format!("cannot start the provider runtime: {e}")))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// A handle on the provider bridge's runtime, for a blocking caller that has
/// no runtime of its own: a serverless invocation's bootstrap (whose process
/// is the entrypoint's, not a node's) runs its preflight's sandbox calls on
/// it. Those calls are driven by the calling thread (`Handle::block_on`), not
/// by the bridge's workers.
pub fn bridge() -> Result<tokio::runtime::Handle, mayfly_model::error::Internal> {
    runtime().map(|rt| rt.handle().clone())
}

/// Core's bootstrap as a provider's entrypoint reaches it through [`Host`].
/// `bootstrap` (above this module in the flow) hands it down with
/// [`ProviderHandle::arm`] when it serves an entrypoint.
pub type Bootstrapper = fn(&BootstrapRequest, &ProviderHandle) -> Result<BootstrapReply, ProviderError>;

/// What core offers providers ([`Host`]): its log (the process's stderr,
/// which is the node's log file on a node) and its bootstrap, once armed.
pub struct CoreHost {
    handle: OnceLock<ProviderHandle>,
    bootstrapper: Arc<OnceLock<Bootstrapper>>,
}

impl std::fmt::Debug for CoreHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreHost").finish_non_exhaustive()
    }
}

impl CoreHost {
    /// A host not yet tied to its provider.
    pub fn new() -> Arc<CoreHost> {
        Arc::new(CoreHost { handle: OnceLock::new(), bootstrapper: Arc::new(OnceLock::new()) })
    }

    /// The provider this host serves, and core's bootstrap if armed.
    fn bootstrap_parts(&self) -> Result<(ProviderHandle, Bootstrapper), ProviderError> {
        let handle = self
            .handle
            .get()
            .ok_or_else(|| ProviderError::new("host", ErrorKind::Unavailable, "the provider is still being created"))?;
        let bootstrap = self.bootstrapper.get().ok_or_else(|| {
            ProviderError::new(
                "host",
                ErrorKind::Unsupported,
                "the provider asked mayfly to bootstrap a job outside its entrypoint (`mayfly serve`, or an event)",
            )
        })?;
        Ok((handle.clone(), *bootstrap))
    }

    /// Bootstraps `request` with the provider this host serves.
    pub fn bootstrap_blocking(&self, request: &BootstrapRequest) -> Result<BootstrapReply, ProviderError> {
        let (handle, bootstrap) = self.bootstrap_parts()?;
        bootstrap(request, &handle)
    }

    /// Writes a provider's log line.
    pub fn write_log(&self, level: Level, message: &str) {
        let name = self.handle.get().map(|h| h.name().to_owned()).unwrap_or_else(|| "provider".into());
        let level = match level {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => {
                if std::env::var_os("MAYFLY_VERBOSE").is_none() {
                    return;
                }
                "DEBUG"
            }
        };
        crate::nodelog::line(level, &format!("provider {name}"), message);
    }
}

impl crate::plugin::CoreServices for CoreHost {
    fn write_log(&self, level: Level, message: &str) {
        CoreHost::write_log(self, level, message);
    }

    fn bootstrap_blocking(&self, request: &BootstrapRequest) -> Result<BootstrapReply, ProviderError> {
        CoreHost::bootstrap_blocking(self, request)
    }
}

#[async_trait]
impl Host for CoreHost {
    fn log(&self, level: Level, message: &str) {
        self.write_log(level, message);
    }

    async fn bootstrap(&self, request: BootstrapRequest) -> Result<BootstrapReply, ProviderError> {
        let (handle, bootstrap) = self.bootstrap_parts()?;
        tokio::task::spawn_blocking(move || bootstrap(&request, &handle))
            .await
            .map_err(|e| ProviderError::new("host", ErrorKind::Panic, e.to_string()))?
    }
}

/// What a provider's entrypoint made of an event ([`ProviderHandle::invoke`]).
#[derive(Debug)]
pub enum Invoked {
    /// A plugin adapted it and bootstrapped the job through its host.
    Bootstrapped(BootstrapReply),
    /// A provider linked in adapted it: the caller bootstraps the job.
    Adapted(BootstrapRequest),
}

#[derive(Clone)]
enum Kind {
    BuiltIn,
    Plugin(Arc<PluginProvider>),
}

/// A provider as core's (blocking) threads call it: each call runs on an
/// async runtime and is waited for; a plugin's calls are bounded by its
/// timeout.
#[derive(Clone)]
pub struct ProviderHandle {
    inner: Arc<dyn Provider>,
    kind: Kind,
    info: ProviderInfo,
    selection: Selection,
    /// Shared with the [`CoreHost`] the provider was made with.
    bootstrapper: Arc<OnceLock<Bootstrapper>>,
}

impl std::fmt::Debug for ProviderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderHandle").field("info", &self.info).field("selection", &self.selection).finish()
    }
}

/// The directories plugins are looked up in by name: those in
/// `MAYFLY_PLUGIN_PATH` (colon-separated), then the `mayfly` binary's own
/// directory (where `cargo build -p mayfly-provider-<name>` puts them).
pub fn plugin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("MAYFLY_PLUGIN_PATH")
        .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
        .unwrap_or_default();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_owned());
    }
    dirs
}

/// The file a plugin called `name` is in.
pub fn plugin_file(name: &str) -> String {
    format!("libmayfly_provider_{}.so", name.replace('-', "_"))
}

impl ProviderHandle {
    /// Makes the provider `selection` names.
    pub fn select(selection: &Selection) -> Result<ProviderHandle, SelectError> {
        let host = CoreHost::new();
        let mut handle = match (&selection.path, selection.name.as_deref().unwrap_or(BUILT_IN)) {
            (Some(path), _) => Self::from_plugin(path, selection, host.clone())?,
            (None, BUILT_IN) => {
                let settings = Settings::new(BUILT_IN, selection.settings.clone());
                let local = mayfly_provider_local::LocalProvider::create(settings, host.clone())?;
                Self::built_in(Arc::new(local), selection.clone())
            }
            (None, name) => {
                let file = plugin_file(name);
                let dirs = plugin_dirs();
                let Some(path) = dirs.iter().map(|d| d.join(&file)).find(|p| p.exists()) else {
                    let dirs = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
                    return Err(SelectError::NotFound { name: name.to_owned(), file, dirs });
                };
                Self::from_plugin(&path, selection, host.clone())?
            }
        };
        if let Some(name) = &selection.name
            && handle.info.name != *name
        {
            let file = match &handle.kind {
                Kind::Plugin(p) => p.path().to_owned(),
                Kind::BuiltIn => PathBuf::from(BUILT_IN),
            };
            return Err(SelectError::Plugin(PluginError::new(
                &file,
                format!("it is the {:?} provider, but the job asks for {name:?}", handle.info.name),
            )));
        }
        handle.bootstrapper = host.bootstrapper.clone();
        let _ = host.handle.set(handle.clone());
        Ok(handle)
    }

    /// Lets the provider's entrypoint reach core's bootstrap through its
    /// host (see [`Bootstrapper`]); a later call changes nothing.
    pub fn arm(&self, bootstrap: Bootstrapper) {
        let _ = self.bootstrapper.set(bootstrap);
    }

    fn from_plugin(path: &Path, selection: &Selection, host: Arc<CoreHost>) -> Result<ProviderHandle, SelectError> {
        let timeout = Duration::from_millis(selection.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS));
        let plugin = Arc::new(PluginProvider::load(path, &selection.settings, host, timeout)?);
        let info = plugin.info();
        Ok(ProviderHandle {
            inner: plugin.clone(),
            kind: Kind::Plugin(plugin),
            info,
            selection: selection.clone(),
            bootstrapper: Default::default(),
        })
    }

    /// Wraps a provider linked into this binary (tests use it for providers
    /// made in process; `selection` is what nodes will make from the manifest).
    pub fn built_in(provider: Arc<dyn Provider>, selection: Selection) -> ProviderHandle {
        let info = provider.info();
        ProviderHandle { inner: provider, kind: Kind::BuiltIn, info, selection, bootstrapper: Default::default() }
    }

    /// The provider as the async trait.
    pub fn provider(&self) -> Arc<dyn Provider> {
        self.inner.clone()
    }

    /// Whether it was loaded through the C ABI.
    pub fn is_plugin(&self) -> bool {
        matches!(self.kind, Kind::Plugin(_))
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// What it declares.
    pub fn info(&self) -> &ProviderInfo {
        &self.info
    }

    /// Its declared limits.
    pub fn limits(&self) -> Limits {
        self.info.limits
    }

    /// How it was selected.
    pub fn selection(&self) -> &Selection {
        &self.selection
    }

    /// How long a call may take (the selection's `timeout`, default 120 s).
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.selection.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS))
    }

    /// Runs one call on the provider runtime and waits for it, at most
    /// `limit` (`None`: as long as it takes). The wait is bounded here, on
    /// the caller's side, so even a provider that blocks its thread instead
    /// of awaiting cannot hang core's threads.
    fn block<T, Fut>(
        &self,
        method: &str,
        limit: Option<Duration>,
        call: impl FnOnce(Arc<dyn Provider>) -> Fut,
    ) -> Result<T, ProviderError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, ProviderError>> + Send + 'static,
    {
        let fut = call(self.inner.clone());
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime().map_err(|e| ProviderError::new(self.name(), ErrorKind::Unavailable, e.to_string()))?.spawn(
            async move {
                let _ = tx.send(fut.await);
            },
        );
        let answer = match limit {
            // A little more than the plugin's own timeout, which reports better when it fires.
            Some(limit) => rx.recv_timeout(limit + Duration::from_secs(1)).map_err(|e| match e {
                std::sync::mpsc::RecvTimeoutError::Timeout => ProviderError::new(
                    self.name(),
                    ErrorKind::Timeout,
                    format!("`{method}` did not answer within {}", mayfly_model::units::HumanDuration(limit)),
                ),
                std::sync::mpsc::RecvTimeoutError::Disconnected => self.no_answer(method),
            }),
            None => rx.recv().map_err(|_| self.no_answer(method)),
        };
        answer?
    }

    fn no_answer(&self, method: &str) -> ProviderError {
        ProviderError::new(
            self.name(),
            ErrorKind::Panic,
            format!("`{method}` ended without an answer (the provider's task panicked; see the log)"),
        )
    }

    /// Launches nodes.
    pub fn launch(&self, request: LaunchRequest) -> Result<Vec<NodeInfo>, ProviderError> {
        self.block("launch", Some(self.timeout()), |p| async move { p.launch(request).await })
    }

    /// A job's running nodes.
    /// `state` is the job's state location (a path or a URL), as launched.
    pub fn list(&self, job: &str, state: &str) -> Result<Vec<NodeInfo>, ProviderError> {
        let request = ListRequest { job: Some(job.to_owned()), state: state.to_owned() };
        self.block("list", Some(self.timeout()), |p| async move { p.list(request).await })
    }

    /// Every running node of every job under `state_root`.
    pub fn list_all(&self, state_root: &Path) -> Result<Vec<NodeInfo>, ProviderError> {
        let request = ListRequest { job: None, state: state_root.to_string_lossy().into_owned() };
        self.block("list", Some(self.timeout()), |p| async move { p.list(request).await })
    }

    /// Ends nodes, forcing them after `grace`.
    pub fn terminate(&self, nodes: &[NodeInfo], grace: Duration) -> Result<(), ProviderError> {
        let request = TerminateRequest { nodes: nodes.to_vec(), grace_ms: grace.as_millis() as u64 };
        self.block("terminate", Some(self.timeout() + grace), |p| async move { p.terminate(request).await })
    }

    /// The node this process runs on.
    pub fn identify(&self) -> Result<Option<NodeInfo>, ProviderError> {
        self.block("identify", Some(self.timeout()), |p| async move { p.identify().await })
    }

    /// Ends the node this process runs on (the caller exits right after),
    /// waiting at most `limit`.
    pub fn terminate_self(&self, limit: Duration) -> Result<(), ProviderError> {
        self.block("terminate_self", Some(limit.min(self.timeout())), |p| async move { p.terminate_self().await })
    }

    /// Fresh credentials for `node` of `job`.
    pub fn credentials(&self, job: &str, state: &str, node: &str) -> Result<Credential, ProviderError> {
        let request =
            CredentialRequest { job: job.to_owned(), state: state.to_owned(), node: node.to_owned(), refused: false };
        self.block("credentials", Some(self.timeout()), |p| async move { p.credentials(request).await })
    }

    /// Hands one event to the provider's serverless entrypoint (a plugin
    /// adapts it and bootstraps the job through its host, so arm it first;
    /// `bootstrap::invoke` does both).
    pub fn invoke(&self, event: serde_json::Value) -> Result<Invoked, ProviderError> {
        match &self.kind {
            Kind::Plugin(plugin) => {
                let plugin = plugin.clone();
                let limit = self.limits().bootstrap_limit() + self.timeout();
                self.block("invoke", Some(limit), |_| async move { plugin.invoke(event).await })
                    .map(Invoked::Bootstrapped)
            }
            Kind::BuiltIn => self
                .block("adapt_event", Some(self.timeout()), |p| async move { p.adapt_event(event).await })
                .map(Invoked::Adapted),
        }
    }

    /// What the provider's principals need for jobs on `locations`.
    pub fn permissions(&self, locations: Vec<String>) -> Result<serde_json::Value, ProviderError> {
        let request = mayfly_provider_api::PermissionsRequest { locations };
        self.block("permissions", Some(self.timeout()), |p| async move { p.permissions(request).await })
    }

    /// Removes what the provider made for ended jobs besides their nodes,
    /// waiting at most `limit` (and the provider's timeout).
    pub fn sweep(&self, limit: Duration) -> Result<Vec<String>, ProviderError> {
        self.block("sweep", Some(limit.min(self.timeout())), |p| async move { p.sweep().await })
    }

    /// Creates or updates the provider's serverless entrypoint.
    pub fn deploy(&self, request: mayfly_provider_api::DeployRequest) -> Result<serde_json::Value, ProviderError> {
        self.block("deploy", Some(Duration::from_secs(600)), |p| async move { p.deploy(request).await })
    }

    /// Live prices of `node_types` from the provider's platform's price list.
    pub fn prices(&self, node_types: Vec<String>) -> Result<mayfly_provider_api::PriceList, ProviderError> {
        let request = mayfly_provider_api::PricesRequest { node_types };
        self.block("prices", Some(self.timeout()), |p| async move { p.prices(request).await })
    }

    /// Runs the provider's serverless entrypoint until the platform ends it.
    pub fn serve(&self) -> Result<(), ProviderError> {
        self.block("serve", None, |p| async move { p.serve().await })
    }
}
