//! `mayfly init`: a new task crate ([`mayfly_ops::scaffold`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::Ended;

/// `mayfly init`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The task's name (a Rust package name: letters, digits, `-`, `_`).
    name: String,
    /// Where the crate's directory is created.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// mayfly's sdk directory (default: the one this mayfly was built from).
    #[arg(long)]
    sdk: Option<PathBuf>,
}

pub(crate) fn execute(args: Args) -> Result<Ended> {
    cmd_init(&args.name, &args.dir, args.sdk.as_deref())
}

/// Scaffolds a task crate and says what to do next.
fn cmd_init(name: &str, dir: &Path, sdk: Option<&Path>) -> Result<Ended> {
    let sdk = match sdk {
        Some(p) => p.canonicalize().with_context(|| format!("--sdk {}", p.display()))?,
        None => mayfly_ops::scaffold::default_sdk().context(
            "this mayfly was not built from a checkout that still has its sdk/ directory; \
             pass --sdk <mayfly checkout>/sdk",
        )?,
    };
    let made = mayfly_ops::scaffold::scaffold(dir, name, &sdk).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("created task crate {} ({} files)", made.dir.display(), made.files.len());
    for f in &made.files {
        println!("  {}", f.strip_prefix(&made.dir).unwrap_or(f).display());
    }
    println!("next:");
    println!("  cd {}", made.dir.display());
    println!("  cargo test                         # the task's own tests, natively");
    println!("  mayfly exec . --input data/sample.txt   # one input, in the sandbox");
    println!("  mayfly run job.toml                # a job on this machine (the local provider)");
    Ok(Ended::Success)
}
