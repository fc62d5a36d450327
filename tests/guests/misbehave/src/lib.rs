//! A task that misbehaves on demand (parameter `mode`), to prove that the host
//! bounds, refuses and reports each kind of misbehaviour. With `stamp`, each
//! item also gets `attempt.txt` ("shard S attempt A"), so that the outputs of
//! two attempts at a shard differ and a doubled commit can be seen.

use std::io::{Read, Seek, SeekFrom, Write};

use mayfly_sdk::{Error, Input, Outputs, Result, Shard, Task, error, info, task};
use serde::Deserialize;

#[derive(Deserialize)]
struct Params {
    mode: String,
    /// A loopback port for the socket attempt.
    #[serde(default)]
    port: u16,
    /// A host path for the file attempt.
    #[serde(default)]
    path: String,
    /// How long `slow` and `picky` sleep before copying their input.
    #[serde(default)]
    delay_ms: u64,
    /// `picky` fails for good on inputs whose name contains this.
    #[serde(default)]
    fail_on: String,
    /// Each item also writes `attempt.txt`: which shard attempt made it.
    #[serde(default)]
    stamp: bool,
}

struct Misbehave {
    params: Params,
    shard: u32,
    attempt: u32,
}

#[task]
impl Task for Misbehave {
    type Params = Params;

    fn start(shard: &Shard, params: Params, _outputs: &mut Outputs) -> Result<Self> {
        Ok(Misbehave { params, shard: shard.id, attempt: shard.attempt })
    }

    fn item(&mut self, input: &mut Input, outputs: &mut Outputs) -> Result<()> {
        misbehave(input, &self.params, outputs)?;
        if self.params.stamp {
            writeln!(outputs.create("attempt.txt")?, "shard {} attempt {}", self.shard, self.attempt)?;
        }
        Ok(())
    }
}

fn misbehave(input: &mut Input, params: &Params, outputs: &mut Outputs) -> Result<()> {
    match params.mode.as_str() {
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "output" => {
            let mut out = outputs.create("flood.bin")?;
            let block = vec![b'x'; 1 << 16];
            loop {
                out.write_all(&block)?;
            }
        }
        "log" => loop {
            info!("{}", "y".repeat(1000));
        },
        "stdout" => loop {
            println!("{}", "z".repeat(1000));
        },
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(3600));
            Ok(())
        }
        "panic" => panic!("boom while reading {}", input.name()),
        "trap-mid-output" => {
            let mut out = outputs.create("partial.txt")?;
            out.write_all(&vec![b'p'; 200_000])?;
            out.flush()?;
            std::process::abort();
        }
        "fatal" => Err(Error::fatal("this item can never succeed")),
        "retryable" => Err(Error::retryable("try me again later")),
        "bad-output-name" => {
            outputs.create("../escape.txt")?;
            Ok(())
        }
        "slow" => {
            // Sleeps, then copies the input: long enough for faults to land mid-attempt.
            std::thread::sleep(std::time::Duration::from_millis(params.delay_ms));
            let mut out = outputs.create("copy.bin")?;
            std::io::copy(input, &mut out)?;
            Ok(())
        }
        "picky" => {
            // Fails for good on the inputs named by `fail_on`, copies the others
            // (after `delay_ms`): a job with some failed shards, and logs at levels.
            if !params.fail_on.is_empty() && input.name().contains(&params.fail_on) {
                error!("refusing {}", input.name());
                return Err(Error::fatal(format!("{} is not acceptable", input.name())));
            }
            std::thread::sleep(std::time::Duration::from_millis(params.delay_ms));
            info!("copying {}", input.name());
            let mut out = outputs.create("copy.bin")?;
            std::io::copy(input, &mut out)?;
            Ok(())
        }
        "echo" => {
            // Copies the input, then its last 4 bytes again via Seek.
            let mut out = outputs.create("copy.bin")?;
            std::io::copy(input, &mut out)?;
            if input.size() >= 4 {
                input.seek(SeekFrom::End(-4))?;
                let mut tail = [0u8; 4];
                input.read_exact(&mut tail)?;
                outputs.create("tail.bin")?.write_all(&tail)?;
            }
            eprintln!("echoed {} bytes", input.size());
            Ok(())
        }
        "escape" => {
            let mut report = outputs.create("report.txt")?;
            let path = if params.path.is_empty() { "/etc/passwd".to_owned() } else { params.path.clone() };
            let file = std::fs::read(&path).map(|b| format!("READ {} bytes", b.len()));
            writeln!(report, "file\t{}", describe(file))?;
            // The same file through relative climbs, and the host's view of this process.
            let climb = format!("{}{}", "../".repeat(16), path.trim_start_matches('/'));
            let climbed = std::fs::read(&climb).map(|b| format!("READ {} bytes", b.len()));
            writeln!(report, "climb\t{}", describe(climbed))?;
            let environ = std::fs::read("/proc/self/environ").map(|b| format!("READ {} bytes", b.len()));
            writeln!(report, "proc\t{}", describe(environ))?;
            let opened = std::fs::OpenOptions::new().append(true).open(&path).map(|_| "OPENED".to_owned());
            writeln!(report, "append\t{}", describe(opened))?;
            let dir = std::fs::read_dir("/").map(|d| format!("LISTED {} entries", d.count()));
            writeln!(report, "dir\t{}", describe(dir))?;
            let cwd = std::fs::read_dir(".").map(|d| format!("LISTED {} entries", d.count()));
            writeln!(report, "cwd\t{}", describe(cwd))?;
            let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
            writeln!(
                report,
                "env\t{}",
                if vars.is_empty() { "denied: none".to_owned() } else { format!("SAW {vars:?}") }
            )?;
            let home = std::env::var("HOME").map(|h| format!("SAW {h}"));
            writeln!(report, "home\t{}", describe(home))?;
            let args: Vec<String> = std::env::args().collect();
            writeln!(
                report,
                "args\t{}",
                if args.is_empty() { "denied: none".to_owned() } else { format!("SAW {args:?}") }
            )?;
            let tcp = std::net::TcpStream::connect(("127.0.0.1", params.port)).map(|_| "CONNECTED".to_owned());
            writeln!(report, "tcp\t{}", describe(tcp))?;
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").map(|_| "BOUND".to_owned());
            writeln!(report, "udp\t{}", describe(udp))?;
            let dns =
                std::net::ToSocketAddrs::to_socket_addrs("localhost:80").map(|a| format!("RESOLVED {}", a.count()));
            writeln!(report, "dns\t{}", describe(dns))?;
            let created = std::fs::write("/tmp/mayfly-escape", b"x").map(|()| "WROTE".to_owned());
            writeln!(report, "create\t{}", describe(created))?;
            Ok(())
        }
        other => Err(Error::fatal(format!("unknown mode {other:?}"))),
    }
}

fn describe<E: std::fmt::Display>(r: std::result::Result<String, E>) -> String {
    match r {
        Ok(s) => s,
        Err(e) => format!("denied: {e}"),
    }
}
