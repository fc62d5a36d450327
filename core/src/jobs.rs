//! The job commands of the CLI: run, plan, status, logs, resume, reap, demo,
//! and the hidden `node` that providers launch.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mayfly_core::api::Client;
use mayfly_core::api::MasterInfo;
use mayfly_core::bootstrap::{Resumed, absolute, absolute_location, bootstrap, list_inputs, ready_tasks};
use mayfly_core::config::JobSpec;
use mayfly_core::history::{self, LogFilter};
use mayfly_core::job::{Layout, Manifest, keys, read_json};
use mayfly_core::master::FinalState;
use mayfly_core::policy::{Clock, SystemClock};
use mayfly_core::provider::{ProviderHandle, Role, Selection};
use mayfly_core::report::AttemptEnd;
use mayfly_core::store::{Location, Principal, Store};
use mayfly_core::units::ByteSize;
use mayfly_core::watch::{JobWatch, Seen};

use crate::{EXIT_TASK_FAILED, EXIT_USAGE, say};

/// Exit code when the master was lost and the job must be resumed.
const EXIT_MASTER_LOST: u8 = 3;
/// Exit code of a node that its dead-man switch ended (the deadline passed).
const EXIT_DEADLINE: i32 = 4;

fn provider_for(spec: &JobSpec) -> Result<ProviderHandle> {
    Ok(spec.provider_handle()?)
}

pub(crate) fn cmd_run(job: &Path) -> Result<ExitCode> {
    let spec = JobSpec::load(job)?;
    run_spec(&spec)
}

fn run_spec(spec: &JobSpec) -> Result<ExitCode> {
    let provider = provider_for(spec)?;
    let (task, reduce) = ready_tasks(spec, &mut say).map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let verbose = std::env::var_os("MAYFLY_VERBOSE").is_some();
    // Locally, building the tasks is not the bootstrap's time: its budget starts after.
    let boot = bootstrap(spec, &task, reduce.as_ref(), &provider, &SystemClock, Default::default(), &mut |step| {
        if verbose {
            say(&format!("bootstrap: {step}"));
        }
    })
    .context("bootstrap failed")?;
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
fn follow(provider: &ProviderHandle, layout: &Layout, manifest: &Manifest, started: Instant) -> Result<ExitCode> {
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
                return Ok(ExitCode::from(EXIT_TASK_FAILED));
            }
            Seen::MasterLost => {
                eprintln!(
                    "error: the master of job {} is gone before the job ended; `mayfly resume {}` continues it (committed shards are kept)",
                    manifest.job, manifest.job
                );
                return Ok(ExitCode::from(EXIT_MASTER_LOST));
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

/// Failed shards, quarantined items: how many a summary names (the rest are counted).
const SHOWN: usize = 10;

/// At most [`SHOWN`] names, then how many more.
fn some_of(names: &[String]) -> String {
    let mut text = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

/// `n item(s)`.
fn items(n: usize) -> String {
    format!("{n} item{}", if n == 1 { "" } else { "s" })
}

fn summary(layout: &Layout, manifest: &Manifest, fin: &FinalState, started: Instant) -> ExitCode {
    let c = fin.counts;
    let map_outputs = fin.outputs.iter().filter(|o| o.starts_with("map/")).count();
    let quarantined = if fin.quarantined.is_empty() {
        String::new()
    } else {
        format!("; {} quarantined", items(fin.quarantined.len()))
    };
    println!(
        "{} in {:.1}s: {} shards committed, {} failed, {} retries; {} map outputs{quarantined}",
        if fin.reason == "done" { "finished" } else { "ENDED AT THE DEADLINE" },
        started.elapsed().as_secs_f64(),
        c.committed,
        c.failed,
        fin.retries,
        map_outputs
    );
    for (shard, error) in fin.failed.iter().take(SHOWN) {
        let items: Vec<String> = manifest.plan.shards[*shard as usize].items.iter().map(|i| i.key()).collect();
        println!("  failed shard {shard} ({}): {error}", some_of(&items));
    }
    if fin.failed.len() > SHOWN {
        println!("  ... and {} more failed shards (all in _manifest.json)", fin.failed.len() - SHOWN);
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
        println!("  the reduce task failed: {e}");
    }
    println!("outputs: {} (listed in _manifest.json)", layout.output.location());
    println!("logs: mayfly logs {} --state {}", manifest.job, state_root(manifest));
    if fin.reason == "done" && c.failed == 0 && fin.reduce_error.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_TASK_FAILED)
    }
}

pub(crate) fn cmd_plan(job: &Path, json: bool, worker_rate: u64) -> Result<()> {
    let spec = JobSpec::load(job)?;
    let provider = provider_for(&spec)?;
    let who = Principal { job: "plan".into(), state: spec.state.to_string(), node: "cli".into() };
    let started = Instant::now();
    let input = Store::open(&absolute_location(&spec.input), &provider, &who).map_err(anyhow::Error::msg)?;
    let objects = list_inputs(&input, spec.glob.as_deref()).map_err(anyhow::Error::msg)?;
    let p = mayfly_core::bootstrap::plan_objects(&spec, &input, &objects)?;
    let planned_in = started.elapsed();
    let (max, mean) = p.balance();
    let items: u64 = p.shards.iter().map(|s| s.items.len() as u64).sum();
    let estimate = mayfly_core::cost::estimate(&mayfly_core::cost::EstimateInput {
        nodes: provider.info().nodes.as_ref(),
        prices: &spec.prices,
        workers: spec.workers,
        largest_shard: max,
        total_bytes: p.total_bytes,
        items,
        worker_rate,
        deadline: spec.deadline,
    });
    let output = Store::open(&absolute_location(&spec.output), &provider, &who);
    let checked = mayfly_core::check::check(&mayfly_core::check::Facts {
        spec: &spec,
        plan: &p,
        planned_in,
        limits: provider.limits(),
        provider: provider.name(),
        estimate: &estimate,
        worker_rate,
        output: output.and_then(|o| mayfly_core::bootstrap::check_output(&o)),
    });
    let secs = |d: Duration| d.as_secs_f64();
    let (bootstrap_limit, bootstrap_budget) = (checked.bootstrap_limit, checked.bootstrap_budget);
    let (credential_ttl, renew_every, renewals) = (checked.credential_ttl, checked.renew_every, checked.renewals);
    let warnings = &checked.warnings;
    if json {
        let doc = serde_json::json!({
            "plan": p,
            "estimate": estimate,
            "bootstrap": {
                "planned_in_secs": secs(planned_in),
                "budget_secs": secs(bootstrap_budget),
                "provider_limit_secs": secs(bootstrap_limit),
            },
            "credentials": {
                "ttl_secs": secs(credential_ttl),
                "renewed_every_secs": secs(renew_every),
                "renewals_per_node": renewals,
            },
            "warnings": warnings,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let floor = match checked.raised_from {
        Some(derived) => format!(
            ", raised from {} by the floor [sharding] min_shard_bytes = {}, short of leaving a worker no shard",
            ByteSize(derived),
            ByteSize(spec.min_shard_bytes)
        ),
        None => String::new(),
    };
    println!(
        "{} objects, {} in {} shards (target {}{floor}); balance: largest {} / mean {} = {:.2}",
        p.objects,
        ByteSize(p.total_bytes),
        p.shards.len(),
        ByteSize(p.target_bytes),
        ByteSize(max),
        ByteSize(mean as u64),
        if mean > 0.0 { max as f64 / mean } else { 1.0 }
    );
    for s in p.shards.iter().take(20) {
        let items: Vec<String> = s.items.iter().take(3).map(|i| i.key()).collect();
        let more = if s.items.len() > 3 { format!(" and {} more", s.items.len() - 3) } else { String::new() };
        println!("  shard {:>4}  {:>10}  {}{more}", s.id, ByteSize(s.bytes).to_string(), items.join(", "));
    }
    if p.shards.len() > 20 {
        println!("  ... {} more shards", p.shards.len() - 20);
    }
    println!(
        "time: about {:.1}s of work at {}/s per worker (--rate) on {} workers; deadline {}",
        estimate.expected_secs,
        ByteSize(worker_rate),
        spec.workers,
        mayfly_core::units::HumanDuration(spec.deadline)
    );
    println!(
        "bootstrap: listing and planning took {:.2}s here; budget {:.0}s ({} allows {:.0}s)",
        secs(planned_in),
        secs(bootstrap_budget),
        provider.name(),
        secs(bootstrap_limit)
    );
    println!(
        "credentials: live {}, renewed every {} by the rule: about {renewals} renewal(s) per node",
        mayfly_core::units::HumanDuration(credential_ttl),
        mayfly_core::units::HumanDuration(renew_every)
    );
    println!("cost ({}):", provider.name());
    for n in &estimate.nodes {
        let price = match (n.usd_per_hour, &n.price_source) {
            (Some(usd), Some(from)) => format!("${usd:.4}/h ({from})"),
            _ => "no price".to_owned(),
        };
        println!(
            "  {:<8} {:>3} x {:<16} {price:<32} {:>8.4} node-h expected, {:>8.2} at most",
            n.role, n.count, n.node_type, n.expected_node_hours, n.ceiling_node_hours
        );
    }
    match (estimate.expected_usd, estimate.ceiling_usd) {
        (Some(e), Some(c)) => {
            println!("  total    ${e:.4} expected; at most ${c:.2} (every node to the deadline: no node outlives it)")
        }
        _ => println!("  total    unknown: some node types have no price (see the warnings)"),
    }
    for w in warnings {
        println!("warning: {w}");
    }
    Ok(())
}

/// Where the jobs' states are, as `--state` names it: the root of a job's
/// own state location.
fn state_root(manifest: &Manifest) -> String {
    let own = manifest.state.as_str();
    own.strip_suffix(&format!("/{}", manifest.job)).unwrap_or(own).to_owned()
}

/// Finds job `job` under the state location `state` (a path or a URL; a
/// remote one is read with `--provider`/`--set`, else the built-in
/// provider serves paths and file:// URLs).
fn find_job(job: &str, state: &str, provider: Option<&str>, settings: &[String]) -> Result<(Layout, Manifest)> {
    let root = Location::parse(state, Path::new(".")).map_err(|e| anyhow::anyhow!("--state {state:?}: {e}"))?;
    let root = absolute_location(&root);
    let handle = match provider {
        Some(p) => ProviderHandle::select(&provider_arg(p, settings)?)?,
        None => ProviderHandle::select(&Selection::default())?,
    };
    let job_state = root.join(job);
    let who = Principal { job: job.to_owned(), state: job_state.to_string(), node: "cli".into() };
    let store = Store::open(&job_state, &handle, &who)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("--state {state}: pass --provider (and --set) for the provider that serves it"))?;
    let manifest: Manifest = store
        .read_json(keys::MANIFEST)?
        .with_context(|| format!("no job {job} under {state} (use --state to say where its state is)"))?;
    let layout = Layout::open(&job_state, job, &manifest.output, &handle, "cli").map_err(anyhow::Error::msg)?;
    Ok((layout, manifest))
}

/// How `mayfly status` shows a job.
pub(crate) struct StatusArgs {
    pub json: bool,
    pub once: bool,
    pub every: Duration,
}

pub(crate) fn cmd_status(job: &str, at: &StateArgs, args: &StatusArgs) -> Result<ExitCode> {
    let (layout, manifest) = find_job(job, &at.state, at.provider.as_deref(), &at.settings)?;
    let provider = node_provider(&manifest)?;
    let mut watch = JobWatch::new(&layout, &manifest, &provider);
    watch.timeout = Duration::from_secs(5);
    let tty = std::io::stdout().is_terminal() && !args.json;
    let mut last = String::new();
    // How long a running master may stay silent before `status` says so.
    let silent_since = Instant::now();
    loop {
        let st = match watch.poll(SystemClock.now()) {
            Seen::Ended(_) => return ended_status(&layout, &manifest, args.json),
            Seen::Running(Some(st)) => st,
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
                return Ok(ExitCode::from(EXIT_MASTER_LOST));
            }
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&st)?);
            return Ok(ExitCode::SUCCESS);
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
            return Ok(ExitCode::SUCCESS);
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
                Some(until) =>
                    format!("HELD ({} left)", mayfly_core::report::fmt_duration(until.saturating_sub(st.now))),
                None if now.is_empty() => "idle".to_owned(),
                None => now.join(", "),
            }
        );
    }
    out
}

/// An ended job's summary, from its final state and journal.
fn ended_status(layout: &Layout, manifest: &Manifest, json: bool) -> Result<ExitCode> {
    let fin: FinalState = layout.state.read_json(keys::FINAL)?.context("final.json vanished")?;
    let report = mayfly_core::history::collect(layout, manifest, SystemClock.now());
    if json {
        // final.json's fields, and the job's history (every attempt, each shard).
        let mut doc = serde_json::to_value(&fin)?;
        doc["history"] = serde_json::to_value(&report)?;
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
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
    for (shard, error) in fin.failed.iter().take(SHOWN) {
        println!("failed shard {shard}: {error}");
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
            "held: {} until {} ({} left; asked by {})",
            h.node,
            mayfly_core::report::fmt_time(h.until),
            mayfly_core::report::fmt_duration(h.until - now),
            h.asked_by
        );
    }
    if let Some(e) = &fin.reduce_error {
        println!("the reduce task failed: {e}");
    }
    Ok(ExitCode::SUCCESS)
}

/// What `mayfly logs` shows, and whether it follows.
pub(crate) struct LogsArgs {
    pub filter: LogFilter,
    pub follow: bool,
}

pub(crate) fn cmd_logs(job: &str, at: &StateArgs, args: &LogsArgs) -> Result<ExitCode> {
    let (layout, manifest) = find_job(job, &at.state, at.provider.as_deref(), &at.settings)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // How much of each node's log is printed (follow prints only what is new).
    let mut printed: std::collections::HashMap<String, usize> = Default::default();
    let mut ended_polls = 0;
    let mut polls = 0u64;
    let provider = if args.follow { Some(node_provider(&manifest)?) } else { None };
    let mut watch = provider.as_ref().map(|p| JobWatch::new(&layout, &manifest, p));
    loop {
        // Read before listing: a job that ends meanwhile is read once more.
        let ended = layout.state.exists(keys::FINAL);
        let files = match history::log_keys(&layout) {
            Ok(files) => files,
            Err(_) if args.follow => Vec::new(),
            Err(e) => bail!("no logs for job {job}: {e}"),
        };
        let files: Vec<_> =
            files.into_iter().filter(|(name, _)| args.filter.node.as_deref().is_none_or(|n| n == name)).collect();
        if files.is_empty() && !args.follow {
            match &args.filter.node {
                Some(n) => bail!("no log for node {n} of job {job}; `mayfly logs {job}` lists every node's"),
                None => bail!("no logs for job {job} yet"),
            }
        }
        for (name, key) in files {
            let bytes = layout.state.get(&key)?.unwrap_or_default();
            let from = printed.get(&name).copied().unwrap_or(0);
            // Whole lines only: a line being written is printed when it ends.
            let upto = if args.follow && !ended {
                bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
            } else {
                bytes.len()
            };
            if upto <= from {
                continue;
            }
            for line in String::from_utf8_lossy(&bytes[from..upto]).lines() {
                let parsed = history::parse_line(&name, line);
                // A closed pipe (`| head`) ends the listing quietly.
                if args.filter.shows(&parsed) && writeln!(out, "{name}: {line}").is_err() {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            let _ = out.flush();
            printed.insert(name, upto);
        }
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        // Following: until the job has ended and its nodes had their last
        // word (a worker writes after the master's end), or the deadline.
        if ended || SystemClock.now() > manifest.expires_at + 5000 {
            ended_polls += 1;
            if ended_polls > 10 {
                return Ok(ExitCode::SUCCESS);
            }
        } else {
            // A job whose master is lost writes no more: say so rather
            // than wait for its deadline.
            polls += 1;
            if polls.is_multiple_of(10)
                && let Some(watch) = watch.as_mut()
                && matches!(watch.poll(SystemClock.now()), Seen::MasterLost)
            {
                let _ = out.flush();
                eprintln!(
                    "error: no master of job {job} is running and it did not end (its master was lost); \
                     `mayfly resume {job}` continues it"
                );
                return Ok(ExitCode::from(EXIT_MASTER_LOST));
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub(crate) fn cmd_resume(job: &str, at: &StateArgs) -> Result<ExitCode> {
    let (layout, manifest) = find_job(job, &at.state, at.provider.as_deref(), &at.settings)?;
    let provider = node_provider(&manifest)?;
    let started = Instant::now();
    let verbose = std::env::var_os("MAYFLY_VERBOSE").is_some();
    let resumed = mayfly_core::bootstrap::resume(&layout, &manifest, &provider, &SystemClock, &mut |step| {
        if verbose {
            say(&format!("resume: {step}"));
        }
    })?;
    match resumed {
        Resumed::AlreadyEnded => {
            println!("job {job} already ended; nothing to resume");
            Ok(ExitCode::SUCCESS)
        }
        Resumed::Launched { workers, .. } => {
            println!("job {job} resumed with a new master and {workers} new workers");
            follow(&provider, &layout, &manifest, started)
        }
    }
}

/// The provider `--provider` names (a name, or a path when it has a `/`),
/// with `--set key=value` settings.
fn provider_arg(provider: &str, settings: &[String]) -> Result<Selection> {
    let mut selection = Selection { name: None, ..Default::default() };
    if provider.contains('/') {
        selection.path = Some(absolute(Path::new(provider)));
    } else {
        selection.name = Some(provider.to_owned());
    }
    for kv in settings {
        let (key, value) =
            kv.split_once('=').with_context(|| format!("--set {kv:?}: expected KEY=VALUE (e.g. region=eu-west-1)"))?;
        // Numbers and booleans as in a job file; anything else is a string.
        let value = serde_json::from_str::<serde_json::Value>(value)
            .ok()
            .filter(|v| v.is_number() || v.is_boolean())
            .unwrap_or_else(|| serde_json::Value::String(value.to_owned()));
        if key == "timeout" {
            let d: mayfly_core::units::HumanDuration =
                value.as_str().unwrap_or_default().parse().map_err(|e| anyhow::anyhow!("--set timeout: {e}"))?;
            selection.timeout_ms = Some(d.0.as_millis() as u64);
        } else {
            selection.settings.insert(key.to_owned(), value);
        }
    }
    Ok(selection)
}

pub(crate) fn cmd_serve(provider: &str, settings: &[String]) -> Result<ExitCode> {
    let mut selection = provider_arg(provider, settings)?;
    if let Ok(text) = std::env::var(mayfly_provider_api::SETTINGS_ENV) {
        let from_env: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).with_context(|| {
            format!("{}: expected a JSON object of settings, got {text:?}", mayfly_provider_api::SETTINGS_ENV)
        })?;
        for (k, v) in from_env {
            selection.settings.entry(k).or_insert(v);
        }
    }
    let handle = ProviderHandle::select(&selection)?;
    if handle.info().capabilities.entrypoint.is_none() {
        bail!("provider {} has no serverless entrypoint to serve", handle.name());
    }
    mayfly_core::bootstrap::serve(&handle)?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn cmd_package(provider: &str, out: &Path, workspace: &Path, profile: &str) -> Result<ExitCode> {
    let mut options = mayfly_core::package::Options::for_provider(provider, absolute(workspace), absolute(out));
    options.profile = profile.to_owned();
    let manifest = mayfly_core::package::package(&options, &mut crate::say)?;
    for file in [&manifest.function, &manifest.node] {
        let path = options.out.join(file);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!("{} ({})", path.display(), mayfly_core::units::ByteSize(size));
    }
    println!(
        "built for {} Linux with glibc {} or newer; next: mayfly deploy {provider} --from {}",
        manifest.architecture,
        manifest.glibc,
        options.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// What `mayfly deploy` is told besides the provider and the package.
pub(crate) struct DeployArgs {
    pub function: String,
    pub role: String,
    pub artifacts: String,
    pub timeout_s: u64,
    pub memory_mb: u64,
}

pub(crate) fn cmd_deploy(provider: &str, settings: &[String], from: &Path, args: DeployArgs) -> Result<ExitCode> {
    let manifest = mayfly_core::package::read_manifest(from)?;
    let selection = provider_arg(provider, settings)?;
    let handle = ProviderHandle::select(&selection)?;
    if manifest.provider != handle.name() {
        bail!("{} is a package for {}, not for {}", from.display(), manifest.provider, handle.name());
    }
    let location = mayfly_core::store::Location::parse(&args.artifacts, Path::new("/"))
        .map_err(|e| anyhow::anyhow!("--artifacts {}: {e}", args.artifacts))?;
    if location.scheme().is_none() {
        bail!(
            "--artifacts {}: expected an object store URL (s3://bucket/prefix) the platform can read",
            args.artifacts
        );
    }
    let who =
        mayfly_core::store::Principal { job: "deploy".into(), state: args.artifacts.clone(), node: "deploy".into() };
    let store = mayfly_core::store::Store::open(&location, &handle, &who).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The nodes' artifact under its content's hash: a job's nodes all run the
    // mayfly it was launched with, whatever is deployed later (the user data
    // checks the hash too).
    let node_key = mayfly_core::package::node_key(&from.join(&manifest.node))?;
    for (file, key) in [(&manifest.function, manifest.function.as_str()), (&manifest.node, node_key.as_str())] {
        store
            .upload(&from.join(file), key)
            .with_context(|| format!("uploading {} to {}", from.join(file).display(), location.join(key)))?;
        crate::say(&format!("uploaded {}", location.join(key)));
    }
    let request = mayfly_provider_api::DeployRequest {
        function: args.function,
        role: args.role,
        code_url: location.join(&manifest.function).as_str().to_owned(),
        architecture: manifest.architecture.clone(),
        settings: selection.settings.clone(),
        timeout_s: args.timeout_s,
        memory_mb: args.memory_mb,
    };
    let answer = handle.deploy(request)?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    println!(
        "jobs on this function: set `node_artifact = \"{}\"` in their [provider] section",
        location.join(&node_key)
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn cmd_permissions(
    provider: Option<&str>,
    settings: &[String],
    locations: &[String],
    job: Option<&Path>,
) -> Result<ExitCode> {
    let (handle, mut all) = match (job, provider) {
        (Some(job), _) => {
            let spec = JobSpec::load(job)?;
            let urls = [&spec.input, &spec.output, &spec.state].map(|l| l.as_str().replace("/{job}", ""));
            (provider_for(&spec)?, urls.to_vec())
        }
        (None, Some(p)) => (ProviderHandle::select(&provider_arg(p, settings)?)?, Vec::new()),
        (None, None) => bail!("name a provider (`mayfly iam-policy aws`) or a job file (`--job job.toml`)"),
    };
    all.extend(locations.iter().cloned());
    let policies = handle.permissions(all)?;
    println!("{}", serde_json::to_string_pretty(&policies)?);
    Ok(ExitCode::SUCCESS)
}

/// Ends `provider`'s nodes under `state` that are past their deadline (each
/// once across calls, by `seen`); returns how many.
fn reap_with(
    provider: &ProviderHandle,
    state: &Path,
    now: u64,
    seen: &mut std::collections::HashSet<(String, String, String)>,
) -> Result<usize> {
    let expired: Vec<_> = provider
        .list_all(state)?
        .into_iter()
        .filter(|n| n.expires_at <= now && seen.insert((n.job.clone(), n.node.clone(), n.id.clone())))
        .collect();
    for n in &expired {
        println!(
            "reaping {} of job {} ({} {}, expired {}s ago)",
            n.node,
            n.job,
            provider.name(),
            n.id,
            (now - n.expires_at) / 1000
        );
    }
    if !expired.is_empty() {
        provider.terminate(&expired, Duration::from_secs(2))?;
    }
    Ok(expired.len())
}

pub(crate) fn cmd_reap(state: &Path, provider: Option<&str>, settings: &[String]) -> Result<()> {
    let now = SystemClock.now();
    // Two selections of one provider list the same nodes: each node is ended once.
    let mut seen = std::collections::HashSet::new();
    if let Some(provider) = provider {
        let handle = ProviderHandle::select(&provider_arg(provider, settings)?)?;
        let reaped = reap_with(&handle, state, now, &mut seen)?;
        println!("{reaped} node(s) reaped");
        for removed in handle.sweep(handle.timeout())? {
            println!("removed {removed}");
        }
        return Ok(());
    }
    // Each job's own provider, as its manifest recorded it; jobs on the same
    // provider are listed once. A job whose manifest cannot be read is
    // reaped with the built-in provider, and said so.
    let mut selections: Vec<Selection> = Vec::new();
    for entry in std::fs::read_dir(state).with_context(|| format!("reading {}", state.display()))?.flatten() {
        if !entry.path().is_dir() {
            continue;
        }
        let selection = match read_json::<Manifest>(&entry.path().join("manifest.json")) {
            Ok(m) => m.provider,
            Err(e) => {
                eprintln!("warning: {}: {e}; reaping it with the built-in provider", entry.path().display());
                Selection::default()
            }
        };
        if !selections.contains(&selection) {
            selections.push(selection);
        }
    }
    let (mut reaped, mut failures) = (0, 0);
    for selection in selections {
        // One provider that cannot be made or asked does not stop the others' reaping.
        let done = ProviderHandle::select(&selection)
            .map_err(anyhow::Error::from)
            .and_then(|p| reap_with(&p, state, now, &mut seen));
        match done {
            Ok(n) => reaped += n,
            Err(e) => {
                failures += 1;
                eprintln!("error: reaping the nodes of provider {}: {e:#}", selection.label());
            }
        }
    }
    println!("{reaped} node(s) reaped");
    if failures > 0 {
        bail!("{failures} provider(s) could not be reaped; see above");
    }
    Ok(())
}

/// The provider a node of this job runs with: the one the job file selected,
/// as bootstrap recorded it in the manifest.
fn node_provider(manifest: &Manifest) -> Result<ProviderHandle> {
    ProviderHandle::select(&manifest.provider)
        .with_context(|| format!("making provider {} for job {}", manifest.provider.label(), manifest.job))
}

/// Where a job's state is, as the status, logs and resume commands take it.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StateArgs {
    /// The state location the job was run with (a path, or a URL such as s3://bucket/state).
    #[arg(long, default_value = ".mayfly/jobs")]
    pub state: String,
    /// The provider that serves a remote state: a name (`aws`) or a plugin's path.
    #[arg(long)]
    pub provider: Option<String>,
    /// A setting of that provider (repeatable), as in a job's `[provider]` section.
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "provider")]
    pub settings: Vec<String>,
}

pub(crate) fn cmd_node(role: &str, job: &str, node: &str, dir: &str, provider_json: Option<&str>) -> Result<ExitCode> {
    // A node ends by the rules, not by a hangup: when its launcher exits while
    // the node is stopped (SIGSTOP, a debugger), the kernel sends its orphaned
    // process group SIGHUP. Blocked before any thread starts, so every thread
    // inherits it; it stays pending, never delivered.
    if let Err(e) = nix::sys::signal::SigSet::from(nix::sys::signal::Signal::SIGHUP).thread_block() {
        mayfly_core::nodelog::line("WARN", node, format_args!("blocking SIGHUP: {e}"));
    }
    // The node's output goes through the log pump: a log that cannot be
    // written for a while must not end the node (nor lose its lines).
    let _pump = match mayfly_core::nodelog::start() {
        Ok(guard) => Some(guard),
        Err(e) => {
            mayfly_core::nodelog::line(
                "WARN",
                node,
                format_args!("the log pump did not start ({e}); logging directly"),
            );
            None
        }
    };
    let args = mayfly_core::node::NodeArgs { role, job, node, dir, provider: provider_json };
    // Past the deadline, the node ends whatever it is doing.
    fn past_deadline() -> ! {
        std::process::exit(EXIT_DEADLINE)
    }
    let log = std::env::var_os("MAYFLY_NODE_LOG").map(PathBuf::from);
    let code = mayfly_core::node::run(&args, log, past_deadline).map_err(anyhow::Error::msg)?;
    Ok(ExitCode::from(code))
}

/// A node that holds nothing and does nothing until it is ended or `for_`
/// passes: what provider conformance tests launch.
pub(crate) fn cmd_idle(for_: Duration) -> Result<ExitCode> {
    std::thread::sleep(for_);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn cmd_demo(dir: &Path, workers: u32) -> Result<ExitCode> {
    let task = Path::new("tasks/wordcount");
    if !task.join("Cargo.toml").is_file() {
        say("run the demo from the mayfly repository's root (it builds tasks/wordcount)");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let data = dir.join("data");
    let _ = std::fs::remove_dir_all(dir.join("out"));
    if !data.exists() {
        // 48 files of ~160 KiB and one of 6 MiB, split into line ranges.
        let bytes = mayfly_core::demo::write_dataset(&data, 2026, 48, 160 << 10, 20_000)?
            + mayfly_core::demo::write_dataset(&data.join("big"), 7, 1, 6 << 20, 20_000)?;
        println!("generated {} of sample text in {}", ByteSize(bytes), data.display());
    }
    let task_abs = absolute(task);
    let job_file = dir.join("job.toml");
    std::fs::write(
        &job_file,
        format!(
            "# Generated by `mayfly demo`.\n[job]\nname = \"wordcount-demo\"\n\n[task]\npath = {task:?}\nparams = {{ mode = \"map\" }}\n\n\
             [reduce]\npath = {task:?}\nparams = {{ mode = \"reduce\" }}\n\n[input]\nurl = \"data\"\n\n[output]\nurl = \"out\"\n\n\
             [state]\nurl = \"state\"\n\n[provider]\nname = \"local\"\ncredential_ttl = \"20s\"\n\n\
             [cluster]\nworkers = {workers}\ndeadline = \"10m\"\n\n[sharding]\nshards_per_worker = 4\nsplit_text = true\n",
            task = task_abs.to_string_lossy()
        ),
    )?;
    println!("job file: {}", job_file.display());
    let spec = JobSpec::load(&job_file)?;
    let code = run_spec(&spec)?;
    let counts = absolute(&dir.join("out/reduce/counts.tsv"));
    if let Ok(text) = std::fs::read_to_string(&counts) {
        println!("top words:");
        for line in text.lines().take(10) {
            let (w, n) = line.rsplit_once('\t').unwrap_or((line, ""));
            println!("  {n:>8}  {w}");
        }
        println!("all counts: {}", counts.display());
    }
    Ok(code)
}

/// What `mayfly replay` is told besides the job.
pub(crate) struct ReplayArgs {
    pub node: Option<String>,
    pub shard: u32,
    pub item: Option<String>,
    pub out: Option<PathBuf>,
    pub json: bool,
}

/// Runs one shard of a job on this machine as a worker ran it
/// ([`mayfly_core::replay`]); outputs go to a local directory.
pub(crate) fn cmd_replay(job: &str, at: &StateArgs, args: &ReplayArgs) -> Result<ExitCode> {
    use mayfly_core::replay::{Replay, Request};
    let (layout, manifest) = find_job(job, &at.state, at.provider.as_deref(), &at.settings)?;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("replay-{job}-shard-{}", args.shard)));
    let request = Request { shard: args.shard, item: args.item.clone(), node: args.node.clone(), out };
    let replay = Replay::prepare(&layout, &manifest, request)?;
    if !args.json {
        println!(
            "replaying shard {} of job {job}{}: {} item(s), task {} (sha256 {}), params {}",
            args.shard,
            replay.kept().map_or_else(String::new, |d| format!(" from the inputs kept in {}", d.display())),
            replay.items(),
            replay.task_name(),
            &manifest.task_sha256[..12.min(manifest.task_sha256.len())],
            manifest.params
        );
        println!(
            "limits: {} per attempt, {} memory, {} output, {} log",
            manifest.limits.attempt_time, manifest.limits.memory, manifest.limits.output, manifest.limits.log
        );
    }
    let kept = replay.kept().map(Path::to_owned);
    let report = replay.run()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for run in &report.items {
            match &run.error {
                None => println!("item {}: ok in {:.1} ms", run.item, run.elapsed_ms),
                Some(e) => println!(
                    "item {}: FAILED: {e} [{}; {}]",
                    run.item,
                    run.kind.as_deref().unwrap_or("failure"),
                    if run.retryable == Some(true) { "retryable" } else { "not retryable" }
                ),
            }
            for line in &run.logs {
                println!("  {line}");
            }
            for p in &run.outputs {
                println!("  output {}", p.display());
            }
        }
        if let Some(dir) = &kept {
            for key in &report.not_kept {
                println!("item {key}: not kept by the node in {} (not part of its attempt)", dir.display());
            }
        }
        if report.failed == 0 {
            println!("shard {} replayed: every item succeeded; outputs in {}", args.shard, report.out.display());
        } else {
            println!("shard {} replayed: {} item(s) failed", args.shard, report.failed);
        }
    }
    Ok(if report.failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(EXIT_TASK_FAILED) })
}

/// Writes a job's HTML report from its state (atomically: a reader never
/// sees half a page).
pub(crate) fn cmd_report(job: &str, at: &StateArgs, out: &Path) -> Result<ExitCode> {
    let (layout, manifest) = find_job(job, &at.state, at.provider.as_deref(), &at.settings)?;
    let report = history::collect(&layout, &manifest, SystemClock.now());
    let html = mayfly_core::report::render(&report);
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, html.as_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "report of job {job} ({}): {} attempts on {} nodes, {} of {} shards committed, {} failed -> {}",
        report.outcome,
        report.attempts.len(),
        report.nodes.len(),
        report.committed,
        report.shards.len(),
        report.failed,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Scaffolds a task crate and says what to do next.
pub(crate) fn cmd_init(name: &str, dir: &Path, sdk: Option<&Path>) -> Result<ExitCode> {
    let sdk = match sdk {
        Some(p) => p.canonicalize().with_context(|| format!("--sdk {}", p.display()))?,
        None => mayfly_core::scaffold::default_sdk().context(
            "this mayfly was not built from a checkout that still has its sdk/ directory; \
             pass --sdk <mayfly checkout>/sdk",
        )?,
    };
    let made = mayfly_core::scaffold::scaffold(dir, name, &sdk).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("created task crate {} ({} files)", made.dir.display(), made.files.len());
    for f in &made.files {
        println!("  {}", f.strip_prefix(&made.dir).unwrap_or(f).display());
    }
    println!("next:");
    println!("  cd {}", made.dir.display());
    println!("  cargo test                         # the task's own tests, natively");
    println!("  mayfly exec . --input data/sample.txt   # one input, in the sandbox");
    println!("  mayfly run job.toml                # a job on this machine (the local provider)");
    Ok(ExitCode::SUCCESS)
}

/// The worker `node` of `manifest`'s job, checked: the master is not held on
/// its own (hold the whole job).
fn worker_name(manifest: &Manifest, node: &str) -> Result<()> {
    let n = node.strip_prefix("worker-").and_then(|n| n.parse::<u32>().ok());
    if !n.is_some_and(|n| n >= 1 && n <= manifest.workers) {
        bail!(
            "job {} has no worker {node:?}: its workers are worker-1 to worker-{} (the master is not held on its own; \
             leave out --node to hold the whole job)",
            manifest.job,
            manifest.workers
        );
    }
    Ok(())
}

/// Tells a running master that the holds changed (it reads them from the
/// state); says so when there is no master to tell.
fn tell_master(layout: &Layout) {
    let told = (|| -> Result<()> {
        let token = mayfly_core::job::read_token(layout)?;
        let info: MasterInfo = layout.state.read_json(keys::MASTER)?.context("no master.json")?;
        Client::connect(&info, &token, Duration::from_secs(5)).map_err(anyhow::Error::msg)?.holds_changed()?;
        Ok(())
    })();
    if let Err(e) = told {
        say(&format!(
            "the master was not told ({e:#}); it reads the holds from the job's state every 2 s, and held workers read them there too"
        ));
    }
}

pub(crate) fn cmd_hold(job: &str, at: &StateArgs, node: Option<&str>, for_: Duration) -> Result<ExitCode> {
    use mayfly_core::hold::{Hold, WHOLE_JOB, hold_end};
    use mayfly_core::report::{fmt_duration, fmt_time};
    let (layout, manifest) = find_job(job, &at.state, at.provider.as_deref(), &at.settings)?;
    if let Some(n) = node {
        worker_name(&manifest, n)?;
    }
    let now = SystemClock.now();
    if now >= manifest.expires_at {
        bail!("job {job} is past its deadline: its nodes have ended (or are ending); there is nothing to hold");
    }
    let provider = node_provider(&manifest)?;
    let running = provider.list(job, &layout.state_location())?;
    let alive = running.iter().any(|n| n.role == Role::Worker && node.is_none_or(|x| x == n.node));
    if !alive {
        bail!(
            "job {job} has no running {}: there is nothing to hold{}",
            node.map_or_else(|| "worker".to_owned(), |n| format!("node {n}")),
            if layout.state.exists(keys::FINAL) { " (the job has ended)" } else { "" }
        );
    }
    let asked_ms = for_.as_millis().min(u64::MAX as u128) as u64;
    let (until, cut) = hold_end(now, asked_ms, manifest.expires_at);
    let who = node.unwrap_or(WHOLE_JOB);
    let hold = Hold {
        node: who.to_owned(),
        until,
        asked_by: mayfly_core::hold::asker(),
        asked_at: now,
        asked_ms,
        cut_to_deadline: cut,
    };
    mayfly_core::hold::put(&layout, &hold).map_err(anyhow::Error::msg)?;
    tell_master(&layout);
    let what = node.map_or_else(|| format!("every worker of job {job}"), |n| format!("{n} of job {job}"));
    println!("held {what} until {} (in {})", fmt_time(until), fmt_duration(until - now));
    if cut {
        println!(
            "asked for {}, cut to the job's deadline: a hold never outlives it (the deadline always wins)",
            fmt_duration(asked_ms)
        );
    }
    println!(
        "a held worker hands its shard back at its next item (another worker takes it), takes no work, \
         and keeps its log, its compiled task and the inputs of that shard and of its last failed attempt"
    );
    let target = node.map_or_else(String::new, |n| format!(" --node {n}"));
    println!("  mayfly attach {job} --node {}   where it is, and its log", node.unwrap_or("worker-1"));
    println!("  mayfly release {job}{target}   end the hold (it then resumes or ends by the normal rules)");
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn cmd_release(job: &str, at: &StateArgs, node: Option<&str>) -> Result<ExitCode> {
    let (layout, manifest) = find_job(job, &at.state, at.provider.as_deref(), &at.settings)?;
    if let Some(n) = node
        && n != mayfly_core::hold::WHOLE_JOB
    {
        worker_name(&manifest, n)?;
    }
    let released = mayfly_core::hold::release(&layout, node, &mayfly_core::hold::asker(), SystemClock.now())
        .map_err(anyhow::Error::msg)?;
    if released.is_empty() {
        let whole = node.is_some()
            && mayfly_core::hold::all(&layout)
                .unwrap_or_default()
                .iter()
                .any(|h| h.node == mayfly_core::hold::WHOLE_JOB && h.until > SystemClock.now());
        println!(
            "job {job} has no hold{}; nothing to release{}",
            node.map_or_else(String::new, |n| format!(" on {n}")),
            if whole { format!(" (the whole job is held: `mayfly release {job}` ends that)") } else { String::new() }
        );
        return Ok(ExitCode::SUCCESS);
    }
    tell_master(&layout);
    println!(
        "released {}: held workers resume, or end by the normal rules (the job's end, idle, the deadline)",
        released.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn cmd_attach(job: &str, at: &StateArgs, node: &str) -> Result<ExitCode> {
    use mayfly_core::report::{fmt_duration, fmt_time};
    let (layout, manifest) = find_job(job, &at.state, at.provider.as_deref(), &at.settings)?;
    if node != "master" {
        worker_name(&manifest, node)?;
    }
    let provider = node_provider(&manifest)?;
    let nodes = provider.list(job, &layout.state_location())?;
    let now = SystemClock.now();
    let Some(info) = nodes.iter().find(|n| n.node == node) else {
        bail!(
            "node {node} of job {job} is not running (it ended, or never started); \
             `mayfly logs {job} --node {node}` shows what it said"
        );
    };
    println!("node {node} of job {job}: {} {}", provider.name(), info.id);
    if let Some(pid) = info.process {
        println!("  pid        {pid}   (this machine)");
        println!("  log        {}", layout.state.display(&Layout::logs_key(node)));
        println!("  directory  {}", layout.work.display());
        println!("  kept       {}   (what it keeps while held)", mayfly_core::hold::kept_dir(&layout, node).display());
    } else {
        println!(
            "  instance   {}   (ask {} for its address; the node's own disk holds what it keeps)",
            info.id,
            provider.name()
        );
        println!("  log        {}   (copied every few seconds)", layout.state.display(&Layout::logs_key(node)));
    }
    println!(
        "  ends       by {} at the latest (the deadline, in {})",
        fmt_time(manifest.expires_at),
        fmt_duration(manifest.expires_at.saturating_sub(now))
    );
    let holds = mayfly_core::hold::all(&layout).map_err(anyhow::Error::msg)?;
    match mayfly_core::hold::held_until(&holds, node, now) {
        Some(until) => println!("  held       until {} (in {})", fmt_time(until), fmt_duration(until - now)),
        None => println!("  held       no (`mayfly hold {job} --node {node}` keeps it alive for you)"),
    }
    println!("its log, until it ends (Ctrl-C stops watching; the node goes on):");
    let _ = std::io::stdout().flush();
    follow_node_log(&layout, &provider, job, node)
}

/// Prints a node's log as it grows, until the node is gone.
fn follow_node_log(layout: &Layout, provider: &ProviderHandle, job: &str, node: &str) -> Result<ExitCode> {
    let key = Layout::logs_key(node);
    let mut printed = 0usize;
    let mut gone_polls = 0;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    loop {
        let alive =
            provider.list(job, &layout.state_location()).map(|n| n.iter().any(|n| n.node == node)).unwrap_or(true);
        let bytes = layout.state.get(&key)?.unwrap_or_default();
        let upto = if alive { bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) } else { bytes.len() };
        if upto > printed {
            for line in String::from_utf8_lossy(&bytes[printed..upto]).lines() {
                if writeln!(out, "{node}: {line}").is_err() {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            let _ = out.flush();
            printed = upto;
        }
        if !alive {
            // Its last lines may land a moment after it is gone (a remote copy).
            gone_polls += 1;
            if gone_polls > 3 {
                let _ = writeln!(out, "({node} has ended)");
                return Ok(ExitCode::SUCCESS);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
