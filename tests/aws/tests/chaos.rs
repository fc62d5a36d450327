//! Seeded chaos on the AWS emulator (`harness = false`): each seed runs a job
//! through the Lambda entrypoint on moto's EC2 (the hypervisor boots its
//! instances) with outputs in moto's S3, and meets that seed's faults: a
//! worker's instance terminated, the master's terminated (then the function
//! asked again until it resumes the job), EC2's API throttled, S3 refusing the
//! job's writes for a while. Every request of the function and the nodes goes
//! through a proxy that plays those refusals; the observers (the AWS CLI, the
//! hypervisor) talk to moto straight.
//!
//! The checks, per seed: the job ends done; its outputs, fetched with the AWS
//! CLI, are every input once, byte for byte, each shard committed once by one
//! token (`assert_exactly_once`, the commit audit included); every injected
//! fault left its trace; the CLI sees no instance of the job that may still
//! bill, and no node process of it is left on this machine.
//!
//! ```text
//! cargo test -p mayfly-tests-aws --test chaos                # seeds 1-4 (CI): each kind once as the first fault
//! cargo test -p mayfly-tests-aws --test chaos -- --runs 20   # seeds 1-20
//! cargo test -p mayfly-tests-aws --test chaos -- --seed 7    # reproduce one
//! ```
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mayfly_tests::XorShift;
use mayfly_tests::chaos::{Taken, worker_to_take};
use mayfly_tests::cluster::{TestJob, assert_exactly_once, inputs, wait_until};
use mayfly_tests_aws::{MotoExt, RefusingProxy, Rule, RuntimeApi, aws_cli, moto, node_log};

/// The fault kinds, in the order seeds 1, 2, ... take them as their first.
const KINDS: [&str; 4] = ["kill-worker", "kill-master", "ec2-throttle", "s3-refuse"];
const FILES: usize = 14;
const WORKERS: u32 = 3;
const BUCKET: &str = "mayfly-chaos";

#[derive(Debug, Clone)]
enum Fault {
    /// EC2 terminates the instance of a worker that holds a lease.
    KillWorker,
    /// EC2 terminates the master's instance; the function is asked again
    /// until it resumes the job.
    KillMaster,
    /// EC2 answers every API call `RequestLimitExceeded` (503) for `ms`.
    Ec2Throttle { ms: u64 },
    /// S3 answers every write under the job's outputs `SlowDown` (503) for `ms`.
    S3Refuse { ms: u64 },
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::KillWorker => write!(f, "kill-worker"),
            Fault::KillMaster => write!(f, "kill-master"),
            Fault::Ec2Throttle { ms } => write!(f, "ec2-throttle({:.1}s)", *ms as f64 / 1000.0),
            Fault::S3Refuse { ms } => write!(f, "s3-refuse({:.1}s)", *ms as f64 / 1000.0),
        }
    }
}

/// A seed's plan: the task's time per item and its faults, each at a moment
/// counted from the job's first lease (an EC2 throttle from the submission,
/// so that it meets the bootstrap's launch).
struct Schedule {
    delay_ms: u64,
    faults: Vec<(u64, Fault)>,
    /// Which lease holder a killed worker is (an index, modulo their number).
    pick: u64,
}

impl Schedule {
    fn from_seed(seed: u64) -> Schedule {
        let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5A5_5A5A_F00D_CAFE);
        for _ in 0..8 {
            rng.next();
        }
        let mut below = |n: u64| rng.next() % n;
        let delay_ms = 400 + below(400);
        let mut kinds = vec![KINDS[((seed.max(1) - 1) % KINDS.len() as u64) as usize]];
        if below(2) == 1 {
            let other = KINDS[below(KINDS.len() as u64) as usize];
            if !kinds.contains(&other) {
                kinds.push(other);
            }
        }
        // How long the work takes without faults, roughly.
        let span = FILES as u64 * delay_ms / WORKERS as u64;
        let mut faults: Vec<(u64, Fault)> = kinds
            .into_iter()
            .map(|kind| match kind {
                "kill-worker" => (300 + below(span / 2), Fault::KillWorker),
                "kill-master" => (300 + below(span / 2), Fault::KillMaster),
                "ec2-throttle" => (0, Fault::Ec2Throttle { ms: 2000 + below(3000) }),
                _ => (200 + below(span / 3), Fault::S3Refuse { ms: 1500 + below(2500) }),
            })
            .collect();
        faults.sort_by_key(|(at, _)| *at);
        Schedule { delay_ms, faults, pick: below(1000) }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task {} ms/item", self.delay_ms)?;
        for (at, fault) in &self.faults {
            match fault {
                Fault::Ec2Throttle { .. } => write!(f, ", {fault} from the submission")?,
                _ => write!(f, ", {fault}@{:.1}s", *at as f64 / 1000.0)?,
            }
        }
        Ok(())
    }
}

/// What a run did and what was wrong with it.
#[derive(Default)]
struct Report {
    injected: Vec<(String, String)>,
    problems: Vec<String>,
    resumes: usize,
    elapsed: Duration,
}

fn main() -> ExitCode {
    let seeds = match mayfly_tests::chaos::seeds("aws chaos", KINDS.len()) {
        Ok(Some(seeds)) => seeds,
        Ok(None) => return ExitCode::SUCCESS,
        Err(code) => return code,
    };
    moto().create_bucket(BUCKET);
    let mut out = std::io::stdout();
    let mut failed = Vec::new();
    let mut by_kind: BTreeMap<String, usize> = KINDS.iter().map(|k| (k.to_string(), 0)).collect();
    let mut resumes = 0;
    for (i, &seed) in seeds.iter().enumerate() {
        let schedule = Schedule::from_seed(seed);
        // A seed asked again runs as a job of its own (its outputs elsewhere).
        let again = seeds[..i].iter().filter(|&&s| s == seed).count();
        let id = match again {
            0 => format!("aws-chaos-{seed}"),
            n => format!("aws-chaos-{seed}-{n}"),
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
            *by_kind.entry(kind.clone()).or_default() += 1;
        }
        resumes += report.resumes;
        if !report.problems.is_empty() {
            failed.push(seed.to_string());
        }
    }
    let n = seeds.len();
    println!("\naws chaos: {n} runs, {} passed, {} failed", n - failed.len(), failed.len());
    let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("faults injected: {}; master resumed {resumes} times", kinds.join(", "));
    if failed.is_empty() {
        println!("items lost 0, duplicates 0, instances left 0, node processes left 0");
        ExitCode::SUCCESS
    } else {
        println!(
            "failed seeds: {} (rerun one: cargo test -p mayfly-tests-aws --test chaos -- --seed <SEED>)",
            failed.join(" ")
        );
        ExitCode::FAILURE
    }
}

/// Runs one seed's job with its faults, and judges it.
fn run(schedule: &Schedule, id: &str) -> Report {
    let started = Instant::now();
    let mut report = Report::default();
    let files = inputs(FILES, 1500);
    let job = TestJob::new(id, &files);
    let output = format!("s3://{BUCKET}/out-{id}");
    job.write_job(
        "tests/guests/misbehave",
        &format!("{{ mode = \"slow\", delay_ms = {}, stamp = true }}", schedule.delay_ms),
        &format!(
            "[cluster]\nworkers = {WORKERS}\ndeadline = \"4m\"\nlease_time = \"2s\"\nmaster_lost_timeout = \"6s\"\n\n\
             [sharding]\ntarget_shard_bytes = 1\nsplit_text = false\n\n[preflight]\nenabled = false\n"
        ),
    );
    let path = job.dir.join("job.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace("url = \"out\"", &format!("url = \"{output}\""));
    std::fs::write(&path, &text).unwrap();

    // The function and the nodes reach moto only through the proxy.
    let proxy = RefusingProxy::open(&moto().endpoint);
    let mut settings = moto().settings();
    settings.insert("endpoint_url".into(), proxy.endpoint.clone().into());
    let api = RuntimeApi::start();
    let mut function = mayfly_tests_aws::lambda_function(&api, &settings);
    let event = serde_json::json!({ "job": text, "base_dir": job.dir }).to_string();
    let mut asked = 0;
    let mut ask = || {
        asked += 1;
        api.events.send((format!("req-{asked}"), mayfly_provider_api::now_ms() + 120_000, event.clone())).unwrap();
        api.answers.recv_timeout(Duration::from_secs(150)).map(|(_, kind, body)| (kind, body))
    };

    let mut hits = Vec::new();
    let mut taken = Vec::new();
    let mut pending: Vec<(u64, Fault)> = Vec::new();
    for (at, fault) in &schedule.faults {
        if let Fault::Ec2Throttle { ms } = fault {
            // Every EC2 API call (its query API's version), not STS's or S3's.
            let rule = Rule::ec2("Version=2016-11-15", "503 Service Unavailable", "RequestLimitExceeded");
            hits.push((fault.to_string(), proxy.refuse(rule.lasting(Duration::from_millis(*ms)))));
            report.injected.push(("ec2-throttle".into(), format!("{fault}: from the submission")));
        } else {
            pending.push((*at, fault.clone()));
        }
    }
    match ask() {
        Ok((kind, _)) if kind == "response" => {}
        Ok((kind, body)) => report.problems.push(format!("the function answered {kind}: {body}")),
        Err(e) => report.problems.push(format!("the function did not answer: {e}")),
    }
    let master = || node_log(id, "master");
    if report.problems.is_empty() && !wait_until(Duration::from_secs(150), || master().contains(" leased to ")) {
        report.problems.push(format!("no shard was leased in 150 s; the master's log: {}", master()));
    }
    let fin = job.state().join("final.json");
    if report.problems.is_empty() {
        let t0 = Instant::now();
        for (at, fault) in pending {
            while t0.elapsed() < Duration::from_millis(at) {
                std::thread::sleep(Duration::from_millis(20));
            }
            match inject(&job, &fault, schedule.pick, &proxy, &mut ask, &mut hits, &mut taken) {
                Ok(what) => report.injected.push((fault_kind(&fault).into(), format!("{fault}: {what}"))),
                Err(e) => report.problems.push(format!("{fault} could not be injected: {e}")),
            }
        }
        if !wait_until(Duration::from_secs(240), || fin.exists()) {
            report.problems.push(format!("the job did not end in 4 min; the master's log: {}", master()));
        }
    }
    check(id, &job, &files, &output, &mut report);
    // Each fault's trace.
    let log = master();
    report.resumes = log.matches("resumed:").count();
    for (kind, what) in &mut report.injected {
        let seen = match kind.as_str() {
            "kill-worker" => log.matches("lease expired: worker").count() + log.matches("launched in place of").count(),
            "kill-master" => report.resumes,
            _ => hits.iter().find(|(f, _)| what.starts_with(f.as_str())).map_or(0, |(_, n)| n.load(Ordering::Relaxed)),
        };
        what.push_str(&format!(" ({seen} seen: {})", evidence_of(kind)));
        let excused = if kind == "kill-worker" { taken.first().and_then(|t| t.moot(&log)) } else { None };
        match excused {
            Some(why) if seen == 0 => what.push_str(&format!("; {why}")),
            _ if seen == 0 => report.problems.push(format!("{what}: left no trace, so it tested nothing")),
            _ => {}
        }
    }
    let _ = function.kill();
    let _ = function.wait();
    report.elapsed = started.elapsed();
    report
}

fn fault_kind(fault: &Fault) -> &'static str {
    match fault {
        Fault::KillWorker => "kill-worker",
        Fault::KillMaster => "kill-master",
        Fault::Ec2Throttle { .. } => "ec2-throttle",
        Fault::S3Refuse { .. } => "s3-refuse",
    }
}

fn evidence_of(kind: &str) -> &'static str {
    match kind {
        "kill-worker" => "leases expired and workers replaced, by the master's log",
        "kill-master" => "masters resumed",
        "ec2-throttle" => "EC2 calls refused",
        _ => "S3 writes refused",
    }
}

/// Injects one fault (an EC2 throttle is a rule set at the submission).
fn inject(
    job: &TestJob,
    fault: &Fault,
    pick: u64,
    proxy: &RefusingProxy,
    ask: &mut impl FnMut() -> Result<(String, String), std::sync::mpsc::RecvTimeoutError>,
    hits: &mut Vec<(String, std::sync::Arc<std::sync::atomic::AtomicUsize>)>,
    taken: &mut Vec<Taken>,
) -> Result<String, String> {
    let id = job.id.as_str();
    match fault {
        Fault::KillWorker => {
            let instances = instances_of(id, job)?;
            let (worker, instance) = worker_to_take(|| node_log(id, "master"), &instances, pick)?;
            let took = Taken::now(&node_log(id, "master"), &worker)?;
            terminate(&instance)?;
            taken.push(took);
            Ok(format!("{worker} ({instance})"))
        }
        Fault::KillMaster => {
            let instance = instances_of(id, job)?.remove("master").ok_or("no instance is the master")?;
            terminate(&instance)?;
            // As a trigger's retries would: ask again until the function
            // resumes the job; before the master is silent long enough, it
            // refuses, saying why.
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                std::thread::sleep(Duration::from_secs(2));
                match ask() {
                    Ok((kind, _)) if kind == "response" => return Ok(format!("master ({instance}), then resumed")),
                    Ok((_, body)) if body.contains("master was heard from") && Instant::now() < deadline => {}
                    Ok((kind, body)) => return Err(format!("the function answered {kind}: {body}")),
                    Err(e) => return Err(format!("the function did not answer: {e}")),
                }
            }
        }
        Fault::S3Refuse { ms } => {
            let path = format!("/{BUCKET}/out-{id}/");
            let rule = Rule::s3("PUT", &path, "503 Slow Down", "SlowDown");
            hits.push((fault.to_string(), proxy.refuse(rule.lasting(Duration::from_millis(*ms)))));
            Ok(format!("writes under s3:/{path}"))
        }
        Fault::Ec2Throttle { .. } => Err("set at the submission".into()),
    }
}

/// The job's nodes now and their instances, by the provider's listing
/// (straight to moto).
fn instances_of(id: &str, job: &TestJob) -> Result<BTreeMap<String, String>, String> {
    let mut selection = mayfly_data::provider::Selection { name: None, ..Default::default() };
    selection.path = Some(mayfly_tests_aws::aws_plugin());
    selection.settings = moto().settings();
    let p = mayfly_data::provider::ProviderHandle::select(&selection).map_err(|e| e.to_string())?;
    let state = job.state().to_string_lossy().into_owned();
    let nodes = p.list(id, &state).map_err(|e| e.to_string())?;
    Ok(nodes.into_iter().map(|n| (n.node, n.id)).collect())
}

/// EC2 takes the instance away (an EC2 client straight to moto: in a few
/// milliseconds, where the AWS CLI would take most of a second to start).
fn terminate(instance: &str) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let ec2 = moto().ec2();
    rt.block_on(ec2.terminate_instances().instance_ids(instance).send())
        .map(|_| ())
        .map_err(|e| aws_sdk_ec2::error::DisplayErrorContext(e).to_string())
}

/// The promises: done; every input once in S3 (fetched by the CLI), each
/// shard committed once; nothing of the job left running.
fn check(id: &str, job: &TestJob, files: &[(String, Vec<u8>)], output: &str, report: &mut Report) {
    let fin: Option<serde_json::Value> = mayfly_core::job::read_json(&job.state().join("final.json")).ok();
    let reason = fin.as_ref().and_then(|f| f["reason"].as_str().map(str::to_owned));
    if reason.as_deref() != Some("done") {
        report.problems.push(format!("the job ended {reason:?}, not done"));
    }
    let fetched = aws_cli(moto()).args(["s3", "cp", "--recursive", "--quiet", output]).arg(job.out()).output();
    match fetched {
        Ok(o) if o.status.success() => {
            let judged = std::panic::catch_unwind(|| assert_exactly_once(job, files));
            if let Err(panic) = judged {
                let said = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                report.problems.push(format!("not exactly once: {said}"));
            }
        }
        Ok(o) => report.problems.push(format!("aws s3 cp {output}: {}", String::from_utf8_lossy(&o.stderr))),
        Err(e) => report.problems.push(format!("aws s3 cp: {e}")),
    }
    // The observers: the AWS CLI for instances, /proc for node processes.
    let billing = || -> Vec<String> {
        let filter = format!("Name=tag:mayfly:job,Values={id}");
        let Ok(out) = aws_cli(moto()).args(["ec2", "describe-instances", "--filters", &filter]).output() else {
            return vec!["the AWS CLI did not run".into()];
        };
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut left = Vec::new();
        for r in answer["Reservations"].as_array().into_iter().flatten() {
            for i in r["Instances"].as_array().into_iter().flatten() {
                let state = i["State"]["Name"].as_str().unwrap_or_default();
                if matches!(state, "pending" | "running" | "stopping" | "stopped") {
                    left.push(format!("{} ({state})", i["InstanceId"].as_str().unwrap_or_default()));
                }
            }
        }
        left
    };
    if !wait_until(Duration::from_secs(60), || billing().is_empty()) {
        report.problems.push(format!("instances left, by the AWS CLI: {:?}", billing()));
    }
    let processes = || mayfly_tests::job_processes(id);
    if !wait_until(Duration::from_secs(20), || processes().is_empty()) {
        report.problems.push(format!("node processes left: {:?}", processes()));
    }
}
