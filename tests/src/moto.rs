//! moto, AWS's emulator, in server mode on 127.0.0.1: installed into a virtual
//! environment under the target directory on first use (or taken from
//! `MAYFLY_MOTO_PYTHON`). The AWS tests (`tests/aws`) add EC2's hypervisor on
//! top; the benchmarks read inputs from its S3 here, without the AWS SDK:
//! [`S3`] is a provider that configures `s3://` stores at an endpoint with
//! moto's test keys, and [`DelayProxy`] puts a round-trip time in front of it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use mayfly_data::provider::{ProviderHandle, Selection};
use mayfly_data::store::{Location, Principal, Store};
use mayfly_provider_api::{
    BootstrapRequest, Capabilities, Credential, CredentialRequest, ErrorKind, LaunchRequest, Limits, ListRequest,
    NodeInfo, Provider, ProviderError, ProviderInfo, Secret, Settings, StoreConfig, TerminateRequest, Validity,
    async_trait,
};

use crate::{scratch, target_dir};

/// A Python with moto (and the AWS CLI the AWS tests' instances run)
/// installed: `MAYFLY_MOTO_PYTHON`, or a virtual environment under the target
/// directory, made (with `pip install 'moto[server]' awscli`) on first use.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    // Once per process: tests start motos and boot instances concurrently.
    PYTHON.get_or_init(find_or_install).clone()
}

fn find_or_install() -> PathBuf {
    if let Some(p) = std::env::var_os("MAYFLY_MOTO_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = target_dir().join("moto-venv");
    let python = venv.join("bin/python");
    let ready = venv.join(".installed");
    if !ready.exists() || !venv.join("bin/aws").exists() {
        eprintln!("installing moto and the AWS CLI into {} (once)", venv.display());
        let ok = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "moto[server]", "awscli"])
                .status()
                .is_ok_and(|s| s.success());
        assert!(ok, "installing moto into {} failed (needs python3 and PyPI)", venv.display());
        std::fs::write(&ready, b"").expect("mark moto installed");
    }
    python
}

/// A moto server. It ends when this process does: it watches its standard
/// input, which only this process holds.
#[derive(Debug)]
pub struct Moto {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// An AWS shared credentials file with moto's test keys.
    pub credentials: PathBuf,
    _server: Mutex<Child>,
}

impl Moto {
    /// Starts a moto server on a free port, with `env` set for it.
    pub fn start(env: &[(&str, &str)]) -> Moto {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let dir = scratch(&format!("moto-{port}"));
        let log = std::fs::File::create(dir.join("moto.log")).expect("moto's log");
        let watch = "import os, sys, threading\n\
                     threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()\n\
                     from moto.server import main\n\
                     main(['-H', '127.0.0.1', '-p', sys.argv[1]])\n";
        let server = Command::new(python())
            .args(["-c", watch, &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("moto's log"))
            .stderr(log)
            .spawn()
            .expect("start moto");
        let up =
            crate::cluster::wait_until(Duration::from_secs(60), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(up, "moto did not start on port {port} (see {})", dir.join("moto.log").display());
        let credentials = dir.join("credentials");
        std::fs::write(&credentials, "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
            .expect("moto's credentials file");
        Moto { endpoint: format!("http://127.0.0.1:{port}"), credentials, _server: Mutex::new(server) }
    }

    /// Creates an S3 bucket (moto takes unsigned requests).
    pub fn create_bucket(&self, bucket: &str) {
        let host = self.endpoint.trim_start_matches("http://");
        let mut stream = TcpStream::connect(host).expect("connect to moto");
        write!(stream, "PUT /{bucket} HTTP/1.0\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n").expect("send");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"), "CreateBucket: {answer}");
    }
}

/// A provider that only configures stores: `s3://` at `endpoint`, signed
/// with moto's test keys. What the aws provider's `object_store` and
/// `credentials` give a node, without the AWS SDK (nodes are never launched
/// through it: every other call is refused).
#[derive(Debug)]
pub struct S3 {
    endpoint: String,
}

impl S3 {
    /// `url` (`s3://bucket/prefix`) opened as a node opens it, at `endpoint`
    /// (moto, or a proxy in front of it).
    pub fn store(endpoint: &str, url: &str) -> Store {
        let handle = ProviderHandle::built_in(Arc::new(S3 { endpoint: endpoint.to_owned() }), Selection::default());
        let who = Principal { job: "bench".into(), state: String::new(), node: "worker-1".into() };
        let location = Location::parse(url, std::path::Path::new("/")).expect("an s3:// URL");
        Store::open(&location, &handle, &who).expect("open the S3 store")
    }
}

fn refused(call: &str) -> ProviderError {
    ProviderError::new("moto-s3", ErrorKind::Unsupported, format!("{call}: this provider only configures stores"))
}

#[async_trait]
impl Provider for S3 {
    fn create(_settings: Settings, _host: Arc<dyn mayfly_provider_api::Host>) -> Result<Self, ProviderError> {
        Err(refused("create"))
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            name: "moto-s3".into(),
            limits: Limits { bootstrap_limit_ms: 60_000, credential_ttl_ms: 3_600_000, max_nodes: 0 },
            capabilities: Capabilities::default(),
            schemes: vec!["s3".into()],
            nodes: None,
        }
    }

    async fn launch(&self, _request: LaunchRequest) -> Result<Vec<NodeInfo>, ProviderError> {
        Err(refused("launch"))
    }

    async fn list(&self, _request: ListRequest) -> Result<Vec<NodeInfo>, ProviderError> {
        Err(refused("list"))
    }

    async fn terminate(&self, _request: TerminateRequest) -> Result<(), ProviderError> {
        Err(refused("terminate"))
    }

    async fn identify(&self) -> Result<Option<NodeInfo>, ProviderError> {
        Ok(None)
    }

    async fn terminate_self(&self) -> Result<(), ProviderError> {
        Err(refused("terminate_self"))
    }

    async fn credentials(&self, request: CredentialRequest) -> Result<Credential, ProviderError> {
        let now = mayfly_provider_api::now_ms();
        Ok(Credential {
            node: request.node,
            secret: Secret::S3 { key_id: "testing".into(), secret_key: "testing".into(), session_token: None },
            validity: Validity { issued_at: now, expires_at: now + 3_600_000 },
        })
    }

    async fn object_store(&self, url: String) -> Result<StoreConfig, ProviderError> {
        if !url.starts_with("s3://") {
            return Err(ProviderError::new("moto-s3", ErrorKind::Unsupported, format!("{url}: only s3:// URLs")));
        }
        let options = [
            ("aws_region", "us-east-1"),
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_virtual_hosted_style_request", "false"),
        ];
        Ok(StoreConfig {
            scheme: "s3".into(),
            options: options.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        })
    }

    async fn adapt_event(&self, _event: serde_json::Value) -> Result<BootstrapRequest, ProviderError> {
        Err(refused("adapt_event"))
    }
}

/// A TCP proxy on loopback that holds every chunk a client sends for `delay`
/// before passing it on: one HTTP request (its head in one write) costs one
/// more `delay` of round trip, as a store in another data centre would;
/// answers pass at once. Connections are kept alive as the client keeps them.
#[derive(Debug)]
pub struct DelayProxy {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl DelayProxy {
    /// Starts one in front of `upstream` (`http://host:port`).
    pub fn start(upstream: &str, delay: Duration) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listens");
        let endpoint = format!("http://{}", listener.local_addr().expect("proxy address"));
        let upstream = upstream.trim_start_matches("http://").to_owned();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (Ok(client_reader), Ok(server_writer)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                std::thread::spawn(move || pipe(client_reader, server_writer, delay));
                std::thread::spawn(move || pipe(server, client, Duration::ZERO));
            }
        });
        DelayProxy { endpoint }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let mut buf = vec![0; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !delay.is_zero() {
                    std::thread::sleep(delay);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
