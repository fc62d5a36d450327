//! Providers: what a platform must do for mayfly, and the local provider.
//!
//! A provider only declares numbers (its bootstrap limit, its credential
//! lifetime) and performs actions (launch, list, terminate, issue credentials);
//! every decision is made in core ([`crate::policy`]). The trait lives here
//! until the plugin ABI (`providers/api`) exists; see ARCHITECTURE.md.
//!
//! The **local** provider runs each node as a detached OS process of the
//! `mayfly` binary (its own process group, so a terminal's Ctrl-C does not
//! reach it), with its output appended to `<state>/logs/<node>.log`. Its
//! credentials are short-lived tokens from an issuer whose key is in the job's
//! `secret/` directory, so the credential-expiry rule runs on every local job.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::job::{Layout, random_bytes, read_json, write_json_atomic, write_secret};
use crate::policy::{Millis, Validity, ms};

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Its name within the job (`master`, `worker-1`, ...).
    pub node: String,
    /// Its role.
    pub role: Role,
}

/// A node as the provider sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its name within the job.
    pub node: String,
    /// Its role.
    pub role: Role,
    /// The job.
    pub job: String,
    /// The OS process id (local provider).
    pub pid: u32,
    /// The job's deadline, stamped on the node.
    pub expires_at: Millis,
    /// When it was launched.
    pub launched_at: Millis,
}

/// What a provider declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderLimits {
    /// How long its bootstrap may run.
    pub bootstrap_limit: Duration,
    /// How long the credentials it issues live.
    pub credential_ttl: Duration,
}

/// A credential with its validity window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// The node it was issued to.
    pub node: String,
    /// The secret (never logged).
    pub secret: String,
    /// When it is valid.
    pub validity: Validity,
}

/// A provider failure, naming the provider.
#[derive(Debug, thiserror::Error)]
#[error("provider {provider}: {message}")]
pub struct ProviderError {
    /// The provider.
    pub provider: &'static str,
    /// What went wrong.
    pub message: String,
}

/// What a platform must do for mayfly.
pub trait Provider: Send + Sync {
    /// Its name (`local`, `aws`, ...).
    fn name(&self) -> &'static str;
    /// Its declared limits.
    fn limits(&self) -> ProviderLimits;
    /// Launches nodes for the job laid out at `layout`.
    fn launch(
        &self,
        layout: &Layout,
        job: &str,
        expires_at: Millis,
        nodes: &[NodeSpec],
    ) -> Result<Vec<NodeInfo>, ProviderError>;
    /// The job's nodes that are still running.
    fn list(&self, layout: &Layout) -> Result<Vec<NodeInfo>, ProviderError>;
    /// Ends nodes (deleted, not stopped), waiting up to `grace` for them to go.
    fn terminate(&self, layout: &Layout, nodes: &[NodeInfo], grace: Duration) -> Result<(), ProviderError>;
    /// Issues credentials to `node` at `now`.
    fn credentials(&self, layout: &Layout, node: &str, now: Millis) -> Result<Credential, ProviderError>;
}

/// The local provider's settings (`[provider]` keys besides `name`).
#[derive(Debug, Clone)]
pub struct LocalProvider {
    /// `bootstrap_limit` (default 60 s).
    pub bootstrap_limit: Duration,
    /// `credential_ttl` (default 15 min).
    pub credential_ttl: Duration,
    /// The `mayfly` binary the nodes run (default: this one).
    pub binary: PathBuf,
}

impl LocalProvider {
    /// The provider with its settings from the job file.
    pub fn from_settings(
        settings: &std::collections::BTreeMap<String, (toml::Value, Option<usize>)>,
    ) -> Result<Self, String> {
        let mut provider = LocalProvider {
            bootstrap_limit: Duration::from_secs(60),
            credential_ttl: Duration::from_secs(900),
            binary: std::env::current_exe().map_err(|e| format!("cannot find the mayfly binary: {e}"))?,
        };
        for (key, (value, line)) in settings {
            let at = line.map(|l| format!("line {l}: ")).unwrap_or_default();
            let duration = || -> Result<Duration, String> {
                let text = match value {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    _ => return Err(format!("{at}`provider.{key}`: expected a duration such as \"60s\"")),
                };
                text.parse::<crate::units::HumanDuration>()
                    .map(|d| d.0)
                    .map_err(|e| format!("{at}`provider.{key}`: {e}"))
            };
            match key.as_str() {
                "bootstrap_limit" => provider.bootstrap_limit = duration()?,
                "credential_ttl" => provider.credential_ttl = duration()?,
                other => {
                    return Err(format!(
                        "{at}unknown key `provider.{other}` for the local provider (expected bootstrap_limit, credential_ttl)"
                    ));
                }
            }
        }
        if provider.credential_ttl < Duration::from_secs(2) {
            return Err("`provider.credential_ttl` must be at least 2s".into());
        }
        Ok(provider)
    }
}

fn perr(message: impl Into<String>) -> ProviderError {
    ProviderError { provider: "local", message: message.into() }
}

/// Whether `pid` is a live (not zombie) process of node `node` of job `job`.
pub fn process_is_node(pid: u32, job: &str, node: &str) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let has = |flag: &str, value: &str| args.windows(2).any(|w| w[0] == flag.as_bytes() && w[1] == value.as_bytes());
    if !(has("--job", job) && has("--node", node)) {
        return false;
    }
    // State is the field after the parenthesised command name.
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).unwrap_or("Z");
    state != "Z" && state != "X"
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

fn issuer_key(layout: &Layout) -> std::io::Result<Vec<u8>> {
    fs::read(layout.secret().join("issuer.key"))
}

/// Creates the job's secrets: the API token and the credential issuer key.
pub fn create_secrets(layout: &Layout) -> std::io::Result<String> {
    let token = hex::encode(random_bytes(32)?);
    write_secret(&layout.secret().join("token"), token.as_bytes())?;
    write_secret(&layout.secret().join("issuer.key"), &random_bytes(32)?)?;
    Ok(token)
}

/// Reads the job's API token.
pub fn read_token(layout: &Layout) -> std::io::Result<String> {
    fs::read_to_string(layout.secret().join("token")).map(|t| t.trim().to_owned())
}

/// Checks a local credential: issued by this job's issuer and not expired.
pub fn verify_credential(layout: &Layout, cred: &Credential, now: Millis) -> Result<(), String> {
    let key = issuer_key(layout).map_err(|e| format!("credential issuer unavailable: {e}"))?;
    let msg = format!("{}|{}|{}", cred.node, cred.validity.issued_at, cred.validity.expires_at);
    let expected = hex::encode(hmac(&key, msg.as_bytes()));
    if !crate::api::constant_time_eq(expected.as_bytes(), cred.secret.as_bytes()) {
        return Err("credential not issued by this job's issuer".into());
    }
    if now >= cred.validity.expires_at {
        return Err(format!("credential expired {} ms ago", now - cred.validity.expires_at));
    }
    Ok(())
}

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    fn limits(&self) -> ProviderLimits {
        ProviderLimits { bootstrap_limit: self.bootstrap_limit, credential_ttl: self.credential_ttl }
    }

    fn launch(
        &self,
        layout: &Layout,
        job: &str,
        expires_at: Millis,
        nodes: &[NodeSpec],
    ) -> Result<Vec<NodeInfo>, ProviderError> {
        fs::create_dir_all(layout.logs()).map_err(|e| perr(format!("creating {}: {e}", layout.logs().display())))?;
        fs::create_dir_all(layout.nodes()).map_err(|e| perr(format!("creating {}: {e}", layout.nodes().display())))?;
        let mut launched: Vec<NodeInfo> = Vec::new();
        let result = self.launch_each(layout, job, expires_at, nodes, &mut launched);
        if let Err(e) = result {
            // Nothing half-launched may stay: end what this call started.
            terminate_local(&launched, Duration::from_secs(2));
            return Err(e);
        }
        Ok(launched)
    }

    fn list(&self, layout: &Layout) -> Result<Vec<NodeInfo>, ProviderError> {
        list_local_nodes(&layout.nodes())
    }

    fn terminate(&self, _layout: &Layout, nodes: &[NodeInfo], grace: Duration) -> Result<(), ProviderError> {
        terminate_local(nodes, grace);
        Ok(())
    }

    fn credentials(&self, layout: &Layout, node: &str, now: Millis) -> Result<Credential, ProviderError> {
        let key = issuer_key(layout).map_err(|e| perr(format!("credential issuer unavailable: {e}")))?;
        let validity = Validity { issued_at: now, expires_at: now + ms(self.credential_ttl) };
        let msg = format!("{node}|{}|{}", validity.issued_at, validity.expires_at);
        Ok(Credential { node: node.to_owned(), secret: hex::encode(hmac(&key, msg.as_bytes())), validity })
    }
}

impl LocalProvider {
    fn launch_each(
        &self,
        layout: &Layout,
        job: &str,
        expires_at: Millis,
        nodes: &[NodeSpec],
        launched: &mut Vec<NodeInfo>,
    ) -> Result<(), ProviderError> {
        for spec in nodes {
            let log_path = layout.logs().join(format!("{}.log", spec.node));
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| perr(format!("opening {}: {e}", log_path.display())))?;
            let err_log = log.try_clone().map_err(|e| perr(e.to_string()))?;
            let mut child = Command::new(&self.binary)
                .arg("node")
                .args(["--role", &spec.role.to_string(), "--job", job, "--node", &spec.node])
                .arg("--dir")
                .arg(&layout.dir)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err_log)
                .process_group(0)
                .spawn()
                .map_err(|e| perr(format!("starting {} ({}): {e}", spec.node, self.binary.display())))?;
            let info = NodeInfo {
                node: spec.node.clone(),
                role: spec.role,
                job: job.to_owned(),
                pid: child.id(),
                expires_at,
                launched_at: crate::policy::Clock::now(&crate::policy::SystemClock),
            };
            // Reap the child when it exits, so that it does not linger as a zombie
            // while the launching process lives; once that process exits, init does.
            std::thread::spawn(move || child.wait());
            launched.push(info.clone());
            write_json_atomic(&layout.nodes().join(format!("{}.json", spec.node)), &info)
                .map_err(|e| perr(format!("recording node {}: {e}", spec.node)))?;
        }
        Ok(())
    }
}

/// The live nodes recorded in a local job's `nodes/` directory.
pub fn list_local_nodes(dir: &Path) -> Result<Vec<NodeInfo>, ProviderError> {
    let mut nodes = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return Ok(nodes) };
    for entry in entries.flatten() {
        if entry.path().extension().is_some_and(|e| e == "json")
            && let Ok(info) = read_json::<NodeInfo>(&entry.path())
            && process_is_node(info.pid, &info.job, &info.node)
        {
            nodes.push(info);
        }
    }
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(nodes)
}

/// SIGTERM, then SIGKILL after `grace` for whatever is still there.
pub fn terminate_local(nodes: &[NodeInfo], grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let alive = |n: &NodeInfo| process_is_node(n.pid, &n.job, &n.node);
    for n in nodes.iter().filter(|n| alive(n)) {
        let _ = kill(Pid::from_raw(n.pid as i32), Signal::SIGTERM);
        // A stopped process acts on SIGTERM only once continued.
        let _ = kill(Pid::from_raw(n.pid as i32), Signal::SIGCONT);
    }
    let start = std::time::Instant::now();
    while nodes.iter().any(alive) && start.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(20));
    }
    for n in nodes.iter().filter(|n| alive(n)) {
        let _ = kill(Pid::from_raw(n.pid as i32), Signal::SIGKILL);
    }
    let start = std::time::Instant::now();
    while nodes.iter().any(alive) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex::encode(mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn credentials_verify_until_they_expire_and_only_for_this_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), "job", &dir.path().join("out"));
        create_secrets(&layout).unwrap();
        let settings = [("credential_ttl".to_owned(), (toml::Value::String("10s".into()), None))].into();
        let p = LocalProvider::from_settings(&settings).unwrap();
        let c = p.credentials(&layout, "worker-1", 1000).unwrap();
        assert_eq!(c.validity.expires_at, 11_000);
        assert!(verify_credential(&layout, &c, 10_999).is_ok());
        assert!(verify_credential(&layout, &c, 11_000).unwrap_err().contains("expired"));
        let mut forged = c.clone();
        forged.validity.expires_at += 60_000;
        assert!(verify_credential(&layout, &forged, 2000).unwrap_err().contains("not issued"));
    }

    #[test]
    fn unknown_provider_keys_are_refused_by_name() {
        let settings = [("regoin".to_owned(), (toml::Value::String("x".into()), Some(12)))].into();
        let err = LocalProvider::from_settings(&settings).unwrap_err();
        assert!(err.contains("line 12: unknown key `provider.regoin`"), "{err}");
    }
}
