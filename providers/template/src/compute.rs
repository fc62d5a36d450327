//! The platform's machines: a node is a process, and the registry directory
//! is the inventory a cloud's API would answer (one JSON file per node,
//! tagged with its job and deadline).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mayfly_provider_api::{
    ErrorKind, LaunchRequest, Level, ListRequest, NodeInfo, NodeSpec, ProviderError, TerminateRequest, now_ms,
};

use crate::{Template, boot, fail};

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
        let log = std::fs::File::create(self.registry.join(&request.job).join(format!("{}.log", spec.node)))
            .map_err(unavailable)?;
        let mut child =
            boot::command(&self.binary, spec, &entry, log).and_then(|mut c| c.spawn()).map_err(unavailable)?;
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

    /// A cloud: run instances with the node's command in their user data,
    /// tagged with the job and its deadline, set to delete on shutdown.
    pub(crate) async fn launch_nodes(&self, request: LaunchRequest) -> Result<Vec<NodeInfo>, ProviderError> {
        let max = crate::MAX_NODES as usize;
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
    pub(crate) fn list_nodes(&self, request: ListRequest) -> Vec<NodeInfo> {
        match request.job {
            Some(job) => self.nodes_of(&self.registry.join(job)),
            None => std::fs::read_dir(&self.registry)
                .into_iter()
                .flatten()
                .flatten()
                .flat_map(|e| self.nodes_of(&e.path()))
                .collect(),
        }
    }

    /// A cloud: terminate (delete, not stop) the instances.
    pub(crate) async fn terminate_nodes(&self, request: TerminateRequest) {
        let ids: Vec<String> = request.nodes.iter().map(|n| n.id.clone()).collect();
        Self::end(&ids, Duration::from_millis(request.grace_ms)).await;
    }

    /// A cloud: read the instance metadata service.
    pub(crate) fn this_node(&self) -> Option<NodeInfo> {
        let entry = self.identity.clone().or_else(|| std::env::var_os(boot::NODE_ENV).map(PathBuf::from))?;
        std::fs::read(entry).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// A cloud: terminate this instance through the API (or shut down with
    /// delete-on-shutdown set).
    pub(crate) async fn end_this_node(&self) -> Result<(), ProviderError> {
        let me = self.this_node().ok_or_else(|| fail(ErrorKind::Unsupported, "not on a node"))?;
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
}
