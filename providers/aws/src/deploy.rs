//! `mayfly deploy aws`: creates or updates the Lambda function that
//! bootstraps jobs, from the package `mayfly package aws` made (core has
//! uploaded its `function.zip` to S3 by then).

use std::time::Duration;

use aws_sdk_lambda::types::{Architecture, Environment, FunctionCode, LastUpdateStatus, Runtime, State};
use mayfly_provider_api::{DeployRequest, ErrorKind, ProviderError};

use crate::{Aws, LAMBDA_LIMIT, api_err, fail};

/// Settings that describe the deploying machine, not the function: kept out
/// of the function's environment.
const LOCAL_ONLY: [&str; 2] = ["credentials_file", "path"];

fn s3_parts(url: &str) -> Result<(&str, &str), ProviderError> {
    url.strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(bucket, key)| !bucket.is_empty() && !key.is_empty())
        .ok_or_else(|| fail(ErrorKind::Config, format!("{url}: the function's code must be at s3://bucket/key")))
}

pub(crate) async fn deploy(aws: &Aws, request: DeployRequest) -> Result<serde_json::Value, ProviderError> {
    let (bucket, key) = s3_parts(&request.code_url)?;
    if request.function.is_empty() || request.function.len() > 64 {
        return Err(fail(ErrorKind::Config, "a Lambda function's name has 1 to 64 characters"));
    }
    if !request.role.starts_with("arn:aws") || !request.role.contains(":role/") {
        return Err(fail(
            ErrorKind::Config,
            format!(
                "--role {:?}: expected the function's execution role's ARN (arn:aws:iam::<account>:role/<name>)",
                request.role
            ),
        ));
    }
    let timeout = match request.timeout_s {
        0 => aws.bootstrap_limit,
        s => Duration::from_secs(s),
    };
    if timeout > LAMBDA_LIMIT || timeout < Duration::from_secs(10) {
        return Err(fail(
            ErrorKind::Config,
            format!("a function's timeout of {}s: Lambda allows up to 900s (and mayfly needs 10s)", timeout.as_secs()),
        ));
    }
    let memory = if request.memory_mb == 0 { 512 } else { request.memory_mb };
    if !(128..=10_240).contains(&memory) {
        return Err(fail(ErrorKind::Config, format!("{memory} MiB: Lambda functions have 128 to 10240 MiB")));
    }
    let architecture = match request.architecture.as_str() {
        "x86_64" => Architecture::X8664,
        "aarch64" => Architecture::Arm64,
        other => return Err(fail(ErrorKind::Config, format!("Lambda runs x86_64 or aarch64, not {other}"))),
    };
    let mut settings = request.settings.clone();
    for k in LOCAL_ONLY {
        settings.remove(k);
    }
    let settings = serde_json::to_string(&settings).map_err(|e| fail(ErrorKind::Other, e.to_string()))?;
    let environment = Environment::builder().variables(mayfly_provider_api::SETTINGS_ENV, settings).build();
    let lambda = &aws.clients().await?.lambda;
    let name = request.function.as_str();

    let existing = match lambda.get_function().function_name(name).send().await {
        Ok(_) => true,
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => false,
        Err(e) => return Err(api_err(&format!("GetFunction({name})"), aws_sdk_lambda::error::DisplayErrorContext(e))),
    };
    let action = if existing {
        // Lambda refuses a change while an earlier one is still in progress (an
        // earlier one that failed is what this deploy may be fixing).
        settled(aws, name, false).await?;
        lambda
            .update_function_code()
            .function_name(name)
            .s3_bucket(bucket)
            .s3_key(key)
            .architectures(architecture)
            .send()
            .await
            .map_err(|e| {
                api_err(&format!("UpdateFunctionCode({name})"), aws_sdk_lambda::error::DisplayErrorContext(e))
            })?;
        // Lambda refuses a configuration change while the code update is in progress.
        settled(aws, name, true).await?;
        lambda
            .update_function_configuration()
            .function_name(name)
            .role(&request.role)
            .runtime(Runtime::Providedal2023)
            .handler("bootstrap")
            .timeout(timeout.as_secs() as i32)
            .memory_size(memory as i32)
            .environment(environment)
            .send()
            .await
            .map_err(|e| {
                api_err(&format!("UpdateFunctionConfiguration({name})"), aws_sdk_lambda::error::DisplayErrorContext(e))
            })?;
        "updated"
    } else {
        lambda
            .create_function()
            .function_name(name)
            .role(&request.role)
            .runtime(Runtime::Providedal2023)
            .handler("bootstrap")
            .code(FunctionCode::builder().s3_bucket(bucket).s3_key(key).build())
            .architectures(architecture)
            .timeout(timeout.as_secs() as i32)
            .memory_size(memory as i32)
            .environment(environment)
            .description("mayfly: bootstraps jobs (mayfly serve --provider aws)")
            .tags("mayfly:managed", "true")
            .send()
            .await
            .map_err(|e| api_err(&format!("CreateFunction({name})"), aws_sdk_lambda::error::DisplayErrorContext(e)))?;
        "created"
    };
    let config = settled(aws, name, true).await?;
    Ok(serde_json::json!({
        "function": name,
        "action": action,
        "arn": config.function_arn(),
        "runtime": config.runtime().map(|r| r.as_str()),
        "code_sha256": config.code_sha256(),
        "code_size": config.code_size(),
        "timeout_s": config.timeout(),
        "memory_mb": config.memory_size(),
    }))
}

/// Waits (at most 5 min) until the function is neither pending nor updating;
/// a failed update is an error if `failed_is_error`.
async fn settled(
    aws: &Aws,
    name: &str,
    failed_is_error: bool,
) -> Result<aws_sdk_lambda::operation::get_function_configuration::GetFunctionConfigurationOutput, ProviderError> {
    let lambda = &aws.clients().await?.lambda;
    let until = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let config = lambda.get_function_configuration().function_name(name).send().await.map_err(|e| {
            api_err(&format!("GetFunctionConfiguration({name})"), aws_sdk_lambda::error::DisplayErrorContext(e))
        })?;
        let busy = config.state() == Some(&State::Pending)
            || config.last_update_status() == Some(&LastUpdateStatus::InProgress);
        let failed =
            config.last_update_status() == Some(&LastUpdateStatus::Failed) || config.state() == Some(&State::Failed);
        if failed && failed_is_error {
            return Err(fail(
                ErrorKind::Unavailable,
                format!(
                    "the function {name} failed to update: {}",
                    config.last_update_status_reason().or(config.state_reason()).unwrap_or("no reason given")
                ),
            ));
        }
        if !busy {
            return Ok(config);
        }
        if tokio::time::Instant::now() > until {
            return Err(fail(ErrorKind::Timeout, format!("the function {name} was still updating after 5 min")));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
