//! The journal: every ledger decision, one JSON line each with its time,
//! fsynced by the master before it answers; read back by a restarted master
//! (a torn last line is skipped), `status`, `logs` and the report.

use std::fs::File;
use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::job::{Layout, Manifest, keys};
use crate::ledger::Event;
use mayfly_model::policy::Millis;

/// One line of the journal: a decision and when it was made (`at` is
/// missing in journals written before it was recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// When, in ms since the epoch, by the master's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Millis>,
    /// The decision.
    #[serde(flatten)]
    pub event: Event,
}

/// How [`Master::record`] writes an [`Entry`] without copying the event.
#[derive(Serialize)]
pub(super) struct EntryRef<'a> {
    pub(super) at: Millis,
    #[serde(flatten)]
    pub(super) event: &'a Event,
}

/// Reads the journal, skipping a torn last line.
pub fn read_journal(path: &Path) -> Vec<Event> {
    read_entries(path).into_iter().map(|e| e.event).collect()
}

/// Reads the journal with the time of each decision, skipping a torn last line.
pub fn read_entries(path: &Path) -> Vec<Entry> {
    let Ok(f) = File::open(path) else { return Vec::new() };
    parse_entries(std::io::BufReader::new(f))
}

/// Parses journal lines (skipping any that do not parse: a torn last line).
pub fn parse_entries(reader: impl BufRead) -> Vec<Entry> {
    reader.lines().map_while(Result::ok).filter_map(|l| serde_json::from_str(&l).ok()).collect()
}

/// Copies the journal into a remote state (a local one already holds it), so
/// that a master restarted elsewhere finds it.
pub(super) fn save_journal(layout: &Layout, manifest: &Manifest) {
    if layout.state.local_dir().is_none()
        && let Err(e) = layout.state.upload(&layout.journal(manifest.created_at), keys::JOURNAL)
    {
        say!(WARN, "copying the journal to {}: {e}", layout.state.display(keys::JOURNAL));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_carry_their_time_and_old_lines_still_parse() {
        let event = Event::Lease { shard: 3, worker: "worker-1".into(), token: 42, attempt: 1 };
        let line = serde_json::to_string(&EntryRef { at: 1_795_796_998_908, event: &event }).unwrap();
        assert_eq!(
            line,
            r#"{"at":1795796998908,"event":"lease","shard":3,"worker":"worker-1","token":42,"attempt":1}"#
        );
        let old = r#"{"event":"released","shard":3,"token":42}"#;
        let torn = r#"{"event":"committed","shard":3,"tok"#;
        let entries = parse_entries(format!("{line}\n{old}\n{torn}").as_bytes());
        assert_eq!(
            entries,
            vec![
                Entry { at: Some(1_795_796_998_908), event },
                Entry { at: None, event: Event::Released { shard: 3, token: 42 } },
            ]
        );
    }
}
