//! The operator's commands, as a user sees them: `plan` (cost, time, rule
//! warnings), `status` (live and ended), `logs` (filters, follow), `replay`,
//! `report` (rendered by headless Chromium) and `init`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mayfly_tests::cluster::{TestJob, text, wait_until};

const GUEST: &str = "tests/guests/misbehave";

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn plan_prices_the_job_and_warns_for_each_rule_it_would_break() {
    let mut files: Vec<(String, Vec<u8>)> = vec![("big.bin".into(), vec![7u8; 4 << 20])];
    files.extend((0..3).map(|i| (format!("small-{i}.txt"), vec![b'x'; 10_000])));
    let job = TestJob::new("ops-plan", &files);
    job.write_job(
        GUEST,
        "{ mode = \"picky\" }",
        "[provider]\nname = \"local\"\ncredential_ttl = \"5s\"\n\n\
         [cluster]\nworkers = 2\ndeadline = \"2s\"\nlease_time = \"30s\"\n\n\
         [sharding]\nsplit_text = false\n\n[prices]\nlocal = 0.5\n",
    );
    let out = job.command(&["plan", "job.toml", "--rate", "1MiB"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let s = stdout(&out);
    for expected in [
        "cost (local):",
        "master",
        "workers",
        "$0.5000/h (the job's [prices])",
        "at most $",
        "every node to the deadline",
        "bootstrap: listing and planning took",
        "credentials: live 5s",
        "warning: time limit: the work is expected to take at least the whole deadline",
        "warning: credential expiry: credentials live 5s but `cluster.lease_time` is 30s",
        "warning: even sharding: shard",
    ] {
        assert!(s.contains(expected), "missing {expected:?} in:\n{s}");
    }
    let out = job.command(&["plan", "job.toml", "--rate", "1MiB", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = &doc["estimate"];
    // 4 MiB at 1 MiB/s is cut at the 2 s deadline; 3 nodes, and 2 replacements
    // at most, at $0.5/h.
    assert_eq!(e["expected_secs"].as_f64(), Some(2.0), "{doc}");
    let ceiling = e["ceiling_usd"].as_f64().unwrap();
    assert!((ceiling - 5.0 * 0.5 * 2.0 / 3600.0).abs() < 1e-12, "{doc}");
    assert_eq!(e["nodes"][1]["count"], 2);
    assert_eq!(e["nodes"][1]["node_type"], "local");
    assert_eq!(doc["warnings"].as_array().unwrap().len(), 3, "{doc}");

    // A job that breaks no rule: no warning; the provider's own price.
    let even: Vec<(String, Vec<u8>)> = (0..4).map(|i| (format!("f-{i}.txt"), vec![b'y'; 20_000])).collect();
    let fine = TestJob::new("ops-plan-fine", &even);
    fine.write_job(GUEST, "{ mode = \"picky\" }", "[cluster]\nworkers = 2\ndeadline = \"1h\"\n");
    let out = fine.command(&["plan", "job.toml"]).output().unwrap();
    let s = stdout(&out);
    assert!(out.status.success() && !s.contains("warning"), "{s}");
    assert!(s.contains("$0.0000/h (this machine, already paid for)"), "{s}");

    // A bad price is refused, naming its key.
    job.write_job(GUEST, "{ mode = \"picky\" }", "[prices]\n\"m5.large\" = -1\n");
    let out = job.command(&["plan", "job.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("`prices.m5.large` = -1"), "{}", text(&out));
}

/// Six inputs, one of which (`bad.txt`) the task refuses for good; each
/// other takes `delay_ms`.
fn picky_job(id: &str, delay_ms: u64) -> TestJob {
    // The same size each, unsplit: one item per shard.
    let mut files: Vec<(String, Vec<u8>)> =
        (0..5).map(|i| (format!("in-{i}.txt"), format!("input {i}\n").repeat(100).into_bytes())).collect();
    files.push(("bad.txt".into(), "not this!\n".repeat(100).into_bytes()));
    let job = TestJob::new(id, &files);
    job.write_job(
        GUEST,
        &format!("{{ mode = \"picky\", fail_on = \"bad\", delay_ms = {delay_ms} }}"),
        // What the nodes make of a shard that fails is what these tests read:
        // the preflight would refuse the job (tests/tests/all/before_launch.rs).
        "[cluster]\nworkers = 2\ndeadline = \"5m\"\n\n[sharding]\nshards_per_worker = 3\nsplit_text = false\nmin_shard_bytes = 0\n\n\
         [preflight]\nenabled = false\n",
    );
    job
}

fn final_state(job: &TestJob) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(job.state().join("final.json")).unwrap()).unwrap()
}

/// `status --once --json` of `job`, asked until `seen` holds (within a
/// minute): the status then, or the last one seen.
fn live_status_until(
    job: &TestJob,
    seen: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value, serde_json::Value> {
    let mut st = serde_json::Value::Null;
    let found = wait_until(Duration::from_secs(60), || {
        let out = job.command(&["status", &job.id, "--state", "state", "--once", "--json"]).output().unwrap();
        st = serde_json::from_slice(&out.stdout).unwrap_or_default();
        seen(&st)
    });
    if found { Ok(st) } else { Err(st) }
}

#[test]
fn a_running_jobs_status_names_its_quarantined_items() {
    // `a-bad.txt` sorts first, so its shard is leased first; the others take
    // 800 ms each on 2 workers, so the job runs for seconds after it is set aside.
    let mut files: Vec<(String, Vec<u8>)> =
        (0..10).map(|i| (format!("in-{i}.txt"), format!("input {i}\n").repeat(100).into_bytes())).collect();
    files.push(("a-bad.txt".into(), "not this!\n".repeat(100).into_bytes()));
    let job = TestJob::new("ops-status-quarantine", &files);
    job.write_job(
        GUEST,
        "{ mode = \"picky\", fail_on = \"bad\", delay_ms = 800 }",
        "[cluster]\nworkers = 2\ndeadline = \"5m\"\n\n[limits]\nmax_failed_items = 3\n\n\
         [sharding]\nshards_per_worker = 3\nsplit_text = false\nmin_shard_bytes = 0\n",
    );
    let run = job.spawn();
    let st = live_status_until(&job, |st| st["quarantined_items"].as_u64() == Some(1))
        .unwrap_or_else(|st| panic!("the live status never showed the quarantined item: {st}"));
    assert!(st["ended"].is_null(), "seen while the job runs: {st}");
    assert_eq!(st["max_failed_items"].as_u64(), Some(3), "{st}");
    assert_eq!(st["quarantined"][0][1]["key"], "a-bad.txt", "{st}");
    let out = job.command(&["status", &job.id, "--state", "state", "--once"]).output().unwrap();
    let live = stdout(&out);
    assert!(
        live.contains("items   1 quarantined, of at most 3 the job allows")
            && live.contains("  a-bad.txt (shard ")
            && live.contains("a-bad.txt is not acceptable"),
        "{live}"
    );
    let done = run.wait_with_output().unwrap();
    assert!(done.status.success(), "every other item commits: {}", text(&done));
    assert!(stdout(&done).contains("; 1 item quarantined"), "{}", text(&done));
}

#[test]
fn status_is_live_while_the_job_runs_and_a_summary_after() {
    let job = picky_job("ops-status", 1500);
    let run = job.spawn();
    // Live: once the workers have asked for work, one snapshot as JSON, one as text.
    let st = live_status_until(&job, |st| {
        st["workers"].as_array().is_some_and(|w| w.len() == 2) && st["counts"]["leased"].as_u64() > Some(0)
    })
    .unwrap_or_else(|st| panic!("no live status with both workers: {st}"));
    assert_eq!(st["job"], job.id.as_str());
    assert_eq!(st["shards"].as_u64(), Some(6));
    let workers = st["workers"].as_array().unwrap();
    assert!(workers.iter().all(|w| w["node"].as_str().unwrap().starts_with("worker-")), "{st}");
    let out = job.command(&["status", &job.id, "--state", "state", "--once"]).output().unwrap();
    let live = stdout(&out);
    assert!(out.status.success(), "{}", text(&out));
    for expected in ["job ops-status running for", "deadline in", "shards ", "committed", "ETA", "node ", "last seen"] {
        assert!(live.contains(expected), "missing {expected:?} in:\n{live}");
    }
    assert!(live.contains("worker-1 ") && live.contains("worker-2 ") && live.contains("shard "), "{live}");
    // A watcher that follows the job to its end, and a follower of its logs.
    let watcher = job
        .command(&["status", &job.id, "--state", "state", "--every", "200ms"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let follower =
        job.command(&["logs", &job.id, "--state", "state", "--follow"]).stdout(Stdio::piped()).spawn().unwrap();

    let done = run.wait_with_output().unwrap();
    assert_eq!(done.status.code(), Some(1), "one shard fails for good: {}", text(&done));
    let watched = watcher.wait_with_output().unwrap();
    let watched = stdout(&watched);
    assert!(watched.contains("running for"), "the watcher saw the job run:\n{watched}");
    assert!(watched.trim_end().lines().any(|l| l.starts_with("job ops-status ended (done)")), "{watched}");

    // The follower printed every node's lines as they came, and stopped.
    let followed = stdout(&follower.wait_with_output().unwrap());
    assert!(
        followed.contains("master: ") && followed.contains(" INFO master: job ops-status ended (done)"),
        "{followed}"
    );
    assert!(followed.contains("worker-1: ") && followed.contains("worker-2: "), "{followed}");
    assert_eq!(followed.matches("ended (done)").count(), 1, "each line once:\n{followed}");

    // Ended: the summary, per node, from the state alone.
    let out = job.command(&["status", &job.id, "--state", "state"]).output().unwrap();
    let s = stdout(&out);
    assert!(out.status.success(), "{}", text(&out));
    assert!(s.starts_with("job ops-status ended (done) after"), "{s}");
    assert!(s.contains("5 of 6 shards committed, 1 failed"), "{s}");
    assert!(s.contains("failed shard") && s.contains("bad.txt is not acceptable"), "{s}");
    let attempts: u64 = s
        .lines()
        .filter(|l| l.starts_with("worker-"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(attempts, 6, "every attempt counted on its node:\n{s}");
    job.assert_nothing_left(Duration::from_secs(5));
}

#[test]
fn logs_filter_by_shard_and_level_and_replay_reproduces_a_failed_shard() {
    let job = picky_job("ops-logs", 0);
    let out = job.run();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let fin = final_state(&job);
    let bad = fin["failed"][0][0].as_u64().unwrap();

    check_log_filters(&job, bad);
    // A bad level is refused with the levels there are.
    let out = job.command(&["logs", &job.id, "--state", "state", "--level", "loud"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("use trace, debug, info, warn or error"), "{}", text(&out));

    // replay: the failed shard fails again here, with the same error and log.
    let out =
        job.command(&["replay", &job.id, &bad.to_string(), "--state", "state", "--out", "replayed"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let s = stdout(&out);
    assert!(s.contains("item bad.txt: FAILED") && s.contains("bad.txt is not acceptable"), "{s}");
    assert!(s.contains("refusing bad.txt") && s.contains("not retryable"), "{s}");
    // A good shard: the same outputs as the job's, byte for byte.
    let good = (0..6u64).find(|s| *s != bad).unwrap();
    let out =
        job.command(&["replay", &job.id, &good.to_string(), "--state", "state", "--out", "replayed"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.state().join("manifest.json")).unwrap()).unwrap();
    let items = manifest["plan"]["shards"][good as usize]["items"].as_array().unwrap();
    assert!(!items.is_empty());
    for item in items {
        let key = item["object"].as_str().unwrap();
        let ours = std::fs::read(job.dir.join("replayed").join(key).join("copy.bin")).unwrap();
        let theirs = std::fs::read(job.out().join("map").join(key).join("copy.bin")).unwrap();
        assert_eq!(ours, theirs, "{key}");
    }
    // Bad input names what is wrong.
    let out = job.command(&["replay", &job.id, "99", "--state", "state"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("job ops-logs has 6 shards (0 to 5); there is no shard 99"), "{}", text(&out));
}

/// Headless Chromium, as Debian installs it. Like the moto and Azurite
/// helpers, the test installs what it needs on first use: when Chromium is not
/// on `PATH` and this runs as root, `apt-get install chromium`; otherwise it
/// fails with the command to run (never a silent skip).
fn chromium() -> PathBuf {
    static FOUND: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let find = || {
                ["chromium", "chromium-browser", "google-chrome"].into_iter().find_map(|name| {
                    std::env::var("PATH")
                        .unwrap_or_default()
                        .split(':')
                        .map(|dir| Path::new(dir).join(name))
                        .find(|p| p.is_file())
                })
            };
            if let Some(found) = find() {
                return found;
            }
            let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
            let apt = |args: &[&str]| {
                Command::new("apt-get")
                    .args(args)
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            let how = "install it with `sudo apt-get install chromium` (Debian's package) and run the tests again";
            assert!(root, "headless Chromium is needed for the report test and is not on PATH: {how}");
            eprintln!("installing Debian's chromium for the report test (apt-get, once)");
            let installed = apt(&["update", "-qq"]) && apt(&["install", "-y", "-qq", "chromium"]);
            assert!(installed, "`apt-get install chromium` failed (its errors are above): {how}");
            find().unwrap_or_else(|| panic!("apt-get installed chromium, but it is not on PATH: {how}"))
        })
        .clone()
}

fn headless(page: &Path, args: &[&str]) -> std::process::Output {
    let profile = page.with_extension("chromium-profile");
    Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"])
        // Nothing but the page: no update checks, sync or QUIC (the network is closed).
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap()
}

#[test]
fn the_report_is_one_page_that_renders_every_attempt_in_a_browser() {
    let job = picky_job("ops-report", 0);
    let out = job.run();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = job.command(&["report", &job.id, "--state", "state", "-o", "report.html"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("5 of 6 shards committed, 1 failed"), "{}", stdout(&out));
    let page = job.dir.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: nothing to fetch.
    for remote in ["http://", "https://", "src=\"//"] {
        assert!(!html.contains(remote), "the page refers to {remote}");
    }
    let journal = std::fs::read_to_string(job.state().join("journal.jsonl")).unwrap();
    let leases = journal.lines().filter(|l| l.contains("\"event\":\"lease\"")).count();
    assert_eq!(html.matches("class=\"attempt committed\"").count(), 5, "one bar per committed attempt");
    assert_eq!(html.matches("class=\"attempt failed\"").count(), 1);
    assert!(html.contains("bad.txt is not acceptable") && html.contains("refusing bad.txt"), "the failure and its log");

    // Rendered by a browser: the page's script counted the bars it drew.
    let dom = headless(&page, &["--dump-dom", "--virtual-time-budget=2000"]);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.status.success(), "{}", text(&dom));
    assert!(dom_text.contains(&format!("{leases} attempts drawn")), "not rendered:\n{dom_text}");
    for id in ["id=\"figures\"", "id=\"timeline\"", "id=\"balance\"", "id=\"throughput\"", "id=\"failures\""] {
        assert!(dom_text.contains(id), "{id} missing");
    }
    let shot = job.dir.join("report.png");
    let out = headless(&page, &[&format!("--screenshot={}", shot.display()), "--window-size=1200,1400"]);
    assert!(out.status.success(), "{}", text(&out));
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a screenshot of {} bytes", png.len());
}

#[test]
fn init_makes_a_task_crate_that_tests_builds_and_runs_at_once() {
    let dir = mayfly_tests::scratch("ops-init");
    let mayfly = |args: &[&str]| {
        let out = Command::new(mayfly_tests::mayfly_bin())
            .args(args)
            .current_dir(&dir)
            .env("MAYFLY_CACHE_DIR", mayfly_tests::cache_dir())
            .output()
            .unwrap();
        (out.status.code(), text(&out))
    };
    let (code, said) = mayfly(&["init", "linecount"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("cargo test") && said.contains("mayfly run job.toml"), "the next steps: {said}");
    let krate = dir.join("linecount");
    // Its own tests pass natively, as they come.
    let mut test = mayfly_tests::cargo();
    test.args(["test", "--quiet"]).current_dir(&krate).env("CARGO_TARGET_DIR", mayfly_tests::target_dir());
    let out = test.output().unwrap();
    assert!(out.status.success(), "cargo test in the new crate: {}", text(&out));
    // And it runs as a job on this machine.
    let out = Command::new(mayfly_tests::mayfly_bin())
        .args(["run", "job.toml"])
        .current_dir(&krate)
        .env("MAYFLY_CACHE_DIR", mayfly_tests::cache_dir())
        .env("CARGO_TARGET_DIR", mayfly_tests::target_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "mayfly run job.toml: {}", text(&out));
    assert!(stdout(&out).contains("0 failed"), "{}", text(&out));
    let outputs = walk(&krate.join("out"));
    assert!(!outputs.is_empty(), "the job wrote outputs");

    // Again: refused, and the first crate is untouched.
    let before = std::fs::read(krate.join("src/lib.rs")).unwrap();
    let (code, said) = mayfly(&["init", "linecount"]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("already exists"), "{said}");
    assert_eq!(std::fs::read(krate.join("src/lib.rs")).unwrap(), before);
    let (code, said) = mayfly(&["init", "9lives"]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("9lives"), "{said}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            found.extend(walk(&entry.path()));
        } else {
            found.push(entry.path());
        }
    }
    found
}

/// `mayfly logs` of a job whose shard `bad` failed for good: `--shard`,
/// `--level` and `--node` show what they should (the nodes wrote text or JSON).
fn check_log_filters(job: &TestJob, bad: u64) {
    // --shard: what every node said about that shard, and nothing else.
    let logs = |args: &[&str]| {
        let mut all = vec!["logs", job.id.as_str(), "--state", "state"];
        all.extend_from_slice(args);
        let out = job.command(&all).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        stdout(&out)
    };
    let shard = logs(&["--shard", &bad.to_string()]);
    assert!(shard.contains("master: ") && shard.contains("leased to worker-"), "{shard}");
    assert!(shard.contains("ERROR refusing bad.txt"), "the task's own line: {shard}");
    assert!(shard.contains("attempt failed (failed for good)"), "{shard}");
    for line in shard.lines() {
        assert!(line.contains(&format!("shard {bad}")), "a line about another shard: {line}");
    }
    // --level error: errors only, from the task and the master.
    let errors = logs(&["--level", "error"]);
    assert!(errors.contains("ERROR refusing bad.txt") && errors.contains("ERROR master: shard"), "{errors}");
    assert!(!errors.contains(" INFO ") && !errors.contains(" WARN "), "{errors}");
    // --level warn takes warnings too; --node narrows to one node.
    let master_warn = logs(&["--level", "warn", "--node", "master"]);
    assert!(master_warn.lines().all(|l| l.starts_with("master: ")), "{master_warn}");
    assert!(!master_warn.is_empty());
}

#[test]
fn json_logs_are_filtered_shown_and_printed_as_json_like_text_ones() {
    // The same job as above, its nodes writing JSON lines.
    let job = picky_job("ops-json-logs", 0);
    let file = job.dir.join("job.toml");
    let json = std::fs::read_to_string(&file).unwrap().replacen("[job]\n", "[job]\nlog_format = \"json\"\n", 1);
    std::fs::write(&file, json).unwrap();
    let out = job.run();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let bad = final_state(&job)["failed"][0][0].as_u64().unwrap();
    // Every line of every node's log is one JSON object with its node's fields.
    for node in ["master", "worker-1", "worker-2"] {
        let log = std::fs::read_to_string(job.state().join("logs").join(format!("{node}.log"))).unwrap();
        assert!(log.lines().count() > 3, "{node}: {log}");
        for line in log.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{node}: {e}: {line}"));
            assert_eq!((v["job"].as_str(), v["node"].as_str()), (Some(job.id.as_str()), Some(node)), "{line}");
            assert!(v["ts"].as_u64().is_some() && v["level"].as_str().is_some(), "{line}");
        }
    }
    // Shown as text, filtered as text is.
    check_log_filters(&job, bad);
    // --json: the task's line about the bad item, with its shard, attempt and item.
    let out = job.command(&["logs", &job.id, "--state", "state", "--json", "--level", "error"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<serde_json::Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let task = lines.iter().find(|v| v["source"] == "task").unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!((task["shard"].as_u64(), task["item"].as_str()), (Some(bad), Some("bad.txt")), "{task}");
    assert!(task["attempt"].as_u64().is_some() && task["role"] == "worker", "{task}");
    assert!(task["message"].as_str().unwrap().contains("refusing bad.txt"), "{task}");
}

#[test]
fn text_logs_print_as_json_too() {
    let job = picky_job("ops-text-as-json", 0);
    let out = job.run();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = job.command(&["logs", &job.id, "--state", "state", "--json", "--node", "master"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<serde_json::Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() > 3 && lines.iter().all(|v| v["node"] == "master" && v["ts"].as_u64().is_some()), "{lines:?}");
    // (`run` returns once the job's final state is written: the master's last
    // lines may come after it.)
    let leased = lines.iter().find(|v| v["message"].as_str().is_some_and(|m| m.contains(" leased to worker-")));
    let leased = leased.unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!((leased["who"].as_str(), leased["level"].as_str()), (Some("master"), Some("INFO")), "{leased}");
    let said: Option<u64> = leased["message"].as_str().and_then(|m| m.split(' ').nth(1)).and_then(|n| n.parse().ok());
    assert_eq!(leased["shard"].as_u64(), said, "{leased}");
}
