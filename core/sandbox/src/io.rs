//! What a task reads and writes: input sources (a file, a byte range of one,
//! bytes in memory, a concatenation) and outputs staged in an attempt's own
//! directory until the attempt succeeds.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a task's input bytes come from. Implementations must be safe to read
/// from several threads; offsets are relative to the item's first byte.
pub trait InputSource: Send + Sync {
    /// The object's name as the task sees it.
    fn name(&self) -> &str;
    /// Length of the item in bytes.
    fn size(&self) -> u64;
    /// Offset of the item's first byte inside its object.
    fn offset_in_object(&self) -> u64 {
        0
    }
    /// Reads bytes at `offset` into `buf`; returns how many (0 only at the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

/// A whole local file, or a byte range of one.
#[derive(Debug)]
pub struct FileInput {
    name: String,
    file: File,
    start: u64,
    len: u64,
}

impl FileInput {
    /// The whole file at `path`, seen by the task as `name`.
    pub fn open(path: &Path, name: impl Into<String>) -> io::Result<Self> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "is a directory"));
        }
        Ok(FileInput { name: name.into(), file, start: 0, len: meta.len() })
    }

    /// Bytes `start..start + len` of the file at `path`.
    pub fn range(path: &Path, name: impl Into<String>, start: u64, len: u64) -> io::Result<Self> {
        let mut input = Self::open(path, name)?;
        let end = start.checked_add(len).filter(|&e| e <= input.len).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("range {start}..{} lies past the end of the file ({} bytes)", start + len, input.len),
            )
        })?;
        input.start = start;
        input.len = end - start;
        Ok(input)
    }
}

impl InputSource for FileInput {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.len
    }
    fn offset_in_object(&self) -> u64 {
        self.start
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(offset);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        self.file.read_at(&mut buf[..n], self.start + offset)
    }
}

/// Bytes held in memory.
#[derive(Debug, Clone)]
pub struct BytesInput {
    name: String,
    data: Arc<[u8]>,
    offset: u64,
}

impl BytesInput {
    /// An input named `name` holding `data`.
    pub fn new(name: impl Into<String>, data: impl Into<Arc<[u8]>>) -> Self {
        BytesInput { name: name.into(), data: data.into(), offset: 0 }
    }

    /// The same bytes, as a range starting at `offset` in its object.
    pub fn at_offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }
}

impl InputSource for BytesInput {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn offset_in_object(&self) -> u64 {
        self.offset
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.data.len());
        let n = buf.len().min(self.data.len() - start);
        buf[..n].copy_from_slice(&self.data[start..start + n]);
        Ok(n)
    }
}

/// An input opened only when it is first read, and closed once read to its
/// end: a concatenation of thousands of files (a reduce over every map
/// output) holds one open at a time, not thousands (the descriptor limit).
pub struct OpenOnRead {
    name: String,
    size: u64,
    open: Box<dyn Fn() -> io::Result<Arc<dyn InputSource>> + Send + Sync>,
    current: std::sync::Mutex<Option<Arc<dyn InputSource>>>,
}

impl OpenOnRead {
    /// `size` bytes named `name`, opened by `open` when needed (again after
    /// a read to the end, if read again).
    pub fn new(
        name: impl Into<String>,
        size: u64,
        open: impl Fn() -> io::Result<Arc<dyn InputSource>> + Send + Sync + 'static,
    ) -> Self {
        OpenOnRead { name: name.into(), size, open: Box::new(open), current: std::sync::Mutex::new(None) }
    }
}

impl std::fmt::Debug for OpenOnRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOnRead").field("name", &self.name).field("size", &self.size).finish()
    }
}

impl InputSource for OpenOnRead {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let mut current = self.current.lock().map_err(|_| io::Error::other("input state poisoned"))?;
        let source = match &*current {
            Some(s) => s.clone(),
            None => {
                let s = (self.open)()?;
                if s.size() != self.size {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} is {} bytes, {} were expected: it changed", self.name, s.size(), self.size),
                    ));
                }
                *current = Some(s.clone());
                s
            }
        };
        let want = buf.len().min((self.size - offset) as usize);
        let n = source.read_at(offset, &mut buf[..want])?;
        if n == 0 {
            // Shorter than committed: an error, never a silent end of the whole concatenation.
            *current = None;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} ended at byte {offset} of {}: it changed", self.name, self.size),
            ));
        }
        if offset + n as u64 >= self.size {
            *current = None;
        }
        Ok(n)
    }
}

/// Several inputs seen as one, one after the other: how a reduce task sees
/// every committed map output.
pub struct ConcatInput {
    name: String,
    parts: Vec<(u64, Arc<dyn InputSource>)>,
    size: u64,
}

impl ConcatInput {
    /// The concatenation of `parts`, named `name`.
    pub fn new(name: impl Into<String>, parts: Vec<Arc<dyn InputSource>>) -> Self {
        let mut size = 0;
        let parts = parts
            .into_iter()
            .map(|p| {
                let start = size;
                size += p.size();
                (start, p)
            })
            .collect();
        ConcatInput { name: name.into(), parts, size }
    }
}

impl std::fmt::Debug for ConcatInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcatInput").field("name", &self.name).field("parts", &self.parts.len()).finish()
    }
}

impl InputSource for ConcatInput {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let index = self.parts.partition_point(|(start, _)| *start <= offset).saturating_sub(1);
        for (start, part) in &self.parts[index..] {
            if offset < start + part.size() {
                return part.read_at(offset - start, buf);
            }
        }
        Ok(0)
    }
}

/// The task's handle on its input: the sequential-read cursor (the source
/// itself lives in the attempt's state).
#[derive(Debug)]
pub struct InputHandle {
    pub(crate) cursor: u64,
}

/// An output the task has open: an index into the attempt's [`OutputSet`].
#[derive(Debug)]
pub struct OutputHandle {
    pub(crate) index: usize,
}

/// One output of a successful attempt, staged and ready to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedOutput {
    /// Whose output it is: the item's key for an output opened while an item
    /// was processed, the shard's for one opened in `start` or `finish`
    /// (empty for a flat attempt, as `exec` runs).
    pub key: String,
    /// The name the task gave it (a relative path).
    pub name: String,
    /// Where it is staged (`<staging>/<key>/<name>`).
    pub path: PathBuf,
    /// Its length.
    pub bytes: u64,
}

struct OpenOutput {
    key: Arc<str>,
    name: String,
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    bytes: u64,
}

/// The outputs of one attempt, written under its own staging directory: each
/// in the folder of whoever opened it (`<staging>/<key>/<name>`), the current
/// key being the item's while an item is processed and the shard's otherwise.
pub(crate) struct OutputSet {
    staging: PathBuf,
    /// The key outputs opened now belong to.
    key: Arc<str>,
    files: Vec<OpenOutput>,
    /// (key, name) of every output, to refuse one opened twice without a scan.
    opened: std::collections::HashSet<(Arc<str>, String)>,
    pub(crate) total: u64,
    pub(crate) limit: u64,
}

/// Why an output name is refused, or `None` if it is fine.
pub fn check_output_name(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 255 {
        return Some(format!("output name {name:?} must be 1 to 255 bytes long"));
    }
    for part in name.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Some(format!("output name {name:?} has an empty, `.` or `..` part"));
        }
        if part.starts_with('.') || part.starts_with('_') {
            return Some(format!(
                "output name {name:?}: parts may not start with `.` or `_` (reserved for mayfly's own files)"
            ));
        }
        if let Some(c) = part.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
            return Some(format!(
                "output name {name:?} contains {c:?}; use letters, digits, `.`, `_`, `-`, and `/` between parts"
            ));
        }
    }
    None
}

impl OutputSet {
    pub(crate) fn new(staging: PathBuf, limit: u64) -> Self {
        OutputSet { staging, key: Arc::from(""), files: Vec::new(), opened: Default::default(), total: 0, limit }
    }

    /// Outputs opened from now on belong to `key` (`""`: the staging root).
    pub(crate) fn set_key(&mut self, key: &str) {
        if *self.key != *key {
            self.key = Arc::from(key);
        }
    }

    /// Opens a new output, or says why it cannot be.
    pub(crate) fn open(&mut self, name: &str) -> Result<usize, OpenError> {
        if let Some(reason) = check_output_name(name) {
            return Err(OpenError::Invalid(reason));
        }
        let id = (self.key.clone(), name.to_owned());
        if self.opened.contains(&id) {
            return Err(OpenError::Invalid(format!("output {name:?} is already open")));
        }
        // The key as one directory name: it cannot climb out of the staging,
        // nor meet another item's (mayfly_model::key::file_name).
        let path = if self.key.is_empty() {
            self.staging.join(name)
        } else {
            self.staging.join(mayfly_model::key::file_name(&self.key)).join(name)
        };
        let file = (|| {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            File::create_new(&path)
        })()
        .map_err(|e| OpenError::Storage(format!("creating output {name:?}: {e}")))?;
        self.opened.insert(id);
        self.files.push(OpenOutput {
            key: self.key.clone(),
            name: name.to_owned(),
            path,
            writer: Some(BufWriter::with_capacity(256 * 1024, file)),
            bytes: 0,
        });
        Ok(self.files.len() - 1)
    }

    /// Appends to output `index`. `Ok(Err)` is an I/O failure for the task to
    /// handle; `Err` means the output limit was hit and the attempt must stop.
    pub(crate) fn write(&mut self, index: usize, data: &[u8]) -> Result<Result<(), OpenError>, LimitHit> {
        if self.total.saturating_add(data.len() as u64) > self.limit {
            return Err(LimitHit);
        }
        let Some(out) = self.files.get_mut(index) else {
            return Ok(Err(OpenError::Closed));
        };
        let Some(writer) = out.writer.as_mut() else {
            return Ok(Err(OpenError::Closed));
        };
        if let Err(e) = writer.write_all(data) {
            return Ok(Err(OpenError::Storage(format!("writing output {:?}: {e}", out.name))));
        }
        out.bytes += data.len() as u64;
        self.total += data.len() as u64;
        Ok(Ok(()))
    }

    /// Flushes output `index` when the task drops it.
    pub(crate) fn close(&mut self, index: usize) -> io::Result<()> {
        match self.files.get_mut(index).and_then(|f| f.writer.take()) {
            Some(mut w) => w.flush(),
            None => Ok(()),
        }
    }

    /// The attempt succeeded: flush everything and list the staged outputs.
    pub(crate) fn finish(mut self) -> io::Result<Vec<StagedOutput>> {
        let mut staged = Vec::with_capacity(self.files.len());
        for f in &mut self.files {
            if let Some(mut w) = f.writer.take() {
                w.flush()?;
            }
            staged.push(StagedOutput {
                key: f.key.to_string(),
                name: f.name.clone(),
                path: f.path.clone(),
                bytes: f.bytes,
            });
        }
        Ok(staged)
    }

    /// The attempt failed: nothing it wrote may survive.
    pub(crate) fn discard(mut self) {
        for f in &mut self.files {
            f.writer = None;
        }
        let _ = std::fs::remove_dir_all(&self.staging);
    }
}

/// The output limit was reached.
#[derive(Debug)]
pub(crate) struct LimitHit;

/// Why an output could not be opened or written.
#[derive(Debug)]
pub(crate) enum OpenError {
    Invalid(String),
    Storage(String),
    Closed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_opened_on_read_holds_its_source_only_while_reading_it() {
        let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = opened.clone();
        let part = OpenOnRead::new("p", 5, move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Arc::new(BytesInput::new("p", &b"hello"[..])) as Arc<dyn InputSource>)
        });
        let concat = ConcatInput::new("all", vec![Arc::new(part) as Arc<dyn InputSource>]);
        let mut buf = [0u8; 3];
        assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 0, "not opened before a read");
        assert_eq!(concat.read_at(0, &mut buf).unwrap(), 3);
        assert_eq!(concat.read_at(3, &mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"lo");
        // Read to its end, it was let go; reading again opens it again.
        assert_eq!(concat.read_at(1, &mut buf).unwrap(), 3);
        assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 2);
        // A source whose size changed since it was committed is an error that says so.
        let changed = OpenOnRead::new("map/x/counts.tsv", 9, || {
            Ok(Arc::new(BytesInput::new("x", &b"short"[..])) as Arc<dyn InputSource>)
        });
        let e = changed.read_at(0, &mut buf).unwrap_err();
        assert!(e.to_string().contains("map/x/counts.tsv is 5 bytes, 9 were expected"), "{e}");
        // One that ends early (it shrank after it was opened) is an error, not
        // the end of the whole concatenation.
        struct Short;
        impl InputSource for Short {
            fn name(&self) -> &str {
                "short"
            }
            fn size(&self) -> u64 {
                4
            }
            fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
                Ok(if offset < 2 { buf.len().min(2 - offset as usize) } else { 0 })
            }
        }
        let short = OpenOnRead::new("map/s/counts.tsv", 4, || Ok(Arc::new(Short) as Arc<dyn InputSource>));
        assert_eq!(short.read_at(0, &mut buf).unwrap(), 2);
        let e = short.read_at(2, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }

    #[test]
    fn output_names() {
        for ok in ["counts.tsv", "by-day/2024-01-01.csv", "a_b.c", "X9"] {
            assert_eq!(check_output_name(ok), None, "{ok}");
        }
        for bad in ["", "/abs", "a//b", "../x", "a/../b", ".hidden", "_manifest.json", "sp ace", "é", "a\\b"] {
            assert!(check_output_name(bad).is_some(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn every_items_outputs_are_staged_inside_the_staging_and_apart_from_every_other_items() {
        let dir = tempfile::tempdir().expect("tempdir");
        let staging = dir.path().join("staging");
        let mut set = OutputSet::new(staging.clone(), 1 << 20);
        let mut paths = std::collections::HashSet::new();
        for key in ["../../x", "/abs", "A.txt", "a.txt", "a/b.txt", "a%2Fb.txt", "a\u{1}b"] {
            set.set_key(key);
            let at = set.open("o.txt").unwrap_or_else(|e| panic!("{key:?}: {e:?}"));
            let path = set.files[at].path.clone();
            assert!(path.starts_with(&staging) && path.exists(), "{key:?}: {}", path.display());
            assert_eq!(path.strip_prefix(&staging).unwrap().components().count(), 2, "{key:?}: one directory per key");
            assert!(paths.insert(path.to_string_lossy().to_lowercase()), "{key:?} meets another key ignoring case");
        }
    }

    #[test]
    fn ranges_and_concatenation() {
        let a: Arc<dyn InputSource> = Arc::new(BytesInput::new("a", &b"hello "[..]));
        let b: Arc<dyn InputSource> = Arc::new(BytesInput::new("b", &b"world"[..]));
        let cat = ConcatInput::new("all", vec![a, b]);
        assert_eq!(cat.size(), 11);
        let mut buf = [0u8; 16];
        let n = cat.read_at(4, &mut buf).expect("read");
        assert_eq!(&buf[..n], b"o ");
        let n = cat.read_at(6, &mut buf).expect("read");
        assert_eq!(&buf[..n], b"world");
        assert_eq!(cat.read_at(11, &mut buf).expect("read"), 0);

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").expect("write");
        let r = FileInput::range(&path, "f", 3, 4).expect("range");
        assert_eq!((r.size(), r.offset_in_object()), (4, 3));
        let n = r.read_at(0, &mut buf).expect("read");
        assert_eq!(&buf[..n], b"3456");
        assert!(FileInput::range(&path, "f", 8, 4).is_err());
    }
}
