//! The node types and what they cost, for `mayfly plan`'s estimate. A cloud
//! reads its node types from its settings and ships a price table with the
//! date and place it was read from (`SOURCE`), which a job's `[prices]` can
//! override; core names no node type.

use mayfly_provider_api::NodeTypes;

/// Where the prices come from, and when.
pub(crate) const SOURCE: &str = "local processes, free";

/// The master's and the workers' node type, priced.
pub(crate) fn node_types() -> NodeTypes {
    NodeTypes::priced("process", "process", &[("process", 0.0)], SOURCE)
}
