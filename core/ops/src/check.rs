//! What `mayfly plan` checks, as pure functions of the job, its plan and its
//! provider: each of the four rules (time limit, credential expiry, even
//! sharding, self-termination) and the cost, with the figures bootstrap
//! itself uses (its budget comes from [`mayfly_model::policy::Budget::bootstrap`],
//! not a copy). The CLI gathers the facts (lists, plans, times it) and prints
//! the report; nothing here does I/O.
//!
//! Must not import: bootstrap, the master, the worker; a check launches nothing.

use std::time::Duration;

use mayfly_core::config::JobSpec;
use mayfly_data::provider::Limits;
use mayfly_model::cost::Estimate;
use mayfly_model::plan::Plan;
use mayfly_model::policy::{CredentialPolicy, Validity, bootstrap_margin};
use mayfly_model::units::{ByteSize, HumanDuration};

/// What a plan is checked against.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// The job.
    pub spec: &'a JobSpec,
    /// Its plan.
    pub plan: &'a Plan,
    /// How long listing and planning took here.
    pub planned_in: Duration,
    /// The provider's limits.
    pub limits: Limits,
    /// The provider's name.
    pub provider: &'a str,
    /// The time and cost estimate.
    pub estimate: &'a Estimate,
    /// The assumed rate of one worker, bytes per second.
    pub worker_rate: u64,
    /// Whether the output location can take the job's outputs (why not).
    pub output: Result<(), String>,
}

/// The figures of a plan's check, and each rule it would break.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// The provider's limit on a bootstrap.
    pub bootstrap_limit: Duration,
    /// The bootstrap's budget (the limit minus the safety margin).
    pub bootstrap_budget: Duration,
    /// How long credentials live.
    pub credential_ttl: Duration,
    /// How often the credential rule renews them.
    pub renew_every: Duration,
    /// Renewals per node over the expected time.
    pub renewals: u64,
    /// The shard target the sharding floor raised the derived one from, if it did.
    pub raised_from: Option<u64>,
    /// Each rule the plan would break, and what to change.
    pub warnings: Vec<String>,
}

/// Checks a plan.
pub fn check(f: &Facts<'_>) -> Report {
    let (spec, p, estimate, rate) = (f.spec, f.plan, f.estimate, f.worker_rate);
    let secs = |d: Duration| d.as_secs_f64();
    let (max, mean) = p.balance();
    let largest_item = p.shards.iter().flat_map(|s| &s.items).map(|i| i.len).max().unwrap_or(0);
    let bootstrap_limit = f.limits.bootstrap_limit();
    let bootstrap_budget = bootstrap_limit.saturating_sub(bootstrap_margin(bootstrap_limit));
    let credential_ttl = f.limits.credential_ttl();
    let policy = CredentialPolicy { min_margin: spec.credential_refresh_margin, ..CredentialPolicy::default() };
    let margin = policy.margin(Validity { issued_at: 0, expires_at: credential_ttl.as_millis() as u64 });
    let renew_every = credential_ttl.saturating_sub(margin).max(Duration::from_secs(1));
    let renewals = (estimate.expected_secs / renew_every.as_secs_f64()).floor() as u64;

    let mut warnings = Vec::new();
    if estimate.expected_secs + secs(f.planned_in) >= secs(spec.deadline) {
        warnings.push(format!(
            "time limit: the work is expected to take at least the whole deadline ({}) at {}/s per worker: \
             shards still running then are cut and the job ends `deadline`; raise `cluster.deadline` or `cluster.workers`",
            HumanDuration(spec.deadline),
            ByteSize(rate)
        ));
    }
    let largest_item_secs = largest_item as f64 / rate.max(1) as f64;
    if largest_item_secs > secs(spec.limits.attempt_time.0) {
        warnings.push(format!(
            "time limit: the largest item ({}) would take about {largest_item_secs:.0}s at {}/s, over `limits.attempt_time` ({}); \
             raise it, or let text be split (`sharding.split_text`)",
            ByteSize(largest_item),
            ByteSize(rate),
            spec.limits.attempt_time
        ));
    }
    if secs(f.planned_in) > secs(bootstrap_budget) / 2.0 {
        warnings.push(format!(
            "time limit: listing and planning took {:.1}s, over half the bootstrap's budget ({:.0}s of the provider's {:.0}s): \
             a serverless bootstrap may run out of time; use a narrower `input.glob` or fewer objects",
            secs(f.planned_in),
            secs(bootstrap_budget),
            secs(bootstrap_limit)
        ));
    }
    if credential_ttl < spec.lease_time {
        warnings.push(format!(
            "credential expiry: credentials live {} but `cluster.lease_time` is {}: leases will be cut to the credentials' expiry",
            HumanDuration(credential_ttl),
            HumanDuration(spec.lease_time)
        ));
    }
    if mean > 0.0 && max as f64 > 1.5 * mean && p.shards.len() > 1 {
        let big = p.shards.iter().max_by_key(|s| s.bytes).map_or(0, |s| s.id);
        warnings.push(format!(
            "even sharding: shard {big} holds {} against a mean of {} ({:.1}x): an object that cannot be split sets the pace; \
             enable `sharding.split_text` for text, or split the object",
            ByteSize(max),
            ByteSize(mean as u64),
            max as f64 / mean
        ));
    }
    if p.shards.len() < spec.workers as usize && !p.shards.is_empty() {
        warnings.push(format!(
            "even sharding: {} shards for {} workers: some workers will have nothing to do (and end at once); \
             lower `cluster.workers`",
            p.shards.len(),
            spec.workers
        ));
    }
    if spec.workers + 1 > f.limits.max_nodes {
        warnings.push(format!(
            "self-termination: {} nodes (a master and {} workers) exceed the provider's {} nodes per job: bootstrap will refuse it",
            spec.workers + 1,
            spec.workers,
            f.limits.max_nodes
        ));
    }
    let mut unpriced: Vec<&str> = Vec::new();
    for n in estimate.nodes.iter().filter(|n| n.usd_per_hour.is_none()) {
        // The master's and the workers' type may be one: one warning for it.
        if unpriced.contains(&n.node_type.as_str()) {
            continue;
        }
        unpriced.push(&n.node_type);
        warnings.push(format!(
            "cost: no price for node type {:?} of {}: add a line `\"{}\" = <USD per node-hour>` to the job's [prices] table",
            n.node_type, f.provider, n.node_type
        ));
    }
    if let Err(e) = &f.output {
        warnings.push(e.clone());
    }
    let pieces = u64::from(spec.workers) * u64::from(spec.shards_per_worker);
    let derived = p.total_bytes.div_ceil(pieces.max(1));
    let raised_from = (spec.target_shard_bytes.is_none() && p.target_bytes > derived).then_some(derived);
    Report { bootstrap_limit, bootstrap_budget, credential_ttl, renew_every, renewals, raised_from, warnings }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use mayfly_model::cost::{EstimateInput, estimate};
    use mayfly_model::plan::{Item, Shard};

    const MIB: u64 = 1 << 20;

    fn spec(extra: &str) -> JobSpec {
        let src = format!(
            "[job]\nname = \"c\"\n[task]\npath = \".\"\n[input]\nurl = \"data\"\n[output]\nurl = \"out\"\n\
             [cluster]\nworkers = 2\ndeadline = \"30m\"\nlease_time = \"30s\"\n{extra}"
        );
        JobSpec::parse(Path::new("job.toml"), &src, &|_| None).unwrap()
    }

    /// A plan of shards of these sizes, one whole object each.
    fn plan(sizes: &[u64]) -> Plan {
        let shards: Vec<Shard> = sizes
            .iter()
            .enumerate()
            .map(|(i, &bytes)| Shard {
                id: i as u32,
                bytes,
                items: vec![Item { object: format!("o{i}"), start: 0, len: bytes, whole: true }],
            })
            .collect();
        let total_bytes = sizes.iter().sum();
        Plan {
            objects: sizes.len() as u64,
            total_bytes,
            target_bytes: sizes.iter().copied().max().unwrap_or(0),
            shards,
        }
    }

    fn limits() -> Limits {
        Limits { bootstrap_limit_ms: 900_000, credential_ttl_ms: 3_600_000, max_nodes: 100 }
    }

    /// The report for `spec` and `plan` at 100 MiB/s per worker.
    fn report(spec: &JobSpec, plan: &Plan, limits: Limits, output: Result<(), String>) -> Report {
        let prices = BTreeMap::from([("local".to_owned(), 0.0)]);
        let (max, _) = plan.balance();
        let estimate = estimate(&EstimateInput {
            nodes: None,
            prices: &prices,
            workers: spec.workers,
            replacements: spec.max_replacements,
            largest_shard: max,
            total_bytes: plan.total_bytes,
            items: plan.shards.len() as u64,
            worker_rate: 100 * MIB,
            deadline: spec.deadline,
        });
        check(&Facts {
            spec,
            plan,
            planned_in: Duration::from_millis(10),
            limits,
            provider: "test",
            estimate: &estimate,
            worker_rate: 100 * MIB,
            output,
        })
    }

    fn rules(r: &Report) -> Vec<&str> {
        r.warnings.iter().map(|w| w.split(':').next().unwrap()).collect()
    }

    #[test]
    fn a_balanced_job_within_every_limit_has_no_warning_but_the_unpriced_node_type() {
        let r = report(&spec(""), &plan(&[MIB; 8]), limits(), Ok(()));
        assert_eq!(rules(&r), ["cost"], "{:?}", r.warnings);
        assert!(r.warnings[0].contains("no price for node type"), "{:?}", r.warnings);
    }

    #[test]
    fn the_bootstrap_budget_is_the_one_bootstrap_uses() {
        let r = report(&spec(""), &plan(&[MIB; 8]), limits(), Ok(()));
        assert_eq!((r.bootstrap_limit, r.bootstrap_budget), (Duration::from_secs(900), Duration::from_secs(890)));
        let short = Limits { bootstrap_limit_ms: 30_000, ..limits() };
        let r = report(&spec(""), &plan(&[MIB; 8]), short, Ok(()));
        assert_eq!(r.bootstrap_budget, Duration::from_secs(27));
        let budget = mayfly_model::policy::Budget::bootstrap(0, Duration::from_secs(30));
        assert_eq!(budget.ends, r.bootstrap_budget.as_millis() as u64);
    }

    #[test]
    fn each_rule_the_plan_breaks_is_named_with_what_to_change() {
        // Time: 2 workers at 100 MiB/s need ~100 s for 20 GiB; the deadline is 30 s.
        let r = report(
            &spec("[limits]\nattempt_time = \"1s\"\n").with_deadline(30),
            &plan(&[10 << 30; 2]),
            limits(),
            Ok(()),
        );
        let time: Vec<_> = r.warnings.iter().filter(|w| w.starts_with("time limit")).collect();
        assert!(time.iter().any(|w| w.contains("raise `cluster.deadline`")), "{time:?}");
        assert!(time.iter().any(|w| w.contains("over `limits.attempt_time`")), "{time:?}");
        // Credentials that live shorter than a lease.
        let brief = Limits { credential_ttl_ms: 10_000, ..limits() };
        let r = report(&spec(""), &plan(&[MIB; 8]), brief, Ok(()));
        assert!(
            r.warnings.iter().any(|w| w.starts_with("credential expiry: credentials live 10s")),
            "{:?}",
            r.warnings
        );
        assert!(r.renew_every < Duration::from_secs(10) && r.renew_every >= Duration::from_secs(1), "{r:?}");
        // One shard far above the mean; fewer shards than workers.
        let r = report(&spec(""), &plan(&[MIB, MIB, MIB, 20 * MIB]), limits(), Ok(()));
        assert!(r.warnings.iter().any(|w| w.starts_with("even sharding: shard 3 holds")), "{:?}", r.warnings);
        let r = report(&spec(""), &plan(&[MIB]), limits(), Ok(()));
        assert!(r.warnings.iter().any(|w| w.contains("1 shards for 2 workers")), "{:?}", r.warnings);
        // More nodes than the provider allows.
        let r = report(&spec(""), &plan(&[MIB; 8]), Limits { max_nodes: 2, ..limits() }, Ok(()));
        assert!(r.warnings.iter().any(|w| w.starts_with("self-termination: 3 nodes")), "{:?}", r.warnings);
        // An output location that cannot take the outputs.
        let r = report(&spec(""), &plan(&[MIB; 8]), limits(), Err("output.url: not empty".into()));
        assert!(r.warnings.contains(&"output.url: not empty".to_owned()), "{:?}", r.warnings);
    }

    #[test]
    fn a_target_raised_by_the_floor_says_from_what() {
        let mut p = plan(&[MIB; 8]);
        let derived = p.total_bytes.div_ceil(2 * u64::from(spec("").shards_per_worker));
        p.target_bytes = derived * 2;
        assert_eq!(report(&spec(""), &p, limits(), Ok(())).raised_from, Some(derived));
        // Not raised; or a target the job gave, used as it is.
        let given = spec(&format!("[sharding]\ntarget_shard_bytes = {}\n", derived * 2));
        assert_eq!(report(&given, &p, limits(), Ok(())).raised_from, None);
        p.target_bytes = derived;
        assert_eq!(report(&spec(""), &p, limits(), Ok(())).raised_from, None);
    }

    trait Deadline {
        fn with_deadline(self, secs: u64) -> Self;
    }

    impl Deadline for JobSpec {
        fn with_deadline(mut self, secs: u64) -> Self {
            self.deadline = Duration::from_secs(secs);
            self
        }
    }
}
