//! The reduce stage: one run of the reduce task over every committed map
//! output, concatenated in shard and key order, run by the master when the map
//! stage is done. Its outputs go to `<output>/reduce/<name>`.

use std::path::Path;
use std::sync::Arc;

use crate::host::{Attempt, ConcatInput, FileInput, InputSource, Runtime, RuntimeConfig};
use crate::job::{Layout, Manifest};
use crate::ledger::CommittedOutput;

/// Runs the reduce task; returns the published outputs (relative to the output location).
pub fn run(
    layout: &Layout,
    manifest: &Manifest,
    component: &Path,
    params: &serde_json::Value,
    committed: &[CommittedOutput],
) -> Result<Vec<String>, String> {
    let runtime = Runtime::new(&RuntimeConfig { max_concurrent: 1, ..RuntimeConfig::default() })?;
    let task = runtime.load(component).map_err(|e| e.to_string())?;
    let mut parts: Vec<Arc<dyn InputSource>> = Vec::new();
    for out in committed {
        let path = layout.map_output(&out.key, &out.name);
        let input = FileInput::open(&path, format!("{}/{}", out.key, out.name))
            .map_err(|e| format!("reading map output {}: {e}", path.display()))?;
        parts.push(Arc::new(input));
    }
    let input = Arc::new(ConcatInput::new("map outputs", parts));
    let staging = layout.staging().join("reduce");
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().map_err(|e| e.to_string())?;
    let outcome = rt.block_on(runtime.run(
        &task,
        Attempt { input, params: Arc::from(params.to_string()), limits: manifest.limits, staging: staging.clone() },
    ));
    for line in &outcome.logs {
        eprintln!("reduce: {line}");
    }
    outcome.result.map_err(|f| format!("task {}: {f}", task.name()))?;
    let mut names = Vec::new();
    for out in &outcome.outputs {
        let dest = layout.reduce_output(&out.name);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        std::fs::rename(&out.path, &dest).map_err(|e| format!("publishing {}: {e}", dest.display()))?;
        names.push(format!("reduce/{}", out.name));
    }
    let _ = std::fs::remove_dir_all(&staging);
    Ok(names)
}
