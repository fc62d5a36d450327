//! mayfly's integration tests: one binary, a module per area, the harness in
//! the `mayfly_tests` library.
#![allow(clippy::unwrap_used)]

mod attempt;
mod before_launch;
mod cache;
mod cli;
mod cluster;
mod faults;
mod hold;
mod load;
mod operate;
mod plugins;
mod python;
mod reduce;
mod sandbox;
mod shards;
mod tasks;
