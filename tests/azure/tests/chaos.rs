//! Seeded chaos on the Azure emulators (`harness = false`): each seed runs a
//! job through the Functions custom handler's HTTP trigger on VMs the ARM test
//! server makes (the hypervisor boots them), with outputs in Azurite, and
//! meets that seed's faults: a worker's VM deleted, the master's deleted (then
//! the function invoked again until it resumes the job), ARM throttling the
//! compute API (429 with `Retry-After`), Blob storage refusing the job's writes
//! for a while (`ServerBusy`), Blob storage refusing the tokens it has seen as
//! expired (long before their time), every VM's metadata service answering
//! late. The function's and the nodes' storage requests go through a TLS
//! proxy that plays the refusals.
//!
//! The checks, per seed: the job ends done; its outputs, fetched from Azurite,
//! are every input once, byte for byte, each shard committed once by one token
//! (`assert_exactly_once`, the commit audit included); every injected fault
//! left its trace; ARM's own records (not the provider's listing) hold no VM
//! of the job, and no NIC or disk of a deleted one; no node process of it is
//! left on this machine; no node failed to delete its own VM.
//!
//! ```text
//! cargo test -p mayfly-tests-azure --test chaos                # seeds 1-6 (CI): each kind once as the first fault
//! cargo test -p mayfly-tests-azure --test chaos -- --runs 20   # seeds 1-20
//! cargo test -p mayfly-tests-azure --test chaos -- --seed 7    # reproduce one
//! ```
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mayfly_tests::chaos::{Taken, worker_to_take};
use mayfly_tests::cloud_chaos::{self, Fault, Kinds, Report, Schedule};
use mayfly_tests::cluster::{TestJob, wait_until};
use mayfly_tests::proxy::{RefusingProxy, Rule};
use mayfly_tests_azure::{ACCOUNT, Cloud, FunctionApp, SLOW_METADATA, cloud, node_lines, node_log};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};

/// The faults, in the order seeds 1, 2, ... take them as their first: a
/// worker's VM deleted, the master's, ARM answering the next 2-6 compute
/// requests 429 (`Retry-After: 1`), Blob storage answering every write
/// under the job's outputs `ServerBusy` (503), Blob storage answering every
/// request with a token seen so far `InvalidAuthenticationInfo` (401, as
/// for an expired token; the tokens live 10 min here), every VM's metadata
/// service (its managed identity's tokens included) answering 1-3.5 s late.
static KINDS: Kinds = Kinds {
    names: ["kill-worker", "kill-master", "arm-throttle", "blob-refuse", "blob-expired", "imds-slow"],
    throttle: (2, 5),
    say_throttle: |n| format!("{n} requests"),
    evidence: [
        "ARM requests throttled",
        "Blob writes refused",
        "Blob requests refused as expired",
        "IMDS answers late",
    ],
};
const CONTAINER: &str = "mayfly-chaos";
/// What ARM throttles: the compute API's VMs.
const COMPUTE: &str = "Microsoft.Compute/virtualMachines";

fn main() -> ExitCode {
    let cloud = cloud();
    // Tokens that would outlive a job, as Entra ID's do (an hour or more): a
    // token refused before its time is then not renewed by its age alone.
    cloud.tokens.set_ttl(600);
    let azurite = &cloud.azurite;
    let proxy = RefusingProxy::open_tls(&azurite.endpoint, &azurite.cert, &azurite.key, &azurite.ca);
    cloud_chaos::run_seeds(
        "azure chaos",
        "mayfly-tests-azure",
        "az-chaos",
        &KINDS,
        "VMs left 0, NICs and disks left 0, node processes left 0",
        |schedule, id| run(cloud, &proxy, schedule, id),
    )
}

/// Runs one seed's job with its faults, and judges it.
fn run(cloud: &Cloud, proxy: &RefusingProxy, schedule: &Schedule, id: &str) -> Report {
    let started = Instant::now();
    let mut report = Report::default();
    let store = cloud.container(CONTAINER);
    let output = format!("az://{CONTAINER}/out-{id}");
    let (job, files, text) = cloud_chaos::job(id, &output, schedule);

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
    let mut taken = Vec::new();
    let throttled_before = cloud.arm.throttled();
    let mut pending = Vec::new();
    let late_before = SLOW_METADATA.late();
    for &(at, fault) in &schedule.faults {
        match fault {
            Fault::Throttle { amount } => cloud.arm.throttle(COMPUTE, amount as usize),
            // To the job's end (cleared below).
            Fault::SlowMetadata { ms } => SLOW_METADATA.set(Duration::from_millis(ms), Duration::from_secs(600)),
            _ => {
                pending.push((at, fault));
                continue;
            }
        }
        report.injected.push((KINDS.of(&fault).into(), format!("{}: from the submission", KINDS.say(&fault))));
    }
    let master = || node_log(id, "master");
    match ask() {
        (200, _) => cloud_chaos::drive(&mut report, &KINDS, &job, master, pending, |fault| match fault {
            Fault::KillWorker => {
                let (worker, vm) = worker_to_take(master, &vms_of(cloud, id), schedule.pick)?;
                let took = Taken::now(&master(), &worker)?;
                cloud.arm.delete_vm(&vm);
                taken.push(took);
                Ok(format!("{worker} ({vm})"))
            }
            Fault::KillMaster => {
                let vm = vms_of(cloud, id).remove("master").ok_or("no VM is the master")?;
                cloud.arm.delete_vm(&vm);
                // As the trigger's retries would: ask again until the function
                // resumes the job; before the master is silent long enough,
                // it refuses, saying why.
                let deadline = Instant::now() + Duration::from_secs(90);
                loop {
                    std::thread::sleep(Duration::from_secs(2));
                    match ask() {
                        (200, _) => return Ok(format!("master ({vm}), then resumed")),
                        (_, body) if body.contains("master was heard from") && Instant::now() < deadline => {}
                        (status, body) => return Err(format!("the function answered {status}: {body}")),
                    }
                }
            }
            Fault::RefuseWrites { ms } => {
                let needle = format!("/{ACCOUNT}/{CONTAINER}/out-{id}/");
                let rule = Rule::blob("PUT", &needle, "503 Service Unavailable", "ServerBusy");
                hits.push((KINDS.say(fault), proxy.refuse(rule.lasting(Duration::from_millis(*ms)))));
                Ok(format!("writes under {output}/"))
            }
            Fault::ExpireCredentials => {
                let tokens = proxy.credentials_seen();
                hits.push((KINDS.say(fault), proxy.expire_seen(Rule::blob_expired())));
                Ok(format!("the {tokens} tokens Blob storage has seen"))
            }
            Fault::Throttle { .. } | Fault::SlowMetadata { .. } => Err("set at the submission".into()),
        }),
        (status, body) => report.problems.push(format!("the function answered {status}: {body}")),
    }
    cloud.arm.throttle(COMPUTE, 0);
    SLOW_METADATA.clear();
    check(cloud, &store, id, &job, &files, &mut report);
    let throttled = cloud.arm.throttled() - throttled_before;
    let late = SLOW_METADATA.late() - late_before;
    let counted = |kind: &str, what: &str| match kind {
        "arm-throttle" => throttled,
        "imds-slow" => late,
        _ => hits.iter().find(|(f, _)| what.starts_with(f.as_str())).map_or(0, |(_, n)| n.load(Ordering::Relaxed)),
    };
    cloud_chaos::judge_traces(&mut report, &KINDS, &master(), &taken, counted);
    drop(app);
    report.elapsed = started.elapsed();
    report
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
    report.problems.extend(cloud_chaos::not_done(job));
    match download(store, &format!("out-{id}"), &job.out()) {
        Ok(()) => report.problems.extend(cloud_chaos::not_exactly_once(job, files)),
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
    // A node that did not know its own VM at the end left the deletion to
    // its boot script's backstop: no node may rely on that.
    for line in node_lines(id, "not on an Azure VM") {
        report.problems.push(format!("a node could not end its own VM: {line}"));
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
