//! Commit decisions, outside the master's lock: each shard's first commit
//! wins, in batches with one sync each (group commit): appended to the job's
//! commit log when the output is local, markers created if absent when an
//! object store arbitrates ([`crate::commits`]); the winners' outputs
//! published; and, for a restarted master, the commits read back and
//! interrupted publications finished.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;

use super::{Master, Shared};
use crate::api::CommitRequest;
use crate::commits::{Claim, CommitLog, Marker};
use crate::job::Layout;
use crate::ledger::{CommittedOutput, ShardState};
use mayfly_model::key::file_name;

impl Master {
    pub(super) fn prepare_commit(&mut self, req: &CommitRequest) -> Result<Marker, (StatusCode, String)> {
        if self.ended.is_some() {
            return Err((StatusCode::CONFLICT, "the job has ended".into()));
        }
        if let Err(e) = self.ledger.check(req.shard, req.token) {
            self.drop_local_staging(req.shard, req.token);
            return Err((StatusCode::CONFLICT, e.to_string()));
        }
        let partitions = self.manifest.partitions();
        if let crate::ledger::Stage::Reduce { partition } = self.ledger.stage(req.shard) {
            let key = crate::job::reduce_key(partitions, partition);
            for out in &req.outputs {
                let why = match crate::host::check_output_name(&out.name) {
                    Some(bad) => bad.to_string(),
                    None if out.key != key => format!("its key is not {key}"),
                    None => continue,
                };
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("output {}/{} is not part of reduce partition {partition}: {why}", out.key, out.name),
                ));
            }
            let outputs = req
                .outputs
                .iter()
                .map(|o| CommittedOutput { key: o.key.clone(), name: o.name.clone(), bytes: o.bytes })
                .collect();
            self.in_flight += 1;
            return Ok(Marker {
                job: self.manifest.job.clone(),
                shard: req.shard,
                token: req.token,
                outputs,
                quarantined: Vec::new(),
            });
        }
        if partitions > 1 {
            for out in &req.outputs {
                let whose =
                    if out.key.starts_with("_shards/") { format!("shard {}", req.shard) } else { out.key.clone() };
                let why = match crate::job::partition_of(&out.name) {
                    Some((p, _)) if p < partitions => continue,
                    Some((p, _)) => format!(
                        "is partition {p}, and the job has {partitions} (0 to {}): the task must split by the \
                         partitions() the host gives it",
                        partitions - 1
                    ),
                    None => format!(
                        "is not partitioned ([reduce] partitions = {partitions} reads only part-<p>/<name> \
                         outputs: write it with the sdk's partitioned output, or set partitions = 1)"
                    ),
                };
                return Err((StatusCode::BAD_REQUEST, format!("map output {:?} of {whose} {why}", out.name)));
            }
        }
        let shard = &self.manifest.plan.shards[req.shard as usize];
        let shard_key = crate::job::shard_key(req.shard);
        let left_out = &self.ledger.shards()[req.shard as usize].quarantined;
        // The items this attempt was leased: the shard's, less those left out
        // (built only when some output is an item's: a combiner's commit,
        // with its shard's outputs alone, costs nothing per item here).
        let keys: std::collections::HashSet<String> = if req.outputs.iter().any(|o| o.key != shard_key) {
            let left_out: std::collections::HashSet<&str> = left_out.iter().map(|q| q.key.as_str()).collect();
            shard.items.iter().map(|i| i.key()).filter(|k| !left_out.contains(k.as_str())).collect()
        } else {
            Default::default()
        };
        for out in &req.outputs {
            if (out.key != shard_key && !keys.contains(&out.key)) || crate::host::check_output_name(&out.name).is_some()
            {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("output {}/{} is not part of shard {}", out.key, out.name, req.shard),
                ));
            }
        }
        let outputs: Vec<CommittedOutput> = req
            .outputs
            .iter()
            .map(|o| CommittedOutput { key: o.key.clone(), name: o.name.clone(), bytes: o.bytes })
            .collect();
        self.in_flight += 1;
        let quarantined = self.ledger.shards()[req.shard as usize].quarantined.clone();
        Ok(Marker { job: self.manifest.job.clone(), shard: req.shard, token: req.token, outputs, quarantined })
    }

    /// Removes an attempt's staging when it is a local directory (cheap);
    /// remote staging goes with the whole staging prefix at the job's end.
    pub(super) fn drop_local_staging(&self, shard: u32, token: u64) {
        if let Some(dir) = self.layout.output.local_dir() {
            let _ = std::fs::remove_dir_all(dir.join(self.layout.attempt_staging(shard, token)));
        }
    }

    /// Counts a refusal of the job's storage for `shard` (its commit's marker,
    /// or its attempt's outputs): the shard waits before it is leased again,
    /// longer while the failures go on (0.25 s doubling, at most 8 s), and the
    /// job's `storage_outage` clock runs; once the shard was refused
    /// `max_storage_refusals` times in a row, the error to fail it with.
    /// `what` names what was refused ("this shard's commit").
    pub(super) fn storage_refused(&mut self, shard: u32, what: &str, message: &str) -> Option<String> {
        self.storage_failures = self.storage_failures.saturating_add(1);
        let refused = self.refusals.entry(shard).or_insert(0);
        *refused += 1;
        let refused = *refused;
        if refused >= self.manifest.max_storage_refusals {
            self.refusals.remove(&shard);
            return Some(format!(
                "the job's storage refused {what} {refused} times in a row (limits.max_storage_refusals): {message}"
            ));
        }
        let wait = 250u64 << self.storage_failures.saturating_sub(1).min(5);
        self.ledger.delay(shard, self.now() + wait);
        None
    }

    /// The last half, under the lock again, once the committer decided. It
    /// runs in the committer, not in the request, so that a client that hangs
    /// up cannot leave a marked shard uncommitted in the ledger, nor its
    /// commit unsaid in the log (the line the commit audit reads).
    pub(super) fn finish_commit(&mut self, marker: &Marker, decided: &Result<(), (StatusCode, String)>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        match decided {
            Ok(()) => say!(
                INFO,
                "shard {} committed (token {}, {} outputs)",
                marker.shard,
                marker.token,
                marker.outputs.len()
            ),
            Err((_, message)) => say!(WARN, "commit of shard {} refused: {message}", marker.shard),
        }
        let adopt = match decided {
            Ok(()) => Some(marker.clone()),
            // Someone's marker exists: that one is the truth, make the ledger
            // agree. (A log's winner is this master's own commit: its batch
            // brings it to the ledger.)
            Err((StatusCode::CONFLICT, _)) if !crate::commits::logged(&self.layout) => {
                self.layout.output.read_json::<Marker>(&self.layout.marker(marker.shard)).ok().flatten()
            }
            Err((StatusCode::SERVICE_UNAVAILABLE, message)) => {
                // The job's storage failed: its worker hands the shard back
                // (no attempt used).
                if let Some(error) = self.storage_refused(marker.shard, "this shard's commit", message)
                    && let Ok(event) = self.ledger.fail(marker.shard, marker.token, &error, false)
                {
                    say!(ERROR, "shard {} failed: {error}", marker.shard);
                    self.record(&event, true);
                }
                None
            }
            Err(_) => None,
        };
        if decided.is_ok() {
            self.storage_failures = 0;
            self.refusals.remove(&marker.shard);
            self.last_commit_at = self.now();
        }
        if let Some(m) = adopt {
            let already = matches!(
                self.ledger.shards().get(m.shard as usize).map(|r| &r.state),
                Some(ShardState::Committed { .. })
            );
            if !already && let Ok(event) = self.ledger.commit_marked(m.shard, m.token, m.outputs, m.quarantined) {
                // Not fsynced: the commit, already durable, is the truth on resume.
                self.record(&event, false);
                let bytes = self.manifest.plan.shards.get(m.shard as usize).map_or(0, |s| s.bytes);
                let t = self.now();
                if let Some(stats) = self.lease_ended(m.token) {
                    stats.committed += 1;
                    stats.committed_bytes += bytes;
                    stats.last_seen = stats.last_seen.max(t);
                }
            }
        }
    }
}

/// Committer threads: batches in flight at once.
pub(super) const COMMITTERS: usize = 2;

/// The most commits one batch decides.
const BATCH: usize = 1024;

/// The most commits queued for the committers; a commit request beyond them
/// waits for room (its worker waits for its answer anyway), so a burst of
/// commits holds at most this many decisions in memory.
pub(super) const QUEUED: usize = 4 * BATCH;

/// A commit waiting for the committer.
pub(super) struct CommitJob {
    pub(super) marker: Marker,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<(), (StatusCode, String)>>,
}

/// The committer: makes the commit decisions outside the master's lock, in
/// batches (group commit). With a local output, a batch's winners are
/// appended to the commit log with one write and one `fdatasync`; with an
/// object store, each marker is created if absent (conditional puts, in
/// parallel). Then the winners' outputs are published. One sync per batch
/// instead of files and syncs per shard is what lets a master keep up with
/// many workers.
pub(super) fn committer(layout: Layout, log: Option<Arc<CommitLog>>, jobs: CommitQueue, shared: Shared) {
    let (mut commits, mut batches, mut busy) = (0usize, 0usize, Duration::ZERO);
    loop {
        // Several committers share the queue, so that one decides a batch
        // (lists its staged outputs, publishes) while another's is syncing;
        // the log, or create-if-absent, still picks one winner per shard.
        let batch = {
            let Ok(mut jobs) = jobs.lock() else { return };
            let Some(first) = jobs.blocking_recv() else { return };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            batch
        };
        let started = std::time::Instant::now();
        let results = decide_batch(&layout, log.as_deref(), batch.iter().map(|j| &j.marker).collect());
        busy += started.elapsed();
        commits += batch.len();
        batches += 1;
        if batches.is_multiple_of(500) {
            say!(
                INFO,
                "committer: {commits} commits in {batches} batches, {:.1} ms each",
                busy.as_secs_f64() * 1e3 / batches as f64
            );
        }
        if let Ok(mut m) = shared.lock() {
            for (job, result) in batch.iter().zip(&results) {
                m.finish_commit(&job.marker, result);
            }
        }
        for (job, result) in batch.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }
}

/// The committers' end of the commit queue.
pub(super) type CommitQueue = Arc<Mutex<tokio::sync::mpsc::Receiver<CommitJob>>>;

fn decide_batch(
    layout: &Layout,
    log: Option<&CommitLog>,
    markers: Vec<&Marker>,
) -> Vec<Result<(), (StatusCode, String)>> {
    let unavailable = |e: std::io::Error| (StatusCode::SERVICE_UNAVAILABLE, format!("recording the commit: {e}"));
    // 1. Every staged output is there, with the size its worker reported (one
    //    listing per shard, outside the master's lock).
    let mut decided: Vec<Result<(), (StatusCode, String)>> = markers
        .iter()
        .map(|m| {
            let staging = layout.attempt_staging(m.shard, m.token);
            let listed: std::collections::BTreeMap<String, u64> = layout
                .output
                .list(&staging)
                .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, format!("listing the staged outputs: {e}")))?
                .into_iter()
                .collect();
            for out in &m.outputs {
                if listed.get(&format!("{staging}/{}/{}", file_name(&out.key), out.name)) != Some(&out.bytes) {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        format!("staged output {}/{} is missing or has the wrong size", out.key, out.name),
                    ));
                }
            }
            Ok(())
        })
        .collect();
    // 2. Exactly one winner per shard, durably: in the log (one write, one
    //    sync), or by creating each marker if absent. Before a commit is
    //    recorded its staged outputs are durable too (in a local output, one
    //    `syncfs` per batch that has any: the workers' files were written
    //    without a sync of their own).
    let mut which: Vec<usize> = (0..markers.len()).filter(|i| decided[*i].is_ok()).collect();
    if log.is_some()
        && which.iter().any(|i| !markers[*i].outputs.is_empty())
        && let Err(e) = layout.output.sync()
    {
        let why = format!("making the staged outputs durable: {e}");
        for i in which.drain(..) {
            decided[i] = Err((StatusCode::SERVICE_UNAVAILABLE, why.clone()));
        }
    }
    let claims: Vec<std::io::Result<Claim>> = match log {
        Some(log) => log.append(&which.iter().map(|i| markers[*i]).collect::<Vec<_>>()),
        None => create_markers(layout, &which.iter().map(|i| markers[*i]).collect::<Vec<_>>()),
    };
    for (i, claim) in which.into_iter().zip(claims) {
        let m = markers[i];
        decided[i] = match claim {
            Ok(Claim::Won | Claim::Ours) => Ok(()),
            Ok(Claim::Lost) => {
                let _ = layout.output.delete_prefix(&layout.attempt_staging(m.shard, m.token));
                Err((StatusCode::CONFLICT, format!("shard {} is already committed", m.shard)))
            }
            Err(e) => Err(unavailable(e)),
        };
    }
    // 3. Only now do the winners' outputs become visible; a staging goes only
    //    once its outputs are in place.
    for (m, r) in markers.iter().zip(&decided) {
        if r.is_ok() {
            match publish(layout, m) {
                Ok(()) => {
                    let _ = layout.output.delete_prefix(&layout.attempt_staging(m.shard, m.token));
                }
                // The marker is written: the commit stands, the staging stays,
                // and publication is tried again at the job's end and on resume.
                Err(e) => say!(ERROR, "shard {}: committed, but moving its outputs failed: {e}", m.shard),
            }
        }
    }
    decided
}

/// Creates each shard's marker if absent (an object store arbitrates), with
/// its content: a marker already there is this attempt's own (a retried
/// conditional put whose first try landed, its answer lost), or another's,
/// whose outputs are then made sure to be in place.
fn create_markers(layout: &Layout, markers: &[&Marker]) -> Vec<std::io::Result<Claim>> {
    let mut items = Vec::with_capacity(markers.len());
    for m in markers {
        match serde_json::to_vec_pretty(m) {
            Ok(bytes) => items.push((layout.marker(m.shard), bytes)),
            Err(e) => return markers.iter().map(|_| Err(std::io::Error::other(e.to_string()))).collect(),
        }
    }
    let created = layout.output.create_all(items);
    markers
        .iter()
        .zip(created)
        .map(|(m, created)| match created? {
            true => Ok(Claim::Won),
            false => match layout.output.read_json::<Marker>(&layout.marker(m.shard))? {
                Some(existing) if existing.token == m.token => Ok(Claim::Ours),
                Some(winner) => {
                    if let Err(e) = publish(layout, &winner) {
                        say!(WARN, "shard {}: publishing the committed attempt: {e}", winner.shard);
                    }
                    Ok(Claim::Lost)
                }
                // Not readable now: keep everything, the worker retries.
                None => Err(std::io::Error::other("the marker exists but cannot be read yet")),
            },
        })
        .collect()
}

/// Moves a committed shard's staged outputs into place (idempotent). An
/// item's outputs move with their directory in one rename where the store
/// allows (a local one, the item's directory not yet there); file by file
/// otherwise. Nothing may delete a committed attempt's staging while this
/// runs (a walk that had opened the item's directory would follow it into
/// place): stagings go after their publish, and the job's end drains the
/// committers before it removes the staging area.
pub(super) fn publish(layout: &Layout, marker: &Marker) -> std::io::Result<()> {
    let staging = layout.attempt_staging(marker.shard, marker.token);
    let mut by_item: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
    for out in &marker.outputs {
        by_item.entry(out.key.as_str()).or_default().push(out.name.as_str());
    }
    for (key, names) in by_item {
        let whole = names.iter().all(|n| !n.contains('/'))
            && layout.output.rename_dir_holding(
                &format!("{staging}/{}", file_name(key)),
                &layout.map_item_dir(key),
                &names,
            )?;
        if !whole {
            for name in names {
                layout.output.rename(&format!("{staging}/{}/{name}", file_name(key)), &layout.map_output(key, name))?;
            }
        }
    }
    Ok(())
}

/// Reads the job's commits back for a restarted master and finishes any
/// publication a crash interrupted: a bad end of the log (the batch the last
/// master was writing) is cut off, and a commit whose outputs are neither
/// staged nor in place (its worker dropped the staging when the master died
/// before answering) is removed, so that the shard runs again: nothing of it
/// was visible, and losing it is not an option.
pub fn recover(layout: &Layout) -> std::io::Result<Vec<Marker>> {
    let logged = match crate::commits::recover_log(layout)? {
        Some(recovered) => {
            if let Some(cut) = &recovered.cut {
                say!(WARN, "the commit log's end was cut off: {cut}");
            }
            recovered.markers
        }
        None => Vec::new(),
    };
    let in_log: std::collections::HashSet<u32> = logged.iter().map(|m| m.shard).collect();
    let mut all = crate::commits::read(layout)?;
    let mut gone = std::collections::HashSet::new();
    all.retain(|marker| {
        let staging = layout.attempt_staging(marker.shard, marker.token);
        match publish(layout, marker) {
            Ok(()) => {
                let _ = layout.output.delete_prefix(&staging);
                true
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                // A transient failure (permissions, space): keep the commit and
                // say so; publication is tried again at the next start.
                say!(WARN, "finishing the publication of shard {}: {e}", marker.shard);
                true
            }
            Err(e) => {
                // Committed, but its outputs are neither staged nor in place:
                // nothing of it is visible, so it is safe, and necessary, to
                // run it again rather than to lose it.
                say!(
                    WARN,
                    "shard {} was marked committed but its outputs are gone ({e}); it will run again",
                    marker.shard
                );
                if !in_log.contains(&marker.shard) {
                    let _ = layout.output.delete(&layout.marker(marker.shard));
                }
                for out in &marker.outputs {
                    let _ = layout.output.delete(&layout.map_output(&out.key, &out.name));
                }
                gone.insert(marker.shard);
                false
            }
        }
    });
    if gone.iter().any(|s| in_log.contains(s)) {
        let kept: Vec<Marker> = logged.into_iter().filter(|m| !gone.contains(&m.shard)).collect();
        crate::commits::rewrite_log(layout, &kept)?;
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use mayfly_data::provider::ProviderHandle;

    fn marker(shard: u32, token: u64, key: &str) -> Marker {
        let outputs = vec![CommittedOutput { key: key.into(), name: "c.tsv".into(), bytes: 2 }];
        Marker { job: "j".into(), shard, token, outputs, quarantined: Vec::new() }
    }

    fn stage(layout: &Layout, m: &Marker, content: &[u8]) {
        let key = format!("{}/{}/c.tsv", layout.attempt_staging(m.shard, m.token), m.outputs[0].key);
        layout.output.put(&key, content.to_vec()).unwrap();
    }

    /// The same job laid out on local directories and on `file://` URLs
    /// (the object-store client every remote location goes through).
    fn layouts(dir: &Path) -> Vec<Layout> {
        let local = Layout::local(&dir.join("state"), "j", &dir.join("out"));
        let url =
            |d: &str| mayfly_data::store::Location::parse(&format!("file://{}", dir.join(d).display()), dir).unwrap();
        let provider = ProviderHandle::select(&Default::default()).unwrap();
        let remote = Layout::open(&url("rstate/j"), "j", &url("rout"), &provider, "master").unwrap();
        vec![local, remote]
    }

    fn read(layout: &Layout, key: &str) -> Vec<u8> {
        layout.output.get(key).unwrap().unwrap_or_default()
    }

    /// The layout's commit log, if its output is local.
    fn log(layout: &Layout, committed: &[Marker]) -> Option<CommitLog> {
        CommitLog::open(layout, crate::commits::lock(layout).unwrap(), committed).unwrap()
    }

    fn committed(layout: &Layout, shard: u32) -> Option<u64> {
        crate::commits::of(layout, shard).unwrap().map(|m| m.token)
    }

    #[test]
    fn a_batch_commits_one_winner_per_shard_and_publishes_only_winners() {
        let dir = tempfile::tempdir().unwrap();
        for layout in layouts(dir.path()) {
            let log = log(&layout, &[]);
            let log = log.as_ref();
            let (a, b, c) = (marker(0, 7, "a.txt"), marker(0, 8, "a.txt"), marker(1, 9, "b.txt"));
            stage(&layout, &a, b"aa");
            stage(&layout, &b, b"bb");
            stage(&layout, &c, b"cc");
            let results = decide_batch(&layout, log, vec![&a, &b, &c]);
            // Two claims on shard 0 in one batch (decided concurrently on an
            // object store): exactly one wins, and only its outputs are visible.
            let codes: Vec<Option<StatusCode>> = results.iter().map(|r| r.as_ref().err().map(|e| e.0)).collect();
            let (winner, loser, content): (u64, u64, &[u8]) = match (&codes[0], &codes[1]) {
                (None, Some(StatusCode::CONFLICT)) => (7, 8, b"aa"),
                (Some(StatusCode::CONFLICT), None) => (8, 7, b"bb"),
                other => {
                    panic!("{}: one winner and one conflict, not {other:?} ({results:?})", layout.output.location())
                }
            };
            assert!(results[2].is_ok());
            assert_eq!(read(&layout, &layout.map_output("a.txt", "c.tsv")), content, "the winner's, only");
            assert_eq!(read(&layout, &layout.map_output("b.txt", "c.tsv")), b"cc");
            assert!(
                layout.output.list(&layout.attempt_staging(0, loser)).unwrap().is_empty(),
                "the loser's staging goes"
            );
            assert_eq!(committed(&layout, 0), Some(winner));
            // A later commit of a committed shard is refused too.
            let late = marker(1, 10, "b.txt");
            stage(&layout, &late, b"zz");
            assert_eq!(decide_batch(&layout, log, vec![&late])[0].as_ref().unwrap_err().0, StatusCode::CONFLICT);
            assert_eq!(read(&layout, &layout.map_output("b.txt", "c.tsv")), b"cc");
            // A commit whose staged output is missing or of another size is refused.
            let short = marker(2, 11, "c.txt");
            stage(&layout, &short, b"z");
            assert_eq!(decide_batch(&layout, log, vec![&short])[0].as_ref().unwrap_err().0, StatusCode::BAD_REQUEST);
            assert_eq!(committed(&layout, 2), None);
            // Where the output is local, the commits are one log and no markers.
            assert_eq!(log.is_some(), layout.output.local_dir().is_some());
            assert_eq!(layout.output.list(layout.markers()).unwrap().is_empty(), log.is_some());
        }
    }

    #[test]
    fn a_marker_already_there_is_adopted_if_ours_and_published_if_another_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let layout = layouts(dir.path()).pop().expect("the object store's layout");
        // A retried conditional put whose first try landed: the marker is ours.
        let ours = marker(0, 7, "a.txt");
        stage(&layout, &ours, b"aa");
        layout.output.write_json(&layout.marker(0), &ours).unwrap();
        assert!(decide_batch(&layout, None, vec![&ours])[0].is_ok(), "our own marker is our commit");
        assert_eq!(read(&layout, &layout.map_output("a.txt", "c.tsv")), b"aa");
        // Another attempt's marker whose outputs are still staged: a later
        // attempt loses, and the winner's outputs are put in place.
        let (winner, late) = (marker(1, 8, "b.txt"), marker(1, 9, "b.txt"));
        stage(&layout, &winner, b"bb");
        layout.output.write_json(&layout.marker(1), &winner).unwrap();
        stage(&layout, &late, b"zz");
        assert_eq!(decide_batch(&layout, None, vec![&late])[0].as_ref().unwrap_err().0, StatusCode::CONFLICT);
        assert_eq!(read(&layout, &layout.map_output("b.txt", "c.tsv")), b"bb");
        assert!(layout.output.list(&layout.attempt_staging(1, 9)).unwrap().is_empty());
    }

    #[test]
    fn an_older_mayflys_markers_in_a_local_output_are_commits_the_log_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let layout = layouts(dir.path()).remove(0);
        let (winner, late) = (marker(1, 8, "b.txt"), marker(1, 9, "b.txt"));
        stage(&layout, &winner, b"bb");
        layout.output.write_json(&layout.marker(1), &winner).unwrap();
        let recovered = recover(&layout).unwrap();
        assert_eq!(recovered, vec![winner.clone()]);
        assert_eq!(read(&layout, &layout.map_output("b.txt", "c.tsv")), b"bb", "published on recovery");
        let log = log(&layout, &recovered);
        stage(&layout, &late, b"zz");
        assert_eq!(decide_batch(&layout, log.as_ref(), vec![&late])[0].as_ref().unwrap_err().0, StatusCode::CONFLICT);
        assert_eq!(read(&layout, &layout.map_output("b.txt", "c.tsv")), b"bb");
        assert_eq!(committed(&layout, 1), Some(8));
    }

    #[test]
    fn recovery_publishes_staged_outputs_and_reopens_lost_ones() {
        let dir = tempfile::tempdir().unwrap();
        for layout in layouts(dir.path()) {
            // Shard 0: committed, outputs still staged (the master died before publishing).
            let staged = marker(0, 7, "a.txt");
            stage(&layout, &staged, b"ok");
            // Shard 1: committed, outputs gone everywhere.
            let lost = marker(1, 8, "b.txt");
            match log(&layout, &[]) {
                Some(log) => assert!(log.append(&[&staged, &lost]).iter().all(|c| c.is_ok())),
                None => {
                    layout.output.write_json(&layout.marker(0), &staged).unwrap();
                    layout.output.write_json(&layout.marker(1), &lost).unwrap();
                }
            }

            let kept = recover(&layout).unwrap();
            assert_eq!(kept.iter().map(|m| m.shard).collect::<Vec<_>>(), vec![0]);
            assert_eq!(read(&layout, &layout.map_output("a.txt", "c.tsv")), b"ok");
            assert!(layout.output.list(&layout.attempt_staging(0, 7)).unwrap().is_empty());
            assert_eq!(committed(&layout, 1), None, "the lost shard is reopened");
            assert_eq!(crate::commits::read(&layout).unwrap(), kept, "{}", layout.output.location());
        }
    }
}
