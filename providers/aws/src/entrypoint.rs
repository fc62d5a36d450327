//! The Lambda entrypoint: the Runtime API loop of a `provided.al2023` custom
//! runtime (`mayfly serve --provider aws` is the function's bootstrap). Each
//! invocation's event is adapted into a bootstrap request that carries the
//! invocation's deadline, so core's bootstrap budget ends with the invocation.

use std::collections::BTreeMap;

use mayfly_provider_api::{ErrorKind, Provider, ProviderError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Aws, fail};

/// An HTTP answer.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// One HTTP/1.0 request to the Runtime API (a plain, local endpoint): an
/// HTTP/1.0 client gets the whole body until the connection closes, never
/// chunked (Lambda's Runtime API sends events without a Content-Length).
async fn http(api: &str, method: &str, path: &str, body: &[u8], extra: &[(&str, &str)]) -> Result<Answer, String> {
    let mut stream = tokio::net::TcpStream::connect(api).await.map_err(|e| format!("connecting to {api}: {e}"))?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {api}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
    stream.write_all(body).await.map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.map_err(|e| format!("reading from {api}: {e}"))?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("a malformed HTTP answer")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("a malformed HTTP status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Answer { status, headers, body: raw[split + 4..].to_vec() })
}

/// Serves invocations until the Runtime API goes away.
pub(crate) async fn serve(aws: &Aws) -> Result<(), ProviderError> {
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API").map_err(|_| {
        fail(
            ErrorKind::Config,
            "AWS_LAMBDA_RUNTIME_API is not set: `mayfly serve --provider aws` runs as a Lambda function's bootstrap",
        )
    })?;
    loop {
        let next = http(&api, "GET", "/2018-06-01/runtime/invocation/next", b"", &[])
            .await
            .map_err(|e| fail(ErrorKind::Unavailable, format!("the Lambda Runtime API: {e}")))?;
        if next.status != 200 {
            return Err(fail(ErrorKind::Unavailable, format!("the Lambda Runtime API answered {}", next.status)));
        }
        let Some(id) = next.headers.get("lambda-runtime-aws-request-id").cloned().filter(|i| !i.is_empty()) else {
            return Err(fail(ErrorKind::Protocol, "the Lambda Runtime API sent an invocation without a request id"));
        };
        let deadline = next.headers.get("lambda-runtime-deadline-ms").and_then(|d| d.parse().ok());
        if deadline.is_none() {
            aws.host.log(
                mayfly_provider_api::Level::Warn,
                &format!("aws: invocation {id} has no deadline header; the bootstrap limit alone bounds it"),
            );
        }
        let outcome = async {
            let event: serde_json::Value = serde_json::from_slice(&next.body)
                .map_err(|e| fail(ErrorKind::Config, format!("the event is not JSON: {e}")))?;
            let mut request = aws.adapt_event(event).await?;
            request.deadline = deadline;
            aws.host.bootstrap(request).await
        }
        .await;
        let posted = match outcome {
            Ok(reply) => {
                let body = serde_json::to_vec(&reply).unwrap_or_else(|_| b"{}".to_vec());
                http(&api, "POST", &format!("/2018-06-01/runtime/invocation/{id}/response"), &body, &[]).await
            }
            Err(e) => {
                aws.host.log(mayfly_provider_api::Level::Error, &format!("aws: invocation {id}: {e}"));
                let body =
                    serde_json::json!({ "errorMessage": e.to_string(), "errorType": format!("mayfly.{:?}", e.kind) });
                http(
                    &api,
                    "POST",
                    &format!("/2018-06-01/runtime/invocation/{id}/error"),
                    body.to_string().as_bytes(),
                    &[("Lambda-Runtime-Function-Error-Type", "Unhandled")],
                )
                .await
            }
        };
        match posted {
            Ok(a) if (200..300).contains(&a.status) => {}
            Ok(a) => {
                let said = String::from_utf8_lossy(&a.body).into_owned();
                return Err(fail(
                    ErrorKind::Unavailable,
                    format!("answering invocation {id}: the Runtime API answered {}: {said}", a.status),
                ));
            }
            Err(e) => return Err(fail(ErrorKind::Unavailable, format!("answering invocation {id}: {e}"))),
        }
    }
}
