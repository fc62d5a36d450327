//! `mayfly serve`: a provider's serverless entrypoint ([`mayfly_core::bootstrap::serve`]).

use anyhow::{Context, Result, bail};
use mayfly_data::provider::ProviderHandle;

use crate::Ended;
use crate::lookup::provider_arg;

/// `mayfly serve`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The provider: a name (`aws`) or a plugin's path.
    #[arg(long)]
    provider: String,
    /// A setting of that provider (repeatable), as in a job's `[provider]` section.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
}

pub(crate) fn execute(args: Args) -> Result<Ended> {
    cmd_serve(&args.provider, &args.settings)
}

fn cmd_serve(provider: &str, settings: &[String]) -> Result<Ended> {
    let mut selection = provider_arg(provider, settings)?;
    if let Ok(text) = std::env::var(mayfly_provider_api::SETTINGS_ENV) {
        let from_env: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).with_context(|| {
            format!("{}: expected a JSON object of settings, got {text:?}", mayfly_provider_api::SETTINGS_ENV)
        })?;
        for (k, v) in from_env {
            selection.settings.entry(k).or_insert(v);
        }
    }
    let handle = ProviderHandle::select(&selection)?;
    if handle.info().capabilities.entrypoint.is_none() {
        bail!("provider {} has no serverless entrypoint to serve", handle.name());
    }
    mayfly_core::bootstrap::serve(&handle)?;
    Ok(Ended::Success)
}
