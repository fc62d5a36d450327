//! Core's side of the provider conformance suite
//! ([`mayfly_provider_api::conformance`]): the four rules as core applies
//! them ([`Kit`]), real jobs bootstrapped and run to their end on the provider
//! under test, a provider selected as a job's `[provider]` section selects it
//! ([`Selected`], the suite's `Backend`), and what a plugin's own test needs
//! from a mayfly checkout ([`Checkout`]: the `mayfly` binary its nodes run,
//! the word-count component the jobs run, the plugin itself built).
//!
//! ```ignore
//! let checkout = mayfly_ops::conformance::Checkout::of_this_build(target_dir);
//! let kit = Kit::new(&scratch.join("jobs"), &checkout.wordcount()?);
//! let backend = Selected { section, root: scratch.join("state"), identity, observer };
//! mayfly_provider_api::conformance::assert_conforms(&backend, &kit);
//! ```
//!
//! In `mayfly-ops`'s flow (`core/tests/flow.rs` checks it) no module is above it, but it
//! must not import its peer `history`; like its crate, it must not import the binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mayfly_provider_api::conformance::{Backend, Core};
use mayfly_provider_api::{BootstrapReply, BootstrapRequest, Millis, Validity};

use mayfly_data::provider::{NodeInfo, Provider, ProviderHandle, Selection};

use mayfly_core::config::JobSpec;
use mayfly_core::job::read_json;
use mayfly_core::master::FinalState;
use mayfly_model::policy::{Clock, CredentialPolicy, ManualClock, SystemClock};

/// Core for the conformance suite: jobs run the word-count component at
/// `task` over a few small generated files under `scratch`.
#[derive(Debug, Clone)]
pub struct Kit {
    scratch: PathBuf,
    task: PathBuf,
}

impl Kit {
    /// A kit writing its jobs' inputs and outputs under `scratch`, running
    /// the word-count component `task` (`tasks/wordcount` built for wasm).
    pub fn new(scratch: &Path, task: &Path) -> Kit {
        Kit { scratch: scratch.to_owned(), task: task.to_owned() }
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The provider a request's job file selects.
fn provider_of(request: &BootstrapRequest) -> Result<mayfly_data::provider::ProviderHandle, String> {
    let base = request.base_dir.as_deref().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    let spec = JobSpec::parse(&base.join("job.toml"), &request.job, &|k| request.overrides.get(k).cloned())
        .map_err(|e| e.to_string())?;
    spec.provider_handle().map_err(|e| e.to_string())
}

impl Core for Kit {
    fn refresh_at(&self, validity: Validity) -> Millis {
        CredentialPolicy::default().refresh_at(validity)
    }

    fn lease_expiry(&self, now: Millis, lease: Duration, validity: Validity) -> Millis {
        CredentialPolicy::default().lease_expiry(now, lease, validity)
    }

    fn job_request(
        &self,
        job: &str,
        state_root: &str,
        section: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<BootstrapRequest, String> {
        let dir = self.scratch.join(job);
        let input = dir.join("in");
        std::fs::create_dir_all(&input).map_err(|e| format!("{}: {e}", input.display()))?;
        for i in 0..6 {
            let text = format!("the quick brown fox {i}\njumps over the lazy dog {i}\n").repeat(50 + i);
            std::fs::write(input.join(format!("part-{i}.txt")), text).map_err(|e| e.to_string())?;
        }
        let provider = toml::Value::try_from(section)
            .map_err(|e| format!("the [provider] section cannot be written as TOML: {e}"))?;
        let provider = toml::to_string(&provider).map_err(|e| e.to_string())?;
        let text = format!(
            "[job]\nname = \"conformance\"\nid = {id}\n\n[task]\npath = {task}\nparams = {{ mode = \"map\" }}\n\n\
             [input]\nurl = {input}\n\n[output]\nurl = {output}\n\n[state]\nurl = {state}\n\n\
             [cluster]\nworkers = 2\ndeadline = \"3m\"\nidle_timeout = \"20s\"\n\n[provider]\n{provider}",
            id = toml_string(job),
            task = toml_string(&self.task.to_string_lossy()),
            input = toml_string(&input.to_string_lossy()),
            output = toml_string(&dir.join("out").to_string_lossy()),
            state = toml_string(state_root),
        );
        Ok(BootstrapRequest { job: text, base_dir: Some(dir.to_string_lossy().into_owned()), ..Default::default() })
    }

    fn bootstrap(&self, request: &BootstrapRequest) -> Result<BootstrapReply, String> {
        let provider = provider_of(request)?;
        mayfly_core::bootstrap::from_request(request, &provider).map_err(|e| e.to_string())
    }

    fn bootstrap_overrunning(&self, request: &BootstrapRequest) -> Result<BootstrapReply, String> {
        let provider = provider_of(request)?;
        let limit = provider.limits().bootstrap_limit();
        let clock = ManualClock::new(SystemClock.now());
        let ticking = clock.clone();
        // After the master's launch the clock jumps past the limit: the next
        // step must be refused and the master ended.
        mayfly_core::bootstrap::from_request_on(request, &provider, &clock, &mut |step| {
            if step == "wait for the master" {
                ticking.advance(limit);
            }
        })
        .map_err(|e| e.to_string())
    }

    fn wait(&self, reply: &BootstrapReply, timeout: Duration) -> Result<(), String> {
        let path = Path::new(&reply.state).join("final.json");
        let start = Instant::now();
        let fin: FinalState = loop {
            if let Ok(fin) = read_json(&path) {
                break fin;
            }
            if start.elapsed() > timeout {
                return Err(format!("job {} did not end within {timeout:?} (no {})", reply.job, path.display()));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let c = fin.counts;
        if fin.reason != "done" || c.failed > 0 || u64::from(c.committed) != reply.shards {
            return Err(format!(
                "job {} ended ({}) with {} of {} shards committed, {} failed: {:?}",
                reply.job, fin.reason, c.committed, reply.shards, c.failed, fin.failed
            ));
        }
        if reply.shards > 0 && !fin.outputs.iter().any(|o| o.ends_with("counts.tsv")) {
            return Err(format!("job {} committed no word counts: {:?}", reply.job, fin.outputs));
        }
        Ok(())
    }
}

/// The setting (key, value) that makes a provider see itself on a node,
/// given the state root: how [`Backend::on_node`] is answered.
pub type IdentityOf = Box<dyn Fn(&Path, &NodeInfo) -> (String, String) + Send + Sync>;

/// A provider under test, selected as a job's `[provider]` section would
/// (`name` for a built-in one or one found by name, `path` for a plugin),
/// with the rest of the section as its settings: the suite's [`Backend`].
pub struct Selected {
    /// The `[provider]` section (with `name` or `path`). A plugin that
    /// launches `mayfly` nodes needs the binary in it (for the template,
    /// `binary`: [`Checkout::mayfly_bin`]), since a test's executable is not
    /// `mayfly`.
    pub section: serde_json::Map<String, serde_json::Value>,
    /// The state root of the suite's jobs.
    pub root: PathBuf,
    /// How an instance of the provider is made to see itself on a node.
    pub identity: IdentityOf,
    /// What of a job is still running or billing, by the backend's own
    /// records, not the provider's ([`Backend::left`]): the cloud's API, an
    /// emulator's records, or this machine's processes ([`job_processes`]).
    pub observer: Observer,
}

/// See [`Selected::observer`].
pub type Observer = Box<dyn Fn(&str) -> Result<Vec<String>, String> + Send + Sync>;

/// The processes of job `job`'s nodes on this machine, found independently
/// of any provider's records: every process whose command line is `... node
/// ... --job <job> ...`, or whose environment names a path under a directory
/// `<job>` (how the local provider and the template tell a node its record:
/// an idle node's command line does not name its job). A zombie's command
/// line and environment are empty: it is not running anything. Linux
/// (`/proc`); elsewhere, none.
pub fn job_processes(job: &str) -> Vec<(u32, String)> {
    let in_job = format!("/{job}/");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let node_of_job = args.iter().any(|a| a == "node") && args.windows(2).any(|w| w[0] == "--job" && w[1] == job);
        let told_of_job = || {
            std::fs::read(entry.path().join("environ")).is_ok_and(|env| {
                env.split(|b| *b == 0).any(|var| {
                    let var = String::from_utf8_lossy(var);
                    var.split_once('=').is_some_and(|(_, value)| value.contains(&in_job))
                })
            })
        };
        if node_of_job || told_of_job() {
            found.push((pid, args.join(" ")));
        }
    }
    found
}

impl std::fmt::Debug for Selected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selected").field("section", &self.section).field("root", &self.root).finish()
    }
}

impl Selected {
    /// The selection the section makes, with one more setting. Without
    /// `name`, none: a plugin loaded by `path` is whatever provider it is
    /// (`Selection::default()` would ask for the built-in one).
    pub fn selection(&self, extra: Option<(String, String)>) -> Selection {
        let mut s = Selection { name: None, ..Default::default() };
        for (key, value) in &self.section {
            match (key.as_str(), value.as_str()) {
                ("name", Some(v)) => s.name = Some(v.to_owned()),
                ("path", Some(v)) => s.path = Some(PathBuf::from(v)),
                _ => {
                    s.settings.insert(key.clone(), value.clone());
                }
            }
        }
        if let Some((key, value)) = extra {
            s.settings.insert(key, value.into());
        }
        s
    }
}

impl Backend for Selected {
    fn provider(&self) -> Arc<dyn Provider> {
        ProviderHandle::select(&self.selection(None)).unwrap_or_else(|e| panic!("{e}")).provider()
    }

    fn on_node(&self, node: &NodeInfo) -> Arc<dyn Provider> {
        ProviderHandle::select(&self.selection(Some((self.identity)(&self.root, node))))
            .unwrap_or_else(|e| panic!("{e}"))
            .provider()
    }

    fn section(&self) -> serde_json::Map<String, serde_json::Value> {
        self.section.clone()
    }

    fn state_root(&self) -> String {
        self.root.to_string_lossy().into_owned()
    }

    fn idle_node_args(&self) -> Vec<String> {
        vec!["idle".into(), "--for".into(), "5m".into()]
    }

    fn event(&self, request: &BootstrapRequest) -> serde_json::Value {
        serde_json::json!({ "job": request.job, "base_dir": request.base_dir, "overrides": request.overrides })
    }

    fn left(&self, job: &str) -> Result<Vec<String>, String> {
        (self.observer)(job)
    }
}

/// A mayfly checkout, as a plugin's own conformance test needs it: the
/// `mayfly` binary (the suite's nodes run it), the word-count component (its
/// jobs run it), and the plugin crate under test built as a library. Each is
/// built with cargo into `target` (the test's own target directory, so that
/// what the test already compiled is reused).
#[derive(Debug, Clone)]
pub struct Checkout {
    root: PathBuf,
    target: PathBuf,
}

impl Checkout {
    /// The checkout this crate was built from (a path dependency's directory,
    /// or cargo's copy of a git dependency: both hold the whole repository),
    /// building into `target`.
    pub fn of_this_build(target: &Path) -> Checkout {
        // This crate is `core/ops` in the repository.
        let ops = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = ops.parent().and_then(Path::parent).unwrap_or(ops);
        Checkout { root: root.to_owned(), target: target.to_owned() }
    }

    /// The checkout at `root`, building into `target`.
    pub fn new(root: &Path, target: &Path) -> Checkout {
        Checkout { root: root.to_owned(), target: target.to_owned() }
    }

    /// Its root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The `mayfly` binary, built (debug) from the checkout.
    pub fn mayfly_bin(&self) -> Result<PathBuf, String> {
        self.cargo_build(&self.root.join("Cargo.toml"), &["-p", "mayfly", "--bin", "mayfly"])?;
        Ok(self.target.join("debug").join("mayfly"))
    }

    /// The word-count task (`tasks/wordcount`) built as a component.
    pub fn wordcount(&self) -> Result<PathBuf, String> {
        mayfly_core::build::build_task(&self.root.join("tasks/wordcount"), &mut |m| eprintln!("{m}"))
            .map_err(|e| e.to_string())
    }

    /// The plugin crate at `dir` built as a library (`cargo test` does not
    /// build a `cdylib` for a test to load): the path of its `.so`.
    pub fn plugin(&self, dir: &Path) -> Result<PathBuf, String> {
        let manifest = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
        let doc: toml::Table = text.parse().map_err(|e| format!("{}: {e}", manifest.display()))?;
        let name = doc
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(toml::Value::as_str)
            .ok_or_else(|| format!("{}: no package name", manifest.display()))?;
        self.cargo_build(&manifest, &["--lib"])?;
        Ok(self.target.join("debug").join(format!("lib{}.so", name.replace('-', "_"))))
    }

    fn cargo_build(&self, manifest: &Path, args: &[&str]) -> Result<(), String> {
        let mut cmd = cargo();
        cmd.arg("build").arg("--manifest-path").arg(manifest).args(args).arg("--target-dir").arg(&self.target);
        let status = cmd.status().map_err(|e| format!("running cargo: {e}"))?;
        if !status.success() {
            return Err(format!("{cmd:?} failed ({status}); its errors are above"));
        }
        Ok(())
    }
}

/// A `cargo` command for a test's own builds (the one running the test),
/// without the variables cargo sets for the running test only
/// ([`without_test_env`]).
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    without_test_env(&mut cmd);
    cmd
}

/// Removes from `cmd` what cargo sets for the running test only
/// (`CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`, `OUT_DIR`, ...): build scripts
/// that watch them (ring's does) would otherwise see a change and rebuild
/// everything above them.
pub fn without_test_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_for_the_test =
            ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_", "CARGO_PRIMARY_", "CARGO_TARGET_TMPDIR"]
                .iter()
                .any(|p| key.starts_with(p));
        if set_for_the_test || key == "OUT_DIR" {
            cmd.env_remove(key.as_ref());
        }
    }
}
