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

use std::time::Duration;

use mayfly_provider_api::{ErrorKind, Level, Provider, ProviderError, now_ms};
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
