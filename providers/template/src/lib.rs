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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mayfly_provider_api::{
    BootstrapRequest, Capabilities, Credential, CredentialRequest, ErrorKind, Host, LaunchRequest, Level, Limits,
    ListRequest, NodeInfo, NodeSpec, NodeTypes, Provider, ProviderError, ProviderInfo, Secret, Settings, StoreConfig,
    TerminateRequest, Validity, async_trait, now_ms,
};

const NAME: &str = "template";
/// Tells a node which registry entry is its own (a cloud's instance metadata).
const NODE_ENV: &str = "MAYFLY_TEMPLATE_NODE";

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

impl Template {
    /// The registry entry of a node ("tags": job and node).
    fn entry(&self, job: &str, node: &str) -> PathBuf {
        self.registry.join(job).join(format!("{node}.json"))
    }

    /// Whether a node's process is still the one launched (pid and start time,
    /// so a recycled pid does not count). A cloud would report instance state.
    fn running(id: &str) -> bool {
        let Some((pid, start)) = id.split_once('@') else { return false };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
        let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
        !matches!(fields.first(), Some(&"Z") | None) && fields.get(19) == Some(&start)
    }

    fn nodes_of(&self, dir: &Path) -> Vec<NodeInfo> {
        let mut nodes: Vec<NodeInfo> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| serde_json::from_slice::<NodeInfo>(&std::fs::read(e.path()).ok()?).ok())
            .filter(|n| Self::running(&n.id))
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        nodes
    }

    /// Starts one node and records it; a node it cannot record is ended.
    fn start(&self, request: &LaunchRequest, spec: &NodeSpec) -> Result<NodeInfo, ProviderError> {
        let unavailable = |e: std::io::Error| fail(ErrorKind::Unavailable, format!("{}: {e}", spec.node));
        let entry = self.entry(&request.job, &spec.node);
        let out = std::fs::File::create(self.registry.join(&request.job).join(format!("{}.log", spec.node)))
            .map_err(unavailable)?;
        let err = out.try_clone().map_err(unavailable)?;
        let mut command = Command::new(&self.binary);
        command.args(&spec.args).env(NODE_ENV, &entry).stdin(Stdio::null()).stdout(out).stderr(err);
        // Its own process group, so that ending the node ends what it started.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().map_err(unavailable)?;
        let pid = child.id();
        // Read before the child is reaped, while its pid cannot be reused.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let start = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(19)).unwrap_or("0");
        let node = NodeInfo {
            node: spec.node.clone(),
            role: spec.role,
            job: request.job.clone(),
            id: format!("{pid}@{start}"),
            expires_at: request.expires_at,
            launched_at: now_ms(),
            process: Some(pid),
        };
        let recorded = serde_json::to_vec(&node)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(&entry, json))
            .map_err(unavailable);
        if let Err(e) = recorded {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        std::thread::spawn(move || child.wait());
        Ok(node)
    }

    /// Sends `signal` to a node's process group with the `kill` command.
    fn signal(id: &str, signal: &str) {
        if let Some((pid, _)) = id.split_once('@') {
            let _ = Command::new("kill").args(["-s", signal, "--", &format!("-{pid}")]).stderr(Stdio::null()).status();
        }
    }

    /// Ends nodes: politely, then by force after `grace`; returns once they are gone.
    async fn end(ids: &[String], grace: Duration) {
        for id in ids.iter().filter(|id| Self::running(id)) {
            Self::signal(id, "TERM");
        }
        let start = std::time::Instant::now();
        while ids.iter().any(|id| Self::running(id)) {
            if start.elapsed() >= grace {
                ids.iter().filter(|id| Self::running(id)).for_each(|id| Self::signal(id, "KILL"));
            }
            if start.elapsed() >= grace + Duration::from_secs(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
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
                max_nodes: 32,
            },
            capabilities: Capabilities::default(),
            schemes: vec!["file".into()],
            // What the nodes run on and cost, for `mayfly plan`: a cloud reads
            // the node types from its settings and ships a dated price table.
            nodes: Some(NodeTypes::priced("process", "process", &[("process", 0.0)], "local processes, free")),
        }
    }

    /// A cloud: run instances with the node's command in their user data,
    /// tagged with the job and its deadline, set to delete on shutdown.
    async fn launch(&self, request: LaunchRequest) -> Result<Vec<NodeInfo>, ProviderError> {
        let max = self.info().limits.max_nodes as usize;
        if request.nodes.len() > max {
            return Err(fail(ErrorKind::Config, format!("{} nodes asked for, at most {max}", request.nodes.len())));
        }
        let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok(&request.job) || request.nodes.iter().any(|n| !ok(&n.node)) {
            return Err(fail(ErrorKind::Config, "job and node names must be letters, digits, - or _"));
        }
        let dir = self.registry.join(&request.job);
        std::fs::create_dir_all(&dir).map_err(|e| fail(ErrorKind::Unavailable, format!("{}: {e}", dir.display())))?;
        let mut launched: Vec<NodeInfo> = Vec::new();
        for spec in &request.nodes {
            match self.start(&request, spec) {
                Ok(node) => launched.push(node),
                Err(e) => {
                    // Never leave half a launch behind.
                    Self::end(&launched.iter().map(|n| n.id.clone()).collect::<Vec<_>>(), Duration::ZERO).await;
                    return Err(e);
                }
            }
        }
        self.host.log(Level::Info, &format!("template: launched {} node(s) of {}", launched.len(), request.job));
        Ok(launched)
    }

    /// A cloud: describe instances filtered by the job's tag, running only.
    async fn list(&self, request: ListRequest) -> Result<Vec<NodeInfo>, ProviderError> {
        Ok(match request.job {
            Some(job) => self.nodes_of(&self.registry.join(job)),
            None => std::fs::read_dir(&self.registry)
                .into_iter()
                .flatten()
                .flatten()
                .flat_map(|e| self.nodes_of(&e.path()))
                .collect(),
        })
    }

    /// A cloud: terminate (delete, not stop) the instances.
    async fn terminate(&self, request: TerminateRequest) -> Result<(), ProviderError> {
        let ids: Vec<String> = request.nodes.iter().map(|n| n.id.clone()).collect();
        Self::end(&ids, Duration::from_millis(request.grace_ms)).await;
        Ok(())
    }

    /// A cloud: read the instance metadata service.
    async fn identify(&self) -> Result<Option<NodeInfo>, ProviderError> {
        let Some(entry) = self.identity.clone().or_else(|| std::env::var_os(NODE_ENV).map(PathBuf::from)) else {
            return Ok(None);
        };
        Ok(std::fs::read(entry).ok().and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// A cloud: terminate this instance through the API (or shut down with
    /// delete-on-shutdown set).
    async fn terminate_self(&self) -> Result<(), ProviderError> {
        let me = self.identify().await?.ok_or_else(|| fail(ErrorKind::Unsupported, "not on a node"))?;
        if me.id.split_once('@').is_some_and(|(pid, _)| pid == std::process::id().to_string()) {
            // mayfly exits right after this returns, which ends the node; its
            // entry is no longer listed once its process is gone.
            return Ok(());
        }
        Self::end(std::slice::from_ref(&me.id), Duration::from_secs(2)).await;
        if Self::running(&me.id) {
            return Err(fail(ErrorKind::Unavailable, format!("node {} did not end", me.node)));
        }
        let _ = std::fs::remove_file(self.entry(&me.job, &me.node));
        Ok(())
    }

    /// A cloud: ask its token service for short-lived credentials.
    async fn credentials(&self, request: CredentialRequest) -> Result<Credential, ProviderError> {
        let now = now_ms();
        let mut secret = [0u8; 16];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").map_err(|e| fail(ErrorKind::Unavailable, e.to_string()))?,
            &mut secret,
        )
        .map_err(|e| fail(ErrorKind::Unavailable, e.to_string()))?;
        Ok(Credential {
            node: request.node,
            secret: Secret::Token { value: secret.iter().map(|b| format!("{b:02x}")).collect() },
            validity: Validity { issued_at: now, expires_at: now + self.credential_ttl.as_millis() as u64 },
        })
    }

    /// A cloud: the endpoint and region of its object store.
    async fn object_store(&self, url: String) -> Result<StoreConfig, ProviderError> {
        match url.split_once("://") {
            Some(("file", _)) => Ok(StoreConfig { scheme: "file".into(), options: BTreeMap::new() }),
            _ => Err(fail(ErrorKind::Unsupported, format!("{url}: this provider serves file:// URLs only"))),
        }
    }

    /// A serverless platform: its event, e.g. `{"job": "<job file's text>"}`.
    async fn adapt_event(&self, event: serde_json::Value) -> Result<BootstrapRequest, ProviderError> {
        let job = event.get("job").and_then(|j| j.as_str()).ok_or_else(|| {
            fail(ErrorKind::Config, "the event carries no job (expected {\"job\": \"<job file>\", ...})")
        })?;
        let base_dir = event.get("base_dir").and_then(|b| b.as_str()).map(str::to_owned);
        let overrides = match event.get("overrides") {
            Some(o) => serde_json::from_value(o.clone()).map_err(|e| fail(ErrorKind::Config, e.to_string()))?,
            None => BTreeMap::new(),
        };
        Ok(BootstrapRequest { job: job.to_owned(), base_dir, overrides, ..Default::default() })
    }
}

mayfly_provider_api::export_provider!(Template);
