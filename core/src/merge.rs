//! Merging a partitioned reduce's outputs. A job's reduce stage can run as R
//! partitions, each writing its own sorted part (wordcount's `counts.tsv`,
//! sorted by count descending, then by word in byte order). The master then
//! merges the R parts into one file that must be byte for byte what a single
//! reducer would have written. Partitions are disjoint by key (each word is in
//! exactly one part), so a k-way merge by the job's declared [`Order`]
//! reproduces the single result: [`merge_sorted`]. Outputs whose line order
//! does not matter are joined part after part: [`concat()`].
//!
//! In `mayfly-core`'s flow it imports nothing of the crate: a pure function over readers and a writer.

use std::cmp::Ordering;
use std::fmt;
use std::io::{self, BufRead, Read, Write};

/// The order of a sorted text output's lines: keys over tab-separated fields,
/// as `sort -t '\t' -k...` would, e.g. "2nr,1" = field 2 numeric descending,
/// then field 1 by bytes ascending. Lines equal under every key are equal: an
/// order that tells every two lines apart makes a merge exactly the single
/// output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    keys: Vec<Key>,
}

/// One key of an [`Order`]: a field and how its values compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The field's number, from 1; fields are separated by tabs.
    pub field: usize,
    /// Compare as unsigned whole numbers in ASCII digits, not as bytes.
    pub numeric: bool,
    /// Largest first.
    pub reverse: bool,
}

impl Order {
    /// Parses "2nr,1": comma-separated keys, each a 1-based field number
    /// followed by optional flags `n` (numeric: an unsigned whole number in
    /// ASCII digits) and `r` (reverse), in any order, each at most once;
    /// spaces around keys are allowed. The error says what is wrong, naming
    /// the text.
    pub fn parse(text: &str) -> Result<Order, OrderError> {
        if text.trim().is_empty() {
            return Err("the order is empty".into());
        }
        let keys = text.split(',').map(|key| parse_key(key.trim(), text)).collect::<Result<_, _>>()?;
        Ok(Order { keys })
    }

    /// Its keys, the first deciding first.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Compares two lines (without their newline). Errors when a numeric
    /// key's field is missing or not a whole number, naming the field, e.g.
    /// "field 2 (\"x1\") is not a whole number".
    pub fn compare(&self, a: &[u8], b: &[u8]) -> Result<Ordering, OrderError> {
        self.check(a)?;
        self.check(b)?;
        Ok(self.compare_checked(a, b))
    }

    /// Whether `line`'s numeric fields are whole numbers: the one way a
    /// comparison can fail, checked once per line rather than per comparison.
    fn check(&self, line: &[u8]) -> Result<(), OrderError> {
        for key in self.keys.iter().filter(|k| k.numeric) {
            match field(line, key.field) {
                None => {
                    let fields = line.iter().filter(|&&b| b == b'\t').count() + 1;
                    let plural = if fields == 1 { "" } else { "s" };
                    return Err(OrderError::from(format!(
                        "field {} is missing (the line has {fields} field{plural}); a whole number is expected",
                        key.field
                    )));
                }
                Some(value) if value.is_empty() || !value.iter().all(u8::is_ascii_digit) => {
                    return Err(OrderError::from(format!(
                        "field {} ({}) is not a whole number",
                        key.field,
                        quote(value)
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Compares two lines that passed [`Order::check`].
    fn compare_checked(&self, a: &[u8], b: &[u8]) -> Ordering {
        for key in &self.keys {
            let (x, y) = (field(a, key.field).unwrap_or_default(), field(b, key.field).unwrap_or_default());
            let ordering = if key.numeric { compare_numbers(x, y) } else { x.cmp(y) };
            let ordering = if key.reverse { ordering.reverse() } else { ordering };
            if ordering != Ordering::Equal {
                return ordering;
            }
        }
        Ordering::Equal
    }
}

/// One key of `text`, `key` trimmed.
fn parse_key(key: &str, text: &str) -> Result<Key, OrderError> {
    let wrong = |problem: &str| format!("`{key}` in order {text:?}: {problem}");
    if key.is_empty() {
        return Err(OrderError::from(format!("order {text:?} has an empty key")));
    }
    let digits = key.len() - key.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return Err(OrderError::from(wrong("a key starts with its field number")));
    }
    let field: usize = key[..digits].parse().map_err(|_| wrong("the field number is too large"))?;
    if field == 0 {
        return Err(OrderError::from(wrong("field numbers start at 1")));
    }
    let mut parsed = Key { field, numeric: false, reverse: false };
    for flag in key[digits..].chars() {
        let set = match flag {
            'n' => &mut parsed.numeric,
            'r' => &mut parsed.reverse,
            _ => return Err(OrderError::from(wrong(&format!("unknown flag `{flag}` (flags: n, r)")))),
        };
        if *set {
            return Err(OrderError::from(wrong(&format!("flag `{flag}` is given twice"))));
        }
        *set = true;
    }
    Ok(parsed)
}

/// Field `number` (from 1) of `line`; `None` when the line has fewer fields.
fn field(line: &[u8], number: usize) -> Option<&[u8]> {
    line.split(|&b| b == b'\t').nth(number.checked_sub(1)?)
}

/// Two whole numbers in ASCII digits, compared without parsing, so any length
/// works: leading zeros do not count, then the longer is larger, then bytes.
fn compare_numbers(a: &[u8], b: &[u8]) -> Ordering {
    let (a, b) = (without_leading_zeros(a), without_leading_zeros(b));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn without_leading_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().take_while(|&&d| d == b'0').count();
    &digits[zeros..]
}

/// A field for an error: quoted, shortened when long.
fn quote(value: &[u8]) -> String {
    const MOST: usize = 40;
    let text = String::from_utf8_lossy(value);
    if text.chars().count() <= MOST {
        format!("{text:?}")
    } else {
        format!("{:?}…", text.chars().take(MOST).collect::<String>())
    }
}

/// Back to the canonical text, flags as `n` then `r`: "2nr,1".
impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, key) in self.keys.iter().enumerate() {
            let separator = if i == 0 { "" } else { "," };
            let numeric = if key.numeric { "n" } else { "" };
            let reverse = if key.reverse { "r" } else { "" };
            write!(f, "{separator}{}{numeric}{reverse}", key.field)?;
        }
        Ok(())
    }
}

/// The same as [`Order::parse`].
impl std::str::FromStr for Order {
    type Err = OrderError;

    fn from_str(text: &str) -> Result<Order, OrderError> {
        Order::parse(text)
    }
}

/// As its text, "2nr,1", the way a job description writes it.
impl serde::Serialize for Order {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// From its text, "2nr,1"; a bad text fails with [`Order::parse`]'s error.
impl<'de> serde::Deserialize<'de> for Order {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Order, D::Error> {
        let text = String::deserialize(deserializer)?;
        Order::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What is wrong with an order, or with a line under it (a numeric field
/// that is not a number): the message says which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OrderError(pub String);

impl From<String> for OrderError {
    fn from(message: String) -> Self {
        OrderError(message)
    }
}

impl From<&str> for OrderError {
    fn from(message: &str) -> Self {
        OrderError(message.to_owned())
    }
}

/// Why a merge failed.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// A part could not be read or the output written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done ("reading part reduce-1/counts.tsv").
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A part's line breaks the order (the part is not sorted as the job
    /// says), or a numeric field is not a number.
    #[error("{part} line {line}: {problem}")]
    Bad {
        /// The part's name.
        part: String,
        /// The line's number in that part, from 1.
        line: u64,
        /// What is wrong with it.
        problem: String,
    },
}

/// One part being merged: its current line and the one before it, to check
/// that it does not decrease. Both buffers are reused line after line.
struct Part<R> {
    name: String,
    reader: R,
    /// The current line, always ending in '\n' while the part has one.
    line: Vec<u8>,
    previous: Vec<u8>,
    /// The current line's number, from 1.
    number: u64,
}

impl<R> Part<R> {
    /// The current line without its newline.
    fn line(&self) -> &[u8] {
        self.line.strip_suffix(b"\n").unwrap_or(&self.line)
    }

    fn bad(&self, problem: String) -> MergeError {
        MergeError::Bad { part: self.name.clone(), line: self.number, problem }
    }
}

impl<R: BufRead> Part<R> {
    /// Reads the next line; false at the part's end. Checks that its numeric
    /// fields are numbers and that it does not sort before the line it follows.
    fn advance(&mut self, order: &Order) -> Result<bool, MergeError> {
        std::mem::swap(&mut self.line, &mut self.previous);
        self.line.clear();
        let read = self
            .reader
            .read_until(b'\n', &mut self.line)
            .map_err(|source| MergeError::Io { what: format!("reading part {}", self.name), source })?;
        if read == 0 {
            return Ok(false);
        }
        if self.line.last() != Some(&b'\n') {
            self.line.push(b'\n');
        }
        self.number += 1;
        order.check(self.line()).map_err(|problem| self.bad(problem.0))?;
        let previous = self.previous.strip_suffix(b"\n").unwrap_or(&self.previous);
        if self.number > 1 && order.compare_checked(previous, self.line()) == Ordering::Greater {
            let problem = format!("is out of order (order {order}): it sorts before line {}", self.number - 1);
            return Err(self.bad(problem));
        }
        Ok(true)
    }
}

/// Merges `parts` (name, reader), each sorted by `order`, into `out`: a
/// streamed k-way merge, O(log k) comparisons per line, holding two lines per
/// part. Lines equal under the order come out in part order, part 0's first.
/// Each line is written with a trailing '\n' (a part's last line without one
/// gets one); an empty line is a line like any other. Each part is checked as
/// it is read: a line that sorts before the one it follows, or whose numeric
/// field is not a number, is [`MergeError::Bad`]. `out` gets a line per write
/// (give it a `BufWriter`) and is flushed at the end; after an error it holds
/// a partial merge, so write to a temporary and publish by rename. Returns the
/// number of lines written.
pub fn merge_sorted<R: BufRead>(
    parts: Vec<(String, R)>,
    order: &Order,
    out: &mut impl Write,
) -> Result<u64, MergeError> {
    let mut parts: Vec<Part<R>> = parts
        .into_iter()
        .map(|(name, reader)| Part { name, reader, line: Vec::new(), previous: Vec::new(), number: 0 })
        .collect();
    // A min-heap of the indexes of the parts that still have a line, by their
    // current line, then by index (which keeps ties in part order).
    let mut heap = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter_mut().enumerate() {
        if part.advance(order)? {
            heap.push(i);
        }
    }
    for at in (0..heap.len() / 2).rev() {
        sift_down(&mut heap, at, &parts, order);
    }
    let mut written = 0;
    while let Some(&first) = heap.first() {
        out.write_all(&parts[first].line).map_err(writing)?;
        written += 1;
        if !parts[first].advance(order)? {
            heap.swap_remove(0);
        }
        sift_down(&mut heap, 0, &parts, order);
    }
    out.flush().map_err(writing)?;
    Ok(written)
}

/// Moves `heap[at]` down to its place: the heap's first index is the part
/// whose line comes next.
fn sift_down<R>(heap: &mut [usize], mut at: usize, parts: &[Part<R>], order: &Order) {
    let before = |a: usize, b: usize| match order.compare_checked(parts[a].line(), parts[b].line()) {
        Ordering::Less => true,
        Ordering::Greater => false,
        Ordering::Equal => a < b,
    };
    loop {
        let mut first = at;
        for child in [2 * at + 1, 2 * at + 2] {
            if child < heap.len() && before(heap[child], heap[first]) {
                first = child;
            }
        }
        if first == at {
            return;
        }
        heap.swap(at, first);
        at = first;
    }
}

fn writing(source: io::Error) -> MergeError {
    MergeError::Io { what: "writing the merged output".into(), source }
}

/// Concatenates `parts` in order, byte for byte (for reduce outputs whose
/// line order does not matter): a part that does not end in a newline runs
/// into the next. `out` is flushed at the end. Returns the bytes written.
pub fn concat<R: Read>(parts: Vec<(String, R)>, out: &mut impl Write) -> Result<u64, MergeError> {
    let mut buffer = vec![0; 64 * 1024];
    let mut written = 0;
    for (name, mut reader) in parts {
        loop {
            let read = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(MergeError::Io { what: format!("reading part {name}"), source }),
            };
            out.write_all(&buffer[..read]).map_err(writing)?;
            written += read as u64;
        }
    }
    out.flush().map_err(writing)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(text: &str) -> Order {
        Order::parse(text).unwrap()
    }

    fn key(field: usize, numeric: bool, reverse: bool) -> Key {
        Key { field, numeric, reverse }
    }

    /// Merges in-memory parts named part-0, part-1, ...
    fn merge(parts: &[&[u8]], by: &str) -> Result<(Vec<u8>, u64), MergeError> {
        let parts = parts.iter().enumerate().map(|(i, p)| (format!("part-{i}"), *p)).collect();
        let mut out = Vec::new();
        let lines = merge_sorted(parts, &order(by), &mut out)?;
        Ok((out, lines))
    }

    /// A tiny LCG: the same cases on every run, no rand crate.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 33) % n as u64) as usize
        }
    }

    #[test]
    fn parses_keys_flags_in_any_order_and_spaces_around_keys() {
        assert_eq!(order("2nr,1").keys(), [key(2, true, true), key(1, false, false)]);
        assert_eq!(order(" 2rn , 1 ").keys(), [key(2, true, true), key(1, false, false)]);
        assert_eq!(order("1").keys(), [key(1, false, false)]);
        assert_eq!(order("3r,12n").keys(), [key(3, false, true), key(12, true, false)]);
        assert_eq!("2nr,1".parse::<Order>(), Ok(order("2nr,1")));
    }

    #[test]
    fn displays_the_canonical_text() {
        for (text, canonical) in [("2nr,1", "2nr,1"), (" 2rn , 1 ", "2nr,1"), ("1", "1"), ("3r,12n", "3r,12n")] {
            assert_eq!(order(text).to_string(), canonical);
            assert_eq!(order(canonical), order(text));
        }
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        for (text, error) in [
            ("2x,1", "`2x` in order \"2x,1\": unknown flag `x` (flags: n, r)"),
            ("0n", "`0n` in order \"0n\": field numbers start at 1"),
            ("", "the order is empty"),
            ("  ", "the order is empty"),
            ("2,,1", "order \"2,,1\" has an empty key"),
            ("2,", "order \"2,\" has an empty key"),
            ("n2", "`n2` in order \"n2\": a key starts with its field number"),
            ("2nrn", "`2nrn` in order \"2nrn\": flag `n` is given twice"),
            ("1rr", "`1rr` in order \"1rr\": flag `r` is given twice"),
            ("2 n", "`2 n` in order \"2 n\": unknown flag ` ` (flags: n, r)"),
            (
                "99999999999999999999999",
                "`99999999999999999999999` in order \"99999999999999999999999\": the field number is too large",
            ),
        ] {
            assert_eq!(Order::parse(text), Err(OrderError(error.to_string())), "{text:?}");
        }
    }

    #[test]
    fn serde_uses_the_text() {
        let text = serde_json::to_string(&order(" 2rn , 1")).unwrap();
        assert_eq!(text, "\"2nr,1\"");
        assert_eq!(serde_json::from_str::<Order>(&text).unwrap(), order("2nr,1"));
        let error = serde_json::from_str::<Order>("\"2x\"").unwrap_err().to_string();
        assert!(error.contains("unknown flag `x`"), "{error}");
        assert!(serde_json::from_str::<Order>("2").is_err());
    }

    #[test]
    fn numbers_compare_by_value_at_any_length() {
        let n = order("1n");
        assert_eq!(n.compare(b"007", b"7"), Ok(Ordering::Equal));
        assert_eq!(n.compare(b"0", b"000"), Ok(Ordering::Equal));
        assert_eq!(n.compare(b"9", b"10"), Ok(Ordering::Less));
        assert_eq!(n.compare(b"010", b"9"), Ok(Ordering::Greater));
        assert_eq!(n.compare(b"12", b"13"), Ok(Ordering::Less));
        assert_eq!(n.compare(b"100000000000000000000000", b"99999999999999999999999"), Ok(Ordering::Greater));
        assert_eq!(order("1nr").compare(b"9", b"10"), Ok(Ordering::Greater));
        // Bytes, not numbers, without `n`.
        assert_eq!(order("1").compare(b"9", b"10"), Ok(Ordering::Greater));
    }

    #[test]
    fn keys_decide_in_turn_and_reverse_flips_only_its_own() {
        let o = order("2nr,1");
        assert_eq!(o.compare(b"a\t5", b"b\t3"), Ok(Ordering::Less));
        assert_eq!(o.compare(b"a\t3", b"b\t3"), Ok(Ordering::Less));
        assert_eq!(o.compare(b"b\t3", b"a\t03"), Ok(Ordering::Greater));
        assert_eq!(o.compare(b"a\t3\tx", b"a\t3\ty"), Ok(Ordering::Equal));
        assert_eq!(order("1r,2").compare(b"a\t1", b"a\t2"), Ok(Ordering::Less));
        assert_eq!(order("1r,2").compare(b"a\t1", b"b\t0"), Ok(Ordering::Greater));
        // Bytes compare as unsigned: non-ASCII after ASCII.
        assert_eq!(o.compare("é\t1".as_bytes(), b"z\t1"), Ok(Ordering::Greater));
        assert_eq!(o.compare(b"\xff\t1", "é\t1".as_bytes()), Ok(Ordering::Greater));
    }

    #[test]
    fn a_missing_field_is_empty_for_bytes_and_an_error_for_numbers() {
        assert_eq!(order("2").compare(b"a", b"b\t"), Ok(Ordering::Equal));
        assert_eq!(order("2").compare(b"a", b"b\tx"), Ok(Ordering::Less));
        assert_eq!(order("2r").compare(b"a", b"b\tx"), Ok(Ordering::Greater));
        assert_eq!(
            order("2n").compare(b"a", b"b\t1"),
            Err("field 2 is missing (the line has 1 field); a whole number is expected".into())
        );
        assert_eq!(
            order("3n").compare(b"a\t1\t2", b"a\t1"),
            Err("field 3 is missing (the line has 2 fields); a whole number is expected".into())
        );
    }

    #[test]
    fn a_numeric_field_that_is_not_a_whole_number_is_an_error() {
        let o = order("2nr,1");
        assert_eq!(o.compare(b"a\t1", b"b\tx1"), Err("field 2 (\"x1\") is not a whole number".into()));
        assert_eq!(o.compare(b"a\t", b"b\t1"), Err("field 2 (\"\") is not a whole number".into()));
        for bad in ["-1", "+1", " 1", "1 ", "1.5", "1e3", "١"] {
            let line = format!("a\t{bad}");
            assert!(o.compare(line.as_bytes(), b"b\t1").is_err(), "{bad:?}");
        }
        // Long fields are shortened.
        let long = format!("a\t{}", "x".repeat(100));
        let error = o.compare(long.as_bytes(), b"b\t1").unwrap_err();
        assert_eq!(error.0, format!("field 2 (\"{}\"…) is not a whole number", "x".repeat(40)));
    }

    /// FNV-1a: a split by key, as a partitioner would.
    fn fnv(word: &[u8]) -> usize {
        word.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)) as usize
    }

    /// The central property: a wordcount table split into any k disjoint
    /// parts, each sorted, merges into exactly the single sorted output.
    #[test]
    fn disjoint_sorted_parts_merge_into_the_single_output() {
        let alphabet: [&[u8]; 10] =
            [b"a", b"b", b"z", b"A", b"-", "é".as_bytes(), "日".as_bytes(), "😀".as_bytes(), b"\xff", b"\x80"];
        for seed in 0..60 {
            let mut rng = Lcg(seed);
            let mut words = std::collections::BTreeSet::new();
            let want = rng.below(40);
            while words.len() < want {
                let word: Vec<u8> =
                    (0..1 + rng.below(4)).flat_map(|_| alphabet[rng.below(alphabet.len())]).copied().collect();
                words.insert(word);
            }
            // (word, count, the count as written: sometimes with leading zeros)
            let mut table: Vec<(Vec<u8>, u64, Vec<u8>)> = words
                .into_iter()
                .map(|word| {
                    let count = if rng.below(5) == 0 { rng.below(2000) } else { rng.below(12) } as u64;
                    let zeros = if rng.below(8) == 0 { "00" } else { "" };
                    (word, count, format!("{zeros}{count}").into_bytes())
                })
                .collect();
            // Count descending, then word by bytes: written independently of `Order`.
            table.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let line = |(word, _, count): &(Vec<u8>, u64, Vec<u8>)| [&word[..], b"\t", count, b"\n"].concat();
            let single: Vec<u8> = table.iter().flat_map(line).collect();
            for k in 1..=6 {
                for split in ["hash", "random"] {
                    let mut parts = vec![Vec::new(); k];
                    for row in &table {
                        let to = if split == "hash" { fnv(&row.0) % k } else { rng.below(k) };
                        parts[to].extend(line(row));
                    }
                    for part in &mut parts {
                        if rng.below(3) == 0 && part.last() == Some(&b'\n') {
                            part.pop();
                        }
                    }
                    let parts: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
                    let (out, lines) = merge(&parts, "2nr,1").unwrap();
                    assert!(
                        out == single,
                        "seed {seed}, k {k}, {split}:\n{}\n---\n{}",
                        String::from_utf8_lossy(&out),
                        String::from_utf8_lossy(&single)
                    );
                    assert_eq!(lines, table.len() as u64);
                }
            }
        }
    }

    #[test]
    fn equal_lines_come_out_in_part_order() {
        let parts: [&[u8]; 3] = [b"p\t1\nq\t1\nr\t2\n", b"s\t1\nt\t2\n", b"u\t0\nv\t2\n"];
        let (out, lines) = merge(&parts, "2n").unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "u\t0\np\t1\nq\t1\ns\t1\nr\t2\nt\t2\nv\t2\n");
        assert_eq!(lines, 7);
        let parts: [&[u8]; 3] = [b"x\n", b"x\ny\n", b"x\n"];
        let (out, _) = merge(&parts, "1").unwrap();
        assert_eq!(out, b"x\nx\nx\ny\n");
        // Equal under the order, different lines: their parts tell them apart.
        let parts: [&[u8]; 2] = [b"b\t1\tfirst\n", b"a\t1\tsecond\n"];
        assert_eq!(merge(&parts, "2n").unwrap().0, b"b\t1\tfirst\na\t1\tsecond\n");
        assert_eq!(merge(&[parts[1], parts[0]], "2n").unwrap().0, b"a\t1\tsecond\nb\t1\tfirst\n");
    }

    #[test]
    fn a_part_out_of_order_is_named_with_its_line() {
        let parts: [&[u8]; 2] = [b"a\t9\nb\t1\n", b"c\t5\nd\t4\ne\t3\nf\t3\ng\t7\nh\t1\n"];
        let error = merge(&parts, "2nr,1").unwrap_err();
        assert!(matches!(&error, MergeError::Bad { part, line: 5, .. } if part == "part-1"), "{error:?}");
        assert_eq!(error.to_string(), "part-1 line 5: is out of order (order 2nr,1): it sorts before line 4");
        // Ties broken by the second key count too.
        let error = merge(&[b"b\t3\na\t3\n"], "2nr,1").unwrap_err();
        assert_eq!(error.to_string(), "part-0 line 2: is out of order (order 2nr,1): it sorts before line 1");
        // The first line of a part is checked against nothing.
        let error = merge(&[b"a\t1\n", b"b\t1\na\t1\n"], "1").unwrap_err();
        assert_eq!(error.to_string(), "part-1 line 2: is out of order (order 1): it sorts before line 1");
    }

    #[test]
    fn a_non_numeric_count_is_bad() {
        let parts: [&[u8]; 2] = [b"a\t3\nb\t2\n", b"c\t4\nd\tmany\n"];
        let error = merge(&parts, "2nr,1").unwrap_err();
        assert!(matches!(&error, MergeError::Bad { part, line: 2, .. } if part == "part-1"), "{error:?}");
        assert_eq!(error.to_string(), "part-1 line 2: field 2 (\"many\") is not a whole number");
        let error = merge(&[b"a\t3\n\n"], "2nr,1").unwrap_err();
        assert_eq!(
            error.to_string(),
            "part-0 line 2: field 2 is missing (the line has 1 field); a whole number is expected"
        );
    }

    #[test]
    fn a_last_line_without_a_newline_gets_one() {
        let parts: [&[u8]; 2] = [b"a\t2\nb\t1", b"c\t3"];
        let (out, lines) = merge(&parts, "2nr,1").unwrap();
        assert_eq!(out, b"c\t3\na\t2\nb\t1\n");
        assert_eq!(lines, 3);
    }

    #[test]
    fn empty_lines_are_lines() {
        let parts: [&[u8]; 2] = [b"\nb\n", b"\n\na"];
        let (out, lines) = merge(&parts, "1").unwrap();
        assert_eq!(out, b"\n\n\na\nb\n");
        assert_eq!(lines, 5);
        let (out, _) = merge(&[b"b\n\n", b"a\n"], "1r").unwrap();
        assert_eq!(out, b"b\na\n\n");
    }

    #[test]
    fn empty_parts_and_no_parts() {
        assert_eq!(merge(&[], "1").unwrap(), (Vec::new(), 0));
        assert_eq!(merge(&[b"", b""], "1").unwrap(), (Vec::new(), 0));
        let (out, lines) = merge(&[b"", b"b\t1\n", b"", b"a\t2\n", b""], "2nr,1").unwrap();
        assert_eq!(out, b"a\t2\nb\t1\n");
        assert_eq!(lines, 2);
    }

    /// Reads what it holds, then fails.
    struct Failing(&'static [u8]);

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::other("disk on fire"));
            }
            let n = self.0.len().min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("no space left"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn io_errors_name_the_part_or_the_output() {
        let parts = vec![
            ("r-0".to_string(), io::BufReader::new(Failing(b"a\n"))),
            ("r-1".into(), io::BufReader::new(Failing(b"b\n"))),
        ];
        let error = merge_sorted(parts, &order("1"), &mut Vec::new()).unwrap_err();
        assert!(matches!(error, MergeError::Io { .. }));
        assert_eq!(error.to_string(), "reading part r-0: disk on fire");
        let error = merge_sorted(vec![("p".to_string(), &b"a\n"[..])], &order("1"), &mut Full).unwrap_err();
        assert_eq!(error.to_string(), "writing the merged output: no space left");
        let error = concat(vec![("c-0".to_string(), Failing(b"xy"))], &mut Vec::new()).unwrap_err();
        assert_eq!(error.to_string(), "reading part c-0: disk on fire");
        let error = concat(vec![("c-0".to_string(), &b"xy"[..])], &mut Full).unwrap_err();
        assert_eq!(error.to_string(), "writing the merged output: no space left");
    }

    #[test]
    fn concat_joins_parts_in_order() {
        let mut out = Vec::new();
        let parts = vec![
            ("0".to_string(), &b"b\na\n"[..]),
            ("1".into(), &b""[..]),
            ("2".into(), &b"c"[..]),
            ("3".into(), &b"d\n"[..]),
        ];
        assert_eq!(concat(parts, &mut out).unwrap(), 7);
        assert_eq!(out, b"b\na\ncd\n");
        let big = vec![7u8; 200_000];
        let mut out = Vec::new();
        assert_eq!(concat(vec![("big".to_string(), &big[..]), ("x".into(), &b"x"[..])], &mut out).unwrap(), 200_001);
        assert_eq!(out.len(), 200_001);
        assert_eq!(out[..200_000], big[..]);
        assert_eq!(concat(Vec::<(String, &[u8])>::new(), &mut Vec::new()).unwrap(), 0);
    }
}
