//! A node's life, as `mayfly node` (what providers launch) lives it: its job
//! state opened (a local state names the provider in its manifest; a remote
//! one comes with the provider's selection), its log copied to a remote state
//! every few seconds so that it outlives the machine, the dead-man switch, its
//! role run (master or worker), then its last log copy and its own deletion.
//!
//! What belongs to the process stays with the binary: signal dispositions,
//! the log pump, and exiting (the dead-man switch calls the binary's
//! `on_deadline` once it has logged, copied the log and asked the provider
//! to end the node).
//!
//! In `mayfly-core`'s flow (`core/tests/flow.rs` checks it) no module is above it, but it
//! must not import its peer `bootstrap`; like its crate, it must not import `mayfly-ops`
//! or the binary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::job::{Layout, Manifest, keys};
use mayfly_data::provider::{ProviderHandle, Selection};
use mayfly_data::store::{Location, Principal, Store};
use mayfly_model::policy::{Clock, SystemClock};

/// How often a node copies its log to a remote state.
pub const LOG_SHIP_EVERY: Duration = Duration::from_secs(5);

/// What `mayfly node` is told.
#[derive(Debug, Clone)]
pub struct NodeArgs<'a> {
    /// `master` or `worker`.
    pub role: &'a str,
    /// The job.
    pub job: &'a str,
    /// This node's name.
    pub node: &'a str,
    /// The job's state location.
    pub dir: &'a str,
    /// The provider's selection (JSON), for a remote state.
    pub provider: Option<&'a str>,
}

/// A node's job, opened: its layout, manifest and provider.
#[derive(Debug)]
pub struct Opened {
    /// Where the job's files are.
    pub layout: Layout,
    /// The job.
    pub manifest: Manifest,
    /// The provider every node of the job makes.
    pub provider: ProviderHandle,
}

/// Why a node could not open its job, or its role failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// `--dir` is not a location.
    #[error("--dir {dir:?}: {source}")]
    Dir {
        /// As given.
        dir: String,
        /// Why.
        source: mayfly_data::store::LocationError,
    },
    /// `--provider` is not a provider's selection.
    #[error("--provider: {0}")]
    Selection(#[source] serde_json::Error),
    /// The provider could not be made.
    #[error("making provider {label}: {source}")]
    Provider {
        /// The selection, as the manifest or `--provider` names it.
        label: String,
        /// Why.
        source: mayfly_data::provider::SelectError,
    },
    /// A remote state came without the provider that serves it.
    #[error("--dir {0}: a remote state needs --provider (bootstrap passes it)")]
    NoProvider(String),
    /// The state could not be opened.
    #[error(transparent)]
    State(#[from] mayfly_data::store::OpenError),
    /// The manifest could not be read.
    #[error("reading the manifest in {location}: {source}")]
    Manifest {
        /// The state.
        location: String,
        /// Why.
        source: std::io::Error,
    },
    /// There is no manifest: no job there.
    #[error("no manifest in {0}")]
    NoManifest(String),
    /// Another job's state.
    #[error("{location} holds job {found}, not {job}")]
    OtherJob {
        /// The state.
        location: String,
        /// The job it holds.
        found: String,
        /// The job asked for.
        job: String,
    },
    /// The job's locations could not be opened.
    #[error(transparent)]
    Layout(#[from] crate::job::LayoutError),
    /// Not a role a node can have.
    #[error("unknown role {0:?} (expected master or worker)")]
    Role(String),
    /// The process's runtime did not start: mayfly's own failure.
    #[error(transparent)]
    Runtime(mayfly_model::Internal),
    /// The master failed.
    #[error(transparent)]
    Master(#[from] crate::master::MasterError),
    /// The worker failed.
    #[error(transparent)]
    Worker(#[from] crate::worker::WorkerError),
}

/// Opens the job's state as node `node`: reads the manifest (checking it is
/// `job`'s) and makes the provider.
pub fn open(args: &NodeArgs<'_>) -> Result<Opened, NodeError> {
    let (job, node, dir) = (args.job, args.node, args.dir);
    let location =
        Location::parse(dir, Path::new("/")).map_err(|source| NodeError::Dir { dir: dir.to_owned(), source })?;
    // A remote state comes with the provider that serves it; a local one
    // holds the manifest that names the provider.
    let given = match args.provider {
        Some(json) => {
            let selection: Selection = serde_json::from_str(json).map_err(NodeError::Selection)?;
            let made = ProviderHandle::select(&selection);
            Some(made.map_err(|source| NodeError::Provider { label: selection.label(), source })?)
        }
        None => None,
    };
    let who = Principal { job: job.to_owned(), state: location.to_string(), node: node.to_owned() };
    let store = match (&given, location.as_path()) {
        (Some(p), _) => Store::open(&location, p, &who)?,
        (None, Some(path)) => Store::local(path),
        (None, None) => return Err(NodeError::NoProvider(location.to_string())),
    };
    let manifest: Manifest = store
        .read_json(keys::MANIFEST)
        .map_err(|source| NodeError::Manifest { location: location.to_string(), source })?
        .ok_or_else(|| NodeError::NoManifest(location.to_string()))?;
    if manifest.job != job {
        return Err(NodeError::OtherJob { location: location.to_string(), found: manifest.job, job: job.to_owned() });
    }
    let provider = match given {
        Some(p) => p,
        None => ProviderHandle::select(&manifest.provider).map_err(|source| NodeError::Provider {
            label: format!("{} for job {job}", manifest.provider.label()),
            source,
        })?,
    };
    let layout = Layout::open(&location, job, &manifest.output, &provider, node)?;
    Ok(Opened { layout, manifest, provider })
}

/// Copies the node's log file (`log`: `MAYFLY_NODE_LOG`, where the provider's
/// launch captures the node's output) to `logs/<node>.log` in a remote state.
/// `None` for a local state, which needs none (providers write logs there).
pub fn ship_log(layout: &Layout, node: &str, log: Option<PathBuf>) -> Option<impl Fn() + Send + Sync + 'static> {
    let file = log?;
    if layout.state.local_dir().is_some() {
        return None;
    }
    let (state, key) = (layout.state.clone(), Layout::logs_key(node));
    // One copy at a time: a slow periodic copy must not land after the last one.
    let one_at_a_time = std::sync::Mutex::new(());
    Some(move || {
        let _turn = one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(bytes) = std::fs::read(&file)
            && let Err(e) = state.put(&key, bytes)
        {
            eprintln!("copying the log to {}: {e}", state.display(&key));
        }
    })
}

/// Runs node `args.node` to its end and returns its exit code: opens the
/// job, ships its log, arms the dead-man switch (which, a second past the
/// deadline, logs, copies the log, asks the provider to end the node, and
/// calls `on_deadline`), runs the role on `rt` (the process's runtime, which
/// its entry point owns; or why it could not start one: the role fails), then
/// copies the log a last time and asks the provider to end the node.
pub fn run(
    args: &NodeArgs<'_>,
    log: Option<PathBuf>,
    on_deadline: fn() -> !,
    rt: Result<&tokio::runtime::Handle, &std::io::Error>,
) -> Result<u8, NodeError> {
    let node = args.node;
    // Every line of this node carries its job, name and role (the span's
    // fields reach lines on other threads too: nodelog keeps them).
    let span = tracing::info_span!("node", job = args.job, node, role = args.role);
    let _entered = span.enter();
    let Opened { layout, manifest, provider } = open(args)?;
    if let Some(format) = manifest.log_format {
        mayfly_data::nodelog::set_format(format);
    }
    let ship = ship_log(&layout, node, log).map(Arc::new);
    if let Some(ship) = ship.clone() {
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(LOG_SHIP_EVERY);
                ship();
            }
        });
    }
    // The dead-man switch: whatever happens, this node does not outlive the
    // job's deadline by more than a second or so.
    let (expires_at, who, ender, last_ship) = (manifest.expires_at, node.to_owned(), provider.clone(), ship.clone());
    std::thread::spawn(move || {
        let left = expires_at.saturating_sub(SystemClock.now()) + 1000;
        std::thread::sleep(Duration::from_millis(left));
        mayfly_data::nodelog::line("WARN", &who, "the job's deadline passed; ending now");
        mayfly_data::nodelog::finish(Duration::from_secs(2));
        if let Some(ship) = &last_ship {
            ship();
        }
        if let Err(e) = ender.terminate_self(Duration::from_secs(2)) {
            mayfly_data::nodelog::line("ERROR", &who, format_args!("ending this node failed: {e}"));
        }
        on_deadline()
    });
    let result = match (args.role, rt) {
        (_, Err(e)) => Err(NodeError::Runtime(mayfly_model::Internal(format!("cannot start the async runtime: {e}")))),
        ("master", Ok(rt)) => Ok(crate::master::run(layout, manifest, &provider, Arc::new(SystemClock), rt)? as u8),
        ("worker", Ok(rt)) => {
            crate::worker::run(layout, manifest, node, provider.clone(), Arc::new(SystemClock), rt)?;
            Ok(0)
        }
        (other, Ok(_)) => Err(NodeError::Role(other.to_owned())),
    };
    if let Err(e) = &result {
        mayfly_data::nodelog::line("ERROR", node, e);
    }
    // Last: the logs go to the state location, then the node deletes itself;
    // the process exits right after.
    mayfly_data::nodelog::finish(Duration::from_secs(5));
    if let Some(ship) = &ship {
        ship();
    }
    if let Err(e) = provider.terminate_self(Duration::from_secs(30)) {
        mayfly_data::nodelog::line("ERROR", node, format_args!("ending this node failed: {e}"));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args<'a>(dir: &'a str, provider: Option<&'a str>) -> NodeArgs<'a> {
        NodeArgs { role: "worker", job: "j", node: "worker-1", dir, provider }
    }

    #[test]
    fn a_state_without_its_manifest_or_provider_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_string_lossy().into_owned();
        let e = open(&args(&path, None)).unwrap_err();
        assert!(matches!(&e, NodeError::NoManifest(at) if *at == path), "{e}");
        assert!(e.to_string().starts_with("no manifest in "), "{e}");
        let e = open(&args("s3://bucket/state/j", None)).unwrap_err();
        assert!(matches!(&e, NodeError::NoProvider(_)), "{e}");
        assert!(e.to_string().contains("a remote state needs --provider"), "{e}");
        let e = open(&args(&path, Some("{not json"))).unwrap_err();
        assert!(matches!(&e, NodeError::Selection(_)) && e.to_string().starts_with("--provider: "), "{e}");
        let e = open(&args("", None)).unwrap_err();
        assert!(matches!(&e, NodeError::Dir { .. }) && e.to_string().starts_with("--dir \"\""), "{e}");
    }

    #[test]
    fn a_remote_state_gets_the_log_copied_and_a_local_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("node.log");
        std::fs::write(&log, "line 1\n").unwrap();
        let provider = ProviderHandle::select(&Selection::default()).unwrap();
        let output = Location::path(&dir.path().join("out"));
        // A file:// state is an object store, as a cloud's would be.
        let remote = Location::parse(&format!("file://{}/state/j", dir.path().display()), Path::new("/")).unwrap();
        let layout = Layout::open(&remote, "j", &output, &provider, "worker-1").unwrap();
        let ship = ship_log(&layout, "worker-1", Some(log.clone())).expect("a remote state gets copies");
        ship();
        std::fs::write(&log, "line 1\nline 2\n").unwrap();
        ship();
        let copied = std::fs::read_to_string(dir.path().join("state/j").join(Layout::logs_key("worker-1"))).unwrap();
        assert_eq!(copied, "line 1\nline 2\n");
        assert!(ship_log(&layout, "worker-1", None).is_none(), "no log file, nothing to copy");
        let local = Location::path(&dir.path().join("local/j"));
        let layout = Layout::open(&local, "j", &output, &provider, "worker-1").unwrap();
        assert!(ship_log(&layout, "worker-1", Some(log)).is_none(), "providers write local logs themselves");
    }
}
