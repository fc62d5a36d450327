//! mayfly's Azure tests and their harness (a package of their own, so that
//! the other tests never build the Azure SDK).
//!
//! The Azure the tests run against, all on 127.0.0.1:
//!
//! - **Azurite** (npm `azurite`, `MAYFLY_AZURITE` or installed under the
//!   target directory) for Blob storage, over HTTPS with a CA of the tests'
//!   own and `--oauth basic`: it takes Entra ID bearer tokens, checks their
//!   issuer, audience and lifetime, and refuses expired ones.
//! - **An ARM test server** for `Microsoft.Compute/virtualMachines`
//!   (2024-07-01), written from Microsoft's published REST specification
//!   (`specification/compute/resource-manager/Microsoft.Compute/ComputeRP/stable/2024-07-01/virtualMachine.json`):
//!   `VirtualMachines_CreateOrUpdate` (201 with `provisioningState:
//!   Creating` and an `Azure-AsyncOperation` header, then `Succeeded`),
//!   `VirtualMachines_Get`, `VirtualMachines_Delete` (202 with
//!   `Azure-AsyncOperation` and `Location`; 204 when there is nothing to
//!   delete; the VM's resources marked `deleteOption: Delete` go with it, the
//!   others are left as orphans), `VirtualMachines_List` (by resource group,
//!   paged with `nextLink`), the async operation's status, and the errors
//!   ARM answers with `{"error": {"code", "message"}}`: 404
//!   `ResourceNotFound` / `ResourceGroupNotFound`, 400
//!   `InvalidApiVersionParameter` / `InvalidParameter` (custom data over
//!   65535 bytes) / `InvalidResourceReference` (an unknown subnet), 409
//!   `OperationNotAllowed` (a VM being deleted), 401
//!   `InvalidAuthenticationToken` / `ExpiredAuthenticationToken`, 429 with
//!   `Retry-After` when the test asks for throttling.
//! - **A token service**: the managed-identity protocol of
//!   `IDENTITY_ENDPOINT`/`IDENTITY_HEADER` (App Service, Functions, api-version
//!   2019-08-01) and of a VM's instance metadata service, issuing JWTs that
//!   live `MAYFLY_TEST_TOKEN_TTL` seconds (default 20).
//! - **A hypervisor**: each VM the ARM server has provisioned runs its real
//!   custom data on a directory of its own (`MAYFLY_ROOT`) against its own
//!   instance metadata service (`MAYFLY_IMDS`: resource id, private address,
//!   tokens); a VM deleted in ARM has every process killed; a VM whose OS
//!   powers off is *stopped* (it stays in ARM and would bill), as on Azure.

// Test support: a panic is how a harness step reports failure.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use mayfly_provider_azure::NodeLaunch;
use mayfly_tests::vm::{Disks, Machine};
use mayfly_tests::{cache_dir, mayfly_bin, scratch, target_dir};

/// The subscription of the tests' resources.
pub const SUBSCRIPTION: &str = "00000000-0000-0000-0000-0000000000aa";
/// The resource group the tests' VMs are made in.
pub const GROUP: &str = "mayfly-tests";
/// The tenant the token service issues for.
pub const TENANT: &str = "00000000-0000-0000-0000-0000000000bb";
/// The client id of the nodes' user-assigned identity.
pub const CLIENT_ID: &str = "00000000-0000-0000-0000-0000000000cc";
/// Azurite's account.
pub const ACCOUNT: &str = "devstoreaccount1";

/// The subnet the tests' VMs join.
pub fn subnet_id() -> String {
    format!(
        "/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Network/virtualNetworks/mayfly/subnets/nodes"
    )
}

/// The user-assigned identity the tests' VMs carry.
pub fn identity_id() -> String {
    format!(
        "/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mayfly-node"
    )
}

// ------------------------------------------------------------------ HTTP

/// A request the test servers got.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query's pairs, decoded.
    pub query: BTreeMap<String, String>,
    /// Headers, names in lowercase.
    pub headers: BTreeMap<String, String>,
    /// The body.
    pub body: Vec<u8>,
}

/// An answer of the test servers.
#[derive(Debug)]
pub struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn json(status: u16, body: serde_json::Value) -> Answer {
        Answer { status, headers: vec![], body: body.to_string() }
    }

    fn error(status: u16, code: &str, message: &str) -> Answer {
        Answer::json(status, serde_json::json!({"error": {"code": code, "message": message}}))
    }

    fn header(mut self, k: &str, v: impl Into<String>) -> Answer {
        self.headers.push((k.to_owned(), v.into()));
        self
    }
}

/// A query string's part, form-decoded (`+` for a space, `%XX` escapes).
fn form_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
}

/// Serves HTTP/1.1 on `listener` (keep-alive, a thread per connection).
fn serve(listener: TcpListener, handler: Arc<dyn Fn(Request) -> Answer + Send + Sync>) {
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let handler = handler.clone();
            std::thread::spawn(move || {
                let _ = connection(stream, &*handler);
            });
        }
    });
}

fn connection(stream: TcpStream, handler: &(dyn Fn(Request) -> Answer + Send + Sync)) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = String::new();
        if reader.read_line(&mut head)? == 0 {
            return Ok(());
        }
        let mut parts = head.split_whitespace();
        let (method, target) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
        let close_by_default = parts.next() == Some("HTTP/1.0");
        let mut headers = BTreeMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let length = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let close = close_by_default || headers.get("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let query = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (form_decode(k), form_decode(v))
            })
            .collect();
        // A path's `+` is a plus: only its `%XX` escapes are decoded.
        let path = percent_encoding::percent_decode_str(path).decode_utf8_lossy().into_owned();
        let answer = handler(Request { method, path, query, headers, body });
        let mut text = format!("HTTP/1.1 {} X\r\nContent-Length: {}\r\n", answer.status, answer.body.len());
        if !answer.body.is_empty() {
            text.push_str("Content-Type: application/json\r\n");
        }
        for (k, v) in &answer.headers {
            text.push_str(&format!("{k}: {v}\r\n"));
        }
        if close {
            text.push_str("Connection: close\r\n");
        }
        text.push_str("\r\n");
        text.push_str(&answer.body);
        out.write_all(text.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}

fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    (listener, endpoint)
}

// ------------------------------------------------------------------ tokens

/// Issues and checks Entra ID-shaped tokens (JWTs; the signature is not
/// checked by anyone here, as Azurite's basic OAuth does not).
#[derive(Debug)]
pub struct Tokens {
    /// `IDENTITY_ENDPOINT`.
    pub endpoint: String,
    /// `IDENTITY_HEADER`.
    pub secret: String,
    ttl: AtomicU64,
    issued: Mutex<HashMap<String, (String, u64)>>,
    /// When set, every token request is refused (403).
    pub refuse: AtomicBool,
    count: AtomicUsize,
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

impl Tokens {
    fn start() -> Arc<Tokens> {
        let (listener, endpoint) = listen();
        let ttl = std::env::var("MAYFLY_TEST_TOKEN_TTL").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
        let tokens = Arc::new(Tokens {
            endpoint: format!("{endpoint}/msi/token"),
            secret: format!("identity-header-{}", std::process::id()),
            ttl: AtomicU64::new(ttl),
            issued: Mutex::new(HashMap::new()),
            refuse: AtomicBool::new(false),
            count: AtomicUsize::new(0),
        });
        let t = tokens.clone();
        serve(
            listener,
            Arc::new(move |r: Request| {
                if r.headers.get("x-identity-header") != Some(&t.secret) {
                    return Answer::error(401, "Unauthorized", "no or a wrong X-IDENTITY-HEADER");
                }
                if r.query.get("api-version").map(String::as_str) != Some("2019-08-01") {
                    return Answer::error(400, "BadRequest", "api-version 2019-08-01 is expected");
                }
                t.answer(&r.query)
            }),
        );
        tokens
    }

    /// The token answer for a request's query (`resource`, `client_id`).
    fn answer(&self, query: &BTreeMap<String, String>) -> Answer {
        if self.refuse.load(Ordering::Relaxed) {
            return Answer::error(403, "Forbidden", "the test's token service refuses");
        }
        let Some(resource) = query.get("resource") else {
            return Answer::error(400, "BadRequest", "resource is required");
        };
        if let Some(c) = query.get("client_id")
            && c != CLIENT_ID
        {
            return Answer::error(400, "BadRequest", "the identity is not assigned to this resource");
        }
        let (token, exp) = self.issue(resource);
        Answer::json(
            200,
            serde_json::json!({"access_token": token, "expires_on": exp.to_string(), "expires_in": (exp - now_s()).to_string(),
                "resource": resource, "token_type": "Bearer", "client_id": CLIENT_ID}),
        )
    }

    /// Tokens issued from now on live `secs` seconds.
    pub fn set_ttl(&self, secs: u64) {
        self.ttl.store(secs, Ordering::Relaxed);
    }

    /// A token for `resource` (its audience, without a trailing `/`).
    pub fn issue(&self, resource: &str) -> (String, u64) {
        self.issue_for(resource, self.ttl.load(Ordering::Relaxed))
    }

    /// A token for `resource` living `ttl` seconds.
    pub fn issue_for(&self, resource: &str, ttl: u64) -> (String, u64) {
        let now = now_s();
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        let aud = resource.trim_end_matches('/').to_owned();
        let header = b64url(br#"{"alg":"RS256","typ":"JWT"}"#);
        let payload = serde_json::json!({"aud": aud, "iss": format!("https://sts.windows.net/{TENANT}/"),
            "iat": now, "nbf": now - 5, "exp": now + ttl, "tid": TENANT, "appid": CLIENT_ID, "oid": CLIENT_ID, "n": n});
        let token = format!("{header}.{}.c2lnbmF0dXJl", b64url(payload.to_string().as_bytes()));
        self.issued.lock().unwrap().insert(token.clone(), (aud, now + ttl));
        (token, now + ttl)
    }

    /// How many tokens were issued.
    pub fn issued(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Checks a bearer token for `audience`: `Err((code, message))` as ARM says it.
    fn check(&self, authorization: Option<&String>, audience: &str) -> Result<(), (&'static str, String)> {
        let token = authorization
            .and_then(|a| a.strip_prefix("Bearer "))
            .ok_or(("AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.".into()))?;
        let issued = self.issued.lock().unwrap();
        let (aud, exp) =
            issued.get(token).ok_or(("InvalidAuthenticationToken", "The access token is invalid.".to_owned()))?;
        if aud != audience.trim_end_matches('/') {
            return Err(("InvalidAuthenticationTokenAudience", format!("The access token has the audience {aud}")));
        }
        if *exp <= now_s() {
            return Err(("ExpiredAuthenticationToken", "The access token expiry UTC time is in the past.".into()));
        }
        Ok(())
    }
}

fn now_s() -> u64 {
    mayfly_provider_api::now_ms() / 1000
}

// ------------------------------------------------------------------ ARM

/// A VM as the ARM test server keeps it.
#[derive(Debug, Clone)]
pub struct Vm {
    /// Its ARM body (what GET answers).
    pub body: serde_json::Value,
    /// `Creating`, `Succeeded`, `Deleting`.
    pub state: String,
    /// `running`, `stopped`: a stopped VM still exists, and bills.
    pub power: String,
    since: Instant,
    /// Its resources (OS disk, NICs): (name, deleted with the VM).
    resources: Vec<(String, bool)>,
}

impl Vm {
    /// A tag's value.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.body.pointer(&format!("/tags/{}", key.replace('/', "~1"))).and_then(|v| v.as_str())
    }

    /// The VM's name.
    pub fn name(&self) -> &str {
        self.body["name"].as_str().unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct ArmState {
    vms: BTreeMap<String, Vm>,
    /// `Microsoft.Web/serverfarms` by lowercase name: their ARM bodies.
    plans: BTreeMap<String, serde_json::Value>,
    /// `Microsoft.Web/sites` by lowercase name: their ARM bodies, and when
    /// a new one is made (its operation ends `latency` later).
    sites: BTreeMap<String, (serde_json::Value, Instant)>,
    /// What was asked of `Microsoft.Web` besides reads: `PUT sites/<name>`,
    /// `POST sites/<name>/restart`, ...
    web_calls: Vec<String>,
    /// Resources left behind by deleted VMs (not `deleteOption: Delete`): (job, name).
    orphans: Vec<(String, String)>,
    operations: HashMap<String, String>,
    /// (a string of the path, how many more of its requests get 429).
    throttle: Vec<(String, usize)>,
    /// Requests answered 429 so far.
    throttled: usize,
    requests: usize,
    /// VMs made so far: each new VM's `vmId` (unique, as Azure's are; the
    /// request count is not, between concurrent PUTs).
    made: usize,
}

/// The ARM test server.
#[derive(Debug)]
pub struct Arm {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    state: Mutex<ArmState>,
    tokens: Arc<Tokens>,
    /// How long a create or a delete takes.
    pub latency: Duration,
}

const API: &str = "2024-07-01";
/// `Microsoft.Web`'s API version the server answers.
const WEB_API: &str = "2024-04-01";

impl Arm {
    fn start(tokens: Arc<Tokens>) -> Arc<Arm> {
        let (listener, endpoint) = listen();
        let arm = Arc::new(Arm {
            endpoint,
            state: Mutex::new(ArmState::default()),
            tokens,
            latency: Duration::from_millis(300),
        });
        let a = arm.clone();
        serve(listener, Arc::new(move |r| a.handle(r)));
        let a = arm.clone();
        std::thread::spawn(move || {
            loop {
                a.advance();
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        arm
    }

    /// Answers the next `n` requests whose path contains `needle` (a VM's
    /// name, or part of it) with 429 and `Retry-After: 1`; 0 ends it.
    pub fn throttle(&self, needle: &str, n: usize) {
        let mut s = self.state.lock().unwrap();
        s.throttle.retain(|(k, _)| k != needle);
        if n > 0 {
            s.throttle.push((needle.to_owned(), n));
        }
    }

    /// How many requests it has answered 429 (see [`Arm::throttle`]).
    pub fn throttled(&self) -> usize {
        self.state.lock().unwrap().throttled
    }

    /// How many requests it has answered.
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }

    /// The VMs of `job` that exist (running, stopped, being made or deleted).
    pub fn vms(&self, job: &str) -> Vec<Vm> {
        self.state.lock().unwrap().vms.values().filter(|v| v.tag("mayfly:job") == Some(job)).cloned().collect()
    }

    /// The resources of `job`'s deleted VMs that were left behind.
    pub fn orphans(&self, job: &str) -> Vec<String> {
        self.state.lock().unwrap().orphans.iter().filter(|(j, _)| j == job).map(|(_, n)| n.clone()).collect()
    }

    /// Deletes a VM as Azure would (an operator, an eviction).
    pub fn delete_vm(&self, name: &str) {
        let mut s = self.state.lock().unwrap();
        if let Some(vm) = s.vms.get_mut(&name.to_ascii_lowercase()) {
            vm.state = "Deleting".into();
            vm.since = Instant::now();
            vm.body["properties"]["provisioningState"] = "Deleting".into();
        }
    }

    /// Puts a running VM of `job` straight into ARM, as a leftover no
    /// hypervisor runs (its custom data starts no node).
    pub fn insert(&self, job: &str, node: &str, expires_at: u64) {
        let name = mayfly_provider_azure::vm_name(job, node);
        let body = serde_json::json!({
            "id": format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Compute/virtualMachines/{name}"),
            "name": name, "type": "Microsoft.Compute/virtualMachines", "location": "westeurope",
            "tags": {"mayfly:job": job, "mayfly:role": if node == "master" { "master" } else { "worker" },
                     "mayfly:node": node, "mayfly:expires-at": expires_at.to_string()},
            "properties": {"provisioningState": "Succeeded", "hardwareProfile": {"vmSize": "Standard_B2s"},
                           "vmId": format!("inserted-{name}")},
        });
        let vm = Vm {
            body,
            state: "Succeeded".into(),
            power: "stopped".into(),
            since: Instant::now(),
            resources: vec![(format!("{name}_OsDisk"), true)],
        };
        self.state.lock().unwrap().vms.insert(name.to_ascii_lowercase(), vm);
    }

    /// Puts a VM of `job` into ARM that is being deleted, and stays so for `hold`.
    pub fn insert_deleting(&self, job: &str, node: &str, hold: Duration) {
        self.insert(job, node, mayfly_provider_api::now_ms());
        let name = mayfly_provider_azure::vm_name(job, node).to_ascii_lowercase();
        let mut s = self.state.lock().unwrap();
        let vm = s.vms.get_mut(&name).unwrap();
        vm.state = "Deleting".into();
        vm.body["properties"]["provisioningState"] = "Deleting".into();
        vm.since = Instant::now() + hold;
    }

    /// A function app's ARM body (`Microsoft.Web/sites/<name>`).
    pub fn site(&self, name: &str) -> Option<serde_json::Value> {
        self.state.lock().unwrap().sites.get(&name.to_ascii_lowercase()).map(|(b, _)| b.clone())
    }

    /// An App Service plan's ARM body (`Microsoft.Web/serverfarms/<name>`).
    pub fn plan(&self, name: &str) -> Option<serde_json::Value> {
        self.state.lock().unwrap().plans.get(&name.to_ascii_lowercase()).cloned()
    }

    /// What was asked of `Microsoft.Web` besides reads, in order
    /// (`PUT sites/mayfly-fn`, `POST sites/mayfly-fn/syncfunctiontriggers`).
    pub fn web_calls(&self) -> Vec<String> {
        self.state.lock().unwrap().web_calls.clone()
    }

    /// A function app's app settings, as its `siteConfig.appSettings` holds them.
    pub fn app_settings(&self, name: &str) -> BTreeMap<String, String> {
        let site = self.site(name).unwrap_or_default();
        let pairs = site.pointer("/properties/siteConfig/appSettings").and_then(|a| a.as_array()).cloned();
        pairs
            .unwrap_or_default()
            .iter()
            .map(|p| {
                (p["name"].as_str().unwrap_or_default().to_owned(), p["value"].as_str().unwrap_or_default().to_owned())
            })
            .collect()
    }

    /// `Microsoft.Web` (API 2024-04-01), the operations `mayfly deploy azure`
    /// uses, as its REST specification describes them: App Service plans
    /// (`AppServicePlans_Get`, `_CreateOrUpdate`), function apps
    /// (`WebApps_Get`; `_CreateOrUpdate`: a new site answers 202 with an
    /// `Azure-AsyncOperation` that succeeds `latency` later, when the site
    /// runs; `_Restart`; `_SyncFunctionTriggers`), and their checks: the
    /// location, the plan the site names, the user-assigned identity.
    fn web(&self, r: &Request, parts: &[&str]) -> Answer {
        let not_found =
            |what: &str| Answer::error(404, "ResourceNotFound", &format!("The Resource '{what}' was not found."));
        // /subscriptions/{sub}/providers/Microsoft.Web/sites/{name}/operationResults/{id}
        if parts.len() == 8 && parts[2] == "providers" && parts[6].eq_ignore_ascii_case("operationResults") {
            let s = self.state.lock().unwrap();
            return match s.sites.get(&parts[5].to_ascii_lowercase()) {
                // A site whose name says so fails to be made, as one can
                // (a quota, a name taken elsewhere).
                Some(_) if parts[5].contains("failing") => Answer::json(
                    200,
                    serde_json::json!({"name": parts[7], "status": "Failed",
                        "error": {"code": "Conflict", "message": "Website with given name already exists."}}),
                ),
                Some((_, since)) if since.elapsed() >= self.latency => {
                    Answer::json(200, serde_json::json!({"name": parts[7], "status": "Succeeded"}))
                }
                Some(_) => Answer::json(200, serde_json::json!({"name": parts[7], "status": "InProgress"})),
                None => Answer::error(404, "NotFound", "no such operation"),
            };
        }
        // /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Web/{serverfarms|sites}/{name}[/{action}]
        if parts.len() < 8 || parts[0] != "subscriptions" || !parts[2].eq_ignore_ascii_case("resourceGroups") {
            return Answer::error(404, "NotFound", &format!("no route for {}", r.path));
        }
        if parts[1] != SUBSCRIPTION {
            return Answer::error(
                404,
                "SubscriptionNotFound",
                &format!("The subscription '{}' could not be found.", parts[1]),
            );
        }
        if !parts[3].eq_ignore_ascii_case(GROUP) {
            return Answer::error(
                404,
                "ResourceGroupNotFound",
                &format!("Resource group '{}' could not be found.", parts[3]),
            );
        }
        let (kind, name, action) =
            (parts[6].to_ascii_lowercase(), parts[7], parts.get(8).map(|a| a.to_ascii_lowercase()));
        let key = name.to_ascii_lowercase();
        let id =
            format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Web/{}/{name}", parts[6]);
        let mut s = self.state.lock().unwrap();
        match (r.method.as_str(), kind.as_str(), action.as_deref()) {
            ("GET", "serverfarms", None) => match s.plans.get(&key) {
                Some(plan) => Answer::json(200, plan.clone()),
                None => not_found(&format!("Microsoft.Web/serverFarms/{name}")),
            },
            ("GET", "sites", None) => match s.sites.get(&key) {
                Some((site, _)) => Answer::json(200, site.clone()),
                None => not_found(&format!("Microsoft.Web/sites/{name}")),
            },
            ("PUT", "serverfarms", None) => {
                let Ok(mut body) = serde_json::from_slice::<serde_json::Value>(&r.body) else {
                    return Answer::error(
                        400,
                        "InvalidRequestContent",
                        "The request content was invalid and could not be deserialized.",
                    );
                };
                if body["location"].as_str().is_none_or(str::is_empty) {
                    return Answer::error(
                        400,
                        "LocationRequired",
                        "The location property is required for this definition.",
                    );
                }
                if body.pointer("/sku/name").and_then(|v| v.as_str()).is_none() {
                    return Answer::error(400, "BadRequest", "The parameter SKU is missing.");
                }
                body["id"] = id.into();
                body["name"] = name.into();
                body["type"] = "Microsoft.Web/serverfarms".into();
                body["properties"]["provisioningState"] = "Succeeded".into();
                body["properties"]["status"] = "Ready".into();
                s.web_calls.push(format!("PUT serverfarms/{name}"));
                s.plans.insert(key, body.clone());
                Answer::json(200, body)
            }
            ("PUT", "sites", None) => {
                s.web_calls.push(format!("PUT sites/{name}"));
                let Ok(mut body) = serde_json::from_slice::<serde_json::Value>(&r.body) else {
                    return Answer::error(
                        400,
                        "InvalidRequestContent",
                        "The request content was invalid and could not be deserialized.",
                    );
                };
                let Some(location) = body["location"].as_str().filter(|l| !l.is_empty()).map(str::to_owned) else {
                    return Answer::error(
                        400,
                        "LocationRequired",
                        "The location property is required for this definition.",
                    );
                };
                let farm = body.pointer("/properties/serverFarmId").and_then(|v| v.as_str()).unwrap_or_default();
                let farm_name = farm.rsplit('/').next().unwrap_or_default().to_ascii_lowercase();
                let Some(plan) =
                    s.plans.get(&farm_name).filter(|p| p["id"].as_str().is_some_and(|i| i.eq_ignore_ascii_case(farm)))
                else {
                    return Answer::error(404, "NotFound", &format!("Cannot find ServerFarm with name {farm_name}."));
                };
                if plan["location"].as_str() != Some(location.as_str()) {
                    return Answer::error(
                        400,
                        "BadRequest",
                        "The site and its App Service plan must be in the same location.",
                    );
                }
                match body.pointer("/identity/userAssignedIdentities").and_then(|v| v.as_object()) {
                    Some(ids) if !ids.is_empty() && ids.keys().all(|k| k.eq_ignore_ascii_case(&identity_id())) => {}
                    Some(ids) => {
                        return Answer::error(
                            400,
                            "FailedIdentityOperation",
                            &format!(
                                "The user-assigned identities {:?} are not found.",
                                ids.keys().collect::<Vec<_>>()
                            ),
                        );
                    }
                    None if body.pointer("/identity/type").and_then(|v| v.as_str()) == Some("UserAssigned") => {
                        return Answer::error(
                            400,
                            "BadRequest",
                            "userAssignedIdentities is required with type UserAssigned.",
                        );
                    }
                    None => {}
                }
                let pairs = body
                    .pointer("/properties/siteConfig/appSettings")
                    .and_then(|a| a.as_array())
                    .cloned()
                    .unwrap_or_default();
                if pairs.iter().any(|p| p["name"].as_str().is_none() || p["value"].as_str().is_none()) {
                    return Answer::error(400, "BadRequest", "Each app setting has a string name and value.");
                }
                body["id"] = id.into();
                body["name"] = name.into();
                body["type"] = "Microsoft.Web/sites".into();
                body["properties"]["defaultHostName"] = format!("{key}.azurewebsites.net").into();
                body["properties"]["enabled"] = true.into();
                match s.sites.get_mut(&key) {
                    Some((site, _)) => {
                        body["properties"]["state"] = "Running".into();
                        *site = body.clone();
                        Answer::json(200, body)
                    }
                    None => {
                        // Made, not yet running: its operation ends `latency` later.
                        s.sites.insert(key, (body.clone(), Instant::now()));
                        let url = format!(
                            "{}/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Web/sites/{name}/operationResults/op-{}?api-version={WEB_API}",
                            self.endpoint,
                            s.web_calls.len()
                        );
                        Answer::json(202, body).header("Azure-AsyncOperation", url)
                    }
                }
            }
            ("POST", "sites", Some(action @ ("restart" | "syncfunctiontriggers"))) => {
                if !s.sites.contains_key(&key) {
                    return not_found(&format!("Microsoft.Web/sites/{name}"));
                }
                s.web_calls.push(format!("POST sites/{name}/{action}"));
                Answer { status: if action == "restart" { 200 } else { 204 }, headers: vec![], body: String::new() }
            }
            _ => Answer::error(405, "MethodNotAllowed", &format!("{} {}", r.method, r.path)),
        }
    }

    /// Marks a VM stopped (its OS powered off): it stays, and would bill.
    fn stop(&self, name: &str) {
        if let Some(vm) = self.state.lock().unwrap().vms.get_mut(&name.to_ascii_lowercase()) {
            vm.power = "stopped".into();
        }
    }

    /// Provisioning and deletion take `latency`.
    fn advance(&self) {
        let mut s = self.state.lock().unwrap();
        let now = Instant::now();
        let mut gone = Vec::new();
        for (key, vm) in s.vms.iter_mut() {
            if now.duration_since(vm.since) < self.latency {
                continue;
            }
            match vm.state.as_str() {
                "Creating" => {
                    vm.state = "Succeeded".into();
                    vm.body["properties"]["provisioningState"] = "Succeeded".into();
                }
                "Deleting" => gone.push(key.clone()),
                _ => {}
            }
        }
        for key in gone {
            let vm = s.vms.remove(&key).unwrap();
            let job = vm.tag("mayfly:job").unwrap_or_default().to_owned();
            for (name, deleted) in &vm.resources {
                if !deleted {
                    s.orphans.push((job.clone(), name.clone()));
                }
            }
        }
        let latency = self.latency;
        for (site, since) in s.sites.values_mut() {
            if now.duration_since(*since) >= latency && site["properties"]["state"].is_null() {
                site["properties"]["state"] = "Running".into();
            }
        }
        let done: Vec<String> = s.operations.keys().cloned().collect();
        for op in done {
            let target = s.operations[&op].clone();
            if !s.vms.values().any(|v| v.name() == target && v.state != "Succeeded") {
                s.operations.insert(op, "done".into());
            }
        }
    }

    fn handle(&self, r: Request) -> Answer {
        // The test server's own records of a job (its VMs and what deleted
        // ones left), for observers in another process: not ARM's API, and
        // never throttled ([`left_by_arm`]).
        if r.method == "GET" && r.path == LEFT_ROUTE {
            let job = r.query.get("job").cloned().unwrap_or_default();
            let mut left: Vec<String> =
                self.vms(&job).iter().map(|v| format!("VM {} ({}, {})", v.name(), v.state, v.power)).collect();
            left.extend(self.orphans(&job).into_iter().map(|n| format!("{n} (left by a deleted VM)")));
            return Answer::json(200, serde_json::json!(left));
        }
        {
            let mut s = self.state.lock().unwrap();
            s.requests += 1;
            if let Some((_, left)) = s.throttle.iter_mut().find(|(k, left)| *left > 0 && r.path.contains(k.as_str())) {
                *left -= 1;
                s.throttled += 1;
                return Answer::error(429, "TooManyRequests", "The request is being throttled.")
                    .header("Retry-After", "1");
            }
        }
        if let Err((code, message)) = self.tokens.check(r.headers.get("authorization"), &self.endpoint) {
            return Answer::error(401, code, &message);
        }
        let parts: Vec<&str> = r.path.trim_matches('/').split('/').collect();
        let web = parts.get(3).is_some_and(|p| p.eq_ignore_ascii_case("Microsoft.Web"))
            || parts.get(5).is_some_and(|p| p.eq_ignore_ascii_case("Microsoft.Web"));
        let api = if web { WEB_API } else { API };
        if r.query.get("api-version").map(String::as_str) != Some(api) {
            return Answer::error(
                400,
                "InvalidApiVersionParameter",
                &format!(
                    "The api-version '{}' is invalid. The supported versions are '{api}'.",
                    r.query.get("api-version").cloned().unwrap_or_default()
                ),
            );
        }
        if web {
            return self.web(&r, &parts);
        }
        // /subscriptions/{sub}/providers/Microsoft.Compute/locations/{loc}/operations/{id}
        if parts.len() == 7 && parts[2] == "providers" && parts[5] == "operations" {
            let s = self.state.lock().unwrap();
            return match s.operations.get(parts[6]) {
                Some(t) if t == "done" => {
                    Answer::json(200, serde_json::json!({"name": parts[6], "status": "Succeeded"}))
                }
                Some(_) => Answer::json(200, serde_json::json!({"name": parts[6], "status": "InProgress"})),
                None => Answer::error(404, "NotFound", "no such operation"),
            };
        }
        // /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines[/{name}]
        if parts.len() < 6
            || parts[0] != "subscriptions"
            || !parts[2].eq_ignore_ascii_case("resourceGroups")
            || !parts[5].eq_ignore_ascii_case("Microsoft.Compute")
            || parts.get(6).is_none_or(|p| !p.eq_ignore_ascii_case("virtualMachines"))
        {
            return Answer::error(404, "NotFound", &format!("no route for {}", r.path));
        }
        let (sub, group) = (parts[1], parts[3]);
        if sub != SUBSCRIPTION {
            return Answer::error(
                404,
                "SubscriptionNotFound",
                &format!("The subscription '{sub}' could not be found."),
            );
        }
        if !group.eq_ignore_ascii_case(GROUP) {
            return Answer::error(
                404,
                "ResourceGroupNotFound",
                &format!("Resource group '{group}' could not be found."),
            );
        }
        match (r.method.as_str(), parts.get(7)) {
            ("GET", None) => self.list(&r),
            ("GET", Some(name)) => match self.state.lock().unwrap().vms.get(&name.to_ascii_lowercase()) {
                Some(vm) => Answer::json(200, vm.body.clone()),
                None => Answer::error(
                    404,
                    "ResourceNotFound",
                    &format!(
                        "The Resource 'Microsoft.Compute/virtualMachines/{name}' under resource group '{group}' was not found."
                    ),
                ),
            },
            ("PUT", Some(name)) => self.create(name, &r),
            ("DELETE", Some(name)) => {
                let mut s = self.state.lock().unwrap();
                match s.vms.get_mut(&name.to_ascii_lowercase()) {
                    None => Answer { status: 204, headers: vec![], body: String::new() },
                    Some(vm) => {
                        if vm.state != "Deleting" {
                            vm.state = "Deleting".into();
                            vm.since = Instant::now();
                            vm.body["properties"]["provisioningState"] = "Deleting".into();
                        }
                        s.made += 1;
                        let op = format!("op-{}", s.made);
                        s.operations.insert(op.clone(), name.to_string());
                        let url = format!(
                            "{}/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Compute/locations/westeurope/operations/{op}?api-version={API}",
                            self.endpoint
                        );
                        Answer { status: 202, headers: vec![], body: String::new() }
                            .header("Azure-AsyncOperation", url.clone())
                            .header("Location", url)
                    }
                }
            }
            _ => Answer::error(405, "MethodNotAllowed", &format!("{} {}", r.method, r.path)),
        }
    }

    /// `VirtualMachines_List`, three to a page; the skip token is the last
    /// name given (VMs made or deleted meanwhile do not shift the pages).
    fn list(&self, r: &Request) -> Answer {
        let s = self.state.lock().unwrap();
        let after = r.query.get("$skiptoken").cloned();
        let mut rest = s.vms.iter().filter(|(k, _)| after.as_ref().is_none_or(|a| k.as_str() > a.as_str()));
        let page: Vec<(&String, &Vm)> = rest.by_ref().take(3).collect();
        let mut body = serde_json::json!({"value": page.iter().map(|(_, v)| v.body.clone()).collect::<Vec<_>>()});
        if let (Some((last, _)), Some(_)) = (page.last(), rest.next()) {
            body["nextLink"] = format!("{}{}?api-version={API}&$skiptoken={last}", self.endpoint, r.path).into();
        }
        Answer::json(200, body)
    }

    /// `VirtualMachines_CreateOrUpdate`.
    fn create(&self, name: &str, r: &Request) -> Answer {
        let bad = |code: &str, message: String| Answer::error(400, code, &message);
        let Ok(mut body) = serde_json::from_slice::<serde_json::Value>(&r.body) else {
            return bad(
                "InvalidRequestContent",
                "The request content was invalid and could not be deserialized.".into(),
            );
        };
        if body["location"].as_str().is_none_or(str::is_empty) {
            return bad("LocationRequired", "The location property is required for this definition.".into());
        }
        if body.pointer("/properties/hardwareProfile/vmSize").and_then(|v| v.as_str()).is_none() {
            return bad("InvalidParameter", "Required parameter 'hardwareProfile.vmSize' is missing.".into());
        }
        if let Some(data) = body.pointer("/properties/osProfile/customData").and_then(|v| v.as_str()) {
            match base64::engine::general_purpose::STANDARD.decode(data) {
                Ok(d) if d.len() <= 65_535 => {}
                Ok(d) => {
                    return bad(
                        "InvalidParameter",
                        format!(
                            "Custom data in OSProfile must be in Base64 encoding and with a maximum length of 87380 characters ({} bytes decoded).",
                            d.len()
                        ),
                    );
                }
                Err(_) => {
                    return bad("InvalidParameter", "Custom data in OSProfile must be in Base64 encoding.".into());
                }
            }
        }
        let nics = body
            .pointer("/properties/networkProfile/networkInterfaceConfigurations")
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default();
        if nics.is_empty() {
            return bad("InvalidParameter", "The VM must have at least one network interface.".into());
        }
        let mut resources = Vec::new();
        for nic in &nics {
            for ip in
                nic.pointer("/properties/ipConfigurations").and_then(|v| v.as_array()).cloned().unwrap_or_default()
            {
                let subnet = ip.pointer("/properties/subnet/id").and_then(|v| v.as_str()).unwrap_or_default();
                if !subnet.eq_ignore_ascii_case(&subnet_id()) {
                    return bad(
                        "InvalidResourceReference",
                        format!("Resource {subnet} referenced by resource {name} was not found."),
                    );
                }
            }
            let deleted = nic.pointer("/properties/deleteOption").and_then(|v| v.as_str()) == Some("Delete");
            resources.push((nic["name"].as_str().unwrap_or("nic").to_owned(), deleted));
        }
        let disk_deleted =
            body.pointer("/properties/storageProfile/osDisk/deleteOption").and_then(|v| v.as_str()) == Some("Delete");
        resources.push((format!("{name}_OsDisk"), disk_deleted));
        if let Some(ids) = body.pointer("/identity/userAssignedIdentities").and_then(|v| v.as_object()) {
            if ids.is_empty() || ids.keys().any(|k| !k.eq_ignore_ascii_case(&identity_id())) {
                return bad(
                    "FailedIdentityOperation",
                    format!("The user-assigned identities {:?} are not found.", ids.keys().collect::<Vec<_>>()),
                );
            }
        } else if body.pointer("/identity/type").and_then(|v| v.as_str()) == Some("UserAssigned") {
            return bad("InvalidParameter", "userAssignedIdentities is required with type UserAssigned.".into());
        }
        let key = name.to_ascii_lowercase();
        let mut s = self.state.lock().unwrap();
        if let Some(vm) = s.vms.get(&key) {
            if vm.state == "Deleting" {
                return Answer::error(409, "OperationNotAllowed", &format!("VM {name} is being deleted."));
            }
            return Answer::json(200, vm.body.clone());
        }
        let id = format!(
            "/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Compute/virtualMachines/{name}"
        );
        body["id"] = id.into();
        body["name"] = name.into();
        body["type"] = "Microsoft.Compute/virtualMachines".into();
        body["properties"]["provisioningState"] = "Creating".into();
        s.made += 1;
        body["properties"]["vmId"] = format!("vm-{}", s.made).into();
        body["properties"]["timeCreated"] = mayfly_tests::iso8601(now_s()).into();
        if let Some(p) = body.pointer_mut("/properties/osProfile") {
            // ARM never returns secrets.
            p.as_object_mut().unwrap().remove("adminPassword");
        }
        s.made += 1;
        let op = format!("op-{}", s.made);
        s.operations.insert(op.clone(), name.to_owned());
        s.vms.insert(
            key,
            Vm {
                body: body.clone(),
                state: "Creating".into(),
                power: "running".into(),
                since: Instant::now(),
                resources,
            },
        );
        let url = format!(
            "{}/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Compute/locations/westeurope/operations/{op}?api-version={API}",
            self.endpoint
        );
        Answer::json(201, body).header("Azure-AsyncOperation", url)
    }
}

// ------------------------------------------------------------------ Azurite

/// Azurite, over HTTPS with the tests' CA.
#[derive(Debug)]
pub struct Azurite {
    /// The account's endpoint: `https://127.0.0.1:<port>/devstoreaccount1`.
    pub endpoint: String,
    /// The CA that signed its certificate (PEM file): `SSL_CERT_FILE` and `CURL_CA_BUNDLE`.
    pub ca: PathBuf,
    /// Its certificate and key (PEM files), which a proxy in front of it serves too.
    pub cert: PathBuf,
    /// See `cert`.
    pub key: PathBuf,
    _server: Mutex<Child>,
}

fn azurite_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("MAYFLY_AZURITE") {
            return PathBuf::from(p);
        }
        let dir = target_dir().join("azurite");
        let bin = dir.join("node_modules/.bin/azurite-blob");
        if !bin.exists() {
            let ok = Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
                .arg(&dir)
                .arg("azurite")
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "installing azurite into {} failed (needs npm and its registry)", dir.display());
        }
        bin
    })
    .clone()
}

impl Azurite {
    fn start() -> Azurite {
        let dir = scratch("azurite");
        let (ca, cert, key) = tls(&dir);
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(dir.join("azurite.log")).unwrap();
        // Azurite ends with this process: the shell kills it when its input closes.
        let watch = "\"$@\" & p=$!; cat >/dev/null; kill $p";
        let server = Command::new("sh")
            .args(["-c", watch, "sh"])
            .arg(azurite_bin())
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--location"])
            .arg(dir.join("data"))
            .args(["--oauth", "basic", "--cert"])
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .args(["--disableTelemetry", "--skipApiVersionCheck", "--silent"])
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start azurite");
        let up = mayfly_tests::cluster::wait_until(Duration::from_secs(60), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "azurite did not start on port {port} (see {})", dir.join("azurite.log").display());
        Azurite { endpoint: format!("https://127.0.0.1:{port}/{ACCOUNT}"), ca, cert, key, _server: Mutex::new(server) }
    }

    /// Makes a container (`Container_Create`), with a token of its own.
    pub fn create_container(&self, tokens: &Tokens, name: &str) {
        let (token, _) = tokens.issue_for("https://storage.azure.com", 3600);
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "--cacert"])
            .arg(&self.ca)
            .args(["-H", &format!("Authorization: Bearer {token}"), "-H", "x-ms-version: 2021-08-06"])
            .args(["-H", "Content-Length: 0", &format!("{}/{name}?restype=container", self.endpoint)])
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            code == "201" || code == "409",
            "Container_Create {name}: {code} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A CA and a certificate for 127.0.0.1 it signed: (ca.pem, cert.pem, key.pem).
fn tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(rcgen::DnType::CommonName, "mayfly tests CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    (paths.0, paths.1, paths.2)
}

// ------------------------------------------------------------------ the cloud

/// The tests' Azure: tokens, ARM, Azurite, and the hypervisor that runs VMs.
#[derive(Debug)]
pub struct Cloud {
    /// The token service.
    pub tokens: Arc<Tokens>,
    /// The ARM test server.
    pub arm: Arc<Arm>,
    /// Blob storage.
    pub azurite: Azurite,
}

/// The cloud, started once per test process.
pub fn cloud() -> &'static Cloud {
    static CLOUD: OnceLock<Cloud> = OnceLock::new();
    CLOUD.get_or_init(|| {
        let tokens = Tokens::start();
        let arm = Arm::start(tokens.clone());
        let azurite = Azurite::start();
        let cloud = Cloud { tokens, arm, azurite };
        Hypervisor::start(&cloud);
        cloud
    })
}

impl Cloud {
    /// The `[provider]` settings that point the azure plugin at this cloud.
    pub fn settings(&self) -> serde_json::Map<String, serde_json::Value> {
        let v = serde_json::json!({
            "subscription_id": SUBSCRIPTION,
            "resource_group": GROUP,
            "location": "westeurope",
            "subnet_id": subnet_id(),
            "vm_size": "Standard_B2s",
            "identity": identity_id(),
            "identity_client_id": CLIENT_ID,
            "arm_endpoint": self.arm.endpoint,
            "storage_endpoint": self.azurite.endpoint,
            "credential": "managed_identity",
            "credential_ttl": "20s",
            "max_nodes": 8,
            "node_binary": mayfly_bin(),
        });
        v.as_object().cloned().unwrap_or_default()
    }

    /// The environment a process with this cloud's managed identity has (the
    /// Functions host gives a function these; the tests give them to `mayfly`).
    pub fn identity_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("IDENTITY_ENDPOINT", self.tokens.endpoint.clone()),
            ("IDENTITY_HEADER", self.tokens.secret.clone()),
            ("SSL_CERT_FILE", self.azurite.ca.to_string_lossy().into_owned()),
            ("CURL_CA_BUNDLE", self.azurite.ca.to_string_lossy().into_owned()),
        ]
    }

    /// An object_store client on `container` with a token of its own (for
    /// the tests' own reads and writes).
    pub fn container(&self, container: &str) -> object_store::azure::MicrosoftAzure {
        self.azurite.create_container(&self.tokens, container);
        let (token, _) = self.tokens.issue_for("https://storage.azure.com", 3600);
        let ca = object_store::Certificate::from_pem(&std::fs::read(&self.azurite.ca).unwrap()).unwrap();
        object_store::azure::MicrosoftAzureBuilder::new()
            .with_account(ACCOUNT)
            .with_endpoint(self.azurite.endpoint.clone())
            .with_container_name(container)
            .with_bearer_token_authorization(token)
            .with_client_options(object_store::ClientOptions::new().with_root_certificate(ca))
            .build()
            .unwrap()
    }
}

/// The azure plugin's library (built for the tests' profile).
pub fn azure_plugin() -> PathBuf {
    mayfly_tests::plugin("mayfly-provider-azure", &[])
}

/// `mayfly` with this cloud's identity and CA.
pub fn mayfly(cloud: &Cloud) -> Command {
    let mut c = Command::new(mayfly_bin());
    c.envs(cloud.identity_env()).env("MAYFLY_CACHE_DIR", cache_dir());
    c
}

// ------------------------------------------------------------------ the hypervisor

fn disks() -> &'static Disks {
    static DISKS: OnceLock<Disks> = OnceLock::new();
    DISKS.get_or_init(|| Disks::new("azure-nodes"))
}

/// The disks of the VMs that have been `node` of `job` (`<node>@<VM name>/`,
/// the `/` its custom data writes under).
pub fn node_disks(job: &str, node: &str) -> Vec<PathBuf> {
    disks().of_node(job, node)
}

/// What a node of `job` has written: its console (the custom data's output)
/// and the node's log.
pub fn node_log(job: &str, node: &str) -> String {
    disks().node_log(job, node)
}

/// The lines that `job`'s nodes wrote on their machines that contain `needle`.
pub fn node_lines(job: &str, needle: &str) -> Vec<String> {
    disks().lines_saying(job, needle)
}

struct Hypervisor;

impl Hypervisor {
    fn start(cloud: &Cloud) {
        let arm = cloud.arm.clone();
        let tokens = cloud.tokens.clone();
        let env = cloud.identity_env();
        std::thread::spawn(move || {
            let mut nodes: HashMap<String, Machine> = HashMap::new();
            loop {
                Self::tick(&arm, &tokens, &env, &mut nodes);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }

    fn tick(arm: &Arm, tokens: &Arc<Tokens>, env: &[(&'static str, String)], nodes: &mut HashMap<String, Machine>) {
        let vms: Vec<Vm> = arm.state.lock().unwrap().vms.values().cloned().collect();
        // Keyed by vmId: a VM made again under the same name is a new machine.
        for vm in &vms {
            let id = vm.body.pointer("/properties/vmId").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            match nodes.get_mut(&id) {
                None if vm.state == "Succeeded" && vm.power == "running" => match Self::boot(vm, tokens, env) {
                    Ok(node) => {
                        nodes.insert(id, node);
                    }
                    Err(e) => eprintln!("azure hypervisor: {e}"),
                },
                Some(node) if !node.ended() && (vm.state == "Deleting" || vm.power != "running") => node.end(),
                // The OS stopped: on Azure the VM is then "stopped", not gone.
                Some(node) if !node.ended() && node.powered_off() => {
                    arm.stop(vm.name());
                    node.end();
                }
                _ => {}
            }
        }
        for (id, node) in nodes.iter_mut() {
            if !node.ended()
                && !vms.iter().any(|v| v.body.pointer("/properties/vmId").and_then(|v| v.as_str()) == Some(id))
            {
                node.end();
            }
        }
    }

    fn boot(vm: &Vm, tokens: &Arc<Tokens>, env: &[(&'static str, String)]) -> Result<Machine, String> {
        let encoded = vm.body.pointer("/properties/osProfile/customData").and_then(|v| v.as_str()).unwrap_or_default();
        let script = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .map_err(|e| format!("{}: custom data: {e}", vm.name()))?;
        let launch = NodeLaunch::from_custom_data(&script)
            .ok_or_else(|| format!("{}: no mayfly node in its custom data", vm.name()))?;
        let id = vm.body["id"].as_str().unwrap_or_default().to_owned();
        let imds = Imds::serve(&launch.job, &id, Some(tokens.clone()));
        // A disk per machine: a VM made again under a name a deleted one had
        // (a resumed job's workers) is another machine, with a disk of its own.
        let vm_id = vm.body.pointer("/properties/vmId").and_then(|v| v.as_str()).unwrap_or_default();
        let root = disks().disk(&launch.job, &launch.node, &format!("{}.{vm_id}", vm.name()));
        let path = format!("{}:/usr/local/bin:/usr/bin:/bin", disks().bin().display());
        // The VM's metadata service; its managed identity, as azure_identity
        // finds it here (the endpoint protocol; on Azure it asks the metadata
        // service), and the CA of the tests' Blob storage.
        let mut vars: Vec<(&str, String)> = vec![("MAYFLY_IMDS", imds)];
        vars.extend(env.iter().map(|(k, v)| (*k, v.clone())));
        let said = format!("VM {} boots as {} of job {}", vm.name(), launch.node, launch.job);
        Machine::boot(&root, "custom-data", &script, &path, &vars, &said)
    }
}

/// The ARM test server's route to its records of a job.
const LEFT_ROUTE: &str = "/_test/left";

/// What of `job` the ARM test server at `arm` (its endpoint, as the
/// `arm_endpoint` setting says it) still holds: VMs, and the NICs and disks
/// of deleted ones; from any process (the conformance suite's observer).
pub fn left_by_arm(arm: &str, job: &str) -> Result<Vec<String>, String> {
    let authority = arm.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = TcpStream::connect(authority).map_err(|e| format!("{arm}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(stream, "GET {LEFT_ROUTE}?job={job} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or_else(|| format!("no answer: {answer:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("the ARM test server answered {head}"));
    }
    serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))
}

/// An instance metadata service that says it is the VM `resource_id` (for a
/// provider made to see itself on a node); its endpoint.
pub fn metadata_service(resource_id: &str) -> String {
    Imds::serve("", resource_id, None)
}

/// Every VM's metadata service answers late while this says so.
pub static SLOW_METADATA: mayfly_tests::vm::Slowdown = mayfly_tests::vm::Slowdown::new();

/// A VM's instance metadata service: its resource id, its private address,
/// and its managed identity's tokens (`Metadata: true` required; late while
/// [`SLOW_METADATA`] says so).
struct Imds;

impl Imds {
    /// Serves the metadata of `job`'s VM `resource_id`; returns its endpoint.
    fn serve(job: &str, resource_id: &str, tokens: Option<Arc<Tokens>>) -> String {
        let (listener, endpoint) = listen();
        let (job, id) = (job.to_owned(), resource_id.to_owned());
        serve(
            listener,
            Arc::new(move |r: Request| {
                SLOW_METADATA.wait(&job);
                if r.headers.get("metadata").map(String::as_str) != Some("true") {
                    return Answer::error(400, "BadRequest", "Required metadata header not specified");
                }
                match r.path.as_str() {
                    "/metadata/instance/compute/resourceId" => {
                        Answer { status: 200, headers: vec![], body: id.clone() }
                    }
                    "/metadata/instance/network/interface/0/ipv4/ipAddress/0/privateIpAddress" => {
                        // These "VMs" share this machine's loopback.
                        Answer { status: 200, headers: vec![], body: "127.0.0.1".into() }
                    }
                    "/metadata/identity/oauth2/token" => match &tokens {
                        Some(t) => t.answer(&r.query),
                        None => Answer::error(400, "BadRequest", "no identity is assigned to this VM"),
                    },
                    _ => Answer::error(404, "NotFound", &r.path),
                }
            }),
        );
        endpoint
    }
}

// ------------------------------------------------------------------ the Functions host

/// A function app's custom handler (`mayfly serve --provider azure`), driven
/// as the Functions host drives it.
#[derive(Debug)]
pub struct FunctionApp {
    child: Child,
    port: u16,
}

impl FunctionApp {
    /// Starts the handler with the cloud's settings and `extra` ones.
    pub fn start(cloud: &Cloud, extra: &[(&str, &str)]) -> FunctionApp {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut serve = mayfly(cloud);
        serve.args(["serve", "--provider"]).arg(azure_plugin()).env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string());
        for (k, v) in cloud.settings() {
            serve.args(["--set", &format!("{k}={}", v.as_str().map(str::to_owned).unwrap_or(v.to_string()))]);
        }
        for (k, v) in extra {
            serve.args(["--set", &format!("{k}={v}")]);
        }
        let child = serve.spawn().unwrap();
        let up = mayfly_tests::cluster::wait_until(Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "the custom handler did not listen on {port}");
        FunctionApp { child, port }
    }

    /// Invokes `function` with the host's payload; (HTTP status, answer).
    pub fn invoke(&self, function: &str, payload: &serde_json::Value) -> (u16, serde_json::Value) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
        // Chunked, as the host may send its payload (no Content-Length), in two chunks.
        let body = payload.to_string();
        let (a, b) = body.split_at(body.len() / 2);
        write!(
            stream,
            "POST /{function} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
    }

    /// The HTTP trigger's payload for a request body.
    pub fn http_payload(body: &serde_json::Value) -> serde_json::Value {
        serde_json::json!({"Data": {"req": {"Url": "https://app.azurewebsites.net/api/run", "Method": "POST",
            "Query": {}, "Headers": {"Content-Type": ["application/json"]}, "Params": {}, "Body": body.to_string()}},
            "Metadata": {"sys": {"MethodName": "run", "UtcNow": mayfly_tests::iso8601(now_s())}}})
    }

    /// The Blob trigger's payload for the blob `container/key` that arrived,
    /// as the host makes it: no `BlobTrigger` (the host drops keys ending in
    /// "trigger"), other values JSON-encoded (a string arrives quoted).
    pub fn blob_payload(cloud: &Cloud, path: &str, etag: &str) -> serde_json::Value {
        let uri = format!("{}/{}", cloud.azurite.endpoint, path.replace(' ', "%20"));
        let quoted = |s: &str| serde_json::to_string(s).unwrap();
        serde_json::json!({"Data": {"blob": ""}, "Metadata": {
            "Uri": quoted(&uri), "Properties": {"ETag": quoted(etag), "Length": 0},
            "name": quoted(path.rsplit('/').next().unwrap_or_default())}})
    }
}

impl Drop for FunctionApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ retail prices

/// The Azure Retail Prices API (`GET /api/retail/prices`), answering from
/// the meters in `answers/retail-prices-westeurope.json` (the API's documented
/// shape) as the API does: OData `$filter` on `serviceName`,
/// `armRegionName`, `armSkuName` and `priceType` (each `eq`, joined by
/// `and`), two items a page, and a `NextPageLink` with `$skip`. It is
/// public: a request that carries an `Authorization` header is refused (a
/// token must not be sent where it is not asked for).
#[derive(Debug)]
pub struct RetailPrices {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl RetailPrices {
    /// Starts one on a port of its own.
    pub fn start() -> RetailPrices {
        let (listener, endpoint) = listen();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("answers/retail-prices-westeurope.json");
        let recorded: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        let items = recorded["Items"].as_array().cloned().unwrap_or_default();
        let (seen, base) = (requests.clone(), endpoint.clone());
        serve(listener, Arc::new(move |r: Request| retail_prices(&r, &items, &base, &seen)));
        RetailPrices { endpoint, requests }
    }

    /// The requests' query strings, decoded (`$filter=...&$skip=2`), in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn retail_prices(r: &Request, items: &[serde_json::Value], base: &str, seen: &Mutex<Vec<String>>) -> Answer {
    let asked: Vec<String> = r.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    seen.lock().unwrap().push(asked.join("&"));
    if r.method != "GET" || r.path != "/api/retail/prices" {
        return Answer::error(404, "NotFound", &format!("{} {}", r.method, r.path));
    }
    if r.headers.contains_key("authorization") {
        return Answer::error(400, "BadRequest", "the Retail Prices API takes no credential");
    }
    if r.query.get("api-version").map(String::as_str) != Some("2023-01-01-preview") {
        return Answer::error(400, "BadRequest", "api-version");
    }
    let filter = r.query.get("$filter").cloned().unwrap_or_default();
    let mut wanted = BTreeMap::new();
    for term in filter.split(" and ") {
        let Some((field, value)) = term.split_once(" eq ") else {
            return Answer::error(400, "BadRequest", &format!("$filter: {term:?} is not `field eq 'value'`"));
        };
        let Some(value) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) else {
            return Answer::error(400, "BadRequest", &format!("$filter: {value} is not quoted"));
        };
        wanted.insert(field.to_owned(), value.replace("''", "'"));
    }
    let matching: Vec<&serde_json::Value> = items
        .iter()
        .filter(|item| {
            wanted.iter().all(|(field, value)| {
                // The API calls the field `priceType` in a filter, `type` in an
                // item; its values are compared as they are (case-sensitive).
                let key = if field == "priceType" { "type" } else { field.as_str() };
                item[key].as_str() == Some(value.as_str())
            })
        })
        .collect();
    let skip: usize = r.query.get("$skip").and_then(|s| s.parse().ok()).unwrap_or(0);
    let page: Vec<&serde_json::Value> = matching.iter().skip(skip).take(2).copied().collect();
    let next = (skip + 2 < matching.len()).then(|| {
        let filter = percent_encoding::utf8_percent_encode(&filter, percent_encoding::NON_ALPHANUMERIC);
        format!("{base}/api/retail/prices?api-version=2023-01-01-preview&$filter={filter}&$skip={}", skip + 2)
    });
    Answer::json(
        200,
        serde_json::json!({
            "BillingCurrency": "USD", "CustomerEntityId": "Default", "CustomerEntityType": "Retail",
            "Items": page, "NextPageLink": next, "Count": page.len(),
        }),
    )
}
