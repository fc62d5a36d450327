//! `wordcount`: counts words, and merges counts.
//!
//! A word is a maximal run of characters that are not Unicode `White_Space`;
//! counting is case-sensitive. The output `counts.tsv` has one `word<TAB>count`
//! line per word, sorted by count (highest first), then by word (ascending by
//! bytes).
//!
//! Parameters: `mode = "map"` (default) counts the words of the input;
//! `mode = "reduce"` reads an input made of `counts.tsv` files (concatenated)
//! and writes their sum in the same format.
//!
//! Input that is not valid UTF-8 fails the item (not retryable), naming the
//! byte offset of the first bad byte in the object.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, BufRead, Read, Write};

use mayfly_sdk::{Error, Input, Outputs, Result, info, task};
use serde::Deserialize;

/// The task's parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// `map` (count words) or `reduce` (merge counts).
    #[serde(default)]
    pub mode: Mode,
}

/// What the task does with its input.
#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Count the words of the input.
    #[default]
    Map,
    /// Merge `counts.tsv` files.
    Reduce,
}

/// The name of the output file.
pub const OUTPUT: &str = "counts.tsv";

#[task]
fn wordcount(input: &mut Input, params: Params, outputs: &mut Outputs) -> Result<()> {
    let base = input.offset_in_object();
    let (name, size) = (input.name().to_owned(), input.size());
    let counts = match params.mode {
        Mode::Map => count_words(&mut *input, base),
        Mode::Reduce => merge_counts(&mut *input),
    }
    .map_err(|e| e.into_task_error(&name))?;
    let mut out = outputs.create(OUTPUT)?;
    let distinct = write_counts(&counts, &mut out)?;
    out.finish()?;
    info!(distinct = distinct, bytes = size; "{:?} of {name} done", params.mode);
    Ok(())
}

/// A fast, non-cryptographic hasher for words (FxHash): the input is not
/// adversarial to the task's own memory, and SipHash would dominate the cost.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let word = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    fn write_u8(&mut self, b: u8) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Word → count.
pub type Counts = HashMap<Box<[u8]>, u64, BuildHasherDefault<FxHasher>>;

/// Why counting failed.
#[derive(Debug)]
pub enum CountError {
    /// The input is not UTF-8; the offset is that of the first bad byte in the object.
    NotUtf8 {
        /// Offset of the first invalid byte, counted from the start of the object.
        offset: u64,
    },
    /// A `counts.tsv` line is malformed (reduce mode).
    BadLine {
        /// 1-based line number in the reduce input.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading the input failed.
    Io(io::Error),
}

impl CountError {
    fn into_task_error(self, name: &str) -> Error {
        match self {
            CountError::NotUtf8 { offset } => {
                Error::fatal(format!("{name}: input is not valid UTF-8 at byte offset {offset}"))
            }
            CountError::BadLine { line, reason } => {
                Error::fatal(format!("{name}: line {line} is not a `word<TAB>count` line: {reason}"))
            }
            CountError::Io(e) => Error::from(e),
        }
    }
}

impl From<io::Error> for CountError {
    fn from(e: io::Error) -> Self {
        CountError::Io(e)
    }
}

/// Counts the words read from `reader`. `base` is the offset of the reader's
/// first byte in its object, used in the error for invalid UTF-8.
pub fn count_words(mut reader: impl Read, base: u64) -> Result<Counts, CountError> {
    let mut counts = Counts::default();
    // Bytes carried over between chunks: the start of a word, or of a character.
    let mut carry: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut consumed: u64 = 0; // object bytes before `buf[0]`, minus what was carried
    loop {
        let n = read_full(&mut reader, &mut buf)?;
        let at_end = n == 0;
        let mut chunk = std::mem::take(&mut carry);
        let chunk_start = consumed - chunk.len() as u64;
        chunk.extend_from_slice(&buf[..n]);
        consumed += n as u64;
        // Validate, leaving an incomplete trailing character for the next round.
        let valid_len = match std::str::from_utf8(&chunk) {
            Ok(_) => chunk.len(),
            Err(e) if e.error_len().is_none() && !at_end => e.valid_up_to(),
            Err(e) => {
                return Err(CountError::NotUtf8 { offset: base + chunk_start + e.valid_up_to() as u64 });
            }
        };
        let word_start = count_valid(&chunk[..valid_len], &mut counts, at_end);
        carry = chunk[word_start..].to_vec();
        if at_end {
            return Ok(counts);
        }
    }
}

/// Reads until `buf` is full or the reader ends.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Counts the complete words of valid UTF-8 `text`; returns where the last,
/// possibly unfinished, word starts (`text.len()` if none), unless `last`.
fn count_valid(text: &[u8], counts: &mut Counts, last: bool) -> usize {
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        let (is_space, width) = if b < 0x80 {
            (matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'), 1)
        } else {
            let width = if b >= 0xf0 {
                4
            } else if b >= 0xe0 {
                3
            } else {
                2
            };
            // Only U+0085, U+00A0, U+1680, U+2000..U+205F and U+3000 are non-ASCII
            // White_Space; their lead bytes are C2, E1, E2 and E3.
            let maybe = matches!(b, 0xc2 | 0xe1 | 0xe2 | 0xe3);
            let space = maybe
                && std::str::from_utf8(&text[i..i + width])
                    .ok()
                    .and_then(|s| s.chars().next())
                    .is_some_and(char::is_whitespace);
            (space, width)
        };
        if is_space {
            if let Some(s) = start.take() {
                bump(counts, &text[s..i]);
            }
        } else if start.is_none() {
            start = Some(i);
        }
        i += width;
    }
    match start {
        Some(s) if last => {
            bump(counts, &text[s..]);
            text.len()
        }
        Some(s) => s,
        None => text.len(),
    }
}

fn bump(counts: &mut Counts, word: &[u8]) {
    if let Some(n) = counts.get_mut(word) {
        *n += 1;
    } else {
        counts.insert(word.into(), 1);
    }
}

/// Sums `word<TAB>count` lines (the concatenation of `counts.tsv` files).
pub fn merge_counts(reader: impl BufRead) -> Result<Counts, CountError> {
    let mut counts = Counts::default();
    for (index, line) in reader.split(b'\n').enumerate() {
        let line = line?;
        let number = index as u64 + 1;
        if line.is_empty() {
            continue;
        }
        let bad = |reason: &str| CountError::BadLine { line: number, reason: reason.to_owned() };
        let tab = line.iter().rposition(|&b| b == b'\t').ok_or_else(|| bad("no tab"))?;
        let (word, count) = (&line[..tab], &line[tab + 1..]);
        if word.is_empty() {
            return Err(bad("empty word"));
        }
        let count: u64 = std::str::from_utf8(count)
            .ok()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("the count is not a whole number"))?;
        match counts.get_mut(word) {
            Some(n) => *n = n.checked_add(count).ok_or_else(|| bad("the total overflows"))?,
            None => {
                counts.insert(word.into(), count);
            }
        }
    }
    Ok(counts)
}

/// Writes counts in the output format and returns how many lines it wrote.
pub fn write_counts(counts: &Counts, out: &mut impl Write) -> io::Result<usize> {
    let mut entries: Vec<(&[u8], u64)> = counts.iter().map(|(w, &n)| (&**w, n)).collect();
    entries.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut line = Vec::with_capacity(64);
    for (word, count) in &entries {
        line.clear();
        line.extend_from_slice(word);
        line.push(b'\t');
        line.extend_from_slice(count.to_string().as_bytes());
        line.push(b'\n');
        out.write_all(&line)?;
    }
    Ok(entries.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(text: &[u8]) -> Vec<(String, u64)> {
        let counts = count_words(text, 0).expect("valid");
        let mut out = Vec::new();
        write_counts(&counts, &mut out).expect("write");
        String::from_utf8(out)
            .expect("utf8")
            .lines()
            .map(|l| {
                let (w, n) = l.rsplit_once('\t').expect("tab");
                (w.to_owned(), n.parse().expect("count"))
            })
            .collect()
    }

    #[test]
    fn counts_and_orders_by_count_then_bytes() {
        let got = count(b"b a b\tc\n\na  B");
        let want: Vec<(String, u64)> =
            vec![("a".into(), 2), ("b".into(), 2), ("B".into(), 1), ("c".into(), 1)];
        assert_eq!(got, want);
        // "B" (0x42) sorts before "c" (0x63) by bytes; equal counts tie-break on bytes.
        assert_eq!(got[2].0, "B");
    }

    #[test]
    fn unicode_white_space_separates_words_but_other_symbols_do_not() {
        let text = "été\u{00A0}été\u{3000}東京\u{2009}x\u{200B}y\u{0085}z";
        let got = count(text.as_bytes());
        // U+200B (zero width space) is not White_Space: "x\u{200B}y" is one word.
        assert_eq!(got, vec![("été".into(), 2), ("x\u{200B}y".into(), 1), ("z".into(), 1), ("東京".into(), 1)]);
    }

    #[test]
    fn words_and_characters_split_across_chunks_are_whole() {
        // Long enough to cross the 256 KiB chunk boundary many times, with a
        // multi-byte character straddling each boundary at some point.
        let unit = "ab çd 東京x ";
        let text = unit.repeat(100_000);
        let got = count(text.as_bytes());
        assert_eq!(got, vec![("ab".into(), 100_000), ("çd".into(), 100_000), ("東京x".into(), 100_000)]);
    }

    #[test]
    fn invalid_utf8_names_the_offset_in_the_object() {
        let mut text = "ok ".repeat(100_000).into_bytes();
        text.push(0xff);
        match count_words(&text[..], 1000) {
            Err(CountError::NotUtf8 { offset }) => assert_eq!(offset, 1000 + 300_000),
            other => panic!("expected NotUtf8, got {other:?}"),
        }
        // A truncated character at the very end is invalid too.
        match count_words(&"é".as_bytes()[..1], 0) {
            Err(CountError::NotUtf8 { offset }) => assert_eq!(offset, 0),
            other => panic!("expected NotUtf8, got {other:?}"),
        }
    }

    #[test]
    fn reduce_sums_counts_files() {
        let input = b"a\t2\nb\t1\na\t3\nc d\t1\n";
        let counts = merge_counts(&input[..]).expect("valid");
        let mut out = Vec::new();
        write_counts(&counts, &mut out).expect("write");
        assert_eq!(out, b"a\t5\nb\t1\nc d\t1\n");
    }

    #[test]
    fn reduce_rejects_malformed_lines_with_their_number() {
        match merge_counts(&b"a\t1\nnotab\n"[..]) {
            Err(CountError::BadLine { line: 2, .. }) => {}
            other => panic!("expected BadLine 2, got {other:?}"),
        }
        match merge_counts(&b"a\tx\n"[..]) {
            Err(CountError::BadLine { line: 1, reason }) => assert!(reason.contains("whole number")),
            other => panic!("expected BadLine 1, got {other:?}"),
        }
    }

    #[test]
    fn empty_input_gives_empty_output() {
        assert!(count(b"").is_empty());
        assert!(count(b" \n\t ").is_empty());
    }
}
