//! The master node: owns the ledger, serves the worker API, makes every commit
//! decision, watches the deadline, runs the reduce task, and ends the job.
//!
//! Commit, in this order: check the fencing token (a stale commit is refused
//! and its staging removed); create the shard's marker in the output location
//! with create-if-absent; journal the commit and fsync; move the staged outputs
//! into place; only then answer. A restarted master ([`run`] on an existing
//! journal) rebuilds the ledger from the markers and the journal, finishes any
//! publication a crash interrupted, and voids the leases it finds.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::api::{
    CommitRequest, FailRequest, HeartbeatReply, HeartbeatRequest, LeaseReply, LeaseRequest, MasterInfo, ReleaseRequest,
    Status, constant_time_eq,
};
use crate::job::{Layout, Manifest, keys};
use crate::ledger::{CommittedOutput, Event, Ledger, Quarantined, ShardState};
use crate::policy::{Clock, CredentialPolicy, Millis, SystemClock, Validity};
use crate::provider::{ProviderHandle, Role};

/// A shard's commit marker: the truth about what is committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    /// The job.
    pub job: String,
    /// The shard.
    pub shard: u32,
    /// The token that committed it.
    pub token: u64,
    /// Its outputs.
    pub outputs: Vec<CommittedOutput>,
    /// The items the shard was committed without (they kept failing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<Quarantined>,
}

/// How a job ended, as written to `final.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FinalState {
    /// The job.
    pub job: String,
    /// `done` or `deadline`.
    pub reason: String,
    /// Shards by state.
    pub counts: crate::ledger::Counts,
    /// Retried attempts.
    pub retries: u32,
    /// When it ended.
    pub ended_at: Millis,
    /// Failed shards: (shard, error).
    pub failed: Vec<(u32, String)>,
    /// Outputs published (map and reduce), relative to the output location.
    pub outputs: Vec<String>,
    /// The reduce task's error, if it failed.
    pub reduce_error: Option<String>,
    /// Items left out because they kept failing: (shard, item).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<(u32, Quarantined)>,
}

struct Master {
    manifest: Manifest,
    layout: Layout,
    ledger: Ledger,
    journal: File,
    token: String,
    retries: u32,
    ended: Option<String>,
    policy: CredentialPolicy,
    committer: std::sync::mpsc::Sender<CommitJob>,
    /// Commits prepared and not yet finished by the committer.
    in_flight: usize,
    /// Commits in a row the job's storage could not record.
    storage_failures: u32,
    /// Whether the last journal write failed.
    journal_failing: bool,
    /// What each worker did, for `status`.
    nodes: std::collections::BTreeMap<String, NodeStats>,
    /// The worker of each live lease, by token.
    holders: std::collections::HashMap<u64, String>,
    /// When the first shard was leased.
    first_lease_at: Option<Millis>,
    /// The operators' holds, as the state last said.
    holds: Vec<crate::hold::Hold>,
}

/// What the master counts of one worker.
#[derive(Debug, Default)]
struct NodeStats {
    last_seen: Millis,
    committed: u32,
    committed_bytes: u64,
    failed: u32,
    lost: u32,
}

type Shared = Arc<Mutex<Master>>;

/// A line of the master's log: when, how severe, what (`mayfly logs` reads
/// the time and the level back).
macro_rules! say {
    ($level:ident, $($arg:tt)*) => {
        crate::nodelog::line(stringify!($level), "master", format_args!($($arg)*))
    };
}

fn now() -> Millis {
    SystemClock.now()
}

impl Master {
    fn record(&mut self, event: &Event, sync: bool) {
        // Each line says when it was decided (`at`, ms since the epoch): the
        // history `status`, `report` and the timeline are drawn from.
        if let Ok(line) = serde_json::to_string(&EntryRef { at: now(), event }) {
            let written =
                writeln!(self.journal, "{line}").and_then(|()| if sync { self.journal.sync_data() } else { Ok(()) });
            match written {
                Ok(()) => self.journal_failing = false,
                // Said once per streak: decisions go on (the commit markers
                // are the truth on resume; the journal only adds history).
                Err(e) if !self.journal_failing => {
                    self.journal_failing = true;
                    say!(WARN, "writing the journal: {e}; going on (commit markers remain the truth)");
                }
                Err(_) => {}
            }
        }
    }

    /// The stats of worker `node`, seen at `at`.
    fn seen(&mut self, node: &str, at: Millis) -> &mut NodeStats {
        let stats = self.nodes.entry(node.to_owned()).or_default();
        stats.last_seen = stats.last_seen.max(at);
        stats
    }

    /// The stats of the worker that holds lease `token`, which ends now.
    fn lease_ended(&mut self, token: u64) -> Option<&mut NodeStats> {
        let node = self.holders.remove(&token)?;
        self.nodes.get_mut(&node)
    }

    fn expire(&mut self, at: Millis) {
        for event in self.ledger.expire(at) {
            if let Event::AttemptFailed { shard, token, error, .. } = &event {
                // Its staging stays until the job's end: a commit of that token
                // may be in the committer right now, and must find its files.
                say!(WARN, "shard {shard} (token {token}): {error}; returned to pending");
                self.retries += 1;
                if let Some(stats) = self.lease_ended(*token) {
                    stats.lost += 1;
                }
            }
            self.record(&event, true);
        }
    }

    fn status(&self) -> Status {
        let counts = self.ledger.counts();
        let committed_bytes = self
            .ledger
            .shards()
            .iter()
            .zip(&self.manifest.plan.shards)
            .filter(|(r, _)| matches!(r.state, ShardState::Committed { .. }))
            .map(|(_, s)| s.bytes)
            .sum();
        let mut workers: Vec<crate::api::WorkerStatus> = self
            .nodes
            .iter()
            .map(|(node, n)| crate::api::WorkerStatus {
                node: node.clone(),
                leased: Vec::new(),
                committed: n.committed,
                committed_bytes: n.committed_bytes,
                failed: n.failed,
                lost: n.lost,
                last_seen: n.last_seen,
                held_until: crate::hold::held_until(&self.holds, node, now()),
            })
            .collect();
        for (shard, record) in self.ledger.shards().iter().enumerate() {
            // `workers` is sorted by name (from a BTreeMap).
            if let ShardState::Leased { worker, .. } = &record.state
                && let Ok(i) = workers.binary_search_by(|w| w.node.as_str().cmp(worker))
            {
                workers[i].leased.push(shard as u32);
            }
        }
        let quarantined_items = self.ledger.quarantined().count() as u64;
        let quarantined =
            self.ledger.quarantined().take(Status::QUARANTINED_SHOWN).map(|(shard, q)| (shard, q.clone())).collect();
        Status {
            workers,
            first_lease_at: self.first_lease_at,
            quarantined_items,
            quarantined,
            max_failed_items: self.manifest.max_failed_items,
            job: self.manifest.job.clone(),
            counts,
            shards: self.manifest.plan.shards.len() as u32,
            committed_bytes,
            total_bytes: self.manifest.plan.total_bytes,
            retries: self.retries,
            started_at: self.manifest.created_at,
            expires_at: self.manifest.expires_at,
            now: now(),
            ended: self.ended.clone(),
        }
    }

    /// The first half of a commit, under the lock: the token is current and
    /// the staged outputs are there. Returns the marker to write.
    fn prepare_commit(&mut self, req: &CommitRequest) -> Result<Marker, (StatusCode, String)> {
        if self.ended.is_some() {
            return Err((StatusCode::CONFLICT, "the job has ended".into()));
        }
        if let Err(e) = self.ledger.check(req.shard, req.token) {
            self.drop_local_staging(req.shard, req.token);
            return Err((StatusCode::CONFLICT, e.to_string()));
        }
        let shard = &self.manifest.plan.shards[req.shard as usize];
        let shard_key = crate::job::shard_key(req.shard);
        let left_out = &self.ledger.shards()[req.shard as usize].quarantined;
        // The items this attempt was leased: the shard's, less those left out
        // (built only when some output is an item's: a combiner's commit,
        // with its shard's outputs alone, costs nothing per item here).
        let keys: std::collections::HashSet<String> = if req.outputs.iter().any(|o| o.key != shard_key) {
            let left_out: std::collections::HashSet<&str> = left_out.iter().map(|q| q.key.as_str()).collect();
            shard.items.iter().map(|i| i.key()).filter(|k| !left_out.contains(k.as_str())).collect()
        } else {
            Default::default()
        };
        for out in &req.outputs {
            if (out.key != shard_key && !keys.contains(&out.key)) || crate::host::check_output_name(&out.name).is_some()
            {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("output {}/{} is not part of shard {}", out.key, out.name, req.shard),
                ));
            }
        }
        let outputs: Vec<CommittedOutput> = req
            .outputs
            .iter()
            .map(|o| CommittedOutput { key: o.key.clone(), name: o.name.clone(), bytes: o.bytes })
            .collect();
        self.in_flight += 1;
        let quarantined = self.ledger.shards()[req.shard as usize].quarantined.clone();
        Ok(Marker { job: self.manifest.job.clone(), shard: req.shard, token: req.token, outputs, quarantined })
    }

    /// Removes an attempt's staging when it is a local directory (cheap);
    /// remote staging goes with the whole staging prefix at the job's end.
    fn drop_local_staging(&self, shard: u32, token: u64) {
        if let Some(dir) = self.layout.output.local_dir() {
            let _ = std::fs::remove_dir_all(dir.join(self.layout.attempt_staging(shard, token)));
        }
    }

    /// The last half, under the lock again, once the committer decided. It
    /// runs in the committer, not in the request, so that a client that hangs
    /// up cannot leave a marked shard uncommitted in the ledger.
    fn finish_commit(&mut self, marker: &Marker, decided: &Result<(), (StatusCode, String)>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let adopt = match decided {
            Ok(()) => Some(marker.clone()),
            // Someone's marker exists: that one is the truth, make the ledger agree.
            Err((StatusCode::CONFLICT, _)) => {
                self.layout.output.read_json::<Marker>(&self.layout.marker(marker.shard)).ok().flatten()
            }
            Err((StatusCode::SERVICE_UNAVAILABLE, _)) => {
                // The job's storage failed: its worker hands the shard back
                // (no attempt used), and it waits before it is leased again,
                // longer while the failures go on (0.25 s doubling, at most 8 s).
                self.storage_failures = self.storage_failures.saturating_add(1);
                let wait = 250u64 << self.storage_failures.saturating_sub(1).min(5);
                self.ledger.delay(marker.shard, now() + wait);
                None
            }
            Err(_) => None,
        };
        if decided.is_ok() {
            self.storage_failures = 0;
        }
        if let Some(m) = adopt {
            let already = matches!(
                self.ledger.shards().get(m.shard as usize).map(|r| &r.state),
                Some(ShardState::Committed { .. })
            );
            if !already && let Ok(event) = self.ledger.commit_marked(m.shard, m.token, m.outputs, m.quarantined) {
                // Not fsynced: the marker, already durable, is the truth on resume.
                self.record(&event, false);
                let bytes = self.manifest.plan.shards.get(m.shard as usize).map_or(0, |s| s.bytes);
                if let Some(stats) = self.lease_ended(m.token) {
                    stats.committed += 1;
                    stats.committed_bytes += bytes;
                    stats.last_seen = stats.last_seen.max(now());
                }
            }
        }
    }
}

/// Committer threads: batches in flight at once.
const COMMITTERS: usize = 2;

/// A commit waiting for the committer.
struct CommitJob {
    marker: Marker,
    reply: tokio::sync::oneshot::Sender<Result<(), (StatusCode, String)>>,
}

/// The committer: makes the commit decisions outside the master's lock, in
/// batches (group commit). For a batch it writes every marker's content, makes
/// it all durable with one `syncfs`, then creates each marker by hard link
/// (create-if-absent: exactly one winner per shard), syncs the directory once,
/// and publishes the winners' outputs. One sync per batch instead of two per
/// shard is what lets a master keep up with many workers.
fn committer(layout: Layout, jobs: Arc<Mutex<std::sync::mpsc::Receiver<CommitJob>>>, shared: Shared) {
    let (mut commits, mut batches, mut busy) = (0usize, 0usize, Duration::ZERO);
    loop {
        // Several committers share the queue, so batches overlap their syncs;
        // create-if-absent still picks one winner per shard across them.
        let batch = {
            let Ok(jobs) = jobs.lock() else { return };
            let Ok(first) = jobs.recv() else { return };
            let mut batch = vec![first];
            while batch.len() < 1024 {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            batch
        };
        let started = std::time::Instant::now();
        let results = decide_batch(&layout, batch.iter().map(|j| &j.marker).collect());
        busy += started.elapsed();
        commits += batch.len();
        batches += 1;
        if batches.is_multiple_of(500) {
            say!(
                INFO,
                "committer: {commits} commits in {batches} batches, {:.1} ms each",
                busy.as_secs_f64() * 1e3 / batches as f64
            );
        }
        if let Ok(mut m) = shared.lock() {
            for (job, result) in batch.iter().zip(&results) {
                m.finish_commit(&job.marker, result);
            }
        }
        for (job, result) in batch.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }
}

fn decide_batch(layout: &Layout, markers: Vec<&Marker>) -> Vec<Result<(), (StatusCode, String)>> {
    let unavailable = |e: std::io::Error| (StatusCode::SERVICE_UNAVAILABLE, format!("writing the commit marker: {e}"));
    // 1. Every staged output is there, with the size its worker reported (one
    //    listing per shard, outside the master's lock).
    let mut decided: Vec<Result<(), (StatusCode, String)>> = markers
        .iter()
        .map(|m| {
            let staging = layout.attempt_staging(m.shard, m.token);
            let listed: std::collections::BTreeMap<String, u64> = layout
                .output
                .list(&staging)
                .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, format!("listing the staged outputs: {e}")))?
                .into_iter()
                .collect();
            for out in &m.outputs {
                if listed.get(&format!("{staging}/{}/{}", out.key, out.name)) != Some(&out.bytes) {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        format!("staged output {}/{} is missing or has the wrong size", out.key, out.name),
                    ));
                }
            }
            Ok(())
        })
        .collect();
    // 2. Create-if-absent, each marker with its content: exactly one winner per
    //    shard (locally: contents durable with one sync, then hard links;
    //    remotely: conditional puts).
    let mut items = Vec::new();
    let mut which = Vec::new();
    for (i, m) in markers.iter().enumerate() {
        if decided[i].is_ok() {
            match serde_json::to_vec_pretty(m) {
                Ok(bytes) => {
                    items.push((layout.marker(m.shard), bytes));
                    which.push(i);
                }
                Err(e) => decided[i] = Err(unavailable(std::io::Error::other(e))),
            }
        }
    }
    for (i, created) in which.into_iter().zip(layout.output.create_all(items)) {
        let m = markers[i];
        decided[i] = match created {
            Ok(true) => Ok(()),
            Ok(false) => match layout.output.read_json::<Marker>(&layout.marker(m.shard)) {
                // Our own marker: a retried conditional put whose first try
                // landed (its answer was lost). The commit is ours.
                Ok(Some(existing)) if existing.token == m.token => Ok(()),
                Ok(Some(winner)) => {
                    // Another attempt's marker: make sure its outputs are in
                    // place (idempotent) before this attempt's staging goes.
                    if let Err(e) = publish(layout, &winner) {
                        say!(WARN, "shard {}: publishing the committed attempt: {e}", winner.shard);
                    }
                    let _ = layout.output.delete_prefix(&layout.attempt_staging(m.shard, m.token));
                    Err((StatusCode::CONFLICT, format!("shard {} is already committed", m.shard)))
                }
                // Not readable now: keep everything, the worker retries.
                Ok(None) => Err(unavailable(std::io::Error::other("the marker exists but cannot be read yet"))),
                Err(e) => Err(unavailable(e)),
            },
            Err(e) => Err(unavailable(e)),
        };
    }
    // 3. Only now do the winners' outputs become visible; a staging goes only
    //    once its outputs are in place.
    for (m, r) in markers.iter().zip(&decided) {
        if r.is_ok() {
            match publish(layout, m) {
                Ok(()) => {
                    let _ = layout.output.delete_prefix(&layout.attempt_staging(m.shard, m.token));
                }
                // The marker is written: the commit stands, the staging stays,
                // and publication is tried again at the job's end and on resume.
                Err(e) => say!(ERROR, "shard {}: committed, but moving its outputs failed: {e}", m.shard),
            }
        }
    }
    decided
}

/// Moves a committed shard's staged outputs into place (idempotent). An
/// item's outputs move with their directory in one rename where the store
/// allows (a local one, the item's directory not yet there); file by file
/// otherwise. Nothing may delete a committed attempt's staging while this
/// runs (a walk that had opened the item's directory would follow it into
/// place): stagings go after their publish, and the job's end drains the
/// committers before it removes the staging area.
fn publish(layout: &Layout, marker: &Marker) -> std::io::Result<()> {
    let staging = layout.attempt_staging(marker.shard, marker.token);
    let mut by_item: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
    for out in &marker.outputs {
        by_item.entry(out.key.as_str()).or_default().push(out.name.as_str());
    }
    for (key, names) in by_item {
        let whole = names.iter().all(|n| !n.contains('/'))
            && layout.output.rename_dir_holding(&format!("{staging}/{key}"), &layout.map_item_dir(key), &names)?;
        if !whole {
            for name in names {
                layout.output.rename(&format!("{staging}/{key}/{name}"), &layout.map_output(key, name))?;
            }
        }
    }
    Ok(())
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else { return false };
    let presented = value.strip_prefix("Bearer ").unwrap_or("");
    constant_time_eq(presented.as_bytes(), token.as_bytes())
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, message.into()).into_response()
}

fn json<T: Serialize>(value: &T) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}

/// Checks the token, then parses the body: an unauthenticated request learns
/// nothing, not even whether its body was well-formed.
fn guard<T: for<'de> Deserialize<'de>>(
    m: &Master,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, (StatusCode, String)> {
    if !authorized(headers, &m.token) {
        say!(WARN, "refused a request without a valid job token ({} bytes of body)", body.len());
        return Err((StatusCode::UNAUTHORIZED, "missing or wrong job token".into()));
    }
    crate::api::decode(body).map_err(|e| (StatusCode::BAD_REQUEST, e))
}

async fn lease(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(mut m) = s.lock() else { return refuse(StatusCode::INTERNAL_SERVER_ERROR, "master state poisoned") };
    let req: LeaseRequest = match guard(&m, &headers, &body) {
        Ok(r) => r,
        Err((status, message)) => return refuse(status, message),
    };
    let t = now();
    m.expire(t);
    if m.ended.is_some() {
        return json(&LeaseReply::Done);
    }
    m.seen(&req.worker, t);
    if let Some(until) = crate::hold::held_until(&m.holds, &req.worker, t) {
        return json(&LeaseReply::Hold { until });
    }
    let worker_cred = Validity { issued_at: t, expires_at: req.credential_expires_at };
    let expires_at = m.policy.lease_expiry(t, Duration::from_millis(m.manifest.lease_ms), worker_cred);
    if expires_at < t + 1000 {
        // Credentials about to expire: refresh first; no lease may outlive them.
        return json(&LeaseReply::Wait { retry_ms: 200 });
    }
    match m.ledger.lease(&req.worker, t, expires_at) {
        Some((lease, event)) => {
            m.record(&event, false);
            m.seen(&req.worker, t);
            m.holders.insert(lease.token, req.worker.clone());
            m.first_lease_at.get_or_insert(t);
            // Without the items it was given up on.
            let left_out = &m.ledger.shards()[lease.shard as usize].quarantined;
            let items: Vec<_> = m.manifest.plan.shards[lease.shard as usize]
                .items
                .iter()
                .filter(|i| left_out.is_empty() || !left_out.iter().any(|q| q.key == i.key()))
                .cloned()
                .collect();
            let staging = m.layout.attempt_staging(lease.shard, lease.token);
            say!(INFO, "shard {} attempt {} leased to {}", lease.shard, lease.attempt, req.worker);
            json(&LeaseReply::Lease {
                shard: lease.shard,
                token: lease.token,
                attempt: lease.attempt,
                expires_at: lease.expires_at,
                items,
                staging,
            })
        }
        None if m.ledger.is_done() => json(&LeaseReply::Done),
        None => json(&LeaseReply::Wait { retry_ms: 250 }),
    }
}

async fn heartbeat(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(mut m) = s.lock() else { return refuse(StatusCode::INTERNAL_SERVER_ERROR, "master state poisoned") };
    let req: HeartbeatRequest = match guard(&m, &headers, &body) {
        Ok(r) => r,
        Err((status, message)) => return refuse(status, message),
    };
    let t = now();
    m.expire(t);
    let cred = Validity { issued_at: t, expires_at: req.credential_expires_at };
    let expires_at = m.policy.lease_expiry(t, Duration::from_millis(m.manifest.lease_ms), cred);
    match m.ledger.heartbeat(req.shard, req.token, expires_at) {
        Ok(()) => {
            let mut hold_until = None;
            if let Some(node) = m.holders.get(&req.token).cloned() {
                m.seen(&node, t);
                hold_until = crate::hold::held_until(&m.holds, &node, t);
            }
            json(&HeartbeatReply { expires_at, hold_until })
        }
        Err(e) => refuse(StatusCode::CONFLICT, e.to_string()),
    }
}

async fn commit(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let prepared = {
        let Ok(mut m) = s.lock() else { return refuse(StatusCode::INTERNAL_SERVER_ERROR, "master state poisoned") };
        let req: CommitRequest = match guard(&m, &headers, &body) {
            Ok(r) => r,
            Err((status, message)) => return refuse(status, message),
        };
        m.expire(now());
        (req.shard, m.prepare_commit(&req))
    };
    let (shard, marker) = match prepared {
        (shard, Ok(p)) => (shard, p),
        (shard, Err((status, message))) => {
            say!(WARN, "commit of shard {shard} refused: {message}");
            return refuse(status, message);
        }
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let queued =
        s.lock().map(|m| m.committer.send(CommitJob { marker: marker.clone(), reply }).is_ok()).unwrap_or(false);
    if !queued {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "the committer is gone");
    }
    match answer.await.map(|r| r.map(|()| marker)) {
        Ok(Ok(marker)) => {
            let n = marker.outputs.len();
            say!(INFO, "shard {shard} committed ({n} outputs)");
            json(&serde_json::json!({ "committed": shard }))
        }
        Ok(Err((status, message))) => {
            say!(WARN, "commit of shard {shard} refused: {message}");
            refuse(status, message)
        }
        Err(_) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "the committer did not answer"),
    }
}

async fn fail(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(mut m) = s.lock() else { return refuse(StatusCode::INTERNAL_SERVER_ERROR, "master state poisoned") };
    let req: FailRequest = match guard(&m, &headers, &body) {
        Ok(r) => r,
        Err((status, message)) => return refuse(status, message),
    };
    // Only an item of the shard can be quarantined (a worker naming anything
    // else fails its attempt as a whole).
    let item = req.item.as_ref().filter(|k| {
        m.manifest.plan.shards.get(req.shard as usize).is_some_and(|s| s.items.iter().any(|i| &i.key() == *k))
    });
    let event = match item {
        Some(item) => m.ledger.fail_item(req.shard, req.token, &req.error, req.retryable, item),
        None => m.ledger.fail(req.shard, req.token, &req.error, req.retryable),
    };
    match event {
        Ok(event) => {
            match &event {
                Event::AttemptFailed { quarantined: true, item: Some(item), .. } => {
                    say!(
                        WARN,
                        "shard {}: item {item} quarantined; the shard goes on without it: {}",
                        req.shard,
                        req.error
                    );
                    m.retries += 1;
                }
                Event::AttemptFailed { final_failure, error, .. } => {
                    let what = if *final_failure { "failed for good" } else { "will be retried" };
                    if *final_failure {
                        say!(ERROR, "shard {} attempt failed ({what}): {error}", req.shard);
                    } else {
                        say!(WARN, "shard {} attempt failed ({what}): {error}", req.shard);
                        m.retries += 1;
                    }
                }
                _ => {}
            }
            m.record(&event, true);
            if let Some(stats) = m.lease_ended(req.token) {
                stats.failed += 1;
                stats.last_seen = stats.last_seen.max(now());
            }
            m.drop_local_staging(req.shard, req.token);
            json(&serde_json::json!({}))
        }
        Err(e) => refuse(StatusCode::CONFLICT, e.to_string()),
    }
}

async fn release(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(mut m) = s.lock() else { return refuse(StatusCode::INTERNAL_SERVER_ERROR, "master state poisoned") };
    let req: ReleaseRequest = match guard(&m, &headers, &body) {
        Ok(r) => r,
        Err((status, message)) => return refuse(status, message),
    };
    match m.ledger.release(req.shard, req.token) {
        Ok(event) => {
            m.record(&event, true);
            if let Some(stats) = m.lease_ended(req.token) {
                stats.last_seen = stats.last_seen.max(now());
            }
            m.drop_local_staging(req.shard, req.token);
            json(&serde_json::json!({}))
        }
        Err(e) => refuse(StatusCode::CONFLICT, e.to_string()),
    }
}

/// The CLI changed the holds in the state: read them again (the state is the
/// truth; this only makes them take effect at once).
async fn holds_changed(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let layout = {
        let Ok(m) = s.lock() else { return refuse(StatusCode::INTERNAL_SERVER_ERROR, "master state poisoned") };
        if !authorized(&headers, &m.token) {
            say!(WARN, "refused a request without a valid job token (holds)");
            return refuse(StatusCode::UNAUTHORIZED, "missing or wrong job token");
        }
        m.layout.clone()
    };
    // Read outside the lock: a remote state is a listing and a few reads.
    let read = tokio::task::spawn_blocking(move || crate::hold::all(&layout)).await;
    match read {
        Ok(Ok(holds)) => {
            let Ok(mut m) = s.lock() else { return refuse(StatusCode::INTERNAL_SERVER_ERROR, "master state poisoned") };
            let t = now();
            let names: Vec<String> =
                holds.iter().filter(|h| h.until > t).map(|h| format!("{} until {}", h.node, h.until)).collect();
            say!(INFO, "holds: {}", if names.is_empty() { "none".to_owned() } else { names.join(", ") });
            m.holds = holds;
            json(&serde_json::json!({ "holds": names.len() }))
        }
        Ok(Err(e)) => refuse(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn status(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let Ok(m) = s.lock() else { return refuse(StatusCode::INTERNAL_SERVER_ERROR, "master state poisoned") };
    if !authorized(&headers, &m.token) {
        return refuse(StatusCode::UNAUTHORIZED, "missing or wrong job token");
    }
    json(&m.status())
}

/// Listens on `addr` with a backlog for thousands of workers connecting at
/// once (tokio's default, 1024, drops the rest's SYNs, which then retry after
/// 1, 3, 7, 15 s); the kernel caps it at `net.core.somaxconn`.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(16_384)
}

/// The address the master serves on: `MAYFLY_LISTEN` (an IP address the
/// provider's launch sets, e.g. the instance's private address from IMDS on
/// EC2, or `ip:port` for a fixed port), else loopback on a free port. Off
/// loopback, only with TLS.
fn listen_address() -> Result<std::net::SocketAddr, String> {
    let addr = match std::env::var("MAYFLY_LISTEN") {
        Ok(v) if !v.is_empty() => v
            .parse::<std::net::SocketAddr>()
            .or_else(|_| v.parse::<std::net::IpAddr>().map(|ip| (ip, 0).into()))
            .map_err(|e| format!("MAYFLY_LISTEN {v:?}: not an IP address or ip:port: {e}"))?,
        _ => std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    if !cfg!(feature = "tls") && !addr.ip().is_loopback() {
        return Err(format!(
            "this mayfly was built without TLS (`--features tls`): the master does not serve the job's traffic on {} in clear",
            addr.ip()
        ));
    }
    Ok(addr)
}

/// The address the master tells workers to use: `MAYFLY_ADVERTISE` (`ip:port`,
/// when something between them forwards, such as a NAT or a proxy), else the
/// one it listens on. Its IP must be the listening one's, the one its
/// certificate names.
fn advertised_address(listening: std::net::SocketAddr) -> Result<std::net::SocketAddr, String> {
    match std::env::var("MAYFLY_ADVERTISE") {
        Ok(v) if !v.is_empty() => {
            let addr =
                v.parse::<std::net::SocketAddr>().map_err(|e| format!("MAYFLY_ADVERTISE {v:?}: not ip:port: {e}"))?;
            if addr.ip() != listening.ip() {
                return Err(format!(
                    "MAYFLY_ADVERTISE {v:?}: its IP must be the one the master listens on ({}), which its certificate names",
                    listening.ip()
                ));
            }
            Ok(addr)
        }
        _ => Ok(listening),
    }
}

fn via(advertised: std::net::SocketAddr, listening: std::net::SocketAddr) -> String {
    if advertised == listening { String::new() } else { format!("; workers are told {advertised}") }
}

/// One line of the journal: a decision and when it was made (`at` is
/// missing in journals written before it was recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// When, in ms since the epoch, by the master's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Millis>,
    /// The decision.
    #[serde(flatten)]
    pub event: Event,
}

/// How [`Master::record`] writes an [`Entry`] without copying the event.
#[derive(Serialize)]
struct EntryRef<'a> {
    at: Millis,
    #[serde(flatten)]
    event: &'a Event,
}

/// Reads the journal, skipping a torn last line.
pub fn read_journal(path: &Path) -> Vec<Event> {
    read_entries(path).into_iter().map(|e| e.event).collect()
}

/// Reads the journal with the time of each decision, skipping a torn last line.
pub fn read_entries(path: &Path) -> Vec<Entry> {
    let Ok(f) = File::open(path) else { return Vec::new() };
    parse_entries(std::io::BufReader::new(f))
}

/// Parses journal lines (skipping any that do not parse: a torn last line).
pub fn parse_entries(reader: impl BufRead) -> Vec<Entry> {
    reader.lines().map_while(Result::ok).filter_map(|l| serde_json::from_str(&l).ok()).collect()
}

/// Reads every commit marker of the job.
pub fn read_markers(layout: &Layout) -> Vec<Marker> {
    let listed = layout.output.list(layout.markers()).unwrap_or_else(|e| {
        say!(WARN, "listing the commit markers: {e}");
        Vec::new()
    });
    let mut markers: Vec<Marker> = listed
        .into_iter()
        .filter(|(key, _)| key.ends_with(".json"))
        .filter_map(|(key, _)| layout.output.read_json::<Marker>(&key).ok().flatten())
        .collect();
    markers.sort_by_key(|m| m.shard);
    markers
}

/// Reads the markers and finishes any publication a crash interrupted. A
/// marker whose outputs are neither staged nor in place (its worker dropped the
/// staging when the master died before answering) is removed, so the shard runs
/// again: nothing of it was visible, and losing it is not an option.
pub fn recover_markers(layout: &Layout) -> Vec<Marker> {
    let mut markers = read_markers(layout);
    markers.retain(|marker| {
        let staging = layout.attempt_staging(marker.shard, marker.token);
        match publish(layout, marker) {
            Ok(()) => {
                let _ = layout.output.delete_prefix(&staging);
                true
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                // A transient failure (permissions, space): keep the commit and
                // say so; publication is tried again at the next start.
                say!(WARN, "finishing the publication of shard {}: {e}", marker.shard);
                true
            }
            Err(e) => {
                // Committed, but its outputs are neither staged nor in place:
                // nothing of it is visible, so it is safe, and necessary, to
                // run it again rather than to lose it.
                say!(
                    WARN,
                    "shard {} was marked committed but its outputs are gone ({e}); it will run again",
                    marker.shard
                );
                let _ = layout.output.delete(&layout.marker(marker.shard));
                for out in &marker.outputs {
                    let _ = layout.output.delete(&layout.map_output(&out.key, &out.name));
                }
                false
            }
        }
    });
    markers
}

/// Copies the journal into a remote state (a local one already holds it), so
/// that a master restarted elsewhere finds it.
fn save_journal(layout: &Layout, manifest: &Manifest) {
    if layout.state.local_dir().is_none()
        && let Err(e) = layout.state.upload(&layout.journal(manifest.created_at), keys::JOURNAL)
    {
        say!(WARN, "copying the journal to {}: {e}", layout.state.display(keys::JOURNAL));
    }
}

/// Runs the master of the job laid out at `layout` until the job ends.
/// Returns the process exit code.
pub fn run(layout: Layout, manifest: Manifest, provider: &ProviderHandle) -> Result<i32, String> {
    let token = crate::job::read_token(&layout).map_err(|e| format!("reading the job token: {e}"))?;

    // Rebuild from the markers (the truth) and the journal, finishing any
    // publication a crash interrupted.
    let markers = recover_markers(&layout);
    if layout.state.local_dir().is_none() && !layout.journal(manifest.created_at).exists() {
        // A master restarted on another machine: the last copy of the journal.
        let _ = layout.state.download(keys::JOURNAL, &layout.journal(manifest.created_at));
    }
    let journal_events = read_journal(&layout.journal(manifest.created_at));
    let marker_list: Vec<(u32, Vec<CommittedOutput>, Vec<Quarantined>)> =
        markers.iter().map(|m| (m.shard, m.outputs.clone(), m.quarantined.clone())).collect();
    let mut ledger = Ledger::replay(
        manifest.plan.shards.len() as u32,
        manifest.max_attempts,
        manifest.max_failed_items,
        &journal_events,
        &marker_list,
    );
    // Tokens from a previous master may still be held by live workers: start
    // above anything it could have issued.
    ledger.raise_token_floor(now().saturating_mul(1000));
    if !journal_events.is_empty() || !markers.is_empty() {
        let c = ledger.counts();
        say!(INFO, "resumed: {} committed, {} failed, {} pending", c.committed, c.failed, c.pending);
    }
    let journal = OpenOptions::new()
        .create(true)
        .append(true)
        .open(layout.journal(manifest.created_at))
        .map_err(|e| format!("opening the journal: {e}"))?;
    let policy = CredentialPolicy {
        min_margin: Duration::from_millis(manifest.refresh_margin_ms),
        ..CredentialPolicy::default()
    };
    let (committer_tx, committer_rx) = std::sync::mpsc::channel();
    let committer_rx = Arc::new(Mutex::new(committer_rx));
    let committer_layout = layout.clone();
    let holds = crate::hold::all(&layout).unwrap_or_else(|e| {
        say!(WARN, "{e}");
        Vec::new()
    });
    let master = Master {
        manifest,
        layout,
        ledger,
        journal,
        token,
        retries: 0,
        ended: None,
        policy,
        committer: committer_tx,
        in_flight: 0,
        storage_failures: 0,
        journal_failing: false,
        nodes: Default::default(),
        holders: Default::default(),
        first_lease_at: None,
        holds,
    };
    let shared: Shared = Arc::new(Mutex::new(master));
    for i in 0..COMMITTERS {
        let (layout, jobs, shared) = (committer_layout.clone(), committer_rx.clone(), shared.clone());
        std::thread::Builder::new()
            .name(format!("mayfly-committer-{i}"))
            .spawn(move || committer(layout, jobs, shared))
            .map_err(|e| format!("starting the committer: {e}"))?;
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    let reason = rt.block_on(async {
        let wanted = listen_address()?;
        let listener = listen(wanted).map_err(|e| format!("cannot listen on {wanted}: {e}"))?;
        let listening = listener.local_addr().map_err(|e| e.to_string())?;
        let addr = advertised_address(listening)?;
        #[cfg(feature = "tls")]
        let tls = {
            let job = shared.lock().map_err(|_| "master state poisoned".to_owned())?.manifest.job.clone();
            crate::tls::master_tls(&job, listening.ip())?
        };
        #[cfg(feature = "tls")]
        let ca = Some(tls.ca_pem.clone());
        #[cfg(not(feature = "tls"))]
        let ca: Option<String> = None;
        let app = Router::new()
            .route("/v1/lease", post(lease))
            .route("/v1/heartbeat", post(heartbeat))
            .route("/v1/commit", post(commit))
            .route("/v1/fail", post(fail))
            .route("/v1/release", post(release))
            .route("/v1/status", get(status))
            .route("/v1/holds", post(holds_changed))
            .layer(DefaultBodyLimit::max(64 << 20))
            .with_state(shared.clone());
        {
            let m = shared.lock().map_err(|_| "master state poisoned".to_owned())?;
            m.layout
                .state
                .write_json(
                    keys::MASTER,
                    &MasterInfo { addr: addr.to_string(), pid: std::process::id(), ca: ca.clone() },
                )
                .map_err(|e| format!("writing master.json: {e}"))?;
        }
        #[cfg(feature = "tls")]
        {
            say!(INFO, "listening on {listening} (TLS, the job's own CA){}", via(addr, listening));
            tokio::spawn(crate::tls::serve(listener, tls.acceptor, app));
        }
        #[cfg(not(feature = "tls"))]
        {
            say!(INFO, "listening on {listening}{}", via(addr, listening));
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
        }
        // Watch the deadline and the ledger.
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut ticks = 0u64;
        let holds_layout = shared.lock().map_err(|_| "master state poisoned".to_owned())?.layout.clone();
        loop {
            tick.tick().await;
            ticks += 1;
            // The holds, from the state every 2 s (the CLI also says when they
            // change, but it may not reach this master): read outside the lock.
            if ticks.is_multiple_of(20) {
                let layout = holds_layout.clone();
                if let Ok(read) = tokio::task::spawn_blocking(move || crate::hold::all(&layout)).await {
                    match read {
                        Ok(holds) => {
                            if let Ok(mut m) = shared.lock() {
                                m.holds = holds;
                            }
                        }
                        Err(e) => say!(WARN, "{e}; keeping the holds known before"),
                    }
                }
            }
            let mut m = shared.lock().map_err(|_| "master state poisoned".to_owned())?;
            let t = now();
            m.expire(t);
            if crate::policy::deadline_passed(t, m.manifest.expires_at) {
                m.ended = Some("deadline".into());
                say!(WARN, "the job's deadline passed");
                return Ok::<String, String>("deadline".into());
            }
            if m.ledger.is_done() {
                m.ended = Some("done".into());
                return Ok("done".into());
            }
        }
    })?;

    // The end: reduce (only for a finished job), the output manifest, the
    // workers, then this process.
    // No new commit is accepted now (`ended` is set); those already in the
    // committer finish first, so that the snapshot below and the outputs agree.
    // A remote commit (listing, conditional put, copies) can take a while: wait
    // for it (at the deadline the dead-man switch bounds this anyway).
    let drain_until = std::time::Instant::now() + Duration::from_secs(300);
    while std::time::Instant::now() < drain_until && shared.lock().map(|m| m.in_flight > 0).unwrap_or(false) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (layout, manifest, counts, retries, failed, committed, quarantined) = {
        let m = shared.lock().map_err(|_| "master state poisoned".to_owned())?;
        let failed: Vec<(u32, String)> = m
            .ledger
            .shards()
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match &r.state {
                ShardState::Failed { error } => Some((i as u32, error.clone())),
                _ => None,
            })
            .collect();
        let committed: Vec<CommittedOutput> = m
            .ledger
            .shards()
            .iter()
            .filter_map(|r| match &r.state {
                ShardState::Committed { outputs } => Some(outputs.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        let quarantined: Vec<(u32, Quarantined)> = m.ledger.quarantined().map(|(s, q)| (s, q.clone())).collect();
        (m.layout.clone(), m.manifest.clone(), m.ledger.counts(), m.retries, failed, committed, quarantined)
    };
    let mut outputs: Vec<String> = committed.iter().map(|o| layout.map_output(&o.key, &o.name)).collect();
    let mut reduce_error = None;
    if reason == "done"
        && let Some((component, _, params)) = &manifest.reduce
    {
        // The component as this machine can load it (fetched from a remote state).
        let loaded = layout.task_file(component, &manifest.reduce.as_ref().map(|r| r.1.clone()).unwrap_or_default());
        match loaded.and_then(|c| crate::reduce::run(&layout, &manifest, &c, params, &committed)) {
            Ok(names) => outputs.extend(names),
            Err(e) => {
                say!(ERROR, "the reduce task failed: {e}");
                reduce_error = Some(e);
            }
        }
    }
    let final_state = FinalState {
        job: manifest.job.clone(),
        reason: reason.clone(),
        counts,
        retries,
        ended_at: now(),
        failed,
        outputs: outputs.clone(),
        reduce_error,
        quarantined,
    };
    let manifest_out = serde_json::json!({
        "job": manifest.job,
        "complete": reason == "done" && counts.failed == 0 && final_state.reduce_error.is_none(),
        "reason": reason,
        "outputs": committed.iter().map(|o| serde_json::json!({"path": layout.map_output(&o.key, &o.name), "bytes": o.bytes})).collect::<Vec<_>>(),
        "reduce_outputs": outputs.iter().skip(committed.len()).collect::<Vec<_>>(),
        "failed_shards": final_state.failed.iter().map(|(s, e)| serde_json::json!({
            "shard": s,
            "items": manifest.plan.shards[*s as usize].items.iter().map(|i| i.key()).collect::<Vec<_>>(),
            "error": e,
        })).collect::<Vec<_>>(),
        // Items every other item's outputs were committed without.
        "quarantined_items": final_state.quarantined.iter().map(|(s, q)| serde_json::json!({
            "shard": s,
            "item": q.key,
            "error": q.error,
            "attempts": q.attempts,
        })).collect::<Vec<_>>(),
    });
    if let Err(e) = layout.output.write_json(layout.output_manifest(), &manifest_out) {
        say!(ERROR, "writing _manifest.json: {e}");
    }
    // Committed shards whose outputs are still staged (a publication failed)
    // are published now; the staging goes only if nothing committed is left in it.
    let staged = layout.output.list(layout.staging()).unwrap_or_default();
    let mut keep_staging = false;
    if !staged.is_empty() {
        for m in read_markers(&layout) {
            let prefix = format!("{}/", layout.attempt_staging(m.shard, m.token));
            if staged.iter().any(|(k, _)| k.starts_with(&prefix))
                && let Err(e) = publish(&layout, &m)
            {
                say!(ERROR, "shard {}: its outputs are still staged and cannot be moved: {e}", m.shard);
                keep_staging = true;
            }
        }
    }
    if !keep_staging {
        let _ = layout.output.delete_prefix(layout.staging());
    }
    save_journal(&layout, &manifest);
    if let Err(e) = layout.state.write_json(keys::FINAL, &final_state) {
        say!(ERROR, "writing final.json: {e}");
    }
    // Workers learn of the end at their next lease and end themselves; give
    // them a moment, then end whatever is left.
    let grace = if reason == "done" { Duration::from_secs(3) } else { Duration::ZERO };
    let deadline = std::time::Instant::now() + grace;
    // A worker an operator holds is theirs until its hold ends (or the
    // deadline: its own rules and dead-man switch end it then).
    let holds = match crate::hold::all(&layout) {
        Ok(h) => h,
        Err(e) => {
            say!(WARN, "{e}; using the holds known before");
            shared.lock().map(|m| m.holds.clone()).unwrap_or_default()
        }
    };
    let held = |n: &crate::provider::NodeInfo| crate::hold::held_until(&holds, &n.node, now()).is_some();
    let workers = |p: &ProviderHandle| {
        p.list(&manifest.job, &layout.state_location())
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.role == Role::Worker && !held(n))
            .collect::<Vec<_>>()
    };
    // Each look is a provider call (an EC2 DescribeInstances on AWS): a few a second, not twenty.
    while std::time::Instant::now() < deadline && !workers(provider).is_empty() {
        std::thread::sleep(Duration::from_millis(250));
    }
    let kept: Vec<String> =
        holds.iter().filter(|h| h.until > now()).map(|h| format!("{} until {}", h.node, h.until)).collect();
    if !kept.is_empty() {
        say!(INFO, "leaving held workers to their holds: {}", kept.join(", "));
    }
    let left = workers(provider);
    if !left.is_empty() {
        let names: Vec<&str> = left.iter().map(|n| n.node.as_str()).collect();
        say!(INFO, "ending {} worker(s) still running: {}", left.len(), names.join(" "));
        // At the deadline there is no time to be gentle: the dead-man switch
        // ends this process a second after it.
        let patience = if reason == "done" { Duration::from_secs(2) } else { Duration::from_millis(300) };
        let _ = provider.terminate(&left, patience);
    }
    say!(INFO, "job {} ended ({reason}); {} committed, {} failed", manifest.job, counts.committed, counts.failed);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_carry_their_time_and_old_lines_still_parse() {
        let event = Event::Lease { shard: 3, worker: "worker-1".into(), token: 42, attempt: 1 };
        let line = serde_json::to_string(&EntryRef { at: 1_795_796_998_908, event: &event }).unwrap();
        assert_eq!(
            line,
            r#"{"at":1795796998908,"event":"lease","shard":3,"worker":"worker-1","token":42,"attempt":1}"#
        );
        let old = r#"{"event":"released","shard":3,"token":42}"#;
        let torn = r#"{"event":"committed","shard":3,"tok"#;
        let entries = parse_entries(format!("{line}\n{old}\n{torn}").as_bytes());
        assert_eq!(
            entries,
            vec![
                Entry { at: Some(1_795_796_998_908), event },
                Entry { at: None, event: Event::Released { shard: 3, token: 42 } },
            ]
        );
    }

    fn marker(shard: u32, token: u64, key: &str) -> Marker {
        let outputs = vec![CommittedOutput { key: key.into(), name: "c.tsv".into(), bytes: 2 }];
        Marker { job: "j".into(), shard, token, outputs, quarantined: Vec::new() }
    }

    fn stage(layout: &Layout, m: &Marker, content: &[u8]) {
        let key = format!("{}/{}/c.tsv", layout.attempt_staging(m.shard, m.token), m.outputs[0].key);
        layout.output.put(&key, content.to_vec()).unwrap();
    }

    /// The same job laid out on local directories and on `file://` URLs
    /// (the object-store client every remote location goes through).
    fn layouts(dir: &Path) -> Vec<Layout> {
        let local = Layout::local(&dir.join("state"), "j", &dir.join("out"));
        let url = |d: &str| crate::store::Location::parse(&format!("file://{}", dir.join(d).display()), dir).unwrap();
        let provider = ProviderHandle::select(&Default::default()).unwrap();
        let remote = Layout::open(&url("rstate/j"), "j", &url("rout"), &provider, "master").unwrap();
        vec![local, remote]
    }

    fn read(layout: &Layout, key: &str) -> Vec<u8> {
        layout.output.get(key).unwrap().unwrap_or_default()
    }

    #[test]
    fn a_batch_commits_one_winner_per_shard_and_publishes_only_winners() {
        let dir = tempfile::tempdir().unwrap();
        for layout in layouts(dir.path()) {
            let (a, b, c) = (marker(0, 7, "a.txt"), marker(0, 8, "a.txt"), marker(1, 9, "b.txt"));
            stage(&layout, &a, b"aa");
            stage(&layout, &b, b"bb");
            stage(&layout, &c, b"cc");
            let results = decide_batch(&layout, vec![&a, &b, &c]);
            // Two claims on shard 0 in one batch (decided concurrently on an
            // object store): exactly one wins, and only its outputs are visible.
            let codes: Vec<Option<StatusCode>> = results.iter().map(|r| r.as_ref().err().map(|e| e.0)).collect();
            let (winner, loser, content): (u64, u64, &[u8]) = match (&codes[0], &codes[1]) {
                (None, Some(StatusCode::CONFLICT)) => (7, 8, b"aa"),
                (Some(StatusCode::CONFLICT), None) => (8, 7, b"bb"),
                other => {
                    panic!("{}: one winner and one conflict, not {other:?} ({results:?})", layout.output.location())
                }
            };
            assert!(results[2].is_ok());
            assert_eq!(read(&layout, &layout.map_output("a.txt", "c.tsv")), content, "the winner's, only");
            assert_eq!(read(&layout, &layout.map_output("b.txt", "c.tsv")), b"cc");
            assert!(
                layout.output.list(&layout.attempt_staging(0, loser)).unwrap().is_empty(),
                "the loser's staging goes"
            );
            let stored: Marker = layout.output.read_json(&layout.marker(0)).unwrap().unwrap();
            assert_eq!(stored.token, winner);
            // A later commit of a committed shard is refused too.
            let late = marker(1, 10, "b.txt");
            stage(&layout, &late, b"zz");
            assert_eq!(decide_batch(&layout, vec![&late])[0].as_ref().unwrap_err().0, StatusCode::CONFLICT);
            assert_eq!(read(&layout, &layout.map_output("b.txt", "c.tsv")), b"cc");
            // A commit whose staged output is missing or of another size is refused.
            let short = marker(2, 11, "c.txt");
            stage(&layout, &short, b"z");
            assert_eq!(decide_batch(&layout, vec![&short])[0].as_ref().unwrap_err().0, StatusCode::BAD_REQUEST);
            assert!(!layout.output.exists(&layout.marker(2)));
        }
    }

    #[test]
    fn a_marker_already_there_is_adopted_if_ours_and_published_if_another_attempts() {
        let dir = tempfile::tempdir().unwrap();
        for layout in layouts(dir.path()) {
            // A retried conditional put whose first try landed: the marker is ours.
            let ours = marker(0, 7, "a.txt");
            stage(&layout, &ours, b"aa");
            layout.output.write_json(&layout.marker(0), &ours).unwrap();
            assert!(decide_batch(&layout, vec![&ours])[0].is_ok(), "our own marker is our commit");
            assert_eq!(read(&layout, &layout.map_output("a.txt", "c.tsv")), b"aa");
            // Another attempt's marker whose outputs are still staged: a later
            // attempt loses, and the winner's outputs are put in place.
            let (winner, late) = (marker(1, 8, "b.txt"), marker(1, 9, "b.txt"));
            stage(&layout, &winner, b"bb");
            layout.output.write_json(&layout.marker(1), &winner).unwrap();
            stage(&layout, &late, b"zz");
            assert_eq!(decide_batch(&layout, vec![&late])[0].as_ref().unwrap_err().0, StatusCode::CONFLICT);
            assert_eq!(read(&layout, &layout.map_output("b.txt", "c.tsv")), b"bb");
            assert!(layout.output.list(&layout.attempt_staging(1, 9)).unwrap().is_empty());
        }
    }

    #[test]
    fn recovery_publishes_staged_outputs_and_reopens_lost_ones() {
        let dir = tempfile::tempdir().unwrap();
        for layout in layouts(dir.path()) {
            // Shard 0: marker written, outputs still staged (the master died before publishing).
            let staged = marker(0, 7, "a.txt");
            stage(&layout, &staged, b"ok");
            layout.output.write_json(&layout.marker(0), &staged).unwrap();
            // Shard 1: marker written, outputs gone everywhere.
            layout.output.write_json(&layout.marker(1), &marker(1, 8, "b.txt")).unwrap();

            let kept = recover_markers(&layout);
            assert_eq!(kept.iter().map(|m| m.shard).collect::<Vec<_>>(), vec![0]);
            assert_eq!(read(&layout, &layout.map_output("a.txt", "c.tsv")), b"ok");
            assert!(layout.output.list(&layout.attempt_staging(0, 7)).unwrap().is_empty());
            assert!(!layout.output.exists(&layout.marker(1)), "the lost shard is reopened");
        }
    }
}
