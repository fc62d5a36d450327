//! The Azure provider against Azurite, the ARM test server and the token
//! service (see the harness): jobs bootstrapped by the custom handler from a
//! Blob trigger and by `mayfly run`, VMs made and deleted in ARM and booted
//! from their custom data by the harness.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mayfly_tests::cluster::{TestJob, assert_exactly_once, cluster, inputs, text, wait_until};
use mayfly_tests_azure::{Cloud, FunctionApp, azure_plugin, cloud, mayfly};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};

/// Runs `f` on one runtime for the whole test process (the tests' Blob
/// clients keep connections that belong to it).
fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap())
        .block_on(f)
}

/// The cloud's settings as a job file's `[provider]` table, with `extra` keys.
fn provider_section(cloud: &Cloud, extra: &[(&str, &str)]) -> String {
    let mut settings = cloud.settings();
    settings.insert("path".into(), azure_plugin().to_string_lossy().into_owned().into());
    for (k, v) in extra {
        settings.insert((*k).into(), (*v).into());
    }
    let mut provider = String::from("[provider]\n");
    for (k, v) in settings {
        provider.push_str(&format!("{k} = {v}\n"));
    }
    provider
}

/// The conformance suite needs the provider in this process, whose
/// credential (azure_identity's managed identity) reads the environment: it
/// runs in a child test process given the cloud's identity and settings.
#[test]
fn the_azure_provider_conforms() {
    use mayfly_ops::conformance::Kit;
    use mayfly_ops::conformance::Selected;
    use mayfly_provider_api::conformance::assert_conforms;
    const SETTINGS: &str = "MAYFLY_TEST_AZURE_SETTINGS";
    let Ok(settings) = std::env::var(SETTINGS) else {
        let cloud = cloud();
        let mut settings = cloud.settings();
        settings.insert("path".into(), azure_plugin().to_string_lossy().into_owned().into());
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["the_azure_provider_conforms", "--exact", "--nocapture", "--test-threads=1"])
            .envs(cloud.identity_env())
            .env(SETTINGS, serde_json::Value::Object(settings).to_string())
            .env("MAYFLY_CACHE_DIR", mayfly_tests::cache_dir())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"), "{}", text(&out));
        return;
    };
    let section: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&settings).unwrap();
    let arm = section["arm_endpoint"].as_str().unwrap().to_owned();
    let dir = mayfly_tests::scratch("conform-azure");
    let backend = Selected {
        section,
        root: dir.join("state"),
        identity: Box::new(|_, n| ("imds_endpoint".into(), mayfly_tests_azure::metadata_service(&n.id))),
        // ARM's own records (the test server's, in the parent process), and
        // the VMs' processes on this machine.
        observer: Box::new(move |job| {
            let mut left = mayfly_tests_azure::left_by_arm(&arm, job)?;
            left.extend(mayfly_tests::job_processes(job).into_iter().map(|(pid, cmd)| format!("process {pid}: {cmd}")));
            Ok(left)
        }),
    };
    assert_conforms(&backend, &Kit::new(&dir.join("jobs"), &mayfly_tests::component("tasks/wordcount")));
}

/// The VMs of `job` that still exist (and would bill), by name.
fn existing(cloud: &Cloud, job: &str) -> Vec<String> {
    cloud.arm.vms(job).iter().map(|v| format!("{} ({}, {})", v.name(), v.state, v.power)).collect()
}

fn put(store: &object_store::azure::MicrosoftAzure, key: &str, data: Vec<u8>) {
    block(store.put(&ObjPath::from(key), data.into())).unwrap();
}

fn get(store: &object_store::azure::MicrosoftAzure, key: &str) -> Option<Vec<u8>> {
    match block(store.get(&ObjPath::from(key))) {
        Ok(r) => Some(block(r.bytes()).unwrap().to_vec()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("{key}: {e}"),
    }
}

fn keys(store: &object_store::azure::MicrosoftAzure, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let mut all: Vec<String> = block(store.list(Some(&ObjPath::from(prefix))).try_collect::<Vec<_>>())
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    all.sort();
    all
}

#[test]
fn a_blob_trigger_runs_the_job_exactly_once_on_vms_that_all_go_with_20_second_tokens() {
    let cloud = cloud();
    let data = cloud.container("mayfly-events");
    let files = inputs(5, 1500);
    for (name, content) in &files {
        put(&data, &format!("incoming/batch-1/{name}"), content.clone());
    }
    put(&data, "incoming/batch-1/_READY", Vec::new());
    // Slow enough that the job outlives the nodes' first 20-second tokens.
    let job_file = format!(
        "[job]\nname = \"ev\"\n\n[task]\npath = {:?}\nparams = {{ mode = \"slow\", delay_ms = 12000 }}\n\n\
         [input]\nurl = \"az://mayfly-events/placeholder\"\nglob = \"*.txt\"\n\n\
         [output]\nurl = \"az://mayfly-events/out/{{job}}\"\n\n[state]\nurl = \"az://mayfly-events/state\"\n\n\
         {}\n[cluster]\nworkers = 2\nlease_time = \"5s\"\n\n[sharding]\ntarget_shard_bytes = 1\nsplit_text = false\n",
        mayfly_tests::component("tests/guests/misbehave"),
        provider_section(cloud, &[])
    );
    put(&data, "jobs/ev.toml", job_file.into_bytes());
    let tokens_before = cloud.tokens.issued();

    let app = FunctionApp::start(
        cloud,
        &[("event_job_url", "az://mayfly-events/jobs/ev.toml"), ("event_prefix", "mayfly-events/incoming/")],
    );
    let event = FunctionApp::blob_payload(cloud, "mayfly-events/incoming/batch-1/_READY", "0x8DC0FFEE");
    let started = std::time::Instant::now();
    let (status, answer) = app.invoke("blob", &event);
    assert_eq!(status, 200, "{answer}");
    let job = "incoming-batch-1-0x8DC0FFEE";
    assert_eq!(answer["ReturnValue"]["job"], job, "{answer}");
    assert_eq!(cloud.arm.vms(job).len(), 3, "a master and 2 workers: {:?}", existing(cloud, job));

    // The job runs to its end over Blob storage; each input's copy exactly once.
    let ended = || get(&data, &format!("state/{job}/final.json"));
    assert!(
        wait_until(Duration::from_secs(180), || ended().is_some()),
        "{}",
        mayfly_tests_azure::node_log(job, "master")
    );
    let fin: serde_json::Value = serde_json::from_slice(&ended().unwrap()).unwrap();
    assert_eq!(fin["reason"], "done", "{fin}");
    let mut expected: Vec<String> = files.iter().map(|(n, _)| format!("out/{job}/map/{n}/copy.bin")).collect();
    expected.sort();
    assert_eq!(keys(&data, &format!("out/{job}/map")), expected);
    for (name, content) in &files {
        assert_eq!(&get(&data, &format!("out/{job}/map/{name}/copy.bin")).unwrap(), content, "{name}");
    }
    assert!(keys(&data, &format!("out/{job}/_mayfly/staging")).is_empty(), "staging is cleaned up");

    // Every VM deletes itself (not stopped: gone), and with it its disk and NIC.
    assert!(wait_until(Duration::from_secs(60), || cloud.arm.vms(job).is_empty()), "{:?}", existing(cloud, job));
    assert!(cloud.arm.orphans(job).is_empty(), "{:?}", cloud.arm.orphans(job));
    // Tokens lived 20 s and the job longer (Azurite refuses an expired one): the
    // nodes renewed theirs, by core's rule.
    assert!(started.elapsed() > Duration::from_secs(25), "{:?}", started.elapsed());
    let issued = cloud.tokens.issued() - tokens_before;
    assert!(issued > 6, "{issued} tokens over {:?}", started.elapsed());
    let worker = mayfly_tests_azure::node_log(job, "worker-1");
    assert!(worker.contains("credentials refreshed") && !worker.contains("credentials refreshed 0 times"), "{worker}");

    // The host retries a blob it thinks failed: the same blob runs nothing again.
    let (status, answer) = app.invoke("blob", &event);
    assert_eq!(status, 200, "{answer}");
    assert!(answer["Logs"].to_string().contains("already used"), "{answer}");
    assert!(cloud.arm.vms(job).is_empty());
}

#[test]
fn an_http_trigger_answers_with_the_job_or_a_clear_error_and_launches_nothing_on_bad_input() {
    let cloud = cloud();
    let app = FunctionApp::start(cloud, &[]);
    // A job file that does not parse.
    let (status, answer) =
        app.invoke("run", &FunctionApp::http_payload(&serde_json::json!({"job": "[job]\nname = 3\n"})));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["Outputs"]["res"]["statusCode"], 400, "{answer}");
    assert!(answer["Outputs"]["res"]["body"].as_str().unwrap().contains("job.name"), "{answer}");
    // A job file in a container that does not exist.
    let (_, answer) = app
        .invoke("run", &FunctionApp::http_payload(&serde_json::json!({"job_url": "az://no-such-container/job.toml"})));
    let body = answer["Outputs"]["res"]["body"].as_str().unwrap_or_default().to_owned();
    assert_ne!(answer["Outputs"]["res"]["statusCode"], 200, "{answer}");
    assert!(body.contains("no-such-container"), "{answer}");
    // Not a function this app has.
    let (status, _) = app.invoke("other", &serde_json::json!({}));
    assert_eq!(status, 404);
}

fn job_with(id: &str, files: &[(String, Vec<u8>)], params: &str, cluster: &str, extra: &[(&str, &str)]) -> TestJob {
    let job = TestJob::new(id, files);
    job.write_job("tests/guests/misbehave", params, &format!("{}\n{cluster}", provider_section(cloud(), extra)));
    job
}

fn run(job: &TestJob) -> std::process::Output {
    mayfly(cloud()).args(["run", "job.toml"]).current_dir(&job.dir).output().unwrap()
}

#[test]
fn a_worker_vm_deleted_mid_job_is_replaced_and_still_gives_exactly_once() {
    let cloud = cloud();
    let files = inputs(16, 2000);
    let job = job_with("az-kill", &files, "{ mode = \"slow\", delay_ms = 1000 }", &cluster(2, ""), &[]);
    let run = mayfly(cloud)
        .args(["run", "job.toml"])
        .current_dir(&job.dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = || mayfly_tests_azure::node_log("az-kill", "worker-1");
    assert!(wait_until(Duration::from_secs(120), || log().contains("attempt 1")), "{}", log());
    let worker = cloud.arm.vms("az-kill").into_iter().find(|v| v.tag("mayfly:node") == Some("worker-1")).unwrap();
    // Azure takes the VM away mid-attempt.
    cloud.arm.delete_vm(worker.name());
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}: {}", out.status, text(&out));
    assert!(text(&out).contains("worker-3 replaced worker-1"), "{}", text(&out));
    assert_exactly_once(&job, &files);
    // The kill hit a running attempt (its lease expired), and a VM launched
    // in its place worked.
    let master = mayfly_tests_azure::node_log("az-kill", "master");
    assert!(master.contains("lease expired: worker worker-1"), "{master}");
    assert!(master.contains("worker-3 launched in place of worker-1"), "{master}");
    let replacement = mayfly_tests_azure::node_log("az-kill", "worker-3");
    assert!(replacement.contains("attempt 1"), "{replacement}");
    assert!(
        wait_until(Duration::from_secs(60), || cloud.arm.vms("az-kill").is_empty()),
        "{:?}",
        existing(cloud, "az-kill")
    );
    assert!(cloud.arm.orphans("az-kill").is_empty(), "no NIC or disk is left: {:?}", cloud.arm.orphans("az-kill"));
}

#[test]
fn a_metadata_service_slower_than_a_node_waits_does_not_keep_it_from_deleting_its_vm() {
    // Every answer of this job's VMs' metadata service comes 3 s late, from
    // before the launch to past the end: longer than a node waits for it
    // (2 s). A node ending itself must not need to ask it then.
    let cloud = cloud();
    let late_before = mayfly_tests_azure::SLOW_METADATA.late();
    mayfly_tests_azure::SLOW_METADATA.set_for("az-imds-late", Duration::from_secs(3), Duration::from_secs(600));
    let files = inputs(4, 500);
    let job = job_with("az-imds-late", &files, "{ mode = \"slow\", delay_ms = 100 }", &cluster(2, ""), &[]);
    let out = run(&job);
    assert!(out.status.success(), "{}", text(&out));
    assert_exactly_once(&job, &files);
    assert!(mayfly_tests_azure::SLOW_METADATA.late() > late_before, "the VMs asked their late metadata service");
    assert!(
        wait_until(Duration::from_secs(60), || cloud.arm.vms("az-imds-late").is_empty()),
        "{:?}",
        existing(cloud, "az-imds-late")
    );
    mayfly_tests_azure::SLOW_METADATA.clear();
    // Each node deleted its own VM: none failed to, for want of its id (and
    // left it to its boot script's backstop).
    let failed = mayfly_tests_azure::node_lines("az-imds-late", "ending this node failed");
    assert!(failed.is_empty(), "{failed:#?}");
    for worker in ["worker-1", "worker-2"] {
        let log = mayfly_tests_azure::node_log("az-imds-late", worker);
        assert!(log.contains("ending: "), "{worker}: {log}");
    }
}

#[test]
fn at_the_deadline_every_vm_deletes_itself() {
    let cloud = cloud();
    let files = inputs(8, 100);
    let cluster =
        "[cluster]\nworkers = 2\ndeadline = \"6s\"\n\n[sharding]\ntarget_shard_bytes = 1\nsplit_text = false\n";
    let job = job_with("az-deadline", &files, "{ mode = \"slow\", delay_ms = 4000 }", cluster, &[]);
    let out = run(&job);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // The nodes end themselves by deleting their VMs: none is left stopped.
    assert!(
        wait_until(Duration::from_secs(90), || cloud.arm.vms("az-deadline").is_empty()),
        "{:?}",
        existing(cloud, "az-deadline")
    );
    assert!(cloud.arm.orphans("az-deadline").is_empty());
}

#[test]
fn reap_deletes_every_vm_past_its_deadline_and_nothing_else() {
    let cloud = cloud();
    // VMs left over (as if their dead-man switches had failed): two past
    // their deadline, one not.
    let now = mayfly_provider_api::now_ms();
    cloud.arm.insert("az-reap-old", "master", now - 60_000);
    cloud.arm.insert("az-reap-old", "worker-1", now - 60_000);
    cloud.arm.insert("az-reap-new", "worker-1", now + 600_000);
    let mut reap = mayfly(cloud);
    reap.args(["reap", "--provider"]).arg(azure_plugin());
    for (k, v) in cloud.settings() {
        reap.args(["--set", &format!("{k}={}", v.as_str().map(str::to_owned).unwrap_or(v.to_string()))]);
    }
    let out = reap.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        wait_until(Duration::from_secs(30), || cloud.arm.vms("az-reap-old").is_empty()),
        "{:?}\n{}",
        existing(cloud, "az-reap-old"),
        text(&out)
    );
    assert_eq!(cloud.arm.vms("az-reap-new").len(), 1, "a job before its deadline is left alone: {}", text(&out));
    assert!(cloud.arm.orphans("az-reap-old").is_empty());
    for vm in cloud.arm.vms("az-reap-new") {
        cloud.arm.delete_vm(vm.name());
    }
}

/// A one-worker job with `extra` provider settings, run to its end: its output.
fn bad(id: &str, extra: &[(&str, &str)]) -> String {
    let job = job_with(id, &inputs(1, 10), "{ mode = \"slow\", delay_ms = 1 }", "[cluster]\nworkers = 1\n", extra);
    let out = run(&job);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(cloud().arm.vms(id).is_empty(), "nothing is left: {:?}", existing(cloud(), id));
    text(&out)
}

#[test]
fn bad_settings_and_a_failing_azure_are_clear_errors_and_leave_no_vm() {
    let cloud = cloud();
    let other = format!("{}x", mayfly_tests_azure::subnet_id());
    let out = bad("az-bad-subnet", &[("subnet_id", &other)]);
    assert!(out.contains("InvalidResourceReference") && out.contains("nodesx"), "{out}");
    let out = bad("az-bad-group", &[("resource_group", "no-such-group")]);
    assert!(out.contains("ResourceGroupNotFound"), "{out}");
    let out = bad("az-bad-identity", &[("identity_client_id", "00000000-0000-0000-0000-000000000999")]);
    assert!(out.contains("not assigned") || out.contains("identity"), "{out}");

    // A VM of the same name still being deleted (409 Conflict): the launch waits it out.
    cloud.arm.insert_deleting("az-conflict", "master", Duration::from_secs(3));
    let job =
        job_with("az-conflict", &inputs(1, 10), "{ mode = \"slow\", delay_ms = 1 }", "[cluster]\nworkers = 1\n", &[]);
    let out = run(&job);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("is busy (409)"), "{}", text(&out));

    // A token endpoint that refuses (here: the identity header is wrong).
    let job =
        job_with("az-no-token", &inputs(1, 10), "{ mode = \"slow\", delay_ms = 1 }", "[cluster]\nworkers = 1\n", &[]);
    let out =
        mayfly(cloud).args(["run", "job.toml"]).current_dir(&job.dir).env("IDENTITY_HEADER", "wrong").output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("X-IDENTITY-HEADER"), "the token service's refusal is named: {}", text(&out));
    assert!(cloud.arm.vms("az-no-token").is_empty());
    // An input container that does not exist: said before anything is made.
    let job = job_with("az-no-container", &[], "{ mode = \"slow\", delay_ms = 1 }", "[cluster]\nworkers = 1\n", &[]);
    let out = mayfly(cloud)
        .args(["run", "job.toml"])
        .current_dir(&job.dir)
        .env("MAYFLY_INPUT", "az://no-such-container/in")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no-such-container"), "{}", text(&out));
    assert!(cloud.arm.vms("az-no-container").is_empty());

    // Throttling past the client's retries: a bounded, clear error.
    cloud.arm.throttle("-az-throttled-", 1000);
    let started = std::time::Instant::now();
    let out = bad("az-throttled", &[("api_timeout", "5s")]);
    cloud.arm.throttle("-az-throttled-", 0);
    assert!(out.contains("429") || out.contains("TooManyRequests") || out.contains("throttled"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(90), "{:?}", started.elapsed());
    // A throttle is ridden out (Retry-After honoured), 8 answers in a row
    // too (about 27 s of backoff): time ends the client's retries, not a
    // count (5 in a row failed a launch before; found by the seeded chaos),
    // and each try carries a token asked for then, not one older than a
    // token lives here (20 s: the retries sent an expired one before).
    cloud.arm.throttle("-az-throttle-run-", 8);
    let job = job_with(
        "az-throttle-run",
        &inputs(1, 10),
        "{ mode = \"slow\", delay_ms = 1 }",
        "[cluster]\nworkers = 1\n",
        &[],
    );
    let out = run(&job);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn iam_policy_prints_the_role_definitions_for_the_resource_group() {
    let cloud = cloud();
    let mut cmd = mayfly(cloud);
    cmd.arg("iam-policy").arg(azure_plugin());
    cmd.args(["--location", "az://data/in", "--location", "az://work/out"]);
    for (k, v) in cloud.settings() {
        cmd.args(["--set", &format!("{k}={}", v.as_str().map(str::to_owned).unwrap_or(v.to_string()))]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let scope =
        format!("/subscriptions/{}/resourceGroups/{}", mayfly_tests_azure::SUBSCRIPTION, mayfly_tests_azure::GROUP);
    assert_eq!(v["function_role"]["AssignableScopes"][0], scope.as_str(), "{v}");
    assert!(v.to_string().contains("Microsoft.Compute/virtualMachines/delete"));
}

#[test]
fn the_readme_azure_section_is_a_valid_provider_configuration() {
    use mayfly_provider_api::Provider;
    let readme = std::fs::read_to_string(mayfly_tests::root().join("README.md")).unwrap();
    let section = readme.split("### Azure").nth(1).expect("an Azure section in the README");
    let block = section.split("```toml\n").nth(1).and_then(|b| b.split("```").next()).expect("its toml block");
    let table: toml::Table = toml::from_str(block).unwrap();
    let mut provider = table["provider"].as_table().unwrap().clone();
    assert_eq!(provider.remove("name").and_then(|n| n.as_str().map(str::to_owned)).as_deref(), Some("azure"));
    let settings = serde_json::to_value(&provider).unwrap().as_object().cloned().unwrap();
    let azure = mayfly_provider_azure::Azure::create(
        mayfly_provider_api::Settings::new("azure", settings),
        std::sync::Arc::new(mayfly_provider_api::NoHost),
    )
    .unwrap_or_else(|e| panic!("the README's [provider] section: {e}"));
    assert_eq!(azure.info().schemes, vec!["az".to_owned()]);
}

/// `mayfly prices refresh azure` against the Retail Prices API's documented
/// answers: pay-as-you-go Linux and spot of the sizes in use (not Windows,
/// Low Priority, a reservation or an older price), every page followed, no
/// credential sent; cached with its date, and `mayfly plan` prices the nodes
/// from it and says so.
#[test]
fn prices_refresh_reads_the_retail_prices_api_and_plan_prices_nodes_from_it() {
    let api = mayfly_tests_azure::RetailPrices::start();
    let cache = mayfly_tests::scratch("azure-prices-cache");
    let plugin = azure_plugin().to_string_lossy().into_owned();
    let settings = [
        // As ARM takes it; the price list's filter needs `westeurope`.
        "location=West Europe".to_owned(),
        "vm_size=Standard_F4s_v2".to_owned(),
        "master_vm_size=Standard_D2s_v5".to_owned(),
        format!("prices_endpoint={}", api.endpoint),
    ];
    let mut args = vec!["prices".to_owned(), "refresh".to_owned(), plugin.clone()];
    for s in &settings {
        args.extend(["--set".to_owned(), s.clone()]);
    }
    args.extend(["--type".to_owned(), "Standard_E2s_v5".to_owned()]);
    let out = std::process::Command::new(mayfly_tests::mayfly_bin())
        .args(&args)
        .env("MAYFLY_CACHE_DIR", &cache)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains(
            "azure in westeurope (Azure Retail Prices API (pay as you go and spot, Linux), westeurope, fetched "
        ),
        "{stdout}"
    );
    // The latest Linux meter of each size, and its spot meter.
    assert!(
        stdout.lines().any(|l| l.contains("Standard_D2s_v5") && l.contains("$0.1150/h") && l.contains("$0.0231/h")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.contains("Standard_F4s_v2") && l.contains("$0.1990/h") && l.contains("$0.0398/h")),
        "{stdout}"
    );
    assert!(stdout.contains("warning: the price list has no price of Standard_E2s_v5 in westeurope"), "{stdout}");
    let asked = api.requests();
    assert!(
        asked.iter().any(|q| q.contains("armSkuName eq 'Standard_D2s_v5'") && q.contains("$skip=2")),
        "every page is read: {asked:?}"
    );
    assert!(
        asked.iter().all(|q| q.contains("armRegionName eq 'westeurope'") && q.contains("priceType eq 'Consumption'")),
        "{asked:?}"
    );
    let cached: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.join("prices/azure-westeurope.json")).unwrap()).unwrap();
    assert_eq!(cached["prices"]["Standard_D2s_v5"]["on_demand"], 0.115);
    assert!(cached["fetched_ms"].as_u64().unwrap() > 0);

    // The plan prices the nodes from the cache, and says its source and day.
    let job = TestJob::new("azure-prices-plan", &inputs(3, 1000));
    let mut provider = format!("[provider]\npath = {plugin:?}\n");
    for s in &settings {
        let (k, v) = s.split_once('=').unwrap();
        provider.push_str(&format!("{k} = {v:?}\n"));
    }
    job.write_job("tasks/wordcount", "{}", &format!("{provider}\n[cluster]\nworkers = 2\n"));
    let plan = |cache: &std::path::Path| {
        let out = std::process::Command::new(mayfly_tests::mayfly_bin())
            .args(["plan", "job.toml", "--no-preflight"])
            .current_dir(&job.dir)
            .env("MAYFLY_CACHE_DIR", cache)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    let stdout = plan(&cache);
    let fetched_ms = cached["fetched_ms"].as_u64().unwrap();
    assert!(fetched_ms.abs_diff(mayfly_provider_api::now_ms()) < 600_000, "fetched now: {fetched_ms}");
    let day = mayfly_data::prices::day(fetched_ms);
    let fetched = format!("Azure Retail Prices API (pay as you go and spot, Linux), westeurope, fetched {day}");
    assert!(
        stdout.lines().any(|l| l.contains("master") && l.contains("$0.1150/h") && l.contains(&fetched)),
        "{stdout}"
    );
    assert!(stdout.lines().any(|l| l.contains("workers") && l.contains("$0.1990/h")), "{stdout}");
    // Without the cache: the table the plugin was built with, and its date.
    let stdout = plan(&mayfly_tests::scratch("azure-prices-no-cache"));
    assert!(stdout.contains("price list of 2025-06"), "{stdout}");
}

/// `mayfly deploy azure` with a package directory of `function.zip` and
/// `node.tar.gz` (what `mayfly package azure` makes; tests/package.rs
/// deploys and runs a real one), its settings `--set` as an operator's.
fn deploy(cloud: &Cloud, dist: &std::path::Path, function: &str, role: &str, extra: &[&str]) -> std::process::Output {
    let mut deploy = mayfly(cloud);
    deploy.args(["deploy"]).arg(azure_plugin()).arg("--from").arg(dist);
    deploy.args(["--function", function, "--artifacts", "az://mayfly-dist/deploy-test", "--role", role]);
    for (k, v) in cloud.settings() {
        deploy.args(["--set", &format!("{k}={}", v.as_str().map(str::to_owned).unwrap_or(v.to_string()))]);
    }
    deploy.args(["--set", "event_prefix=incoming/"]).args(extra);
    deploy.output().unwrap()
}

/// The function app through ARM's Microsoft.Web, as `mayfly deploy aws`
/// makes the Lambda function: the plan, then the site with the managed
/// identity, the app settings and run-from-package at the uploaded zip,
/// followed to running through its long-running operation; an update
/// restarts it; bad input and a throttling ARM are handled.
#[test]
fn deploy_makes_or_updates_the_function_app_through_arm() {
    let cloud = cloud();
    let dist = mayfly_tests::scratch("azure-deploy-dist");
    std::fs::write(dist.join("function.zip"), b"PK\x05\x06 the function app's package").unwrap();
    std::fs::write(dist.join("node.tar.gz"), b"the nodes' artifact").unwrap();
    let manifest = serde_json::json!({"provider": "azure", "architecture": "x86_64", "glibc": "2.36",
        "function": "function.zip", "node": "node.tar.gz", "version": "test"});
    std::fs::write(dist.join("package.json"), manifest.to_string()).unwrap();
    cloud.azurite.create_container(&cloud.tokens, "mayfly-dist");
    let name = "mayfly-deploy-test";
    let identity = mayfly_tests_azure::identity_id();

    // A role that is not a user-assigned identity: refused before anything is made.
    let out = deploy(cloud, &dist, name, "arn:aws:iam::1:role/x", &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("expected the user-assigned managed identity's resource id"), "{}", text(&out));
    assert!(cloud.arm.site(name).is_none());

    // Made, through ARM's throttling (each request retried as ARM asks).
    let throttled = cloud.arm.throttled();
    cloud.arm.throttle(&format!("sites/{name}"), 2);
    let out = deploy(cloud, &dist, name, &identity, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(cloud.arm.throttled() >= throttled + 2);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let answer: serde_json::Value = serde_json::from_str(&said[..said.rfind('}').unwrap() + 1]).unwrap();
    assert_eq!(answer["action"], "created", "{said}");
    assert_eq!(answer["state"], "Running", "waited for it to run: {said}");
    assert_eq!(answer["trigger_url"], format!("https://{name}.azurewebsites.net/api/run"), "{said}");
    assert_eq!(answer["blob_trigger_path"], "incoming/{batch}/_READY", "{said}");
    let plan = cloud.arm.plan(&format!("{name}-plan")).expect("the plan was made");
    assert_eq!(plan["sku"]["name"], "Y1");
    assert_eq!(plan["properties"]["reserved"], true, "Linux");
    let site = cloud.arm.site(name).unwrap();
    assert_eq!(site["kind"], "functionapp,linux");
    assert_eq!(site["properties"]["serverFarmId"], plan["id"]);
    assert!(site["identity"]["userAssignedIdentities"].get(&identity).is_some(), "{site}");
    let app = cloud.arm.app_settings(name);
    let package = format!("{}/mayfly-dist/deploy-test/function.zip", cloud.azurite.endpoint);
    assert_eq!(app.get("WEBSITE_RUN_FROM_PACKAGE"), Some(&package), "{app:?}");
    assert_eq!(app.get("WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID"), Some(&identity));
    assert_eq!(app.get("FUNCTIONS_WORKER_RUNTIME").map(String::as_str), Some("custom"));
    assert_eq!(app.get("MAYFLY_TRIGGER_PATH").map(String::as_str), Some("incoming/{batch}/_READY"));
    assert_eq!(app.get("AzureWebJobsStorage__credential").map(String::as_str), Some("managedidentity"));
    let settings: serde_json::Value = serde_json::from_str(&app[mayfly_provider_api::SETTINGS_ENV]).unwrap();
    assert_eq!(settings["location"], "westeurope");
    assert!(settings.get("path").is_none() && settings.get("credentials_file").is_none(), "{settings}");
    // What run-from-package points at is the package.
    let zip = get(&cloud.container("mayfly-dist"), "deploy-test/function.zip").unwrap();
    assert_eq!(zip, std::fs::read(dist.join("function.zip")).unwrap());
    let calls = cloud.arm.web_calls();
    let ours: Vec<&String> = calls.iter().filter(|c| c.contains(name)).collect();
    assert_eq!(
        ours,
        [
            &format!("PUT serverfarms/{name}-plan"),
            &format!("PUT sites/{name}"),
            &format!("POST sites/{name}/syncfunctiontriggers")
        ],
        "{calls:?}"
    );

    // Updated: the settings replaced, the plan kept, the app restarted.
    let out = deploy(cloud, &dist, name, &identity, &["--set", "max_nodes=9"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"action\": \"updated\""), "{}", text(&out));
    let app = cloud.arm.app_settings(name);
    let settings: serde_json::Value = serde_json::from_str(&app[mayfly_provider_api::SETTINGS_ENV]).unwrap();
    assert_eq!(settings["max_nodes"], 9);
    let calls = cloud.arm.web_calls();
    let last: Vec<&String> = calls.iter().filter(|c| c.contains(name)).rev().take(3).collect();
    assert_eq!(
        last,
        [
            &format!("POST sites/{name}/syncfunctiontriggers"),
            &format!("POST sites/{name}/restart"),
            &format!("PUT sites/{name}")
        ],
        "{calls:?}"
    );
    assert_eq!(calls.iter().filter(|c| c.starts_with(&format!("PUT serverfarms/{name}"))).count(), 1, "{calls:?}");

    // A site ARM fails to make: its operation's error, and no trigger URL.
    let out = deploy(cloud, &dist, "mayfly-failing", &identity, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out)
            .contains("the function app mayfly-failing: ARM says Failed: Website with given name already exists."),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("trigger_url"), "{}", text(&out));
}
