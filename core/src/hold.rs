//! Operator holds: `mayfly hold` keeps a worker (or every worker of a job)
//! alive and idle for debugging, `mayfly release` lets it go.
//!
//! A hold lives in the job's state (`holds/<node>.json`, `holds/job.json` for
//! the whole job) until it is released; every hold and release is also
//! recorded in `holds/log/` with who asked and until when. The CLI tells the
//! master at once (`POST /v1/holds`), which stops leasing to held workers and
//! tells a held worker in its heartbeat answers, so it hands its shard back at
//! the next item; a held worker whose master is gone reads the state itself.
//! A hold never outlives the job's deadline: it is cut to it when asked, and
//! the deadline (and the dead-man switch) ends a held node as any other.
//!
//! In `mayfly-core`'s flow (`core/tests/flow.rs` checks it) it must not import `master`
//! or `worker`, or anything above, nor its peers `reduce` and `attempt`; like its crate,
//! it must not import `mayfly-ops` or the binary.

use serde::{Deserialize, Serialize};

use crate::job::Layout;
use mayfly_model::policy::Millis;

/// The whole job's hold: every worker.
pub const WHOLE_JOB: &str = "job";

/// A hold, as the state keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The node held, or [`WHOLE_JOB`].
    pub node: String,
    /// When the hold ends on its own (never after the job's deadline).
    pub until: Millis,
    /// Who asked (`user@host`).
    pub asked_by: String,
    /// When.
    pub asked_at: Millis,
    /// How long was asked for, in ms.
    pub asked_ms: u64,
    /// Whether it was cut to the job's deadline.
    pub cut_to_deadline: bool,
}

/// One line of the holds' history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRecord {
    /// `hold` or `release`.
    pub action: String,
    /// The node, or [`WHOLE_JOB`].
    pub node: String,
    /// Who asked.
    pub by: String,
    /// When.
    pub at: Millis,
    /// Until when (a hold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Millis>,
}

/// When a hold asked at `now` for `asked_ms` ends: never after `expires_at`.
/// Returns the end and whether it was cut.
pub fn hold_end(now: Millis, asked_ms: u64, expires_at: Millis) -> (Millis, bool) {
    let wanted = now.saturating_add(asked_ms);
    if wanted > expires_at { (expires_at, true) } else { (wanted, false) }
}

fn key(node: &str) -> String {
    format!("holds/{node}.json")
}

/// Why a hold could not be put, released or read.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// Not a node's name (holds are files named after their node).
    #[error("{0:?} is not a node name (like worker-1)")]
    NodeName(String),
    /// The job's state refused a read, a write or a listing.
    #[error("{doing} {at}: {source}")]
    State {
        /// What was being done ("writing the hold to").
        doing: String,
        /// Where, in the state.
        at: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl HoldError {
    fn state(doing: impl Into<String>, at: impl Into<String>) -> impl FnOnce(std::io::Error) -> HoldError {
        let (doing, at) = (doing.into(), at.into());
        move |source| HoldError::State { doing, at, source }
    }
}

/// Whether `name` can name a held node (a file name in the state).
pub fn check_node_name(name: &str) -> Result<(), HoldError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(HoldError::NodeName(name.to_owned()));
    }
    Ok(())
}

fn record(layout: &Layout, r: &HoldRecord) -> Result<(), HoldError> {
    let key = format!("holds/log/{}-{}-{}.json", r.at, r.node, r.action);
    layout
        .state
        .write_json(&key, r)
        .map_err(HoldError::state(format!("recording the {} in", r.action), layout.state.display(&key)))
}

/// Puts `node` (or the whole job) on hold until `until`, and records who asked.
pub fn put(layout: &Layout, hold: &Hold) -> Result<(), HoldError> {
    check_node_name(&hold.node)?;
    layout
        .state
        .write_json(&key(&hold.node), hold)
        .map_err(HoldError::state("writing the hold to", layout.state.display(&key(&hold.node))))?;
    record(
        layout,
        &HoldRecord {
            action: "hold".into(),
            node: hold.node.clone(),
            by: hold.asked_by.clone(),
            at: hold.asked_at,
            until: Some(hold.until),
        },
    )
}

/// Ends the holds of `node` (or, with `None`, every hold of the job);
/// returns the nodes whose hold ended.
pub fn release(layout: &Layout, node: Option<&str>, by: &str, now: Millis) -> Result<Vec<String>, HoldError> {
    let held: Vec<String> = all(layout)?.into_iter().map(|h| h.node).filter(|n| node.is_none_or(|x| x == n)).collect();
    for n in &held {
        layout.state.delete(&key(n)).map_err(HoldError::state("removing the hold", layout.state.display(&key(n))))?;
        record(
            layout,
            &HoldRecord { action: "release".into(), node: n.clone(), by: by.to_owned(), at: now, until: None },
        )?;
    }
    Ok(held)
}

/// Every hold in the state, expired or not.
pub fn all(layout: &Layout) -> Result<Vec<Hold>, HoldError> {
    let listed = match layout.state.list("holds") {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HoldError::state("listing the holds in", layout.state.display("holds"))(e)),
    };
    let mut holds = Vec::new();
    for (k, _) in listed.into_iter().filter(|(k, _)| k.ends_with(".json") && k.matches('/').count() == 1) {
        // Released meanwhile: gone. Unreadable: an error, never "not held".
        match layout.state.read_json::<Hold>(&k) {
            Ok(Some(h)) => holds.push(h),
            Ok(None) => {}
            Err(e) => return Err(HoldError::state("reading the hold", layout.state.display(&k))(e)),
        }
    }
    Ok(holds)
}

/// The holds' history, oldest first.
pub fn history(layout: &Layout) -> Vec<HoldRecord> {
    let mut records: Vec<HoldRecord> = layout
        .state
        .list("holds/log")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, _)| layout.state.read_json::<HoldRecord>(&k).ok().flatten())
        .collect();
    records.sort_by_key(|r| r.at);
    records
}

/// Whether `node` has a hold of its own (not only the whole job's) that
/// ends at `until`.
pub fn own_hold(holds: &[Hold], node: &str, until: Millis) -> bool {
    holds.iter().any(|h| h.node == node && h.until == until)
}

/// Until when `node` is held at `now` by any of `holds` (its own or the
/// whole job's), if it is.
pub fn held_until(holds: &[Hold], node: &str, now: Millis) -> Option<Millis> {
    holds.iter().filter(|h| (h.node == node || h.node == WHOLE_JOB) && h.until > now).map(|h| h.until).max()
}

/// Who is asking: `user@host`, for the record.
pub fn asker() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    if host.is_empty() { user } else { format!("{user}@{host}") }
}

/// Where a held node keeps what it had: `<work>/held/<node>/`.
pub fn kept_dir(layout: &Layout, node: &str) -> std::path::PathBuf {
    layout.work.join("held").join(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_is_cut_to_the_deadline() {
        assert_eq!(hold_end(1000, 500, 10_000), (1500, false));
        assert_eq!(hold_end(1000, 9000, 10_000), (10_000, false));
        assert_eq!(hold_end(1000, 3_600_000, 10_000), (10_000, true));
        assert_eq!(hold_end(1000, u64::MAX, 10_000), (10_000, true));
    }

    #[test]
    fn a_node_is_held_by_its_own_hold_or_the_jobs_while_they_last() {
        let hold = |node: &str, until| Hold {
            node: node.into(),
            until,
            asked_by: "me".into(),
            asked_at: 0,
            asked_ms: until,
            cut_to_deadline: false,
        };
        let holds = vec![hold("worker-1", 100), hold(WHOLE_JOB, 50)];
        assert_eq!(held_until(&holds, "worker-1", 10), Some(100));
        assert_eq!(held_until(&holds, "worker-2", 10), Some(50));
        assert_eq!(held_until(&holds, "worker-2", 50), None, "expired");
        assert_eq!(held_until(&holds, "worker-1", 100), None);
        assert!(check_node_name("worker-1").is_ok());
        assert!(matches!(check_node_name("../x"), Err(HoldError::NodeName(n)) if n == "../x"));
        assert!(check_node_name("").is_err());
    }
}
