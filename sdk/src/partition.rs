//! Partitioned outputs: a map task's output split by key for a reduce stage
//! of several partitions (`[reduce] partitions = R`). Reduce partition `p`
//! reads part `p` of every map output, so every record of one key must be in
//! the same part: [`partition`] decides, the same way in every task and
//! language (the Python sdk's `partition` agrees byte for byte).

use std::io::{self, Write};

use crate::bindings::mayfly::task::host;
use crate::input::io_error;
use crate::output::Output;

/// How many partitions the job's reduce stage has (`[reduce] partitions`):
/// 1 without a reduce, and in the reduce task itself.
pub fn partitions() -> u32 {
    host::partitions()
}

/// The partition, from 0 to `partitions - 1`, that `key` goes to:
/// `(fmix64(fnv1a64(key)) * partitions) >> 64`: FNV-1a over the key's bytes,
/// murmur3's finalizer (so that every byte moves the high bits), then the high
/// bits scaled to the range. `partitions` of 0 counts as 1.
pub fn partition(key: &[u8], partitions: u32) -> u32 {
    ((u128::from(mix64(fnv1a64(key))) * u128::from(partitions.max(1))) >> 64) as u32
}

fn fnv1a64(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The name of part `partition` of output `name`: `part-00003/counts.tsv`.
pub fn part_name(name: &str, partition: u32) -> String {
    format!("part-{partition:05}/{name}")
}

/// An output split into the job's partitions ([`crate::Outputs::partitioned`]):
/// each part is an [`Output`] of its own, opened when first written to (a part
/// no key fell in is not written at all).
pub struct Partitioned {
    name: String,
    parts: Vec<Option<Output>>,
}

impl Partitioned {
    pub(crate) fn new(name: &str, partitions: u32) -> io::Result<Self> {
        crate::output::check_name(name)?;
        Ok(Partitioned { name: name.to_owned(), parts: (0..partitions.max(1)).map(|_| None).collect() })
    }

    /// How many parts there are.
    pub fn partitions(&self) -> u32 {
        self.parts.len() as u32
    }

    /// The part `key` goes to ([`partition`]).
    pub fn part_for(&mut self, key: &[u8]) -> io::Result<&mut Output> {
        let p = partition(key, self.partitions());
        self.part(p)
    }

    /// Part `p` (opened now if it was not).
    pub fn part(&mut self, p: u32) -> io::Result<&mut Output> {
        let n = self.partitions();
        let Some(slot) = self.parts.get_mut(p as usize) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("output {}: partition {p} of {n} does not exist", self.name),
            ));
        };
        if slot.is_none() {
            let name = part_name(&self.name, p);
            let raw = host::open_output(&name).map_err(io_error)?;
            *slot = Some(Output::from_raw(name, raw));
        }
        Ok(slot.as_mut().expect("opened above"))
    }

    /// Writes `record` into the part of `key`.
    pub fn write(&mut self, key: &[u8], record: &[u8]) -> io::Result<()> {
        self.part_for(key)?.write_all(record)
    }

    /// Flushes every part and reports the first error.
    pub fn finish(self) -> io::Result<()> {
        let mut first = Ok(());
        for out in self.parts.into_iter().flatten() {
            let done = out.finish();
            if first.is_ok() {
                first = done;
            }
        }
        first
    }
}

impl std::fmt::Debug for Partitioned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partitioned").field("name", &self.name).field("partitions", &self.parts.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_the_python_sdks() {
        // The same vectors as sdk/python/tests/test_partition.py: a key goes to
        // one partition whichever sdk wrote it.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(0xaf63_dc4c_8601_ec8c), 0x82a2_a958_a9be_ce5b);
        assert_eq!(partition(b"a", 3), 1);
        assert_eq!(partition(b"", 5), 4);
        assert_eq!(partition("été".as_bytes(), 1), 0);
    }

    #[test]
    fn keys_spread_over_every_partition() {
        for r in 1..=16u32 {
            let mut seen = vec![0u32; r as usize];
            for i in 0..10_000 {
                let p = partition(format!("w{i}").as_bytes(), r);
                assert!(p < r);
                seen[p as usize] += 1;
            }
            // Even within a few percent: 10,000 / r each.
            let even = 10_000 / r;
            assert!(seen.iter().all(|&n| n > even * 8 / 10 && n < even * 12 / 10), "r = {r}: {seen:?}");
        }
        // Single letters too (FNV's high bits alone barely see the last byte).
        let letters: std::collections::BTreeSet<u32> = (b'a'..=b'z').map(|c| partition(&[c], 3)).collect();
        assert_eq!(letters.len(), 3);
        assert_eq!(part_name("counts.tsv", 3), "part-00003/counts.tsv");
    }
}
