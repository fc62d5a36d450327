//! The conformance suite: the contract every provider — built in, shipped
//! with mayfly, or written by a third party — passes against its own backend
//! or emulator.
//!
//! A provider's test implements [`Backend`] (how to reach the provider under
//! test) and gets a [`Core`] from mayfly's core (`mayfly_ops::conformance`),
//! which applies the four rules and runs real jobs; then:
//!
//! ```ignore
//! mayfly_provider_api::conformance::assert_conforms(&my_backend, &core);
//! ```
//!
//! Every check runs even when one fails; the panic lists each failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{
    BootstrapReply, BootstrapRequest, CredentialRequest, LaunchRequest, ListRequest, Millis, NodeInfo, NodeSpec,
    Provider, Role, TerminateRequest, Validity, now_ms,
};

/// How the suite reaches the provider under test.
pub trait Backend: Send + Sync {
    /// The provider, configured as the job file's `[provider]` section
    /// ([`Backend::section`]) says, on the launching side (not on a node).
    fn provider(&self) -> Arc<dyn Provider>;
    /// The provider as it is on `node` (what `identify` and `terminate_self` see there).
    fn on_node(&self, node: &NodeInfo) -> Arc<dyn Provider>;
    /// The `[provider]` section of a job file that selects this provider as configured.
    fn section(&self) -> serde_json::Map<String, serde_json::Value>;
    /// Where the suite's jobs keep their state: job `j`'s is `<root>/j`.
    fn state_root(&self) -> String;
    /// The `mayfly` arguments of a node that does nothing until it is ended.
    fn idle_node_args(&self) -> Vec<String>;
    /// The event the provider's serverless entrypoint receives for `request`.
    fn event(&self, request: &BootstrapRequest) -> serde_json::Value;
    /// What of `job` is still running or billing, as the backend itself
    /// records it (the cloud's or emulator's own API, a scan of this
    /// machine's processes), never by the provider under test: each check's
    /// "nothing left" must be true there, not only in the provider's listing.
    fn left(&self, job: &str) -> Result<Vec<String>, String>;
}

/// What the suite needs from mayfly's core: its rules, and real jobs.
pub trait Core: Send + Sync {
    /// When core refreshes a credential valid for `validity`.
    fn refresh_at(&self, validity: Validity) -> Millis;
    /// The expiry of a lease of length `lease` granted at `now` to a worker holding `validity`.
    fn lease_expiry(&self, now: Millis, lease: Duration, validity: Validity) -> Millis;
    /// A small job `job` with its state under `state_root`, on the provider the section selects.
    fn job_request(
        &self,
        job: &str,
        state_root: &str,
        section: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<BootstrapRequest, String>;
    /// Bootstraps a job with core's bootstrap.
    fn bootstrap(&self, request: &BootstrapRequest) -> Result<BootstrapReply, String>;
    /// Bootstraps a job on a clock that jumps past the provider's bootstrap
    /// limit once the master is launched: core must refuse it and end what it
    /// launched.
    fn bootstrap_overrunning(&self, request: &BootstrapRequest) -> Result<BootstrapReply, String>;
    /// Waits for a bootstrapped job to end and checks its outputs.
    fn wait(&self, reply: &BootstrapReply, timeout: Duration) -> Result<(), String>;
}

type Check = fn(&Suite<'_>) -> Result<(), String>;

/// Every check, by name.
const CHECKS: &[(&str, Check)] = &[
    ("declares its limits and schemes", |s| s.declares_limits()),
    ("launches N nodes and lists N, by job", |s| s.launch_and_list()),
    ("terminates nodes, idempotently", |s| s.terminate()),
    ("refuses a launch beyond its node limit", |s| s.node_limit()),
    ("identifies and ends the node it runs on", |s| s.terminate_self()),
    ("issues credentials that expire, renews them before, and anew when refused", |s| s.credentials()),
    ("a bootstrap that would overrun its limit is refused and leaves nothing", |s| s.overrun()),
    ("adapts its entrypoint's event into the bootstrap request", |s| s.event()),
    ("runs a job to its end and leaves nothing", |s| s.runs_job()),
];

/// Runs every check; returns each one's name and result.
pub fn run(backend: &dyn Backend, core: &dyn Core) -> Vec<(&'static str, Result<(), String>)> {
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return vec![("start an async runtime", Err(e.to_string()))],
    };
    let suite = Suite { backend, core, rt, provider: backend.provider() };
    CHECKS
        .iter()
        .map(|(name, check)| {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&suite))).unwrap_or_else(|p| {
                let message = p
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(format!("the check panicked: {message}"))
            });
            (*name, result)
        })
        .collect()
}

/// Runs every check and panics with the list of failures, if any.
pub fn assert_conforms(backend: &dyn Backend, core: &dyn Core) {
    let results = run(backend, core);
    let failures: Vec<String> =
        results.iter().filter_map(|(name, r)| r.as_ref().err().map(|e| format!("  - {name}: {e}"))).collect();
    assert!(
        failures.is_empty(),
        "provider {} fails {} of {} conformance checks:\n{}",
        backend.provider().info().name,
        failures.len(),
        results.len(),
        failures.join("\n")
    );
}

struct Suite<'a> {
    backend: &'a dyn Backend,
    core: &'a dyn Core,
    rt: tokio::runtime::Runtime,
    provider: Arc<dyn Provider>,
}

fn ensure(ok: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(message()) }
}

fn names(nodes: &[NodeInfo]) -> Vec<String> {
    let mut n: Vec<String> = nodes.iter().map(|n| format!("{}/{}", n.job, n.node)).collect();
    n.sort();
    n
}

impl Suite<'_> {
    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    fn job(&self, what: &str) -> (String, String) {
        let job = format!("conf-{what}-{}-{}", std::process::id(), now_ms() % 1_000_000_000);
        let state = format!("{}/{job}", self.backend.state_root());
        (job, state)
    }

    fn idle(&self, node: &str, role: Role) -> NodeSpec {
        NodeSpec { node: node.to_owned(), role, args: self.backend.idle_node_args() }
    }

    fn launch(&self, job: &str, state: &str, nodes: Vec<NodeSpec>) -> Result<Vec<NodeInfo>, String> {
        let req = LaunchRequest {
            job: job.into(),
            state: state.into(),
            expires_at: now_ms() + 600_000,
            nodes: nodes.clone(),
        };
        let launched = self.block(self.provider.launch(req)).map_err(|e| format!("launch: {e}"))?;
        let mut want: Vec<String> = nodes.iter().map(|n| format!("{job}/{}", n.node)).collect();
        want.sort();
        ensure(names(&launched) == want, || format!("launch returned {:?}, expected {want:?}", names(&launched)))?;
        for spec in &nodes {
            ensure(launched.iter().any(|m| m.node == spec.node && m.role == spec.role), || {
                format!("launch returned {} without its role {}", spec.node, spec.role)
            })?;
        }
        Ok(launched)
    }

    fn list(&self, job: &str, state: &str) -> Result<Vec<NodeInfo>, String> {
        self.block(self.provider.list(ListRequest { job: Some(job.into()), state: state.into() }))
            .map_err(|e| format!("list: {e}"))
    }

    /// Waits (up to 20 s) for the listing of `job` to be `want`.
    fn wait_listed(&self, job: &str, state: &str, want: &[String]) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let seen = names(&self.list(job, state)?);
            if seen == want {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(20) {
                return Err(format!("list of job {job} shows {seen:?}, expected {want:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn end(&self, nodes: &[NodeInfo]) -> Result<(), String> {
        self.block(self.provider.terminate(TerminateRequest { nodes: nodes.to_vec(), grace_ms: 2000 }))
            .map_err(|e| format!("terminate: {e}"))
    }

    /// Runs `body`, then ends whatever of `job` is left, so a failing check
    /// leaves nothing behind either; then asks the backend's own records
    /// ([`Backend::left`]) whether anything of the job is left (waiting up
    /// to 30 s for machines on their way out).
    fn cleanup<T>(&self, job: &str, state: &str, body: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
        let result = body();
        if let Ok(left) = self.list(job, state)
            && !left.is_empty()
        {
            let _ = self.end(&left);
            if result.is_ok() {
                return Err(format!("nodes left after the check: {:?}", names(&left)));
            }
        }
        let start = Instant::now();
        let seen = loop {
            match self.backend.left(job) {
                Ok(left) if left.is_empty() => break Ok(()),
                Ok(left) if start.elapsed() > Duration::from_secs(30) => {
                    break Err(format!("the provider lists nothing of job {job}, but the backend has {left:?}"));
                }
                Err(e) if start.elapsed() > Duration::from_secs(30) => {
                    break Err(format!("the backend's records of job {job} cannot be read: {e}"));
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        match (result, seen) {
            (Ok(_), Err(e)) => Err(e),
            (result, _) => result,
        }
    }

    fn declares_limits(&self) -> Result<(), String> {
        let info = self.provider.info();
        ensure(
            !info.name.is_empty()
                && info.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'),
            || format!("name {:?} is not a lowercase word", info.name),
        )?;
        let l = info.limits;
        ensure(l.bootstrap_limit_ms >= 1000, || format!("bootstrap limit {} ms is under 1 s", l.bootstrap_limit_ms))?;
        ensure(l.credential_ttl_ms >= 2000, || format!("credential lifetime {} ms is under 2 s", l.credential_ttl_ms))?;
        ensure(l.max_nodes >= 2, || format!("max_nodes {} leaves no room for a master and a worker", l.max_nodes))?;
        ensure(!info.schemes.is_empty(), || "declares no URL scheme for its object store".into())?;
        for scheme in &info.schemes {
            let url = format!("{scheme}://mayfly-conformance/data");
            let cfg =
                self.block(self.provider.object_store(url.clone())).map_err(|e| format!("object_store({url}): {e}"))?;
            ensure(&cfg.scheme == scheme, || format!("object_store({url}) answered for scheme {:?}", cfg.scheme))?;
        }
        let odd = self.block(self.provider.object_store("mayfly-no-such-scheme://x/y".into()));
        ensure(odd.is_err(), || "object_store accepted a scheme it does not declare".into())
    }

    fn launch_and_list(&self) -> Result<(), String> {
        let (a, sa) = self.job("list-a");
        let (b, sb) = self.job("list-b");
        self.cleanup(&b, &sb, || {
            self.cleanup(&a, &sa, || {
                let nodes_a = self.launch(
                    &a,
                    &sa,
                    vec![
                        self.idle("master", Role::Master),
                        self.idle("worker-1", Role::Worker),
                        self.idle("worker-2", Role::Worker),
                    ],
                )?;
                for n in &nodes_a {
                    ensure(n.expires_at > now_ms(), || format!("{} carries no future expiry", n.node))?;
                }
                let nodes_b = self.launch(&b, &sb, vec![self.idle("worker-1", Role::Worker)])?;
                self.wait_listed(&a, &sa, &names(&nodes_a))?;
                self.wait_listed(&b, &sb, &names(&nodes_b))?;
                let listed = self.list(&a, &sa)?;
                for n in &listed {
                    let launched = nodes_a.iter().find(|m| m.node == n.node);
                    ensure(launched.is_some_and(|m| m.role == n.role && m.id == n.id), || {
                        format!("list shows {n:?}, launch returned {launched:?}")
                    })?;
                }
                let all = self
                    .block(self.provider.list(ListRequest { job: None, state: self.backend.state_root() }))
                    .map_err(|e| format!("list of every job: {e}"))?;
                let all = names(&all);
                for want in names(&nodes_a).iter().chain(&names(&nodes_b)) {
                    ensure(all.contains(want), || format!("the list of every job misses {want}"))?;
                }
                self.end(&nodes_a)?;
                self.end(&nodes_b)
            })
        })
    }

    fn terminate(&self) -> Result<(), String> {
        let (job, state) = self.job("terminate");
        self.cleanup(&job, &state, || {
            let nodes = self.launch(
                &job,
                &state,
                vec![
                    self.idle("worker-1", Role::Worker),
                    self.idle("worker-2", Role::Worker),
                    self.idle("worker-3", Role::Worker),
                ],
            )?;
            self.wait_listed(&job, &state, &names(&nodes))?;
            self.end(&nodes[..2])?;
            // terminate returns once they are gone.
            let left = names(&self.list(&job, &state)?);
            ensure(left == names(&nodes[2..]), || format!("after terminate, list shows {left:?}"))?;
            self.end(&nodes[..2]).map_err(|e| format!("terminating nodes already gone failed: {e}"))?;
            self.end(&nodes[2..])?;
            let left = self.list(&job, &state)?;
            ensure(left.is_empty(), || format!("after terminating all, list shows {:?}", names(&left)))
        })
    }

    fn node_limit(&self) -> Result<(), String> {
        let (job, state) = self.job("limit");
        let max = self.provider.info().limits.max_nodes;
        if max > 512 {
            return Ok(());
        }
        self.cleanup(&job, &state, || {
            let specs = (0..=max).map(|i| self.idle(&format!("worker-{i}"), Role::Worker)).collect();
            let req =
                LaunchRequest { job: job.clone(), state: state.clone(), expires_at: now_ms() + 60_000, nodes: specs };
            let r = self.block(self.provider.launch(req));
            ensure(r.is_err(), || format!("a launch of {} nodes (max_nodes {max}) was accepted", max + 1))?;
            let left = self.list(&job, &state)?;
            ensure(left.is_empty(), || format!("a refused launch left {:?}", names(&left)))
        })
    }

    fn terminate_self(&self) -> Result<(), String> {
        let (job, state) = self.job("self");
        self.cleanup(&job, &state, || {
            let here = self.block(self.provider.identify()).map_err(|e| format!("identify: {e}"))?;
            ensure(here.is_none(), || format!("identify off any node answered {here:?}"))?;
            let nodes = self.launch(&job, &state, vec![self.idle("worker-1", Role::Worker)])?;
            self.wait_listed(&job, &state, &names(&nodes))?;
            let on = self.backend.on_node(&nodes[0]);
            let me = self.block(on.identify()).map_err(|e| format!("identify on the node: {e}"))?;
            ensure(
                me.as_ref().is_some_and(|m| m.node == nodes[0].node && m.job == job && m.role == Role::Worker),
                || format!("identify on {} answered {me:?}", nodes[0].node),
            )?;
            self.block(on.terminate_self()).map_err(|e| format!("terminate_self: {e}"))?;
            self.wait_listed(&job, &state, &[])
        })
    }

    fn credentials(&self) -> Result<(), String> {
        let (job, state) = self.job("cred");
        let info = self.provider.info();
        let req = CredentialRequest { job: job.clone(), state: state.clone(), node: "worker-1".into(), refused: false };
        let before = now_ms();
        let c1 = self.block(self.provider.credentials(req.clone())).map_err(|e| format!("credentials: {e}"))?;
        let v = c1.validity;
        ensure(!c1.secret.expose().is_empty(), || "an empty secret".into())?;
        ensure(!format!("{c1:?}").contains(c1.secret.expose()), || "the credential's Debug shows its secret".into())?;
        ensure(v.issued_at + 5000 >= before && v.issued_at <= now_ms() + 5000, || {
            format!("issued_at {} is not now ({before})", v.issued_at)
        })?;
        let ttl = v.expires_at.saturating_sub(v.issued_at);
        let declared = info.limits.credential_ttl_ms;
        ensure(ttl <= declared + 1000 && ttl + declared / 10 + 1000 >= declared, || {
            format!("credentials live {ttl} ms, the provider declares {declared} ms")
        })?;
        let refresh = self.core.refresh_at(v);
        ensure(refresh > v.issued_at && refresh < v.expires_at, || {
            format!("core would refresh at {refresh}, outside the validity {v:?}")
        })?;
        let lease = self.core.lease_expiry(now_ms(), Duration::from_secs(86_400), v);
        ensure(lease <= v.expires_at, || format!("a lease until {lease} outlives the credential ({})", v.expires_at))?;
        // Renew at core's refresh point when it is near, else a little later.
        let wait = refresh.saturating_sub(now_ms()).clamp(1100, 1500);
        std::thread::sleep(Duration::from_millis(wait));
        let c2 =
            self.block(self.provider.credentials(req.clone())).map_err(|e| format!("renewing credentials: {e}"))?;
        ensure(c2.validity.expires_at > v.expires_at, || {
            format!("renewed credentials expire at {}, not after the first ({})", c2.validity.expires_at, v.expires_at)
        })?;
        ensure(c2.secret != c1.secret, || "renewed credentials have the same secret".into())?;
        // The store refused the last one before its time: a new one, not a cached one.
        let again = CredentialRequest { refused: true, ..req };
        let c3 =
            self.block(self.provider.credentials(again)).map_err(|e| format!("credentials after a refusal: {e}"))?;
        ensure(c3.secret != c2.secret, || "credentials asked for after the store refused them are the same".into())
    }

    fn overrun(&self) -> Result<(), String> {
        let (job, _) = self.job("overrun");
        let root = self.backend.state_root();
        let state = format!("{root}/{job}");
        self.cleanup(&job, &state, || {
            let req = self.core.job_request(&job, &root, &self.backend.section())?;
            let limit = Duration::from_millis(self.provider.info().limits.bootstrap_limit_ms);
            match self.core.bootstrap_overrunning(&req) {
                Ok(reply) => Err(format!("a bootstrap taking over {limit:?} was accepted: {reply:?}")),
                Err(e) => {
                    ensure(e.contains("budget"), || format!("refused, but not for its budget: {e}"))?;
                    let left = self.list(&job, &state)?;
                    ensure(left.is_empty(), || format!("the refused bootstrap left {:?}", names(&left)))
                }
            }
        })
    }

    fn event(&self) -> Result<(), String> {
        let (job, _) = self.job("event");
        let req = self.core.job_request(&job, &self.backend.state_root(), &self.backend.section())?;
        let event = self.backend.event(&req);
        let adapted = self.block(self.provider.adapt_event(event)).map_err(|e| format!("adapt_event: {e}"))?;
        ensure(adapted == req, || format!("adapt_event gave {adapted:?}, expected {req:?}"))?;
        let bad = self.block(self.provider.adapt_event(serde_json::json!(["not", "an", "event"])));
        ensure(bad.is_err(), || "adapt_event accepted an event that carries no job".into())
    }

    fn runs_job(&self) -> Result<(), String> {
        let (job, _) = self.job("run");
        let root = self.backend.state_root();
        let state = format!("{root}/{job}");
        self.cleanup(&job, &state, || {
            let req = self.core.job_request(&job, &root, &self.backend.section())?;
            let reply = self.core.bootstrap(&req)?;
            ensure(reply.job == job, || format!("bootstrap answered job {}, expected {job}", reply.job))?;
            self.core.wait(&reply, Duration::from_secs(120))?;
            // Nodes end themselves after the job; give them a moment.
            self.wait_listed(&job, &state, &[])
        })
    }
}
