//! `mayfly reap`: ends nodes whose job's deadline has passed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use mayfly_data::provider::ProviderHandle;
use mayfly_model::policy::{Clock, SystemClock};
use mayfly_ops::reap::Reaper;

use crate::Ended;
use crate::lookup::provider_arg;

/// `mayfly reap`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The state location to scan.
    #[arg(long, default_value = ".mayfly/jobs")]
    state: PathBuf,
    /// A provider to ask directly: a name (`aws`) or a plugin's path.
    #[arg(long)]
    provider: Option<String>,
    /// A setting of that provider (repeatable), as in a job's `[provider]` section.
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "provider")]
    settings: Vec<String>,
}

pub(crate) fn execute(args: Args) -> Result<Ended> {
    cmd_reap(&args.state, args.provider.as_deref(), &args.settings).map(|()| Ended::Success)
}

/// Ends the expired nodes `provider` lists under `state`, saying which.
fn reap_with(reaper: &mut Reaper, provider: &ProviderHandle, state: &Path) -> Result<usize> {
    let name = provider.name();
    Ok(reaper.reap(provider, state, &mut |n, overdue| {
        println!("reaping {} of job {} ({name} {}, expired {overdue}s ago)", n.node, n.job, n.id)
    })?)
}

fn cmd_reap(state: &Path, provider: Option<&str>, settings: &[String]) -> Result<()> {
    // Two selections of one provider list the same nodes: each node is ended once.
    let mut reaper = Reaper::new(SystemClock.now());
    if let Some(provider) = provider {
        let handle = ProviderHandle::select(&provider_arg(provider, settings)?)?;
        let reaped = reap_with(&mut reaper, &handle, state)?;
        println!("{reaped} node(s) reaped");
        for removed in handle.sweep(handle.timeout())? {
            println!("removed {removed}");
        }
        return Ok(());
    }
    // Each job's own provider, as its manifest recorded it.
    let (selections, warnings) =
        mayfly_ops::reap::job_providers(state).with_context(|| format!("reading {}", state.display()))?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let (mut reaped, mut failures) = (0, 0);
    for selection in selections {
        // One provider that cannot be made or asked does not stop the others' reaping.
        let done = ProviderHandle::select(&selection)
            .map_err(anyhow::Error::from)
            .and_then(|p| reap_with(&mut reaper, &p, state));
        match done {
            Ok(n) => reaped += n,
            Err(e) => {
                failures += 1;
                eprintln!("error: reaping the nodes of provider {}: {e:#}", selection.label());
            }
        }
    }
    println!("{reaped} node(s) reaped");
    if failures > 0 {
        bail!("{failures} provider(s) could not be reaped; see above");
    }
    Ok(())
}
