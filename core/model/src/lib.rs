//! # mayfly's model
//!
//! The values and rules a job is described in, shared by every crate of
//! mayfly: sizes and durations as a job file writes them ([`units`]), even
//! sharding ([`plan`]), the four rules over an injected clock ([`policy`]),
//! what a job would and at most could cost ([`cost`]), which object keys mayfly
//! takes and how a key names a local file ([`key`]), and the marker of
//! mayfly's own failures ([`error::Internal`], exit 70).
//!
//! It owns no I/O (the planner reads inputs through a function it is given)
//! and imports no mayfly crate but the provider API (for its duration parser,
//! shared with provider settings); every other crate may import it. Inside it,
//! `error`, `key` and `units` import nothing, `plan` only those, `policy` and `cost`
//! also `plan` (not each other).

pub mod cost;
pub mod error;
pub mod key;
pub mod plan;
pub mod policy;
pub mod units;

pub use error::Internal;
