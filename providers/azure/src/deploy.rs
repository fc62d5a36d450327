//! `mayfly deploy azure`: what the function app needs (its app settings and
//! the Azure CLI commands), which this provider answers rather than applies.

use super::*;

/// `mayfly deploy azure`: core has uploaded `function.zip` and the node
/// artifact; this answers what the function app needs, which this provider
/// does not set itself (it drives `Microsoft.Compute` only, not
/// `Microsoft.Web`): its app settings (`MAYFLY_PROVIDER_SETTINGS` with the
/// function's provider settings, the Blob trigger's path and storage) and the
/// Azure CLI commands that apply them and deploy the package from where it was
/// uploaded.
pub fn deploy_plan(
    request: &mayfly_provider_api::DeployRequest,
    storage_url: &str,
) -> Result<serde_json::Value, ProviderError> {
    use serde_json::json;
    let blob = request.code_url.strip_prefix("az://").ok_or_else(|| {
        fail(
            ErrorKind::Config,
            format!("--artifacts: the azure provider's artifacts go to az:// URLs, not {}", request.code_url),
        )
    })?;
    let mut settings = request.settings.clone();
    for local in ["credentials_file", "path", "imds_endpoint"] {
        settings.remove(local);
    }
    let trigger = settings
        .get("event_prefix")
        .and_then(|p| p.as_str())
        .map(|p| format!("{}{{batch}}/_READY", if p.ends_with('/') { p.to_owned() } else { format!("{p}/") }));
    let mut app = json!({
        mayfly_provider_api::SETTINGS_ENV: serde_json::Value::Object(settings).to_string(),
        "FUNCTIONS_WORKER_RUNTIME": "custom",
        "MayflyStorage__blobServiceUri": storage_url,
        // The Blob trigger's identity-based connection also uses the account's queues.
        "MayflyStorage__queueServiceUri": storage_url.replacen(".blob.", ".queue.", 1),
        "MayflyStorage__credential": "managedidentity",
    });
    if let Some(t) = &trigger {
        app["MAYFLY_TRIGGER_PATH"] = t.clone().into();
    }
    if let Some(client) = request.settings.get("identity_client_id").and_then(|c| c.as_str()) {
        app["MayflyStorage__clientId"] = client.into();
        app["AZURE_CLIENT_ID"] = client.into();
    }
    let name = &request.function;
    let pairs: Vec<String> = app
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
        .unwrap_or_default();
    Ok(json!({
        "function_app": name,
        "package": format!("{storage_url}/{blob}"),
        "app_settings": app,
        "next": [
            format!("az functionapp identity assign -g <resource-group> -n {name} --identities {}", request.role),
            format!("az functionapp config appsettings set -g <resource-group> -n {name} --settings {}",
                    pairs.iter().map(|p| format!("'{p}'")).collect::<Vec<_>>().join(" ")),
            format!("az functionapp deployment source config-zip -g <resource-group> -n {name} --src function.zip"),
        ],
        "note": "the function app (Linux, Consumption) and its user-assigned identity are made once with the Azure CLI or IaC; mayfly makes VMs, not apps",
    }))
}
