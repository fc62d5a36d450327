//! What the tests' stand-ins for a cloud's hypervisor share, whatever the
//! cloud: disks (a directory per machine, `<job>/<node>@<machine id>/`, the
//! `/` its boot script writes under, with `shutdown` and `poweroff` shims
//! that leave files the hypervisor acts on), booting a machine (its boot
//! script run as cloud-init runs user data: as root, with no environment to
//! speak of, in a process group that ends with the machine), and reading
//! what a node wrote. tests/aws plays EC2 over moto with it, tests/azure
//! ARM's VMs; each says how its cloud lists machines and hands out their
//! boot script and metadata (slowed down, for a while, by a [`Slowdown`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// The machines' disks, under one directory with the shims in `bin/`.
#[derive(Debug, Clone)]
pub struct Disks {
    dir: PathBuf,
}

/// `shutdown`: `-h +M` arms the OS dead-man switch (the hypervisor powers the
/// machine off at that time), `-h now` powers off.
const SHUTDOWN: &str = "#!/bin/sh\n# `shutdown -h +M` arms the OS dead-man switch; `shutdown -h now` powers off.\n\
     for a in \"$@\"; do case \"$a\" in\n\
     \x20 +*) echo $(( $(date +%s) + ${a#+} * 60 )) > \"$MAYFLY_ROOT/shutdown-at\";;\n\
     \x20 now) exec poweroff;;\n\
     esac; done\n";
/// `poweroff`: the OS stops.
const POWEROFF: &str = "#!/bin/sh\necho \"$(date +%s)\" > \"$MAYFLY_ROOT/powered-off\"\n";

impl Disks {
    /// Disks under the scratch directory `name`, with the shims.
    pub fn new(name: &str) -> Disks {
        let dir = crate::scratch(name);
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).expect("the disks' bin directory");
        for (name, text) in [("shutdown", SHUTDOWN), ("poweroff", POWEROFF)] {
            use std::os::unix::fs::PermissionsExt;
            let path = bin.join(name);
            std::fs::write(&path, text).expect("a shim");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("a shim's mode");
        }
        Disks { dir }
    }

    /// The directory of the shims, first on a machine's `PATH`.
    pub fn bin(&self) -> PathBuf {
        self.dir.join("bin")
    }

    /// The disk of machine `id` when it is `node` of `job`.
    pub fn disk(&self, job: &str, node: &str, id: &str) -> PathBuf {
        self.dir.join(job).join(format!("{node}@{id}"))
    }

    /// The disks of the machines that have been `node` of `job`, oldest first.
    pub fn of_node(&self, job: &str, node: &str) -> Vec<PathBuf> {
        let mut roots: Vec<PathBuf> =
            std::fs::read_dir(self.dir.join(job)).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        roots.retain(|r| r.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{node}@"))));
        roots.sort_by_key(|r| (r.metadata().and_then(|m| m.modified()).ok(), r.clone()));
        roots
    }

    /// What `node` of `job` has written on its machines: the console (its
    /// boot script's output) and the node's own log.
    pub fn node_log(&self, job: &str, node: &str) -> String {
        let mut out = String::new();
        for root in self.of_node(job, node) {
            for file in ["console.log", "var/log/mayfly-node.log"] {
                out.push_str(&std::fs::read_to_string(root.join(file)).unwrap_or_default());
            }
        }
        out
    }
}

impl Disks {
    /// The lines that `job`'s nodes wrote (consoles and node logs, on every
    /// machine) that contain `needle`, each after the disk's name.
    pub fn lines_saying(&self, job: &str, needle: &str) -> Vec<String> {
        let mut roots: Vec<PathBuf> =
            std::fs::read_dir(self.dir.join(job)).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        roots.sort();
        let mut out = Vec::new();
        for root in roots {
            let disk = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            for file in ["console.log", "var/log/mayfly-node.log"] {
                let text = std::fs::read_to_string(root.join(file)).unwrap_or_default();
                out.extend(text.lines().filter(|l| l.contains(needle)).map(|l| format!("{disk}: {l}")));
            }
        }
        out
    }
}

/// A machine the hypervisor booted.
#[derive(Debug)]
pub struct Machine {
    /// Its boot script's watcher (a cell: whether it has exited is asked
    /// through a shared reference, in a match guard).
    child: std::cell::RefCell<Child>,
    /// Its disk.
    pub root: PathBuf,
    ended: bool,
}

impl Machine {
    /// Boots a machine on the disk `root`: writes its boot `script` there as
    /// `script_name` and runs it in the background, as cloud-init does, with
    /// only `path` and `env` (and `MAYFLY_ROOT`, `TMPDIR`, the tests' compile
    /// cache) in its environment, under a watcher that kills the whole
    /// process group (the node the script starts included) when the machine
    /// ends or this test process exits: no node outlives the tests.
    pub fn boot(
        root: &Path,
        script_name: &str,
        script: &str,
        path: &str,
        env: &[(&str, String)],
        said: &str,
    ) -> Result<Machine, String> {
        std::fs::create_dir_all(root.join("tmp")).map_err(|e| e.to_string())?;
        std::fs::write(root.join(script_name), script).map_err(|e| e.to_string())?;
        let console = std::fs::File::create(root.join("console.log")).map_err(|e| e.to_string())?;
        let mut err = console.try_clone().map_err(|e| e.to_string())?;
        let _ = writeln!(err, "hypervisor: {said}");
        let watch = "exec 3<&0; sh \"$0\" </dev/null & cat <&3 >/dev/null; kill -9 0";
        let mut command = Command::new("sh");
        command
            .args(["-c", watch])
            .arg(root.join(script_name))
            .current_dir(root)
            .env_clear()
            .env("PATH", path)
            .env("MAYFLY_ROOT", root)
            .env("TMPDIR", root.join("tmp"))
            // Compiled components shared across the tests' nodes (for speed only).
            .env("MAYFLY_CACHE_DIR", crate::cache_dir())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let child = command
            .stdin(Stdio::piped())
            .stdout(console)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("booting {}: {e}", root.display()))?;
        Ok(Machine { child: std::cell::RefCell::new(child), root: root.to_owned(), ended: false })
    }

    /// Whether the hypervisor has ended it.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Whether its OS shut down: `poweroff`, the time `shutdown -h +M` set
    /// passed, or its boot script's process ended.
    pub fn powered_off(&self) -> bool {
        let now = mayfly_provider_api::now_ms() / 1000;
        let shutdown_at =
            std::fs::read_to_string(self.root.join("shutdown-at")).ok().and_then(|t| t.trim().parse::<u64>().ok());
        self.root.join("powered-off").exists()
            || shutdown_at.is_some_and(|t| t <= now)
            || matches!(self.child.borrow_mut().try_wait(), Ok(Some(_)))
    }

    /// Ends it: the machine is gone, and every process on it (closing the
    /// watcher's input kills its process group).
    pub fn end(&mut self) {
        let child = self.child.get_mut();
        drop(child.stdin.take());
        let _ = child.wait();
        self.ended = true;
    }
}

/// A service that answers late for a while: a metadata service under load.
/// Each hypervisor's metadata service waits on its own `static` one before
/// every answer to a machine of a job; a test sets it for every job or one.
#[derive(Debug, Default)]
pub struct Slowdown {
    /// Until when (ms since the epoch) answers are late.
    until_ms: AtomicU64,
    /// How late each answer is (ms).
    delay_ms: AtomicU64,
    /// The one job whose machines' answers are late (all when `None`).
    job: Mutex<Option<String>>,
    /// How many answers were late.
    late: AtomicUsize,
}

impl Slowdown {
    /// None yet.
    pub const fn new() -> Slowdown {
        Slowdown {
            until_ms: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            job: Mutex::new(None),
            late: AtomicUsize::new(0),
        }
    }

    /// Every answer from now on is `delay` late, for `lasting`.
    pub fn set(&self, delay: Duration, lasting: Duration) {
        self.set_on(None, delay, lasting);
    }

    /// Every answer to a machine of `job` from now on is `delay` late, for
    /// `lasting` (other jobs' machines are answered on time).
    pub fn set_for(&self, job: &str, delay: Duration, lasting: Duration) {
        self.set_on(Some(job.to_owned()), delay, lasting);
    }

    fn set_on(&self, job: Option<String>, delay: Duration, lasting: Duration) {
        *self.job.lock().unwrap_or_else(|e| e.into_inner()) = job;
        self.delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
        self.until_ms.store(mayfly_provider_api::now_ms() + lasting.as_millis() as u64, Ordering::Relaxed);
    }

    /// Answers are on time again.
    pub fn clear(&self) {
        self.until_ms.store(0, Ordering::Relaxed);
    }

    /// Waits as long as an answer to a machine of `job` now must be late.
    pub fn wait(&self, job: &str) {
        if mayfly_provider_api::now_ms() >= self.until_ms.load(Ordering::Relaxed) {
            return;
        }
        if self.job.lock().unwrap_or_else(|e| e.into_inner()).as_deref().is_some_and(|only| only != job) {
            return;
        }
        self.late.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(self.delay_ms.load(Ordering::Relaxed)));
    }

    /// How many answers were late.
    pub fn late(&self) -> usize {
        self.late.load(Ordering::Relaxed)
    }
}
