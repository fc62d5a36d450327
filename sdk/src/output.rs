use std::cell::RefCell;
use std::fmt;
use std::io::{self, Write};

use crate::bindings::mayfly::task::host;
use crate::bindings::mayfly::task::types::Output as RawOutput;
use crate::input::io_error;

/// Bytes buffered in the task before they are handed to the host in one call.
const BUFFER: usize = 64 * 1024;

thread_local! {
    /// The first error from flushing an output in `Drop`, reported when the task returns.
    static DEFERRED: RefCell<Option<crate::Error>> = const { RefCell::new(None) };
}

pub(crate) fn take_deferred_error() -> crate::Result<()> {
    match DEFERRED.with(|d| d.borrow_mut().take()) {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// Opens the task's named outputs.
#[derive(Debug, Default)]
pub struct Outputs {
    _private: (),
}

impl Outputs {
    pub(crate) fn new() -> Self {
        Outputs { _private: () }
    }

    /// Opens a new output called `name`: letters, digits, `.`, `_` and `-`,
    /// with `/` between parts (`counts.tsv`, `by-day/2024-01-01.csv`).
    ///
    /// Opened while an item is processed, the output is that item's
    /// (`map/<item>/<name>`); opened in [`crate::Task::start`] or
    /// [`crate::Task::finish`], it is the shard's (`map/_shards/<shard>/<name>`).
    /// Each name can be opened once per item, and once for the shard. Outputs
    /// become visible only when the shard attempt commits.
    pub fn create(&mut self, name: &str) -> io::Result<Output> {
        let raw = host::open_output(name).map_err(io_error)?;
        Ok(Output::from_raw(name.to_owned(), raw))
    }

    /// Opens output `name` split into the job's reduce partitions
    /// ([`crate::partitions`]): a record goes to the part of its key
    /// ([`crate::partition`]), output `part-<p>/<name>`, which reduce
    /// partition `p` reads. Where it belongs follows [`Outputs::create`]: open
    /// it in `finish` for the shard's (a combiner's) output.
    pub fn partitioned(&mut self, name: &str) -> io::Result<crate::Partitioned> {
        crate::Partitioned::new(name, crate::partitions())
    }
}

/// Refuses a name the host would: checked before any part is opened.
pub(crate) fn check_name(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.split('/').all(|part| {
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if ok { Ok(()) } else { Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid output name {name:?}"))) }
}

/// One named output, written as a [`Write`]. Buffered: call [`Output::finish`]
/// (or let it drop) when done.
pub struct Output {
    name: String,
    raw: RawOutput,
    buf: Vec<u8>,
}

impl Output {
    pub(crate) fn from_raw(name: String, raw: RawOutput) -> Self {
        Output { name, raw, buf: Vec::with_capacity(BUFFER) }
    }

    /// The output's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Flushes what is buffered and reports any error.
    pub fn finish(mut self) -> io::Result<()> {
        self.flush()
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Output").field("name", &self.name).finish()
    }
}

impl Write for Output {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > BUFFER {
            self.flush()?;
        }
        if data.len() >= BUFFER {
            self.raw.write(data).map_err(io_error)?;
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let result = self.raw.write(&self.buf).map_err(io_error);
            self.buf.clear();
            result?;
        }
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if let Err(err) = self.flush() {
            let err = crate::Error::from(err);
            let err = crate::Error::fatal(format!("writing output {}: {}", self.name, err.message()));
            DEFERRED.with(|d| {
                d.borrow_mut().get_or_insert(err);
            });
        }
    }
}
