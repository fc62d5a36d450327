//! Files that are not tasks are refused at load time with a message that
//! names the task and says what the file is instead.

use mayfly_core::host::LoadError;
use mayfly_tests::{component, runtime, scratch};

fn load_err(name: &str, bytes: &[u8]) -> String {
    let dir = scratch(&format!("load-{name}"));
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    match runtime().load(&path) {
        Ok(_) => panic!("{name} loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_text_file_is_not_webassembly() {
    let msg = load_err("notes", b"# just some notes\n");
    assert!(msg.starts_with("task notes: not a WebAssembly component"), "{msg}");
    assert!(msg.contains("23 20 6a 75"), "{msg}");
    let msg = load_err("empty", b"");
    assert!(msg.contains("the file is empty"), "{msg}");
}

#[test]
fn a_core_module_is_not_a_component() {
    // The smallest valid core module: magic and version 1.
    let msg = load_err("core", b"\0asm\x01\0\0\0");
    assert!(msg.contains("task core: this is a core WebAssembly module, not a component"), "{msg}");
}

#[test]
fn a_truncated_component_is_invalid() {
    let bytes = std::fs::read(component("tasks/sha256")).unwrap();
    let msg = load_err("truncated", &bytes[..bytes.len() / 2]);
    assert!(msg.starts_with("task truncated: invalid component"), "{msg}");
}

#[test]
fn a_task_for_another_interface_version_is_refused() {
    // Built for the world before the shard lifecycle (one `run` per item).
    match runtime().load(&component("tests/guests/other-version")) {
        Err(e @ LoadError::WrongVersion { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("built for `mayfly:task/") && msg.contains("@0.1.0`"), "{msg}");
            assert!(msg.contains("runs tasks for `mayfly:task@0.2.0`"), "{msg}");
        }
        other => panic!("expected a version error, got {other:?}"),
    }
}

#[test]
fn a_component_of_another_world_is_not_a_task() {
    let err = runtime().load(&component("tests/guests/other-world")).unwrap_err().to_string();
    assert!(err.contains("not a mayfly task"), "{err}");
    assert!(err.contains("it exports `greet`"), "{err}");
}

#[test]
fn a_missing_file_names_the_path() {
    let err = runtime().load("/nonexistent/task.wasm".as_ref()).unwrap_err().to_string();
    assert!(err.contains("task task: cannot read /nonexistent/task.wasm"), "{err}");
}
