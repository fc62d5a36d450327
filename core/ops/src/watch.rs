//! Watching a job from outside it: `mayfly run` and `resume` follow it to
//! its end, `status` shows it, `logs --follow` tails it. They share one
//! reading of what a job is doing, and one rule for when its master is lost.
//!
//! **The master-lost rule**: a job has lost its master when it has not ended
//! (no final state), no master answers, and the provider lists no master
//! node, all three continuously for [`LOST_AFTER`]. A master writes its final
//! state before it exits, so the wait covers the moment between the two; a
//! provider that cannot be asked counts as listing a master, so a hiccup of
//! its API never ends a watch. Past the deadline (and [`OVERDUE_AFTER`]), a
//! job with no final state is overdue, whatever its nodes say.
//!
//! The rule is [`judge`], a pure function of what was seen and when;
//! [`JobWatch`] gathers what it sees from the state, the master and the
//! provider. Must not import: the CLI; a watch never changes a job.

use std::time::Duration;

use mayfly_core::api::{Client, MasterInfo, Status};
use mayfly_core::job::{Layout, Manifest, keys};
use mayfly_core::master::FinalState;
use mayfly_data::provider::{ProviderHandle, Role};
use mayfly_model::policy::Millis;

/// How long a job may show no master before it is lost.
pub const LOST_AFTER: Millis = 3_000;
/// How long past its deadline a job may go on without a final state.
pub const OVERDUE_AFTER: Millis = 5_000;

/// What one look at a job found.
#[derive(Debug, Clone, Default)]
pub struct Look {
    /// Its final state, when it has ended.
    pub ended: Option<FinalState>,
    /// Its master's answer, when one answered.
    pub status: Option<Status>,
    /// Whether the provider lists a master node (`None`: it could not be asked).
    pub master_listed: Option<bool>,
}

/// What a job is doing.
#[derive(Debug, Clone)]
pub enum Seen {
    /// It ended: its final state.
    Ended(Box<FinalState>),
    /// It runs: its master's status, or `None` when the master runs but did
    /// not answer (starting, busy).
    Running(Option<Box<Status>>),
    /// Its master is gone and it did not end: `mayfly resume` continues it.
    MasterLost,
    /// It is past its deadline without a final state: `mayfly reap` ends what is left.
    Overdue,
}

/// The master-lost rule's memory: since when no master was seen.
#[derive(Debug, Clone, Copy, Default)]
pub struct LostRule {
    since: Option<Millis>,
}

/// Judges one look taken at `now`, for a job whose deadline is `expires_at`.
pub fn judge(look: Look, rule: &mut LostRule, now: Millis, expires_at: Millis) -> Seen {
    if let Some(fin) = look.ended {
        return Seen::Ended(Box::new(fin));
    }
    if now > expires_at + OVERDUE_AFTER {
        return Seen::Overdue;
    }
    if look.status.is_some() || look.master_listed != Some(false) {
        rule.since = None;
        return Seen::Running(look.status.map(Box::new));
    }
    let since = *rule.since.get_or_insert(now);
    if now.saturating_sub(since) >= LOST_AFTER { Seen::MasterLost } else { Seen::Running(None) }
}

/// A job watched from outside: its state, its master, its provider's nodes.
#[derive(Debug)]
pub struct JobWatch<'a> {
    layout: &'a Layout,
    manifest: &'a Manifest,
    provider: &'a ProviderHandle,
    rule: LostRule,
    /// How long to wait for a master's answer.
    pub timeout: Duration,
}

impl<'a> JobWatch<'a> {
    /// Watches `manifest`'s job through its `layout` and `provider`.
    pub fn new(layout: &'a Layout, manifest: &'a Manifest, provider: &'a ProviderHandle) -> Self {
        JobWatch { layout, manifest, provider, rule: LostRule::default(), timeout: Duration::from_secs(2) }
    }

    /// Looks at the job now.
    pub fn look(&self) -> Look {
        let ended = self.layout.state.read_json::<FinalState>(keys::FINAL).ok().flatten();
        if ended.is_some() {
            return Look { ended, ..Look::default() };
        }
        let status = self.master_status();
        let master_listed = if status.is_some() {
            Some(true)
        } else {
            self.provider
                .list(&self.manifest.job, &self.layout.state_location())
                .ok()
                .map(|nodes| nodes.iter().any(|n| n.role == Role::Master))
        };
        // It may have ended between the reads.
        let ended = self.layout.state.read_json::<FinalState>(keys::FINAL).ok().flatten();
        Look { ended, status, master_listed }
    }

    /// Looks at the job at `now` and judges it by the master-lost rule.
    pub fn poll(&mut self, now: Millis) -> Seen {
        let look = self.look();
        judge(look, &mut self.rule, now, self.manifest.expires_at)
    }

    /// The master's status, when it answers.
    fn master_status(&self) -> Option<Status> {
        let token = mayfly_core::job::read_token(self.layout).ok()?;
        let info = self.layout.state.read_json::<MasterInfo>(keys::MASTER).ok().flatten()?;
        Client::connect(&info, &token, self.timeout).ok()?.status().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fin() -> FinalState {
        serde_json::from_value(serde_json::json!({
            "job": "j", "reason": "done", "ended_at": 5, "reduce_error": null, "counts": {"pending": 0, "leased": 0, "committed": 1, "failed": 0},
            "retries": 0, "failed": [], "outputs": []
        }))
        .unwrap()
    }

    fn silent(listed: Option<bool>) -> Look {
        Look { master_listed: listed, ..Look::default() }
    }

    #[test]
    fn a_master_is_lost_only_after_showing_none_for_the_whole_wait() {
        let mut rule = LostRule::default();
        let deadline = 100_000;
        assert!(matches!(judge(silent(Some(false)), &mut rule, 1_000, deadline), Seen::Running(None)));
        assert!(matches!(judge(silent(Some(false)), &mut rule, 3_999, deadline), Seen::Running(None)));
        assert!(matches!(judge(silent(Some(false)), &mut rule, 4_000, deadline), Seen::MasterLost));
    }

    #[test]
    fn any_sign_of_a_master_starts_the_wait_again_and_a_provider_error_is_one() {
        let mut rule = LostRule::default();
        let deadline = 100_000;
        judge(silent(Some(false)), &mut rule, 1_000, deadline);
        // The provider could not be asked: not a sign of loss.
        assert!(matches!(judge(silent(None), &mut rule, 3_500, deadline), Seen::Running(None)));
        assert!(matches!(judge(silent(Some(false)), &mut rule, 4_500, deadline), Seen::Running(None)));
        // Listed, though not answering: alive.
        judge(silent(Some(true)), &mut rule, 6_000, deadline);
        assert!(matches!(judge(silent(Some(false)), &mut rule, 8_000, deadline), Seen::Running(None)));
        assert!(matches!(judge(silent(Some(false)), &mut rule, 11_000, deadline), Seen::MasterLost));
    }

    #[test]
    fn an_end_wins_over_everything_and_past_the_deadline_a_job_is_overdue() {
        let mut rule = LostRule::default();
        let ended = Look { ended: Some(fin()), master_listed: Some(false), ..Look::default() };
        assert!(matches!(judge(ended.clone(), &mut rule, 1_000_000, 10_000), Seen::Ended(_)));
        assert!(matches!(judge(silent(Some(true)), &mut rule, 15_000, 10_000), Seen::Running(None)));
        assert!(matches!(judge(silent(Some(true)), &mut rule, 15_001, 10_000), Seen::Overdue));
    }
}
