//! Seeded chaos on the AWS emulator (`harness = false`): each seed runs a job
//! through the Lambda entrypoint on moto's EC2 (the hypervisor boots its
//! instances) with outputs in moto's S3, and meets that seed's faults: a
//! worker's instance terminated, the master's terminated (then the function
//! asked again until it resumes the job), EC2's API throttled, S3 refusing the
//! job's writes for a while, S3 refusing the session credentials it has seen
//! as expired (long before their time), every instance's metadata service
//! answering late. Every request of the function and the nodes goes
//! through a proxy that plays those refusals; the observers (the AWS CLI, the
//! hypervisor) talk to moto straight.
//!
//! The checks, per seed: the job ends done; its outputs, fetched with the AWS
//! CLI, are every input once, byte for byte, each shard committed once by one
//! token (`assert_exactly_once`, the commit audit included); every injected
//! fault left its trace; the CLI sees no instance of the job that may still
//! bill and at most its security group, tagged for the sweep; no node process
//! of it is left on this machine; no node failed to end its own instance.
//!
//! ```text
//! cargo test -p mayfly-tests-aws --test chaos                # seeds 1-6 (CI): each kind once as the first fault
//! cargo test -p mayfly-tests-aws --test chaos -- --runs 20   # seeds 1-20
//! cargo test -p mayfly-tests-aws --test chaos -- --seed 7    # reproduce one
//! ```
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mayfly_tests::chaos::{Taken, worker_to_take};
use mayfly_tests::cloud_chaos::{self, Fault, Kinds, Report, Schedule};
use mayfly_tests::cluster::{TestJob, wait_until};
use mayfly_tests_aws::{MotoExt, RefusingProxy, Rule, RuntimeApi, SLOW_METADATA, aws_cli, moto, node_lines, node_log};

/// The faults, in the order seeds 1, 2, ... take them as their first: a
/// worker's instance terminated, the master's, EC2 answering every call
/// `RequestLimitExceeded` (503) for 2-5 s, S3 answering every write under
/// the job's outputs `SlowDown` (503), S3 answering every request signed
/// with a session seen so far `ExpiredToken` (400; the sessions live 15
/// min), IMDS answering 1-3.5 s late.
static KINDS: Kinds = Kinds {
    names: ["kill-worker", "kill-master", "ec2-throttle", "s3-refuse", "s3-expired", "imds-slow"],
    throttle: (2000, 3000),
    say_throttle: |ms| format!("{:.1}s", ms as f64 / 1000.0),
    evidence: ["EC2 calls refused", "S3 writes refused", "S3 requests refused as expired", "IMDS answers late"],
};
const BUCKET: &str = "mayfly-chaos";

fn main() -> ExitCode {
    moto().create_bucket(BUCKET);
    cloud_chaos::run_seeds(
        "aws chaos",
        "mayfly-tests-aws",
        "aws-chaos",
        &KINDS,
        "instances left 0, node processes left 0",
        run,
    )
}

/// Runs one seed's job with its faults, and judges it.
fn run(schedule: &Schedule, id: &str) -> Report {
    let started = Instant::now();
    let mut report = Report::default();
    let output = format!("s3://{BUCKET}/out-{id}");
    let (job, files, text) = cloud_chaos::job(id, &output, schedule);

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
    let mut pending = Vec::new();
    let late_before = SLOW_METADATA.late();
    for &(at, fault) in &schedule.faults {
        match fault {
            Fault::Throttle { amount: ms } => {
                // Every EC2 API call (its query API's version), not STS's or S3's.
                let rule = Rule::ec2("Version=2016-11-15", "503 Service Unavailable", "RequestLimitExceeded");
                hits.push((KINDS.say(&fault), proxy.refuse(rule.lasting(Duration::from_millis(ms)))));
            }
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
        Ok((kind, _)) if kind == "response" => {
            cloud_chaos::drive(&mut report, &KINDS, &job, master, pending, |fault| match fault {
                Fault::KillWorker => {
                    let instances = instances_of(id, &job)?;
                    let (worker, instance) = worker_to_take(master, &instances, schedule.pick)?;
                    let took = Taken::now(&master(), &worker)?;
                    terminate(&instance)?;
                    taken.push(took);
                    Ok(format!("{worker} ({instance})"))
                }
                Fault::KillMaster => {
                    let instance = instances_of(id, &job)?.remove("master").ok_or("no instance is the master")?;
                    terminate(&instance)?;
                    // As a trigger's retries would: ask again until the
                    // function resumes the job; before the master is silent
                    // long enough, it refuses, saying why.
                    let deadline = Instant::now() + Duration::from_secs(90);
                    loop {
                        std::thread::sleep(Duration::from_secs(2));
                        match ask() {
                            Ok((kind, _)) if kind == "response" => {
                                return Ok(format!("master ({instance}), then resumed"));
                            }
                            Ok((_, body)) if body.contains("master was heard from") && Instant::now() < deadline => {}
                            Ok((kind, body)) => return Err(format!("the function answered {kind}: {body}")),
                            Err(e) => return Err(format!("the function did not answer: {e}")),
                        }
                    }
                }
                Fault::RefuseWrites { ms } => {
                    let path = format!("/{BUCKET}/out-{id}/");
                    let rule = Rule::s3("PUT", &path, "503 Slow Down", "SlowDown");
                    hits.push((KINDS.say(fault), proxy.refuse(rule.lasting(Duration::from_millis(*ms)))));
                    Ok(format!("writes under s3:/{path}"))
                }
                Fault::ExpireCredentials => {
                    let sessions = proxy.credentials_seen();
                    hits.push((KINDS.say(fault), proxy.expire_seen(Rule::s3_expired())));
                    Ok(format!("the {sessions} sessions S3 has seen"))
                }
                Fault::Throttle { .. } | Fault::SlowMetadata { .. } => Err("set at the submission".into()),
            });
        }
        Ok((kind, body)) => report.problems.push(format!("the function answered {kind}: {body}")),
        Err(e) => report.problems.push(format!("the function did not answer: {e}")),
    }
    SLOW_METADATA.clear();
    check(id, &job, &files, &output, &mut report);
    let late = SLOW_METADATA.late() - late_before;
    let counted = |kind: &str, what: &str| match kind {
        "imds-slow" => late,
        _ => hits.iter().find(|(f, _)| what.starts_with(f.as_str())).map_or(0, |(_, n)| n.load(Ordering::Relaxed)),
    };
    cloud_chaos::judge_traces(&mut report, &KINDS, &master(), &taken, counted);
    let _ = function.kill();
    let _ = function.wait();
    report.elapsed = started.elapsed();
    report
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

/// Why the job's security groups, by the AWS CLI, would not all be swept, if
/// they would not. A job's group outlives its instances by design (the
/// provider's `sweep` deletes it `sweep_after` its deadline, minutes after a
/// seed's end), so the observer checks what the sweep needs: one group at
/// most (a resumed job's bootstrap reuses it), tagged with the job and with a
/// deadline no later than the job's (4 min from its submission, which was
/// under 4 min ago) plus the nodes' grace.
fn groups_unswept(id: &str) -> Option<String> {
    let out = aws_cli(moto())
        .args(["ec2", "describe-security-groups", "--filters", &format!("Name=group-name,Values=mayfly-{id}")])
        .output();
    let answer: serde_json::Value = match out {
        Ok(o) if o.status.success() => match serde_json::from_slice(&o.stdout) {
            Ok(answer) => answer,
            Err(e) => return Some(format!("aws ec2 describe-security-groups: {e}")),
        },
        Ok(o) => return Some(format!("aws ec2 describe-security-groups: {}", String::from_utf8_lossy(&o.stderr))),
        Err(e) => return Some(format!("aws ec2 describe-security-groups: {e}")),
    };
    let groups = answer["SecurityGroups"].as_array().cloned().unwrap_or_default();
    if groups.len() > 1 {
        return Some(format!("{} security groups named mayfly-{id}, by the AWS CLI", groups.len()));
    }
    let latest = mayfly_provider_api::now_ms() + 4 * 60_000 + 60_000;
    for g in &groups {
        let tag = |key: &str| {
            g["Tags"].as_array().into_iter().flatten().find(|t| t["Key"] == key).and_then(|t| t["Value"].as_str())
        };
        let group = g["GroupId"].as_str().unwrap_or_default();
        if tag("mayfly:job") != Some(id) {
            return Some(format!("security group {group} is not tagged with its job, so no sweep finds it"));
        }
        match tag("mayfly:expires-at").and_then(|t| t.parse::<u64>().ok()) {
            Some(at) if at <= latest => {}
            other => {
                return Some(format!("security group {group}'s deadline tag is {other:?}: the sweep would leave it"));
            }
        }
    }
    None
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
    report.problems.extend(cloud_chaos::not_done(job));
    let fetched = aws_cli(moto()).args(["s3", "cp", "--recursive", "--quiet", output]).arg(job.out()).output();
    match fetched {
        Ok(o) if o.status.success() => report.problems.extend(cloud_chaos::not_exactly_once(job, files)),
        Ok(o) => report.problems.push(format!("aws s3 cp {output}: {}", String::from_utf8_lossy(&o.stderr))),
        Err(e) => report.problems.push(format!("aws s3 cp: {e}")),
    }
    // The observers: the AWS CLI for instances, /proc for node processes.
    let billing = || -> Vec<String> {
        let filter = format!("Name=tag:mayfly:job,Values={id}");
        let Ok(out) = aws_cli(moto()).args(["ec2", "describe-instances", "--filters", &filter]).output() else {
            return vec!["the AWS CLI did not run".into()];
        };
        // An answer the observer cannot read is no proof that nothing is left.
        let answer: serde_json::Value = match serde_json::from_slice(&out.stdout) {
            Ok(answer) if out.status.success() => answer,
            _ => return vec![format!("the AWS CLI failed: {}", String::from_utf8_lossy(&out.stderr).trim())],
        };
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
    report.problems.extend(groups_unswept(id));
    let processes = || mayfly_tests::job_processes(id);
    if !wait_until(Duration::from_secs(20), || processes().is_empty()) {
        report.problems.push(format!("node processes left: {:?}", processes()));
    }
    // A node that did not know its own instance at the end left it to the
    // OS shutdown backstop: no node may rely on that.
    for line in node_lines(id, "not on an EC2 instance") {
        report.problems.push(format!("a node could not end its own instance: {line}"));
    }
}
