//! Core's modules follow the flow: none imports one above it (ARCHITECTURE.md,
//! "Crates"). A reference is any `crate::<module>` outside a comment; the CLI
//! (`core/cli`, the binary) is the top and may use everything.

use std::collections::BTreeMap;
use std::path::Path;

/// Bottom to top; modules in one group may not reference each other.
const FLOW: &[&[&str]] = &[
    &["error"],
    &["plan", "policy", "build", "cost", "package", "report", "demo"],
    &["nodelog"],
    &["tls"],
    &["ledger"],
    &["api"],
    &["readahead"],
    &["plugin"],
    &["provider"],
    &["store"],
    &["config"],
    &["job"],
    &["hold", "reduce", "reap", "scaffold", "attempt", "check"],
    &["master", "worker", "replay"],
    &["node", "bootstrap", "watch"],
    &["history", "conformance"],
];

/// Core's modules and their files: `name.rs`, or a directory `name/` and
/// every `.rs` file under it (its submodules are its own).
fn modules(src: &Path) -> BTreeMap<String, Vec<std::path::PathBuf>> {
    fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("reading core's sources").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("reading core's sources").flatten() {
        let path = entry.path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else { continue };
        let mut files = Vec::new();
        if path.is_dir() {
            walk(&path, &mut files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        } else {
            continue;
        }
        modules.entry(name).or_insert_with(Vec::new).extend(files);
    }
    modules
}

/// `text` without `//` comments (doc comments included).
fn code(text: &str) -> String {
    text.lines().map(|l| l.split_once("//").map_or(l, |(c, _)| c)).collect::<Vec<_>>().join("\n")
}

/// The modules `text` references as `crate::<name>`.
fn references(text: &str) -> Vec<String> {
    code(text)
        .split("crate::")
        .skip(1)
        .map(|rest| rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect())
        .collect()
}

#[test]
fn no_module_of_core_imports_one_above_it() {
    let level: BTreeMap<&str, usize> =
        FLOW.iter().enumerate().flat_map(|(i, group)| group.iter().map(move |m| (*m, i))).collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut seen = Vec::new();
    let mut wrong = Vec::new();
    for (module, files) in modules(&src) {
        if module == "lib" {
            continue;
        }
        let Some(&mine) = level.get(module.as_str()) else {
            wrong.push(format!("{module} is not placed in the flow (add it to FLOW and ARCHITECTURE.md)"));
            continue;
        };
        seen.push(module.clone());
        for text in files.iter().map(|f| std::fs::read_to_string(f).unwrap()) {
            for other in references(&text) {
                // `crate::host` and `crate::units` are the sandbox and model crates, below everything.
                if other == module || other == "host" || other == "units" {
                    continue;
                }
                match level.get(other.as_str()) {
                    Some(&theirs) if theirs < mine => {}
                    Some(_) => wrong.push(format!("{module} imports {other}, which is not below it")),
                    None => wrong.push(format!("{module} imports {other}, which is not in the flow")),
                }
            }
        }
    }
    assert!(seen.len() > 20, "found only {seen:?} in {}", src.display());
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_check_sees_references_and_skips_comments() {
    assert_eq!(
        references("use crate::job::Layout; // crate::master\n/// [`crate::worker`]\nx(crate::api::y)"),
        ["job", "api"]
    );
}
