//! A component of another world: the host must say it is not a mayfly task.
#![allow(unsafe_code, missing_docs)]

wit_bindgen::generate!({ path: "wit", world: "greeter" });

struct Greeter;

impl Guest for Greeter {
    fn greet(name: String) -> String {
        format!("hello {name}")
    }
}

export!(Greeter);
