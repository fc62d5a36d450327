//! # What mayfly's operators use around a job
//!
//! Everything here stands beside a job rather than inside it: what `plan`
//! checks before anything is launched ([`check`], with the cost estimate from
//! the provider's declared prices, `mayfly_model::cost`), following a job from outside
//! with one master-lost rule ([`watch`]), replaying a shard on this machine
//! ([`replay`]), ending expired nodes ([`reap`]), reading a job's logs and
//! journal back ([`history`]) and its HTML [`report`], building a provider's
//! cloud artifacts ([`package`]), the sample dataset ([`demo`]), `init`'s task
//! crate ([`scaffold`]), and core's side of the provider conformance suite
//! ([`conformance`]).
//!
//! It sits above the cluster (`mayfly-core`) and may import every crate of
//! mayfly but the binary; nothing but the binary (and tests) imports it.
//! Inside it, from the bottom: `report`, `package`, `demo`; then
//! `reap`, `scaffold`, `check`; `replay`, `watch`; `history`, `conformance`
//! (`core/tests/flow.rs` checks both).

pub mod check;
pub mod conformance;
pub mod demo;
pub mod history;
pub mod package;
pub mod reap;
pub mod replay;
pub mod report;
pub mod scaffold;
pub mod watch;
