//! The reduce stage: R partitions, each a shard of the job's ledger after the
//! map's ([`crate::ledger::Ledger::with_reduce`]), leased by the workers like
//! a map shard, under the same leases, fencing and commit.
//!
//! Reduce partition `p`'s one input is the concatenation, in shard order, of
//! part `p` of every committed map output (a map task splits an output into
//! parts with the sdk's partitioned writer: `part-<p>/<name>`, see
//! [`crate::job::partition_of`]); with one partition, of every map output, as
//! a single reducer sees them. Its outputs are published under `reduce/`
//! ([`crate::job::reduce_key`]). When the job is done, [`combine`] makes each
//! output of the R partitions one file, as the job says (`[reduce] merge`): a
//! k-way merge of sorted parts ([`crate::merge`]), or their concatenation.
//! The master runs no task code: only that merge.
//!
//! In `mayfly-core`'s flow (`core/tests/flow.rs` checks it) it must not import `master`
//! or `worker`, or anything above, nor its peers `hold` and `attempt`; like its crate, it
//! must not import `mayfly-ops` or the binary.

use std::io::{BufReader, Read};
use std::sync::{Arc, Mutex};

use crate::config::Merge;
use crate::host::{ConcatInput, InputSource, OpenOnRead};
use crate::job::{Layout, partition_of};
use crate::ledger::{CommittedOutput, ShardRecord, ShardState};
use mayfly_data::readahead::{ReadAhead, ReadAheadConfig};
use mayfly_data::store::Store;
use mayfly_model::plan::Item;

/// Why the reduce's outputs could not be made one.
#[derive(Debug, thiserror::Error)]
pub enum ReduceError {
    /// A partition's output could not be read, or the merged one written.
    #[error("merging the reduce partitions' {name}: {source}")]
    Merge {
        /// The output's name.
        name: String,
        /// What failed.
        source: crate::merge::MergeError,
    },
    /// The merged output could not be published.
    #[error("publishing {at}: {source}")]
    Publish {
        /// Where.
        at: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// The map outputs reduce partition `partition` of `partitions` reads, in
/// shard order: items of the output location, each a whole object with its
/// committed size. `committed` are the committed map shards' outputs, in
/// shard order ([`committed`], or as recorded: [`committed_on_record`]).
pub fn items<'a>(
    layout: &Layout,
    committed: impl IntoIterator<Item = &'a [CommittedOutput]>,
    partitions: u32,
    partition: u32,
) -> Vec<Item> {
    let mut items = Vec::new();
    for outputs in committed {
        for out in outputs {
            let wanted = partitions <= 1 || partition_of(&out.name).is_some_and(|(p, _)| p == partition);
            if wanted {
                let object = layout.map_output(&out.key, &out.name);
                items.push(Item { object, start: 0, len: out.bytes, whole: true });
            }
        }
    }
    items
}

/// The outputs of the committed shards among the ledger's `records`, in shard order.
pub fn committed(records: &[ShardRecord]) -> impl Iterator<Item = &[CommittedOutput]> {
    records.iter().filter_map(|r| match &r.state {
        ShardState::Committed { outputs } => Some(outputs.as_slice()),
        _ => None,
    })
}

/// The outputs of the committed map shards (`0..map_shards`), in shard
/// order, as their commits are recorded (log or markers): the truth without a master (`mayfly
/// replay` of a partition).
pub fn committed_on_record(layout: &Layout, map_shards: u32) -> std::io::Result<Vec<Vec<CommittedOutput>>> {
    let commits = crate::commits::read(layout)?;
    Ok(commits.into_iter().filter(|m| m.shard < map_shards).map(|m| m.outputs).collect())
}

/// What went wrong reading a partition's map outputs, kept for the error of
/// the attempt (the task only sees that its input failed): the first
/// problem, and whether another attempt could get past it (a map output
/// missing or not of its committed size cannot; a storage error may).
#[derive(Debug, Clone, Default)]
pub struct Problem(Arc<Mutex<Option<(String, bool)>>>);

impl Problem {
    fn say(&self, what: String, retryable: bool) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert((what, retryable));
    }

    /// The first problem, and whether it is retryable; `None` if every read went well.
    pub fn take(&self) -> Option<(String, bool)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A reduce partition's input: its map outputs (`items`, from [`items`]) as
/// one, read ahead as a shard's inputs are. A map output missing, or not of
/// its committed size, fails the read and is said in `problem`.
pub fn input(store: &Store, items: Vec<Item>, config: ReadAheadConfig, name: &str, problem: &Problem) -> ConcatInput {
    struct Shared {
        ahead: ReadAhead,
        /// The next item the read-ahead hands out.
        next: usize,
    }
    let shared = Arc::new(Mutex::new(Shared { ahead: store.read_ahead(items.clone(), config), next: 0 }));
    let parts = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let (shared, store, problem) = (shared.clone(), store.clone(), problem.clone());
            let display = store.display(&item.object);
            let (object, len) = (item.object.clone(), item.len);
            Arc::new(OpenOnRead::new(item.object.clone(), item.len, move || {
                let opened = {
                    let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                    if index >= s.next {
                        // In order (as a task reads): the read-ahead's; items
                        // skipped over are let go.
                        let mut at = s.next;
                        let mut got = s.ahead.take(at);
                        while at < index {
                            at += 1;
                            got = s.ahead.take(at);
                        }
                        s.next = index + 1;
                        got
                    } else {
                        // Read again: from the store.
                        store.input(&object, &object, None)
                    }
                };
                let (said, retryable) = match opened {
                    Ok(source) if source.size() == len => return Ok(source),
                    Ok(source) => (
                        format!("map output {display} is not the {len} bytes committed ({} now)", source.size()),
                        false,
                    ),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        (format!("map output {display} is missing"), false)
                    }
                    // Shorter or longer than committed (the read-ahead's check).
                    Err(e)
                        if matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidInput) =>
                    {
                        (
                            format!("map output {display} is not the {len} bytes committed (changed since its commit)"),
                            false,
                        )
                    }
                    // The storage failing now: another attempt may read it.
                    Err(e) => (format!("map output {display} cannot be read: {e}"), true),
                };
                problem.say(said.clone(), retryable);
                Err(std::io::Error::new(std::io::ErrorKind::InvalidData, said))
            })) as Arc<dyn InputSource>
        })
        .collect();
    ConcatInput::new(name, parts)
}

/// The published path of each final reduce output, once the partitions'
/// outputs (`outputs`: every committed reduce output, from every partition)
/// are made one as `merge` says: with one partition, or `merge = "parts"`,
/// they are where they were published; otherwise each name's parts are
/// merged (or concatenated) in partition order into `reduce/<name>`. Every
/// name is merged before any is published, so a failure publishes nothing.
/// The parts stay: [`remove_parts`] deletes them once the job's end is
/// recorded (a master restarted before that merges them again).
pub fn combine(
    layout: &Layout,
    partitions: u32,
    merge: &Merge,
    outputs: &[CommittedOutput],
) -> Result<Vec<String>, ReduceError> {
    let published = |o: &CommittedOutput| layout.map_output(&o.key, &o.name);
    if partitions <= 1 || *merge == Merge::Parts {
        return Ok(outputs.iter().map(published).collect());
    }
    let staging_key = format!("{}/reduce-merge", layout.staging());
    let local = layout.local_staging(&staging_key);
    std::fs::create_dir_all(&local).map_err(|e| ReduceError::Publish { at: local.display().to_string(), source: e })?;
    let mut merged = Vec::new();
    for (name, parts) in by_name(outputs) {
        let failed = |source| ReduceError::Merge { name: name.to_owned(), source };
        let readers = parts
            .iter()
            .map(|o| {
                let key = published(o);
                let source = layout.output.input(&key, &key, None).map_err(|e| {
                    failed(crate::merge::MergeError::Io {
                        what: format!("opening {}", layout.output.display(&key)),
                        source: e,
                    })
                })?;
                Ok((layout.output.display(&key), BufReader::with_capacity(256 << 10, SourceReader { source, at: 0 })))
            })
            .collect::<Result<Vec<_>, ReduceError>>()?;
        let file_name = mayfly_model::key::file_name(name);
        let file_path = local.join(&file_name);
        let file = std::fs::File::create(&file_path)
            .map_err(|e| ReduceError::Publish { at: file_path.display().to_string(), source: e })?;
        let mut out = std::io::BufWriter::with_capacity(256 << 10, file);
        match merge {
            Merge::Sorted { order } => crate::merge::merge_sorted(readers, order, &mut out).map(|_| ()),
            _ => crate::merge::concat(readers, &mut out).map(|_| ()),
        }
        .map_err(failed)?;
        out.into_inner()
            .map_err(|e| ReduceError::Publish { at: file_path.display().to_string(), source: e.into_error() })?;
        merged.push((name, file_name, file_path));
    }
    let mut names = Vec::new();
    for (name, file_name, file_path) in merged {
        let dest = layout.reduce_output(name);
        match layout.output.local_dir() {
            // Staged in place: a rename.
            Some(_) => layout.output.rename(&format!("{staging_key}/{file_name}"), &dest),
            None => layout.output.upload(&file_path, &dest).map(|()| {
                let _ = std::fs::remove_file(&file_path);
            }),
        }
        .map_err(|source| ReduceError::Publish { at: layout.output.display(&dest), source })?;
        names.push(dest);
    }
    Ok(names)
}

/// Deletes the partitions' parts that [`combine`] merged (and, for a local
/// output, the folders they leave empty); nothing for `merge = "parts"`.
pub fn remove_parts(layout: &Layout, partitions: u32, merge: &Merge, outputs: &[CommittedOutput]) {
    if partitions <= 1 || *merge == Merge::Parts {
        return;
    }
    for out in outputs {
        let key = layout.map_output(&out.key, &out.name);
        let _ = layout.output.delete(&key);
        if let Some(root) = layout.output.local_dir() {
            // Up to `reduce/`, each folder only if it is empty now.
            let (mut dir, top) = (root.join(&key), root.join("reduce"));
            while dir.pop() && dir.starts_with(&top) && dir != top && std::fs::remove_dir(&dir).is_ok() {}
        }
    }
}

/// Each output name with its parts, in partition order (a part's key ends in
/// its partition's number).
fn by_name(outputs: &[CommittedOutput]) -> std::collections::BTreeMap<&str, Vec<&CommittedOutput>> {
    let mut by_name: std::collections::BTreeMap<&str, Vec<(u32, &CommittedOutput)>> = Default::default();
    for out in outputs {
        let p = out.key.rsplit_once("part-").and_then(|(_, n)| n.parse::<u32>().ok()).unwrap_or(0);
        by_name.entry(out.name.as_str()).or_default().push((p, out));
    }
    by_name
        .into_iter()
        .map(|(name, mut parts)| {
            parts.sort_by_key(|(p, _)| *p);
            (name, parts.into_iter().map(|(_, o)| o).collect())
        })
        .collect()
}

/// An input read from its start, as a reader.
struct SourceReader {
    source: Arc<dyn InputSource>,
    at: u64,
}

impl Read for SourceReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.source.read_at(self.at, buf)?;
        self.at += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(outputs: &[(&str, &str, u64)]) -> ShardRecord {
        let outputs = outputs
            .iter()
            .map(|(key, name, bytes)| CommittedOutput { key: (*key).into(), name: (*name).into(), bytes: *bytes })
            .collect();
        let mut l = crate::ledger::Ledger::new(1, 1);
        let (lease, _) = l.lease("w", 0, 10).unwrap();
        l.commit(0, lease.token, outputs).unwrap();
        l.shards()[0].clone()
    }

    #[test]
    fn a_partition_reads_its_part_of_every_committed_map_output_in_shard_order() {
        let layout = Layout::local(std::path::Path::new("/s"), "j", std::path::Path::new("/o"));
        let shards = vec![
            record(&[("_shards/000000", "part-00000/c.tsv", 3), ("_shards/000000", "part-00001/c.tsv", 4)]),
            record(&[("_shards/000001", "part-00001/c.tsv", 5), ("_shards/000001", "side.txt", 1)]),
        ];
        let objects = |p: u32, r: u32| {
            items(&layout, committed(&shards), r, p).into_iter().map(|i| (i.object, i.len)).collect::<Vec<_>>()
        };
        assert_eq!(
            objects(1, 2),
            [
                ("map/_shards/000000/part-00001/c.tsv".to_owned(), 4),
                ("map/_shards/000001/part-00001/c.tsv".to_owned(), 5)
            ]
        );
        assert_eq!(objects(0, 2), [("map/_shards/000000/part-00000/c.tsv".to_owned(), 3)]);
        // A partition no key fell in reads nothing; one partition reads everything.
        assert!(objects(2, 3).is_empty());
        assert_eq!(objects(0, 1).len(), 4);
    }

    #[test]
    fn a_partitions_input_is_its_map_outputs_in_order_and_names_one_that_is_not_as_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path());
        for (name, body) in [("m/0", &b"one\n"[..]), ("m/1", b"two\n"), ("m/2", b"three\n")] {
            store.put(name, body.to_vec()).unwrap();
        }
        let item = |object: &str, len| Item { object: object.into(), start: 0, len, whole: true };
        let config = ReadAheadConfig { requests: 2, memory: 1 << 20 };
        let read_all = |input: &ConcatInput| {
            let mut buf = vec![0u8; input.size() as usize];
            let mut at = 0;
            while at < buf.len() {
                match input.read_at(at as u64, &mut buf[at..]) {
                    Ok(0) => break,
                    Ok(n) => at += n,
                    Err(e) => return Err(e),
                }
            }
            Ok(buf)
        };
        let problem = Problem::default();
        let items = vec![item("m/0", 4), item("m/1", 4), item("m/2", 6)];
        let concat = super::input(&store, items, config, "p0", &problem);
        assert_eq!(read_all(&concat).unwrap(), b"one\ntwo\nthree\n");
        // Read again (from the store: the read-ahead handed each out once).
        assert_eq!(read_all(&concat).unwrap(), b"one\ntwo\nthree\n");
        assert!(problem.take().is_none());

        for (items, says) in [
            (vec![item("m/0", 4), item("m/gone", 3)], "m/gone is missing"),
            (vec![item("m/2", 9), item("m/0", 4)], "m/2 is not the 9 bytes committed"),
        ] {
            let problem = Problem::default();
            let concat = super::input(&store, items, config, "p1", &problem);
            assert!(read_all(&concat).is_err());
            let (said, retryable) = problem.take().unwrap_or_default();
            assert!(said.starts_with("map output ") && said.contains(says) && !retryable, "{said}");
        }
    }
}
