//! mayfly's crates and their modules follow the flow (ARCHITECTURE.md,
//! "Crates"): no crate depends on, or names, one above it, and inside a crate
//! no module imports one above it. A module's reference is any `crate::<module>`
//! outside a comment; a crate's, any dependency in its `[dependencies]` and any
//! `mayfly_<crate>` outside a comment. The binary (`core/cli`) is the top and
//! may use everything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One of mayfly's crates: its package, its directory from the repository's
/// root, and its modules bottom to top (modules in one group may not
/// reference each other; `None`: its modules are one unit, not checked).
struct Crate {
    package: &'static str,
    dir: &'static str,
    flow: Option<&'static [&'static [&'static str]]>,
}

/// Bottom to top.
const CRATES: &[Crate] = &[
    Crate {
        package: "mayfly-model",
        dir: "core/model",
        flow: Some(&[&["error", "key", "units"], &["plan"], &["policy", "cost"]]),
    },
    // The sandbox's modules are one piece (they reach each other through
    // `super::`): the bindings, the host's state, its limits and logs.
    Crate { package: "mayfly-sandbox", dir: "core/sandbox", flow: None },
    Crate {
        package: "mayfly-data",
        dir: "core/data",
        flow: Some(&[&["nodelog", "readahead", "plugin", "prices"], &["provider"], &["gate"], &["store"]]),
    },
    Crate {
        package: "mayfly-core",
        dir: "core",
        flow: Some(&[
            &["tls", "ledger", "build", "merge"],
            &["api"],
            &["config"],
            &["job"],
            &["commits"],
            &["hold", "reduce", "attempt"],
            &["master", "worker", "preflight"],
            &["node", "bootstrap"],
        ]),
    },
    Crate {
        package: "mayfly-ops",
        dir: "core/ops",
        flow: Some(&[
            &["report", "package", "demo"],
            &["reap", "scaffold", "check", "replay", "watch"],
            &["history", "conformance"],
        ]),
    },
    Crate { package: "mayfly", dir: "core/cli", flow: None },
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("core/ has a parent").to_owned()
}

/// A crate's modules and their files: `name.rs`, or a directory `name/` and
/// every `.rs` file under it (its submodules are its own).
fn modules(src: &Path) -> BTreeMap<String, Vec<std::path::PathBuf>> {
    fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("reading a crate's sources").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("reading a crate's sources").flatten() {
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

/// The mayfly crates `text` names as `mayfly_<crate>` (as packages: `mayfly-<crate>`).
fn crates_named(text: &str) -> Vec<String> {
    code(text)
        .split("mayfly_")
        .skip(1)
        .map(|rest| rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect::<String>())
        .map(|name| format!("mayfly-{}", name.replace('_', "-")))
        .collect()
}

#[test]
fn no_crate_depends_on_or_names_one_above_it() {
    let level: BTreeMap<&str, usize> = CRATES.iter().enumerate().map(|(i, c)| (c.package, i)).collect();
    let mut wrong = Vec::new();
    for (mine, krate) in CRATES.iter().enumerate() {
        let dir = root().join(krate.dir);
        let manifest: toml::Table = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap().parse().unwrap();
        let deps = manifest.get("dependencies").and_then(|d| d.as_table()).cloned().unwrap_or_default();
        let mut named: Vec<String> = deps.keys().cloned().collect();
        for files in modules(&dir.join("src")).values() {
            for file in files {
                named.extend(crates_named(&std::fs::read_to_string(file).unwrap()));
            }
        }
        for other in named {
            if let Some(&theirs) = level.get(other.as_str())
                && theirs >= mine
                && other != krate.package
            {
                wrong.push(format!("{} depends on or names {other}, which is not below it", krate.package));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_module_imports_one_above_it_in_its_crate() {
    let mut wrong = Vec::new();
    for krate in CRATES {
        let Some(flow) = krate.flow else { continue };
        let level: BTreeMap<&str, usize> =
            flow.iter().enumerate().flat_map(|(i, group)| group.iter().map(move |m| (*m, i))).collect();
        let src = root().join(krate.dir).join("src");
        let mut seen = 0;
        for (module, files) in modules(&src) {
            if module == "lib" {
                continue;
            }
            let Some(&mine) = level.get(module.as_str()) else {
                wrong.push(format!(
                    "{}: {module} is not placed in the flow (add it to CRATES and ARCHITECTURE.md)",
                    krate.package
                ));
                continue;
            };
            seen += 1;
            for text in files.iter().map(|f| std::fs::read_to_string(f).unwrap()) {
                for other in references(&text) {
                    // `crate::host` is core's name for the sandbox crate, below it.
                    if other == module || (krate.package == "mayfly-core" && other == "host") {
                        continue;
                    }
                    match level.get(other.as_str()) {
                        Some(&theirs) if theirs < mine => {}
                        Some(_) => {
                            wrong.push(format!("{}: {module} imports {other}, which is not below it", krate.package))
                        }
                        None => {
                            wrong.push(format!("{}: {module} imports {other}, which is not in the flow", krate.package))
                        }
                    }
                }
            }
        }
        let placed: usize = flow.iter().map(|g| g.len()).sum();
        assert_eq!(seen, placed, "{}: found only {seen} of its {placed} modules in {}", krate.package, src.display());
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn providers_import_no_crate_of_mayflys_core() {
    let mut wrong = Vec::new();
    let mut seen = 0;
    for entry in std::fs::read_dir(root().join("providers")).unwrap().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("Cargo.toml")) else { continue };
        seen += 1;
        let manifest: toml::Table = text.parse().unwrap();
        let deps = manifest.get("dependencies").and_then(|d| d.as_table()).cloned().unwrap_or_default();
        for dep in deps.keys().filter(|d| CRATES.iter().any(|c| c.package == d.as_str())) {
            wrong.push(format!("providers/{}: {dep}", entry.file_name().to_string_lossy()));
        }
    }
    assert!(seen >= 6, "found {seen} providers");
    assert!(wrong.is_empty(), "providers depend on the provider API (and vm-kit) only: {wrong:?}");
}

/// The crates whose errors are typed all through (`thiserror`): no function
/// of theirs answers `Result<_, String>`, so a caller can tell failures apart.
/// (`mayfly-ops`' conformance side implements the provider API's `Backend`,
/// whose methods answer strings.)
const TYPED: &[&str] = &["mayfly-model", "mayfly-sandbox", "mayfly-data", "mayfly-core"];

/// The lines of `text`'s code that name a `Result` whose error is a `String`.
fn string_errors(text: &str) -> Vec<String> {
    code(text)
        .lines()
        .filter(|l| l.contains("Result<") && l.replace(' ', "").contains(",String>"))
        .map(|l| l.trim().to_owned())
        .collect()
}

#[test]
fn the_lower_crates_return_typed_errors() {
    let mut wrong = Vec::new();
    for krate in CRATES.iter().filter(|c| TYPED.contains(&c.package)) {
        for (module, files) in modules(&root().join(krate.dir).join("src")) {
            for file in files {
                for line in string_errors(&std::fs::read_to_string(&file).unwrap()) {
                    wrong.push(format!("{}::{module}: {line}", krate.package));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "errors as strings:\n{}", wrong.join("\n"));
}

/// The files that may build an async runtime: the binary's entry point (the
/// process's one runtime, handed down), and the provider bridge (whose
/// blocking calls are made from inside that runtime's tasks).
const RUNTIME_BUILDERS: &[&str] = &["core/cli/src/main.rs", "core/data/src/provider.rs"];

/// `text` without its test module (`#[cfg(test)]` to the end).
fn outside_tests(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or(text)
}

#[test]
fn async_runtimes_are_built_by_the_entry_point_and_the_provider_bridge_only() {
    let mut wrong = Vec::new();
    for krate in CRATES {
        for files in modules(&root().join(krate.dir).join("src")).values() {
            for file in files {
                let text = std::fs::read_to_string(file).unwrap();
                let relative = file.strip_prefix(root()).unwrap().to_string_lossy().into_owned();
                if code(outside_tests(&text)).contains("runtime::Builder")
                    && !RUNTIME_BUILDERS.contains(&relative.as_str())
                {
                    wrong.push(relative);
                }
            }
        }
    }
    assert!(wrong.is_empty(), "these build a runtime of their own; take the entry point's Handle: {wrong:?}");
}

#[test]
fn the_check_sees_references_and_skips_comments() {
    assert_eq!(
        string_errors("fn a() -> Result<(), String> {}\n// Result<u8, String>\nfn b() -> io::Result<u8> {}"),
        ["fn a() -> Result<(), String> {}"]
    );
    assert_eq!(
        references("use crate::job::Layout; // crate::master\n/// [`crate::worker`]\nx(crate::api::y)"),
        ["job", "api"]
    );
    assert_eq!(
        crates_named("use mayfly_data::store; // mayfly_ops\nmayfly_provider_api::Host"),
        ["mayfly-data", "mayfly-provider-api"]
    );
}
