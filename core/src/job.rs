//! A job's identity, its state directory layout, and its manifest.
//!
//! ```text
//! Each location is a local path or a URL (`s3://...`, `file://...`), read and
//! written through [`mayfly_data::store::Store`]:
//!
//! <state>/<job id>/
//!   manifest.json     spec + plan + task hashes + expires_at (written at bootstrap)
//!   journal.jsonl     the master's decisions, fsynced at commit points
//!   master.json       the master's address and pid, once it listens
//!   final.json        the job's end: counts, reason (written by the master)
//!   replacements.json the workers the master launched in place of lost ones
//!   heartbeat.json    when the master was last alive (rewritten every few seconds)
//!   claims/           an entrypoint's claim to resume the job after one silence
//!   secret/           the job token (0600 when local), and the local provider's issuer key
//!   tasks/<sha>.wasm  the task components, when the state is remote
//!   nodes/<node>.json the local provider's record of each node process
//!   logs/<node>.log   each node's output, readable after the node is gone
//! <output>/
//!   map/<item key>/<name>  committed map outputs (a partitioned one:
//!                          map/<key>/part-<p>/<name>)
//!   reduce/<name>          the reduce task's outputs (one partition, or merged)
//!   reduce/part-<p>/<name> a partition's, when there are several
//!   _manifest.json    every committed output (written last)
//!   _mayfly/commits.log  the master's commit log, when the output is local
//!   _mayfly/markers/  one commit marker per shard (create-if-absent), when it is an object store
//!   _mayfly/staging/  attempt-scoped staging (removed at the end)
//! ```
//!
//! In `mayfly-core`'s flow (`core/tests/flow.rs` checks it) it must not import `hold`,
//! `reduce` or `attempt`, or anything above; like its crate, it must not import
//! `mayfly-ops` or the binary.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::Limits;
use mayfly_data::provider::{LaunchRequest, NodeSpec, ProviderHandle, Role, Selection};
use mayfly_data::store::{Location, Principal, Store};
use mayfly_model::plan::Plan;
use mayfly_model::policy::Millis;

/// Everything a node needs to know about its job, written once at bootstrap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The job id.
    pub job: String,
    /// The job name.
    pub name: String,
    /// The provider, as the job file selected and configured it: every node
    /// makes the same one.
    pub provider: mayfly_data::provider::Selection,
    /// The map task's component.
    pub task: PathBuf,
    /// Its sha256.
    pub task_sha256: String,
    /// Its parameters (JSON object).
    pub params: serde_json::Value,
    /// The reduce task, if any: component, sha256, parameters.
    pub reduce: Option<(PathBuf, String, serde_json::Value)>,
    /// The reduce stage's partitions, as resolved at bootstrap (see
    /// [`Manifest::partitions`]; 0 in a manifest of before partitions: one).
    #[serde(default)]
    pub partitions: u32,
    /// What becomes of the partitions' outputs.
    #[serde(default)]
    pub merge: crate::config::Merge,
    /// The input location.
    pub input: Location,
    /// The output location.
    pub output: Location,
    /// The job's own state location (`<state>/<job id>`).
    pub state: Location,
    /// The plan.
    pub plan: Plan,
    /// Worker count.
    pub workers: u32,
    /// Workers the master may launch in place of lost ones (0 in a manifest
    /// written before replacements existed).
    #[serde(default)]
    pub max_replacements: u32,
    /// Per-attempt limits.
    pub limits: Limits,
    /// Attempts per shard.
    pub max_attempts: u32,
    /// Items that may be quarantined before the job stops (the job file's
    /// `max_failed_items`, resolved against the plan's item count).
    #[serde(default = "unbounded")]
    pub max_failed_items: u64,
    /// Commits of one shard the job's storage may refuse in a row before the
    /// shard fails.
    #[serde(default = "default_storage_refusals")]
    pub max_storage_refusals: u32,
    /// How long, in milliseconds, the job may go without a commit while its
    /// storage refuses them before it ends.
    #[serde(default = "default_storage_outage_ms")]
    pub storage_outage_ms: u64,
    /// One instance per shard attempt, or per item.
    #[serde(default)]
    pub isolation: crate::config::Isolation,
    /// Fetches in flight ahead of the task, if the job file sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_ahead: Option<u32>,
    /// Bytes held read ahead, if the job file sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_ahead_memory: Option<u64>,
    /// How the nodes write their lines (`[job] log_format`); unset, as
    /// `MAYFLY_LOG_FORMAT` on each node says, else text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<mayfly_data::nodelog::Format>,
    /// Lease length in ms.
    pub lease_ms: u64,
    /// Idle timeout in ms.
    pub idle_timeout_ms: u64,
    /// Master-lost timeout in ms.
    pub master_lost_timeout_ms: u64,
    /// Credential refresh margin in ms.
    pub refresh_margin_ms: u64,
    /// Lifetime of node credentials in ms (declared by the provider).
    pub credential_ttl_ms: u64,
    /// When bootstrap started.
    pub created_at: Millis,
    /// The absolute deadline.
    pub expires_at: Millis,
}

fn unbounded() -> u64 {
    u64::MAX
}

fn default_storage_refusals() -> u32 {
    20
}

fn default_storage_outage_ms() -> u64 {
    600_000
}

/// The key of a shard's own outputs (those its task writes in `start` or
/// `finish`, not for one item): `_shards/<shard>`, so they are published as
/// `map/_shards/<shard>/<name>`. Output names cannot start with `_`; an
/// input object under `_shards/` (a job run over another job's `map/`) would
/// share the folder, which the publication tolerates (file by file).
pub fn shard_key(shard: u32) -> String {
    format!("_shards/{shard:06}")
}

/// The key of reduce partition `partition`'s outputs: `/reduce` when the job
/// has one partition, `/reduce/part-<p>` otherwise, published as
/// `reduce/<name>` and `reduce/part-<p>/<name>` ([`Layout::map_output`]).
/// An input's key never starts with `/` (refused at listing), so no item's
/// outputs can be taken for a partition's.
pub fn reduce_key(partitions: u32, partition: u32) -> String {
    if partitions <= 1 { "/reduce".to_owned() } else { format!("/reduce/{}", part_name(partition)) }
}

/// `part-<p>`, five digits at least: the folder of a partition's outputs.
pub fn part_name(partition: u32) -> String {
    format!("part-{partition:05}")
}

/// The partition and the name of a partitioned output's name
/// (`part-00003/counts.tsv` is partition 3's `counts.tsv`).
pub fn partition_of(name: &str) -> Option<(u32, &str)> {
    let (part, rest) = name.split_once('/')?;
    let digits = part.strip_prefix("part-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || rest.is_empty() {
        return None;
    }
    Some((digits.parse().ok()?, rest))
}

impl Manifest {
    /// The reduce stage's partitions: 0 without a reduce task.
    pub fn partitions(&self) -> u32 {
        if self.reduce.is_some() { self.partitions.max(1) } else { 0 }
    }

    /// What a task's `partitions()` answers: the map's split of its outputs.
    pub fn task_partitions(&self) -> u32 {
        self.partitions().max(1)
    }
}

/// Where the job's files are: its own state (`<state>/<job id>`), its output
/// location, and this process's local working directory for it.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The job's own state, `<state>/<job id>`.
    pub state: Store,
    /// The output location.
    pub output: Store,
    /// This process's local directory for the job: the state directory itself
    /// when that is local, else `$TMPDIR/mayfly-work/<job id>` (owner only).
    pub work: PathBuf,
}

/// Keys in the job's state.
pub mod keys {
    /// The manifest.
    pub const MANIFEST: &str = "manifest.json";
    /// Where the master listens.
    pub const MASTER: &str = "master.json";
    /// How the job ended.
    pub const FINAL: &str = "final.json";
    /// The job token.
    pub const TOKEN: &str = "secret/token";
    /// The master's journal (a copy, when the state is remote).
    pub const JOURNAL: &str = "journal.jsonl";
    /// The nodes' logs.
    pub const LOGS: &str = "logs";
    /// The workers the master launched in place of lost ones.
    pub const REPLACEMENTS: &str = "replacements.json";
    /// When the master was last alive ([`super::Heartbeat`]).
    pub const HEARTBEAT: &str = "heartbeat.json";
}

/// Whether `key` (an object's key under a location, `/`-separated) is in one
/// of the trees a job reserves rather than in its data: `_mayfly/` (commit
/// markers, staging), an output's `_manifest.json`, and mayfly's temporary
/// files (`.mayfly-*`: probes, `exec` and `replay` staging). Inputs never
/// include them, so an input may be an old job's output: its `map/` and
/// `reduce/` outputs are read, its bookkeeping is not.
pub fn is_reserved(key: &str) -> bool {
    let mut segments = key.split('/');
    segments.clone().any(|s| s == "_mayfly" || s.starts_with(".mayfly-"))
        || segments.next_back() == Some("_manifest.json")
}

/// Why a job's locations could not be opened, or its task fetched.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The state or the output could not be opened.
    #[error(transparent)]
    Open(#[from] mayfly_data::store::OpenError),
    /// The local work directory of a remote state could not be made.
    #[error("creating the work directory {}: {source}", dir.display())]
    WorkDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The task's component could not be fetched from a remote state.
    #[error("fetching the task {at}: {source}")]
    Task {
        /// Where, in the state.
        at: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl Layout {
    /// Local directories: the job `id` under `state`, writing to `output`.
    pub fn local(state: &Path, id: &str, output: &Path) -> Self {
        let dir = state.join(id);
        Layout { state: Store::local(&dir), output: Store::local(output), work: dir }
    }

    /// Opens the locations of job `id` whose own state is `job_state`
    /// (`<state>/<job id>`), remote ones through `provider` with credentials
    /// for `node`.
    pub fn open(
        job_state: &Location,
        id: &str,
        output: &Location,
        provider: &ProviderHandle,
        node: &str,
    ) -> Result<Self, LayoutError> {
        let who = Principal { job: id.to_owned(), state: job_state.to_string(), node: node.to_owned() };
        let state_store = Store::open(job_state, provider, &who)?;
        let output = Store::open(output, provider, &who)?;
        let work = match state_store.local_dir() {
            Some(dir) => dir.to_owned(),
            None => {
                let work = std::env::temp_dir().join("mayfly-work").join(id);
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&work)
                    .map_err(|source| LayoutError::WorkDir { dir: work.clone(), source })?;
                work
            }
        };
        Ok(Layout { state: state_store, output, work })
    }

    /// The job's state location, as providers are told it.
    pub fn state_location(&self) -> String {
        self.state.location().to_string()
    }

    /// The master's journal of the job created at `created_at`: `journal.jsonl`
    /// in a local state; with a remote one, a file in the work directory named
    /// after that run (the master copies it to the state), so that a run that
    /// reuses a job id never reads another run's journal left on this machine.
    pub fn journal(&self, created_at: Millis) -> PathBuf {
        match self.state.local_dir() {
            Some(dir) => dir.join(keys::JOURNAL),
            None => self.work.join(format!("journal-{created_at}.jsonl")),
        }
    }
    /// The key of a node's log in the state.
    pub fn logs_key(node: &str) -> String {
        format!("{}/{node}.log", keys::LOGS)
    }
    /// The names of the nodes that have a log in the state: every node that
    /// ever ran for the job, as far as the state knows (empty if it cannot be
    /// listed).
    pub fn logged_nodes(&self) -> Vec<String> {
        let prefix = format!("{}/", keys::LOGS);
        self.state
            .list(keys::LOGS)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(key, _)| Some(key.strip_prefix(&prefix)?.strip_suffix(".log")?.to_owned()))
            .collect()
    }
    /// The master's commit log, in a local output ([`crate::commits`]).
    pub const COMMIT_LOG: &'static str = "_mayfly/commits.log";
    /// `_mayfly/markers`
    pub fn markers(&self) -> &'static str {
        "_mayfly/markers"
    }
    /// The marker of `shard`.
    pub fn marker(&self, shard: u32) -> String {
        format!("_mayfly/markers/shard-{shard:06}.json")
    }
    /// `_mayfly/staging`
    pub fn staging(&self) -> &'static str {
        "_mayfly/staging"
    }
    /// The staging prefix of one attempt, in the output.
    pub fn attempt_staging(&self, shard: u32, token: u64) -> String {
        format!("_mayfly/staging/shard-{shard:06}-token-{token}")
    }
    /// The attempt (shard, token) whose staging holds `key`, a key of the
    /// output location ([`Layout::attempt_staging`] read back).
    pub fn staged_attempt(&self, key: &str) -> Option<(u32, u64)> {
        let dir = key.strip_prefix("_mayfly/staging/shard-")?.split('/').next()?;
        let (shard, token) = dir.split_once("-token-")?;
        Some((shard.parse().ok()?, token.parse().ok()?))
    }
    /// Where this process stages an attempt's outputs: in place when the
    /// output is local, else in the work directory (uploaded at the end).
    pub fn local_staging(&self, key: &str) -> PathBuf {
        match self.output.local_dir() {
            Some(dir) => dir.join(key),
            None => self.work.join(key),
        }
    }
    /// Where a committed output goes: `map/<key>/<name>`, or for a reduce
    /// partition's ([`reduce_key`]) `reduce/[part-<p>/]<name>`.
    pub fn map_output(&self, key: &str, name: &str) -> String {
        match key.strip_prefix("/reduce") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("reduce{rest}/{name}"),
            _ => format!("map/{key}/{name}"),
        }
    }
    /// The directory of an item's committed map outputs.
    pub fn map_item_dir(&self, key: &str) -> String {
        match key.strip_prefix("/reduce") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("reduce{rest}"),
            _ => format!("map/{key}"),
        }
    }
    /// Where a reduce output goes.
    pub fn reduce_output(&self, name: &str) -> String {
        format!("reduce/{name}")
    }
    /// `_manifest.json`
    pub fn output_manifest(&self) -> &'static str {
        "_manifest.json"
    }
    /// The key a task component is kept under in the state.
    pub fn task_key(sha256: &str) -> String {
        format!("tasks/{sha256}.wasm")
    }
    /// The task component `path` (sha256 `sha`) as this process can load it:
    /// the path itself when the state is local, else a copy fetched from the
    /// state into the work directory.
    pub fn task_file(&self, path: &Path, sha: &str) -> Result<PathBuf, LayoutError> {
        if self.state.local_dir().is_some() {
            return Ok(path.to_owned());
        }
        let local = self.work.join(Self::task_key(sha));
        if !local.exists() {
            self.state
                .download(&Self::task_key(sha), &local)
                .map_err(|source| LayoutError::Task { at: self.state.display(&Self::task_key(sha)), source })?;
        }
        Ok(local)
    }
}

/// Writes `value` as JSON to `path` atomically (temporary file, fsync, rename).
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Reads JSON from `path`.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<T> {
    let bytes = std::fs::read(path)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))
}

/// A fresh job id: the name, the UTC time, and 4 random hex digits.
pub fn new_job_id(name: &str, now: Millis) -> String {
    let secs = now / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    // Only for uniqueness, not secrecy: the time stands in if randomness fails.
    let rand = random_bytes(2).map(hex::encode).unwrap_or_else(|_| format!("{:04x}", now % 0x10000));
    format!("{name}-{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{rand}", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `n` bytes from the OS's random source. Secrets are made from these, so a
/// failure is an error, never a predictable fallback.
pub fn random_bytes(n: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| std::io::Error::new(e.kind(), format!("reading /dev/urandom: {e}")))?;
    Ok(buf)
}

/// Creates the job's secret: the token every node shows the master.
pub fn create_token(layout: &Layout) -> std::io::Result<String> {
    let token = hex::encode(random_bytes(32)?);
    match layout.state.local_dir() {
        Some(dir) => write_secret(&dir.join(keys::TOKEN), token.as_bytes())?,
        // A remote state is private to the job's roles; the token is an object there.
        None => match layout.state.create_all(vec![(keys::TOKEN.to_owned(), token.as_bytes().to_vec())]).pop() {
            Some(Ok(true)) => {}
            Some(Ok(false)) => {
                return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "the job already has a token"));
            }
            Some(Err(e)) => return Err(e),
            None => return Err(std::io::Error::other("no answer")),
        },
    }
    Ok(token)
}

/// Reads the job's token.
pub fn read_token(layout: &Layout) -> std::io::Result<String> {
    let bytes = layout.state.get(keys::TOKEN)?.ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} is missing", layout.state.display(keys::TOKEN)))
    })?;
    Ok(String::from_utf8_lossy(&bytes).trim().to_owned())
}

/// Writes a secret file readable only by its owner.
pub fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).create(parent)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))?;
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The arguments a node runs `mayfly` with. A remote state also carries the
/// provider's selection (no secrets: settings only), which the node needs to
/// read the state at all.
pub fn node_args(role: Role, job: &str, node: &str, state: &str, provider: Option<&Selection>) -> Vec<String> {
    let mut args: Vec<String> = ["node", "--role", &role.to_string(), "--job", job, "--node", node, "--dir", state]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Some(selection) = provider {
        args.push("--provider".into());
        args.push(serde_json::to_string(selection).unwrap_or_default());
    }
    args
}

/// The launch of `nodes` (name, role) of the job laid out at `layout`.
pub fn launch_request(
    layout: &Layout,
    selection: &Selection,
    job: &str,
    expires_at: u64,
    nodes: &[(String, Role)],
) -> LaunchRequest {
    let remote = layout.state.local_dir().is_none().then_some(selection);
    LaunchRequest {
        job: job.to_owned(),
        state: layout.state_location(),
        expires_at,
        nodes: nodes
            .iter()
            .map(|(node, role)| NodeSpec {
                node: node.clone(),
                role: *role,
                args: node_args(*role, job, node, &layout.state_location(), remote),
            })
            .collect(),
    }
}

/// When a job's master was last alive, as it writes every
/// [`Heartbeat::EVERY`] to its state: a serverless entrypoint asked again for
/// the job resumes it only when the master is past `master_lost_timeout`
/// without one (and its provider lists no master).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// When, ms since the epoch, by the master's clock.
    pub at: Millis,
}

impl Heartbeat {
    /// How often the master writes it.
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
}

/// `count` worker names not among `taken`: `worker-<n>` above the highest
/// `n` taken, so that a replacement never takes a lost worker's name (and
/// its log).
pub fn new_worker_names<'a>(count: usize, taken: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let highest = taken.into_iter().filter_map(|n| n.strip_prefix("worker-")?.parse::<u64>().ok()).max().unwrap_or(0);
    (1..=count as u64).map(|i| format!("worker-{}", highest + i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_keys_attempt_is_read_back_from_its_path() {
        let layout = Layout::local(Path::new("/tmp/s"), "j", Path::new("/tmp/o"));
        let dir = layout.attempt_staging(7, 1_800_000_000_123);
        assert_eq!(layout.staged_attempt(&format!("{dir}/a.txt/copy.bin")), Some((7, 1_800_000_000_123)));
        assert_eq!(layout.staged_attempt("_mayfly/staging/shard-x-token-1/a"), None);
        assert_eq!(layout.staged_attempt("map/a.txt/copy.bin"), None);
    }

    #[test]
    fn reserved_trees_are_bookkeeping_and_everything_else_is_data() {
        for key in ["_mayfly/markers/shard-000001.json", "a/_mayfly/staging/x", "_manifest.json", "old/_manifest.json"]
        {
            assert!(is_reserved(key), "{key}");
        }
        for key in [".mayfly-probe-12", "out/.mayfly-staging-3/a"] {
            assert!(is_reserved(key), "{key}");
        }
        for key in ["map/_shards/1/counts.tsv", "reduce/counts.tsv", "_mayfly.txt", "a/b_manifest.json", "x.mayfly-y"] {
            assert!(!is_reserved(key), "{key}");
        }
    }

    #[test]
    fn job_ids_carry_name_and_utc_time() {
        // 2026-11-27 16:20:05 UTC
        let id = new_job_id("demo", 1_795_796_405_000);
        assert!(id.starts_with("demo-20261127-162005-"), "{id}");
        assert_eq!(id.len(), "demo-20261127-162005-".len() + 4);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
