//! `mayfly hold` and `release`: an operator's hold on a running job's
//! workers, recorded in its state ([`mayfly_core::hold`]).

use std::time::Duration;

use anyhow::{Result, bail};
use mayfly_core::job::keys;
use mayfly_data::provider::Role;
use mayfly_model::policy::{Clock, SystemClock};
use mayfly_model::units::HumanDuration;

use crate::Ended;
use crate::lookup::{StateArgs, find_job, node_provider, tell_master, worker_name};

/// `mayfly hold`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The job id.
    job: String,
    /// Only this worker (default: every worker of the job).
    #[arg(long)]
    node: Option<String>,
    /// How long (cut to the job's deadline).
    #[arg(long = "for", value_name = "DURATION", default_value = "30m")]
    for_: HumanDuration,
    #[command(flatten)]
    at: StateArgs,
}

pub(crate) fn execute(args: Args) -> Result<Ended> {
    cmd_hold(&args.job, &args.at, args.node.as_deref(), args.for_.0)
}

/// `mayfly release`.
#[derive(clap::Args, Debug)]
pub(crate) struct ReleaseArgs {
    /// The job id.
    job: String,
    /// Only this worker's hold (default: every hold of the job).
    #[arg(long)]
    node: Option<String>,
    #[command(flatten)]
    at: StateArgs,
}

pub(crate) fn release(args: ReleaseArgs) -> Result<Ended> {
    cmd_release(&args.job, &args.at, args.node.as_deref())
}

fn cmd_hold(job: &str, at: &StateArgs, node: Option<&str>, for_: Duration) -> Result<Ended> {
    use mayfly_core::hold::{Hold, WHOLE_JOB, hold_end};
    use mayfly_model::units::{HumanDuration, Utc};
    let (layout, manifest) = find_job(job, &at.state, at.provider.as_deref(), &at.settings)?;
    if let Some(n) = node {
        worker_name(&manifest, n)?;
    }
    let now = SystemClock.now();
    if now >= manifest.expires_at {
        bail!("job {job} is past its deadline: its nodes have ended (or are ending); there is nothing to hold");
    }
    let provider = node_provider(&manifest)?;
    let running = provider.list(job, &layout.state_location())?;
    let alive = running.iter().any(|n| n.role == Role::Worker && node.is_none_or(|x| x == n.node));
    if !alive {
        bail!(
            "job {job} has no running {}: there is nothing to hold{}",
            node.map_or_else(|| "worker".to_owned(), |n| format!("node {n}")),
            if layout.state.exists(keys::FINAL) { " (the job has ended)" } else { "" }
        );
    }
    let asked_ms = for_.as_millis().min(u64::MAX as u128) as u64;
    let (until, cut) = hold_end(now, asked_ms, manifest.expires_at);
    let who = node.unwrap_or(WHOLE_JOB);
    let hold = Hold {
        node: who.to_owned(),
        until,
        asked_by: mayfly_core::hold::asker(),
        asked_at: now,
        asked_ms,
        cut_to_deadline: cut,
    };
    mayfly_core::hold::put(&layout, &hold)?;
    tell_master(&layout);
    let what = node.map_or_else(|| format!("every worker of job {job}"), |n| format!("{n} of job {job}"));
    println!("held {what} until {} (in {:#})", Utc(until), HumanDuration::from_millis(until - now));
    if cut {
        println!(
            "asked for {:#}, cut to the job's deadline: a hold never outlives it (the deadline always wins)",
            HumanDuration::from_millis(asked_ms)
        );
    }
    println!(
        "a held worker hands its shard back at its next item (another worker takes it), takes no work, \
         and keeps its log, its compiled task and the inputs of that shard and of its last failed attempt"
    );
    let target = node.map_or_else(String::new, |n| format!(" --node {n}"));
    println!("  mayfly attach {job} --node {}   where it is, and its log", node.unwrap_or("worker-1"));
    println!("  mayfly release {job}{target}   end the hold (it then resumes or ends by the normal rules)");
    Ok(Ended::Success)
}

fn cmd_release(job: &str, at: &StateArgs, node: Option<&str>) -> Result<Ended> {
    let (layout, manifest) = find_job(job, &at.state, at.provider.as_deref(), &at.settings)?;
    if let Some(n) = node
        && n != mayfly_core::hold::WHOLE_JOB
    {
        worker_name(&manifest, n)?;
    }
    let released = mayfly_core::hold::release(&layout, node, &mayfly_core::hold::asker(), SystemClock.now())?;
    if released.is_empty() {
        let whole = node.is_some()
            && mayfly_core::hold::all(&layout)
                .unwrap_or_default()
                .iter()
                .any(|h| h.node == mayfly_core::hold::WHOLE_JOB && h.until > SystemClock.now());
        println!(
            "job {job} has no hold{}; nothing to release{}",
            node.map_or_else(String::new, |n| format!(" on {n}")),
            if whole { format!(" (the whole job is held: `mayfly release {job}` ends that)") } else { String::new() }
        );
        return Ok(Ended::Success);
    }
    tell_master(&layout);
    println!(
        "released {}: held workers resume, or end by the normal rules (the job's end, idle, the deadline)",
        released.join(", ")
    );
    Ok(Ended::Success)
}
