//! `mayfly replay`: one shard run again here as its workers ran it
//! ([`mayfly_ops::replay`]); this module prints the report.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::Ended;
use crate::lookup::{StateArgs, find_job};

/// `mayfly replay`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The job id.
    job: String,
    /// The shard.
    shard: u32,
    /// Use the inputs a held node kept (run this where that node runs; locally, here).
    #[arg(long)]
    node: Option<String>,
    /// Only this item (its key, as the logs name it).
    #[arg(long)]
    item: Option<String>,
    /// Where the outputs go (default `replay-<job>-shard-<N>`).
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    at: StateArgs,
}

pub(crate) fn execute(args: Args) -> Result<Ended> {
    let Args { job, shard, node, item, out, json, at } = args;
    cmd_replay(&job, &at, &ReplayArgs { node, shard, item, out, json })
}

/// What `mayfly replay` is told besides the job.
pub(crate) struct ReplayArgs {
    pub node: Option<String>,
    pub shard: u32,
    pub item: Option<String>,
    pub out: Option<PathBuf>,
    pub json: bool,
}

/// Runs one shard of a job on this machine as a worker ran it
/// ([`mayfly_ops::replay`]); outputs go to a local directory.
fn cmd_replay(job: &str, at: &StateArgs, args: &ReplayArgs) -> Result<Ended> {
    use mayfly_ops::replay::{Replay, Request};
    let (layout, manifest) = find_job(job, &at.state, at.provider.as_deref(), &at.settings)?;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("replay-{job}-shard-{}", args.shard)));
    let request = Request { shard: args.shard, item: args.item.clone(), node: args.node.clone(), out };
    let replay = Replay::prepare(&layout, &manifest, request)?;
    if let (false, Some((partition, sources))) = (args.json, replay.partition()) {
        let params = manifest.reduce.as_ref().map(|(_, _, p)| p.to_string()).unwrap_or_default();
        println!(
            "replaying reduce partition {partition} (shard {}) of job {job}: {sources} map outputs as one input, \
             task {}, params {params}",
            args.shard,
            replay.task_name(),
        );
    } else if !args.json {
        println!(
            "replaying shard {} of job {job}{}: {} item(s), task {} (sha256 {}), params {}",
            args.shard,
            replay.kept().map_or_else(String::new, |d| format!(" from the inputs kept in {}", d.display())),
            replay.items(),
            replay.task_name(),
            &manifest.task_sha256[..12.min(manifest.task_sha256.len())],
            manifest.params
        );
        println!(
            "limits: {} per attempt, {} memory, {} output, {} log",
            manifest.limits.attempt_time, manifest.limits.memory, manifest.limits.output, manifest.limits.log
        );
    }
    let kept = replay.kept().map(Path::to_owned);
    let report = replay.run(crate::runtime()?.handle())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for run in &report.items {
            match &run.error {
                None => println!("item {}: ok in {:.1} ms", run.item, run.elapsed_ms),
                Some(e) => println!(
                    "item {}: FAILED: {e} [{}; {}]",
                    run.item,
                    run.kind.as_deref().unwrap_or("failure"),
                    if run.retryable == Some(true) { "retryable" } else { "not retryable" }
                ),
            }
            for line in &run.logs {
                println!("  {line}");
            }
            for p in &run.outputs {
                println!("  output {}", p.display());
            }
        }
        if let Some(dir) = &kept {
            for key in &report.not_kept {
                println!("item {key}: not kept by the node in {} (not part of its attempt)", dir.display());
            }
        }
        if report.failed == 0 {
            println!("shard {} replayed: every item succeeded; outputs in {}", args.shard, report.out.display());
        } else {
            println!("shard {} replayed: {} item(s) failed", args.shard, report.failed);
        }
    }
    Ok(if report.failed == 0 { Ended::Success } else { Ended::TaskFailed })
}
