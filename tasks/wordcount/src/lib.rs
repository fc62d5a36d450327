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
//! It combines per shard: one table counts the words of every item of the
//! shard, and `finish` writes it as the shard's one `counts.tsv` (the reduce
//! then merges one table per shard, not one per file). When the job's reduce
//! has several partitions, the map's `counts.tsv` is split by word
//! ([`mayfly_sdk::partition`]), each part sorted as the whole file is; the
//! job merges the reduce's parts with `order = "2nr,1"` into the file one
//! reducer would have written.
//!
//! Input that is not valid UTF-8 fails the item (not retryable), naming the
//! byte offset of the first bad byte in the object: the item is quarantined
//! and the shard counts again without it.

use std::io::{self, BufRead, Read, Write};

use mayfly_sdk::{Error, Input, Outputs, Result, Shard, Task, info, task};
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

/// The task's state for one shard: the words of its items so far.
#[derive(Debug)]
pub struct WordCount {
    mode: Mode,
    counts: Counts,
    items: u32,
    bytes: u64,
}

#[task]
impl Task for WordCount {
    type Params = Params;

    fn start(_shard: &Shard, params: Params, _outputs: &mut Outputs) -> Result<Self> {
        Ok(WordCount { mode: params.mode, counts: Counts::default(), items: 0, bytes: 0 })
    }

    fn item(&mut self, input: &mut Input, _outputs: &mut Outputs) -> Result<()> {
        let base = input.offset_in_object();
        let name = input.name().to_owned();
        match self.mode {
            Mode::Map => count_words_into(&mut self.counts, &mut *input, base),
            Mode::Reduce => merge_counts_into(&mut self.counts, &mut *input),
        }
        .map_err(|e| e.into_task_error(&name))?;
        self.items += 1;
        self.bytes += input.size();
        Ok(())
    }

    fn finish(self, outputs: &mut Outputs) -> Result<()> {
        let partitions = if self.mode == Mode::Map { mayfly_sdk::partitions() } else { 1 };
        let distinct = if partitions > 1 {
            let mut parts = outputs.partitioned(OUTPUT)?;
            let mut distinct = 0;
            for (p, mut entries) in split_counts(&self.counts, partitions).into_iter().enumerate() {
                if !entries.is_empty() {
                    distinct += write_entries(&mut entries, parts.part(p as u32)?)?;
                }
            }
            parts.finish()?;
            distinct
        } else {
            let mut out = outputs.create(OUTPUT)?;
            let distinct = write_counts(&self.counts, &mut out)?;
            out.finish()?;
            distinct
        };
        info!(distinct = distinct, items = self.items, bytes = self.bytes; "{:?} done", self.mode);
        Ok(())
    }
}

/// Word → count, in an open-addressing table built for this job.
///
/// Rejected alternative: `HashMap<Box<[u8]>, u64>`. Compiled to WebAssembly it
/// spends most of its time in wasi-libc's byte-at-a-time `memcmp` and in
/// hashbrown's 4-byte probe groups; here each slot keeps the full 64-bit hash,
/// so a probe compares bytes only on a hash match, 8 bytes at a time.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    slots: Vec<Slot>,
    /// The distinct words, back to back.
    arena: Vec<u8>,
    len: usize,
}

/// 24 bytes, so that more of the table stays in cache.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// 0 marks an empty slot (every stored word has a count of at least 1).
    count: u64,
    /// The word's offset in the arena.
    start: u64,
    /// The top 32 bits of the word's hash, compared before the bytes.
    tag: u32,
    len: u32,
}

impl Counts {
    /// Number of distinct words.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no word was counted.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The count of `word`, 0 if it never occurred.
    pub fn get(&self, word: &[u8]) -> u64 {
        if self.slots.is_empty() {
            return 0;
        }
        let hash = hash_word(word);
        let mask = self.slots.len() - 1;
        let mut i = index(hash, mask);
        loop {
            let slot = &self.slots[i];
            if slot.count == 0 {
                return 0;
            }
            if slot.tag == tag(hash) && same(self.word(slot), word) {
                return slot.count;
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds `n` (at least 1) to the count of `word`; `None` if the count would overflow.
    pub fn add(&mut self, word: &[u8], n: u64) -> Option<()> {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let hash = hash_word(word);
        let mask = self.slots.len() - 1;
        let mut i = index(hash, mask);
        loop {
            let slot = self.slots[i];
            if slot.count == 0 {
                let len = u32::try_from(word.len()).ok()?;
                self.slots[i] = Slot { count: n, start: self.arena.len() as u64, tag: tag(hash), len };
                self.arena.extend_from_slice(word);
                self.len += 1;
                return Some(());
            }
            if slot.tag == tag(hash) && same(self.word(&slot), word) {
                self.slots[i].count = slot.count.checked_add(n)?;
                return Some(());
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(1024);
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); size]);
        let mask = size - 1;
        for slot in old.into_iter().filter(|s| s.count != 0) {
            let mut i = index(hash_word(self.word(&slot)), mask);
            while self.slots[i].count != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = slot;
        }
    }

    fn word(&self, slot: &Slot) -> &[u8] {
        let start = slot.start as usize;
        &self.arena[start..start + slot.len as usize]
    }

    /// Every (word, count), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], u64)> + '_ {
        self.slots.iter().filter(|s| s.count != 0).map(|s| (self.word(s), s.count))
    }
}

/// FxHash over 8-byte chunks, then a final multiply so that the top bits (the
/// table index) depend on every input bit.
fn hash_word(word: &[u8]) -> u64 {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let mut h = word.len() as u64;
    let mut chunks = word.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h.rotate_left(5) ^ v).wrapping_mul(K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        // Byte by byte: a `copy_from_slice` of a variable length becomes a
        // call to `memcpy` (in wasm, a call out of the instance) per word.
        let tail = rest.iter().rev().fold(0u64, |t, &b| (t << 8) | u64::from(b));
        h = (h.rotate_left(5) ^ tail).wrapping_mul(K);
    }
    h.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The table index comes from the high bits (the best mixed by the final
/// multiply), the tag from the low ones.
fn index(hash: u64, mask: usize) -> usize {
    (hash >> 32) as usize & mask
}

fn tag(hash: u64) -> u32 {
    hash as u32
}

/// Byte equality 8 bytes at a time (the standard `==` lowers to `memcmp`,
/// which is a byte loop in wasi-libc).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |c: &[u8]| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        if word(x) != word(y) {
            return false;
        }
    }
    ca.remainder().iter().zip(cb.remainder()).all(|(x, y)| x == y)
}

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
pub fn count_words(reader: impl Read, base: u64) -> Result<Counts, CountError> {
    let mut counts = Counts::default();
    count_words_into(&mut counts, reader, base)?;
    Ok(counts)
}

/// [`count_words`], adding to `counts` (a native program counting many files
/// into one table).
pub fn count_words_into(counts: &mut Counts, mut reader: impl Read, base: u64) -> Result<(), CountError> {
    // Bytes carried over between chunks: the start of a word, or of a character.
    let mut carry: Vec<u8> = Vec::new();
    // The buffer starts small and doubles while reads fill it, up to 256 KiB:
    // a tiny input costs no large allocation (in the sandbox, every item's
    // instance starts with fresh memory, and each page touched is a fault).
    let mut buf = vec![0u8; 16 * 1024];
    let mut consumed: u64 = 0; // object bytes before `buf[0]`, minus what was carried
    loop {
        let n = read_full(&mut reader, &mut buf)?;
        if n == buf.len() && buf.len() < 256 * 1024 {
            buf.resize(buf.len() * 2, 0);
        }
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
        let word_start = count_valid(&chunk[..valid_len], counts, at_end);
        carry = chunk[word_start..].to_vec();
        if at_end {
            return Ok(());
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

/// Byte classes: 0 continues a word, 1 is ASCII white space, 2 is the lead
/// byte of a character that may be non-ASCII white space (U+0085, U+00A0,
/// U+1680, U+2000..U+205F, U+3000 start with C2, E1, E2 or E3).
const CLASS: [u8; 256] = {
    let mut class = [0u8; 256];
    class[b' ' as usize] = 1;
    class[b'\t' as usize] = 1;
    class[b'\n' as usize] = 1;
    class[0x0b] = 1;
    class[0x0c] = 1;
    class[b'\r' as usize] = 1;
    class[0xc2] = 2;
    class[0xe1] = 2;
    class[0xe2] = 2;
    class[0xe3] = 2;
    class
};

/// The byte length of the white-space character at the start of `text`, or 0.
/// `text` is valid UTF-8 and not empty. The non-ASCII White_Space characters
/// are matched on their encodings, which is much faster than decoding.
#[inline]
fn space_at(text: &[u8]) -> usize {
    match CLASS[text[0] as usize] {
        0 => 0,
        1 => 1,
        _ => match *text {
            // U+0085, U+00A0
            [0xc2, 0x85 | 0xa0, ..] => 2,
            // U+1680
            [0xe1, 0x9a, 0x80, ..] => 3,
            // U+2000..U+200A, U+2028, U+2029, U+202F
            [0xe2, 0x80, 0x80..=0x8a | 0xa8 | 0xa9 | 0xaf, ..] => 3,
            // U+205F
            [0xe2, 0x81, 0x9f, ..] => 3,
            // U+3000
            [0xe3, 0x80, 0x80, ..] => 3,
            _ => 0,
        },
    }
}

/// Counts the complete words of valid UTF-8 `text`; returns where the last,
/// possibly unfinished, word starts (`text.len()` if none), unless `last`.
fn count_valid(text: &[u8], counts: &mut Counts, last: bool) -> usize {
    let n = text.len();
    let mut i = 0;
    loop {
        // Skip white space.
        while i < n {
            let w = space_at(&text[i..]);
            if w == 0 {
                break;
            }
            i += w;
        }
        if i == n {
            return n;
        }
        // A word: bytes of class 0, or class 2 that do not start a space.
        let start = i;
        loop {
            // Eight bytes at a time while none may end the word (the common case).
            while let Some(chunk) = text.get(i..i + 8) {
                let v = u64::from_le_bytes([
                    chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
                ]);
                let stop = may_end_word(v);
                if stop != 0 {
                    i += (stop.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
            }
            if i < n && (CLASS[text[i] as usize] == 0 || space_at(&text[i..]) == 0) {
                i += 1;
            } else {
                break;
            }
        }
        if i == n && !last {
            return start;
        }
        bump(counts, &text[start..i]);
    }
}

/// The high bit of each byte of `v` (eight bytes, little-endian) that may end
/// a word: one below `0x21` (ASCII white space is among them) or a non-ASCII
/// byte. A byte below `0x21` borrows from the next, so bytes after the first
/// flagged one may be flagged wrongly; the first is always right.
#[inline]
fn may_end_word(v: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    (v.wrapping_sub(ONES * 0x21) | v) & (ONES * 0x80)
}

fn bump(counts: &mut Counts, word: &[u8]) {
    // Cannot overflow: one occurrence per input byte at most.
    let _ = counts.add(word, 1);
}

/// Sums `word<TAB>count` lines (the concatenation of `counts.tsv` files).
pub fn merge_counts(reader: impl BufRead) -> Result<Counts, CountError> {
    let mut counts = Counts::default();
    merge_counts_into(&mut counts, reader)?;
    Ok(counts)
}

/// [`merge_counts`], adding to `counts`.
pub fn merge_counts_into(counts: &mut Counts, mut reader: impl BufRead) -> Result<(), CountError> {
    // Lines are taken from the reader's own buffer, not copied one by one (a
    // reduce reads hundreds of MB of tables); only a line cut by the buffer's
    // end is put together in `carry`.
    let mut carry: Vec<u8> = Vec::new();
    let mut number = 0u64;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let len = buf.len();
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            number += 1;
            if carry.is_empty() {
                merge_line(counts, &buf[start..end], number)?;
            } else {
                carry.extend_from_slice(&buf[start..end]);
                merge_line(counts, &carry, number)?;
                carry.clear();
            }
            start = end + 1;
        }
        carry.extend_from_slice(&buf[start..]);
        reader.consume(len);
    }
    if !carry.is_empty() {
        merge_line(counts, &carry, number + 1)?;
    }
    Ok(())
}

/// Adds one `word<TAB>count` line (line `number`) to `counts`; an empty line is skipped.
fn merge_line(counts: &mut Counts, line: &[u8], number: u64) -> Result<(), CountError> {
    if line.is_empty() {
        return Ok(());
    }
    let bad = |reason: &str| CountError::BadLine { line: number, reason: reason.to_owned() };
    let tab = line.iter().rposition(|&b| b == b'\t').ok_or_else(|| bad("no tab"))?;
    let (word, digits) = (&line[..tab], &line[tab + 1..]);
    if word.is_empty() {
        return Err(bad("empty word"));
    }
    // As `u64::from_str`: an optional `+`, then at least one ASCII digit.
    let digits = digits.strip_prefix(b"+").unwrap_or(digits);
    let count = if digits.is_empty() {
        None
    } else {
        digits.iter().try_fold(0u64, |n, &d| {
            if d.is_ascii_digit() { n.checked_mul(10)?.checked_add(u64::from(d - b'0')) } else { None }
        })
    }
    .ok_or_else(|| bad("the count is not a whole number"))?;
    if count > 0 {
        counts.add(word, count).ok_or_else(|| bad("the total overflows"))?;
    }
    Ok(())
}

/// Writes counts in the output format and returns how many lines it wrote.
pub fn write_counts(counts: &Counts, out: &mut impl Write) -> io::Result<usize> {
    let mut entries: Vec<(&[u8], u64)> = counts.iter().collect();
    write_entries(&mut entries, out)
}

/// The (word, count) entries of `counts` in `partitions` groups by word
/// ([`mayfly_sdk::partition`]).
pub fn split_counts(counts: &Counts, partitions: u32) -> Vec<Vec<(&[u8], u64)>> {
    let mut parts = vec![Vec::new(); partitions.max(1) as usize];
    for (word, n) in counts.iter() {
        parts[mayfly_sdk::partition(word, partitions) as usize].push((word, n));
    }
    parts
}

/// Writes `entries` in the output format (sorting them: count descending,
/// then word by bytes) and returns how many lines it wrote.
pub fn write_entries(entries: &mut [(&[u8], u64)], out: &mut impl Write) -> io::Result<usize> {
    entries.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut line = Vec::with_capacity(64);
    for (word, count) in entries.iter() {
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
        let want: Vec<(String, u64)> = vec![("a".into(), 2), ("b".into(), 2), ("B".into(), 1), ("c".into(), 1)];
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
    fn reduce_reads_lines_cut_by_its_buffer_and_a_last_line_without_newline() {
        let tables = "été\t3\nb\t+2\n\na\t1\nété\t4\nlong-word-over-the-buffer\t18446744073709551615\nb\t1";
        let whole = merge_counts(tables.as_bytes()).expect("valid");
        for capacity in [1, 2, 3, 5, 7, 64] {
            let cut = merge_counts(std::io::BufReader::with_capacity(capacity, tables.as_bytes())).expect("valid");
            let (mut a, mut b) = (Vec::new(), Vec::new());
            write_counts(&whole, &mut a).unwrap();
            write_counts(&cut, &mut b).unwrap();
            assert_eq!(a, b, "buffer of {capacity} bytes");
        }
        assert_eq!((whole.get("été".as_bytes()), whole.get(b"b"), whole.get(b"a")), (7, 3, 1));
        assert_eq!(whole.get(b"long-word-over-the-buffer"), u64::MAX);
        // Past u64, and a bad line cut by the buffer, still say which line.
        let over = "a\t18446744073709551616\n";
        assert!(matches!(merge_counts(over.as_bytes()), Err(CountError::BadLine { line: 1, .. })));
        let bad = std::io::BufReader::with_capacity(2, &b"a\t1\nb\t1\nno-tab-here\n"[..]);
        assert!(matches!(merge_counts(bad), Err(CountError::BadLine { line: 3, .. })));
    }

    #[test]
    fn space_detection_agrees_with_unicode_white_space_for_every_character() {
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            let mut buf = [0u8; 4];
            let encoded = c.encode_utf8(&mut buf).as_bytes();
            let want = if c.is_whitespace() { encoded.len() } else { 0 };
            assert_eq!(space_at(encoded), want, "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn counts_equal_splitting_on_unicode_white_space_for_random_text() {
        // Words long and short (the scan takes 8 bytes at a time), control
        // characters, non-ASCII letters and every kind of white space.
        const PIECES: &[&str] = &[
            "a",
            "bc",
            "defghijk",
            "lmnopqrstuvwxyz0123",
            "\u{1}",
            "\u{1c}",
            "\u{1f}",
            "!",
            "é",
            "日本",
            "\u{85}x",
            "\u{a0}",
            " ",
            "\t",
            "\n",
            "\r\n",
            "\u{b}",
            "\u{c}",
            "\u{1680}",
            "\u{2003}",
            "\u{2028}",
            "\u{202f}",
            "\u{205f}",
            "\u{3000}",
            "\u{2060}",
            "\u{200b}",
            "\u{e1}\u{9a}",
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for round in 0..200 {
            let mut text = String::new();
            for _ in 0..(round * 7 % 300) {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                text.push_str(PIECES[(seed >> 33) as usize % PIECES.len()]);
            }
            let mut want: std::collections::HashMap<&str, u64> = Default::default();
            for w in text.split(char::is_whitespace).filter(|w| !w.is_empty()) {
                *want.entry(w).or_default() += 1;
            }
            let got: std::collections::HashMap<String, u64> = count(text.as_bytes()).into_iter().collect();
            assert_eq!(got.len(), want.len(), "{text:?}");
            for (w, n) in &want {
                assert_eq!(got.get(*w), Some(n), "{w:?} in {text:?}");
            }
        }
    }

    #[test]
    fn partitions_split_the_words_and_each_part_is_sorted_as_the_whole() {
        let text = "a b b c c c d é é 東京 x y z a a ".repeat(7);
        let counts = count_words(text.as_bytes(), 0).expect("valid");
        let mut whole = Vec::new();
        write_counts(&counts, &mut whole).unwrap();
        let whole = String::from_utf8(whole).unwrap();
        for r in [1, 2, 3, 5, 40] {
            let mut lines = Vec::new();
            for (p, mut entries) in split_counts(&counts, r).into_iter().enumerate() {
                assert!(entries.iter().all(|(w, _)| mayfly_sdk::partition(w, r) == p as u32));
                let mut part = Vec::new();
                write_entries(&mut entries, &mut part).unwrap();
                let part = String::from_utf8(part).unwrap();
                // Sorted as the whole file: its lines in the whole's order.
                let order: Vec<usize> = part.lines().map(|l| whole.lines().position(|w| w == l).unwrap()).collect();
                assert!(order.windows(2).all(|w| w[0] < w[1]), "r = {r}, part {p}: {part}");
                lines.extend(part.lines().map(str::to_owned));
            }
            lines.sort();
            let mut want: Vec<String> = whole.lines().map(str::to_owned).collect();
            want.sort();
            assert_eq!(lines, want, "r = {r}");
        }
    }

    #[test]
    fn empty_input_gives_empty_output() {
        assert!(count(b"").is_empty());
        assert!(count(b" \n\t ").is_empty());
    }
}
