//! Helpers for end-to-end tests of jobs on the local provider: a job directory
//! with inputs and a job file, the `mayfly run` process, the job's nodes, and
//! bounded waits (never a fixed sleep).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mayfly_data::provider::NodeInfo;

use crate::{cache_dir, component, mayfly_bin, scratch};

/// A job under test.
#[derive(Debug)]
pub struct TestJob {
    /// Its scratch directory.
    pub dir: PathBuf,
    /// Its id (set in the job file).
    pub id: String,
}

impl TestJob {
    /// A job called `id` with inputs `files` (name, content).
    pub fn new(id: &str, files: &[(String, Vec<u8>)]) -> Self {
        let dir = scratch(id);
        for (name, data) in files {
            let path = dir.join("data").join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, data).unwrap();
        }
        std::fs::create_dir_all(dir.join("data")).unwrap();
        TestJob { dir, id: id.to_owned() }
    }

    /// Writes job.toml: the task is the guest or task crate at `task_dir`
    /// (built from source), `params` a TOML inline table, `extra` more sections.
    pub fn write_job(&self, task_dir: &str, params: &str, extra: &str) -> PathBuf {
        let wasm = component(task_dir);
        let text = format!(
            "[job]\nname = \"test\"\nid = \"{}\"\n\n[task]\npath = {:?}\nparams = {params}\n\n[input]\nurl = \"data\"\n\n\
             [output]\nurl = \"out\"\n\n[state]\nurl = \"state\"\n\n{extra}\n",
            self.id,
            wasm.to_string_lossy()
        );
        let path = self.dir.join("job.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Its job file as a serverless entrypoint's request (paths relative to
    /// the job's directory).
    pub fn request(&self) -> mayfly_data::provider::BootstrapRequest {
        mayfly_data::provider::BootstrapRequest {
            job: std::fs::read_to_string(self.dir.join("job.toml")).unwrap(),
            base_dir: Some(self.dir.to_string_lossy().into_owned()),
            ..Default::default()
        }
    }

    /// A `mayfly` command run in the job's directory.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(mayfly_bin());
        cmd.args(args).current_dir(&self.dir).env("MAYFLY_CACHE_DIR", cache_dir());
        cmd
    }

    /// `mayfly run job.toml` to its end.
    pub fn run(&self) -> Output {
        self.command(&["run", "job.toml"]).output().unwrap()
    }

    /// `mayfly run job.toml` in the background.
    pub fn spawn(&self) -> Child {
        self.command(&["run", "job.toml"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    }

    /// The job's state directory.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state").join(&self.id)
    }

    /// The output directory.
    pub fn out(&self) -> PathBuf {
        self.dir.join("out")
    }

    /// Every node the provider recorded.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let mut nodes: Vec<NodeInfo> = std::fs::read_dir(self.state().join("nodes"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| mayfly_core::job::read_json(&e.path()).ok())
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        nodes
    }

    /// The recorded node called `name`.
    pub fn node(&self, name: &str) -> NodeInfo {
        self.nodes().into_iter().find(|n| n.node == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Nodes whose process is still alive.
    pub fn alive(&self) -> Vec<String> {
        self.nodes().into_iter().filter(|n| mayfly_provider_local::id_alive(&n.id)).map(|n| n.node).collect()
    }

    /// A node's log so far.
    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.state().join("logs").join(format!("{node}.log"))).unwrap_or_default()
    }

    /// Sends `signal` (a `kill -s` name) to a node.
    pub fn signal(&self, node: &str, signal: &str) {
        let pid = crate::pid_of(&self.node(node));
        let status = Command::new("kill").args(["-s", signal, &pid.to_string()]).status().unwrap();
        assert!(status.success(), "kill -s {signal} {pid}");
    }

    /// Asserts that no process of this job is left (waiting up to `grace`).
    /// No process of the job is left after `grace`: by the provider's
    /// records, and by a scan of every process for the job's id.
    pub fn assert_nothing_left(&self, grace: Duration) {
        assert!(wait_until(grace, || self.alive().is_empty()), "processes of job {} left: {:?}", self.id, self.alive());
        assert!(
            wait_until(grace, || crate::job_processes(&self.id).is_empty()),
            "processes of job {} left, not in its records: {:?}",
            self.id,
            crate::job_processes(&self.id)
        );
    }

    /// Every map output file (relative to `out/map`), sorted.
    pub fn map_outputs(&self) -> Vec<String> {
        let mut found = Vec::new();
        walk(&self.out().join("map"), &self.out().join("map"), &mut found);
        found.sort();
        found
    }
}

fn walk(base: &Path, dir: &Path, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(base, &path, found);
        } else {
            found.push(path.strip_prefix(base).unwrap().to_string_lossy().into_owned());
        }
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `n` input files of distinct content, `size` bytes each.
pub fn inputs(n: usize, size: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let line = format!("file {i} line\n");
            let data: Vec<u8> = line.bytes().cycle().take(size).collect();
            (format!("f{i:03}.txt"), data)
        })
        .collect()
}

/// A `[cluster]` and `[sharding]` section: `workers`, short leases, one shard
/// per file, and `extra` lines in `[cluster]`.
pub fn cluster(workers: u32, extra: &str) -> String {
    format!(
        "[cluster]\nworkers = {workers}\ndeadline = \"3m\"\nlease_time = \"1s\"\nidle_timeout = \"60s\"\nmaster_lost_timeout = \"60s\"\n{extra}\n\
         [sharding]\ntarget_shard_bytes = 1\nsplit_text = false\n"
    )
}

/// A command's stdout and stderr, for assertion messages.
pub fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// What an independent reading of a finished job says about its commits:
/// one line per problem (none: every shard was committed once, by one token).
///
/// It reads the job's commits (every line of its commit log, or markers), the journal every master of the job appended
/// to (across resumes), the masters' log lines (`shard S committed (token T,
/// ...)`), and each published item's `attempt.txt` when the task stamped one
/// (`misbehave` with `stamp = true`). A problem is a shard committed by more
/// than one token, by a token other than its marker's, or an item whose
/// published stamp is not from the attempt the marker's token was leased to;
/// except where the master found a commit's outputs gone and ran the shard
/// again (said in its log), which commits it twice by design.
pub fn audit_commits(job: &TestJob) -> Vec<String> {
    use mayfly_core::ledger::Event;
    use std::collections::{BTreeMap, BTreeSet};
    let layout = mayfly_core::job::Layout::local(&job.dir.join("state"), &job.id, &job.out());
    let markers = mayfly_core::commits::read(&layout).expect("the job's commits");
    let events = mayfly_core::master::read_journal(&job.state().join("journal.jsonl"));
    let master_log = job.log("master");
    let mut leased: BTreeMap<(u32, u64), u32> = BTreeMap::new();
    let mut committed: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    for event in &events {
        match event {
            Event::Lease { shard, token, attempt, .. } => {
                leased.insert((*shard, *token), *attempt);
            }
            Event::Committed { shard, token, .. } => {
                committed.entry(*shard).or_default().insert(*token);
            }
            _ => {}
        }
    }
    for line in master_log.lines() {
        let Some((_, rest)) = line.split_once("shard ") else { continue };
        let Some((shard, rest)) = rest.split_once(" committed (token ") else { continue };
        let token = rest.split(|c: char| !c.is_ascii_digit()).next().unwrap_or("");
        if let (Ok(shard), Ok(token)) = (shard.parse(), token.parse()) {
            committed.entry(shard).or_default().insert(token);
        }
    }
    let rerun =
        |shard: u32| master_log.contains(&format!("shard {shard} was marked committed but its outputs are gone"));
    let mut problems = Vec::new();
    // Every line of the commit log: a shard on two is a doubled commit, whatever
    // the first-per-shard view of the commits shows.
    let mut lines: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for m in mayfly_core::commits::read_log(&layout).expect("the job's commit log") {
        lines.entry(m.shard).or_default().push(m.token);
    }
    for (shard, tokens) in lines.into_iter().filter(|(_, t)| t.len() > 1) {
        problems.push(format!("shard {shard}: on {} lines of the commit log (tokens {tokens:?})", tokens.len()));
    }
    for marker in &markers {
        let tokens = committed.remove(&marker.shard).unwrap_or_default();
        if rerun(marker.shard) {
            continue;
        }
        if tokens.iter().any(|t| *t != marker.token) {
            problems.push(format!(
                "shard {}: committed by tokens {tokens:?}, its marker says {}",
                marker.shard, marker.token
            ));
        }
        let Some(attempt) = leased.get(&(marker.shard, marker.token)) else { continue };
        let stamp = format!("shard {} attempt {attempt}", marker.shard);
        for out in marker.outputs.iter().filter(|o| o.name == "attempt.txt") {
            let path = job.out().join("map").join(&out.key).join(&out.name);
            // Not published (the job's end could not): the outputs' check says so.
            let Ok(found) = std::fs::read_to_string(&path) else { continue };
            if found.trim() != stamp {
                problems.push(format!(
                    "shard {}: {} says {:?}, but the committing token {} was attempt {attempt}",
                    marker.shard,
                    path.display(),
                    found.trim(),
                    marker.token
                ));
            }
        }
    }
    for (shard, tokens) in committed {
        if !rerun(shard) {
            problems.push(format!("shard {shard}: committed by tokens {tokens:?} and has no marker"));
        }
    }
    problems
}

/// Every input appears once under map/, byte for byte, and nothing else does
/// (but each item's `attempt.txt`, if the task stamped every item), and each
/// shard was committed once ([`audit_commits`]).
pub fn assert_exactly_once(job: &TestJob, files: &[(String, Vec<u8>)]) {
    let outputs = job.map_outputs();
    let stamped = outputs.iter().any(|o| o.ends_with("/attempt.txt"));
    let names: &[&str] = if stamped { &["attempt.txt", "copy.bin"] } else { &["copy.bin"] };
    let expected: Vec<String> =
        files.iter().flat_map(|(n, _)| names.iter().map(move |name| format!("{n}/{name}"))).collect();
    assert_eq!(outputs, expected, "map outputs");
    for (name, data) in files {
        assert_eq!(&std::fs::read(job.out().join("map").join(name).join("copy.bin")).unwrap(), data, "{name}");
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.out().join("_manifest.json")).unwrap()).unwrap();
    let listed: Vec<&str> =
        manifest["outputs"].as_array().unwrap().iter().map(|o| o["path"].as_str().unwrap()).collect();
    assert_eq!(listed.len(), expected.len(), "the manifest lists each output once");
    assert!(!job.out().join("_mayfly/staging").exists(), "staging is cleaned up");
    let problems = audit_commits(job);
    assert!(problems.is_empty(), "each shard committed once:\n{}", problems.join("\n"));
}
