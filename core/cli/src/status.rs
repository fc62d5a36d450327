//! `mayfly status`: a job live while it runs, its summary once it has ended.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mayfly_core::job::{Layout, Manifest, keys};
use mayfly_core::master::FinalState;
use mayfly_model::policy::{Clock, SystemClock};
use mayfly_model::units::{ByteSize, HumanDuration, Utc};
use mayfly_ops::report::AttemptEnd;
use mayfly_ops::watch::{JobWatch, Seen};

use crate::Ended;
use crate::lookup::{StateArgs, find_job, node_provider};
use crate::text::{SHOWN, items};

/// `mayfly status`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The job id.
    job: String,
    #[command(flatten)]
    at: StateArgs,
    /// Print as JSON (one snapshot).
    #[arg(long)]
    json: bool,
    /// Print one snapshot and exit.
    #[arg(long)]
    once: bool,
    /// How often the live view refreshes.
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    every: HumanDuration,
}

pub(crate) fn execute(args: Args) -> Result<Ended> {
    cmd_status(&args.job, &args.at, &StatusArgs { json: args.json, once: args.once, every: args.every.0 })
}

/// How `mayfly status` shows a job.
pub(crate) struct StatusArgs {
    pub json: bool,
    pub once: bool,
    pub every: Duration,
}

fn cmd_status(job: &str, at: &StateArgs, args: &StatusArgs) -> Result<Ended> {
    let (layout, manifest) = find_job(job, &at.state, at.provider.as_deref(), &at.settings)?;
    let provider = node_provider(&manifest)?;
    let mut watch = JobWatch::new(&layout, &manifest, &provider);
    watch.timeout = Duration::from_secs(5);
    let tty = std::io::stdout().is_terminal() && !args.json;
    let mut last = String::new();
    // Since when a running master has not answered (`status` says so after 15 s).
    let mut silent_since = Instant::now();
    loop {
        let st = match watch.poll(SystemClock.now()) {
            Seen::Ended(_) => return ended_status(&layout, &manifest, args.json),
            Seen::Running(Some(st)) => {
                silent_since = Instant::now();
                st
            }
            Seen::Running(None) => {
                if silent_since.elapsed() > Duration::from_secs(15) {
                    bail!(
                        "the master of job {job} runs but does not answer (it may still be starting); try again in a moment"
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            lost @ (Seen::MasterLost | Seen::Overdue) => {
                let past = matches!(lost, Seen::Overdue) || SystemClock.now() >= manifest.expires_at;
                eprintln!(
                    "error: job {job} has no running master and did not end; {}",
                    if past {
                        format!(
                            "it is past its deadline: `mayfly reap --state {}` ends what is left, `mayfly report {job}` tells what happened",
                            at.state
                        )
                    } else {
                        format!("`mayfly resume {job}` continues it")
                    }
                );
                return Ok(Ended::MasterLost);
            }
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&st)?);
            return Ok(Ended::Success);
        }
        let view = status_view(&st);
        if tty {
            // Redraw in place: home the cursor, clear the screen.
            print!("\x1b[H\x1b[2J{view}");
            let _ = std::io::stdout().flush();
        } else if view != last {
            println!("{view}");
        }
        if args.once {
            return Ok(Ended::Success);
        }
        last = view;
        std::thread::sleep(args.every);
    }
}

/// A running job's status as a few lines of text: shards, bytes and rate,
/// ETA, the deadline, and a line per worker.
fn status_view(st: &mayfly_core::api::Status) -> String {
    use std::fmt::Write as _;
    let c = st.counts;
    let secs = |ms: u64| ms as f64 / 1000.0;
    let mut out = String::new();
    let elapsed = st.now.saturating_sub(st.started_at);
    let _ = writeln!(
        out,
        "job {} running for {:.0}s; deadline in {:.0}s",
        st.job,
        secs(elapsed),
        secs(st.expires_at.saturating_sub(st.now))
    );
    let pct = (st.committed_bytes * 100).checked_div(st.total_bytes).unwrap_or(100);
    let _ = writeln!(
        out,
        "shards  {}/{} committed, {} running, {} pending, {} failed; {} retries",
        c.committed, st.shards, c.leased, c.pending, c.failed, st.retries
    );
    if let Some(r) = st.reduce {
        let _ = writeln!(
            out,
            "reduce  {}/{} partitions committed, {} running, {} {}, {} failed",
            r.committed,
            r.committed + r.leased + r.pending + r.failed,
            r.leased,
            r.pending,
            if c.committed == st.shards { "pending" } else { "waiting for the map" },
            r.failed
        );
    }
    if st.quarantined_items > 0 {
        let _ = writeln!(
            out,
            "items   {} quarantined, of at most {} the job allows; their shards commit without them:",
            st.quarantined_items, st.max_failed_items
        );
        for (shard, q) in &st.quarantined {
            let _ = writeln!(out, "  {} (shard {shard}, failed {} times): {}", q.key, q.attempts, q.error);
        }
        let more = st.quarantined_items.saturating_sub(st.quarantined.len() as u64);
        if more > 0 {
            let _ = writeln!(out, "  ... and {more} more");
        }
    }
    let working = st.first_lease_at.map_or(0, |t| st.now.saturating_sub(t));
    let rate = if working > 0 { st.committed_bytes as f64 / secs(working) } else { 0.0 };
    let left = st.total_bytes.saturating_sub(st.committed_bytes);
    let eta = if left == 0 {
        "done".to_owned()
    } else if rate > 0.0 {
        let eta = left as f64 / rate;
        let late = st.now as f64 + eta * 1000.0 > st.expires_at as f64;
        format!("ETA {eta:.0}s{}", if late { " (after the deadline!)" } else { "" })
    } else {
        "ETA unknown (nothing committed yet)".to_owned()
    };
    let _ = writeln!(
        out,
        "input   {} of {} ({pct}%) at {}/s; {eta}",
        ByteSize(st.committed_bytes),
        ByteSize(st.total_bytes),
        ByteSize(rate as u64)
    );
    let _ = writeln!(
        out,
        "{:<12} {:>9} {:>10} {:>11} {:>6} {:>5} {:>10}  now",
        "node", "committed", "bytes", "rate", "failed", "lost", "last seen"
    );
    for w in &st.workers {
        let rate = if working > 0 { w.committed_bytes as f64 / secs(working) } else { 0.0 };
        let now: Vec<String> = w.leased.iter().map(|s| format!("shard {s}")).collect();
        let _ = writeln!(
            out,
            "{:<12} {:>9} {:>10} {:>11} {:>6} {:>5} {:>9.1}s  {}",
            w.node,
            w.committed,
            ByteSize(w.committed_bytes).to_string(),
            format!("{}/s", ByteSize(rate as u64)),
            w.failed,
            w.lost,
            secs(st.now.saturating_sub(w.last_seen)),
            match w.held_until {
                Some(until) => format!("HELD ({:#} left)", HumanDuration::from_millis(until.saturating_sub(st.now))),
                None if now.is_empty() => "idle".to_owned(),
                None => now.join(", "),
            }
        );
    }
    out
}

/// An ended job's summary, from its final state and journal.
fn ended_status(layout: &Layout, manifest: &Manifest, json: bool) -> Result<Ended> {
    let fin: FinalState = layout.state.read_json(keys::FINAL)?.context("final.json vanished")?;
    let report = mayfly_ops::history::collect(layout, manifest, SystemClock.now());
    if json {
        // final.json's fields, and the job's history (every attempt, each shard).
        let mut doc = serde_json::to_value(&fin)?;
        doc["history"] = serde_json::to_value(&report)?;
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(Ended::Success);
    }
    let c = fin.counts;
    let took = fin.ended_at.saturating_sub(manifest.created_at) as f64 / 1000.0;
    println!(
        "job {} ended ({}) after {took:.1}s: {} of {} shards committed, {} failed, {} retries; {} outputs",
        manifest.job,
        fin.reason,
        c.committed,
        manifest.plan.shards.len(),
        c.failed,
        fin.retries,
        fin.outputs.len()
    );
    if let Some(r) = fin.reduce {
        println!(
            "reduce  {} of {} partitions committed, {} failed",
            r.committed,
            r.committed + r.leased + r.pending + r.failed,
            r.failed
        );
    }
    println!("input   {} of {} committed", ByteSize(report.committed_bytes), ByteSize(report.total_bytes));
    println!("{:<12} {:>8} {:>9} {:>10} {:>6} {:>5}", "node", "attempts", "committed", "bytes", "failed", "lost");
    for node in report.nodes.iter().filter(|n| n.as_str() != "master") {
        let mine: Vec<_> = report.attempts.iter().filter(|a| &a.node == node).collect();
        let done: Vec<_> = mine.iter().filter(|a| a.outcome == AttemptEnd::Committed).collect();
        let bytes: u64 = done.iter().filter_map(|a| report.shards.get(a.shard as usize)).map(|s| s.bytes).sum();
        let count = |o: AttemptEnd| mine.iter().filter(|a| a.outcome == o).count();
        println!(
            "{:<12} {:>8} {:>9} {:>10} {:>6} {:>5}",
            node,
            mine.len(),
            done.len(),
            ByteSize(bytes).to_string(),
            count(AttemptEnd::Retried) + count(AttemptEnd::Failed),
            count(AttemptEnd::Lost)
        );
    }
    let map_shards = manifest.plan.shards.len() as u32;
    for (shard, error) in fin.failed.iter().take(SHOWN) {
        match shard.checked_sub(map_shards) {
            Some(partition) => println!("failed reduce partition {partition} (shard {shard}): {error}"),
            None => println!("failed shard {shard}: {error}"),
        }
    }
    if fin.failed.len() > SHOWN {
        println!("... and {} more failed shards (all in _manifest.json)", fin.failed.len() - SHOWN);
    }
    if !fin.quarantined.is_empty() {
        println!("{} quarantined (committed without them):", items(fin.quarantined.len()));
        for (shard, q) in fin.quarantined.iter().take(SHOWN) {
            println!("  {} (shard {shard}, failed {} times): {}", q.key, q.attempts, q.error);
        }
        if fin.quarantined.len() > SHOWN {
            println!("  ... and {} more (all in _manifest.json)", fin.quarantined.len() - SHOWN);
        }
    }
    let now = SystemClock.now();
    for h in mayfly_core::hold::all(layout).unwrap_or_default().iter().filter(|h| h.until > now) {
        println!(
            "held: {} until {} ({:#} left; asked by {})",
            h.node,
            Utc(h.until),
            HumanDuration::from_millis(h.until - now),
            h.asked_by
        );
    }
    if let Some(e) = &fin.reduce_error {
        println!("the reduce failed: {e}");
    }
    Ok(Ended::Success)
}
