//! `mayfly init`: a new task that builds and passes its own tests at once, with
//! a job file that runs it on the local cluster: a Rust crate ([`scaffold`]) or
//! a Python task directory ([`scaffold_python`]).
//!
//! [`scaffold`] writes the crate into a temporary directory beside its final
//! place (`parent/.<name>.init-tmp-<pid>`) and moves it into place at the end,
//! so an error leaves nothing half-written behind.
//!
//! In `mayfly-ops`'s flow (`core/tests/flow.rs` checks it) it must not import `history`
//! or `conformance`, or anything above, nor its peers `reap`, `check`, `replay` and
//! `watch`; like its crate, it must not import the binary.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// What `init` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scaffold {
    /// The task crate's directory, `parent/name`.
    pub dir: PathBuf,
    /// Every file written, under `dir`, in the order written.
    pub files: Vec<PathBuf>,
}

/// Why `init` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name cannot name a cargo package (or a job).
    #[error(
        "{name:?} cannot name a task crate: {reason}; choose a name such as `count-lines` \
         (ASCII letters, digits, `-` and `_`, starting with a letter)"
    )]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The crate's directory already exists and holds something.
    #[error(
        "{} already exists and is not empty; choose another name, or remove it first \
         (nothing was written)",
        .dir.display()
    )]
    Exists {
        /// The directory.
        dir: PathBuf,
    },
    /// Something that is not a directory is where the crate would go.
    #[error(
        "{} already exists and is not a directory; choose another name, or remove it first \
         (nothing was written)",
        .path.display()
    )]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The sdk path is not the `sdk/` directory of a mayfly checkout.
    #[error(
        "{} is not the sdk/ directory of a mayfly checkout (it holds no Cargo.toml of the package \
         `mayfly-sdk`); pass the sdk/ directory of your mayfly checkout",
        .sdk.display()
    )]
    NotAnSdk {
        /// The path given.
        sdk: PathBuf,
    },
    /// The sdk's path cannot be written into Cargo.toml.
    #[error(
        "the sdk path {} is not valid UTF-8, which Cargo.toml cannot hold; \
         use a mayfly checkout at a UTF-8 path",
        .sdk.display()
    )]
    NonUtf8Sdk {
        /// The sdk's path.
        sdk: PathBuf,
    },
    /// A file system operation failed; what was written so far was removed.
    #[error(
        "cannot {action} {}: {source}; check that the directory is writable and has room, \
         then run `mayfly init` again (nothing was left behind)",
        .path.display()
    )]
    Io {
        /// What was being done ("write", "create the directory", ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// The longest name accepted (crates.io's limit).
pub const MAX_NAME: usize = 64;

/// Rust's keywords, strict and reserved (2024 edition): none can name a crate.
const KEYWORDS: &[&str] = &[
    "Self", "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate", "do", "dyn",
    "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "macro",
    "match", "mod", "move", "mut", "override", "priv", "pub", "ref", "return", "self", "static", "struct", "super",
    "trait", "true", "try", "type", "typeof", "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
];

/// Names taken, lowercase with `_` for `-`, and by what.
const RESERVED: &[(&str, &str)] = &[
    ("alloc", "a library built into Rust"),
    ("core", "a library built into Rust"),
    ("proc_macro", "a library built into Rust"),
    ("std", "a library built into Rust"),
    ("test", "a library built into Rust"),
    ("mayfly", "a crate of mayfly itself"),
    ("mayfly_core", "a crate of mayfly itself"),
    ("mayfly_data", "a crate of mayfly itself"),
    ("mayfly_model", "a crate of mayfly itself"),
    ("mayfly_ops", "a crate of mayfly itself"),
    ("mayfly_sandbox", "a crate of mayfly itself"),
    ("mayfly_sdk", "a crate of mayfly itself"),
    ("mayfly_sdk_macros", "a crate of mayfly itself"),
    ("serde", "a crate every task depends on"),
    ("serde_derive", "a crate every task depends on"),
    ("serde_json", "a crate every task depends on"),
    ("wit_bindgen", "a crate every task depends on"),
    ("build", "one of cargo's build directories"),
    ("deps", "one of cargo's build directories"),
    ("examples", "one of cargo's build directories"),
    ("incremental", "one of cargo's build directories"),
];

/// Checks that `name` can name a task crate (and its job): ASCII letters,
/// digits, `-` and `_`, starting with a letter, at most [`MAX_NAME`]
/// characters, not a Rust keyword nor a name Rust, cargo or mayfly already use.
/// The error says what is wrong.
pub fn validate_name(name: &str) -> Result<(), ScaffoldError> {
    let invalid = |reason: String| ScaffoldError::InvalidName { name: name.to_owned(), reason };
    let Some(first) = name.chars().next() else {
        return Err(invalid("it is empty".into()));
    };
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Err(invalid(format!("{c:?} is not allowed (only ASCII letters, digits, `-` and `_` are)")));
    }
    if !first.is_ascii_alphabetic() {
        return Err(invalid(format!("it starts with {first:?}, not a letter")));
    }
    if name.len() > MAX_NAME {
        return Err(invalid(format!("it is longer than {MAX_NAME} characters")));
    }
    if KEYWORDS.contains(&name) {
        return Err(invalid("it is a Rust keyword".into()));
    }
    let normalized = name.to_ascii_lowercase().replace('-', "_");
    if let Some((_, what)) = RESERVED.iter().find(|(taken, _)| *taken == normalized) {
        return Err(invalid(format!("it is the name of {what}")));
    }
    Ok(())
}

/// The sdk directory of the mayfly checkout this binary was built from, if it
/// is still there.
pub fn default_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk").canonicalize().ok()?;
    is_sdk(&sdk).then_some(sdk)
}

/// Whether `dir` holds the Cargo.toml of the package `mayfly-sdk`.
fn is_sdk(dir: &Path) -> bool {
    let Ok(text) = fs::read_to_string(dir.join("Cargo.toml")) else {
        return false;
    };
    toml::from_str::<toml::Table>(&text).is_ok_and(|manifest| {
        manifest.get("package").and_then(|p| p.get("name")).and_then(toml::Value::as_str) == Some("mayfly-sdk")
    })
}

/// Writes a task crate called `name` into `parent/name`, depending on the sdk
/// at `sdk` (the `sdk/` directory of a mayfly checkout; [`default_sdk`] is this
/// binary's), with a job file that runs it on the local cluster.
///
/// `parent` is created if missing. `parent/name` may be an empty directory (the
/// files go into it); anything else there is refused and left untouched.
pub fn scaffold(parent: &Path, name: &str, sdk: &Path) -> Result<Scaffold, ScaffoldError> {
    validate_name(name)?;
    if !is_sdk(sdk) {
        return Err(ScaffoldError::NotAnSdk { sdk: sdk.to_owned() });
    }
    let sdk = sdk.canonicalize().map_err(io_err("resolve the sdk path", sdk))?;
    let sdk_text = sdk.to_str().ok_or_else(|| ScaffoldError::NonUtf8Sdk { sdk: sdk.clone() })?;
    place(parent, name, &files(name, sdk_text))
}

/// Writes a Python task called `name` into `parent/name`: `app.py`, its unit
/// tests (plain Python, no WebAssembly: they import `mayfly_sdk` from `sdk`'s
/// `python/` directory when it is not installed), a `pyproject.toml`, and a
/// job file that runs it on the local cluster. `sdk` and the directory are as
/// for [`scaffold`].
pub fn scaffold_python(parent: &Path, name: &str, sdk: &Path) -> Result<Scaffold, ScaffoldError> {
    validate_name(name)?;
    if !is_sdk(sdk) || !sdk.join("python/mayfly_sdk/__init__.py").is_file() {
        return Err(ScaffoldError::NotAnSdk { sdk: sdk.to_owned() });
    }
    let sdk = sdk.canonicalize().map_err(io_err("resolve the sdk path", sdk))?;
    let sdk_text = sdk.to_str().ok_or_else(|| ScaffoldError::NonUtf8Sdk { sdk: sdk.clone() })?;
    place(parent, name, &python_files(name, sdk_text))
}

/// A Python task's files: (path relative to its directory, contents).
fn python_files(name: &str, sdk: &str) -> Vec<(&'static str, String)> {
    let fill = |template: &str| {
        template
            .replace("@NAME@", name)
            .replace("@SDK@", sdk)
            .replace("@SDK_PY@", &toml_string(&format!("{sdk}/python")))
    };
    let job = JOB_TOML
        .replace(
            "path = \".\"               # this crate (mayfly builds it for wasm32-wasip2), or a .wasm component",
            "path = \".\"               # this directory (mayfly builds app.py with componentize-py), or a .wasm",
        )
        .replace("the task's Params (src/lib.rs)", "the task's Params (app.py)");
    vec![
        ("pyproject.toml", fill(PYPROJECT_TOML)),
        ("app.py", fill(APP_PY)),
        ("test_app.py", fill(TEST_APP_PY)),
        ("job.toml", fill(&job)),
        ("data/sample.txt", SAMPLE.to_owned()),
        (".gitignore", PY_GITIGNORE.to_owned()),
        ("README.md", fill(PY_README)),
    ]
}

/// The crate's files: (path relative to the crate, contents).
fn files(name: &str, sdk: &str) -> Vec<(&'static str, String)> {
    let fill = |template: &str| template.replace("@NAME@", name).replace("@SDK@", sdk);
    vec![
        ("Cargo.toml", CARGO_TOML.replace("@NAME@", name).replace("@SDK@", &toml_string(sdk))),
        ("rust-toolchain.toml", RUST_TOOLCHAIN.to_owned()),
        ("src/lib.rs", fill(LIB_RS)),
        ("job.toml", fill(JOB_TOML)),
        ("data/sample.txt", SAMPLE.to_owned()),
        (".gitignore", GITIGNORE.to_owned()),
        ("README.md", fill(README)),
    ]
}

/// What is at the crate's directory.
enum Target {
    /// Nothing.
    Absent,
    /// An empty directory.
    EmptyDir,
}

fn check_target(dir: &Path) -> Result<Target, ScaffoldError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Target::Absent),
        Err(e) => Err(io_err("look at", dir)(e)),
        Ok(meta) if !meta.is_dir() => Err(ScaffoldError::NotADirectory { path: dir.to_owned() }),
        Ok(_) => {
            let mut entries = fs::read_dir(dir).map_err(io_err("read the directory", dir))?;
            match entries.next() {
                None => Ok(Target::EmptyDir),
                Some(_) => Err(ScaffoldError::Exists { dir: dir.to_owned() }),
            }
        }
    }
}

/// Writes `files` into a temporary directory in `parent`, then moves them to
/// `parent/name`; on any error, removes what it wrote.
fn place(parent: &Path, name: &str, files: &[(&str, String)]) -> Result<Scaffold, ScaffoldError> {
    let dir = parent.join(name);
    check_target(&dir)?;
    fs::create_dir_all(parent).map_err(io_err("create the directory", parent))?;
    let mut tmp = TempDir::create(parent.join(format!(".{name}.init-tmp-{}", std::process::id())))?;
    for (rel, text) in files {
        let path = tmp.path.join(rel);
        if let Some(up) = path.parent() {
            fs::create_dir_all(up).map_err(io_err("create the directory", up))?;
        }
        fs::write(&path, text).map_err(io_err("write", &path))?;
    }
    // Looked at again: something may have appeared there meanwhile.
    match check_target(&dir)? {
        Target::Absent => {
            fs::rename(&tmp.path, &dir).map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists | io::ErrorKind::DirectoryNotEmpty => {
                    ScaffoldError::Exists { dir: dir.clone() }
                }
                _ => io_err("move into place", &dir)(e),
            })?;
            tmp.armed = false;
        }
        // Filled in place rather than replaced, so that the directory stays the
        // same one (a shell may be in it).
        Target::EmptyDir => move_entries(&tmp.path, &dir)?,
    }
    let files = files.iter().map(|(rel, _)| dir.join(rel)).collect();
    Ok(Scaffold { dir, files })
}

/// Moves every entry of `from` into the empty directory `to`; on an error,
/// removes the entries it moved.
fn move_entries(from: &Path, to: &Path) -> Result<(), ScaffoldError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(from).map_err(io_err("read the directory", from))? {
        names.push(entry.map_err(io_err("read the directory", from))?.file_name());
    }
    names.sort();
    let mut moved: Vec<PathBuf> = Vec::new();
    for name in &names {
        let target = to.join(name);
        let step = if fs::symlink_metadata(&target).is_ok() {
            Err(ScaffoldError::Exists { dir: to.to_owned() })
        } else {
            fs::rename(from.join(name), &target).map_err(io_err("move into place", &target))
        };
        if let Err(e) = step {
            for path in &moved {
                let _ = if path.is_dir() { fs::remove_dir_all(path) } else { fs::remove_file(path) };
            }
            return Err(e);
        }
        moved.push(target);
    }
    Ok(())
}

/// A directory removed, with what it holds, when dropped while armed.
#[derive(Debug)]
struct TempDir {
    path: PathBuf,
    armed: bool,
}

impl TempDir {
    fn create(path: PathBuf) -> Result<TempDir, ScaffoldError> {
        if let Err(e) = fs::create_dir(&path) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(io_err("create the directory", &path)(e));
            }
            // Left by an `init` of the same name that was killed, in a process
            // that had this one's id.
            fs::remove_dir_all(&path).map_err(io_err("remove the leftover directory", &path))?;
            fs::create_dir(&path).map_err(io_err("create the directory", &path))?;
        }
        Ok(TempDir { path, armed: true })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ScaffoldError {
    let path = path.to_owned();
    move |source| ScaffoldError::Io { action, path, source }
}

/// `s` as a TOML basic string, quotes included; also a valid Python string
/// literal of the same text (the same escapes).
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The same toolchain as mayfly's own, with the wasm target.
const RUST_TOOLCHAIN: &str = include_str!("../../../rust-toolchain.toml");

const CARGO_TOML: &str = r##"[package]
name = "@NAME@"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# cdylib: the task component (built for wasm32-wasip2 by `mayfly build`);
# rlib: the same logic linked natively, for tests.
crate-type = ["cdylib", "rlib"]

[dependencies]
# The sdk of the mayfly checkout this crate was made from (`mayfly init`).
mayfly-sdk = { path = @SDK@ }
serde = { version = "1", features = ["derive"] }

# This crate is a workspace of its own, even when it sits inside another one
# (mayfly's checkout, say): cargo builds it here, with its own Cargo.lock and
# target/. To make it a member of an enclosing workspace instead, delete this
# table and list the crate in that workspace's `members`.
[workspace]
"##;

const LIB_RS: &str = r##"//! `@NAME@`: counts the lines, words and bytes of each input.
//!
//! The output `counts.tsv` has one line per item, `name<TAB>lines<TAB>words<TAB>bytes`,
//! where `name` is the input's name. A line ends with a newline, and the last
//! bytes of an input count as a line even without one; a word is a run of bytes
//! that are not ASCII white space. The input need not be UTF-8, and is read a
//! buffer at a time, so an input of any size takes the same memory.
//!
//! Parameters (`[task] params` in job.toml, `--param` for `mayfly exec`):
//! `skip_blank_lines` (default false) leaves out the lines that are empty or
//! only white space (their bytes still count).
//!
//! A job may split a large text file into newline-aligned ranges (`split_text`
//! under `[sharding]`, on by default): each range is an item of its own, with
//! its own `counts.tsv` line, so add up the lines of one name.

use std::io::{self, BufRead, Write};

use mayfly_sdk::{Input, Outputs, Result, info, task};
use serde::Deserialize;

/// The task's parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Leave out the lines that are empty or only white space.
    #[serde(default)]
    pub skip_blank_lines: bool,
}

/// The name of the output file.
pub const OUTPUT: &str = "counts.tsv";

/// What [`count`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Lines.
    pub lines: u64,
    /// Words.
    pub words: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Counts the lines, words and bytes read from `reader`.
pub fn count(mut reader: impl BufRead, params: &Params) -> io::Result<Counts> {
    let mut counts = Counts::default();
    let mut in_word = false;
    // The line being read: whether it has a byte yet, and whether it has a word.
    let mut line_started = false;
    let mut line_has_word = false;
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            break;
        }
        for &byte in buf {
            if byte.is_ascii_whitespace() {
                in_word = false;
            } else if !in_word {
                in_word = true;
                counts.words += 1;
                line_has_word = true;
            }
            if byte == b'\n' {
                if line_has_word || !params.skip_blank_lines {
                    counts.lines += 1;
                }
                line_started = false;
                line_has_word = false;
            } else {
                line_started = true;
            }
        }
        let len = buf.len();
        counts.bytes += len as u64;
        reader.consume(len);
    }
    if line_started && (line_has_word || !params.skip_blank_lines) {
        counts.lines += 1;
    }
    Ok(counts)
}

/// Writes `c` as one `name<TAB>lines<TAB>words<TAB>bytes` line.
pub fn write_counts(name: &str, c: &Counts, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "{name}\t{}\t{}\t{}", c.lines, c.words, c.bytes)
}

/// The task: mayfly calls it once per input item, in a sandbox that serves
/// the items of one shard (the parameters are parsed once per shard). Each
/// item's `counts.tsv` is its own; to combine across a shard, implement
/// `mayfly_sdk::Task` instead (see the sdk's README).
#[task]
fn run(input: &mut Input, params: &Params, outputs: &mut Outputs) -> Result<()> {
    let name = input.name().to_owned();
    let counts = count(input, params)?;
    let mut out = outputs.create(OUTPUT)?;
    write_counts(&name, &counts, &mut out)?;
    out.finish()?;
    info!(lines = counts.lines, words = counts.words, bytes = counts.bytes; "counted {name}");
    Ok(())
}

// The tests run natively (`cargo test`): they call `count` and `write_counts`,
// which need no sandbox.
#[cfg(test)]
mod tests {
    use super::*;

    /// (lines, words, bytes) read from `reader`.
    fn counts(reader: impl BufRead, skip_blank_lines: bool) -> (u64, u64, u64) {
        let c = count(reader, &Params { skip_blank_lines }).expect("reading from memory");
        (c.lines, c.words, c.bytes)
    }

    #[test]
    fn counts_lines_words_and_bytes() {
        assert_eq!(counts(&b"one two\nthree\n"[..], false), (2, 3, 14));
        // A last line without a newline counts; bytes that are not UTF-8 are fine.
        assert_eq!(counts(&b"a\n\xff b"[..], false), (2, 3, 5));
        assert_eq!(counts(&b""[..], false), (0, 0, 0));
    }

    #[test]
    fn skip_blank_lines_leaves_out_empty_and_white_space_lines() {
        let text = b"a\n\n  \t\r\nb c\n";
        assert_eq!(counts(&text[..], false), (4, 3, 12));
        assert_eq!(counts(&text[..], true), (2, 3, 12));
    }

    #[test]
    fn words_and_lines_cut_by_the_read_buffer_are_whole() {
        let text = b"alpha beta\ngamma\n\ndelta";
        assert_eq!(counts(&text[..], true), (3, 4, 23));
        for capacity in [1, 2, 3, 7] {
            let reader = io::BufReader::with_capacity(capacity, &text[..]);
            assert_eq!(counts(reader, true), (3, 4, 23), "capacity {capacity}");
        }
    }

    #[test]
    fn the_output_line_is_tab_separated() {
        let counts = count(&b"a b\nc"[..], &Params::default()).expect("reading from memory");
        let mut out = Vec::new();
        write_counts("f.txt", &counts, &mut out).expect("write");
        assert_eq!(out, b"f.txt\t2\t3\t5\n");
    }
}
"##;

const JOB_TOML: &str = r##"# A job that runs the task `@NAME@` over every file under data/:
# `mayfly run job.toml`. Paths are relative to this file. Every key is described
# in mayfly's README ("The job file").

[job]
name = "@NAME@"          # letters, digits, - and _; names the job's files and processes

[task]
path = "."               # this crate (mayfly builds it for wasm32-wasip2), or a .wasm component
params = {}              # the task's Params (src/lib.rs), e.g. { skip_blank_lines = true }

[input]
url = "data"             # every file under this directory, read recursively

[output]
url = "out/{job}"        # {job} becomes the job's id, so that each run has outputs of its own

[state]
url = "state"            # the job's manifest, journal and every node's log (`mayfly logs`)

# Where the job's nodes run: here, processes on this machine. Moving the job to a
# cloud changes only this section (and the locations above become s3:// or az://
# URLs); the task and the rest stay as they are.
[provider]
name = "local"

# On AWS, after `mayfly package aws` and `mayfly deploy aws` (mayfly's README, "AWS"),
# this section would read:
# [provider]
# name = "aws"
# region = "eu-west-1"
# image_id = "ami-..."              # Amazon Linux 2023
# node_artifact = "s3://my-bucket/mayfly/node-<sha256>.tar.gz"   # what `mayfly deploy aws` printed
# instance_type = "c7g.large"
# subnet_id = "subnet-..."
# instance_profile = "mayfly-node"
#
# On Azure, after `mayfly package azure` and `mayfly deploy azure` (mayfly's README, "Azure"):
# [provider]
# name = "azure"
# subscription_id = "<sub>"
# resource_group = "mayfly"
# location = "westeurope"
# subnet_id = "/subscriptions/<sub>/resourceGroups/mayfly/providers/Microsoft.Network/virtualNetworks/mayfly/subnets/nodes"
# identity = "/subscriptions/<sub>/resourceGroups/mayfly/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mayfly"
# identity_client_id = "<its client id>"
# storage_account = "<account>"
# node_artifact = "az://dist/mayfly/node-<sha256>.tar.gz"     # what `mayfly deploy azure` printed

[cluster]
workers = 2              # worker nodes, besides the master
deadline = "10m"         # from the start: every node ends by then, done or not
"##;

const SAMPLE: &str = "A mayfly lives for a day, and does its work while it lives.
mayfly runs each input file through the task in a sandbox of its own,
on as many workers as the job asks for, and exactly once.

The blank line above counts as a line, unless skip_blank_lines is set.
";

const GITIGNORE: &str = "target/\nout/\nstate/\n";

const PYPROJECT_TOML: &str = r##"[project]
name = "@NAME@"
version = "0.1.0"
requires-python = ">=3.10"
# Pure-Python packages the task imports: `mayfly build` vendors them into the
# component (a package with native code cannot run in the sandbox).
dependencies = []

# Makes this directory a mayfly task: `mayfly build .` builds `module`.py (with
# the sdk, `mayfly_sdk`, and CPython) into a WebAssembly component.
[tool.mayfly]
module = "app"
"##;

const APP_PY: &str = r##""""`@NAME@`: counts the lines, words and bytes of each input.

The output `counts.tsv` has one line per item, `name<TAB>lines<TAB>words<TAB>bytes`,
where `name` is the input's name. A line ends with a newline, and the last bytes
of an input count as a line even without one; a word is a run of bytes that are
not ASCII white space. The input need not be UTF-8, and is read a line at a
time, so an input of any size takes little memory.

Parameters (`[task] params` in job.toml, `--param` for `mayfly exec`):
`skip_blank_lines` (default false) leaves out the lines that are empty or only
white space (their bytes still count).

Import everything at the top of the module: the task is built (and its imports
resolved) once, by `mayfly build`; at run time there is no file system.
"""

from dataclasses import dataclass
from typing import BinaryIO

from mayfly_sdk import Input, Outputs, log, task

OUTPUT = "counts.tsv"


@dataclass
class Params:
    """The task's parameters (unknown keys are refused)."""

    skip_blank_lines: bool = False
    """Leave out the lines that are empty or only white space."""


@dataclass
class Counts:
    """What `count` found."""

    lines: int = 0
    words: int = 0
    bytes: int = 0


def count(reader: BinaryIO, params: Params) -> Counts:
    """Counts the lines, words and bytes read from `reader` (binary)."""
    counts = Counts()
    for line in reader:  # split at b"\n"; the last line may lack it
        counts.bytes += len(line)
        words = len(line.split())
        counts.words += words
        if words or not params.skip_blank_lines:
            counts.lines += 1
    return counts


@task
def run(input: Input, params: Params, outputs: Outputs) -> None:
    """What mayfly calls for each input item, in a sandbox that serves the items
    of one shard (the parameters are parsed once per shard). Each item's
    `counts.tsv` is its own; to combine across a shard, subclass
    `mayfly_sdk.Task` instead (see the sdk's guide)."""
    counts = count(input, params)
    with outputs.create(OUTPUT) as out:
        out.write(f"{input.name}\t{counts.lines}\t{counts.words}\t{counts.bytes}\n".encode())
    log.info(f"counted {input.name}", lines=counts.lines, words=counts.words, bytes=counts.bytes)
"##;

const TEST_APP_PY: &str = r##""""The task's tests: plain Python, no WebAssembly (`python -m unittest` or
`python -m pytest`). `count` needs no sandbox; `mayfly_sdk.testing.run` calls
the task as mayfly would, with a fake host."""

import io
import sys
import unittest

try:
    import mayfly_sdk  # noqa: F401  (installed: pip install <mayfly>/sdk/python)
except ImportError:  # the sdk of the mayfly checkout this task was made from
    sys.path.insert(0, @SDK_PY@)

from mayfly_sdk.testing import Item, run

import app


def counts(data: bytes, skip_blank_lines: bool = False) -> tuple[int, int, int]:
    c = app.count(io.BytesIO(data), app.Params(skip_blank_lines=skip_blank_lines))
    return (c.lines, c.words, c.bytes)


class CountTest(unittest.TestCase):
    def test_counts_lines_words_and_bytes(self) -> None:
        self.assertEqual(counts(b"one two\nthree\n"), (2, 3, 14))
        # A last line without a newline counts; bytes that are not UTF-8 are fine.
        self.assertEqual(counts(b"a\n\xff b"), (2, 3, 5))
        self.assertEqual(counts(b""), (0, 0, 0))

    def test_skip_blank_lines_leaves_out_empty_and_white_space_lines(self) -> None:
        text = b"a\n\n  \t\r\nb c\n"
        self.assertEqual(counts(text), (4, 3, 12))
        self.assertEqual(counts(text, skip_blank_lines=True), (2, 3, 12))


class TaskTest(unittest.TestCase):
    def test_each_item_gets_its_line(self) -> None:
        result = run(app.run, [Item("a.txt", b"a b\nc"), Item("b.txt", b"\n")])
        result.check()
        self.assertEqual(result.item_outputs["a.txt"]["counts.tsv"], b"a.txt\t2\t3\t5\n")
        self.assertEqual(result.item_outputs["b.txt"]["counts.tsv"], b"b.txt\t1\t0\t1\n")

    def test_unknown_parameters_are_refused(self) -> None:
        result = run(app.run, [Item("a.txt", b"a")], params={"skip_blank_line": True})
        self.assertIsNotNone(result.failure)
        self.assertIn("invalid task parameters", result.failure.message)


if __name__ == "__main__":
    unittest.main()
"##;

const PY_GITIGNORE: &str = "target/\nout/\nstate/\n__pycache__/\n";

const PY_README: &str = r##"# @NAME@

A mayfly task in Python: it counts the lines, words and bytes of each input file
and writes one line per input to `counts.tsv`: `name<TAB>lines<TAB>words<TAB>bytes`.

- `app.py`: the task. `count` does the work; `run`, decorated with `@task`, is
  what mayfly calls for each input, in a sandbox (CPython built for WebAssembly).
- `test_app.py`: its tests, in plain Python.
- `pyproject.toml`: the task's name and dependencies; `[tool.mayfly]` makes the
  directory a task for `mayfly build`.
- `job.toml`: a job that runs the task over `data/` on 2 local workers.
- `data/sample.txt`: an input to try it on.

```sh
python3 -m unittest                         # the task's tests, in plain Python (no WebAssembly)
mayfly exec . --input data/sample.txt       # builds the task, runs it once in the sandbox
mayfly exec . --input data/sample.txt --param skip_blank_lines=true
mayfly run job.toml                         # the job, on the local cluster: outputs in out/<job id>/
```

The first build installs componentize-py (what turns Python into a component)
into mayfly's cache directory; later builds take seconds, and none when nothing
changed. How to write tasks: the sdk's guide, `@SDK@/python/README.md`.
"##;

const README: &str = r##"# @NAME@

A mayfly task: it counts the lines, words and bytes of each input file and writes
one line per input to `counts.tsv`: `name<TAB>lines<TAB>words<TAB>bytes`.

- `src/lib.rs`: the task. `count` does the work and has the tests; `run`, marked
  `#[task]`, is what mayfly calls for each input, in a sandbox.
- `Cargo.toml`: the crate, a workspace of its own, depending on mayfly's sdk.
- `rust-toolchain.toml`: mayfly's Rust version, with the `wasm32-wasip2` target.
- `job.toml`: a job that runs the task over `data/` on 2 local workers.
- `data/sample.txt`: an input to try it on.

```sh
cargo test                                  # the task's tests, natively (no WebAssembly)
mayfly exec . --input data/sample.txt       # builds the task, runs it once in the sandbox
mayfly exec . --input data/sample.txt --param skip_blank_lines=true
mayfly run job.toml                         # the job, on the local cluster: outputs in out/<job id>/
```

How to write tasks: the sdk's guide, `@SDK@/README.md`.
"##;

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use mayfly_core::config::JobSpec;

    /// A fresh, empty directory for one test, removed at its end.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(test: &str) -> Scratch {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("mayfly-scaffold-{}-{test}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("a scratch directory");
            Scratch(dir)
        }

        /// The names in the directory, sorted.
        fn entries(&self) -> Vec<String> {
            names(&self.0)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("readable")
            .map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn sdk() -> PathBuf {
        default_sdk().expect("the sdk of this checkout")
    }

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).expect("valid TOML")
    }

    const FILES: [&str; 7] =
        ["Cargo.toml", "rust-toolchain.toml", "src/lib.rs", "job.toml", "data/sample.txt", ".gitignore", "README.md"];

    #[test]
    fn the_default_sdk_is_this_checkouts() {
        let sdk = sdk();
        assert!(sdk.is_absolute() && sdk.ends_with("sdk"), "{}", sdk.display());
        assert!(is_sdk(&sdk));
        // The checkout's root has a Cargo.toml too, but not the sdk's.
        assert!(!is_sdk(sdk.parent().expect("the checkout")));
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        let scratch = Scratch::new("names");
        let long = "a".repeat(MAX_NAME + 1);
        let cases: &[(&str, &str)] = &[
            ("", "it is empty"),
            ("my task", "' ' is not allowed"),
            ("../escape", "'.' is not allowed"),
            ("café", "'é' is not allowed"),
            ("1st", "it starts with '1', not a letter"),
            ("-x", "it starts with '-', not a letter"),
            ("_x", "it starts with '_', not a letter"),
            (long.as_str(), "longer than 64 characters"),
            ("fn", "it is a Rust keyword"),
            ("Self", "it is a Rust keyword"),
            ("gen", "it is a Rust keyword"),
            ("test", "a library built into Rust"),
            ("std", "a library built into Rust"),
            ("core", "a library built into Rust"),
            ("mayfly", "a crate of mayfly itself"),
            ("Mayfly-SDK", "a crate of mayfly itself"),
            ("serde", "a crate every task depends on"),
            ("build", "one of cargo's build directories"),
        ];
        for (name, reason) in cases {
            let err = scaffold(&scratch.0, name, &sdk()).expect_err(name);
            assert!(matches!(err, ScaffoldError::InvalidName { .. }), "{name:?}: {err:?}");
            let msg = err.to_string();
            assert!(msg.contains(reason) && msg.contains("choose a name such as"), "{name:?}: {msg}");
        }
        assert!(scratch.entries().is_empty(), "{:?}", scratch.entries());
        for good in ["count-lines", "a", "x_1", "Tally", "tests", "mayfly-tasks", "selfie", "r2d2"] {
            validate_name(good).expect(good);
        }
        assert!(validate_name(&"a".repeat(MAX_NAME)).is_ok());
    }

    #[test]
    fn an_existing_directory_that_is_not_empty_is_refused_and_left_untouched() {
        let scratch = Scratch::new("busy");
        let busy = scratch.0.join("busy");
        fs::create_dir(&busy).expect("mkdir");
        fs::write(busy.join("notes.txt"), "mine").expect("write");
        let err = scaffold(&scratch.0, "busy", &sdk()).expect_err("refused");
        assert!(matches!(&err, ScaffoldError::Exists { dir } if *dir == busy), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("already exists and is not empty") && msg.contains("remove it"), "{msg}");
        assert_eq!(names(&busy), ["notes.txt"]);
        assert_eq!(fs::read_to_string(busy.join("notes.txt")).expect("read"), "mine");

        fs::write(scratch.0.join("plain"), "a file").expect("write");
        let err = scaffold(&scratch.0, "plain", &sdk()).expect_err("refused");
        assert!(matches!(err, ScaffoldError::NotADirectory { .. }), "{err:?}");
        assert_eq!(fs::read_to_string(scratch.0.join("plain")).expect("read"), "a file");
        assert_eq!(scratch.entries(), ["busy", "plain"]);
    }

    #[test]
    fn a_scaffold_writes_a_crate_and_a_job_that_parse() {
        let scratch = Scratch::new("fresh");
        let sdk = sdk();
        // A parent that does not exist yet is made.
        let parent = scratch.0.join("tasks");
        let made = scaffold(&parent, "count-lines", &sdk).expect("scaffold");
        let dir = parent.join("count-lines");
        assert_eq!(made.dir, dir);
        assert_eq!(made.files, FILES.map(|f| dir.join(f)));
        for file in &made.files {
            let text = fs::read_to_string(file).expect("written");
            assert!(!text.is_empty(), "{}", file.display());
            assert!(!text.contains("@NAME@") && !text.contains("@SDK@"), "{}", file.display());
        }
        // No temporary directory is left.
        assert_eq!(names(&parent), ["count-lines"]);

        let cargo = table(&fs::read_to_string(dir.join("Cargo.toml")).expect("read"));
        assert_eq!(cargo["package"]["name"].as_str(), Some("count-lines"));
        assert_eq!(cargo["package"]["edition"].as_str(), Some("2024"));
        assert_eq!(cargo["package"]["publish"].as_bool(), Some(false));
        let kinds: Vec<&str> =
            cargo["lib"]["crate-type"].as_array().expect("a list").iter().filter_map(toml::Value::as_str).collect();
        assert_eq!(kinds, ["cdylib", "rlib"]);
        assert_eq!(cargo["dependencies"]["mayfly-sdk"]["path"].as_str(), sdk.to_str());
        assert_eq!(cargo["dependencies"]["serde"]["version"].as_str(), Some("1"));
        assert!(cargo["workspace"].as_table().is_some_and(toml::Table::is_empty), "{cargo:?}");

        let toolchain = fs::read_to_string(dir.join("rust-toolchain.toml")).expect("read");
        assert_eq!(toolchain, fs::read_to_string(sdk.join("../rust-toolchain.toml")).expect("mayfly's"));
        assert!(
            table(&toolchain)["toolchain"]["targets"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t.as_str() == Some("wasm32-wasip2")))
        );

        let job = fs::read_to_string(dir.join("job.toml")).expect("read");
        let raw = table(&job);
        assert_eq!(raw["task"]["path"].as_str(), Some("."));
        assert_eq!(raw["provider"]["name"].as_str(), Some("local"));
        let spec = JobSpec::parse(&dir.join("job.toml"), &job, &|_| None).expect("a valid job file");
        assert_eq!(spec.name, "count-lines");
        assert!(spec.task.path.join("Cargo.toml").is_file(), "{}", spec.task.path.display());
        assert_eq!(spec.task.params, serde_json::json!({}));
        assert_eq!(spec.input.as_path(), Some(dir.join("data").as_path()));
        assert_eq!(spec.state.as_path(), Some(dir.join("state").as_path()));
        assert_eq!(spec.provider.name.as_deref(), Some("local"));
        assert_eq!((spec.workers, spec.deadline), (2, std::time::Duration::from_secs(600)));

        let lib = fs::read_to_string(dir.join("src/lib.rs")).expect("read");
        for needle in ["#[task]", "#[serde(deny_unknown_fields)]", "#[cfg(test)]", "outputs.create(OUTPUT)?"] {
            assert!(lib.contains(needle), "{needle}");
        }
        let ignored = fs::read_to_string(dir.join(".gitignore")).expect("read");
        assert_eq!(ignored.lines().collect::<Vec<_>>(), ["target/", "out/", "state/"]);
        let readme = fs::read_to_string(dir.join("README.md")).expect("read");
        assert!(readme.contains("mayfly run job.toml") && readme.contains("mayfly exec . --input data/sample.txt"));
        assert!(readme.contains("cargo test"));
    }

    #[test]
    fn a_python_scaffold_writes_a_task_and_a_job_that_parse() {
        let scratch = Scratch::new("python");
        let made = scaffold_python(&scratch.0, "tally", &sdk()).expect("scaffold");
        let dir = scratch.0.join("tally");
        let names: Vec<String> =
            made.files.iter().map(|f| f.strip_prefix(&dir).expect("under").display().to_string()).collect();
        assert_eq!(
            names,
            ["pyproject.toml", "app.py", "test_app.py", "job.toml", "data/sample.txt", ".gitignore", "README.md"]
        );
        for file in &made.files {
            let text = fs::read_to_string(file).expect("written");
            for placeholder in ["@NAME@", "@SDK@", "@SDK_PY@"] {
                assert!(!text.contains(placeholder), "{placeholder} is left in {}", file.display());
            }
        }
        let pyproject = table(&fs::read_to_string(dir.join("pyproject.toml")).expect("read"));
        assert_eq!(pyproject["project"]["name"].as_str(), Some("tally"));
        assert_eq!(pyproject["tool"]["mayfly"]["module"].as_str(), Some("app"));
        let job = fs::read_to_string(dir.join("job.toml")).expect("read");
        assert!(job.contains("mayfly builds app.py with componentize-py") && job.contains("Params (app.py)"), "{job}");
        let spec = JobSpec::parse(&dir.join("job.toml"), &job, &|_| None).expect("a valid job file");
        assert_eq!((spec.name.as_str(), spec.task.path.as_path()), ("tally", dir.as_path()));
        let tests = fs::read_to_string(dir.join("test_app.py")).expect("read");
        let sdk_python = format!("sys.path.insert(0, \"{}/python\")", sdk().display());
        assert!(tests.contains(&sdk_python), "{tests}");
        let app = fs::read_to_string(dir.join("app.py")).expect("read");
        assert!(app.contains("@task\ndef run(input: Input, params: Params, outputs: Outputs)"), "{app}");
        // Not a directory of the sdk: refused as for Rust.
        let err = scaffold_python(&scratch.0, "x", &scratch.0).expect_err("refused");
        assert!(matches!(err, ScaffoldError::NotAnSdk { .. }), "{err:?}");
    }

    #[test]
    fn an_empty_directory_is_filled_in_place() {
        let scratch = Scratch::new("empty");
        let dir = scratch.0.join("tally");
        fs::create_dir(&dir).expect("mkdir");
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&dir).expect("stat"));
        let made = scaffold(&scratch.0, "tally", &sdk()).expect("scaffold");
        assert!(made.files.iter().all(|f| f.is_file()));
        #[cfg(unix)]
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&fs::metadata(&dir).expect("stat")), inode);
        assert_eq!(
            names(&dir),
            [".gitignore", "Cargo.toml", "README.md", "data", "job.toml", "rust-toolchain.toml", "src"]
        );
        assert_eq!(scratch.entries(), ["tally"]);
    }

    #[test]
    fn an_error_while_writing_leaves_nothing_behind() {
        let scratch = Scratch::new("half");
        // The second file cannot be written: its directory is a file.
        let files = [("a.txt", "x".to_owned()), ("a.txt/b.txt", "y".to_owned())];
        let err = place(&scratch.0, "half", &files).expect_err("fails");
        assert!(matches!(err, ScaffoldError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("nothing was left behind"), "{err}");
        assert!(scratch.entries().is_empty(), "{:?}", scratch.entries());
    }

    #[test]
    fn a_directory_that_is_not_the_sdk_is_refused() {
        let scratch = Scratch::new("nosdk");
        let err = scaffold(&scratch.0, "x", &scratch.0).expect_err("refused");
        assert!(matches!(err, ScaffoldError::NotAnSdk { .. }), "{err:?}");
        assert!(err.to_string().contains("pass the sdk/ directory"), "{err}");
        let root = sdk().parent().expect("the checkout").to_owned();
        assert!(matches!(scaffold(&scratch.0, "x", &root), Err(ScaffoldError::NotAnSdk { .. })));
        assert!(scratch.entries().is_empty());
    }

    #[test]
    fn paths_are_quoted_for_toml() {
        for path in ["/a/b", "C:\\tasks\\sdk", "we\"ird\tpa\nth\u{7f}", "/ünï/код"] {
            let parsed = table(&format!("path = {}", toml_string(path)));
            assert_eq!(parsed["path"].as_str(), Some(path));
        }
    }
}
