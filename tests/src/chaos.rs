//! The chaos runner: real jobs on the local provider while a seeded schedule
//! injects faults, each run checked against mayfly's promise: every input
//! committed exactly once (the outputs equal a fault-free run's), nothing
//! partial visible, no process of the job left, every node's log readable,
//! and the job token in no log or output.
//!
//! A seed fixes the run's schedule exactly: which faults, when (after the
//! first lease), on which node (by rank among the live workers), for how long,
//! and the task's pace. What the operating system does in between (which
//! shard a worker holds when the fault lands) is not the seed's to fix.
//!
//! Faults (their names are the report's):
//! - `kill-workers`: SIGKILL of 1, 2, or all but one of the live workers;
//! - `kill-master`: SIGKILL of the master; the runner then runs `mayfly resume`;
//! - `pause`: SIGSTOP of a worker for longer than its lease, then SIGCONT (a zombie);
//! - `net-cut`: one worker cut off the master ([`Proxy`]: the master advertises
//!   a loopback proxy, which knows each connection's process from `/proc`);
//! - `issuer-down`: the local provider's credential issuer fails (its key is
//!   swapped for a directory with `renameat2(RENAME_EXCHANGE)`, atomically);
//! - `unwritable`: the commit log, the outputs, the journal or the state
//!   directory briefly unwritable (`chattr +i`: the tests run as root, whom
//!   permissions do not stop);
//! - `deadline`: the job's deadline lands mid-job; then only what was committed
//!   must be there, exactly once.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::XorShift;
use crate::cluster::{TestJob, wait_until};

/// Every fault kind, in the order seeds cycle through them: seed `s`'s first
/// fault is `KINDS[s % 7]`, so any 7 consecutive seeds inject each kind.
pub const KINDS: [&str; 7] =
    ["kill-workers", "kill-master", "pause", "net-cut", "issuer-down", "unwritable", "deadline"];

/// Workers per chaos job.
pub const WORKERS: usize = 4;
/// Input files per chaos job (one shard each).
pub const FILES: usize = 40;
/// The lease time of a chaos job.
const LEASE_MS: u64 = 1000;

/// What `unwritable` makes unwritable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `out/_mayfly/commits.log`: no commit can be recorded.
    Commits,
    /// `out/map`: no output can be published.
    Outputs,
    /// The state's `journal.jsonl`: the master cannot append.
    Journal,
    /// The job's state directory and everything the nodes write in it: the
    /// journal and every node's log.
    State,
}

impl Target {
    fn paths(self, job: &TestJob) -> Vec<PathBuf> {
        match self {
            Target::Commits => vec![job.out().join("_mayfly/commits.log")],
            Target::Outputs => vec![job.out().join("map")],
            Target::Journal => vec![job.state().join("journal.jsonl")],
            Target::State => {
                let logs = std::fs::read_dir(job.state().join("logs")).into_iter().flatten().flatten();
                let mut paths = vec![job.state(), job.state().join("journal.jsonl")];
                paths.extend(logs.map(|e| e.path()));
                paths
            }
        }
    }
}

/// One fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// SIGKILL `count` live workers at once (never the last one).
    KillWorkers { count: usize },
    /// SIGKILL the master; the runner resumes the job.
    KillMaster,
    /// SIGSTOP a worker for `ms`, then SIGCONT.
    Pause { ms: u64 },
    /// Cut a worker off the master for `ms`.
    NetCut { ms: u64 },
    /// The credential issuer fails for `ms`.
    IssuerDown { ms: u64 },
    /// `target` unwritable for `ms`.
    Unwritable { target: Target, ms: u64 },
}

impl Fault {
    /// Its kind, one of [`KINDS`].
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::KillWorkers { .. } => "kill-workers",
            Fault::KillMaster => "kill-master",
            Fault::Pause { .. } => "pause",
            Fault::NetCut { .. } => "net-cut",
            Fault::IssuerDown { .. } => "issuer-down",
            Fault::Unwritable { .. } => "unwritable",
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::KillWorkers { count } => write!(f, "kill-workers({count})"),
            Fault::KillMaster => write!(f, "kill-master"),
            Fault::Pause { ms } | Fault::NetCut { ms } | Fault::IssuerDown { ms } => {
                write!(f, "{}({:.1}s)", self.kind(), *ms as f64 / 1000.0)
            }
            Fault::Unwritable { target, ms } => write!(f, "unwritable({target:?}, {:.1}s)", *ms as f64 / 1000.0),
        }
    }
}

/// A fault and when it lands, in ms after the job's first lease; `pick`
/// chooses its victim among the live workers (sorted by name).
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// When.
    pub at_ms: u64,
    /// What.
    pub fault: Fault,
    /// Which worker (an index into the live ones, modulo their number).
    pub pick: u64,
}

/// A run's plan, all of it from its seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// The seed.
    pub seed: u64,
    /// How long the task sleeps per item.
    pub delay_ms: u64,
    /// The job's deadline when it is meant to land mid-job.
    pub deadline_ms: Option<u64>,
    /// The faults, in time order.
    pub faults: Vec<Planned>,
}

impl Schedule {
    /// The schedule of `seed`.
    pub fn from_seed(seed: u64) -> Schedule {
        let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03);
        for _ in 0..8 {
            rng.next();
        }
        let mut below = |n: u64| rng.next() % n;
        let delay_ms = 150 + below(150);
        // How long the job would take without faults, roughly.
        let span = FILES as u64 * delay_ms / WORKERS as u64;
        let first = KINDS[(seed % KINDS.len() as u64) as usize];
        let mut kinds = vec![first];
        for _ in 0..below(3) {
            kinds.push(KINDS[below(KINDS.len() as u64 - 1) as usize]);
        }
        let mut deadline_ms = None;
        let mut faults = Vec::new();
        for kind in kinds {
            let fault = match kind {
                "kill-workers" => Fault::KillWorkers { count: [1, 2, WORKERS - 1][below(3) as usize] },
                "kill-master" => Fault::KillMaster,
                "pause" => Fault::Pause { ms: 2 * LEASE_MS + below(1500) },
                "net-cut" => Fault::NetCut { ms: 1000 + below(2500) },
                // Longer than the nodes' 2 s between refreshes (4 s credentials,
                // renewed at half their life): each node meets it.
                "issuer-down" => Fault::IssuerDown { ms: 2500 + below(2000) },
                "unwritable" => {
                    let target = [Target::Commits, Target::Outputs, Target::Journal, Target::State][below(4) as usize];
                    Fault::Unwritable { target, ms: 500 + below(2000) }
                }
                _ => {
                    // From the job's submission: its start takes a second or so.
                    deadline_ms = Some(1500 + below(span));
                    continue;
                }
            };
            // In the first 60 % of the work, so that most faults meet leased shards.
            faults.push(Planned { at_ms: 100 + below(span * 6 / 10), fault, pick: below(1000) });
        }
        faults.sort_by_key(|p| p.at_ms);
        Schedule { seed, delay_ms, deadline_ms, faults }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task {} ms/item", self.delay_ms)?;
        if let Some(d) = self.deadline_ms {
            write!(f, ", deadline {:.1}s", d as f64 / 1000.0)?;
        }
        for p in &self.faults {
            write!(f, ", {}@{:.1}s", p.fault, p.at_ms as f64 / 1000.0)?;
        }
        Ok(())
    }
}

/// The inputs of every chaos job: [`FILES`] files of distinct content, 1 to
/// 4 KiB, the same for every seed (so a fault-free run is their reference).
pub fn dataset() -> Vec<(String, Vec<u8>)> {
    let mut rng = XorShift(0x5EED_F11E);
    (0..FILES)
        .map(|i| {
            let size = 1024 + (rng.next() % 3072) as usize;
            let line = format!("chaos input {i}: {}\n", rng.next());
            (format!("f{i:03}.txt"), line.bytes().cycle().take(size).collect())
        })
        .collect()
}

/// The map outputs of a job: path (under `out/map`) to sha256, plus anything
/// else found there.
pub fn output_tree(job: &TestJob) -> BTreeMap<String, String> {
    job.map_outputs()
        .into_iter()
        .map(|p| {
            let digest = std::fs::read(job.out().join("map").join(&p))
                .map(|b| hex::encode(Sha256::digest(&b)))
                .unwrap_or_else(|e| format!("unreadable: {e}"));
            (p, digest)
        })
        .collect()
}

// ----------------------------------------------------------------- the proxy

/// A TCP proxy on loopback in front of the master that can cut one process's
/// connections: it finds the process behind each connection in `/proc` (the
/// client socket's inode in `/proc/net/tcp`, then the process holding it).
pub struct Proxy {
    /// Where workers are told to connect.
    pub port: u16,
    /// Where the master listens.
    pub upstream: u16,
    inner: Arc<ProxyInner>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("port", &self.port).field("upstream", &self.upstream).finish()
    }
}

struct ProxyInner {
    cut: Mutex<HashSet<u32>>,
    conns: Mutex<Vec<(Option<u32>, TcpStream)>>,
    stop: AtomicBool,
    /// Connections refused or dropped because their process was cut off.
    refused: std::sync::atomic::AtomicU64,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl Proxy {
    /// Starts a proxy to a master that will listen on a free port.
    pub fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listens");
        let port = listener.local_addr().unwrap().port();
        let upstream = free_port();
        let inner = Arc::new(ProxyInner {
            cut: Mutex::new(HashSet::new()),
            conns: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            refused: Default::default(),
        });
        let shared = inner.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let shared = shared.clone();
                std::thread::spawn(move || forward(client, port, upstream, &shared));
            }
        });
        Proxy { port, upstream, inner }
    }

    /// Cuts process `pid` off: its open connections are shut, new ones refused.
    pub fn cut(&self, pid: u32) {
        self.inner.cut.lock().unwrap().insert(pid);
        let mut conns = self.inner.conns.lock().unwrap();
        conns.retain(|(p, s)| {
            if *p == Some(pid) {
                let _ = s.shutdown(Shutdown::Both);
                false
            } else {
                // Prune connections already closed.
                s.peer_addr().is_ok()
            }
        });
    }

    /// Lets `pid` through again.
    pub fn restore(&self, pid: u32) {
        self.inner.cut.lock().unwrap().remove(&pid);
    }

    /// How many connections were refused or shut because of a cut.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for (_, s) in self.inner.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn forward(client: TcpStream, port: u16, upstream: u16, shared: &ProxyInner) {
    let peer = client.peer_addr().map(|a| a.port()).unwrap_or(0);
    let pid = process_of_connection(peer, port);
    if pid.is_some_and(|p| shared.cut.lock().unwrap().contains(&p)) {
        shared.refused.fetch_add(1, Ordering::Relaxed);
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { return };
    {
        let mut conns = shared.conns.lock().unwrap();
        if let (Ok(a), Ok(b)) = (client.try_clone(), server.try_clone()) {
            conns.push((pid, a));
            conns.push((pid, b));
        }
    }
    let up = std::thread::spawn(move || pipe(c2, s2));
    pipe(server, client);
    let _ = up.join();
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// The process holding the client end of a loopback connection from
/// `client_port` to `server_port`.
fn process_of_connection(client_port: u16, server_port: u16) -> Option<u32> {
    for _ in 0..20 {
        if let Some(inode) = socket_inode(client_port, server_port) {
            let link = format!("socket:[{inode}]");
            for entry in std::fs::read_dir("/proc").ok()?.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
                let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
                for fd in fds.flatten() {
                    if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == link.as_str()) {
                        return Some(pid);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

fn socket_inode(local_port: u16, remote_port: u16) -> Option<String> {
    let table = std::fs::File::open("/proc/net/tcp").ok()?;
    let (local, remote) = (format!("0100007F:{local_port:04X}"), format!("0100007F:{remote_port:04X}"));
    std::io::BufReader::new(table).lines().map_while(Result::ok).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.len() > 9 && cols[1] == local && cols[2] == remote && cols[9] != "0").then(|| cols[9].to_owned())
    })
}

// ----------------------------------------------------------------- the runner

/// What one run found.
#[derive(Debug)]
pub struct RunReport {
    /// Its schedule.
    pub schedule: Schedule,
    /// Faults injected, by kind, with what each did.
    pub injected: Vec<(&'static str, String)>,
    /// Faults not injected (their moment had passed, or nothing to act on).
    pub skipped: Vec<String>,
    /// Nodes the faults killed, and how many times.
    pub killed: BTreeMap<String, usize>,
    /// Every broken promise.
    pub problems: Vec<String>,
    /// Inputs with no output in a job that completed (or whose committed
    /// shards' outputs are missing).
    pub lost: usize,
    /// Outputs visible more than once, or outputs no input explains.
    pub duplicates: usize,
    /// Processes of the job alive past the bound.
    pub left: usize,
    /// Times the master was resumed.
    pub resumes: u32,
    /// How the job ended (`final.json`'s reason).
    pub ended: String,
    /// Wall time.
    pub elapsed: Duration,
    /// The job's directory (kept when the run failed).
    pub dir: PathBuf,
    /// Its map outputs: path to sha256.
    pub outputs: BTreeMap<String, String>,
}

impl RunReport {
    /// Whether every promise held.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Paths made unwritable (`chattr +i`) until this is dropped.
#[derive(Debug)]
pub struct Immutable(Vec<PathBuf>);

impl Immutable {
    /// Makes `paths` unwritable, even to root.
    pub fn set(paths: &[PathBuf]) -> Result<Immutable, String> {
        let out = Command::new("chattr").arg("+i").args(paths).output().map_err(|e| format!("chattr: {e}"))?;
        let lock = Immutable(paths.to_vec());
        if !out.status.success() {
            return Err(format!("chattr +i: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(lock)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").args(&self.0).status();
    }
}

/// The local provider's credential issuer down until this is dropped: its
/// key swapped with a directory, and back.
#[derive(Debug)]
pub struct IssuerDown {
    key: PathBuf,
    aside: PathBuf,
}

impl IssuerDown {
    /// Takes the issuer of the job whose state is `state` down.
    pub fn set(state: &Path) -> Result<IssuerDown, String> {
        let key = state.join("secret/issuer.key");
        if !key.is_file() {
            return Err(if key.is_dir() { "the issuer is already down" } else { "no issuer key yet" }.into());
        }
        let aside = state.join("secret/issuer.down");
        std::fs::create_dir_all(&aside).map_err(|e| format!("{}: {e}", aside.display()))?;
        exchange(&key, &aside)?;
        Ok(IssuerDown { key, aside })
    }
}

impl Drop for IssuerDown {
    fn drop(&mut self) {
        if exchange(&self.key, &self.aside).is_ok() {
            let _ = std::fs::remove_dir(&self.aside);
        }
    }
}

fn exchange(a: &Path, b: &Path) -> Result<(), String> {
    nix::fcntl::renameat2(nix::fcntl::AT_FDCWD, a, nix::fcntl::AT_FDCWD, b, nix::fcntl::RenameFlags::RENAME_EXCHANGE)
        .map_err(|e| format!("exchanging {} and {}: {e}", a.display(), b.display()))
}

/// A node's process, if it is still that node.
fn live_pid(job: &TestJob, node: &str) -> Option<u32> {
    job.nodes()
        .into_iter()
        .find(|n| n.node == node)
        .filter(|n| mayfly_provider_local::id_alive(&n.id))
        .map(|n| crate::pid_of(&n))
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).is_ok()
}

fn live_workers(job: &TestJob) -> Vec<(String, u32)> {
    let mut workers: Vec<(String, u32)> = job
        .nodes()
        .into_iter()
        .filter(|n| n.node.starts_with("worker-") && mayfly_provider_local::id_alive(&n.id))
        .map(|n| (n.node.clone(), crate::pid_of(&n)))
        .collect();
    workers.sort();
    workers
}

/// An undo waiting for its moment.
enum Undo {
    /// Continues a stopped worker; what follows is for `was_committing`:
    /// the worker, the shard it held, the master's log lines then, and the
    /// fault's line in `injected`.
    Continue {
        pid: u32,
        worker: String,
        shard: String,
        from: usize,
        line: String,
    },
    Restore(u32),
    Issuer(IssuerDown),
    Writable(Immutable),
    /// Nothing to undo for killed workers; what follows is for
    /// [`Taken::moot`]: what each held as it went, and the fault's line in
    /// `injected`.
    Judge {
        taken: Vec<Taken>,
        line: String,
    },
}

impl Undo {
    fn run(self, proxy: &Proxy) {
        match self {
            Undo::Continue { pid, .. } => {
                signal(pid, nix::sys::signal::Signal::SIGCONT);
            }
            Undo::Restore(pid) => proxy.restore(pid),
            Undo::Issuer(down) => drop(down),
            Undo::Writable(lock) => drop(lock),
            Undo::Judge { .. } => {}
        }
    }
}

/// The shard `worker` holds a lease on, by the master's log `log` (its last
/// lease not followed by that shard's commit), and how many lines the log had.
pub fn held_shard(log: &str, worker: &str) -> Option<(String, usize)> {
    let lines: Vec<&str> = log.lines().collect();
    let leased = format!(" leased to {worker}");
    let at = lines.iter().rposition(|l| l.ends_with(&leased))?;
    let shard = lines[at].split("shard ").nth(1).and_then(|r| r.split(' ').next()).unwrap_or("?").to_owned();
    let committed = format!("shard {shard} committed");
    (!lines[at + 1..].iter().any(|l| l.contains(&committed))).then_some((shard, lines.len()))
}

/// Whether a worker stopped while the master's log showed it holding `shard`
/// (at line `from`) was committing it: the commit was on its way when it was
/// stopped, so its lease could not expire. Asked when it is continued.
fn was_committing(job: &TestJob, worker: &str, shard: &str, from: usize) -> bool {
    let log = job.log("master");
    let after: Vec<&str> = log.lines().skip(from).collect();
    let expired = format!("worker {worker} stopped heartbeating");
    let committed = format!("shard {shard} committed");
    !after.iter().any(|l| l.contains(&expired)) && after.iter().any(|l| l.contains(&committed))
}

/// Kills (SIGKILL) `n` workers, those holding a lease first (the `pick`th of
/// them, then the next), each with what it held by the master's log as it
/// went. A worker killed between two shards, with no work left for a
/// replacement, would leave no trace: so one holder at least, or none killed.
fn kill_holders(job: &TestJob, workers: &[(String, u32)], n: usize, pick: u64) -> Result<Vec<Taken>, NotInjected> {
    for _ in 0..8 {
        let log = job.log("master");
        let holds = |(w, _): &&(String, u32)| held_shard(&log, w).is_some();
        let holders: Vec<&(String, u32)> = workers.iter().filter(holds).collect();
        let others = workers.iter().filter(|w| !holds(w));
        if holders.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let first = (pick % holders.len() as u64) as usize;
        let order = holders[first..].iter().copied().chain(holders[..first].iter().copied()).chain(others);
        let mut taken = Vec::new();
        for (worker, pid) in order.take(n) {
            let held = Taken::now(&log, worker).ok();
            if signal(*pid, nix::sys::signal::Signal::SIGKILL) {
                taken.push(held.unwrap_or(Taken { worker: worker.clone(), shard: String::new(), lines: 0 }));
            }
        }
        return match taken.is_empty() {
            true => Err(NotInjected::Moot("the workers had ended".into())),
            false => Ok(taken),
        };
    }
    Err(NotInjected::Moot("no worker was found holding a lease".into()))
}

/// Stops (SIGSTOP) a worker that holds a lease, chosen by `pick` among those
/// that do: its pid, name, shard, and the master's log lines once it stood
/// still. A worker stopped between two shards, or as its commit was on its
/// way, would miss nothing, so the shard must still be uncommitted a moment
/// after the stop; otherwise it is continued and another try made.
fn stop_a_holder(
    job: &TestJob,
    workers: &[(String, u32)],
    pick: u64,
) -> Result<(u32, String, String, usize), NotInjected> {
    for _ in 0..8 {
        let holders: Vec<&(String, u32)> =
            workers.iter().filter(|(w, _)| held_shard(&job.log("master"), w).is_some()).collect();
        if holders.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let (worker, pid) = holders[(pick % holders.len() as u64) as usize];
        if !signal(*pid, nix::sys::signal::Signal::SIGSTOP) {
            continue;
        }
        std::thread::sleep(Duration::from_millis(150));
        match held_shard(&job.log("master"), worker) {
            Some((shard, from)) => return Ok((*pid, worker.clone(), shard, from)),
            None => {
                signal(*pid, nix::sys::signal::Signal::SIGCONT);
            }
        }
    }
    Err(NotInjected::Moot("no worker was found holding a lease it was not committing".into()))
}

/// Injects the schedule's faults from `t0`, until `stop`; undoes every
/// outstanding fault before it returns.
fn inject(job: &TestJob, schedule: &Schedule, t0: Instant, proxy: &Proxy, stop: &AtomicBool) -> Injected {
    let (mut injected, mut skipped, mut broken) = (Vec::new(), Vec::new(), Vec::new());
    let mut killed: BTreeMap<String, usize> = BTreeMap::new();
    let mut undos: Vec<(Instant, Undo)> = Vec::new();
    let mut next = 0;
    while !stop.load(Ordering::Relaxed) && (next < schedule.faults.len() || !undos.is_empty()) {
        let now = Instant::now();
        // Undo what is due.
        let (due, later): (Vec<_>, Vec<_>) = undos.into_iter().partition(|(at, _)| *at <= now);
        undos = later;
        for (_, undo) in due {
            settle(job, undo, proxy, &mut injected, &mut skipped);
        }
        if let Some(p) = schedule.faults.get(next)
            && now >= t0 + Duration::from_millis(p.at_ms)
        {
            next += 1;
            let workers = live_workers(job);
            let victim = (!workers.is_empty()).then(|| workers[(p.pick % workers.len() as u64) as usize].clone());
            let until = |ms: u64| Instant::now() + Duration::from_millis(ms);
            let done: Result<String, NotInjected> = match &p.fault {
                Fault::KillWorkers { count } => {
                    let n = (*count).min(workers.len().saturating_sub(1));
                    if n == 0 {
                        Err(NotInjected::Moot("fewer than two workers alive".into()))
                    } else {
                        kill_holders(job, &workers, n, p.pick).map(|taken| {
                            let names = taken.iter().map(|t| t.worker.as_str()).collect::<Vec<_>>().join(" ");
                            let line = format!("{}: {names}", p.fault);
                            for t in &taken {
                                *killed.entry(t.worker.clone()).or_default() += 1;
                            }
                            // Judged once the master has had time to see it.
                            undos.push((until(3 * LEASE_MS), Undo::Judge { taken, line }));
                            names
                        })
                    }
                }
                Fault::KillMaster => match live_pid(job, "master") {
                    Some(pid) if signal(pid, nix::sys::signal::Signal::SIGKILL) => {
                        *killed.entry("master".into()).or_default() += 1;
                        Ok(format!("pid {pid}"))
                    }
                    _ => Err(NotInjected::Moot("no master running".into())),
                },
                Fault::Pause { ms } => stop_a_holder(job, &workers, p.pick).map(|(pid, worker, shard, from)| {
                    let line = format!("{}: {worker}", p.fault);
                    undos.push((until(*ms), Undo::Continue { pid, worker: worker.clone(), shard, from, line }));
                    worker
                }),
                Fault::NetCut { ms } => match victim {
                    Some((name, pid)) => {
                        proxy.cut(pid);
                        undos.push((until(*ms), Undo::Restore(pid)));
                        Ok(name)
                    }
                    None => Err(NotInjected::Moot("no worker running".into())),
                },
                Fault::IssuerDown { ms } => match job.state().join("secret/issuer.key") {
                    key if key.is_dir() => {
                        Err(NotInjected::Moot("the issuer is already down (an earlier fault)".into()))
                    }
                    key if !key.exists() => Err(NotInjected::Moot("no issuer key yet".into())),
                    _ => IssuerDown::set(&job.state())
                        .map(|down| {
                            undos.push((until(*ms), Undo::Issuer(down)));
                            "issuer key swapped for a directory".to_owned()
                        })
                        .map_err(NotInjected::Broken),
                },
                Fault::Unwritable { target, ms } => {
                    let paths = target.paths(job);
                    match paths.iter().find(|p| !p.exists()) {
                        Some(missing) => Err(NotInjected::Moot(format!("{} does not exist yet", missing.display()))),
                        None => Immutable::set(&paths)
                            .map(|lock| {
                                undos.push((until(*ms), Undo::Writable(lock)));
                                let shown: Vec<String> = paths
                                    .iter()
                                    .map(|p| p.strip_prefix(&job.dir).unwrap_or(p).display().to_string())
                                    .collect();
                                shown.join(" ")
                            })
                            .map_err(NotInjected::Broken),
                    }
                }
            };
            match done {
                Ok(what) => injected.push((p.fault.kind(), format!("{}: {what}", p.fault))),
                Err(NotInjected::Moot(why)) => skipped.push(format!("{}: {why}", p.fault)),
                Err(NotInjected::Broken(why)) => broken.push(format!("{} could not be injected: {why}", p.fault)),
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for (_, undo) in undos {
        settle(job, undo, proxy, &mut injected, &mut skipped);
    }
    for p in &schedule.faults[next..] {
        skipped.push(format!("{}: the job had ended", p.fault));
    }
    (injected, skipped, broken, killed)
}

/// Runs `undo`; a pause whose worker turns out to have been committing the
/// shard it held (`was_committing`) tested nothing and moves from `injected`
/// to `skipped`.
fn settle(
    job: &TestJob,
    undo: Undo,
    proxy: &Proxy,
    injected: &mut Vec<(&'static str, String)>,
    skipped: &mut Vec<String>,
) {
    if let Undo::Continue { worker, shard, from, line, .. } = &undo
        && was_committing(job, worker, shard, *from)
        && let Some(at) = injected.iter().position(|(_, what)| what == line)
    {
        injected.remove(at);
        skipped.push(format!("{line}: it was committing shard {shard} when it was stopped, so no lease could expire"));
    }
    // Killed workers whose every commit was on its way as they went (or that
    // held nothing) left nothing to expire or to replace: the kill was moot.
    if let Undo::Judge { taken, line } = &undo {
        let log = job.log("master");
        let moot: Vec<String> =
            taken.iter().filter_map(|t| if t.shard.is_empty() { Some(String::new()) } else { t.moot(&log) }).collect();
        if moot.len() == taken.len()
            && !log.contains("launched in place of")
            && let Some(at) = injected.iter().position(|(_, what)| what == line)
        {
            injected.remove(at);
            skipped.push(format!("{line}: moot, each killed worker held no lease or its commit was on its way"));
        }
    }
    undo.run(proxy);
}

/// Why a fault was not injected.
enum NotInjected {
    /// There was nothing for it to act on at its moment (no worker, the job
    /// ended, a path not made yet): the schedule met the job as it was.
    Moot(String),
    /// It could not be injected on this machine (`chattr` unsupported, ...):
    /// the seed cannot prove what it was meant to, and fails.
    Broken(String),
}

/// What `inject` did: faults injected (kind, what), faults not injected
/// (why), faults that could not be injected (why), nodes killed (how many
/// times each).
type Injected = (Vec<(&'static str, String)>, Vec<String>, Vec<String>, BTreeMap<String, usize>);

fn job_text(schedule: &Schedule) -> String {
    let deadline = schedule.deadline_ms.map(|d| format!("{d}ms")).unwrap_or_else(|| "2m".into());
    // The faults' moments count from the submission: the preflight (tested in
    // tests/all/before_launch.rs) would shift the job's start by its sample's time.
    format!(
        "[provider]\nname = \"local\"\ncredential_ttl = \"4s\"\n\n\
         [cluster]\nworkers = {WORKERS}\ndeadline = \"{deadline}\"\nlease_time = \"{LEASE_MS}ms\"\n\
         idle_timeout = \"30s\"\nmaster_lost_timeout = \"30s\"\n\n\
         [sharding]\ntarget_shard_bytes = 1\nsplit_text = false\n\n[preflight]\nenabled = false\n"
    )
}

/// Runs `schedule`'s job on the local provider with its faults, then checks
/// it; `reference` is a fault-free run's output tree (None: this is that run).
pub fn run(schedule: &Schedule, reference: Option<&BTreeMap<String, String>>) -> RunReport {
    let started = Instant::now();
    let files = dataset();
    let job = TestJob::new(&format!("chaos-{}", schedule.seed), &files);
    job.write_job(
        "tests/guests/misbehave",
        &format!("{{ mode = \"slow\", delay_ms = {}, stamp = true }}", schedule.delay_ms),
        &job_text(schedule),
    );
    let proxy = Proxy::start();
    let follower = |args: &[&str], n: u32| -> Child {
        let log = std::fs::File::create(job.dir.join(format!("follower-{n}.log"))).unwrap();
        job.command(args)
            .env("MAYFLY_LISTEN", format!("127.0.0.1:{}", proxy.upstream))
            .env("MAYFLY_ADVERTISE", format!("127.0.0.1:{}", proxy.port))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    let mut problems = Vec::new();
    let submitted = Instant::now();
    let mut child = follower(&["run", "job.toml"], 0);
    let master_log = job.state().join("logs/master.log");
    let leased = wait_until(Duration::from_secs(60), || {
        std::fs::read_to_string(&master_log).is_ok_and(|l| l.contains("leased to"))
            || child.try_wait().ok().flatten().is_some()
    });
    if !leased {
        problems.push("no shard was leased within 60 s".into());
    }
    let t0 = Instant::now();
    let stop = AtomicBool::new(false);
    let mut resumes = 0;
    let (injected, skipped, broken, killed) = std::thread::scope(|s| {
        let injector = s.spawn(|| inject(&job, schedule, t0, &proxy, &stop));
        let bound = Duration::from_secs(180);
        loop {
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break Some(status);
                }
                if t0.elapsed() > bound {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let Some(status) = status else {
                problems.push(format!("the job did not end within {} s", bound.as_secs()));
                break;
            };
            if job.state().join("final.json").exists() {
                break;
            }
            let before_deadline = schedule.deadline_ms.is_none_or(|d| submitted.elapsed() < Duration::from_millis(d));
            if !status.success() && resumes < 5 && before_deadline {
                // The master is gone (`mayfly run` says to resume), or a resume
                // failed (the state was unwritable): resume, as an operator would.
                resumes += 1;
                if status.code() != Some(3) {
                    std::thread::sleep(Duration::from_secs(1));
                }
                child = follower(&["resume", &job.id, "--state", "state"], resumes);
                continue;
            }
            if schedule.deadline_ms.is_none() {
                problems.push(format!("the job's follower ended ({status}) with no final.json"));
            }
            break;
        }
        stop.store(true, Ordering::Relaxed);
        injector.join().unwrap()
    });
    let refused = proxy.refused();
    drop(proxy);
    problems.extend(broken);

    let mut report = RunReport {
        schedule: schedule.clone(),
        injected,
        skipped,
        killed,
        problems,
        lost: 0,
        duplicates: 0,
        left: 0,
        resumes,
        ended: String::new(),
        elapsed: Duration::ZERO,
        dir: job.dir.clone(),
        outputs: BTreeMap::new(),
    };
    evidence(&job, &mut report, refused as usize);
    check(&job, &files, schedule, reference, &mut report);
    report.elapsed = started.elapsed();
    if report.passed() && std::env::var_os("MAYFLY_CHAOS_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&job.dir);
    }
    report
}

/// What the nodes' logs (and the proxy, `refused` connections) say each
/// injected fault did, appended to its line. A fault that left no trace
/// tested nothing: a run whose injected faults left none at all fails,
/// saying so, as does one whose faults were all planned and none injected.
fn evidence(job: &TestJob, r: &mut RunReport, refused: usize) {
    let logs: String = job.nodes().iter().map(|n| job.log(&n.node)).collect();
    let count = |needle: &str| logs.matches(needle).count();
    let mut traces = 0;
    for (kind, what) in &mut r.injected {
        let (n, seen) = match *kind {
            "kill-workers" => {
                let (expired, replaced) = (count("stopped heartbeating"), count("launched in place of"));
                (expired + replaced, format!("{expired} leases expired, {replaced} workers replaced"))
            }
            "pause" => (count("stopped heartbeating"), "leases expired".to_owned()),
            // Each master after the first is a resumed one.
            "kill-master" => (count("master: listening on").saturating_sub(1), "masters resumed".to_owned()),
            "issuer-down" => (count("credential refresh failed"), "credential refreshes failed".to_owned()),
            "unwritable" => (count("Operation not permitted"), "operations refused".to_owned()),
            "net-cut" => (refused, "connections refused".to_owned()),
            _ => continue,
        };
        traces += n;
        if seen.starts_with(char::is_numeric) {
            what.push_str(&format!(" ({seen})"));
        } else {
            what.push_str(&format!(" ({n} {seen})"));
        }
    }
    // A deadline is a fault too, and may end the job before the others' moments.
    if r.schedule.deadline_ms.is_some() {
        traces += count("the job's deadline passed");
    }
    if !r.injected.is_empty() && traces == 0 {
        r.problems.push("no injected fault left a trace in the logs: the run tested nothing".into());
    }
    if r.injected.is_empty() && !r.schedule.faults.is_empty() && r.schedule.deadline_ms.is_none() {
        r.problems.push(format!("none of the {} planned faults was injected", r.schedule.faults.len()));
    }
}

fn check(
    job: &TestJob,
    files: &[(String, Vec<u8>)],
    schedule: &Schedule,
    reference: Option<&BTreeMap<String, String>>,
    r: &mut RunReport,
) {
    let fin: Option<serde_json::Value> = mayfly_core::job::read_json(&job.state().join("final.json")).ok();
    r.ended = fin.as_ref().and_then(|f| f["reason"].as_str()).unwrap_or("(no final.json)").to_owned();
    let committed = fin.as_ref().and_then(|f| f["counts"]["committed"].as_u64());
    let complete = committed == Some(files.len() as u64);
    if schedule.deadline_ms.is_none() && !complete {
        r.problems.push(format!("the job did not complete: ended {:?}, committed {committed:?}", r.ended));
    }

    // Outputs: each a whole copy of its input, once, with the stamp of the
    // attempt that made it; nothing else.
    let tree = output_tree(job);
    r.outputs = tree.clone();
    let mut seen = 0;
    for (path, digest) in &tree {
        if let Some(name) = path.strip_suffix("/attempt.txt") {
            if !files.iter().any(|(n, _)| n == name) || !tree.contains_key(&format!("{name}/copy.bin")) {
                r.duplicates += 1;
                r.problems.push(format!("{path}: an attempt's stamp with no copy beside it"));
            }
            continue;
        }
        let input = path.strip_suffix("/copy.bin").and_then(|name| files.iter().find(|(n, _)| n == name));
        match input {
            Some((_, data)) if *digest == hex::encode(Sha256::digest(data)) => seen += 1,
            Some(_) => r.problems.push(format!("{path}: not a whole copy of its input (partial or corrupt)")),
            None => {
                r.duplicates += 1;
                r.problems.push(format!("{path}: an output no input explains"));
            }
        }
    }
    if let Some(n) = committed
        && n != seen as u64
    {
        r.problems.push(format!("final.json says {n} shards committed, {seen} outputs are visible"));
    }
    if schedule.deadline_ms.is_none() {
        r.lost = files.len().saturating_sub(seen);
    }
    // Each shard committed once: by one token, whose attempt stamped what is
    // published (the stamps differ between attempts, the copies do not).
    for problem in crate::cluster::audit_commits(job) {
        r.duplicates += 1;
        r.problems.push(problem);
    }
    if complete {
        let copies = |t: &BTreeMap<String, String>| -> Vec<(String, String)> {
            t.iter().filter(|(p, _)| p.ends_with("/copy.bin")).map(|(p, d)| (p.clone(), d.clone())).collect()
        };
        if let Some(reference) = reference
            && copies(&tree) != copies(reference)
        {
            r.problems.push("the outputs differ from the fault-free run's".into());
        }
        let manifest: Option<serde_json::Value> = mayfly_core::job::read_json(&job.out().join("_manifest.json")).ok();
        match manifest.as_ref().and_then(|m| m["outputs"].as_array()) {
            Some(listed) => {
                let unique: HashSet<&str> = listed.iter().filter_map(|o| o["path"].as_str()).collect();
                r.duplicates += listed.len() - unique.len();
                // A copy and a stamp per input.
                if listed.len() != 2 * files.len() || unique.len() != listed.len() {
                    r.problems.push(format!(
                        "_manifest.json lists {} outputs ({} distinct)",
                        listed.len(),
                        unique.len()
                    ));
                }
            }
            None => r.problems.push("no _manifest.json in a completed job".into()),
        }
        let staging = job.out().join("_mayfly/staging");
        if std::fs::read_dir(&staging).is_ok_and(|mut d| d.next().is_some()) {
            r.problems.push("attempt staging left under out/_mayfly/staging".into());
        }
    }
    if r.lost > 0 {
        r.problems.push(format!("{} inputs lost", r.lost));
    }

    // Processes: none left past the deadline plus the dead-man's grace (or,
    // for a job that ended, past its end plus the nodes' own wind-down).
    let bound = match schedule.deadline_ms {
        Some(d) => {
            let created = std::fs::metadata(job.dir.join("job.toml")).and_then(|m| m.modified()).ok();
            let deadline = created.map(|c| c + Duration::from_millis(d));
            let remaining = deadline.and_then(|d| d.duration_since(std::time::SystemTime::now()).ok());
            remaining.unwrap_or_default() + Duration::from_secs(10)
        }
        None => Duration::from_secs(15),
    };
    wait_until(bound, || job.alive().is_empty() && crate::job_processes(&job.id).is_empty());
    let left = job.alive();
    // The records' view, then an independent one: every process for the job's id.
    let unrecorded: Vec<(u32, String)> = crate::job_processes(&job.id)
        .into_iter()
        .filter(|(pid, _)| !left.iter().any(|n| live_pid(job, n) == Some(*pid)))
        .collect();
    if !unrecorded.is_empty() {
        r.left += unrecorded.len();
        r.problems.push(format!("processes left that the job's records do not show: {unrecorded:?}"));
        for (pid, _) in &unrecorded {
            signal(*pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    if !left.is_empty() {
        r.left += left.len();
        r.problems.push(format!("processes left: {left:?}"));
        for node in &left {
            if let Some(pid) = live_pid(job, node) {
                signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }

    // Logs: every node's, readable, through `mayfly logs` too; no token anywhere.
    let token = std::fs::read_to_string(job.state().join("secret/token")).unwrap_or_default();
    let token = token.trim();
    let nodes = job.nodes();
    if nodes.len() < WORKERS + 1 {
        r.problems.push(format!("only {} nodes recorded", nodes.len()));
    }
    // The workers the master ended at its end (by the rules, not theirs to log).
    let master_log = job.log("master");
    let ended_by_master: HashSet<&str> = master_log
        .lines()
        .filter_map(|l| l.split_once("worker(s) still running: ").map(|(_, names)| names))
        .flat_map(str::split_whitespace)
        .collect();
    for node in &nodes {
        // Every process of the node that the faults did not kill ended by
        // the rules, and said so: none died of anything else.
        let log = job.log(&node.node);
        let (starts, ends) = if node.node == "master" {
            (log.matches("master: listening on").count(), log.matches(" ended (").count())
        } else {
            let ends = log.matches(": ending: ").count() + log.matches(": ending before any work").count();
            (log.matches(": started; task").count(), ends)
        };
        let ends = ends + log.matches("the job's deadline passed; ending now").count();
        let ended_by_master = ended_by_master.contains(node.node.as_str());
        let killed = r.killed.get(&node.node).copied().unwrap_or(0) + usize::from(ended_by_master);
        if ends + killed < starts {
            r.problems.push(format!(
                "{}: {starts} processes started, {ends} ended by the rules, {killed} killed: one died otherwise",
                node.node
            ));
        }
        match std::fs::read_to_string(job.state().join("logs").join(format!("{}.log", node.node))) {
            Ok(log) if log.trim().is_empty() => r.problems.push(format!("{}: empty log", node.node)),
            Ok(log) if !token.is_empty() && log.contains(token) => {
                r.problems.push(format!("{}: the job token is in its log", node.node))
            }
            Ok(_) => {}
            Err(e) => r.problems.push(format!("{}: log unreadable: {e}", node.node)),
        }
    }
    match job.command(&["logs", &job.id, "--state", "state"]).output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(missing) = nodes.iter().find(|n| !text.contains(&n.node)) {
                r.problems.push(format!("`mayfly logs` shows nothing of {}", missing.node));
            }
        }
        Ok(out) => r.problems.push(format!("`mayfly logs` failed: {}", crate::cluster::text(&out))),
        Err(e) => r.problems.push(format!("`mayfly logs`: {e}")),
    }
    if !token.is_empty()
        && tree
            .keys()
            .any(|p| std::fs::read(job.out().join("map").join(p)).is_ok_and(|b| contains(&b, token.as_bytes())))
    {
        r.problems.push("the job token is in an output".into());
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Prints a run's line (and its problems) to `out`.
pub fn print_run(out: &mut impl Write, r: &RunReport) {
    let verdict = if r.passed() { "passed" } else { "FAILED" };
    let _ = writeln!(
        out,
        "seed {} {verdict} in {:.1} s ({}; ended {}{})",
        r.schedule.seed,
        r.elapsed.as_secs_f64(),
        r.schedule,
        r.ended,
        if r.resumes > 0 { format!(", resumed {}x", r.resumes) } else { String::new() }
    );
    for (_, what) in &r.injected {
        let _ = writeln!(out, "    injected {what}");
    }
    for what in &r.skipped {
        let _ = writeln!(out, "    not injected {what}");
    }
    for p in &r.problems {
        let _ = writeln!(out, "    PROBLEM {p}");
    }
    if !r.passed() {
        let _ = writeln!(out, "    the job's directory is kept: {}", r.dir.display());
    }
}

/// The seeds a chaos runner (`harness = false`) was asked for: `--runs N`
/// (from seed 1, or `--first SEED`), or each `--seed SEED`; by default one
/// per fault kind, so that each kind is once a seed's first fault.
///
/// `Ok(None)`: a `cargo test` filter that does not name chaos, which cargo
/// passes to every test binary (the runner says it was filtered out).
/// `Err`: a bad argument, said with the usage (exit 2). libtest's own flags
/// (`--nocapture`) are ignored.
pub fn seeds(runner: &str, kinds: usize) -> Result<Option<Vec<u64>>, std::process::ExitCode> {
    let mut args = std::env::args().skip(1);
    let (mut runs, mut first, mut seeds, mut filters) = (kinds as u64, 1u64, Vec::new(), Vec::new());
    while let Some(arg) = args.next() {
        let mut number = |name: &str| {
            args.next().and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| format!("{name} needs a number"))
        };
        let parsed = match arg.as_str() {
            "--runs" => number("--runs").map(|n| runs = n),
            "--first" => number("--first").map(|n| first = n),
            "--seed" => number("--seed").map(|n| seeds.push(n)),
            flag if flag.starts_with("--") => Ok(()),
            filter => {
                filters.push(filter.to_owned());
                Ok(())
            }
        };
        if let Err(message) = parsed {
            eprintln!("{runner}: {message}\nusage: chaos [--runs N] [--first SEED] [--seed SEED]...");
            return Err(std::process::ExitCode::from(2));
        }
    }
    if !filters.is_empty() && !filters.iter().any(|f| "chaos".contains(f.as_str())) {
        println!("{runner}: filtered out");
        return Ok(None);
    }
    if seeds.is_empty() {
        seeds = (first..first.saturating_add(runs)).collect();
    }
    Ok(Some(seeds))
}

/// A worker a cloud chaos runner took away (its instance or VM): the shard it
/// held, and how many lines the master's log had then.
#[derive(Debug, Clone)]
pub struct Taken {
    /// The worker's name.
    pub worker: String,
    /// The shard it held.
    pub shard: String,
    /// The master's log's lines when it was taken.
    pub lines: usize,
}

/// The worker for a cloud chaos runner to take away, among `nodes` (name →
/// instance or VM): the next one the master leases to within 5 s, the surest
/// to be in the middle of its shard rather than with its commit on the way;
/// if none comes, the `pick`th of those holding a lease. Its name and its
/// instance.
pub fn worker_to_take(
    master_log: impl Fn() -> String,
    nodes: &BTreeMap<String, String>,
    pick: u64,
) -> Result<(String, String), String> {
    let from = master_log().lines().count();
    let mut chosen = None;
    let fresh = crate::cluster::wait_until(Duration::from_secs(5), || {
        let log = master_log();
        let last = log.lines().skip(from).filter_map(|l| l.rsplit_once(" leased to ")).map(|(_, w)| w).last();
        chosen = last.and_then(|w| nodes.get(w).map(|i| (w.to_owned(), i.clone())));
        chosen.is_some()
    });
    if let Some(fresh) = chosen.filter(|_| fresh) {
        return Ok(fresh);
    }
    let log = master_log();
    let holders: Vec<(&String, &String)> =
        nodes.iter().filter(|(w, _)| w.starts_with("worker-") && held_shard(&log, w).is_some()).collect();
    match holders.len() {
        0 => Err("no worker holds a lease".into()),
        n => {
            let (w, i) = holders[(pick % n as u64) as usize];
            Ok((w.clone(), i.clone()))
        }
    }
}

impl Taken {
    /// `worker`, taken away now, by the master's log `log`.
    pub fn now(log: &str, worker: &str) -> Result<Taken, String> {
        let (shard, lines) = held_shard(log, worker).ok_or_else(|| format!("{worker} held no lease"))?;
        Ok(Taken { worker: worker.to_owned(), shard, lines })
    }

    /// Why it left no trace, if the master's log `log` shows it could not:
    /// its commit was on its way as it went, so no lease expired and no work
    /// was left waiting for a replacement. Such a fault tested nothing, and
    /// says so, as a paused commit does in the local suite.
    pub fn moot(&self, log: &str) -> Option<String> {
        let after: Vec<&str> = log.lines().skip(self.lines).collect();
        let expired = format!("lease expired: worker {} ", self.worker);
        let committed = format!("shard {} committed", self.shard);
        (!after.iter().any(|l| l.contains(&expired)) && after.iter().any(|l| l.contains(&committed))).then(|| {
            format!(
                "moot: {}'s commit of shard {} was on its way as it went (no lease to expire, no work left for a \
                 replacement)",
                self.worker, self.shard
            )
        })
    }
}
