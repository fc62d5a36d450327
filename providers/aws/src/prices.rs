//! What EC2 instances cost, for `mayfly plan` (a job's `[prices]` wins).

use mayfly_provider_api::NodeTypes;

/// When and where [`ON_DEMAND`] was read off AWS's public price list.
pub const SOURCE: &str = "AWS on-demand, Linux, us-east-1, price list of 2025-06";

/// USD per instance-hour of common sizes, as of [`SOURCE`]. Other regions,
/// savings plans and spot prices differ: a job's `[prices]` says its own.
pub const ON_DEMAND: &[(&str, f64)] = &[
    ("t3.micro", 0.0104),
    ("t3.small", 0.0208),
    ("t3.medium", 0.0416),
    ("t3.large", 0.0832),
    ("t3.xlarge", 0.1664),
    ("m5.large", 0.096),
    ("m5.xlarge", 0.192),
    ("m5.2xlarge", 0.384),
    ("m6i.large", 0.096),
    ("m6i.xlarge", 0.192),
    ("m7g.large", 0.0816),
    ("c5.large", 0.085),
    ("c5.xlarge", 0.17),
    ("c6i.large", 0.085),
    ("c6i.xlarge", 0.17),
    ("c7g.large", 0.0725),
    ("r5.large", 0.126),
    ("r6i.large", 0.126),
];

/// The instance types of a job's master and workers, priced.
pub fn node_types(master: &str, worker: &str) -> NodeTypes {
    NodeTypes::priced(master, worker, ON_DEMAND, SOURCE)
}
