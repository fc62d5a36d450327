//! The planner: the even-sharding rule.
//!
//! Inputs are split into shards by bytes. The target shard size is given, or
//! derived so that there are `shards_per_worker` shards per worker (several
//! per worker, so that pulling work balances uneven speed). Objects are packed
//! in name order; an object larger than the target is, if splitting is on, cut
//! into newline-aligned byte ranges. So no shard exceeds the target by more than
//! one record (one line of a split object, or one whole object that could not
//! be split), and the same listing always gives the same plan.
//!
//! In `mayfly-model`'s flow (`core/tests/flow.rs` checks it) it must not import `policy`
//! or anything above; like its crate, it must not import any other mayfly crate.

use std::io;

use serde::{Deserialize, Serialize};

/// An input object as listed: its name (relative to the input location) and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    /// Name relative to the input location, `/`-separated.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// One unit a task processes: a whole object, or a byte range of one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The object's name.
    pub object: String,
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Whether the item is the whole object.
    pub whole: bool,
}

impl Item {
    /// The item's key: where its outputs go. The object's name for a whole
    /// object, `name#start-end` for a range.
    pub fn key(&self) -> String {
        if self.whole {
            self.object.clone()
        } else {
            format!("{}#{}-{}", self.object, self.start, self.start + self.len)
        }
    }
}

/// A unit of leasing: items processed together, committed together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// 0-based, dense.
    pub id: u32,
    /// Total bytes of its items.
    pub bytes: u64,
    /// Its items, in order.
    pub items: Vec<Item>,
}

/// How to shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    /// Workers the job runs on.
    pub workers: u32,
    /// Target bytes per shard; derived from `shards_per_worker` when `None`.
    pub target_shard_bytes: Option<u64>,
    /// Shards per worker when the target is derived.
    pub shards_per_worker: u32,
    /// Split objects larger than the target into newline-aligned ranges.
    pub split_text: bool,
    /// A derived target is raised to this (a shard smaller is not worth its
    /// lease and commit), but never so high that there are fewer shards than
    /// workers: the planner then tries half this floor, then none. A given
    /// target is used as it is.
    pub min_shard_bytes: u64,
}

/// The default [`PlanOptions::min_shard_bytes`] (`[sharding] min_shard_bytes`):
/// at this machine's ~100 MiB/s per worker, about 10 ms of work, several
/// times a shard's fixed cost (a lease, an instance, a commit).
pub const MIN_SHARD_BYTES: u64 = 1 << 20;

/// The plan of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The shards, by id.
    pub shards: Vec<Shard>,
    /// The target shard size used.
    pub target_bytes: u64,
    /// Bytes of all inputs.
    pub total_bytes: u64,
    /// Number of input objects.
    pub objects: u64,
}

impl Plan {
    /// Balance: (largest shard bytes, mean shard bytes).
    pub fn balance(&self) -> (u64, f64) {
        let max = self.shards.iter().map(|s| s.bytes).max().unwrap_or(0);
        let mean = if self.shards.is_empty() { 0.0 } else { self.total_bytes as f64 / self.shards.len() as f64 };
        (max, mean)
    }
}

/// Reads up to `len` bytes of object `name` at `offset` (used to find line ends).
pub type ReadAt<'a> = dyn FnMut(&str, u64, usize) -> io::Result<Vec<u8>> + 'a;

/// How far past a cut point the planner reads at a time, looking for a newline.
const WINDOW: usize = 64 * 1024;

/// Plans `objects` (in any order) into shards.
pub fn plan(objects: &[Object], opts: PlanOptions, read_at: &mut ReadAt<'_>) -> io::Result<Plan> {
    let mut objects: Vec<&Object> = objects.iter().collect();
    objects.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    let total_bytes: u64 = objects.iter().map(|o| o.size).sum();
    let workers = u64::from(opts.workers.max(1));
    let pieces = workers * u64::from(opts.shards_per_worker.max(1));
    let Some(given) = opts.target_shard_bytes else {
        // The floor, never above a worker's share; and since shards are cut
        // at line ends past the target, a plan that leaves a worker without
        // a shard is made again with half the floor, then with none.
        let derived = total_bytes.div_ceil(pieces);
        let mut last = None;
        for floor in [total_bytes.div_ceil(workers), total_bytes.div_ceil(2 * workers), 0] {
            let p = plan_with(&objects, opts, derived.max(opts.min_shard_bytes.min(floor)), read_at)?;
            if p.shards.len() as u64 >= workers || p.target_bytes == derived.max(1) {
                return Ok(p);
            }
            last = Some(p);
        }
        return last.ok_or_else(|| io::Error::other("no plan"));
    };
    plan_with(&objects, opts, given, read_at)
}

/// Plans sorted `objects` into shards of `target` bytes.
fn plan_with(objects: &[&Object], opts: PlanOptions, target: u64, read_at: &mut ReadAt<'_>) -> io::Result<Plan> {
    let total_bytes: u64 = objects.iter().map(|o| o.size).sum();
    let object_count = objects.len() as u64;
    let target = target.max(1);

    let mut shards: Vec<Shard> = Vec::new();
    let mut current = Shard { id: 0, bytes: 0, items: Vec::new() };
    let push = |item: Item, shards: &mut Vec<Shard>, current: &mut Shard| {
        if !current.items.is_empty() && current.bytes + item.len > target {
            let id = shards.len() as u32;
            let next = Shard { id: id + 1, bytes: 0, items: Vec::new() };
            let mut done = std::mem::replace(current, next);
            done.id = id;
            shards.push(done);
        }
        current.bytes += item.len;
        current.items.push(item);
    };
    for object in objects {
        if opts.split_text && object.size > target {
            let mut start = 0;
            while start < object.size {
                let end = line_end_after(object, start.saturating_add(target), read_at)?;
                // One line longer than the target is the whole object again.
                let whole = start == 0 && end == object.size;
                push(Item { object: object.name.clone(), start, len: end - start, whole }, &mut shards, &mut current);
                start = end;
            }
        } else {
            push(
                Item { object: object.name.clone(), start: 0, len: object.size, whole: true },
                &mut shards,
                &mut current,
            );
        }
    }
    if !current.items.is_empty() {
        current.id = shards.len() as u32;
        shards.push(current);
    }
    Ok(Plan { shards, target_bytes: target, total_bytes, objects: object_count })
}

/// The end of the line that contains byte `cut - 1`: the first position at or
/// after `cut` that follows a newline, or the object's end.
fn line_end_after(object: &Object, cut: u64, read_at: &mut ReadAt<'_>) -> io::Result<u64> {
    if cut >= object.size {
        return Ok(object.size);
    }
    let mut pos = cut - 1; // cut >= 1 since target >= 1
    while pos < object.size {
        let window = read_at(&object.name, pos, WINDOW)?;
        if window.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} ended at byte {pos} but was listed as {} bytes", object.name, object.size),
            ));
        }
        if let Some(i) = window.iter().position(|&b| b == b'\n') {
            return Ok((pos + i as u64 + 1).min(object.size));
        }
        pos += window.len() as u64;
    }
    Ok(object.size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Objects with random sizes and content (random line lengths), from a seed.
    fn corpus(seed: u64) -> (Vec<Object>, HashMap<String, Vec<u8>>) {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let n = 1 + next() % 40;
        let mut objects = Vec::new();
        let mut data = HashMap::new();
        for i in 0..n {
            let size = match next() % 4 {
                0 => 0,
                1 => next() % 100,
                2 => next() % 5_000,
                _ => next() % 200_000,
            } as usize;
            let line = 1 + next() % 300;
            let bytes: Vec<u8> =
                (0..size).map(|j| if (j as u64 + 1).is_multiple_of(line) { b'\n' } else { b'a' }).collect();
            let name = format!("dir{}/f{i:03}", next() % 3);
            objects.push(Object { name: name.clone(), size: size as u64 });
            data.insert(name, bytes);
        }
        (objects, data)
    }

    fn reader(data: &HashMap<String, Vec<u8>>) -> impl FnMut(&str, u64, usize) -> io::Result<Vec<u8>> + '_ {
        |name, off, len| {
            let d = &data[name];
            let start = (off as usize).min(d.len());
            Ok(d[start..(start + len).min(d.len())].to_vec())
        }
    }

    #[test]
    fn property_bound_determinism_coverage_and_line_alignment() {
        for seed in 0..300 {
            let (objects, data) = corpus(seed);
            let opts = PlanOptions {
                workers: 1 + (seed % 5) as u32,
                target_shard_bytes: if seed % 2 == 0 { None } else { Some(1 + seed * 997 % 60_000) },
                shards_per_worker: 1 + (seed % 4) as u32,
                split_text: seed % 3 != 0,
                min_shard_bytes: if seed % 4 == 0 { 0 } else { 1 + seed * 131 % 100_000 },
            };
            let p = plan(&objects, opts, &mut reader(&data)).unwrap();
            // Deterministic, whatever the listing order.
            let mut reversed = objects.clone();
            reversed.reverse();
            assert_eq!(p, plan(&reversed, opts, &mut reader(&data)).unwrap(), "seed {seed}");
            // Ids are dense; bytes add up.
            for (i, s) in p.shards.iter().enumerate() {
                assert_eq!(s.id as usize, i);
                assert_eq!(s.bytes, s.items.iter().map(|i| i.len).sum::<u64>());
            }
            // The bound: over the target only by one record, which is then alone
            // or (for a split range) at most one line over.
            for s in &p.shards {
                if s.bytes > p.target_bytes {
                    assert_eq!(s.items.len(), 1, "seed {seed}: an oversized shard holds one item");
                    let item = &s.items[0];
                    if !item.whole {
                        let d = &data[&item.object];
                        let cut = (item.start + p.target_bytes) as usize;
                        let longest_line =
                            d[item.start as usize..].split(|&b| b == b'\n').map(|l| l.len() + 1).max().unwrap();
                        assert!(item.len as usize <= cut - item.start as usize + longest_line, "seed {seed}");
                    }
                }
            }
            // Coverage: every byte of every object exactly once; ranges on line boundaries.
            let mut by_object: HashMap<&str, Vec<&Item>> = HashMap::new();
            for item in p.shards.iter().flat_map(|s| &s.items) {
                by_object.entry(&item.object).or_default().push(item);
            }
            assert_eq!(by_object.len(), objects.len(), "seed {seed}: every object appears");
            for o in &objects {
                let mut items = by_object[o.name.as_str()].clone();
                items.sort_by_key(|i| i.start);
                let mut at = 0;
                for item in &items {
                    assert_eq!(item.start, at, "seed {seed}: {} has a gap or overlap", o.name);
                    assert_eq!(item.whole, item.start == 0 && item.len == o.size);
                    let d = &data[&o.name];
                    if item.start > 0 {
                        assert_eq!(d[item.start as usize - 1], b'\n', "seed {seed}: range starts mid-line");
                    }
                    at += item.len;
                    if at < o.size {
                        assert_eq!(d[at as usize - 1], b'\n', "seed {seed}: range ends mid-line");
                    }
                }
                assert_eq!(at, o.size, "seed {seed}: {} not fully covered", o.name);
            }
            // Enough shards for the workers, when there are enough items.
            let items: usize = p.shards.iter().map(|s| s.items.len()).sum();
            if opts.target_shard_bytes.is_none()
                && items >= opts.workers as usize
                && p.total_bytes > 0
                && opts.split_text
            {
                assert!(
                    p.shards.len() >= opts.workers as usize || p.shards.iter().all(|s| s.items.len() == 1),
                    "seed {seed}"
                );
            }
        }
    }

    #[test]
    fn one_large_text_object_is_split_evenly_on_lines() {
        let line = b"0123456789abcdef\n"; // 17 bytes
        let data: Vec<u8> = line.repeat(10_000);
        let objects = vec![Object { name: "big.txt".into(), size: data.len() as u64 }];
        let map = HashMap::from([("big.txt".to_owned(), data)]);
        let opts = PlanOptions {
            workers: 4,
            target_shard_bytes: None,
            shards_per_worker: 4,
            split_text: true,
            min_shard_bytes: 0,
        };
        let p = plan(&objects, opts, &mut reader(&map)).unwrap();
        assert_eq!(p.shards.len(), 16);
        let (max, mean) = p.balance();
        assert!(max as f64 <= mean + 17.0, "max {max} mean {mean}");
        assert!(p.shards.iter().all(|s| s.items[0].len % 17 == 0));
        // Off: one shard, the whole object.
        let p = plan(&objects, PlanOptions { split_text: false, ..opts }, &mut reader(&map)).unwrap();
        assert_eq!(p.shards.len(), 1);
        assert!(p.shards[0].items[0].whole);
    }

    #[test]
    fn an_empty_listing_is_an_empty_plan() {
        let opts = PlanOptions {
            workers: 2,
            target_shard_bytes: None,
            shards_per_worker: 4,
            split_text: true,
            min_shard_bytes: 0,
        };
        let p = plan(&[], opts, &mut |_, _, _| Ok(Vec::new())).unwrap();
        assert!(p.shards.is_empty());
        assert_eq!(p.balance(), (0, 0.0));
    }

    #[test]
    fn an_object_that_shrank_since_listing_is_an_error() {
        let objects = vec![Object { name: "x".into(), size: 1000 }];
        let opts = PlanOptions {
            workers: 1,
            target_shard_bytes: Some(10),
            shards_per_worker: 1,
            split_text: true,
            min_shard_bytes: MIN_SHARD_BYTES,
        };
        let err = plan(&objects, opts, &mut |_, _, _| Ok(Vec::new())).unwrap_err();
        assert!(err.to_string().contains("x ended at byte 9 but was listed as 1000 bytes"), "{err}");
    }

    #[test]
    fn a_derived_target_has_a_floor_that_still_leaves_a_shard_per_worker() {
        // `mayfly init`'s sample: one 260-byte text file, 2 workers, 4 shards each.
        let text: Vec<u8> = b"a line of sample text\n".iter().copied().cycle().take(264).collect();
        let data: HashMap<String, Vec<u8>> = [("sample.txt".to_owned(), text)].into();
        let objects = vec![Object { name: "sample.txt".into(), size: 264 }];
        let opts = PlanOptions {
            workers: 2,
            target_shard_bytes: None,
            shards_per_worker: 4,
            split_text: true,
            min_shard_bytes: MIN_SHARD_BYTES,
        };
        let p = plan(&objects, opts, &mut reader(&data)).unwrap();
        assert_eq!((p.shards.len(), p.target_bytes), (2, 132), "one shard per worker, not 8 of 33 bytes");
        let p = plan(&objects, PlanOptions { min_shard_bytes: 0, ..opts }, &mut reader(&data)).unwrap();
        assert!(p.shards.len() > 2, "without the floor: shards of a few lines each ({})", p.shards.len());
        // Large inputs are not affected: the derived target is over the floor.
        let objects: Vec<Object> = (0..8).map(|i| Object { name: format!("big{i}"), size: 8 << 20 }).collect();
        let p = plan(&objects, PlanOptions { split_text: false, ..opts }, &mut |_, _, _| Ok(Vec::new())).unwrap();
        assert_eq!(p.target_bytes, 8 << 20);
    }
}
