//! How a node starts. A cloud puts this in the machine's user data (or custom
//! data): fetch `mayfly`, run it with the node's arguments, and arm a
//! dead-man switch at the deadline. Here: a process running `binary` with the
//! node's arguments, in its own process group, told its registry entry.

use std::path::Path;
use std::process::{Command, Stdio};

use mayfly_provider_api::NodeSpec;

/// Tells a node which registry entry is its own (a cloud's instance metadata).
pub(crate) const NODE_ENV: &str = "MAYFLY_TEMPLATE_NODE";

/// The command that boots `spec` as the node recorded at `entry`, its output
/// to `log`.
pub(crate) fn command(binary: &Path, spec: &NodeSpec, entry: &Path, log: std::fs::File) -> std::io::Result<Command> {
    let err = log.try_clone()?;
    let mut command = Command::new(binary);
    command.args(&spec.args).env(NODE_ENV, entry).stdin(Stdio::null()).stdout(log).stderr(err);
    // Its own process group, so that ending the node ends what it started.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    Ok(command)
}
