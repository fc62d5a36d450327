//! `mayfly resume`: a new master for a job whose master was lost
//! ([`mayfly_core::bootstrap::resume`]), then follows it as `run` does.

use std::time::Instant;

use anyhow::Result;
use mayfly_core::bootstrap::Resumed;
use mayfly_model::policy::SystemClock;

use crate::lookup::{StateArgs, find_job, node_provider};
use crate::run::follow;
use crate::{Ended, say};

/// `mayfly resume`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The job id.
    job: String,
    #[command(flatten)]
    at: StateArgs,
}

pub(crate) fn execute(args: Args) -> Result<Ended> {
    cmd_resume(&args.job, &args.at)
}

fn cmd_resume(job: &str, at: &StateArgs) -> Result<Ended> {
    let (layout, manifest) = find_job(job, &at.state, at.provider.as_deref(), &at.settings)?;
    let provider = node_provider(&manifest)?;
    let started = Instant::now();
    let verbose = std::env::var_os("MAYFLY_VERBOSE").is_some();
    let resumed = mayfly_core::bootstrap::resume(&layout, &manifest, &provider, &SystemClock, &mut |step| {
        if verbose {
            say(&format!("resume: {step}"));
        }
    })?;
    match resumed {
        Resumed::AlreadyEnded => {
            println!("job {job} already ended; nothing to resume");
            Ok(Ended::Success)
        }
        Resumed::Launched { workers, .. } => {
            println!("job {job} resumed with a new master and {workers} new workers");
            follow(&provider, &layout, &manifest, started)
        }
    }
}
