//! The task host: runs mayfly tasks, WebAssembly components of the
//! `mayfly:task@0.2.0` world, in a sandbox with per-attempt limits.
//!
//! - [`Runtime`] owns the wasmtime engine (Cranelift, pooling allocator, epoch
//!   interruption), the linker with WASI and the mayfly imports, the epoch
//!   ticker thread and the on-disk compile cache. Make one per process.
//! - [`Runtime::load`] reads, checks and compiles a component once (or loads it
//!   from the cache) and pre-links it into a [`Task`].
//! - [`Runtime::start`] begins a [`Session`]: one instance from the pre-linked
//!   task for one shard attempt, its parameters, [`Limits`] and staging
//!   directory. [`Session::item`] streams each item of the shard through that
//!   instance (a call into a live instance costs microseconds; a new instance
//!   far more), and [`Session::finish`] ends it, returning the staged outputs
//!   (nothing on failure: the staging directory is removed), the log lines,
//!   and a classified [`Failure`]. Every call is classified on its own, so a
//!   failing item is named as such.
//! - [`Runtime::run`] is one item in one session (what `exec` and the reduce
//!   run): an [`Attempt`] in, an [`Outcome`] out.
//!
//! In mayfly's flow (ARCHITECTURE.md, "Crates"; `core/tests/flow.rs` checks it)
//! it imports only `mayfly-model` (sizes and durations); it must not import the
//! data path, the cluster, the operators' crate or the binary: it knows an
//! input only as an [`InputSource`] and an output only as a staged file.
//!
//! The sandbox gives no ambient authority: no preopened directories, no
//! environment variables, no arguments, no sockets or name lookups. WASI is
//! linked so that standard-library code works, and every capability in it is
//! denied by the context we build; stdout and stderr become log lines.

mod bindings;
mod cache;
mod failure;
mod io;
mod limits;
mod log;
mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mayfly_model::units::ByteSize;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, types::ComponentItem};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};
use wasmtime_wasi::WasiCtxBuilder;

pub use cache::{default_cache_dir, default_cache_root};
pub use failure::{CacheRefused, Failure, LoadError, StartError};
pub use io::{BytesInput, ConcatInput, FileInput, InputSource, OpenOnRead, StagedOutput, check_output_name};
pub use limits::Limits;
pub use log::{Level, LogLine, LogSource};

use bindings::TaskPre;
use io::{InputHandle, OutputSet};
use state::{LimitStop, State};

/// How often the epoch ticks; attempt time limits are rounded up to it.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Extra wall time after the limit before the host abandons an attempt that is
/// blocked in a host call (where epoch interruption cannot reach it).
const HOST_CALL_GRACE: Duration = Duration::from_secs(1);

/// How to build a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled components are cached; `None` compiles every load.
    pub cache_dir: Option<PathBuf>,
    /// Attempts that may run at the same time in this process (sizes the pool).
    pub max_concurrent: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { cache_dir: default_cache_dir(), max_concurrent: 16 }
    }
}

/// The engine, linker and cache shared by every attempt in a process.
pub struct Runtime {
    engine: Engine,
    linker: Linker<State>,
    cache: Option<cache::CompileCache>,
    engine_key: String,
    /// Set on drop to stop the epoch ticker thread.
    stop: Arc<AtomicBool>,
    /// Why the compile cache is not in use, if it is not.
    pub cache_warning: Option<CacheRefused>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("cache", &self.cache).finish_non_exhaustive()
    }
}

/// A task compiled and pre-linked, ready to be instantiated per item.
pub struct Task {
    name: String,
    sha256: String,
    pre: TaskPre<State>,
    /// Whether this load was served by the compile cache.
    pub from_cache: bool,
    /// Time spent compiling or loading from the cache.
    pub load_time: Duration,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task").field("name", &self.name).field("sha256", &self.sha256).finish_non_exhaustive()
    }
}

impl Task {
    /// The task's name (the component's file name without extension).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hex sha256 of the component's bytes: the task's identity.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// One attempt at one item in an instance of its own (see [`Runtime::run`]).
#[derive(Clone)]
pub struct Attempt {
    /// The item.
    pub input: Arc<dyn InputSource>,
    /// The task's parameters, a JSON object.
    pub params: Arc<str>,
    /// The limits for this attempt.
    pub limits: Limits,
    /// A directory for this attempt's outputs; created if missing, removed on failure.
    pub staging: PathBuf,
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("input", &self.input.name())
            .field("limits", &self.limits)
            .field("staging", &self.staging)
            .finish()
    }
}

/// What an attempt did.
#[derive(Debug)]
pub struct Outcome {
    /// Success, or why not.
    pub result: Result<(), Failure>,
    /// The staged outputs (empty unless the attempt succeeded).
    pub outputs: Vec<StagedOutput>,
    /// Everything the task logged, in order.
    pub logs: Vec<LogLine>,
    /// Input bytes the task read.
    pub input_read: u64,
    /// Peak linear memory of the instance.
    pub peak_memory: u64,
    /// The last progress the task reported.
    pub progress: Option<(u64, u64)>,
    /// Wall time of the attempt.
    pub elapsed: Duration,
}

/// Which shard an instance serves (what the task's `start` is told).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// The job's id.
    pub job: String,
    /// The shard's number.
    pub shard: u32,
    /// Which attempt at it (1 for the first; 0 for a preflight).
    pub attempt: u32,
    /// How many items the instance will be given.
    pub items: u32,
}

/// How to begin a [`Session`].
#[derive(Debug, Clone)]
pub struct ShardStart {
    /// The shard.
    pub info: ShardInfo,
    /// The task's parameters, a JSON object.
    pub params: Arc<str>,
    /// The limits: memory for the instance's life, output bytes for the
    /// whole attempt, wall time and log bytes for each call.
    pub limits: Limits,
    /// A directory for the attempt's outputs; created if missing, removed
    /// when the attempt fails or is discarded.
    pub staging: PathBuf,
    /// Where the shard's own outputs (opened in `start` or `finish`) go under
    /// `staging`; `""` puts them at its root.
    pub shard_key: String,
    /// The job's reduce partitions, as the task's `partitions()` answers (1
    /// without a partitioned reduce).
    pub partitions: u32,
}

/// What one call into the instance (`start` or one `item`) did.
#[derive(Debug, Clone)]
pub struct Call {
    /// Success, or why not.
    pub result: Result<(), Failure>,
    /// What the task logged during the call, in order.
    pub logs: Vec<LogLine>,
    /// Input bytes the task read.
    pub input_read: u64,
    /// Wall time of the call.
    pub elapsed: Duration,
}

/// One instance serving one shard attempt: begun by [`Runtime::start`], fed
/// with [`Session::item`], ended by [`Session::finish`] (outputs kept) or
/// [`Session::discard`] (nothing kept). After a failed call the instance is
/// not entered again (a trap leaves it unusable, and a task error may have
/// left its state half-updated): every later call returns that failure.
pub struct Session {
    store: Store<State>,
    instance: Option<bindings::Task>,
    limits: Limits,
    staging: PathBuf,
    shard_key: String,
    log: log::SharedLog,
    started: Instant,
    failed: Option<Failure>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("staging", &self.staging).field("failed", &self.failed).finish()
    }
}

/// How a call into an instance ended: past its wall time, trapped, or with the task's answer.
type CallResult =
    Result<wasmtime::Result<Result<(), bindings::mayfly::task::types::TaskError>>, tokio::time::error::Elapsed>;

/// An input with nothing in it, for the time between items.
fn no_input() -> Arc<dyn InputSource> {
    Arc::new(BytesInput::new("", Vec::new()))
}

impl Runtime {
    /// Builds the engine and linker, and opens the compile cache.
    pub fn new(config: &RuntimeConfig) -> Result<Self, StartError> {
        let engine = build_engine(config.max_concurrent.max(1))?;
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|source| StartError::Link { interface: "WASI", source })?;
        bindings::Task::add_to_linker::<_, wasmtime::component::HasSelf<State>>(&mut linker, |s| s)
            .map_err(|source| StartError::Link { interface: "mayfly:task", source })?;

        let (cache, cache_warning) = match &config.cache_dir {
            None => (None, None),
            Some(dir) => match cache::CompileCache::open(dir) {
                Ok(c) => (Some(c), None),
                Err(refused) => (None, Some(refused)),
            },
        };
        let engine_key = cache::engine_key(&engine);

        let stop = Arc::new(AtomicBool::new(false));
        let (ticker_engine, ticker_stop) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("mayfly-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(StartError::EpochThread)?;

        Ok(Runtime { engine, linker, cache, engine_key, stop, cache_warning })
    }

    /// Loads the component at `path` (see [`Runtime::load_bytes`]).
    pub fn load(&self, path: &Path) -> Result<Task, LoadError> {
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "task".into());
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            task: name.clone(),
            path: path.to_owned(),
            source,
        })?;
        self.load_bytes(&name, &bytes)
    }

    /// Checks that `bytes` is a component of the task world, compiles it (or
    /// takes it from the cache) and pre-links it.
    pub fn load_bytes(&self, name: &str, bytes: &[u8]) -> Result<Task, LoadError> {
        let started = Instant::now();
        let task = name.to_owned();
        check_header(&task, bytes)?;
        let sha256 = hex::encode(Sha256::digest(bytes));
        let cached = self.cache.as_ref().and_then(|c| c.load(&self.engine, &sha256, &self.engine_key));
        let from_cache = cached.is_some();
        let component = match cached {
            Some(c) => c,
            None => Component::new(&self.engine, bytes)
                .map_err(|e| LoadError::Invalid { task: task.clone(), reason: format!("{e:#}") })?,
        };
        check_world(&task, &self.engine, &component)?;
        if !from_cache && let Some(cache) = &self.cache {
            // Only tasks are cached: a component refused above never is.
            cache.store(&component, &sha256, &self.engine_key);
        }
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| LoadError::NotATask {
            task: task.clone(),
            reason: format!("its imports cannot be satisfied by the sandbox: {e:#}"),
        })?;
        let pre = TaskPre::new(instance_pre)
            .map_err(|e| LoadError::NotATask { task: task.clone(), reason: format!("{e:#}") })?;
        Ok(Task { name: task, sha256, pre, from_cache, load_time: started.elapsed() })
    }

    /// Begins a shard attempt: a fresh instance of `task`, and its `start`.
    /// The session is returned even when `start` failed (its later calls
    /// then fail the same way). Never panics on anything the task does.
    pub async fn start(&self, task: &Task, shard: ShardStart) -> (Session, Call) {
        let started = Instant::now();
        let limits = shard.limits;
        let log = log::LogBuffer::new(started, limits.log.0);
        let mut outputs = OutputSet::new(shard.staging.clone(), limits.output.0);
        outputs.set_key(&shard.shard_key);
        let store = self.store(&limits, &log, shard.params.clone(), shard.partitions, Some(outputs));
        let mut session = Session {
            store,
            instance: None,
            limits,
            staging: shard.staging,
            shard_key: shard.shard_key,
            log,
            started,
            failed: None,
        };
        if let Err(e) = std::fs::create_dir_all(&session.staging) {
            let message = format!("creating staging directory {}: {e}", session.staging.display());
            let call = session.fail(Failure::Host { message }, started);
            return (session, call);
        }
        let info = bindings::mayfly::task::types::ShardInfo {
            job: shard.info.job,
            shard: shard.info.shard,
            attempt: shard.info.attempt,
            items: shard.info.items,
        };
        let wall = session.arm();
        let (store, slot) = (&mut session.store, &mut session.instance);
        let result = tokio::time::timeout(wall, async move {
            let instance = task.pre.instantiate_async(&mut *store).await?;
            let result = instance.call_start(&mut *store, &info).await;
            *slot = Some(instance);
            result
        })
        .await;
        let call = session.classify(result, started);
        (session, call)
    }

    /// Instantiates `task` under a `memory` limit without calling it: what an
    /// instance takes before it runs anything (the memories and tables the
    /// component declares, the snapshot of a pre-initialized one, such as a
    /// Python task's interpreter). `Ok` is the memory it took; a component
    /// too large for the limit is `Failure::OutOfMemory`.
    pub async fn check_instance(&self, task: &Task, memory: ByteSize) -> Result<u64, Failure> {
        let limits = Limits { memory, ..Limits::default() };
        let log = log::LogBuffer::new(Instant::now(), limits.log.0);
        let mut store = self.store(&limits, &log, Arc::from("{}"), 1, None);
        store.set_epoch_deadline(u64::MAX / 2);
        match task.pre.instantiate_async(&mut store).await {
            Ok(_) => Ok(store.data().limiter.peak as u64),
            Err(_) if store.data().limiter.denied => Err(Failure::OutOfMemory { limit: memory }),
            Err(e) => Err(Failure::Trap { message: format!("{e:#}") }),
        }
    }

    /// A store for one instance: its memory limiter, its log, no input yet.
    fn store(
        &self,
        limits: &Limits,
        log: &log::SharedLog,
        params: Arc<str>,
        partitions: u32,
        outputs: Option<OutputSet>,
    ) -> Store<State> {
        // No preopens, no environment, no arguments, no network: the builder's
        // defaults deny them all; only stdout and stderr are wired, to the log.
        let wasi = WasiCtxBuilder::new()
            .stdout(log::StdioLog { log: log.clone(), source: LogSource::Stdout })
            .stderr(log::StdioLog { log: log.clone(), source: LogSource::Stderr })
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = State {
            wasi,
            table: wasmtime::component::ResourceTable::new(),
            limiter: limits::MemoryLimiter::new(limits.memory.0),
            input: no_input(),
            input_read: 0,
            params,
            partitions: partitions.max(1),
            outputs,
            log: log.clone(),
            panic: None,
            stopped_by: None,
            progress: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store
    }

    /// Runs one item in an instance of its own (`start`, `item`, `finish`),
    /// with every output at the staging root. Never panics on anything the
    /// task does.
    pub async fn run(&self, task: &Task, attempt: Attempt) -> Outcome {
        let shard = ShardStart {
            info: ShardInfo { job: String::new(), shard: 0, attempt: 1, items: 1 },
            params: attempt.params,
            limits: attempt.limits,
            staging: attempt.staging,
            shard_key: String::new(),
            partitions: 1,
        };
        let (mut session, start) = self.start(task, shard).await;
        let mut logs = start.logs;
        let mut input_read = 0;
        if start.result.is_ok() {
            let item = session.item(attempt.input, None).await;
            logs.extend(item.logs);
            input_read = item.input_read;
        }
        let mut outcome = session.finish().await;
        logs.append(&mut outcome.logs);
        outcome.logs = logs;
        outcome.input_read = input_read;
        outcome
    }
}

impl Session {
    /// Processes one item. Its outputs go under `key` (`None`: with the
    /// shard's). After a failure, the session is spent.
    pub async fn item(&mut self, input: Arc<dyn InputSource>, key: Option<&str>) -> Call {
        let started = Instant::now();
        if let Some(f) = &self.failed {
            return Call { result: Err(f.clone()), logs: Vec::new(), input_read: 0, elapsed: Duration::ZERO };
        }
        let state = self.store.data_mut();
        state.input = input;
        state.input_read = 0;
        if let Some(outputs) = state.outputs.as_mut() {
            outputs.set_key(key.unwrap_or(&self.shard_key));
        }
        let wall = self.arm();
        let (store, slot) = (&mut self.store, &self.instance);
        let result = tokio::time::timeout(wall, async move {
            let Some(instance) = slot.as_ref() else { wasmtime::bail!("the instance is gone") };
            let handle = store.data_mut().table.push(InputHandle { cursor: 0 })?;
            let rep = handle.rep();
            let result = instance.call_item(&mut *store, handle).await;
            // The host owns the item; the task only borrowed it.
            let _ = store.data_mut().table.delete(wasmtime::component::Resource::<InputHandle>::new_own(rep));
            result
        })
        .await;
        let mut call = self.classify(result, started);
        let state = self.store.data_mut();
        call.input_read = state.input_read;
        state.input = no_input();
        if let Some(outputs) = state.outputs.as_mut() {
            outputs.set_key(&self.shard_key);
        }
        call.elapsed = started.elapsed();
        call
    }

    /// Ends the attempt: the task's `finish`, then the outputs are flushed
    /// and listed. On any failure (now or earlier) nothing is kept.
    pub async fn finish(mut self) -> Outcome {
        let mut logs = Vec::new();
        if self.failed.is_none() {
            let started = Instant::now();
            let wall = self.arm();
            let (store, slot) = (&mut self.store, &self.instance);
            let result = tokio::time::timeout(wall, async move {
                let Some(instance) = slot.as_ref() else { wasmtime::bail!("the instance is gone") };
                instance.call_finish(&mut *store).await
            })
            .await;
            let call = self.classify(result, started);
            logs = call.logs;
        }
        let state = self.store.data_mut();
        let outputs = state.outputs.take();
        let (result, staged) = match (self.failed.take(), outputs) {
            (None, Some(outputs)) => match outputs.finish() {
                Ok(staged) => (Ok(()), staged),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&self.staging);
                    (Err(Failure::Host { message: format!("finishing outputs: {e}") }), Vec::new())
                }
            },
            (None, None) => (Ok(()), Vec::new()),
            (Some(f), outputs) => {
                if let Some(o) = outputs {
                    o.discard();
                }
                let _ = std::fs::remove_dir_all(&self.staging);
                (Err(f), Vec::new())
            }
        };
        Outcome {
            result,
            outputs: staged,
            logs,
            input_read: 0,
            peak_memory: state.limiter.peak as u64,
            progress: state.progress,
            elapsed: self.started.elapsed(),
        }
    }

    /// Ends the attempt keeping nothing (the shard goes back, or its lease was lost).
    pub fn discard(mut self) {
        if let Some(o) = self.store.data_mut().outputs.take() {
            o.discard();
        }
        let _ = std::fs::remove_dir_all(&self.staging);
    }

    fn fail(&mut self, failure: Failure, started: Instant) -> Call {
        self.failed = Some(failure.clone());
        let logs = self.log.lock().map(|mut l| l.take_call(false)).unwrap_or_default();
        Call { result: Err(failure), logs, input_read: 0, elapsed: started.elapsed() }
    }

    /// Arms the per-call wall-time limit: epoch interruption at the limit,
    /// and (returned) the limit plus a grace for a call blocked in the host,
    /// where epochs cannot reach it.
    fn arm(&mut self) -> Duration {
        // A growth refused in an earlier call that the task survived is not
        // this call's cause of failure.
        self.store.data_mut().limiter.denied = false;
        let ticks = self.limits.attempt_time.0.as_millis().div_ceil(EPOCH_TICK.as_millis()).max(1);
        self.store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        self.limits.attempt_time.0 + HOST_CALL_GRACE
    }

    /// Classifies how one call into the instance ended, on its own.
    fn classify(&mut self, result: CallResult, started: Instant) -> Call {
        let limits = self.limits;
        let classified = match result {
            Err(_elapsed) => Err(Failure::Timeout { limit: limits.attempt_time }),
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(Failure::TaskError { message: e.message, retryable: e.retryable }),
            Ok(Err(trap)) => Err(classify_trap(&trap, self.store.data(), &limits)),
        };
        match classified {
            Ok(()) => {
                let logs = self.log.lock().map(|mut l| l.take_call(true)).unwrap_or_default();
                Call { result: Ok(()), logs, input_read: 0, elapsed: started.elapsed() }
            }
            Err(f) => self.fail(f, started),
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn build_engine(max_concurrent: u32) -> Result<Engine, StartError> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    // `MAYFLY_PROFILE=perfmap` writes /tmp/perf-<pid>.map so that `perf`
    // can name the functions of compiled tasks.
    if std::env::var("MAYFLY_PROFILE").as_deref() == Ok("perfmap") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(max_concurrent)
        .total_core_instances(max_concurrent * 16)
        .total_memories(max_concurrent * 4)
        .total_tables(max_concurrent * 16)
        .total_stacks(max_concurrent)
        .max_memory_size(1 << 32);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    match Engine::new(&config) {
        Ok(engine) => Ok(engine),
        Err(pooling_error) => {
            // Some hosts cap virtual memory (ulimit -v) below what the pool
            // reserves; fall back to allocating per instance.
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            Engine::new(&config).map_err(|source| StartError::Engine { source, pooling: pooling_error })
        }
    }
}

/// Refuses what is not a component before handing it to the compiler, with a
/// message that says what the file is instead.
fn check_header(task: &str, bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        let first_bytes = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
        let first_bytes = if first_bytes.is_empty() { "nothing (the file is empty)".to_owned() } else { first_bytes };
        return Err(LoadError::NotWasm { task: task.to_owned(), first_bytes });
    }
    // Bytes 4..8: version 1 with layer 0 is a core module; layer 1 is a component.
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(LoadError::CoreModule { task: task.to_owned() });
    }
    Ok(())
}

/// Checks the component's imports and exports against the task world, so that
/// a task for another interface version fails with a message saying so.
fn check_world(task: &str, engine: &Engine, component: &Component) -> Result<(), LoadError> {
    let ty = component.component_type();
    let expected_prefix = format!("{}/", bindings::WIT_PACKAGE);
    for (name, item) in ty.imports(engine) {
        // World-level `use` re-imports types (`input`, `task-error`) by name:
        // those are types, not capabilities.
        if matches!(item.ty, ComponentItem::Type(_) | ComponentItem::Resource(_)) {
            continue;
        }
        if let Some(rest) = name.strip_prefix(&expected_prefix) {
            let version = rest.split_once('@').map(|(_, v)| v);
            if version != Some(bindings::WIT_VERSION) {
                return Err(LoadError::WrongVersion {
                    task: task.to_owned(),
                    found: name.to_owned(),
                    expected: bindings::WIT_VERSION,
                });
            }
        } else if !name.starts_with("wasi:") {
            return Err(LoadError::NotATask {
                task: task.to_owned(),
                reason: format!("it imports `{name}`, which the sandbox does not provide"),
            });
        }
    }
    let exports: Vec<(String, bool)> = ty
        .exports(engine)
        .map(|(name, item)| (name.to_owned(), matches!(item.ty, ComponentItem::ComponentFunc(_))))
        .collect();
    let missing: Vec<String> = ["start", "item", "finish"]
        .into_iter()
        .filter(|want| !exports.iter().any(|(name, is_func)| name == want && *is_func))
        .map(|n| format!("`{n}`"))
        .collect();
    if !missing.is_empty() {
        let list = if exports.is_empty() {
            "nothing".to_owned()
        } else {
            exports.iter().map(|(n, _)| format!("`{n}`")).collect::<Vec<_>>().join(", ")
        };
        return Err(LoadError::NotATask {
            task: task.to_owned(),
            reason: format!(
                "it does not export {} of `mayfly:task/task@{}` (it exports {list})",
                missing.join(", "),
                bindings::WIT_VERSION
            ),
        });
    }
    Ok(())
}

fn classify_trap(trap: &wasmtime::Error, state: &State, limits: &Limits) -> Failure {
    match state.stopped_by {
        Some(LimitStop::Output) => return Failure::OutputLimit { limit: limits.output },
        Some(LimitStop::Log) => return Failure::LogLimit { limit: limits.log },
        None => {}
    }
    if state.log.lock().map(|l| l.exceeded).unwrap_or(false) {
        return Failure::LogLimit { limit: limits.log };
    }
    if trap.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return Failure::Timeout { limit: limits.attempt_time };
    }
    if state.limiter.denied {
        return Failure::OutOfMemory { limit: limits.memory };
    }
    if let Some(message) = &state.panic {
        return Failure::Panic { message: message.clone() };
    }
    // The root cause says what happened ("wasm `unreachable` instruction
    // executed"); the innermost named frame says where.
    let mut message = trap.root_cause().to_string();
    if let Some(bt) = trap.downcast_ref::<wasmtime::WasmBacktrace>()
        && let Some(name) = bt.frames().iter().find_map(|f| f.func_name())
    {
        message.push_str(&format!(" (in {name})"));
    }
    Failure::Trap { message }
}
