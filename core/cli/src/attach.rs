//! `mayfly attach`: how to reach a running node, then its log until it ends.

use std::io::Write;
use std::time::Duration;

use anyhow::{Result, bail};
use mayfly_core::job::Layout;
use mayfly_data::provider::ProviderHandle;
use mayfly_model::policy::{Clock, SystemClock};

use crate::Ended;
use crate::lookup::{StateArgs, find_job, node_provider, worker_name};

/// `mayfly attach`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The job id.
    job: String,
    /// The node (`master`, `worker-1`, ...).
    #[arg(long)]
    node: String,
    #[command(flatten)]
    at: StateArgs,
}

pub(crate) fn execute(args: Args) -> Result<Ended> {
    cmd_attach(&args.job, &args.at, &args.node)
}

fn cmd_attach(job: &str, at: &StateArgs, node: &str) -> Result<Ended> {
    use mayfly_model::units::{HumanDuration, Utc};
    let (layout, manifest) = find_job(job, &at.state, at.provider.as_deref(), &at.settings)?;
    if node != "master" {
        worker_name(&manifest, node)?;
    }
    let provider = node_provider(&manifest)?;
    let nodes = provider.list(job, &layout.state_location())?;
    let now = SystemClock.now();
    let Some(info) = nodes.iter().find(|n| n.node == node) else {
        bail!(
            "node {node} of job {job} is not running (it ended, or never started); \
             `mayfly logs {job} --node {node}` shows what it said"
        );
    };
    println!("node {node} of job {job}: {} {}", provider.name(), info.id);
    if let Some(pid) = info.process {
        println!("  pid        {pid}   (this machine)");
        println!("  log        {}", layout.state.display(&Layout::logs_key(node)));
        println!("  directory  {}", layout.work.display());
        println!("  kept       {}   (what it keeps while held)", mayfly_core::hold::kept_dir(&layout, node).display());
    } else {
        println!(
            "  instance   {}   (ask {} for its address; the node's own disk holds what it keeps)",
            info.id,
            provider.name()
        );
        println!("  log        {}   (copied every few seconds)", layout.state.display(&Layout::logs_key(node)));
    }
    println!(
        "  ends       by {} at the latest (the deadline, in {:#})",
        Utc(manifest.expires_at),
        HumanDuration::from_millis(manifest.expires_at.saturating_sub(now))
    );
    let holds = mayfly_core::hold::all(&layout)?;
    match mayfly_core::hold::held_until(&holds, node, now) {
        Some(until) => println!("  held       until {} (in {:#})", Utc(until), HumanDuration::from_millis(until - now)),
        None => println!("  held       no (`mayfly hold {job} --node {node}` keeps it alive for you)"),
    }
    println!("its log, until it ends (Ctrl-C stops watching; the node goes on):");
    let _ = std::io::stdout().flush();
    follow_node_log(&layout, &provider, job, node)
}

/// Prints a node's log as it grows, until the node is gone.
fn follow_node_log(layout: &Layout, provider: &ProviderHandle, job: &str, node: &str) -> Result<Ended> {
    let key = Layout::logs_key(node);
    let mut printed = 0usize;
    let mut gone_polls = 0;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    loop {
        let alive =
            provider.list(job, &layout.state_location()).map(|n| n.iter().any(|n| n.node == node)).unwrap_or(true);
        let bytes = layout.state.get(&key)?.unwrap_or_default();
        let upto = if alive { bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) } else { bytes.len() };
        if upto > printed {
            for line in String::from_utf8_lossy(&bytes[printed..upto]).lines() {
                // A JSON line is shown as its text line, as `mayfly logs` shows it.
                let text = mayfly_ops::history::parse_line(node, line).text;
                if writeln!(out, "{node}: {text}").is_err() {
                    return Ok(Ended::Success);
                }
            }
            let _ = out.flush();
            printed = upto;
        }
        if !alive {
            // Its last lines may land a moment after it is gone (a remote copy).
            gone_polls += 1;
            if gone_polls > 3 {
                let _ = writeln!(out, "({node} has ended)");
                return Ok(Ended::Success);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
