//! `mayfly package aws` and `mayfly deploy aws`, and what they make, running:
//! the packaged Lambda function (its `bootstrap`, as Lambda's
//! `provided.al2023` runtime starts it, with the settings `deploy` gave the
//! function in moto) bootstraps a job from an S3 event, and the job's nodes
//! boot from their user data, fetch the packaged node artifact from S3 with
//! the AWS CLI and their instance profile, and run it.
//!
//! The package is built with `cargo zigbuild` (installed under the target
//! directory on first use when `PATH` lacks it): the first run of this file
//! builds mayfly and the plugin for glibc 2.34 in the `package-test` profile
//! (unoptimized: the packaging is what is tested, `ship` only adds
//! optimization; minutes); later runs reuse the build.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use mayfly_tests::cluster::{inputs, text, wait_until};
use mayfly_tests::{mayfly_bin, root, scratch};
use mayfly_tests_aws::{MotoExt, RuntimeApi, aws_cli, moto, node_disks, node_log};

fn mayfly(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(mayfly_bin());
    // `mayfly package` runs cargo: without the variables cargo set for this test.
    mayfly_tests::without_test_env(&mut cmd);
    cmd.args(args).current_dir(root()).output().unwrap()
}

fn cli(args: &[&str]) -> String {
    let out = aws_cli(moto()).args(args).output().unwrap();
    assert!(out.status.success(), "aws {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// moto's settings as `--set key=value` arguments, without `skip`.
fn set_args(skip: &[&str]) -> Vec<String> {
    moto()
        .settings()
        .into_iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .flat_map(|(k, v)| {
            ["--set".to_owned(), format!("{k}={}", v.as_str().map(str::to_owned).unwrap_or(v.to_string()))]
        })
        .collect()
}

/// A `PATH` with `cargo zigbuild` and zig on it: this one if it has them (as
/// `.ci/run` sets up), else one with both installed under the target
/// directory on first use (`cargo install cargo-zigbuild`, `pip install
/// ziglang`), so that `cargo test --workspace` works on a fresh machine.
fn zig_path() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    let works = |path: &str| {
        let zigbuild = mayfly_tests::cargo().args(["zigbuild", "--help"]).env("PATH", path).output();
        let zig = Command::new("python3").args(["-m", "ziglang", "version"]).env("PATH", path).output();
        let zig_bin = Command::new("zig").arg("version").env("PATH", path).output();
        zigbuild.is_ok_and(|o| o.status.success())
            && (zig.is_ok_and(|o| o.status.success()) || zig_bin.is_ok_and(|o| o.status.success()))
    };
    if works(&path) {
        return path;
    }
    let tools = mayfly_tests::target_dir().join("tools");
    let venv = tools.join("zig-venv");
    let ours = format!("{}:{}:{path}", venv.join("bin").display(), tools.join("bin").display());
    if !works(&ours) {
        let installed = mayfly_tests::cargo()
            .args(["install", "--locked", "cargo-zigbuild", "--root"])
            .arg(&tools)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("python3").args(["-m", "venv"]).arg(&venv).status().is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "ziglang"])
                .status()
                .is_ok_and(|s| s.success());
        assert!(installed && works(&ours), "installing cargo-zigbuild and zig under {} failed", tools.display());
    }
    ours
}

/// Packages once per test process.
fn package() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("aws-package");
        let mut cmd = Command::new(mayfly_bin());
        // `mayfly package` runs cargo: without the variables cargo set for this test.
        mayfly_tests::without_test_env(&mut cmd);
        let out = cmd
            .args(["package", "aws", "--out", dir.to_str().unwrap(), "--workspace", root().to_str().unwrap()])
            // Unoptimized: what is tested is the packaging, not the speed.
            .args(["--profile", "package-test"])
            // A target directory of its own: its C dependencies are compiled by
            // zig, the Azure package's by the system's compiler, and sharing
            // one directory made each package build undo the other's (both
            // rebuilt the AWS SDK on every run).
            .env("CARGO_TARGET_DIR", mayfly_tests::target_dir().join("package-aws"))
            .current_dir(root())
            .env("PATH", zig_path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("with glibc 2.3") && stdout.contains("next: mayfly deploy aws"), "{stdout}");
        dir
    })
    .clone()
}

#[test]
fn the_package_runs_on_amazon_linux_2023s_glibc() {
    let dir = package();
    let manifest = mayfly_ops::package::read_manifest(&dir).unwrap();
    assert_eq!(manifest.provider, "aws");
    assert_eq!(manifest.architecture, std::env::consts::ARCH);
    let (major, minor) =
        manifest.glibc.split_once('.').map(|(a, b)| (a.parse::<u32>().unwrap(), b.parse::<u32>().unwrap())).unwrap();
    assert!(major == 2 && minor <= 34, "AL2023 has glibc 2.34: {}", manifest.glibc);

    // The function's zip: what provided.al2023 runs, with the modes it needs.
    let function = scratch("aws-package-function");
    let listing = mayfly_tests::unzip(&dir.join("function.zip"), &function);
    assert_eq!(
        listing,
        vec!["bootstrap 0o755", "mayfly 0o755", "libmayfly_provider_aws.so 0o644"],
        "the function's files"
    );
    for file in ["mayfly", "libmayfly_provider_aws.so"] {
        let (major, minor) = mayfly_ops::package::glibc_needed(&function.join(file)).unwrap();
        assert!(major == 2 && minor <= 34, "{file} needs glibc {major}.{minor}");
    }
    // The packaged mayfly runs here and loads the packaged plugin next to it.
    let out = Command::new(function.join("mayfly"))
        .args(["iam-policy", "aws", "--location", "s3://b/p"])
        .env_remove("MAYFLY_PLUGIN_PATH")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("function_role"), "{}", text(&out));

    // The nodes' artifact: the same two files, unpacked by tar.
    let node = scratch("aws-package-node");
    let status = Command::new("tar").arg("-xzf").arg(dir.join("node.tar.gz")).arg("-C").arg(&node).status().unwrap();
    assert!(status.success());
    for file in ["mayfly", "libmayfly_provider_aws.so"] {
        assert_eq!(std::fs::read(node.join(file)).unwrap(), std::fs::read(function.join(file)).unwrap(), "{file}");
    }
}

#[test]
fn package_and_deploy_refuse_what_they_cannot_use() {
    let elsewhere = scratch("aws-package-elsewhere");
    let out =
        mayfly(&["package", "aws", "--workspace", elsewhere.to_str().unwrap(), "--out", elsewhere.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("is not a mayfly workspace with a `aws` provider"), "{}", text(&out));

    let plugin = mayfly_tests_aws::aws_plugin();
    let mut args = vec!["deploy", plugin.to_str().unwrap(), "--from", elsewhere.to_str().unwrap()];
    args.extend(["--function", "f", "--role", "arn:aws:iam::123456789012:role/r", "--artifacts", "s3://b/p"]);
    let out = mayfly(&args);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not a package (make one with `mayfly package <provider>`)"), "{}", text(&out));
}

#[test]
fn a_deployed_function_runs_a_job_whose_nodes_fetch_the_packaged_artifact() {
    let dir = package();
    let moto = moto();
    moto.create_bucket("mayfly-dist");
    moto.create_bucket("mayfly-pkg");

    // The function's role, with the policy `mayfly iam-policy` prints (moto checks its syntax).
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    cli(&["iam", "create-role", "--role-name", "mayfly-function", "--assume-role-policy-document", trust]);
    let policies = mayfly(&[
        "iam-policy",
        mayfly_tests_aws::aws_plugin().to_str().unwrap(),
        "--set",
        "instance_profile=mayfly-node",
        "--set",
        "node_artifact=s3://mayfly-dist/mayfly/node.tar.gz",
        "--location",
        "s3://mayfly-pkg/incoming",
        "--location",
        "s3://mayfly-pkg/out",
        "--location",
        "s3://mayfly-pkg/state",
    ]);
    assert!(policies.status.success(), "{}", text(&policies));
    let policies: serde_json::Value = serde_json::from_slice(&policies.stdout).unwrap();
    let document = policies["function_role"].to_string();
    cli(&[
        "iam",
        "put-role-policy",
        "--role-name",
        "mayfly-function",
        "--policy-name",
        "mayfly",
        "--policy-document",
        &document,
    ]);
    // The nodes' instance profile, its role with the node_role policy.
    let trust_ec2 = trust.replace("lambda.amazonaws.com", "ec2.amazonaws.com");
    cli(&["iam", "create-role", "--role-name", "mayfly-node", "--assume-role-policy-document", &trust_ec2]);
    let document = policies["node_role"].to_string();
    cli(&[
        "iam",
        "put-role-policy",
        "--role-name",
        "mayfly-node",
        "--policy-name",
        "mayfly",
        "--policy-document",
        &document,
    ]);
    cli(&["iam", "create-instance-profile", "--instance-profile-name", "mayfly-node"]);
    cli(&[
        "iam",
        "add-role-to-instance-profile",
        "--instance-profile-name",
        "mayfly-node",
        "--role-name",
        "mayfly-node",
    ]);

    // Deploy: the artifacts go to S3, the function is created; again: updated.
    let role = "arn:aws:iam::123456789012:role/mayfly-function";
    // With the packaged mayfly, as the README does: the plugin beside it is `aws`.
    let mut deploy: Vec<String> =
        ["deploy", "aws", "--from", dir.to_str().unwrap()].into_iter().map(str::to_owned).collect();
    deploy.extend(
        ["--function", "mayfly-jobs", "--role", role, "--artifacts", "s3://mayfly-dist/mayfly"].map(str::to_owned),
    );
    // The function's settings: moto's, but no job role and no image's mayfly.
    deploy.extend(set_args(&["node_binary", "role_arn", "credential_ttl"]));
    deploy.extend(
        ["--set", "event_job_url=s3://mayfly-pkg/jobs/nightly.toml", "--set", "event_prefix=incoming/"]
            .map(str::to_owned),
    );
    let packaged = |args: &[String]| {
        let mut cmd = Command::new(dir.join("bin/mayfly"));
        cmd.args(args).env_remove("MAYFLY_PLUGIN_PATH").output().unwrap()
    };
    let out = packaged(&deploy);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"action\": \"created\""), "{stdout}");
    // The nodes' artifact goes under its content's hash.
    let artifact = stdout
        .split("node_artifact = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("{stdout}"))
        .to_owned();
    let hash = mayfly_ops::package::node_key(&dir.join("node.tar.gz")).unwrap();
    assert_eq!(artifact, format!("s3://mayfly-dist/mayfly/{hash}"), "{stdout}");
    let out = packaged(&deploy);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"action\": \"updated\""), "{}", text(&out));
    let config: serde_json::Value =
        serde_json::from_str(&cli(&["lambda", "get-function-configuration", "--function-name", "mayfly-jobs"]))
            .unwrap();
    assert_eq!(config["Runtime"], "provided.al2023", "{config}");
    assert_eq!(config["Role"], role);
    assert_eq!(config["Timeout"], 900);
    let settings = config["Environment"]["Variables"][mayfly_provider_api::SETTINGS_ENV].as_str().unwrap().to_owned();
    assert!(settings.contains("s3://mayfly-pkg/jobs/nightly.toml"), "{settings}");
    assert!(!settings.contains("credentials_file"), "the deploying machine's files stay there: {settings}");
    assert!(!settings.contains("role_arn"), "{settings}");
    let code_size = std::fs::metadata(dir.join("function.zip")).unwrap().len();
    assert_eq!(config["CodeSize"].as_u64(), Some(code_size), "{config}");

    // The job the function runs for each batch: its nodes get mayfly from the
    // node artifact (no node_binary), and their credentials from their
    // instance profile (no credentials file, no job role).
    let mut provider = String::from("[provider]\nname = \"aws\"\n");
    for (k, v) in moto.settings() {
        if !["credentials_file", "role_arn", "node_binary"].contains(&k.as_str()) {
            provider.push_str(&format!("{k} = {v}\n"));
        }
    }
    provider.push_str(&format!("instance_profile = \"mayfly-node\"\nnode_artifact = \"{artifact}\"\n"));
    let job_file = format!(
        "[job]\nname = \"nightly\"\n\n[task]\npath = {:?}\nparams = {{ mode = \"slow\", delay_ms = 5 }}\n\n\
         [input]\nurl = \"s3://mayfly-pkg/placeholder\"\nglob = \"*.txt\"\n\n\
         [output]\nurl = \"s3://mayfly-pkg/out/{{job}}\"\n\n[state]\nurl = \"s3://mayfly-pkg/state\"\n\n\
         [sharding]\nsplit_text = false\n\n{provider}\n[cluster]\nworkers = 2\n",
        mayfly_tests::component("tests/guests/misbehave")
    );
    let local = scratch("aws-package-batch");
    std::fs::write(local.join("nightly.toml"), job_file).unwrap();
    cli(&["s3", "cp", local.join("nightly.toml").to_str().unwrap(), "s3://mayfly-pkg/jobs/nightly.toml"]);
    let files = inputs(4, 1500);
    let batch = local.join("batch");
    std::fs::create_dir_all(&batch).unwrap();
    for (name, data) in &files {
        std::fs::write(batch.join(name), data).unwrap();
    }
    std::fs::write(batch.join("_READY"), b"").unwrap();
    cli(&["s3", "cp", "--recursive", batch.to_str().unwrap(), "s3://mayfly-pkg/incoming/b1"]);

    // Lambda starts the function's bootstrap in its unpacked code, with the
    // function's environment (as moto keeps it) and its role's keys.
    let task_root = scratch("aws-package-task-root");
    mayfly_tests::unzip(&dir.join("function.zip"), &task_root);
    let api = RuntimeApi::start();
    let mut function = Command::new(task_root.join("bootstrap"))
        .current_dir("/")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("AWS_LAMBDA_RUNTIME_API", &api.addr)
        .env("AWS_LAMBDA_FUNCTION_NAME", "mayfly")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("LAMBDA_TASK_ROOT", &task_root)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_SESSION_TOKEN", "function-role-session")
        .env("HOME", scratch("aws-package-home"))
        .env("MAYFLY_CACHE_DIR", mayfly_tests::cache_dir())
        .env(mayfly_provider_api::SETTINGS_ENV, &settings)
        .spawn()
        .unwrap();
    let record = serde_json::json!({
        "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "mayfly-pkg"}, "object": {"key": "incoming/b1/_READY", "sequencer": "00F1"}}
    });
    let event = serde_json::json!({ "Records": [record] }).to_string();
    api.events.send(("pkg-1".into(), mayfly_provider_api::now_ms() + 120_000, event)).unwrap();
    let (id, kind, body) = api.answers.recv_timeout(Duration::from_secs(180)).unwrap();
    assert_eq!((id.as_str(), kind.as_str()), ("pkg-1", "response"), "{body}");
    let job = "incoming-b1-00F1";

    // The job ends done, each input's output once, and no instance is left.
    let state = scratch("aws-package-state");
    let ended = || {
        aws_cli(moto)
            .args(["s3", "cp", &format!("s3://mayfly-pkg/state/{job}/final.json"), state.to_str().unwrap()])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(wait_until(Duration::from_secs(180), ended), "{}", node_log(job, "master"));
    let fin: serde_json::Value = serde_json::from_slice(&std::fs::read(state.join("final.json")).unwrap()).unwrap();
    assert_eq!(fin["reason"], "done", "{fin}");
    let outputs = scratch("aws-package-out");
    cli(&["s3", "cp", "--recursive", &format!("s3://mayfly-pkg/out/{job}"), outputs.to_str().unwrap()]);
    for (name, data) in &files {
        assert_eq!(&std::fs::read(outputs.join("map").join(name).join("copy.bin")).unwrap(), data, "{name}");
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outputs.join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["outputs"].as_array().unwrap().len(), files.len(), "{manifest}");
    assert!(!outputs.join("_mayfly/staging").exists(), "no staging is left");

    // Every node ran the packaged mayfly, fetched from S3 onto its disk.
    let packaged = std::fs::read(task_root.join("mayfly")).unwrap();
    for node in ["master", "worker-1", "worker-2"] {
        let disks = node_disks(job, node);
        assert_eq!(disks.len(), 1, "{node}: {disks:?}");
        let fetched = disks[0].join("opt/mayfly/mayfly");
        assert!(
            std::fs::read(&fetched).is_ok_and(|b| b == packaged),
            "{node} has no packaged mayfly at {}",
            fetched.display()
        );
        let log = node_log(job, node);
        assert!(!log.contains("cannot fetch"), "{log}");
    }
    let billing = || {
        let out = cli(&[
            "ec2",
            "describe-instances",
            "--filters",
            &format!("Name=tag:mayfly:job,Values={job}"),
            "Name=instance-state-name,Values=pending,running,stopping,stopped",
        ]);
        out.matches("\"InstanceId\"").count()
    };
    assert!(wait_until(Duration::from_secs(60), || billing() == 0), "{} instances left", billing());
    let _ = function.kill();
    let _ = function.wait();
}

#[test]
fn a_node_artifact_whose_hash_does_not_match_its_name_is_refused() {
    // The packaged artifact, under the name of another content: the user data
    // fetches it, finds another hash, and powers the machine off.
    let dir = package();
    let moto = moto();
    moto.create_bucket("mayfly-dist-bad");
    let wrong = format!("s3://mayfly-dist-bad/mayfly/node-{}.tar.gz", "0".repeat(64));
    cli(&["s3", "cp", dir.join("node.tar.gz").to_str().unwrap(), &wrong]);
    let mut settings = moto.settings();
    settings.remove("node_binary");
    settings.insert("node_artifact".into(), wrong.clone().into());
    let selection = mayfly_data::provider::Selection {
        name: None,
        path: Some(mayfly_tests_aws::aws_plugin()),
        timeout_ms: None,
        settings,
    };
    let p = mayfly_data::provider::ProviderHandle::select(&selection).unwrap();
    let nodes = vec![mayfly_data::provider::NodeSpec {
        node: "worker-1".into(),
        role: mayfly_data::provider::Role::Worker,
        args: vec!["idle".into(), "--for".into(), "5m".into()],
    }];
    let expires_at = mayfly_provider_api::now_ms() + 300_000;
    let job = "aws-bad-artifact";
    p.launch(mayfly_data::provider::LaunchRequest { job: job.into(), state: "/tmp".into(), expires_at, nodes })
        .unwrap();
    let refused = || node_log(job, "worker-1").contains("cannot fetch or verify the node artifact");
    assert!(wait_until(Duration::from_secs(90), refused), "{}", node_log(job, "worker-1"));
    // Powered off: terminated, and no mayfly ran from the artifact.
    assert!(wait_until(Duration::from_secs(30), || p.list(job, "/tmp").unwrap().is_empty()));
    let disks = node_disks(job, "worker-1");
    assert_eq!(disks.len(), 1, "{disks:?}");
    assert!(disks[0].join("opt/mayfly/node.tar.gz").exists(), "it was fetched");
    assert!(!disks[0].join("opt/mayfly/mayfly").exists(), "but never unpacked, let alone run");
}
