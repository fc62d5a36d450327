use std::fmt;
use std::io::{self, BufRead, Read, Seek, SeekFrom};

use crate::bindings::mayfly::task::types::{Input as RawInput, IoError};

/// How much the input asks the host for at a time. Large enough that the cost
/// of a host call is negligible per byte, small enough to keep memory flat.
const CHUNK: u32 = 256 * 1024;

/// The item being processed: a whole object, or a byte range of one.
///
/// Reads are buffered and pulled from the host on demand, so reading a large
/// object takes no more memory than one chunk. Offsets given to [`Seek`] are
/// relative to the start of the item.
pub struct Input<'a> {
    raw: &'a RawInput,
    name: String,
    size: u64,
    /// Offset of the next byte `read` returns.
    pos: u64,
    buf: Vec<u8>,
    /// Position inside `buf` of the next unread byte; `buf[at..]` starts at `pos`.
    at: usize,
}

/// The error inside an [`io::Error`] that came from the host's storage; it marks
/// the failure as retryable when converted into [`crate::Error`].
#[derive(Debug)]
pub(crate) struct HostStorageError(pub(crate) String);

impl fmt::Display for HostStorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host storage error: {}", self.0)
    }
}

impl std::error::Error for HostStorageError {}

pub(crate) fn io_error(err: IoError) -> io::Error {
    match err {
        IoError::Storage(msg) => io::Error::other(HostStorageError(msg)),
        IoError::Invalid(msg) => io::Error::new(io::ErrorKind::InvalidInput, msg),
        IoError::Closed => io::Error::new(io::ErrorKind::BrokenPipe, "resource already finished"),
    }
}

impl<'a> Input<'a> {
    pub(crate) fn new(raw: &'a RawInput) -> Self {
        Input { name: raw.name(), size: raw.size(), raw, pos: 0, buf: Vec::new(), at: 0 }
    }

    /// The object's name, relative to the job's input location.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The item's length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Offset of this item inside its object: 0 for a whole object, the range's
    /// start when the job split a large object into ranges.
    pub fn offset_in_object(&self) -> u64 {
        self.raw.offset_in_object()
    }

    /// The current read position, relative to the start of the item.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn fetch(&mut self, max: u32) -> io::Result<Vec<u8>> {
        self.raw.read_at(self.pos, max).map_err(io_error)
    }
}

impl fmt::Debug for Input<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Input")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("position", &self.pos)
            .finish()
    }
}

impl Read for Input<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at == self.buf.len() && out.len() >= CHUNK as usize {
            // A large read goes straight through, without a copy into our buffer.
            let data = self.fetch(u32::try_from(out.len()).unwrap_or(u32::MAX))?;
            out[..data.len()].copy_from_slice(&data);
            self.pos += data.len() as u64;
            return Ok(data.len());
        }
        let n = {
            let available = self.fill_buf()?;
            let n = available.len().min(out.len());
            out[..n].copy_from_slice(&available[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Input<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.at == self.buf.len() {
            self.buf = self.fetch(CHUNK)?;
            self.at = 0;
        }
        Ok(&self.buf[self.at..])
    }

    fn consume(&mut self, amount: usize) {
        let amount = amount.min(self.buf.len() - self.at);
        self.at += amount;
        self.pos += amount as u64;
    }
}

impl Seek for Input<'_> {
    fn seek(&mut self, target: SeekFrom) -> io::Result<u64> {
        let new = match target {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(delta) => self.size.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.pos.checked_add_signed(delta),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start of the input"))?;
        // Keep the buffer when the target lies inside it.
        let buf_start = self.pos - self.at as u64;
        let buf_end = buf_start + self.buf.len() as u64;
        if (buf_start..=buf_end).contains(&new) {
            self.at = (new - buf_start) as usize;
        } else {
            self.buf.clear();
            self.at = 0;
        }
        self.pos = new;
        Ok(new)
    }
}
