//! What is refused before anything is launched (exit 2, no node, no state),
//! by `mayfly run`, `mayfly plan` and a serverless bootstrap alike: a job
//! whose most possible cost is over its `[job] max_cost`, and (the preflight)
//! one whose tasks fail on a sample of its inputs as every shard would, with
//! the task's message; what one item or one machine may not repeat is only
//! said.

use mayfly_tests::cluster::{TestJob, cluster, text};

const GUEST: &str = "tests/guests/misbehave";
const WORDCOUNT: &str = "tasks/wordcount";

/// Three inputs whose sample is all three: `a.txt` (the first shard's
/// first), `b.txt` (the largest) and `c-bad.txt` (the smallest).
fn three() -> Vec<(String, Vec<u8>)> {
    vec![
        ("a.txt".into(), b"alpha beta\n".repeat(10)),
        ("b.txt".into(), b"gamma delta\n".repeat(30)),
        ("c-bad.txt".into(), b"eps\n".to_vec()),
    ]
}

/// The job was refused before anything was launched: exit 2, no node, no
/// state, no output but what `check the output location` made.
fn assert_refused_before_launch(job: &TestJob, out: &std::process::Output, says: &[&str]) {
    let all = text(out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    for s in says {
        assert!(all.contains(s), "missing {s:?} in:\n{all}");
    }
    assert!(job.nodes().is_empty(), "no node was launched");
    assert!(!job.state().exists(), "no state was written: {}", job.state().display());
    assert!(job.map_outputs().is_empty(), "no output was written");
}

#[test]
fn parameters_the_task_refuses_are_refused_before_launch_and_no_preflight_launches_anyway() {
    let job = TestJob::new("preflight-params", &three());
    job.write_job(WORDCOUNT, "{ mode = \"mapp\" }", &cluster(2, ""));
    let out = job.run();
    assert_refused_before_launch(
        &job,
        &out,
        &[
            "preflight: the tasks fail on a sample of the inputs, so every shard would",
            "unknown variant `mapp`",
            "--no-preflight",
        ],
    );

    // `mayfly plan` says the same, after the plan, with exit 2.
    let plan = job.command(&["plan", "job.toml"]).output().unwrap();
    assert_eq!(plan.status.code(), Some(2), "{}", text(&plan));
    let said = text(&plan);
    assert!(said.contains("3 objects") && said.contains("preflight: REFUSED"), "{said}");
    assert!(said.contains("unknown variant `mapp`"), "{said}");

    // Opted out: the job launches, and every shard fails on the nodes.
    let out = job.command(&["run", "job.toml", "--no-preflight"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("0 shards committed, 3 failed"), "{}", text(&out));
}

#[test]
fn a_memory_limit_the_task_cannot_live_in_and_a_task_error_on_every_sampled_item_are_refused() {
    let job = TestJob::new("preflight-oom", &three());
    job.write_job(GUEST, "{ mode = \"alloc\" }", &format!("{}\n[limits]\nmemory = \"16MiB\"\n", cluster(2, "")));
    assert_refused_before_launch(&job, &job.run(), &["so the job would", "ran out of memory", "(limit `memory`)"]);

    let job = TestJob::new("preflight-fatal", &three());
    job.write_job(GUEST, "{ mode = \"fatal\" }", &format!("{}\n[limits]\nmax_failed_items = 10\n", cluster(2, "")));
    assert_refused_before_launch(
        &job,
        &job.run(),
        &["each of the 3 sampled items failed for good", "this item can never succeed"],
    );
}

#[test]
fn one_bad_item_is_refused_only_when_the_job_may_quarantine_none() {
    let job = TestJob::new("preflight-strict", &three());
    let params = "{ mode = \"picky\", fail_on = \"bad\" }";
    job.write_job(GUEST, params, &format!("{}\n[limits]\nmax_failed_items = 0\n", cluster(2, "")));
    assert_refused_before_launch(
        &job,
        &job.run(),
        &["the job would (the item fails for good", "max_failed_items", "c-bad.txt is not acceptable"],
    );

    // The same item, in a job that may quarantine it: said, and the job runs.
    let job = TestJob::new("preflight-lenient", &three());
    job.write_job(GUEST, params, &format!("{}\n[limits]\nmax_failed_items = 1\n", cluster(2, "")));
    let out = job.run();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("c-bad.txt is not acceptable") && all.contains("(the job may quarantine up to 1 of its items)"),
        "{all}"
    );
    assert!(all.contains("preflight: 2 of 3 sample items passed"), "{all}");
    assert!(all.contains("1 item quarantined"), "{all}");
}

#[test]
fn a_reduce_task_that_fails_over_the_samples_outputs_is_refused() {
    let job = TestJob::new("preflight-reduce", &three());
    let wordcount = mayfly_tests::component(WORDCOUNT);
    job.write_job(
        WORDCOUNT,
        "{ mode = \"map\" }",
        &format!("[reduce]\npath = {:?}\nparams = {{ mode = \"shuffle\" }}\n\n{}", wordcount, cluster(2, "")),
    );
    assert_refused_before_launch(&job, &job.run(), &["so the reduce would", "reduce task wordcount", "shuffle"]);

    // With its right parameters, the reduce passes over the sample's outputs.
    job.write_job(
        WORDCOUNT,
        "{ mode = \"map\" }",
        &format!("[reduce]\npath = {:?}\nparams = {{ mode = \"reduce\" }}\n\n{}", wordcount, cluster(2, "")),
    );
    let plan = job.command(&["plan", "job.toml", "--json"]).output().unwrap();
    assert!(plan.status.success(), "{}", text(&plan));
    let doc: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let tried: Vec<&str> =
        doc["preflight"]["tried"].as_array().unwrap().iter().map(|t| t["item"].as_str().unwrap()).collect();
    assert_eq!(tried, ["a.txt", "b.txt", "c-bad.txt"], "{doc}");
    assert_eq!(doc["preflight"]["reduced"], true, "{doc}");
    assert_eq!(doc["rate"]["from"], "the preflight's sample", "{doc}");
    assert!(doc["rate"]["bytes_per_sec"].as_u64().unwrap() > 0, "{doc}");
}

#[test]
fn a_sample_longer_than_the_preflights_bound_is_said_and_the_job_goes_on() {
    let job = TestJob::new("preflight-bound", &three());
    job.write_job(
        GUEST,
        "{ mode = \"slow\", delay_ms = 1500 }",
        &format!("{}\n[preflight]\ntimeout = \"1s\"\n", cluster(2, "")),
    );
    let out = job.run();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("preflight: out of its 1s on a.txt"), "{all}");
    assert!(all.contains("3 shards committed"), "{all}");
}

#[test]
fn a_serverless_bootstrap_refuses_the_job_as_the_requests_own_fault() {
    use mayfly_data::provider::{ErrorKind, ProviderHandle};

    let job = TestJob::new("preflight-serverless", &three());
    job.write_job(WORDCOUNT, "{ mode = \"mapp\" }", &cluster(2, ""));
    let provider = ProviderHandle::select(&mayfly_tests::local_selection(serde_json::json!({}))).unwrap();
    let request = job.request();
    let e = mayfly_core::bootstrap::from_request(&request, &provider).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("unknown variant `mapp`"), "{e}");
    assert!(job.nodes().is_empty() && !job.state().exists(), "nothing was launched");
}

#[test]
fn a_job_that_could_cost_more_than_its_max_cost_is_refused_naming_the_figures() {
    let job = TestJob::new("ceiling", &three());
    let params = "{ mode = \"map\" }";
    // 1 master, 2 workers and (by default) 2 replacements at 10 USD/h for an
    // hour: 50 USD at most.
    let priced =
        format!("{}\n[prices]\nlocal = 10.0\n", cluster(2, "").replace("deadline = \"3m\"", "deadline = \"1h\""));
    let path = job.write_job(WORDCOUNT, params, &priced);
    let original = std::fs::read_to_string(&path).unwrap();
    let text_of = |max: &str| original.replacen("[job]\n", &format!("[job]\nmax_cost = {max}\n"), 1);
    std::fs::write(&path, text_of("49.5")).unwrap();
    let figures = [
        "check the cost: `job.max_cost` = 49.5: the job may cost up to 50.0000 USD",
        "1 x master local at 10.0000 USD/h and 2 x workers local at 10.0000 USD/h \
         and 2 x replacements local at 10.0000 USD/h, each to the 1h deadline",
    ];
    assert_refused_before_launch(&job, &job.run(), &figures);
    let plan = job.command(&["plan", "job.toml"]).output().unwrap();
    assert_eq!(plan.status.code(), Some(2), "{}", text(&plan));
    assert!(text(&plan).contains("ceiling  over the job's max_cost of 49.5 USD") && text(&plan).contains(figures[1]));

    // The same through a serverless bootstrap: the request's own fault.
    let provider =
        mayfly_data::provider::ProviderHandle::select(&mayfly_tests::local_selection(serde_json::json!({}))).unwrap();
    let request = job.request();
    let e = mayfly_core::bootstrap::from_request(&request, &provider).unwrap_err();
    assert_eq!(e.kind, mayfly_data::provider::ErrorKind::Config, "{e}");
    assert!(e.to_string().contains(figures[0]), "{e}");
    assert!(job.nodes().is_empty() && !job.state().exists(), "nothing was launched");

    // Within it: the job runs.
    std::fs::write(&path, text_of("50")).unwrap();
    let plan = job.command(&["plan", "job.toml"]).output().unwrap();
    assert!(
        plan.status.success() && text(&plan).contains("ceiling  within the job's max_cost of 50 USD"),
        "{}",
        text(&plan)
    );
    let out = job.run();
    assert!(out.status.success(), "{}", text(&out));
}
