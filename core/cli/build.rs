//! Names the commit the binary was built from, for `mayfly --version`:
//! `MAYFLY_COMMIT` when the build sets it (a build outside a git checkout,
//! such as a source archive), else `git rev-parse` of the checkout, else
//! `unknown`. Cargo reruns this when the checkout's HEAD or its branch moves.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=MAYFLY_COMMIT");
    let commit = match std::env::var("MAYFLY_COMMIT") {
        Ok(given) if !given.trim().is_empty() => given.trim().to_owned(),
        _ => {
            let commit = git(&["rev-parse", "--short=12", "HEAD"]);
            let date = git(&["log", "-1", "--format=%cs", "HEAD"]);
            // What moves HEAD: the checkout's HEAD (a switch), the branch it
            // names, packed refs, and the branches' directory. Only files that exist are watched (a
            // missing one would rerun this on every build).
            let watched = [
                git(&["rev-parse", "--git-path", "HEAD"]),
                git(&["rev-parse", "--symbolic-full-name", "HEAD"])
                    .and_then(|name| git(&["rev-parse", "--git-path", &name])),
                git(&["rev-parse", "--git-path", "packed-refs"]),
                // A branch whose ref is packed gets a file of its own here at its next commit.
                git(&["rev-parse", "--git-path", "refs/heads"]),
            ];
            for path in watched.into_iter().flatten().map(PathBuf::from) {
                if Path::new(&path).exists() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
            match (commit, date) {
                (Some(commit), Some(date)) => format!("{commit} {date}"),
                (Some(commit), None) => commit,
                _ => "unknown".to_owned(),
            }
        }
    };
    println!("cargo:rustc-env=MAYFLY_COMMIT={commit}");
}
