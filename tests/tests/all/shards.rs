//! Shards, not items: one instance per shard attempt with state across its
//! items, per-shard and per-item outputs, a retry that starts clean, and bad
//! items quarantined without sinking their shard.

use std::collections::BTreeMap;

use mayfly_tests::cluster::{TestJob, text};

const STATEFUL: &str = "tests/guests/stateful";

/// `n` small files, `poisoned` of them with "poison" in their name.
fn files(n: usize, poisoned: &[usize]) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let name = if poisoned.contains(&i) { format!("poison-{i:04}.txt") } else { format!("f{i:04}.txt") };
            (name, format!("item {i}\n").into_bytes())
        })
        .collect()
}

/// `[cluster]` with `workers` and `shards` shards in all.
fn cluster(workers: u32, shards: u32, extra: &str) -> String {
    format!(
        "[cluster]\nworkers = {workers}\ndeadline = \"3m\"\nlease_time = \"5s\"\n\n\
         [sharding]\nshards_per_worker = {}\nsplit_text = false\n\n{extra}\n",
        shards / workers
    )
}

fn manifest(job: &TestJob) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(job.out().join("_manifest.json")).unwrap()).unwrap()
}

/// What each committed shard's `seen.txt` lists: the items its one instance
/// was given, by shard key.
fn seen(job: &TestJob) -> BTreeMap<String, Vec<String>> {
    job.map_outputs()
        .into_iter()
        .filter_map(|p| p.strip_suffix("/seen.txt").map(str::to_owned))
        .map(|shard| {
            let text = std::fs::read_to_string(job.out().join("map").join(&shard).join("seen.txt")).unwrap();
            (shard, text.lines().map(str::to_owned).collect())
        })
        .collect()
}

/// Every good file has its copy once, the shards' own outputs sit under
/// `_shards/`, and the instances that committed saw each good file once.
fn assert_committed_once(job: &TestJob, files: &[(String, Vec<u8>)], bad: &[&str]) {
    let good: Vec<&(String, Vec<u8>)> = files.iter().filter(|(n, _)| !bad.contains(&n.as_str())).collect();
    let copies: Vec<String> = job.map_outputs().into_iter().filter(|p| p.ends_with("/copy.bin")).collect();
    let expected: Vec<String> = good.iter().map(|(n, _)| format!("{n}/copy.bin")).collect();
    assert_eq!(copies, expected, "one copy per good item, none for a bad one");
    for (name, data) in &good {
        assert_eq!(&std::fs::read(job.out().join("map").join(name).join("copy.bin")).unwrap(), data, "{name}");
    }
    let mut all_seen: Vec<String> = seen(job).into_values().flatten().collect();
    all_seen.sort();
    let mut names: Vec<String> = good.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(all_seen, names, "the committed instances saw every good item once and no bad one");
    for shard in seen(job).keys() {
        assert!(shard.starts_with("_shards/"), "a shard's own output is under _shards/: {shard}");
    }
    let listed = manifest(job)["outputs"].as_array().unwrap().len();
    assert_eq!(listed, job.map_outputs().len(), "the manifest lists every output once");
    assert!(!job.out().join("_mayfly/staging").exists(), "staging is cleaned up");
}

#[test]
fn one_poisoned_item_among_thousands_is_quarantined_and_every_other_item_commits_once() {
    let files = files(2000, &[1234]);
    let job = TestJob::new("poisoned", &files);
    job.write_job(STATEFUL, "{ fatal_on = \"poison\" }", &cluster(2, 2, ""));
    let out = job.run();
    let s = text(&out);
    assert!(out.status.success(), "1% of 2000 items may be quarantined: {s}");
    assert!(s.contains("shards committed, 0 failed") && s.contains("; 1 item quarantined"), "{s}");
    assert!(
        s.contains("quarantined item poison-1234.txt (shard ") && s.contains("poison-1234.txt is poisoned"),
        "the summary names the item and its error: {s}"
    );
    assert_committed_once(&job, &files, &["poison-1234.txt"]);
    let m = manifest(&job);
    let q = m["quarantined_items"].as_array().unwrap();
    assert_eq!(q.len(), 1, "{m}");
    assert_eq!(q[0]["item"], "poison-1234.txt");
    assert_eq!(q[0]["attempts"], 1, "a fatal error quarantines at once");
    assert!(q[0]["error"].as_str().unwrap().contains("poison-1234.txt is poisoned"), "{m}");
    assert_eq!(m["complete"], true, "{m}");

    // `status` says so, and `replay` runs the item again, item by item.
    let out = job.command(&["status", "poisoned", "--state", "state"]).output().unwrap();
    assert!(text(&out).contains("1 item quarantined") && text(&out).contains("poison-1234.txt"), "{}", text(&out));
    let shard = q[0]["shard"].as_u64().unwrap().to_string();
    let out = job
        .command(&["replay", "poisoned", &shard, "--state", "state", "--item", "poison-1234.txt", "--out", "replayed"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("item poison-1234.txt: FAILED: failed: poison-1234.txt is poisoned"), "{}", text(&out));
    job.assert_nothing_left(std::time::Duration::from_secs(10));
}

#[test]
fn past_max_failed_items_the_job_fails_naming_the_bound_and_still_commits_the_rest() {
    let files = files(40, &[3, 30]);
    let job = TestJob::new("too-many-bad", &files);
    job.write_job(STATEFUL, "{ fatal_on = \"poison\" }", &cluster(2, 4, "[limits]\nmax_failed_items = 1\n"));
    let out = job.run();
    let s = text(&out);
    assert_eq!(out.status.code(), Some(1), "{s}");
    // Whichever poisoned item failed first is quarantined; the other fails its shard.
    assert!(s.contains("shards committed, 1 failed") && s.contains("; 1 item quarantined"), "{s}");
    assert!(
        s.contains("not quarantined: 1 items already are, the job's max_failed_items"),
        "the failed shard says why its item was not quarantined: {s}"
    );
    assert_eq!(manifest(&job)["complete"], false);
}

#[test]
fn a_stateful_task_that_traps_mid_shard_is_retried_in_a_clean_instance() {
    let files = files(30, &[]);
    let job = TestJob::new("trap-mid-shard", &files);
    // Traps on f0017.txt in the shard's first attempt only.
    job.write_job(STATEFUL, "{ trap_on = \"f0017\" }", &cluster(1, 1, ""));
    let out = job.run();
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(s.contains("1 shards committed, 0 failed, 1 retries"), "{s}");
    assert!(!s.contains("quarantined"), "a trap once is retried, not quarantined: {s}");
    // The retry's instance saw every item once: nothing of the trapped
    // attempt's state (it had seen f0000..f0017) and none of its outputs.
    assert_committed_once(&job, &files, &[]);
    assert_eq!(seen(&job).len(), 1);
}

#[test]
fn an_item_that_traps_in_every_attempt_is_quarantined_after_two() {
    let files = files(12, &[]);
    let job = TestJob::new("trap-always", &files);
    job.write_job(
        STATEFUL,
        "{ trap_on = \"f0005\", trap_always = true }",
        &cluster(1, 1, "[limits]\nmax_failed_items = 1\n"),
    );
    let out = job.run();
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(s.contains("quarantined item f0005.txt (shard 0, failed 2 times)"), "{s}");
    assert_committed_once(&job, &files, &["f0005.txt"]);
}

#[test]
fn a_panic_in_start_or_finish_fails_the_shard_not_its_items() {
    for step in ["start", "finish"] {
        let files = files(6, &[]);
        let job = TestJob::new(&format!("panic-in-{step}"), &files);
        let limits = "[limits]\nmax_attempts = 2\nmax_failed_items = 10\n";
        job.write_job(STATEFUL, &format!("{{ panic_in = {step:?} }}"), &cluster(1, 1, limits));
        // The preflight refuses it before launch, as every shard would fail ...
        let out = job.run();
        let s = text(&out);
        assert_eq!(out.status.code(), Some(2), "{s}");
        assert!(s.contains("every shard would (a shard's `start` or `finish` failed)"), "{s}");
        assert!(s.contains(&format!("{step}: panicked: asked to panic in {step}")), "{s}");
        // ... and without it, the nodes fail the shard, not its items.
        let limits = format!("{limits}\n[preflight]\nenabled = false\n");
        job.write_job(STATEFUL, &format!("{{ panic_in = {step:?} }}"), &cluster(1, 1, &limits));
        let out = job.run();
        let s = text(&out);
        assert_eq!(out.status.code(), Some(1), "{s}");
        assert!(s.contains("0 shards committed, 1 failed"), "{s}");
        assert!(s.contains(&format!("start: panicked: asked to panic in {step}")) || step != "start", "{s}");
        assert!(s.contains(&format!("finish: panicked: asked to panic in {step}")) || step != "finish", "{s}");
        assert!(!s.contains("quarantined"), "no item is blamed for the shard's own step: {s}");
        assert!(job.map_outputs().is_empty(), "nothing of a failed shard is visible");
    }
}

#[test]
fn a_combiner_that_outgrows_its_memory_fails_its_shard_and_blames_no_item() {
    let files = files(12, &[]);
    let job = TestJob::new("hoarder", &files);
    // Each item keeps 1 MiB: the 8 MiB limit is reached a few items in.
    job.write_job(
        STATEFUL,
        "{ hoard_kib = 1024 }",
        &cluster(1, 1, "[limits]\nmemory = \"8MiB\"\nmax_failed_items = 10\n"),
    );
    let out = job.run();
    let s = text(&out);
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert!(s.contains("0 shards committed, 1 failed") && s.contains("ran out of memory"), "{s}");
    assert!(!s.contains("quarantined"), "the items before share the blame: {s}");
    assert!(job.map_outputs().is_empty());
}

#[test]
fn item_isolation_gives_each_item_a_fresh_instance() {
    let files = files(8, &[]);
    let job = TestJob::new("isolated", &files);
    job.write_job(STATEFUL, "{}\nisolation = \"item\"", &cluster(1, 1, ""));
    let out = job.run();
    assert!(out.status.success(), "{}", text(&out));
    // Each instance saw its one item, and wrote its `seen.txt` with it.
    for (name, _) in &files {
        let seen = std::fs::read_to_string(job.out().join("map").join(name).join("seen.txt")).unwrap();
        assert_eq!(seen, format!("{name}\n"), "{name}");
    }
    assert!(!job.out().join("map/_shards").exists(), "no output belongs to the shard");
}

#[test]
fn the_worker_reads_items_ahead_within_the_jobs_memory_budget() {
    // 40 items of 1 KiB and one of 64 KiB in one shard; 4 fetches in flight
    // and 8 KiB of memory: the large one is read as the task goes.
    let mut files: Vec<(String, Vec<u8>)> = (0..40).map(|i| (format!("f{i:04}.txt"), vec![b'a'; 1024])).collect();
    files.push(("large.bin".into(), vec![b'b'; 64 << 10]));
    let job = TestJob::new("read-ahead", &files);
    with_input(&job, "read_ahead = 4\nread_ahead_memory = \"8KiB\"\n");
    let out = job.run();
    assert!(out.status.success(), "{}", text(&out));
    assert_committed_once(&job, &files, &[]);
    let log = job.log("worker-1");
    let line = log.lines().find(|l| l.contains("shard 0 committed")).unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("(41 items, 42 outputs; 40 items read ahead (4 requests, peak ")
            && line.contains(", 1 read as the task went (larger than the read-ahead memory)"),
        "{line}"
    );
    let peak = line.split("peak ").nth(1).and_then(|r| r.split(" held").next()).unwrap();
    let peak: mayfly_model::units::ByteSize = peak.parse().unwrap();
    assert!(peak.0 > 0 && peak.0 <= 8 << 10, "never more than the budget: {line}");

    // Off: every item is read as the task goes.
    let job = TestJob::new("read-ahead-off", &files);
    with_input(&job, "read_ahead = 0\n");
    let out = job.run();
    assert!(out.status.success(), "{}", text(&out));
    assert_committed_once(&job, &files, &[]);
    assert!(job.log("worker-1").contains("(41 items, 42 outputs; read-ahead off)"), "{}", job.log("worker-1"));
}

/// Writes `job`'s file (the stateful task, one worker, one shard) with `keys`
/// added to its `[input]`.
fn with_input(job: &TestJob, keys: &str) {
    let path = job.write_job(STATEFUL, "{}", &cluster(1, 1, ""));
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("[input]\nurl = \"data\"\n", &format!("[input]\nurl = \"data\"\n{keys}"), 1))
        .unwrap();
}

/// One instance of the stateful task over `items` (names, each 16 bytes),
/// in process, with `limits`: each item call's result and the lines it logged.
fn calls(params: &str, limits: mayfly_core::host::Limits, items: &[&str]) -> Vec<(mayfly_core::host::Call, usize)> {
    use mayfly_core::host::{BytesInput, ShardInfo, ShardStart};
    use std::sync::Arc;
    let task = mayfly_tests::task(STATEFUL);
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let start = ShardStart {
        info: ShardInfo { job: "calls".into(), shard: 0, attempt: 1, items: items.len() as u32 },
        params: Arc::from(params),
        limits,
        staging: mayfly_tests::scratch("per-call-limits"),
        shard_key: mayfly_core::job::shard_key(0),
        partitions: 1,
    };
    let (mut session, started) = rt.block_on(mayfly_tests::runtime().start(&task, start));
    started.result.unwrap();
    let calls = items
        .iter()
        .map(|name| {
            let call = rt.block_on(session.item(Arc::new(BytesInput::new(*name, vec![b'z'; 16])), Some(name)));
            let lines = call.logs.len();
            (call, lines)
        })
        .collect();
    session.discard();
    calls
}

#[test]
fn the_log_limit_counts_afresh_for_each_item() {
    // 40 KiB logged per item against a 64 KiB limit: each call fits; the three together would not.
    let limits = mayfly_core::host::Limits { log: mayfly_model::units::ByteSize(64 << 10), ..Default::default() };
    let calls = calls(r#"{"log_kib": 40}"#, limits, &["a", "b", "c"]);
    for (call, lines) in &calls {
        assert_eq!(call.result, Ok(()), "{:?}", call.result);
        assert_eq!(*lines, 40, "each call's own lines, none carried over");
    }
}

#[test]
fn a_memory_growth_refused_in_an_earlier_item_is_not_a_later_traps_cause() {
    // Item `a` asks for 64 MiB under a 16 MiB limit, is refused and goes on;
    // item `b` traps: a trap, not "out of memory".
    let limits = mayfly_core::host::Limits { memory: mayfly_model::units::ByteSize(16 << 20), ..Default::default() };
    let calls = calls(r#"{"try_mib": 64, "trap_on": "b"}"#, limits, &["a", "b"]);
    assert_eq!(calls[0].0.result, Ok(()), "a refused growth the task survives is no failure");
    match &calls[1].0.result {
        Err(mayfly_core::host::Failure::Trap { .. }) => {}
        other => panic!("expected a trap, got {other:?}"),
    }
}
