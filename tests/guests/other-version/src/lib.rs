//! Built against `mayfly:task@0.2.0`: the host must refuse it with a version error.
#![allow(unsafe_code, missing_docs)]

wit_bindgen::generate!({ path: "wit", world: "task" });

struct Task;

impl Guest for Task {
    fn run() -> Result<(), String> {
        mayfly::task::host::log("hello from the future");
        Ok(())
    }
}

export!(Task);
