//! `mayfly build`: a task crate into a component ([`mayfly_core::build`]).

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::{Ended, say};

/// `mayfly build`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The task crate's directory.
    dir: PathBuf,
}

pub(crate) fn execute(args: Args) -> Result<Ended> {
    cmd_build(&args.dir).map(|()| Ended::Success)
}

fn cmd_build(dir: &Path) -> Result<()> {
    let path = mayfly_core::build::build_task(dir, &mut say)?;
    println!("{}", path.display());
    Ok(())
}
