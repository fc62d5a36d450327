//! What Azure VMs cost, for `mayfly plan` (a job's `[prices]` wins).

use mayfly_provider_api::NodeTypes;

/// When and where [`PAY_AS_YOU_GO`] was read off Azure's public price list.
pub const SOURCE: &str = "Azure pay-as-you-go, Linux, East US, price list of 2025-06";

/// USD per VM-hour of common sizes, as of [`SOURCE`]. Other regions,
/// reservations and spot prices differ: a job's `[prices]` says its own.
pub const PAY_AS_YOU_GO: &[(&str, f64)] = &[
    ("Standard_B2s", 0.0416),
    ("Standard_D2s_v5", 0.096),
    ("Standard_D4s_v5", 0.192),
    ("Standard_D8s_v5", 0.384),
    ("Standard_D2as_v5", 0.086),
    ("Standard_D4as_v5", 0.172),
    ("Standard_F2s_v2", 0.0846),
    ("Standard_F4s_v2", 0.169),
    ("Standard_E2s_v5", 0.126),
];

/// The VM sizes of a job's master and workers, priced.
pub fn node_types(master: &str, worker: &str) -> NodeTypes {
    NodeTypes::priced(master, worker, PAY_AS_YOU_GO, SOURCE)
}
