//! A proxy in front of an emulator's HTTP API (moto's, or Azurite's over TLS)
//! that refuses the requests its rules match, with the cloud's own error
//! document, for a time or for good, and forwards the others: EC2 refusing
//! what moto would grant (spot capacity, say), throttling its API, or S3 or
//! Blob storage refusing writes for a while.
//!
//! One request per connection: every answer says `Connection: close`, so each
//! request is judged on its own (clients open another connection).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// See the module's documentation.
#[derive(Debug)]
pub struct RefusingProxy {
    /// `http://127.0.0.1:<port>` (or `https://` in front of a TLS upstream):
    /// the endpoint to give clients in place of the upstream's.
    pub endpoint: String,
    /// How many requests it refused.
    pub refused: Arc<AtomicUsize>,
    rules: Arc<Mutex<Vec<Rule>>>,
}

/// What a [`RefusingProxy`] refuses, and how.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The request's method (`PUT`), or any.
    pub method: Option<&'static str>,
    /// A text in the request's line (its path) or its body.
    pub needle: String,
    /// The answer's status line (`503 Service Unavailable`).
    pub status: &'static str,
    /// The answer's body: the cloud's error document.
    pub body: String,
    /// Until when it holds (for good if `None`).
    pub until: Option<Instant>,
    /// How many requests it refused.
    pub hits: Arc<AtomicUsize>,
}

impl Rule {
    /// EC2's error `code` (a query API error document) with `status`, for
    /// every request whose line or body contains `needle`.
    pub fn ec2(needle: &str, status: &'static str, code: &str) -> Rule {
        let body = format!(
            "<Response><Errors><Error><Code>{code}</Code><Message>refused by the test's proxy</Message></Error></Errors>\
             <RequestID>proxy</RequestID></Response>"
        );
        Rule { method: None, needle: needle.to_owned(), status, body, until: None, hits: Default::default() }
    }

    /// S3's error `code` (a REST error document) with `status`, for requests
    /// of `method` whose path contains `needle`.
    pub fn s3(method: &'static str, needle: &str, status: &'static str, code: &str) -> Rule {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>\
             <Message>refused by the test's proxy</Message><RequestId>proxy</RequestId></Error>"
        );
        Rule { method: Some(method), needle: needle.to_owned(), status, body, until: None, hits: Default::default() }
    }

    /// Blob storage's error `code` (its REST error document) with `status`,
    /// for requests of `method` whose path contains `needle`.
    pub fn blob(method: &'static str, needle: &str, status: &'static str, code: &str) -> Rule {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code>\
             <Message>refused by the test's proxy</Message></Error>"
        );
        Rule { method: Some(method), needle: needle.to_owned(), status, body, until: None, hits: Default::default() }
    }

    /// The same rule, holding for `how_long` from now.
    pub fn lasting(mut self, how_long: Duration) -> Rule {
        self.until = Some(Instant::now() + how_long);
        self
    }

    fn matches(&self, line: &str, body: &[u8]) -> bool {
        self.until.is_none_or(|u| Instant::now() < u)
            && self.method.is_none_or(|m| line.starts_with(&format!("{m} ")))
            && (line.contains(&self.needle) || String::from_utf8_lossy(body).contains(&self.needle))
    }
}

/// `host:port` of an endpoint URL (`https://127.0.0.1:10000/account`): the
/// proxy forwards requests as they come, paths included.
fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// Where the proxy forwards to.
#[derive(Clone)]
enum Upstream {
    Plain(String),
    Tls { addr: String, client: Arc<rustls::ClientConfig> },
}

impl RefusingProxy {
    /// One in front of the plain HTTP endpoint `upstream` (`http://host:port`),
    /// refusing nothing yet.
    pub fn open(upstream: &str) -> RefusingProxy {
        Self::listen("http", Upstream::Plain(authority(upstream)), None)
    }

    /// One in front of the TLS endpoint `upstream` (`https://host:port`),
    /// refusing nothing yet: it serves TLS with `cert` and `key` (PEM files,
    /// the upstream's own, so its clients trust it as they trust the
    /// upstream), and trusts `ca` upstream.
    pub fn open_tls(upstream: &str, cert: &Path, key: &Path, ca: &Path) -> RefusingProxy {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(cert).expect("the proxy's certificate").map(|c| c.unwrap()).collect();
        let key = PrivateKeyDer::from_pem_file(key).expect("the proxy's key");
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("the proxy's certificate and key");
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).expect("the upstream's CA") {
            roots.add(c.unwrap()).expect("the upstream's CA");
        }
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self::listen(
            "https",
            Upstream::Tls { addr: authority(upstream), client: Arc::new(client) },
            Some(Arc::new(server)),
        )
    }

    fn listen(scheme: &str, upstream: Upstream, tls: Option<Arc<rustls::ServerConfig>>) -> RefusingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the proxy");
        let endpoint = format!("{scheme}://{}", listener.local_addr().expect("the proxy's address"));
        let refused = Arc::new(AtomicUsize::new(0));
        let rules: Arc<Mutex<Vec<Rule>>> = Arc::default();
        let (count, held) = (refused.clone(), rules.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (upstream, count, held, tls) = (upstream.clone(), count.clone(), held.clone(), tls.clone());
                std::thread::spawn(move || {
                    let _ = match tls {
                        Some(config) => match rustls::ServerConnection::new(config) {
                            Ok(conn) => Self::serve(rustls::StreamOwned::new(conn, stream), &upstream, &held, &count),
                            Err(_) => Ok(()),
                        },
                        None => Self::serve(stream, &upstream, &held, &count),
                    };
                });
            }
        });
        RefusingProxy { endpoint, refused, rules }
    }

    /// Adds `rule`; returns its count of refused requests.
    pub fn refuse(&self, rule: Rule) -> Arc<AtomicUsize> {
        let hits = rule.hits.clone();
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).push(rule);
        hits
    }

    /// Reads one request from `client`; refuses it or forwards it.
    fn serve(
        mut client: impl Read + Write,
        upstream: &Upstream,
        rules: &Mutex<Vec<Rule>>,
        refused: &AtomicUsize,
    ) -> std::io::Result<()> {
        let mut reader = BufReader::new(&mut client);
        let mut head = Vec::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if line.trim().is_empty() {
                break;
            }
            if !lower.starts_with("connection:") {
                head.push(line);
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        drop(reader);
        let first = head.first().cloned().unwrap_or_default();
        let refusal =
            rules.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|r| r.matches(&first, &body)).cloned();
        if let Some(rule) = refusal {
            rule.hits.fetch_add(1, Ordering::Relaxed);
            refused.fetch_add(1, Ordering::Relaxed);
            let head_only = first.starts_with("HEAD ");
            write!(
                client,
                "HTTP/1.1 {}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                rule.status,
                rule.body.len(),
                if head_only { "" } else { rule.body.as_str() }
            )?;
            return client.flush();
        }
        let mut request = head.concat().into_bytes();
        request.extend_from_slice(b"Connection: close\r\n\r\n");
        request.extend_from_slice(&body);
        let answer = match upstream {
            Upstream::Plain(addr) => Self::exchange(TcpStream::connect(addr)?, &request)?,
            Upstream::Tls { addr, client: config } => {
                let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h).to_owned();
                let name = rustls::pki_types::ServerName::try_from(host).map_err(std::io::Error::other)?;
                let conn = rustls::ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
                Self::exchange(rustls::StreamOwned::new(conn, TcpStream::connect(addr)?), &request)?
            }
        };
        client.write_all(&answer)?;
        client.flush()
    }

    /// Sends `request` upstream and reads the whole answer (the upstream
    /// closes the connection after it). A TLS upstream that closes without
    /// `close_notify` still gave its whole answer.
    fn exchange(mut server: impl Read + Write, request: &[u8]) -> std::io::Result<Vec<u8>> {
        server.write_all(request)?;
        server.flush()?;
        let mut answer = Vec::new();
        match server.read_to_end(&mut answer) {
            Ok(_) => Ok(answer),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => Ok(answer),
            Err(e) => Err(e),
        }
    }
}
