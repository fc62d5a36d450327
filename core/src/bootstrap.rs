//! Bootstrap: validate, list the inputs, plan, write the manifest, launch the
//! master and the workers, all inside the provider's time limit. It never waits
//! for the work itself. Each step is checked against the budget (the limit
//! minus a safety margin) before it starts; on any failure after a launch,
//! everything launched is terminated before the error is returned.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{JobSpec, glob_regex};
use crate::job::{Layout, Manifest, new_job_id, write_json_atomic};
use crate::master::MasterInfo;
use crate::plan::{Object, Plan, PlanOptions, plan};
use crate::policy::{Budget, Clock, ms};
use crate::provider::{NodeInfo, NodeSpec, Provider, Role, create_secrets};

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
    OverBudget(#[from] crate::policy::OverBudget),
    /// A step failed.
    #[error("{step}: {message}")]
    Step {
        /// The step.
        step: &'static str,
        /// What went wrong.
        message: String,
    },
}

fn step_err(step: &'static str) -> impl Fn(String) -> BootstrapError {
    move |message| BootstrapError::Step { step, message }
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
}

/// Lists the input directory (recursively, in name order), applying `glob`.
pub fn list_inputs(dir: &Path, glob: Option<&str>) -> Result<Vec<Object>, String> {
    let re = glob.map(glob_regex).transpose()?;
    let meta = std::fs::metadata(dir).map_err(|e| format!("input {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("input {} is not a directory", dir.display()));
    }
    let mut objects = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("cannot list input directory {}: {e}", d.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list input directory {}: {e}", d.display()))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(|e| format!("{}: {e}", path.display()))?;
            if ft.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(rel) = path.strip_prefix(dir) else { continue };
            let name = rel.to_string_lossy().into_owned();
            if re.as_ref().is_some_and(|r| !r.is_match(&name)) {
                continue;
            }
            let size =
                std::fs::metadata(&path).map_err(|e| format!("cannot read input {}: {e}", path.display()))?.len();
            // Open it now: an unreadable input fails the job before anything runs.
            std::fs::File::open(&path).map_err(|e| format!("cannot read input {}: {e}", path.display()))?;
            objects.push(Object { name, size });
        }
    }
    objects.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(objects)
}

/// Plans `objects` of the input directory `input` as `spec` says (reading
/// near cut points to align split ranges on lines).
pub fn plan_objects(spec: &JobSpec, input: &Path, objects: &[Object]) -> std::io::Result<Plan> {
    let opts = PlanOptions {
        workers: spec.workers,
        target_shard_bytes: spec.target_shard_bytes,
        shards_per_worker: spec.shards_per_worker,
        split_text: spec.split_text,
    };
    plan(objects, opts, &mut |name, offset, len| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(input.join(name))?;
        let mut buf = vec![0u8; len];
        let n = f.read_at(&mut buf, offset)?;
        buf.truncate(n);
        Ok(buf)
    })
}

/// Checks that the output location is writable and holds no other job's outputs.
pub fn check_output(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("output location {} is not writable: {e}", dir.display()))?;
    for reserved in ["_mayfly", "_manifest.json", "map", "reduce"] {
        if dir.join(reserved).exists() {
            return Err(format!(
                "output location {} already holds a job's outputs ({reserved}); choose another or remove them",
                dir.display()
            ));
        }
    }
    let probe = dir.join(format!(".mayfly-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| format!("output location {} is not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Bootstraps `spec` with `provider`. `on_step` is called as each step starts
/// (the CLI prints it; tests use it to move an injected clock).
pub fn bootstrap(
    spec: &JobSpec,
    task: &ReadyTask,
    reduce: Option<&ReadyTask>,
    provider: &dyn Provider,
    clock: &dyn Clock,
    on_step: &mut dyn FnMut(&str),
) -> Result<Bootstrapped, BootstrapError> {
    let limits = provider.limits();
    let started = clock.now();
    let margin = (limits.bootstrap_limit / 10).min(Duration::from_secs(10));
    let budget = Budget::new(started, limits.bootstrap_limit, margin);
    let mut step = |name: &'static str, needs: Duration| -> Result<(), BootstrapError> {
        budget.check(clock.now(), name, needs)?;
        on_step(name);
        Ok(())
    };

    step("check the output location", Duration::ZERO)?;
    let output = absolute(&spec.output);
    check_output(&output).map_err(step_err("check the output location"))?;
    let job = spec.id.clone().unwrap_or_else(|| new_job_id(&spec.name, started));
    let state = absolute(&spec.state);
    let layout = Layout::new(&state, &job, &output);
    if layout.dir.exists() {
        let alive = provider.list(&layout).map(|n| !n.is_empty()).unwrap_or(false);
        let message = if alive {
            format!("job {job} is still running (see `mayfly status {job}`)")
        } else {
            format!("job id {job} was already used; `mayfly resume {job}` continues it, or choose another id")
        };
        return Err(BootstrapError::Step { step: "check the job id", message });
    }

    step("list the inputs", Duration::ZERO)?;
    let input = absolute(&spec.input);
    let objects = list_inputs(&input, spec.glob.as_deref()).map_err(step_err("list the inputs"))?;

    step("plan", Duration::ZERO)?;
    let plan = plan_objects(spec, &input, &objects).map_err(|e| step_err("plan")(e.to_string()))?;

    step("write the manifest", Duration::ZERO)?;
    let manifest = Manifest {
        job: job.clone(),
        name: spec.name.clone(),
        provider: provider.name().to_owned(),
        task: absolute(&task.component),
        task_sha256: task.sha256.clone(),
        params: spec.task.params.clone(),
        reduce: reduce
            .zip(spec.reduce.as_ref())
            .map(|(r, s)| (absolute(&r.component), r.sha256.clone(), s.params.clone())),
        input,
        output,
        state: layout.dir.clone(),
        plan,
        workers: spec.workers,
        limits: spec.limits,
        max_attempts: spec.max_attempts,
        lease_ms: ms(spec.lease_time),
        idle_timeout_ms: ms(spec.idle_timeout),
        master_lost_timeout_ms: ms(spec.master_lost_timeout),
        refresh_margin_ms: ms(spec.credential_refresh_margin),
        credential_ttl_ms: ms(limits.credential_ttl),
        created_at: started,
        expires_at: started + ms(spec.deadline),
    };
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&layout.dir)?;
        create_secrets(&layout)?;
        write_json_atomic(&layout.manifest(), &manifest)
    };
    write().map_err(|e| step_err("write the manifest")(format!("{}: {e}", layout.dir.display())))?;

    // From here on, a failure must end what was launched.
    let mut launched: Vec<NodeInfo> = Vec::new();
    let result = (|| -> Result<(), BootstrapError> {
        step("launch the master", Duration::from_millis(100))?;
        let master = NodeSpec { node: "master".into(), role: Role::Master };
        launched.extend(
            provider
                .launch(&layout, &job, manifest.expires_at, &[master])
                .map_err(|e| step_err("launch the master")(e.to_string()))?,
        );
        step("wait for the master", Duration::from_millis(50))?;
        loop {
            if let Ok(info) = crate::job::read_json::<MasterInfo>(&layout.master())
                && !info.addr.is_empty()
            {
                break;
            }
            let alive = provider.list(&layout).map(|n| n.iter().any(|n| n.role == Role::Master)).unwrap_or(false);
            if !alive {
                let log = std::fs::read_to_string(layout.logs().join("master.log")).unwrap_or_default();
                let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no output)").to_owned();
                return Err(step_err("wait for the master")(format!("the master exited while starting: {last}")));
            }
            budget.check(clock.now(), "wait for the master", Duration::from_millis(20))?;
            std::thread::sleep(Duration::from_millis(20));
        }
        step("launch the workers", Duration::from_millis(100))?;
        let workers: Vec<NodeSpec> =
            (1..=spec.workers).map(|i| NodeSpec { node: format!("worker-{i}"), role: Role::Worker }).collect();
        launched.extend(
            provider
                .launch(&layout, &job, manifest.expires_at, &workers)
                .map_err(|e| step_err("launch the workers")(e.to_string()))?,
        );
        Ok(())
    })();
    if let Err(e) = result {
        let _ = provider.terminate(&layout, &launched, Duration::from_secs(2));
        return Err(e);
    }
    Ok(Bootstrapped { job, layout, manifest, nodes: launched })
}

/// `p` made absolute against the current directory (nodes run elsewhere).
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}
