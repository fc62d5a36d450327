//! `mayfly package azure` and what it makes, running: the packaged function
//! app (its `host.json` custom handler, started as the Functions host starts
//! it: `bootstrap` from the app's root with `FUNCTIONS_CUSTOMHANDLER_PORT`,
//! the app settings `mayfly deploy azure` gave it through ARM, the managed identity's
//! endpoint) bootstraps a job from an HTTP trigger, and the job's VMs boot
//! from their custom data, fetch the packaged node artifact from Blob storage
//! with their identity's token (curl), check its hash, and run it.
//!
//! The test builds mayfly and the plugin in the `package-test` profile (the
//! packaging is what is tested; `ship` only adds optimization), in a target
//! directory of its own: minutes the first time; later runs reuse it.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mayfly_tests::cluster::{inputs, text, wait_until};
use mayfly_tests::{mayfly_bin, root, scratch};
use mayfly_tests_azure::{Cloud, FunctionApp, cloud, node_disks, node_log};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjPath;

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap())
        .block_on(f)
}

/// A process ended when dropped (a failing test leaves nothing running).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The function app, unpacked, started as the Functions host starts a custom
/// handler: its app settings (as ARM holds them) in its environment, with
/// `settings` as its `MAYFLY_PROVIDER_SETTINGS`.
fn start_app(
    cloud: &Cloud,
    app: &Path,
    app_settings: &std::collections::BTreeMap<String, String>,
    settings: &serde_json::Value,
) -> (Running, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(app.join("bootstrap"))
        .current_dir(app)
        .envs(app_settings)
        .envs(cloud.identity_env())
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env(mayfly_provider_api::SETTINGS_ENV, settings.to_string())
        .env("MAYFLY_CACHE_DIR", mayfly_tests::cache_dir())
        .spawn()
        .unwrap();
    let up = wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert!(up, "the packaged custom handler did not listen");
    (Running(child), port)
}

fn invoke(port: u16, function: &str, payload: &serde_json::Value) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = payload.to_string();
    write!(
        stream,
        "POST /{function} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap()
}

#[test]
fn the_packaged_function_app_runs_a_job_whose_vms_fetch_the_packaged_node_artifact() {
    let cloud = cloud();
    let scratch = scratch("azure-package");
    let dist = scratch.join("dist");
    let mut cmd = Command::new(mayfly_bin());
    // `mayfly package` runs cargo: without the variables cargo set for this test.
    mayfly_tests::without_test_env(&mut cmd);
    // A target directory of its own (see the AWS package test: zig and the
    // system's C compiler must not take turns on the same dependencies).
    cmd.env("CARGO_TARGET_DIR", mayfly_tests::target_dir().join("package-azure"));
    let out = cmd
        .args(["package", "azure", "--profile", "package-test", "--out"])
        .arg(&dist)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dist.join("package.json")).unwrap()).unwrap();
    assert_eq!(manifest["provider"], "azure");
    let (major, minor) = manifest["glibc"].as_str().unwrap().split_once('.').unwrap();
    assert!((major.parse::<u32>().unwrap(), minor.parse::<u32>().unwrap()) <= (2, 36), "{manifest}");

    // The function app: host.json's custom handler, a function.json per function.
    let app = scratch.join("app");
    let files = mayfly_tests::unzip(&dist.join("function.zip"), &app);
    for f in
        ["host.json 0o644", "run/function.json 0o644", "blob/function.json 0o644", "bootstrap 0o755", "mayfly 0o755"]
    {
        assert!(files.contains(&f.to_owned()), "{f} in {files:?}");
    }
    // The same app as a folder, beside the zip.
    for f in ["host.json", "run/function.json", "blob/function.json", "bootstrap", "mayfly"] {
        assert_eq!(
            std::fs::read(dist.join("function-app").join(f)).unwrap(),
            std::fs::read(app.join(f)).unwrap(),
            "{f}"
        );
    }
    let host: serde_json::Value = serde_json::from_slice(&std::fs::read(app.join("host.json")).unwrap()).unwrap();
    assert_eq!(host["customHandler"]["description"]["defaultExecutablePath"], "bootstrap");
    assert_eq!(host["functionTimeout"], "00:10:00");
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(app.join("run/function.json")).unwrap()).unwrap();
    assert_eq!(run["bindings"][0]["type"], "httpTrigger");
    assert_eq!(run["bindings"][1]["name"], "res");
    let blob: serde_json::Value =
        serde_json::from_slice(&std::fs::read(app.join("blob/function.json")).unwrap()).unwrap();
    assert_eq!(blob["bindings"][0]["type"], "blobTrigger");

    // `mayfly deploy azure` uploads both artifacts and makes the function app through ARM.
    cloud.azurite.create_container(&cloud.tokens, "mayfly-dist");
    let mut deploy = mayfly_tests_azure::mayfly(cloud);
    deploy.args(["deploy"]).arg(dist.join("bin/libmayfly_provider_azure.so"));
    deploy.args(["--from"]).arg(&dist).args(["--function", "mayfly-fn", "--artifacts", "az://mayfly-dist/mayfly"]);
    deploy.args(["--role", &mayfly_tests_azure::identity_id()]);
    for (k, v) in cloud.settings() {
        deploy.args(["--set", &format!("{k}={}", v.as_str().map(str::to_owned).unwrap_or(v.to_string()))]);
    }
    let out = deploy.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let artifact = said
        .lines()
        .find_map(|l| l.split('"').find(|p| p.starts_with("az://mayfly-dist/mayfly/node-")))
        .unwrap_or_else(|| panic!("no node_artifact in {said}"))
        .to_owned();
    assert!(said.contains("\"trigger_url\": \"https://mayfly-fn.azurewebsites.net/api/run\""), "{said}");
    let app_settings = cloud.arm.app_settings("mayfly-fn");
    // Run-from-package points at the packaged zip, uploaded.
    let package = format!("{}/mayfly-dist/mayfly/function.zip", cloud.azurite.endpoint);
    assert_eq!(app_settings.get("WEBSITE_RUN_FROM_PACKAGE"), Some(&package), "{app_settings:?}");
    let uploaded = block(cloud.container("mayfly-dist").get(&ObjPath::from("mayfly/function.zip"))).unwrap();
    assert_eq!(block(uploaded.bytes()).unwrap().as_ref(), std::fs::read(dist.join("function.zip")).unwrap());
    let mut settings: serde_json::Value =
        serde_json::from_str(&app_settings[mayfly_provider_api::SETTINGS_ENV]).unwrap();

    // The job: wordcount over Blob storage, its VMs running the packaged mayfly.
    let data = cloud.container("mayfly-pkg");
    for (name, content) in inputs(3, 1000) {
        block(data.put(&ObjPath::from(format!("in/{name}")), content.into())).unwrap();
    }
    settings["node_artifact"] = artifact.clone().into();
    settings.as_object_mut().unwrap().remove("node_binary");
    let (handler, port) = start_app(cloud, &app, &app_settings, &settings);
    let job = format!(
        "[job]\nname = \"pkg\"\nid = \"az-pkg\"\n\n[task]\npath = {:?}\nparams = {{ mode = \"map\" }}\n\n\
         [input]\nurl = \"az://mayfly-pkg/in\"\n\n[output]\nurl = \"az://mayfly-pkg/out/{{job}}\"\n\n\
         [state]\nurl = \"az://mayfly-pkg/state\"\n\n[provider]\nname = \"azure\"\n\n[cluster]\nworkers = 1\n",
        mayfly_tests::component("tasks/wordcount")
    );
    let answer = invoke(port, "run", &FunctionApp::http_payload(&serde_json::json!({"job": job})));
    assert_eq!(answer["Outputs"]["res"]["statusCode"], 200, "{answer}");
    let ended = || block(data.get(&ObjPath::from("state/az-pkg/final.json"))).is_ok();
    assert!(wait_until(Duration::from_secs(180), ended), "{}", node_log("az-pkg", "master"));
    assert!(
        wait_until(Duration::from_secs(60), || cloud.arm.vms("az-pkg").is_empty()),
        "{:?}",
        cloud.arm.vms("az-pkg")
    );
    // Each VM ran the mayfly it fetched (the harness's disks are this process's scratch).
    for node in ["master", "worker-1"] {
        let [disk] = &node_disks("az-pkg", node)[..] else { panic!("one VM was {node}") };
        assert!(disk.join("opt/mayfly/mayfly").is_file(), "{}: {}", disk.display(), node_log("az-pkg", node));
    }

    // An artifact whose content does not match its name: never unpacked; the VM deletes itself.
    let bad = "az://mayfly-dist/mayfly/node-".to_owned() + &"0".repeat(64) + ".tar.gz";
    block(
        cloud
            .container("mayfly-dist")
            .put(&ObjPath::from(format!("mayfly/node-{}.tar.gz", "0".repeat(64))), b"not the artifact".to_vec().into()),
    )
    .unwrap();
    drop(handler);
    settings["node_artifact"] = bad.into();
    settings["bootstrap_limit"] = "60s".into();
    let (_handler, port) = start_app(cloud, &app, &app_settings, &settings);
    let job = job.replace("id = \"az-pkg\"", "id = \"az-pkg-bad\"");
    let started = std::time::Instant::now();
    let call =
        std::thread::spawn(move || invoke(port, "run", &FunctionApp::http_payload(&serde_json::json!({"job": job}))));
    // The master's VM gives up on the artifact and deletes itself, while the
    // bootstrap still waits for it (its budget ends at ~55 s).
    let log = || node_log("az-pkg-bad", "master");
    assert!(
        wait_until(Duration::from_secs(50), || log().contains("cannot fetch or verify the node artifact")),
        "{}",
        log()
    );
    for disk in node_disks("az-pkg-bad", "master") {
        assert!(!disk.join("opt/mayfly/mayfly").exists(), "never unpacked: {}", disk.display());
    }
    assert!(
        wait_until(Duration::from_secs(40), || cloud.arm.vms("az-pkg-bad").is_empty()),
        "{:?}",
        cloud.arm.vms("az-pkg-bad")
    );
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "ended by itself, not by the bootstrap's rollback: {:?}",
        started.elapsed()
    );
    let answer = call.join().unwrap();
    assert_ne!(answer["Outputs"]["res"]["statusCode"], 200, "{answer}");
}
