//! # mayfly-sdk: write mayfly tasks in plain Rust
//!
//! A mayfly task processes input items (files, or byte ranges of them) and
//! writes named outputs. It is compiled to a WebAssembly component
//! (`wasm32-wasip2`) and runs in mayfly's sandbox, which gives it no files, no
//! environment and no network: everything goes through this crate.
//!
//! The job's inputs are cut into shards; one instance of the task serves one
//! shard (every item of it, in order), so a task can keep state across the
//! items of a shard and write one combined output at its end.
//!
//! - A **function** with `#[task]` is called once per item; its parameters are
//!   parsed once per shard. It keeps no state, and its outputs belong to the
//!   item (`map/<item>/<name>` in the job's output).
//! - A **struct** implementing [`Task`], with `#[task]` on the `impl`, is made
//!   by [`Task::start`] at the start of a shard, given each item by
//!   [`Task::item`], and ended by [`Task::finish`]: a combiner (a word count
//!   per shard instead of per file) writes its outputs there, and they belong
//!   to the shard (`map/_shards/<shard>/<name>`).
//!
//! - [`Input`] is the item, read as [`std::io::Read`], [`std::io::BufRead`]
//!   and [`std::io::Seek`]; it is pulled from the host in chunks, so a task
//!   never needs the whole object in memory.
//! - [`Outputs`] opens named outputs, each an [`std::io::Write`]. Outputs become
//!   visible only if the task returns `Ok`; a failed attempt leaves nothing.
//! - [`info!`], [`warn!`] and friends log lines (with optional fields) that the
//!   operator sees next to the job; `println!` works too and becomes a log line.
//! - Parameters come from the job file as any type that implements
//!   [`serde::Deserialize`].
//! - Return [`Error::retryable`] when running the same item again could succeed
//!   and [`Error::fatal`] (or `?` on any error) when it cannot. A panic fails the
//!   attempt with the panic's message.
//!
//! ## Example
//!
//! ```no_run
//! use mayfly_sdk::{Input, Outputs, Result, info, task};
//! use serde::Deserialize;
//! use std::io::{BufRead, Write};
//!
//! #[derive(Deserialize)]
//! struct Params {
//!     needle: String,
//! }
//!
//! #[task]
//! fn count_lines(input: &mut Input, params: &Params, outputs: &mut Outputs) -> Result<()> {
//!     let mut hits = 0u64;
//!     for line in input.lines() {
//!         if line?.contains(&params.needle) {
//!             hits += 1;
//!         }
//!     }
//!     info!(hits = hits; "scanned {}", input.name());
//!     writeln!(outputs.create("hits.txt")?, "{}\t{hits}", input.name())?;
//!     Ok(())
//! }
//! ```
//!
//! A task that combines across the items of its shard:
//!
//! ```no_run
//! use mayfly_sdk::{Input, Outputs, Result, Shard, Task, task};
//! use std::io::{BufRead, Write};
//!
//! #[derive(serde::Deserialize)]
//! struct Params {
//!     needle: String,
//! }
//!
//! struct CountHits {
//!     needle: String,
//!     hits: u64,
//! }
//!
//! #[task]
//! impl Task for CountHits {
//!     type Params = Params;
//!
//!     fn start(_shard: &Shard, params: Params, _outputs: &mut Outputs) -> Result<Self> {
//!         Ok(CountHits { needle: params.needle, hits: 0 })
//!     }
//!
//!     fn item(&mut self, input: &mut Input, _outputs: &mut Outputs) -> Result<()> {
//!         for line in input.lines() {
//!             self.hits += u64::from(line?.contains(&self.needle));
//!         }
//!         Ok(())
//!     }
//!
//!     fn finish(self, outputs: &mut Outputs) -> Result<()> {
//!         writeln!(outputs.create("hits.txt")?, "{}", self.hits)?;
//!         Ok(())
//!     }
//! }
//! ```
//!
//! Build it with `mayfly build path/to/crate` and try it on one file with
//! `mayfly exec path/to/crate --input some.txt --param needle=foo`.
#![deny(missing_docs)]

mod error;
mod input;
mod log;
mod output;
mod partition;

pub use error::{Error, Result};
pub use input::Input;
pub use log::{Level, log};
pub use mayfly_sdk_macros::task;
pub use output::{Output, Outputs};
pub use partition::{Partitioned, part_name, partition, partitions};

/// The shard an instance of a task serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// The job's id.
    pub job: String,
    /// The shard's number in the job's plan.
    pub id: u32,
    /// Which attempt at the shard this is (1 for the first; a retry starts
    /// in a fresh instance, from a clean state; 0 for a preflight, a trial on
    /// a sample of the inputs before the job is launched, whose outputs are
    /// discarded).
    pub attempt: u32,
    /// How many items this instance will be given.
    pub items: u32,
}

/// A task that keeps state across the items of a shard. Put `#[task]` on the
/// `impl` block.
///
/// The instance lives for one shard attempt: [`Task::start`] makes the
/// state, [`Task::item`] is called once per item in the shard's order, and
/// [`Task::finish`] writes what was combined. Outputs opened in `start` or
/// `finish` belong to the shard; outputs opened in `item` belong to that
/// item. An item whose call fails for good (a fatal [`Error`], or a trap on
/// the same item twice) is quarantined: the shard runs again in a fresh
/// instance without it, so the state never holds half an item.
pub trait Task: Sized + 'static {
    /// The job's parameters for the task.
    type Params: serde::de::DeserializeOwned;

    /// Begins a shard. A failure here fails the shard attempt (not an item).
    fn start(shard: &Shard, params: Self::Params, outputs: &mut Outputs) -> Result<Self>;

    /// Processes one item.
    fn item(&mut self, input: &mut Input<'_>, outputs: &mut Outputs) -> Result<()>;

    /// Ends the shard. A failure here fails the shard attempt.
    fn finish(self, outputs: &mut Outputs) -> Result<()> {
        let _ = outputs;
        Ok(())
    }
}

/// Generated bindings for the `mayfly:task@0.2.0` world. Not a stable API.
#[doc(hidden)]
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "task",
        pub_export_macro: true,
        export_macro_name: "export_task",
        default_bindings_module: "mayfly_sdk::bindings",
    });
}

/// The examples in this crate's README (the task author's guide) and in the
/// project's README compile.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct SdkReadmeDoctests;

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ProjectReadmeDoctests;

/// The version of the task interface (`mayfly:task`) this crate implements.
pub const WIT_VERSION: &str = "0.2.0";

/// Reports progress to the host: `done` of `total` units of work.
///
/// The host already counts input bytes read; call this when a task has a better
/// measure of its own.
pub fn progress(done: u64, total: u64) {
    bindings::mayfly::task::host::progress(done, total);
}

/// Items used by the code that `#[task]` generates. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::Guest;
    pub use crate::bindings::mayfly::task::types::{Input as RawInput, TaskError};
    use crate::{Error, Input, Outputs};
    pub use serde::de::IgnoredAny;

    /// What a task function may return.
    pub trait IntoTaskResult {
        /// Converts into the task's result.
        fn into_task_result(self) -> crate::Result<()>;
    }
    impl IntoTaskResult for crate::Result<()> {
        fn into_task_result(self) -> crate::Result<()> {
            self
        }
    }
    impl IntoTaskResult for () {
        fn into_task_result(self) -> crate::Result<()> {
            Ok(())
        }
    }

    /// Everything a task invocation can ask for.
    #[allow(missing_debug_implementations)]
    pub struct Context<'a> {
        pub input: Input<'a>,
        pub outputs: Outputs,
    }

    pub use crate::bindings::mayfly::task::types::ShardInfo;

    thread_local! {
        /// What lives across the calls of one instance: a struct task's
        /// state, or a function task's parsed parameters.
        static SLOT: std::cell::RefCell<Option<Box<dyn std::any::Any>>> = const { std::cell::RefCell::new(None) };
    }

    fn to_wit(result: crate::Result<()>) -> Result<(), TaskError> {
        // An output whose final flush failed (in `Drop`) fails the call even
        // if the task itself returned Ok: nothing may be silently lost.
        let result = result.and_then(|()| crate::output::take_deferred_error());
        result.map_err(|e| TaskError { message: e.message().to_owned(), retryable: e.is_retryable() })
    }

    /// Parses the job's parameters into the task's own type.
    pub fn params<P: serde::de::DeserializeOwned>() -> crate::Result<P> {
        let raw = crate::bindings::mayfly::task::host::params();
        let raw = if raw.trim().is_empty() { "{}".to_owned() } else { raw };
        serde_json::from_str(&raw)
            .map_err(|e| Error::fatal(format!("invalid task parameters: {e} (parameters: {raw})")))
    }

    /// `start` of a function task: parses its parameters once for the shard.
    pub fn start_fn<P: serde::de::DeserializeOwned + 'static>() -> Result<(), TaskError> {
        install_panic_hook();
        to_wit(params::<P>().map(|p| SLOT.with(|s| *s.borrow_mut() = Some(Box::new(p)))))
    }

    /// `item` of a function task: calls it with the item and the parameters.
    pub fn item_fn<P: 'static>(
        raw: &RawInput,
        f: impl FnOnce(&mut Context<'_>, &P) -> crate::Result<()>,
    ) -> Result<(), TaskError> {
        let mut ctx = Context { input: Input::new(raw), outputs: Outputs::new() };
        let result = SLOT.with(|s| match s.borrow().as_ref().and_then(|b| b.downcast_ref::<P>()) {
            Some(params) => f(&mut ctx, params),
            None => Err(Error::fatal("the task was given an item before its shard started")),
        });
        drop(ctx);
        to_wit(result)
    }

    /// `start` of a struct task: makes its state for the shard.
    pub fn start_struct<T: crate::Task>(info: ShardInfo) -> Result<(), TaskError> {
        install_panic_hook();
        let shard = crate::Shard { job: info.job, id: info.shard, attempt: info.attempt, items: info.items };
        let mut outputs = Outputs::new();
        let result = params::<T::Params>()
            .and_then(|p| T::start(&shard, p, &mut outputs))
            .map(|state| SLOT.with(|s| *s.borrow_mut() = Some(Box::new(state))));
        to_wit(result)
    }

    /// `item` of a struct task.
    pub fn item_struct<T: crate::Task>(raw: &RawInput) -> Result<(), TaskError> {
        let mut input = Input::new(raw);
        let mut outputs = Outputs::new();
        let result = SLOT.with(|s| match s.borrow_mut().as_mut().and_then(|b| b.downcast_mut::<T>()) {
            Some(state) => state.item(&mut input, &mut outputs),
            None => Err(Error::fatal("the task was given an item before its shard started")),
        });
        drop(input);
        to_wit(result)
    }

    /// `finish` of a struct task: consumes its state.
    pub fn finish_struct<T: crate::Task>() -> Result<(), TaskError> {
        let state = SLOT.with(|s| s.borrow_mut().take()).and_then(|b| b.downcast::<T>().ok());
        let result = match state {
            Some(state) => state.finish(&mut Outputs::new()),
            None => Err(Error::fatal("the task was finished before its shard started")),
        };
        to_wit(result)
    }

    /// `finish` of a function task: nothing is combined.
    pub fn finish_fn() -> Result<(), TaskError> {
        SLOT.with(|s| s.borrow_mut().take());
        to_wit(Ok(()))
    }

    fn install_panic_hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                let payload = info.payload();
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "Box<dyn Any>".to_owned());
                let msg = match info.location() {
                    Some(loc) => format!("{msg} (at {}:{}:{})", loc.file(), loc.line(), loc.column()),
                    None => msg,
                };
                crate::bindings::mayfly::task::host::panicked(&msg);
            }));
        });
    }
}
