//! `mayfly logs`: a job's node and task logs, read from its state (they
//! outlive the nodes), filtered, and followed while it runs.

use std::io::Write;
use std::time::Duration;

use anyhow::{Result, bail};
use mayfly_core::job::keys;
use mayfly_model::policy::{Clock, SystemClock};
use mayfly_ops::history::{self, LogFilter};
use mayfly_ops::watch::{JobWatch, Seen};

use crate::Ended;
use crate::lookup::{StateArgs, find_job, node_provider};

/// `mayfly logs`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The job id.
    job: String,
    /// Only this node (`master`, `worker-1`, ...).
    #[arg(long)]
    node: Option<String>,
    /// Only lines about this shard.
    #[arg(long)]
    shard: Option<u32>,
    /// Only lines at least this severe: trace, debug, info, warn, error.
    #[arg(long, value_parser = parse_level)]
    level: Option<mayfly_core::host::Level>,
    /// Keep printing new lines until the job ends.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Print each line as one JSON object (a node's JSON lines as written,
    /// with their node; text lines with their time, level, node, shard and
    /// message), whichever format the nodes wrote.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    at: StateArgs,
}

pub(crate) fn execute(args: Args) -> Result<Ended> {
    let filter = LogFilter { node: args.node, shard: args.shard, level: args.level };
    cmd_logs(&args.job, &args.at, &LogsArgs { filter, follow: args.follow, json: args.json })
}

/// What `mayfly logs` shows, and whether it follows.
pub(crate) struct LogsArgs {
    pub filter: LogFilter,
    pub follow: bool,
    pub json: bool,
}

fn cmd_logs(job: &str, at: &StateArgs, args: &LogsArgs) -> Result<Ended> {
    let (layout, manifest) = find_job(job, &at.state, at.provider.as_deref(), &at.settings)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // How much of each node's log is printed (follow prints only what is new).
    let mut printed: std::collections::HashMap<String, usize> = Default::default();
    let mut ended_polls = 0;
    let mut polls = 0u64;
    let provider = if args.follow { Some(node_provider(&manifest)?) } else { None };
    let mut watch = provider.as_ref().map(|p| JobWatch::new(&layout, &manifest, p));
    loop {
        // Read before listing: a job that ends meanwhile is read once more.
        let ended = layout.state.exists(keys::FINAL);
        let files = match history::log_keys(&layout) {
            Ok(files) => files,
            Err(_) if args.follow => Vec::new(),
            Err(e) => bail!("no logs for job {job}: {e}"),
        };
        let files: Vec<_> =
            files.into_iter().filter(|(name, _)| args.filter.node.as_deref().is_none_or(|n| n == name)).collect();
        if files.is_empty() && !args.follow {
            match &args.filter.node {
                Some(n) => bail!("no log for node {n} of job {job}; `mayfly logs {job}` lists every node's"),
                None => bail!("no logs for job {job} yet"),
            }
        }
        for (name, key) in files {
            let bytes = layout.state.get(&key)?.unwrap_or_default();
            let from = printed.get(&name).copied().unwrap_or(0);
            // Whole lines only: a line being written is printed when it ends.
            let upto = if args.follow && !ended {
                bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
            } else {
                bytes.len()
            };
            if upto <= from {
                continue;
            }
            for line in String::from_utf8_lossy(&bytes[from..upto]).lines() {
                let parsed = history::parse_line(&name, line);
                if !args.filter.shows(&parsed) {
                    continue;
                }
                let written = if args.json {
                    writeln!(out, "{}", parsed.json())
                } else {
                    writeln!(out, "{name}: {}", parsed.text)
                };
                // A closed pipe (`| head`) ends the listing quietly.
                if written.is_err() {
                    return Ok(Ended::Success);
                }
            }
            let _ = out.flush();
            printed.insert(name, upto);
        }
        if !args.follow {
            return Ok(Ended::Success);
        }
        // Following: until the job has ended and its nodes had their last
        // word (a worker writes after the master's end), or the deadline.
        if ended || SystemClock.now() > manifest.expires_at + 5000 {
            ended_polls += 1;
            if ended_polls > 10 {
                return Ok(Ended::Success);
            }
        } else {
            // A job whose master is lost writes no more: say so rather
            // than wait for its deadline.
            polls += 1;
            if polls.is_multiple_of(10)
                && let Some(watch) = watch.as_mut()
                && matches!(watch.poll(SystemClock.now()), Seen::MasterLost)
            {
                let _ = out.flush();
                eprintln!(
                    "error: no master of job {job} is running and it did not end (its master was lost); \
                     `mayfly resume {job}` continues it"
                );
                return Ok(Ended::MasterLost);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn parse_level(s: &str) -> Result<mayfly_core::host::Level, String> {
    mayfly_ops::history::parse_level(s)
        .ok_or_else(|| format!("{s:?} is not a level; use trace, debug, info, warn or error"))
}
