//! Seeded chaos on the Azure emulators (`harness = false`): each seed runs a
//! job through the Functions custom handler's HTTP trigger on VMs the ARM test
//! server makes (the hypervisor boots them), with outputs in Azurite, and
//! meets that seed's faults: a worker's VM deleted, the master's deleted (then
//! the function invoked again until it resumes the job), ARM throttling the
//! compute API (429 with `Retry-After`), Blob storage refusing the job's writes
//! for a while (`ServerBusy`). The function's and the nodes' storage requests
//! go through a TLS proxy that plays those refusals.
//!
//! The checks, per seed: the job ends done; its outputs, fetched from Azurite,
//! are every input once, byte for byte, each shard committed once by one token
//! (`assert_exactly_once`, the commit audit included); every injected fault
//! left its trace; ARM's own records (not the provider's listing) hold no VM
//! of the job, and no NIC or disk of a deleted one; no node process of it is
//! left on this machine.
//!
//! ```text
//! cargo test -p mayfly-tests-azure --test chaos                # seeds 1-4 (CI): each kind once as the first fault
//! cargo test -p mayfly-tests-azure --test chaos -- --runs 20   # seeds 1-20
//! cargo test -p mayfly-tests-azure --test chaos -- --seed 7    # reproduce one
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
use mayfly_tests::proxy::{RefusingProxy, Rule};
use mayfly_tests_azure::{ACCOUNT, Cloud, FunctionApp, cloud, node_log};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};

/// The fault kinds, in the order seeds 1, 2, ... take them as their first.
const KINDS: [&str; 4] = ["kill-worker", "kill-master", "arm-throttle", "blob-refuse"];
const FILES: usize = 14;
const WORKERS: u32 = 3;
const CONTAINER: &str = "mayfly-chaos";

#[derive(Debug, Clone)]
enum Fault {
    /// Azure deletes the VM of a worker that holds a lease.
    KillWorker,
    /// Azure deletes the master's VM; the function is invoked again until it
    /// resumes the job.
    KillMaster,
    /// ARM answers the next `n` compute requests 429 (`Retry-After: 1`),
    /// from the submission.
    ArmThrottle { n: usize },
    /// Blob storage answers every write under the job's outputs `ServerBusy`
    /// (503) for `ms`.
    BlobRefuse { ms: u64 },
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::KillWorker => write!(f, "kill-worker"),
            Fault::KillMaster => write!(f, "kill-master"),
            Fault::ArmThrottle { n } => write!(f, "arm-throttle({n} requests)"),
            Fault::BlobRefuse { ms } => write!(f, "blob-refuse({:.1}s)", *ms as f64 / 1000.0),
        }
    }
}

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Fault::KillWorker => "kill-worker",
            Fault::KillMaster => "kill-master",
            Fault::ArmThrottle { .. } => "arm-throttle",
            Fault::BlobRefuse { .. } => "blob-refuse",
        }
    }
}

/// A seed's plan: the task's time per item and its faults, each at a moment
/// counted from the job's first lease (ARM's throttle from the submission,
/// so that it meets the bootstrap's VMs).
struct Schedule {
    delay_ms: u64,
    faults: Vec<(u64, Fault)>,
    /// Which lease holder a deleted worker is, if none is leased to soon.
    pick: u64,
}

impl Schedule {
    fn from_seed(seed: u64) -> Schedule {
        let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5A5A_A5A5_0DDB_A110);
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
        let span = FILES as u64 * delay_ms / WORKERS as u64;
        let mut faults: Vec<(u64, Fault)> = kinds
            .into_iter()
            .map(|kind| match kind {
                "kill-worker" => (300 + below(span / 2), Fault::KillWorker),
                "kill-master" => (300 + below(span / 2), Fault::KillMaster),
                "arm-throttle" => (0, Fault::ArmThrottle { n: 2 + below(5) as usize }),
                _ => (200 + below(span / 3), Fault::BlobRefuse { ms: 1500 + below(2500) }),
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
                Fault::ArmThrottle { .. } => write!(f, ", {fault} from the submission")?,
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
    let seeds = match mayfly_tests::chaos::seeds("azure chaos", KINDS.len()) {
        Ok(Some(seeds)) => seeds,
        Ok(None) => return ExitCode::SUCCESS,
        Err(code) => return code,
    };
    let cloud = cloud();
    let proxy =
        RefusingProxy::open_tls(&cloud.azurite.endpoint, &cloud.azurite.cert, &cloud.azurite.key, &cloud.azurite.ca);
    let mut out = std::io::stdout();
    let mut failed = Vec::new();
    let mut by_kind: BTreeMap<String, usize> = KINDS.iter().map(|k| (k.to_string(), 0)).collect();
    let mut resumes = 0;
    for (i, &seed) in seeds.iter().enumerate() {
        let schedule = Schedule::from_seed(seed);
        // A seed asked again runs as a job of its own (its outputs elsewhere).
        let id = match seeds[..i].iter().filter(|&&s| s == seed).count() {
            0 => format!("az-chaos-{seed}"),
            n => format!("az-chaos-{seed}-{n}"),
        };
        let report = run(cloud, &proxy, &schedule, &id);
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
    println!("\nazure chaos: {n} runs, {} passed, {} failed", n - failed.len(), failed.len());
    let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("faults injected: {}; master resumed {resumes} times", kinds.join(", "));
    if failed.is_empty() {
        println!("items lost 0, duplicates 0, VMs left 0, NICs and disks left 0, node processes left 0");
        ExitCode::SUCCESS
    } else {
        println!(
            "failed seeds: {} (rerun one: cargo test -p mayfly-tests-azure --test chaos -- --seed <SEED>)",
            failed.join(" ")
        );
        ExitCode::FAILURE
    }
}

/// Runs one seed's job with its faults, and judges it.
fn run(cloud: &Cloud, proxy: &RefusingProxy, schedule: &Schedule, id: &str) -> Report {
    let started = Instant::now();
    let mut report = Report::default();
    let files = inputs(FILES, 1500);
    let job = TestJob::new(id, &files);
    let store = cloud.container(CONTAINER);
    let output = format!("az://{CONTAINER}/out-{id}");
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

    // The function and the nodes reach Blob storage only through the proxy.
    let storage = format!("{}/{ACCOUNT}", proxy.endpoint);
    let app = FunctionApp::start(cloud, &[("storage_endpoint", storage.as_str())]);
    let payload = FunctionApp::http_payload(&serde_json::json!({ "job": text, "base_dir": job.dir }));
    // The HTTP trigger's answer: (status, body).
    let ask = || {
        let (_, answer) = app.invoke("run", &payload);
        let res = &answer["Outputs"]["res"];
        (res["statusCode"].as_u64().unwrap_or(0), res["body"].as_str().unwrap_or_default().to_owned())
    };

    let mut hits = Vec::new();
    let throttled_before = cloud.arm.throttled();
    let mut pending = Vec::new();
    for (at, fault) in &schedule.faults {
        if let Fault::ArmThrottle { n } = fault {
            cloud.arm.throttle("Microsoft.Compute/virtualMachines", *n);
            report.injected.push((fault.kind().into(), format!("{fault}: from the submission")));
        } else {
            pending.push((*at, fault.clone()));
        }
    }
    match ask() {
        (200, _) => {}
        (status, body) => report.problems.push(format!("the function answered {status}: {body}")),
    }
    let master = || node_log(id, "master");
    if report.problems.is_empty() && !wait_until(Duration::from_secs(150), || master().contains(" leased to ")) {
        report.problems.push(format!("no shard was leased in 150 s; the master's log: {}", master()));
    }
    let mut taken = Vec::new();
    let fin = job.state().join("final.json");
    if report.problems.is_empty() {
        let t0 = Instant::now();
        for (at, fault) in pending {
            while t0.elapsed() < Duration::from_millis(at) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let injected = match &fault {
                Fault::KillWorker => (|| {
                    let vms = vms_of(cloud, id);
                    let (worker, vm) = worker_to_take(master, &vms, schedule.pick)?;
                    let took = Taken::now(&master(), &worker)?;
                    cloud.arm.delete_vm(&vm);
                    taken.push(took);
                    Ok(format!("{worker} ({vm})"))
                })(),
                Fault::KillMaster => (|| {
                    let vm = vms_of(cloud, id).remove("master").ok_or_else(|| "no VM is the master".to_owned())?;
                    cloud.arm.delete_vm(&vm);
                    // As the trigger's retries would: ask again until the
                    // function resumes the job; before the master is silent
                    // long enough, it refuses, saying why.
                    let deadline = Instant::now() + Duration::from_secs(90);
                    loop {
                        std::thread::sleep(Duration::from_secs(2));
                        match ask() {
                            (200, _) => return Ok(format!("master ({vm}), then resumed")),
                            (_, body) if body.contains("master was heard from") && Instant::now() < deadline => {}
                            (status, body) => return Err(format!("the function answered {status}: {body}")),
                        }
                    }
                })(),
                Fault::BlobRefuse { ms } => {
                    let needle = format!("/{ACCOUNT}/{CONTAINER}/out-{id}/");
                    let rule = Rule::blob("PUT", &needle, "503 Service Unavailable", "ServerBusy");
                    hits.push((fault.to_string(), proxy.refuse(rule.lasting(Duration::from_millis(*ms)))));
                    Ok(format!("writes under {output}/"))
                }
                Fault::ArmThrottle { .. } => Err("set at the submission".to_owned()),
            };
            match injected {
                Ok(what) => report.injected.push((fault.kind().into(), format!("{fault}: {what}"))),
                Err(e) => report.problems.push(format!("{fault} could not be injected: {e}")),
            }
        }
        if !wait_until(Duration::from_secs(240), || fin.exists()) {
            let vms: Vec<String> =
                cloud.arm.vms(id).iter().map(|v| format!("{} ({}, {})", v.name(), v.state, v.power)).collect();
            report
                .problems
                .push(format!("the job did not end in 4 min; ARM's VMs: {vms:?}; the master's log: {}", master()));
        }
    }
    cloud.arm.throttle("Microsoft.Compute/virtualMachines", 0);
    check(cloud, &store, id, &job, &files, &mut report);
    // Each fault's trace.
    let log = master();
    report.resumes = log.matches("resumed:").count();
    let throttled = cloud.arm.throttled() - throttled_before;
    for (kind, what) in &mut report.injected {
        let seen = match kind.as_str() {
            "kill-worker" => log.matches("lease expired: worker").count() + log.matches("launched in place of").count(),
            "kill-master" => report.resumes,
            "arm-throttle" => throttled,
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
    drop(app);
    report.elapsed = started.elapsed();
    report
}

fn evidence_of(kind: &str) -> &'static str {
    match kind {
        "kill-worker" => "leases expired and workers replaced, by the master's log",
        "kill-master" => "masters resumed",
        "arm-throttle" => "ARM requests throttled",
        _ => "Blob writes refused",
    }
}

/// The job's nodes and their VMs, by ARM's own records.
fn vms_of(cloud: &Cloud, id: &str) -> BTreeMap<String, String> {
    cloud
        .arm
        .vms(id)
        .iter()
        .filter(|v| v.state != "Deleting")
        .filter_map(|v| v.tag("mayfly:node").map(|n| (n.to_owned(), v.name().to_owned())))
        .collect()
}

/// The promises: done; every input once in Blob storage, each shard committed
/// once; nothing of the job left in ARM or on this machine.
fn check(
    cloud: &Cloud,
    store: &object_store::azure::MicrosoftAzure,
    id: &str,
    job: &TestJob,
    files: &[(String, Vec<u8>)],
    report: &mut Report,
) {
    let fin: Option<serde_json::Value> = mayfly_core::job::read_json(&job.state().join("final.json")).ok();
    let reason = fin.as_ref().and_then(|f| f["reason"].as_str().map(str::to_owned));
    if reason.as_deref() != Some("done") {
        report.problems.push(format!("the job ended {reason:?}, not done"));
    }
    match download(store, &format!("out-{id}"), &job.out()) {
        Ok(()) => {
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
        Err(e) => report.problems.push(format!("fetching the outputs: {e}")),
    }
    // ARM's records: no VM of the job, and nothing a deleted one left.
    let billing = || cloud.arm.vms(id).iter().map(|v| format!("{} ({})", v.name(), v.state)).collect::<Vec<_>>();
    if !wait_until(Duration::from_secs(60), || billing().is_empty()) {
        report.problems.push(format!("VMs left, by ARM: {:?}", billing()));
    }
    let orphans = cloud.arm.orphans(id);
    if !orphans.is_empty() {
        report.problems.push(format!("NICs or disks left, by ARM: {orphans:?}"));
    }
    let processes = || mayfly_tests::job_processes(id);
    if !wait_until(Duration::from_secs(20), || processes().is_empty()) {
        report.problems.push(format!("node processes left: {:?}", processes()));
    }
}

/// Copies every blob under `prefix` into `dir` (the tests' own client,
/// straight to Azurite).
fn download(store: &object_store::azure::MicrosoftAzure, prefix: &str, dir: &std::path::Path) -> Result<(), String> {
    use futures::TryStreamExt;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let listed: Vec<_> =
            store.list(Some(&ObjPath::from(prefix))).try_collect().await.map_err(|e| format!("listing: {e}"))?;
        for meta in listed {
            let key = meta.location.to_string();
            let rest = key.strip_prefix(prefix).unwrap_or(&key).trim_start_matches('/');
            let bytes = store.get(&meta.location).await.map_err(|e| format!("{key}: {e}"))?;
            let bytes = bytes.bytes().await.map_err(|e| format!("{key}: {e}"))?;
            let path = dir.join(rest);
            std::fs::create_dir_all(path.parent().unwrap_or(dir)).map_err(|e| e.to_string())?;
            std::fs::write(&path, &bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
    })
}
