//! A job's identity, its state directory layout, and its manifest.
//!
//! ```text
//! <state>/<job id>/
//!   manifest.json     spec + plan + task hashes + expires_at (written at bootstrap)
//!   journal.jsonl     the master's decisions, fsynced at commit points
//!   master.json       the master's address and pid, once it listens
//!   final.json        the job's end: counts, reason (written by the master)
//!   secret/           the job token (0600), and the local provider's issuer key
//!   nodes/<node>.json the local provider's record of each node process
//!   logs/<node>.log   each node's output, readable after the node is gone
//! <output>/
//!   map/<item key>/<name>  committed map outputs
//!   reduce/<name>          the reduce task's outputs
//!   _manifest.json    every committed output (written last)
//!   _mayfly/markers/  one commit marker per shard (create-if-absent)
//!   _mayfly/staging/  attempt-scoped staging (removed at the end)
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::Limits;
use crate::plan::Plan;
use crate::policy::Millis;

/// Everything a node needs to know about its job, written once at bootstrap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The job id.
    pub job: String,
    /// The job name.
    pub name: String,
    /// The provider, as the job file selected and configured it: every node
    /// makes the same one.
    pub provider: crate::provider::Selection,
    /// The map task's component.
    pub task: PathBuf,
    /// Its sha256.
    pub task_sha256: String,
    /// Its parameters (JSON object).
    pub params: serde_json::Value,
    /// The reduce task, if any: component, sha256, parameters.
    pub reduce: Option<(PathBuf, String, serde_json::Value)>,
    /// The input directory.
    pub input: PathBuf,
    /// The output directory.
    pub output: PathBuf,
    /// The job's own state directory.
    pub state: PathBuf,
    /// The plan.
    pub plan: Plan,
    /// Worker count.
    pub workers: u32,
    /// Per-attempt limits.
    pub limits: Limits,
    /// Attempts per shard.
    pub max_attempts: u32,
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

/// Where the job's files are.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `<state>/<job id>`.
    pub dir: PathBuf,
    /// The output directory.
    pub output: PathBuf,
}

impl Layout {
    /// The layout of job `id` under `state`, writing to `output`.
    pub fn new(state: &Path, id: &str, output: &Path) -> Self {
        Layout { dir: state.join(id), output: output.to_owned() }
    }
    /// manifest.json
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }
    /// journal.jsonl
    pub fn journal(&self) -> PathBuf {
        self.dir.join("journal.jsonl")
    }
    /// master.json
    pub fn master(&self) -> PathBuf {
        self.dir.join("master.json")
    }
    /// final.json
    pub fn final_state(&self) -> PathBuf {
        self.dir.join("final.json")
    }
    /// secret/
    pub fn secret(&self) -> PathBuf {
        self.dir.join("secret")
    }
    /// nodes/
    pub fn nodes(&self) -> PathBuf {
        self.dir.join("nodes")
    }
    /// logs/
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    /// `_mayfly/markers/`
    pub fn markers(&self) -> PathBuf {
        self.output.join("_mayfly").join("markers")
    }
    /// The marker of `shard`.
    pub fn marker(&self, shard: u32) -> PathBuf {
        self.markers().join(format!("shard-{shard:06}.json"))
    }
    /// `_mayfly/staging/`
    pub fn staging(&self) -> PathBuf {
        self.output.join("_mayfly").join("staging")
    }
    /// The staging directory of one attempt.
    pub fn attempt_staging(&self, shard: u32, token: u64) -> PathBuf {
        self.staging().join(format!("shard-{shard:06}-token-{token}"))
    }
    /// Where a committed map output goes.
    pub fn map_output(&self, key: &str, name: &str) -> PathBuf {
        self.output.join("map").join(key).join(name)
    }
    /// Where a reduce output goes.
    pub fn reduce_output(&self, name: &str) -> PathBuf {
        self.output.join("reduce").join(name)
    }
    /// `_manifest.json`
    pub fn output_manifest(&self) -> PathBuf {
        self.output.join("_manifest.json")
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
    write_secret(&layout.secret().join("token"), token.as_bytes())?;
    Ok(token)
}

/// Reads the job's token.
pub fn read_token(layout: &Layout) -> std::io::Result<String> {
    std::fs::read_to_string(layout.secret().join("token")).map(|t| t.trim().to_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

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
