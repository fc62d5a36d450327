//! A serverless platform's event, as core's bootstrap request. A cloud adapts
//! what its function receives (an S3 notification, an HTTP request); here the
//! event is `{"job": "<job file's text>", "base_dir": ..., "overrides": {...}}`.

use std::collections::BTreeMap;

use mayfly_provider_api::{BootstrapRequest, ErrorKind, ProviderError};

use crate::fail;

/// The bootstrap request `event` asks for.
pub(crate) fn adapt_event(event: serde_json::Value) -> Result<BootstrapRequest, ProviderError> {
    let job = event
        .get("job")
        .and_then(|j| j.as_str())
        .ok_or_else(|| fail(ErrorKind::Config, "the event carries no job (expected {\"job\": \"<job file>\", ...})"))?;
    let base_dir = event.get("base_dir").and_then(|b| b.as_str()).map(str::to_owned);
    let overrides = match event.get("overrides") {
        Some(o) => serde_json::from_value(o.clone()).map_err(|e| fail(ErrorKind::Config, e.to_string()))?,
        None => BTreeMap::new(),
    };
    Ok(BootstrapRequest { job: job.to_owned(), base_dir, overrides, ..Default::default() })
}
