//! The four rules of mayfly as pure decisions over an injected clock.
//!
//! Providers only declare numbers (their bootstrap limit, their credential
//! lifetime); every decision about time limits, credential expiry, leases and
//! self-termination is made here, once, for all of them, and tested here with
//! a [`ManualClock`]. (Even sharding, the third rule, is [`crate::plan`].)
//!
//! Times are milliseconds since the Unix epoch ([`Millis`]): they cross process
//! boundaries (manifests, leases, tags) where an `Instant` cannot.
//!
//! In `mayfly-model`'s flow (`core/tests/flow.rs` checks it) no module is above it; like
//! its crate, it must not import any other mayfly crate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Milliseconds since the Unix epoch.
pub use mayfly_provider_api::Millis;

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in milliseconds since the Unix epoch.
    fn now(&self) -> Millis;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that moves only when told: for tests.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: Millis) -> Self {
        ManualClock(Arc::new(AtomicU64::new(start)))
    }
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(ms(by), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

/// A duration in milliseconds, saturating.
pub fn ms(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------- rule 1: time

/// The bootstrap's time budget: the provider's limit minus a safety margin,
/// checked before every step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    started: Millis,
    /// When the budget runs out.
    pub ends: Millis,
}

/// The bootstrap would not finish within its budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bootstrap out of time before `{step}`: {elapsed_ms} ms used of a {budget_ms} ms budget \
     (the provider's limit minus the safety margin), and the step needs about {needs_ms} ms"
)]
pub struct OverBudget {
    /// The step that was about to start.
    pub step: String,
    /// Time already used.
    pub elapsed_ms: u64,
    /// The whole budget.
    pub budget_ms: u64,
    /// What the step was expected to need.
    pub needs_ms: u64,
}

/// The safety margin a bootstrap keeps in reserve of a provider's limit
/// (for rollback and the response): a tenth of it, at most 10 s.
pub fn bootstrap_margin(limit: Duration) -> Duration {
    (limit / 10).min(Duration::from_secs(10))
}

impl Budget {
    /// A bootstrap's budget: started at `started`, for a provider whose limit
    /// is `limit`, keeping [`bootstrap_margin`] in reserve.
    pub fn bootstrap(started: Millis, limit: Duration) -> Self {
        Budget::new(started, limit, bootstrap_margin(limit))
    }

    /// A budget that started at `started` for a provider whose limit is
    /// `limit`, keeping `margin` in reserve (for rollback and the response).
    pub fn new(started: Millis, limit: Duration, margin: Duration) -> Self {
        Budget { started, ends: started + ms(limit.saturating_sub(margin)) }
    }

    /// Time left at `now`.
    pub fn remaining(&self, now: Millis) -> Duration {
        Duration::from_millis(self.ends.saturating_sub(now))
    }

    /// Refuses to start `step` at `now` if it would need more than what is left.
    pub fn check(&self, now: Millis, step: &str, needs: Duration) -> Result<(), OverBudget> {
        if now.saturating_add(ms(needs)) > self.ends {
            return Err(OverBudget {
                step: step.to_owned(),
                elapsed_ms: now.saturating_sub(self.started),
                budget_ms: self.ends - self.started,
                needs_ms: ms(needs),
            });
        }
        Ok(())
    }
}

/// Whether the job's absolute deadline has passed.
pub fn deadline_passed(now: Millis, expires_at: Millis) -> bool {
    now >= expires_at
}

// --------------------------------------------------------- rule 2: credentials

/// When to refresh credentials and what they allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialPolicy {
    /// Refresh when less than this is left (default 5 min)...
    pub min_margin: Duration,
    /// ...or less than this share of the lifetime, in percent (default 20),
    /// whichever is larger, but never earlier than half-way through the lifetime.
    pub lifetime_percent: u64,
    /// Consecutive refresh failures after which the node drains. They are
    /// spaced by [`CredentialPolicy::retry_after`], so that an issuer down for
    /// a few seconds costs time, not the node: with the defaults, a node drains
    /// after about 15 s of failures.
    pub max_refresh_failures: u32,
}

impl Default for CredentialPolicy {
    fn default() -> Self {
        CredentialPolicy { min_margin: Duration::from_secs(300), lifetime_percent: 20, max_refresh_failures: 5 }
    }
}

/// The validity window of a credential (defined with the provider API, which
/// carries it).
pub use mayfly_provider_api::Validity;

/// What a node should do about its credentials now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialAction {
    /// Nothing: they are fresh.
    Keep,
    /// Refresh them now.
    Refresh,
    /// Refreshing has failed too often: stop taking work, release the lease,
    /// flush logs, end.
    Drain,
}

impl CredentialPolicy {
    /// The margin before expiry at which this credential is refreshed.
    pub fn margin(&self, v: Validity) -> Duration {
        let lifetime = v.expires_at.saturating_sub(v.issued_at);
        let share = lifetime * self.lifetime_percent / 100;
        Duration::from_millis(ms(self.min_margin).max(share).min(lifetime / 2))
    }

    /// When this credential should be refreshed.
    pub fn refresh_at(&self, v: Validity) -> Millis {
        v.expires_at.saturating_sub(ms(self.margin(v)))
    }

    /// What to do at `now`, given how many refreshes in a row have failed.
    pub fn action(&self, now: Millis, v: Validity, failures: u32) -> CredentialAction {
        if failures >= self.max_refresh_failures {
            CredentialAction::Drain
        } else if now >= self.refresh_at(v) {
            CredentialAction::Refresh
        } else {
            CredentialAction::Keep
        }
    }

    /// How long to wait after the `failures`-th refresh failure in a row
    /// before trying again: 1 s, doubling, at most 8 s.
    pub fn retry_after(&self, failures: u32) -> Duration {
        Duration::from_secs(1 << failures.saturating_sub(1).min(3))
    }

    /// Whether an operation expected to take `needs` may start at `now`: never
    /// one that would outlive the credential it runs with.
    pub fn may_start(&self, now: Millis, v: Validity, needs: Duration) -> bool {
        now.saturating_add(ms(needs)) < v.expires_at
    }

    /// The expiry of a lease granted at `now` for `lease`: never past the
    /// worker's credential expiry.
    pub fn lease_expiry(&self, now: Millis, lease: Duration, worker: Validity) -> Millis {
        (now + ms(lease)).min(worker.expires_at)
    }
}

// ---------------------------------------------------- rule 4: self-termination

/// Why a node ends itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Every shard is committed or failed.
    JobDone,
    /// The job's deadline passed.
    Deadline,
    /// No work could be leased for the idle timeout.
    Idle,
    /// The master did not answer for the master-lost timeout.
    MasterLost,
    /// Credentials could not be renewed.
    CredentialsLost,
    /// An operator's hold on this node expired.
    HoldExpired,
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EndReason::JobDone => "the job is done",
            EndReason::Deadline => "the job's deadline passed",
            EndReason::Idle => "no work to lease for the idle timeout",
            EndReason::MasterLost => "the master was unreachable for the master-lost timeout",
            EndReason::CredentialsLost => "credentials could not be renewed",
            EndReason::HoldExpired => "the operator's hold expired",
        })
    }
}

/// The self-termination triggers a node watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watchdog {
    /// The job's absolute deadline.
    pub expires_at: Millis,
    /// End after this long with no work to lease.
    pub idle_timeout: Duration,
    /// End after this long without an answer from the master.
    pub master_lost_timeout: Duration,
    /// Last time the node had work (or started).
    pub last_work: Millis,
    /// Last time the master answered.
    pub last_master_contact: Millis,
}

impl Watchdog {
    /// A watchdog for a node that starts at `now`.
    pub fn new(now: Millis, expires_at: Millis, idle_timeout: Duration, master_lost_timeout: Duration) -> Self {
        Watchdog { expires_at, idle_timeout, master_lost_timeout, last_work: now, last_master_contact: now }
    }

    /// Why the node must end at `now`, if it must. The deadline comes first:
    /// it is the one trigger that no answer from anyone can postpone.
    /// Why a node an operator holds until `hold_until` must end at `now`, if
    /// it must: the deadline first, as always; then lost credentials; then the
    /// hold's own end. Being idle, the master's silence and the job's end do
    /// not end a held node: that is what the hold is for.
    pub fn check_held(&self, now: Millis, hold_until: Millis, credential: CredentialAction) -> Option<EndReason> {
        if deadline_passed(now, self.expires_at) {
            Some(EndReason::Deadline)
        } else if credential == CredentialAction::Drain {
            Some(EndReason::CredentialsLost)
        } else if now >= hold_until {
            Some(EndReason::HoldExpired)
        } else {
            None
        }
    }

    pub fn check(&self, now: Millis, job_done: bool, credential: CredentialAction) -> Option<EndReason> {
        if deadline_passed(now, self.expires_at) {
            Some(EndReason::Deadline)
        } else if job_done {
            Some(EndReason::JobDone)
        } else if credential == CredentialAction::Drain {
            Some(EndReason::CredentialsLost)
        } else if now.saturating_sub(self.last_master_contact) >= ms(self.master_lost_timeout) {
            Some(EndReason::MasterLost)
        } else if now.saturating_sub(self.last_work) >= ms(self.idle_timeout) {
            Some(EndReason::Idle)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = 1_700_000_000_000;
    const S: u64 = 1000;

    #[test]
    fn budget_refuses_a_step_that_would_overrun() {
        let b = Budget::new(T0, Duration::from_secs(900), Duration::from_secs(60));
        assert_eq!(b.remaining(T0), Duration::from_secs(840));
        assert!(b.check(T0, "launch", Duration::from_secs(840)).is_ok());
        let err = b.check(T0 + 800 * S, "launch", Duration::from_secs(41)).unwrap_err();
        assert_eq!(err.step, "launch");
        assert_eq!(err.budget_ms, 840 * S);
        assert!(err.to_string().contains("bootstrap out of time before `launch`"));
        // Past the end, even a zero-length step is refused.
        assert!(b.check(T0 + 841 * S, "x", Duration::ZERO).is_err());
        // A margin larger than the limit leaves no budget at all.
        assert!(
            Budget::new(T0, Duration::from_secs(10), Duration::from_secs(60)).check(T0, "x", Duration::ZERO).is_ok()
        );
        assert!(
            Budget::new(T0, Duration::from_secs(10), Duration::from_secs(60))
                .check(T0, "x", Duration::from_millis(1))
                .is_err()
        );
    }

    #[test]
    fn a_held_node_ends_at_the_deadline_or_the_holds_end_never_idle() {
        let mut w = Watchdog::new(T0, T0 + 100 * S, Duration::from_secs(5), Duration::from_secs(5));
        // Long idle, master long silent: held, it stays.
        w.last_work = T0;
        w.last_master_contact = T0;
        assert_eq!(w.check(T0 + 50 * S, false, CredentialAction::Keep), Some(EndReason::MasterLost));
        assert_eq!(w.check_held(T0 + 50 * S, T0 + 60 * S, CredentialAction::Keep), None);
        assert_eq!(w.check_held(T0 + 60 * S, T0 + 60 * S, CredentialAction::Keep), Some(EndReason::HoldExpired));
        assert_eq!(w.check_held(T0 + 50 * S, T0 + 60 * S, CredentialAction::Drain), Some(EndReason::CredentialsLost));
        // The deadline wins over any hold.
        assert_eq!(w.check_held(T0 + 100 * S, T0 + 500 * S, CredentialAction::Keep), Some(EndReason::Deadline));
    }

    #[test]
    fn credentials_refresh_at_the_larger_margin_but_not_before_half_life() {
        let p = CredentialPolicy::default();
        // 1 h: 20 % = 12 min > 5 min.
        let hour = Validity { issued_at: T0, expires_at: T0 + 3600 * S };
        assert_eq!(p.refresh_at(hour), T0 + 48 * 60 * S);
        // 15 min: 20 % = 3 min < 5 min.
        let quarter = Validity { issued_at: T0, expires_at: T0 + 900 * S };
        assert_eq!(p.refresh_at(quarter), T0 + 600 * S);
        // 20 s: 5 min is more than the lifetime; refresh at half-life, not at once.
        let short = Validity { issued_at: T0, expires_at: T0 + 20 * S };
        assert_eq!(p.refresh_at(short), T0 + 10 * S);
        assert_eq!(p.action(T0 + 9 * S, short, 0), CredentialAction::Keep);
        assert_eq!(p.action(T0 + 10 * S, short, 0), CredentialAction::Refresh);
        assert_eq!(p.action(T0 + 10 * S, short, 4), CredentialAction::Refresh);
        assert_eq!(p.action(T0, short, 5), CredentialAction::Drain);
        // Failures are spaced: 1, 2, 4, 8 s; draining takes 15 s of failures.
        let waits: Vec<u64> = (1..=6).map(|n| p.retry_after(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 8, 8]);
        assert_eq!((1..p.max_refresh_failures).map(|n| p.retry_after(n).as_secs()).sum::<u64>(), 15);
    }

    #[test]
    fn no_operation_or_lease_outlives_the_credential() {
        let p = CredentialPolicy::default();
        let v = Validity { issued_at: T0, expires_at: T0 + 60 * S };
        assert!(p.may_start(T0, v, Duration::from_secs(59)));
        assert!(!p.may_start(T0, v, Duration::from_secs(60)));
        assert_eq!(p.lease_expiry(T0, Duration::from_secs(30), v), T0 + 30 * S);
        assert_eq!(p.lease_expiry(T0 + 45 * S, Duration::from_secs(30), v), T0 + 60 * S);
    }

    #[test]
    fn self_termination_triggers_in_priority_order() {
        let w = Watchdog::new(T0, T0 + 100 * S, Duration::from_secs(10), Duration::from_secs(20));
        let keep = CredentialAction::Keep;
        assert_eq!(w.check(T0, false, keep), None);
        assert_eq!(w.check(T0 + 10 * S, false, keep), Some(EndReason::Idle));
        let mut busy = w;
        busy.last_work = T0 + 15 * S;
        assert_eq!(busy.check(T0 + 20 * S, false, keep), Some(EndReason::MasterLost));
        assert_eq!(w.check(T0, false, CredentialAction::Drain), Some(EndReason::CredentialsLost));
        assert_eq!(w.check(T0, true, CredentialAction::Drain), Some(EndReason::JobDone));
        assert_eq!(w.check(T0 + 100 * S, true, keep), Some(EndReason::Deadline));
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(T0);
        assert_eq!(c.now(), T0);
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.now(), T0 + 1500);
        assert!(SystemClock.now() > T0);
    }
}
