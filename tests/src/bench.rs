//! The comparison benchmark's parts (`cargo bench -p mayfly-tests --bench
//! compare`): a seeded corpus generator, a measurer of a process tree (wall
//! time, CPU time, peak RSS), the contenders (the native limit, mayfly on the
//! local provider, Lithops in localhost mode, a single `mayfly exec`), and the
//! master under many simulated workers.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use mayfly_core::api::{CallError, CommitRequest, LeaseReply, LeaseRequest, MasterInfo, Status};
use mayfly_core::job::{Layout, Manifest, keys};
use mayfly_data::provider::{ProviderHandle, Role};
use mayfly_data::store::Location;
use mayfly_model::plan::{Item, Plan, Shard};
use mayfly_ops::demo::{Rng, vocabulary};

use crate::cluster::{text, wait_until};

/// How a corpus's file sizes are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sizes {
    /// Every file between `min` and `max` bytes (uniform): many tiny files.
    Range {
        /// Smallest file.
        min: u64,
        /// Largest file.
        max: u64,
    },
    /// Log-uniform between 1 KiB and 256 times the mean, scaled to the total:
    /// mostly small files and a few huge ones.
    Mixed,
    /// All files the same size: a few huge files.
    Equal,
}

/// A corpus: `files` text files of `total` bytes or so (for [`Sizes::Range`],
/// the total is what the sizes add up to), words drawn from a Zipf
/// distribution over a vocabulary of `vocabulary` words (non-ASCII included).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Corpus {
    /// The generator's seed.
    pub seed: u64,
    /// How many files.
    pub files: usize,
    /// Their total size (ignored for [`Sizes::Range`]).
    pub total: u64,
    /// How their sizes are drawn.
    pub sizes: Sizes,
    /// Distinct words.
    pub vocabulary: usize,
}

/// A generated corpus on disk.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Its directory.
    pub dir: PathBuf,
    /// The input files (under `dir/files`) with their sizes, largest first.
    pub files: Vec<(PathBuf, u64)>,
    /// Every file's text back to back, in one file (for the single-process contender).
    pub all: PathBuf,
}

impl Dataset {
    /// The total size of the input files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.1).sum()
    }

    /// The input files in `n` batches of consecutive files (largest first, so a
    /// pool that takes batches in order balances them as it goes).
    pub fn batches(&self, n: usize) -> Vec<Vec<PathBuf>> {
        let per = self.files.len().div_ceil(n.max(1)).max(1);
        self.files.chunks(per).map(|c| c.iter().map(|f| f.0.clone()).collect()).collect()
    }
}

impl Corpus {
    /// The file sizes this corpus draws (deterministic).
    pub fn sizes(&self) -> Vec<u64> {
        let mut rng = Rng::new(self.seed ^ 0x5151);
        match self.sizes {
            Sizes::Range { min, max } => (0..self.files).map(|_| min + rng.next_u64() % (max - min + 1)).collect(),
            Sizes::Equal => vec![self.total / self.files as u64; self.files],
            Sizes::Mixed => {
                let mean = self.total as f64 / self.files as f64;
                let (lo, hi) = (1024f64.ln(), (mean * 256.0).max(2048.0).ln());
                let raw: Vec<f64> = (0..self.files).map(|_| (lo + rng.unit() * (hi - lo)).exp()).collect();
                let scale = self.total as f64 / raw.iter().sum::<f64>();
                raw.iter().map(|r| ((r * scale) as u64).max(16)).collect()
            }
        }
    }

    /// Generates the corpus under `dir` unless it is there already (a stamp
    /// file names the corpus it holds), and returns it.
    pub fn generate(&self, dir: &Path) -> std::io::Result<Dataset> {
        let stamp = dir.join("corpus");
        let files_dir = dir.join("files");
        let all = dir.join("all.txt");
        let sizes = self.sizes();
        let names: Vec<PathBuf> =
            (0..self.files).map(|i| files_dir.join(format!("d{:02}/f{i:06}.txt", i % 64))).collect();
        let done = std::fs::read_to_string(&stamp).ok() == Some(format!("v2 {self:?}"));
        if !done {
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(&files_dir)?;
            let words = vocabulary(self.vocabulary);
            let mut cumulative = Vec::with_capacity(words.len());
            let mut acc = 0.0;
            for k in 0..words.len() {
                acc += 1.0 / (k as f64 + 1.0);
                cumulative.push(acc);
            }
            let mut rng = Rng::new(self.seed);
            let mut everything = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&all)?);
            let mut text: Vec<u8> = Vec::new();
            for (name, &size) in names.iter().zip(&sizes) {
                text.clear();
                let mut line = 0;
                while (text.len() as u64) + 1 < size {
                    let u = rng.unit() * acc;
                    let k = cumulative.partition_point(|&c| c < u).min(words.len() - 1);
                    text.extend_from_slice(words[k].as_bytes());
                    line += words[k].len() + 1;
                    if line > 70 {
                        text.push(b'\n');
                        line = 0;
                    } else {
                        text.push(b' ');
                    }
                }
                text.push(b'\n');
                std::fs::create_dir_all(name.parent().expect("a parent"))?;
                std::fs::write(name, &text)?;
                everything.write_all(&text)?;
            }
            everything.flush()?;
            std::fs::write(&stamp, format!("v2 {self:?}"))?;
        }
        let mut files = Vec::with_capacity(names.len());
        for name in names {
            let size = std::fs::metadata(&name)?.len();
            files.push((name, size));
        }
        files.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(Dataset { dir: dir.to_owned(), files, all })
    }
}

/// What one run of a contender cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    /// Wall-clock time.
    pub wall: Duration,
    /// User + system CPU time of every process of the run.
    pub cpu: Duration,
    /// Peak memory of the whole process tree (the sum of the processes'
    /// proportional set sizes, sampled every 20 ms, after the first half
    /// second every 100 ms; at least the largest single process's own peak
    /// RSS, which a process too short-lived to be sampled may miss).
    pub peak_rss_kib: u64,
}

fn children_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_CHILDREN) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::from_secs(tv.tv_sec().max(0) as u64) + Duration::from_micros(tv.tv_usec().max(0) as u64)
            };
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// Every process descended from this one.
fn descendants() -> Vec<u32> {
    let me = std::process::id();
    let mut parent_of: HashMap<u32, u32> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        if let Some(ppid) = ppid {
            parent_of.insert(pid, ppid);
        }
    }
    let mut found = Vec::new();
    for &pid in parent_of.keys() {
        let mut p = pid;
        let mut inside = false;
        for _ in 0..64 {
            match parent_of.get(&p) {
                Some(&q) if q == me => {
                    inside = true;
                    break;
                }
                Some(&q) if q != p && q > 1 => p = q,
                _ => break,
            }
        }
        if inside {
            found.push(pid);
        }
    }
    found
}

/// The memory of every descendant of this process together (proportional set
/// size), and the largest peak RSS (VmHWM) of any one of them, in KiB.
fn descendants_rss_kib() -> (u64, u64) {
    let (mut sum, mut largest) = (0, 0);
    for pid in descendants() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0)
        };
        // Proportional: pages shared between processes (the same binary
        // mapped by a master and its workers) are counted once in all.
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let pss = rollup
            .lines()
            .find(|l| l.starts_with("Pss:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok());
        sum += pss.unwrap_or_else(|| field("VmRSS:"));
        largest = largest.max(field("VmHWM:"));
    }
    (sum, largest)
}

/// The longest one contender's run may take (the full runs take seconds).
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `cmd` to its end and measures it. This process becomes a child
/// subreaper, so that processes the command leaves behind (mayfly's nodes
/// finishing their exit) stay its descendants: their memory is sampled and,
/// once they are reaped here, their CPU time counted. Wall time ends when
/// `cmd` does; CPU time includes its descendants to their ends (at most a
/// minute after). The caller must not run other child processes meanwhile.
pub fn measure(cmd: &mut Command) -> (Cost, Output) {
    nix::sys::prctl::set_child_subreaper(true).expect("becoming a child subreaper");
    let cpu_before = children_cpu();
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    // The pipes are drained beside: a descendant that keeps them open must not
    // hold the clock, which stops when the command itself exits.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            // Every 20 ms for the first half second, then every 100 ms: a scan
            // of /proc costs CPU the contenders share.
            let begun = Instant::now();
            while !done.load(Ordering::Relaxed) {
                let (sum, largest) = descendants_rss_kib();
                peak.fetch_max(sum.max(largest), Ordering::Relaxed);
                let every = if begun.elapsed() < Duration::from_millis(500) { 20 } else { 100 };
                std::thread::sleep(Duration::from_millis(every));
            }
        })
    };
    // A contender that hangs (Lithops once waited forever for its reducer)
    // is killed with everything it started, and the run fails saying so.
    let (finished, watch) = std::sync::mpsc::channel::<()>();
    let timed_out = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let timed_out = timed_out.clone();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = watch.recv_timeout(RUN_TIMEOUT) {
                timed_out.store(true, Ordering::Relaxed);
                for pid in descendants() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        })
    };
    let status = child.wait().unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"));
    let wall = started.elapsed();
    let _ = finished.send(());
    let _ = watchdog.join();
    assert!(
        !timed_out.load(Ordering::Relaxed),
        "{cmd:?} did not finish within {} s: it and what it started were killed",
        RUN_TIMEOUT.as_secs()
    );
    // Reap what the command left behind.
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < give_up => std::thread::sleep(Duration::from_millis(5)),
            Ok(WaitStatus::StillAlive) => panic!("{cmd:?} left processes running for a minute"),
            Ok(_) => {}
            Err(_) => break, // ECHILD: none left
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let output =
        Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() };
    let cost =
        Cost { wall, cpu: children_cpu().saturating_sub(cpu_before), peak_rss_kib: peak.load(Ordering::Relaxed) };
    (cost, output)
}

/// Runs `cmd`, measured, and panics with its output unless it succeeds.
pub fn measure_ok(what: &str, cmd: &mut Command) -> Cost {
    let (cost, out) = measure(cmd);
    assert!(out.status.success(), "{what} failed ({}):\n{}", out.status, text(&out));
    cost
}

/// Moves a previous run's directory out of the way, into `trash` beside it,
/// emptied by [`empty_trash`] once nothing is timed any more. Deleting tens of
/// thousands of files just before a run would slow that run's file creation:
/// for a while ext4 skips recently freed inodes one by one when it allocates.
pub fn set_aside(work: &Path) {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    if work.exists() {
        let trash = work.parent().unwrap_or(work).join("trash");
        let _ = std::fs::create_dir_all(&trash);
        let to = trash.join(format!("{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        if std::fs::rename(work, &to).is_err() {
            let _ = std::fs::remove_dir_all(work);
        }
    }
}

/// Deletes what [`set_aside`] kept under `runs`.
pub fn empty_trash(runs: &Path) {
    let _ = std::fs::remove_dir_all(runs.join("trash"));
}

/// The native word-count program (the `wordcount` task's code compiled
/// natively), built in release mode.
pub fn native_wordcount() -> PathBuf {
    let status = crate::cargo()
        .args(["build", "--release", "-p", "mayfly-tests", "--bin", "native-wordcount"])
        .current_dir(crate::root())
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building native-wordcount failed");
    crate::target_dir().join("release").join("native-wordcount")
}

/// The physical limit: `xargs -P<procs>` runs the native program over batches
/// of files, then one native merge. Returns the result file.
pub fn native(bin: &Path, data: &Dataset, procs: usize, work: &Path) -> (Cost, PathBuf) {
    set_aside(work);
    let parts = work.join("parts");
    std::fs::create_dir_all(&parts).expect("work dir");
    let list = work.join("files.txt");
    let batches = data.batches(procs * 32);
    let per = batches.first().map_or(1, Vec::len);
    let names: Vec<String> = data.files.iter().map(|f| f.0.to_string_lossy().into_owned()).collect();
    std::fs::write(&list, names.join("\n") + "\n").expect("file list");
    let result = work.join("counts.tsv");
    let script = format!(
        "set -e; xargs -d '\\n' -P {procs} -n {per} -a {list:?} {bin:?} map {parts:?}; {bin:?} reduce {result:?} {parts:?}"
    );
    let cost = measure_ok("the native word count", Command::new("sh").args(["-c", &script]));
    (cost, result)
}

/// mayfly on the local provider: `mayfly run` of a wordcount job (map and
/// reduce) with `workers` workers. Returns the reduce's output.
pub fn mayfly(data: &Dataset, workers: usize, work: &Path, cache: &Path) -> (Cost, PathBuf) {
    mayfly_with("tasks/wordcount", data, workers, work, cache)
}

/// [`mayfly`] with the wordcount task at `task` (`tasks/wordcount-py`, say).
pub fn mayfly_with(task: &str, data: &Dataset, workers: usize, work: &Path, cache: &Path) -> (Cost, PathBuf) {
    mayfly_job(task, data, workers, "", work, cache)
}

/// [`mayfly`] with a reduce of `partitions` partitions, merged by the counts'
/// order into one `counts.tsv`.
pub fn mayfly_partitioned(
    data: &Dataset,
    workers: usize,
    partitions: u32,
    work: &Path,
    cache: &Path,
) -> (Cost, PathBuf) {
    let keys = format!("partitions = {partitions}\norder = \"2nr,1\"\n");
    mayfly_job("tasks/wordcount", data, workers, &keys, work, cache)
}

/// Where a job's time went, from its journal and final state (ms).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stages {
    /// From the first lease to the last map shard's commit.
    pub map: u64,
    /// From then to the last reduce partition's commit.
    pub reduce: u64,
    /// From then to the job's end (the parts merged into one, the manifest).
    pub end: u64,
}

/// The stages of the one job whose state is under `work/state`.
pub fn stages(work: &Path) -> Stages {
    let job = std::fs::read_dir(work.join("state")).ok().and_then(|mut d| d.next()).and_then(Result::ok);
    let Some(job) = job.map(|e| e.path()) else { return Stages::default() };
    let read = |name: &str| -> serde_json::Value {
        std::fs::read(job.join(name)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    };
    let map_shards = read("manifest.json")["plan"]["shards"].as_array().map_or(0, Vec::len) as u64;
    let ended = read("final.json")["ended_at"].as_u64().unwrap_or(0);
    let (mut first, mut map_end, mut reduce_end) = (u64::MAX, 0, 0);
    for line in std::fs::read_to_string(job.join("journal.jsonl")).unwrap_or_default().lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (at, shard) = (e["at"].as_u64().unwrap_or(0), e["shard"].as_u64().unwrap_or(0));
        match e["event"].as_str() {
            Some("lease") => first = first.min(at),
            Some("committed") if shard < map_shards => map_end = map_end.max(at),
            Some("committed") => reduce_end = reduce_end.max(at),
            _ => {}
        }
    }
    let reduce_end = reduce_end.max(map_end);
    Stages {
        map: map_end.saturating_sub(first.min(map_end)),
        reduce: reduce_end - map_end,
        end: ended.saturating_sub(reduce_end),
    }
}

fn mayfly_job(task: &str, data: &Dataset, workers: usize, keys: &str, work: &Path, cache: &Path) -> (Cost, PathBuf) {
    set_aside(work);
    std::fs::create_dir_all(work).expect("work dir");
    let task = crate::component(task);
    let job = format!(
        "[job]\nname = \"bench\"\n\n[task]\npath = {task:?}\nparams = {{ mode = \"map\" }}\n\n\
         [reduce]\npath = {task:?}\nparams = {{ mode = \"reduce\" }}\n{keys}\n\
         [input]\nurl = {:?}\n\n[output]\nurl = \"out\"\n\n[state]\nurl = \"state\"\n\n\
         [provider]\nname = \"local\"\n\n[cluster]\nworkers = {workers}\ndeadline = \"30m\"\n\n\
         [sharding]\nshards_per_worker = 4\nsplit_text = true\n",
        data.dir.join("files")
    );
    std::fs::write(work.join("job.toml"), job).expect("job file");
    let mut cmd = Command::new(crate::mayfly_bin());
    cmd.args(["run", "job.toml"]).current_dir(work).env("MAYFLY_CACHE_DIR", cache);
    let cost = measure_ok("mayfly run", &mut cmd);
    (cost, work.join("out/reduce/counts.tsv"))
}

/// One `mayfly exec` of the wordcount task over one file holding all the data
/// (the sandbox without the framework). Returns its output.
pub fn exec(data: &Dataset, work: &Path, cache: &Path) -> (Cost, PathBuf) {
    set_aside(work);
    std::fs::create_dir_all(work).expect("work dir");
    let task = crate::component("tasks/wordcount");
    let mut cmd = Command::new(crate::mayfly_bin());
    cmd.arg("exec").arg(&task).arg("--input").arg(&data.all).arg("--out").arg(work.join("out"));
    cmd.env("MAYFLY_CACHE_DIR", cache);
    let cost = measure_ok("mayfly exec", &mut cmd);
    (cost, work.join("out/counts.tsv"))
}

/// A Python with Lithops: `$MAYFLY_LITHOPS_PYTHON`, else a virtual
/// environment under the target directory, made (and Lithops installed from
/// PyPI) on first use. `Err` says why there is none.
pub fn lithops_python() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MAYFLY_LITHOPS_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let venv = crate::target_dir().join("bench-lithops-venv");
    let python = venv.join("bin/python");
    let has = |p: &Path| Command::new(p).args(["-c", "import lithops"]).output().is_ok_and(|o| o.status.success());
    if has(&python) {
        return Ok(python);
    }
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() { Ok(()) } else { Err(format!("{cmd:?} failed:\n{}", text(&out))) }
    };
    eprintln!("installing Lithops {LITHOPS} from PyPI into {}", venv.display());
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", &format!("lithops=={LITHOPS}")]))?;
    Ok(python)
}

/// The Lithops version the benchmark installs.
pub const LITHOPS: &str = "3.8.0";

/// Lithops in localhost mode, `workers` worker processes, one map call per
/// batch of files (the native baseline's batches). Returns its output.
pub fn lithops(python: &Path, data: &Dataset, workers: usize, work: &Path) -> (Cost, PathBuf) {
    set_aside(work);
    std::fs::create_dir_all(work).expect("work dir");
    let batches: Vec<String> = data
        .batches(workers * 32)
        .iter()
        .map(|b| b.iter().map(|p| p.to_string_lossy().into_owned()).collect::<Vec<_>>().join("\t"))
        .collect();
    std::fs::write(work.join("batches.txt"), batches.join("\n") + "\n").expect("batches");
    let result = work.join("counts.tsv");
    let mut cmd = Command::new(python);
    cmd.arg(crate::root().join("tests/bench/lithops_wordcount.py"))
        .arg("--batches")
        .arg(work.join("batches.txt"))
        .arg("--out")
        .arg(&result)
        .arg("--workers")
        .arg(workers.to_string())
        .current_dir(work);
    let cost = measure_ok("Lithops", &mut cmd);
    (cost, result)
}

/// A process's CPU time so far (user + system), from /proc.
fn process_cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    // After the command: state is field 0, utime 11, stime 12 (clock ticks).
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    // /proc counts in USER_HZ, 100 on Linux.
    Duration::from_millis(ticks * 10)
}

fn rss_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// The master alone under simulated workers.
#[derive(Debug, Clone)]
pub struct MasterLoad {
    /// Simulated workers (each a tokio task with its own connection).
    pub workers: usize,
    /// Shards in the plan (each leased and committed once).
    pub shards: usize,
    /// How long each simulated worker "works" on a shard, between its lease
    /// and its commit.
    pub think: Duration,
    /// Leases granted and commits answered.
    pub ops: usize,
    /// From the first request to the last answer.
    pub took: Duration,
    /// Median request latency.
    pub p50: Duration,
    /// 99th percentile request latency.
    pub p99: Duration,
    /// The master's peak resident memory.
    pub peak_rss_kib: u64,
    /// The master's CPU time (user + system) while the clock ran.
    pub master_cpu: Duration,
    /// The slowest first connection (TLS handshake and one request) when
    /// every worker connects at once, before the clock starts.
    pub slowest_connect: Duration,
    /// This process's CPU time (the simulated workers') while the clock ran.
    pub sim_cpu: Duration,
    /// Requests that got no answer (each sent again), with their errors.
    pub failures: Vec<String>,
}

impl MasterLoad {
    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.took.as_secs_f64()
    }
}

/// Starts a real master process (local provider) for a plan of `shards`
/// one-object shards, and has `workers` simulated workers (tokio tasks in
/// this process, each with its own connection) lease, wait `think` (the
/// shard's work), and commit (no task runs, no outputs) until it says done.
/// The load offered is `2 * workers / think` requests per second (with
/// `think` zero, as many as the master answers: its saturation).
///
/// Raises this process's open-file limit to its hard limit first (the master
/// inherits it); panics if that leaves too few for one connection per worker.
pub fn master_load(workers: usize, shards: usize, think: Duration) -> MasterLoad {
    raise_open_files(workers);
    let dir = crate::scratch(&format!("bench-master-{workers}"));
    let layout = Layout::local(&dir.join("state"), "bench-master", &dir.join("out"));
    std::fs::create_dir_all(&layout.work).expect("state");
    std::fs::create_dir_all(dir.join("out")).expect("out");
    let token = mayfly_core::job::create_token(&layout).expect("secrets");
    let item = |i: usize| Item { object: format!("o{i}"), start: 0, len: 0, whole: true };
    let plan = Plan {
        shards: (0..shards).map(|i| Shard { id: i as u32, bytes: 0, items: vec![item(i)] }).collect(),
        target_bytes: 1,
        total_bytes: 0,
        objects: shards as u64,
    };
    let now = mayfly_model::policy::Clock::now(&mayfly_model::policy::SystemClock);
    let manifest = Manifest {
        job: "bench-master".into(),
        name: "bench".into(),
        provider: crate::local_selection(serde_json::json!({ "credential_ttl": "1h" })),
        task: dir.join("none.wasm"),
        task_sha256: String::new(),
        params: serde_json::json!({}),
        reduce: None,
        partitions: 0,
        merge: Default::default(),
        input: Location::path(&dir.join("in")),
        output: layout.output.location().clone(),
        state: layout.state.location().clone(),
        plan,
        workers: workers as u32,
        max_replacements: 0,
        limits: Default::default(),
        max_attempts: 3,
        max_failed_items: 0,
        max_storage_refusals: 20,
        storage_outage_ms: 600_000,
        isolation: Default::default(),
        read_ahead: None,
        read_ahead_memory: None,
        log_format: None,
        lease_ms: 600_000,
        idle_timeout_ms: 600_000,
        master_lost_timeout_ms: 600_000,
        refresh_margin_ms: 300_000,
        credential_ttl_ms: 3_600_000,
        created_at: now,
        expires_at: now + 1_200_000,
    };
    layout.state.write_json(keys::MANIFEST, &manifest).expect("manifest");
    let provider = ProviderHandle::select(&manifest.provider).expect("provider");
    let request = mayfly_core::job::launch_request(
        &layout,
        &manifest.provider,
        "bench-master",
        manifest.expires_at,
        &[("master".into(), Role::Master)],
    );
    let nodes = provider.launch(request).expect("launch");
    let master_info = || layout.state.read_json::<MasterInfo>(keys::MASTER).ok().flatten();
    assert!(wait_until(Duration::from_secs(30), || master_info().is_some()), "the master did not start");
    let info: MasterInfo = master_info().expect("master.json");
    let pid = crate::pid_of(&nodes[0]).to_string();
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let cpu_seen = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (peak, pid, done, cpu_seen) = (peak.clone(), pid.clone(), done.clone(), cpu_seen.clone());
        std::thread::spawn(move || {
            while let Some(rss) = rss_kib(&pid, "VmRSS") {
                peak.fetch_max(rss, Ordering::Relaxed);
                // The last reading while it lives (it exits once all is done).
                cpu_seen.fetch_max(process_cpu(&pid).as_millis() as u64, Ordering::Relaxed);
                if done.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let sim = Arc::new(Sim::new(&info, &token, think, layout.state.clone()));
    // Every simulated worker on one thread (a current-thread runtime): the
    // simulator can take at most one of the cores it shares with the master,
    // whatever the load, and a round trip has no cross-thread wake-up on the
    // client side. It costs about 25-40 µs of CPU per request here, a fifth of
    // the master's or less, so one thread keeps up; a 2-thread runtime
    // measured no better (within the runs' noise) and took a little more CPU.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the simulated workers' tokio runtime");
    let (runs, took, cpu_before, sim_cpu) = rt.block_on(async {
        // Every simulated worker connects first; the clock starts when all are in.
        let start = Arc::new(tokio::sync::Barrier::new(workers + 1));
        let tasks: Vec<_> = (0..workers)
            .map(|w| {
                // Spread over the first think time: steady state from the
                // start, not every worker's lease in the same millisecond
                // (a herd of `workers` requests that made the p99 of a
                // 4-second run; real shards do not end in step).
                let stagger = sim.think.mul_f64(w as f64 / workers as f64);
                tokio::spawn(simulated_worker(sim.clone(), w, start.clone(), stagger))
            })
            .collect();
        start.wait().await;
        let cpu_before = process_cpu(&pid);
        let sim_before = own_cpu();
        let started = Instant::now();
        let mut runs = Vec::with_capacity(workers);
        for task in tasks {
            runs.push(task.await.map_err(|e| format!("a simulated worker's task: {e}")).and_then(|r| r));
        }
        (runs, started.elapsed(), cpu_before, own_cpu().saturating_sub(sim_before))
    });
    drop(rt);
    let lost: Vec<String> = runs.iter().filter_map(|r| r.as_ref().err().cloned()).collect();
    assert!(lost.is_empty(), "{} of {workers} simulated workers failed; the first: {}", lost.len(), lost[0]);
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let master_cpu = Duration::from_millis(cpu_seen.load(Ordering::Relaxed)).saturating_sub(cpu_before);
    let runs: Vec<Run> = runs.into_iter().flatten().collect();
    let slowest_connect = runs.iter().map(|r| r.connect).max().unwrap_or_default();
    let mut lat: Vec<Duration> = Vec::with_capacity(shards * 2 + workers);
    let mut failures = Vec::new();
    for run in runs {
        lat.extend(run.latencies);
        failures.extend(run.failures);
    }
    lat.sort_unstable();
    let ops = lat.len();
    let at = |q: usize| lat.get(ops * q / 100).copied().unwrap_or_default();
    let load = MasterLoad {
        workers,
        shards,
        think,
        ops,
        took,
        p50: at(50),
        p99: at(99),
        peak_rss_kib: peak.load(Ordering::Relaxed),
        master_cpu,
        slowest_connect,
        sim_cpu,
        failures,
    };
    let _ = provider.terminate(&nodes, Duration::from_secs(2));
    // The directory stays until the next run's scratch cleanup: deleting
    // thousands of files now would slow the next measurement's file creation
    // (ext4 skips recently freed inodes one by one when it allocates).
    load
}

/// Raises this process's soft limit on open files to its hard limit, and
/// panics unless that allows one connection per simulated worker and some
/// to spare.
fn raise_open_files(workers: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let needed = (workers as u64 * 11).div_ceil(10) + 100;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit(RLIMIT_NOFILE)");
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() { hard } else { soft };
    assert!(
        limit >= needed,
        "{workers} simulated workers need about {needed} open files (a connection each), and this process may \
         open {limit} (RLIMIT_NOFILE: soft {soft}, hard {hard}); raise the hard limit (`ulimit -Hn` as root, or \
         /etc/security/limits.conf) or simulate fewer workers"
    );
}

/// How long a simulated worker waits for an answer (connection and TLS
/// handshake included) before it counts the request as failed, as the
/// blocking client's timeout.
const SIM_TIMEOUT: Duration = Duration::from_secs(60);

/// How many times a simulated worker sends a request that got no answer.
const SIM_ATTEMPTS: usize = 5;

/// What every simulated worker shares: how to reach the master, and how to
/// tell that the job has ended.
struct Sim {
    /// The master's host:port.
    addr: String,
    /// The `host` header.
    host: HeaderValue,
    /// `Bearer <token>`.
    auth: HeaderValue,
    /// When the master serves TLS: a connector trusting only the job's CA,
    /// and the name (its IP address) its certificate must carry.
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
    /// The work between a lease and its commit.
    think: Duration,
    /// Set by the first worker told the job is done.
    ended: AtomicBool,
    /// The job's state (its final.json says the job is over).
    state: mayfly_data::store::Store,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").field("addr", &self.addr).field("tls", &self.tls.is_some()).finish_non_exhaustive()
    }
}

impl Sim {
    /// The settings for the master `info` describes, as
    /// [`mayfly_core::api::Client::connect`] makes them: TLS trusting only the
    /// job's CA when it publishes one, else plain HTTP (on loopback only).
    fn new(info: &MasterInfo, token: &str, think: Duration, state: mayfly_data::store::Store) -> Sim {
        use rustls::pki_types::pem::PemObject;
        let host_ip = info.addr.rsplit_once(':').map_or(info.addr.as_str(), |(h, _)| h).trim_matches(['[', ']']);
        let tls = match &info.ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots.add(cert.expect("the job's CA certificate (PEM)")).expect("the job's CA certificate");
                }
                assert!(!roots.is_empty(), "master.json's CA holds no certificate");
                let config =
                    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                        .with_safe_default_protocol_versions()
                        .expect("TLS versions")
                        .with_root_certificates(roots)
                        .with_no_client_auth();
                let name = rustls::pki_types::ServerName::try_from(host_ip.to_owned())
                    .unwrap_or_else(|e| panic!("the master's address {}: {e}", info.addr));
                Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
            }
            None => {
                // As the worker's client: the token never crosses a network in clear.
                let ip = host_ip.parse::<std::net::IpAddr>();
                assert!(ip.is_ok_and(|ip| ip.is_loopback()), "the master at {} serves no TLS off loopback", info.addr);
                None
            }
        };
        Sim {
            addr: info.addr.clone(),
            host: HeaderValue::from_str(&info.addr).expect("the master's address as a host header"),
            auth: HeaderValue::from_str(&format!("Bearer {token}")).expect("the token as a header"),
            tls,
            think,
            ended: AtomicBool::new(false),
            state,
        }
    }

    /// A fresh connection to the master (TCP, TLS, HTTP/1.1).
    async fn connect(&self) -> Result<Conn, CallError> {
        let unreachable = |what: &str, e: &dyn std::fmt::Display| CallError::Unreachable(format!("{what}: {e}"));
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(&self.addr).await.map_err(|e| unreachable("connecting", &e))?;
            // Small requests and answers: no Nagle delay (as the blocking client).
            tcp.set_nodelay(true).map_err(|e| unreachable("TCP_NODELAY", &e))?;
            let io: Box<dyn Stream> = match &self.tls {
                Some((connector, name)) => {
                    Box::new(connector.connect(name.clone(), tcp).await.map_err(|e| unreachable("TLS handshake", &e))?)
                }
                None => Box::new(tcp),
            };
            let (send, driver) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(|e| unreachable("HTTP handshake", &e))?;
            Ok(Conn { send, driver: Box::pin(driver) })
        };
        tokio::time::timeout(SIM_TIMEOUT, connect).await.unwrap_or_else(|_| Err(no_answer()))
    }

    /// Whether the job is over (a worker was told, or final.json is written):
    /// the master stops answering as it ends, which is no failure.
    fn over(&self) -> bool {
        self.ended.load(Ordering::Relaxed) || self.state.exists(keys::FINAL)
    }

    /// `POST path` with `body` on `conn` (a fresh connection when there is
    /// none), sent again on a fresh connection when it gets no answer (each
    /// such failure noted in `failures`), as a worker does. The answer and how
    /// long its attempt took; `None` when the master refused it, the job is
    /// over, or no attempt got an answer.
    async fn post<T>(
        &self,
        conn: &mut Option<Conn>,
        path: &str,
        body: Bytes,
        decode: fn(&[u8]) -> serde_json::Result<T>,
        failures: &mut Vec<String>,
    ) -> Option<(T, Duration)> {
        for _ in 0..SIM_ATTEMPTS {
            let t = Instant::now();
            let answer = async {
                let c = match conn.take() {
                    Some(c) => c,
                    None => self.connect().await?,
                };
                let answer = conn.insert(c).call(self, Method::POST, path, body.clone(), decode).await;
                if let Err(CallError::Unreachable(_)) = answer {
                    // That connection is done for: the next attempt makes a new one.
                    *conn = None;
                }
                answer
            };
            match answer.await {
                Ok(answer) => return Some((answer, t.elapsed())),
                Err(CallError::Refused { .. }) => return None,
                Err(_) if self.over() => return None,
                Err(e) => failures.push(e.to_string()),
            }
        }
        None
    }
}

/// A connection's byte stream: TCP, or TLS over TCP.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// What moves a connection's bytes (hyper's side of it).
type Driver = hyper::client::conn::http1::Connection<hyper_util::rt::TokioIo<Box<dyn Stream>>, Full<Bytes>>;

/// One keep-alive HTTP/1.1 connection to the master, driven by the task that
/// holds it (no task of its own).
struct Conn {
    /// Sends requests.
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// Moves the bytes: polled while a request is in flight.
    driver: Pin<Box<Driver>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

impl Conn {
    /// One request and its answer, decoded with `decode` when it is a 200 (as
    /// [`mayfly_core::api::Client`] answers: another status is a refusal, no
    /// answer or an undecodable one is [`CallError::Unreachable`]).
    async fn call<T>(
        &mut self,
        sim: &Sim,
        method: Method,
        path: &str,
        body: Bytes,
        decode: fn(&[u8]) -> serde_json::Result<T>,
    ) -> Result<T, CallError> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &sim.host)
            .header(header::AUTHORIZATION, &sim.auth);
        if !body.is_empty() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request =
            request.body(Full::new(body)).map_err(|e| CallError::Unreachable(format!("building the request: {e}")))?;
        let Conn { send, driver } = self;
        let exchange = async {
            send.ready().await?;
            let response = send.send_request(request).await?;
            let status = response.status();
            Ok::<_, hyper::Error>((status, response.into_body().collect().await?.to_bytes()))
        };
        let answer = async {
            tokio::select! {
                biased;
                answer = exchange => answer.map_err(|e| CallError::Unreachable(e.to_string())),
                closed = driver.as_mut() => Err(CallError::Unreachable(match closed {
                    Ok(()) => "the master closed the connection".to_owned(),
                    Err(e) => e.to_string(),
                })),
            }
        };
        let (status, body) = tokio::time::timeout(SIM_TIMEOUT, answer).await.unwrap_or_else(|_| Err(no_answer()))?;
        if status != hyper::StatusCode::OK {
            return Err(CallError::Refused { status: status.as_u16(), message: String::from_utf8_lossy(&body).into() });
        }
        decode(&body).map_err(|e| CallError::Unreachable(format!("bad answer: {e}")))
    }
}

/// A request or a connection that got no answer within [`SIM_TIMEOUT`].
fn no_answer() -> CallError {
    CallError::Unreachable(format!("no answer in {} s", SIM_TIMEOUT.as_secs()))
}

/// What one simulated worker measured.
#[derive(Debug)]
struct Run {
    /// Its first connection and status request, before the clock.
    connect: Duration,
    /// Each granted lease's and each commit's round trip.
    latencies: Vec<Duration>,
    /// The requests that got no answer (each sent again).
    failures: Vec<String>,
}

/// One simulated worker: connects and asks for the status before the clock
/// starts (the figures are the steady state, not the connection storm), waits
/// at `start` for all the others, then leases, works `think` and commits
/// until the master says done or refuses it. `Err` when it could not connect.
/// This process's CPU time so far (user + system).
fn own_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(Duration::ZERO, |u| {
        let tv = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
        tv(u.user_time()) + tv(u.system_time())
    })
}

async fn simulated_worker(
    sim: Arc<Sim>,
    w: usize,
    start: Arc<tokio::sync::Barrier>,
    stagger: Duration,
) -> Result<Run, String> {
    let t = Instant::now();
    let first = async {
        let mut conn = sim.connect().await?;
        conn.call(&sim, Method::GET, "/v1/status", Bytes::new(), |b| serde_json::from_slice::<Status>(b)).await?;
        Ok::<_, CallError>(conn)
    };
    let first = first.await;
    let mut run = Run { connect: t.elapsed(), latencies: Vec::new(), failures: Vec::new() };
    start.wait().await;
    let mut conn = Some(first.map_err(|e| format!("sim-{w}: the first connection and status request: {e}"))?);
    if !stagger.is_zero() {
        tokio::time::sleep(stagger).await;
    }
    let worker = format!("sim-{w}");
    let encoding = |what: &str, e: serde_json::Error| format!("{worker}: encoding a {what}: {e}");
    loop {
        let lease = LeaseRequest { worker: worker.clone(), credential_expires_at: u64::MAX };
        let body = serde_json::to_vec(&lease).map_err(|e| encoding("lease request", e))?;
        let reply =
            sim.post(&mut conn, "/v1/lease", body.into(), |b| serde_json::from_slice(b), &mut run.failures).await;
        match reply {
            Some((LeaseReply::Lease { shard, token, .. }, took)) => {
                // Timed: granted leases and commits ("wait" is not counted).
                run.latencies.push(took);
                if !sim.think.is_zero() {
                    tokio::time::sleep(sim.think).await;
                }
                let commit = CommitRequest { shard, token, outputs: vec![] };
                let body = serde_json::to_vec(&commit).map_err(|e| encoding("commit request", e))?;
                let decode = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b);
                let answer = sim.post(&mut conn, "/v1/commit", body.into(), decode, &mut run.failures).await;
                let Some((_, took)) = answer else { break };
                run.latencies.push(took);
            }
            // Nothing to lease now: ask again soon (sooner than the master's `retry_ms`).
            Some((LeaseReply::Wait { .. }, _)) => tokio::time::sleep(Duration::from_millis(5)).await,
            Some((LeaseReply::Done, _)) => {
                sim.ended.store(true, Ordering::Relaxed);
                break;
            }
            _ => break,
        }
    }
    Ok(run)
}

/// What [`read_ahead`] measured: items per second, and the most bytes one
/// shard's read-ahead held at once.
#[derive(Debug, Clone, Copy)]
pub struct ReadRate {
    /// Items the workers processed.
    pub items: usize,
    /// Their wall time, from the first shard's start to the last's finish.
    pub wall: Duration,
    /// The largest read-ahead peak of any shard attempt.
    pub peak_held: u64,
}

impl ReadRate {
    /// Items per second.
    pub fn per_second(&self) -> f64 {
        self.items as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// A worker's read path over `files` (names and sizes under `input`):
/// `workers` threads take the files' shards (`shards_per_worker` each, as the
/// planner makes them) from one queue and run each through one instance of
/// the wordcount map, as a worker does: the worker's read-ahead
/// (`read_ahead` requests in flight, 0 = none; 64 MiB) over `input`, one
/// `start`, an `item` call per file, one `finish`. No master or lease: only
/// the store, the read-ahead and the sandbox. Every item's bytes must reach
/// the task (checked).
pub fn read_ahead(
    input: &mayfly_data::store::Store,
    files: &[(String, u64)],
    workers: usize,
    shards_per_worker: usize,
    read_ahead: u32,
    staging: &Path,
) -> ReadRate {
    use mayfly_core::host::{Limits, ShardInfo, ShardStart};
    use mayfly_data::readahead::ReadAheadConfig;

    // A run cut short (a panic, a kill) leaves its shards' outputs here, and
    // outputs are created new: start from an empty directory.
    set_aside(staging);
    let task = crate::task("tasks/wordcount");
    let items: Vec<Item> =
        files.iter().map(|(name, len)| Item { object: name.clone(), start: 0, len: *len, whole: true }).collect();
    let per_shard = items.len().div_ceil(workers * shards_per_worker).max(1);
    let queue: Mutex<Vec<(usize, Vec<Item>)>> =
        Mutex::new(items.chunks(per_shard).map(<[Item]>::to_vec).enumerate().rev().collect());
    let config = ReadAheadConfig { requests: read_ahead, memory: 64 << 20 };
    let (read, peak) = (AtomicU64::new(0), AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio");
                while let Some((shard, items)) = queue.lock().unwrap().pop() {
                    let mut ahead = input.read_ahead(items.clone(), config);
                    let start = ShardStart {
                        info: ShardInfo {
                            job: "bench".into(),
                            shard: shard as u32,
                            attempt: 1,
                            items: items.len() as u32,
                        },
                        params: Arc::from(r#"{"mode":"map"}"#),
                        limits: Limits::default(),
                        staging: staging.join(format!("{shard:06}")),
                        shard_key: mayfly_core::job::shard_key(shard as u32),
                        partitions: 1,
                    };
                    let (mut session, call) = rt.block_on(crate::runtime().start(&task, start));
                    call.result.unwrap_or_else(|f| panic!("shard {shard}: start: {f}"));
                    for (index, item) in items.iter().enumerate() {
                        let source = ahead.take(index).unwrap_or_else(|e| panic!("reading {}: {e}", item.object));
                        let call = rt.block_on(session.item(source, None));
                        call.result.unwrap_or_else(|f| panic!("{}: {f}", item.object));
                        assert_eq!(call.input_read, item.len, "{}: the task did not get every byte", item.object);
                        read.fetch_add(call.input_read, Ordering::Relaxed);
                    }
                    let outcome = rt.block_on(session.finish());
                    outcome.result.unwrap_or_else(|f| panic!("shard {shard}: finish: {f}"));
                    assert_eq!(outcome.outputs.len(), 1, "shard {shard}: one counts.tsv");
                    peak.fetch_max(ahead.peak(), Ordering::Relaxed);
                }
            });
        }
    });
    let wall = started.elapsed();
    let _ = std::fs::remove_dir_all(staging);
    assert_eq!(read.into_inner(), files.iter().map(|f| f.1).sum::<u64>(), "every byte of every item was read");
    ReadRate { items: files.len(), wall, peak_held: peak.into_inner() }
}
