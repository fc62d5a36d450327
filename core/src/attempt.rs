//! One attempt at a shard: its items through the task. A worker runs its
//! leases with it, and `mayfly replay` runs a shard again with it on an
//! operator's machine, so that a replay is the attempt the job ran, not a
//! copy of it.
//!
//! The shape of an attempt lives here once: one instance for the shard
//! (`start`, an `item` per item, `finish`), or one per item when the job asks
//! for `isolation = "item"`. The first failure ends the attempt and says
//! which item it happened on and whether that item is to blame (the master
//! quarantines only an item that is). What differs between a worker and a
//! replay is the [`Driver`]: where the inputs come from (the worker's
//! read-ahead, a held node's kept files), what stops an attempt between two
//! items (a lost lease, an operator's hold, credentials), and what becomes of
//! each call's logs.
//!
//! Must not import: the master, the worker, bootstrap, or anything that
//! talks to a cluster; an attempt knows the sandbox, the plan's items and
//! the job's isolation only.

use std::path::Path;
use std::sync::Arc;

use crate::config::Isolation;
use crate::host::{Call, Failure, InputSource, Limits, Runtime, Session, ShardInfo, ShardStart, StagedOutput, Task};
use mayfly_model::plan::Item;

/// What an attempt is: whose shard, which attempt, with what.
#[derive(Debug, Clone)]
pub struct Shard<'a> {
    /// The job's id.
    pub job: &'a str,
    /// The shard's number.
    pub shard: u32,
    /// The attempt's number (1 for the first; 0 for a preflight).
    pub attempt: u32,
    /// The task's parameters, a JSON object.
    pub params: Arc<str>,
    /// The job's limits.
    pub limits: Limits,
    /// One instance for the shard, or one per item.
    pub isolation: Isolation,
    /// Where the instances stage their outputs.
    pub staging: &'a Path,
    /// The key of the shard's own outputs: [`crate::job::shard_key`] for a
    /// map shard, [`crate::job::reduce_key`] for a reduce partition.
    pub key: String,
    /// The job's reduce partitions (what the task's `partitions()` answers).
    pub partitions: u32,
}

/// Which call of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage<'k> {
    /// An instance's `start`.
    Start,
    /// The `item` call of the item with this key.
    Item(&'k str),
    /// An instance's `finish`.
    Finish,
}

/// What runs an attempt supplies: its inputs, its reasons to stop, and an ear
/// for each call.
pub trait Driver {
    /// Why an attempt stopped short of its end without failing.
    type Stop;
    /// Asked before item `index` is begun: `Some` stops the attempt there
    /// (its instance is discarded, nothing is kept).
    fn before(&mut self, index: usize) -> Option<Self::Stop>;
    /// Item `index`'s input.
    fn input(&mut self, index: usize, item: &Item) -> std::io::Result<Arc<dyn InputSource>>;
    /// Each call of the attempt as it ends, failed ones included.
    fn called(&mut self, stage: Stage<'_>, call: &Call);
}

/// How an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// What went wrong, naming the task and the item.
    pub error: String,
    /// Whether another attempt could help.
    pub retryable: bool,
    /// The item the attempt failed on: none when a shard's own `start` or
    /// `finish` failed.
    pub at: Option<String>,
    /// Whether that item is to blame, so that the shard may go on without it.
    pub blamed: bool,
}

impl Failed {
    /// The item to blame, if any.
    pub fn blamed_item(&self) -> Option<&str> {
        self.at.as_deref().filter(|_| self.blamed)
    }
}

/// How an attempt ended.
#[derive(Debug)]
pub enum Ended<S> {
    /// Every item and every `finish` succeeded: the staged outputs, to commit.
    Done(Vec<StagedOutput>),
    /// A call failed (or an input could not be read); nothing is kept.
    Failed(Failed),
    /// The driver stopped it between two items; nothing is kept.
    Stopped(S),
}

/// Whether a call's failure is its item's fault: the host failing never is;
/// a limit that counts over the instance's life (memory, output) is only when
/// the item was the instance's `first`, else the items before it share the
/// blame; anything else the task did on the item is.
pub fn blames_item(failure: &Failure, first: bool) -> bool {
    match failure {
        Failure::OutOfMemory { .. } | Failure::OutputLimit { .. } => first,
        Failure::Host { .. } => false,
        _ => true,
    }
}

/// Whether an input that could not be read is gone for good (it vanished,
/// or changed since it was listed): its item then fails for good and the
/// shard goes on without it; any other storage error is the attempt's.
fn input_gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidInput | std::io::ErrorKind::UnexpectedEof
    )
}

/// Ends an instance keeping nothing.
fn discard(session: Option<Session>) {
    if let Some(s) = session {
        s.discard();
    }
}

/// Runs `items` of `shard` through `task` on `rt`, asking `driver` for the
/// inputs and whether to go on. Stops at the first failure.
pub fn run<D: Driver>(
    rt: &tokio::runtime::Handle,
    runtime: &Runtime,
    task: &Task,
    shard: &Shard<'_>,
    items: &[Item],
    driver: &mut D,
) -> Ended<D::Stop> {
    let isolated = shard.isolation == Isolation::Item;
    let start = |key: String, n: usize| ShardStart {
        info: ShardInfo { job: shard.job.to_owned(), shard: shard.shard, attempt: shard.attempt, items: n as u32 },
        params: shard.params.clone(),
        limits: shard.limits,
        staging: shard.staging.to_owned(),
        shard_key: key,
        partitions: shard.partitions,
    };
    let name = task.name();
    let mut staged = Vec::new();
    let mut session: Option<Session> = None;
    // Items the current instance has processed.
    let mut in_session = 0usize;
    for (index, item) in items.iter().enumerate() {
        if let Some(stop) = driver.before(index) {
            discard(session);
            return Ended::Stopped(stop);
        }
        let key = item.key();
        if session.is_none() {
            let owner = if isolated { key.clone() } else { shard.key.clone() };
            let (s, call) = rt.block_on(runtime.start(task, start(owner, if isolated { 1 } else { items.len() })));
            driver.called(Stage::Start, &call);
            if let Err(f) = call.result {
                s.discard();
                // The task's own `start` (parameters, set-up): no item's fault.
                let error = format!("task {name} start: {f}");
                return Ended::Failed(Failed { error, retryable: f.is_retryable(), at: None, blamed: false });
            }
            session = Some(s);
            in_session = 0;
        }
        let Some(s) = session.as_mut() else { continue };
        let input = match driver.input(index, item) {
            Ok(input) => input,
            Err(e) => {
                discard(session);
                let blamed = input_gone(&e);
                let error = format!("input {key}: {e}");
                return Ended::Failed(Failed { error, retryable: !blamed, at: Some(key), blamed });
            }
        };
        let call = rt.block_on(s.item(input, if isolated { None } else { Some(&key) }));
        driver.called(Stage::Item(&key), &call);
        if let Err(f) = &call.result {
            discard(session);
            let error = format!("item {key}: task {name} {f}");
            let blamed = blames_item(f, isolated || in_session == 0);
            return Ended::Failed(Failed { error, retryable: f.is_retryable(), at: Some(key), blamed });
        }
        in_session += 1;
        // The item's own instance: its `finish` is the item's, as an item
        // call's failure would be.
        if isolated
            && let Some(s) = session.take()
            && let Err(f) = finish(rt, s, driver, &mut staged)
        {
            let error = format!("task {name} finish: {f}");
            let blamed = blames_item(&f, true);
            return Ended::Failed(Failed { error, retryable: f.is_retryable(), at: Some(key), blamed });
        }
    }
    // (A shard left with no items, all quarantined, ends with no outputs.)
    if let Some(s) = session.take()
        && let Err(f) = finish(rt, s, driver, &mut staged)
    {
        let error = format!("task {name} finish: {f}");
        return Ended::Failed(Failed { error, retryable: f.is_retryable(), at: None, blamed: false });
    }
    Ended::Done(staged)
}

/// Ends an instance: its `finish`, told to `driver` as a call; its outputs
/// added to `staged` when it succeeded.
fn finish<D: Driver>(
    rt: &tokio::runtime::Handle,
    session: Session,
    driver: &mut D,
    staged: &mut Vec<StagedOutput>,
) -> Result<(), Failure> {
    let crate::host::Outcome { result, outputs, logs, input_read, elapsed, .. } = rt.block_on(session.finish());
    let call = Call { result, logs, input_read, elapsed };
    driver.called(Stage::Finish, &call);
    call.result.map(|()| staged.extend(outputs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mayfly_model::units::ByteSize;

    #[test]
    fn limits_over_an_instances_life_blame_only_its_first_item() {
        let oom = Failure::OutOfMemory { limit: ByteSize(1 << 20) };
        let output = Failure::OutputLimit { limit: ByteSize(1 << 20) };
        assert!(blames_item(&oom, true) && blames_item(&output, true));
        assert!(!blames_item(&oom, false) && !blames_item(&output, false));
        let task = Failure::TaskError { message: "bad".into(), retryable: false };
        assert!(blames_item(&task, true) && blames_item(&task, false));
        assert!(!blames_item(&Failure::Host { message: "disk".into() }, true));
    }

    #[test]
    fn an_input_gone_for_good_blames_its_item_and_a_storage_hiccup_does_not() {
        use std::io::{Error, ErrorKind};
        for kind in [ErrorKind::NotFound, ErrorKind::InvalidInput, ErrorKind::UnexpectedEof] {
            assert!(input_gone(&Error::from(kind)), "{kind:?}");
        }
        for kind in [ErrorKind::TimedOut, ErrorKind::ConnectionReset, ErrorKind::PermissionDenied] {
            assert!(!input_gone(&Error::from(kind)), "{kind:?}");
        }
        let f = Failed { error: "x".into(), retryable: true, at: Some("a".into()), blamed: false };
        assert_eq!(f.blamed_item(), None);
        assert_eq!(Failed { blamed: true, ..f }.blamed_item(), Some("a"));
    }
}
