//! `mayfly package`: what a provider's cloud runs, built from this checkout
//! ([`mayfly_ops::package`]).

use std::path::{Path, PathBuf};

use anyhow::Result;
use mayfly_core::bootstrap::absolute;

use crate::Ended;

/// `mayfly package`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The provider (`aws`).
    provider: String,
    /// Where the package goes.
    #[arg(long, default_value = "dist")]
    out: PathBuf,
    /// The mayfly checkout to build (default: the current directory).
    #[arg(long, default_value = ".")]
    workspace: PathBuf,
    /// The cargo profile to build with: `ship` (optimized, stripped: what a
    /// cloud should run) or `package-test` (unoptimized, quick to build:
    /// for trying the packaging, as mayfly's own tests do).
    #[arg(long, default_value = "ship")]
    profile: String,
}

pub(crate) fn execute(args: Args) -> Result<Ended> {
    cmd_package(&args.provider, &args.out, &args.workspace, &args.profile)
}

fn cmd_package(provider: &str, out: &Path, workspace: &Path, profile: &str) -> Result<Ended> {
    let mut options = mayfly_ops::package::Options::for_provider(provider, absolute(workspace), absolute(out))?;
    options.profile = profile.to_owned();
    let manifest = mayfly_ops::package::package(&options, &mut crate::say)?;
    for file in [&manifest.function, &manifest.node] {
        let path = options.out.join(file);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!("{} ({})", path.display(), mayfly_model::units::ByteSize(size));
    }
    println!(
        "built for {} Linux with glibc {} or newer; next: mayfly deploy {provider} --from {}",
        manifest.architecture,
        manifest.glibc,
        options.out.display()
    );
    Ok(Ended::Success)
}
