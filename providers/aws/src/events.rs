//! S3 events: an object created under the configured prefix becomes the
//! bootstrap of the configured job (once per object, by its sequencer).

use super::*;

/// Turns a Lambda event into a bootstrap request:
///
/// - a direct invocation: `{"job": "<job file>"}` or `{"job_url": "s3://bucket/job.toml"}`,
///   with optional `base_dir` and `overrides` (`MAYFLY_*` names);
/// - an S3 object-created event: the job at `event_job_url` (the function's
///   setting), on the "directory" of the object that arrived (`s3://bucket/<its
///   prefix>`, which must lie under `event_prefix` if that is set), with a job id made
///   from that prefix and the event's sequencer, so that a duplicate delivery of
///   the event is refused (the job runs, or its id was already used) instead of
///   running twice, or resumes the job if its master is lost.
pub fn adapt_event(
    event: &serde_json::Value,
    event_job_url: Option<&str>,
    event_prefix: Option<&str>,
) -> Result<BootstrapRequest, ProviderError> {
    let bad = |m: &str| fail(ErrorKind::Config, format!("event: {m}"));
    let obj = event.as_object().ok_or_else(|| bad("expected a JSON object with `job`, `job_url` or `Records`"))?;
    if let Some(records) = obj.get("Records") {
        return s3_event(records, event_job_url, event_prefix);
    }
    BootstrapRequest::from_direct(event, "s3").map_err(|m| bad(&m))
}

pub(crate) fn s3_event(
    records: &serde_json::Value,
    event_job_url: Option<&str>,
    event_prefix: Option<&str>,
) -> Result<BootstrapRequest, ProviderError> {
    let bad = |m: String| fail(ErrorKind::Config, format!("S3 event: {m}"));
    let job_url = event_job_url.ok_or_else(|| {
        bad("this function has no `event_job_url` setting: which job runs for an object-created event".into())
    })?;
    let records = records.as_array().filter(|r| !r.is_empty()).ok_or_else(|| bad("`Records` is empty".into()))?;
    let mut found: Option<(String, String, String)> = None;
    for r in records {
        let name = r.pointer("/eventName").and_then(|v| v.as_str()).unwrap_or_default();
        if r.pointer("/eventSource").and_then(|v| v.as_str()) != Some("aws:s3") || !name.starts_with("ObjectCreated:") {
            return Err(bad(format!("expected S3 object-created records, got {name:?}")));
        }
        let bucket = r.pointer("/s3/bucket/name").and_then(|v| v.as_str()).unwrap_or_default();
        let key = r.pointer("/s3/object/key").and_then(|v| v.as_str()).unwrap_or_default();
        let sequencer = r.pointer("/s3/object/sequencer").and_then(|v| v.as_str()).unwrap_or_default();
        if bucket.is_empty() || key.is_empty() {
            return Err(bad("a record without `s3.bucket.name` or `s3.object.key`".into()));
        }
        // Keys arrive URL-encoded ('+' for spaces).
        let key = url_decode(key).ok_or_else(|| bad(format!("key {key:?} is not valid URL encoding")))?;
        let dir = key.rsplit_once('/').map(|(d, _)| d.to_owned()).unwrap_or_default();
        if dir.is_empty() {
            return Err(bad(format!("s3://{bucket}/{key} has no prefix to run a job on (put it under a folder)")));
        }
        if let Some(p) = event_prefix
            && !format!("{dir}/").starts_with(p)
        {
            return Err(bad(format!("s3://{bucket}/{key} is not under the configured prefix {p:?}")));
        }
        match &found {
            Some((b, d, _)) if (b.as_str(), d.as_str()) != (bucket, dir.as_str()) => {
                return Err(bad("records for different prefixes in one event".into()));
            }
            Some(_) => {}
            None => found = Some((bucket.to_owned(), dir, sequencer.to_owned())),
        }
    }
    let (bucket, dir, sequencer) = found.ok_or_else(|| bad("no record".into()))?;
    // The prefix part is shortened, never the sequencer: two batches under one
    // long prefix must not share an id.
    let sequencer: String = sequencer.chars().filter(char::is_ascii_alphanumeric).take(40).collect();
    let mut id: String = dir
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .take(100 - sequencer.len() - 1)
        .collect();
    if !sequencer.is_empty() {
        id.push('-');
        id.push_str(&sequencer);
    }
    let overrides =
        BTreeMap::from([("MAYFLY_INPUT".to_owned(), format!("s3://{bucket}/{dir}")), ("MAYFLY_JOB_ID".to_owned(), id)]);
    Ok(BootstrapRequest { job_url: Some(job_url.to_owned()), overrides, ..Default::default() })
}

/// Decodes an S3 event's key: form-style URL encoding, `+` for a space and
/// `%XX` for every other byte that needs it (a `+` of the key is `%2B`).
/// `None` if the bytes are not UTF-8.
pub(crate) fn url_decode(s: &str) -> Option<String> {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8().ok().map(|k| k.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_s3_events_key_is_form_decoded() {
        assert_eq!(url_decode("in/a+b%2Bc.txt").as_deref(), Some("in/a b+c.txt"));
        assert_eq!(url_decode("in/caf%C3%A9%20%25.txt").as_deref(), Some("in/café %.txt"));
        assert_eq!(url_decode("in/plain.txt").as_deref(), Some("in/plain.txt"));
        assert_eq!(url_decode("in/%FF.txt"), None, "not UTF-8");
    }
}
