//! The shared harness of mayfly's integration tests: builds the example tasks
//! and guest fixtures from source (no committed `.wasm`), locates the `mayfly`
//! binary, and runs attempts in-process.

// Test support: a panic is how a harness step reports failure.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

pub mod bench;
pub mod chaos;
pub mod cloud_chaos;
pub mod cluster;
pub mod moto;
pub mod proxy;
pub mod vm;

use mayfly_core::host::{Attempt, BytesInput, InputSource, Limits, Outcome, Runtime, RuntimeConfig, Task};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_owned()
}

/// A scratch directory under the target directory, unique to this process.
/// Directories left by earlier test processes are removed on first use.
pub fn scratch(name: &str) -> PathBuf {
    static CLEAN: std::sync::Once = std::sync::Once::new();
    let base = target_dir().join("test-scratch");
    CLEAN.call_once(|| {
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok();
            if pid.is_some_and(|p| p != std::process::id() && !Path::new(&format!("/proc/{p}")).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
    let dir = base.join(std::process::id().to_string()).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// The cargo target directory these tests were built in.
pub fn target_dir() -> PathBuf {
    // current_exe is <target>/<profile>/deps/<test-binary>.
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors().nth(3).expect("target dir").to_owned()
}

/// Builds (once per process) the task or guest crate at `dir` (relative to the
/// workspace root, e.g. `tasks/wordcount` or `tests/guests/misbehave`) and
/// returns its component's path.
pub fn component(dir: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(dir) {
        return path.clone();
    }
    let say = &mut |m: &str| eprintln!("{m}");
    let path = match mayfly_core::build::python::detect(&root().join(dir)) {
        // Python tasks build with the componentize-py the cluster tests' nodes
        // find too (under the tests' cache directory), installed once.
        Ok(Some(project)) if !root().join(dir).join("Cargo.toml").exists() => {
            mayfly_core::build::python::build_with(&project, &componentize_py(), say)
        }
        _ => mayfly_core::build::build_task(&root().join(dir), say),
    }
    .unwrap_or_else(|e| panic!("building {dir}: {e}"));
    built.insert(dir.to_owned(), path.clone());
    path
}

/// componentize-py, as `mayfly build` installs it into the tests' cache
/// directory ([`cache_dir`], which the `mayfly` commands of the tests are
/// given): the first call installs it from PyPI.
pub fn componentize_py() -> PathBuf {
    static TOOL: OnceLock<PathBuf> = OnceLock::new();
    TOOL.get_or_init(|| {
        mayfly_core::build::python::install_componentize_py(&cache_dir().join("tools"), &mut |m| eprintln!("{m}"))
            .unwrap_or_else(|e| panic!("{e}"))
    })
    .clone()
}

/// The `mayfly` binary, built (once per process) in the same profile as the tests.
pub fn mayfly_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let profile_dir = target_dir().join(if cfg!(debug_assertions) { "debug" } else { "release" });
        let mut cmd = cargo();
        // With S3 and Azure Blob support (as the node artifacts have them): the
        // tests run jobs on s3:// and az:// too.
        cmd.args(["build", "-p", "mayfly", "--bin", "mayfly", "--features", "s3,azure"]).current_dir(root());
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the mayfly binary failed");
        profile_dir.join("mayfly")
    })
    .clone()
}

/// A `cargo` command for the harness's own builds, without the variables
/// cargo sets for the running test, and removing them from another command
/// that runs cargo (`mayfly package`): core's, which plugin authors' tests use too.
pub use mayfly_ops::conformance::{cargo, without_test_env};

/// Builds the plugin package `package` (with `features`) as the tests are
/// built (debug or release) and returns a copy of its library, one copy per
/// feature set, so each variant is its own file (a library is loaded once
/// per file and never unloaded).
pub fn plugin(package: &str, features: &[&str]) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let key = format!("{package}+{}", features.join(","));
    // One build at a time: variants of one package overwrite each other's output.
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(&key) {
        return path.clone();
    }
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let mut cmd = cargo();
    cmd.current_dir(root());
    if cfg!(debug_assertions) {
        // The whole workspace, as `cargo test --workspace` built it: the same
        // features for every dependency, so nothing is built twice (aws-sdk-ec2
        // alone takes minutes and 8 GiB).
        cmd.args(["build", "--workspace"]);
    } else {
        // The benchmarks: this package only, never the AWS SDK in release.
        cmd.args(["build", "--release", "-p", package]);
    }
    if !features.is_empty() {
        let qualified: Vec<String> = features.iter().map(|f| format!("{package}/{f}")).collect();
        cmd.args(["--features", &qualified.join(",")]);
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "building plugin {key} failed");
    let file = format!("lib{}.so", package.replace('-', "_"));
    let dir = target_dir().join("test-plugins").join(key.replace([',', '+'], "-"));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join(&file);
    // Write a new file (a new inode): a library already loaded from the old one stays as it was.
    let tmp = dir.join(format!(".{file}.{}", std::process::id()));
    std::fs::copy(target_dir().join(profile).join(&file), &tmp).unwrap();
    std::fs::rename(&tmp, &copy).unwrap();
    built.insert(key, copy.clone());
    copy
}

/// The compile cache the tests share (inside the target directory, so a
/// fresh clone starts cold and CI exercises the compile path).
pub fn cache_dir() -> PathBuf {
    target_dir().join("test-cache")
}

/// A runtime shared by the in-process tests.
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        // The same cache as the `mayfly` commands of the tests (MAYFLY_CACHE_DIR = cache_dir()).
        let cache = cache_dir().join("components");
        Runtime::new(&RuntimeConfig { cache_dir: Some(cache), max_concurrent: 16 }).expect("runtime")
    })
}

/// Loads (once per process) the component built from `dir`.
pub fn task(dir: &str) -> Arc<Task> {
    static TASKS: OnceLock<Mutex<HashMap<String, Arc<Task>>>> = OnceLock::new();
    let path = component(dir);
    let tasks = TASKS.get_or_init(Default::default);
    let mut tasks = tasks.lock().unwrap_or_else(|e| e.into_inner());
    tasks
        .entry(dir.to_owned())
        .or_insert_with(|| Arc::new(runtime().load(&path).unwrap_or_else(|e| panic!("loading {dir}: {e}"))))
        .clone()
}

/// Runs one attempt of the task built from `dir`.
pub fn run(dir: &str, input: Arc<dyn InputSource>, params: &str, limits: Limits, staging: &Path) -> Outcome {
    let task = task(dir);
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio");
    rt.block_on(runtime().run(&task, Attempt { input, params: Arc::from(params), limits, staging: staging.to_owned() }))
}

/// Runs one attempt over bytes in memory with default limits.
pub fn run_bytes(dir: &str, name: &str, data: &[u8], params: &str, staging: &Path) -> Outcome {
    run(dir, Arc::new(BytesInput::new(name, data.to_vec())), params, Limits::default(), staging)
}

/// Deterministic text of `len` bytes or a little more: words drawn with Zipf
/// weights (the k-th most common has weight 1/k), non-ASCII words, numbers, and
/// Unicode white space between them.
pub fn sample_text(seed: u64, len: usize) -> String {
    const WORDS: &[&str] = &[
        "the",
        "of",
        "and",
        "mayfly",
        "shard",
        "lease",
        "été",
        "naïve",
        "東京",
        "Straße",
        "données",
        "ok",
        "The",
        "worker",
        "commit",
        "fencing",
        "token",
        "köln",
        "μ",
        "emoji😀",
        "x\u{200B}y",
    ];
    const SPACES: &[&str] = &[" ", " ", " ", "\n", "\t", "\u{00A0}", "\u{3000}", "  ", "\r\n", "\u{2029}"];
    let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let cumulative: Vec<f64> = WORDS
        .iter()
        .enumerate()
        .scan(0.0, |acc, (k, _)| {
            *acc += 1.0 / (k as f64 + 1.0);
            Some(*acc)
        })
        .collect();
    let total = cumulative[cumulative.len() - 1];
    let mut out = String::with_capacity(len + 32);
    while out.len() < len {
        let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let k = cumulative.partition_point(|&c| c < u).min(WORDS.len() - 1);
        out.push_str(WORDS[k]);
        if rng.next().is_multiple_of(5) {
            out.push_str(&(rng.next() % 1000).to_string());
        }
        out.push_str(SPACES[(rng.next() % SPACES.len() as u64) as usize]);
    }
    out
}

/// A small deterministic generator (xorshift64), so fixtures are reproducible.
#[derive(Debug, Clone)]
pub struct XorShift(pub u64);

impl XorShift {
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The process id of a node of the local provider (its id is `pid:start time`).
pub fn pid_of(node: &mayfly_data::provider::NodeInfo) -> u32 {
    node.id
        .split(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not a local node id: {:?}", node.id))
}

/// The processes of job `job`'s nodes, found independently of the provider's
/// records (the local provider's own listing trusts its node records; this
/// does not).
pub use mayfly_ops::conformance::job_processes;

/// The local provider, linked in, with the `mayfly` binary for its nodes and
/// these settings on top.
pub fn local_selection(settings: serde_json::Value) -> mayfly_data::provider::Selection {
    let mut map = serde_json::Map::new();
    map.insert("binary".into(), serde_json::Value::String(mayfly_bin().to_string_lossy().into_owned()));
    if let serde_json::Value::Object(extra) = settings {
        map.extend(extra);
    }
    mayfly_data::provider::Selection { settings: map, ..Default::default() }
}

/// `secs` since the Unix epoch as ISO 8601 UTC (`2026-11-27T20:00:00Z`).
pub fn iso8601(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (proleptic Gregorian), after Howard Hinnant.
    let z = days as i64 + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Unpacks a zip as Lambda and the Functions host do, keeping each file's mode.
pub fn unzip(zip: &Path, into: &Path) -> Vec<String> {
    let script = "import os, sys, zipfile\n\
                  z = zipfile.ZipFile(sys.argv[1])\n\
                  for i in z.infolist():\n\
                  \x20   p = z.extract(i, sys.argv[2]); os.chmod(p, (i.external_attr >> 16) & 0o7777)\n\
                  \x20   print(i.filename, oct((i.external_attr >> 16) & 0o777))\n";
    let out = Command::new("python3").args(["-c", script]).arg(zip).arg(into).output().unwrap();
    assert!(out.status.success(), "{}", cluster::text(&out));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}
