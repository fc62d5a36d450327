//! Regression tests for what the chaos suite (`tests/tests/chaos.rs`) found,
//! each a fault the suite injects at random, here at a fixed point:
//! - commit markers unwritable for a while failed shards for good (each
//!   refused commit used an attempt, retried at once);
//! - a node whose log could not be written died (`eprintln!` panics), so a
//!   brief outage of the state location ended the whole cluster;
//! - a credential issuer down for a second or two drained every worker
//!   (three refresh failures in a row came within a second);
//! - a worker stopped (SIGSTOP) when `mayfly run` exited was killed by the
//!   kernel's SIGHUP to its orphaned process group, not ended by the rules.

use std::time::Duration;

use mayfly_tests::chaos::{Immutable, IssuerDown};
use mayfly_tests::cluster::{TestJob, assert_exactly_once, inputs, text, wait_until};

const SLOW: &str = "tests/guests/misbehave";

/// The job's commit log, under its output.
const COMMIT_LOG: &str = mayfly_core::job::Layout::COMMIT_LOG;

/// How many shards the job has committed so far, as its commit log says.
fn committed(job: &TestJob) -> usize {
    let layout = mayfly_core::job::Layout::local(&job.dir.join("state"), &job.id, &job.out());
    mayfly_core::commits::read(&layout).map(|c| c.len()).unwrap_or(0)
}

fn job_text(workers: u32, extra: &str) -> String {
    format!(
        "{extra}\n[cluster]\nworkers = {workers}\ndeadline = \"60s\"\nlease_time = \"1s\"\nidle_timeout = \"60s\"\nmaster_lost_timeout = \"60s\"\n\n\
         [sharding]\ntarget_shard_bytes = 1\nsplit_text = false\n"
    )
}

/// Every worker's log ends by the rules (once every process is gone): it was not killed by its log, its
/// credentials or anything else.
fn every_worker_ended_with_the_job(job: &TestJob, workers: u32) {
    for w in 1..=workers {
        let log = job.log(&format!("worker-{w}"));
        assert!(log.contains("ending: the job is done"), "worker-{w}: {log}");
    }
}

#[test]
fn the_commit_log_unwritable_for_a_while_costs_time_not_shards() {
    let files = inputs(16, 200);
    let job = TestJob::new("commits-down", &files);
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 200 }", &job_text(2, ""));
    let run = job.spawn();
    assert!(wait_until(Duration::from_secs(60), || committed(&job) >= 2));
    let lock = Immutable::set(&[job.out().join(COMMIT_LOG)]).unwrap();
    // Long enough for several commits to be refused (and, before, to use up three attempts).
    assert!(wait_until(Duration::from_secs(30), || job.log("master").matches("recording the commit").count() >= 4));
    std::thread::sleep(Duration::from_millis(1500));
    drop(lock);
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_exactly_once(&job, &files);
    let log = job.log("master");
    assert!(!log.contains("attempt failed"), "a refused commit uses no attempt: {log}");
    job.assert_nothing_left(Duration::from_secs(10));
    every_worker_ended_with_the_job(&job, 2);
}

/// Runs a 6-shard job with `limits` whose commit log becomes unwritable for
/// good once the first commit is in it; checks that it ended, by one of the
/// storage bounds, long before its 60 s deadline, with exit code 1 and nothing
/// left. Returns the run's output and its `final.json`.
fn run_with_commits_unwritable_for_good(id: &str, limits: &str) -> (std::process::Output, serde_json::Value) {
    let job = TestJob::new(id, &inputs(6, 200));
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 200 }", &job_text(2, limits));
    let started = std::time::Instant::now();
    let run = job.spawn();
    assert!(wait_until(Duration::from_secs(60), || committed(&job) >= 1));
    let lock = Immutable::set(&[job.out().join(COMMIT_LOG)]).unwrap();
    let out = run.wait_with_output().unwrap();
    drop(lock);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(50), "ended at the deadline: {}", text(&out));
    job.assert_nothing_left(Duration::from_secs(10));
    let fin = mayfly_core::job::read_json(&job.state().join("final.json")).unwrap();
    assert!(job.log("master").contains("the job's storage refused"), "{}", job.log("master"));
    (out, fin)
}

#[test]
fn a_shard_whose_commits_the_storage_keeps_refusing_fails_with_the_storage_error() {
    let (_, fin) = run_with_commits_unwritable_for_good("markers-gone", "[limits]\nmax_storage_refusals = 2\n");
    assert_eq!(fin["reason"], "done", "{fin}");
    let failed = fin["counts"]["failed"].as_u64().unwrap();
    assert!(failed >= 1 && fin["counts"]["committed"].as_u64().unwrap() + failed == 6, "{fin}");
    let error = fin["failed"][0][1].as_str().unwrap();
    assert!(
        error.contains("refused this shard's commit 2 times in a row") && error.contains("recording the commit"),
        "{error}"
    );
}

#[test]
fn a_storage_outage_longer_than_the_jobs_bound_ends_the_job() {
    let limits = "[limits]\nmax_storage_refusals = 1000\nstorage_outage = \"3s\"\n";
    let (out, fin) = run_with_commits_unwritable_for_good("storage-out", limits);
    assert!(text(&out).contains("ENDED: ITS STORAGE REFUSED EVERY COMMIT"), "{}", text(&out));
    assert_eq!(fin["reason"], "storage", "{fin}");
}

#[test]
fn a_node_whose_log_cannot_be_written_for_a_while_goes_on_and_loses_no_line() {
    let files = inputs(16, 200);
    let job = TestJob::new("logs-down", &files);
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 200 }", &job_text(2, ""));
    let run = job.spawn();
    assert!(wait_until(Duration::from_secs(60), || job.log("worker-2").contains("attempt 1")));
    let logs: Vec<_> =
        ["master", "worker-1", "worker-2"].iter().map(|n| job.state().join("logs").join(format!("{n}.log"))).collect();
    let lock = Immutable::set(&logs).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    drop(lock);
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("resume"), "no node died: {}", text(&out));
    assert_exactly_once(&job, &files);
    job.assert_nothing_left(Duration::from_secs(10));
    every_worker_ended_with_the_job(&job, 2);
    // The lines written while the log could not be are there: each shard's lease, in the master's log.
    let master = job.log("master");
    for shard in 0..16 {
        assert!(master.contains(&format!("shard {shard} attempt 1 leased to")), "shard {shard}: {master}");
    }
}

#[test]
fn a_credential_issuer_down_for_seconds_drains_no_worker() {
    // Work enough (about 6 s) that both workers still run when the issuer
    // goes down.
    let files = inputs(30, 200);
    let job = TestJob::new("issuer-down", &files);
    let provider = "[provider]\nname = \"local\"\ncredential_ttl = \"2s\"\n";
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 400 }", &job_text(2, provider));
    let run = job.spawn();
    // Both workers have started (a worker that starts while the issuer is
    // down fails at its start: its first credential, not a refresh).
    let working = || (1..=2).all(|w| job.log(&format!("worker-{w}")).contains("attempt 1"));
    assert!(wait_until(Duration::from_secs(60), working), "both workers never leased");
    let down = IssuerDown::set(&job.state()).unwrap();
    let failed = || (1..=2).map(|w| job.log(&format!("worker-{w}")).matches("credential refresh failed").count());
    // Both workers meet the outage (their 2 s credentials are due every second).
    assert!(wait_until(Duration::from_secs(10), || failed().all(|n| n >= 1)), "no refresh failed");
    std::thread::sleep(Duration::from_millis(1500));
    drop(down);
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_exactly_once(&job, &files);
    job.assert_nothing_left(Duration::from_secs(10));
    every_worker_ended_with_the_job(&job, 2);
}

#[test]
fn a_local_nodes_store_refuses_it_once_its_credential_expires_and_serves_it_again_once_renewed() {
    // The local store checks what a cloud's store checks: with 2 s credentials
    // and the issuer down for 8 s, the master's own credential expires and its
    // state writes (the heartbeat every 5 s among them) are refused, as S3 or
    // Azurite would refuse them; once the issuer is back the credential is
    // renewed and the job ends complete. Without the check the master never
    // notices the outage.
    let files = inputs(20, 200);
    let job = TestJob::new("store-refuses", &files);
    let provider = "[provider]\nname = \"local\"\ncredential_ttl = \"2s\"\n";
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 700 }", &job_text(1, provider));
    let run = job.spawn();
    assert!(wait_until(Duration::from_secs(60), || job.log("worker-1").contains("attempt 1")));
    let down = IssuerDown::set(&job.state()).unwrap();
    std::thread::sleep(Duration::from_secs(8));
    drop(down);
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_exactly_once(&job, &files);
    let master = job.log("master");
    assert!(
        master.contains("the store refused writing") && master.contains("by node master: its credential expired"),
        "the master's writes were refused once its credential expired: {master}"
    );
    job.assert_nothing_left(Duration::from_secs(10));
}

#[test]
fn a_worker_stopped_when_its_launcher_exits_is_not_hung_up_on() {
    let files = inputs(8, 200);
    let job = TestJob::new("stopped-orphan", &files);
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 200 }", &job_text(2, ""));
    let run = job.spawn();
    assert!(wait_until(Duration::from_secs(60), || job.log("worker-1").contains("attempt 1")));
    job.signal("worker-1", "STOP");
    // worker-2 finishes the job (worker-1's lease expires); `mayfly run` exits
    // while worker-1 is stopped, which orphans its process group.
    let out = run.wait_with_output().unwrap();
    job.signal("worker-1", "CONT");
    assert!(out.status.success(), "{}", text(&out));
    job.assert_nothing_left(Duration::from_secs(10));
    // Once it is gone: its abandoned attempt's staging went with it (the empty
    // `_mayfly/staging` its wake-up re-created may stay).
    let staging = job.out().join("_mayfly/staging");
    assert!(std::fs::read_dir(&staging).map(|mut d| d.next().is_none()).unwrap_or(true), "an attempt left staging");
    let _ = std::fs::remove_dir(&staging);
    assert_exactly_once(&job, &files);
    let log = job.log("worker-1");
    assert!(log.contains("ending: the job is done"), "worker-1 ended by the rules: {log}");
}

#[test]
fn a_node_that_fails_at_its_start_gets_its_error_into_its_log() {
    // Its output goes through the log pump; the error that ends it early must
    // still reach the log (found in review: it was printed after the pump
    // started and before it was finished, and lost at exit).
    let dir = mayfly_tests::scratch("early-node");
    std::fs::create_dir_all(dir.join("state/early")).unwrap();
    for attempt in 0..5 {
        let log_path = dir.join(format!("node-{attempt}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let status = std::process::Command::new(mayfly_tests::mayfly_bin())
            .args(["node", "--role", "worker", "--job", "early", "--node", "worker-1", "--dir"])
            .arg(dir.join("state/early"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .unwrap();
        assert!(!status.success());
        let text = std::fs::read_to_string(&log_path).unwrap();
        assert!(text.contains("error: no manifest in"), "attempt {attempt}: {text:?}");
    }
}

#[test]
fn the_entrypoint_asked_again_resumes_a_job_whose_master_is_lost_and_refuses_otherwise() {
    use mayfly_data::provider::{ErrorKind, ProviderHandle, Role};

    let files = inputs(12, 2000);
    let job = TestJob::new("entrypoint-resume", &files);
    job.write_job(
        SLOW,
        "{ mode = \"slow\", delay_ms = 1000 }",
        "[cluster]\nworkers = 2\ndeadline = \"3m\"\nlease_time = \"1s\"\nmaster_lost_timeout = \"10s\"\n\n\
         [sharding]\ntarget_shard_bytes = 1\nsplit_text = false\n",
    );
    let provider = ProviderHandle::select(&mayfly_tests::local_selection(serde_json::json!({}))).unwrap();
    let request = job.request();
    let first = mayfly_core::bootstrap::from_request(&request, &provider).unwrap();
    let heard = || -> u64 {
        let beat: serde_json::Value = mayfly_core::job::read_json(&job.state().join("heartbeat.json")).unwrap();
        beat["at"].as_u64().unwrap()
    };
    // The master beats on its own (bootstrap wrote the first beat).
    let bootstrapped = heard();
    assert!(wait_until(Duration::from_secs(10), || heard() > bootstrapped), "the master never beat");
    assert!(wait_until(Duration::from_secs(60), || job.log("worker-1").contains("attempt 1")), "no lease");
    // While its master runs, the same request again is refused for good.
    let e = mayfly_core::bootstrap::from_request(&request, &provider).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("is still running"), "{e}");

    job.signal("master", "KILL");
    assert!(wait_until(Duration::from_secs(10), || !job.alive().contains(&"master".to_owned())));
    // Heard from less than master_lost_timeout ago (it beats every 5 s): not
    // yet taken for lost, and a retry may do better.
    let e = mayfly_core::bootstrap::from_request(&request, &provider).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("master was heard from"), "{e}");
    // Asked again, twice at once (an event delivered twice), once silent for
    // longer: one invocation resumes it, the other does not.
    assert!(wait_until(Duration::from_secs(30), || mayfly_provider_api::now_ms().saturating_sub(heard()) > 10_500));
    let (a, b) = std::thread::scope(|s| {
        let one = s.spawn(|| mayfly_core::bootstrap::from_request(&request, &provider));
        let other = s.spawn(|| mayfly_core::bootstrap::from_request(&request, &provider));
        (one.join().unwrap(), other.join().unwrap())
    });
    let (resumed, refused) = match (a, b) {
        (Ok(reply), Err(e)) | (Err(e), Ok(reply)) => (reply, e),
        (a, b) => panic!("exactly one invocation must resume the job: {a:?} / {b:?}"),
    };
    // The other found the claim taken, or (slower, under load) the resume's
    // fresh heartbeat or its master already running.
    let said = refused.to_string();
    assert!(
        (refused.kind == ErrorKind::Unavailable
            && (said.contains("another invocation is resuming it") || said.contains("master was heard from")))
            || (refused.kind == ErrorKind::Config && said.contains("is still running")),
        "{refused}"
    );
    assert_eq!((resumed.job.as_str(), resumed.shards), (first.job.as_str(), first.shards));
    assert!(resumed.nodes.iter().any(|n| n.role == Role::Master), "{:?}", resumed.nodes);
    let fin = job.state().join("final.json");
    assert!(wait_until(Duration::from_secs(90), || fin.exists()), "the resumed job never ended");
    let ended: serde_json::Value = serde_json::from_slice(&std::fs::read(&fin).unwrap()).unwrap();
    assert_eq!(ended["reason"], "done", "{ended}");
    assert_exactly_once(&job, &files);
    job.assert_nothing_left(Duration::from_secs(10));

    // Ended: the same request is refused for good.
    let e = mayfly_core::bootstrap::from_request(&request, &provider).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("was already used (the job ended)"), "{e}");
}

/// Runs a 6-shard job with `limits` whose `out/map` becomes unwritable once
/// its first output is in place, and stays so until `unlock` says (given the
/// job's number of commits); returns the run's output, its `final.json` and
/// its `_manifest.json`.
fn run_with_outputs_unwritable(
    id: &str,
    limits: &str,
    unlock: impl Fn(usize) -> bool,
) -> (TestJob, std::process::Output, serde_json::Value, serde_json::Value) {
    let files = inputs(6, 200);
    let job = TestJob::new(id, &files);
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 200 }", &job_text(2, limits));
    let run = job.spawn();
    let map = job.out().join("map");
    assert!(wait_until(Duration::from_secs(60), || map.exists()));
    let mut lock = Some(Immutable::set(std::slice::from_ref(&map)).unwrap());
    let marked = || committed(&job);
    let ended = || job.state().join("final.json").exists();
    while !ended() && lock.is_some() {
        if unlock(marked()) {
            // The job's end is trying again by now.
            std::thread::sleep(Duration::from_secs(2));
            lock = None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run.wait_with_output().unwrap();
    drop(lock);
    let fin = mayfly_core::job::read_json(&job.state().join("final.json")).unwrap();
    let manifest = mayfly_core::job::read_json(&job.out().join("_manifest.json")).unwrap();
    job.assert_nothing_left(Duration::from_secs(10));
    (job, out, fin, manifest)
}

#[test]
fn committed_outputs_the_storage_takes_only_at_the_end_are_published_before_the_job_ends() {
    // Every shard commits while its outputs cannot be moved into place; the
    // storage takes them again while the job ends.
    let (job, out, fin, manifest) = run_with_outputs_unwritable("outputs-late", "", |marked| marked == 6);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!((fin["reason"].as_str(), fin["unpublished"].as_array()), (Some("done"), None), "{fin}");
    assert_eq!(manifest["complete"], true, "{manifest}");
    assert!(job.log("master").contains("cannot be moved into place yet"), "{}", job.log("master"));
    assert_exactly_once(&job, &inputs(6, 200));
}

#[test]
fn committed_outputs_the_storage_never_takes_leave_the_job_not_complete_and_staged() {
    let limits = "[limits]\nstorage_outage = \"2s\"\n";
    let (job, out, fin, manifest) = run_with_outputs_unwritable("outputs-never", limits, |_| false);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("NOT COMPLETE: committed shards") && said.contains("still staged"), "{said}");
    let unpublished = fin["unpublished"].as_array().expect("final.json names the unpublished shards");
    assert!(!unpublished.is_empty(), "{fin}");
    assert_eq!(manifest["complete"], false, "{manifest}");
    assert_eq!(manifest["unpublished_shards"].as_array().unwrap().len(), unpublished.len());
    // What the manifest lists is in place; the rest is kept, staged.
    for o in manifest["outputs"].as_array().unwrap() {
        assert!(job.out().join(o["path"].as_str().unwrap()).is_file(), "{o}");
    }
    let listed = manifest["outputs"].as_array().unwrap().len();
    assert_eq!(listed + unpublished.len(), 6, "{manifest}");
    assert!(job.out().join("_mayfly/staging").read_dir().is_ok_and(|mut d| d.next().is_some()), "staging kept");
}
