//! Bootstrap: validate (the locations, the job's spending ceiling), list the
//! inputs, plan, try the tasks on a sample of the inputs
//! ([`crate::preflight`]), write the manifest, launch the master and the
//! workers, all inside the provider's time limit. It never waits
//! for the work itself. Each step is checked against the budget (the limit
//! minus a safety margin) before it starts; on any failure after a launch,
//! everything launched is terminated before the error is returned.
//!
//! In `mayfly-core`'s flow (`core/tests/flow.rs` checks it) no module is above it, but it
//! must not import its peer `node`; like its crate, it must not import `mayfly-ops` or
//! the binary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::api::MasterInfo;
use crate::config::{JobSpec, TaskSpec, glob_regex};
use crate::host::{Runtime, RuntimeConfig};
use crate::job::{Layout, Manifest, create_token, keys, launch_request, new_job_id, new_worker_names};
use mayfly_data::provider::{
    BootstrapReply, BootstrapRequest, ErrorKind, Invoked, NodeInfo, ProviderError, ProviderHandle, Role, Selection,
};
use mayfly_data::store::{Location, Store};
use mayfly_model::plan::{Object, Plan, PlanOptions, plan};
use mayfly_model::policy::{Budget, Clock, SystemClock, ms};

/// A preflight given less time than this by the bootstrap's budget is
/// skipped (said in its report), not run to no conclusion.
const PREFLIGHT_LEAST: Duration = Duration::from_secs(1);

/// A task ready to run: its component and sha256 (built and checked by the caller).
#[derive(Debug, Clone)]
pub struct ReadyTask {
    /// The component.
    pub component: PathBuf,
    /// Its sha256.
    pub sha256: String,
}

/// Why bootstrap failed. Nothing it launched is left running.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The time budget ran out before a step.
    #[error("{0}; everything launched was terminated")]
    OverBudget(#[from] mayfly_model::policy::OverBudget),
    /// A step failed.
    #[error("{step}: {message}")]
    Step {
        /// The step.
        step: &'static str,
        /// What went wrong.
        message: String,
    },
}

fn step_err<E: std::fmt::Display>(step: &'static str) -> impl Fn(E) -> BootstrapError {
    move |e| BootstrapError::Step { step, message: e.to_string() }
}

/// Why the inputs could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The job's glob makes no pattern.
    #[error(transparent)]
    Glob(#[from] crate::config::GlobError),
    /// The input directory cannot be looked at.
    #[error("input {}: {source}", dir.display())]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The input path is a file, not a directory.
    #[error("input {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// A file or directory under the input cannot be read (the error names it).
    #[error("cannot read input {0}")]
    Read(#[source] std::io::Error),
    /// An object store refused the listing.
    #[error("cannot list input {location}: {source}")]
    List {
        /// The input location.
        location: String,
        /// The cause.
        source: std::io::Error,
    },
    /// No object under a remote prefix: a typo, or a batch not uploaded yet.
    #[error("input {0}: there is no object under this prefix (is the URL right, and is the data uploaded?)")]
    Empty(String),
    /// An input file cannot be opened.
    #[error("cannot read input {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An input's key mayfly cannot name (it could not be read back, or
    /// would climb out of a directory).
    #[error("input {location}: {source}; rename the object, or leave it out with `[input] glob`")]
    Key {
        /// The input location.
        location: String,
        /// The key and what is wrong with it.
        source: mayfly_model::key::KeyError,
    },
}

/// Why the output location cannot take a job's outputs.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Nothing can be written there.
    #[error("output location {at} is not writable: {source}")]
    NotWritable {
        /// The location.
        at: String,
        /// The cause.
        source: std::io::Error,
    },
    /// It cannot be listed.
    #[error("output location {at}: {source}")]
    Unlistable {
        /// The location.
        at: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Another job's outputs are there.
    #[error("output location {at} already holds a job's outputs ({reserved}); choose another or remove them")]
    Taken {
        /// The location.
        at: String,
        /// What is there.
        reserved: &'static str,
    },
}

/// A location of a scheme the job's provider does not serve.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{key}` {location}: the {provider} provider does not serve {scheme}:// locations (it serves: {serves}; paths and file:// always work)"
)]
pub struct SchemeError {
    /// The job file's key that names it.
    pub key: String,
    /// The location.
    pub location: String,
    /// The provider's name.
    pub provider: String,
    /// The scheme.
    pub scheme: String,
    /// The schemes it serves, listed.
    pub serves: String,
}

/// Why a task is not ready to run.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Its crate did not build.
    #[error("building the {what} task: {source}")]
    Build {
        /// Which task (map, reduce).
        what: String,
        /// The cause.
        source: crate::build::BuildError,
    },
    /// Its component does not load.
    #[error("loading the {what} task: {source}")]
    Load {
        /// Which task (map, reduce).
        what: String,
        /// The cause.
        source: crate::host::LoadError,
    },
    /// The sandbox did not start.
    #[error("starting the sandbox: {0}")]
    Sandbox(#[from] crate::host::StartError),
}

/// Why a job file named by a URL could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JobFileError {
    /// The URL is not a location.
    #[error("`job_url` {0}")]
    Location(#[from] mayfly_data::store::LocationError),
    /// The URL names no file in a bucket.
    #[error("`job_url` {0:?}: expected <scheme>://<bucket>/<key of the job file>")]
    NoKey(String),
    /// The provider does not serve its scheme.
    #[error(transparent)]
    Scheme(#[from] SchemeError),
    /// Its store could not be opened.
    #[error(transparent)]
    Open(#[from] mayfly_data::store::OpenError),
    /// It could not be read.
    #[error("reading the job file {url}: {source}")]
    Read {
        /// The URL.
        url: String,
        /// The cause.
        source: std::io::Error,
    },
    /// There is none.
    #[error("the job file {0} does not exist")]
    Missing(String),
    /// It is not text.
    #[error("the job file {0} is not UTF-8 text")]
    NotText(String),
}

/// Why a serverless entrypoint cannot bootstrap a job with the job's
/// `[provider]` section.
#[derive(Debug, thiserror::Error)]
enum JobProviderError {
    #[error(
        "the job's [provider] is {job:?}, but this entrypoint serves {serving:?}: send the job to a {job} entrypoint, or change its [provider] section"
    )]
    Another { job: String, serving: String },
    #[error("the job's [provider] section: {0}")]
    Select(#[from] mayfly_data::provider::SelectError),
}

/// A bootstrapped job.
#[derive(Debug, Clone)]
pub struct Bootstrapped {
    /// The job id.
    pub job: String,
    /// Its layout.
    pub layout: Layout,
    /// Its manifest.
    pub manifest: Manifest,
    /// The nodes launched.
    pub nodes: Vec<NodeInfo>,
    /// What the preflight saw (`None`: the job turned it off).
    pub preflight: Option<crate::preflight::Report>,
}

/// Lists the input location (recursively, in name order), applying `glob` and
/// leaving out the trees a job reserves ([`crate::job::is_reserved`]: an old
/// job's `_mayfly/` and `_manifest.json` are never inputs).
pub fn list_inputs(input: &Store, glob: Option<&str>) -> Result<Vec<Object>, InputError> {
    let re = glob.map(glob_regex).transpose()?;
    if let Some(dir) = input.local_dir() {
        let meta = std::fs::metadata(dir).map_err(|source| InputError::Directory { dir: dir.to_owned(), source })?;
        if !meta.is_dir() {
            return Err(InputError::NotADirectory(dir.to_owned()));
        }
    }
    let listed = input.list("").map_err(|source| match input.local_dir() {
        // The error names the file.
        Some(_) => InputError::Read(source),
        None => InputError::List { location: input.location().to_string(), source },
    })?;
    // An object store has no directories: no object under the prefix is what a
    // missing input directory is on a disk (a typo, a batch not uploaded yet).
    if listed.is_empty() && input.local_dir().is_none() {
        return Err(InputError::Empty(input.location().to_string()));
    }
    let mut objects = Vec::new();
    for (name, size) in listed {
        if crate::job::is_reserved(&name) || re.as_ref().is_some_and(|r| !r.is_match(&name)) {
            continue;
        }
        mayfly_model::key::check(&name)
            .map_err(|source| InputError::Key { location: input.location().to_string(), source })?;
        if let Some(dir) = input.local_dir() {
            // Open it now: an unreadable input fails the job before anything runs.
            let path = dir.join(&name);
            std::fs::File::open(&path).map_err(|source| InputError::Open { path: path.clone(), source })?;
        }
        objects.push(Object { name, size });
    }
    objects.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(objects)
}

/// Plans `objects` of the input location `input` as `spec` says (reading
/// near cut points to align split ranges on lines).
pub fn plan_objects(spec: &JobSpec, input: &Store, objects: &[Object]) -> std::io::Result<Plan> {
    let opts = PlanOptions {
        workers: spec.workers,
        target_shard_bytes: spec.target_shard_bytes,
        shards_per_worker: spec.shards_per_worker,
        split_text: spec.split_text,
        min_shard_bytes: spec.min_shard_bytes,
    };
    plan(objects, opts, &mut |name, offset, len| input.get_range(name, offset..offset + len as u64))
}

/// Checks that the output location is writable and holds no other job's outputs.
pub fn check_output(output: &Store) -> Result<(), OutputError> {
    let at = || output.location().to_string();
    if let Some(dir) = output.local_dir() {
        std::fs::create_dir_all(dir).map_err(|source| OutputError::NotWritable { at: at(), source })?;
    }
    for reserved in ["_mayfly", "_manifest.json", "map", "reduce"] {
        let held = output.exists(reserved)
            || !output.list(reserved).map_err(|source| OutputError::Unlistable { at: at(), source })?.is_empty();
        if held {
            return Err(OutputError::Taken { at: at(), reserved });
        }
    }
    let probe = format!(".mayfly-probe-{}", std::process::id());
    output.put(&probe, Vec::new()).map_err(|source| OutputError::NotWritable { at: at(), source })?;
    let _ = output.delete(&probe);
    Ok(())
}

/// Checks that `provider` (or core, for paths and `file://`) serves the
/// location `key` names.
pub fn check_scheme(key: &str, location: &Location, provider: &ProviderHandle) -> Result<(), SchemeError> {
    match location.scheme() {
        None | Some("file") => Ok(()),
        Some(scheme) if provider.info().schemes.iter().any(|s| s == scheme) => Ok(()),
        Some(scheme) => Err(SchemeError {
            key: key.to_owned(),
            location: location.to_string(),
            provider: provider.name().to_owned(),
            scheme: scheme.to_owned(),
            serves: if provider.info().schemes.is_empty() {
                "none".to_owned()
            } else {
                provider.info().schemes.join(", ")
            },
        }),
    }
}

/// Builds (if a crate directory) and loads a task, so that a bad task fails
/// the job before anything is launched, and the compile cache is warm.
pub fn ready_task(
    runtime: &Runtime,
    spec: &TaskSpec,
    what: &str,
    say: &mut dyn FnMut(&str),
) -> Result<ReadyTask, TaskError> {
    let component = if spec.path.is_dir() {
        crate::build::build_task(&spec.path, say)
            .map_err(|source| TaskError::Build { what: what.to_owned(), source })?
    } else {
        spec.path.clone()
    };
    let task = runtime.load(&component).map_err(|source| TaskError::Load { what: what.to_owned(), source })?;
    Ok(ReadyTask { component: absolute(&component), sha256: task.sha256().to_owned() })
}

/// Map output per automatic reduce partition: `partitions = "auto"` gives a
/// partition per this much estimated map output, at most one per worker.
pub const AUTO_PARTITION_BYTES: u64 = 64 << 20;

/// The reduce's partitions: 0 without a reduce, the job's count, or for
/// `"auto"`: 1 unless the preflight saw the map task partition every output
/// and the job says how the parts become one (`merge` or `order`); then one
/// per [`AUTO_PARTITION_BYTES`] of map output, estimated from the sample's
/// ratio of output to input over `input_bytes`, from 1 to the workers.
pub fn partitions(spec: &JobSpec, preflight: Option<&crate::preflight::Report>, input_bytes: u64) -> u32 {
    if spec.reduce.is_none() {
        return 0;
    }
    match spec.reduce_stage.partitions {
        crate::config::Partitions::Count(n) => n,
        crate::config::Partitions::Auto => {
            let Some(report) = preflight.filter(|r| r.partitioned == Some(true) && spec.reduce_stage.merge_declared)
            else {
                return 1;
            };
            let (sampled, _) = report.processed();
            if sampled == 0 {
                return 1;
            }
            let estimate = (report.map_output_bytes as f64 / sampled as f64 * input_bytes as f64) as u64;
            (estimate.div_ceil(AUTO_PARTITION_BYTES) as u32).clamp(1, spec.workers.max(1))
        }
    }
}

/// Readies the tasks of `spec`: the map task and the reduce task, if any.
pub fn ready_tasks(spec: &JobSpec, say: &mut dyn FnMut(&str)) -> Result<(ReadyTask, Option<ReadyTask>), TaskError> {
    let runtime = Runtime::new(&RuntimeConfig { max_concurrent: 1, ..RuntimeConfig::default() })?;
    let task = ready_task(&runtime, &spec.task, "map", say)?;
    let reduce = spec.reduce.as_ref().map(|r| ready_task(&runtime, r, "reduce", say)).transpose()?;
    Ok((task, reduce))
}

/// Bootstraps what a serverless event asked for (through
/// [`mayfly_data::provider::ProviderHandle::invoke`] or a plugin's host callback),
/// with `provider`, on `clock`.
pub fn from_request_on(
    request: &BootstrapRequest,
    provider: &ProviderHandle,
    clock: &dyn Clock,
    on_step: &mut dyn FnMut(&str),
) -> Result<BootstrapReply, ProviderError> {
    // The budget starts now: readying the tasks counts against the limit of
    // the serverless invocation this runs in.
    let started = clock.now();
    let fail = |kind, m: String| ProviderError::new("host", kind, m);
    let base = request.base_dir.as_deref().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    let (file, text) = match (&request.job_url, request.job.is_empty()) {
        (None, _) => (base.join("job.toml"), request.job.clone()),
        (Some(url), true) => {
            // Messages name the URL, as they would name a local job file.
            (PathBuf::from(url), fetch_job_file(url, provider).map_err(|e| fail(ErrorKind::Config, e.to_string()))?)
        }
        (Some(_), false) => {
            return Err(fail(ErrorKind::Config, "the request has both a job file and a `job_url`; give one".into()));
        }
    };
    let spec = JobSpec::parse(&file, &text, &|k| request.overrides.get(k).cloned())
        .map_err(|e| fail(ErrorKind::Config, e.to_string()))?;
    let merged = job_provider(&spec, provider).map_err(|e| fail(ErrorKind::Config, e.to_string()))?;
    let provider = merged.as_ref().unwrap_or(provider);
    // The same job asked for again: it goes on if its master is lost.
    if let Some(job) = &spec.id
        && let Some(reply) = continue_lost(&spec, job, provider, clock, on_step)?
    {
        return Ok(reply);
    }
    let (task, reduce) =
        ready_tasks(&spec, &mut |line| eprintln!("{line}")).map_err(|e| fail(ErrorKind::Config, e.to_string()))?;
    // An entrypoint's process has no runtime of its own: the preflight's
    // sandbox calls are driven on this thread, through the bridge's.
    let rt = mayfly_data::provider::bridge().map_err(|e| fail(ErrorKind::Other, e.to_string()))?;
    let boot = bootstrap(
        &spec,
        &task,
        reduce.as_ref(),
        provider,
        &rt,
        clock,
        Window { started: Some(started), until: request.deadline },
        on_step,
    )
    .map_err(|e| match e {
        BootstrapError::OverBudget(_) => fail(ErrorKind::OverBudget, format!("bootstrap refused: {e}")),
        // The request's own fault (a used job id, a location that cannot be
        // one): no retry of the same request can succeed.
        BootstrapError::Step {
            step: "check the job id" | "check the locations" | "check the cost" | "preflight",
            ..
        } => fail(ErrorKind::Config, format!("bootstrap refused: {e}")),
        BootstrapError::Step { .. } => fail(ErrorKind::Other, format!("bootstrap failed: {e}")),
    })?;
    Ok(BootstrapReply {
        job: boot.job,
        state: boot.layout.state_location(),
        shards: boot.manifest.plan.shards.len() as u64,
        nodes: boot.nodes,
        expires_at: boot.manifest.expires_at,
    })
}

/// A serverless entrypoint asked for job `job` again (an event delivered
/// again, a schedule, a retry): `Ok(None)` if no such job was bootstrapped
/// (bootstrap it); resumed, as `mayfly resume` does, if its master is lost
/// (its provider lists no master, and its heartbeat is older than the job's
/// `master_lost_timeout`); refused otherwise: a job that ended, or whose
/// master runs (`Config`: the same request can never do more), or whose
/// master was heard from too recently to be taken for lost (`Unavailable`:
/// a later retry may resume it).
fn continue_lost(
    spec: &JobSpec,
    job: &str,
    provider: &ProviderHandle,
    clock: &dyn Clock,
    on_step: &mut dyn FnMut(&str),
) -> Result<Option<BootstrapReply>, ProviderError> {
    let fail = |kind, m: String| ProviderError::new("host", kind, m);
    let state = absolute_location(&spec.state).join(job);
    let output = absolute_location(&spec.output.for_job(job));
    let layout = Layout::open(&state, job, &output, provider, "bootstrap")
        .map_err(|e| fail(ErrorKind::Other, format!("opening job {job}'s state: {e}")))?;
    let manifest = match layout.state.read_json::<Manifest>(keys::MANIFEST) {
        Ok(Some(manifest)) => manifest,
        Ok(None) => return Ok(None),
        Err(e) => return Err(fail(ErrorKind::Unavailable, format!("reading job {job}'s manifest: {e}"))),
    };
    let master_listed = provider
        .list(job, &layout.state_location())
        .map_err(|e| fail(ErrorKind::Unavailable, format!("listing job {job}'s nodes: {e}")))?
        .iter()
        .any(|n| n.role == Role::Master);
    if master_listed {
        return Err(fail(
            ErrorKind::Config,
            format!("bootstrap refused: job {job} is still running (its master runs)"),
        ));
    }
    if layout.state.exists(keys::FINAL) {
        return Err(fail(
            ErrorKind::Config,
            format!("bootstrap refused: job id {job} was already used (the job ended); a new run needs another id"),
        ));
    }
    let heard = match layout.state.read_json::<crate::job::Heartbeat>(keys::HEARTBEAT) {
        Ok(beat) => beat.map_or(manifest.created_at, |b| b.at.max(manifest.created_at)),
        Err(e) => return Err(fail(ErrorKind::Unavailable, format!("reading job {job}'s heartbeat: {e}"))),
    };
    let silent = clock.now().saturating_sub(heard);
    if silent < manifest.master_lost_timeout_ms {
        return Err(fail(
            ErrorKind::Unavailable,
            format!(
                "job {job}'s master was heard from {:.1}s ago: it is not taken for lost before {}s; try again later",
                silent as f64 / 1000.0,
                manifest.master_lost_timeout_ms / 1000
            ),
        ));
    }
    // One resume per silence: of two invocations that saw the same silent
    // master, the one that claims it first goes on.
    let claim = format!("claims/resume-{heard}");
    match layout.state.create_all(vec![(claim, Vec::new())]).pop() {
        Some(Ok(true)) => {}
        Some(Ok(false)) => {
            return Err(fail(ErrorKind::Unavailable, format!("job {job}: another invocation is resuming it")));
        }
        Some(Err(e)) => return Err(fail(ErrorKind::Unavailable, format!("job {job}: claiming its resume: {e}"))),
        None => return Err(fail(ErrorKind::Unavailable, format!("job {job}: claiming its resume: no answer"))),
    }
    let _ = layout.state.write_json(keys::HEARTBEAT, &crate::job::Heartbeat { at: clock.now() });
    eprintln!("job {job}: its master is lost (silent for {:.0}s); resuming it", silent as f64 / 1000.0);
    match resume(&layout, &manifest, provider, clock, on_step) {
        Ok(Resumed::Launched { nodes, .. }) => Ok(Some(BootstrapReply {
            job: job.to_owned(),
            state: layout.state_location(),
            shards: manifest.plan.shards.len() as u64,
            nodes,
            expires_at: manifest.expires_at,
        })),
        Ok(Resumed::AlreadyEnded) => Err(fail(
            ErrorKind::Config,
            format!("bootstrap refused: job id {job} was already used (the job ended); a new run needs another id"),
        )),
        Err(BootstrapError::OverBudget(e)) => Err(fail(ErrorKind::OverBudget, format!("resume refused: {e}"))),
        Err(e @ BootstrapError::Step { step: "check the job", .. }) => {
            Err(fail(ErrorKind::Config, format!("resume refused: {e}")))
        }
        Err(e) => Err(fail(ErrorKind::Other, format!("resume failed: {e}"))),
    }
}

/// Reads a job file from a URL (`s3://bucket/jobs/job.toml`) through the data
/// path, signed with `provider`'s credentials.
pub fn fetch_job_file(url: &str, provider: &ProviderHandle) -> Result<String, JobFileError> {
    let location = Location::parse(url, Path::new("/"))?;
    let (dir, name) = match location.as_str().rsplit_once('/') {
        Some((dir, name)) if !name.is_empty() && dir.contains("://") && !dir.ends_with(':') && !dir.ends_with('/') => {
            (dir.to_owned(), name.to_owned())
        }
        _ => return Err(JobFileError::NoKey(url.to_owned())),
    };
    let dir = Location::parse(&dir, Path::new("/"))?;
    check_scheme("job_url", &dir, provider)?;
    let who = mayfly_data::store::Principal { job: "bootstrap".into(), state: String::new(), node: "bootstrap".into() };
    let store = Store::open(&dir, provider, &who)?;
    let bytes = store.get(&name).map_err(|source| JobFileError::Read { url: url.to_owned(), source })?;
    let bytes = bytes.ok_or_else(|| JobFileError::Missing(url.to_owned()))?;
    String::from_utf8(bytes).map_err(|_| JobFileError::NotText(url.to_owned()))
}

/// The provider a serverless entrypoint bootstraps `spec` with: its own
/// plugin, with the function's settings under the job's `[provider]` ones
/// (the job's win: it names its image, instance types, node artifact, and
/// may name its own region or endpoint). `None`: the job has no `[provider]`
/// section, and runs on the function's provider as it is. A job for another
/// provider is refused. Handles are kept per selection (a few), so that a
/// warm function does not make a provider per invocation.
fn job_provider(spec: &JobSpec, serving: &ProviderHandle) -> Result<Option<ProviderHandle>, JobProviderError> {
    static MADE: std::sync::Mutex<Vec<(Selection, ProviderHandle)>> = std::sync::Mutex::new(Vec::new());
    if spec.provider_lines.is_empty() {
        return Ok(None);
    }
    let job = &spec.provider;
    if let Some(name) = &job.name
        && name != serving.name()
    {
        return Err(JobProviderError::Another { job: name.clone(), serving: serving.name().to_owned() });
    }
    let mut selection = serving.selection().clone();
    selection.settings.extend(job.settings.clone());
    if job.timeout_ms.is_some() {
        selection.timeout_ms = job.timeout_ms;
    }
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, handle)) = made.iter().find(|(s, _)| *s == selection) {
        return Ok(Some(handle.clone()));
    }
    let handle = ProviderHandle::select(&selection)?;
    if made.len() >= 8 {
        made.remove(0);
    }
    made.push((selection, handle.clone()));
    Ok(Some(handle))
}

/// [`from_request_on`] with the system clock.
pub fn from_request(request: &BootstrapRequest, provider: &ProviderHandle) -> Result<BootstrapReply, ProviderError> {
    from_request_on(request, provider, &SystemClock, &mut |_| {})
}

/// Handles one event of `provider`'s serverless entrypoint: the provider
/// adapts it, and the job is bootstrapped (by a plugin, through its host).
pub fn invoke(provider: &ProviderHandle, event: serde_json::Value) -> Result<BootstrapReply, ProviderError> {
    provider.arm(from_request);
    match provider.invoke(event)? {
        Invoked::Bootstrapped(reply) => Ok(reply),
        Invoked::Adapted(request) => from_request(&request, provider),
    }
}

/// Runs `provider`'s serverless entrypoint (e.g. Lambda's runtime API loop),
/// which bootstraps a job per event through its host.
pub fn serve(provider: &ProviderHandle) -> Result<(), ProviderError> {
    provider.arm(from_request);
    provider.serve()
}

/// When a bootstrap's budget starts (default: when it is called) and, at the
/// latest, ends (an invocation's own deadline; the provider's limit applies too).
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    /// The start.
    pub started: Option<mayfly_model::policy::Millis>,
    /// The latest end.
    pub until: Option<mayfly_model::policy::Millis>,
}

/// Bootstraps `spec` with `provider`, on a budget that starts and ends as
/// `window` says, and ends at the provider's limit at the latest; the
/// preflight's sandbox calls run on `rt`. `on_step` is called as each step
/// starts (the CLI prints it; tests use it to move an injected clock).
#[allow(clippy::too_many_arguments)]
pub fn bootstrap(
    spec: &JobSpec,
    task: &ReadyTask,
    reduce: Option<&ReadyTask>,
    provider: &ProviderHandle,
    rt: &tokio::runtime::Handle,
    clock: &dyn Clock,
    window: Window,
    on_step: &mut dyn FnMut(&str),
) -> Result<Bootstrapped, BootstrapError> {
    let limits = provider.limits();
    let started = window.started.unwrap_or_else(|| clock.now());
    let limit = match window.until {
        Some(until) => limits.bootstrap_limit().min(Duration::from_millis(until.saturating_sub(started))),
        None => limits.bootstrap_limit(),
    };
    let budget = Budget::bootstrap(started, limit);
    let mut step = |name: &'static str, needs: Duration| -> Result<(), BootstrapError> {
        budget.check(clock.now(), name, needs)?;
        on_step(name);
        Ok(())
    };

    if let Some(max) = spec.max_cost {
        step("check the cost", Duration::ZERO)?;
        let priced = priced_nodes(provider, spec);
        mayfly_model::cost::check_ceiling(
            priced.nodes.as_ref(),
            &spec.prices,
            (spec.workers, spec.max_replacements),
            spec.deadline,
            max,
        )
        .map_err(step_err("check the cost"))?;
    }

    step("check the output location", Duration::ZERO)?;
    let job = spec.id.clone().unwrap_or_else(|| new_job_id(&spec.name, started));
    // `{job}` in the output location: one output location per run of a job file.
    let (input, output, state) =
        (absolute_location(&spec.input), absolute_location(&spec.output.for_job(&job)), absolute_location(&spec.state));
    for (key, l) in [("input.url", &input), ("output.url", &output), ("state.url", &state)] {
        check_scheme(key, l, provider).map_err(step_err("check the locations"))?;
    }
    let layout = Layout::open(&state.join(&job), &job, &output, provider, "bootstrap")
        .map_err(step_err("open the locations"))?;
    if layout.state.exists(keys::MANIFEST) || layout.state.local_dir().is_some_and(Path::exists) {
        let alive = provider.list(&job, &layout.state_location()).map(|n| !n.is_empty()).unwrap_or(false);
        let message = if alive {
            format!("job {job} is still running (see `mayfly status {job}`)")
        } else {
            format!("job id {job} was already used; `mayfly resume {job}` continues it, or choose another id")
        };
        return Err(BootstrapError::Step { step: "check the job id", message });
    }
    // After the job id: a second delivery of one event says "already used".
    check_output(&layout.output).map_err(step_err("check the output location"))?;

    step("list the inputs", Duration::ZERO)?;
    let who =
        mayfly_data::store::Principal { job: job.clone(), state: layout.state_location(), node: "bootstrap".into() };
    let input_store = Store::open(&input, provider, &who).map_err(step_err("list the inputs"))?;
    let objects = list_inputs(&input_store, spec.glob.as_deref()).map_err(step_err("list the inputs"))?;

    step("plan", Duration::ZERO)?;
    let plan = plan_objects(spec, &input_store, &objects).map_err(|e| step_err("plan")(e.to_string()))?;

    let mut preflight = if spec.preflight.enabled {
        step("preflight", Duration::ZERO)?;
        // A quarter of what is left at most: launching needs the rest.
        let bound = spec.preflight.timeout.min(budget.remaining(clock.now()) / 4);
        if bound < PREFLIGHT_LEAST {
            let note = format!(
                "preflight skipped: the bootstrap's budget leaves {} for it, less than {}",
                mayfly_model::units::HumanDuration(bound),
                mayfly_model::units::HumanDuration(PREFLIGHT_LEAST)
            );
            Some(crate::preflight::Report { notes: vec![note], ..Default::default() })
        } else {
            let request = crate::preflight::Request {
                job: &job,
                spec,
                plan: &plan,
                input: &input_store,
                task: &task.component,
                reduce: reduce.map(|r| r.component.as_path()),
                partitions: spec.preflight_partitions(),
                bound,
            };
            match crate::preflight::run(rt, &request) {
                Ok(report) => Some(report),
                Err(e @ crate::preflight::PreflightError::Refused(_)) => return Err(step_err("preflight")(e)),
                // Not the job's fault: the sandbox or this machine.
                Err(e) => return Err(step_err("run the preflight")(e)),
            }
        }
    } else {
        None
    };

    step("write the manifest", Duration::ZERO)?;
    let items: u64 = plan.shards.iter().map(|s| s.items.len() as u64).sum();
    let partitions = partitions(spec, preflight.as_ref(), plan.total_bytes);
    if let (crate::config::Partitions::Auto, true, Some(report)) =
        (spec.reduce_stage.partitions, partitions > 1, preflight.as_mut())
    {
        report.notes.push(format!(
            "reduce: {partitions} partitions (partitions = \"auto\": the map task partitions its outputs, about {} \
             of them estimated)",
            mayfly_model::units::ByteSize(
                report.map_output_bytes.saturating_mul(plan.total_bytes) / report.processed().0.max(1)
            )
        ));
    }
    let manifest = Manifest {
        job: job.clone(),
        name: spec.name.clone(),
        provider: provider.selection().clone(),
        task: absolute(&task.component),
        task_sha256: task.sha256.clone(),
        params: spec.task.params.clone(),
        reduce: reduce
            .zip(spec.reduce.as_ref())
            .map(|(r, s)| (absolute(&r.component), r.sha256.clone(), s.params.clone())),
        partitions,
        merge: spec.reduce_stage.merge.clone(),
        input,
        output,
        state: layout.state.location().clone(),
        plan,
        workers: spec.workers,
        max_replacements: spec.max_replacements,
        limits: spec.limits,
        max_attempts: spec.max_attempts,
        max_failed_items: spec.max_failed_items.bound(items),
        max_storage_refusals: spec.max_storage_refusals,
        storage_outage_ms: ms(spec.storage_outage),
        isolation: spec.isolation,
        read_ahead: spec.read_ahead,
        read_ahead_memory: spec.read_ahead_memory,
        log_format: spec.log_format,
        lease_ms: ms(spec.lease_time),
        idle_timeout_ms: ms(spec.idle_timeout),
        master_lost_timeout_ms: ms(spec.master_lost_timeout),
        refresh_margin_ms: ms(spec.credential_refresh_margin),
        credential_ttl_ms: ms(limits.credential_ttl()),
        created_at: started,
        expires_at: started + ms(spec.deadline),
    };
    let write = || -> std::io::Result<()> {
        if let Some(dir) = layout.state.local_dir() {
            std::fs::create_dir_all(dir)?;
        } else {
            // Nodes elsewhere fetch the task components from the state.
            for (component, sha) in std::iter::once((&manifest.task, &manifest.task_sha256))
                .chain(manifest.reduce.as_ref().map(|(c, s, _)| (c, s)))
            {
                layout.state.upload(component, &Layout::task_key(sha))?;
            }
        }
        // The manifest first, create-if-absent: of two bootstraps of one job id
        // (an event delivered twice at once), exactly one goes on.
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?;
        match layout.state.create_all(vec![(keys::MANIFEST.to_owned(), bytes)]).pop() {
            Some(Ok(true)) => {}
            Some(Ok(false)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("job id {job} was already used (its manifest appeared meanwhile)"),
                ));
            }
            Some(Err(e)) => return Err(e),
            None => return Err(std::io::Error::other("no answer")),
        }
        create_token(&layout)?;
        // The master is silent from now until it beats: a serverless
        // entrypoint asked again for this job counts from here.
        layout.state.write_json(keys::HEARTBEAT, &crate::job::Heartbeat { at: clock.now() })
    };
    write().map_err(|e| step_err("write the manifest")(format!("{}: {e}", layout.state.location())))?;

    // From here on, a failure must end what was launched.
    let workers: Vec<(String, Role)> = (1..=spec.workers).map(|i| (format!("worker-{i}"), Role::Worker)).collect();
    let launched = launch_nodes(&layout, &manifest, provider, &[], &workers, &mut step, &|| {
        budget.check(clock.now(), "wait for the master", Duration::from_millis(20))
    })?;
    // What ended jobs left besides nodes (a cloud's network rules) goes once
    // this job is launched, if its budget has time left; a failure here is
    // only said.
    let left = Duration::from_millis(budget.ends.saturating_sub(clock.now()));
    if left > Duration::from_secs(10) {
        match provider.sweep(left - Duration::from_secs(5)) {
            Ok(removed) => removed.iter().for_each(|r| eprintln!("removed {r}")),
            Err(e) => eprintln!("warning: sweeping what ended jobs left: {e}"),
        }
    }
    Ok(Bootstrapped { job, layout, manifest, nodes: launched, preflight })
}

/// Launches a master, waits until it serves, then launches `workers`. On any
/// failure, ends what this call launched: the nodes it knows of, and any
/// node the provider lists for the job that was not in `running` before
/// (a launch call can fail after the cloud acted: a timeout, a lost answer).
fn launch_nodes(
    layout: &Layout,
    manifest: &Manifest,
    provider: &ProviderHandle,
    running: &[NodeInfo],
    workers: &[(String, Role)],
    step: &mut dyn FnMut(&'static str, Duration) -> Result<(), BootstrapError>,
    in_budget: &dyn Fn() -> Result<(), mayfly_model::policy::OverBudget>,
) -> Result<Vec<NodeInfo>, BootstrapError> {
    let job = &manifest.job;
    let mut launched: Vec<NodeInfo> = Vec::new();
    let result = (|| -> Result<(), BootstrapError> {
        step("launch the master", Duration::from_millis(100))?;
        let selection = provider.selection();
        let master = launch_request(layout, selection, job, manifest.expires_at, &[("master".into(), Role::Master)]);
        launched.extend(provider.launch(master).map_err(|e| step_err("launch the master")(e.to_string()))?);
        step("wait for the master", Duration::from_millis(50))?;
        // The provider is asked about every 250 ms, and the master counts as
        // gone only after three answers in a row without it (a cloud's listing
        // may lag a launch, or a call may be throttled; errors count as alive).
        let (mut misses, mut asked) = (0, std::time::Instant::now() - Duration::from_secs(1));
        loop {
            if let Ok(Some(info)) = layout.state.read_json::<MasterInfo>(keys::MASTER)
                && !info.addr.is_empty()
            {
                break;
            }
            if asked.elapsed() >= Duration::from_millis(250) {
                asked = std::time::Instant::now();
                let listed = provider
                    .list(job, &layout.state_location())
                    .map(|n| n.iter().any(|n| n.role == Role::Master))
                    .unwrap_or(true);
                misses = if listed { 0 } else { misses + 1 };
            }
            if misses >= 3 {
                let log = layout.state.get(&Layout::logs_key("master")).ok().flatten().unwrap_or_default();
                let log = String::from_utf8_lossy(&log);
                let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no output)").to_owned();
                return Err(step_err("wait for the master")(format!("the master exited while starting: {last}")));
            }
            in_budget()?;
            std::thread::sleep(Duration::from_millis(20));
        }
        step("launch the workers", Duration::from_millis(100))?;
        if !workers.is_empty() {
            let workers = launch_request(layout, selection, job, manifest.expires_at, workers);
            launched.extend(provider.launch(workers).map_err(|e| step_err("launch the workers")(e.to_string()))?);
        }
        Ok(())
    })();
    if let Err(e) = result {
        let mut ending = launched;
        for n in provider.list(job, &layout.state_location()).unwrap_or_default() {
            if !ending.iter().any(|m| m.id == n.id) && !running.iter().any(|m| m.id == n.id) {
                ending.push(n);
            }
        }
        let _ = provider.terminate(&ending, Duration::from_secs(2));
        return Err(e);
    }
    Ok(launched)
}

/// What [`resume`] did.
#[derive(Debug, Clone)]
pub enum Resumed {
    /// The job had already ended: nothing was launched.
    AlreadyEnded,
    /// A new master, and the workers that were not running.
    Launched {
        /// The nodes launched.
        nodes: Vec<NodeInfo>,
        /// How many of them are workers.
        workers: usize,
    },
}

/// Continues a job whose master was lost: a new master (which reads the
/// journal and the commit markers, so committed shards stay committed) and
/// the workers that are no longer running, on the bootstrap's budget and with
/// its rollback: on a failure, what this resume launched is ended, and the
/// nodes that were running are left as they were.
pub fn resume(
    layout: &Layout,
    manifest: &Manifest,
    provider: &ProviderHandle,
    clock: &dyn Clock,
    on_step: &mut dyn FnMut(&str),
) -> Result<Resumed, BootstrapError> {
    let job = &manifest.job;
    if layout.state.exists(keys::FINAL) {
        return Ok(Resumed::AlreadyEnded);
    }
    // The provider's limit, and never past the job's deadline.
    let left = Duration::from_millis(manifest.expires_at.saturating_sub(clock.now()));
    let limit = provider.limits().bootstrap_limit().min(left);
    let budget = Budget::bootstrap(clock.now(), limit);
    let mut step = |name: &'static str, needs: Duration| -> Result<(), BootstrapError> {
        budget.check(clock.now(), name, needs)?;
        on_step(name);
        Ok(())
    };
    step("check the job", Duration::ZERO)?;
    let running = provider
        .list(job, &layout.state_location())
        .map_err(|e| step_err("check the job")(format!("listing its nodes: {e}")))?;
    if running.iter().any(|n| n.role == Role::Master) {
        let message = format!("job {job} still has a running master; follow it with `mayfly status {job}`");
        return Err(BootstrapError::Step { step: "check the job", message });
    }
    if clock.now() >= manifest.expires_at {
        let message = format!("job {job} is past its deadline; it cannot be resumed");
        return Err(BootstrapError::Step { step: "check the job", message });
    }
    // The lost master's address: the new one writes its own.
    let _ = layout.state.delete(keys::MASTER);
    // As many workers as are not running, under names no node of the job had
    // (a lost worker's log stays its own).
    let alive = running.iter().filter(|n| n.role == Role::Worker).count();
    let logged = layout.logged_nodes();
    let taken = running.iter().map(|n| n.node.as_str()).chain(logged.iter().map(String::as_str));
    let workers: Vec<(String, Role)> = new_worker_names((manifest.workers as usize).saturating_sub(alive), taken)
        .into_iter()
        .map(|node| (node, Role::Worker))
        .collect();
    let nodes = launch_nodes(layout, manifest, provider, &running, &workers, &mut step, &|| {
        budget.check(clock.now(), "wait for the master", Duration::from_millis(20))
    })?;
    Ok(Resumed::Launched { nodes, workers: workers.len() })
}

/// The provider's node types, priced as `mayfly plan` and bootstrap price
/// them for `spec`: from the prices `mayfly prices refresh` cached on this
/// machine for the provider's region, else from its built-in table
/// ([`mayfly_data::prices::priced`]; a serverless function's machine has no
/// cache, so its bootstrap uses the table: `plan` warns where that changes
/// the ceiling's verdict).
pub fn priced_nodes(provider: &ProviderHandle, spec: &JobSpec) -> mayfly_data::prices::Priced {
    let dir = mayfly_data::prices::default_dir().ok();
    let declared = provider.info().nodes.clone();
    mayfly_data::prices::priced(dir.as_deref(), provider.name(), declared, &spec.prices, SystemClock.now())
}

/// A local path made absolute (nodes run elsewhere); a URL as it is.
pub fn absolute_location(l: &Location) -> Location {
    match l.as_path() {
        Some(p) => Location::path(&absolute(p)),
        None => l.clone(),
    }
}

/// `p` made absolute against the current directory (nodes run elsewhere).
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(reduce: &str) -> JobSpec {
        let text = format!(
            "[job]\nname = \"j\"\n\n[task]\npath = \".\"\n\n[input]\nurl = \"data\"\n\n[output]\nurl = \"out\"\n\n\
             [cluster]\nworkers = 4\n\n{reduce}"
        );
        JobSpec::parse(std::path::Path::new("job.toml"), &text, &|_| None).unwrap()
    }

    fn sampled(input: u64, output: u64, partitioned: Option<bool>) -> crate::preflight::Report {
        crate::preflight::Report {
            tried: vec![crate::preflight::Tried {
                item: "a".into(),
                bytes: input,
                item_time: Duration::from_millis(5),
                failed: None,
            }],
            map_output_bytes: output,
            partitioned,
            ..Default::default()
        }
    }

    #[test]
    fn auto_partitions_split_only_a_large_partitioned_map_output_the_job_knows_how_to_merge() {
        const GIB: u64 = 1 << 30;
        let merged = spec("[reduce]\npath = \".\"\norder = \"2nr,1\"\n");
        // A sample whose output is a quarter of its input: 1 GiB makes 256 MiB, 4 partitions.
        let large = sampled(1 << 20, 1 << 18, Some(true));
        assert_eq!(partitions(&merged, Some(&large), GIB), 4);
        // Half of that: 2; small inputs: 1; never more than the workers.
        assert_eq!(partitions(&merged, Some(&large), GIB / 2), 2);
        assert_eq!(partitions(&merged, Some(&large), 10 << 20), 1);
        assert_eq!(partitions(&merged, Some(&large), 100 * GIB), 4);
        // A map that does not partition, no preflight, or no merge declared: 1.
        assert_eq!(partitions(&merged, Some(&sampled(1 << 20, 1 << 18, Some(false))), GIB), 1);
        assert_eq!(partitions(&merged, Some(&sampled(1 << 20, 1 << 18, None)), GIB), 1);
        assert_eq!(partitions(&merged, None, GIB), 1);
        assert_eq!(partitions(&spec("[reduce]\npath = \".\"\n"), Some(&large), GIB), 1);
        // The job's own count stands; no reduce, no partitions.
        assert_eq!(partitions(&spec("[reduce]\npath = \".\"\npartitions = 3\n"), None, GIB), 3);
        assert_eq!(partitions(&spec(""), Some(&large), GIB), 0);
        assert_eq!((spec("").preflight_partitions(), merged.preflight_partitions()), (1, 4));
    }
}
