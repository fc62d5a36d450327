//! # mayfly's data path, and the providers that sign it
//!
//! Everything a node reads or writes outside itself goes through this crate:
//! every location a job names is a [`store::Store`] (a path, or a URL through
//! `object_store`), inputs are read ahead of the task ([`readahead`]), and the
//! credentials that sign a remote store come from the job's provider, which
//! core calls through [`provider::ProviderHandle`] (the built-in local
//! provider, or a plugin through the C ABI, [`plugin`]). A node's own output
//! goes through [`nodelog`]'s pump, so that a log that cannot be written never
//! ends the node.
//!
//! It imports `mayfly-model`, `mayfly-sandbox` (the task's view of an input),
//! the provider API and the local provider (linked in as the default); it must not import the cluster (`mayfly-core`) or
//! anything above it: a store knows no job, no master and no worker. Inside
//! it, from the bottom: `nodelog`, `readahead`, `plugin`, `prices` (live
//! prices, cached), `provider`, `gate`
//! (the credential check a local node's stores make), `store`
//! (`core/tests/flow.rs` checks both).

pub mod gate;
pub mod nodelog;
pub mod plugin;
pub mod prices;
pub mod provider;
pub mod readahead;
pub mod store;
