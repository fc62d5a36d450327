//! `mayfly build`: a task directory (a Rust crate or a Python task) into a
//! component ([`mayfly_core::build`]), checked by the sandbox.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use mayfly_core::host::{Failure, Limits, Runtime, RuntimeConfig};
use mayfly_model::units::ByteSize;

use crate::{Ended, say};

/// `mayfly build`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The task's directory.
    dir: PathBuf,
    /// The memory limit an instance of the task must start within (a job's
    /// `[limits] memory`; default: the sandbox's default).
    #[arg(long)]
    memory: Option<ByteSize>,
}

pub(crate) fn execute(args: Args) -> Result<Ended> {
    cmd_build(&args.dir, args.memory.unwrap_or(Limits::default().memory)).map(|()| Ended::Success)
}

fn cmd_build(dir: &Path, memory: ByteSize) -> Result<()> {
    let path = mayfly_core::build::build_task(dir, &mut say)?;
    // What a job would do next: the sandbox checks the component's world and
    // compiles it (into the cache, so the first run need not), then makes one
    // instance without calling it, so that a component too large for the
    // limits (a Python task's interpreter and what its module holds at
    // import) is refused here, not by every shard.
    let runtime = Runtime::new(&RuntimeConfig { max_concurrent: 1, ..RuntimeConfig::default() })?;
    let task = runtime.load(&path).with_context(|| format!("{} built, but the sandbox refuses it", path.display()))?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    match crate::runtime()?.block_on(runtime.check_instance(&task, memory)) {
        Ok(took) => say(&format!(
            "{}: a {} component; an instance starts with {} of memory (limit {memory})",
            path.display(),
            ByteSize(size),
            ByteSize(took)
        )),
        Err(failure @ Failure::OutOfMemory { .. }) => bail!(
            "{} built, but is too large for the sandbox: an instance of it, before it runs anything, \
             {failure}; make what the task holds at import smaller, or give its jobs more memory \
             ([limits] memory in the job file; `mayfly build --memory SIZE` checks against that)",
            path.display()
        ),
        Err(failure) => bail!("{} built, but the sandbox cannot make an instance of it: {failure}", path.display()),
    }
    println!("{}", path.display());
    Ok(())
}
