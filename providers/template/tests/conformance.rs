//! The conformance suite every provider passes, run against this plugin the
//! way `mayfly` runs it: built as a library, loaded by path through the C
//! ABI, launching nodes that run the real `mayfly` binary, running real jobs
//! with the word-count task. `cargo test` runs it; it needs nothing but a
//! mayfly checkout (the `mayfly-ops` dev-dependency's) and the `wasm32-wasip2`
//! target (`rustup target add wasm32-wasip2`).
//!
//! To make it yours, change the `[provider]` section below to your
//! provider's settings (pointed at your platform's emulator), and `identity`
//! to the setting that makes an instance of your provider see itself on a
//! given node (what your platform's instance metadata would tell it).

use std::path::{Path, PathBuf};

use mayfly_ops::conformance::{Checkout, Kit, Selected};
use mayfly_provider_api::conformance::assert_conforms;

/// This test's target directory: `<target>/debug/deps/<this test>`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    exe.ancestors().nth(3).expect("a target directory").to_owned()
}

#[test]
fn this_provider_conforms() {
    let target = target_dir();
    let checkout = Checkout::of_this_build(&target);
    // What a job would load, and what its nodes run.
    let plugin = checkout.plugin(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap_or_else(|e| panic!("{e}"));
    let mayfly = checkout.mayfly_bin().unwrap_or_else(|e| panic!("{e}"));
    let wordcount = checkout.wordcount().unwrap_or_else(|e| panic!("{e}"));

    let scratch = target.join("conformance").join(std::process::id().to_string());
    let registry = scratch.join("registry");
    // The job file's [provider] section: the plugin by path, and its settings.
    let section = serde_json::json!({
        "path": plugin,
        // Nodes run `mayfly`; under `cargo test` the running binary is this test.
        "binary": mayfly,
        "registry": registry,
        "credential_ttl": "4s",
    });
    let backend = Selected {
        section: section.as_object().expect("an object").clone(),
        root: scratch.join("state"),
        // How an instance sees itself on a node: here, its registry entry.
        identity: Box::new(move |_, node| {
            let entry = registry.join(&node.job).join(format!("{}.json", node.node));
            ("identity".into(), entry.to_string_lossy().into_owned())
        }),
        // What is left of a job, by the backend itself rather than the
        // plugin: here, this machine's processes (a cloud's plugin asks the
        // cloud's own API, or its emulator's records).
        observer: Box::new(|job| {
            let processes = mayfly_ops::conformance::job_processes(job);
            Ok(processes.into_iter().map(|(pid, command)| format!("process {pid}: {command}")).collect())
        }),
    };
    assert_conforms(&backend, &Kit::new(&scratch.join("jobs"), &wordcount));
    let _ = std::fs::remove_dir_all(&scratch);
}
