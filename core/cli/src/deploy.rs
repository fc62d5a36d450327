//! `mayfly deploy`: a provider's serverless function from a package, and the
//! nodes' artifact uploaded.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use mayfly_data::provider::ProviderHandle;
use mayfly_model::units::HumanDuration;

use crate::lookup::provider_arg;
use crate::{Ended, say};

/// `mayfly deploy`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The provider (`aws`), a name or a plugin's path.
    provider: String,
    /// The package's directory (from `mayfly package`).
    #[arg(long, default_value = "dist")]
    from: PathBuf,
    /// The function's name.
    #[arg(long)]
    function: String,
    /// The identity the function runs as (on AWS, its execution role's ARN).
    #[arg(long)]
    role: String,
    /// Where the artifacts are uploaded (`s3://bucket/prefix`): function.zip, and
    /// node.tar.gz as node-<its sha256>.tar.gz.
    #[arg(long, value_name = "URL")]
    artifacts: String,
    /// The function's time limit.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<HumanDuration>,
    /// The function's memory, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    memory: u64,
    /// A setting of the provider (repeatable), as in a job's `[provider]` section.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
}

pub(crate) fn execute(args: Args) -> Result<Ended> {
    let Args { provider, from, function, role, artifacts, timeout, memory, settings } = args;
    let timeout_s = timeout.map_or(0, |t| t.0.as_secs());
    cmd_deploy(&provider, &settings, &from, DeployArgs { function, role, artifacts, timeout_s, memory_mb: memory })
}

/// What `mayfly deploy` is told besides the provider and the package.
pub(crate) struct DeployArgs {
    pub function: String,
    pub role: String,
    pub artifacts: String,
    pub timeout_s: u64,
    pub memory_mb: u64,
}

fn cmd_deploy(provider: &str, settings: &[String], from: &Path, args: DeployArgs) -> Result<Ended> {
    let manifest = mayfly_ops::package::read_manifest(from)?;
    let selection = provider_arg(provider, settings)?;
    let handle = ProviderHandle::select(&selection)?;
    if manifest.provider != handle.name() {
        bail!("{} is a package for {}, not for {}", from.display(), manifest.provider, handle.name());
    }
    let location = mayfly_data::store::Location::parse(&args.artifacts, Path::new("/"))
        .map_err(|e| anyhow::anyhow!("--artifacts {}: {e}", args.artifacts))?;
    if location.scheme().is_none() {
        bail!(
            "--artifacts {}: expected an object store URL (s3://bucket/prefix) the platform can read",
            args.artifacts
        );
    }
    let who =
        mayfly_data::store::Principal { job: "deploy".into(), state: args.artifacts.clone(), node: "deploy".into() };
    let store = mayfly_data::store::Store::open(&location, &handle, &who)?;
    // The nodes' artifact under its content's hash: a job's nodes all run the
    // mayfly it was launched with, whatever is deployed later (the user data
    // checks the hash too).
    let node_key = mayfly_ops::package::node_key(&from.join(&manifest.node))?;
    for (file, key) in [(&manifest.function, manifest.function.as_str()), (&manifest.node, node_key.as_str())] {
        store
            .upload(&from.join(file), key)
            .with_context(|| format!("uploading {} to {}", from.join(file).display(), location.join(key)))?;
        say(&format!("uploaded {}", location.join(key)));
    }
    let request = mayfly_provider_api::DeployRequest {
        function: args.function,
        role: args.role,
        code_url: location.join(&manifest.function).as_str().to_owned(),
        architecture: manifest.architecture.clone(),
        settings: selection.settings.clone(),
        timeout_s: args.timeout_s,
        memory_mb: args.memory_mb,
    };
    let answer = handle.deploy(request)?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    println!(
        "jobs on this function: set `node_artifact = \"{}\"` in their [provider] section",
        location.join(&node_key)
    );
    Ok(Ended::Success)
}
