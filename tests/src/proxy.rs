//! A proxy in front of an emulator's HTTP API (moto's, or Azurite's over TLS)
//! that refuses the requests its rules match, with the cloud's own error
//! document, for a time or for good, and forwards the others: EC2 refusing
//! what moto would grant (spot capacity, say), throttling its API, S3 or
//! Blob storage refusing writes for a while, or refusing the temporary
//! credentials it has seen so far as expired (before their time).
//!
//! One request per connection: every answer says `Connection: close`, so each
//! request is judged on its own (clients open another connection).

use std::collections::HashSet;
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
    /// Every temporary credential a request came signed with ([`credential_of`]).
    seen: Arc<Mutex<HashSet<String>>>,
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
    /// Only requests signed with one of these temporary credentials (see
    /// [`RefusingProxy::expire_seen`]); any request if `None`.
    pub signed_with: Option<Arc<HashSet<String>>>,
    /// How many requests it refused.
    pub hits: Arc<AtomicUsize>,
}

impl Rule {
    /// Answers `status` with `body` to requests of `method` (any if `None`)
    /// whose line or body contains `needle`, for good.
    fn answering(method: Option<&'static str>, needle: &str, status: &'static str, body: String) -> Rule {
        Rule {
            method,
            needle: needle.to_owned(),
            status,
            body,
            until: None,
            signed_with: None,
            hits: Default::default(),
        }
    }

    /// EC2's error `code` (a query API error document) with `status`, for
    /// every request whose line or body contains `needle`.
    pub fn ec2(needle: &str, status: &'static str, code: &str) -> Rule {
        let body = format!(
            "<Response><Errors><Error><Code>{code}</Code><Message>refused by the test's proxy</Message></Error></Errors>\
             <RequestID>proxy</RequestID></Response>"
        );
        Rule::answering(None, needle, status, body)
    }

    /// S3's error `code` (a REST error document) with `status`, for requests
    /// of `method` whose path contains `needle`.
    pub fn s3(method: &'static str, needle: &str, status: &'static str, code: &str) -> Rule {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>\
             <Message>refused by the test's proxy</Message><RequestId>proxy</RequestId></Error>"
        );
        Rule::answering(Some(method), needle, status, body)
    }

    /// Blob storage's error `code` (its REST error document) with `status`,
    /// for requests of `method` whose path contains `needle`.
    pub fn blob(method: &'static str, needle: &str, status: &'static str, code: &str) -> Rule {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code>\
             <Message>refused by the test's proxy</Message></Error>"
        );
        Rule::answering(Some(method), needle, status, body)
    }

    /// S3's answer to a request signed with a session whose token has
    /// expired (`400 ExpiredToken`), for any request.
    pub fn s3_expired() -> Rule {
        let mut rule = Rule::s3("GET", "", "400 Bad Request", "ExpiredToken");
        rule.method = None;
        rule
    }

    /// Blob storage's answer to a request whose bearer token has expired
    /// (`401 InvalidAuthenticationInfo`), for any request.
    pub fn blob_expired() -> Rule {
        let mut rule =
            Rule::blob("GET", "", "401 Server failed to authenticate the request", "InvalidAuthenticationInfo");
        rule.method = None;
        rule
    }

    /// The same rule, holding for `how_long` from now.
    pub fn lasting(mut self, how_long: Duration) -> Rule {
        self.until = Some(Instant::now() + how_long);
        self
    }

    fn matches(&self, line: &str, body: &[u8], credential: Option<&str>) -> bool {
        self.until.is_none_or(|u| Instant::now() < u)
            && self.signed_with.as_ref().is_none_or(|set| credential.is_some_and(|c| set.contains(c)))
            && self.method.is_none_or(|m| line.starts_with(&format!("{m} ")))
            && (line.contains(&self.needle) || String::from_utf8_lossy(body).contains(&self.needle))
    }
}

/// The temporary credential a request (its head's lines) is signed with: a
/// session's access key id (an AWS signature with `X-Amz-Security-Token`;
/// long-lived keys are not temporary), or a bearer token.
fn credential_of(head: &[String]) -> Option<String> {
    let header = |name: &str| {
        head.iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let authorization = header("authorization")?;
    if let Some(token) = authorization.strip_prefix("Bearer ") {
        return Some(token.to_owned());
    }
    header("x-amz-security-token")?;
    let key = authorization.split("Credential=").nth(1)?.split('/').next()?;
    Some(key.to_owned())
}

/// `host:port` of an endpoint URL (`https://127.0.0.1:10000/account`): the
/// proxy forwards requests as they come, paths included.
fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// What a proxy's connection shares with the others.
#[derive(Clone, Copy)]
struct Known<'a> {
    rules: &'a Mutex<Vec<Rule>>,
    refused: &'a AtomicUsize,
    seen: &'a Mutex<HashSet<String>>,
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
        let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
        let (count, held, saw) = (refused.clone(), rules.clone(), seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (upstream, tls) = (upstream.clone(), tls.clone());
                let (count, held, saw) = (count.clone(), held.clone(), saw.clone());
                std::thread::spawn(move || {
                    let known = Known { rules: &held, refused: &count, seen: &saw };
                    let _ = match tls {
                        Some(config) => match rustls::ServerConnection::new(config) {
                            Ok(conn) => Self::serve(rustls::StreamOwned::new(conn, stream), &upstream, known),
                            Err(_) => Ok(()),
                        },
                        None => Self::serve(stream, &upstream, known),
                    };
                });
            }
        });
        RefusingProxy { endpoint, refused, rules, seen }
    }

    /// Adds `rule`; returns its count of refused requests.
    pub fn refuse(&self, rule: Rule) -> Arc<AtomicUsize> {
        let hits = rule.hits.clone();
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).push(rule);
        hits
    }

    /// Adds `rule` for the requests signed with a temporary credential this
    /// proxy has seen so far (not with any issued later): as when a
    /// credential stops working before the expiry it was issued with (a
    /// session revoked, a clock that runs fast); returns its count of refused
    /// requests. For good unless the rule says otherwise.
    pub fn expire_seen(&self, mut rule: Rule) -> Arc<AtomicUsize> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        rule.signed_with = Some(Arc::new(seen));
        self.refuse(rule)
    }

    /// How many temporary credentials requests came signed with.
    pub fn credentials_seen(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Reads one request from `client`; refuses it or forwards it.
    fn serve(mut client: impl Read + Write, upstream: &Upstream, known: Known<'_>) -> std::io::Result<()> {
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
        let credential = credential_of(&head);
        let refusal = known
            .rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|r| r.matches(&first, &body, credential.as_deref()))
            .cloned();
        if let Some(c) = credential {
            known.seen.lock().unwrap_or_else(|e| e.into_inner()).insert(c);
        }
        if let Some(rule) = refusal {
            rule.hits.fetch_add(1, Ordering::Relaxed);
            known.refused.fetch_add(1, Ordering::Relaxed);
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
