//! Per-attempt limits and the memory limiter that enforces one of them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use mayfly_model::units::{ByteSize, HumanDuration};

/// What one attempt of a task may use. Every limit has a default and a key in
/// the job file's `[limits]` table of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall time of one call into the instance (`attempt_time`: an item, or
    /// the task's `start` or `finish`), enforced by epoch interruption and a
    /// host timer.
    pub attempt_time: HumanDuration,
    /// Total linear memory across all of the component's memories (`memory`).
    pub memory: ByteSize,
    /// Total bytes written to all outputs of one attempt (`output`).
    pub output: ByteSize,
    /// Bytes of log lines of one call, including stdout and stderr (`log`).
    pub log: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            attempt_time: HumanDuration(Duration::from_secs(600)),
            memory: ByteSize(512 << 20),
            output: ByteSize(4 << 30),
            log: ByteSize(1 << 20),
        }
    }
}

/// Tracks linear memory across every memory of one instance and refuses
/// growth past the limit (wasm sees `memory.grow` fail, Rust then aborts).
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    limit: usize,
    /// Current total bytes of all memories.
    total: usize,
    pub(crate) peak: usize,
    /// Set when a growth was refused, to classify the trap that follows.
    pub(crate) denied: bool,
}

impl MemoryLimiter {
    pub(crate) fn new(limit: u64) -> Self {
        MemoryLimiter { limit: usize::try_from(limit).unwrap_or(usize::MAX), total: 0, peak: 0, denied: false }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let grow = desired.saturating_sub(current);
        let next = self.total.saturating_add(grow);
        if next > self.limit {
            self.denied = true;
            return Ok(false);
        }
        self.total = next;
        self.peak = self.peak.max(next);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Tables hold function references; a million entries is far beyond any
        // real task and bounds the host memory they can take.
        Ok(desired <= 1_000_000)
    }
}
