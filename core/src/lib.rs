//! # mayfly's cluster
//!
//! mayfly runs batch work over many files on clusters that live only as long as
//! the work. This crate is the cluster itself, the same for every provider, as
//! modules that follow one job's flow (ARCHITECTURE.md; `core/tests/flow.rs`
//! checks that none imports one above it): the worker API (`tls`, `ledger`, the
//! shard table, `api`), the task build (`build`), a job's description and state
//! (`config`, `job`), holds and the reduce (`hold`, `reduce`), one shard attempt
//! (`attempt`), the nodes and the preflight (`master`, `worker`, `preflight`, then
//! `node` and `bootstrap`).
//!
//! Below it: `mayfly-model` (units, even sharding, the rules), `mayfly-sandbox`
//! (the task sandbox, re-exported as [`host`]) and `mayfly-data` (stores and
//! providers). Above it: `mayfly-ops` (what operators use around a job) and the
//! `mayfly` binary; it must not import either. It names no cloud, never exits
//! the process, and imports no cloud SDK (S3 and Azure Blob are `object_store`
//! features of `mayfly-data`).
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
pub mod commits;
pub mod config;
pub mod hold;
/// The task sandbox (the `mayfly-sandbox` crate).
pub use mayfly_sandbox as host;
pub mod job;
pub mod ledger;
pub mod master;
pub mod merge;
pub mod node;
pub mod preflight;
pub mod reduce;
#[cfg(feature = "tls")]
pub mod tls;
pub mod worker;
