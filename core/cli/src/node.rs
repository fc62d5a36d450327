//! The hidden `mayfly node` a provider launches: the process around a
//! node's life ([`mayfly_core::node`]): SIGHUP blocked, the log pump, and
//! the deadline's exit code. And `mayfly idle`, what conformance tests launch.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use mayfly_model::units::HumanDuration;

use crate::Ended;

/// `mayfly node` (hidden: a provider launches it).
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[arg(long)]
    role: String,
    #[arg(long)]
    job: String,
    #[arg(long)]
    node: String,
    #[arg(long)]
    dir: String,
    /// The provider's selection (JSON), for a remote state.
    #[arg(long)]
    provider: Option<String>,
}

pub(crate) fn execute(args: Args) -> Result<Ended> {
    cmd_node(&args.role, &args.job, &args.node, &args.dir, args.provider.as_deref())
}

/// `mayfly idle` (hidden: provider conformance tests launch it).
#[derive(clap::Args, Debug)]
pub(crate) struct IdleArgs {
    /// How long at most.
    #[arg(long = "for", default_value = "10m")]
    for_: HumanDuration,
}

pub(crate) fn idle(args: IdleArgs) -> Result<Ended> {
    cmd_idle(args.for_.0)
}

/// Exit code of a node that its dead-man switch ended (the deadline passed).
const EXIT_DEADLINE: i32 = 4;

fn cmd_node(role: &str, job: &str, node: &str, dir: &str, provider_json: Option<&str>) -> Result<Ended> {
    // A node ends by the rules, not by a hangup: when its launcher exits while
    // the node is stopped (SIGSTOP, a debugger), the kernel sends its orphaned
    // process group SIGHUP. Blocked before any thread starts, so every thread
    // inherits it; it stays pending, never delivered.
    if let Err(e) = nix::sys::signal::SigSet::from(nix::sys::signal::Signal::SIGHUP).thread_block() {
        mayfly_data::nodelog::line("WARN", node, format_args!("blocking SIGHUP: {e}"));
    }
    // The node's output goes through the log pump: a log that cannot be
    // written for a while must not end the node (nor lose its lines).
    let _pump = match mayfly_data::nodelog::start() {
        Ok(guard) => Some(guard),
        Err(e) => {
            mayfly_data::nodelog::line(
                "WARN",
                node,
                format_args!("the log pump did not start ({e}); logging directly"),
            );
            None
        }
    };
    let args = mayfly_core::node::NodeArgs { role, job, node, dir, provider: provider_json };
    // Past the deadline, the node ends whatever it is doing.
    fn past_deadline() -> ! {
        std::process::exit(EXIT_DEADLINE)
    }
    let log = std::env::var_os("MAYFLY_NODE_LOG").map(PathBuf::from);
    // The process's runtime, started after SIGHUP is blocked (its threads
    // inherit the mask). Should it not start, the role fails and the node
    // still ends itself.
    let rt = crate::start_runtime();
    let rt = rt.as_ref().map(tokio::runtime::Runtime::handle);
    let code = mayfly_core::node::run(&args, log, past_deadline, rt)?;
    Ok(Ended::Node(code))
}

/// A node that holds nothing and does nothing until it is ended or `for_`
/// passes: what provider conformance tests launch.
fn cmd_idle(for_: Duration) -> Result<Ended> {
    std::thread::sleep(for_);
    Ok(Ended::Success)
}
