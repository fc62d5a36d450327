//! `mayfly reap`: ends nodes whose job's deadline has passed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mayfly_core::job::{Manifest, read_json};
use mayfly_core::policy::{Clock, SystemClock};
use mayfly_core::provider::{ProviderHandle, Selection};

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

/// Ends `provider`'s nodes under `state` that are past their deadline (each
/// once across calls, by `seen`); returns how many.
fn reap_with(
    provider: &ProviderHandle,
    state: &Path,
    now: u64,
    seen: &mut std::collections::HashSet<(String, String, String)>,
) -> Result<usize> {
    let expired: Vec<_> = provider
        .list_all(state)?
        .into_iter()
        .filter(|n| n.expires_at <= now && seen.insert((n.job.clone(), n.node.clone(), n.id.clone())))
        .collect();
    for n in &expired {
        println!(
            "reaping {} of job {} ({} {}, expired {}s ago)",
            n.node,
            n.job,
            provider.name(),
            n.id,
            (now - n.expires_at) / 1000
        );
    }
    if !expired.is_empty() {
        provider.terminate(&expired, Duration::from_secs(2))?;
    }
    Ok(expired.len())
}

fn cmd_reap(state: &Path, provider: Option<&str>, settings: &[String]) -> Result<()> {
    let now = SystemClock.now();
    // Two selections of one provider list the same nodes: each node is ended once.
    let mut seen = std::collections::HashSet::new();
    if let Some(provider) = provider {
        let handle = ProviderHandle::select(&provider_arg(provider, settings)?)?;
        let reaped = reap_with(&handle, state, now, &mut seen)?;
        println!("{reaped} node(s) reaped");
        for removed in handle.sweep(handle.timeout())? {
            println!("removed {removed}");
        }
        return Ok(());
    }
    // Each job's own provider, as its manifest recorded it; jobs on the same
    // provider are listed once. A job whose manifest cannot be read is
    // reaped with the built-in provider, and said so.
    let mut selections: Vec<Selection> = Vec::new();
    for entry in std::fs::read_dir(state).with_context(|| format!("reading {}", state.display()))?.flatten() {
        if !entry.path().is_dir() {
            continue;
        }
        let selection = match read_json::<Manifest>(&entry.path().join("manifest.json")) {
            Ok(m) => m.provider,
            Err(e) => {
                eprintln!("warning: {}: {e}; reaping it with the built-in provider", entry.path().display());
                Selection::default()
            }
        };
        if !selections.contains(&selection) {
            selections.push(selection);
        }
    }
    let (mut reaped, mut failures) = (0, 0);
    for selection in selections {
        // One provider that cannot be made or asked does not stop the others' reaping.
        let done = ProviderHandle::select(&selection)
            .map_err(anyhow::Error::from)
            .and_then(|p| reap_with(&p, state, now, &mut seen));
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
