//! The Lambda entrypoint: the Runtime API loop of a `provided.al2023` custom
//! runtime (`mayfly serve --provider aws` is the function's bootstrap). Each
//! invocation's event is adapted into a bootstrap request that carries the
//! invocation's deadline, so core's bootstrap budget ends with the invocation.

use std::sync::Arc;

use mayfly_provider_api::{ErrorKind, Host, ProviderError};

use crate::events::adapt_event;
use crate::{Aws, fail};

/// What Lambda's Runtime API needs of the environment (Lambda sets them all;
/// `lambda_runtime` would panic without them, so they are checked first).
const LAMBDA_ENVIRONMENT: [&str; 4] = [
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
];

/// What an invocation needs of the provider, owned: `lambda_runtime`'s loop
/// holds its handler for as long as it serves.
struct Function {
    host: Arc<dyn Host>,
    event_job_url: Option<String>,
    event_prefix: Option<String>,
}

/// Serves invocations, one at a time, through AWS's own Runtime API client
/// (`lambda_runtime`), until the Runtime API goes away.
pub(crate) async fn serve(aws: &Aws) -> Result<(), ProviderError> {
    if let Some(missing) = LAMBDA_ENVIRONMENT.iter().find(|name| std::env::var_os(name).is_none()) {
        return Err(fail(
            ErrorKind::Config,
            format!("{missing} is not set: `mayfly serve --provider aws` runs as a Lambda function's bootstrap"),
        ));
    }
    let function = Arc::new(Function {
        host: aws.host.clone(),
        event_job_url: aws.event_job_url.clone(),
        event_prefix: aws.event_prefix.clone(),
    });
    let handler = lambda_runtime::service_fn(move |event| invoke(function.clone(), event));
    lambda_runtime::run(handler).await.map_err(|e| fail(ErrorKind::Unavailable, format!("the Lambda Runtime API: {e}")))
}

/// One invocation: its event adapted into a bootstrap request that ends with
/// the invocation's deadline, and bootstrapped.
async fn invoke(
    function: Arc<Function>,
    event: lambda_runtime::LambdaEvent<serde_json::Value>,
) -> Result<serde_json::Value, Failed> {
    let id = event.context.request_id.clone();
    let outcome = async {
        let mut request =
            adapt_event(&event.payload, function.event_job_url.as_deref(), function.event_prefix.as_deref())?;
        request.deadline = Some(event.context.deadline);
        let reply = function.host.bootstrap(request).await?;
        serde_json::to_value(&reply).map_err(|e| fail(ErrorKind::Protocol, format!("the bootstrap's reply: {e}")))
    }
    .await;
    outcome.map_err(|e| {
        function.host.log(mayfly_provider_api::Level::Error, &format!("aws: invocation {id}: {e}"));
        Failed(e)
    })
}

/// An invocation's failure, as Lambda records it: `errorType` is
/// `mayfly.<kind>` (`mayfly.Config`, `mayfly.Unavailable`, ...).
#[derive(Debug)]
struct Failed(ProviderError);

impl From<Failed> for lambda_runtime::Diagnostic {
    fn from(failed: Failed) -> Self {
        lambda_runtime::Diagnostic {
            error_type: format!("mayfly.{:?}", failed.0.kind),
            error_message: failed.0.to_string(),
        }
    }
}
