//! # mayfly core
//!
//! mayfly runs batch work over many files on clusters that live only as long as
//! the work. This crate holds everything that is the same for every provider,
//! as modules that follow one job's flow (ARCHITECTURE.md; `core/tests/flow.rs`
//! checks that none imports one above it): the rules (`policy`, `plan`, `check`),
//! the shard table (`ledger`), the worker API (`api`, `tls`), providers as core
//! sees them (`provider`, `plugin`), the data path (`store`, `readahead`), a job's
//! description and state (`config`, `job`), one shard attempt (`attempt`), the
//! nodes (`bootstrap`, `master`, `worker`, `node`), and what operators use
//! (`watch`, `replay`, `reap`, `hold`, `history`, `report`, `cost`, `scaffold`).
//! The task sandbox is the `mayfly-sandbox` crate ([`host`]); sizes and durations
//! the `mayfly-model` crate ([`units`]). The `mayfly` binary (`core/cli/`) is the
//! only code above it; this crate names no cloud, never exits the process, and
//! imports no cloud SDK (S3 and Azure Blob are `object_store` features).
//!
//! ```no_run
//! use std::sync::Arc;
//! use mayfly_core::host::{Attempt, BytesInput, Limits, Runtime, RuntimeConfig};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::new(&RuntimeConfig::default())?;
//! let task = runtime.load("target/wasm32-wasip2/release/wordcount.wasm".as_ref())?;
//! let outcome = runtime
//!     .run(&task, Attempt {
//!         input: Arc::new(BytesInput::new("hello.txt", &b"hello world hello"[..])),
//!         params: Arc::from("{}"),
//!         limits: Limits::default(),
//!         staging: "/tmp/mayfly-example".into(),
//!     })
//!     .await;
//! outcome.result?;
//! for output in &outcome.outputs {
//!     println!("{} ({} bytes) at {}", output.name, output.bytes, output.path.display());
//! }
//! # Ok(())
//! # }
//! ```

pub mod api;
pub mod attempt;
pub mod bootstrap;
pub mod build;
pub mod check;
pub mod config;
pub mod conformance;
pub mod cost;
pub mod demo;
pub mod error;
pub use error::Internal;
pub mod history;
pub mod hold;
/// The task sandbox (the `mayfly-sandbox` crate).
pub use mayfly_sandbox as host;
pub mod job;
pub mod ledger;
pub mod master;
pub mod node;
pub mod nodelog;
pub mod package;
pub mod plan;
pub mod plugin;
pub mod policy;
pub mod provider;
pub mod readahead;
pub mod reap;
pub mod reduce;
pub mod replay;
pub mod report;
pub mod scaffold;
pub mod store;
#[cfg(feature = "tls")]
pub mod tls;
/// Sizes and durations (the `mayfly-model` crate).
pub use mayfly_model::units;
pub mod watch;
pub mod worker;
