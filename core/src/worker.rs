//! The worker node: pulls leases, streams each shard's items through one
//! instance of the task (compiled once per worker; one instance per item
//! when the job asks for `isolation = "item"`), heartbeats while it works,
//! asks the master to commit once per shard, and ends itself by the
//! self-termination rule. An attempt that fails on an item names it, so that
//! the master can quarantine the item and the shard go on without it. A
//! reduce partition's lease runs the reduce task (loaded when first needed)
//! over its map outputs, read ahead from the output location as one input
//! ([`crate::reduce::input`]).
//!
//! Ending follows the order of the self-termination rule by the shape of the
//! loop: a trigger is checked only between shards, so leasing stops first, the
//! current shard is committed, failed or released before the loop is left, the
//! log (this process's stdout and stderr, a file in the state location) is
//! written as it goes, and the process exits last.
//!
//! In `mayfly-core`'s flow (`core/tests/flow.rs` checks it) it must not import `node` or
//! `bootstrap`, or anything above, nor its peer `master`; like its crate, it must not
//! import `mayfly-ops` or the binary.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::MasterInfo;
use crate::api::{
    CallError, Client, CommitRequest, FailRequest, HeartbeatRequest, LeaseReply, LeaseRequest, ReleaseRequest,
    StagedFile,
};
use crate::attempt;
use crate::host::{Call, Runtime, RuntimeConfig, Task};
use crate::job::{Layout, Manifest, keys};
use crate::ledger::Stage;
use mayfly_data::provider::{Credential, ProviderHandle};
use mayfly_data::readahead::{ReadAhead, ReadAheadConfig};
use mayfly_data::store::{Principal, Store};
use mayfly_model::plan::Item;
use mayfly_model::policy::{Clock, CredentialAction, CredentialPolicy, EndReason, Millis, Watchdog};

/// A line of the worker's log: when, `INFO`, who, what (`mayfly logs` reads
/// the time and the level back).
fn log(node: &str, message: &str) {
    mayfly_data::nodelog::line("INFO", node, message);
}

/// A line of the worker's log about something that went wrong.
fn warn(node: &str, message: &str) {
    mayfly_data::nodelog::line("WARN", node, message);
}

/// Why a worker could not start, or had to stop before its job's end.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The job's input location could not be opened.
    #[error(transparent)]
    Input(#[from] mayfly_data::store::OpenError),
    /// The job token, which the master asks for, cannot be read.
    #[error("reading the job token: {0}")]
    Token(#[source] std::io::Error),
    /// The provider issued no credentials for this node.
    #[error(transparent)]
    Credentials(#[from] mayfly_data::provider::ProviderError),
    /// The sandbox did not start.
    #[error("starting the sandbox: {0}")]
    Sandbox(#[from] crate::host::StartError),
    /// The task's component could not be fetched.
    #[error(transparent)]
    Task(#[from] crate::job::LayoutError),
    /// The task's component does not load.
    #[error(transparent)]
    Load(#[from] crate::host::LoadError),
    /// The task's component is not the one the job was planned with.
    #[error("the task at {} changed since the job was planned (sha256 {found} != {planned})", path.display())]
    Changed {
        /// Where the component is.
        path: std::path::PathBuf,
        /// Its sha256 now.
        found: String,
        /// Its sha256 in the manifest.
        planned: String,
    },
    /// No client for the master could be made.
    #[error(transparent)]
    Connect(#[from] crate::api::ConnectError),
    /// The master refused this worker's job token.
    #[error("the master refused this worker's token: {0}")]
    Refused(String),
}

/// A storage operation refused before it started: no unexpired credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthorized {
    /// The credentials cannot be looked at (a thread panicked holding them).
    #[error("{0}: credentials unavailable")]
    Unavailable(String),
    /// They expired this long ago.
    #[error("{what}: credential expired {ago_ms} ms ago")]
    Expired {
        /// The operation.
        what: String,
        /// How long ago, in milliseconds.
        ago_ms: u64,
    },
}

/// How an attempt ended short of a commit.
enum Failure {
    /// The shard failed: the error, whether a retry could help, and the item
    /// it failed on (none when `start` or `finish` failed).
    Attempt(String, bool, Option<String>),
    /// The worker cannot go on (credentials): the shard goes back, no attempt used.
    Release(String),
}

/// Why a held worker hands its shard back.
const HELD: &str = "this worker is held by an operator";

impl Failure {
    fn is_held(&self) -> bool {
        matches!(self, Failure::Release(why) if why == HELD)
    }
}

/// The node's credentials and the credential rule, shared by the main loop
/// and the heartbeat thread: a long item gets its credentials refreshed while
/// it runs, so neither the item nor its lease outlives them.
#[derive(Clone)]
struct Keeper {
    inner: Arc<Mutex<Credentials>>,
    provider: ProviderHandle,
    layout: Layout,
    job: String,
    node: String,
    policy: CredentialPolicy,
    /// The worker's clock: credentials, leases, holds and the self-termination rule.
    clock: Arc<dyn Clock>,
}

struct Credentials {
    current: Credential,
    failures: u32,
    /// When the last refresh failed: the next try waits the policy's `retry_after`.
    failed_at: u64,
    refreshed: u32,
    failed_ops: u32,
}

impl Keeper {
    /// Now, by the worker's clock.
    fn now(&self) -> Millis {
        self.clock.now()
    }

    /// Applies the credential rule now: refreshes when due; says whether the
    /// node must drain.
    fn refresh_if_due(&self) -> CredentialAction {
        let Ok(mut c) = self.inner.lock() else { return CredentialAction::Drain };
        let t = self.now();
        let waiting = c.failures > 0 && t < c.failed_at + self.policy.retry_after(c.failures).as_millis() as u64;
        if !waiting && self.policy.action(t, c.current.validity, c.failures) == CredentialAction::Refresh {
            match self.provider.credentials(&self.job, &self.layout.state_location(), &self.node) {
                Ok(fresh) => {
                    c.current = fresh;
                    c.failures = 0;
                    c.refreshed += 1;
                    log(
                        &self.node,
                        &format!(
                            "credentials refreshed (#{}); valid until {}",
                            c.refreshed, c.current.validity.expires_at
                        ),
                    );
                }
                Err(e) => {
                    c.failures += 1;
                    c.failed_at = self.now();
                    warn(&self.node, &format!("credential refresh failed ({} in a row): {e}", c.failures));
                }
            }
        }
        self.policy.action(self.now(), c.current.validity, c.failures)
    }

    fn expires_at(&self) -> u64 {
        self.inner.lock().map(|c| c.current.validity.expires_at).unwrap_or(0)
    }

    /// A storage operation starts only with an unexpired credential (a
    /// cloud's store would refuse an expired one mid-operation).
    fn authorize(&self, what: &str) -> Result<(), Unauthorized> {
        let Ok(mut c) = self.inner.lock() else { return Err(Unauthorized::Unavailable(what.to_owned())) };
        let t = self.now();
        if t < c.current.validity.expires_at {
            return Ok(());
        }
        c.failed_ops += 1;
        Err(Unauthorized::Expired { what: what.to_owned(), ago_ms: t - c.current.validity.expires_at })
    }

    fn stats(&self) -> (u32, u32) {
        self.inner.lock().map(|c| (c.refreshed, c.failed_ops)).unwrap_or((0, 0))
    }
}

/// A leased shard's attempt, as [`attempt::run`] drives it: its inputs from
/// the read-ahead, its task logs into the node's log, and its reasons to stop
/// between two items (the lease lost, an operator's hold, credentials that
/// cannot be renewed: the shard then goes back).
struct Leased<'a> {
    shard: u32,
    inputs: Inputs<'a>,
    lost: &'a AtomicBool,
    hold: &'a AtomicU64,
    keeper: &'a Keeper,
}

impl attempt::Driver for Leased<'_> {
    type Stop = Failure;

    fn before(&mut self, _index: usize) -> Option<Failure> {
        if self.lost.load(Ordering::Relaxed) {
            // Another worker owns the shard now; the caller sees `lost`.
            return Some(Failure::Release("the lease was lost".into()));
        }
        if self.hold.load(Ordering::Relaxed) > self.keeper.now() {
            return Some(Failure::Release(HELD.into()));
        }
        if self.keeper.refresh_if_due() == CredentialAction::Drain {
            return Some(Failure::Release("credentials could not be renewed".into()));
        }
        if let Err(e) = self.keeper.authorize("reading the input") {
            return Some(Failure::Release(e.to_string()));
        }
        None
    }

    fn input(&mut self, index: usize, _item: &Item) -> std::io::Result<Arc<dyn crate::host::InputSource>> {
        match &mut self.inputs {
            Inputs::Ahead(ahead) => ahead.take(index),
            Inputs::One(input) => input.take().ok_or_else(|| std::io::Error::other("the reduce input was taken twice")),
        }
    }

    fn called(&mut self, stage: attempt::Stage<'_>, call: &Call) {
        let key = match stage {
            attempt::Stage::Item(key) => Some(key),
            attempt::Stage::Start | attempt::Stage::Finish => None,
        };
        mayfly_data::nodelog::task_lines(self.shard, key, &call.logs);
    }
}

/// Where a leased attempt's inputs come from.
enum Inputs<'a> {
    /// A map shard's items, read ahead from the input location.
    Ahead(&'a mut ReadAhead),
    /// A reduce partition's one input.
    One(Option<Arc<dyn crate::host::InputSource>>),
}

struct Worker {
    node: String,
    /// Drives the task host's attempts: one per worker, not one per shard.
    /// The process's async runtime (the entry point's), that the task's calls run on.
    rt: tokio::runtime::Handle,
    manifest: Manifest,
    /// The input location.
    input: Store,
    keeper: Keeper,
    runtime: Runtime,
    task: Task,
    /// The task's parameters, as the sandbox hands them over.
    params: Arc<str>,
    /// The reduce task and its parameters, once a partition was leased.
    reduce: Option<(Task, Arc<str>)>,
    client: Client,
    watchdog: Watchdog,
    /// Until when an operator holds this worker (0: no hold), as the
    /// master's heartbeat answers say.
    hold: Arc<AtomicU64>,
    /// What the worker had when it was held: the shard it handed back, and
    /// its last failed attempt (shard, items), kept on disk while it is held.
    released: Option<(u32, Vec<Item>)>,
    last_failed: Option<(u32, Vec<Item>)>,
    /// The end of the hold this worker last left: a master that still
    /// answers with it has not read the release yet.
    left_hold: Millis,
    /// Attempts whose commit had no answer (shard, token, local staging, its
    /// key in the output): their staging stays for a master that may have
    /// committed them, until the job's end says.
    unanswered: Vec<(u32, u64, std::path::PathBuf, String)>,
}

impl Worker {
    fn process(&mut self, lease: Grant, items: Vec<Item>, staging: String, lease_expires: u64) {
        let Grant { shard, token, attempt, stage } = lease;
        // Every line about this attempt, the heartbeats' included, carries it.
        let span = tracing::info_span!("attempt", shard, attempt);
        let _entered = span.enter();
        // Heartbeats run beside the attempt, every third of the lease. Dropping
        // `stop` wakes the thread at once (a shard can take a millisecond).
        let lost = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        // Often enough for the lease and for the credential's refresh point.
        let cred_quarter = self.keeper.expires_at().saturating_sub(self.keeper.now()) / 4;
        let interval = Duration::from_millis((self.manifest.lease_ms / 3).min(cred_quarter.max(50)).max(50));
        let hb = {
            let (client, lost, keeper, node, hold) =
                (self.client.clone(), lost.clone(), self.keeper.clone(), self.node.clone(), self.hold.clone());
            let span = span.clone();
            std::thread::spawn(move || {
                let _entered = span.enter();
                let mut expires = lease_expires;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    keeper.refresh_if_due();
                    let req = HeartbeatRequest { shard, token, credential_expires_at: keeper.expires_at() };
                    match client.heartbeat(&req) {
                        Ok(r) => {
                            expires = r.expires_at;
                            if let Some(until) = r.hold_until {
                                hold.store(until, Ordering::Relaxed);
                            }
                        }
                        Err(CallError::Refused { status: 409, .. }) => {
                            warn(&node, &format!("shard {shard}: lease lost (token {token} is stale)"));
                            lost.store(true, Ordering::Relaxed);
                            break;
                        }
                        Err(e) => {
                            if keeper.now() >= expires {
                                warn(
                                    &node,
                                    &format!("shard {shard}: lease expired while the master was unreachable: {e}"),
                                );
                                lost.store(true, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
            })
        };

        let staging_key = staging;
        let staging = self.keeper.layout.local_staging(&staging_key);
        let (staged, failure, read) = match stage {
            Stage::Map => {
                let config = ReadAheadConfig::for_store(
                    self.manifest.read_ahead,
                    self.manifest.read_ahead_memory,
                    self.input.local_dir().is_some(),
                );
                let mut ahead = self.input.read_ahead(items.clone(), config);
                let (staged, failure) = self.run_items(shard, attempt, &items, &mut ahead, &staging, &lost);
                let read = ahead.stats().to_string();
                // Its fetches stop here, not after the commit.
                drop(ahead);
                (staged, failure, read)
            }
            Stage::Reduce { partition } => {
                let n = items.len();
                let (staged, failure) = self.run_reduce(shard, attempt, partition, items.clone(), &staging, &lost);
                (staged, failure, format!("reduce partition {partition}: {n} map outputs"))
            }
        };
        drop(stop);
        let _ = hb.join();
        if lost.load(Ordering::Relaxed) {
            // Another worker owns the shard now; our staging is ours to drop.
            let _ = std::fs::remove_dir_all(&staging);
            return;
        }
        let result = match failure {
            Some(Failure::Release(why)) => {
                // Not the shard's fault: hand it back without using an attempt.
                warn(&self.node, &format!("shard {shard} released: {why}"));
                let _ = std::fs::remove_dir_all(&staging);
                self.client.release(&ReleaseRequest { shard, token, storage: None }).map(|_| ())
            }
            Some(Failure::Attempt(error, retryable, item)) => {
                warn(&self.node, &format!("shard {shard} failed: {error}"));
                self.client.fail(&FailRequest { shard, token, error, retryable, item }).map(|_| ())
            }
            None => {
                self.keeper.refresh_if_due();
                if let Err(e) = self.keeper.authorize("committing") {
                    warn(&self.node, &format!("shard {shard} released: {e}"));
                    let _ = std::fs::remove_dir_all(&staging);
                    self.client.release(&ReleaseRequest { shard, token, storage: None }).map(|_| ())
                } else if let Err(e) = self.upload(&staging, &staging_key) {
                    // Nothing is committed from a partial upload: the shard
                    // runs again. The storage's fault, not the shard's (S3's
                    // "slow down" for a few seconds, found by the AWS chaos
                    // suite, failed a shard for good in three quick attempts):
                    // handed back, it costs time, and the master bounds it as
                    // it bounds refused commits.
                    let _ = std::fs::remove_dir_all(&staging);
                    let error =
                        format!("uploading the outputs to {}: {e}", self.keeper.layout.output.display(&staging_key));
                    warn(&self.node, &format!("shard {shard} released: {error}"));
                    self.client.release(&ReleaseRequest { shard, token, storage: Some(error) }).map(|_| ())
                } else {
                    let n = staged.len();
                    match self.client.commit(&CommitRequest { shard, token, outputs: staged }) {
                        Ok(_) => {
                            log(
                                &self.node,
                                &format!("shard {shard} committed ({} items, {n} outputs; {read})", items.len()),
                            );
                            Ok(())
                        }
                        Err(CallError::Refused { status, message }) if status >= 500 => {
                            // The master could not record the commit (its
                            // storage failed): not the shard's fault, so no
                            // attempt is used; the master waits before it
                            // leases the shard again.
                            warn(
                                &self.node,
                                &format!(
                                    "shard {shard} released: the master could not record the commit ({status}): {message}"
                                ),
                            );
                            let _ = std::fs::remove_dir_all(&staging);
                            self.client.release(&ReleaseRequest { shard, token, storage: None }).map(|_| ())
                        }
                        Err(CallError::Refused { status, message }) if status != 409 => {
                            // Refused for a reason other than a stale lease (too
                            // large, malformed): say so, so the operator sees it.
                            let error = format!("the master refused the commit ({status}): {message}");
                            warn(&self.node, &format!("shard {shard} failed: {error}"));
                            let _ = std::fs::remove_dir_all(&staging);
                            self.client
                                .fail(&FailRequest { shard, token, error, retryable: false, item: None })
                                .map(|_| ())
                        }
                        Err(e) => Err(e),
                    }
                }
            }
        };
        match result {
            Ok(()) => {}
            Err(e @ CallError::Refused { .. }) => {
                warn(&self.node, &format!("shard {shard}: the master did not take the result: {e}"));
                let _ = std::fs::remove_dir_all(&staging);
            }
            Err(e) => {
                // The outcome is unknown: the master may have written the marker
                // and died before answering. The staging must stay, so that a
                // restarted master can finish publishing it; the job's end
                // removes it otherwise.
                warn(&self.node, &format!("shard {shard}: no answer from the master about the result: {e}"));
                self.unanswered.push((shard, token, staging, staging_key));
            }
        }
    }

    /// Once the job has ended, drops the staging of each attempt whose commit
    /// had no answer and that did not commit its shard (the shard's marker
    /// names another token, or none): the master's end may have cleared the
    /// staging area before this worker wrote into it (found by the chaos suite:
    /// a worker paused past its lease came back as the job ended). An attempt
    /// that did commit keeps its staging: it may be what the end could not
    /// publish.
    fn drop_unanswered(&mut self) {
        let layout = &self.keeper.layout;
        // Only once the job's end is written: until then the master may
        // still be draining commits it queued (an answer that came too late).
        if !self.unanswered.is_empty() && !layout.state.exists(keys::FINAL) {
            warn(&self.node, "keeping the staging of unanswered commits: the job's end is not written yet");
            return;
        }
        for (shard, token, local, key) in std::mem::take(&mut self.unanswered) {
            match crate::commits::of(layout, shard) {
                Ok(Some(m)) if m.token == token => continue,
                Err(e) => {
                    warn(&self.node, &format!("shard {shard}: keeping the staging of token {token}: its commit: {e}"));
                    continue;
                }
                _ => {}
            }
            let _ = std::fs::remove_dir_all(&local);
            if let Err(e) = layout.output.delete_prefix(&key) {
                warn(&self.node, &format!("shard {shard}: removing the staging of token {token}: {e}"));
            } else {
                log(
                    &self.node,
                    &format!("shard {shard}: removed the staging of token {token}, which did not commit it"),
                );
            }
        }
    }
}

/// A lease granted, as the worker's loop hands it over.
struct Grant {
    shard: u32,
    token: u64,
    attempt: u32,
    stage: Stage,
}

impl Worker {
    /// The reduce task, loaded (or taken from the compile cache) when the
    /// first partition is leased, and checked against the manifest.
    /// `Err`: why not, and whether another attempt could do better.
    fn load_reduce(&mut self) -> Result<(), (String, bool)> {
        if self.reduce.is_none() {
            let Some((path, sha, params)) = self.manifest.reduce.clone() else {
                return Err(("the job has no reduce task".into(), false));
            };
            let file =
                self.keeper.layout.task_file(&path, &sha).map_err(|e| (format!("the reduce task: {e}"), true))?;
            let task = self.runtime.load(&file).map_err(|e| (format!("the reduce task: {e}"), true))?;
            if task.sha256() != sha {
                let changed = format!("the reduce task {} changed since the job was planned", path.display());
                return Err((changed, false));
            }
            self.reduce = Some((task, Arc::from(params.to_string())));
        }
        Ok(())
    }

    /// Runs reduce partition `partition` (shard `shard`): the reduce task over
    /// one input, its map outputs (`items`, in the output location) as one.
    /// A map output missing or cut short fails the attempt naming it.
    fn run_reduce(
        &mut self,
        shard: u32,
        attempt: u32,
        partition: u32,
        items: Vec<Item>,
        staging: &std::path::Path,
        lost: &AtomicBool,
    ) -> (Vec<StagedFile>, Option<Failure>) {
        if let Err((e, retryable)) = self.load_reduce() {
            return (Vec::new(), Some(Failure::Attempt(e, retryable, None)));
        }
        let Some((task, params)) = &self.reduce else {
            return (Vec::new(), Some(Failure::Attempt("the reduce task is not loaded".into(), true, None)));
        };
        let output = &self.keeper.layout.output;
        let config = ReadAheadConfig::for_store(
            self.manifest.read_ahead,
            self.manifest.read_ahead_memory,
            output.local_dir().is_some(),
        );
        let problem = crate::reduce::Problem::default();
        let name = format!("the map outputs of partition {partition}");
        let input: Arc<dyn crate::host::InputSource> =
            Arc::new(crate::reduce::input(output, items, config, &name, &problem));
        let key = crate::job::reduce_key(self.manifest.partitions(), partition);
        // One item: its key is the partition's, so that an output the task
        // opens in `item` goes where its shard's outputs go.
        let one = [Item { object: key.clone(), start: 0, len: input.size(), whole: true }];
        let spec = attempt::Shard {
            job: &self.manifest.job,
            shard,
            attempt,
            params: params.clone(),
            limits: self.manifest.limits,
            isolation: crate::config::Isolation::Shard,
            staging,
            key,
            partitions: 1,
        };
        let mut driver =
            Leased { shard, inputs: Inputs::One(Some(input)), lost, hold: &self.hold, keeper: &self.keeper };
        let ended = attempt::run(&self.rt, &self.runtime, task, &spec, &one, &mut driver);
        // What the task could not read says more than the task's own message;
        // and a task that went on past a read error must not commit a result
        // made of part of its input.
        if let (attempt::Ended::Done(_) | attempt::Ended::Failed(_), Some((said, retryable))) = (&ended, problem.take())
        {
            return (Vec::new(), Some(Failure::Attempt(said, retryable, None)));
        }
        match ended {
            attempt::Ended::Done(outputs) => {
                (outputs.into_iter().map(|o| StagedFile { key: o.key, name: o.name, bytes: o.bytes }).collect(), None)
            }
            attempt::Ended::Failed(failed) => {
                (Vec::new(), Some(Failure::Attempt(failed.error, failed.retryable, None)))
            }
            attempt::Ended::Stopped(why) => (Vec::new(), Some(why)),
        }
    }

    /// Runs the shard's items through the task ([`crate::attempt`]); returns
    /// the staged outputs, or why there are none.
    fn run_items(
        &mut self,
        shard: u32,
        attempt: u32,
        items: &[Item],
        ahead: &mut ReadAhead,
        staging: &std::path::Path,
        lost: &AtomicBool,
    ) -> (Vec<StagedFile>, Option<Failure>) {
        let spec = attempt::Shard {
            job: &self.manifest.job,
            shard,
            attempt,
            params: self.params.clone(),
            limits: self.manifest.limits,
            isolation: self.manifest.isolation,
            staging,
            key: crate::job::shard_key(shard),
            partitions: self.manifest.task_partitions(),
        };
        let mut driver = Leased { shard, inputs: Inputs::Ahead(ahead), lost, hold: &self.hold, keeper: &self.keeper };
        match attempt::run(&self.rt, &self.runtime, &self.task, &spec, items, &mut driver) {
            attempt::Ended::Done(outputs) => {
                (outputs.into_iter().map(|o| StagedFile { key: o.key, name: o.name, bytes: o.bytes }).collect(), None)
            }
            attempt::Ended::Failed(failed) => {
                if failed.at.is_some() {
                    // Kept while an operator holds this worker.
                    self.last_failed = Some((shard, items.to_vec()));
                }
                let item = failed.blamed_item().map(str::to_owned);
                (Vec::new(), Some(Failure::Attempt(failed.error, failed.retryable, item)))
            }
            attempt::Ended::Stopped(why) => {
                if why.is_held() {
                    // An operator holds this worker: the shard goes back now
                    // (another worker takes it), and its inputs stay here for them.
                    self.released = Some((shard, items.to_vec()));
                }
                (Vec::new(), Some(why))
            }
        }
    }

    /// Waits while an operator holds this worker: no work, nothing deleted,
    /// the inputs of the shard it handed back and of its last failed attempt
    /// kept on disk. Returns why it must end (the hold expired, the deadline,
    /// lost credentials), or `None` when the hold is released and the normal
    /// rules apply again. The state is the truth (the master may be gone).
    fn held(&mut self, mut until: Millis) -> Option<EndReason> {
        let node = self.node.clone();
        let dir = crate::hold::kept_dir(&self.keeper.layout, &node);
        log(
            &node,
            &format!(
                "held by an operator until {until} ({}s); taking no work; keeping what it has in {}",
                until.saturating_sub(self.keeper.now()) / 1000,
                dir.display()
            ),
        );
        self.keep_inputs(&dir);
        // Whether the hold is this node's own (it ends the node when it
        // expires) or only the whole job's (the job goes on when it expires).
        let mut own = true;
        loop {
            let action = self.keeper.refresh_if_due();
            let t = self.keeper.now();
            match crate::hold::all(&self.keeper.layout) {
                Ok(holds) => match crate::hold::held_until(&holds, &node, t) {
                    Some(u) => {
                        if u != until {
                            log(&node, &format!("the hold now ends at {u}"));
                        }
                        until = u;
                        own = crate::hold::own_hold(&holds, &node, u);
                    }
                    None if t < until => {
                        log(&node, "released by an operator; back to the normal rules");
                        return self.unhold(until, t);
                    }
                    None => {}
                },
                // Unreadable is not released: the hold stands as known.
                Err(e) => warn(&node, &format!("reading the holds: {e}; keeping the hold as known")),
            }
            match self.watchdog.check_held(t, until, action) {
                Some(EndReason::HoldExpired) if !own => {
                    log(&node, "the job's hold expired; back to the normal rules");
                    return self.unhold(until, t);
                }
                Some(reason) => return Some(reason),
                None => {}
            }
            std::thread::sleep(Duration::from_millis(until.saturating_sub(t).clamp(10, 1000)));
        }
    }

    /// Leaves a hold that ended at `until` (released, or the job's expired):
    /// the idle and master-lost timeouts count from now.
    fn unhold(&mut self, until: Millis, t: Millis) -> Option<EndReason> {
        self.hold.store(0, Ordering::Relaxed);
        self.left_hold = until;
        self.watchdog.last_work = t;
        self.watchdog.last_master_contact = t;
        None
    }

    /// Copies the inputs of the shard handed back for the hold and of the
    /// last failed attempt into `dir/shard-<N>/<item>` (`mayfly replay
    /// --node` runs them again there).
    fn keep_inputs(&mut self, dir: &std::path::Path) {
        for (shard, items) in [self.released.take(), self.last_failed.take()].into_iter().flatten() {
            for item in &items {
                let dest = dir.join(format!("shard-{shard}")).join(mayfly_model::key::file_name(&item.key()));
                let copied = self
                    .input
                    .input(&item.object, &item.object, Some((item.start, item.len)))
                    .and_then(|src| copy_input(src.as_ref(), &dest));
                match copied {
                    Ok(bytes) => {
                        log(&self.node, &format!("kept input {} of shard {shard} ({bytes} bytes)", item.key()))
                    }
                    Err(e) => warn(&self.node, &format!("keeping input {} of shard {shard}: {e}", item.key())),
                }
            }
        }
    }

    /// Copies an attempt's outputs from the local staging into the output
    /// location's staging, when that is remote (a local one is written in
    /// place). The local copy goes once it is uploaded.
    fn upload(&self, local: &std::path::Path, key: &str) -> std::io::Result<()> {
        let output = &self.keeper.layout.output;
        if output.local_dir().is_some() || !local.exists() {
            return Ok(());
        }
        output.upload_dir(local, key)?;
        let _ = std::fs::remove_dir_all(local);
        Ok(())
    }
}

/// Writes all of `src` to `dest` (through a temporary file: a kept input is
/// whole or absent). Returns its size.
fn copy_input(src: &dyn crate::host::InputSource, dest: &std::path::Path) -> std::io::Result<u64> {
    use std::io::Write as _;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // A dot first: no kept input's name starts with one (key::file_name).
    let tmp = dest
        .with_file_name(format!(".{}.mayfly-tmp", dest.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0u64;
    loop {
        let n = src.read_at(at, &mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        at += n as u64;
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, dest)?;
    Ok(at)
}

/// Runs worker `node` of the job laid out at `layout` until it must end, the
/// task's calls on `rt` (the process's runtime, which its entry point owns).
/// Returns why.
pub fn run(
    layout: Layout,
    manifest: Manifest,
    node: &str,
    provider: ProviderHandle,
    clock: Arc<dyn Clock>,
    rt: &tokio::runtime::Handle,
) -> Result<EndReason, WorkerError> {
    let who = Principal { job: manifest.job.clone(), state: layout.state_location(), node: node.to_owned() };
    let input = Store::open(&manifest.input, &provider, &who)?;
    let token = crate::job::read_token(&layout).map_err(WorkerError::Token)?;
    let policy = CredentialPolicy {
        min_margin: Duration::from_millis(manifest.refresh_margin_ms),
        ..CredentialPolicy::default()
    };
    let current = provider.credentials(&manifest.job, &layout.state_location(), node)?;

    // Compile once per worker (or load from the cache), and check that the
    // component is the one the job was planned with.
    let runtime = Runtime::new(&RuntimeConfig { max_concurrent: 2, ..RuntimeConfig::default() })?;
    let task_file = layout.task_file(&manifest.task, &manifest.task_sha256)?;
    let task = runtime.load(&task_file)?;
    if task.sha256() != manifest.task_sha256 {
        return Err(WorkerError::Changed {
            path: manifest.task.clone(),
            found: task.sha256().to_owned(),
            planned: manifest.task_sha256.clone(),
        });
    }

    let start = clock.now();
    let watchdog = Watchdog::new(
        start,
        manifest.expires_at,
        Duration::from_millis(manifest.idle_timeout_ms),
        Duration::from_millis(manifest.master_lost_timeout_ms),
    );
    // Find the master (it may still be starting, or restarting).
    let addr = loop {
        // A stale address (a master that died) fails at the first lease and
        // is read again; the master-lost timeout decides when to give up.
        if let Ok(Some(info)) = layout.state.read_json::<MasterInfo>(keys::MASTER)
            && !info.addr.is_empty()
        {
            break info;
        }
        // The job may have ended before this worker started (an empty job).
        if layout.state.exists(keys::FINAL) {
            log(node, "ending before any work: the job already ended");
            return Ok(EndReason::JobDone);
        }
        if let Some(reason) = watchdog.check(clock.now(), false, CredentialAction::Keep) {
            let reason = if reason == EndReason::Idle { EndReason::MasterLost } else { reason };
            log(node, &format!("ending before any work: {reason}"));
            return Ok(reason);
        }
        // Each look at a remote state is a request: a few a second.
        std::thread::sleep(Duration::from_millis(if layout.state.local_dir().is_some() { 50 } else { 250 }));
    };
    let client = Client::connect(&addr, &token, Duration::from_secs(10))?;
    let keeper = Keeper {
        inner: Arc::new(Mutex::new(Credentials { current, failures: 0, failed_at: 0, refreshed: 0, failed_ops: 0 })),
        provider,
        layout,
        job: manifest.job.clone(),
        node: node.to_owned(),
        policy,
        clock,
    };
    // The stores check the credential this worker renews (on the local
    // provider, which has no store of its own to check it). Only the
    // credential is shared: the keeper holds the stores, which hold this.
    let presenter: mayfly_data::gate::Presenter = {
        let held = keeper.inner.clone();
        Arc::new(move || held.lock().ok().map(|c| c.current.clone()))
    };
    for store in [&input, &keeper.layout.state, &keeper.layout.output] {
        store.present_credential(presenter.clone());
    }
    let params: Arc<str> = Arc::from(manifest.params.to_string());
    let rt = rt.clone();
    let mut worker = Worker {
        node: node.to_owned(),
        rt,
        manifest,
        input,
        keeper,
        runtime,
        task,
        params,
        reduce: None,
        client,
        watchdog,
        hold: Arc::new(AtomicU64::new(0)),
        released: None,
        last_failed: None,
        left_hold: 0,
        unanswered: Vec::new(),
    };
    log(
        node,
        &format!(
            "started; task {} loaded ({})",
            worker.task.name(),
            if worker.task.from_cache { "from cache" } else { "compiled" }
        ),
    );

    let reason = loop {
        // Held first: idle and the master's silence do not end a held worker.
        let held = worker.hold.load(Ordering::Relaxed);
        if held > worker.keeper.now() {
            match worker.held(held) {
                Some(reason) => break reason,
                None => continue,
            }
        }
        let action = worker.keeper.refresh_if_due();
        if let Some(reason) = worker.watchdog.check(worker.keeper.now(), false, action) {
            break reason;
        }
        let req = LeaseRequest { worker: worker.node.clone(), credential_expires_at: worker.keeper.expires_at() };
        match worker.client.lease(&req) {
            Ok(LeaseReply::Hold { until }) => {
                let t = worker.keeper.now();
                worker.watchdog.last_master_contact = t;
                worker.watchdog.last_work = t;
                if until == worker.left_hold || until <= t {
                    // The hold this worker just left (the master reads the
                    // release within seconds), or one already over: ask again soon.
                    std::thread::sleep(Duration::from_millis(500));
                } else {
                    worker.hold.store(until, Ordering::Relaxed);
                }
            }
            Ok(LeaseReply::Lease { shard, token, attempt, expires_at, items, staging, stage }) => {
                worker.watchdog.last_master_contact = worker.keeper.now();
                match stage {
                    Stage::Map => log(node, &format!("shard {shard} attempt {attempt}: {} items", items.len())),
                    Stage::Reduce { partition } => log(
                        node,
                        &format!(
                            "shard {shard} (reduce partition {partition}) attempt {attempt}: {} map outputs",
                            items.len()
                        ),
                    ),
                }
                worker.process(Grant { shard, token, attempt, stage }, items, staging, expires_at);
                worker.watchdog.last_work = worker.keeper.now();
                worker.watchdog.last_master_contact = worker.keeper.now();
            }
            Ok(LeaseReply::Wait { retry_ms, coming }) => {
                worker.watchdog.last_master_contact = worker.keeper.now();
                if coming {
                    // The reduce waits for the map's last shards: it will need
                    // this worker, so waiting for it is not idling.
                    worker.watchdog.last_work = worker.keeper.now();
                }
                std::thread::sleep(Duration::from_millis(retry_ms.clamp(10, 1000)));
            }
            Ok(LeaseReply::Done) => break EndReason::JobDone,
            Err(CallError::Refused { status: 401, message }) => {
                return Err(WorkerError::Refused(message));
            }
            Err(_) if worker.keeper.layout.state.exists(keys::FINAL) => break EndReason::JobDone,
            Err(e) => {
                // Unreachable, or restarting: try again; the master-lost timeout
                // decides when to give up. A new master may have a new address.
                if let Ok(Some(info)) = worker.keeper.layout.state.read_json::<MasterInfo>(keys::MASTER)
                    && !info.addr.is_empty()
                    && let Ok(client) = Client::connect(&info, &token, Duration::from_secs(10))
                {
                    worker.client = client;
                }
                warn(node, &format!("lease request failed: {e}"));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    if reason == EndReason::JobDone {
        worker.drop_unanswered();
    }
    let (refreshed, failed_ops) = worker.keeper.stats();
    log(node, &format!("ending: {reason}; credentials refreshed {refreshed} times, {failed_ops} failed operations"));
    Ok(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mayfly_model::policy::{ManualClock, SystemClock, Validity};

    /// A keeper for node `worker-1` of a job in `dir` on the local provider,
    /// holding a credential valid for 20 s from `clock`'s now.
    fn keeper(dir: &std::path::Path, clock: &ManualClock) -> Keeper {
        let layout = Layout::local(&dir.join("state"), "j", &dir.join("out"));
        std::fs::create_dir_all(&layout.work).unwrap();
        let provider = ProviderHandle::select(&Default::default()).unwrap();
        let mut current = provider.credentials("j", &layout.state_location(), "worker-1").unwrap();
        current.validity = Validity { issued_at: clock.now(), expires_at: clock.now() + 20_000 };
        Keeper {
            inner: Arc::new(Mutex::new(Credentials {
                current,
                failures: 0,
                failed_at: 0,
                refreshed: 0,
                failed_ops: 0,
            })),
            provider,
            layout,
            job: "j".into(),
            node: "worker-1".into(),
            policy: CredentialPolicy::default(),
            clock: Arc::new(clock.clone()),
        }
    }

    #[test]
    fn the_credential_rule_runs_on_the_workers_clock() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(SystemClock.now());
        let k = keeper(dir.path(), &clock);
        assert_eq!(k.refresh_if_due(), CredentialAction::Keep);
        assert!(k.authorize("reading").is_ok());
        // 25 s later on the worker's clock (none on the system's): expired,
        // and no storage operation may start on it.
        clock.advance(Duration::from_secs(25));
        let e = k.authorize("reading the input").unwrap_err();
        assert_eq!(e, Unauthorized::Expired { what: "reading the input".into(), ago_ms: 5000 });
        assert_eq!(e.to_string(), "reading the input: credential expired 5000 ms ago");
        assert_eq!(k.stats(), (0, 1));
        // The rule refreshes it; the fresh one (issued by the provider, on
        // the system's clock) is good again.
        let stale = k.inner.lock().unwrap().current.validity;
        assert!(stale.expires_at < clock.now());
        assert_eq!(k.refresh_if_due(), CredentialAction::Keep);
        assert_eq!(k.stats().0, 1, "refreshed once");
    }
}
