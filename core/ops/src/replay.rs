//! `mayfly replay`: one shard of a job run again on this machine, as a
//! worker ran it: the same component (checked by its sha256), parameters,
//! input ranges and limits, through the worker's own attempt code
//! ([`mayfly_core::attempt`]). Outputs go to a local directory, never to the job's
//! output. An item that fails is set aside and the shard runs again without
//! it, as the master's quarantine does, so that every other item's outputs
//! are the job's. On a held node, it reads the inputs the node kept. A shard
//! number past the map's is a reduce partition: the reduce task over its part
//! of every map output its commits name, read from the job's output.
//!
//! Must not import: the master, the worker's loop, bootstrap; a replay never
//! writes to a job's state or output.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use mayfly_core::attempt::{self, Stage};
use mayfly_core::host::{Call, FileInput, InputSource, Runtime, RuntimeConfig, Task};
use mayfly_core::job::{Layout, Manifest};
use mayfly_data::provider::ProviderHandle;
use mayfly_data::store::{Principal, Store};
use mayfly_model::key::file_name;
use mayfly_model::plan::Item;

/// Why a shard cannot be replayed (before anything ran).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The job has no such shard.
    #[error("job {job} has {shards} shards (0 to {}); there is no shard {shard}", shards.saturating_sub(1))]
    NoShard {
        /// The job.
        job: String,
        /// How many shards it has.
        shards: usize,
        /// The shard asked for.
        shard: u32,
    },
    /// The shard has no such item.
    #[error("shard {shard} has no item {item:?}; its items: {}", items.join(", "))]
    NoItem {
        /// The shard.
        shard: u32,
        /// The item asked for.
        item: String,
        /// The shard's items.
        items: Vec<String>,
    },
    /// The held node kept no inputs of the shard.
    #[error(
        "node {node} kept no inputs of shard {shard} in {} (a held node keeps the shard it handed back and its \
         last failed attempt's{}); run this on the node itself, or leave out --node to read the job's input",
        root.display(),
        if kept.is_empty() { String::new() } else { format!("; it kept: {}", kept.join(", ")) }
    )]
    NotKept {
        /// The node.
        node: String,
        /// The shard.
        shard: u32,
        /// Where the node keeps inputs.
        root: PathBuf,
        /// What it kept.
        kept: Vec<String>,
    },
    /// The component changed since the job ran.
    #[error(
        "the task at {} changed since job {job} ran (sha256 {found} != {expected}): replaying it would not be the same run",
        path.display()
    )]
    TaskChanged {
        /// The job.
        job: String,
        /// The component.
        path: PathBuf,
        /// Its hash now.
        found: String,
        /// Its hash when the job ran.
        expected: String,
    },
    /// The provider, the input, the task or the output directory could not be had.
    #[error("{what}: {message}")]
    Setup {
        /// What was being done.
        what: String,
        /// What went wrong.
        message: String,
    },
}

impl ReplayError {
    fn setup(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        ReplayError::Setup { what: what.into(), message: format!("{e:#}") }
    }
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct Request {
    /// The shard.
    pub shard: u32,
    /// Only this item of it.
    pub item: Option<String>,
    /// Read the inputs this held node kept (run on that node).
    pub node: Option<String>,
    /// Where the outputs go.
    pub out: PathBuf,
}

/// A shard ready to run again: its task loaded and checked, its inputs found.
pub struct Replay {
    manifest: Manifest,
    request: Request,
    items: Vec<Item>,
    /// For a reduce partition: its number, and its map outputs (`items` is
    /// then its one input, named by the partition's key).
    reduce: Option<(u32, Vec<Item>)>,
    kept: Option<PathBuf>,
    input: Store,
    runtime: Runtime,
    task: Task,
}

/// How one item (or the shard's own `start`/`finish`) went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ItemRun {
    /// The item's key, or `(the shard's start)` and the like.
    pub item: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// Why not.
    pub error: Option<String>,
    /// The kind of failure (`task-error`, `timeout`, `input`...).
    pub kind: Option<String>,
    /// Whether a retry could help.
    pub retryable: Option<bool>,
    /// Its outputs, where this replay put them.
    pub outputs: Vec<PathBuf>,
    /// What the task logged.
    pub logs: Vec<String>,
    /// Its wall time, in milliseconds.
    pub elapsed_ms: f64,
}

/// A replay's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The shard.
    pub shard: u32,
    /// Each item in the shard's order (and the shard's own calls when they
    /// failed or had outputs).
    pub items: Vec<ItemRun>,
    /// Items a held node did not keep (not part of its attempt).
    #[serde(skip)]
    pub not_kept: Vec<String>,
    /// How many items (or shard calls) failed.
    #[serde(skip)]
    pub failed: usize,
    /// Where the outputs are.
    #[serde(skip)]
    pub out: PathBuf,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("job", &self.manifest.job)
            .field("request", &self.request)
            .field("items", &self.items.len())
            .field("kept", &self.kept)
            .finish_non_exhaustive()
    }
}

impl Replay {
    /// Finds the shard and its items, the inputs (the job's, or what a held
    /// node kept), and the task, checked against the job's.
    pub fn prepare(layout: &Layout, manifest: &Manifest, request: Request) -> Result<Replay, ReplayError> {
        let job = &manifest.job;
        let map_shards = manifest.plan.shards.len() as u32;
        if request.shard >= map_shards && request.shard < map_shards + manifest.partitions() {
            let partition = request.shard - map_shards;
            return Self::prepare_partition(layout, manifest, request, partition);
        }
        let Some(shard) = manifest.plan.shards.get(request.shard as usize) else {
            return Err(ReplayError::NoShard {
                job: job.clone(),
                shards: manifest.plan.shards.len() + manifest.partitions() as usize,
                shard: request.shard,
            });
        };
        let items: Vec<Item> =
            shard.items.iter().filter(|i| request.item.as_ref().is_none_or(|k| &i.key() == k)).cloned().collect();
        if items.is_empty() {
            return Err(ReplayError::NoItem {
                shard: request.shard,
                item: request.item.clone().unwrap_or_default(),
                items: shard.items.iter().map(|i| i.key()).collect(),
            });
        }
        let kept = match &request.node {
            Some(node) => {
                let root = mayfly_core::hold::kept_dir(layout, node);
                let dir = root.join(format!("shard-{}", request.shard));
                if !dir.is_dir() {
                    let kept = std::fs::read_dir(&root)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    return Err(ReplayError::NotKept { node: node.clone(), shard: request.shard, root, kept });
                }
                Some(dir)
            }
            None => None,
        };
        let provider = ProviderHandle::select(&manifest.provider)
            .map_err(|e| ReplayError::setup(format!("making provider {}", manifest.provider.label()), e))?;
        let who = Principal { job: job.clone(), state: layout.state_location(), node: "replay".into() };
        let input = Store::open(&manifest.input, &provider, &who)
            .map_err(|e| ReplayError::setup(format!("opening the job's input {}", manifest.input), e))?;
        let task_file = layout
            .task_file(&manifest.task, &manifest.task_sha256)
            .map_err(|e| ReplayError::setup("fetching the task", e))?;
        let runtime = Runtime::new(&RuntimeConfig { max_concurrent: 1, ..RuntimeConfig::default() })
            .map_err(|e| ReplayError::setup("starting the sandbox", e))?;
        let task = runtime
            .load(&task_file)
            .map_err(|e| ReplayError::setup(format!("loading the task {}", task_file.display()), e))?;
        if task.sha256() != manifest.task_sha256 {
            return Err(ReplayError::TaskChanged {
                job: job.clone(),
                path: task_file,
                found: task.sha256().to_owned(),
                expected: manifest.task_sha256.clone(),
            });
        }
        Ok(Replay { manifest: manifest.clone(), request, items, reduce: None, kept, input, runtime, task })
    }

    /// Reduce partition `partition`: the reduce task, checked, and the map
    /// outputs its shards' commits name.
    fn prepare_partition(
        layout: &Layout,
        manifest: &Manifest,
        request: Request,
        partition: u32,
    ) -> Result<Replay, ReplayError> {
        let job = &manifest.job;
        if request.item.is_some() || request.node.is_some() {
            return Err(ReplayError::setup(
                format!("replaying reduce partition {partition} (shard {})", request.shard),
                "a partition has one input, all of its map outputs: no --item, and no node keeps it (no --node)",
            ));
        }
        let Some((path, sha, _)) = &manifest.reduce else {
            return Err(ReplayError::setup("replaying a reduce partition", "the job has no reduce task"));
        };
        let map_shards = manifest.plan.shards.len() as u32;
        let committed = mayfly_core::reduce::committed_on_record(layout, map_shards)
            .map_err(|e| ReplayError::setup("reading the map shards' commits", e))?;
        let sources =
            mayfly_core::reduce::items(layout, committed.iter().map(Vec::as_slice), manifest.partitions(), partition);
        let key = mayfly_core::job::reduce_key(manifest.partitions(), partition);
        let len = sources.iter().map(|i| i.len).sum();
        let items = vec![Item { object: key, start: 0, len, whole: true }];
        let task_file = layout.task_file(path, sha).map_err(|e| ReplayError::setup("fetching the reduce task", e))?;
        let runtime = Runtime::new(&RuntimeConfig { max_concurrent: 1, ..RuntimeConfig::default() })
            .map_err(|e| ReplayError::setup("starting the sandbox", e))?;
        let task = runtime
            .load(&task_file)
            .map_err(|e| ReplayError::setup(format!("loading the reduce task {}", task_file.display()), e))?;
        if task.sha256() != sha.as_str() {
            return Err(ReplayError::TaskChanged {
                job: job.clone(),
                path: task_file,
                found: task.sha256().to_owned(),
                expected: sha.clone(),
            });
        }
        Ok(Replay {
            manifest: manifest.clone(),
            request,
            items,
            reduce: Some((partition, sources)),
            kept: None,
            input: layout.output.clone(),
            runtime,
            task,
        })
    }

    /// For a reduce partition: its number, and how many map outputs it reads.
    pub fn partition(&self) -> Option<(u32, usize)> {
        self.reduce.as_ref().map(|(p, sources)| (*p, sources.len()))
    }

    /// How many items it will run.
    pub fn items(&self) -> usize {
        self.items.len()
    }

    /// Where the inputs come from, when a held node kept them.
    pub fn kept(&self) -> Option<&Path> {
        self.kept.as_deref()
    }

    /// The task's name.
    pub fn task_name(&self) -> &str {
        self.task.name()
    }

    /// Runs the shard's items as the job ran them, on `rt` (the process's
    /// runtime, which its entry point owns); an item that fails is set
    /// aside and the shard runs again without it. Outputs land in
    /// `<out>/<item or shard key>/<name>`.
    pub fn run(self, rt: &tokio::runtime::Handle) -> Result<Report, ReplayError> {
        let Replay { manifest, request, items, reduce, kept, input, runtime, task } = self;
        let out = request.out.clone();
        std::fs::create_dir_all(&out).map_err(|e| ReplayError::setup(format!("creating {}", out.display()), e))?;
        let staging = out.join(format!(".mayfly-staging-{}", std::process::id()));
        let problem = mayfly_core::reduce::Problem::default();
        let (spec, mut given) = match reduce {
            None => (
                attempt::Shard {
                    job: &manifest.job,
                    shard: request.shard,
                    attempt: 1,
                    params: Arc::from(manifest.params.to_string()),
                    limits: manifest.limits,
                    isolation: manifest.isolation,
                    staging: &staging,
                    key: mayfly_core::job::shard_key(request.shard),
                    partitions: manifest.task_partitions(),
                },
                None,
            ),
            // As a worker runs a partition: one instance, one input.
            Some((partition, sources)) => {
                let config = mayfly_data::readahead::ReadAheadConfig::for_store(
                    manifest.read_ahead,
                    manifest.read_ahead_memory,
                    input.local_dir().is_some(),
                );
                let name = format!("the map outputs of partition {partition}");
                let concat: Arc<dyn InputSource> =
                    Arc::new(mayfly_core::reduce::input(&input, sources, config, &name, &problem));
                let params = manifest.reduce.as_ref().map_or_else(String::new, |(_, _, p)| p.to_string());
                let spec = attempt::Shard {
                    job: &manifest.job,
                    shard: request.shard,
                    attempt: 1,
                    params: Arc::from(params),
                    limits: manifest.limits,
                    isolation: mayfly_core::config::Isolation::Shard,
                    staging: &staging,
                    key: items[0].object.clone(),
                    partitions: 1,
                };
                (spec, Some(concat))
            }
        };
        let partition = given.is_some();
        // A held node kept what it was leased: not an item quarantined before.
        let left: Vec<Item> = items
            .iter()
            .filter(|i| kept.as_ref().is_none_or(|dir| dir.join(file_name(&i.key())).is_file()))
            .cloned()
            .collect();
        let mut set_aside: Vec<ItemRun> = Vec::new();
        let (ran, outputs, shard_failure) = loop {
            let _ = std::fs::remove_dir_all(&staging);
            let now: Vec<Item> =
                left.iter().filter(|i| !set_aside.iter().any(|r| r.item == i.key())).cloned().collect();
            let mut driver = Replayed {
                kept: kept.as_deref(),
                input: &input,
                given: given.take(),
                manifest: &manifest,
                calls: Vec::new(),
            };
            let ended = attempt::run(rt, &runtime, &task, &spec, &now, &mut driver);
            // A map output not as committed fails a partition, naming it, even
            // if the task went on past the read error.
            let ended = match (ended, problem.take()) {
                (attempt::Ended::Done(_), Some((error, retryable))) => {
                    attempt::Ended::Failed(attempt::Failed { error, retryable, at: None, blamed: false })
                }
                (attempt::Ended::Failed(failed), Some((error, retryable))) => {
                    attempt::Ended::Failed(attempt::Failed { error, retryable, ..failed })
                }
                (ended, _) => ended,
            };
            match ended {
                attempt::Ended::Done(outputs) => break (driver.calls, outputs, None),
                attempt::Ended::Stopped(never) => match never {},
                // A partition's one input is not set aside: its failure is the
                // partition's.
                attempt::Ended::Failed(failed) if partition => {
                    let what = failed.at.clone().unwrap_or_else(|| "finish".into());
                    let mut failure = driver.failure_of(&what, &failed);
                    failure.error = Some(failed.error.clone());
                    break (driver.calls, Vec::new(), Some(failure));
                }
                attempt::Ended::Failed(failed) => match failed.at.clone() {
                    // An input the store could not read for now (not gone for
                    // good): nothing to replay; say so, as a worker would retry.
                    Some(_) if !failed.blamed && driver.calls.iter().all(|(_, c)| c.result.is_ok()) => {
                        return Err(ReplayError::Setup {
                            what: format!("reading the job's input {}", manifest.input),
                            message: failed.error,
                        });
                    }
                    Some(key) => set_aside.push(driver.failure_of(&key, &failed)),
                    None => {
                        let what = driver.calls.last().map_or("start", |(s, _)| s.as_str()).to_owned();
                        let failure = driver.failure_of(&what, &failed);
                        break (driver.calls, Vec::new(), Some(failure));
                    }
                },
            }
        };
        let mut published: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for o in &outputs {
            let dest = inside(&out, &o.key, &o.name)?;
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| ReplayError::setup(format!("creating {}", parent.display()), e))?;
            }
            std::fs::rename(&o.path, &dest)
                .map_err(|e| ReplayError::setup(format!("moving {} to {}", o.path.display(), dest.display()), e))?;
            published.entry(o.key.clone()).or_default().push(dest);
        }
        let _ = std::fs::remove_dir_all(&staging);
        let failed = set_aside.len() + usize::from(shard_failure.is_some());
        let mut report = Report { shard: request.shard, items: Vec::new(), not_kept: Vec::new(), failed, out };
        for item in &items {
            let key = item.key();
            if let Some(run) = set_aside.iter().find(|r| r.item == key) {
                report.items.push(run.clone());
            } else if let Some((_, call)) = ran.iter().find(|(k, _)| *k == key) {
                let outputs = published.get(&key).cloned().unwrap_or_default();
                report.items.push(item_run(key.clone(), call, outputs));
            } else if kept.is_some() {
                report.not_kept.push(key);
            }
        }
        if let Some(failure) = shard_failure {
            report.items.push(ItemRun { item: format!("(the shard's {})", failure.item), ..failure });
        } else if let Some(paths) = published.get(&spec.key) {
            report.items.push(ItemRun {
                item: "(the shard's own outputs)".into(),
                ok: true,
                error: None,
                kind: None,
                retryable: None,
                outputs: paths.clone(),
                logs: Vec::new(),
                elapsed_ms: 0.0,
            });
        }
        Ok(report)
    }
}

/// `<out>/<the key as one name>/<name>` ([`file_name`]: a key can neither
/// climb out nor meet another's), refused when the name would leave `out`.
fn inside(out: &Path, key: &str, name: &str) -> Result<PathBuf, ReplayError> {
    let relative = Path::new(&file_name(key)).join(name);
    if relative.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(ReplayError::Setup {
            what: format!("placing output {name:?} of {key:?}"),
            message: format!("it would land outside {}; it is not written", out.display()),
        });
    }
    Ok(out.join(relative))
}

/// A call as a report line.
fn item_run(item: String, call: &Call, outputs: Vec<PathBuf>) -> ItemRun {
    let failure = call.result.as_ref().err();
    ItemRun {
        item,
        ok: failure.is_none(),
        error: failure.map(|f| f.to_string()),
        kind: failure.map(|f| f.kind().to_owned()),
        retryable: failure.map(|f| f.is_retryable()),
        outputs,
        logs: call.logs.iter().map(|l| l.to_string()).collect(),
        elapsed_ms: call.elapsed.as_secs_f64() * 1e3,
    }
}

/// A replay's side of an attempt: inputs from the job's input location (or
/// what a held node kept), every call remembered for the report.
struct Replayed<'a> {
    kept: Option<&'a Path>,
    input: &'a Store,
    /// A reduce partition's one input.
    given: Option<Arc<dyn InputSource>>,
    manifest: &'a Manifest,
    /// Each call: the item's key, or `start`/`finish`.
    calls: Vec<(String, Call)>,
}

impl Replayed<'_> {
    /// The report line of the failure the attempt ended with at `what` (an
    /// item's key, or `start`/`finish`): its failed call when it had one (an
    /// item's own `finish` with item isolation), else the input that could
    /// not be read.
    fn failure_of(&self, what: &str, failed: &attempt::Failed) -> ItemRun {
        match self.calls.iter().rev().find(|(_, c)| c.result.is_err()) {
            Some((_, call)) => item_run(what.to_owned(), call, Vec::new()),
            None => ItemRun {
                item: what.to_owned(),
                ok: false,
                error: Some(failed.error.clone()),
                kind: Some("input".into()),
                retryable: Some(failed.retryable),
                outputs: Vec::new(),
                logs: Vec::new(),
                elapsed_ms: 0.0,
            },
        }
    }
}

impl attempt::Driver for Replayed<'_> {
    type Stop = std::convert::Infallible;

    fn before(&mut self, _index: usize) -> Option<Self::Stop> {
        None
    }

    fn input(&mut self, _index: usize, item: &Item) -> std::io::Result<Arc<dyn InputSource>> {
        if let Some(given) = self.given.take() {
            return Ok(given);
        }
        match self.kept {
            // What the held node kept: the bytes it had.
            Some(dir) => Ok(Arc::new(FileInput::open(&dir.join(file_name(&item.key())), item.object.clone())?)),
            None => self
                .input
                .input(&item.object, &item.object, Some((item.start, item.len)))
                .map_err(|e| std::io::Error::new(e.kind(), format!("reading it from {}: {e}", self.manifest.input))),
        }
    }

    fn called(&mut self, stage: Stage<'_>, call: &Call) {
        let what = match stage {
            Stage::Start => "start".to_owned(),
            Stage::Item(key) => key.to_owned(),
            Stage::Finish => "finish".to_owned(),
        };
        self.calls.push((what, call.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_never_lands_outside_the_replays_directory() {
        let out = Path::new("/tmp/replayed");
        assert_eq!(inside(out, "a/b.txt", "counts.tsv").unwrap(), out.join("a%2Fb.txt/counts.tsv"));
        // A key is one name under `out`, whatever it holds.
        for (key, at) in [("../x", "%2E.%2Fx"), ("/etc", "%2Fetc"), ("A.txt", "%41.txt")] {
            assert_eq!(inside(out, key, "o").unwrap(), out.join(at).join("o"), "{key}");
        }
        let e = inside(out, "a", "../../o").unwrap_err().to_string();
        assert!(e.contains("outside /tmp/replayed"), "{e}");
    }

    #[test]
    fn errors_name_what_is_missing() {
        let e = ReplayError::NoShard { job: "j".into(), shards: 6, shard: 99 };
        assert_eq!(e.to_string(), "job j has 6 shards (0 to 5); there is no shard 99");
        let e = ReplayError::NoItem { shard: 2, item: "x".into(), items: vec!["a".into(), "b".into()] };
        assert_eq!(e.to_string(), "shard 2 has no item \"x\"; its items: a, b");
        let e = ReplayError::NotKept { node: "worker-1".into(), shard: 3, root: "/k".into(), kept: vec![] };
        assert!(e.to_string().starts_with("node worker-1 kept no inputs of shard 3 in /k"), "{e}");
    }
}
