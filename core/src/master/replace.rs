//! Lost workers replaced: while work waits, the deadline leaves time for it
//! and the job's `max_replacements` allows, the master asks the provider for
//! a worker in place of each one it lost (its process killed, its instance
//! terminated or reclaimed, its VM deleted), so that a job finishes on time
//! with the workers it was planned for.
//!
//! A worker is lost when the provider no longer lists it. The master asks
//! every [`EVERY_TICKS`] ticks, outside its lock, once workers have begun
//! leasing (bootstrap has launched them all by then), or once it has run
//! for two leases (at least 15 s) without a lease (a resumed master whose
//! workers ended). It launches no more
//! workers than are missing, nor more than there is work waiting for (shards
//! pending, or leased by a worker that is gone): at the job's end, workers
//! that ended idle are not replaced. Replacements take names no node of the
//! job had (a lost worker's log stays its own) and are recorded in the state
//! (`replacements.json`), so that a resumed master keeps to the same bound.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Shared;
use crate::job::{Layout, keys, launch_request, new_worker_names};
use crate::ledger::ShardState;
use mayfly_data::provider::{ProviderHandle, Role};
use mayfly_model::policy::Millis;

/// The master's loop ticks every 100 ms: it asks about lost workers every 3 s.
pub(super) const EVERY_TICKS: u64 = 30;

/// After launching, the master waits this long before it counts workers
/// again: a cloud's listing may lag a launch.
const SETTLE: Duration = Duration::from_secs(10);

/// A replacement is not worth launching with less than this left before the
/// deadline (plus a lease): a cloud's worker takes about a minute to boot.
const LEAST_LEFT: Duration = Duration::from_secs(30);

/// One worker launched in place of a lost one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replacement {
    /// The worker that was lost (`None`: one that never reached the master).
    pub lost: Option<String>,
    /// The worker launched in its place.
    pub by: String,
    /// When.
    pub at: Millis,
}

/// The replacements recorded in `layout`'s state (none if there is no record).
pub(super) fn recorded(layout: &Layout) -> Vec<Replacement> {
    layout.state.read_json(keys::REPLACEMENTS).ok().flatten().unwrap_or_default()
}

/// What the master knows that a replacement decision needs, taken under its lock.
struct Seen {
    job: String,
    layout: Layout,
    expires_at: Millis,
    workers: usize,
    room: usize,
    /// Workers that have talked to the master.
    known: BTreeSet<String>,
    /// The holder of each leased shard.
    holders: Vec<String>,
    pending: usize,
    replaced: Vec<Replacement>,
}

/// Asks the provider which workers are alive and launches replacements for
/// the lost ones the job has work and room for.
pub(super) fn check(shared: &Shared, provider: &ProviderHandle) {
    let Some(seen) = snapshot(shared) else { return };
    let listed = match provider.list(&seen.job, &seen.layout.state_location()) {
        Ok(listed) => listed,
        Err(e) => {
            say!(WARN, "listing the job's nodes to find lost workers: {e}; asking again later");
            return;
        }
    };
    let live: BTreeSet<String> = listed.into_iter().filter(|n| n.role == Role::Worker).map(|n| n.node).collect();
    let orphaned = seen.holders.iter().filter(|w| !live.contains(*w)).count();
    let wanted = seen.workers.saturating_sub(live.len()).min(seen.pending + orphaned);
    if wanted == 0 {
        return;
    }
    let handled: BTreeSet<&str> = seen.replaced.iter().filter_map(|r| r.lost.as_deref()).collect();
    let lost: Vec<String> =
        seen.known.iter().filter(|w| !live.contains(*w) && !handled.contains(w.as_str())).cloned().collect();
    if seen.room == 0 {
        // Said once per worker, in one line per check and outside the lock:
        // a mass loss (a zone gone) is thousands of workers, and a line each,
        // written under the lock, held up every request while the log took
        // them (the master benchmark's 10,000 simulated workers, which no
        // provider lists: a p99 of 1.8 s).
        let (newly, max) = {
            let Ok(mut m) = shared.lock() else { return };
            let newly: Vec<String> = lost.into_iter().filter(|w| m.lost_said.insert(w.clone())).collect();
            (newly, m.manifest.max_replacements)
        };
        const NAMED: usize = 20;
        match newly.len() {
            0 => {}
            1 => say!(WARN, "{} is lost and not replaced: the job's max_replacements ({max}) are used", newly[0]),
            n => say!(
                WARN,
                "{n} workers are lost and not replaced: the job's max_replacements ({max}) are used: {}{}",
                newly[..n.min(NAMED)].join(", "),
                if n > NAMED { ", ..." } else { "" }
            ),
        }
        return;
    }
    let count = wanted.min(seen.room);
    let logged = seen.layout.logged_nodes();
    let taken =
        seen.known.iter().chain(&live).chain(seen.replaced.iter().map(|r| &r.by)).chain(&logged).map(String::as_str);
    let names = new_worker_names(count, taken);
    let nodes: Vec<(String, Role)> = names.iter().map(|n| (n.clone(), Role::Worker)).collect();
    let request = launch_request(&seen.layout, provider.selection(), &seen.job, seen.expires_at, &nodes);
    // The job may have ended while the provider was asked.
    if shared.lock().map(|m| m.ended.is_some()).unwrap_or(true) {
        return;
    }
    if let Err(e) = provider.launch(request) {
        say!(WARN, "launching {} in place of lost workers: {e}; trying again later", names.join(", "));
        // A launch can fail after the cloud acted: let its listing settle.
        if let Ok(mut m) = shared.lock() {
            m.replace_after = m.now() + mayfly_model::policy::ms(SETTLE);
        }
        return;
    }
    let Ok(mut m) = shared.lock() else { return };
    let at = m.now();
    let mut lost = lost.into_iter();
    for by in names {
        let r = Replacement { lost: lost.next(), by, at };
        say!(
            INFO,
            "{} launched in place of {} ({} of at most {} replacements)",
            r.by,
            r.lost.as_deref().unwrap_or("a worker that never reached the master"),
            m.replaced.len() + 1,
            m.manifest.max_replacements
        );
        m.replaced.push(r);
    }
    m.replace_after = at + mayfly_model::policy::ms(SETTLE);
    if let Err(e) = m.layout.state.write_json(keys::REPLACEMENTS, &m.replaced) {
        say!(WARN, "recording the replacements: {e} (a resumed master would count them afresh)");
    }
}

/// What [`check`] decides from, if a replacement may be due now.
fn snapshot(shared: &Shared) -> Option<Seen> {
    let m = shared.lock().ok()?;
    let now = m.now();
    let left = Duration::from_millis(m.manifest.expires_at.saturating_sub(now));
    // Before any lease, workers may still be booting; but a master resumed
    // after its workers ended would wait for a lease forever: after a
    // while, missing workers are missing.
    let booting = Duration::from_millis(m.manifest.lease_ms * 2).max(Duration::from_secs(15));
    if m.ended.is_some()
        || (m.first_lease_at.is_none() && now < m.started_at + mayfly_model::policy::ms(booting))
        || now < m.replace_after
        || left < LEAST_LEFT + Duration::from_millis(m.manifest.lease_ms)
    {
        return None;
    }
    let holders = m
        .ledger
        .shards()
        .iter()
        .filter_map(|r| match &r.state {
            ShardState::Leased { worker, .. } => Some(worker.clone()),
            _ => None,
        })
        .collect();
    Some(Seen {
        job: m.manifest.job.clone(),
        layout: m.layout.clone(),
        expires_at: m.manifest.expires_at,
        workers: m.manifest.workers as usize,
        room: (m.manifest.max_replacements as usize).saturating_sub(m.replaced.len()),
        known: m.nodes.keys().cloned().collect(),
        holders,
        pending: m.ledger.leasable() as usize,
        replaced: m.replaced.clone(),
    })
}

#[cfg(test)]
mod tests {
    use crate::job::new_worker_names;

    #[test]
    fn replacements_take_names_above_every_name_the_job_had() {
        assert_eq!(new_worker_names(2, ["worker-1", "worker-2", "master"]), ["worker-3", "worker-4"]);
        assert_eq!(new_worker_names(1, ["worker-7", "worker-2"]), ["worker-8"]);
        assert_eq!(new_worker_names(1, std::iter::empty()), ["worker-1"]);
        assert!(new_worker_names(0, ["worker-1"]).is_empty());
    }
}
