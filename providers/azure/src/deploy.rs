//! `mayfly deploy azure`: creates or updates the function app that bootstraps
//! jobs, through ARM's `Microsoft.Web` (REST, API 2024-04-01, as
//! `Azure::put_vm` does for compute: the legacy generated family has no
//! client for it that matches the rest): a Linux Consumption plan
//! (`serverfarms`, sku Y1) if it is missing, the site (`kind:
//! functionapp,linux`) with the user-assigned managed identity, its app
//! settings and run-from-package pointing at the `function.zip` core
//! uploaded (read with that identity), its triggers synced; then it waits
//! until the site runs and answers its trigger URL.

use std::collections::BTreeMap;

use azure_core_legacy::{Method, Url};
use serde_json::{Value, json};

use super::*;

/// `Microsoft.Web`'s API version.
pub const WEB_API_VERSION: &str = "2024-04-01";

/// How long a deploy waits for ARM's long-running operations and the site.
const PATIENCE: Duration = Duration::from_secs(300);

/// The function app's app settings: `MAYFLY_PROVIDER_SETTINGS` with the
/// function's provider settings, the Blob trigger's path and the storage it
/// watches (identity-based), the host's own storage (the same account, with
/// the same identity), the custom handler runtime, and run-from-package at
/// `package_url` read with `identity`.
pub fn app_settings(
    request: &mayfly_provider_api::DeployRequest,
    storage_url: &str,
    package_url: &str,
) -> BTreeMap<String, String> {
    let mut settings = request.settings.clone();
    for local in ["credentials_file", "path", "imds_endpoint", "prices_endpoint"] {
        settings.remove(local);
    }
    let mut app = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        app.insert(k.to_owned(), v);
    };
    set(mayfly_provider_api::SETTINGS_ENV, Value::Object(settings.clone()).to_string());
    set("FUNCTIONS_EXTENSION_VERSION", "~4".into());
    set("FUNCTIONS_WORKER_RUNTIME", "custom".into());
    set("WEBSITE_RUN_FROM_PACKAGE", package_url.into());
    set("WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID", request.role.clone());
    let queue = storage_url.replacen(".blob.", ".queue.", 1);
    let table = storage_url.replacen(".blob.", ".table.", 1);
    for prefix in ["MayflyStorage", "AzureWebJobsStorage"] {
        set(&format!("{prefix}__blobServiceUri"), storage_url.into());
        // The Blob trigger's identity-based connection also uses the account's queues.
        set(&format!("{prefix}__queueServiceUri"), queue.clone());
        set(&format!("{prefix}__credential"), "managedidentity".into());
    }
    set("AzureWebJobsStorage__tableServiceUri", table);
    if let Some(p) = settings.get("event_prefix").and_then(|p| p.as_str()) {
        let prefix = if p.ends_with('/') { p.to_owned() } else { format!("{p}/") };
        set("MAYFLY_TRIGGER_PATH", format!("{prefix}{{batch}}/_READY"));
    }
    if let Some(client) = request.settings.get("identity_client_id").and_then(|c| c.as_str()) {
        for k in ["MayflyStorage__clientId", "AzureWebJobsStorage__clientId", "AZURE_CLIENT_ID"] {
            set(k, client.into());
        }
    }
    app
}

/// Checks what Azure would refuse later, before anything is made.
fn check(request: &mayfly_provider_api::DeployRequest) -> Result<(), ProviderError> {
    let name = &request.function;
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    // Its plan is `<name>-plan`, and a plan's name has at most 60 characters.
    if !(2..=55).contains(&name.len()) || !name.chars().all(valid) || name.starts_with('-') || name.ends_with('-') {
        return Err(fail(
            ErrorKind::Config,
            format!(
                "--function {name:?}: a function app's name has 2 to 55 lowercase letters, digits and inner hyphens"
            ),
        ));
    }
    if request.settings.get("identity_client_id").and_then(|c| c.as_str()).is_none_or(str::is_empty) {
        return Err(fail(
            ErrorKind::Config,
            "`provider.identity_client_id` is not set: the client id of the --role identity, which the function app's \
             host reads its storage and package with (a user-assigned identity has no default)",
        ));
    }
    if !request.role.to_ascii_lowercase().contains("/providers/microsoft.managedidentity/userassignedidentities/") {
        return Err(fail(
            ErrorKind::Config,
            format!(
                "--role {:?}: expected the user-assigned managed identity's resource id \
                 (/subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>)",
                request.role
            ),
        ));
    }
    if request.architecture != "x86_64" {
        return Err(fail(
            ErrorKind::Config,
            format!("Linux Consumption function apps run x86_64, not {}", request.architecture),
        ));
    }
    if request.timeout_s > 600 {
        return Err(fail(
            ErrorKind::Config,
            format!("a function's timeout of {}s: Consumption allows up to 600s", request.timeout_s),
        ));
    }
    Ok(())
}

/// What one ARM request answered.
struct Answered {
    status: u16,
    /// `Azure-AsyncOperation`, else `Location`: where a long-running one is followed.
    operation: Option<String>,
    body: Value,
}

impl Azure {
    /// `mayfly deploy azure`.
    pub(crate) async fn deploy_app(
        &self,
        request: &mayfly_provider_api::DeployRequest,
    ) -> Result<Value, ProviderError> {
        check(request)?;
        let storage = self.storage_url()?;
        let package = self.blob_url(&request.code_url)?;
        let location = self.need(&self.location, "location", "where the function app is made")?;
        let (subscription, group) = (self.subscription()?, self.group()?);
        let name = request.function.as_str();
        let web = format!("/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Web");
        let plan_id = format!("{web}/serverfarms/{name}-plan");
        let site_id = format!("{web}/sites/{name}");

        // The plan: Linux (reserved), Consumption (Y1, Dynamic); made once.
        let plan = match self.web(Method::Get, &plan_id, None).await {
            Ok(_) => "kept",
            Err(e) if status_of(&e) == Some(404) => {
                let body = json!({
                    "location": location, "kind": "functionapp",
                    "sku": { "name": "Y1", "tier": "Dynamic" },
                    "properties": { "reserved": true },
                    "tags": { "mayfly:managed": "true" },
                });
                let answered = self
                    .web(Method::Put, &plan_id, Some(&body))
                    .await
                    .map_err(|e| arm_err(&format!("AppServicePlans_CreateOrUpdate({name}-plan)"), &e))?;
                self.settle(&format!("the plan {name}-plan"), answered).await?;
                "created"
            }
            Err(e) => return Err(arm_err(&format!("AppServicePlans_Get({name}-plan)"), &e)),
        };

        let existed = match self.web(Method::Get, &site_id, None).await {
            Ok(_) => true,
            Err(e) if status_of(&e) == Some(404) => false,
            Err(e) => return Err(arm_err(&format!("WebApps_Get({name})"), &e)),
        };
        let app = app_settings(request, &storage, &package);
        let settings: Vec<Value> = app.iter().map(|(k, v)| json!({ "name": k, "value": v })).collect();
        let body = json!({
            "location": location,
            "kind": "functionapp,linux",
            "identity": { "type": "UserAssigned", "userAssignedIdentities": { request.role.clone(): {} } },
            "tags": { "mayfly:managed": "true" },
            "properties": {
                "serverFarmId": plan_id,
                "reserved": true,
                "httpsOnly": true,
                "keyVaultReferenceIdentity": request.role,
                "siteConfig": {
                    "appSettings": settings,
                    "linuxFxVersion": "",
                    "minTlsVersion": "1.2",
                    "ftpsState": "Disabled",
                },
            },
        });
        let answered = self
            .web(Method::Put, &site_id, Some(&body))
            .await
            .map_err(|e| arm_err(&format!("WebApps_CreateOrUpdate({name})"), &e))?;
        self.settle(&format!("the function app {name}"), answered).await?;
        // The host reads run-from-package when it starts: an updated app restarts.
        if existed {
            self.web(Method::Post, &format!("{site_id}/restart"), None)
                .await
                .map_err(|e| arm_err(&format!("WebApps_Restart({name})"), &e))?;
        }
        // Once it runs, its triggers are synced (a Blob trigger is not listened
        // for until they are).
        let site = self.running(name, &site_id).await?;
        self.web(Method::Post, &format!("{site_id}/syncfunctiontriggers"), None)
            .await
            .map_err(|e| arm_err(&format!("WebApps_SyncFunctionTriggers({name})"), &e))?;
        let host = site.pointer("/properties/defaultHostName").and_then(Value::as_str).unwrap_or_default();
        Ok(json!({
            "function_app": name,
            "action": if existed { "updated" } else { "created" },
            "id": site["id"],
            "plan": { "id": plan_id, "action": plan },
            "state": site.pointer("/properties/state"),
            "identity": request.role,
            "package": package,
            "trigger_url": format!("https://{host}/api/run"),
            "blob_trigger_path": app.get("MAYFLY_TRIGGER_PATH"),
            "note": format!(
                "the trigger takes a function key (`?code=`): az functionapp function keys list -g {group} -n {name} --function-name run; \
                 the identity needs the roles `mayfly iam-policy azure` prints (their notes name the host's storage); \
                 each deploy sets the app's settings and identity to these: mayfly owns the app"
            ),
        }))
    }

    /// One ARM request on a `Microsoft.Web` resource (`id` is its path),
    /// through the ARM pipeline (a fresh token each try, ARM's throttling
    /// and retries).
    async fn web(&self, method: Method, id: &str, body: Option<&Value>) -> azure_core_legacy::Result<Answered> {
        let arm = self.arm_parts().await.map_err(|e| {
            azure_core_legacy::Error::message(azure_core_legacy::error::ErrorKind::Credential, e.to_string())
        })?;
        let mut url = arm.endpoint.clone();
        url.set_path(id);
        url.query_pairs_mut().append_pair("api-version", WEB_API_VERSION);
        self.send(arm, method, url, body).await
    }

    async fn send(
        &self,
        arm: &compute::Arm,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> azure_core_legacy::Result<Answered> {
        let mut request = azure_core_legacy::Request::new(url, method);
        request.insert_header("content-type", "application/json");
        request.set_body(match body {
            Some(b) => serde_json::to_vec(b)?,
            None => Vec::new(),
        });
        let response = arm.pipeline.send(&azure_core_legacy::Context::default(), &mut request).await?;
        let status = u16::from(response.status());
        let header = |name: &str| {
            response.headers().get_optional_string(&azure_core_legacy::headers::HeaderName::from(name.to_owned()))
        };
        let operation = header("azure-asyncoperation").or_else(|| header("location"));
        let bytes = response.into_body().collect().await?;
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes)? };
        Ok(Answered { status, operation, body })
    }

    /// Follows a long-running operation ARM answered 201 or 202 for, at
    /// most [`PATIENCE`]: its `status` until `Succeeded` (an error if it
    /// `Failed` or was `Canceled`).
    async fn settle(&self, what: &str, answered: Answered) -> Result<(), ProviderError> {
        let Some(operation) = answered.operation.filter(|_| matches!(answered.status, 201 | 202)) else {
            return Ok(());
        };
        let arm = self.arm_parts().await?;
        let url = Url::parse(&operation)
            .map_err(|e| fail(ErrorKind::Protocol, format!("{what}: ARM's operation URL {operation:?}: {e}")))?;
        if url.origin() != arm.endpoint.origin() {
            return Err(fail(ErrorKind::Protocol, format!("{what}: ARM's operation URL {operation:?} is not on ARM")));
        }
        let until = tokio::time::Instant::now() + PATIENCE;
        loop {
            let polled = self
                .send(arm, Method::Get, url.clone(), None)
                .await
                .map_err(|e| arm_err(&format!("{what}: its operation"), &e))?;
            // An Azure-AsyncOperation answers a status; a Location, 202 until done.
            let status = polled.body.get("status").and_then(Value::as_str).map(str::to_owned);
            match (polled.status, status.as_deref()) {
                (_, Some("Succeeded")) => return Ok(()),
                (_, Some(s @ ("Failed" | "Canceled"))) => {
                    let why =
                        polled.body.pointer("/error/message").and_then(Value::as_str).unwrap_or("no reason given");
                    return Err(fail(ErrorKind::Unavailable, format!("{what}: ARM says {s}: {why}")));
                }
                (200 | 201 | 204, None) => return Ok(()),
                _ => {}
            }
            if tokio::time::Instant::now() > until {
                return Err(fail(
                    ErrorKind::Timeout,
                    format!("{what}: still in progress after {}s", PATIENCE.as_secs()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits (at most [`PATIENCE`]) until the site runs; answers its body.
    async fn running(&self, name: &str, site_id: &str) -> Result<Value, ProviderError> {
        let until = tokio::time::Instant::now() + PATIENCE;
        loop {
            let site =
                self.web(Method::Get, site_id, None).await.map_err(|e| arm_err(&format!("WebApps_Get({name})"), &e))?;
            let state = site.body.pointer("/properties/state").and_then(Value::as_str).unwrap_or_default().to_owned();
            if state == "Running" {
                return Ok(site.body);
            }
            if tokio::time::Instant::now() > until {
                return Err(fail(
                    ErrorKind::Timeout,
                    format!("the function app {name} was not running after {}s (state {state:?})", PATIENCE.as_secs()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
