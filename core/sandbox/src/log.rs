//! Task log lines: from the `log` host call and from the guest's stdout and
//! stderr, bounded by the attempt's log limit.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that was handled.
    Warn,
    /// A failure.
    Error,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        })
    }
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    /// The task's `log` calls (the sdk's `info!` and friends).
    Task,
    /// The guest's standard output.
    Stdout,
    /// The guest's standard error.
    Stderr,
}

/// One line a task logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Milliseconds since the attempt started.
    pub at_ms: u64,
    /// Severity.
    pub level: Level,
    /// Where it came from.
    pub source: LogSource,
    /// The text.
    pub message: String,
    /// Structured fields, in the order given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<(String, String)>,
}

impl std::fmt::Display for LogLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:>5} {}", self.level, self.message)?;
        for (k, v) in &self.fields {
            write!(f, " {k}={v}")?;
        }
        if self.source != LogSource::Task {
            write!(f, " ({})", if self.source == LogSource::Stdout { "stdout" } else { "stderr" })?;
        }
        Ok(())
    }
}

/// Partial stdout/stderr lines longer than this are emitted as they are.
const MAX_PARTIAL: usize = 8 * 1024;

/// The lines of one attempt, shared by the host calls and the stdio streams.
#[derive(Debug)]
pub(crate) struct LogBuffer {
    start: Instant,
    pub(crate) lines: Vec<LogLine>,
    bytes: u64,
    limit: u64,
    /// Set once the limit was exceeded; the attempt then fails.
    pub(crate) exceeded: bool,
    partial: [Vec<u8>; 2],
}

pub(crate) type SharedLog = Arc<Mutex<LogBuffer>>;

impl LogBuffer {
    pub(crate) fn new(start: Instant, limit: u64) -> SharedLog {
        Arc::new(Mutex::new(LogBuffer {
            start,
            lines: Vec::new(),
            bytes: 0,
            limit,
            exceeded: false,
            partial: [Vec::new(), Vec::new()],
        }))
    }

    /// Adds a line; `false` when it would pass the limit (nothing is added).
    pub(crate) fn push(
        &mut self,
        level: Level,
        source: LogSource,
        message: String,
        fields: Vec<(String, String)>,
    ) -> bool {
        let size = message.len() + fields.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>() + 1;
        if self.exceeded || self.bytes + size as u64 > self.limit {
            self.exceeded = true;
            return false;
        }
        self.bytes += size as u64;
        let at_ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.lines.push(LogLine { at_ms, level, source, message, fields });
        true
    }

    fn write_stdio(&mut self, source: LogSource, data: &[u8]) -> bool {
        let slot = usize::from(source == LogSource::Stderr);
        let level = if source == LogSource::Stderr { Level::Warn } else { Level::Info };
        let mut buf = std::mem::take(&mut self.partial[slot]);
        buf.extend_from_slice(data);
        let mut start = 0;
        let mut ok = true;
        while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&buf[start..start + pos]).into_owned();
            ok &= self.push(level, source, line, Vec::new());
            start += pos + 1;
        }
        buf.drain(..start);
        if buf.len() > MAX_PARTIAL {
            ok &= self.push(level, source, String::from_utf8_lossy(&buf).into_owned(), Vec::new());
            buf.clear();
        }
        self.partial[slot] = buf;
        ok
    }

    /// The lines of the call that just ended (unterminated stdout and stderr
    /// text included); the log limit counts afresh for the next call.
    /// `succeeded`: the call ended well, so a limit passed only by its last,
    /// unterminated output is noted in a line rather than failing it.
    pub(crate) fn take_call(&mut self, succeeded: bool) -> Vec<LogLine> {
        self.flush_partial();
        if self.exceeded && succeeded {
            // The call's unterminated output did not fit: say so, rather than
            // let the next call inherit the limit.
            let note = format!("(unterminated output past the log limit of {} bytes was dropped)", self.limit);
            self.lines.push(LogLine {
                at_ms: u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX),
                level: Level::Warn,
                source: LogSource::Task,
                message: note,
                fields: Vec::new(),
            });
        }
        self.exceeded = false;
        self.bytes = 0;
        std::mem::take(&mut self.lines)
    }

    /// Emits unterminated stdout/stderr text at the end of the attempt.
    pub(crate) fn flush_partial(&mut self) {
        for (slot, source) in [(0, LogSource::Stdout), (1, LogSource::Stderr)] {
            let buf = std::mem::take(&mut self.partial[slot]);
            if !buf.is_empty() {
                let level = if source == LogSource::Stderr { Level::Warn } else { Level::Info };
                self.push(level, source, String::from_utf8_lossy(&buf).into_owned(), Vec::new());
            }
        }
    }
}

/// The guest's stdout or stderr, turned into log lines.
#[derive(Clone)]
pub(crate) struct StdioLog {
    pub(crate) log: SharedLog,
    pub(crate) source: LogSource,
}

impl IsTerminal for StdioLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StdioLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StdioLog {
    async fn ready(&mut self) {}
}

impl OutputStream for StdioLog {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        let mut log = self.log.lock().map_err(|_| StreamError::trap("log lock poisoned"))?;
        if log.write_stdio(self.source, &bytes) { Ok(()) } else { Err(StreamError::trap("log limit exceeded")) }
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for StdioLog {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let ok = self.log.lock().map(|mut log| log.write_stdio(self.source, buf)).unwrap_or(false);
        let result = if ok { Ok(buf.len()) } else { Err(std::io::Error::other("log limit exceeded")) };
        std::task::Poll::Ready(result)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
