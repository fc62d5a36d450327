//! The preflight: a job's tasks tried on a small sample of its real inputs,
//! on this machine, before any node is launched, so that a job every shard of
//! which would fail (parameters the task refuses, a memory limit it cannot
//! live in, a task error on the data) is refused before it costs anything.
//!
//! The sample is the first item of the first shard, the first item of the
//! largest shard and the smallest item (fewer when they coincide). Each runs
//! as a shard attempt of its own ([`crate::attempt`], attempt number 0), with
//! the job's parameters, limits and isolation; outputs are staged in a
//! directory of the preflight's own and deleted. With a reduce task, it then
//! runs once over the sample's map outputs. Nothing is written to the job's
//! output or state.
//!
//! What it refuses ([`Refused`]): a shard's `start` or `finish` failing; an
//! item failing for good when the job may quarantine no item, or every item
//! of the sample failing for good; the reduce failing. What it only says
//! ([`Report::notes`]): a failure that another attempt or another machine may
//! not repeat (a time limit, a retryable task error, the host's own trouble,
//! an input that could not be read), an item failing that the job may
//! quarantine, and a sample cut short by the preflight's own time bound.
//!
//! In `mayfly-core`'s flow (`core/tests/flow.rs` checks it) it must not import
//! `master`, `worker`, `node` or `bootstrap`; like its crate, it must not
//! import `mayfly-ops` or the binary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::attempt::{Driver, Ended, Shard, Stage};
use crate::config::JobSpec;
use crate::host::{
    Attempt, Call, ConcatInput, Failure, FileInput, InputSource, Limits, Runtime, RuntimeConfig, StagedOutput,
};
use mayfly_data::store::Store;
use mayfly_model::plan::{Item, Plan};
use mayfly_model::units::HumanDuration;

/// A call shorter than this is not started: the preflight is out of time.
const LEAST_CALL: Duration = Duration::from_millis(50);

/// The items a preflight runs: the first item of the first shard, the first
/// item of the largest shard (the first such), and the smallest item of the
/// job; each once, with its shard's number.
pub fn sample(plan: &Plan) -> Vec<(u32, Item)> {
    let mut picked: Vec<(u32, Item)> = Vec::new();
    let mut pick = |shard: u32, item: &Item| {
        if !picked.iter().any(|(_, i)| i == item) {
            picked.push((shard, item.clone()));
        }
    };
    if let Some((shard, item)) = plan.shards.iter().find_map(|s| s.items.first().map(|i| (s.id, i))) {
        pick(shard, item);
    }
    // The first of the largest: `max_by_key` keeps the last of equals.
    let largest = plan.shards.iter().filter(|s| !s.items.is_empty()).rev().max_by_key(|s| s.bytes);
    if let Some(s) = largest {
        pick(s.id, &s.items[0]);
    }
    let smallest = plan.shards.iter().flat_map(|s| s.items.iter().map(move |i| (s.id, i))).min_by_key(|(_, i)| i.len);
    if let Some((shard, item)) = smallest {
        pick(shard, item);
    }
    picked
}

/// What a preflight is asked to try.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The job's id (the tasks are told it).
    pub job: &'a str,
    /// The job: its parameters, limits, isolation, quarantine bound.
    pub spec: &'a JobSpec,
    /// Its plan (the sample is taken from it).
    pub plan: &'a Plan,
    /// Where its inputs are.
    pub input: &'a Store,
    /// The map task's component, readied.
    pub task: &'a Path,
    /// The reduce task's component, if the job has one.
    pub reduce: Option<&'a Path>,
    /// The partitions the map task is told (`partitions()`): the job's, or
    /// for `partitions = "auto"` the most it may get.
    pub partitions: u32,
    /// How long the whole preflight may take (the job's limits still apply
    /// to each call, when lower).
    pub bound: Duration,
}

/// One sampled item's run.
#[derive(Debug, Clone)]
pub struct Tried {
    /// The item's key.
    pub item: String,
    /// Its bytes.
    pub bytes: u64,
    /// Wall time of its `item` call (none if it never got there).
    pub item_time: Duration,
    /// What went wrong, if anything (a task's message, naming the item).
    pub failed: Option<String>,
}

/// A preflight that found no reason to refuse the job.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The sampled items, in the order they ran.
    pub tried: Vec<Tried>,
    /// Whether the reduce task ran over the sample's map outputs.
    pub reduced: bool,
    /// Bytes of the map outputs of the sample's items that succeeded.
    pub map_output_bytes: u64,
    /// Whether every map output of the sample is partitioned
    /// (`part-<p>/<name>`); `None` if there was none.
    pub partitioned: Option<bool>,
    /// What the operator should know: failures it did not refuse the job
    /// for, and a sample cut short.
    pub notes: Vec<String>,
    /// Wall time of the whole preflight.
    pub elapsed: Duration,
}

impl Report {
    /// Input bytes the map task processed successfully, and the time its
    /// `item` calls took on them.
    pub fn processed(&self) -> (u64, Duration) {
        self.tried
            .iter()
            .filter(|t| t.failed.is_none())
            .fold((0, Duration::ZERO), |(b, d), t| (b + t.bytes, d + t.item_time))
    }

    /// The map task's time per MiB of input on the sample (`None`: nothing
    /// was processed, or too fast to time).
    pub fn per_mib(&self) -> Option<Duration> {
        let (bytes, time) = self.processed();
        (bytes > 0 && !time.is_zero()).then(|| time.mul_f64((1 << 20) as f64 / bytes as f64))
    }

    /// The sample's rate in bytes per second, for a time estimate.
    pub fn rate(&self) -> Option<u64> {
        let (bytes, time) = self.processed();
        (bytes > 0 && !time.is_zero()).then(|| (bytes as f64 / time.as_secs_f64()).max(1.0) as u64)
    }
}

/// Why a preflight refused the job or could not run.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// The tasks failed on the sample as every shard would.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The sandbox did not start.
    #[error("starting the sandbox: {0}")]
    Sandbox(#[from] crate::host::StartError),
    /// A task's component does not load.
    #[error(transparent)]
    Load(#[from] crate::host::LoadError),
    /// Its staging directory could not be made.
    #[error("making the preflight's staging directory {at}: {source}")]
    Staging {
        /// Where.
        at: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// The tasks failed on the sample in a way that would fail the job: the
/// task's message, and why one sample says so much.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the tasks fail on a sample of the inputs, so {why}: {message}; fix the task or its parameters, \
     or turn the preflight off (--no-preflight, [preflight] enabled = false) to launch anyway"
)]
pub struct Refused {
    /// What failed, as the task said it (naming the item).
    pub message: String,
    /// Why that fails the job, not one item: what would fail, and why.
    pub why: String,
}

/// The directory a preflight stages outputs in, deleted when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a sample run's driver saw: the item's call time and the last
/// failure the task (or the host) reported.
struct Sampled<'a> {
    input: &'a Store,
    item_time: Duration,
    failure: Option<Failure>,
}

impl Driver for Sampled<'_> {
    type Stop = std::convert::Infallible;

    fn before(&mut self, _index: usize) -> Option<Self::Stop> {
        None
    }

    fn input(&mut self, _index: usize, item: &Item) -> std::io::Result<Arc<dyn InputSource>> {
        self.input.input(&item.object, &item.object, Some((item.start, item.len)))
    }

    fn called(&mut self, stage: Stage<'_>, call: &Call) {
        if let Stage::Item(_) = stage {
            self.item_time += call.elapsed;
        }
        if let Err(f) = &call.result {
            self.failure = Some(f.clone());
        }
    }
}

/// Whether a failure on the sample would repeat on every machine and every
/// attempt: not a time limit (the nodes' machines differ from this one), not
/// the host's own trouble, not a failure the task calls retryable. A panic or
/// a trap counts (the sandbox retries them, but on the same input a task's
/// own bug repeats).
fn for_good(failure: &Failure) -> bool {
    match failure {
        Failure::Timeout { .. } | Failure::Host { .. } => false,
        Failure::TaskError { retryable, .. } => !retryable,
        _ => true,
    }
}

/// Runs the preflight of `request` on `rt`: `Ok` with what it saw, or
/// [`PreflightError::Refused`] with the task's message.
pub fn run(rt: &tokio::runtime::Handle, request: &Request<'_>) -> Result<Report, PreflightError> {
    let started = Instant::now();
    let until = started + request.bound;
    let spec = request.spec;
    let mut report = Report::default();
    let sample = sample(request.plan);
    if sample.is_empty() {
        return Ok(report);
    }
    let runtime = Runtime::new(&RuntimeConfig { max_concurrent: 1, ..RuntimeConfig::default() })?;
    let task = runtime.load(request.task)?;
    let at = std::env::temp_dir().join(format!(
        "mayfly-preflight-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&at).map_err(|source| PreflightError::Staging { at: at.display().to_string(), source })?;
    let scratch = Scratch(at);
    let quarantine = spec.max_failed_items.bound(request.plan.shards.iter().map(|s| s.items.len() as u64).sum());
    // Each call's time limit: the job's, or a third of what is left of the
    // bound (a run is three calls: start, item, finish).
    let limits_now = || -> Option<(Limits, bool)> {
        let per_call = until.saturating_duration_since(Instant::now()) / 3;
        if per_call < LEAST_CALL {
            return None;
        }
        let cut = per_call < spec.limits.attempt_time.0;
        Some((Limits { attempt_time: HumanDuration(per_call.min(spec.limits.attempt_time.0)), ..spec.limits }, cut))
    };
    let params: Arc<str> = Arc::from(spec.task.params.to_string());
    let mut outputs: Vec<StagedOutput> = Vec::new();
    let mut failed_for_good = 0usize;
    let mut concluded = 0usize;
    for (n, (shard, item)) in sample.iter().enumerate() {
        let Some((limits, cut)) = limits_now() else {
            report.notes.push(format!(
                "preflight: out of its {} after {n} of {} sample items; the rest were not tried",
                HumanDuration(request.bound),
                sample.len()
            ));
            break;
        };
        let staging = scratch.0.join(format!("map-{n}"));
        let attempt = Shard {
            job: request.job,
            shard: *shard,
            attempt: 0,
            params: params.clone(),
            limits,
            isolation: spec.isolation,
            staging: &staging,
            key: crate::job::shard_key(*shard),
            partitions: request.partitions,
        };
        let mut driver = Sampled { input: request.input, item_time: Duration::ZERO, failure: None };
        let ended = crate::attempt::run(rt, &runtime, &task, &attempt, std::slice::from_ref(item), &mut driver);
        let mut tried = Tried { item: item.key(), bytes: item.len, item_time: driver.item_time, failed: None };
        match ended {
            Ended::Done(staged) => {
                concluded += 1;
                outputs.extend(staged);
            }
            Ended::Stopped(never) => match never {},
            Ended::Failed(failed) => {
                tried.failed = Some(failed.error.clone());
                match &driver.failure {
                    Some(Failure::Timeout { .. }) if cut => report.notes.push(format!(
                        "preflight: out of its {} on {}; the rest of the sample was not tried",
                        HumanDuration(request.bound),
                        tried.item
                    )),
                    Some(f) if for_good(f) && failed.at.is_none() => {
                        // A shard's own `start` or `finish`: every shard has one.
                        return Err(Refused {
                            message: failed.error,
                            why: "every shard would (a shard's `start` or `finish` failed)".into(),
                        }
                        .into());
                    }
                    Some(f) if for_good(f) => {
                        concluded += 1;
                        failed_for_good += 1;
                        if quarantine == 0 {
                            return Err(Refused {
                                message: failed.error,
                                why: "the job would (the item fails for good, and [limits] max_failed_items \
                                      lets the job quarantine none)"
                                    .into(),
                            }
                            .into());
                        }
                        report.notes.push(format!(
                            "preflight: {} (the job may quarantine up to {quarantine} of its items)",
                            failed.error
                        ));
                    }
                    _ => report.notes.push(format!(
                        "preflight: {} (not refused: another attempt or machine may not fail so)",
                        failed.error
                    )),
                }
                let out_of_time = matches!(driver.failure, Some(Failure::Timeout { .. })) && cut;
                report.tried.push(tried);
                if out_of_time {
                    break;
                }
                continue;
            }
        }
        report.tried.push(tried);
    }
    if concluded > 0 && failed_for_good == concluded {
        let first = report.tried.iter().find_map(|t| t.failed.clone()).unwrap_or_default();
        let why = format!("every shard would (each of the {concluded} sampled items failed for good)");
        return Err(Refused { message: first, why }.into());
    }
    report.map_output_bytes = outputs.iter().map(|o| o.bytes).sum();
    let unpartitioned = outputs.iter().find(|o| crate::job::partition_of(&o.name).is_none());
    report.partitioned = (!outputs.is_empty()).then_some(unpartitioned.is_none());
    if let (Some(out), crate::config::Partitions::Count(n @ 2..)) = (unpartitioned, spec.reduce_stage.partitions)
        && spec.reduce.is_some()
    {
        return Err(Refused {
            message: format!(
                "the map task wrote {:?}, which is not partitioned, and [reduce] partitions = {n} reads only \
                 partitioned outputs (part-<p>/<name>)",
                out.name
            ),
            why: "its reduce would miss that output: write it with the sdk's partitioned output \
                  (Outputs::partitioned), or set partitions = 1"
                .into(),
        }
        .into());
    }
    if let (Some(reduce), Some(reduce_spec)) = (request.reduce, spec.reduce.as_ref())
        && concluded > failed_for_good
    {
        match limits_now() {
            None => report.notes.push("preflight: out of time before the reduce task".into()),
            Some((limits, cut)) => {
                let task = runtime.load(reduce)?;
                let parts: Vec<Arc<dyn InputSource>> = outputs
                    .iter()
                    .filter_map(|o| FileInput::open(&o.path, o.name.clone()).ok())
                    .map(|f| Arc::new(f) as Arc<dyn InputSource>)
                    .collect();
                let input = Arc::new(ConcatInput::new("the sample's map outputs", parts));
                let outcome = rt.block_on(runtime.run(
                    &task,
                    Attempt {
                        input,
                        params: Arc::from(reduce_spec.params.to_string()),
                        limits,
                        staging: scratch.0.join("reduce"),
                    },
                ));
                match outcome.result {
                    Ok(()) => report.reduced = true,
                    Err(f) if for_good(&f) => {
                        return Err(Refused {
                            message: format!("reduce task {}: {f}", task.name()),
                            why: "the reduce would (it failed over the sample's map outputs)".into(),
                        }
                        .into());
                    }
                    Err(Failure::Timeout { .. }) if cut => {
                        report.notes.push("preflight: out of time in the reduce task".into())
                    }
                    Err(f) => report.notes.push(format!(
                        "preflight: reduce task {}: {f} (not refused: another attempt or machine may not fail so)",
                        task.name()
                    )),
                }
            }
        }
    }
    report.elapsed = started.elapsed();
    drop(scratch);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mayfly_model::plan::Shard as PlanShard;

    fn item(name: &str, len: u64) -> Item {
        Item { object: name.into(), start: 0, len, whole: true }
    }

    fn shard(id: u32, items: Vec<Item>) -> PlanShard {
        PlanShard { id, bytes: items.iter().map(|i| i.len).sum(), items }
    }

    #[test]
    fn the_sample_is_the_first_the_largest_shards_first_and_the_smallest_item_once_each() {
        let plan = |shards| Plan { shards, target_bytes: 0, total_bytes: 0, objects: 0 };
        let p = plan(vec![
            shard(0, vec![item("a", 10), item("b", 20)]),
            shard(1, vec![item("c", 50), item("d", 1)]),
            shard(2, vec![item("e", 5)]),
        ]);
        let keys: Vec<(u32, String)> = sample(&p).into_iter().map(|(s, i)| (s, i.object)).collect();
        assert_eq!(keys, [(0, "a".to_owned()), (1, "c".to_owned()), (1, "d".to_owned())]);
        // One shard of one item: one sample.
        assert_eq!(sample(&plan(vec![shard(0, vec![item("x", 3)])])).len(), 1);
        assert!(sample(&plan(Vec::new())).is_empty());
    }

    #[test]
    fn failures_another_attempt_or_machine_may_not_repeat_are_not_for_good() {
        assert!(!for_good(&Failure::Timeout { limit: HumanDuration(Duration::from_secs(1)) }));
        assert!(!for_good(&Failure::Host { message: "disk".into() }));
        assert!(!for_good(&Failure::TaskError { message: "later".into(), retryable: true }));
        assert!(for_good(&Failure::TaskError { message: "bad".into(), retryable: false }));
        assert!(for_good(&Failure::OutOfMemory { limit: mayfly_model::units::ByteSize(1 << 20) }));
    }
}
