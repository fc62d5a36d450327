//! `mayfly report`: a job's one-page HTML report ([`mayfly_ops::report`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mayfly_model::policy::{Clock, SystemClock};
use mayfly_ops::history::{self};

use crate::Ended;
use crate::lookup::{StateArgs, find_job};

/// `mayfly report`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The job id.
    job: String,
    /// The HTML file to write.
    #[arg(long, short = 'o', default_value = "report.html")]
    out: PathBuf,
    #[command(flatten)]
    at: StateArgs,
}

pub(crate) fn execute(args: Args) -> Result<Ended> {
    cmd_report(&args.job, &args.at, &args.out)
}

/// Writes a job's HTML report from its state (atomically: a reader never
/// sees half a page).
fn cmd_report(job: &str, at: &StateArgs, out: &Path) -> Result<Ended> {
    let (layout, manifest) = find_job(job, &at.state, at.provider.as_deref(), &at.settings)?;
    let report = history::collect(&layout, &manifest, SystemClock.now());
    let html = mayfly_ops::report::render(&report);
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, html.as_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "report of job {job} ({}): {} attempts on {} nodes, {} of {} shards committed, {} failed -> {}",
        report.outcome,
        report.attempts.len(),
        report.nodes.len(),
        report.committed,
        report.shards.len(),
        report.failed,
        out.display()
    );
    Ok(Ended::Success)
}
