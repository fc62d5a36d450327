//! A deterministic sample dataset: text files whose words follow a Zipf
//! distribution over a vocabulary with non-ASCII words, as `mayfly demo` uses.
//!
//! In `mayfly-ops`'s flow (`core/tests/flow.rs` checks it) it must not import `reap`,
//! `scaffold`, `check`, `replay` or `watch`, or anything above, nor its peers `cost`,
//! `report` and `package`; like its crate, it must not import the binary.

use std::io::Write;
use std::path::Path;

/// A small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const SYLLABLES: &[&str] =
    &["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "é", "ü", "ß", "東", "京", "ø", "ça", "ñu", "ωa", "де"];

/// A vocabulary of `n` distinct words (deterministic). Words are 1 to 4
/// syllables (about 111,000 words at most); past 100,000, 1 to 6.
pub fn vocabulary(n: usize) -> Vec<String> {
    let mut words = Vec::with_capacity(n);
    let mut seen = std::collections::HashSet::new();
    let mut rng = Rng::new(7);
    let longest = if n > 100_000 { 6 } else { 4 };
    while words.len() < n {
        let len = 1 + (rng.next_u64() % longest) as usize;
        let w: String = (0..len).map(|_| SYLLABLES[(rng.next_u64() % SYLLABLES.len() as u64) as usize]).collect();
        if seen.insert(w.clone()) {
            words.push(w);
        }
    }
    words
}

/// Writes `files` text files of about `bytes_per_file` bytes each into `dir`,
/// words drawn with Zipf weights (the k-th most common has weight 1/k).
pub fn write_dataset(dir: &Path, seed: u64, files: usize, bytes_per_file: usize, vocab: usize) -> std::io::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let words = vocabulary(vocab);
    let cumulative: Vec<f64> = (0..words.len())
        .scan(0.0, |acc, k| {
            *acc += 1.0 / (k as f64 + 1.0);
            Some(*acc)
        })
        .collect();
    let total = cumulative.last().copied().unwrap_or(1.0);
    let mut rng = Rng::new(seed);
    let mut written = 0u64;
    for f in 0..files {
        let mut text = String::with_capacity(bytes_per_file + 64);
        let mut line_len = 0;
        while text.len() < bytes_per_file {
            let u = rng.unit() * total;
            let k = cumulative.partition_point(|&c| c < u).min(words.len() - 1);
            text.push_str(&words[k]);
            line_len += words[k].len() + 1;
            if line_len > 70 {
                text.push('\n');
                line_len = 0;
            } else {
                text.push(' ');
            }
        }
        text.push('\n');
        let mut file = std::fs::File::create(dir.join(format!("part-{f:04}.txt")))?;
        file.write_all(text.as_bytes())?;
        written += text.len() as u64;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dataset_is_deterministic() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        write_dataset(a.path(), 3, 3, 10_000, 500).unwrap();
        write_dataset(b.path(), 3, 3, 10_000, 500).unwrap();
        for f in ["part-0000.txt", "part-0002.txt"] {
            assert_eq!(std::fs::read(a.path().join(f)).unwrap(), std::fs::read(b.path().join(f)).unwrap());
        }
        assert_eq!(vocabulary(50).len(), 50);
    }
}
