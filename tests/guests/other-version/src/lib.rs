//! Built against `mayfly:task@0.1.0`, the world before the shard lifecycle
//! (one `run` per item): the host must refuse it, naming both versions.
#![allow(unsafe_code, missing_docs)]

wit_bindgen::generate!({ path: "wit", world: "task" });

struct Task;

impl Guest for Task {
    fn run(_input: &mayfly::task::types::Input) -> Result<(), mayfly::task::types::TaskError> {
        mayfly::task::host::log(mayfly::task::types::Level::Info, "hello from the past", &[]);
        Ok(())
    }
}

export!(Task);
