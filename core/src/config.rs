//! The job file (`job.toml`): read raw, leave validated.
//!
//! [`JobSpec::load`] parses the file into serde structs that refuse unknown
//! keys, applies environment overrides, and validates into a [`JobSpec`] that
//! the rest of mayfly uses. Every error names the file, the key, the line and
//! what was expected.
//!
//! Environment overrides (for what operators change without editing the file):
//! `MAYFLY_JOB_ID`, `MAYFLY_INPUT`, `MAYFLY_OUTPUT`, `MAYFLY_STATE`,
//! `MAYFLY_WORKERS`, `MAYFLY_DEADLINE`, `MAYFLY_MAX_ATTEMPTS`.
//!
//! In `mayfly-core`'s flow (`core/tests/flow.rs` checks it) it must not import `job` or
//! anything above; like its crate, it must not import `mayfly-ops` or the binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::host::Limits;
use mayfly_data::store::Location;
use mayfly_model::units::{ByteSize, HumanDuration};

/// A job file error: where, which key, what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    /// The job file.
    pub file: PathBuf,
    /// The line of the offending key, when known.
    pub line: Option<usize>,
    /// What is wrong, naming the key.
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    job: RawJobSection,
    task: RawTask,
    reduce: Option<RawTask>,
    input: RawInput,
    output: RawLocation,
    state: Option<RawLocation>,
    provider: Option<BTreeMap<String, Spanned<toml::Value>>>,
    #[serde(default)]
    cluster: RawCluster,
    #[serde(default)]
    sharding: RawSharding,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    credentials: RawCredentials,
    #[serde(default)]
    preflight: RawPreflight,
    /// USD per node-hour by node type, over the shipped table (`mayfly plan`).
    #[serde(default)]
    prices: BTreeMap<String, Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJobSection {
    name: Spanned<String>,
    id: Option<Spanned<String>>,
    max_cost: Option<Spanned<f64>>,
    log_format: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    path: Spanned<String>,
    #[serde(default)]
    params: toml::Table,
    isolation: Option<Spanned<String>>,
    // [reduce] only:
    partitions: Option<Spanned<toml::Value>>,
    merge: Option<Spanned<String>>,
    order: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    url: Spanned<String>,
    glob: Option<Spanned<String>>,
    read_ahead: Option<Spanned<i64>>,
    read_ahead_memory: Option<ByteSize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocation {
    url: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    workers: Option<Spanned<i64>>,
    deadline: Option<HumanDuration>,
    idle_timeout: Option<HumanDuration>,
    master_lost_timeout: Option<HumanDuration>,
    lease_time: Option<HumanDuration>,
    max_replacements: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSharding {
    target_shard_bytes: Option<ByteSize>,
    shards_per_worker: Option<Spanned<i64>>,
    split_text: Option<bool>,
    min_shard_bytes: Option<ByteSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    attempt_time: Option<HumanDuration>,
    memory: Option<ByteSize>,
    output: Option<ByteSize>,
    log: Option<ByteSize>,
    max_attempts: Option<Spanned<i64>>,
    max_failed_items: Option<Spanned<toml::Value>>,
    max_storage_refusals: Option<Spanned<i64>>,
    storage_outage: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreflight {
    enabled: Option<bool>,
    timeout: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    refresh_margin: Option<HumanDuration>,
}

/// How many items a job may quarantine (give up on, committing the rest of
/// their shards): past it an item's failure is its shard's again, as without
/// quarantine (`[limits] max_failed_items`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FailedItems {
    /// At most this many.
    Count(u64),
    /// At most this share of the job's items, rounded down (`"1%"`).
    Percent(f64),
}

impl FailedItems {
    /// The bound for a job of `items` items.
    pub fn bound(self, items: u64) -> u64 {
        match self {
            FailedItems::Count(n) => n,
            FailedItems::Percent(p) => (items as f64 * p / 100.0).floor() as u64,
        }
    }
}

impl Default for FailedItems {
    fn default() -> Self {
        FailedItems::Percent(1.0)
    }
}

impl std::fmt::Display for FailedItems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailedItems::Count(n) => write!(f, "{n}"),
            FailedItems::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// How much of a task instance items share (`[task] isolation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// One instance per shard attempt: items stream through it and may share
    /// its state (the default; microseconds per item).
    #[default]
    Shard,
    /// A fresh instance per item: nothing an item does is seen by the next
    /// (a new instance per item costs far more; for tasks that need it).
    Item,
}

/// How many partitions the reduce stage has (`[reduce] partitions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitions {
    /// Chosen at bootstrap from the preflight: more than 1 only when the map
    /// task writes partitioned outputs, the job says how the parts become one
    /// (`order` or `merge`), and the map output is estimated large enough
    /// (see `bootstrap`).
    Auto,
    /// As many as the job says.
    Count(u32),
}

/// What becomes of the reduce partitions' outputs (`[reduce] merge`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Merge {
    /// Each output stays as its partitions' parts, `reduce/part-<p>/<name>`.
    #[default]
    Parts,
    /// The parts concatenated, in partition order, into `reduce/<name>`.
    Concat,
    /// The parts, each sorted by `order`, merged into `reduce/<name>`: the
    /// bytes one reducer sorting by `order` would have written.
    Sorted {
        /// The lines' order.
        order: crate::merge::Order,
    },
}

/// The reduce stage's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReduceStage {
    /// Its partitions.
    pub partitions: Partitions,
    /// What becomes of their outputs.
    pub merge: Merge,
    /// Whether the job said how the parts become one (`order` or `merge`).
    pub merge_declared: bool,
}

impl Default for ReduceStage {
    fn default() -> Self {
        ReduceStage { partitions: Partitions::Auto, merge: Merge::Parts, merge_declared: false }
    }
}

/// The trial run of a job's tasks on a sample of its inputs before anything
/// is launched (`[preflight]`; see [`crate::preflight`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreflightSpec {
    /// Whether it runs (`enabled`, default true; `mayfly run --no-preflight`).
    pub enabled: bool,
    /// At most this long on the sample (`timeout`, default 30 s), and never
    /// more than a quarter of what is left of the bootstrap's budget.
    pub timeout: Duration,
}

impl Default for PreflightSpec {
    fn default() -> Self {
        PreflightSpec { enabled: true, timeout: Duration::from_secs(30) }
    }
}

/// A task and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    /// A component (`.wasm`) or a task crate directory, resolved against the job file.
    pub path: PathBuf,
    /// Parameters, a JSON object.
    pub params: serde_json::Value,
}

/// The validated job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// The job file.
    pub file: PathBuf,
    /// Job name (`[job] name`).
    pub name: String,
    /// Job id, if given (`[job] id`); otherwise bootstrap makes one.
    pub id: Option<String>,
    /// The most the job may cost, in USD (the price tables' currency): a job
    /// whose nodes, all billed to the deadline, could cost more is refused
    /// before anything is launched (`[job] max_cost`).
    pub max_cost: Option<f64>,
    /// How its nodes write their lines (`[job] log_format`, `text` or
    /// `json`); unset, `MAYFLY_LOG_FORMAT` on the nodes decides, else text.
    pub log_format: Option<mayfly_data::nodelog::Format>,
    /// The map task.
    pub task: TaskSpec,
    /// The optional reduce task.
    pub reduce: Option<TaskSpec>,
    /// Its stage's partitions and merge (`[reduce] partitions`, `merge`, `order`).
    pub reduce_stage: ReduceStage,
    /// The input location (a path, or a URL such as `s3://bucket/prefix`).
    pub input: Location,
    /// Only objects whose name matches this glob (`*`, `?`, `**`).
    pub glob: Option<String>,
    /// Fetches a worker keeps in flight ahead of the task (`[input]
    /// read_ahead`; default: by the kind of store, see [`mayfly_data::readahead`]).
    pub read_ahead: Option<u32>,
    /// Bytes a worker holds read ahead (`[input] read_ahead_memory`).
    pub read_ahead_memory: Option<u64>,
    /// Where outputs go.
    pub output: Location,
    /// Where the job's state (manifest, journal, logs) goes; the job's own
    /// directory is `<state>/<job id>`.
    pub state: Location,
    /// The provider (`[provider]`: `name`, default `local`; `path`; `timeout`;
    /// the provider's own keys).
    pub provider: mayfly_data::provider::Selection,
    /// The line of each `[provider]` key, to point at in a provider's errors.
    pub provider_lines: BTreeMap<String, usize>,
    /// Worker count.
    pub workers: u32,
    /// Workers the master may launch in place of lost ones over the job's
    /// life (`[cluster] max_replacements`, default: `workers`).
    pub max_replacements: u32,
    /// From bootstrap to the job's absolute deadline.
    pub deadline: Duration,
    /// A worker with no work to lease for this long ends.
    pub idle_timeout: Duration,
    /// A worker that cannot reach the master for this long ends.
    pub master_lost_timeout: Duration,
    /// How long a lease lasts between heartbeats.
    pub lease_time: Duration,
    /// Target bytes per shard, if given.
    pub target_shard_bytes: Option<u64>,
    /// Shards per worker when the target is derived.
    pub shards_per_worker: u32,
    /// Split large text objects into newline-aligned ranges.
    pub split_text: bool,
    /// The floor of a derived shard size (see [`mayfly_model::plan::PlanOptions`]).
    pub min_shard_bytes: u64,
    /// Per-attempt limits.
    pub limits: Limits,
    /// Attempts per shard before it is marked failed.
    pub max_attempts: u32,
    /// Items that may be quarantined before the job stops.
    pub max_failed_items: FailedItems,
    /// Commits of one shard the job's storage may refuse in a row before the
    /// shard fails with the storage's error.
    pub max_storage_refusals: u32,
    /// How long the job may go without a commit while its storage refuses
    /// them before it ends (reason `storage`).
    pub storage_outage: Duration,
    /// One instance per shard attempt, or per item.
    pub isolation: Isolation,
    /// Refresh credentials when less than this is left (or 20 % of the lifetime).
    pub credential_refresh_margin: Duration,
    /// `[prices]`: USD per node-hour by node type, over `cost`'s shipped table.
    pub prices: BTreeMap<String, f64>,
    /// `[preflight]`: the tasks' trial run before launch.
    pub preflight: PreflightSpec,
}

/// The dotted key (`cluster.workers`) set on `line` (1-based) of `source`,
/// if that line is a `key = value` line.
fn key_at(source: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    for (i, text) in source.lines().enumerate() {
        // Without a trailing comment (`[limits]  # per attempt`).
        let text = text.split(" #").next().unwrap_or(text).trim();
        if let Some(name) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            table = name.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
        }
        if i + 1 == line {
            let (key, _) = text.split_once('=')?;
            let key = key.trim().trim_matches('"');
            if key.is_empty() || key.starts_with('#') {
                return None;
            }
            return Some(if table.is_empty() { key.to_owned() } else { format!("{table}.{key}") });
        }
    }
    None
}

fn line_of(source: &str, span: std::ops::Range<usize>) -> usize {
    source[..span.start.min(source.len())].matches('\n').count() + 1
}

impl JobSpec {
    /// The partitions a preflight tells the map task: the job's, or for
    /// `"auto"` the most it may get (a task that partitions then shows it).
    pub fn preflight_partitions(&self) -> u32 {
        match (&self.reduce, self.reduce_stage.partitions) {
            (None, _) => 1,
            (Some(_), Partitions::Count(n)) => n,
            (Some(_), Partitions::Auto) => self.workers.max(2),
        }
    }

    /// Makes the provider the job selects; its errors point at the
    /// `[provider]` key they name.
    pub fn provider_handle(&self) -> Result<mayfly_data::provider::ProviderHandle, ConfigError> {
        mayfly_data::provider::ProviderHandle::select(&self.provider).map_err(|e| {
            let message = e.to_string();
            let line = self
                .provider_lines
                .iter()
                .find(|(key, _)| message.contains(&format!("`provider.{key}`")))
                .map(|(_, line)| *line);
            ConfigError { file: self.file.clone(), line, message }
        })
    }

    /// Reads and validates the job file at `path`, with environment overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            message: format!("cannot read the job file: {e}"),
        })?;
        Self::parse(path, &source, &|k| std::env::var(k).ok())
    }

    /// Parses `source` as the job file `path`, reading overrides through `env`.
    pub fn parse(path: &Path, source: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let file = path.to_owned();
        let raw: RawJob = toml::from_str(source).map_err(|e| {
            let line = e.span().map(|s| line_of(source, s));
            let message = e.message().trim_end();
            // A value of the wrong type: name its key, as the other errors do.
            let names_a_field = message.starts_with("unknown field") || message.starts_with("missing field");
            let message = match line.and_then(|l| key_at(source, l)) {
                Some(key) if !names_a_field && !message.contains(&format!("`{key}`")) => format!("`{key}`: {message}"),
                _ => message.to_owned(),
            };
            ConfigError { file: file.clone(), line, message }
        })?;
        let err = |span: Option<std::ops::Range<usize>>, message: String| ConfigError {
            file: file.clone(),
            line: span.map(|s| line_of(source, s)),
            message,
        };
        let env_err = |var: &str, message: String| ConfigError {
            file: file.clone(),
            line: None,
            message: format!("environment variable {var}: {message}"),
        };
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));

        let name = raw.job.name.get_ref().clone();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(err(
                Some(raw.job.name.span()),
                format!("`job.name` {name:?}: expected letters, digits, `-` or `_` (it names files and processes)"),
            ));
        }
        let id = match env("MAYFLY_JOB_ID") {
            Some(id) => Some(id),
            None => raw.job.id.as_ref().map(|s| s.get_ref().clone()),
        };
        if let Some(id) = &id
            && (id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(err(
                raw.job.id.as_ref().map(|s| s.span()),
                format!("`job.id` {id:?}: expected letters, digits, `-` or `_`"),
            ));
        }

        let task = task_spec(&raw.task, "task", base, &err)?;
        let reduce = raw.reduce.as_ref().map(|r| task_spec(r, "reduce", base, &err)).transpose()?;

        let location = |key: &str, value: &Spanned<String>, over: Option<String>| -> Result<Location, ConfigError> {
            let (text, span) = match over {
                Some(v) => (v, None),
                None => (value.get_ref().clone(), Some(value.span())),
            };
            Location::parse(&text, base).map_err(|m| err(span, format!("`{key}` {text:?}: {m}")))
        };
        let input = location("input.url", &raw.input.url, env("MAYFLY_INPUT"))?;
        let output = location("output.url", &raw.output.url, env("MAYFLY_OUTPUT"))?;
        let state = match (&raw.state, env("MAYFLY_STATE")) {
            (_, Some(over)) => Location::parse(&over, base).map_err(|m| env_err("MAYFLY_STATE", m.to_string()))?,
            (Some(s), None) => location("state.url", &s.url, None)?,
            (None, None) => Location::path(&base.join(".mayfly").join("jobs")),
        };
        // A job must never read what a job writes: an output or a state inside
        // the input (the next run would list them as inputs), or an input
        // inside an output.
        let state_key = match (&raw.state, env("MAYFLY_STATE")) {
            (_, Some(_)) => "state.url (MAYFLY_STATE)",
            (Some(_), None) => "state.url",
            (None, None) => "state.url (by default .mayfly/jobs beside the job file)",
        };
        let state_span = raw.state.as_ref().map(|s| s.url.span());
        let input_span = Some(raw.input.url.span());
        let output_span = Some(raw.output.url.span());
        let overlaps = [
            (&output, "output.url", output_span.clone(), &input, "input.url", "the outputs would be listed as inputs"),
            (&state, state_key, state_span, &input, "input.url", "the job's state would be listed as inputs"),
            (&input, "input.url", input_span, &output, "output.url", "the job would write among its own inputs"),
        ];
        for (inner, inner_key, span, outer, outer_key, why) in overlaps {
            if inner.within(outer) {
                return Err(err(
                    span,
                    format!(
                        "`{inner_key}` {inner} lies inside `{outer_key}` {outer}: {why}; choose locations that do not overlap"
                    ),
                ));
            }
        }
        let glob = raw.input.glob.as_ref().map(|g| g.get_ref().clone());
        if let Some(g) = &raw.input.glob {
            glob_regex(g.get_ref()).map_err(|e| err(Some(g.span()), format!("`input.glob`: {e}")))?;
        }

        let mut provider = mayfly_data::provider::Selection { name: None, ..Default::default() };
        let mut provider_lines = BTreeMap::new();
        for (key, value) in raw.provider.unwrap_or_default() {
            let span = value.span();
            provider_lines.insert(key.clone(), line_of(source, span.clone()));
            let text = |what: &str| match value.get_ref() {
                toml::Value::String(s) if !s.is_empty() => Ok(s.clone()),
                _ => Err(err(Some(span.clone()), format!("`provider.{key}`: expected {what}"))),
            };
            match key.as_str() {
                "name" => provider.name = Some(text("a string such as \"local\"")?),
                "path" => {
                    let path = base.join(text("the path of a plugin library")?);
                    provider.path = Some(std::path::absolute(&path).unwrap_or(path));
                }
                "timeout" => {
                    let t = text("a duration such as \"2m\"")?;
                    let d = t
                        .parse::<HumanDuration>()
                        .map_err(|e| err(Some(span.clone()), format!("`provider.timeout`: {e}")))?;
                    provider.timeout_ms = Some(u64::try_from(d.0.as_millis()).unwrap_or(u64::MAX).max(1));
                }
                _ => {
                    let json = serde_json::to_value(value.get_ref()).map_err(|e| {
                        err(Some(span.clone()), format!("`provider.{key}`: cannot be turned into JSON: {e}"))
                    })?;
                    provider.settings.insert(key, json);
                }
            }
        }
        if provider.name.is_none() && provider.path.is_none() {
            provider.name = Some(mayfly_data::provider::BUILT_IN.into());
        }

        let positive = |key: &str, v: &Option<Spanned<i64>>, over: Option<(&str, Option<String>)>, default: u32| {
            if let Some((var, Some(text))) = over {
                return text
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| env_err(var, format!("{text:?}: expected a whole number of at least 1")));
            }
            match v {
                None => Ok(default),
                Some(s) => u32::try_from(*s.get_ref()).ok().filter(|n| *n > 0).ok_or_else(|| {
                    err(Some(s.span()), format!("`{key}` = {}: expected a whole number of at least 1", s.get_ref()))
                }),
            }
        };
        let workers =
            positive("cluster.workers", &raw.cluster.workers, Some(("MAYFLY_WORKERS", env("MAYFLY_WORKERS"))), 2)?;
        let shards_per_worker = positive("sharding.shards_per_worker", &raw.sharding.shards_per_worker, None, 4)?;
        let max_attempts = positive(
            "limits.max_attempts",
            &raw.limits.max_attempts,
            Some(("MAYFLY_MAX_ATTEMPTS", env("MAYFLY_MAX_ATTEMPTS"))),
            3,
        )?;
        let max_storage_refusals = positive("limits.max_storage_refusals", &raw.limits.max_storage_refusals, None, 20)?;
        let storage_outage = raw.limits.storage_outage.map_or(Duration::from_secs(600), |d| d.0);
        if storage_outage.is_zero() {
            return Err(err(None, "`limits.storage_outage`: expected a duration greater than zero".into()));
        }
        let deadline = match env("MAYFLY_DEADLINE") {
            Some(text) => text.parse::<HumanDuration>().map_err(|e| env_err("MAYFLY_DEADLINE", e.to_string()))?.0,
            None => raw.cluster.deadline.map_or(Duration::from_secs(3600), |d| d.0),
        };
        if deadline.is_zero() {
            return Err(err(None, "`cluster.deadline`: expected a duration greater than zero".into()));
        }
        let max_failed_items = match &raw.limits.max_failed_items {
            None => FailedItems::default(),
            Some(v) => {
                let bad = || {
                    err(
                        Some(v.span()),
                        format!(
                            "`limits.max_failed_items` = {}: expected a whole number of items (0 or more) \
                             or a share of the job's items such as \"1%\"",
                            v.get_ref()
                        ),
                    )
                };
                match v.get_ref() {
                    toml::Value::Integer(n) => FailedItems::Count(u64::try_from(*n).map_err(|_| bad())?),
                    toml::Value::String(text) => {
                        let p = text.trim().strip_suffix('%').and_then(|p| p.trim().parse::<f64>().ok());
                        FailedItems::Percent(p.filter(|p| (0.0..=100.0).contains(p)).ok_or_else(bad)?)
                    }
                    _ => return Err(bad()),
                }
            }
        };
        if let Some(v) = raw.reduce.as_ref().and_then(|r| r.isolation.as_ref()) {
            return Err(err(
                Some(v.span()),
                "`reduce.isolation`: the reduce is one call over every map output; isolation is a [task] key".into(),
            ));
        }
        for (key, value) in [
            ("partitions", raw.task.partitions.as_ref().map(|v| v.span())),
            ("merge", raw.task.merge.as_ref().map(|v| v.span())),
            ("order", raw.task.order.as_ref().map(|v| v.span())),
        ] {
            if let Some(span) = value {
                return Err(err(Some(span), format!("`task.{key}`: a [reduce] key; the map task has no partitions")));
            }
        }
        let reduce_stage = match &raw.reduce {
            None => ReduceStage::default(),
            Some(r) => reduce_stage(r, &err)?,
        };
        let read_ahead = match &raw.input.read_ahead {
            None => None,
            Some(v) => Some(u32::try_from(*v.get_ref()).ok().filter(|n| *n <= 1024).ok_or_else(|| {
                err(
                    Some(v.span()),
                    format!("`input.read_ahead` = {}: expected a whole number from 0 (off) to 1024", v.get_ref()),
                )
            })?),
        };
        let isolation = match &raw.task.isolation {
            None => Isolation::default(),
            Some(v) => match v.get_ref().as_str() {
                "shard" => Isolation::Shard,
                "item" => Isolation::Item,
                other => {
                    return Err(err(
                        Some(v.span()),
                        format!("`task.isolation` = {other:?}: expected \"shard\" (the default) or \"item\""),
                    ));
                }
            },
        };
        let defaults = Limits::default();
        let limits = Limits {
            attempt_time: raw.limits.attempt_time.unwrap_or(defaults.attempt_time),
            memory: raw.limits.memory.unwrap_or(defaults.memory),
            output: raw.limits.output.unwrap_or(defaults.output),
            log: raw.limits.log.unwrap_or(defaults.log),
        };
        let preflight = PreflightSpec {
            enabled: raw.preflight.enabled.unwrap_or(true),
            timeout: raw.preflight.timeout.map_or(PreflightSpec::default().timeout, |d| d.0),
        };
        if preflight.enabled && preflight.timeout.is_zero() {
            return Err(err(
                None,
                "`preflight.timeout`: expected a duration greater than zero (`enabled = false` turns the preflight off)"
                    .into(),
            ));
        }
        let max_replacements = match &raw.cluster.max_replacements {
            None => workers,
            Some(v) => u32::try_from(*v.get_ref()).map_err(|_| {
                err(
                    Some(v.span()),
                    format!(
                        "`cluster.max_replacements` = {}: expected a whole number of workers, 0 or more",
                        v.get_ref()
                    ),
                )
            })?,
        };
        let max_cost = match &raw.job.max_cost {
            None => None,
            Some(v) if v.get_ref().is_finite() && *v.get_ref() >= 0.0 => Some(*v.get_ref()),
            Some(v) => {
                return Err(err(
                    Some(v.span()),
                    format!("`job.max_cost` = {}: expected USD, a number of at least 0", v.get_ref()),
                ));
            }
        };
        let log_format = match &raw.job.log_format {
            None => None,
            Some(v) => Some(v.get_ref().parse().map_err(|e| err(Some(v.span()), format!("`job.log_format`: {e}")))?),
        };
        let mut prices = BTreeMap::new();
        for (node_type, price) in &raw.prices {
            let usd = *price.get_ref();
            if !usd.is_finite() || usd < 0.0 {
                return Err(err(
                    Some(price.span()),
                    format!("`prices.{node_type}` = {usd}: expected USD per node-hour, a number of at least 0"),
                ));
            }
            prices.insert(node_type.clone(), usd);
        }
        Ok(JobSpec {
            max_cost,
            log_format,
            max_replacements,
            prices,
            file,
            name,
            id,
            task,
            reduce,
            reduce_stage,
            input,
            glob,
            output,
            state,
            provider,
            provider_lines,
            workers,
            deadline,
            idle_timeout: raw.cluster.idle_timeout.map_or(Duration::from_secs(60), |d| d.0),
            master_lost_timeout: raw.cluster.master_lost_timeout.map_or(Duration::from_secs(30), |d| d.0),
            lease_time: raw.cluster.lease_time.map_or(Duration::from_secs(30), |d| d.0),
            target_shard_bytes: raw.sharding.target_shard_bytes.map(|b| b.0.max(1)),
            shards_per_worker,
            split_text: raw.sharding.split_text.unwrap_or(true),
            min_shard_bytes: raw.sharding.min_shard_bytes.map_or(mayfly_model::plan::MIN_SHARD_BYTES, |b| b.0),
            limits,
            max_attempts,
            max_failed_items,
            max_storage_refusals,
            storage_outage,
            isolation,
            read_ahead,
            read_ahead_memory: raw.input.read_ahead_memory.map(|b| b.0),
            credential_refresh_margin: raw.credentials.refresh_margin.map_or(Duration::from_secs(300), |d| d.0),
            preflight,
        })
    }
}

fn task_spec(
    raw: &RawTask,
    section: &str,
    base: &Path,
    err: &dyn Fn(Option<std::ops::Range<usize>>, String) -> ConfigError,
) -> Result<TaskSpec, ConfigError> {
    let path = base.join(raw.path.get_ref());
    if !path.exists() {
        return Err(err(
            Some(raw.path.span()),
            format!(
                "`{section}.path` {:?}: no such file or directory (expected a task crate directory or a .wasm component, relative to the job file)",
                raw.path.get_ref()
            ),
        ));
    }
    let params = serde_json::to_value(&raw.params)
        .map_err(|e| err(None, format!("`{section}.params`: cannot be turned into JSON: {e}")))?;
    Ok(TaskSpec { path, params })
}

/// `[reduce] partitions`, `merge` and `order`.
fn reduce_stage(
    raw: &RawTask,
    err: &dyn Fn(Option<std::ops::Range<usize>>, String) -> ConfigError,
) -> Result<ReduceStage, ConfigError> {
    let partitions = match &raw.partitions {
        None => Partitions::Auto,
        Some(v) => {
            let bad = || {
                err(
                    Some(v.span()),
                    format!(
                        "`reduce.partitions` = {}: expected \"auto\" or a whole number from 1 to 4096",
                        v.get_ref()
                    ),
                )
            };
            match v.get_ref() {
                toml::Value::String(s) if s == "auto" => Partitions::Auto,
                toml::Value::Integer(n) => {
                    Partitions::Count(u32::try_from(*n).ok().filter(|n| (1..=4096).contains(n)).ok_or_else(bad)?)
                }
                _ => return Err(bad()),
            }
        }
    };
    let order = match &raw.order {
        None => None,
        Some(o) => Some(
            crate::merge::Order::parse(o.get_ref()).map_err(|m| err(Some(o.span()), format!("`reduce.order`: {m}")))?,
        ),
    };
    let merge = match (raw.merge.as_ref(), order) {
        (None, None) => Merge::Parts,
        (None, Some(order)) => Merge::Sorted { order },
        (Some(m), order) => match (m.get_ref().as_str(), order) {
            ("sorted", Some(order)) => Merge::Sorted { order },
            ("sorted", None) => {
                return Err(err(
                    Some(m.span()),
                    "`reduce.merge` = \"sorted\" needs `reduce.order` (e.g. order = \"2nr,1\": field 2 \
                     numeric descending, then field 1)"
                        .into(),
                ));
            }
            ("concat" | "parts", Some(_)) => {
                return Err(err(
                    Some(m.span()),
                    format!(
                        "`reduce.merge` = {:?} with `reduce.order`: an order is for merge = \"sorted\"",
                        m.get_ref()
                    ),
                ));
            }
            ("concat", None) => Merge::Concat,
            ("parts", None) => Merge::Parts,
            (other, _) => {
                return Err(err(
                    Some(m.span()),
                    format!("`reduce.merge` = {other:?}: expected \"sorted\", \"concat\" or \"parts\""),
                ));
            }
        },
    };
    Ok(ReduceStage { partitions, merge, merge_declared: raw.merge.is_some() || raw.order.is_some() })
}

/// A `file://` URL or a path, as a local path resolved against `base`.
/// Compiles a glob (`*` within a part, `?` one character, `**` any parts) into a regex.
/// A glob that makes no pattern.
#[derive(Debug, thiserror::Error)]
#[error("invalid glob {glob:?}: {source}")]
pub struct GlobError {
    /// The glob.
    pub glob: String,
    /// What the pattern made of it refused.
    pub source: regex::Error,
}

/// The pattern `glob` (`*`, `**/`, `?`) matches with.
pub fn glob_regex(glob: &str) -> Result<regex::Regex, GlobError> {
    let mut re = String::from("^");
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                if chars.peek() == Some(&'/') {
                    chars.next();
                    re.push_str("(?:.*/)?");
                } else {
                    re.push_str(".*");
                }
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    regex::Regex::new(&re).map_err(|source| GlobError { glob: glob.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[job]
name = "demo"

[task]
path = "."
params = { mode = "map", n = 3 }

[input]
url = "data"
glob = "**/*.txt"

[output]
url = "out"

[cluster]
workers = 4
deadline = "30m"

[limits]
memory = "256MiB"
"#;

    fn parse(src: &str) -> Result<JobSpec, ConfigError> {
        JobSpec::parse(Path::new("job.toml"), src, &|_| None)
    }

    fn fails(src: &str) -> String {
        parse(src).unwrap_err().to_string()
    }

    #[test]
    fn a_good_file_with_defaults() {
        // `path = "."` must exist relative to the job file's directory.
        let spec = JobSpec::parse(Path::new("job.toml"), GOOD, &|_| None).unwrap();
        assert_eq!(spec.name, "demo");
        assert_eq!(spec.workers, 4);
        assert_eq!(spec.deadline, Duration::from_secs(1800));
        assert_eq!(spec.limits.memory, ByteSize(256 << 20));
        assert_eq!(spec.limits.attempt_time, Limits::default().attempt_time);
        assert_eq!(spec.task.params, serde_json::json!({"mode": "map", "n": 3}));
        assert_eq!(spec.input.as_path(), Some(Path::new("./data")));
        assert_eq!(spec.state.as_path(), Some(Path::new("./.mayfly/jobs")));
        assert_eq!(spec.provider.name.as_deref(), Some("local"));
        assert_eq!((spec.shards_per_worker, spec.split_text, spec.max_attempts), (4, true, 3));
    }

    #[test]
    fn storage_failures_are_bounded_by_default_and_by_the_job() {
        let spec = parse(GOOD).unwrap();
        assert_eq!((spec.max_storage_refusals, spec.storage_outage), (20, Duration::from_secs(600)));
        let spec =
            parse(&GOOD.replace("[limits]", "[limits]\nmax_storage_refusals = 3\nstorage_outage = \"2m\"")).unwrap();
        assert_eq!((spec.max_storage_refusals, spec.storage_outage), (3, Duration::from_secs(120)));
        let msg = fails(&GOOD.replace("[limits]", "[limits]\nmax_storage_refusals = 0"));
        assert!(msg.contains("`limits.max_storage_refusals` = 0: expected a whole number of at least 1"), "{msg}");
        let msg = fails(&GOOD.replace("[limits]", "[limits]\nstorage_outage = \"0s\""));
        assert!(msg.contains("`limits.storage_outage`: expected a duration greater than zero"), "{msg}");
    }

    #[test]
    fn lost_workers_are_replaced_up_to_the_worker_count_by_default() {
        let spec = parse(GOOD).unwrap();
        assert_eq!(spec.max_replacements, spec.workers);
        let spec = parse(&GOOD.replace("[cluster]\n", "[cluster]\nmax_replacements = 0\n")).unwrap();
        assert_eq!(spec.max_replacements, 0);
        let msg = fails(&GOOD.replace("[cluster]\n", "[cluster]\nmax_replacements = -2\n"));
        assert!(
            msg.contains("`cluster.max_replacements` = -2: expected a whole number of workers, 0 or more"),
            "{msg}"
        );
    }

    #[test]
    fn a_spending_ceiling_is_a_number_of_usd() {
        let format = |v: &str| GOOD.replacen("[job]\n", &format!("[job]\nlog_format = {v}\n"), 1);
        assert_eq!(parse(GOOD).unwrap().log_format, None);
        assert_eq!(parse(&format("\"json\"")).unwrap().log_format, Some(mayfly_data::nodelog::Format::Json));
        let e = parse(&format("\"yaml\"")).unwrap_err().to_string();
        assert!(e.contains("`job.log_format`") && e.contains("use text or json"), "{e}");
        assert_eq!(parse(GOOD).unwrap().max_cost, None);
        let with = |v: &str| GOOD.replacen("[job]\n", &format!("[job]\nmax_cost = {v}\n"), 1);
        assert_eq!(parse(&with("12.5")).unwrap().max_cost, Some(12.5));
        assert_eq!(parse(&with("3")).unwrap().max_cost, Some(3.0));
        let msg = fails(&with("-1"));
        assert!(msg.contains("`job.max_cost` = -1: expected USD, a number of at least 0"), "{msg}");
        assert!(fails(&with("\"lots\"")).contains("max_cost"));
    }

    #[test]
    fn the_preflight_runs_by_default_and_the_job_bounds_or_turns_it_off() {
        assert_eq!(parse(GOOD).unwrap().preflight, PreflightSpec { enabled: true, timeout: Duration::from_secs(30) });
        let spec = parse(&format!("{GOOD}\n[preflight]\ntimeout = \"5s\"\n")).unwrap();
        assert_eq!(spec.preflight, PreflightSpec { enabled: true, timeout: Duration::from_secs(5) });
        let spec = parse(&format!("{GOOD}\n[preflight]\nenabled = false\n")).unwrap();
        assert!(!spec.preflight.enabled);
        let msg = fails(&format!("{GOOD}\n[preflight]\ntimeout = \"0s\"\n"));
        assert!(msg.contains("`preflight.timeout`: expected a duration greater than zero"), "{msg}");
        let msg = fails(&format!("{GOOD}\n[preflight]\nsample = 3\n"));
        assert!(msg.contains("sample"), "{msg}");
    }

    #[test]
    fn locations_that_overlap_are_refused_naming_both_keys() {
        let msg = fails(&GOOD.replace("url = \"out\"", "url = \"data/out\""));
        assert!(msg.contains(":14: `output.url` ./data/out lies inside `input.url` ./data"), "{msg}");
        let msg = fails(&GOOD.replace("url = \"out\"", "url = \"data\""));
        assert!(msg.contains("`output.url` ./data lies inside `input.url` ./data"), "{msg}");
        // The default state (.mayfly/jobs beside the job file) inside the input.
        let msg =
            fails(&GOOD.replace("url = \"data\"", "url = \".\"").replace("url = \"out\"", "url = \"../elsewhere\""));
        assert!(
            msg.contains(
                "`state.url (by default .mayfly/jobs beside the job file)` ./.mayfly/jobs lies inside `input.url` ."
            ),
            "{msg}"
        );
        let msg = fails(&GOOD.replace("url = \"data\"", "url = \"out/in\""));
        assert!(msg.contains(":10: `input.url` ./out/in lies inside `output.url` ./out"), "{msg}");
        // Side by side, and a name that only starts alike, are fine.
        assert!(parse(&GOOD.replace("url = \"out\"", "url = \"data2\"")).is_ok());
    }

    #[test]
    fn unknown_keys_name_the_key_file_and_line() {
        let src = GOOD.replace("workers = 4", "wokers = 4");
        let msg = JobSpec::parse(Path::new("job.toml"), &src, &|_| None).unwrap_err().to_string();
        assert!(msg.starts_with("job.toml:17: unknown field `wokers`"), "{msg}");
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        let msg = fails(&GOOD.replace("workers = 4", "workers = 0"));
        assert!(msg.contains(":17: `cluster.workers` = 0: expected a whole number of at least 1"), "{msg}");
        let msg = fails(&GOOD.replace("\"30m\"", "\"30 fortnights\""));
        assert!(msg.contains(":18:") && msg.contains("invalid duration \"30 fortnights\""), "{msg}");
        let msg = fails(&GOOD.replace("\"256MiB\"", "\"lots\""));
        assert!(msg.contains(":21:") && msg.contains("invalid size \"lots\""), "{msg}");
        let msg = fails(&GOOD.replace("name = \"demo\"", "name = \"my job!\""));
        assert!(msg.contains(":3: `job.name` \"my job!\""), "{msg}");
        let msg = fails(&GOOD.replace("path = \".\"", "path = \"nope\""));
        assert!(msg.contains(":6: `task.path` \"nope\": no such file or directory"), "{msg}");
        let msg = fails(&GOOD.replace("url = \"data\"", "url = \"s3://\""));
        assert!(msg.contains("`input.url` \"s3://\": `s3://`: expected s3://<bucket"), "{msg}");
        let msg = fails(&GOOD.replace("[output]\nurl = \"out\"\n", ""));
        assert!(msg.contains("missing field `output`"), "{msg}");
        let msg = fails(&GOOD.replace("workers = 4", "workers = \"many\""));
        assert!(msg.contains(":17: `cluster.workers`: invalid type: string \"many\""), "{msg}");
        let msg = fails(&GOOD.replace("workers = 4", "workers = true").replace("[cluster]", "[cluster]  # the nodes"));
        assert!(msg.contains(":17: `cluster.workers`: invalid type: boolean `true`"), "{msg}");
        let msg = fails("this is not toml");
        assert!(msg.starts_with("job.toml:1:"), "{msg}");
    }

    #[test]
    fn environment_overrides_win_and_are_validated() {
        let env = |k: &str| match k {
            "MAYFLY_WORKERS" => Some("7".to_owned()),
            "MAYFLY_OUTPUT" => Some("file:///tmp/elsewhere".to_owned()),
            "MAYFLY_DEADLINE" => Some("2h".to_owned()),
            _ => None,
        };
        let spec = JobSpec::parse(Path::new("job.toml"), GOOD, &env).unwrap();
        assert_eq!(spec.workers, 7);
        assert_eq!(spec.output.as_str(), "file:///tmp/elsewhere");
        assert_eq!(spec.deadline, Duration::from_secs(7200));
        let bad = |k: &str| (k == "MAYFLY_WORKERS").then(|| "many".to_owned());
        let msg = JobSpec::parse(Path::new("job.toml"), GOOD, &bad).unwrap_err().to_string();
        assert!(msg.contains("environment variable MAYFLY_WORKERS: \"many\""), "{msg}");
    }

    #[test]
    fn the_readme_job_file_is_valid() {
        let readme = include_str!("../../README.md");
        let block = readme.split("```toml\n").nth(1).and_then(|b| b.split("```").next()).expect("a toml block");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
        let spec = JobSpec::parse(&root.join("job.toml"), block, &|_| None).unwrap();
        assert_eq!((spec.workers, spec.max_attempts), (2, 3));
        assert!(spec.reduce.is_some());
    }

    #[test]
    fn globs() {
        let g = glob_regex("**/*.txt").unwrap();
        assert!(g.is_match("a.txt") && g.is_match("x/y/a.txt") && !g.is_match("a.txt.gz"));
        let g = glob_regex("logs/day-??.log").unwrap();
        assert!(g.is_match("logs/day-01.log") && !g.is_match("logs/x/day-01.log"));
        assert!(glob_regex("*.csv").unwrap().is_match("a.csv") && !glob_regex("*.csv").unwrap().is_match("d/a.csv"));
    }

    #[test]
    fn shard_keys_isolation_quarantine_bound_and_read_ahead() {
        let spec = parse(GOOD).unwrap();
        assert_eq!(spec.isolation, Isolation::Shard);
        assert_eq!(spec.max_failed_items, FailedItems::Percent(1.0));
        assert_eq!(spec.max_failed_items.bound(2000), 20);
        assert_eq!(spec.max_failed_items.bound(99), 0);
        assert_eq!((spec.read_ahead, spec.read_ahead_memory, spec.min_shard_bytes), (None, None, 1 << 20));

        let with = |task: &str, input: &str, limits: &str| {
            GOOD.replace("params = { mode = \"map\", n = 3 }", &format!("params = {{}}\n{task}"))
                .replace("glob = \"**/*.txt\"", input)
                .replace("memory = \"256MiB\"", limits)
        };
        let spec = parse(&with(
            "isolation = \"item\"",
            "read_ahead = 0\nread_ahead_memory = \"1MiB\"",
            "max_failed_items = 7",
        ))
        .unwrap();
        assert_eq!(spec.isolation, Isolation::Item);
        assert_eq!(spec.max_failed_items, FailedItems::Count(7));
        assert_eq!((spec.read_ahead, spec.read_ahead_memory), (Some(0), Some(1 << 20)));
        assert_eq!(parse(&with("", "", "max_failed_items = \"2.5%\"")).unwrap().max_failed_items.bound(1000), 25);

        let e = fails(&with("isolation = \"none\"", "", ""));
        assert!(e.contains("`task.isolation` = \"none\": expected \"shard\" (the default) or \"item\""), "{e}");
        let e = fails(&with("", "", "max_failed_items = -1"));
        assert!(e.contains("`limits.max_failed_items` = -1: expected a whole number of items"), "{e}");
        let e = fails(&with("", "", "max_failed_items = \"120%\""));
        assert!(e.contains("or a share of the job's items such as \"1%\""), "{e}");
        let e = fails(&with("", "read_ahead = 5000", ""));
        assert!(e.contains("`input.read_ahead` = 5000: expected a whole number from 0 (off) to 1024"), "{e}");
        let e = fails(&format!("{GOOD}\n[reduce]\npath = \".\"\nisolation = \"item\"\n"));
        assert!(e.contains("`reduce.isolation`"), "{e}");
    }

    #[test]
    fn reduce_partitions_merge_and_order() {
        let with = |keys: &str| format!("{GOOD}\n[reduce]\npath = \".\"\n{keys}\n");
        assert_eq!(parse(GOOD).unwrap().reduce_stage, ReduceStage::default());
        let stage = parse(&with("")).unwrap().reduce_stage;
        assert_eq!((stage.partitions, &stage.merge, stage.merge_declared), (Partitions::Auto, &Merge::Parts, false));
        let stage = parse(&with("partitions = 4\norder = \"2nr,1\"")).unwrap().reduce_stage;
        assert_eq!(stage.partitions, Partitions::Count(4));
        assert_eq!(stage.merge, Merge::Sorted { order: crate::merge::Order::parse("2nr,1").unwrap() });
        assert!(stage.merge_declared);
        let stage = parse(&with("partitions = \"auto\"\nmerge = \"concat\"")).unwrap().reduce_stage;
        assert_eq!((stage.partitions, stage.merge), (Partitions::Auto, Merge::Concat));
        for (keys, says) in [
            ("partitions = 0", "`reduce.partitions` = 0: expected \"auto\" or a whole number from 1 to 4096"),
            ("partitions = \"many\"", "`reduce.partitions` = \"many\": expected"),
            ("merge = \"sorted\"", "needs `reduce.order`"),
            ("merge = \"zip\"", "`reduce.merge` = \"zip\": expected \"sorted\", \"concat\" or \"parts\""),
            ("merge = \"concat\"\norder = \"1\"", "an order is for merge = \"sorted\""),
            ("order = \"2x\"", "`reduce.order`:"),
        ] {
            let e = fails(&with(keys));
            assert!(e.contains(says), "{keys}: {e}");
        }
        let e = fails(&GOOD.replace("[task]\n", "[task]\npartitions = 2\n"));
        assert!(e.contains("`task.partitions`: a [reduce] key"), "{e}");
    }
}
