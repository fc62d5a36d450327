//! Provider plugins: the conformance suite on the built-in local provider, on
//! the same provider loaded through the C ABI, and on the template plugin
//! built outside the workspace; a job end to end through a loaded plugin; and
//! every way a library can be a bad plugin.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mayfly_data::provider::{ErrorKind, ProviderHandle, Selection};
use mayfly_ops::conformance::Kit;
use mayfly_ops::conformance::Selected;
use mayfly_provider_api::conformance::{Backend, Core, assert_conforms};
use mayfly_tests::cluster::{TestJob, inputs};
use mayfly_tests::{component, mayfly_bin, plugin, scratch};

const WORDCOUNT: &str = "tasks/wordcount";

/// The local provider's plugin library.
fn local_plugin() -> PathBuf {
    plugin("mayfly-provider-local-plugin", &[])
}

fn local(name: &str, how: serde_json::Value) -> (Selected, Kit) {
    let dir = scratch(name);
    let mut section = serde_json::json!({
        "binary": mayfly_bin(),
        "credential_ttl": "4s",
        "bootstrap_limit": "30s",
    });
    section.as_object_mut().unwrap().extend(how.as_object().unwrap().clone());
    let backend = Selected {
        section: section.as_object().unwrap().clone(),
        root: dir.join("state"),
        identity: Box::new(|root, n| {
            let record = root.join(&n.job).join("nodes").join(format!("{}.json", n.node));
            ("identity".into(), record.to_string_lossy().into_owned())
        }),
        // This machine's processes, not the provider's node records.
        observer: Box::new(|job| {
            Ok(mayfly_tests::job_processes(job).into_iter().map(|(pid, cmd)| format!("process {pid}: {cmd}")).collect())
        }),
    };
    (backend, Kit::new(&dir.join("jobs"), &component(WORDCOUNT)))
}

#[test]
fn the_built_in_local_provider_conforms() {
    let (backend, kit) = local("conform-local", serde_json::json!({ "name": "local" }));
    assert!(!ProviderHandle::select(&backend.selection(None)).unwrap().is_plugin());
    assert_conforms(&backend, &kit);
}

#[test]
fn the_local_provider_loaded_as_a_plugin_conforms() {
    let (backend, kit) = local("conform-local-plugin", serde_json::json!({ "path": local_plugin() }));
    assert!(ProviderHandle::select(&backend.selection(None)).unwrap().is_plugin());
    assert_conforms(&backend, &kit);
}

/// A fresh copy of the template, outside mayfly's workspace, with its
/// dependencies pointed at this checkout (as its README tells an author):
/// `cargo test` there builds the plugin, the `mayfly` binary and the
/// word-count component, and runs the whole conformance suite against the
/// plugin loaded by path.
#[test]
fn cargo_test_in_a_fresh_copy_of_the_template_runs_the_conformance_suite() {
    let copy = scratch("template-copy").join("mayfly-provider-mycloud");
    let template = mayfly_tests::root().join("providers/template");
    let sources: Vec<String> = std::fs::read_dir(template.join("src"))
        .unwrap()
        .map(|e| format!("src/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    let files = ["Cargo.toml", "Cargo.lock", "README.md", "tests/conformance.rs"].map(String::from);
    for file in files.iter().chain(&sources) {
        std::fs::create_dir_all(copy.join(file).parent().unwrap()).unwrap();
        std::fs::copy(template.join(file), copy.join(file)).unwrap();
    }
    let manifest = std::fs::read_to_string(copy.join("Cargo.toml")).unwrap();
    let root = mayfly_tests::root();
    let pointed = manifest
        .replace("path = \"../api\"", &format!("path = {:?}", root.join("providers/api").to_string_lossy()))
        .replace("path = \"../../core/ops\"", &format!("path = {:?}", root.join("core/ops").to_string_lossy()));
    assert_ne!(pointed, manifest, "the template's dependencies are paths into the checkout");
    std::fs::write(copy.join("Cargo.toml"), pointed).unwrap();
    let out = mayfly_tests::cargo()
        .args(["test", "--locked", "--target-dir"])
        .arg(mayfly_tests::target_dir())
        .current_dir(&copy)
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "cargo test in the template's copy failed:\n{said}");
    assert!(said.contains("test this_provider_conforms ... ok"), "the suite did not run:\n{said}");
}

#[test]
fn a_job_runs_end_to_end_on_a_plugin_loaded_by_path() {
    let files = inputs(8, 3000);
    let job = TestJob::new("plugin-e2e", &files);
    let extra = format!(
        "[provider]\npath = {:?}\ncredential_ttl = \"3s\"\n\n[cluster]\nworkers = 2\n",
        local_plugin().to_string_lossy()
    );
    job.write_job(WORDCOUNT, "{ mode = \"map\" }", &extra);
    let out = job.run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("8 shards committed, 0 failed") || stdout.contains("shards committed, 0 failed"),
        "{stdout}"
    );
    // Every node made the provider from the manifest: the plugin, by path.
    let manifest: mayfly_core::job::Manifest = mayfly_core::job::read_json(&job.state().join("manifest.json")).unwrap();
    assert_eq!(manifest.provider.path.as_deref(), Some(local_plugin().as_path()));
    job.assert_nothing_left(Duration::from_secs(10));
    assert!(job.log("master").contains("ended (done)"), "{}", job.log("master"));
    for node in ["worker-1", "worker-2"] {
        assert!(job.log(node).contains("ending: the job is done"), "{node}: {}", job.log(node));
    }
}

#[test]
fn an_event_bootstraps_through_the_plugins_call_back_into_core() {
    let (backend, kit) = local("plugin-invoke", serde_json::json!({ "path": local_plugin() }));
    let handle = ProviderHandle::select(&backend.selection(None)).unwrap();
    let request = kit.job_request("invoked", &backend.state_root(), &backend.section()).unwrap();
    // The plugin adapts the event, then calls core's bootstrap through the host table.
    let reply = mayfly_core::bootstrap::invoke(&handle, backend.event(&request)).unwrap();
    assert_eq!(reply.job, "invoked");
    assert!(reply.nodes.len() == 3 && reply.shards > 0, "{reply:?}");
    kit.wait(&reply, Duration::from_secs(120)).unwrap();
    // A bad event is refused by the plugin, not by a crash.
    let e = mayfly_core::bootstrap::invoke(&handle, serde_json::json!({ "nothing": 1 })).unwrap_err();
    assert!(e.message.contains("expected a JSON object with `job` or `job_file`"), "{e}");
    // A job file the host refuses comes back as the host's error.
    let bad = serde_json::json!({ "job": "[job]\nname = 7\n", "base_dir": "/tmp" });
    let e = mayfly_core::bootstrap::invoke(&handle, bad).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert!(e.message.contains("job.toml"), "{e}");
}

fn select_path(path: &Path, settings: serde_json::Value, timeout_ms: Option<u64>) -> Result<ProviderHandle, String> {
    let settings = settings.as_object().cloned().unwrap_or_default();
    ProviderHandle::select(&Selection { name: None, path: Some(path.to_owned()), timeout_ms, settings })
        .map_err(|e| e.to_string())
}

#[test]
fn libraries_that_are_not_good_plugins_are_refused_by_name() {
    let dir = scratch("bad-plugins");
    let text = dir.join("libmayfly_provider_text.so");
    std::fs::write(&text, "not a library").unwrap();
    let e = select_path(&text, serde_json::json!({}), None).unwrap_err();
    assert!(e.starts_with(&format!("plugin {}: not a loadable library", text.display())), "{e}");

    let cases: [(&str, &str); 6] = [
        ("no-header", "not a mayfly provider plugin: it has no `mayfly_provider_header` symbol"),
        ("wrong-magic", "its header has the wrong magic value (0x0bad0bad0bad0bad"),
        ("major-next", "it was built for plugin ABI 3.0, and this mayfly speaks ABI 2.1"),
        ("minor-next", "it was built for plugin ABI 2.7, newer than this mayfly's 2.1: upgrade mayfly"),
        ("small-table", "its function table is 16 bytes, smaller than the 32 this mayfly needs"),
        ("null-call", "its function table has no `call` function (null)"),
    ];
    for (feature, expected) in cases {
        let lib = plugin("mayfly-test-plugin-raw", &[feature]);
        let e = select_path(&lib, serde_json::json!({}), None).unwrap_err();
        assert!(e.contains(&lib.display().to_string()) && e.contains(expected), "{feature}: {e}");
    }
}

#[test]
fn a_plugin_that_answers_malformed_json_or_never_is_an_error_not_a_hang() {
    let lib = plugin("mayfly-test-plugin-raw", &[]);
    let p = select_path(&lib, serde_json::json!({}), Some(1000)).unwrap();
    assert_eq!(p.name(), "raw");
    let e = p.list("j", "/tmp").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Protocol, "{e}");
    assert!(e.message.contains("malformed JSON from `list`") && e.message.contains(&lib.display().to_string()), "{e}");
    let e = p.terminate(&[], Duration::ZERO).unwrap_err();
    assert!(e.message.contains("`terminate` failed with a malformed error") && e.message.contains("<html>"), "{e}");
    let started = std::time::Instant::now();
    let e = p.identify().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert!(e.message.contains("`identify` did not answer within 1s"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The host goes on: the next call is answered.
    assert_eq!(p.list("j", "/tmp").unwrap_err().kind, ErrorKind::Protocol);
}

#[test]
fn a_plugin_that_panics_or_hangs_is_reported_and_the_host_goes_on() {
    let lib = plugin("mayfly-test-plugin-faulty", &[]);
    let panicky = select_path(&lib, serde_json::json!({ "mode": "panic" }), None).unwrap();
    let e = panicky.list("j", "/tmp").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Panic, "{e}");
    assert!(e.message.contains("it panicked in `list`: faulty provider: list panics on purpose"), "{e}");
    for result in [
        panicky.identify().map(|_| ()),
        panicky.terminate(&[], Duration::ZERO),
        panicky.credentials("j", "/tmp", "worker-1").map(|_| ()),
        panicky.terminate_self(Duration::from_secs(5)),
    ] {
        assert_eq!(result.unwrap_err().kind, ErrorKind::Panic);
    }
    let e = select_path(&lib, serde_json::json!({ "mode": "panic-in-create" }), None).unwrap_err();
    assert!(e.contains("it panicked in `create`: faulty provider: create panics on purpose"), "{e}");
    let e = select_path(&lib, serde_json::json!({ "mode": "sideways" }), None).unwrap_err();
    assert!(e.contains("`provider.mode`: unknown mode \"sideways\""), "{e}");

    let hanging = select_path(&lib, serde_json::json!({ "mode": "hang" }), Some(300)).unwrap();
    let e = hanging.launch(mayfly_data::provider::LaunchRequest {
        job: "j".into(),
        state: "/tmp".into(),
        expires_at: 0,
        nodes: vec![],
    });
    assert_eq!(e.unwrap_err().kind, ErrorKind::Timeout);
    // A provider that blocks its thread instead of awaiting is bounded too.
    let blocking = select_path(&lib, serde_json::json!({ "mode": "block" }), Some(300)).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(blocking.identify().unwrap_err().kind, ErrorKind::Timeout);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let e = select_path(&lib, serde_json::json!({ "mode": "block-in-create" }), Some(300)).unwrap_err();
    assert!(e.contains("its `create` did not return within 300ms"), "{e}");
    // Still the same process, still answering.
    let fine = select_path(&lib, serde_json::json!({ "mode": "ok" }), None).unwrap();
    assert_eq!(fine.identify().unwrap(), None);
}

#[test]
fn a_provider_asked_for_by_name_must_be_that_provider_or_found() {
    let e = ProviderHandle::select(&Selection {
        name: Some("aws".into()),
        path: Some(local_plugin()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("it is the \"local\" provider, but the job asks for \"aws\""), "{e}");
    let e = ProviderHandle::select(&Selection { name: Some("nosuch".into()), ..Default::default() })
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("provider \"nosuch\" not found") && e.contains("libmayfly_provider_nosuch.so"), "{e}");
}

#[test]
fn a_job_file_naming_a_bad_plugin_fails_before_anything_runs() {
    let files = inputs(2, 100);
    let job = TestJob::new("bad-plugin-job", &files);
    let lib = plugin("mayfly-test-plugin-raw", &["wrong-magic"]);
    job.write_job(WORDCOUNT, "{}", &format!("[provider]\npath = {:?}\n", lib.to_string_lossy()));
    let out = job.run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("job.toml") && stderr.contains("wrong magic value"), "{stderr}");
    assert!(!job.state().exists(), "nothing was bootstrapped");
    let job2 = TestJob::new("bad-plugin-setting", &files);
    job2.write_job(WORDCOUNT, "{}", "[provider]\nname = \"local\"\ncredential_tll = \"5s\"\n");
    let out = job2.run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("job.toml:20: ") && stderr.contains("unknown key `provider.credential_tll`"), "{stderr}");
}

#[test]
fn a_launch_that_fails_after_starting_nodes_leaves_none_running() {
    // The provider starts the master, then its answer is lost (a cloud call that
    // timed out after the cloud acted): bootstrap fails, and ends what the
    // provider lists for the job, not only what it was told it launched.
    let files = inputs(2, 100);
    let job = TestJob::new("lossy-launch", &files);
    let lib = plugin("mayfly-test-plugin-faulty", &[]);
    job.write_job(WORDCOUNT, "{}", &format!("[provider]\npath = {:?}\nmode = \"lossy-launch\"\n", lib));
    let out = job.run();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("the answer to launching 1 node(s) was lost"), "{said}");
    assert_eq!(job.nodes().len(), 1, "the master was started: {:?}", job.nodes());
    job.assert_nothing_left(Duration::from_secs(5));
}

#[test]
fn the_mayfly_binary_links_no_cloud_sdk() {
    let out = mayfly_tests::cargo()
        .args(["tree", "-p", "mayfly", "-e", "normal", "--prefix", "none"])
        .current_dir(mayfly_tests::root())
        .output()
        .unwrap();
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && tree.contains("mayfly-provider-local"), "{tree}");
    // object_store is the data path, with its local file system only: its
    // S3 client (and the HTTP and TLS stack under it) is the `s3` feature.
    let cloud: Vec<&str> = tree
        .lines()
        .filter(|l| ["aws-", "azure", "reqwest", "hyper-rustls", "rustls"].iter().any(|p| l.starts_with(p)))
        .collect();
    assert!(cloud.is_empty(), "the mayfly binary links cloud crates by default: {cloud:?}");
}

#[test]
fn a_plugin_is_found_by_name_in_the_plugin_path_unless_others_can_write_there() {
    let files = inputs(2, 100);
    let job = TestJob::new("plugin-by-name", &files);
    job.write_job(WORDCOUNT, "{}", "[provider]\nname = \"faulty\"\nmode = \"ok\"\n");
    let dir = job.dir.join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(plugin("mayfly-test-plugin-faulty", &[]), dir.join("libmayfly_provider_faulty.so")).unwrap();
    let plan = |path: Option<&Path>| {
        let mut cmd = job.command(&["plan", "job.toml"]);
        match path {
            Some(p) => cmd.env("MAYFLY_PLUGIN_PATH", p),
            None => cmd.env_remove("MAYFLY_PLUGIN_PATH"),
        };
        let out = cmd.output().unwrap();
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let (code, text) = plan(Some(&dir));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("2 objects"), "{text}");
    let (code, text) = plan(None);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("provider \"faulty\" not found") && text.contains("MAYFLY_PLUGIN_PATH"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, text) = plan(Some(&dir));
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("refused: the directory") && text.contains("writable by other users"), "{text}");
}
