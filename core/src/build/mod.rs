//! `mayfly build`: turns a task directory into a WebAssembly component: a Rust
//! task crate (a `Cargo.toml`) here, a Python task ([`python`]) with
//! componentize-py.
//!
//! For a crate it runs `cargo build --release --target wasm32-wasip2` on the crate and reads
//! cargo's JSON messages to find the component, so it works for a crate in a
//! workspace or on its own, whatever the target directory. The wasm target is
//! not installed by rustup on its own, so this adds it first when missing.
//!
//! In `mayfly-core`'s flow (`core/tests/flow.rs` checks it) it must not import `api` or
//! anything above, nor its peers `tls` and `ledger`; like its crate, it must not import
//! `mayfly-ops` or the binary.

pub mod python;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Rust target tasks are built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The directory holds neither a Rust nor a Python task.
    #[error(
        "{} is not a task: it has no Cargo.toml (a Rust task crate), and no app.py or pyproject.toml \
         with a [tool.mayfly] table (a Python task)",
        .0.display()
    )]
    NotATask(PathBuf),
    /// A tool could not be started.
    #[error("cannot run `{tool}`: {source}; is the Rust toolchain (rustup, cargo) installed and on PATH?")]
    Tool {
        /// The command.
        tool: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A tool of the Python build could not be started.
    #[error("cannot run `{tool}`: {source}; {hint}")]
    PythonTool {
        /// The command.
        tool: String,
        /// The cause.
        source: std::io::Error,
        /// What to do about it.
        hint: String,
    },
    /// The wasm target is missing and could not be added.
    #[error(
        "the {WASM_TARGET} target is not installed and `rustup target add {WASM_TARGET}` failed ({0}); \
         install it by hand and build again"
    )]
    Target(String),
    /// cargo failed; its diagnostics were printed above.
    #[error("cargo could not build the task in {} (its errors are above)", .0.display())]
    Cargo(PathBuf),
    /// The crate built, but produced no component.
    #[error(
        "{} built, but produced no component: a task crate needs `[lib] crate-type = [\"cdylib\"]` \
         and a function marked `#[mayfly_sdk::task]`",
        .0.display()
    )]
    NoComponent(PathBuf),
    /// A Python task's pyproject.toml is not what a build needs.
    #[error("{}: {reason}", .path.display())]
    PyProject {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A Python task's module is not in its directory.
    #[error(
        "{} has no {module}.py: a Python task is a module in its directory (`app.py`, or the one \
         pyproject.toml's [tool.mayfly] module names) that decorates its task with `@mayfly_sdk.task`",
        .dir.display()
    )]
    NoModule {
        /// The task directory.
        dir: PathBuf,
        /// The module's name.
        module: String,
    },
    /// componentize-py refused the Python task; `output` is its traceback.
    #[error("the Python task in {} does not build: {cause}", .dir.display())]
    Componentize {
        /// The task directory.
        dir: PathBuf,
        /// The file, line and exception, or what else failed.
        cause: String,
        /// What componentize-py printed (the traceback, with real paths).
        output: String,
    },
    /// componentize-py could not be installed.
    #[error(
        "componentize-py {} could not be installed into {}: {reason}; install it yourself \
         (`pip install componentize-py=={}`) and put it on PATH, or set MAYFLY_COMPONENTIZE_PY to it",
        python::COMPONENTIZE_PY_VERSION, .venv.display(), python::COMPONENTIZE_PY_VERSION
    )]
    Install {
        /// Where it was being installed.
        venv: PathBuf,
        /// Why it failed.
        reason: String,
    },
    /// No cache directory to install componentize-py into.
    #[error(
        "componentize-py {} is not on PATH and there is no cache directory to install it into \
         (set MAYFLY_CACHE_DIR or HOME), or set MAYFLY_COMPONENTIZE_PY to it",
        python::COMPONENTIZE_PY_VERSION
    )]
    NoCache,
    /// A Python task's dependencies could not be vendored.
    #[error(
        "the task's dependencies ({dependencies}) could not be vendored: {reason}; only pure-Python \
         packages (wheels tagged py3-none-any) can run in the sandbox"
    )]
    Vendor {
        /// `[project] dependencies`.
        dependencies: String,
        /// pip's error.
        reason: String,
    },
    /// A file of the build could not be read or written.
    #[error("cannot {what} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn run(cmd: &mut Command, tool: &str) -> Result<std::process::Output, BuildError> {
    cmd.output().map_err(|source| BuildError::Tool { tool: tool.to_owned(), source })
}

/// Makes sure the toolchain used in `dir` has the wasm target, adding it with
/// rustup if needed. `say` is told when that happens.
pub fn ensure_wasm_target(dir: &Path, say: &mut dyn FnMut(&str)) -> Result<(), BuildError> {
    let out = run(Command::new("rustc").args(["--print", "sysroot"]).current_dir(dir), "rustc --print sysroot")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if out.status.success() && sysroot.join("lib/rustlib").join(WASM_TARGET).is_dir() {
        return Ok(());
    }
    say(&format!("the {WASM_TARGET} target is missing; adding it (rustup target add {WASM_TARGET})"));
    let out = run(Command::new("rustup").args(["target", "add", WASM_TARGET]).current_dir(dir), "rustup")?;
    if !out.status.success() {
        return Err(BuildError::Target(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(())
}

/// Builds the task in `dir` (a Rust crate, else a Python task) and returns
/// the path of its component. cargo's progress and diagnostics go to stderr
/// as usual.
pub fn build_task(dir: &Path, say: &mut dyn FnMut(&str)) -> Result<PathBuf, BuildError> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        return match python::detect(dir)? {
            Some(project) => python::build(&project, say),
            None => Err(BuildError::NotATask(dir.to_owned())),
        };
    }
    let manifest = manifest.canonicalize().map_err(|_| BuildError::NotATask(dir.to_owned()))?;
    ensure_wasm_target(dir, say)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(&cargo)
        .args(["build", "--release", "--target", WASM_TARGET, "--message-format=json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(&manifest)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| BuildError::Tool { tool: "cargo build".into(), source })?;
    let mut component = None;
    if let Some(stdout) = child.stdout.take() {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(path) = component_in_message(&line, &manifest) {
                component = Some(path);
            }
        }
    }
    let status = child.wait().map_err(|source| BuildError::Tool { tool: "cargo build".into(), source })?;
    if !status.success() {
        return Err(BuildError::Cargo(dir.to_owned()));
    }
    component.ok_or_else(|| BuildError::NoComponent(dir.to_owned()))
}

/// The `.wasm` cdylib of the package at `manifest`, if this cargo message announces it.
fn component_in_message(line: &str, manifest: &Path) -> Option<PathBuf> {
    let msg: serde_json::Value = serde_json::from_str(line).ok()?;
    if msg.get("reason")?.as_str()? != "compiler-artifact" {
        return None;
    }
    if Path::new(msg.get("manifest_path")?.as_str()?) != manifest {
        return None;
    }
    let kinds = msg.get("target")?.get("kind")?.as_array()?;
    if !kinds.iter().any(|k| k.as_str() == Some("cdylib")) {
        return None;
    }
    msg.get("filenames")?
        .as_array()?
        .iter()
        .filter_map(|f| f.as_str())
        .find(|f| f.ends_with(".wasm"))
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_component_of_this_package_only() {
        let manifest = Path::new("/w/tasks/wc/Cargo.toml");
        let msg = r#"{"reason":"compiler-artifact","manifest_path":"/w/tasks/wc/Cargo.toml","target":{"kind":["cdylib","rlib"]},"filenames":["/t/wc.wasm","/t/libwc.rlib"]}"#;
        assert_eq!(component_in_message(msg, manifest), Some(PathBuf::from("/t/wc.wasm")));
        let dep = msg.replace("/w/tasks/wc/", "/w/sdk/");
        assert_eq!(component_in_message(&dep, manifest), None);
        let rlib_only = msg.replace(r#""cdylib","rlib""#, r#""rlib""#);
        assert_eq!(component_in_message(&rlib_only, manifest), None);
        assert_eq!(component_in_message("not json", manifest), None);
    }
}
