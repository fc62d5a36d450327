//! What the seeded chaos runners on the clouds' emulators share
//! (`tests/aws/tests/chaos.rs`, `tests/azure/tests/chaos.rs`): the job each
//! seed runs, a seed's plan of faults, the run of many seeds with their
//! report and figures, and the judging of the outputs and of each fault's
//! trace. Each runner brings its cloud: how a fault is injected, where the
//! outputs are, and the observer that says nothing of the job is left.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use crate::XorShift;
use crate::chaos::Taken;
use crate::cluster::{TestJob, assert_exactly_once, inputs};

/// Inputs per job (one shard each).
pub const FILES: usize = 14;
/// Workers per job.
pub const WORKERS: u32 = 3;

/// A fault on a cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The machine of a worker that holds a lease is taken away.
    KillWorker,
    /// The master's machine is taken away; the serverless entrypoint is
    /// then asked again until it resumes the job.
    KillMaster,
    /// The compute API throttles from the submission, by `amount` (in the
    /// cloud's terms: milliseconds, or requests).
    Throttle { amount: u64 },
    /// The object store refuses every write under the job's outputs for `ms`.
    RefuseWrites { ms: u64 },
    /// The object store refuses, from now on, every temporary credential it
    /// has seen so far, as expired: they stop working before the expiry
    /// they were issued with.
    ExpireCredentials,
    /// Every machine's metadata service (where a node finds who it is and,
    /// on some clouds, its credentials) answers each request `ms` late, from
    /// the submission to the job's end.
    SlowMetadata { ms: u64 },
}

/// How a cloud's runner names its faults, and its throttle.
#[derive(Debug)]
pub struct Kinds {
    /// The names of kill-worker, kill-master, the throttle, the refusal, the
    /// early expiry and the slow metadata service, in the order seeds 1, 2,
    /// ... take them as their first fault.
    pub names: [&'static str; 6],
    /// A throttle's amount: `least` plus up to `spread` more.
    pub throttle: (u64, u64),
    /// How an amount is said (`4.6s`, `5 requests`).
    pub say_throttle: fn(u64) -> String,
    /// What the traces of a throttle, a refusal, an early expiry and a slow
    /// metadata service are (`EC2 calls refused`).
    pub evidence: [&'static str; 4],
}

impl Kinds {
    /// The name of `fault`'s kind.
    pub fn of(&self, fault: &Fault) -> &'static str {
        match fault {
            Fault::KillWorker => self.names[0],
            Fault::KillMaster => self.names[1],
            Fault::Throttle { .. } => self.names[2],
            Fault::RefuseWrites { .. } => self.names[3],
            Fault::ExpireCredentials => self.names[4],
            Fault::SlowMetadata { .. } => self.names[5],
        }
    }

    /// What the traces of a fault of `kind` are.
    pub fn evidence(&self, kind: &str) -> &'static str {
        match self.names.iter().position(|n| *n == kind) {
            Some(0) => "leases expired and workers replaced, by the master's log",
            Some(1) => "masters resumed",
            Some(n @ 2..=5) => self.evidence[n - 2],
            _ => "none",
        }
    }

    /// `fault` as the report says it.
    pub fn say(&self, fault: &Fault) -> String {
        match fault {
            Fault::Throttle { amount } => format!("{}({})", self.of(fault), (self.say_throttle)(*amount)),
            Fault::RefuseWrites { ms } | Fault::SlowMetadata { ms } => {
                format!("{}({:.1}s)", self.of(fault), *ms as f64 / 1000.0)
            }
            _ => self.of(fault).to_owned(),
        }
    }
}

/// A seed's plan: the task's time per item and its faults, each at a moment
/// counted from the job's first lease (a throttle and a slow metadata
/// service from the submission, so that they meet the launch and the boot).
#[derive(Debug)]
pub struct Schedule {
    /// The task's time per item.
    pub delay_ms: u64,
    /// The faults, by their moment.
    pub faults: Vec<(u64, Fault)>,
    /// Which lease holder a killed worker is, if none is leased to soon.
    pub pick: u64,
    /// The runner's names.
    pub kinds: &'static Kinds,
}

impl Schedule {
    /// Seed `seed`'s plan: its first fault's kind by the seed (each kind
    /// once in any 6 seeds in a row), maybe a second.
    pub fn from_seed(seed: u64, kinds: &'static Kinds) -> Schedule {
        let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5A5_5A5A_F00D_CAFE);
        for _ in 0..8 {
            rng.next();
        }
        let mut below = |n: u64| rng.next() % n;
        let delay_ms = 400 + below(400);
        let all = [
            Fault::KillWorker,
            Fault::KillMaster,
            Fault::Throttle { amount: 0 },
            Fault::RefuseWrites { ms: 0 },
            Fault::ExpireCredentials,
            Fault::SlowMetadata { ms: 0 },
        ];
        let mut picked = vec![all[((seed.max(1) - 1) % all.len() as u64) as usize]];
        if below(2) == 1 {
            let other = all[below(all.len() as u64) as usize];
            if !picked.contains(&other) {
                picked.push(other);
            }
        }
        // How long the work takes without faults, roughly.
        let span = FILES as u64 * delay_ms / WORKERS as u64;
        let mut faults: Vec<(u64, Fault)> = picked
            .into_iter()
            .map(|fault| match fault {
                Fault::KillWorker | Fault::KillMaster => (300 + below(span / 2), fault),
                Fault::Throttle { .. } => (0, Fault::Throttle { amount: kinds.throttle.0 + below(kinds.throttle.1) }),
                Fault::RefuseWrites { .. } => (200 + below(span / 3), Fault::RefuseWrites { ms: 1500 + below(2500) }),
                // Once every worker has written (signed with its credential).
                Fault::ExpireCredentials => (span / 3 + below(span / 3), fault),
                Fault::SlowMetadata { .. } => (0, Fault::SlowMetadata { ms: 1000 + below(2500) }),
            })
            .collect();
        faults.sort_by_key(|(at, _)| *at);
        Schedule { delay_ms, faults, pick: below(1000), kinds }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task {} ms/item", self.delay_ms)?;
        for (at, fault) in &self.faults {
            match fault {
                Fault::Throttle { .. } | Fault::SlowMetadata { .. } => {
                    write!(f, ", {} from the submission", self.kinds.say(fault))?
                }
                _ => write!(f, ", {}@{:.1}s", self.kinds.say(fault), *at as f64 / 1000.0)?,
            }
        }
        Ok(())
    }
}

/// What a run did and what was wrong with it.
#[derive(Debug, Default)]
pub struct Report {
    /// Each injected fault: its kind, and what was done.
    pub injected: Vec<(String, String)>,
    /// Each broken promise.
    pub problems: Vec<String>,
    /// Masters resumed.
    pub resumes: usize,
    /// How long the run took.
    pub elapsed: Duration,
}

/// The job seed `schedule` runs as `id`, with its outputs at `output` (a
/// URL): 14 one-shard inputs of 1500 bytes for 3 workers, 2 s leases, the
/// master taken for lost after 6 s, the guest's outputs stamped with their
/// attempt. Its inputs, and its job file's text.
pub fn job(id: &str, output: &str, schedule: &Schedule) -> (TestJob, Vec<(String, Vec<u8>)>, String) {
    let files = inputs(FILES, 1500);
    let job = TestJob::new(id, &files);
    job.write_job(
        "tests/guests/misbehave",
        &format!("{{ mode = \"slow\", delay_ms = {}, stamp = true }}", schedule.delay_ms),
        &format!(
            "[cluster]\nworkers = {WORKERS}\ndeadline = \"4m\"\nlease_time = \"2s\"\nmaster_lost_timeout = \"6s\"\n\n\
             [sharding]\ntarget_shard_bytes = 1\nsplit_text = false\n\n[preflight]\nenabled = false\n"
        ),
    );
    let path = job.dir.join("job.toml");
    let text =
        std::fs::read_to_string(&path).expect("the job file").replace("url = \"out\"", &format!("url = \"{output}\""));
    std::fs::write(&path, &text).expect("the job file");
    (job, files, text)
}

/// Runs each seed the runner was asked for (see [`crate::chaos::seeds`]) as
/// job `<prefix>-<seed>` (a seed asked again: `<prefix>-<seed>-<n>`, a job
/// of its own), prints each run and the figures; `left` is what a run where
/// every seed passed says was left (nothing). `package` names the test's
/// package, for the line that says how to run a failed seed again.
pub fn run_seeds(
    runner: &str,
    package: &str,
    prefix: &str,
    kinds: &'static Kinds,
    left: &str,
    mut run: impl FnMut(&Schedule, &str) -> Report,
) -> ExitCode {
    let seeds = match crate::chaos::seeds(runner, kinds.names.len()) {
        Ok(Some(seeds)) => seeds,
        Ok(None) => return ExitCode::SUCCESS,
        Err(code) => return code,
    };
    let mut out = std::io::stdout();
    let mut failed = Vec::new();
    let mut by_kind: BTreeMap<&str, usize> = kinds.names.iter().map(|k| (*k, 0)).collect();
    let mut resumes = 0;
    for (i, &seed) in seeds.iter().enumerate() {
        let schedule = Schedule::from_seed(seed, kinds);
        let id = match seeds[..i].iter().filter(|&&s| s == seed).count() {
            0 => format!("{prefix}-{seed}"),
            n => format!("{prefix}-{seed}-{n}"),
        };
        let report = run(&schedule, &id);
        let verdict = if report.problems.is_empty() { "passed" } else { "FAILED" };
        let _ = writeln!(out, "seed {seed} {verdict} in {:.1} s ({schedule})", report.elapsed.as_secs_f64());
        for (_, what) in &report.injected {
            let _ = writeln!(out, "    injected {what}");
        }
        for p in &report.problems {
            let _ = writeln!(out, "    PROBLEM {p}");
        }
        let _ = out.flush();
        for (kind, _) in &report.injected {
            if let Some(n) = by_kind.get_mut(kind.as_str()) {
                *n += 1;
            }
        }
        resumes += report.resumes;
        if !report.problems.is_empty() {
            failed.push(seed.to_string());
        }
    }
    let n = seeds.len();
    println!("\n{runner}: {n} runs, {} passed, {} failed", n - failed.len(), failed.len());
    let tally: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("faults injected: {}; master resumed {resumes} times", tally.join(", "));
    if failed.is_empty() {
        println!("items lost 0, duplicates 0, {left}");
        ExitCode::SUCCESS
    } else {
        println!(
            "failed seeds: {} (rerun one: cargo test -p {package} --test chaos -- --seed <SEED>)",
            failed.join(" ")
        );
        ExitCode::FAILURE
    }
}

/// Why `job`'s outputs (fetched into its output directory) are not every
/// input of `files` once, each shard committed once, if they are not.
pub fn not_exactly_once(job: &TestJob, files: &[(String, Vec<u8>)]) -> Option<String> {
    let judged = std::panic::catch_unwind(|| assert_exactly_once(job, files));
    judged.err().map(|panic| {
        let said = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("not exactly once: {said}")
    })
}

/// Says, for each injected fault, how many traces it left and what they
/// are: a kill's by the master's `log` (the taken worker's lease expired or
/// a worker launched in its place; masters resumed), the others' by the
/// runner's count (`seen(kind, what)`). A fault that left none is a problem (it tested
/// nothing), unless it was a worker's kill that the master's log shows was
/// moot (see [`Taken::moot`]).
pub fn judge_traces(
    report: &mut Report,
    kinds: &Kinds,
    log: &str,
    taken: &[Taken],
    seen: impl Fn(&str, &str) -> usize,
) {
    report.resumes = log.matches("resumed:").count();
    for (kind, what) in &mut report.injected {
        let n = if kind == kinds.names[0] {
            // The traces of the worker taken, not of any other's loss.
            taken.first().map_or(0, |t| {
                log.matches(&format!("lease expired: worker {} ", t.worker)).count()
                    + log.matches(&format!("launched in place of {} (", t.worker)).count()
            })
        } else if kind == kinds.names[1] {
            report.resumes
        } else {
            seen(kind, what)
        };
        what.push_str(&format!(" ({n} seen: {})", kinds.evidence(kind)));
        let excused = if kind == kinds.names[0] { taken.first().and_then(|t| t.moot(log)) } else { None };
        match excused {
            Some(why) if n == 0 => what.push_str(&format!("; {why}")),
            _ if n == 0 => report.problems.push(format!("{what}: left no trace, so it tested nothing")),
            _ => {}
        }
    }
}

/// Drives a submitted job through its faults: waits for its first lease
/// (by the master's log, `master_log`), injects each of `faults` at its
/// moment from then (`inject` says what it did, or why it could not), and
/// waits for the job's end (its `final.json`). What was injected, and what
/// went wrong, go to `report`.
pub fn drive(
    report: &mut Report,
    kinds: &Kinds,
    job: &TestJob,
    master_log: impl Fn() -> String,
    faults: Vec<(u64, Fault)>,
    mut inject: impl FnMut(&Fault) -> Result<String, String>,
) {
    use crate::cluster::wait_until;
    if !wait_until(Duration::from_secs(150), || master_log().contains(" leased to ")) {
        report.problems.push(format!("no shard was leased in 150 s; the master's log: {}", master_log()));
        return;
    }
    let t0 = std::time::Instant::now();
    for (at, fault) in faults {
        while t0.elapsed() < Duration::from_millis(at) {
            std::thread::sleep(Duration::from_millis(20));
        }
        match inject(&fault) {
            Ok(what) => report.injected.push((kinds.of(&fault).into(), format!("{}: {what}", kinds.say(&fault)))),
            Err(e) => report.problems.push(format!("{} could not be injected: {e}", kinds.say(&fault))),
        }
    }
    let fin = job.state().join("final.json");
    if !wait_until(Duration::from_secs(240), || fin.exists()) {
        report.problems.push(format!("the job did not end in 4 min; the master's log: {}", master_log()));
    }
}

/// The job's end as its `final.json` says, if not `done`: a problem.
pub fn not_done(job: &TestJob) -> Option<String> {
    let fin: Option<serde_json::Value> = mayfly_core::job::read_json(&job.state().join("final.json")).ok();
    let reason = fin.as_ref().and_then(|f| f["reason"].as_str().map(str::to_owned));
    (reason.as_deref() != Some("done")).then(|| format!("the job ended {reason:?}, not done"))
}
