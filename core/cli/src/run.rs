//! `mayfly run`: bootstrap a job, follow it to its end (the job watcher,
//! [`mayfly_ops::watch`]), print its summary. `resume` and `demo` follow
//! jobs the same way.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mayfly_core::bootstrap::{bootstrap, ready_tasks};
use mayfly_core::config::JobSpec;
use mayfly_core::job::{Layout, Manifest};
use mayfly_core::master::FinalState;
use mayfly_data::provider::ProviderHandle;
use mayfly_model::policy::{Clock, SystemClock};
use mayfly_model::units::ByteSize;
use mayfly_ops::watch::{JobWatch, Seen};

use crate::lookup::{provider_for, state_root};
use crate::text::{SHOWN, items, some_of};
use crate::{Ended, say};

/// `mayfly run`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The job file.
    job: PathBuf,
    /// Launch without first trying the tasks on a sample of the inputs
    /// (the job file's `[preflight] enabled = false`).
    #[arg(long)]
    no_preflight: bool,
}

pub(crate) fn execute(args: Args) -> Result<Ended> {
    cmd_run(&args.job, args.no_preflight)
}

fn cmd_run(job: &Path, no_preflight: bool) -> Result<Ended> {
    let mut spec = JobSpec::load(job)?;
    if no_preflight {
        spec.preflight.enabled = false;
    }
    run_spec(&spec)
}

pub(crate) fn run_spec(spec: &JobSpec) -> Result<Ended> {
    let provider = provider_for(spec)?;
    let (task, reduce) = ready_tasks(spec, &mut say)?;
    let rt = crate::runtime()?;
    let started = Instant::now();
    let verbose = std::env::var_os("MAYFLY_VERBOSE").is_some();
    // Locally, building the tasks is not the bootstrap's time: its budget starts after.
    let boot = bootstrap(
        spec,
        &task,
        reduce.as_ref(),
        &provider,
        rt.handle(),
        &SystemClock,
        Default::default(),
        &mut |step| {
            if verbose {
                say(&format!("bootstrap: {step}"));
            }
        },
    )
    .context("bootstrap failed")?;
    if let Some(report) = &boot.preflight {
        for note in &report.notes {
            say(note);
        }
        if !report.tried.is_empty() {
            say(&crate::plan::preflight_line(report));
        }
    }
    let plan = &boot.manifest.plan;
    let (max, mean) = plan.balance();
    println!(
        "job {}: {} input objects, {} in {} shards (largest {}, mean {}) on {} workers",
        boot.job,
        plan.objects,
        ByteSize(plan.total_bytes),
        plan.shards.len(),
        ByteSize(max),
        ByteSize(mean as u64),
        spec.workers
    );
    if plan.shards.is_empty() {
        println!("the input is empty: nothing to process (the job succeeds with no outputs)");
    }
    println!("state: {}", boot.layout.state_location());
    follow(&provider, &boot.layout, &boot.manifest, started)
}

/// Follows a job to its end, then prints the summary.
pub(crate) fn follow(
    provider: &ProviderHandle,
    layout: &Layout,
    manifest: &Manifest,
    started: Instant,
) -> Result<Ended> {
    let tty = std::io::stderr().is_terminal();
    let mut last_line = String::new();
    let mut watch = JobWatch::new(layout, manifest, provider);
    loop {
        let seen = watch.poll(SystemClock.now());
        if tty && !matches!(seen, Seen::Running(_)) {
            eprintln!();
        }
        match seen {
            Seen::Ended(fin) => return Ok(summary(layout, manifest, &fin, started)),
            Seen::Overdue => {
                let state = state_root(manifest);
                eprintln!(
                    "error: job {} passed its deadline without ending cleanly (no final state); \
                     `mayfly reap --state {state}` ends whatever is left, `mayfly logs {} --state {state}` tells what happened",
                    manifest.job, manifest.job
                );
                return Ok(Ended::TaskFailed);
            }
            Seen::MasterLost => {
                eprintln!(
                    "error: the master of job {} is gone before the job ended; `mayfly resume {}` continues it (committed shards are kept)",
                    manifest.job, manifest.job
                );
                return Ok(Ended::MasterLost);
            }
            Seen::Running(None) => {}
            Seen::Running(Some(st)) => {
                let c = st.counts;
                let pct = (st.committed_bytes * 100).checked_div(st.total_bytes).unwrap_or(100);
                let left = st.expires_at.saturating_sub(st.now) / 1000;
                let line = format!(
                    "[{pct:>3}%] {}/{} shards committed, {} running, {} failed, {} retries; deadline in {left}s",
                    c.committed, st.shards, c.leased, c.failed, st.retries
                );
                if tty {
                    eprint!("\r{line}   ");
                    let _ = std::io::stderr().flush();
                } else if line != last_line {
                    eprintln!("{line}");
                }
                last_line = line;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn summary(layout: &Layout, manifest: &Manifest, fin: &FinalState, started: Instant) -> Ended {
    let c = fin.counts;
    let map_outputs = fin.outputs.iter().filter(|o| o.starts_with("map/")).count();
    let mut quarantined = if fin.quarantined.is_empty() {
        String::new()
    } else {
        format!("; {} quarantined", items(fin.quarantined.len()))
    };
    match fin.replacements.len() {
        0 => {}
        1 => quarantined.push_str("; 1 lost worker replaced"),
        n => quarantined.push_str(&format!("; {n} lost workers replaced")),
    }
    println!(
        "{} in {:.1}s: {} shards committed, {} failed, {} retries; {} map outputs{quarantined}",
        match fin.reason.as_str() {
            "done" => "finished",
            "storage" => "ENDED: ITS STORAGE REFUSED EVERY COMMIT (limits.storage_outage)",
            _ => "ENDED AT THE DEADLINE",
        },
        started.elapsed().as_secs_f64(),
        c.committed,
        c.failed,
        fin.retries,
        map_outputs
    );
    if let Some(r) = fin.reduce {
        let partitions = r.committed + r.failed + r.pending + r.leased;
        let noun = if partitions == 1 { "partition" } else { "partitions" };
        if c.failed > 0 {
            println!("  reduce: not run ({partitions} {noun}): the map did not commit every shard");
        } else {
            println!("  reduce: {} of {partitions} {noun} committed, {} failed", r.committed, r.failed);
        }
    }
    let map_failed = fin.failed.iter().filter(|(s, _)| (*s as usize) < manifest.plan.shards.len());
    for (shard, error) in map_failed.clone().take(SHOWN) {
        let items: Vec<String> = manifest.plan.shards[*shard as usize].items.iter().map(|i| i.key()).collect();
        println!("  failed shard {shard} ({}): {error}", some_of(&items));
    }
    if map_failed.clone().count() > SHOWN {
        println!("  ... and {} more failed shards (all in _manifest.json)", map_failed.count() - SHOWN);
    }
    for r in fin.replacements.iter().take(SHOWN) {
        let lost = r.lost.as_deref().unwrap_or("a worker that never reached the master");
        println!("  {} replaced {lost}", r.by);
    }
    for (shard, q) in fin.quarantined.iter().take(SHOWN) {
        println!("  quarantined item {} (shard {shard}, failed {} times): {}", q.key, q.attempts, q.error);
    }
    if fin.quarantined.len() > SHOWN {
        println!(
            "  ... and {} more quarantined items (all in _manifest.json; `mayfly replay` runs them again)",
            fin.quarantined.len() - SHOWN
        );
    }
    for o in fin.outputs.iter().filter(|o| o.starts_with("reduce/")) {
        println!("  reduce output: {}", layout.output.display(o));
    }
    if let Some(e) = &fin.reduce_error {
        println!("  the reduce failed: {e}");
    }
    if !fin.unpublished.is_empty() {
        let shards: Vec<String> = fin.unpublished.iter().map(u32::to_string).collect();
        println!(
            "  NOT COMPLETE: committed shards {} could not be moved into place (the storage refused); \
             their outputs are still staged under {}",
            some_of(&shards),
            layout.output.display("_mayfly/staging")
        );
    }
    println!("outputs: {} (listed in _manifest.json)", layout.output.location());
    println!("logs: mayfly logs {} --state {}", manifest.job, state_root(manifest));
    if fin.reason == "done" && c.failed == 0 && fin.reduce_error.is_none() && fin.unpublished.is_empty() {
        Ended::Success
    } else {
        Ended::TaskFailed
    }
}
