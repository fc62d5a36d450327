//! `mayfly reap`: ending the nodes whose job's deadline has passed and that
//! could not end themselves (a node killed before its dead-man switch, a
//! provider that lost track). Each node is ended once, however many
//! selections list it; a job's nodes are found through the provider its
//! manifest recorded.
//!
//! Must not import: the master, the worker, bootstrap; a reap only lists and
//! terminates.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use mayfly_core::job::{Manifest, read_json};
use mayfly_data::provider::{NodeInfo, ProviderError, ProviderHandle, Selection};
use mayfly_model::policy::Millis;

/// Reaps at one moment, remembering what it ended.
#[derive(Debug)]
pub struct Reaper {
    now: Millis,
    /// (job, node, id) of every node ended so far.
    seen: HashSet<(String, String, String)>,
}

impl Reaper {
    /// A reaper for nodes expired at `now`.
    pub fn new(now: Millis) -> Reaper {
        Reaper { now, seen: HashSet::new() }
    }

    /// The nodes of `listed` past their deadline and not reaped before (now marked).
    pub fn expired(&mut self, listed: Vec<NodeInfo>) -> Vec<NodeInfo> {
        listed
            .into_iter()
            .filter(|n| n.expires_at <= self.now && self.seen.insert((n.job.clone(), n.node.clone(), n.id.clone())))
            .collect()
    }

    /// Ends `provider`'s expired nodes under `state`, telling `each` about
    /// each (with how many seconds ago its deadline passed) before it is
    /// ended; returns how many.
    pub fn reap(
        &mut self,
        provider: &ProviderHandle,
        state: &Path,
        each: &mut dyn FnMut(&NodeInfo, u64),
    ) -> Result<usize, ProviderError> {
        let expired = self.expired(provider.list_all(state)?);
        for n in &expired {
            each(n, self.overdue_secs(n));
        }
        if !expired.is_empty() {
            provider.terminate(&expired, Duration::from_secs(2))?;
        }
        Ok(expired.len())
    }

    /// How long ago `node`'s deadline passed, in seconds.
    pub fn overdue_secs(&self, node: &NodeInfo) -> u64 {
        self.now.saturating_sub(node.expires_at) / 1000
    }
}

/// The providers of the jobs under the local state directory `state`, each
/// once, as their manifests recorded them; a job whose manifest cannot be
/// read is reaped with the built-in provider, and the second list says so.
pub fn job_providers(state: &Path) -> std::io::Result<(Vec<Selection>, Vec<String>)> {
    let (mut selections, mut warnings): (Vec<Selection>, Vec<String>) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(state)?.flatten() {
        if !entry.path().is_dir() {
            continue;
        }
        let selection = match read_json::<Manifest>(&entry.path().join("manifest.json")) {
            Ok(m) => m.provider,
            Err(e) => {
                warnings.push(format!("{}: {e}; reaping it with the built-in provider", entry.path().display()));
                Selection::default()
            }
        };
        if !selections.contains(&selection) {
            selections.push(selection);
        }
    }
    Ok((selections, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mayfly_data::provider::Role;

    fn node(job: &str, name: &str, expires_at: Millis) -> NodeInfo {
        NodeInfo {
            job: job.into(),
            node: name.into(),
            role: Role::Worker,
            id: format!("{job}/{name}"),
            expires_at,
            launched_at: 0,
            process: None,
        }
    }

    #[test]
    fn only_nodes_past_their_deadline_are_reaped_and_each_once() {
        let mut r = Reaper::new(10_000);
        let listed = vec![node("a", "w1", 9_000), node("a", "w2", 10_000), node("b", "w1", 10_001)];
        let first: Vec<_> = r.expired(listed.clone()).into_iter().map(|n| n.id).collect();
        assert_eq!(first, ["a/w1", "a/w2"]);
        // Another selection of the same provider lists them again: not twice.
        assert!(r.expired(listed).is_empty());
        assert_eq!(r.overdue_secs(&node("a", "w1", 4_000)), 6);
    }

    #[test]
    fn a_job_whose_manifest_cannot_be_read_is_reaped_with_the_built_in_provider() {
        let dir = tempfile::tempdir().unwrap();
        for job in ["j1", "j2"] {
            std::fs::create_dir_all(dir.path().join(job)).unwrap();
            std::fs::write(dir.path().join(job).join("manifest.json"), "not json").unwrap();
        }
        std::fs::write(dir.path().join("stray-file"), "x").unwrap();
        let (selections, warnings) = job_providers(dir.path()).unwrap();
        assert_eq!(selections, vec![Selection::default()], "one selection for both jobs");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings.iter().all(|w| w.contains("reaping it with the built-in provider")), "{warnings:?}");
        assert!(job_providers(&dir.path().join("missing")).is_err());
    }
}
