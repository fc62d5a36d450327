//! Holding workers of a live job for debugging (`mayfly hold`, `release`,
//! `attach`, `replay --node`): the held worker's shard is finished by
//! another worker exactly once; it outlives the idle timeout; it ends at its
//! hold's expiry, at the deadline (which no hold outlives), or by the normal
//! rules once released; nothing is left in any case.

use std::process::Stdio;
use std::time::{Duration, Instant};

use mayfly_tests::cluster::{TestJob, assert_exactly_once, text, wait_until};

const GUEST: &str = "tests/guests/misbehave";

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A job of `shards` shards of `items` equal inputs each, each input taking
/// `delay_ms`. The lease is short, so heartbeats (which carry a hold) come
/// every half second.
fn slow_job(id: &str, shards: usize, items: usize, delay_ms: u64, cluster: &str) -> (TestJob, Vec<(String, Vec<u8>)>) {
    let files: Vec<(String, Vec<u8>)> = (0..shards * items)
        .map(|i| (format!("in-{i:02}.txt"), format!("line {i:02}\n").repeat(200).into_bytes()))
        .collect();
    let job = TestJob::new(id, &files);
    job.write_job(
        GUEST,
        &format!("{{ mode = \"picky\", delay_ms = {delay_ms} }}"),
        &format!(
            "[cluster]\nworkers = 2\nlease_time = \"1500ms\"\n{cluster}\n\n\
             [sharding]\nshards_per_worker = {}\nsplit_text = false\nmin_shard_bytes = 0\n",
            shards / 2
        ),
    );
    (job, files)
}

fn status_json(job: &TestJob) -> serde_json::Value {
    let out = job.command(&["status", &job.id, "--state", "state", "--once", "--json"]).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn cli(job: &TestJob, args: &[&str]) -> (Option<i32>, String) {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--state", "state"]);
    let out = job.command(&all).output().unwrap();
    (out.status.code(), text(&out))
}

/// The shard worker `node` holds now, once it holds one.
fn leased_by(job: &TestJob, node: &str) -> u64 {
    let mut shard = None;
    assert!(
        wait_until(Duration::from_secs(60), || {
            let st = status_json(job);
            shard = st["workers"]
                .as_array()
                .and_then(|w| w.iter().find(|w| w["node"] == node))
                .and_then(|w| w["leased"][0].as_u64());
            shard.is_some()
        }),
        "{node} never held a lease"
    );
    shard.unwrap()
}

#[test]
fn a_held_worker_hands_its_shard_over_outlives_the_idle_timeout_and_ends_at_its_hold_expiry() {
    let (job, files) = slow_job("hold-node", 4, 6, 400, "deadline = \"2m\"\nidle_timeout = \"1s\"");
    let run = job.spawn();
    leased_by(&job, "worker-1");
    let held_at = Instant::now();
    let (code, said) = cli(&job, &["hold", &job.id, "--node", "worker-1", "--for", "20s"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains(&format!("held worker-1 of job {} until", job.id)) && !said.contains("cut"), "{said}");
    // Attached: where it is, then its log until it ends.
    let attach = job
        .command(&["attach", &job.id, "--node", "worker-1", "--state", "state"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // The job finishes without it: every input exactly once.
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let done_at = Instant::now();
    assert_exactly_once(&job, &files);
    // The shard it held when the hold reached it (at an item after a
    // heartbeat) went back to the other worker.
    let log = job.log("worker-1");
    let released: Vec<u64> = log
        .lines()
        .filter_map(|l| {
            l.split_once(" released: this worker is held by an operator")?.0.rsplit(' ').next()?.parse().ok()
        })
        .collect();
    assert_eq!(released.len(), 1, "worker-1 handed exactly one shard back:\n{log}");
    let shard = released[0];
    assert_eq!(log.matches("held by an operator until").count(), 1, "held once:\n{log}");
    let journal = std::fs::read_to_string(job.state().join("journal.jsonl")).unwrap();
    let commits = journal
        .lines()
        .filter(|l| l.contains("\"event\":\"committed\"") && l.contains(&format!("\"shard\":{shard},")))
        .count();
    assert_eq!(commits, 1, "shard {shard} committed once:\n{journal}");

    // Past the idle timeout (1 s) after the job's end, the held worker is
    // still there; the other one ended by the rules.
    std::thread::sleep(Duration::from_secs(3));
    assert!(held_at.elapsed() < Duration::from_secs(19), "the job took too long for this check");
    assert_eq!(job.alive(), vec!["worker-1".to_owned()], "only the held worker is left");
    let (_, status) = cli(&job, &["status", &job.id]);
    assert!(status.contains("held: worker-1 until"), "{status}");
    // What it had is kept: the input of the shard it handed back.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.state().join("manifest.json")).unwrap()).unwrap();
    let item = manifest["plan"]["shards"][shard as usize]["items"][0]["object"].as_str().unwrap().to_owned();
    let kept = job.state().join("held/worker-1").join(format!("shard-{shard}")).join(&item);
    let original = files.iter().find(|(n, _)| *n == item).unwrap().1.clone();
    assert_eq!(std::fs::read(&kept).unwrap(), original, "{} kept whole", kept.display());
    // Replayed where it is held, from what it kept: the job's own output.
    let (code, said) = cli(&job, &["replay", &job.id, &shard.to_string(), "--node", "worker-1", "--out", "replayed"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("from the inputs kept in"), "{said}");
    assert_eq!(
        std::fs::read(job.dir.join("replayed").join(&item).join("copy.bin")).unwrap(),
        std::fs::read(job.out().join("map").join(&item).join("copy.bin")).unwrap()
    );

    // It ends when its hold expires (20 s after it was asked), not before.
    assert!(wait_until(Duration::from_secs(30), || job.alive().is_empty()), "left: {:?}", job.alive());
    let ended = held_at.elapsed();
    assert!(ended >= Duration::from_secs(19), "ended {ended:?} after the hold, before its expiry");
    assert!(done_at.elapsed() < Duration::from_secs(25));
    assert!(job.log("worker-1").contains("ending: the operator's hold expired"), "{}", job.log("worker-1"));
    let attached = attach.wait_with_output().unwrap();
    let attached_out = stdout(&attached);
    assert!(attached.status.success(), "{}", text(&attached));
    for expected in [
        "node worker-1 of job",
        "pid ",
        "held       until",
        "ending: the operator's hold expired",
        "(worker-1 has ended)",
    ] {
        assert!(attached_out.contains(expected), "missing {expected:?} in:\n{attached_out}");
    }
    // The record: who asked, until when.
    let records: Vec<serde_json::Value> = std::fs::read_dir(job.state().join("holds/log"))
        .unwrap()
        .flatten()
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["action"], "hold");
    assert_eq!(records[0]["node"], "worker-1");
    assert!(records[0]["by"].as_str().is_some_and(|b| !b.is_empty()) && records[0]["until"].is_u64());
    job.assert_nothing_left(Duration::from_secs(3));
}

#[test]
fn a_whole_job_hold_stops_every_lease_is_cut_to_the_deadline_and_release_lets_it_finish() {
    let (job, files) = slow_job("hold-job", 8, 2, 300, "deadline = \"90s\"");
    let run = job.spawn();
    leased_by(&job, "worker-2");
    let (code, said) = cli(&job, &["hold", &job.id, "--for", "2h"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains(&format!("held every worker of job {}", job.id)), "{said}");
    assert!(said.contains("asked for 2 h 00 min 00 s, cut to the job's deadline"), "{said}");

    // Both hand their shards back and lease nothing more.
    let mut st = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            st = status_json(&job);
            st["counts"]["leased"] == 0
                && st["workers"].as_array().is_some_and(|w| w.len() == 2 && w.iter().all(|w| w["held_until"].is_u64()))
        }),
        "the workers did not stop: {st}"
    );
    let committed = st["counts"]["committed"].as_u64().unwrap();
    assert!(committed < 8, "{st}");
    std::thread::sleep(Duration::from_millis(1500));
    let later = status_json(&job);
    assert_eq!(later["counts"]["committed"].as_u64(), Some(committed), "nothing is done while held: {later}");
    assert_eq!(later["counts"]["leased"], 0, "{later}");
    let (_, view) = cli(&job, &["status", &job.id, "--once"]);
    assert_eq!(view.matches("HELD (").count(), 2, "{view}");

    // Released: the job finishes, exactly once, and every node ends by the rules.
    let (code, said) = cli(&job, &["release", &job.id]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("released job"), "{said}");
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_exactly_once(&job, &files);
    job.assert_nothing_left(Duration::from_secs(5));
    for w in ["worker-1", "worker-2"] {
        let log = job.log(w);
        assert_eq!(log.matches("held by an operator until").count(), 1, "held once:\n{log}");
        assert!(log.contains("released by an operator; back to the normal rules"), "{log}");
        assert!(log.contains("ending: the job is done"), "{log}");
    }
    let (code, said) = cli(&job, &["release", &job.id]);
    assert_eq!(code, Some(0));
    assert!(said.contains("has no hold"), "{said}");
}

#[test]
fn no_hold_outlives_the_deadline() {
    let (job, _) = slow_job("hold-deadline", 8, 1, 500, "deadline = \"20s\"\nidle_timeout = \"1s\"");
    let run = job.spawn();
    leased_by(&job, "worker-1");
    let (code, said) = cli(&job, &["hold", &job.id, "--node", "worker-1", "--for", "1h"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("cut to the job's deadline"), "{said}");
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Held past the job's end, until the deadline: then it is gone.
    assert!(job.alive().contains(&"worker-1".to_owned()), "{:?}", job.alive());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.state().join("manifest.json")).unwrap()).unwrap();
    let expires_at = manifest["expires_at"].as_u64().unwrap();
    assert!(wait_until(Duration::from_secs(30), || job.alive().is_empty()), "left: {:?}", job.alive());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(now + 500 >= expires_at, "it ended {} ms before the deadline", expires_at - now);
    assert!(job.log("worker-1").contains("the job's deadline passed"), "{}", job.log("worker-1"));
    // Asking again, past the deadline: refused, saying why.
    let (code, said) = cli(&job, &["hold", &job.id, "--node", "worker-1"]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("past its deadline"), "{said}");
    // No such worker: named.
    let (code, said) = cli(&job, &["release", &job.id, "--node", "worker-9"]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("has no worker \"worker-9\""), "{said}");
}
