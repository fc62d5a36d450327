//! A task that keeps state across the items of its shard, and fails on
//! demand at each step of the shard lifecycle, to prove that a retry starts
//! clean, that a bad item is quarantined without sinking its shard, and that
//! a failing `start` or `finish` fails the shard, not its items.
//!
//! It copies each item to its own `copy.bin` (an item's output) and writes
//! `seen.txt` at the end of the shard (the shard's output): the items this
//! instance was given, one per line, in order.

use std::io::Write;

use mayfly_sdk::{Error, Input, Outputs, Result, Shard, Task, task};
use serde::Deserialize;

#[derive(Deserialize)]
struct Params {
    /// Trap (abort the instance) on items whose name contains this, in the
    /// shard's first attempt only (`trap_always` for every attempt).
    #[serde(default)]
    trap_on: String,
    #[serde(default)]
    trap_always: bool,
    /// Fail for good (a fatal task error) on items whose name contains this.
    #[serde(default)]
    fatal_on: String,
    /// Panic in `start` or `finish`.
    #[serde(default)]
    panic_in: String,
    /// KiB each item adds to the state and keeps (a combiner that outgrows
    /// its memory limit over the shard, not because of one item).
    #[serde(default)]
    hoard_kib: usize,
    /// KiB each item prints (lines of 1 KiB on stdout, which become log lines).
    #[serde(default)]
    log_kib: usize,
    /// MiB each item tries to reserve, going on without it when refused (a
    /// task that survives a denied growth).
    #[serde(default)]
    try_mib: usize,
}

struct Stateful {
    params: Params,
    attempt: u32,
    seen: Vec<String>,
    hoard: Vec<Vec<u8>>,
}

#[task]
impl Task for Stateful {
    type Params = Params;

    fn start(shard: &Shard, params: Params, _outputs: &mut Outputs) -> Result<Self> {
        if params.panic_in == "start" {
            panic!("asked to panic in start (shard {})", shard.id);
        }
        Ok(Stateful { params, attempt: shard.attempt, seen: Vec::new(), hoard: Vec::new() })
    }

    fn item(&mut self, input: &mut Input, outputs: &mut Outputs) -> Result<()> {
        let name = input.name().to_owned();
        // Recorded before failing: a retry that reused this state would list it twice.
        self.seen.push(name.clone());
        let p = &self.params;
        if !p.trap_on.is_empty() && name.contains(&p.trap_on) && (self.attempt == 1 || p.trap_always) {
            std::process::abort();
        }
        if !p.fatal_on.is_empty() && name.contains(&p.fatal_on) {
            return Err(Error::fatal(format!("{name} is poisoned")));
        }
        for _ in 0..p.log_kib {
            println!("{}", "x".repeat(1023));
        }
        if p.try_mib > 0 {
            let mut big: Vec<u8> = Vec::new();
            if big.try_reserve_exact(p.try_mib << 20).is_ok() {
                big.push(1);
            }
        }
        if p.hoard_kib > 0 {
            self.hoard.push(vec![1; p.hoard_kib << 10]);
        }
        let mut out = outputs.create("copy.bin")?;
        std::io::copy(input, &mut out)?;
        out.finish()?;
        Ok(())
    }

    fn finish(self, outputs: &mut Outputs) -> Result<()> {
        if self.params.panic_in == "finish" {
            panic!("asked to panic in finish");
        }
        let mut out = outputs.create("seen.txt")?;
        for name in &self.seen {
            writeln!(out, "{name}")?;
        }
        out.finish()?;
        Ok(())
    }
}
