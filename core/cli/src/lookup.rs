//! Finding a job from the command line: where its state is (`--state`,
//! `--provider`, `--set`), its manifest, and the provider its nodes run with.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mayfly_core::api::{Client, MasterInfo};
use mayfly_core::bootstrap::{absolute, absolute_location};
use mayfly_core::config::JobSpec;
use mayfly_core::job::{Layout, Manifest, keys};
use mayfly_data::provider::{ProviderHandle, Selection};
use mayfly_data::store::{Location, Principal, Store};

use crate::say;

/// Where a job's state is, as the status, logs and resume commands take it.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StateArgs {
    /// The state location the job was run with (a path, or a URL such as s3://bucket/state).
    #[arg(long, default_value = ".mayfly/jobs")]
    pub state: String,
    /// The provider that serves a remote state: a name (`aws`) or a plugin's path.
    #[arg(long)]
    pub provider: Option<String>,
    /// A setting of that provider (repeatable), as in a job's `[provider]` section.
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "provider")]
    pub settings: Vec<String>,
}

/// Finds job `job` under the state location `state` (a path or a URL; a
/// remote one is read with `--provider`/`--set`, else the built-in
/// provider serves paths and file:// URLs).
pub(crate) fn find_job(
    job: &str,
    state: &str,
    provider: Option<&str>,
    settings: &[String],
) -> Result<(Layout, Manifest)> {
    let root = Location::parse(state, Path::new(".")).map_err(|e| anyhow::anyhow!("--state {state:?}: {e}"))?;
    let root = absolute_location(&root);
    let handle = match provider {
        Some(p) => ProviderHandle::select(&provider_arg(p, settings)?)?,
        None => ProviderHandle::select(&Selection::default())?,
    };
    let job_state = root.join(job);
    let who = Principal { job: job.to_owned(), state: job_state.to_string(), node: "cli".into() };
    let store = Store::open(&job_state, &handle, &who)
        .with_context(|| format!("--state {state}: pass --provider (and --set) for the provider that serves it"))?;
    let manifest: Manifest = store
        .read_json(keys::MANIFEST)?
        .with_context(|| format!("no job {job} under {state} (use --state to say where its state is)"))?;
    let layout = Layout::open(&job_state, job, &manifest.output, &handle, "cli")?;
    Ok((layout, manifest))
}

/// Where the jobs' states are, as `--state` names it: the root of a job's
/// own state location.
pub(crate) fn state_root(manifest: &Manifest) -> String {
    let own = manifest.state.as_str();
    own.strip_suffix(&format!("/{}", manifest.job)).unwrap_or(own).to_owned()
}

/// The provider a node of this job runs with: the one the job file selected,
/// as bootstrap recorded it in the manifest.
pub(crate) fn node_provider(manifest: &Manifest) -> Result<ProviderHandle> {
    ProviderHandle::select(&manifest.provider)
        .with_context(|| format!("making provider {} for job {}", manifest.provider.label(), manifest.job))
}

/// The provider `--provider` names (a name, or a path when it has a `/`),
/// with `--set key=value` settings.
pub(crate) fn provider_arg(provider: &str, settings: &[String]) -> Result<Selection> {
    let mut selection = Selection { name: None, ..Default::default() };
    if provider.contains('/') {
        selection.path = Some(absolute(Path::new(provider)));
    } else {
        selection.name = Some(provider.to_owned());
    }
    for kv in settings {
        let (key, value) =
            kv.split_once('=').with_context(|| format!("--set {kv:?}: expected KEY=VALUE (e.g. region=eu-west-1)"))?;
        // Numbers and booleans as in a job file; anything else is a string.
        let value = serde_json::from_str::<serde_json::Value>(value)
            .ok()
            .filter(|v| v.is_number() || v.is_boolean())
            .unwrap_or_else(|| serde_json::Value::String(value.to_owned()));
        if key == "timeout" {
            let d: mayfly_model::units::HumanDuration =
                value.as_str().unwrap_or_default().parse().map_err(|e| anyhow::anyhow!("--set timeout: {e}"))?;
            selection.timeout_ms = Some(d.0.as_millis() as u64);
        } else {
            selection.settings.insert(key.to_owned(), value);
        }
    }
    Ok(selection)
}

pub(crate) fn provider_for(spec: &JobSpec) -> Result<ProviderHandle> {
    Ok(spec.provider_handle()?)
}

/// The worker `node` of `manifest`'s job, checked: the master is not held on
/// its own (hold the whole job).
pub(crate) fn worker_name(manifest: &Manifest, node: &str) -> Result<()> {
    let n = node.strip_prefix("worker-").and_then(|n| n.parse::<u32>().ok());
    if !n.is_some_and(|n| n >= 1 && n <= manifest.workers) {
        bail!(
            "job {} has no worker {node:?}: its workers are worker-1 to worker-{} (the master is not held on its own; \
             leave out --node to hold the whole job)",
            manifest.job,
            manifest.workers
        );
    }
    Ok(())
}

/// Tells a running master that the holds changed (it reads them from the
/// state); says so when there is no master to tell.
pub(crate) fn tell_master(layout: &Layout) {
    let told = (|| -> Result<()> {
        let token = mayfly_core::job::read_token(layout)?;
        let info: MasterInfo = layout.state.read_json(keys::MASTER)?.context("no master.json")?;
        Client::connect(&info, &token, Duration::from_secs(5))?.holds_changed()?;
        Ok(())
    })();
    if let Err(e) = told {
        say(&format!(
            "the master was not told ({e:#}); it reads the holds from the job's state every 2 s, and held workers read them there too"
        ));
    }
}
