//! End-to-end jobs on the local provider: exactly-once outputs under worker
//! and master loss, the deadline, the timeouts, credential refresh, bootstrap
//! rollback, and bad input. Every test ends by checking that no process of its
//! job is left.

use mayfly_data::store::Location;
use std::time::Duration;

use mayfly_tests::cluster::{TestJob, assert_exactly_once, cluster, inputs, text, wait_until};

const SLOW: &str = "tests/guests/misbehave";

/// What one process counting every file writes.
pub(crate) fn native_counts(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut all = Vec::new();
    for (_, d) in files {
        all.extend_from_slice(d);
        all.push(b'\n');
    }
    let counts = wordcount::count_words(&all[..], 0).unwrap();
    let mut out = Vec::new();
    wordcount::write_counts(&counts, &mut out).unwrap();
    out
}

#[test]
fn locations_that_overlap_are_refused_before_anything_runs() {
    let job = TestJob::new("overlap", &inputs(3, 100));
    let path = job.write_job("tasks/wordcount", "{ mode = \"map\" }", "");
    let written = std::fs::read_to_string(&path).unwrap();
    for (from, to, inner, outer) in [
        ("[output]\nurl = \"out\"", "[output]\nurl = \"data/out\"", "`output.url`", "`input.url`"),
        ("[state]\nurl = \"state\"", "[state]\nurl = \"data/.state\"", "`state.url`", "`input.url`"),
        ("[output]\nurl = \"out\"", "[output]\nurl = \".\"", "`input.url`", "`output.url`"),
    ] {
        std::fs::write(&path, written.replace(from, to)).unwrap();
        for command in [&["run", "job.toml"][..], &["plan", "job.toml"][..]] {
            let out = job.command(command).output().unwrap();
            let said = text(&out);
            assert_eq!(out.status.code(), Some(2), "{command:?} {to}: {said}");
            assert!(said.contains(&format!("{inner} ")) && said.contains(&format!("lies inside {outer}")), "{said}");
        }
        for made in ["state", "data/.state", "data/out", "out"] {
            assert!(!job.dir.join(made).exists(), "{to}: {made} was made");
        }
    }
}

#[test]
fn an_input_pointed_at_an_old_output_reads_its_outputs_not_its_bookkeeping() {
    let first = TestJob::new("old-output", &inputs(6, 2000));
    first.write_job("tasks/wordcount", "{ mode = \"map\" }", "");
    let out = first.run();
    assert!(out.status.success(), "{}", text(&out));
    assert!(first.out().join("_manifest.json").exists() && first.out().join("_mayfly/commits.log").is_file());
    // A second job over the first one's output, on purpose.
    let second = TestJob::new("reads-old-output", &[]);
    let path = second.write_job("tasks/wordcount", "{ mode = \"map\" }", "");
    let old = first.out().to_string_lossy().into_owned();
    std::fs::write(&path, std::fs::read_to_string(&path).unwrap().replace("url = \"data\"", &format!("url = {old:?}")))
        .unwrap();
    let out = second.run();
    assert!(out.status.success(), "{}", text(&out));
    let manifest: mayfly_core::job::Manifest =
        mayfly_core::job::read_json(&second.state().join("manifest.json")).unwrap();
    let mut read: Vec<String> =
        manifest.plan.shards.iter().flat_map(|s| s.items.iter().map(|i| i.object.clone())).collect();
    read.sort();
    read.dedup();
    let outputs: Vec<String> = first.map_outputs().into_iter().map(|o| format!("map/{o}")).collect();
    assert_eq!(read, outputs, "the inputs are the old job's outputs, and only those");
}

#[test]
fn wordcount_map_reduce_is_exactly_once_with_1_and_4_workers() {
    let files: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| {
            (format!("d{}/t{i}.txt", i % 3), mayfly_tests::sample_text(i, 20_000 + 7_000 * i as usize).into_bytes())
        })
        .collect();
    for workers in [1, 4] {
        let job = TestJob::new(&format!("wc-{workers}"), &files);
        job.write_job(
            "tasks/wordcount",
            "{ mode = \"map\" }",
            &format!(
                "[reduce]\npath = {:?}\nparams = {{ mode = \"reduce\" }}\n\n[cluster]\nworkers = {workers}\n\n[sharding]\nshards_per_worker = 3\n",
                mayfly_tests::component("tasks/wordcount").to_string_lossy()
            ),
        );
        let out = job.run();
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("shards committed, 0 failed"), "{}", text(&out));
        // wordcount combines per shard: one table per shard, none per file.
        let tables = job.map_outputs();
        let shards =
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(job.state().join("manifest.json")).unwrap())
                .unwrap()["plan"]["shards"]
                .as_array()
                .unwrap()
                .len();
        assert_eq!(tables.len(), shards, "{tables:?}");
        assert!(tables.iter().all(|t| t.starts_with("_shards/") && t.ends_with("/counts.tsv")), "{tables:?}");
        let reduced = std::fs::read(job.out().join("reduce/counts.tsv")).unwrap();
        assert_eq!(
            reduced,
            native_counts(&files),
            "{workers} workers: reduce output differs from a single-process count"
        );
        job.assert_nothing_left(Duration::from_secs(10));
    }
}

/// The reduce reads more map outputs than the nodes may hold open files: it
/// opens each as it reads it (it opened all at once, and failed with "Too many
/// open files" over 50,000 outputs in the comparison benchmark). With
/// `isolation = "item"` wordcount writes one table per item, as it did
/// before it combined per shard.
#[test]
fn a_reduce_over_more_map_outputs_than_open_files_allowed_succeeds() {
    let files: Vec<(String, Vec<u8>)> = (0..600)
        .map(|i| (format!("d{}/t{i:03}.txt", i % 4), format!("w{} common x{i}\n", i % 7).into_bytes()))
        .collect();
    let job = TestJob::new("wc-many-outputs", &files);
    job.write_job(
        "tasks/wordcount",
        "{ mode = \"map\" }\nisolation = \"item\"",
        &format!(
            "[reduce]\npath = {:?}\nparams = {{ mode = \"reduce\" }}\n\n[cluster]\nworkers = 2\n\n[sharding]\nshards_per_worker = 2\n",
            mayfly_tests::component("tasks/wordcount").to_string_lossy()
        ),
    );
    // Every process of the job (the master included) inherits the limit.
    let out = std::process::Command::new("sh")
        .args(["-c", "ulimit -n 256 && exec \"$0\" run job.toml"])
        .arg(mayfly_tests::mayfly_bin())
        .current_dir(&job.dir)
        .env("MAYFLY_CACHE_DIR", mayfly_tests::cache_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("600 map outputs"), "{}", text(&out));
    let reduced = std::fs::read(job.out().join("reduce/counts.tsv")).unwrap();
    assert_eq!(reduced, native_counts(&files), "the reduce output differs from a single-process count");
    job.assert_nothing_left(Duration::from_secs(10));
}

fn kill_workers_mid_attempt(id: &str, workers: u32, kill: &[&str]) {
    let files = inputs(8, 3000);
    let job = TestJob::new(id, &files);
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 600, stamp = true }", &cluster(workers, ""));
    let run = job.spawn();
    for w in kill {
        assert!(wait_until(Duration::from_secs(60), || job.log(w).contains("attempt 1")), "{w} never leased");
    }
    for w in kill {
        job.signal(w, "KILL");
    }
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let master = job.log("master");
    assert!(master.contains("lease expired: worker"), "{master}");
    assert_exactly_once(&job, &files);
    job.assert_nothing_left(Duration::from_secs(10));
}

#[test]
fn a_worker_killed_mid_attempt_loses_its_lease_and_another_finishes() {
    kill_workers_mid_attempt("kill-one", 2, &["worker-1"]);
}

#[test]
fn two_workers_killed_at_once() {
    kill_workers_mid_attempt("kill-two", 3, &["worker-1", "worker-2"]);
}

#[test]
fn a_lost_worker_is_replaced_and_the_job_ends_on_time_with_its_worker_count() {
    let files = inputs(16, 3000);
    let job = TestJob::new("replace", &files);
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 800, stamp = true }", &cluster(2, ""));
    let run = job.spawn();
    assert!(wait_until(Duration::from_secs(60), || job.log("worker-1").contains("attempt 1")), "worker-1 never leased");
    job.signal("worker-1", "KILL");
    // A third worker comes in its place: two work at once again.
    let both = || {
        let alive = job.alive();
        alive.contains(&"worker-2".to_owned()) && alive.contains(&"worker-3".to_owned())
    };
    assert!(wait_until(Duration::from_secs(30), both), "no replacement: {:?}\n{}", job.alive(), job.log("master"));
    // The independent observer sees them too (master and two workers, at least).
    let running = mayfly_tests::job_processes(&job.id);
    assert!(running.len() >= 3, "{running:?}");
    let out = run.wait_with_output().unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("1 lost worker replaced") && said.contains("worker-3 replaced worker-1"), "{said}");
    let master = job.log("master");
    // The kill hit a running attempt: its lease expired, and another attempt committed the shard.
    assert!(master.contains("lease expired: worker worker-1"), "{master}");
    assert!(master.contains("worker-3 launched in place of worker-1 (1 of at most 2 replacements)"), "{master}");
    assert!(job.log("worker-3").contains("attempt 1"), "the replacement worked: {}", job.log("worker-3"));
    assert!(job.log("worker-1").contains("attempt 1"), "the lost worker's log is its own");
    let fin: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.state().join("final.json")).unwrap()).unwrap();
    let replaced = fin["replacements"].as_array().unwrap();
    assert_eq!(replaced.len(), 1, "{fin}");
    assert_eq!((replaced[0]["lost"].as_str(), replaced[0]["by"].as_str()), (Some("worker-1"), Some("worker-3")));
    assert_eq!(fin["reason"], "done", "on time: {fin}");
    assert_exactly_once(&job, &files);
    job.assert_nothing_left(Duration::from_secs(10));
}

#[test]
fn a_lost_worker_beyond_the_jobs_max_replacements_is_said_and_not_replaced() {
    let files = inputs(8, 3000);
    let job = TestJob::new("replace-none", &files);
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 600, stamp = true }", &cluster(2, "max_replacements = 0"));
    let run = job.spawn();
    assert!(wait_until(Duration::from_secs(60), || job.log("worker-1").contains("attempt 1")), "worker-1 never leased");
    job.signal("worker-1", "KILL");
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let master = job.log("master");
    assert!(master.contains("worker-1 is lost and not replaced: the job's max_replacements (0) are used"), "{master}");
    assert!(!job.nodes().iter().any(|n| n.node == "worker-3"), "no worker was launched in its place");
    assert_exactly_once(&job, &files);
    job.assert_nothing_left(Duration::from_secs(10));
}

#[test]
fn keys_that_differ_in_case_or_nest_are_staged_apart_and_a_key_no_store_can_name_is_refused() {
    // Each item's outputs are staged under its key as one name, then
    // published under the key itself: the job still ends exactly once. (That
    // staging names cannot climb out or meet ignoring case is the sandbox's
    // and `mayfly_model::key`'s unit tests; this disk tells case apart.)
    let mut files = inputs(2, 100);
    for name in ["A.txt", "a.txt", "sub/A.txt", "sub/a.txt", "100% é.txt"] {
        files.push((name.to_owned(), format!("contents of {name}\n").into_bytes()));
    }
    files.sort();
    let job = TestJob::new("keys", &files);
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 0, stamp = true }", &cluster(2, ""));
    let out = job.run();
    assert!(out.status.success(), "{}", text(&out));
    assert_exactly_once(&job, &files);
    job.assert_nothing_left(Duration::from_secs(10));

    // A control character in a name: a file system takes it, S3 and Azure
    // keep it, object_store cannot name it; refused before anything runs,
    // naming the key, unless the glob leaves it out.
    let bad = TestJob::new(
        "keys-bad",
        &[("good.txt".to_owned(), b"x".to_vec()), ("bad\u{1}name.txt".to_owned(), b"x".to_vec())],
    );
    let path = bad.write_job(SLOW, "{ mode = \"slow\" }", &cluster(1, ""));
    let refused = bad.run();
    let said = text(&refused);
    assert_eq!(refused.status.code(), Some(2), "{said}");
    assert!(
        said.contains(r#"the key "bad\u{1}name.txt" holds a control character; rename the object, or leave it out with `[input] glob`"#),
        "{said}"
    );
    assert!(bad.nodes().is_empty(), "nothing was launched");
    let written = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, written.replace("[input]\n", "[input]\nglob = \"good*\"\n")).unwrap();
    let out = bad.run();
    assert!(out.status.success(), "the glob leaves it out: {}", text(&out));
    bad.assert_nothing_left(Duration::from_secs(10));
}

#[test]
fn a_doubled_commit_is_seen_though_every_output_looks_right() {
    // The outputs of two attempts at a shard are the same copies; only their
    // stamps, the journal's commits and the master's log tell a shard
    // committed twice. Plant each kind of evidence in a copy of a clean job:
    // the outputs still pass the path-and-bytes checks, the audit does not.
    let files = inputs(4, 200);
    let job = TestJob::new("audit", &files);
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 10, stamp = true }", &cluster(2, ""));
    let out = job.run();
    assert!(out.status.success(), "{}", text(&out));
    assert_exactly_once(&job, &files);
    let layout = mayfly_core::job::Layout::local(&job.dir.join("state"), &job.id, &job.out());
    let marker = mayfly_core::commits::read(&layout).unwrap().into_iter().next().expect("a commit");
    let (shard, token) = (marker.shard, marker.token);
    let item = marker.outputs.iter().find(|o| o.name == "attempt.txt").expect("a stamp").key.clone();
    let copy = |name: &str| {
        let copied = TestJob { dir: mayfly_tests::scratch(name), id: job.id.clone() };
        let cp = std::process::Command::new("cp").arg("-a").arg(job.dir.join(".")).arg(&copied.dir).status().unwrap();
        assert!(cp.success());
        assert_eq!(copied.map_outputs(), job.map_outputs());
        assert!(mayfly_tests::cluster::audit_commits(&copied).is_empty(), "an untouched copy audits clean");
        copied
    };
    let append = |path: std::path::PathBuf, line: String| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        writeln!(f, "{line}").unwrap();
    };
    let second = token + 1;
    // The journal: a second token's lease and commit of the same shard.
    let journal = copy("audit-journal");
    append(
        journal.state().join("journal.jsonl"),
        format!(r#"{{"event":"lease","shard":{shard},"worker":"worker-9","token":{second},"attempt":7}}"#),
    );
    append(
        journal.state().join("journal.jsonl"),
        format!(r#"{{"event":"committed","shard":{shard},"token":{second},"outputs":[]}}"#),
    );
    // The published stamp: another attempt's outputs over the committed one's.
    let stamp = copy("audit-stamp");
    std::fs::write(stamp.out().join("map").join(&item).join("attempt.txt"), format!("shard {shard} attempt 7\n"))
        .unwrap();
    // The master's log: a second commit, by another token.
    let logged = copy("audit-log");
    append(
        logged.state().join("logs/master.log"),
        format!("INFO master: shard {shard} committed (token {second}, 2 outputs)"),
    );
    // The commit log: a second, well-formed line for the shard, by another token.
    let relogged = copy("audit-commits");
    let mut doubled = marker.clone();
    doubled.token = second;
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(relogged.out().join(mayfly_core::job::Layout::COMMIT_LOG))
        .unwrap();
    std::io::Write::write_all(&mut log, &mayfly_core::commits::line(&doubled).unwrap()).unwrap();
    for (what, copied) in [("journal", &journal), ("stamp", &stamp), ("log", &logged), ("commit log", &relogged)] {
        let problems = mayfly_tests::cluster::audit_commits(copied);
        assert!(
            problems.iter().any(|p| p.starts_with(&format!("shard {shard}: "))),
            "{what}: the doubled commit is seen: {problems:?}"
        );
    }
    job.assert_nothing_left(Duration::from_secs(10));
}

#[test]
fn a_paused_worker_cannot_commit_after_its_lease_expired() {
    let files = inputs(6, 2000);
    let job = TestJob::new("zombie", &files);
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 800, stamp = true }", &cluster(2, ""));
    let run = job.spawn();
    assert!(wait_until(Duration::from_secs(60), || job.log("worker-1").contains("attempt 1")));
    job.signal("worker-1", "STOP");
    // Its lease expires and its shard is committed by the other worker.
    assert!(wait_until(Duration::from_secs(60), || job.log("master").contains("lease expired: worker worker-1")));
    let shard: String = job
        .log("worker-1")
        .lines()
        .find_map(|l| l.split("shard ").nth(1).and_then(|r| r.split(' ').next()).map(str::to_owned))
        .unwrap();
    assert!(wait_until(Duration::from_secs(60), || job.log("master").contains(&format!("shard {shard} committed"))));
    job.signal("worker-1", "CONT");
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let w1 = job.log("worker-1");
    let master = job.log("master");
    assert!(
        w1.contains(&format!("shard {shard}: lease lost"))
            || master.contains(&format!("commit of shard {shard} refused")),
        "the zombie's commit must be refused\nworker-1:\n{w1}\nmaster:\n{master}"
    );
    assert_exactly_once(&job, &files);
    job.assert_nothing_left(Duration::from_secs(10));
}

/// Runs `job`, SIGKILLs its master once two shards are committed, and checks
/// that the run says the job can be resumed (exit 3); the job's layout and
/// the run's output.
fn kill_the_master_once_two_shards_committed(job: &TestJob) -> (mayfly_core::job::Layout, std::process::Output) {
    let run = job.spawn();
    let layout = mayfly_core::job::Layout::local(&job.dir.join("state"), &job.id, &job.out());
    assert!(wait_until(Duration::from_secs(60), || mayfly_core::commits::read(&layout)
        .map(|c| c.len() >= 2)
        .unwrap_or(false)));
    job.signal("master", "KILL");
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    (layout, out)
}

#[test]
fn the_master_killed_mid_job_resumes_without_redoing_committed_shards() {
    let files = inputs(10, 2000);
    let job = TestJob::new("master-kill", &files);
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 400, stamp = true }", &cluster(2, ""));
    let (layout, out) = kill_the_master_once_two_shards_committed(&job);
    assert!(text(&out).contains(&format!("mayfly resume {}", job.id)), "{}", text(&out));
    let before: Vec<u32> = mayfly_core::commits::read(&layout).unwrap().iter().map(|m| m.shard).collect();
    let journal_len = mayfly_core::master::read_journal(&job.state().join("journal.jsonl")).len();
    let out = job.command(&["resume", &job.id, "--state", "state"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_exactly_once(&job, &files);
    let again = job.command(&["resume", &job.id, "--state", "state"]).output().unwrap();
    assert!(again.status.success() && text(&again).contains("already ended; nothing to resume"), "{}", text(&again));
    // Shards committed before the kill were not leased again.
    let journal = mayfly_core::master::read_journal(&job.state().join("journal.jsonl"));
    for event in &journal[journal_len..] {
        if let mayfly_core::ledger::Event::Lease { shard, .. } = event {
            assert!(!before.contains(shard), "shard {shard} was committed before the kill and leased again");
        }
    }
    job.assert_nothing_left(Duration::from_secs(10));
}

#[test]
fn a_commit_log_torn_by_a_master_killed_mid_write_is_cut_back_on_resume_and_nothing_is_lost_or_doubled() {
    let files = inputs(12, 2000);
    let job = TestJob::new("torn-log", &files);
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 300, stamp = true }", &cluster(2, ""));
    let (layout, _) = kill_the_master_once_two_shards_committed(&job);
    // What a kill in the middle of a batch's write leaves: the batch's first
    // line whole, naming a shard not committed (its checksum right), the
    // next cut short.
    let before = mayfly_core::commits::read(&layout).unwrap();
    let open = (0..files.len() as u32).find(|s| before.iter().all(|m| m.shard != *s)).expect("an open shard");
    let log = job.out().join(mayfly_core::job::Layout::COMMIT_LOG);
    let whole = std::fs::read(&log).unwrap();
    let mut forged = before[0].clone();
    forged.shard = open;
    let line = mayfly_core::commits::line(&forged).unwrap();
    std::fs::write(&log, [whole.as_slice(), &line].concat()).unwrap();
    assert!(
        mayfly_core::commits::read(&layout).unwrap().iter().any(|m| m.shard == open),
        "the forged line, after whole lines, is read"
    );
    let mut torn = whole.clone();
    torn.extend_from_slice(b"0badc0de {\"job\":\"");
    std::fs::write(&log, &torn).unwrap();
    assert_eq!(mayfly_core::commits::read(&layout).unwrap(), before, "a reader stops at the cut line");
    // A whole line after a bad one is not read either (the log ends at its first bad line).
    torn.truncate(whole.len());
    torn.extend_from_slice(b"zzzz\n");
    torn.extend_from_slice(&line);
    std::fs::write(&log, &torn).unwrap();
    assert_eq!(mayfly_core::commits::read(&layout).unwrap(), before);
    let out = job.command(&["resume", &job.id, "--state", "state"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let master = job.log("master");
    assert!(
        master.contains("the commit log's end was cut off") && master.contains(&format!("from byte {}", whole.len())),
        "{master}"
    );
    assert_exactly_once(&job, &files);
    let after = mayfly_core::commits::read(&layout).unwrap();
    assert_eq!(after.len(), files.len(), "every shard committed once, in the log");
    assert!(before.iter().all(|m| after.contains(m)), "the commits before the kill stand");
    job.assert_nothing_left(Duration::from_secs(10));
}

#[test]
fn the_deadline_mid_job_ends_every_node_and_keeps_what_was_done() {
    let files = inputs(40, 500);
    let job = TestJob::new("deadline", &files);
    let extra = "[cluster]\nworkers = 2\ndeadline = \"3s\"\nlease_time = \"1s\"\n\n[sharding]\ntarget_shard_bytes = 1\nsplit_text = false\n";
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 400 }", extra);
    let out = job.run();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("ENDED AT THE DEADLINE"), "{}", text(&out));
    // Every node is gone within the grace period (the dead-man switch is 1 s).
    job.assert_nothing_left(Duration::from_secs(3));
    let fin: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.state().join("final.json")).unwrap()).unwrap();
    assert_eq!(fin["reason"], "deadline");
    let committed = fin["counts"]["committed"].as_u64().unwrap();
    assert!(committed > 0 && committed < 40, "{fin}");
    assert_eq!(job.map_outputs().len() as u64, committed, "the outputs are exactly the committed shards'");
    let logs = job.command(&["logs", &job.id, "--state", "state"]).output().unwrap();
    assert!(String::from_utf8_lossy(&logs.stdout).contains("WARN master: the job's deadline passed"));
}

#[test]
fn idle_workers_and_workers_that_lose_the_master_end_themselves() {
    // One long shard, three workers: two have nothing to lease and go idle.
    let files = inputs(1, 100);
    let job = TestJob::new("idle", &files);
    let extra =
        "[cluster]\nworkers = 3\nidle_timeout = \"1s\"\nlease_time = \"1s\"\n\n[sharding]\nsplit_text = false\n";
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 3000 }", extra);
    let out = job.run();
    assert!(out.status.success(), "{}", text(&out));
    let idle = ["worker-1", "worker-2", "worker-3"]
        .iter()
        .filter(|w| job.log(w).contains("ending: no work to lease for the idle timeout"))
        .count();
    assert_eq!(idle, 2, "two workers end idle");
    job.assert_nothing_left(Duration::from_secs(10));

    // The master dies and is not resumed: workers end after the master-lost timeout.
    let files = inputs(6, 100);
    let job = TestJob::new("master-lost", &files);
    let extra = "[cluster]\nworkers = 2\nmaster_lost_timeout = \"1s\"\nlease_time = \"1s\"\n\n[sharding]\ntarget_shard_bytes = 1\nsplit_text = false\n";
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 500 }", extra);
    let run = job.spawn();
    assert!(wait_until(Duration::from_secs(60), || job.log("worker-1").contains("attempt 1")));
    job.signal("master", "KILL");
    let _ = run.wait_with_output().unwrap();
    assert!(wait_until(Duration::from_secs(20), || job.alive().is_empty()), "{:?}", job.alive());
    for w in ["worker-1", "worker-2"] {
        // "ending: ..." or, for a worker that had not reached the master yet, "ending before any work: ...".
        assert!(job.log(w).contains("the master was unreachable for the master-lost timeout"), "{w}: {}", job.log(w));
    }
}

#[test]
fn credentials_shorter_than_the_job_are_refreshed_with_no_failed_operation() {
    let files = inputs(12, 100);
    let job = TestJob::new("creds", &files);
    let extra = "[provider]\nname = \"local\"\ncredential_ttl = \"2s\"\n\n[cluster]\nworkers = 1\nlease_time = \"1s\"\n\n[sharding]\ntarget_shard_bytes = 1\nsplit_text = false\n";
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 300 }", extra);
    let out = job.run();
    assert!(out.status.success(), "{}", text(&out));
    // `mayfly run` ends with the job's final state; the worker may still be
    // learning of the end: its log is whole once it is gone.
    job.assert_nothing_left(Duration::from_secs(10));
    let log = job.log("worker-1");
    let refreshes = log.matches("credentials refreshed").count();
    assert!(refreshes >= 2, "a 4 s job with 2 s credentials refreshes them: {log}");
    assert!(log.contains(", 0 failed operations"), "{log}");
}

/// Whether `hay` holds something shaped like a local credential's secret
/// (16 hex digits, a dot, 64 hex digits).
fn holds_a_credential(hay: &[u8]) -> bool {
    let hex = |b: &u8| b.is_ascii_hexdigit();
    hay.iter().enumerate().any(|(i, b)| {
        *b == b'.'
            && i >= 16
            && hay.len() >= i + 65
            && hay[i - 16..i].iter().all(hex)
            && hay[i + 1..i + 65].iter().all(hex)
    })
}

#[test]
fn no_secret_reaches_a_log_an_output_or_the_state() {
    no_secret_reaches("secrets", "text");
}

#[test]
fn no_secret_reaches_a_json_log_either() {
    no_secret_reaches("secrets-json", "json");
}

/// Credentials renewed during the job, every node's log (written in
/// `log_format`), every output and state file, the CLI's output: none holds
/// the job token, the issuer's key or any credential.
fn no_secret_reaches(id: &str, log_format: &str) {
    let files = inputs(8, 200);
    let job = TestJob::new(id, &files);
    let extra = "[provider]\nname = \"local\"\ncredential_ttl = \"2s\"\n\n[cluster]\nworkers = 2\nlease_time = \"1s\"\n\n[sharding]\ntarget_shard_bytes = 1\nsplit_text = false\n";
    let file = job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 400 }", extra);
    let with_format = std::fs::read_to_string(&file).unwrap().replacen(
        "[job]\n",
        &format!("[job]\nlog_format = \"{log_format}\"\n"),
        1,
    );
    std::fs::write(&file, with_format).unwrap();
    let run = job.run();
    assert!(run.status.success(), "{}", text(&run));
    assert!(
        job.log("worker-1").contains("credentials refreshed") || job.log("worker-2").contains("credentials refreshed")
    );
    let status = job.command(&["status", &job.id, "--state", "state"]).output().unwrap();
    let logs = job.command(&["logs", &job.id, "--state", "state"]).output().unwrap();
    let json_logs = job.command(&["logs", &job.id, "--state", "state", "--json"]).output().unwrap();
    let master_log = std::fs::read_to_string(job.state().join("logs/master.log")).unwrap();
    assert_eq!(master_log.starts_with('{'), log_format == "json", "{master_log}");
    let token = std::fs::read_to_string(job.state().join("secret/token")).unwrap().trim().to_owned();
    let key = std::fs::read(job.state().join("secret/issuer.key")).unwrap();
    assert!(token.len() >= 32 && key.len() == 32);
    // A credential of this job's issuer, to prove the scanner sees one.
    let provider =
        mayfly_data::provider::ProviderHandle::select(&mayfly_tests::local_selection(serde_json::json!({}))).unwrap();
    let sample = provider.credentials(&job.id, &job.state().to_string_lossy(), "probe").unwrap();
    assert!(holds_a_credential(format!("x {} y", sample.secret.expose()).as_bytes()), "the scanner finds a credential");
    let mut texts: Vec<(String, Vec<u8>)> = vec![
        ("`mayfly run`".into(), [run.stdout.clone(), run.stderr.clone()].concat()),
        ("`mayfly status`".into(), [status.stdout, status.stderr].concat()),
        ("`mayfly logs`".into(), [logs.stdout, logs.stderr].concat()),
        ("`mayfly logs --json`".into(), [json_logs.stdout, json_logs.stderr].concat()),
    ];
    let mut stack = vec![job.out(), job.state()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path == job.state().join("secret") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                texts.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    assert!(texts.len() > 20, "every log, output and state file: {}", texts.len());
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    for (what, bytes) in &texts {
        assert!(!contains(bytes, token.as_bytes()), "the job token is in {what}");
        assert!(
            !contains(bytes, &key) && !contains(bytes, hex::encode(&key).as_bytes()),
            "the issuer key is in {what}"
        );
        assert!(!holds_a_credential(bytes), "a credential is in {what}");
    }
    job.assert_nothing_left(Duration::from_secs(10));
}

#[test]
fn a_bootstrap_over_budget_rolls_back_and_leaves_nothing() {
    use mayfly_core::bootstrap::{BootstrapError, ReadyTask, bootstrap};
    use mayfly_data::provider::ProviderHandle;
    use mayfly_model::policy::{Clock, ManualClock};

    let files = inputs(3, 100);
    let job = TestJob::new("overrun", &files);
    let path = job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 10 }", "");
    let spec = mayfly_core::config::JobSpec::load(&path).unwrap();
    let spec = mayfly_core::config::JobSpec {
        input: Location::path(&job.dir.join("data")),
        output: Location::path(&job.out()),
        state: Location::path(&job.dir.join("state")),
        ..spec
    };
    let wasm = mayfly_tests::component(SLOW);
    let sha = mayfly_tests::task(SLOW).sha256().to_owned();
    let selection =
        mayfly_tests::local_selection(serde_json::json!({ "bootstrap_limit": "60s", "credential_ttl": "60s" }));
    let provider = ProviderHandle::select(&selection).unwrap();
    let clock = ManualClock::new(mayfly_model::policy::SystemClock.now());
    let moving = clock.clone();
    let ready = ReadyTask { component: wasm, sha256: sha };
    let rt = mayfly_data::provider::bridge().unwrap();
    let result = bootstrap(&spec, &ready, None, &provider, &rt, &clock, Default::default(), &mut |step| {
        // The master is launched, then the clock jumps past the budget.
        if step == "wait for the master" {
            moving.advance(Duration::from_secs(120));
        }
    });
    match result {
        // Overrun while waiting for the master, or (if it was already up) at the
        // next step: either way after a launch, which must be rolled back.
        Err(BootstrapError::OverBudget(e)) => {
            assert!(["wait for the master", "launch the workers"].contains(&e.step.as_str()), "{}", e.step)
        }
        other => panic!("expected an over-budget error, got {other:?}"),
    }
    assert!(!job.nodes().is_empty(), "the master was launched before the overrun");
    job.assert_nothing_left(Duration::from_secs(5));
}

#[test]
fn bad_job_files_fail_before_anything_is_launched() {
    let files = inputs(2, 100);
    let job = TestJob::new("bad-config", &files);
    job.write_job(SLOW, "{ mode = \"slow\" }", "[cluster]\nwokers = 2\n");
    let out = job.run();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("job.toml:19: unknown field `wokers`"), "{}", text(&out));

    let wasm = mayfly_tests::component(SLOW);
    std::fs::write(
        job.dir.join("job.toml"),
        "[job]\nname = \"t\"\n[task]\npath = \"missing.wasm\"\n[input]\nurl = \"data\"\n[output]\nurl = \"out\"\n",
    )
    .unwrap();
    let out = job.run();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("job.toml:4: `task.path` \"missing.wasm\": no such file or directory"),
        "{}",
        text(&out)
    );

    let not_wasm = job.dir.join("data/f000.txt");
    std::fs::write(
        job.dir.join("job.toml"),
        format!("[job]\nname = \"t\"\n[task]\npath = {not_wasm:?}\n[input]\nurl = \"data\"\n[output]\nurl = \"out\"\n"),
    )
    .unwrap();
    let out = job.run();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("loading the map task") && text(&out).contains("not a WebAssembly component"),
        "{}",
        text(&out)
    );
    assert!(!job.dir.join("state").exists() && !job.out().exists(), "nothing was created");
    let _ = wasm;
}

#[test]
fn inputs_and_outputs_that_cannot_be_used_are_refused_before_launch() {
    // An unreadable input (a dangling link: root can read any file).
    let job = TestJob::new("bad-input", &inputs(2, 100));
    std::os::unix::fs::symlink("/nonexistent/target", job.dir.join("data/broken.txt")).unwrap();
    job.write_job(SLOW, "{ mode = \"slow\" }", "");
    let out = job.run();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("list the inputs: cannot read input") && text(&out).contains("broken.txt"),
        "{}",
        text(&out)
    );
    assert!(job.nodes().is_empty());

    // An output location that is a file.
    let job = TestJob::new("bad-output", &inputs(2, 100));
    std::fs::write(job.dir.join("out"), b"not a directory").unwrap();
    job.write_job(SLOW, "{ mode = \"slow\" }", "");
    let out = job.run();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("output location") && text(&out).contains("is not writable"), "{}", text(&out));
    assert!(job.nodes().is_empty());
}

#[test]
fn an_empty_input_is_a_successful_empty_job() {
    let job = TestJob::new("empty", &[]);
    job.write_job(SLOW, "{ mode = \"slow\" }", "");
    let out = job.run();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("the input is empty: nothing to process"), "{}", text(&out));
    assert!(text(&out).contains("0 shards committed, 0 failed"), "{}", text(&out));
    job.assert_nothing_left(Duration::from_secs(10));
}

#[test]
fn an_input_that_vanishes_mid_job_fails_that_item_only() {
    let files = inputs(6, 200);
    let job = TestJob::new("vanish", &files);
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 300 }", &cluster(1, ""));
    let run = job.spawn();
    assert!(wait_until(Duration::from_secs(60), || job.log("worker-1").contains("attempt 1")));
    std::fs::remove_file(job.dir.join("data/f005.txt")).unwrap();
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("5 shards committed, 1 failed"), "{}", text(&out));
    assert!(text(&out).contains("failed shard 5 (f005.txt): input f005.txt"), "{}", text(&out));
    assert_eq!(job.map_outputs().len(), 5);
    job.assert_nothing_left(Duration::from_secs(10));
}

#[test]
fn a_second_run_of_a_running_job_id_is_refused() {
    let files = inputs(4, 100);
    let job = TestJob::new("twice", &files);
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 500 }", &cluster(1, ""));
    let run = job.spawn();
    assert!(wait_until(Duration::from_secs(60), || job.log("worker-1").contains("attempt 1")));
    // A second run into another output, same id.
    let text2 = std::fs::read_to_string(job.dir.join("job.toml")).unwrap().replace("url = \"out\"", "url = \"out2\"");
    std::fs::write(job.dir.join("job2.toml"), text2).unwrap();
    let out = job.command(&["run", "job2.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("job twice is still running"), "{}", text(&out));
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    job.assert_nothing_left(Duration::from_secs(10));
}

#[test]
fn the_worker_api_refuses_requests_without_the_job_token() {
    use mayfly_core::api::{CallError, Client, CommitRequest, LeaseRequest};
    let files = inputs(3, 100);
    let job = TestJob::new("auth", &files);
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 1500 }", &cluster(1, ""));
    let run = job.spawn();
    assert!(wait_until(Duration::from_secs(60), || job.log("worker-1").contains("attempt 1")));
    let info: mayfly_core::api::MasterInfo = mayfly_core::job::read_json(&job.state().join("master.json")).unwrap();
    let token = std::fs::read_to_string(job.state().join("secret/token")).unwrap();
    let good = Client::connect(&info, token.trim(), Duration::from_secs(5)).unwrap();
    let before = good.status().unwrap();
    // The master serves TLS with the job's own CA: plain HTTP gets nowhere, and
    // a client that trusts another job's CA does not talk to this master at all.
    let ca = info.ca.clone().expect("the master publishes its CA");
    assert!(ca.contains("BEGIN CERTIFICATE"), "{ca}");
    let plain = Client::new(&info.addr, token.trim(), Duration::from_secs(5));
    assert!(matches!(plain.status(), Err(CallError::Unreachable(_))), "plain HTTP to a TLS master");
    let ip = info.addr.rsplit_once(':').unwrap().0.parse().unwrap();
    let other = mayfly_core::tls::master_tls("another-job", ip).unwrap();
    let foreign = mayfly_core::api::MasterInfo { ca: Some(other.ca_pem.clone()), ..info.clone() };
    let wrong_ca = Client::connect(&foreign, token.trim(), Duration::from_secs(5)).unwrap();
    let refused = wrong_ca.status();
    assert!(
        matches!(&refused, Err(CallError::Unreachable(e)) if e.to_lowercase().contains("certificate")),
        "{refused:?}"
    );
    for bad_token in ["", "wrong", &"0".repeat(64)] {
        let bad = Client::connect(&info, bad_token, Duration::from_secs(5)).unwrap();
        for result in [
            bad.lease(&LeaseRequest { worker: "intruder".into(), credential_expires_at: u64::MAX }).map(|_| ()),
            bad.commit(&CommitRequest { shard: 0, token: 1, outputs: vec![] }).map(|_| ()),
            bad.status().map(|_| ()),
        ] {
            assert!(matches!(result, Err(CallError::Refused { status: 401, .. })), "{result:?}");
        }
    }
    let after = good.status().unwrap();
    assert_eq!((before.counts.leased, before.retries), (after.counts.leased, after.retries), "nothing changed");
    // A commit with a stale fencing token is refused too.
    let stale = good.commit(&CommitRequest { shard: 0, token: 999_999, outputs: vec![] });
    assert!(matches!(stale, Err(CallError::Refused { status: 409, .. })), "{stale:?}");
    assert!(!job.log("master").contains(token.trim()), "the token never reaches the log");
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    job.assert_nothing_left(Duration::from_secs(10));
}

#[test]
fn the_worker_api_refuses_other_jobs_tokens_replays_and_bad_bodies() {
    use mayfly_core::api::{Client, CommitRequest, StagedFile};
    use mayfly_core::ledger::Event;
    // Another job, run to its end: its token is a real one, not this job's.
    let other = TestJob::new("auth-other", &inputs(1, 10));
    other.write_job(SLOW, "{ mode = \"slow\", delay_ms = 0 }", &cluster(1, ""));
    let out = other.run();
    assert!(out.status.success(), "{}", text(&out));
    let other_token = std::fs::read_to_string(other.state().join("secret/token")).unwrap().trim().to_owned();

    let files = inputs(4, 100);
    let job = TestJob::new("auth-replay", &files);
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 1500 }", &cluster(1, ""));
    let run = job.spawn();
    let journal = || mayfly_core::master::read_journal(&job.state().join("journal.jsonl"));
    let first_commit = || {
        journal().into_iter().find_map(|e| match e {
            Event::Committed { shard, token, outputs } => Some((shard, token, outputs)),
            _ => None,
        })
    };
    assert!(wait_until(Duration::from_secs(60), || first_commit().is_some()), "no commit");
    let (shard, committed_token, outputs) = first_commit().unwrap();
    let info: mayfly_core::api::MasterInfo = mayfly_core::job::read_json(&job.state().join("master.json")).unwrap();
    let token = std::fs::read_to_string(job.state().join("secret/token")).unwrap().trim().to_owned();
    assert_ne!(token, other_token);
    let good = Client::connect(&info, &token, Duration::from_secs(30)).unwrap();
    let before = good.status().unwrap();
    let paths = ["/v1/lease", "/v1/heartbeat", "/v1/commit", "/v1/fail", "/v1/release"];

    // Another job's token: 401 everywhere, even with a well-formed body.
    let foreign = Client::connect(&info, &other_token, Duration::from_secs(5)).unwrap();
    let body = format!(
        "{{\"worker\":\"intruder\",\"credential_expires_at\":1,\"shard\":{shard},\"token\":{committed_token},\"outputs\":[],\"error\":\"x\",\"retryable\":true}}"
    );
    for path in paths {
        let (status, _) = foreign.post_raw(path, body.as_bytes()).unwrap();
        assert_eq!(status, 401, "{path} with another job's token");
    }
    // No token at all, with a malformed body: 401, so it learns nothing about the body.
    let anonymous = Client::connect(&info, "", Duration::from_secs(5)).unwrap();
    assert_eq!(anonymous.post_raw("/v1/commit", b"not json").unwrap().0, 401);

    // A replayed commit of a committed shard: refused as stale; its output stays as it was.
    let output = job.out().join("map").join(&outputs[0].key).join(&outputs[0].name);
    let bytes = std::fs::read(&output).unwrap();
    let staged: Vec<StagedFile> =
        outputs.iter().map(|o| StagedFile { key: o.key.clone(), name: o.name.clone(), bytes: o.bytes }).collect();
    let replay = good.commit(&CommitRequest { shard, token: committed_token, outputs: staged.clone() });
    assert!(matches!(replay, Err(mayfly_core::api::CallError::Refused { status: 409, .. })), "{replay:?}");
    // A fail or release of it, replayed: refused too; the shard stays committed.
    let (status, _) = good
        .post_raw(
            "/v1/fail",
            format!("{{\"shard\":{shard},\"token\":{committed_token},\"error\":\"x\",\"retryable\":true}}").as_bytes(),
        )
        .unwrap();
    assert_eq!(status, 409);
    let (status, _) =
        good.post_raw("/v1/release", format!("{{\"shard\":{shard},\"token\":{committed_token}}}").as_bytes()).unwrap();
    assert_eq!(status, 409);
    // Malformed bodies with the right token: 400, naming what was wrong.
    for path in paths {
        for body in [&b"not json"[..], b"", b"[]", b"{\"shard\": \"zero\", \"token\": -1}"] {
            let (status, message) = good.post_raw(path, body).unwrap();
            assert_eq!(status, 400, "{path} {:?}: {message}", String::from_utf8_lossy(body));
            assert!(message.contains("malformed request"), "{message}");
        }
    }
    // An oversized body: 413 (or, if the master closes the connection before
    // the client has sent it all, a reset), and the master still answers.
    match good.post_raw("/v1/commit", &vec![b' '; 65 << 20]) {
        Ok((status, _)) => assert_eq!(status, 413),
        Err(e) => assert!(matches!(e, mayfly_core::api::CallError::Unreachable(_)), "{e:?}"),
    }
    good.status().expect("the master answers after an oversized request");

    // Nothing changed: no attempt failed, the committed output is as it was.
    let after = good.status().unwrap();
    assert_eq!((after.retries, after.counts.failed), (before.retries, 0));
    assert_eq!(std::fs::read(&output).unwrap(), bytes);
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_exactly_once(&job, &files);
    // Each refusal is logged, and no log holds either token.
    let master = job.log("master");
    assert!(master.matches("refused a request without a valid job token").count() >= 6, "{master}");
    for node in job.nodes() {
        let log = job.log(&node.node);
        assert!(!log.contains(&token) && !log.contains(&other_token), "a token in {}'s log", node.node);
    }
    job.assert_nothing_left(Duration::from_secs(10));
}

#[test]
fn reap_ends_nodes_past_their_deadline_that_could_not_end_themselves() {
    // Stopped processes run neither the master's deadline handling nor their
    // own dead-man switch: only `mayfly reap` can end them.
    let files = inputs(20, 100);
    let job = TestJob::new("reap", &files);
    let extra = "[cluster]\nworkers = 2\ndeadline = \"3s\"\n\n[sharding]\ntarget_shard_bytes = 1\nsplit_text = false\n";
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 300 }", extra);
    let run = job.spawn();
    assert!(wait_until(Duration::from_secs(60), || job.log("worker-2").contains("attempt 1")));
    for node in ["master", "worker-1", "worker-2"] {
        job.signal(node, "STOP");
    }
    // Before the deadline, reap leaves the job alone.
    let out = job.command(&["reap", "--state", "state"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 node(s) reaped"), "{}", text(&out));
    assert_eq!(job.alive().len(), 3);
    let deadline = job.node("master").expires_at;
    assert!(wait_until(Duration::from_secs(10), || mayfly_model::policy::Clock::now(
        &mayfly_model::policy::SystemClock
    ) > deadline));
    let out = job.command(&["reap", "--state", "state"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 node(s) reaped"), "{}", text(&out));
    job.assert_nothing_left(Duration::from_secs(5));
    let _ = run.wait_with_output();
}

#[test]
fn plan_status_and_logs_show_an_operator_what_happened() {
    let files = inputs(6, 1000);
    let job = TestJob::new("operator", &files);
    job.write_job(
        SLOW,
        "{ mode = \"slow\", delay_ms = 10 }",
        "[cluster]\nworkers = 2\n\n[sharding]\nshards_per_worker = 1\nsplit_text = false\n",
    );

    let out = job.command(&["plan", "job.toml"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(plan.starts_with("6 objects, 5.9KiB in 2 shards (target 2.9KiB)"), "{plan}");
    assert!(plan.contains("shard    0") && plan.contains("f000.txt, f001.txt, f002.txt"), "{plan}");
    let out = job.command(&["plan", "job.toml", "--json"]).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["plan"]["shards"].as_array().unwrap().len(), 2);
    assert!(!job.dir.join("state").exists(), "plan launches nothing and writes no state");

    let out = job.run();
    assert!(out.status.success(), "{}", text(&out));
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(summary.contains("job operator: 6 input objects, 5.9KiB in 2 shards"), "{summary}");
    assert!(
        summary.contains("finished in") && summary.contains("2 shards committed, 0 failed, 0 retries; 6 map outputs"),
        "{summary}"
    );

    let out = job.command(&["status", "operator", "--state", "state"]).output().unwrap();
    let ended = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        ended.starts_with("job operator ended (done) after ")
            && ended.contains(": 2 of 2 shards committed, 0 failed, 0 retries; 6 outputs"),
        "{ended}"
    );
    // Per node: attempts and commits add up to the job's (whoever took which shard).
    let per_node: Vec<(u64, u64)> = ended
        .lines()
        .filter(|l| l.starts_with("worker-"))
        .map(|l| {
            let cols: Vec<u64> = l.split_whitespace().skip(1).take(2).map(|c| c.parse().unwrap()).collect();
            (cols[0], cols[1])
        })
        .collect();
    assert_eq!(per_node.iter().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1)), (2, 2), "{ended}");
    let out = job.command(&["status", "operator", "--state", "state", "--json"]).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["counts"]["committed"], 2);
    let out = job.command(&["status", "nope", "--state", "state"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("no job nope under state"), "{}", text(&out));

    // Every node's log, after every node is gone; one node with --node.
    job.assert_nothing_left(Duration::from_secs(10));
    let out = job.command(&["logs", "operator", "--state", "state"]).output().unwrap();
    let logs = String::from_utf8_lossy(&out.stdout).into_owned();
    for node in ["master: ", "worker-1: ", "worker-2: "] {
        assert!(logs.lines().any(|l| l.starts_with(node)), "no {node} lines:\n{logs}");
    }
    let out = job.command(&["logs", "operator", "--state", "state", "--node", "worker-2"]).output().unwrap();
    let one = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!one.is_empty() && one.lines().all(|l| l.starts_with("worker-2: ")), "{one}");
    // The provider recorded each node with its role and job.
    let node = job.node("worker-1");
    assert_eq!((node.role, node.job.as_str()), (mayfly_data::provider::Role::Worker, "operator"));
}

#[test]
fn an_item_longer_than_the_credential_lifetime_completes_on_refreshed_credentials() {
    // Regression: credentials used to be refreshed only between items, and a
    // lease never outlives them, so an item longer than their remaining life
    // lost its lease on every attempt and the shard failed.
    let files = inputs(2, 100);
    let job = TestJob::new("long-item", &files);
    let extra = "[provider]\nname = \"local\"\ncredential_ttl = \"2s\"\n\n[cluster]\nworkers = 1\nlease_time = \"1s\"\n\n[sharding]\ntarget_shard_bytes = 1\nsplit_text = false\n";
    job.write_job(SLOW, "{ mode = \"slow\", delay_ms = 3000 }", extra);
    let out = job.run();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("2 shards committed, 0 failed, 0 retries"), "{}", text(&out));
    // The worker's log is whole once it is gone (it may outlive `mayfly run`
    // by a lease request).
    job.assert_nothing_left(Duration::from_secs(10));
    let log = job.log("worker-1");
    assert!(log.matches("credentials refreshed").count() >= 3, "{log}");
    assert!(log.contains(", 0 failed operations"), "{log}");
    assert_exactly_once(&job, &files);
}
