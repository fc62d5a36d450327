//! The job's end: the committers drained, leftover publications (committed
//! outputs a failed move left staged, tried again while the storage may
//! recover), the reduce task (for a finished job), the output manifest, the
//! journal saved, the final state, and the workers (those not held) ended.

use std::time::Duration;

use super::FinalState;
use super::Shared;
use super::commit::{publish, read_markers};
use super::journal::save_journal;
use crate::job::keys;
use crate::ledger::{CommittedOutput, Quarantined, ShardState};
use mayfly_data::provider::{ProviderHandle, Role};

/// Ends the job that ended for `reason` (`done` or `deadline`). Returns the
/// master's exit code.
pub(super) fn end(
    shared: &Shared,
    provider: &ProviderHandle,
    reason: String,
    rt: &tokio::runtime::Handle,
) -> Result<i32, super::MasterError> {
    // The end: reduce (only for a finished job), the output manifest, the
    // workers, then this process.
    // No new commit is accepted now (`ended` is set); those already in the
    // committer finish first, so that the snapshot below and the outputs agree.
    // A remote commit (listing, conditional put, copies) can take a while: wait
    // for it (at the deadline the dead-man switch bounds this anyway).
    let clock = shared.lock().map_err(|_| super::MasterError::Poisoned)?.clock.clone();
    let now = || clock.now();
    let drain_until = std::time::Instant::now() + Duration::from_secs(300);
    while std::time::Instant::now() < drain_until && shared.lock().map(|m| m.in_flight > 0).unwrap_or(false) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (layout, manifest, counts, retries, failed, committed, quarantined, replacements) = {
        let m = shared.lock().map_err(|_| super::MasterError::Poisoned)?;
        let failed: Vec<(u32, String)> = m
            .ledger
            .shards()
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match &r.state {
                ShardState::Failed { error } => Some((i as u32, error.clone())),
                _ => None,
            })
            .collect();
        let committed: Vec<(u32, CommittedOutput)> = m
            .ledger
            .shards()
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match &r.state {
                ShardState::Committed { outputs } => Some(outputs.iter().map(move |o| (i as u32, o.clone()))),
                _ => None,
            })
            .flatten()
            .collect();
        let quarantined: Vec<(u32, Quarantined)> = m.ledger.quarantined().map(|(s, q)| (s, q.clone())).collect();
        let replaced = m.replaced.clone();
        (m.layout.clone(), m.manifest.clone(), m.ledger.counts(), m.retries, failed, committed, quarantined, replaced)
    };
    // Committed shards whose outputs are still staged (a move into place
    // failed) are published before anything reads the outputs; the storage
    // gets until the deadline, and at most `storage_outage`, to take them.
    let until = manifest.expires_at.min(now().saturating_add(manifest.storage_outage_ms));
    let unpublished = publish_leftovers(&layout, &|| now() < until);
    // What is in place: the outputs of the others.
    let committed: Vec<CommittedOutput> =
        committed.into_iter().filter(|(s, _)| !unpublished.contains(s)).map(|(_, o)| o).collect();
    let mut outputs: Vec<String> = committed.iter().map(|o| layout.map_output(&o.key, &o.name)).collect();
    let mut reduce_error = None;
    if reason == "done"
        && unpublished.is_empty()
        && let Some((component, _, params)) = &manifest.reduce
    {
        // The component as this machine can load it (fetched from a remote state).
        let loaded = layout.task_file(component, &manifest.reduce.as_ref().map(|r| r.1.clone()).unwrap_or_default());
        match loaded
            .map_err(crate::reduce::ReduceError::from)
            .and_then(|c| crate::reduce::run(&layout, &manifest, &c, params, &committed, rt))
        {
            Ok(names) => outputs.extend(names),
            Err(e) => {
                say!(ERROR, "the reduce task failed: {e}");
                reduce_error = Some(e.to_string());
            }
        }
    }
    let final_state = FinalState {
        job: manifest.job.clone(),
        reason: reason.clone(),
        counts,
        retries,
        ended_at: now(),
        failed,
        outputs: outputs.clone(),
        reduce_error,
        quarantined,
        replacements,
        unpublished: unpublished.clone(),
    };
    let manifest_out = serde_json::json!({
        "job": manifest.job,
        "complete": reason == "done" && counts.failed == 0 && final_state.reduce_error.is_none() && unpublished.is_empty(),
        "reason": reason,
        // Committed shards whose outputs could not be moved into place: they
        // are still staged under _mayfly/staging, and not listed above.
        "unpublished_shards": unpublished,
        "outputs": committed.iter().map(|o| serde_json::json!({"path": layout.map_output(&o.key, &o.name), "bytes": o.bytes})).collect::<Vec<_>>(),
        "reduce_outputs": outputs.iter().skip(committed.len()).collect::<Vec<_>>(),
        "failed_shards": final_state.failed.iter().map(|(s, e)| serde_json::json!({
            "shard": s,
            "items": manifest.plan.shards[*s as usize].items.iter().map(|i| i.key()).collect::<Vec<_>>(),
            "error": e,
        })).collect::<Vec<_>>(),
        // Items every other item's outputs were committed without.
        "quarantined_items": final_state.quarantined.iter().map(|(s, q)| serde_json::json!({
            "shard": s,
            "item": q.key,
            "error": q.error,
            "attempts": q.attempts,
        })).collect::<Vec<_>>(),
    });
    if let Err(e) = layout.output.write_json(layout.output_manifest(), &manifest_out) {
        say!(ERROR, "writing _manifest.json: {e}");
    }
    // The staging goes only if nothing committed is left in it.
    if final_state.unpublished.is_empty() {
        let _ = layout.output.delete_prefix(layout.staging());
    }
    save_journal(&layout, &manifest);
    if let Err(e) = layout.state.write_json(keys::FINAL, &final_state) {
        say!(ERROR, "writing final.json: {e}");
    }
    // Workers learn of the end at their next lease and end themselves; give
    // them a moment, then end whatever is left.
    let grace = if reason == "done" { Duration::from_secs(3) } else { Duration::ZERO };
    let deadline = std::time::Instant::now() + grace;
    // A worker an operator holds is theirs until its hold ends (or the
    // deadline: its own rules and dead-man switch end it then).
    let holds = match crate::hold::all(&layout) {
        Ok(h) => h,
        Err(e) => {
            say!(WARN, "{e}; using the holds known before");
            shared.lock().map(|m| m.holds.clone()).unwrap_or_default()
        }
    };
    let held = |n: &mayfly_data::provider::NodeInfo| crate::hold::held_until(&holds, &n.node, now()).is_some();
    let workers = |p: &ProviderHandle| {
        p.list(&manifest.job, &layout.state_location())
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.role == Role::Worker && !held(n))
            .collect::<Vec<_>>()
    };
    // Each look is a provider call (an EC2 DescribeInstances on AWS): a few a second, not twenty.
    while std::time::Instant::now() < deadline && !workers(provider).is_empty() {
        std::thread::sleep(Duration::from_millis(250));
    }
    let kept: Vec<String> =
        holds.iter().filter(|h| h.until > now()).map(|h| format!("{} until {}", h.node, h.until)).collect();
    if !kept.is_empty() {
        say!(INFO, "leaving held workers to their holds: {}", kept.join(", "));
    }
    let left = workers(provider);
    if !left.is_empty() {
        let names: Vec<&str> = left.iter().map(|n| n.node.as_str()).collect();
        say!(INFO, "ending {} worker(s) still running: {}", left.len(), names.join(" "));
        // At the deadline there is no time to be gentle: the dead-man switch
        // ends this process a second after it.
        let patience = if reason == "done" { Duration::from_secs(2) } else { Duration::from_millis(300) };
        let _ = provider.terminate(&left, patience);
    }
    say!(INFO, "job {} ended ({reason}); {} committed, {} failed", manifest.job, counts.committed, counts.failed);
    Ok(0)
}

/// Publishes the committed shards whose outputs are still staged, trying
/// again (0.25 s, doubling to 8 s) while `more_time` allows; returns the
/// shards still unpublished, each said.
fn publish_leftovers(layout: &crate::job::Layout, more_time: &dyn Fn() -> bool) -> Vec<u32> {
    let mut wait = Duration::from_millis(250);
    loop {
        let staged = layout.output.list(layout.staging()).unwrap_or_default();
        let mut failed: Vec<(u32, std::io::Error)> = Vec::new();
        if !staged.is_empty() {
            for m in read_markers(layout) {
                let prefix = format!("{}/", layout.attempt_staging(m.shard, m.token));
                if staged.iter().any(|(k, _)| k.starts_with(&prefix))
                    && let Err(e) = publish(layout, &m)
                {
                    failed.push((m.shard, e));
                }
            }
        }
        if failed.is_empty() {
            return Vec::new();
        }
        if !more_time() {
            for (shard, e) in &failed {
                say!(ERROR, "shard {shard}: committed, but its outputs are still staged and cannot be moved: {e}");
            }
            return failed.into_iter().map(|(s, _)| s).collect();
        }
        say!(
            WARN,
            "{} committed shards' outputs cannot be moved into place yet ({}); trying again",
            failed.len(),
            failed[0].1
        );
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(8));
    }
}
