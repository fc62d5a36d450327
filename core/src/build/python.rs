//! Python tasks: a directory with `app.py` (or a `pyproject.toml` with a
//! `[tool.mayfly]` table naming the module) built into a component with
//! componentize-py, which bundles CPython with the task, the sdk and the
//! dependencies it declares.
//!
//! The sdk (`mayfly_sdk`, sdk/python) and the WIT world are embedded in this
//! binary, so a task builds against the interface this mayfly's sandbox
//! implements, whatever checkout the user has. componentize-py is pinned
//! ([`COMPONENTIZE_PY_VERSION`]): taken from `MAYFLY_COMPONENTIZE_PY`, from PATH
//! when it is that version, or installed once into a virtual environment under
//! mayfly's cache directory.
//!
//! A build is skipped when nothing it reads changed (a stamp beside the
//! component holds their hash): a job builds its task directory every time it
//! is run, and componentize-py takes seconds.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::BuildError;

/// The componentize-py release mayfly builds Python tasks with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The module a Python task directory holds when its pyproject.toml names none.
pub const DEFAULT_MODULE: &str = "app";

/// The WIT world the sandbox implements.
const WIT: &str = include_str!("../../../sdk/wit/task.wit");

/// The sdk package's files, as `mayfly_sdk/<name>`.
const SDK: &[(&str, &str)] = &[
    ("__init__.py", include_str!("../../../sdk/python/mayfly_sdk/__init__.py")),
    ("_component.py", include_str!("../../../sdk/python/mayfly_sdk/_component.py")),
    ("_errors.py", include_str!("../../../sdk/python/mayfly_sdk/_errors.py")),
    ("_host.py", include_str!("../../../sdk/python/mayfly_sdk/_host.py")),
    ("_io.py", include_str!("../../../sdk/python/mayfly_sdk/_io.py")),
    ("_params.py", include_str!("../../../sdk/python/mayfly_sdk/_params.py")),
    ("_partition.py", include_str!("../../../sdk/python/mayfly_sdk/_partition.py")),
    ("_runtime.py", include_str!("../../../sdk/python/mayfly_sdk/_runtime.py")),
    ("_wit_fallback.py", include_str!("../../../sdk/python/mayfly_sdk/_wit_fallback.py")),
    ("log.py", include_str!("../../../sdk/python/mayfly_sdk/log.py")),
    ("testing.py", include_str!("../../../sdk/python/mayfly_sdk/testing.py")),
    ("py.typed", include_str!("../../../sdk/python/mayfly_sdk/py.typed")),
];

/// Module names a task's module may not take: componentize-py's and the
/// generated entry's.
const RESERVED: &[&str] = &[
    "task",
    "wit_world",
    "componentize_py_types",
    "componentize_py_runtime",
    "poll_loop",
    "mayfly_entry",
    "mayfly_sdk",
];

/// A Python task directory, as its files describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// The task directory.
    pub dir: PathBuf,
    /// The task's name (the component's file stem): `[project] name`, else the
    /// directory's name.
    pub name: String,
    /// The module that registers the task (`[tool.mayfly] module`, else `app`).
    pub module: String,
    /// `[project] dependencies`, vendored into the component.
    pub dependencies: Vec<String>,
}

/// The Python task in `dir`, if it is one: a `pyproject.toml` with a
/// `[tool.mayfly]` table, or an `app.py`.
pub fn detect(dir: &Path) -> Result<Option<Project>, BuildError> {
    let pyproject = dir.join("pyproject.toml");
    let table = match fs::read_to_string(&pyproject) {
        Ok(text) => Some(
            toml::from_str::<toml::Table>(&text)
                .map_err(|e| BuildError::PyProject { path: pyproject.clone(), reason: e.to_string() })?,
        ),
        Err(_) => None,
    };
    let tool = table.as_ref().and_then(|t| t.get("tool")).and_then(|t| t.get("mayfly"));
    if tool.is_none() && !dir.join(format!("{DEFAULT_MODULE}.py")).is_file() {
        return Ok(None);
    }
    let bad = |reason: String| BuildError::PyProject { path: pyproject.clone(), reason };
    let module = match tool.map(|t| t.get("module")) {
        Some(Some(m)) => m.as_str().ok_or_else(|| bad("[tool.mayfly] module must be a string".into()))?.to_owned(),
        _ => DEFAULT_MODULE.to_owned(),
    };
    if let Some(problem) = module_name_problem(&module) {
        return Err(bad(format!("[tool.mayfly] module = {module:?}: {problem}")));
    }
    let project = table.as_ref().and_then(|t| t.get("project"));
    let dependencies = match project.and_then(|p| p.get("dependencies")) {
        None => Vec::new(),
        Some(deps) => deps
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| bad("[project] dependencies must be a list of strings".into()))?,
    };
    let name = match project.and_then(|p| p.get("name")) {
        Some(n) => n.as_str().ok_or_else(|| bad("[project] name must be a string".into()))?.to_owned(),
        None => dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| DEFAULT_MODULE.to_owned()),
    };
    // The component's file stem, which names the task in logs: what is not a
    // letter, digit, `-` or `_` (a `.` in a package name, say) becomes `-`.
    let name: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' }).collect();
    let name = match name.trim_matches('-') {
        "" => "task".to_owned(),
        trimmed => trimmed.to_owned(),
    };
    // Absolute: componentize-py runs in the task directory, given paths under it.
    let dir = dir.canonicalize().map_err(io_err("resolve", dir))?;
    Ok(Some(Project { dir, name, module, dependencies }))
}

/// What is wrong with `module` as the name of a task's module, if anything.
fn module_name_problem(module: &str) -> Option<String> {
    let mut chars = module.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Some(
            "a module name is a Python identifier (letters, digits, `_`), the name of a .py file in the task \
             directory without `.py`"
                .into(),
        );
    }
    RESERVED.contains(&module).then(|| format!("{module:?} is taken by the build; rename the file"))
}

/// Builds the Python task `project` and returns its component's path:
/// `<dir>/target/mayfly/<name>.wasm`.
pub fn build(project: &Project, say: &mut dyn FnMut(&str)) -> Result<PathBuf, BuildError> {
    build_inner(project, None, say)
}

/// [`build`] with the componentize-py at `tool`.
pub fn build_with(project: &Project, tool: &Path, say: &mut dyn FnMut(&str)) -> Result<PathBuf, BuildError> {
    build_inner(project, Some(tool), say)
}

fn build_inner(project: &Project, tool: Option<&Path>, say: &mut dyn FnMut(&str)) -> Result<PathBuf, BuildError> {
    let dir = &project.dir;
    let source = dir.join(format!("{}.py", project.module));
    if !source.is_file() {
        return Err(BuildError::NoModule { dir: dir.clone(), module: project.module.clone() });
    }
    let out_dir = dir.join("target/mayfly");
    fs::create_dir_all(&out_dir).map_err(io_err("create", &out_dir))?;
    // One build of a directory at a time (two jobs started at once, or test
    // threads): the second finds the first's component and stamp.
    let lock_path = out_dir.join(".lock");
    let lock = fs::File::create(&lock_path).map_err(io_err("create", &lock_path))?;
    lock.lock().map_err(io_err("lock", &lock_path))?;
    let component = out_dir.join(format!("{}.wasm", project.name));
    let stamp_path = out_dir.join(format!(".{}.stamp", project.name));
    let stamp = stamp(project)?;
    if component.is_file() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return Ok(component);
    }
    let tool = match tool {
        Some(tool) => tool.to_owned(),
        None => componentize_py(say)?,
    };

    // Outside the task directory, which componentize-py reads through.
    let work = Scratch::new()?;
    let wit = work.0.join("wit");
    let entry = work.0.join("entry");
    let sdk = work.0.join("py");
    // An empty virtual environment: without one, componentize-py adds the
    // host Python's site-packages, so a package the task does not declare
    // would build here and nowhere else.
    let no_packages = work.0.join("no-site-packages");
    for d in [sdk.join("mayfly_sdk"), wit.clone(), entry.clone(), no_packages.clone()] {
        fs::create_dir_all(&d).map_err(io_err("create", &d))?;
    }
    write(&wit.join("task.wit"), WIT)?;
    for (name, text) in SDK {
        write(&sdk.join("mayfly_sdk").join(name), text)?;
    }
    write(&entry.join("mayfly_entry.py"), &entry_module(&project.module))?;
    let mut paths = vec![entry, dir.clone(), sdk];
    if !project.dependencies.is_empty() {
        let deps = work.0.join("deps");
        vendor(project, &deps, say)?;
        paths.push(deps);
    }

    let built = work.0.join("out.wasm");
    say(&format!("building the Python task {} with componentize-py", dir.display()));
    let mut cmd = Command::new(&tool);
    cmd.arg("-d").arg(&wit).args(["-w", "task", "componentize", "mayfly_entry"]);
    for p in &paths {
        cmd.arg("-p").arg(p);
    }
    cmd.arg("-o").arg(&built).current_dir(dir).env("RUST_BACKTRACE", "0").env("VIRTUAL_ENV", &no_packages);
    let out = cmd.output().map_err(|source| BuildError::PythonTool {
        tool: tool.display().to_string(),
        source,
        hint: "set MAYFLY_COMPONENTIZE_PY to a working componentize-py, or remove mayfly's copy under \
               <cache>/tools to have it installed again"
            .into(),
    })?;
    if !out.status.success() || !built.is_file() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let err = componentize_error(dir, &paths, &stderr);
        if let BuildError::Componentize { output, .. } = &err {
            say(&format!("componentize-py's output:\n{output}"));
        }
        return Err(err);
    }
    // Copied (the scratch may be on another file system), then renamed, so
    // that the component is whole or absent; the stamp likewise, after it.
    place(&built, &component)?;
    let stamp_tmp = work.0.join("stamp");
    write(&stamp_tmp, &stamp)?;
    place(&stamp_tmp, &stamp_path)?;
    Ok(component)
}

/// Copies `from` beside `to`, then renames it over `to`.
fn place(from: &Path, to: &Path) -> Result<(), BuildError> {
    let tmp = to.with_extension(format!("tmp-{}", std::process::id()));
    fs::copy(from, &tmp).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, to).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err("move into place", to)(e)
    })
}

/// The module componentize-py is pointed at: imports the task's module (which
/// registers its task), and exposes the sdk's export class under the name
/// componentize-py looks for.
fn entry_module(module: &str) -> String {
    format!(
        "# Generated by `mayfly build`: the component's entry.\n\
         import {module}\n\
         from mayfly_sdk import _runtime\n\
         _runtime.require_task(\"{module}.py\")\n\
         from mayfly_sdk._component import WitWorld\n"
    )
}

/// The hash of everything a build reads: the task directory's Python files
/// and pyproject.toml (not `target/`, hidden or virtual-environment
/// directories), the embedded sdk and WIT, the dependencies, the tool's version.
fn stamp(project: &Project) -> Result<String, BuildError> {
    let mut files = Vec::new();
    collect_sources(&project.dir, &project.dir, &mut files)?;
    files.sort();
    let mut hash = Sha256::new();
    let mut put = |part: &[u8]| {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    };
    put(COMPONENTIZE_PY_VERSION.as_bytes());
    // A componentize-py of the user's choice: another tool, another build.
    put(std::env::var_os("MAYFLY_COMPONENTIZE_PY").unwrap_or_default().as_encoded_bytes());
    put(entry_module(&project.module).as_bytes());
    put(WIT.as_bytes());
    for (name, text) in SDK {
        put(name.as_bytes());
        put(text.as_bytes());
    }
    for dep in &project.dependencies {
        put(dep.as_bytes());
    }
    for rel in &files {
        let path = project.dir.join(rel);
        put(rel.to_string_lossy().as_bytes());
        put(&fs::read(&path).map_err(io_err("read", &path))?);
    }
    Ok(hex::encode(hash.finalize()))
}

fn collect_sources(root: &Path, dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), BuildError> {
    for entry in fs::read_dir(dir).map_err(io_err("read the directory", dir))? {
        let entry = entry.map_err(io_err("read the directory", dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let kind = entry.file_type().map_err(io_err("look at", &path))?;
        if kind.is_dir() {
            let skip = name.starts_with('.')
                || name == "__pycache__"
                || (dir == root && name == "target")
                || path.join("pyvenv.cfg").exists();
            if !skip {
                collect_sources(root, &path, files)?;
            }
        } else if name.ends_with(".py") || (dir == root && name == "pyproject.toml") {
            files.push(path.strip_prefix(root).unwrap_or(&path).to_owned());
        }
    }
    Ok(())
}

/// What componentize-py printed, as an error that names the file and the
/// cause: it runs the task's module at build time, so a syntax error, an
/// import that cannot be found or an exception at import is a Python
/// traceback, in which it names the `-p` directories `/0`, `/1`, ...
fn componentize_error(dir: &Path, paths: &[PathBuf], stderr: &str) -> BuildError {
    // The traceback is after `AssertionError: ` (componentize-py's Python
    // wrapper) and before `Caused by:` (its Rust error chain).
    let body = stderr.split_once("AssertionError: ").map_or(stderr, |(_, rest)| rest);
    let (body, chain) = body.split_once("\nCaused by:").unwrap_or((body, ""));
    let body = body.trim();
    // Without a traceback (a failure in componentize-py itself), the chain is
    // the cause: `0: ...`, `1: ...`.
    let chain: Vec<&str> = chain
        .lines()
        .map(|l| l.trim())
        .map(|l| l.split_once(": ").filter(|(n, _)| n.parse::<u32>().is_ok()).map_or(l, |(_, rest)| rest))
        .filter(|l| !l.is_empty())
        .collect();
    let mut traceback = body.to_owned();
    for (i, p) in paths.iter().enumerate() {
        traceback = traceback.replace(&format!("\"/{i}/"), &format!("\"{}/", p.display()));
    }
    let last = traceback.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned();
    // The innermost frame in the task's own directory: `File "<dir>/x.py", line N`.
    let prefix = format!("File \"{}/", dir.display());
    let at = traceback
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&prefix))
        .next_back()
        .map(|rest| rest.replacen("\", line ", ":", 1))
        .map(|rest| rest.split(',').next().unwrap_or(&rest).to_owned());
    let mut cause = match &at {
        Some(at) => format!("{at}: {last}"),
        None if last.is_empty() && chain.is_empty() => "componentize-py failed and printed nothing".to_owned(),
        None if last.is_empty() => format!("componentize-py: {}", chain.join(": ")),
        None => last.clone(),
    };
    if chain.iter().any(|l| l.contains("too much data is being copied")) {
        cause.push_str(
            " (the task's module holds too much memory once imported for componentize-py to snapshot it: \
             make large data in `start`, at run time, not at import)",
        );
    }
    if traceback.is_empty() {
        traceback = stderr.trim().to_owned();
    }
    if let Some(missing) = last.strip_prefix("ModuleNotFoundError: No module named ") {
        let missing = missing.trim_matches('\'');
        if missing == "mayfly_sdk" || missing.starts_with("mayfly_sdk.") {
            cause.push_str(" (this mayfly's sdk has no such module)");
        } else {
            cause.push_str(&format!(
                "; a package the task imports must be declared in pyproject.toml's [project] dependencies \
                 (pure-Python packages only: {missing:?} cannot come from the host's Python, and a package \
                 with native code cannot run in the sandbox), or be a module in the task directory; a \
                 standard-library module missing here is one the sandbox's CPython (for WASI) does not have"
            ));
        }
    } else if last.starts_with("ImportError") {
        cause.push_str(
            "; if this is a package with native code (a .so), it cannot run in the sandbox: only \
             pure-Python packages can",
        );
    }
    BuildError::Componentize { dir: dir.to_owned(), cause, output: traceback }
}

/// Installs `[project] dependencies` into `deps` with pip, as pure-Python
/// wheels only: a package with native code has no build for the sandbox.
fn vendor(project: &Project, deps: &Path, say: &mut dyn FnMut(&str)) -> Result<(), BuildError> {
    say(&format!("vendoring the task's dependencies: {}", project.dependencies.join(", ")));
    let out = Command::new(python())
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input", "--target"])
        .arg(deps)
        .args(["--only-binary=:all:", "--implementation", "py", "--abi", "none", "--platform", "any"])
        .args(["--python-version", "3.14", "--"])
        .args(&project.dependencies)
        .current_dir(&project.dir)
        .output()
        .map_err(|source| BuildError::PythonTool {
            tool: format!("{} -m pip", python()),
            source,
            hint: "vendoring dependencies needs python3 with pip (or MAYFLY_PYTHON naming one)".into(),
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No module named pip") {
            return Err(BuildError::Vendor {
                dependencies: project.dependencies.join(", "),
                reason: format!("{} has no pip (install it, or set MAYFLY_PYTHON to a Python with pip)", python()),
            });
        }
        let reason = stderr.lines().filter(|l| l.starts_with("ERROR")).collect::<Vec<_>>().join("; ");
        return Err(BuildError::Vendor {
            dependencies: project.dependencies.join(", "),
            reason: if reason.is_empty() { stderr.trim().to_owned() } else { reason },
        });
    }
    Ok(())
}

fn python() -> String {
    std::env::var("MAYFLY_PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".to_owned())
}

/// componentize-py at [`COMPONENTIZE_PY_VERSION`]: `MAYFLY_COMPONENTIZE_PY`,
/// else the one on PATH if it is that version, else mayfly's own, installed
/// the first time into `<cache>/tools/componentize-py-<version>`.
pub fn componentize_py(say: &mut dyn FnMut(&str)) -> Result<PathBuf, BuildError> {
    if let Some(tool) = std::env::var_os("MAYFLY_COMPONENTIZE_PY").filter(|t| !t.is_empty()) {
        let tool = PathBuf::from(tool);
        match version_of(&tool) {
            Some(v) if v == COMPONENTIZE_PY_VERSION => {}
            found => say(&format!(
                "MAYFLY_COMPONENTIZE_PY ({}) is {}, not {COMPONENTIZE_PY_VERSION}, which mayfly is tested with; \
                 using it anyway",
                tool.display(),
                found.as_deref().unwrap_or("of an unknown version")
            )),
        }
        return Ok(tool);
    }
    let on_path = PathBuf::from("componentize-py");
    match version_of(&on_path) {
        Some(v) if v == COMPONENTIZE_PY_VERSION => return Ok(on_path),
        Some(v) => {
            say(&format!("componentize-py on PATH is {v}; mayfly builds with {COMPONENTIZE_PY_VERSION}, its own copy"))
        }
        None => {}
    }
    let root = mayfly_sandbox::default_cache_root().ok_or(BuildError::NoCache)?;
    install_componentize_py(&root.join("tools"), say)
}

fn version_of(tool: &Path) -> Option<String> {
    let out = Command::new(tool).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success().then(|| text.trim().trim_start_matches("componentize-py").trim().to_owned())
}

/// Installs componentize-py into a virtual environment under `tools` (once:
/// a lock keeps concurrent builds from installing it twice, and a marker
/// written last tells a finished install from an interrupted one).
pub fn install_componentize_py(tools: &Path, say: &mut dyn FnMut(&str)) -> Result<PathBuf, BuildError> {
    let venv = tools.join(format!("componentize-py-{COMPONENTIZE_PY_VERSION}"));
    let tool = venv.join("bin/componentize-py");
    let done = venv.join(".mayfly-installed");
    if done.is_file() {
        return Ok(tool);
    }
    fs::create_dir_all(tools).map_err(io_err("create", tools))?;
    let lock_path = tools.join(format!("componentize-py-{COMPONENTIZE_PY_VERSION}.lock"));
    let lock = fs::File::create(&lock_path).map_err(io_err("create", &lock_path))?;
    lock.lock().map_err(io_err("lock", &lock_path))?;
    if done.is_file() {
        return Ok(tool);
    }
    say(&format!(
        "componentize-py {COMPONENTIZE_PY_VERSION} (what builds Python tasks) is not installed; installing it \
         into {} (once; about a minute)",
        venv.display()
    ));
    let failed = |reason: String| BuildError::Install { venv: venv.clone(), reason };
    if venv.exists() {
        fs::remove_dir_all(&venv).map_err(|e| failed(format!("removing an unfinished install: {e}")))?;
    }
    // A virtual environment is not relocatable (its scripts name its path),
    // so it is made in place, under the lock.
    let made = Command::new(python())
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .map_err(|e| failed(format!("cannot run {}: {e}", python())))?;
    if !made.status.success() {
        return Err(failed(format!("`{} -m venv` failed: {}", python(), String::from_utf8_lossy(&made.stderr).trim())));
    }
    let pip = Command::new(venv.join("bin/python"))
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input"])
        .arg(format!("componentize-py=={COMPONENTIZE_PY_VERSION}"))
        .output()
        .map_err(|e| failed(format!("cannot run pip: {e}")))?;
    if !pip.status.success() {
        return Err(failed(format!("pip failed: {}", String::from_utf8_lossy(&pip.stderr).trim())));
    }
    if version_of(&tool).as_deref() != Some(COMPONENTIZE_PY_VERSION) {
        return Err(failed(format!("{} does not answer --version as {COMPONENTIZE_PY_VERSION}", tool.display())));
    }
    let mut marker = fs::File::create(&done).map_err(io_err("create", &done))?;
    marker.write_all(COMPONENTIZE_PY_VERSION.as_bytes()).map_err(io_err("write", &done))?;
    say(&format!("installed componentize-py {COMPONENTIZE_PY_VERSION}"));
    Ok(tool)
}

fn write(path: &Path, text: &str) -> Result<(), BuildError> {
    fs::write(path, text).map_err(io_err("write", path))
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_owned();
    move |source| BuildError::Io { what, path, source }
}

/// A directory of its own under the system's temporary directory, removed
/// when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self, BuildError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("mayfly-pybuild-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).map_err(io_err("create", &path))?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_sdk_package_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/python/mayfly_sdk");
        let mut on_disk: Vec<String> = fs::read_dir(&dir)
            .expect("sdk/python/mayfly_sdk")
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".py") || n == "py.typed")
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = SDK.iter().map(|(n, _)| (*n).to_owned()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "SDK in core/src/build/python.rs must list every file of mayfly_sdk");
    }

    #[test]
    fn a_directory_is_a_python_task_by_its_pyproject_or_app_py() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        assert_eq!(detect(d).expect("empty dir"), None);
        fs::write(d.join("app.py"), "").expect("write");
        let p = detect(d).expect("app.py").expect("a task");
        assert_eq!((p.module.as_str(), p.dependencies.len()), ("app", 0));
        fs::write(
            d.join("pyproject.toml"),
            "[project]\nname = \"csv-sum\"\ndependencies = [\"attrs==23.2.0\"]\n[tool.mayfly]\nmodule = \"job_task\"\n",
        )
        .expect("write");
        let p = detect(d).expect("pyproject").expect("a task");
        assert_eq!((p.name.as_str(), p.module.as_str()), ("csv-sum", "job_task"));
        assert_eq!(p.dependencies, ["attrs==23.2.0"]);
        fs::write(d.join("pyproject.toml"), "[tool.mayfly]\nmodule = \"task\"\n").expect("write");
        let err = detect(d).expect_err("reserved").to_string();
        assert!(err.contains("pyproject.toml") && err.contains("taken by the build"), "{err}");
        fs::write(d.join("pyproject.toml"), "[tool.mayfly\n").expect("write");
        assert!(detect(d).expect_err("bad toml").to_string().contains("pyproject.toml"));
    }

    #[test]
    fn a_traceback_becomes_the_file_line_and_cause() {
        let dir = Path::new("/w/t");
        let paths = [PathBuf::from("/x/entry"), dir.to_owned(), PathBuf::from("/x/py")];
        let stderr = "Traceback (most recent call last):\n  File \"/venv/bin/componentize-py\", line 8\n\
            AssertionError: Traceback (most recent call last):\n  File \"/0/mayfly_entry.py\", line 1, in <module>\n    import app\n\
            \x20 File \"/1/app.py\", line 2\n    def f(:\n          ^\nSyntaxError: invalid syntax\n\n\nCaused by:\n    SyntaxError";
        let err = componentize_error(dir, &paths, stderr);
        let BuildError::Componentize { cause, output, .. } = &err else { panic!("{err:?}") };
        assert_eq!(cause, "app.py:2: SyntaxError: invalid syntax");
        assert!(output.contains("File \"/w/t/app.py\"") && !output.contains("Caused by"), "{output}");
        let missing = stderr.replace("SyntaxError: invalid syntax", "ModuleNotFoundError: No module named 'numpy'");
        let err = componentize_error(dir, &paths, &missing).to_string();
        assert!(err.contains("app.py:2: ModuleNotFoundError") && err.contains("[project] dependencies"), "{err}");
        let snapshot = "Traceback (most recent call last):\nAssertionError: \n\nCaused by:\n    0: retrieving memory \
            with component-init-get-memory\n    1: too much data is being copied between the host and the guest";
        let err = componentize_error(dir, &paths, snapshot).to_string();
        assert!(err.contains("does not build: componentize-py: retrieving memory"), "{err}");
        assert!(err.contains("too much memory once imported"), "{err}");
    }
}
