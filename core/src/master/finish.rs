//! The job's end: the committers drained, leftover publications (committed
//! outputs a failed move left staged, tried again while the storage may
//! recover), the reduce partitions' outputs made one (for a finished job;
//! [`crate::reduce::combine`]), the output manifest, the
//! journal saved, the final state, and the workers (those not held) ended.

use std::time::Duration;

use super::FinalState;
use super::Shared;
use super::commit::publish;
use super::journal::save_journal;
use crate::commits::Marker;
use crate::job::keys;
use crate::ledger::{CommittedOutput, Quarantined, ShardState};
use mayfly_data::provider::{ProviderHandle, Role};

/// Ends the job that ended for `reason` (`done` or `deadline`). Returns the
/// master's exit code.
pub(super) fn end(shared: &Shared, provider: &ProviderHandle, reason: String) -> Result<i32, super::MasterError> {
    // The end: the reduce's outputs (only for a finished job), the output
    // manifest, the workers, then this process.
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
    let (layout, manifest, counts, reduce_counts, retries, failed, committed, quarantined, replacements) = {
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
        (
            m.layout.clone(),
            m.manifest.clone(),
            m.ledger.map_counts(),
            m.ledger.reduce_counts(),
            m.retries,
            failed,
            committed,
            quarantined,
            replaced,
        )
    };
    let map_shards = manifest.plan.shards.len() as u32;
    // Committed shards whose outputs are still staged (a move into place
    // failed) are published before anything reads the outputs; the storage
    // gets until the deadline, and at most `storage_outage`, to take them.
    // (A second's margin before the deadline: the node's dead-man switch.)
    let until = manifest.expires_at.saturating_sub(1000).min(now().saturating_add(manifest.storage_outage_ms));
    let committed_shards: std::collections::BTreeSet<u32> = committed.iter().map(|(s, _)| *s).collect();
    let unpublished =
        publish_leftovers(&layout, &committed_shards, &|| Duration::from_millis(until.saturating_sub(now())));
    // What is in place: the outputs of the others; the map's, then the reduce
    // partitions'.
    let in_place = committed.into_iter().filter(|(s, _)| !unpublished.contains(s));
    let (committed, reduced): (Vec<_>, Vec<_>) = in_place.partition(|(s, _)| *s < map_shards);
    let committed: Vec<CommittedOutput> = committed.into_iter().map(|(_, o)| o).collect();
    let reduced: Vec<CommittedOutput> = reduced.into_iter().map(|(_, o)| o).collect();
    let mut outputs: Vec<String> = committed.iter().map(|o| layout.map_output(&o.key, &o.name)).collect();
    // A partition that failed is the reduce's error; a failed map shard
    // means no reduce ran (the final state says which shard failed).
    let mut reduce_error =
        failed.iter().find(|(s, _)| *s >= map_shards).map(|(s, e)| format!("reduce partition {}: {e}", s - map_shards));
    let reduce_done = reduce_counts.is_some_and(|c| c.committed == manifest.partitions());
    let mut merged = false;
    if reason == "done" && unpublished.is_empty() && reduce_done {
        match crate::reduce::combine(&layout, manifest.partitions(), &manifest.merge, &reduced) {
            Ok(names) => {
                outputs.extend(names);
                merged = true;
            }
            Err(e) => {
                say!(ERROR, "the reduce's outputs: {e}");
                reduce_error = Some(e.to_string());
            }
        }
    } else if reason == "done" && unpublished.is_empty() && counts.failed == 0 && reduce_error.is_none() {
        // Every map shard committed, yet the reduce did not run to its end
        // (a map commit decided after the job was judged over): not complete.
        if let Some(c) = reduce_counts {
            reduce_error = Some(format!(
                "the reduce did not run to its end: {} of {} partitions committed",
                c.committed,
                manifest.partitions()
            ));
        }
    }
    if let Some(e) = &reduce_error {
        say!(ERROR, "the reduce failed: {e}");
    }
    let final_state = FinalState {
        job: manifest.job.clone(),
        reason: reason.clone(),
        counts,
        reduce: reduce_counts,
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
        "failed_shards": final_state.failed.iter().map(|(s, e)| match manifest.plan.shards.get(*s as usize) {
            Some(shard) => serde_json::json!({
                "shard": s,
                "items": shard.items.iter().map(|i| i.key()).collect::<Vec<_>>(),
                "error": e,
            }),
            None => serde_json::json!({ "shard": s, "reduce_partition": s - map_shards, "error": e }),
        }).collect::<Vec<_>>(),
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
    // The parts the merge read go once the end is recorded: a master
    // restarted before this merges them again.
    if merged {
        crate::reduce::remove_parts(&layout, manifest.partitions(), &manifest.merge, &reduced);
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

/// Publishes the committed shards (of `committed`) whose outputs are still
/// staged, trying again (0.25 s, doubling to 8 s) while `time_left` gives
/// time; returns the shards whose outputs are not known to be in place, each
/// said. What cannot be read counts as not in place: a staging that cannot
/// be listed holds every committed shard back, a marker that cannot be read
/// its shard.
fn publish_leftovers(
    layout: &crate::job::Layout,
    committed: &std::collections::BTreeSet<u32>,
    time_left: &dyn Fn() -> Duration,
) -> Vec<u32> {
    let mut wait = Duration::from_millis(250);
    loop {
        let mut held: std::collections::BTreeMap<u32, String> = Default::default();
        match layout.output.list(layout.staging()) {
            Err(e) => {
                let why = format!("the staging cannot be listed: {e}");
                held.extend(committed.iter().map(|s| (*s, why.clone())));
            }
            Ok(staged) => {
                let attempts: std::collections::BTreeSet<(u32, u64)> =
                    staged.iter().filter_map(|(k, _)| layout.staged_attempt(k)).collect();
                let attempts: Vec<(u32, u64)> = attempts.into_iter().filter(|(s, _)| committed.contains(s)).collect();
                let commits: std::io::Result<std::collections::HashMap<u32, Marker>> = match attempts.is_empty() {
                    true => Ok(Default::default()),
                    false => crate::commits::read(layout).map(|all| all.into_iter().map(|m| (m.shard, m)).collect()),
                };
                for (shard, token) in attempts {
                    match &commits {
                        Ok(commits) => match commits.get(&shard) {
                            Some(m) if m.token == token => {
                                if let Err(e) = publish(layout, m) {
                                    held.insert(shard, e.to_string());
                                }
                            }
                            // Another attempt's staging: it was never the commit.
                            Some(_) => {}
                            None => {
                                held.insert(shard, "its commit is missing".into());
                            }
                        },
                        Err(e) => {
                            held.insert(shard, format!("its commit cannot be read: {e}"));
                        }
                    }
                }
            }
        }
        if held.is_empty() {
            return Vec::new();
        }
        let left = time_left();
        if left.is_zero() {
            for (shard, why) in &held {
                say!(ERROR, "shard {shard}: committed, but its outputs are not known to be in place: {why}");
            }
            return held.into_keys().collect();
        }
        let (shard, why) = held.iter().next().map(|(s, w)| (*s, w.clone())).unwrap_or_default();
        say!(
            WARN,
            "{} committed shards' outputs cannot be moved into place yet (shard {shard}: {why}); trying again",
            held.len()
        );
        std::thread::sleep(wait.min(left));
        wait = (wait * 2).min(Duration::from_secs(8));
    }
}
