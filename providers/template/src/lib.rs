//! # mayfly-provider-template
//!
//! A minimal provider to copy. Its "platform" is this machine: a node is a
//! process started in its own process group, and the platform's inventory
//! (what a cloud's API would answer) is a registry directory holding one JSON
//! file per node, tagged with its job and deadline. Each method says which
//! call of a real platform it stands for.
//!
//! Settings (`[provider]` keys): `registry` (default
//! `$TMPDIR/mayfly-template-<user>`), `binary` (the `mayfly` binary nodes run;
//! default: the running one), `credential_ttl` (default 10m), `identity`
//! (the registry entry this process is, for tests; nodes learn theirs from
//! `MAYFLY_TEMPLATE_NODE`).
//!
//! Its modules are those of mayfly's own VM providers (`providers/aws`,
//! `providers/azure`), so that a provider grown from it reads like them:
//! - `lib.rs`: the settings (`create`), what the provider declares (`info`),
//!   and the `Provider` trait, each method handing over to a module below;
//! - `boot.rs`: how a node starts (a cloud's user data or custom data);
//! - `compute.rs`: the platform's machines: launch, list, terminate, identify;
//! - `credentials.rs`: short-lived credentials for a node;
//! - `events.rs`: a serverless platform's event, as a bootstrap request;
//! - `prices.rs`: the node types and their dated prices, for `mayfly plan`.
//!
//! A cloud adds `entrypoint.rs` (its serverless runtime's loop, answering
//! events with core's bootstrap), `deploy.rs` (creating its function) and
//! `permissions.rs` (the least privilege its principals need); this platform
//! has none of them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mayfly_provider_api::{
    BootstrapRequest, Capabilities, Credential, CredentialRequest, ErrorKind, Host, LaunchRequest, Limits, ListRequest,
    NodeInfo, Provider, ProviderError, ProviderInfo, Settings, StoreConfig, TerminateRequest, async_trait,
};

mod boot;
mod compute;
mod credentials;
mod events;
mod prices;

const NAME: &str = "template";
/// The most nodes one launch may ask for.
const MAX_NODES: u32 = 32;

fn fail(kind: ErrorKind, message: impl Into<String>) -> ProviderError {
    ProviderError::new(NAME, kind, message)
}

/// The provider: what it needs to reach its platform.
pub struct Template {
    registry: PathBuf,
    binary: PathBuf,
    credential_ttl: Duration,
    identity: Option<PathBuf>,
    host: Arc<dyn Host>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template").field("registry", &self.registry).field("binary", &self.binary).finish()
    }
}

#[async_trait]
impl Provider for Template {
    fn create(settings: Settings, host: Arc<dyn Host>) -> Result<Self, ProviderError> {
        let mut s = settings.named(NAME);
        let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
        let registry = s
            .string("registry")?
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join(format!("mayfly-template-{user}")));
        let binary = match s.string("binary")? {
            Some(b) => PathBuf::from(b),
            None => std::env::current_exe().map_err(|e| fail(ErrorKind::Config, format!("no mayfly binary: {e}")))?,
        };
        let credential_ttl = s.duration("credential_ttl", Duration::from_secs(600))?;
        let identity = s.string("identity")?.map(PathBuf::from);
        s.finish()?;
        if credential_ttl < Duration::from_secs(2) {
            return Err(fail(ErrorKind::Config, "`provider.credential_ttl` must be at least 2s"));
        }
        Ok(Template { registry, binary, credential_ttl, identity, host })
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            name: NAME.into(),
            limits: Limits {
                // A serverless platform's limit goes here (Lambda: 900 s).
                bootstrap_limit_ms: 30_000,
                credential_ttl_ms: self.credential_ttl.as_millis() as u64,
                max_nodes: MAX_NODES,
            },
            capabilities: Capabilities::default(),
            schemes: vec!["file".into()],
            nodes: Some(prices::node_types()),
        }
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Vec<NodeInfo>, ProviderError> {
        self.launch_nodes(request).await
    }

    async fn list(&self, request: ListRequest) -> Result<Vec<NodeInfo>, ProviderError> {
        Ok(self.list_nodes(request))
    }

    async fn terminate(&self, request: TerminateRequest) -> Result<(), ProviderError> {
        self.terminate_nodes(request).await;
        Ok(())
    }

    async fn identify(&self) -> Result<Option<NodeInfo>, ProviderError> {
        Ok(self.this_node())
    }

    async fn terminate_self(&self) -> Result<(), ProviderError> {
        self.end_this_node().await
    }

    async fn credentials(&self, request: CredentialRequest) -> Result<Credential, ProviderError> {
        self.issue(request)
    }

    /// A cloud: the endpoint and region of its object store.
    async fn object_store(&self, url: String) -> Result<StoreConfig, ProviderError> {
        match url.split_once("://") {
            Some(("file", _)) => Ok(StoreConfig { scheme: "file".into(), options: BTreeMap::new() }),
            _ => Err(fail(ErrorKind::Unsupported, format!("{url}: this provider serves file:// URLs only"))),
        }
    }

    async fn adapt_event(&self, event: serde_json::Value) -> Result<BootstrapRequest, ProviderError> {
        events::adapt_event(event)
    }
}

mayfly_provider_api::export_provider!(Template);
