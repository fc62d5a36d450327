//! `mayfly init`: a new task, in Rust or Python ([`mayfly_ops::scaffold`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::Ended;

/// The language a new task is written in.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lang {
    /// A Rust crate (built for wasm32-wasip2).
    Rust,
    /// A Python module (built with componentize-py).
    Python,
}

/// `mayfly init`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The task's name (letters, digits, `-`, `_`; it names the job too).
    name: String,
    /// Where the task's directory is created.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// The task's language.
    #[arg(long, value_enum, default_value = "rust")]
    lang: Lang,
    /// mayfly's sdk directory (default: the one this mayfly was built from).
    #[arg(long)]
    sdk: Option<PathBuf>,
}

pub(crate) fn execute(args: Args) -> Result<Ended> {
    cmd_init(&args.name, &args.dir, args.lang, args.sdk.as_deref())
}

/// Scaffolds a task and says what to do next.
fn cmd_init(name: &str, dir: &Path, lang: Lang, sdk: Option<&Path>) -> Result<Ended> {
    let sdk = match sdk {
        Some(p) => p.canonicalize().with_context(|| format!("--sdk {}", p.display()))?,
        None => mayfly_ops::scaffold::default_sdk().context(
            "this mayfly was not built from a checkout that still has its sdk/ directory; \
             pass --sdk <mayfly checkout>/sdk",
        )?,
    };
    let made = match lang {
        Lang::Rust => mayfly_ops::scaffold::scaffold(dir, name, &sdk),
        Lang::Python => mayfly_ops::scaffold::scaffold_python(dir, name, &sdk),
    }
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let what = if lang == Lang::Rust { "task crate" } else { "Python task" };
    println!("created {what} {} ({} files)", made.dir.display(), made.files.len());
    for f in &made.files {
        println!("  {}", f.strip_prefix(&made.dir).unwrap_or(f).display());
    }
    println!("next:");
    println!("  cd {}", made.dir.display());
    match lang {
        Lang::Rust => println!("  cargo test                         # the task's own tests, natively"),
        Lang::Python => println!("  python3 -m unittest                # the task's own tests, in plain Python"),
    }
    println!("  mayfly exec . --input data/sample.txt   # one input, in the sandbox");
    println!("  mayfly run job.toml                # a job on this machine (the local provider)");
    Ok(Ended::Success)
}
