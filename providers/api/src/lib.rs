//! # mayfly-provider-api
//!
//! What a platform must do for mayfly, and how a provider built as its own
//! dynamic library is loaded by the `mayfly` binary at run time.
//!
//! A provider implements [`Provider`]: it declares numbers (its bootstrap
//! limit, its credential lifetime, the URL schemes its object store serves) and
//! performs actions (launch, list, terminate nodes; identify and end the node it
//! runs on; issue credentials; turn its serverless entrypoint's event into a
//! bootstrap request). Every decision — the four rules — is made in mayfly's
//! core, the same way for every provider.
//!
//! One line turns a provider into a plugin:
//!
//! ```ignore
//! mayfly_provider_api::export_provider!(MyProvider);
//! ```
//!
//! The crate-type must be `cdylib`; the plugin depends on this crate only, never
//! on mayfly's core or on wasmtime. See [`abi`] for what crosses the library
//! boundary, and the `conformance` feature for the suite every provider passes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod abi;
#[cfg(feature = "conformance")]
pub mod conformance;
mod settings;

pub use async_trait::async_trait;
pub use settings::{Settings, parse_duration};

/// Milliseconds since the Unix epoch (or a span in milliseconds).
pub type Millis = u64;

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A node's role in a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Owns the ledger.
    Master,
    /// Runs tasks.
    Worker,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Master => "master",
            Role::Worker => "worker",
        })
    }
}

/// A node to launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Its name within the job (`master`, `worker-1`, ...).
    pub node: String,
    /// Its role.
    pub role: Role,
    /// The arguments the node runs the `mayfly` binary with (after the
    /// program name), e.g. `node --role worker --job J --node worker-1 --dir D`.
    pub args: Vec<String>,
}

/// Nodes to launch for one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchRequest {
    /// The job id (a tag on every resource).
    pub job: String,
    /// The job's state location (a path or URL).
    pub state: String,
    /// The job's absolute deadline, stamped on every node.
    pub expires_at: Millis,
    /// The nodes.
    pub nodes: Vec<NodeSpec>,
}

/// A node as its provider sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its name within the job.
    pub node: String,
    /// Its role.
    pub role: Role,
    /// The job.
    pub job: String,
    /// The provider's own id for it (a process id, an instance id, ...).
    pub id: String,
    /// The job's deadline, as stamped on the node.
    pub expires_at: Millis,
    /// When it was launched.
    pub launched_at: Millis,
    /// Its process id, when the node is a process of the machine that runs
    /// mayfly (as the local provider's are): `mayfly attach` then shows its
    /// files there too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<u32>,
}

/// Which nodes to list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {
    /// One job's nodes, or (`None`) every node of every job, for the reaper.
    pub job: Option<String>,
    /// With a job: its state location. Without: the state root its jobs are under.
    pub state: String,
}

/// Nodes to end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminateRequest {
    /// The nodes, as `launch` or `list` returned them.
    pub nodes: Vec<NodeInfo>,
    /// How long they may take to end on their own before they are forced.
    pub grace_ms: u64,
}

/// Credentials for one node of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRequest {
    /// The job.
    pub job: String,
    /// The job's state location.
    pub state: String,
    /// The node.
    pub node: String,
    /// The store refused the credential last issued for this node as expired
    /// or unknown, before the expiry it was issued with (a session revoked, a
    /// clock that runs fast): answer with one made now, not one a cache of
    /// the provider's (or its SDK's) still holds. Absent (false) from a core
    /// that predates it.
    #[serde(default)]
    pub refused: bool,
}

/// When a credential is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validity {
    /// When it was issued.
    pub issued_at: Millis,
    /// When it stops working.
    pub expires_at: Millis,
}

/// A credential with its validity window. Its secret is never logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// The node it was issued to.
    pub node: String,
    /// The secret, typed by what it opens.
    pub secret: Secret,
    /// When it is valid.
    pub validity: Validity,
}

/// A credential's secret, by what it opens: core hands each kind to the
/// store that takes it, and never parses a string for it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Secret {
    /// S3 keys: an STS session's (with its token), or long-lived ones.
    S3 {
        /// The access key id.
        key_id: String,
        /// The secret access key.
        secret_key: String,
        /// The session token, for temporary keys.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_token: Option<String>,
    },
    /// An OAuth 2 bearer token (Azure Storage: an Entra ID token for
    /// `https://storage.azure.com/.default`).
    Bearer {
        /// The token.
        token: String,
    },
    /// A token only its own provider reads (the local provider's signed one).
    Token {
        /// The token.
        value: String,
    },
}

impl Secret {
    /// The secret part (the secret key, the token): what must never be shown.
    pub fn expose(&self) -> &str {
        match self {
            Secret::S3 { secret_key, .. } => secret_key,
            Secret::Bearer { token } => token,
            Secret::Token { value } => value,
        }
    }

    /// What kind it is, for messages: `S3 keys`, `a bearer token`, `a token`.
    pub fn kind(&self) -> &'static str {
        match self {
            Secret::S3 { .. } => "S3 keys",
            Secret::Bearer { .. } => "a bearer token",
            Secret::Token { .. } => "a provider's own token",
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::S3 { key_id, .. } => f.debug_struct("S3").field("key_id", key_id).finish_non_exhaustive(),
            Secret::Bearer { .. } => f.write_str("Bearer(<redacted>)"),
            Secret::Token { .. } => f.write_str("Token(<redacted>)"),
        }
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("node", &self.node)
            .field("secret", &"<redacted>")
            .field("validity", &self.validity)
            .finish()
    }
}

/// The numbers a provider declares; core's rules decide with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// How long its bootstrap may run (Lambda 900 s, Functions 300-600 s, ...).
    pub bootstrap_limit_ms: u64,
    /// How long the credentials it issues live.
    pub credential_ttl_ms: u64,
    /// The most nodes one job may have.
    pub max_nodes: u32,
}

impl Limits {
    /// The limits of a provider whose bootstrap may run `bootstrap_limit`,
    /// whose credentials live `credential_ttl`, and which runs at most
    /// `max_nodes` nodes per job.
    pub fn new(bootstrap_limit: Duration, credential_ttl: Duration, max_nodes: u32) -> Limits {
        Limits {
            bootstrap_limit_ms: bootstrap_limit.as_millis() as u64,
            credential_ttl_ms: credential_ttl.as_millis() as u64,
            max_nodes,
        }
    }

    /// Refuses a launch of `nodes` nodes beyond `max_nodes`, as `provider`'s
    /// configuration error (the conformance suite checks that every provider does).
    pub fn check_launch(&self, provider: &str, nodes: usize) -> Result<(), ProviderError> {
        if nodes > self.max_nodes as usize {
            return Err(ProviderError::new(
                provider,
                ErrorKind::Config,
                format!("a launch of {nodes} nodes exceeds max_nodes = {}", self.max_nodes),
            ));
        }
        Ok(())
    }

    /// The bootstrap limit as a duration.
    pub fn bootstrap_limit(&self) -> Duration {
        Duration::from_millis(self.bootstrap_limit_ms)
    }

    /// The credential lifetime as a duration.
    pub fn credential_ttl(&self) -> Duration {
        Duration::from_millis(self.credential_ttl_ms)
    }
}

/// What a provider can do besides the required actions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The serverless entrypoint it serves with [`Provider::serve`] (`aws-lambda`, ...), if any.
    pub entrypoint: Option<String>,
    /// Where [`Provider::prices`] fetches its live prices from (`AWS Price
    /// List Query API`, ...), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prices: Option<String>,
}

/// What a provider declares about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderInfo {
    /// Its name (`local`, `aws`, ...), as a job's `[provider] name` selects it.
    pub name: String,
    /// Its limits.
    pub limits: Limits,
    /// Its capabilities.
    pub capabilities: Capabilities,
    /// The URL schemes its object store serves (`file`, `s3`, `az`, ...).
    pub schemes: Vec<String>,
    /// What its nodes run on with its settings, and what that costs (for
    /// `mayfly plan`); `None` if it does not say (a plan then prices nodes
    /// only from the job's `[prices]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeTypes>,
}

/// The node types a provider's nodes run on, with its settings, and the
/// prices it knows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeTypes {
    /// The master's node type (`m5.large`, `Standard_D2s_v5`, ...).
    pub master: String,
    /// The workers' node type.
    pub worker: String,
    /// USD per node-hour by node type, for the types the provider knows.
    pub prices: BTreeMap<String, f64>,
    /// Where those prices come from, with a date ("AWS on-demand, Linux,
    /// us-east-1, price list of 2025-06"): prices change, and a plan says so.
    pub prices_source: String,
    /// The region its nodes run in with its settings (`eu-west-1`,
    /// `westeurope`), which prices depend on; `None` where none applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

impl NodeTypes {
    /// `master` and `worker`, priced from `table` (node type, USD per
    /// node-hour) as of `source`.
    pub fn priced(master: &str, worker: &str, table: &[(&str, f64)], source: &str) -> NodeTypes {
        NodeTypes {
            master: master.to_owned(),
            worker: worker.to_owned(),
            prices: table.iter().map(|(t, usd)| ((*t).to_owned(), *usd)).collect(),
            prices_source: source.to_owned(),
            region: None,
        }
    }

    /// The same, in `region`.
    pub fn in_region(self, region: &str) -> NodeTypes {
        NodeTypes { region: Some(region.to_owned()), ..self }
    }
}

/// A request for live prices ([`Provider::prices`]): of these node types, in
/// the region the provider's settings select.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricesRequest {
    /// Node types (`m5.large`, `Standard_D2s_v5`, ...).
    pub node_types: Vec<String>,
}

/// Live prices, as a platform's public price list gave them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PriceList {
    /// The provider's name.
    pub provider: String,
    /// The region they apply to.
    pub region: String,
    /// Where they come from (`AWS Price List Query API, on demand, Linux`).
    pub source: String,
    /// When they were fetched.
    pub fetched_ms: Millis,
    /// USD per node-hour by node type; a type the price list does not know
    /// is absent.
    pub prices: BTreeMap<String, NodePrice>,
    /// What could not be fetched (spot prices an API refused, say), for the
    /// user to read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What a node-hour of one type costs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NodePrice {
    /// On demand (pay as you go), Linux, in USD.
    pub on_demand: Option<f64>,
    /// On spot capacity now, in USD (the lowest of the region's zones on
    /// AWS), where the price list gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot: Option<f64>,
    /// When this price was fetched, if not with the rest of its list (a
    /// cache keeps the types an earlier refresh fetched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_ms: Option<Millis>,
}

/// How to reach the object store behind one URL: options in the `object_store`
/// crate's vocabulary (endpoint, region, ...). Never secrets: a node obtains
/// its own credentials with [`Provider::credentials`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// The URL's scheme.
    pub scheme: String,
    /// Builder options.
    pub options: BTreeMap<String, String>,
}

/// What permissions are asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionsRequest {
    /// The locations jobs read and write (`s3://bucket/prefix`, ...): input,
    /// output, state.
    pub locations: Vec<String>,
}

/// The environment variable a serverless function's provider settings are
/// kept in (a JSON object): `mayfly deploy` sets it, `mayfly serve` reads it
/// (its `--set` settings win).
pub const SETTINGS_ENV: &str = "MAYFLY_PROVIDER_SETTINGS";

/// A request to deploy a provider's serverless entrypoint (`mayfly deploy`):
/// create or update the function that bootstraps jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRequest {
    /// The function's name.
    pub function: String,
    /// The identity the function runs as (on AWS: its execution role's ARN).
    pub role: String,
    /// Where the function's code package is (already uploaded): an object
    /// store URL (`s3://bucket/mayfly/function.zip`).
    pub code_url: String,
    /// The CPU architecture the package was built for (`x86_64`, `aarch64`).
    pub architecture: String,
    /// The function's provider settings (`mayfly serve` reads them from
    /// [`SETTINGS_ENV`]).
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// The function's time limit, in seconds (0: the provider's default).
    pub timeout_s: u64,
    /// The function's memory, in MiB (0: the provider's default).
    pub memory_mb: u64,
}

/// A request to bootstrap a job: what a serverless event carries once a
/// provider has adapted it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapRequest {
    /// The job file's text (TOML), or empty when `job_url` says where it is.
    pub job: String,
    /// Where the job file is (`s3://bucket/jobs/job.toml`): core reads it
    /// through its data path, with the provider's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_url: Option<String>,
    /// The directory relative paths in the job file are resolved against.
    pub base_dir: Option<String>,
    /// Overrides, as the `MAYFLY_*` environment variables name them
    /// (`MAYFLY_JOB_ID`, `MAYFLY_INPUT`, `MAYFLY_WORKERS`, ...).
    pub overrides: BTreeMap<String, String>,
    /// When the invocation carrying it ends (a Lambda invocation's deadline):
    /// the bootstrap's budget ends then, if that is sooner than the
    /// provider's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Millis>,
}

impl BootstrapRequest {
    /// A request as a serverless entrypoint takes it directly:
    /// `{"job": "<job file>"}` or `{"job_url": "<scheme>://bucket/job.toml"}`,
    /// one of them, with optional `base_dir` and `overrides` (`MAYFLY_*`
    /// names). The error says what was wrong, for the provider to wrap.
    pub fn from_direct(event: &serde_json::Value, scheme: &str) -> Result<BootstrapRequest, String> {
        let obj = event
            .as_object()
            .ok_or_else(|| format!("expected a JSON object with `job` or `job_url` ({scheme}://...)"))?;
        let job = obj.get("job").and_then(|j| j.as_str()).map(str::to_owned);
        let job_url = obj.get("job_url").and_then(|j| j.as_str()).map(str::to_owned);
        if job.is_some() == job_url.is_some() {
            return Err(format!(
                "expected a JSON object with `job` (the job file) or `job_url` ({scheme}://...), one of them"
            ));
        }
        let base_dir = obj.get("base_dir").and_then(|b| b.as_str()).map(str::to_owned);
        let overrides = match obj.get("overrides") {
            None | Some(serde_json::Value::Null) => BTreeMap::new(),
            Some(o) => serde_json::from_value(o.clone()).map_err(|e| format!("`overrides`: {e}"))?,
        };
        Ok(BootstrapRequest { job: job.unwrap_or_default(), job_url, base_dir, overrides, deadline: None })
    }
}

/// What a bootstrap did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapReply {
    /// The job id.
    pub job: String,
    /// The job's state location.
    pub state: String,
    /// The shards planned.
    pub shards: u64,
    /// The nodes launched.
    pub nodes: Vec<NodeInfo>,
    /// The job's deadline.
    pub expires_at: Millis,
}

/// What kind of failure a [`ProviderError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The provider's settings are wrong.
    Config,
    /// The platform refused or failed; trying again may help.
    Unavailable,
    /// The provider does not do this.
    Unsupported,
    /// A bootstrap would not fit in the provider's time limit.
    OverBudget,
    /// The call did not finish in time.
    Timeout,
    /// The plugin panicked.
    Panic,
    /// The plugin broke the ABI's protocol (a malformed message, ...).
    Protocol,
    /// Anything else.
    Other,
}

/// A provider failure, naming the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("provider {provider}: {message}")]
pub struct ProviderError {
    /// The provider.
    pub provider: String,
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What went wrong.
    pub message: String,
}

impl ProviderError {
    /// A failure of `provider`.
    pub fn new(provider: impl Into<String>, kind: ErrorKind, message: impl Into<String>) -> Self {
        ProviderError { provider: provider.into(), kind, message: message.into() }
    }
}

/// How loud a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Something failed.
    Error = 0,
    /// Something is wrong but work goes on.
    Warn = 1,
    /// What happened.
    Info = 2,
    /// Detail.
    Debug = 3,
}

impl Level {
    /// The level for its number on the ABI (unknown numbers are `Info`).
    pub fn from_u32(n: u32) -> Level {
        match n {
            0 => Level::Error,
            1 => Level::Warn,
            3 => Level::Debug,
            _ => Level::Info,
        }
    }
}

/// What core offers a provider: its log, and its bootstrap, so a provider can
/// serve its platform's serverless entrypoint without depending on core.
#[async_trait]
pub trait Host: Send + Sync {
    /// Writes a line to the log of the process the provider runs in.
    fn log(&self, level: Level, message: &str);
    /// Bootstraps a job with the provider that calls it.
    async fn bootstrap(&self, request: BootstrapRequest) -> Result<BootstrapReply, ProviderError>;
}

/// A [`Host`] for a provider made outside mayfly (a plugin's own unit
/// tests): log lines go to stderr, and bootstrap is refused.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHost;

#[async_trait]
impl Host for NoHost {
    fn log(&self, level: Level, message: &str) {
        eprintln!("{level:?}: {message}");
    }

    async fn bootstrap(&self, _request: BootstrapRequest) -> Result<BootstrapReply, ProviderError> {
        Err(ProviderError::new("host", ErrorKind::Unsupported, "no mayfly host to bootstrap with (NoHost)"))
    }
}

/// What a platform must do for mayfly.
///
/// Every method is called from core's async runtime (built in) or from the
/// plugin's own runtime (loaded), possibly from several threads at once.
/// Actions must be idempotent where they can be: `terminate` of a node that is
/// already gone succeeds.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The provider configured with a job's `[provider]` keys (besides
    /// `name` and `path`). Unknown keys must be refused by name
    /// ([`Settings::finish`] does it).
    fn create(settings: Settings, host: Arc<dyn Host>) -> Result<Self, ProviderError>
    where
        Self: Sized;

    /// Its name, limits, capabilities and URL schemes.
    fn info(&self) -> ProviderInfo;

    /// Launches nodes, tagged with the job and its deadline. On failure, it
    /// ends whatever this call started before it returns.
    async fn launch(&self, request: LaunchRequest) -> Result<Vec<NodeInfo>, ProviderError>;

    /// The nodes still running (ended nodes are not listed).
    async fn list(&self, request: ListRequest) -> Result<Vec<NodeInfo>, ProviderError>;

    /// Ends nodes — deleted, not stopped — forcing those still there after
    /// the grace period. Returns once they are gone.
    async fn terminate(&self, request: TerminateRequest) -> Result<(), ProviderError>;

    /// The node this process runs on, if it runs on one of this provider's nodes.
    async fn identify(&self) -> Result<Option<NodeInfo>, ProviderError>;

    /// Ends the node this process runs on. Core calls it last, after the
    /// node's logs are flushed, and exits right after it returns.
    async fn terminate_self(&self) -> Result<(), ProviderError>;

    /// Fresh credentials for a node, with their expiry.
    async fn credentials(&self, request: CredentialRequest) -> Result<Credential, ProviderError>;

    /// How to reach the object store behind `url` (one of its schemes).
    async fn object_store(&self, url: String) -> Result<StoreConfig, ProviderError>;

    /// Turns an event of its serverless entrypoint into a bootstrap request.
    async fn adapt_event(&self, event: serde_json::Value) -> Result<BootstrapRequest, ProviderError>;

    /// The least privilege its principals need (the bootstrap function's, the
    /// nodes'), for jobs on `request.locations`: the platform's own policy
    /// documents (IAM policies on AWS), as JSON. `mayfly iam-policy` prints it.
    async fn permissions(&self, request: PermissionsRequest) -> Result<serde_json::Value, ProviderError> {
        let _ = request;
        Err(ProviderError::new(
            self.info().name,
            ErrorKind::Unsupported,
            "this provider does not describe its permissions",
        ))
    }

    /// Removes what it made for jobs besides their nodes (network rules,
    /// say) once those jobs have ended or their deadline has passed; answers
    /// what it removed, a line each. `mayfly reap` and each bootstrap call it.
    async fn sweep(&self) -> Result<Vec<String>, ProviderError> {
        Ok(Vec::new())
    }

    /// Creates or updates its serverless entrypoint (`mayfly deploy`); answers
    /// what it did, as JSON.
    async fn deploy(&self, request: DeployRequest) -> Result<serde_json::Value, ProviderError> {
        let _ = request;
        Err(ProviderError::new(self.info().name, ErrorKind::Unsupported, "this provider has nothing to deploy"))
    }

    /// Fetches live prices of `request`'s node types from its platform's
    /// public price list (`mayfly prices refresh`), in the region its
    /// settings select; [`Capabilities::prices`] says where from.
    async fn prices(&self, request: PricesRequest) -> Result<PriceList, ProviderError> {
        let _ = request;
        Err(ProviderError::new(self.info().name, ErrorKind::Unsupported, "this provider has no price list to fetch"))
    }

    /// Runs its serverless entrypoint's loop (the Lambda Runtime API, a
    /// Functions custom handler), calling [`Host::bootstrap`] for each event.
    /// Returns when the platform says the function is ending.
    async fn serve(&self) -> Result<(), ProviderError> {
        Err(ProviderError::new(self.info().name, ErrorKind::Unsupported, "this provider has no serverless entrypoint"))
    }
}
