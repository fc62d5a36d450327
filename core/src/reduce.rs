//! The reduce stage: one run of the reduce task over every committed map
//! output, concatenated in shard and key order, run by the master when the map
//! stage is done. Its outputs go to `<output>/reduce/<name>`.
//!
//! In `mayfly-core`'s flow (`core/tests/flow.rs` checks it) it must not import `master`
//! or `worker`, or anything above, nor its peers `hold` and `attempt`; like its crate, it
//! must not import `mayfly-ops` or the binary.

use std::path::Path;
use std::sync::Arc;

use crate::host::{Attempt, ConcatInput, InputSource, OpenOnRead, Runtime, RuntimeConfig};
use crate::job::{Layout, Manifest};
use crate::ledger::CommittedOutput;

/// Why the reduce did not publish its outputs.
#[derive(Debug, thiserror::Error)]
pub enum ReduceError {
    /// The sandbox did not start.
    #[error("starting the sandbox: {0}")]
    Sandbox(#[from] crate::host::StartError),
    /// The task's component does not load.
    #[error(transparent)]
    Load(#[from] crate::host::LoadError),
    /// Its component could not be fetched from a remote state.
    #[error(transparent)]
    Fetch(#[from] crate::job::LayoutError),
    /// The map outputs cannot be listed.
    #[error("listing the map outputs in {at}: {source}")]
    List {
        /// Where.
        at: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A committed map output is not there as committed.
    #[error("map output {at} {problem}")]
    MapOutput {
        /// Where.
        at: String,
        /// What is wrong ("is missing", "is 3 bytes, 5 were committed").
        problem: String,
    },
    /// The task failed.
    #[error("task {task}: {failure}")]
    Task {
        /// The task's name.
        task: String,
        /// How.
        failure: crate::host::Failure,
    },
    /// An output could not be published.
    #[error("publishing {at}: {source}")]
    Publish {
        /// Where.
        at: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Runs the reduce task on `rt`; returns the published outputs (relative to
/// the output location).
pub fn run(
    layout: &Layout,
    manifest: &Manifest,
    component: &Path,
    params: &serde_json::Value,
    committed: &[CommittedOutput],
    rt: &tokio::runtime::Handle,
) -> Result<Vec<String>, ReduceError> {
    let runtime = Runtime::new(&RuntimeConfig { max_concurrent: 1, ..RuntimeConfig::default() })?;
    let task = runtime.load(component)?;
    // Every map output is there with its committed size (one listing), and is
    // opened only when the task reads it: thousands of outputs must not hold
    // thousands of descriptors at once.
    let listed: std::collections::HashMap<String, u64> = layout
        .output
        .list("map")
        .map_err(|source| ReduceError::List { at: layout.output.display("map"), source })?
        .into_iter()
        .collect();
    let mut parts: Vec<Arc<dyn InputSource>> = Vec::with_capacity(committed.len());
    for out in committed {
        let key = layout.map_output(&out.key, &out.name);
        match listed.get(&key) {
            Some(&size) if size == out.bytes => {}
            Some(&size) => {
                return Err(ReduceError::MapOutput {
                    at: layout.output.display(&key),
                    problem: format!("is {size} bytes, {} were committed", out.bytes),
                });
            }
            None => {
                return Err(ReduceError::MapOutput { at: layout.output.display(&key), problem: "is missing".into() });
            }
        }
        let (store, name) = (layout.output.clone(), format!("{}/{}", out.key, out.name));
        let display = layout.output.display(&key);
        parts.push(Arc::new(OpenOnRead::new(name.clone(), out.bytes, move || {
            store
                .input(&key, &name, None)
                .map_err(|e| std::io::Error::new(e.kind(), format!("reading map output {display}: {e}")))
        })));
    }
    let input = Arc::new(ConcatInput::new("map outputs", parts));
    let staging_key = format!("{}/reduce", layout.staging());
    let staging = layout.local_staging(&staging_key);
    let outcome = rt.block_on(runtime.run(
        &task,
        Attempt { input, params: Arc::from(params.to_string()), limits: manifest.limits, staging: staging.clone() },
    ));
    for line in &outcome.logs {
        mayfly_data::nodelog::line(&line.level.to_string(), "master", format_args!("reduce: {line}"));
    }
    outcome.result.map_err(|failure| ReduceError::Task { task: task.name().to_owned(), failure })?;
    let mut names = Vec::new();
    for out in &outcome.outputs {
        let dest = layout.reduce_output(&out.name);
        let published = match layout.output.local_dir() {
            // Staged in place: a rename.
            Some(_) => layout.output.rename(&format!("{staging_key}/{}", out.name), &dest),
            None => layout.output.upload(&out.path, &dest),
        };
        published.map_err(|source| ReduceError::Publish { at: layout.output.display(&dest), source })?;
        names.push(format!("reduce/{}", out.name));
    }
    let _ = std::fs::remove_dir_all(&staging);
    Ok(names)
}
