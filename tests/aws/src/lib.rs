//! mayfly's AWS tests and their harness (a package of their own, so that the
//! other tests and the benchmarks never build the AWS SDK).
//!
//! The AWS the tests run against: moto in server mode on 127.0.0.1 (installed
//! into a virtual environment under the target directory when missing, or
//! taken from `MAYFLY_MOTO_PYTHON`), and a hypervisor that does what moto
//! does not: for each instance of a job that moto reports pending or
//! running, it runs the instance's user data (the real script, as cloud-init
//! would) on a directory of its own, with an IMDSv2 endpoint of its own and
//! `shutdown`/`poweroff` commands that tell the hypervisor; when moto reports
//! the instance terminated, it kills every process of the instance; when the
//! instance's OS powers off (or its dead-man switch's time comes), it
//! terminates the instance in moto.

// Test support: a panic is how a harness step reports failure.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use axum::response::IntoResponse;
use base64::Engine;
use mayfly_provider_aws::NodeLaunch;

use mayfly_tests::mayfly_bin;
use mayfly_tests::vm::{Disks, Machine};

pub use mayfly_tests::moto::Moto;
pub use mayfly_tests::proxy::{RefusingProxy, Rule};

/// A moto server of its own, without the hypervisor: for a test whose
/// assertions must not see other tests' instances.
pub fn private_moto() -> Moto {
    start_moto(false)
}

/// The moto server, started once per test process.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| start_moto(true))
}

fn start_moto(hypervisor: bool) -> Moto {
    // Refuse what EC2 refuses: unknown instance types and images.
    let moto =
        Moto::start(&[("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true"), ("MOTO_ENABLE_AMI_VALIDATION", "true")]);
    if hypervisor {
        Hypervisor::start(&moto);
    }
    moto
}

/// What the AWS tests ask of a moto beyond S3.
pub trait MotoExt {
    /// The `[provider]` settings that point the aws plugin at this moto.
    fn settings(&self) -> serde_json::Map<String, serde_json::Value>;
    /// An EC2 client on this moto, for tests that look at instances themselves.
    fn ec2(&self) -> aws_sdk_ec2::Client;
}

impl MotoExt for Moto {
    fn settings(&self) -> serde_json::Map<String, serde_json::Value> {
        let v = serde_json::json!({
            "endpoint_url": self.endpoint,
            "credentials_file": self.credentials,
            "image_id": "ami-12c6146b",
            "instance_type": "t3.micro",
            "role_arn": "arn:aws:iam::123456789012:role/mayfly-job",
            "credential_ttl": "15m",
            "max_nodes": 8,
            // The image's mayfly: the tests' own build (a test that fetches
            // the packaged node artifact sets `node_artifact` instead).
            "node_binary": mayfly_bin(),
        });
        v.as_object().cloned().unwrap_or_default()
    }

    fn ec2(&self) -> aws_sdk_ec2::Client {
        let creds = aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "mayfly-tests");
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(creds)
            .build();
        aws_sdk_ec2::Client::from_conf(config)
    }
}

/// Where the hypervisor keeps each instance's disk (made once per process):
/// `<scratch>/aws-nodes/<job>/<node>@<instance id>/`, the `/` its user data
/// writes under (`MAYFLY_ROOT`): `console.log` (the user data's output),
/// `var/log/mayfly-node.log` (the node's), `opt/mayfly/` (a fetched artifact).
fn disks() -> &'static Disks {
    static DISKS: OnceLock<Disks> = OnceLock::new();
    DISKS.get_or_init(|| Disks::new("aws-nodes"))
}

/// What a node of `job` has written so far: its instance's console (the
/// user data's output) and the node's log, for every instance that has been
/// that node (a relaunched master is a new instance).
pub fn node_log(job: &str, node: &str) -> String {
    disks().node_log(job, node)
}

/// The lines that `job`'s nodes wrote on their machines that contain `needle`.
pub fn node_lines(job: &str, needle: &str) -> Vec<String> {
    disks().lines_saying(job, needle)
}

/// The directory of the Python that runs moto: its virtual environment's
/// `bin`, with the AWS CLI the instances' user data uses.
fn python_bin() -> PathBuf {
    let python = mayfly_tests::moto::python();
    python.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The AWS CLI of moto's virtual environment, pointed at `moto` with its
/// test keys.
pub fn aws_cli(moto: &Moto) -> Command {
    let mut cli = Command::new(python_bin().join("aws"));
    cli.args(["--endpoint-url", &moto.endpoint, "--region", "us-east-1", "--output", "json"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_CONFIG_FILE", "/nonexistent/mayfly-tests/config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/mayfly-tests/credentials");
    cli
}

/// The disks of the instances that have been `node` of `job`.
pub fn node_disks(job: &str, node: &str) -> Vec<PathBuf> {
    disks().of_node(job, node)
}

/// The aws plugin's library (built for the tests' profile).
pub fn aws_plugin() -> PathBuf {
    mayfly_tests::plugin("mayfly-provider-aws", &[])
}

/// Plays EC2's hypervisor for moto's instances.
struct Hypervisor;

impl Hypervisor {
    fn start(moto: &Moto) {
        let ec2 = moto.ec2();
        let disks = disks().clone();
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::Builder::new()
            .name("moto-hypervisor".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let mut nodes: HashMap<String, Machine> = HashMap::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = rt.block_on(Self::tick(&ec2, &disks, &mut nodes)) {
                        eprintln!("moto hypervisor: {e}");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .unwrap();
    }

    async fn tick(
        ec2: &aws_sdk_ec2::Client,
        disks: &Disks,
        nodes: &mut HashMap<String, Machine>,
    ) -> Result<(), String> {
        let out = ec2
            .describe_instances()
            .filters(Filter::builder().name("tag-key").values("mayfly:job").build())
            .send()
            .await
            .map_err(|e| format!("DescribeInstances: {}", aws_sdk_ec2::error::DisplayErrorContext(e)))?;
        for i in out.reservations().iter().flat_map(|r| r.instances()) {
            let (Some(id), Some(state)) = (i.instance_id(), i.state().and_then(|s| s.name())) else { continue };
            let alive = matches!(state.as_str(), "pending" | "running");
            match nodes.get_mut(id) {
                None if alive => match Self::boot(ec2, id, i.ami_launch_index().unwrap_or(0) as u64, disks).await {
                    Ok(node) => {
                        nodes.insert(id.to_owned(), node);
                    }
                    // A machine that cannot boot stays off; the others boot on.
                    Err(e) => eprintln!("moto hypervisor: {e}"),
                },
                // Terminated in EC2: the machine is gone, and every process on it.
                Some(node) if !alive && !node.ended() => node.end(),
                // The OS shut down: with shutdown behaviour "terminate", EC2
                // terminates the instance (and the next tick ends its processes).
                Some(node) if alive && !node.ended() && node.powered_off() => {
                    let _ = ec2.terminate_instances().instance_ids(id).send().await;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Boots an instance: runs its user data, as cloud-init does (as root, with
    /// no environment to speak of), on a disk of its own, against an IMDSv2 of
    /// its own.
    async fn boot(ec2: &aws_sdk_ec2::Client, id: &str, index: u64, disks: &Disks) -> Result<Machine, String> {
        let attr = ec2
            .describe_instance_attribute()
            .instance_id(id)
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .map_err(|e| format!("DescribeInstanceAttribute: {}", aws_sdk_ec2::error::DisplayErrorContext(e)))?;
        let encoded = attr.user_data().and_then(|u| u.value()).unwrap_or_default();
        let script = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        // The launch line names the instance's disk (and what a test reads).
        let launch =
            NodeLaunch::from_user_data(&script).ok_or_else(|| format!("{id}: no mayfly node in its user data"))?;
        let imds = Imds::serve(&launch.job, id, index);
        let root = disks.disk(&launch.job, &launch.name(index), id);
        let path = format!("{}:{}:/usr/local/bin:/usr/bin:/bin", disks.bin().display(), python_bin().display());
        let env = [
            ("MAYFLY_IMDS", imds.clone()),
            // The AWS SDK's and the AWS CLI's metadata endpoint (EC2's by default).
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds),
        ];
        let said = format!("instance {id} boots as {} of job {}", launch.name(index), launch.job);
        Machine::boot(&root, "user-data", &script, &path, &env, &said)
    }
}

/// A Lambda Runtime API with one queue of events; what the function answers
/// comes back on `answers` as (request id, "response" or "error", body).
#[derive(Debug)]
pub struct RuntimeApi {
    /// `127.0.0.1:<port>`, for `AWS_LAMBDA_RUNTIME_API`.
    pub addr: String,
    /// (request id, deadline in ms since the epoch, event).
    pub events: tokio::sync::mpsc::UnboundedSender<(String, u64, String)>,
    /// (request id, `response` or `error`, body).
    pub answers: std::sync::mpsc::Receiver<(String, String, String)>,
}

impl RuntimeApi {
    /// Serves on a port of its own.
    pub fn start() -> RuntimeApi {
        use axum::extract::Path;
        use axum::routing::{get, post};
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel::<(String, u64, String)>();
        let events = Arc::new(tokio::sync::Mutex::new(events_rx));
        let (answers_tx, answers_rx) = std::sync::mpsc::channel();
        let next = move || {
            let events = events.clone();
            async move {
                // Long poll: wait for the next event. As Lambda's own server does, the
                // event goes without a Content-Length (chunked).
                let Some((id, deadline, event)) = events.lock().await.recv().await else {
                    return axum::http::StatusCode::GONE.into_response();
                };
                let chunks = futures_util::stream::once(async move { Ok::<_, std::io::Error>(event) });
                (
                    [("Lambda-Runtime-Aws-Request-Id", id), ("Lambda-Runtime-Deadline-Ms", deadline.to_string())],
                    axum::body::Body::from_stream(chunks),
                )
                    .into_response()
            }
        };
        let answer = move |Path((id, kind)): Path<(String, String)>, body: String| {
            let _ = answers_tx.send((id, kind, body));
            std::future::ready(axum::http::StatusCode::ACCEPTED)
        };
        let app = axum::Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/{kind}", post(answer));
        RuntimeApi { addr: serve_http(app), events: events_tx, answers: answers_rx }
    }
}

/// Serves `app` on a port of its own, from a thread of its own with a
/// current-thread runtime (a handler that blocks holds every other request
/// back, as a busy service's queue does); returns `127.0.0.1:<port>`.
pub fn serve_http(app: axum::Router) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}

/// `mayfly serve --provider aws` (the Lambda function's bootstrap) on `api`,
/// with `settings` (a `[provider]` table's) as `--set key=value`.
pub fn lambda_function(api: &RuntimeApi, settings: &serde_json::Map<String, serde_json::Value>) -> std::process::Child {
    let mut serve = Command::new(mayfly_bin());
    serve.args(["serve", "--provider"]).arg(aws_plugin()).env("AWS_LAMBDA_RUNTIME_API", &api.addr);
    // What Lambda sets in every function's environment.
    serve.envs([
        ("AWS_LAMBDA_FUNCTION_NAME", "mayfly"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024"),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
    ]);
    for (k, v) in settings {
        serve.args(["--set", &format!("{k}={}", v.as_str().map(str::to_owned).unwrap_or(v.to_string()))]);
    }
    serve.env("MAYFLY_CACHE_DIR", mayfly_tests::cache_dir()).spawn().unwrap()
}

/// The instance profile's role name.
const ROLE: &str = "mayfly-node";

/// How long the instance profile's credentials live (`MAYFLY_TEST_IMDS_TTL`
/// seconds; default 20 s, so that nodes must renew them during a job).
fn imds_ttl() -> u64 {
    std::env::var("MAYFLY_TEST_IMDS_TTL").ok().and_then(|v| v.parse().ok()).unwrap_or(20)
}

/// Fresh instance profile credentials, valid for [`imds_ttl`].
fn instance_profile_credentials() -> String {
    static ISSUED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = ISSUED.fetch_add(1, Ordering::Relaxed);
    let now = mayfly_provider_api::now_ms() / 1000;
    serde_json::json!({
        "Code": "Success",
        "LastUpdated": mayfly_tests::iso8601(now),
        "Type": "AWS-HMAC",
        "AccessKeyId": format!("ASIATESTING{n:08}"),
        "SecretAccessKey": format!("secret-{n}"),
        "Token": format!("token-{n}"),
        "Expiration": mayfly_tests::iso8601(now + imds_ttl()),
    })
    .to_string()
}

/// Every instance's metadata service answers late while this says so.
pub static SLOW_METADATA: mayfly_tests::vm::Slowdown = mayfly_tests::vm::Slowdown::new();

/// A minimal IMDSv2 for one instance: a session token, then its instance id,
/// launch index, region, and instance profile credentials (late while
/// [`SLOW_METADATA`] says so).
struct Imds;

impl Imds {
    /// Serves the metadata of `job`'s instance `id`; returns its endpoint.
    fn serve(job: &str, id: &str, index: u64) -> String {
        use axum::http::{HeaderMap, Method, StatusCode, Uri};
        let (job, token) = (job.to_owned(), format!("token-{id}"));
        let answers: HashMap<&'static str, String> = HashMap::from([
            ("/latest/meta-data/instance-id", id.to_owned()),
            ("/latest/meta-data/ami-launch-index", index.to_string()),
            ("/latest/meta-data/placement/region", "us-east-1".to_owned()),
            // These "instances" share this machine's loopback.
            ("/latest/meta-data/local-ipv4", "127.0.0.1".to_owned()),
        ]);
        let answer = move |method: Method, uri: Uri, headers: HeaderMap| {
            // One answer at a time, as a busy service queues them (this blocks
            // the server's only thread).
            SLOW_METADATA.wait(&job);
            let has = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let path = uri.path();
            let (status, body) = match method {
                Method::PUT if path == "/latest/api/token" && has("x-aws-ec2-metadata-token-ttl-seconds").is_some() => {
                    (StatusCode::OK, token.clone())
                }
                Method::PUT => (StatusCode::BAD_REQUEST, String::new()),
                _ if has("x-aws-ec2-metadata-token").as_deref() != Some(token.as_str()) => {
                    (StatusCode::UNAUTHORIZED, String::new())
                }
                _ => match answers.get(path) {
                    Some(v) => (StatusCode::OK, v.clone()),
                    None if path == "/latest/meta-data/iam/security-credentials/" => (StatusCode::OK, ROLE.to_owned()),
                    None if path == format!("/latest/meta-data/iam/security-credentials/{ROLE}") => {
                        (StatusCode::OK, instance_profile_credentials())
                    }
                    None => (StatusCode::NOT_FOUND, String::new()),
                },
            };
            let headers = [("Content-Type", "text/plain"), ("X-aws-ec2-metadata-token-ttl-seconds", "21600")];
            std::future::ready((status, headers, body))
        };
        format!("http://{}", serve_http(axum::Router::new().fallback(answer)))
    }
}
