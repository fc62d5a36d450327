//! Host-side bindings for the `mayfly:task@0.2.0` world (sdk/wit/task.wit).

wasmtime::component::bindgen!({
    path: "../../sdk/wit",
    world: "task",
    imports: { default: trappable },
    exports: { default: async },
    with: {
        "mayfly:task/types.input": super::io::InputHandle,
        "mayfly:task/types.output": super::io::OutputHandle,
    },
});

/// The interface version this host implements; components must import exactly it.
pub const WIT_PACKAGE: &str = "mayfly:task";
/// See [`WIT_PACKAGE`].
pub const WIT_VERSION: &str = "0.2.0";
