//! # mayfly's model
//!
//! The values a job is described in, shared by every crate of mayfly:
//! sizes and durations as a job file writes them ([`units`]).
//!
//! It owns no I/O and imports no mayfly crate but the provider API (for its
//! duration parser, shared with provider settings); every other crate may
//! import it.

pub mod units;
