//! The Azure Functions entrypoint: a custom handler (`mayfly serve --provider
//! azure` is the function app's `customHandler.description.defaultExecutablePath`).
//! The Functions host forwards each invocation as `POST /<function name>`
//! with the documented payload (`{"Data": {...}, "Metadata": {...}}`) to the
//! port in `FUNCTIONS_CUSTOMHANDLER_PORT`, and takes back
//! `{"Outputs": {...}, "Logs": [...], "ReturnValue": ...}`.
//!
//! Two functions: `run`, an HTTP trigger whose body is a bootstrap request
//! (`{"job": ...}` or `{"job_url": "az://..."}`), answered through the `res`
//! output binding; and `blob`, a Blob trigger on `event_prefix` that runs
//! the function's `event_job_url` job on the arriving blob's "directory".
//! Each bootstrap ends with its invocation: `bootstrap_limit` (the app's
//! `functionTimeout`) after the request arrived, and for HTTP no later than
//! the 230 s an HTTP answer may take.

use std::collections::BTreeMap;
use std::time::Duration;

use mayfly_provider_api::{BootstrapRequest, ErrorKind, Level, Provider, ProviderError, now_ms};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::{Azure, HTTP_LIMIT, fail};

/// A plain-HTTP GET (the instance metadata service): the body of a 200.
pub(crate) async fn get(url: &str, headers: &[(&str, &str)], timeout: Duration) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// is spoken here"))?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(host).await.map_err(|e| format!("{host}: {e}"))?;
        let mut head = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or("a malformed HTTP answer")?;
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            return Err(format!("{url} answered {status}"));
        }
        Ok(body.to_owned())
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| format!("{url}: no answer in {timeout:?}"))?
}

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
///   duplicate delivery (the host retries a failed invocation) is refused as
///   a job id already used instead of running twice;
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
fn unquote(v: &serde_json::Value) -> Option<String> {
    let s = v.as_str()?;
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(serde_json::Value::String(inner)) => Some(inner),
        _ => Some(s.to_owned()),
    }
}

/// `container/key` of a blob's URL: after the account's endpoint when it is
/// the provider's (an emulator's has the account in its path), else after
/// the host; percent-escapes decoded.
fn blob_path(uri: &str, storage_url: Option<&str>) -> Option<String> {
    let rest = match storage_url.and_then(|base| uri.strip_prefix(base.trim_end_matches('/'))) {
        Some(rest) => rest.trim_start_matches('/').to_owned(),
        None => uri.split_once("://")?.1.split_once('/')?.1.to_owned(),
    };
    let rest = rest.split(['?', '#']).next()?;
    let mut out = Vec::with_capacity(rest.len());
    let bytes = rest.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let path = String::from_utf8(out).ok()?;
    path.contains('/').then_some(path)
}

fn direct(event: &serde_json::Value) -> Result<BootstrapRequest, ProviderError> {
    BootstrapRequest::from_direct(event, "az").map_err(|m| fail(ErrorKind::Config, format!("event: {m}")))
}

fn blob_event(
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

/// One request read off a connection: (method, path, body); `None` at its end.
async fn read_request<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> Result<Option<(String, String, Vec<u8>, bool)>, String> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
    let http10 = parts.next().is_some_and(|v| v == "HTTP/1.0");
    let (mut length, mut close, mut chunked) = (0usize, http10, false);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await.map_err(|e| e.to_string())? == 0 {
            return Err("the connection ended inside a request's head".into());
        }
        let header = header.trim();
        if header.is_empty() {
            break;
        }
        let lower = header.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().map_err(|_| format!("a bad Content-Length: {header}"))?;
        } else if let Some(v) = lower.strip_prefix("connection:") {
            close = v.trim() == "close";
        } else if let Some(v) = lower.strip_prefix("transfer-encoding:") {
            chunked = v.trim() == "chunked";
        }
    }
    if chunked {
        // The host may send its payload chunked (no Content-Length).
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).await.map_err(|e| e.to_string())?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| format!("a bad chunk size: {size:?}"))?;
            if body.len() + size > 16 << 20 {
                return Err("a request over 16 MiB".into());
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..]).await.map_err(|e| e.to_string())?;
            let mut end = String::new();
            reader.read_line(&mut end).await.map_err(|e| e.to_string())?;
            if size == 0 {
                // Trailers, if any, end with an empty line (read above when there are none).
                while !end.trim().is_empty() {
                    end.clear();
                    if reader.read_line(&mut end).await.map_err(|e| e.to_string())? == 0 {
                        break;
                    }
                }
                return Ok(Some((method, path, body, close)));
            }
        }
    }
    if length > 16 << 20 {
        return Err(format!("a request of {length} bytes (16 MiB at most)"));
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    Ok(Some((method, path, body, close)))
}

/// What one invocation answers the host: (HTTP status to the host, payload).
async fn invoke(azure: &Azure, function: &str, body: &[u8]) -> (u16, serde_json::Value) {
    use serde_json::json;
    let arrived = now_ms();
    let http = function != "blob";
    let outcome = async {
        let event: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| fail(ErrorKind::Config, format!("the invocation's payload is not JSON: {e}")))?;
        let mut request = azure.adapt_event(event).await?;
        // The budget ends with the invocation: the function's timeout, and
        // for HTTP the 230 s an answer may take; a few seconds are kept to answer.
        let mut limit = azure.bootstrap_limit;
        if http {
            limit = limit.min(HTTP_LIMIT);
        }
        request.deadline = Some(arrived + limit.saturating_sub(Duration::from_secs(5)).as_millis() as u64);
        azure.host.bootstrap(request).await
    }
    .await;
    let log = |e: &ProviderError| azure.host.log(Level::Error, &format!("azure: function {function}: {e}"));
    match (http, outcome) {
        (true, Ok(reply)) => (
            200,
            json!({"Outputs": {"res": {"statusCode": 200, "headers": {"Content-Type": "application/json"},
                   "body": serde_json::to_string(&reply).unwrap_or_default()}},
                   "Logs": [format!("mayfly: job {} launched {} node(s)", reply.job, reply.nodes.len())]}),
        ),
        (true, Err(e)) => {
            log(&e);
            let status = if e.kind == ErrorKind::Config { 400 } else { 503 };
            let body = json!({"error": e.to_string(), "kind": e.kind}).to_string();
            (
                200,
                json!({"Outputs": {"res": {"statusCode": status, "headers": {"Content-Type": "application/json"},
                       "body": body}}, "Logs": [e.to_string()]}),
            )
        }
        (false, Ok(reply)) => (
            200,
            json!({"Outputs": {}, "Logs": [format!("mayfly: job {} launched {} node(s)", reply.job, reply.nodes.len())],
                   "ReturnValue": reply}),
        ),
        // A bad job or a duplicate delivery: retrying cannot help; said in the logs.
        (false, Err(e)) if e.kind == ErrorKind::Config => {
            log(&e);
            (200, json!({"Outputs": {}, "Logs": [format!("mayfly: not run: {e}")]}))
        }
        // Anything else fails the invocation: the host retries the blob.
        (false, Err(e)) => {
            log(&e);
            (500, json!({"Outputs": {}, "Logs": [e.to_string()], "error": e.to_string()}))
        }
    }
}

async fn connection(azure: &Azure, stream: tokio::net::TcpStream) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let (method, path, body, close) = match read_request(&mut reader).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                azure.host.log(Level::Warn, &format!("azure: a malformed request from the Functions host: {e}"));
                let _ = write
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                return;
            }
        };
        let function = path.trim_start_matches('/').split(['?', '/']).next().unwrap_or("").to_owned();
        let (status, answer) = match (method.as_str(), function.as_str()) {
            ("POST", "run" | "blob") => invoke(azure, &function, &body).await,
            _ => (404, serde_json::json!({"error": format!("no function {path:?}: mayfly serves `run` and `blob`")})),
        };
        let text = answer.to_string();
        let reason = match status {
            200 => "OK",
            404 => "Not Found",
            _ => "Internal Server Error",
        };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
            text.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if write.write_all(head.as_bytes()).await.is_err() || write.write_all(text.as_bytes()).await.is_err() {
            return;
        }
        if close {
            return;
        }
    }
}

/// Serves the Functions host until it goes away.
pub(crate) async fn serve(azure: &Azure) -> Result<(), ProviderError> {
    use futures::StreamExt;
    let port = std::env::var("FUNCTIONS_CUSTOMHANDLER_PORT").map_err(|_| {
        fail(
            ErrorKind::Config,
            "FUNCTIONS_CUSTOMHANDLER_PORT is not set: `mayfly serve --provider azure` runs as a function app's custom handler",
        )
    })?;
    let listener = tokio::net::TcpListener::bind((
        "127.0.0.1",
        port.parse::<u16>()
            .map_err(|_| fail(ErrorKind::Config, format!("FUNCTIONS_CUSTOMHANDLER_PORT {port:?} is not a port")))?,
    ))
    .await
    .map_err(|e| fail(ErrorKind::Unavailable, format!("listening on 127.0.0.1:{port}: {e}")))?;
    azure.host.log(Level::Info, &format!("azure: custom handler listening on 127.0.0.1:{port}"));
    let mut connections = futures::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => connections.push(connection(azure, stream)),
                Err(e) => azure.host.log(Level::Warn, &format!("azure: accepting a connection: {e}")),
            },
            Some(()) = connections.next(), if !connections.is_empty() => {}
        }
    }
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
