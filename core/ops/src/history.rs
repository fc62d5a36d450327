//! A job's history as an operator reads it, from what outlives its nodes in
//! the state location: the node logs (the time, level and shard of each line)
//! and the master's journal (every attempt: which node, when, how it ended).
//! `mayfly logs`, `status` and `report` are drawn from here.
//!
//! In `mayfly-ops`'s flow (`core/tests/flow.rs` checks it) no module is above it, but it
//! must not import its peer `conformance`; like its crate, it must not import the binary.

use std::collections::HashMap;

use crate::report::{AttemptEnd, Report, ReportAttempt, ReportFailure, ReportShard};
use mayfly_core::host::Level;
use mayfly_core::job::{Layout, Manifest, keys};
use mayfly_core::ledger::Event;
use mayfly_core::master::{Entry, FinalState, parse_entries};
use mayfly_model::policy::Millis;

/// One line of a node's log, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine<'a> {
    /// The node that wrote it.
    pub node: &'a str,
    /// When (ms since the epoch), for lines that say.
    pub at: Option<Millis>,
    /// How severe: a task line's own level; a node's line says it (older
    /// lines, and a panic's, are read as `INFO` and `ERROR`).
    pub level: Level,
    /// The shard it is about, if any.
    pub shard: Option<u32>,
    /// The line for people: as written, or a JSON line as its text line.
    pub text: std::borrow::Cow<'a, str>,
    /// The line as written.
    pub raw: &'a str,
}

impl LogLine<'_> {
    /// The line as one JSON object (`mayfly logs --json`): a JSON line as
    /// written, with its `node`; a text line's time, level, node, shard,
    /// who spoke and message.
    pub fn json(&self) -> serde_json::Value {
        use serde_json::Value;
        if self.raw.starts_with('{')
            && let Ok(Value::Object(mut object)) = serde_json::from_str::<Value>(self.raw)
        {
            object.entry("node").or_insert_with(|| Value::from(self.node));
            return Value::Object(object);
        }
        let mut object = serde_json::Map::new();
        if let Some(at) = self.at {
            object.insert("ts".into(), Value::from(at));
        }
        object.insert("level".into(), Value::from(self.level.to_string()));
        object.insert("node".into(), Value::from(self.node));
        if let Some(shard) = self.shard {
            object.insert("shard".into(), Value::from(shard));
        }
        // `<ms> <LEVEL> <who>: <message>`: who spoke, and what it said.
        let said = self.at.and_then(|_| self.raw.splitn(3, ' ').nth(2)).and_then(|rest| rest.split_once(": "));
        match said {
            Some((who, message)) if !who.contains(' ') || who.starts_with("provider ") => {
                object.insert("who".into(), Value::from(who));
                object.insert("message".into(), Value::from(message));
            }
            _ => {
                object.insert("message".into(), Value::from(self.raw));
            }
        }
        Value::Object(object)
    }
}

/// Parses a level name (`INFO`, `warn`, ...).
pub fn parse_level(s: &str) -> Option<Level> {
    Some(match s.to_ascii_uppercase().as_str() {
        "TRACE" => Level::Trace,
        "DEBUG" => Level::Debug,
        "INFO" => Level::Info,
        "WARN" | "WARNING" => Level::Warn,
        "ERROR" => Level::Error,
        _ => return None,
    })
}

/// The first `shard N` in `text`.
fn shard_in(text: &str) -> Option<u32> {
    let mut rest = text;
    while let Some(i) = rest.find("shard ") {
        let digits: String = rest[i + 6..].chars().take_while(char::is_ascii_digit).collect();
        let boundary = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
        if boundary && !digits.is_empty() {
            return digits.parse().ok();
        }
        rest = &rest[i + 6..];
    }
    None
}

/// Reads one line of node `node`'s log. Node lines are
/// `<ms> <LEVEL> <node>: <text>`; task lines `[shard N item] <LEVEL> <text>`
/// (`[shard N] ...` for the task's `start` and `finish`); or either as one
/// JSON object (`log_format = "json"`).
pub fn parse_line<'a>(node: &'a str, text: &'a str) -> LogLine<'a> {
    if text.starts_with('{')
        && let Some(line) = parse_json_line(node, text)
    {
        return line;
    }
    let mut line = LogLine { node, at: None, level: Level::Info, shard: None, text: text.into(), raw: text };
    let mut rest = text;
    if let Some((first, after)) = text.split_once(' ')
        && first.len() >= 12
        && first.bytes().all(|b| b.is_ascii_digit())
    {
        line.at = first.parse().ok();
        rest = after;
        if let Some((word, after)) = rest.split_once(' ')
            && let Some(level) = parse_level(word)
        {
            line.level = level;
            rest = after;
        }
    } else if let Some(after) = text.strip_prefix("[shard ") {
        line.shard = after.split([' ', ']']).next().and_then(|n| n.parse().ok());
        if let Some((_, task_line)) = after.split_once("] ")
            && let Some(level) = task_line.split_whitespace().next().and_then(parse_level)
        {
            line.level = level;
        }
        return line;
    } else if text.starts_with("error") || text.contains("panicked at") {
        line.level = Level::Error;
    }
    line.shard = shard_in(rest);
    line
}

/// A JSON line (`mayfly_data::nodelog`'s): its time, level and shard from
/// its fields, and its text as the text line would have been.
fn parse_json_line<'a>(node: &'a str, raw: &'a str) -> Option<LogLine<'a>> {
    let value: serde_json::Value = serde_json::from_str(raw).ok()?;
    let text = mayfly_data::nodelog::json_to_text(raw)?;
    let level = value.get("level").and_then(|l| l.as_str()).and_then(parse_level).unwrap_or(Level::Info);
    // A task's line is about its shard; a node's line, as in text, about the
    // shard its message names (the attempt's span, which every line of the
    // attempt carries in JSON, would also take in a credential refresh).
    let shard = match value.get("source").and_then(|s| s.as_str()) {
        Some("task") => value.get("shard").and_then(serde_json::Value::as_u64).and_then(|s| u32::try_from(s).ok()),
        _ => value.get("message").and_then(|m| m.as_str()).and_then(shard_in),
    };
    Some(LogLine {
        node,
        at: value.get("ts").and_then(serde_json::Value::as_u64),
        level,
        shard,
        text: text.into(),
        raw,
    })
}

/// Which lines `mayfly logs` shows.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Only this node.
    pub node: Option<String>,
    /// Only lines about this shard.
    pub shard: Option<u32>,
    /// Only lines at least this severe.
    pub level: Option<Level>,
}

impl LogFilter {
    /// Whether this filter shows `line`.
    pub fn shows(&self, line: &LogLine<'_>) -> bool {
        self.node.as_deref().is_none_or(|n| n == line.node)
            && self.shard.is_none_or(|s| line.shard == Some(s))
            && self.level.is_none_or(|l| line.level >= l)
    }
}

/// The node logs of a job: (node name, its state key), master first, then
/// the workers in their order (worker-2 before worker-10).
pub fn log_keys(layout: &Layout) -> Result<Vec<(String, String)>, String> {
    let listed = layout.state.list(keys::LOGS).map_err(|e| e.to_string())?;
    let mut files: Vec<(String, String)> = listed
        .into_iter()
        .filter_map(|(key, _)| {
            let name = key.strip_prefix(&format!("{}/", keys::LOGS))?.strip_suffix(".log")?.to_owned();
            (!name.contains('/')).then_some((name, key))
        })
        .collect();
    files.sort_by_key(|(name, _)| node_order(name));
    Ok(files)
}

/// Sorts `master` first, then `worker-N` by N, then the rest by name.
pub fn node_order(name: &str) -> (u8, u64, String) {
    match name.strip_prefix("worker-").and_then(|n| n.parse::<u64>().ok()) {
        _ if name == "master" => (0, 0, String::new()),
        Some(n) => (1, n, String::new()),
        None => (2, 0, name.to_owned()),
    }
}

/// The journal's entries, from the state location.
pub fn journal(layout: &Layout) -> Vec<Entry> {
    match layout.state.get(keys::JOURNAL) {
        Ok(Some(bytes)) => parse_entries(bytes.as_slice()),
        _ => Vec::new(),
    }
}

/// One attempt, as the journal tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The shard.
    pub shard: u32,
    /// Its number (1 for the first).
    pub attempt: u32,
    /// The worker.
    pub node: String,
    /// Its fencing token.
    pub token: u64,
    /// When it was leased (None in journals without times).
    pub start: Option<Millis>,
    /// When it ended, if it did.
    pub end: Option<Millis>,
    /// How.
    pub outcome: AttemptEnd,
    /// Why it failed or was lost.
    pub error: Option<String>,
}

/// Every attempt in the journal, in the order they were leased.
pub fn attempts(entries: &[Entry]) -> Vec<Attempt> {
    let mut out: Vec<Attempt> = Vec::new();
    let mut by_token: HashMap<u64, usize> = HashMap::new();
    for entry in entries {
        let mut end = |token: &u64, outcome: AttemptEnd, error: Option<&String>| {
            if let Some(&i) = by_token.get(token) {
                let a = &mut out[i];
                a.end = entry.at;
                a.outcome = outcome;
                a.error = error.cloned();
            }
        };
        match &entry.event {
            Event::Lease { shard, worker, token, attempt } => {
                by_token.insert(*token, out.len());
                out.push(Attempt {
                    shard: *shard,
                    attempt: *attempt,
                    node: worker.clone(),
                    token: *token,
                    start: entry.at,
                    end: None,
                    outcome: AttemptEnd::Unfinished,
                    error: None,
                });
            }
            Event::AttemptFailed { token, error, final_failure, .. } => {
                let outcome = if error.starts_with("lease expired") {
                    AttemptEnd::Lost
                } else if *final_failure {
                    AttemptEnd::Failed
                } else {
                    AttemptEnd::Retried
                };
                end(token, outcome, Some(error));
            }
            Event::Released { token, .. } => end(token, AttemptEnd::Released, None),
            Event::Committed { token, .. } => end(token, AttemptEnd::Committed, None),
        }
    }
    out
}

/// Collects a job's report: its plan, journal, end and the log lines of its
/// failed shards, as its state location holds them.
pub fn collect(layout: &Layout, manifest: &Manifest, now: Millis) -> Report {
    let fin: Option<FinalState> = layout.state.read_json(keys::FINAL).ok().flatten();
    let map_shards = manifest.plan.shards.len() as u32;
    let entries = journal(layout);
    let attempts = attempts(&entries);
    // A shard's state: from the end if there is one, else from the journal.
    let mut state: Vec<&str> = vec!["pending"; manifest.plan.shards.len()];
    for a in &attempts {
        if let Some(s) = state.get_mut(a.shard as usize) {
            *s = match a.outcome {
                AttemptEnd::Committed => "committed",
                AttemptEnd::Failed => "failed",
                AttemptEnd::Unfinished => "leased",
                _ if *s == "committed" => "committed",
                _ => "pending",
            };
        }
    }
    if let Some(fin) = &fin {
        for (shard, _) in &fin.failed {
            if let Some(s) = state.get_mut(*shard as usize) {
                *s = "failed";
            }
        }
    }
    let shards: Vec<ReportShard> = manifest
        .plan
        .shards
        .iter()
        .map(|s| ReportShard {
            id: s.id,
            bytes: s.bytes,
            items: s.items.len(),
            state: state.get(s.id as usize).copied().unwrap_or("pending").to_owned(),
        })
        .collect();
    let committed_bytes = shards.iter().filter(|s| s.state == "committed").map(|s| s.bytes).sum();
    let count = |what: &str| shards.iter().filter(|s| s.state == what).count() as u32;

    // The failed shards' own lines, from every node's log.
    let failed: Vec<(u32, String)> = match &fin {
        Some(fin) => fin.failed.clone(),
        None => attempts
            .iter()
            .filter(|a| a.outcome == AttemptEnd::Failed)
            .map(|a| (a.shard, a.error.clone().unwrap_or_default()))
            .collect(),
    };
    let mut nodes: Vec<String> = vec!["master".to_owned()];
    let mut logs: Vec<(String, String)> = Vec::new();
    if let Ok(keys) = log_keys(layout) {
        for (node, key) in keys {
            // The logs are read only for the failures' lines.
            if !failed.is_empty()
                && let Ok(Some(bytes)) = layout.state.get(&key)
            {
                logs.push((node.clone(), String::from_utf8_lossy(&bytes).into_owned()));
            }
            if !nodes.contains(&node) {
                nodes.push(node);
            }
        }
    }
    for a in &attempts {
        if !nodes.contains(&a.node) {
            nodes.push(a.node.clone());
        }
    }
    nodes.sort_by_key(|n| node_order(n));
    let failures = failed
        .iter()
        .map(|(shard, error)| {
            let filter = LogFilter { shard: Some(*shard), ..LogFilter::default() };
            let log = logs
                .iter()
                .flat_map(|(node, text)| text.lines().map(move |l| parse_line(node, l)))
                .filter(|l| filter.shows(l))
                .take(200)
                .map(|l| format!("{}: {}", l.node, l.text))
                .collect();
            ReportFailure { shard: *shard, error: error.clone(), log }
        })
        .collect();
    let (outcome, ended_at) = match &fin {
        Some(fin) => (fin.reason.clone(), Some(fin.ended_at)),
        None if now > manifest.expires_at => ("lost".to_owned(), None),
        None => ("running".to_owned(), None),
    };
    Report {
        job: manifest.job.clone(),
        name: manifest.name.clone(),
        provider: manifest.provider.label(),
        task: manifest.task.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        created_at: manifest.created_at,
        expires_at: manifest.expires_at,
        ended_at,
        outcome,
        workers: manifest.workers,
        objects: manifest.plan.objects,
        total_bytes: manifest.plan.total_bytes,
        committed_bytes,
        committed: fin.as_ref().map_or_else(|| count("committed"), |f| f.counts.committed),
        failed: fin.as_ref().map_or_else(|| count("failed"), |f| f.counts.failed),
        pending: fin
            .as_ref()
            .map_or_else(|| count("pending") + count("leased"), |f| f.counts.pending + f.counts.leased),
        retries: attempts.iter().filter(|a| matches!(a.outcome, AttemptEnd::Retried | AttemptEnd::Lost)).count() as u32,
        outputs: fin.as_ref().map_or(0, |f| f.outputs.len()),
        quarantined: fin
            .as_ref()
            .map(|f| f.quarantined.iter().map(|(s, q)| (*s, q.key.clone(), q.error.clone())).collect())
            .unwrap_or_default(),
        reduce_error: fin.as_ref().and_then(|f| f.reduce_error.clone()),
        reduce: (manifest.partitions() > 0).then(|| {
            let done = (map_shards..map_shards + manifest.partitions())
                .filter(|&p| attempts.iter().any(|a| a.shard == p && a.outcome == AttemptEnd::Committed))
                .count() as u32;
            (done, manifest.partitions())
        }),
        nodes,
        shards,
        attempts: attempts
            .iter()
            .filter_map(|a| {
                Some(ReportAttempt {
                    shard: a.shard,
                    attempt: a.attempt,
                    node: a.node.clone(),
                    start: a.start?,
                    end: a.end,
                    outcome: a.outcome,
                    error: a.error.clone(),
                    reduce_partition: a.shard.checked_sub(map_shards).filter(|_| manifest.partitions() > 0),
                })
            })
            .collect(),
        failures,
        generated_at: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lines_give_their_time_level_and_shard() {
        let l = parse_line("worker-1", "1795796998960 WARN worker-1: shard 12 failed: boom");
        assert_eq!((l.at, l.level, l.shard), (Some(1_795_796_998_960), Level::Warn, Some(12)));
        let l = parse_line("master", "1795796998960 INFO master: listening on 127.0.0.1:4000");
        assert_eq!((l.level, l.shard), (Level::Info, None));
        // Written before levels were: a time, then the text.
        let l = parse_line("worker-1", "1795796998960 worker-1: shard 3 attempt 1: 5 items");
        assert_eq!((l.at, l.level, l.shard), (Some(1_795_796_998_960), Level::Info, Some(3)));
        // "reshard 4" is not shard 4.
        assert_eq!(parse_line("m", "1795796998960 INFO m: reshard 4").shard, None);
    }

    #[test]
    fn task_lines_give_their_shard_and_the_tasks_level() {
        let l = parse_line("worker-2", "[shard 7 a/b.txt#0-10]  WARN odd line skipped line=3");
        assert_eq!((l.at, l.level, l.shard), (None, Level::Warn, Some(7)));
        let l = parse_line("worker-2", "[shard 7 a.txt] ERROR broken");
        assert_eq!(l.level, Level::Error);
        // JSON lines: a task's line is about its shard; a node's, as in text,
        // about the shard its message names, not the attempt it ran in.
        let task = r#"{"attempt":1,"item":"a.txt","level":"WARN","message":"odd","node":"worker-2","shard":7,"source":"task","ts":1795796998960}"#;
        let l = parse_line("worker-2", task);
        assert_eq!((l.shard, l.level, l.at), (Some(7), Level::Warn, Some(1_795_796_998_960)));
        assert_eq!(l.text, "[shard 7 a.txt]  WARN odd");
        let node = r#"{"attempt":1,"level":"INFO","message":"credentials refreshed","node":"worker-2","shard":7,"source":"node","ts":1795796998960}"#;
        let l = parse_line("worker-2", node);
        assert_eq!((l.shard, l.text.as_ref()), (None, "1795796998960 INFO worker-2: credentials refreshed"));
        assert_eq!(l.json()["shard"], 7, "--json keeps the span's shard");
        let node = node.replace("credentials refreshed", "shard 3 committed");
        assert_eq!(parse_line("worker-2", &node).shard, Some(3));
        // The task's `start` and `finish` lines name the shard alone.
        let l = parse_line("worker-2", "[shard 12]  INFO Map done distinct=3");
        assert_eq!((l.level, l.shard), (Level::Info, Some(12)));
        let l = parse_line("worker-2", "thread 'main' panicked at src/x.rs:1:1");
        assert_eq!(l.level, Level::Error);
    }

    #[test]
    fn the_filter_takes_node_shard_and_level_together() {
        let warn = parse_line("worker-1", "1795796998960 WARN worker-1: shard 12 failed: boom");
        let info = parse_line("worker-2", "1795796998960 INFO worker-2: shard 12 attempt 2: 1 items");
        let f = LogFilter { shard: Some(12), level: Some(Level::Warn), node: None };
        assert!(f.shows(&warn) && !f.shows(&info));
        let f = LogFilter { node: Some("worker-2".into()), ..LogFilter::default() };
        assert!(!f.shows(&warn) && f.shows(&info));
        assert!(!LogFilter { shard: Some(1), ..LogFilter::default() }.shows(&warn));
    }

    #[test]
    fn attempts_are_joined_by_token_with_their_times_and_ends() {
        let e = |at, event| Entry { at: Some(at), event };
        let lease = |shard, worker: &str, token, attempt| Event::Lease { shard, worker: worker.into(), token, attempt };
        let entries = vec![
            e(10, lease(0, "worker-1", 100, 1)),
            e(11, lease(1, "worker-2", 101, 1)),
            e(
                20,
                Event::AttemptFailed {
                    shard: 0,
                    token: 100,
                    error: "trap".into(),
                    final_failure: false,
                    item: None,
                    quarantined: false,
                },
            ),
            e(21, lease(0, "worker-2", 102, 2)),
            e(
                25,
                Event::AttemptFailed {
                    shard: 1,
                    token: 101,
                    error: "lease expired: worker worker-2 stopped heartbeating".into(),
                    final_failure: false,
                    item: None,
                    quarantined: false,
                },
            ),
            e(30, Event::Committed { shard: 0, token: 102, outputs: vec![] }),
            e(31, lease(1, "worker-1", 103, 2)),
        ];
        let a = attempts(&entries);
        let ends: Vec<_> = a.iter().map(|a| (a.shard, a.node.as_str(), a.start, a.end, a.outcome)).collect();
        assert_eq!(
            ends,
            vec![
                (0, "worker-1", Some(10), Some(20), AttemptEnd::Retried),
                (1, "worker-2", Some(11), Some(25), AttemptEnd::Lost),
                (0, "worker-2", Some(21), Some(30), AttemptEnd::Committed),
                (1, "worker-1", Some(31), None, AttemptEnd::Unfinished),
            ]
        );
        assert_eq!(a[0].error.as_deref(), Some("trap"));
    }

    #[test]
    fn nodes_sort_master_first_then_workers_by_number() {
        let mut v = vec!["worker-10", "zeta", "worker-2", "master"];
        v.sort_by_key(|n| node_order(n));
        assert_eq!(v, ["master", "worker-2", "worker-10", "zeta"]);
    }
}
