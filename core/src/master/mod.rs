//! The master node: owns the ledger, serves the worker API, makes every commit
//! decision, watches the deadline, and ends the job. It runs no task code: the
//! reduce partitions are shards of its ledger that workers lease once the map
//! is committed ([`crate::reduce`]).
//!
//! Commit, in this order: check the fencing token (a stale commit is refused
//! and its staging removed); create the shard's marker in the output location
//! with create-if-absent; journal the commit and fsync; move the staged outputs
//! into place; only then answer. A restarted master ([`run`] on an existing
//! journal) rebuilds the ledger from the markers and the journal, finishes any
//! publication a crash interrupted, and voids the leases it finds.
//!
//! Its parts: `http` serves the worker API (each handler takes the lock,
//! decides with the ledger, answers); `commit` makes the commit decisions
//! outside the lock (markers, group commit, publication, recovery);
//! `journal` is the ledger's log and how it is read back; `finish` is the
//! job's end (the reduce's parts made one, the output manifest, the final
//! state, the workers).
//! This module holds the master's state and its main loop.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::{MasterInfo, Status};
use crate::job::{Layout, Manifest, keys};
use crate::ledger::{CommittedOutput, Event, Ledger, Quarantined, ShardState};
use mayfly_data::provider::ProviderHandle;
use mayfly_model::policy::{Clock, CredentialPolicy, Millis};

/// A line of the master's log: when, how severe, what (`mayfly logs` reads
/// the time and the level back).
macro_rules! say {
    ($level:ident, $($arg:tt)*) => {
        mayfly_data::nodelog::line(stringify!($level), "master", format_args!($($arg)*))
    };
}

mod commit;
mod finish;
mod http;
mod replace;

/// Why a master could not run its job to the end.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// A thread panicked while it held the master's state: mayfly's own fault.
    #[error("master state poisoned (a thread of the master panicked)")]
    Poisoned,
    /// A thread of its own (a committer) did not start.
    #[error("starting the {what}: {source}")]
    Thread {
        /// Which.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The job token, which workers must present, cannot be read.
    #[error("reading the job token: {0}")]
    Token(#[source] std::io::Error),
    /// The journal cannot be opened for appending.
    #[error("opening the journal: {0}")]
    Journal(#[source] std::io::Error),
    /// `MAYFLY_LISTEN` or `MAYFLY_ADVERTISE` says something the master cannot do.
    #[error("{variable} {value:?}: {problem}")]
    Address {
        /// The environment variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The worker API cannot listen where it must.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Where.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The job's TLS could not be set up.
    #[cfg(feature = "tls")]
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The job's commits cannot be read back, or its commit log opened.
    #[error("the job's commits: {0}")]
    Commits(#[source] std::io::Error),
    /// `master.json`, where workers find the master, cannot be written.
    #[error("writing master.json: {0}")]
    Info(#[source] std::io::Error),
}
mod journal;

pub use crate::commits::Marker;
use commit::CommitJob;
pub use commit::recover;
use journal::EntryRef;
pub use journal::{Entry, parse_entries, read_entries, read_journal};
pub use replace::Replacement;

/// How a job ended, as written to `final.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FinalState {
    /// The job.
    pub job: String,
    /// `done`, `deadline`, or `storage` (the job's storage refused every
    /// commit for its `storage_outage`).
    pub reason: String,
    /// The map stage's shards by state.
    pub counts: crate::ledger::Counts,
    /// The reduce stage's partitions by state, when the job has a reduce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce: Option<crate::ledger::Counts>,
    /// Retried attempts.
    pub retries: u32,
    /// When it ended.
    pub ended_at: Millis,
    /// Failed shards: (shard, error); a reduce partition's number follows the
    /// map's shards (its error says which partition).
    pub failed: Vec<(u32, String)>,
    /// Outputs published (map and reduce), relative to the output location.
    pub outputs: Vec<String>,
    /// The reduce stage's error, if a partition failed or its outputs could
    /// not be made one.
    pub reduce_error: Option<String>,
    /// Items left out because they kept failing: (shard, item).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<(u32, Quarantined)>,
    /// Workers launched in place of lost ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replacements: Vec<Replacement>,
    /// Committed shards whose outputs could not be moved into place before
    /// the job ended (they are still staged): the job is not complete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unpublished: Vec<u32>,
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
    committer: tokio::sync::mpsc::Sender<CommitJob>,
    /// Commits prepared and not yet finished by the committer.
    in_flight: usize,
    /// Commits in a row the job's storage could not record.
    storage_failures: u32,
    /// Commits in a row of each shard the job's storage could not record.
    refusals: std::collections::HashMap<u32, u32>,
    /// When a commit last succeeded (or the master started).
    last_commit_at: Millis,
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
    /// The master's clock: every lease, expiry, deadline and journal time.
    clock: Arc<dyn Clock>,
    /// Workers launched in place of lost ones (from the state on a resume).
    replaced: Vec<Replacement>,
    /// Lost workers said to be beyond the job's replacements.
    lost_said: std::collections::BTreeSet<String>,
    /// No replacement is considered before this (a launch settling).
    replace_after: Millis,
    /// When this master started.
    started_at: Millis,
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

impl Master {
    /// Now, by the master's clock.
    fn now(&self) -> Millis {
        self.clock.now()
    }

    fn record(&mut self, event: &Event, sync: bool) {
        // Each line says when it was decided (`at`, ms since the epoch): the
        // history `status`, `report` and the timeline are drawn from.
        if let Ok(mut line) = serde_json::to_string(&EntryRef { at: self.clock.now(), event }) {
            // One write per line (`writeln!` would make two).
            line.push('\n');
            let written = self
                .journal
                .write_all(line.as_bytes())
                .and_then(|()| if sync { self.journal.sync_data() } else { Ok(()) });
            match written {
                Ok(()) => self.journal_failing = false,
                // Said once per streak: decisions go on (the recorded commits
                // are the truth on resume; the journal only adds history).
                Err(e) if !self.journal_failing => {
                    self.journal_failing = true;
                    say!(WARN, "writing the journal: {e}; going on (the recorded commits remain the truth)");
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
        let counts = self.ledger.map_counts();
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
                held_until: crate::hold::held_until(&self.holds, node, self.clock.now()),
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
            now: self.clock.now(),
            ended: self.ended.clone(),
            reduce: self.ledger.reduce_counts(),
        }
    }
}

/// Runs the master of the job laid out at `layout` until the job ends, the
/// worker API on `rt` (the process's runtime, which its entry point owns).
/// Returns the process exit code.
pub fn run(
    layout: Layout,
    manifest: Manifest,
    provider: &ProviderHandle,
    clock: Arc<dyn Clock>,
    rt: &tokio::runtime::Handle,
) -> Result<i32, MasterError> {
    let (shared, committer_rx, log) = open(layout, manifest, clock)?;
    for i in 0..commit::COMMITTERS {
        let (jobs, shared, log) = (committer_rx.clone(), shared.clone(), log.clone());
        let layout = shared.lock().map_err(|_| MasterError::Poisoned)?.layout.clone();
        std::thread::Builder::new()
            .name(format!("mayfly-committer-{i}"))
            .spawn(move || commit::committer(layout, log, jobs, shared))
            .map_err(|source| MasterError::Thread { what: "committer", source })?;
    }
    serve(&shared, provider, rt)
}

/// What [`open`] gives: the master's state, the committers' queue, and the
/// commit log when the output is local.
type Opened = (Shared, commit::CommitQueue, Option<Arc<crate::commits::CommitLog>>);

/// The master for the job laid out at `layout`, rebuilt from the commits
/// and the journal (a restarted master goes on where the last one stopped),
/// on `clock`.
fn open(layout: Layout, manifest: Manifest, clock: Arc<dyn Clock>) -> Result<Opened, MasterError> {
    let token = crate::job::read_token(&layout).map_err(MasterError::Token)?;

    // Rebuild from the commits (the truth) and the journal, finishing any
    // publication a crash interrupted.
    // The commit log's lock first: no other master may be deciding while
    // this one reads the commits back.
    let lock = crate::commits::lock(&layout).map_err(MasterError::Commits)?;
    let markers = recover(&layout).map_err(MasterError::Commits)?;
    let log = crate::commits::CommitLog::open(&layout, lock, &markers).map_err(MasterError::Commits)?.map(Arc::new);
    if layout.state.local_dir().is_none() && !layout.journal(manifest.created_at).exists() {
        // A master restarted on another machine: the last copy of the journal.
        let _ = layout.state.download(keys::JOURNAL, &layout.journal(manifest.created_at));
    }
    let journal_events = read_journal(&layout.journal(manifest.created_at));
    let marker_list: Vec<(u32, Vec<CommittedOutput>, Vec<Quarantined>)> =
        markers.iter().map(|m| (m.shard, m.outputs.clone(), m.quarantined.clone())).collect();
    let mut ledger = Ledger::replay(
        manifest.plan.shards.len() as u32,
        manifest.partitions(),
        manifest.max_attempts,
        manifest.max_failed_items,
        &journal_events,
        &marker_list,
    );
    // Tokens from a previous master may still be held by live workers: start
    // above anything it could have issued.
    ledger.raise_token_floor(clock.now().saturating_mul(1000));
    if !journal_events.is_empty() || !markers.is_empty() {
        let c = ledger.counts();
        say!(INFO, "resumed: {} committed, {} failed, {} pending", c.committed, c.failed, c.pending);
    }
    let journal = OpenOptions::new()
        .create(true)
        .append(true)
        .open(layout.journal(manifest.created_at))
        .map_err(MasterError::Journal)?;
    let policy = CredentialPolicy {
        min_margin: Duration::from_millis(manifest.refresh_margin_ms),
        ..CredentialPolicy::default()
    };
    let (committer_tx, committer_rx) = tokio::sync::mpsc::channel(commit::QUEUED);
    let committer_rx = Arc::new(Mutex::new(committer_rx));
    let holds = crate::hold::all(&layout).unwrap_or_else(|e| {
        say!(WARN, "{e}");
        Vec::new()
    });
    let layout_for_replacements = layout.clone();
    let started_at = clock.now();
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
        refusals: Default::default(),
        last_commit_at: clock.now(),
        journal_failing: false,
        nodes: Default::default(),
        holders: Default::default(),
        first_lease_at: None,
        holds,
        clock,
        replaced: replace::recorded(&layout_for_replacements),
        lost_said: Default::default(),
        replace_after: 0,
        started_at,
    };
    Ok((Arc::new(Mutex::new(master)), committer_rx, log))
}

/// Serves the worker API and watches the deadline and the ledger until the
/// job ends, then ends it.
fn serve(shared: &Shared, provider: &ProviderHandle, rt: &tokio::runtime::Handle) -> Result<i32, MasterError> {
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let _stop = StopOnDrop(stop);
    let reason = rt.block_on(async {
        let wanted = http::listen_address()?;
        let listener = http::listen(wanted).map_err(|source| MasterError::Listen { addr: wanted, source })?;
        let listening = listener.local_addr().map_err(|source| MasterError::Listen { addr: wanted, source })?;
        let addr = http::advertised_address(listening)?;
        #[cfg(feature = "tls")]
        let tls = {
            let job = shared.lock().map_err(|_| MasterError::Poisoned)?.manifest.job.clone();
            crate::tls::master_tls(&job, listening.ip())?
        };
        #[cfg(feature = "tls")]
        let ca = Some(tls.ca_pem.clone());
        #[cfg(not(feature = "tls"))]
        let ca: Option<String> = None;
        let app = http::router(shared.clone());
        {
            let m = shared.lock().map_err(|_| MasterError::Poisoned)?;
            m.layout
                .state
                .write_json(
                    keys::MASTER,
                    &MasterInfo { addr: addr.to_string(), pid: std::process::id(), ca: ca.clone() },
                )
                .map_err(MasterError::Info)?;
        }
        #[cfg(feature = "tls")]
        {
            say!(INFO, "listening on {listening} (TLS, the job's own CA){}", http::via(addr, listening));
            tokio::spawn(crate::tls::serve(listener, tls.acceptor, app, stop_rx));
        }
        #[cfg(not(feature = "tls"))]
        {
            say!(INFO, "listening on {listening}{}", http::via(addr, listening));
            let mut stop = stop_rx;
            tokio::spawn(async move {
                // Only ever told to stop (or its sender gone): either ends it.
                let stopped = async move {
                    let _ = stop.changed().await;
                };
                let _ = axum::serve(listener, app).with_graceful_shutdown(stopped).await;
            });
        }
        // Watch the deadline and the ledger.
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut ticks = 0u64;
        let holds_layout = shared.lock().map_err(|_| MasterError::Poisoned)?.layout.clone();
        // Lost workers: asked about off the loop (a provider call may take a
        // while), one question at a time.
        let mut replacing: Option<tokio::task::JoinHandle<()>> = None;
        // The heartbeat, written off the loop too (a remote state's write
        // may be slow), one at a time.
        let mut beating: Option<tokio::task::JoinHandle<()>> = None;
        let beat_ticks = crate::job::Heartbeat::EVERY.as_millis() as u64 / 100;
        let beat_failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reason = loop {
            tick.tick().await;
            ticks += 1;
            if ticks.is_multiple_of(replace::EVERY_TICKS) && replacing.as_ref().is_none_or(|h| h.is_finished()) {
                let (shared, provider) = (shared.clone(), provider.clone());
                replacing = Some(tokio::task::spawn_blocking(move || replace::check(&shared, &provider)));
            }
            if (ticks == 1 || ticks.is_multiple_of(beat_ticks)) && beating.as_ref().is_none_or(|h| h.is_finished()) {
                let (layout, at) = {
                    let m = shared.lock().map_err(|_| MasterError::Poisoned)?;
                    (m.layout.clone(), m.now())
                };
                let failing = beat_failing.clone();
                beating = Some(tokio::task::spawn_blocking(move || {
                    use std::sync::atomic::Ordering;
                    match layout.state.write_json(keys::HEARTBEAT, &crate::job::Heartbeat { at }) {
                        Ok(()) => failing.store(false, Ordering::Relaxed),
                        // Said once per streak.
                        Err(e) if !failing.swap(true, Ordering::Relaxed) => {
                            say!(
                                WARN,
                                "writing the heartbeat: {e} (a serverless entrypoint may take the master for lost)"
                            )
                        }
                        Err(_) => {}
                    }
                }));
            }
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
            let mut m = shared.lock().map_err(|_| MasterError::Poisoned)?;
            let t = m.now();
            m.expire(t);
            if mayfly_model::policy::deadline_passed(t, m.manifest.expires_at) {
                m.ended = Some("deadline".into());
                say!(WARN, "the job's deadline passed");
                break "deadline".to_owned();
            }
            if m.ledger.is_done() {
                m.ended = Some("done".into());
                break "done".to_owned();
            }
            if m.storage_failures > 0 && t.saturating_sub(m.last_commit_at) >= m.manifest.storage_outage_ms {
                m.ended = Some("storage".into());
                say!(
                    ERROR,
                    "the job's storage refused every commit for {} (limits.storage_outage); ending the job",
                    mayfly_model::units::HumanDuration(Duration::from_millis(m.manifest.storage_outage_ms))
                );
                break "storage".to_owned();
            }
        };
        // A replacement being launched finishes first: the job's end then
        // finds, and ends, every worker.
        if let Some(launching) = replacing {
            let _ = launching.await;
        }
        Ok::<_, MasterError>(reason)
    })?;

    // The worker API answers while the job ends (workers learn of the end at
    // their next lease); `stop` ends it, and its connections, when this
    // returns.
    finish::end(shared, provider, reason)
}

/// Tells the worker API to stop when dropped: the runtime outlives the master.
struct StopOnDrop(tokio::sync::watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}
