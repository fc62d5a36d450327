//! How an attempt or a task load can fail, each with a message that names the
//! cause and, for limits, the job-file key that sets it.

use std::path::PathBuf;

use mayfly_model::units::{ByteSize, HumanDuration};

/// Why an attempt failed. Every failure leaves no output behind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Failure {
    /// The attempt ran past its wall-time limit.
    #[error("timed out after {limit} (limit `attempt_time`)")]
    Timeout {
        /// The limit.
        limit: HumanDuration,
    },
    /// The task tried to grow its memory past the limit.
    #[error("ran out of memory: the limit is {limit} across all memories (limit `memory`)")]
    OutOfMemory {
        /// The limit.
        limit: ByteSize,
    },
    /// The task wrote more output than allowed.
    #[error("wrote more than {limit} of output (limit `output`)")]
    OutputLimit {
        /// The limit.
        limit: ByteSize,
    },
    /// The task logged more than allowed (log calls, stdout and stderr together).
    #[error("logged more than {limit} (limit `log`)")]
    LogLimit {
        /// The limit.
        limit: ByteSize,
    },
    /// The task panicked.
    #[error("panicked: {message}")]
    Panic {
        /// The panic message and location.
        message: String,
    },
    /// The task returned an error.
    #[error("failed: {message}{}", if *retryable { "" } else { " (not retryable)" })]
    TaskError {
        /// The task's message.
        message: String,
        /// Whether the task says a retry could help.
        retryable: bool,
    },
    /// The task trapped for another reason (an `unreachable`, a bad memory access...).
    #[error("trapped: {message}")]
    Trap {
        /// The trap as wasmtime describes it.
        message: String,
    },
    /// The host could not run the attempt (its staging directory, for example).
    #[error("host error: {message}")]
    Host {
        /// What went wrong.
        message: String,
    },
}

impl Failure {
    /// Whether running the item again could succeed. Deterministic limits
    /// (memory, output, log) and errors the task marks fatal are not retried.
    pub fn is_retryable(&self) -> bool {
        match self {
            Failure::Timeout { .. } | Failure::Panic { .. } | Failure::Trap { .. } | Failure::Host { .. } => true,
            Failure::TaskError { retryable, .. } => *retryable,
            Failure::OutOfMemory { .. } | Failure::OutputLimit { .. } | Failure::LogLimit { .. } => false,
        }
    }

    /// A short name for the kind of failure: `timeout`, `out_of_memory`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Timeout { .. } => "timeout",
            Failure::OutOfMemory { .. } => "out_of_memory",
            Failure::OutputLimit { .. } => "output_limit",
            Failure::LogLimit { .. } => "log_limit",
            Failure::Panic { .. } => "panic",
            Failure::TaskError { .. } => "task_error",
            Failure::Trap { .. } => "trap",
            Failure::Host { .. } => "host",
        }
    }
}

/// Why a [`Runtime`](crate::Runtime) could not be made: mayfly's own
/// failure (or the host's), never the task's.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// wasmtime could not make an engine, with the pooling allocator or
    /// without it.
    #[error("creating the wasm engine: {source:#} (pooling: {pooling:#})")]
    Engine {
        /// Why the engine without the pool failed.
        source: wasmtime::Error,
        /// Why the engine with the pool failed first.
        pooling: wasmtime::Error,
    },
    /// An interface could not be added to the linker.
    #[error("linking {interface}: {source}")]
    Link {
        /// WASI, or mayfly's task world.
        interface: &'static str,
        /// The cause.
        source: wasmtime::Error,
    },
    /// The thread that interrupts calls at their deadline could not start.
    #[error("starting the epoch thread: {0}")]
    EpochThread(#[source] std::io::Error),
}

/// Why the compile cache is not in use; the runtime works without it.
#[derive(Debug, thiserror::Error)]
pub enum CacheRefused {
    /// The directory could not be made, read or written.
    #[error("compile cache {}: {source}", dir.display())]
    Unusable {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Someone else owns it: its files are loaded as machine code.
    #[error("compile cache {} is owned by another user; not using it", .0.display())]
    OtherOwner(PathBuf),
    /// Group or others could write machine code into it.
    #[error("compile cache {} is writable by group or others; not using it (chmod 700 it)", .0.display())]
    Writable(PathBuf),
}

/// Why a task could not be loaded. Each names the task.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("task {task}: cannot read {}: {source}", path.display())]
    Read {
        /// The task's name.
        task: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not WebAssembly at all.
    #[error("task {task}: not a WebAssembly component (the file starts with {first_bytes}, not the `\\0asm` magic)")]
    NotWasm {
        /// The task's name.
        task: String,
        /// The first bytes, in hex.
        first_bytes: String,
    },
    /// The file is a core module, not a component.
    #[error(
        "task {task}: this is a core WebAssembly module, not a component; build tasks for \
         the wasm32-wasip2 target (`mayfly build <task dir>` does)"
    )]
    CoreModule {
        /// The task's name.
        task: String,
    },
    /// The component did not validate or compile.
    #[error("task {task}: invalid component: {reason}")]
    Invalid {
        /// The task's name.
        task: String,
        /// What the compiler said.
        reason: String,
    },
    /// The component is built for another version of the task interface.
    #[error(
        "task {task}: built for `{found}`, but this mayfly runs tasks for `mayfly:task@{expected}`; \
         rebuild the task with a mayfly-sdk of the same version"
    )]
    WrongVersion {
        /// The task's name.
        task: String,
        /// The interface it imports or exports.
        found: String,
        /// The version this host implements.
        expected: &'static str,
    },
    /// The component does not implement the task world.
    #[error("task {task}: not a mayfly task: {reason}")]
    NotATask {
        /// The task's name.
        task: String,
        /// What is missing or extra.
        reason: String,
    },
    /// The host itself failed (engine, cache).
    #[error("task {task}: {reason}")]
    Host {
        /// The task's name.
        task: String,
        /// What went wrong.
        reason: String,
    },
}
