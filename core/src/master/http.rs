//! The worker API: lease, heartbeat, commit, fail, release, status, holds.
//! Each handler checks the job token, takes the master's lock, decides with
//! the ledger and answers; a commit's decision is the committer's.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::commit::CommitJob;
use super::{Master, MasterError, Shared};
use crate::api::{
    CommitRequest, FailRequest, HeartbeatReply, HeartbeatRequest, LeaseReply, LeaseRequest, ReleaseRequest,
    constant_time_eq,
};
use crate::ledger::{Event, Stage};
use mayfly_model::policy::Validity;

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
    crate::api::decode(body).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))
}

async fn lease(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(mut m) = s.lock() else { return refuse(StatusCode::INTERNAL_SERVER_ERROR, "master state poisoned") };
    let req: LeaseRequest = match guard(&m, &headers, &body) {
        Ok(r) => r,
        Err((status, message)) => return refuse(status, message),
    };
    let t = m.now();
    m.expire(t);
    if m.ended.is_some() {
        return json(&LeaseReply::Done);
    }
    m.seen(&req.worker, t);
    if let Some(until) = crate::hold::held_until(&m.holds, &req.worker, t) {
        return json(&LeaseReply::Hold { until });
    }
    // The end first: a worker whose credentials are about to expire learns
    // it is done now, not after refreshing them.
    if m.ledger.is_done() {
        return json(&LeaseReply::Done);
    }
    let worker_cred = Validity { issued_at: t, expires_at: req.credential_expires_at };
    let expires_at = m.policy.lease_expiry(t, Duration::from_millis(m.manifest.lease_ms), worker_cred);
    if expires_at < t + 1000 {
        // Credentials about to expire: refresh first; no lease may outlive them.
        return json(&LeaseReply::Wait { retry_ms: 200, coming: false });
    }
    match m.ledger.lease(&req.worker, t, expires_at) {
        Some((lease, event)) => {
            m.record(&event, false);
            m.seen(&req.worker, t);
            m.holders.insert(lease.token, req.worker.clone());
            m.first_lease_at.get_or_insert(t);
            let stage = m.ledger.stage(lease.shard);
            let items: Vec<_> = match stage {
                // Its part of every map output.
                Stage::Reduce { partition } => crate::reduce::items(
                    &m.layout,
                    crate::reduce::committed(&m.ledger.shards()[..m.ledger.map_shards() as usize]),
                    m.manifest.partitions(),
                    partition,
                ),
                // Without the items it was given up on.
                Stage::Map => {
                    let left_out = &m.ledger.shards()[lease.shard as usize].quarantined;
                    m.manifest.plan.shards[lease.shard as usize]
                        .items
                        .iter()
                        .filter(|i| left_out.is_empty() || !left_out.iter().any(|q| q.key == i.key()))
                        .cloned()
                        .collect()
                }
            };
            let staging = m.layout.attempt_staging(lease.shard, lease.token);
            say!(INFO, "shard {} attempt {} leased to {}", lease.shard, lease.attempt, req.worker);
            json(&LeaseReply::Lease {
                shard: lease.shard,
                token: lease.token,
                attempt: lease.attempt,
                expires_at: lease.expires_at,
                items,
                staging,
                stage,
            })
        }
        None if m.ledger.is_done() => json(&LeaseReply::Done),
        None => {
            // A reduce waiting for the map's last shards starts when they commit:
            // ask again soon (a quarter second is a tenth of a small job).
            let coming = m.ledger.reduce_waits();
            json(&LeaseReply::Wait { retry_ms: if coming { 25 } else { 250 }, coming })
        }
    }
}

async fn heartbeat(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(mut m) = s.lock() else { return refuse(StatusCode::INTERNAL_SERVER_ERROR, "master state poisoned") };
    let req: HeartbeatRequest = match guard(&m, &headers, &body) {
        Ok(r) => r,
        Err((status, message)) => return refuse(status, message),
    };
    let t = m.now();
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
        let t = m.now();
        m.expire(t);
        (req.shard, m.prepare_commit(&req), m.committer.clone())
    };
    let (shard, marker, committer) = match prepared {
        (shard, Ok(p), committer) => (shard, p, committer),
        (shard, Err((status, message)), _) => {
            say!(WARN, "commit of shard {shard} refused: {message}");
            return refuse(status, message);
        }
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    // The queue is bounded: with it full, this request waits for room. Not
    // queued (the committer gone, or the client hung up while it waited),
    // the commit is no longer in flight.
    let mut unqueued = Unqueued(Some(s.clone()));
    if committer.send(CommitJob { marker, reply }).await.is_err() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "the committer is gone");
    }
    unqueued.0 = None;
    // The committer says the decision in the log: this request may be gone
    // by then (its worker hung up), the commit is not.
    match answer.await {
        Ok(Ok(())) => json(&serde_json::json!({ "committed": shard })),
        Ok(Err((status, message))) => refuse(status, message),
        Err(_) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "the committer did not answer"),
    }
}

/// A prepared commit not (yet) in the committers' queue: dropped, it is no
/// longer in flight.
struct Unqueued(Option<Shared>);

impl Drop for Unqueued {
    fn drop(&mut self) {
        if let Some(s) = self.0.take()
            && let Ok(mut m) = s.lock()
        {
            m.in_flight = m.in_flight.saturating_sub(1);
        }
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
            let t = m.now();
            if let Some(stats) = m.lease_ended(req.token) {
                stats.failed += 1;
                stats.last_seen = stats.last_seen.max(t);
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
    // Outputs the job's storage refused count as a refused commit does.
    let released = match &req.storage {
        Some(message) => match m.ledger.lease_of(req.shard) {
            Some((_, token, _)) if token == req.token => {
                match m.storage_refused(req.shard, "this shard's outputs", message) {
                    Some(error) => {
                        say!(ERROR, "shard {} failed: {error}", req.shard);
                        m.ledger.fail(req.shard, req.token, &error, false)
                    }
                    None => {
                        say!(WARN, "shard {} released: {message}", req.shard);
                        m.ledger.release(req.shard, req.token)
                    }
                }
            }
            _ => m.ledger.release(req.shard, req.token),
        },
        None => m.ledger.release(req.shard, req.token),
    };
    match released {
        Ok(event) => {
            m.record(&event, true);
            let t = m.now();
            if let Some(stats) = m.lease_ended(req.token) {
                stats.last_seen = stats.last_seen.max(t);
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
            let t = m.now();
            let names: Vec<String> =
                holds.iter().filter(|h| h.until > t).map(|h| format!("{} until {}", h.node, h.until)).collect();
            say!(INFO, "holds: {}", if names.is_empty() { "none".to_owned() } else { names.join(", ") });
            m.holds = holds;
            json(&serde_json::json!({ "holds": names.len() }))
        }
        Ok(Err(e)) => refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
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
pub(super) fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(16_384)
}

/// The address the master serves on: `MAYFLY_LISTEN` (an IP address the
/// provider's launch sets, e.g. the instance's private address from IMDS on
/// EC2, or `ip:port` for a fixed port), else loopback on a free port. Off
/// loopback, only with TLS.
pub(super) fn listen_address() -> Result<std::net::SocketAddr, MasterError> {
    let wrong = |value: &str, problem: String| MasterError::Address {
        variable: "MAYFLY_LISTEN",
        value: value.to_owned(),
        problem,
    };
    let v = match std::env::var("MAYFLY_LISTEN") {
        Ok(v) if !v.is_empty() => v,
        _ => return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
    };
    let addr = v
        .parse::<std::net::SocketAddr>()
        .or_else(|_| v.parse::<std::net::IpAddr>().map(|ip| (ip, 0).into()))
        .map_err(|e| wrong(&v, format!("not an IP address or ip:port: {e}")))?;
    if !cfg!(feature = "tls") && !addr.ip().is_loopback() {
        return Err(wrong(
            &v,
            format!(
                "this mayfly was built without TLS (`--features tls`): the master does not serve the job's traffic on {} in clear",
                addr.ip()
            ),
        ));
    }
    Ok(addr)
}

/// The address the master tells workers to use: `MAYFLY_ADVERTISE` (`ip:port`,
/// when something between them forwards, such as a NAT or a proxy), else the
/// one it listens on. Its IP must be the listening one's, the one its
/// certificate names.
pub(super) fn advertised_address(listening: std::net::SocketAddr) -> Result<std::net::SocketAddr, MasterError> {
    let wrong = |value: &str, problem: String| MasterError::Address {
        variable: "MAYFLY_ADVERTISE",
        value: value.to_owned(),
        problem,
    };
    match std::env::var("MAYFLY_ADVERTISE") {
        Ok(v) if !v.is_empty() => {
            let addr = v.parse::<std::net::SocketAddr>().map_err(|e| wrong(&v, format!("not ip:port: {e}")))?;
            if addr.ip() != listening.ip() {
                return Err(wrong(
                    &v,
                    format!(
                        "its IP must be the one the master listens on ({}), which its certificate names",
                        listening.ip()
                    ),
                ));
            }
            Ok(addr)
        }
        _ => Ok(listening),
    }
}

pub(super) fn via(advertised: std::net::SocketAddr, listening: std::net::SocketAddr) -> String {
    if advertised == listening { String::new() } else { format!("; workers are told {advertised}") }
}

/// The worker API's routes over the master's state.
pub(super) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/v1/lease", post(lease))
        .route("/v1/heartbeat", post(heartbeat))
        .route("/v1/commit", post(commit))
        .route("/v1/fail", post(fail))
        .route("/v1/release", post(release))
        .route("/v1/status", get(status))
        .route("/v1/holds", post(holds_changed))
        .layer(DefaultBodyLimit::max(64 << 20))
        .with_state(shared)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::job::{Layout, Manifest};
    use crate::ledger::ShardState;
    use mayfly_data::store::Location;
    use mayfly_model::plan::{Item, Plan, Shard};
    use mayfly_model::policy::{ManualClock, Millis};

    const T0: Millis = 1_800_000_000_000;

    /// A master over a one-shard job in `dir`, on `clock`; and the job token.
    fn master(dir: &Path, clock: &ManualClock) -> (Shared, String) {
        let layout = Layout::local(&dir.join("state"), "j", &dir.join("out"));
        std::fs::create_dir_all(&layout.work).unwrap();
        let token = crate::job::create_token(&layout).unwrap();
        let item = Item { object: "a.txt".into(), start: 0, len: 5, whole: true };
        let manifest = Manifest {
            job: "j".into(),
            name: "j".into(),
            provider: Default::default(),
            task: "task.wasm".into(),
            task_sha256: String::new(),
            params: serde_json::json!({}),
            reduce: None,
            partitions: 0,
            merge: Default::default(),
            input: Location::path(&dir.join("in")),
            output: Location::path(&dir.join("out")),
            state: Location::path(&dir.join("state/j")),
            plan: Plan {
                shards: vec![Shard { id: 0, bytes: 5, items: vec![item] }],
                target_bytes: 5,
                total_bytes: 5,
                objects: 1,
            },
            workers: 2,
            max_replacements: 0,
            limits: Default::default(),
            max_attempts: 3,
            max_storage_refusals: 20,
            storage_outage_ms: 600_000,
            max_failed_items: u64::MAX,
            isolation: Default::default(),
            read_ahead: None,
            read_ahead_memory: None,
            log_format: None,
            lease_ms: 30_000,
            idle_timeout_ms: 60_000,
            master_lost_timeout_ms: 60_000,
            refresh_margin_ms: 1_000,
            credential_ttl_ms: 3_600_000,
            created_at: T0,
            expires_at: T0 + 600_000,
        };
        let (shared, _queue, _log) = super::super::open(layout, manifest, Arc::new(clock.clone())).unwrap();
        (shared, token)
    }

    fn headers(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        h
    }

    async fn answer(response: Response) -> (StatusCode, serde_json::Value) {
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
    }

    /// `worker` asks `shared` for a lease: the answer's status and body.
    fn ask_lease(
        rt: &tokio::runtime::Runtime,
        shared: &Shared,
        token: &str,
        worker: &str,
    ) -> (StatusCode, serde_json::Value) {
        let body = serde_json::json!({ "worker": worker, "credential_expires_at": T0 + 3_600_000 });
        let response = lease(State(shared.clone()), headers(token), Bytes::from(body.to_string()));
        rt.block_on(async { answer(response.await).await })
    }

    #[test]
    fn leases_expire_by_the_masters_clock_not_the_systems() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let (shared, token) = master(dir.path(), &clock);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let ask = |worker: &str| ask_lease(&rt, &shared, &token, worker);
        let (status, first) = ask("worker-1");
        assert_eq!(status, StatusCode::OK, "{first}");
        assert_eq!((first["kind"].as_str(), first["expires_at"].as_u64()), (Some("lease"), Some(T0 + 30_000)));
        // The only shard is leased: nothing for another worker yet.
        assert_eq!(ask("worker-2").1["kind"], "wait");
        // Past the lease on the master's clock (no time passed for the
        // system): the shard is leased again, under a new token.
        clock.advance(Duration::from_secs(31));
        let (_, second) = ask("worker-2");
        assert_eq!(second["kind"], "lease", "{second}");
        assert_ne!(second["token"], first["token"]);
        assert_eq!(second["expires_at"].as_u64(), Some(T0 + 31_000 + 30_000));
        // The first holder's heartbeat is refused as stale.
        let beat = serde_json::json!({ "shard": 0, "token": first["token"], "credential_expires_at": T0 + 3_600_000 });
        let response = heartbeat(State(shared.clone()), headers(&token), Bytes::from(beat.to_string()));
        assert_eq!(rt.block_on(async { answer(response.await).await }).0, StatusCode::CONFLICT);
        // Journal lines carry the master's clock too.
        let path = shared.lock().unwrap().layout.journal(T0);
        let journal = std::fs::read_to_string(path).unwrap();
        assert!(journal.contains(&format!("\"at\":{}", T0 + 31_000)), "{journal}");
    }

    #[test]
    fn a_commit_with_the_token_of_an_expired_lease_is_refused_while_the_shard_is_leased_again() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let (shared, token) = master(dir.path(), &clock);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let ask = |worker: &str| ask_lease(&rt, &shared, &token, worker).1;
        let stale = ask("worker-1")["token"].as_u64().unwrap();
        clock.advance(Duration::from_secs(31));
        let current = ask("worker-2")["token"].as_u64().unwrap();
        // The first holder (paused past its lease, now back) staged its outputs
        // and asks to commit them, before the second holder commits.
        let layout = shared.lock().unwrap().layout.clone();
        let staged = dir.path().join("out").join(layout.attempt_staging(0, stale)).join("a.txt");
        std::fs::create_dir_all(&staged).unwrap();
        std::fs::write(staged.join("copy.bin"), b"hello").unwrap();
        let body = serde_json::json!({
            "shard": 0, "token": stale, "outputs": [{ "key": "a.txt", "name": "copy.bin", "bytes": 5 }],
        });
        let response = rt.block_on(commit(State(shared.clone()), headers(&token), Bytes::from(body.to_string())));
        let status = response.status();
        let said = rt.block_on(axum::body::to_bytes(response.into_body(), usize::MAX)).unwrap();
        let said = String::from_utf8_lossy(&said);
        assert_eq!(status, StatusCode::CONFLICT, "{said}");
        assert!(said.contains(&format!("token {stale} is not the current lease (stale or replayed)")), "{said}");
        // Refused on its token itself: no marker, its staging gone, the shard
        // still the second holder's.
        assert!(!dir.path().join("out").join(layout.marker(0)).exists(), "no marker for a stale token");
        assert!(!staged.exists(), "the stale attempt's staging is removed");
        match &shared.lock().unwrap().ledger.shards()[0].state {
            ShardState::Leased { worker, token, .. } => assert_eq!((worker.as_str(), *token), ("worker-2", current)),
            other => panic!("the shard should still be leased to worker-2: {other:?}"),
        }
    }

    #[test]
    fn outputs_the_storage_refused_cost_time_not_attempts_and_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let (shared, token) = master(dir.path(), &clock);
        shared.lock().unwrap().manifest.max_storage_refusals = 5;
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let hand_back = |lease: u64| {
            let body =
                serde_json::json!({ "shard": 0, "token": lease, "storage": "uploading the outputs: 503 SlowDown" });
            let response = release(State(shared.clone()), headers(&token), Bytes::from(body.to_string()));
            rt.block_on(async { answer(response.await).await }).0
        };
        // More refusals than the job has attempts (3): none is used, and
        // the shard waits longer each time before it is leased again.
        let mut waits = Vec::new();
        for _ in 0..4 {
            let leased = ask_lease(&rt, &shared, &token, "worker-1").1;
            assert_eq!(leased["kind"], "lease", "{leased}");
            assert_eq!(hand_back(leased["token"].as_u64().unwrap()), StatusCode::OK);
            let mut waited = 0u64;
            while ask_lease(&rt, &shared, &token, "worker-1").1["kind"] == "wait" {
                clock.advance(Duration::from_millis(50));
                waited += 50;
            }
            waits.push(waited);
            // That ask leased it: hand it back as a drain would, uncounted.
            assert_eq!(shared.lock().unwrap().ledger.shards()[0].failures, 0, "no attempt used");
            let lease = shared.lock().unwrap().ledger.lease_of(0).unwrap().1;
            let body = serde_json::json!({ "shard": 0, "token": lease });
            let response = release(State(shared.clone()), headers(&token), Bytes::from(body.to_string()));
            assert_eq!(rt.block_on(async { answer(response.await).await }).0, StatusCode::OK);
        }
        assert!(
            waits.windows(2).all(|w| w[1] > w[0]) && waits[0] >= 250,
            "the shard waits longer each time: {waits:?}"
        );
        // The fifth refusal in a row fails the shard, with the storage's error.
        let leased = ask_lease(&rt, &shared, &token, "worker-1").1;
        assert_eq!(hand_back(leased["token"].as_u64().unwrap()), StatusCode::OK);
        match &shared.lock().unwrap().ledger.shards()[0].state {
            ShardState::Failed { error } => {
                assert!(error.contains("refused this shard's outputs 5 times in a row"), "{error}");
                assert!(error.contains("503 SlowDown"), "{error}");
            }
            other => panic!("the shard should have failed: {other:?}"),
        }
    }
}
