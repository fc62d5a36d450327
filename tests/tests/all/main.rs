//! mayfly's integration tests: one binary, a module per area, the harness in
//! the `mayfly_tests` library.
#![allow(clippy::unwrap_used)]

mod aws;
mod cache;
mod cli;
pub(crate) mod cluster;
mod load;
pub(crate) mod plugins;
mod sandbox;
mod tasks;
