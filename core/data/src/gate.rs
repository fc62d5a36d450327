//! # The local store's credential check
//!
//! A cloud's store refuses a request signed with an expired or forged
//! credential; a file system refuses nothing. So that the credential rule
//! holds on the local provider as it does against S3 and Azurite, a store that
//! one of the local provider's nodes opens passes every operation through a
//! [`Gate`]: the node must hold a credential the provider issued to it, signed
//! by the job's issuer (checked with the issuer's key when the credential is
//! taken up) and not expired (checked on every operation: a clock read, so a
//! tiny file pays nanoseconds). The gate renews the credential by core's rule
//! ([`CredentialPolicy`]), as a remote store's signer does; a renewal that fails
//! keeps the current credential until it expires, and then every operation is
//! refused (`PermissionDenied`, naming the node, the operation and why), as a
//! cloud's store would refuse it.
//!
//! It imports `provider` (where credentials come from) and the local provider's
//! [`Issuer`]; `store` uses it.

use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

use mayfly_model::policy::{CredentialAction, CredentialPolicy, Millis};
use mayfly_provider_api::{Credential, ProviderError};
use mayfly_provider_local::Issuer;

use crate::provider::ProviderHandle;

/// Where a gate's credentials come from: the provider, or a test's source.
type Source = Box<dyn Fn() -> Result<Credential, ProviderError> + Send + Sync>;

/// The credential a node holds and renews itself (a worker's), presented to
/// the gate on each operation instead of one the gate renews on its own.
pub type Presenter = std::sync::Arc<dyn Fn() -> Option<Credential> + Send + Sync>;

/// Why a credential was not taken up.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    /// The provider issued none.
    #[error("renewing it failed: {0}")]
    Renewal(ProviderError),
    /// It names another node.
    #[error("a credential for node {0:?} was presented")]
    OtherNode(String),
    /// The job's issuer does not vouch for it, or cannot be read (its verdict).
    #[error("{0}")]
    Issuer(String),
    /// The node presents none.
    #[error("it holds no credential")]
    Missing,
    /// The node presents one that has expired, this long ago (ms).
    #[error("its credential expired {0} ms ago")]
    Expired(u64),
}

/// The credential check in front of one node's stores.
pub(crate) struct Gate {
    node: String,
    /// The job's state directory, where its issuer keeps its key.
    state: PathBuf,
    source: Source,
    policy: CredentialPolicy,
    held: Mutex<Held>,
    /// The node's own credential, once it presents one ([`Gate::present_with`]).
    presented: std::sync::OnceLock<Presenter>,
    /// The last presented credential whose signature passed (the signature
    /// covers its node and validity too).
    verified: Mutex<Option<Credential>>,
    /// The job's issuer, once its key has been read (it never changes; an
    /// issuer that is down stops issuing, not checking).
    issuer: std::sync::OnceLock<Issuer>,
}

#[derive(Default)]
struct Held {
    current: Option<Credential>,
    /// Renewals failed in a row, the last one's time and why.
    failures: u32,
    failed_at: Millis,
    why: Option<Unusable>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").field("node", &self.node).field("state", &self.state).finish_non_exhaustive()
    }
}

impl Gate {
    /// The gate for stores that `node` of the job whose state is `state`
    /// opens, if this process is that node of the local provider; `None`
    /// otherwise (a cloud's store checks for itself; the command line and
    /// the bootstrap act with the operator's own rights).
    pub(crate) fn for_node(provider: &ProviderHandle, job: &str, state: &str, node: &str) -> Option<Gate> {
        if provider.name() != "local" {
            return None;
        }
        // A node learns who it is from its environment (its record, named
        // after it, may not be written yet when it starts) or its record.
        let named = std::env::var_os(mayfly_provider_local::IDENTITY_ENV)
            .is_some_and(|record| std::path::Path::new(&record).file_stem().is_some_and(|n| n == node));
        if !named && !matches!(provider.identify(), Ok(Some(me)) if me.node == node) {
            return None;
        }
        let dir = mayfly_provider_local::local_path(state).ok()?;
        let (provider, job, state, who) = (provider.clone(), job.to_owned(), state.to_owned(), node.to_owned());
        let source: Source = Box::new(move || provider.credentials(&job, &state, &who));
        Some(Gate::new(node, dir, source))
    }

    fn new(node: &str, state: PathBuf, source: Source) -> Gate {
        Gate {
            node: node.to_owned(),
            state,
            source,
            policy: CredentialPolicy::default(),
            held: Mutex::new(Held::default()),
            presented: std::sync::OnceLock::new(),
            verified: Mutex::new(None),
            issuer: std::sync::OnceLock::new(),
        }
    }

    /// From now on, checks the credential `presenter` gives (the one the node
    /// renews itself) instead of renewing one of its own: the node and its
    /// stores then agree on when its credential expires.
    pub(crate) fn present_with(&self, presenter: Presenter) {
        // The issuer's key now, while the issuer is known to be up (it has
        // just issued the node's credential): an issuer down later must not
        // make the node's first check fail (found by a cold run of the suite).
        let _ = self.issuer();
        let _ = self.presented.set(presenter);
    }

    /// Lets an operation through now, or refuses it; `what` names it, for
    /// the refusal (made only then: the path of every item is a hot one).
    pub(crate) fn admit(&self, what: impl FnOnce() -> String) -> io::Result<()> {
        self.admit_at(mayfly_provider_api::now_ms(), what)
    }

    fn admit_at(&self, now: Millis, what: impl FnOnce() -> String) -> io::Result<()> {
        let refused = |why: String| {
            let what = what();
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the store refused {what} by node {}: {why}", self.node),
            )
        };
        if let Some(presenter) = self.presented.get() {
            return self.admit_presented(now, presenter).map_err(|e| refused(e.to_string()));
        }
        let mut held = self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let due =
            held.current.as_ref().is_none_or(|c| self.policy.action(now, c.validity, 0) != CredentialAction::Keep);
        // While the credential still serves, renewals back off by the rule;
        // once it does not, every operation may try again (at most every
        // quarter second), so that the store serves again as soon as the
        // issuer does.
        let usable = held.current.as_ref().is_some_and(|c| now < c.validity.expires_at);
        let pause = if usable { self.policy.retry_after(held.failures).as_millis() as u64 } else { 250 };
        let waiting = held.failures > 0 && now < held.failed_at + pause;
        if due && !waiting {
            match self.take_up(now) {
                Ok(fresh) => {
                    held.current = Some(fresh);
                    held.failures = 0;
                    held.why = None;
                }
                Err(why) => {
                    held.failures += 1;
                    held.failed_at = now;
                    held.why = Some(why);
                }
            }
        }
        let why = held.why.as_ref().map_or_else(String::new, |why| format!(" ({why})"));
        match &held.current {
            Some(c) if now < c.validity.expires_at => Ok(()),
            Some(c) => Err(refused(format!("its credential expired {} ms ago{why}", now - c.validity.expires_at))),
            None => Err(refused(format!("it holds no valid credential{why}"))),
        }
    }

    /// The presented credential: unexpired at `now`, for this node, signed by
    /// the job's issuer (checked once per credential; the issuer's key is
    /// read then).
    fn admit_presented(&self, now: Millis, presenter: &Presenter) -> Result<(), Unusable> {
        let cred = presenter().ok_or(Unusable::Missing)?;
        if now >= cred.validity.expires_at {
            return Err(Unusable::Expired(now - cred.validity.expires_at));
        }
        let mut verified = self.verified.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if verified.as_ref() != Some(&cred) {
            if cred.node != self.node {
                return Err(Unusable::OtherNode(cred.node));
            }
            self.issuer()?.verify(&cred, now).map_err(Unusable::Issuer)?;
            *verified = Some(cred);
        }
        Ok(())
    }

    /// A fresh credential from the source, checked as the store's side would:
    /// for this node, signed by the job's issuer, not expired.
    fn take_up(&self, now: Millis) -> Result<Credential, Unusable> {
        let fresh = (self.source)().map_err(Unusable::Renewal)?;
        if fresh.node != self.node {
            return Err(Unusable::OtherNode(fresh.node));
        }
        self.issuer()?.verify(&fresh, now).map_err(Unusable::Issuer)?;
        Ok(fresh)
    }

    /// The job's issuer, its key read on first use.
    fn issuer(&self) -> Result<&Issuer, Unusable> {
        if let Some(issuer) = self.issuer.get() {
            return Ok(issuer);
        }
        let issuer = Issuer::open(&self.state).map_err(Unusable::Issuer)?;
        Ok(self.issuer.get_or_init(|| issuer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mayfly_provider_api::{CredentialRequest, Provider, Secret, Validity};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn issuer(ttl: &str) -> Arc<mayfly_provider_local::LocalProvider> {
        let serde_json::Value::Object(map) = serde_json::json!({ "credential_ttl": ttl }) else { unreachable!() };
        let host: Arc<dyn mayfly_provider_api::Host> = Arc::new(mayfly_provider_api::NoHost);
        Arc::new(
            mayfly_provider_local::LocalProvider::create(mayfly_provider_api::Settings::new("local", map), host)
                .unwrap(),
        )
    }

    fn issue(
        p: &mayfly_provider_local::LocalProvider,
        dir: &std::path::Path,
        node: &str,
    ) -> Result<Credential, ProviderError> {
        let request = CredentialRequest {
            job: "j".into(),
            state: dir.to_string_lossy().into_owned(),
            node: node.to_owned(),
            refused: false,
        };
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(p.credentials(request))
    }

    /// A gate over `source`, counting its calls.
    fn gate(
        dir: &std::path::Path,
        source: impl Fn() -> Result<Credential, ProviderError> + Send + Sync + 'static,
    ) -> (Gate, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let source: Source = Box::new(move || {
            counted.fetch_add(1, Ordering::Relaxed);
            source()
        });
        (Gate::new("worker-1", dir.to_owned(), source), calls)
    }

    #[test]
    fn a_credential_is_taken_up_once_and_checked_by_the_clock_on_every_operation() {
        let dir = tempfile::tempdir().unwrap();
        let p = issuer("60s");
        let first = issue(&p, dir.path(), "worker-1").unwrap();
        let (g, calls) = gate(dir.path(), {
            let (p, d) = (p.clone(), dir.path().to_owned());
            move || issue(&p, &d, "worker-1")
        });
        let now = first.validity.issued_at;
        for i in 0..1000 {
            g.admit_at(now + i, || "reading".into()).unwrap();
        }
        assert_eq!(calls.load(Ordering::Relaxed), 1, "one credential for a thousand operations");
    }

    #[test]
    fn a_presented_credential_is_checked_as_it_is_and_never_renewed_by_the_gate() {
        let dir = tempfile::tempdir().unwrap();
        let p = issuer("10s");
        let real = issue(&p, dir.path(), "worker-1").unwrap();
        let (g, calls) = gate(dir.path(), move || {
            Err(ProviderError::new("local", mayfly_provider_api::ErrorKind::Unavailable, "unused"))
        });
        let held = Arc::new(std::sync::Mutex::new(Some(real.clone())));
        g.present_with({
            let held = held.clone();
            Arc::new(move || held.lock().unwrap().clone())
        });
        let Validity { issued_at, expires_at } = real.validity;
        g.admit_at(issued_at, || "reading".into()).unwrap();
        g.admit_at(expires_at - 1, || "reading".into()).unwrap();
        let e = g.admit_at(expires_at + 3, || "committing".into()).unwrap_err();
        assert!(
            e.to_string().contains("the store refused committing by node worker-1: its credential expired 3 ms ago"),
            "{e}"
        );
        assert_eq!(calls.load(Ordering::Relaxed), 0, "the node renews, not the gate");
        let mut forged = real.clone();
        forged.validity.expires_at += 60_000;
        *held.lock().unwrap() = Some(forged);
        let e = g.admit_at(issued_at, || "reading".into()).unwrap_err();
        assert!(e.to_string().contains("not issued by this job's issuer"), "{e}");
        *held.lock().unwrap() = None;
        assert!(g.admit_at(issued_at, || "reading".into()).unwrap_err().to_string().contains("holds no credential"));
    }

    #[test]
    fn a_forged_credential_or_another_nodes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = issuer("60s");
        let real = issue(&p, dir.path(), "worker-1").unwrap();
        let mut forged = real.clone();
        forged.validity.expires_at += 3_600_000;
        let (g, _) = gate(dir.path(), move || Ok(forged.clone()));
        let e = g.admit_at(real.validity.issued_at, || "committing".into()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("the store refused committing by node worker-1"), "{e}");
        assert!(e.to_string().contains("not issued by this job's issuer"), "{e}");

        let other = issue(&p, dir.path(), "worker-2").unwrap();
        let (g, _) = gate(dir.path(), move || Ok(other.clone()));
        let e = g.admit_at(real.validity.issued_at, || "reading".into()).unwrap_err();
        assert!(e.to_string().contains("a credential for node \"worker-2\""), "{e}");

        let token = Credential { secret: Secret::Bearer { token: "x".into() }, ..real.clone() };
        let (g, _) = gate(dir.path(), move || Ok(token.clone()));
        let e = g.admit_at(real.validity.issued_at, || "reading".into()).unwrap_err();
        assert!(e.to_string().contains("not this provider's token"), "{e}");
    }

    #[test]
    fn a_credential_that_cannot_be_renewed_serves_until_it_expires_then_nothing_passes() {
        let dir = tempfile::tempdir().unwrap();
        let p = issuer("10s");
        let first = issue(&p, dir.path(), "worker-1").unwrap();
        let Validity { issued_at, expires_at } = first.validity;
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (g, calls) = gate(dir.path(), {
            let (up, first) = (up.clone(), first.clone());
            move || {
                if up.load(Ordering::Relaxed) {
                    Ok(first.clone())
                } else {
                    Err(ProviderError::new("local", mayfly_provider_api::ErrorKind::Unavailable, "the issuer is down"))
                }
            }
        });
        g.admit_at(issued_at, || "reading".into()).unwrap();
        up.store(false, Ordering::Relaxed);
        // Past half its life the rule renews; the renewal fails, the credential
        // still serves, and the next try waits the rule's back-off.
        g.admit_at(issued_at + 6_000, || "reading".into()).unwrap();
        g.admit_at(issued_at + 6_500, || "reading".into()).unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 2, "one failed renewal, then the back-off");
        let e = g.admit_at(expires_at + 5, || "committing".into()).unwrap_err();
        // Expired: the next operation a quarter second on tries again, not
        // after the rule's back-off.
        let before = calls.load(Ordering::Relaxed);
        let _ = g.admit_at(expires_at + 300, || "reading".into());
        assert_eq!(calls.load(Ordering::Relaxed), before + 1, "tried again once it no longer served");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            e.to_string()
                .contains("its credential expired 5 ms ago (renewing it failed: provider local: the issuer is down)"),
            "{e}"
        );
        // The issuer back: the next operation renews, and passes.
        up.store(true, Ordering::Relaxed);
        let (g2, _) = gate(dir.path(), {
            let (p, d) = (p.clone(), dir.path().to_owned());
            move || issue(&p, &d, "worker-1")
        });
        g2.admit(|| "reading".into()).unwrap();
    }
}
