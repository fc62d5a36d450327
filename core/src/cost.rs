//! What a job would cost and how long it would take, for `mayfly plan`:
//! node-hours by node type, priced from a table (shipped defaults for common
//! AWS and Azure sizes, overridden by the job's `[prices]`), with the bounds
//! the rules give: no node outlives the deadline, so nodes × deadline is the
//! most a job can cost.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// When the shipped prices were read off the providers' public price lists.
pub const PRICES_AS_OF: &str = "2025-06";

/// Shipped prices: USD per node-hour, on demand, Linux; AWS in us-east-1,
/// Azure in East US, as listed on [`PRICES_AS_OF`]. Regions, discounts and
/// spot prices differ: a job's `[prices]` table overrides any of these.
pub const DEFAULT_PRICES: &[(&str, &str, f64)] = &[
    ("aws", "t3.micro", 0.0104),
    ("aws", "t3.small", 0.0208),
    ("aws", "t3.medium", 0.0416),
    ("aws", "t3.large", 0.0832),
    ("aws", "t3.xlarge", 0.1664),
    ("aws", "m5.large", 0.096),
    ("aws", "m5.xlarge", 0.192),
    ("aws", "m5.2xlarge", 0.384),
    ("aws", "m6i.large", 0.096),
    ("aws", "m6i.xlarge", 0.192),
    ("aws", "m7g.large", 0.0816),
    ("aws", "c5.large", 0.085),
    ("aws", "c5.xlarge", 0.17),
    ("aws", "c6i.large", 0.085),
    ("aws", "c6i.xlarge", 0.17),
    ("aws", "c7g.large", 0.0725),
    ("aws", "r5.large", 0.126),
    ("aws", "r6i.large", 0.126),
    ("azure", "Standard_B2s", 0.0416),
    ("azure", "Standard_D2s_v5", 0.096),
    ("azure", "Standard_D4s_v5", 0.192),
    ("azure", "Standard_D8s_v5", 0.384),
    ("azure", "Standard_D2as_v5", 0.086),
    ("azure", "Standard_D4as_v5", 0.172),
    ("azure", "Standard_F2s_v2", 0.0846),
    ("azure", "Standard_F4s_v2", 0.169),
    ("azure", "Standard_E2s_v5", 0.126),
    // The machine the operator already has.
    ("local", "local", 0.0),
];

/// The node types a job's nodes would run on: (master's, workers'), from its
/// provider's settings (`instance_type`/`master_instance_type` on AWS,
/// `vm_size`/`master_vm_size` on Azure, `node_type`/`master_node_type` for
/// others), with the built-in providers' defaults.
pub fn node_types(provider: &str, settings: &serde_json::Map<String, serde_json::Value>) -> (String, String) {
    let setting = |key: &str| settings.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let (worker_key, master_key, default) = match provider {
        "aws" => ("instance_type", "master_instance_type", "t3.medium"),
        "azure" => ("vm_size", "master_vm_size", "Standard_D2s_v5"),
        "local" => ("node_type", "master_node_type", "local"),
        _ => ("node_type", "master_node_type", "unknown"),
    };
    let worker = setting(worker_key).unwrap_or_else(|| default.to_owned());
    let master = setting(master_key).unwrap_or_else(|| worker.clone());
    (master, worker)
}

/// The price of a node-hour of `node_type` on `provider`: the job's own
/// table first, then the shipped one. `None` when neither knows it.
pub fn price(provider: &str, node_type: &str, overrides: &BTreeMap<String, f64>) -> Option<(f64, &'static str)> {
    if let Some(p) = overrides.get(node_type) {
        return Some((*p, "the job's [prices]"));
    }
    DEFAULT_PRICES.iter().find(|(p, t, _)| *p == provider && *t == node_type).map(|(_, _, usd)| (*usd, PRICES_AS_OF))
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
    /// The job's provider's name (as it names itself: `aws`, `azure`, `local`).
    pub provider: &'a str,
    /// Its settings (the job's `[provider]` section).
    pub settings: &'a serde_json::Map<String, serde_json::Value>,
    /// Its `[prices]`.
    pub prices: &'a BTreeMap<String, f64>,
    /// Workers.
    pub workers: u32,
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
    let (master_type, worker_type) = node_types(input.provider, input.settings);
    let line = |role: &str, count: u32, node_type: String| {
        let priced = price(input.provider, &node_type, input.prices);
        NodeCost {
            role: role.to_owned(),
            count,
            usd_per_hour: priced.map(|p| p.0),
            price_source: priced.map(|p| p.1.to_owned()),
            node_type,
            expected_node_hours: count as f64 * expected / 3600.0,
            ceiling_node_hours: count as f64 * deadline / 3600.0,
        }
    };
    let nodes = vec![line("master", 1, master_type), line("workers", input.workers, worker_type)];
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn node_types_come_from_the_providers_settings_or_their_defaults() {
        let aws = settings(serde_json::json!({ "instance_type": "c5.large" }));
        assert_eq!(node_types("aws", &aws), ("c5.large".into(), "c5.large".into()));
        let aws = settings(serde_json::json!({ "master_instance_type": "m5.large" }));
        assert_eq!(node_types("aws", &aws), ("m5.large".into(), "t3.medium".into()));
        let az = settings(serde_json::json!({}));
        assert_eq!(node_types("azure", &az), ("Standard_D2s_v5".into(), "Standard_D2s_v5".into()));
    }

    #[test]
    fn the_jobs_prices_win_over_the_table_and_unknown_types_have_none() {
        let mut own = BTreeMap::new();
        own.insert("c5.large".to_owned(), 0.03);
        assert_eq!(price("aws", "c5.large", &own), Some((0.03, "the job's [prices]")));
        assert_eq!(price("aws", "c5.large", &BTreeMap::new()), Some((0.085, PRICES_AS_OF)));
        assert_eq!(price("aws", "x9.huge", &BTreeMap::new()), None);
    }

    #[test]
    fn the_estimate_spreads_work_bounds_it_by_the_largest_shard_and_the_deadline() {
        let aws = settings(serde_json::json!({ "instance_type": "m5.large" }));
        let prices = BTreeMap::new();
        let mut input = EstimateInput {
            provider: "aws",
            settings: &aws,
            prices: &prices,
            workers: 4,
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
        let odd = settings(serde_json::json!({ "instance_type": "x9.huge" }));
        input.settings = &odd;
        assert_eq!(estimate(&input).expected_usd, None);
    }
}
