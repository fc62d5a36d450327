//! Events: a Functions invocation (HTTP, or a Blob trigger on the configured
//! path) becomes the bootstrap of a job: the job file it carries, or the
//! configured job with the blob's batch as its input.

use super::*;

/// Turns an invocation into a bootstrap request:
///
/// - the custom handler's payload of the HTTP trigger: `Data.req.Body` is a
///   direct request;
/// - the payload of the Blob trigger: the blob is `Metadata.Uri` (the host
///   leaves out `BlobTrigger`, as it does every key ending in "trigger", and
///   sends other values JSON-encoded: strings arrive quoted); the job at
///   `event_job_url` runs on the blob's directory (`az://container/<its
///   prefix>`, under `event_prefix` if set), with a job id made from that
///   prefix and the blob's ETag (else its last-modified time), so that a
///   duplicate delivery (the host retries a failed invocation) is refused (the
///   job runs, or its id was already used) instead of running twice, or
///   resumes the job if its master is lost;
/// - a direct request: `{"job": "<job file>"}` or `{"job_url": "az://..."}`,
///   with optional `base_dir` and `overrides`.
pub fn adapt_event(
    event: &serde_json::Value,
    event_job_url: Option<&str>,
    event_prefix: Option<&str>,
    storage_url: Option<&str>,
) -> Result<BootstrapRequest, ProviderError> {
    let bad = |m: &str| fail(ErrorKind::Config, format!("event: {m}"));
    let obj = event.as_object().ok_or_else(|| bad("expected a JSON object"))?;
    let text = |pointer: &str| event.pointer(pointer).and_then(unquote);
    if let Some(uri) = text("/Metadata/Uri") {
        let path = blob_path(&uri, storage_url).ok_or_else(|| {
            bad(&format!("`Metadata.Uri` {uri:?} is not a blob's URL (https://account.../container/path)"))
        })?;
        let tag = text("/Metadata/Properties/ETag")
            .or_else(|| text("/Metadata/Properties/Etag"))
            .or_else(|| text("/Metadata/Properties/LastModified"))
            .unwrap_or_default();
        return blob_event(&path, &tag, event_job_url, event_prefix);
    }
    if let Some(data) = obj.get("Data") {
        let req = data.get("req").ok_or_else(|| {
            bad("a custom handler payload without `Data.req` (HTTP trigger) or `Metadata.BlobTrigger` (Blob trigger)")
        })?;
        let body = match req.get("Body") {
            Some(serde_json::Value::String(s)) => {
                serde_json::from_str(s).map_err(|e| bad(&format!("the HTTP request's body is not JSON: {e}")))?
            }
            Some(v @ serde_json::Value::Object(_)) => v.clone(),
            _ => return Err(bad("the HTTP request has no body: send {\"job_url\": \"az://...\"} or {\"job\": ...}")),
        };
        return direct(&body);
    }
    direct(event)
}

/// A metadata value as text: the host sends strings JSON-encoded (`"\"x\""`).
pub(crate) fn unquote(v: &serde_json::Value) -> Option<String> {
    let s = v.as_str()?;
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(serde_json::Value::String(inner)) => Some(inner),
        _ => Some(s.to_owned()),
    }
}

/// `container/key` of a blob's URL: after the account's endpoint when it is
/// the provider's (an emulator's has the account in its path), else after
/// the host; percent-escapes decoded.
pub(crate) fn blob_path(uri: &str, storage_url: Option<&str>) -> Option<String> {
    let rest = match storage_url.and_then(|base| uri.strip_prefix(base.trim_end_matches('/'))) {
        Some(rest) => rest.trim_start_matches('/').to_owned(),
        None => uri.split_once("://")?.1.split_once('/')?.1.to_owned(),
    };
    let rest = rest.split(['?', '#']).next()?;
    let path = percent_encoding::percent_decode_str(rest).decode_utf8().ok()?.into_owned();
    path.contains('/').then_some(path)
}

pub(crate) fn direct(event: &serde_json::Value) -> Result<BootstrapRequest, ProviderError> {
    BootstrapRequest::from_direct(event, "az").map_err(|m| fail(ErrorKind::Config, format!("event: {m}")))
}

pub(crate) fn blob_event(
    path: &str,
    etag: &str,
    event_job_url: Option<&str>,
    event_prefix: Option<&str>,
) -> Result<BootstrapRequest, ProviderError> {
    let bad = |m: String| fail(ErrorKind::Config, format!("Blob event: {m}"));
    let job_url = event_job_url.ok_or_else(|| {
        bad("this function has no `event_job_url` setting: which job runs for an arriving blob".into())
    })?;
    let (container, key) = path
        .split_once('/')
        .filter(|(c, k)| !c.is_empty() && !k.is_empty())
        .ok_or_else(|| bad(format!("blob {path:?}: expected container/path/name")))?;
    let dir = key.rsplit_once('/').map(|(d, _)| d.to_owned()).unwrap_or_default();
    if dir.is_empty() {
        return Err(bad(format!("az://{container}/{key} has no prefix to run a job on (put it under a folder)")));
    }
    if let Some(p) = event_prefix
        && !format!("{container}/{dir}/").starts_with(p)
        && !format!("{dir}/").starts_with(p)
    {
        return Err(bad(format!("az://{container}/{key} is not under the configured prefix {p:?}")));
    }
    let tag: String = etag.chars().filter(char::is_ascii_alphanumeric).take(40).collect();
    let mut id: String = dir
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .take(100 - tag.len() - 1)
        .collect();
    if !tag.is_empty() {
        id.push('-');
        id.push_str(&tag);
    }
    let overrides = BTreeMap::from([
        ("MAYFLY_INPUT".to_owned(), format!("az://{container}/{dir}")),
        ("MAYFLY_JOB_ID".to_owned(), id),
    ]);
    Ok(BootstrapRequest { job_url: Some(job_url.to_owned()), overrides, ..Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invocations_become_bootstrap_requests_or_clear_errors() {
        let job = "az://conf/jobs/wc.toml";
        let http = serde_json::json!({"Data": {"req": {"Url": "http://x/api/run", "Method": "POST",
            "Body": "{\"job_url\": \"az://conf/jobs/wc.toml\"}"}}, "Metadata": {}});
        let r = adapt_event(&http, None, None, None).unwrap();
        assert_eq!(r.job_url.as_deref(), Some(job));
        let empty = serde_json::json!({"Data": {"req": {"Method": "POST"}}, "Metadata": {}});
        assert!(adapt_event(&empty, None, None, None).unwrap_err().message.contains("has no body"));
        // As the host sends it: no BlobTrigger, strings JSON-encoded.
        let blob = |path: &str, etag: &str| {
            let uri = format!("https://acct.blob.core.windows.net/{}", path.replace(' ', "%20"));
            serde_json::json!({"Data": {"blob": "..."}, "Metadata": {"Uri": serde_json::to_string(&uri).unwrap(),
                "Properties": {"ETag": etag}}})
        };
        let adapt_event =
            |e: &serde_json::Value, job: Option<&str>, prefix: Option<&str>| adapt_event(e, job, prefix, None);
        let r = adapt_event(&blob("data/incoming/batch 7/_READY", "\"0x8DC1\""), Some(job), Some("incoming/")).unwrap();
        assert_eq!(r.overrides["MAYFLY_INPUT"], "az://data/incoming/batch 7");
        assert_eq!(r.overrides["MAYFLY_JOB_ID"], "incoming-batch-7-0x8DC1", "the same blob, the same id");
        let e = adapt_event(&blob("data/incoming/x", "1"), None, None).unwrap_err();
        assert!(e.message.contains("no `event_job_url` setting"), "{e}");
        let e = adapt_event(&blob("data/other/x", "1"), Some(job), Some("incoming/")).unwrap_err();
        assert!(e.message.contains("not under the configured prefix"), "{e}");
        let e = adapt_event(&blob("data/_READY", "1"), Some(job), None).unwrap_err();
        assert!(e.message.contains("no prefix"), "{e}");
        let both = adapt_event(&serde_json::json!({"job": "x", "job_url": job}), None, None).unwrap_err();
        assert!(both.message.contains("one of them"), "{both}");
        // An emulator's endpoint has the account in its path.
        let azurite = "https://127.0.0.1:10000/devstoreaccount1";
        assert_eq!(blob_path(&format!("{azurite}/data/in/x"), Some(azurite)).as_deref(), Some("data/in/x"));
        assert_eq!(blob_path("https://a.blob.core.windows.net/data/in%2Bx/y", None).as_deref(), Some("data/in+x/y"));
        assert_eq!(blob_path("https://a.blob.core.windows.net/data", None), None);
    }
}
