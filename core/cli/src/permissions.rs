//! `mayfly iam-policy`: the least privilege a provider's principals need.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use mayfly_core::config::JobSpec;
use mayfly_data::provider::ProviderHandle;

use crate::Ended;
use crate::lookup::{provider_arg, provider_for};

/// `mayfly iam-policy`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The provider: a name (`aws`) or a plugin's path.
    #[arg(required_unless_present = "job")]
    provider: Option<String>,
    /// A setting of that provider (repeatable), as in a job's `[provider]` section.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
    /// A location the jobs read or write (repeatable).
    #[arg(long = "location", value_name = "URL")]
    locations: Vec<String>,
    /// Take the provider and the locations (input, output, state) from this job file.
    #[arg(long, conflicts_with = "provider")]
    job: Option<PathBuf>,
}

pub(crate) fn execute(args: Args) -> Result<Ended> {
    cmd_permissions(args.provider.as_deref(), &args.settings, &args.locations, args.job.as_deref())
}

fn cmd_permissions(
    provider: Option<&str>,
    settings: &[String],
    locations: &[String],
    job: Option<&Path>,
) -> Result<Ended> {
    let (handle, mut all) = match (job, provider) {
        (Some(job), _) => {
            let spec = JobSpec::load(job)?;
            let urls = [&spec.input, &spec.output, &spec.state].map(|l| l.as_str().replace("/{job}", ""));
            (provider_for(&spec)?, urls.to_vec())
        }
        (None, Some(p)) => (ProviderHandle::select(&provider_arg(p, settings)?)?, Vec::new()),
        (None, None) => bail!("name a provider (`mayfly iam-policy aws`) or a job file (`--job job.toml`)"),
    };
    all.extend(locations.iter().cloned());
    let policies = handle.permissions(all)?;
    println!("{}", serde_json::to_string_pretty(&policies)?);
    Ok(Ended::Success)
}
