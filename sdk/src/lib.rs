//! # mayfly-sdk: write mayfly tasks in plain Rust
//!
//! A mayfly task processes one input item (a file, or a byte range of one) and
//! writes named outputs. It is compiled to a WebAssembly component
//! (`wasm32-wasip2`) and runs in mayfly's sandbox, which gives it no files, no
//! environment and no network: everything goes through this crate.
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
//! fn count_lines(input: &mut Input, params: Params, outputs: &mut Outputs) -> Result<()> {
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
//! Build it with `mayfly build path/to/crate` and try it on one file with
//! `mayfly exec path/to/crate --input some.txt --param needle=foo`.
#![deny(missing_docs)]

mod error;
mod input;
mod log;
mod output;

pub use error::{Error, Result};
pub use input::Input;
pub use log::{Level, log};
pub use mayfly_sdk_macros::task;
pub use output::{Output, Outputs};

/// Generated bindings for the `mayfly:task@0.1.0` world. Not a stable API.
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
pub const WIT_VERSION: &str = "0.1.0";

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

    impl Context<'_> {
        /// Parses the job's parameters into the task's own type.
        pub fn params<P: serde::de::DeserializeOwned>(&self) -> crate::Result<P> {
            let raw = crate::bindings::mayfly::task::host::params();
            let raw = if raw.trim().is_empty() { "{}".to_owned() } else { raw };
            serde_json::from_str(&raw)
                .map_err(|e| Error::fatal(format!("invalid task parameters: {e} (parameters: {raw})")))
        }
    }

    /// Runs one invocation: installs the panic hook, calls the task, flushes
    /// outputs and turns the result into the WIT error type.
    pub fn run_task(raw: &RawInput, f: impl FnOnce(&mut Context<'_>) -> crate::Result<()>) -> Result<(), TaskError> {
        install_panic_hook();
        let mut ctx = Context { input: Input::new(raw), outputs: Outputs::new() };
        let result = f(&mut ctx);
        drop(ctx);
        // An output whose final flush failed (in `Drop`) fails the task even if
        // the function itself returned Ok: nothing may be silently lost.
        let result = result.and_then(|()| crate::output::take_deferred_error());
        result.map_err(|e| TaskError { message: e.message().to_owned(), retryable: e.is_retryable() })
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
