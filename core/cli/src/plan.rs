//! `mayfly plan`: what a job would do and cost, and each rule it would
//! break ([`mayfly_ops::check`]), after the tasks' preflight on a sample of
//! the inputs ([`mayfly_core::preflight`]); nothing is launched.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use mayfly_core::bootstrap::{absolute_location, list_inputs, ready_tasks};
use mayfly_core::config::JobSpec;
use mayfly_core::preflight::{PreflightError, Report, Request};
use mayfly_data::store::{Principal, Store};
use mayfly_model::units::ByteSize;

use crate::lookup::provider_for;
use crate::{Ended, say};

/// `mayfly plan`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The job file.
    job: PathBuf,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
    /// The rate one worker is assumed to process input at (per second);
    /// default: the preflight's, measured on a sample of the inputs, or
    /// 100MiB without a preflight.
    #[arg(long, value_name = "SIZE")]
    rate: Option<ByteSize>,
    /// Do not try the tasks on a sample of the inputs (the job file's
    /// `[preflight] enabled = false`).
    #[arg(long)]
    no_preflight: bool,
}

/// The rate a worker is assumed to work at without a measured one.
const DEFAULT_RATE: u64 = 100 << 20;

pub(crate) fn execute(args: Args) -> Result<Ended> {
    cmd_plan(&args).map(|()| Ended::Success)
}

/// One line for what a preflight tried: `3 sample items (12.0 KiB) ...`.
pub(crate) fn preflight_line(report: &Report) -> String {
    let (bytes, _) = report.processed();
    let ok = report.tried.iter().filter(|t| t.failed.is_none()).count();
    let per_mib = match report.per_mib() {
        Some(d) => format!(", {:.3} s per MiB", d.as_secs_f64()),
        None => String::new(),
    };
    format!(
        "preflight: {ok} of {} sample items passed ({} in {:.2}s{per_mib}){}",
        report.tried.len(),
        ByteSize(bytes),
        report.elapsed.as_secs_f64(),
        if report.reduced { "; the reduce task passed over their outputs" } else { "" }
    )
}

fn cmd_plan(args: &Args) -> Result<()> {
    let (job, json) = (&args.job, args.json);
    let spec = JobSpec::load(job)?;
    let provider = provider_for(&spec)?;
    let who = Principal { job: "plan".into(), state: spec.state.to_string(), node: "cli".into() };
    let started = Instant::now();
    let input = Store::open(&absolute_location(&spec.input), &provider, &who)?;
    let objects = list_inputs(&input, spec.glob.as_deref())?;
    let p = mayfly_core::bootstrap::plan_objects(&spec, &input, &objects)?;
    let planned_in = started.elapsed();
    // The preflight, as bootstrap runs it (with the job's own bound): a
    // refusal is said after the plan, and fails the command.
    let preflight = if spec.preflight.enabled && !args.no_preflight {
        let (task, reduce) = ready_tasks(&spec, &mut say)?;
        let rt = crate::runtime()?;
        let request = Request {
            job: "plan",
            spec: &spec,
            plan: &p,
            input: &input,
            task: &task.component,
            reduce: reduce.as_ref().map(|r| r.component.as_path()),
            partitions: spec.preflight_partitions(),
            bound: spec.preflight.timeout,
        };
        Some(mayfly_core::preflight::run(rt.handle(), &request))
    } else {
        None
    };
    let measured = match &preflight {
        Some(Ok(report)) => report.rate(),
        _ => None,
    };
    let (worker_rate, rate_from) = match (args.rate, measured) {
        (Some(rate), _) => (rate.0, "--rate"),
        (None, Some(rate)) => (rate, "the preflight's sample"),
        (None, None) => (DEFAULT_RATE, "assumed; --rate sets it"),
    };
    let (max, mean) = p.balance();
    // The provider's prices: fetched ones (`mayfly prices refresh`) where
    // cached for its region, else its built-in table; as bootstrap prices them.
    let priced = mayfly_core::bootstrap::priced_nodes(&provider, &spec);
    let items: u64 = p.shards.iter().map(|s| s.items.len() as u64).sum();
    let estimate = mayfly_model::cost::estimate(&mayfly_model::cost::EstimateInput {
        nodes: priced.nodes.as_ref(),
        prices: &spec.prices,
        workers: spec.workers,
        replacements: spec.max_replacements,
        largest_shard: max,
        total_bytes: p.total_bytes,
        items,
        worker_rate,
        deadline: spec.deadline,
    });
    // The spending ceiling, as bootstrap checks it: a refusal fails the command.
    let over = spec.max_cost.and_then(|max| {
        mayfly_model::cost::check_ceiling(
            priced.nodes.as_ref(),
            &spec.prices,
            (spec.workers, spec.max_replacements),
            spec.deadline,
            max,
        )
        .err()
    });
    // A serverless bootstrap has no price cache: it checks the ceiling with
    // the provider's table, which may say otherwise.
    let table_says = match spec.max_cost {
        Some(max) if priced.fetched => Some(
            mayfly_model::cost::check_ceiling(
                provider.info().nodes.as_ref(),
                &spec.prices,
                (spec.workers, spec.max_replacements),
                spec.deadline,
                max,
            )
            .is_err(),
        ),
        _ => None,
    };
    let mut priced_warnings = priced.warnings.clone();
    if let Some(table_refuses) = table_says.filter(|refuses| *refuses != over.is_some()) {
        priced_warnings.push(format!(
            "prices: a bootstrap without this machine's price cache (a serverless function's) prices nodes from the \
             provider's built-in table, and there the ceiling would {} (the job's [prices] decides for both)",
            if table_refuses { "refuse this job" } else { "let this job through" }
        ));
    }
    let output = Store::open(&absolute_location(&spec.output), &provider, &who);
    let checked = mayfly_ops::check::check(&mayfly_ops::check::Facts {
        spec: &spec,
        plan: &p,
        planned_in,
        limits: provider.limits(),
        provider: provider.name(),
        estimate: &estimate,
        worker_rate,
        output: output
            .map_err(|e| e.to_string())
            .and_then(|o| mayfly_core::bootstrap::check_output(&o).map_err(|e| e.to_string())),
    });
    let secs = |d: Duration| d.as_secs_f64();
    let (bootstrap_limit, bootstrap_budget) = (checked.bootstrap_limit, checked.bootstrap_budget);
    let (credential_ttl, renew_every, renewals) = (checked.credential_ttl, checked.renew_every, checked.renewals);
    let warnings: Vec<String> = priced_warnings.iter().chain(&checked.warnings).cloned().collect();
    let warnings = &warnings;
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
            "rate": { "bytes_per_sec": worker_rate, "from": rate_from },
            "max_cost": { "usd": spec.max_cost, "refused": over.as_ref().map(|e| e.to_string()) },
            "preflight": preflight.as_ref().map(|r| match r {
                Ok(report) => serde_json::json!({
                    "tried": report.tried.iter().map(|t| serde_json::json!({
                        "item": t.item, "bytes": t.bytes, "item_secs": secs(t.item_time), "failed": t.failed,
                    })).collect::<Vec<_>>(),
                    "reduced": report.reduced,
                    "per_mib_secs": report.per_mib().map(secs),
                    "elapsed_secs": secs(report.elapsed),
                    "notes": report.notes,
                }),
                Err(e) => serde_json::json!({ "refused": e.to_string() }),
            }),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return refused(preflight, over);
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
    match &preflight {
        Some(Ok(report)) => {
            if !report.tried.is_empty() {
                println!("{}", preflight_line(report));
            }
            report.notes.iter().for_each(|n| println!("{n}"));
        }
        Some(Err(_)) => println!("preflight: REFUSED (below)"),
        None => println!("preflight: not run"),
    }
    println!(
        "time: about {:.1}s of work at {}/s per worker ({rate_from}) on {} workers; deadline {}",
        estimate.expected_secs,
        ByteSize(worker_rate),
        spec.workers,
        mayfly_model::units::HumanDuration(spec.deadline)
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
        mayfly_model::units::HumanDuration(credential_ttl),
        mayfly_model::units::HumanDuration(renew_every)
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
    if let Some(max) = spec.max_cost {
        match &over {
            Some(_) => println!("  ceiling  over the job's max_cost of {max} USD: REFUSED (below)"),
            None => println!("  ceiling  within the job's max_cost of {max} USD"),
        }
    }
    for w in warnings {
        println!("warning: {w}");
    }
    refused(preflight, over)
}

/// What bootstrap would refuse the job for, as the command's error: the
/// spending ceiling, then the preflight's refusal (or its failure to run).
fn refused(
    preflight: Option<Result<Report, PreflightError>>,
    over: Option<mayfly_model::cost::CeilingError>,
) -> Result<()> {
    if let Some(e) = over {
        return Err(e.into());
    }
    match preflight {
        Some(Err(e)) => Err(e.into()),
        _ => Ok(()),
    }
}
