//! The AWS provider against moto: the conformance suite (instances launched,
//! listed, terminated in moto; nodes booted from their user data by the test
//! hypervisor), and a job run end to end with `mayfly run`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mayfly_core::conformance::Kit;
use mayfly_provider_api::conformance::assert_conforms;
use mayfly_tests::cluster::{TestJob, assert_exactly_once, cluster, inputs, text, wait_until};
use mayfly_tests::conformance::Selected;
use mayfly_tests::{component, scratch};
use mayfly_tests_aws::{aws_plugin, moto};

fn section() -> serde_json::Map<String, serde_json::Value> {
    let mut s = moto().settings();
    s.insert("path".into(), aws_plugin().to_string_lossy().into_owned().into());
    s
}

#[test]
fn the_aws_provider_conforms_against_moto() {
    let dir = scratch("conform-aws");
    let backend = Selected {
        section: section(),
        root: dir.join("state"),
        identity: Box::new(|_, n| ("instance_id".into(), n.id.clone())),
    };
    assert_conforms(&backend, &Kit::new(&dir.join("jobs"), &component("tasks/wordcount")));
}

/// Instances of `job` in moto that may still bill (not shutting down or terminated).
fn billing(job: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let out = moto()
            .ec2()
            .describe_instances()
            .filters(aws_sdk_ec2::types::Filter::builder().name("tag:mayfly:job").values(job).build())
            .send()
            .await
            .unwrap();
        out.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| {
                i.state()
                    .and_then(|s| s.name())
                    .is_some_and(|s| matches!(s.as_str(), "pending" | "running" | "stopping" | "stopped"))
            })
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect()
    })
}

#[test]
fn a_job_runs_on_ec2_instances_and_every_instance_is_terminated() {
    let files = inputs(6, 2000);
    let job = TestJob::new("aws-e2e", &files);
    let mut provider = String::from("[provider]\n");
    for (k, v) in section() {
        provider.push_str(&format!("{k} = {v}\n"));
    }
    job.write_job("tasks/wordcount", "{ mode = \"map\" }", &format!("{provider}\n[cluster]\nworkers = 3\n"));
    let out = job.run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("shards committed, 0 failed"), "{stdout}");
    let fin: serde_json::Value = mayfly_core::job::read_json(&job.state().join("final.json")).unwrap();
    assert_eq!(fin["reason"], "done");
    // Every instance of the job ends: the workers and the master terminate themselves.
    assert!(wait_until(Duration::from_secs(30), || billing("aws-e2e").is_empty()), "{:?}", billing("aws-e2e"));
}

fn job_with_provider(id: &str, files: &[(String, Vec<u8>)], task: &str, params: &str, cluster: &str) -> TestJob {
    let job = TestJob::new(id, files);
    let mut provider = String::from("[provider]\n");
    for (k, v) in section() {
        provider.push_str(&format!("{k} = {v}\n"));
    }
    job.write_job(task, params, &format!("{provider}\n{cluster}"));
    job
}

fn provider() -> mayfly_core::provider::ProviderHandle {
    let mut selection = mayfly_core::provider::Selection { name: None, ..Default::default() };
    selection.path = Some(aws_plugin());
    selection.settings = moto().settings();
    mayfly_core::provider::ProviderHandle::select(&selection).unwrap()
}

#[test]
fn a_worker_instance_terminated_mid_job_still_gives_exactly_once() {
    let files = inputs(6, 2000);
    let job = job_with_provider(
        "aws-kill",
        &files,
        "tests/guests/misbehave",
        "{ mode = \"slow\", delay_ms = 800 }",
        &cluster(2, ""),
    );
    let run = job.spawn();
    let log = || mayfly_tests_aws::node_log("aws-kill", "worker-1");
    assert!(wait_until(Duration::from_secs(120), || log().contains("attempt 1")), "{}", log());
    let p = provider();
    let worker = p.list("aws-kill", &job.state()).unwrap().into_iter().find(|n| n.node == "worker-1").unwrap();
    // EC2 takes the machine away mid-attempt.
    p.terminate(&[worker], Duration::ZERO).unwrap();
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}: {}", out.status, text(&out));
    assert_exactly_once(&job, &files);
    assert!(wait_until(Duration::from_secs(30), || billing("aws-kill").is_empty()), "{:?}", billing("aws-kill"));
}

#[test]
fn at_the_deadline_every_instance_ends_itself() {
    let files = inputs(8, 100);
    let cluster =
        "[cluster]\nworkers = 2\ndeadline = \"6s\"\n\n[sharding]\ntarget_shard_bytes = 1\nsplit_text = false\n";
    let job = job_with_provider(
        "aws-deadline",
        &files,
        "tests/guests/misbehave",
        "{ mode = \"slow\", delay_ms = 4000 }",
        cluster,
    );
    let started = std::time::Instant::now();
    let out = job.run();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // Each node's dead-man switch ends its own instance a second after the deadline.
    assert!(
        wait_until(Duration::from_secs(30), || billing("aws-deadline").is_empty()),
        "{:?}",
        billing("aws-deadline")
    );
    assert!(started.elapsed() < Duration::from_secs(40), "{:?}", started.elapsed());
}

#[test]
fn reap_terminates_every_instance_past_its_deadline_and_nothing_else() {
    let p = provider();
    let dir = scratch("aws-reap");
    let launch = |job: &str, expires_at: u64, n: u32| {
        let nodes = (1..=n)
            .map(|i| mayfly_core::provider::NodeSpec {
                node: format!("worker-{i}"),
                role: mayfly_core::provider::Role::Worker,
                args: vec!["idle".into(), "--for".into(), "5m".into()],
            })
            .collect();
        let state = dir.join(job).to_string_lossy().into_owned();
        p.launch(mayfly_core::provider::LaunchRequest { job: job.into(), state, expires_at, nodes }).unwrap()
    };
    let now = mayfly_provider_api::now_ms();
    // A master crashed long ago and left its workers; another job is alive.
    launch("aws-reap-crashed", now - 60_000, 2);
    let live = launch("aws-reap-live", now + 600_000, 1);
    let mut cmd = std::process::Command::new(mayfly_tests::mayfly_bin());
    cmd.args(["reap", "--state"]).arg(&dir).arg("--provider").arg(aws_plugin());
    for (k, v) in moto().settings() {
        let v = v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
        cmd.args(["--set", &format!("{k}={v}")]);
    }
    let out = cmd.output().unwrap();
    let text = text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("reaping worker-1 of job aws-reap-crashed") && text.contains("worker-2 of job aws-reap-crashed"),
        "{text}"
    );
    assert!(!text.contains("aws-reap-live"), "{text}");
    assert!(billing("aws-reap-crashed").is_empty());
    assert_eq!(billing("aws-reap-live"), vec![live[0].id.clone()]);
    p.terminate(&live, Duration::ZERO).unwrap();
}

#[test]
fn an_endpoint_that_does_not_answer_is_a_bounded_clear_error() {
    let mut selection = mayfly_core::provider::Selection { name: None, ..Default::default() };
    selection.path = Some(aws_plugin());
    selection.settings = moto().settings();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    selection.settings.insert("endpoint_url".into(), format!("http://127.0.0.1:{dead}").into());
    let p = mayfly_core::provider::ProviderHandle::select(&selection).unwrap();
    let started = std::time::Instant::now();
    let e = p.list("nothing", std::path::Path::new("/tmp")).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    assert!(e.message.contains("DescribeInstances"), "{e}");
    // And a launch without an image says which setting is missing, launching nothing.
    let mut settings = moto().settings();
    settings.remove("image_id");
    let p = mayfly_core::provider::ProviderHandle::select(&mayfly_core::provider::Selection {
        name: None,
        path: Some(aws_plugin()),
        timeout_ms: None,
        settings,
    })
    .unwrap();
    let nodes = vec![mayfly_core::provider::NodeSpec {
        node: "master".into(),
        role: mayfly_core::provider::Role::Master,
        args: vec![],
    }];
    let e = p
        .launch(mayfly_core::provider::LaunchRequest {
            job: "no-image".into(),
            state: "/tmp".into(),
            expires_at: 0,
            nodes,
        })
        .unwrap_err();
    assert!(e.message.contains("`provider.image_id` is not set"), "{e}");
    assert!(billing("no-image").is_empty());
}
