//! The worker API between workers (and the CLI) and the master: JSON over
//! HTTPS (the `tls` feature: a per-job CA that clients pin, see [`crate::tls`]),
//! or plain HTTP on loopback only, every request carrying the job's token as
//! `Authorization: Bearer <token>`.
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /v1/lease` [`LeaseRequest`] | [`LeaseReply`] |
//! | `POST /v1/heartbeat` [`HeartbeatRequest`] | [`HeartbeatReply`], 409 if the token is stale |
//! | `POST /v1/commit` [`CommitRequest`] | 200, 409 if the token is stale |
//! | `POST /v1/fail` [`FailRequest`] | 200, 409 if stale |
//! | `POST /v1/release` [`ReleaseRequest`] | 200, 409 if stale |
//! | `GET /v1/status` | [`Status`] |
//! | `POST /v1/holds` (empty body) | 200: the master reads the job's holds from its state again |
//!
//! A request without the token, or with a wrong one, gets 401 and changes nothing.
//!
//! In `mayfly-core`'s flow (`core/tests/flow.rs` checks it) it must not import `config`
//! or anything above; like its crate, it must not import `mayfly-ops` or the binary.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ledger::{Counts, Quarantined, Stage};
use mayfly_model::plan::Item;
use mayfly_model::policy::Millis;

/// Asks for work.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// The asking worker.
    pub worker: String,
    /// When the worker's credentials expire: no lease outlives them.
    pub credential_expires_at: Millis,
}

/// The answer to a lease request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LeaseReply {
    /// A shard to process.
    Lease {
        /// The shard.
        shard: u32,
        /// Its fencing token.
        token: u64,
        /// The attempt number.
        attempt: u32,
        /// When the lease ends unless renewed.
        expires_at: Millis,
        /// What to process.
        items: Vec<Item>,
        /// Where to stage outputs (a directory this attempt owns).
        staging: String,
        /// The stage: a map shard (its items are inputs), or a reduce
        /// partition (its items are map outputs, read as one input).
        #[serde(default, skip_serializing_if = "is_map")]
        stage: Stage,
    },
    /// Nothing pending now; ask again later.
    Wait {
        /// Suggested pause.
        retry_ms: u64,
        /// Work is coming: the reduce's partitions wait for the map's last
        /// shards (a waiting worker is not idle).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        coming: bool,
    },
    /// The job is over: end.
    Done,
    /// An operator holds this worker until `until`: take no work, keep what
    /// it has, and wait (`mayfly hold`).
    Hold {
        /// When the hold ends on its own.
        until: Millis,
    },
}

fn is_map(stage: &Stage) -> bool {
    *stage == Stage::Map
}

/// Extends a lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// The shard.
    pub shard: u32,
    /// The lease's token.
    pub token: u64,
    /// When the worker's credentials expire.
    pub credential_expires_at: Millis,
}

/// The new lease expiry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// When the lease ends unless renewed again.
    pub expires_at: Millis,
    /// Set when an operator holds the worker: it hands the shard back at the
    /// next item and waits (until then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_until: Option<Millis>,
}

/// One staged output of a commit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StagedFile {
    /// The item's key.
    pub key: String,
    /// The output's name.
    pub name: String,
    /// Its length.
    pub bytes: u64,
}

/// Asks the master to commit a shard whose outputs are staged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitRequest {
    /// The shard.
    pub shard: u32,
    /// The lease's token.
    pub token: u64,
    /// The staged outputs (under the lease's staging directory, `<key>/<name>`).
    pub outputs: Vec<StagedFile>,
}

/// Reports a failed attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailRequest {
    /// The shard.
    pub shard: u32,
    /// The lease's token.
    pub token: u64,
    /// What failed, for the operator.
    pub error: String,
    /// Whether a retry could succeed.
    pub retryable: bool,
    /// The item the attempt failed on, when one did (the master may then
    /// quarantine it: the shard goes on without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
}

/// Hands a lease back (a draining worker, or one whose outputs the job's
/// storage refused).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseRequest {
    /// The shard.
    pub shard: u32,
    /// The lease's token.
    pub token: u64,
    /// The job's storage refused the attempt's outputs, saying this: no
    /// attempt is used, but the master counts it as it counts a commit its
    /// storage refused (the shard waits; too many in a row fail it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
}

/// The job as the master sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// The job id.
    pub job: String,
    /// Shards by state.
    pub counts: Counts,
    /// Total shards.
    pub shards: u32,
    /// Input bytes in committed shards.
    pub committed_bytes: u64,
    /// Input bytes in all shards.
    pub total_bytes: u64,
    /// Attempts that failed or expired and were retried.
    pub retries: u32,
    /// When the job started.
    pub started_at: Millis,
    /// The deadline.
    pub expires_at: Millis,
    /// The master's clock.
    pub now: Millis,
    /// Set when the job has ended: why.
    pub ended: Option<String>,
    /// Each worker the master has heard from, by name.
    #[serde(default)]
    pub workers: Vec<WorkerStatus>,
    /// When the first shard was leased (the work's start, for rates).
    #[serde(default)]
    pub first_lease_at: Option<Millis>,
    /// Items quarantined so far (their shards commit without them).
    #[serde(default)]
    pub quarantined_items: u64,
    /// The first of them (at most [`Status::QUARANTINED_SHOWN`]), with their shard.
    #[serde(default)]
    pub quarantined: Vec<(u32, Quarantined)>,
    /// How many items may be quarantined before the job stops.
    #[serde(default)]
    pub max_failed_items: u64,
    /// The reduce stage's partitions by state (`counts` and `shards` are the
    /// map's), when the job has a reduce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce: Option<Counts>,
}

impl Status {
    /// How many quarantined items a status names (the rest are counted).
    pub const QUARANTINED_SHOWN: usize = 10;
}

/// Where the master listens, written to `master.json` once it does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MasterInfo {
    /// host:port
    pub addr: String,
    /// Its process id.
    pub pid: u32,
    /// The job's CA certificate (PEM) when the master serves TLS: clients
    /// trust it and nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

/// What the master knows of one worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerStatus {
    /// Its node name.
    pub node: String,
    /// The shards it holds now.
    pub leased: Vec<u32>,
    /// Shards it committed.
    pub committed: u32,
    /// Input bytes of the shards it committed.
    pub committed_bytes: u64,
    /// Its attempts that failed.
    pub failed: u32,
    /// Its leases that expired (it died, stalled or was cut off).
    pub lost: u32,
    /// When it last asked or reported anything.
    pub last_seen: Millis,
    /// Until when an operator holds it, if one does.
    #[serde(default)]
    pub held_until: Option<Millis>,
}

/// A request body the master cannot decode.
#[derive(Debug, thiserror::Error)]
#[error("malformed request: {0}")]
pub struct Malformed(#[source] pub serde_json::Error);

/// Decodes a request body as the master does (after the token check).
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Malformed> {
    serde_json::from_slice(body).map_err(Malformed)
}

/// Compares secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a call to the master failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer (connection refused, timeout).
    #[error("master unreachable: {0}")]
    Unreachable(String),
    /// The master refused the request.
    #[error("master refused the request ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its explanation.
        message: String,
    },
}

/// Why a client for a job's master could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The master is off loopback and published no certificate: the job
    /// token would cross the network in clear.
    #[error("the master at {0} publishes no TLS certificate; refusing to send the job token in clear")]
    InClear(String),
    /// The job's CA certificate is unusable.
    #[cfg(feature = "tls")]
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The master serves TLS and this build has no TLS client.
    #[error("the master serves TLS, and this mayfly was built without it (build with `--features tls`)")]
    NoTls,
}

/// A client of the worker API.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client for a master serving plain HTTP at `addr` (host:port, on
    /// loopback) with the job token.
    pub fn new(addr: &str, token: &str, timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build();
        Client { base: format!("http://{addr}"), token: token.to_owned(), agent: config.new_agent() }
    }

    /// A client for the master `master.json` describes: over TLS, trusting
    /// only the job's CA, when the master published one; else plain HTTP.
    pub fn connect(info: &MasterInfo, token: &str, timeout: Duration) -> Result<Self, ConnectError> {
        let Some(ca) = &info.ca else {
            // In clear only on loopback: the token never crosses a network unencrypted.
            let ip = info
                .addr
                .rsplit_once(':')
                .and_then(|(h, _)| h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().ok());
            if !ip.is_some_and(|ip| ip.is_loopback()) {
                return Err(ConnectError::InClear(info.addr.clone()));
            }
            return Ok(Self::new(&info.addr, token, timeout));
        };
        #[cfg(feature = "tls")]
        {
            let config = ureq::Agent::config_builder()
                .timeout_global(Some(timeout))
                .http_status_as_error(false)
                .tls_config(crate::tls::client_config(ca)?)
                .build();
            Ok(Client { base: format!("https://{}", info.addr), token: token.to_owned(), agent: config.new_agent() })
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = ca;
            Err(ConnectError::NoTls)
        }
    }

    fn call<T: for<'de> Deserialize<'de>>(&self, path: &str, body: Option<&impl Serialize>) -> Result<T, CallError> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let response = match body {
            Some(b) => self.agent.post(&url).header("authorization", &auth).send_json(b),
            None => self.agent.get(&url).header("authorization", &auth).call(),
        };
        let mut response = response.map_err(|e| CallError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        if status != 200 {
            let message = response.body_mut().read_to_string().unwrap_or_default();
            return Err(CallError::Refused { status, message });
        }
        // A reduce partition's lease lists every map output of its partition:
        // beyond ureq's default 10 MiB with a hundred thousand of them.
        response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_json()
            .map_err(|e| CallError::Unreachable(format!("bad answer: {e}")))
    }

    /// `POST path` with `body` as it is (no JSON encoding), for tools and
    /// tests that probe the API: the answer's status and text.
    pub fn post_raw(&self, path: &str, body: &[u8]) -> Result<(u16, String), CallError> {
        let url = format!("{}{path}", self.base);
        let mut response = self
            .agent
            .post(&url)
            .header("authorization", &format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .send(body)
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        Ok((status, response.body_mut().read_to_string().unwrap_or_default()))
    }

    /// `POST /v1/lease`
    pub fn lease(&self, req: &LeaseRequest) -> Result<LeaseReply, CallError> {
        self.call("/v1/lease", Some(req))
    }
    /// `POST /v1/heartbeat`
    pub fn heartbeat(&self, req: &HeartbeatRequest) -> Result<HeartbeatReply, CallError> {
        self.call("/v1/heartbeat", Some(req))
    }
    /// `POST /v1/commit`
    pub fn commit(&self, req: &CommitRequest) -> Result<serde_json::Value, CallError> {
        self.call("/v1/commit", Some(req))
    }
    /// `POST /v1/fail`
    pub fn fail(&self, req: &FailRequest) -> Result<serde_json::Value, CallError> {
        self.call("/v1/fail", Some(req))
    }
    /// `POST /v1/release`
    pub fn release(&self, req: &ReleaseRequest) -> Result<serde_json::Value, CallError> {
        self.call("/v1/release", Some(req))
    }
    /// `POST /v1/holds`: the holds in the job's state changed.
    pub fn holds_changed(&self) -> Result<serde_json::Value, CallError> {
        self.call("/v1/holds", Some(&serde_json::json!({})))
    }
    /// `GET /v1/status`
    pub fn status(&self) -> Result<Status, CallError> {
        self.call::<Status>("/v1/status", None::<&()>)
    }
}
