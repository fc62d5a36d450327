//! A provider that misbehaves on purpose, as `[provider] mode` says:
//! `panic` (every call panics), `hang` (every call waits forever), `ok`
//! (every call answers at once: the ABI benchmark's no-op provider), `yield`
//! (every call waits once on its runtime before answering), `block` (every
//! call blocks its thread, as a provider must not), `block-in-create`,
//! `panic-in-create`, or `lossy-launch`: the local provider, except that every
//! launch starts its nodes and then answers with an error, as a cloud call that
//! timed out after the cloud acted (the caller must find and end them by listing).

use std::sync::Arc;

use mayfly_provider_api::{
    BootstrapRequest, Capabilities, Credential, CredentialRequest, ErrorKind, Host, LaunchRequest, Limits, ListRequest,
    NodeInfo, Provider, ProviderError, ProviderInfo, Secret, Settings, StoreConfig, TerminateRequest, Validity,
    async_trait,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    Yield,
    Block,
    Panic,
    Hang,
    LossyLaunch,
}

/// The misbehaving provider.
#[derive(Debug)]
pub struct Faulty {
    mode: Mode,
    /// The provider `lossy-launch` delegates to.
    local: Option<mayfly_provider_local::LocalProvider>,
}

impl Faulty {
    async fn misbehave(&self, method: &str) {
        match self.mode {
            Mode::Ok => {}
            Mode::Yield => tokio::task::yield_now().await,
            Mode::Block => std::thread::sleep(std::time::Duration::from_secs(3600)),
            Mode::Panic => panic!("faulty provider: {method} panics on purpose"),
            Mode::Hang => std::future::pending::<()>().await,
            Mode::LossyLaunch => {}
        }
    }
}

#[async_trait]
impl Provider for Faulty {
    fn create(settings: Settings, host: Arc<dyn Host>) -> Result<Self, ProviderError> {
        let mut s = settings.named("faulty");
        let mode = match s.string("mode")?.as_deref() {
            None | Some("ok") => Mode::Ok,
            Some("yield") => Mode::Yield,
            Some("block") => Mode::Block,
            Some("block-in-create") => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Mode::Block
            }
            Some("panic") => Mode::Panic,
            Some("hang") => Mode::Hang,
            Some("panic-in-create") => panic!("faulty provider: create panics on purpose"),
            Some("lossy-launch") => Mode::LossyLaunch,
            Some(other) => {
                return Err(ProviderError::new(
                    "faulty",
                    ErrorKind::Config,
                    format!(
                        "`provider.mode`: unknown mode {other:?} (expected ok, yield, block, panic, hang, block-in-create, panic-in-create, lossy-launch)"
                    ),
                ));
            }
        };
        s.finish()?;
        let local = match mode {
            Mode::LossyLaunch => {
                Some(mayfly_provider_local::LocalProvider::create(Settings::new("local", Default::default()), host)?)
            }
            _ => None,
        };
        Ok(Faulty { mode, local })
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            name: "faulty".into(),
            limits: Limits { bootstrap_limit_ms: 60_000, credential_ttl_ms: 60_000, max_nodes: 16 },
            capabilities: Capabilities::default(),
            schemes: vec!["file".into()],
            nodes: None,
        }
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Vec<NodeInfo>, ProviderError> {
        self.misbehave("launch").await;
        if let Some(local) = &self.local {
            let started = local.launch(request).await?;
            return Err(ProviderError::new(
                "faulty",
                ErrorKind::Unavailable,
                format!("the answer to launching {} node(s) was lost (they run)", started.len()),
            ));
        }
        Ok(Vec::new())
    }

    async fn list(&self, request: ListRequest) -> Result<Vec<NodeInfo>, ProviderError> {
        self.misbehave("list").await;
        match &self.local {
            Some(local) => local.list(request).await,
            None => Ok(Vec::new()),
        }
    }

    async fn terminate(&self, request: TerminateRequest) -> Result<(), ProviderError> {
        self.misbehave("terminate").await;
        match &self.local {
            Some(local) => local.terminate(request).await,
            None => Ok(()),
        }
    }

    async fn identify(&self) -> Result<Option<NodeInfo>, ProviderError> {
        self.misbehave("identify").await;
        match &self.local {
            Some(local) => local.identify().await,
            None => Ok(None),
        }
    }

    async fn terminate_self(&self) -> Result<(), ProviderError> {
        self.misbehave("terminate_self").await;
        match &self.local {
            Some(local) => local.terminate_self().await,
            None => Ok(()),
        }
    }

    async fn credentials(&self, request: CredentialRequest) -> Result<Credential, ProviderError> {
        self.misbehave("credentials").await;
        if let Some(local) = &self.local {
            return local.credentials(request).await;
        }
        let now = mayfly_provider_api::now_ms();
        Ok(Credential {
            node: request.node,
            secret: Secret::Token { value: "faulty".into() },
            validity: Validity { issued_at: now, expires_at: now + 60_000 },
        })
    }

    async fn object_store(&self, _url: String) -> Result<StoreConfig, ProviderError> {
        self.misbehave("object_store").await;
        Ok(StoreConfig { scheme: "file".into(), options: Default::default() })
    }

    async fn adapt_event(&self, _event: serde_json::Value) -> Result<BootstrapRequest, ProviderError> {
        self.misbehave("adapt_event").await;
        Err(ProviderError::new("faulty", ErrorKind::Unsupported, "no events"))
    }
}

mayfly_provider_api::export_provider!(Faulty);
