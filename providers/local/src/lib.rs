//! # The local provider
//!
//! mayfly's embedded default: every node is a detached OS process of the
//! `mayfly` binary (its own process group, so a terminal's Ctrl-C does not
//! reach it), with its output appended to `<state>/logs/<node>.log` and a
//! record in `<state>/nodes/<node>.json`. A node is known by its process id
//! and the process's start time, so a recycled pid is never mistaken for it.
//! Credentials are short-lived tokens signed by a per-job issuer key in
//! `<state>/secret/`, so the credential-expiry rule runs on every local job.
//! The object store is the file system (`file://` URLs and plain paths); as a
//! cloud's store would, core's store refuses a node's operation unless the node
//! holds an unexpired credential this issuer signed ([`Issuer`]).
//!
//! Settings (`[provider]` keys): `bootstrap_limit` (default 60s),
//! `credential_ttl` (15m), `max_nodes` (256), `binary` (the program nodes
//! run; default: the running `mayfly`), `identity` (the node record this
//! process is, for tests; nodes learn theirs from `MAYFLY_LOCAL_IDENTITY`).
//!
//! It imports the provider API only, and must not import any crate of mayfly's
//! core: `mayfly-data` links it in as the built-in default, and
//! `mayfly-provider-local-plugin` exports it as a plugin.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mayfly_provider_api::{
    BootstrapRequest, Capabilities, Credential, CredentialRequest, ErrorKind, Host, LaunchRequest, Level, Limits,
    ListRequest, NodeInfo, NodeTypes, Provider, ProviderError, ProviderInfo, Secret, Settings, StoreConfig,
    TerminateRequest, Validity, async_trait, now_ms,
};
use sha2::{Digest, Sha256};

/// The environment variable that tells a node which record is its own.
pub const IDENTITY_ENV: &str = "MAYFLY_LOCAL_IDENTITY";

const NAME: &str = "local";

fn err(kind: ErrorKind, message: impl Into<String>) -> ProviderError {
    ProviderError::new(NAME, kind, message)
}

/// The local provider.
#[derive(Clone)]
pub struct LocalProvider {
    bootstrap_limit: Duration,
    credential_ttl: Duration,
    max_nodes: u32,
    binary: PathBuf,
    identity: Option<PathBuf>,
    host: Arc<dyn Host>,
}

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvider")
            .field("bootstrap_limit", &self.bootstrap_limit)
            .field("credential_ttl", &self.credential_ttl)
            .field("max_nodes", &self.max_nodes)
            .field("binary", &self.binary)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// A path from a `file://` URL or a plain path; other schemes are refused.
pub fn local_path(location: &str) -> Result<PathBuf, ProviderError> {
    if let Some(rest) = location.strip_prefix("file://") {
        return Ok(PathBuf::from(rest));
    }
    if let Some((scheme, _)) = location.split_once("://") {
        return Err(err(
            ErrorKind::Unsupported,
            format!("{location:?}: the local provider serves paths and file:// URLs, not {scheme}://"),
        ));
    }
    Ok(PathBuf::from(location))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.')
}

/// A process's state letter and start time (clock ticks since boot).
fn process_stat(pid: u32) -> Option<(String, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the parenthesised command name: state is the 1st, starttime the 20th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(((*fields.first()?).to_owned(), fields.get(19)?.parse().ok()?))
}

/// A live process's start time (`None` when it is a zombie or gone).
fn process_start(pid: u32) -> Option<u64> {
    process_stat(pid).filter(|(state, _)| state != "Z" && state != "X").map(|(_, start)| start)
}

fn node_id(pid: u32, start: u64) -> String {
    format!("{pid}:{start}")
}

fn parse_id(id: &str) -> Option<(u32, u64)> {
    let (pid, start) = id.split_once(':')?;
    Some((pid.parse().ok()?, start.parse().ok()?))
}

/// Whether the process a node id names is still that node.
pub fn id_alive(id: &str) -> bool {
    parse_id(id).is_some_and(|(pid, start)| process_start(pid) == Some(start))
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).chain(message.iter().copied()).collect();
    let inner = Sha256::digest(&inner);
    let outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).chain(inner.iter().copied()).collect();
    Sha256::digest(&outer).into()
}

fn random_bytes(n: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

/// The job's issuer key, created on first use (create-if-absent, so
/// concurrent first uses agree on one key).
fn issuer_key(state: &Path) -> std::io::Result<Vec<u8>> {
    let path = state.join("secret").join("issuer.key");
    if let Ok(key) = fs::read(&path)
        && key.len() == 32
    {
        return Ok(key);
    }
    let dir = state.join("secret");
    fs::create_dir_all(&dir)?;
    fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let tmp = dir.join(format!(".issuer.{}.{}", std::process::id(), now_ms()));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(&random_bytes(32)?)?;
        f.sync_all()?;
    }
    let linked = fs::hard_link(&tmp, &path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    fs::read(&path)
}

/// A job's credential issuer as a store sees it: the key that signs the
/// credentials it issues, read once, to check them with.
pub struct Issuer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").finish_non_exhaustive()
    }
}

impl Issuer {
    /// The issuer of the job whose state is `state` (it must have issued
    /// something: the key is never created here).
    pub fn open(state: &Path) -> Result<Issuer, String> {
        let key = fs::read(state.join("secret").join("issuer.key"))
            .map_err(|e| format!("credential issuer unavailable: {e}"))?;
        if key.len() != 32 {
            return Err(format!("credential issuer unavailable: its key is {} bytes, not 32", key.len()));
        }
        Ok(Issuer { key })
    }

    /// Checks a credential: signed by this issuer and not expired at `now`.
    pub fn verify(&self, cred: &Credential, now: u64) -> Result<(), String> {
        let Secret::Token { value: secret } = &cred.secret else {
            return Err(format!("credential is {}, not this provider's token", cred.secret.kind()));
        };
        let nonce = secret.split_once('.').map(|(n, _)| n).unwrap_or("");
        let msg = format!("{}|{}|{}|{nonce}", cred.node, cred.validity.issued_at, cred.validity.expires_at);
        let expected = format!("{nonce}.{}", hex::encode(hmac(&self.key, msg.as_bytes())));
        let same = expected.len() == secret.len()
            && expected.bytes().zip(secret.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if !same {
            return Err("credential not issued by this job's issuer".into());
        }
        if now >= cred.validity.expires_at {
            return Err(format!("credential expired {} ms ago", now - cred.validity.expires_at));
        }
        Ok(())
    }
}

/// Checks a credential of this provider: signed by the issuer of the job
/// whose state is `state`, and not expired at `now`.
pub fn verify_credential(state: &Path, cred: &Credential, now: u64) -> Result<(), String> {
    Issuer::open(state)?.verify(cred, now)
}

fn read_record(path: &Path) -> Option<NodeInfo> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

fn write_record(path: &Path, info: &NodeInfo) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(info).map_err(std::io::Error::other)?)?;
    fs::rename(&tmp, path)
}

/// The live nodes recorded in a job's `nodes/` directory.
fn live_nodes(state: &Path) -> Vec<NodeInfo> {
    let mut nodes = Vec::new();
    let Ok(entries) = fs::read_dir(state.join("nodes")) else { return nodes };
    for entry in entries.flatten() {
        if entry.path().extension().is_some_and(|e| e == "json")
            && let Some(info) = read_record(&entry.path())
            && id_alive(&info.id)
        {
            nodes.push(info);
        }
    }
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    nodes
}

/// SIGTERM (and SIGCONT, so a stopped process acts on it), then SIGKILL
/// after `grace` for whatever is still there; returns once all are gone.
async fn end_processes(ids: &[String], grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let pids: Vec<(&String, i32)> = ids.iter().filter_map(|id| parse_id(id).map(|(pid, _)| (id, pid as i32))).collect();
    let alive = |id: &String| id_alive(id);
    for (id, pid) in &pids {
        if alive(id) {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
            let _ = kill(Pid::from_raw(*pid), Signal::SIGCONT);
        }
    }
    let start = std::time::Instant::now();
    while pids.iter().any(|(id, _)| alive(id)) && start.elapsed() < grace {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (id, pid) in &pids {
        if alive(id) {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
    let start = std::time::Instant::now();
    while pids.iter().any(|(id, _)| alive(id)) && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl LocalProvider {
    fn spawn(
        &self,
        state: &Path,
        job: &str,
        expires_at: u64,
        spec: &mayfly_provider_api::NodeSpec,
    ) -> Result<NodeInfo, ProviderError> {
        let io = |what: String| move |e: std::io::Error| err(ErrorKind::Unavailable, format!("{what}: {e}"));
        let log_path = state.join("logs").join(format!("{}.log", spec.node));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(format!("opening {}", log_path.display())))?;
        let err_log = log.try_clone().map_err(io("duplicating the log file".into()))?;
        let record = state.join("nodes").join(format!("{}.json", spec.node));
        let mut child = Command::new(&self.binary)
            .args(&spec.args)
            .env(IDENTITY_ENV, &record)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .process_group(0)
            .spawn()
            .map_err(io(format!("starting {} ({})", spec.node, self.binary.display())))?;
        let pid = child.id();
        // Read while the child is not yet reaped: until then its pid cannot be
        // reused, so this is its start time even if it has already exited.
        let start = process_stat(pid).map(|(_, start)| start).unwrap_or(0);
        let info = NodeInfo {
            node: spec.node.clone(),
            role: spec.role,
            job: job.to_owned(),
            id: node_id(pid, start),
            expires_at,
            launched_at: now_ms(),
            process: Some(pid),
        };
        if let Err(e) = write_record(&record, &info) {
            // A node nobody can find must not run.
            let _ = child.kill();
            let _ = child.wait();
            return Err(io(format!("recording node {}", spec.node))(e));
        }
        // Reap the child when it exits, so that it does not linger as a zombie
        // while the launching process lives; once that process exits, init does.
        std::thread::spawn(move || child.wait());
        self.host.log(Level::Debug, &format!("local: launched {} of job {job} (pid {pid})", spec.node));
        Ok(info)
    }

    fn identity(&self) -> Option<PathBuf> {
        self.identity.clone().or_else(|| std::env::var_os(IDENTITY_ENV).map(PathBuf::from))
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn create(settings: Settings, host: Arc<dyn Host>) -> Result<Self, ProviderError> {
        let mut s = settings.named(NAME);
        let bootstrap_limit = s.duration("bootstrap_limit", Duration::from_secs(60))?;
        let credential_ttl = s.duration("credential_ttl", Duration::from_secs(900))?;
        let max_nodes = s.u64("max_nodes", 256)?;
        let binary = s.string("binary")?.map(PathBuf::from);
        let identity = s.string("identity")?.map(PathBuf::from);
        s.finish()?;
        if credential_ttl < Duration::from_secs(2) {
            return Err(err(ErrorKind::Config, "`provider.credential_ttl` must be at least 2s"));
        }
        if bootstrap_limit < Duration::from_secs(1) {
            return Err(err(ErrorKind::Config, "`provider.bootstrap_limit` must be at least 1s"));
        }
        let max_nodes = u32::try_from(max_nodes)
            .ok()
            .filter(|n| *n >= 2)
            .ok_or_else(|| err(ErrorKind::Config, "`provider.max_nodes` must be between 2 and 4294967295"))?;
        let binary = match binary {
            Some(b) => b,
            None => std::env::current_exe()
                .map_err(|e| err(ErrorKind::Config, format!("cannot find the mayfly binary: {e}")))?,
        };
        Ok(LocalProvider { bootstrap_limit, credential_ttl, max_nodes, binary, identity, host })
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            name: NAME.into(),
            limits: Limits::new(self.bootstrap_limit, self.credential_ttl, self.max_nodes),
            capabilities: Capabilities::default(),
            schemes: vec!["file".into()],
            // The machine the operator already has.
            nodes: Some(NodeTypes::priced("local", "local", &[("local", 0.0)], "this machine, already paid for")),
        }
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Vec<NodeInfo>, ProviderError> {
        self.info().limits.check_launch(NAME, request.nodes.len())?;
        if !valid_name(&request.job) {
            return Err(err(ErrorKind::Config, format!("job id {:?} is not a valid name", request.job)));
        }
        if let Some(bad) = request.nodes.iter().find(|n| !valid_name(&n.node)) {
            return Err(err(ErrorKind::Config, format!("node name {:?} is not a valid name", bad.node)));
        }
        let state = local_path(&request.state)?;
        for dir in ["logs", "nodes"] {
            fs::create_dir_all(state.join(dir))
                .map_err(|e| err(ErrorKind::Unavailable, format!("creating {}: {e}", state.join(dir).display())))?;
        }
        let mut launched = Vec::new();
        for spec in &request.nodes {
            match self.spawn(&state, &request.job, request.expires_at, spec) {
                Ok(info) => launched.push(info),
                Err(e) => {
                    // Nothing half-launched may stay: end what this call started.
                    let ids: Vec<String> = launched.iter().map(|n: &NodeInfo| n.id.clone()).collect();
                    end_processes(&ids, Duration::from_secs(2)).await;
                    return Err(e);
                }
            }
        }
        Ok(launched)
    }

    async fn list(&self, request: ListRequest) -> Result<Vec<NodeInfo>, ProviderError> {
        let state = local_path(&request.state)?;
        match request.job {
            Some(job) => Ok(live_nodes(&state).into_iter().filter(|n| n.job == job).collect()),
            None => {
                let mut all = Vec::new();
                let Ok(entries) = fs::read_dir(&state) else { return Ok(all) };
                for entry in entries.flatten() {
                    all.extend(live_nodes(&entry.path()));
                }
                Ok(all)
            }
        }
    }

    async fn terminate(&self, request: TerminateRequest) -> Result<(), ProviderError> {
        let ids: Vec<String> = request.nodes.iter().map(|n| n.id.clone()).collect();
        if let Some(bad) = request.nodes.iter().find(|n| parse_id(&n.id).is_none()) {
            return Err(err(ErrorKind::Config, format!("node {} has id {:?}, not a local node id", bad.node, bad.id)));
        }
        end_processes(&ids, Duration::from_millis(request.grace_ms)).await;
        Ok(())
    }

    async fn identify(&self) -> Result<Option<NodeInfo>, ProviderError> {
        let Some(record) = self.identity() else { return Ok(None) };
        Ok(read_record(&record))
    }

    async fn terminate_self(&self) -> Result<(), ProviderError> {
        let Some(record) = self.identity() else {
            return Err(err(ErrorKind::Unsupported, "this process is not a node of the local provider"));
        };
        let me = read_record(&record)
            .ok_or_else(|| err(ErrorKind::Unavailable, format!("no node record at {}", record.display())))?;
        let Some((pid, _)) = parse_id(&me.id) else {
            return Err(err(ErrorKind::Config, format!("node record {} has no local id", record.display())));
        };
        if pid == std::process::id() {
            // The caller exits right after this returns; if it does not within
            // five seconds, the node ends anyway, as a deleted VM would. The
            // record stays, as history: a node whose process is gone is not listed.
            std::thread::spawn(|| {
                std::thread::sleep(Duration::from_secs(5));
                std::process::exit(4);
            });
            return Ok(());
        }
        end_processes(&[me.id], Duration::from_secs(2)).await;
        Ok(())
    }

    async fn credentials(&self, request: CredentialRequest) -> Result<Credential, ProviderError> {
        let state = local_path(&request.state)?;
        let key = issuer_key(&state)
            .map_err(|e| err(ErrorKind::Unavailable, format!("credential issuer in {}: {e}", state.display())))?;
        let now = now_ms();
        let validity = Validity { issued_at: now, expires_at: now + self.credential_ttl.as_millis() as u64 };
        let nonce = hex::encode(random_bytes(8).map_err(|e| err(ErrorKind::Unavailable, e.to_string()))?);
        let msg = format!("{}|{}|{}|{nonce}", request.node, validity.issued_at, validity.expires_at);
        Ok(Credential {
            node: request.node,
            secret: Secret::Token { value: format!("{nonce}.{}", hex::encode(hmac(&key, msg.as_bytes()))) },
            validity,
        })
    }

    async fn object_store(&self, url: String) -> Result<StoreConfig, ProviderError> {
        local_path(&url)?;
        Ok(StoreConfig { scheme: "file".into(), options: Default::default() })
    }

    async fn adapt_event(&self, event: serde_json::Value) -> Result<BootstrapRequest, ProviderError> {
        // The local "entrypoint" event: {"job_file": path} or {"job": toml, "base_dir": dir},
        // with optional "overrides" (MAYFLY_* names to values).
        let bad = |m: String| err(ErrorKind::Config, format!("event: {m}"));
        let obj = event.as_object().ok_or_else(|| bad("expected a JSON object with `job` or `job_file`".into()))?;
        let overrides = match obj.get("overrides") {
            None => Default::default(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| bad(format!("`overrides` must map names to strings: {e}")))?,
        };
        let text = |key: &str| -> Result<Option<String>, ProviderError> {
            match obj.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(format!("`{key}` must be a string"))),
            }
        };
        if let Some(file) = text("job_file")? {
            let path = PathBuf::from(&file);
            let job = fs::read_to_string(&path).map_err(|e| bad(format!("reading {file}: {e}")))?;
            let base_dir = path.parent().map(|p| p.to_string_lossy().into_owned());
            return Ok(BootstrapRequest { job, base_dir, overrides, ..Default::default() });
        }
        match text("job")? {
            Some(job) => Ok(BootstrapRequest { job, base_dir: text("base_dir")?, overrides, ..Default::default() }),
            None => Err(bad("expected a JSON object with `job` or `job_file`".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(settings: serde_json::Value) -> Result<LocalProvider, ProviderError> {
        let serde_json::Value::Object(map) = settings else { panic!("settings must be an object") };
        LocalProvider::create(Settings::new("?", map), Arc::new(mayfly_provider_api::NoHost))
    }

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex::encode(mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn credentials_verify_until_they_expire_and_only_for_this_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(serde_json::json!({ "credential_ttl": "10s" })).unwrap();
        let state = dir.path().to_string_lossy().into_owned();
        let req = CredentialRequest { job: "j".into(), state, node: "worker-1".into(), refused: false };
        let c = block(p.credentials(req.clone())).unwrap();
        assert_eq!(c.validity.expires_at - c.validity.issued_at, 10_000);
        assert!(verify_credential(dir.path(), &c, c.validity.expires_at - 1).is_ok());
        assert!(verify_credential(dir.path(), &c, c.validity.expires_at).unwrap_err().contains("expired"));
        let mut forged = c.clone();
        forged.validity.expires_at += 60_000;
        assert!(verify_credential(dir.path(), &forged, c.validity.issued_at).unwrap_err().contains("not issued"));
        // The same issuer key signs the next one; a new nonce makes it differ.
        let c2 = block(p.credentials(req)).unwrap();
        assert_ne!(c.secret, c2.secret);
        assert!(verify_credential(dir.path(), &c2, c2.validity.issued_at).is_ok());
    }

    #[test]
    fn unknown_and_bad_settings_are_refused_by_name() {
        let e = provider(serde_json::json!({ "regoin": "x" })).unwrap_err();
        assert_eq!(
            e.to_string(),
            "provider local: unknown key `provider.regoin` for the local provider (expected bootstrap_limit, credential_ttl, max_nodes, binary, identity)"
        );
        let e = provider(serde_json::json!({ "credential_ttl": "1s" })).unwrap_err();
        assert!(e.message.contains("at least 2s"), "{e}");
        let e = provider(serde_json::json!({ "bootstrap_limit": "soon" })).unwrap_err();
        assert!(e.message.contains("`provider.bootstrap_limit`: invalid duration \"soon\""), "{e}");
    }

    #[test]
    fn other_schemes_and_bad_names_are_refused() {
        let p = provider(serde_json::json!({})).unwrap();
        let e = block(p.object_store("s3://bucket/x".into())).unwrap_err();
        assert!(e.message.contains("not s3://"), "{e}");
        assert_eq!(block(p.object_store("file:///tmp/x".into())).unwrap().scheme, "file");
        let dir = tempfile::tempdir().unwrap();
        let spec = mayfly_provider_api::NodeSpec {
            node: "../escape".into(),
            role: mayfly_provider_api::Role::Worker,
            args: vec![],
        };
        let req = LaunchRequest {
            job: "j".into(),
            state: dir.path().to_string_lossy().into_owned(),
            expires_at: now_ms() + 1000,
            nodes: vec![spec],
        };
        let e = block(p.launch(req)).unwrap_err();
        assert!(e.message.contains("node name \"../escape\" is not a valid name"), "{e}");
    }

    #[test]
    fn a_recycled_pid_is_not_the_node() {
        let me = std::process::id();
        let start = process_start(me).unwrap();
        assert!(id_alive(&node_id(me, start)));
        assert!(!id_alive(&node_id(me, start + 1)));
        assert!(!id_alive("not-an-id"));
    }
}
