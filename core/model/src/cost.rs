//! What a job would cost and how long it would take (`mayfly plan`), and the
//! most it can cost:
//! node-hours by node type, priced from what the job's provider declares
//! ([`NodeTypes`]: the node types its settings select, and a dated price
//! table), overridden by the job's `[prices]`, with the bounds the rules
//! give: no node outlives the deadline, so nodes × deadline is the most a job
//! can cost. Core knows no cloud's node types or prices.
//!
//! Bootstrap refuses a job whose ceiling exceeds its `[job] max_cost`
//! ([`check_ceiling`]) before anything is launched; `mayfly plan` says the same.
//!
//! In `mayfly-model`'s flow (`core/tests/flow.rs` checks it) it is at the top,
//! beside `policy`, and must not import it; like its crate, it does no I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use mayfly_provider_api::NodeTypes;
use serde::Serialize;

/// What a node type is called when its provider does not say.
pub const UNKNOWN: &str = "unknown";

/// Where a price in the job's `[prices]` comes from, as a plan says it.
pub const JOBS_PRICES: &str = "the job's [prices]";

/// The price of a node-hour of `node_type`: the job's own table first, then
/// the provider's. `None` when neither knows it.
pub fn price(
    node_type: &str,
    declared: Option<&NodeTypes>,
    overrides: &BTreeMap<String, f64>,
) -> Option<(f64, String)> {
    if let Some(p) = overrides.get(node_type) {
        return Some((*p, JOBS_PRICES.to_owned()));
    }
    let declared = declared?;
    declared.prices.get(node_type).map(|usd| (*usd, declared.prices_source.clone()))
}

/// One line of the estimate: nodes of one type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeCost {
    /// `master` or `workers`.
    pub role: String,
    /// How many nodes.
    pub count: u32,
    /// Their node type.
    pub node_type: String,
    /// USD per node-hour, if known.
    pub usd_per_hour: Option<f64>,
    /// Where the price comes from (`the job's [prices]` or the table's date).
    pub price_source: Option<String>,
    /// Node-hours for the expected duration.
    pub expected_node_hours: f64,
    /// Node-hours if every node ran to the deadline (the most the rules allow).
    pub ceiling_node_hours: f64,
}

/// A job's cost and time estimate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    /// The assumed processing rate of one worker, bytes per second.
    pub worker_rate: u64,
    /// The expected wall time of the work (bootstrap excluded).
    pub expected_secs: f64,
    /// The job's deadline.
    pub deadline_secs: f64,
    /// By node type.
    pub nodes: Vec<NodeCost>,
    /// USD for the expected duration, if every price is known.
    pub expected_usd: Option<f64>,
    /// USD if every node ran to the deadline, if every price is known.
    pub ceiling_usd: Option<f64>,
}

/// What the estimate is made from.
#[derive(Debug, Clone)]
pub struct EstimateInput<'a> {
    /// What the job's provider declares its nodes run on and cost.
    pub nodes: Option<&'a NodeTypes>,
    /// The job's `[prices]`.
    pub prices: &'a BTreeMap<String, f64>,
    /// Workers.
    pub workers: u32,
    /// Workers the master may launch in place of lost ones (billed, at
    /// most, to the deadline; none expected).
    pub replacements: u32,
    /// Input bytes of the largest shard and of all.
    pub largest_shard: u64,
    /// Input bytes in all.
    pub total_bytes: u64,
    /// Input items (an item costs a fresh sandbox instance).
    pub items: u64,
    /// The assumed rate of one worker, bytes per second.
    pub worker_rate: u64,
    /// The deadline.
    pub deadline: Duration,
}

/// The framework's own time per item on a worker (a fresh instance, staging,
/// publication; measured by the `compare` benchmark at about 0.3 ms).
const PER_ITEM_SECS: f64 = 0.0005;

/// Estimates the job: the work spreads over the workers, but it is never
/// shorter than its largest shard; every node is billed until the work ends
/// (nodes end themselves then), at most to the deadline.
pub fn estimate(input: &EstimateInput<'_>) -> Estimate {
    let rate = input.worker_rate.max(1) as f64;
    let workers = input.workers.max(1) as f64;
    let spread = input.total_bytes as f64 / rate / workers + input.items as f64 * PER_ITEM_SECS / workers;
    let longest = input.largest_shard as f64 / rate;
    let deadline = input.deadline.as_secs_f64();
    let expected = spread.max(longest).min(deadline);
    let (master_type, worker_type) = match input.nodes {
        Some(n) => (n.master.clone(), n.worker.clone()),
        None => (UNKNOWN.to_owned(), UNKNOWN.to_owned()),
    };
    let line = |role: &str, count: u32, node_type: String, expected: f64| {
        let priced = price(&node_type, input.nodes, input.prices);
        NodeCost {
            role: role.to_owned(),
            count,
            usd_per_hour: priced.as_ref().map(|p| p.0),
            price_source: priced.map(|p| p.1),
            node_type,
            expected_node_hours: count as f64 * expected / 3600.0,
            ceiling_node_hours: count as f64 * deadline / 3600.0,
        }
    };
    let mut nodes =
        vec![line("master", 1, master_type, expected), line("workers", input.workers, worker_type.clone(), expected)];
    if input.replacements > 0 {
        nodes.push(line("replacements", input.replacements, worker_type, 0.0));
    }
    let total = |hours: fn(&NodeCost) -> f64| -> Option<f64> {
        nodes.iter().map(|n| n.usd_per_hour.map(|p| p * hours(n))).sum()
    };
    Estimate {
        worker_rate: input.worker_rate,
        expected_secs: expected,
        deadline_secs: deadline,
        expected_usd: total(|n| n.expected_node_hours),
        ceiling_usd: total(|n| n.ceiling_node_hours),
        nodes,
    }
}

/// A job whose most possible cost is over its `[job] max_cost`, or cannot be
/// known: refused before anything is launched.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CeilingError {
    /// Every node to the deadline costs more than the job allows.
    #[error(
        "`job.max_cost` = {max}: the job may cost up to {ceiling:.4} USD ({breakdown}); \
         lower `cluster.workers` or `cluster.deadline`, or raise `job.max_cost`"
    )]
    Over {
        /// The job's ceiling.
        max: f64,
        /// What every node to the deadline costs.
        ceiling: f64,
        /// How: nodes, types, prices, the deadline.
        breakdown: String,
    },
    /// A node type has no price, so the ceiling is unknown.
    #[error(
        "`job.max_cost` = {max}: node type {node_type:?} ({role}) has no price, so what the job may cost is unknown; \
         add `\"{node_type}\" = <USD per node-hour>` to the job's [prices]"
    )]
    Unpriced {
        /// The job's ceiling.
        max: f64,
        /// The node type without a price.
        node_type: String,
        /// Whose type it is (`master`, `workers`).
        role: String,
    },
}

/// The most a master, `workers` workers and `replacements` replacements of
/// lost ones can cost when every node runs to `deadline` (no node outlives
/// it), at the job's `[prices]` over the provider's: `Ok` with it when within
/// `max`.
pub fn check_ceiling(
    nodes: Option<&NodeTypes>,
    prices: &BTreeMap<String, f64>,
    (workers, replacements): (u32, u32),
    deadline: Duration,
    max: f64,
) -> Result<f64, CeilingError> {
    // The ceiling does not depend on the work: none is given.
    let e = estimate(&EstimateInput {
        nodes,
        prices,
        workers,
        replacements,
        largest_shard: 0,
        total_bytes: 0,
        items: 0,
        worker_rate: 1,
        deadline,
    });
    if let Some(n) = e.nodes.iter().find(|n| n.usd_per_hour.is_none()) {
        return Err(CeilingError::Unpriced { max, node_type: n.node_type.clone(), role: n.role.clone() });
    }
    let ceiling = e.ceiling_usd.unwrap_or(0.0);
    if ceiling > max {
        let lines: Vec<String> = e
            .nodes
            .iter()
            .map(|n| format!("{} x {} {} at {:.4} USD/h", n.count, n.role, n.node_type, n.usd_per_hour.unwrap_or(0.0)))
            .collect();
        let breakdown =
            format!("{}, each to the {} deadline", lines.join(" and "), crate::units::HumanDuration(deadline));
        return Err(CeilingError::Over { max, ceiling, breakdown });
    }
    Ok(ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aws_like(master: &str, worker: &str) -> NodeTypes {
        NodeTypes::priced(master, worker, &[("m5.large", 0.096), ("c5.large", 0.085)], "a dated list")
    }

    #[test]
    fn the_jobs_prices_win_over_the_providers_and_unknown_types_have_none() {
        let declared = aws_like("m5.large", "c5.large");
        let mut own = BTreeMap::new();
        own.insert("c5.large".to_owned(), 0.03);
        assert_eq!(price("c5.large", Some(&declared), &own), Some((0.03, JOBS_PRICES.to_owned())));
        assert_eq!(price("c5.large", Some(&declared), &BTreeMap::new()), Some((0.085, "a dated list".to_owned())));
        assert_eq!(price("x9.huge", Some(&declared), &BTreeMap::new()), None);
        assert_eq!(price("c5.large", None, &BTreeMap::new()), None);
    }

    #[test]
    fn the_estimate_spreads_work_bounds_it_by_the_largest_shard_and_the_deadline() {
        let m5 = aws_like("m5.large", "m5.large");
        let prices = BTreeMap::new();
        let mut input = EstimateInput {
            nodes: Some(&m5),
            prices: &prices,
            workers: 4,
            replacements: 0,
            largest_shard: 100 << 20,
            total_bytes: 4000 << 20,
            items: 0,
            worker_rate: 100 << 20,
            deadline: Duration::from_secs(3600),
        };
        let e = estimate(&input);
        assert!((e.expected_secs - 10.0).abs() < 1e-9, "{}", e.expected_secs);
        // 5 nodes of m5.large for 10 s, and to the hour at most.
        let expected = 5.0 * 0.096 * 10.0 / 3600.0;
        assert!((e.expected_usd.unwrap() - expected).abs() < 1e-9);
        assert!((e.ceiling_usd.unwrap() - 5.0 * 0.096).abs() < 1e-9);
        // One huge shard: the work takes at least as long as it does.
        input.largest_shard = 3000 << 20;
        assert!((estimate(&input).expected_secs - 30.0).abs() < 1e-9);
        // Never beyond the deadline: the nodes end then.
        input.deadline = Duration::from_secs(5);
        assert!((estimate(&input).expected_secs - 5.0).abs() < 1e-9);
        // An unknown price leaves the total unknown, not zero.
        let odd = aws_like("x9.huge", "x9.huge");
        input.nodes = Some(&odd);
        assert_eq!(estimate(&input).expected_usd, None);
        // A provider that declares nothing: node types unknown, priced only by the job.
        input.nodes = None;
        let e = estimate(&input);
        assert_eq!((e.nodes[0].node_type.as_str(), e.expected_usd), (UNKNOWN, None));
    }

    #[test]
    fn the_ceiling_is_every_node_to_the_deadline_and_a_job_over_its_max_or_unpriced_is_refused() {
        let declared = aws_like("m5.large", "c5.large");
        let none = BTreeMap::new();
        let hour = Duration::from_secs(3600);
        // 1 x 0.096 + 4 x 0.085 = 0.436 USD for the hour.
        let within = check_ceiling(Some(&declared), &none, (4, 0), hour, 0.5).unwrap();
        assert!((within - 0.436).abs() < 1e-9, "{within}");
        let e = check_ceiling(Some(&declared), &none, (4, 0), hour, 0.4).unwrap_err();
        let msg = e.to_string();
        for s in [
            "`job.max_cost` = 0.4: the job may cost up to 0.4360 USD",
            "1 x master m5.large at 0.0960 USD/h and 4 x workers c5.large at 0.0850 USD/h, each to the 1h deadline",
            "lower `cluster.workers` or `cluster.deadline`",
        ] {
            assert!(msg.contains(s), "missing {s:?} in {msg}");
        }
        // The job's own prices count; a type without any is refused, not taken as free.
        let mut own = BTreeMap::new();
        own.insert("c5.large".to_owned(), 0.01);
        assert!(check_ceiling(Some(&declared), &own, (4, 0), hour, 0.4).is_ok());
        // Replacements of lost workers count, at the workers' price, to the deadline.
        let with = check_ceiling(Some(&declared), &none, (4, 2), hour, 1.0).unwrap();
        assert!((with - (0.436 + 2.0 * 0.085)).abs() < 1e-9, "{with}");
        let e = check_ceiling(Some(&declared), &none, (4, 2), hour, 0.5).unwrap_err().to_string();
        assert!(e.contains("and 2 x replacements c5.large at 0.0850 USD/h"), "{e}");
        let odd = aws_like("m5.large", "x9.huge");
        let e = check_ceiling(Some(&odd), &none, (4, 0), hour, 100.0).unwrap_err();
        assert!(
            matches!(&e, CeilingError::Unpriced { node_type, role, .. } if node_type == "x9.huge" && role == "workers")
        );
        assert!(e.to_string().contains("add `\"x9.huge\" = <USD per node-hour>` to the job's [prices]"), "{e}");
    }
}
