//! # The Azure provider
//!
//! A mayfly provider plugin for Azure: nodes are virtual machines made with
//! `azure_mgmt_compute` (API 2024-07-01), credentials come from
//! `azure_identity` (a user-assigned managed identity on nodes and in the
//! function; the developer's chain for an operator), data lives on Blob
//! storage (`az://container/prefix`, core's data path with the `azure`
//! feature), and the bootstrap runs as an Azure Functions custom handler,
//! which `mayfly deploy azure` makes through ARM's `Microsoft.Web` (`deploy.rs`).
//!
//! Each node is one VM (`PUT .../virtualMachines/<name>`, sent once and then
//! followed with `GET` until its provisioning state is terminal: the legacy
//! client's own long-running future re-sends the PUT). A VM carries the tags
//! `mayfly:job`, `mayfly:role`, `mayfly:node`, `mayfly:expires-at`; its
//! network interface is declared inside it on the configured subnet, and OS
//! disk, NIC and any public IP are `deleteOption: Delete`, so deleting the VM
//! deletes everything that bills. Its custom data (run by cloud-init) fetches
//! the node artifact, arms a dead-man switch that *deletes* the VM through
//! ARM with its managed identity (a stopped or deallocated VM still bills its
//! disk, and a stopped one its compute), and starts the node.
//!
//! Settings (`[provider]` keys): `subscription_id`, `resource_group`,
//! `location`, `subnet_id` (a subnet's resource id), `image` (`publisher:offer:sku:version`
//! or an image's resource id), `vm_size` and `master_vm_size`, `identity`
//! (the user-assigned identity's resource id, attached to every VM) and
//! `identity_client_id` (its client id, which nodes ask tokens for),
//! `ssh_public_key` (else the admin account gets a random password nobody
//! keeps), `storage_account` and `storage_endpoint` (Blob; default
//! `https://<account>.blob.core.windows.net`), `arm_endpoint` (default
//! `https://management.azure.com`), `credential` (`auto`,
//! `managed_identity`, `client_secret`, `workload_identity`, `developer`),
//! `credential_ttl` (how long tokens are expected to live; the token's own
//! expiry rules), `bootstrap_limit` (the function's `functionTimeout`, at
//! most 600 s; an HTTP-triggered bootstrap also stops at 230 s, the limit
//! of an HTTP answer), `max_nodes`, `node_binary` / `node_artifact` (the
//! `az://` URL `mayfly deploy` uploaded), `imds_endpoint`, `api_timeout`,
//! `event_job_url` and `event_prefix` (the job a Blob trigger runs),
//! `prices_endpoint` (the Retail Prices API `mayfly prices refresh` asks;
//! default `https://prices.azure.com`).
//!
//! It imports the provider API, `mayfly-vm-kit` and the Azure SDK; it must not
//! import any crate of mayfly's core (`mayfly` loads it as a plugin).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_mgmt_compute::package_2024_07_01 as mgmt;
use base64::Engine;
use mayfly_provider_api::{
    BootstrapRequest, Capabilities, Credential, CredentialRequest, ErrorKind, Host, LaunchRequest, Level, Limits,
    ListRequest, NodeInfo, Provider, ProviderError, ProviderInfo, Role, Secret, Settings, StoreConfig,
    TerminateRequest, Validity, async_trait, now_ms,
};
use mayfly_vm_kit::{self as vm_kit, shell_quote};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

mod boot;
mod compute;
pub mod credentials;
mod deploy;
mod entrypoint;
mod events;
mod permissions;
mod prices;

pub use boot::*;
use compute::*;
pub use deploy::*;
pub use permissions::*;

const NAME: &str = "azure";
/// The API version of `Microsoft.Compute/virtualMachines` this provider speaks.
pub const API_VERSION: &str = "2024-07-01";
/// Azure's limit on a VM's custom data, decoded.
pub const CUSTOM_DATA_LIMIT: usize = 65_535;
/// The longest a Consumption-plan function runs (`functionTimeout`).
pub const FUNCTION_LIMIT: Duration = Duration::from_secs(600);
/// The default `functionTimeout` of a Consumption-plan function.
pub const FUNCTION_DEFAULT: Duration = Duration::from_secs(300);
/// The longest an HTTP-triggered function may take to answer (the load balancer's idle timeout).
pub const HTTP_LIMIT: Duration = Duration::from_secs(230);
/// The scope of ARM tokens.
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";
/// The scope of Blob storage tokens.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// The line of the custom data that carries the node's launch, and the file
/// the custom data writes on a real node: as every VM provider's.
pub use mayfly_vm_kit::{NODE_LINE, NODE_MARKER};
/// The tag every VM of a job carries.
pub const JOB_TAG: &str = vm_kit::tags::JOB;

fn fail(kind: ErrorKind, message: impl Into<String>) -> ProviderError {
    ProviderError::new(NAME, kind, message)
}

/// An ARM error as a provider error: 4xx but throttling are the request's
/// fault (`Config`), the rest may pass (`Unavailable`).
fn arm_err(what: &str, e: &azure_core_legacy::Error) -> ProviderError {
    let kind = match status_of(e) {
        Some(s) if (400..500).contains(&s) && s != 429 && s != 408 => ErrorKind::Config,
        _ => ErrorKind::Unavailable,
    };
    fail(kind, format!("{what}: {}", credentials::chain(e)))
}

fn status_of(e: &azure_core_legacy::Error) -> Option<u16> {
    match e.kind() {
        azure_core_legacy::error::ErrorKind::HttpResponse { status, .. } => Some(u16::from(*status)),
        _ => None,
    }
}

/// The Azure provider.
pub struct Azure {
    subscription_id: Option<String>,
    resource_group: Option<String>,
    location: Option<String>,
    subnet_id: Option<String>,
    image: String,
    worker_size: String,
    master_size: String,
    identity: Option<String>,
    identity_client_id: Option<String>,
    ssh_public_key: Option<String>,
    storage_account: Option<String>,
    storage_endpoint: Option<String>,
    arm_endpoint: String,
    source: credentials::Source,
    credential_ttl: Duration,
    bootstrap_limit: Duration,
    max_nodes: u32,
    node_binary: String,
    node_artifact: Option<String>,
    imds_endpoint: Option<String>,
    api_timeout: Duration,
    event_job_url: Option<String>,
    event_prefix: Option<String>,
    prices_endpoint: String,
    credential: OnceCell<Arc<dyn TokenCredential>>,
    /// The credential the data path's tokens come from, made again when the
    /// store refused one it gave (its cache would give the same token back
    /// until the token's own expiry is near).
    storage_credential: tokio::sync::Mutex<Option<Arc<dyn TokenCredential>>>,
    arm: OnceCell<Arm>,
    host: Arc<dyn Host>,
}

impl std::fmt::Debug for Azure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Azure")
            .field("subscription_id", &self.subscription_id)
            .field("resource_group", &self.resource_group)
            .field("arm_endpoint", &self.arm_endpoint)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Provider for Azure {
    fn create(settings: Settings, host: Arc<dyn Host>) -> Result<Self, ProviderError> {
        let mut s = settings.named(NAME);
        let subscription_id = s.string("subscription_id")?;
        let resource_group = s.string("resource_group")?;
        let location = s.string("location")?;
        let subnet_id = s.string("subnet_id")?;
        let image = s.string("image")?.unwrap_or_else(|| "Canonical:ubuntu-24_04-lts:server:latest".into());
        let worker_size = s.string("vm_size")?.unwrap_or_else(|| "Standard_D2s_v5".into());
        let master_size = s.string("master_vm_size")?.unwrap_or_else(|| worker_size.clone());
        let identity = s.string("identity")?;
        let identity_client_id = s.string("identity_client_id")?;
        let ssh_public_key = s.string("ssh_public_key")?;
        let storage_account = s.string("storage_account")?;
        let storage_endpoint = s.string("storage_endpoint")?;
        let arm_endpoint = s.string("arm_endpoint")?.unwrap_or_else(|| "https://management.azure.com".into());
        let credential = s.string("credential")?;
        let credential_ttl = s.duration("credential_ttl", Duration::from_secs(3600))?;
        let bootstrap_limit = s.duration("bootstrap_limit", FUNCTION_DEFAULT)?;
        let max_nodes = s.u64("max_nodes", 100)?;
        let node_binary = s.string("node_binary")?.unwrap_or_else(|| "/usr/local/bin/mayfly".into());
        let node_artifact = s.string("node_artifact")?;
        let imds_endpoint = s.string("imds_endpoint")?;
        let api_timeout = s.duration("api_timeout", Duration::from_secs(60))?;
        let event_job_url = s.string("event_job_url")?;
        let event_prefix = s.string("event_prefix")?;
        let prices_endpoint = s.string("prices_endpoint")?.unwrap_or_else(|| prices::RETAIL_PRICES.into());
        s.finish()?;
        let on_node =
            std::path::Path::new(&format!("{}{NODE_MARKER}", std::env::var("MAYFLY_ROOT").unwrap_or_default()))
                .exists();
        let source = credentials::Source::parse(credential.as_deref(), on_node)?;
        for (key, url) in [("node_artifact", &node_artifact), ("event_job_url", &event_job_url)] {
            if let Some(u) = url
                && !u.strip_prefix("az://").is_some_and(|r| r.contains('/') && !r.starts_with('/'))
            {
                return Err(fail(ErrorKind::Config, format!("`provider.{key}` {u:?}: expected az://container/key")));
            }
        }
        if bootstrap_limit > FUNCTION_LIMIT || bootstrap_limit < Duration::from_secs(10) {
            return Err(fail(
                ErrorKind::Config,
                format!(
                    "`provider.bootstrap_limit` is {}s: a Consumption-plan function runs 10s to 600s (its functionTimeout)",
                    bootstrap_limit.as_secs()
                ),
            ));
        }
        if credential_ttl < Duration::from_secs(10) {
            return Err(fail(ErrorKind::Config, "`provider.credential_ttl` must be at least 10s"));
        }
        let max_nodes = u32::try_from(max_nodes)
            .ok()
            .filter(|n| (2..=10_000).contains(n))
            .ok_or_else(|| fail(ErrorKind::Config, "`provider.max_nodes` must be between 2 and 10000"))?;
        for (key, url) in [("arm_endpoint", Some(&arm_endpoint)), ("storage_endpoint", storage_endpoint.as_ref())] {
            if let Some(u) = url
                && (!u.starts_with("http://") && !u.starts_with("https://")
                    || !u.chars().all(|c| c.is_ascii_alphanumeric() || "/:.-_%".contains(c)))
            {
                // The custom data uses them in shell commands.
                return Err(fail(
                    ErrorKind::Config,
                    format!("`provider.{key}` {u:?} must be an http:// or https:// URL (letters, digits, `/:.-_%`)"),
                ));
            }
        }
        if let Some(s) = &subnet_id
            && !s.contains("/subnets/")
        {
            return Err(fail(
                ErrorKind::Config,
                format!(
                    "`provider.subnet_id` {s:?}: expected a subnet's resource id (/subscriptions/.../virtualNetworks/<vnet>/subnets/<subnet>)"
                ),
            ));
        }
        Ok(Azure {
            subscription_id,
            resource_group,
            location,
            subnet_id,
            image,
            worker_size,
            master_size,
            identity,
            identity_client_id,
            ssh_public_key,
            storage_account,
            storage_endpoint,
            arm_endpoint,
            source,
            credential_ttl,
            bootstrap_limit,
            max_nodes,
            node_binary,
            node_artifact,
            imds_endpoint,
            api_timeout,
            event_job_url,
            event_prefix,
            prices_endpoint,
            credential: OnceCell::new(),
            storage_credential: tokio::sync::Mutex::new(None),
            arm: OnceCell::new(),
            host,
        })
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            name: NAME.into(),
            limits: Limits::new(self.bootstrap_limit, self.credential_ttl, self.max_nodes),
            capabilities: Capabilities {
                entrypoint: Some("azure-functions".into()),
                prices: Some(prices::LIVE_SOURCE.into()),
            },
            schemes: vec!["az".into()],
            nodes: Some(prices::node_types(&self.master_size, &self.worker_size, self.location.as_deref())),
        }
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Vec<NodeInfo>, ProviderError> {
        self.info().limits.check_launch(NAME, request.nodes.len())?;
        let launches: Vec<NodeLaunch> = request
            .nodes
            .iter()
            .map(|n| NodeLaunch {
                job: request.job.clone(),
                role: n.role,
                node: n.node.clone(),
                args: n.args.clone(),
                expires_at: request.expires_at,
            })
            .collect();
        // Every custom data is checked before anything is made.
        for l in &launches {
            let boot = Boot { binary: &self.node_binary, artifact: None, arm: &self.arm_endpoint, client_id: None };
            custom_data(l, boot, Duration::ZERO)?;
        }
        let mut made: Vec<NodeInfo> = Vec::new();
        let mut failure = None;
        // A few PUTs at a time: ARM throttles bursts per subscription.
        for chunk in launches.chunks(8) {
            let results = futures::future::join_all(chunk.iter().map(|l| self.make_vm(l))).await;
            for r in results {
                match r {
                    Ok(n) => made.push(n),
                    Err(e) => failure = failure.or(Some(e)),
                }
            }
            if failure.is_some() {
                break;
            }
        }
        if failure.is_none()
            && let Err(e) = self.provisioned(&made, self.api_timeout.max(Duration::from_secs(120))).await
        {
            failure = Some(e);
        }
        if let Some(e) = failure {
            // Nothing half-launched may stay.
            let ids: Vec<String> = made.iter().map(|n| n.id.clone()).collect();
            if let Err(t) = self.delete(&ids, Duration::from_secs(120)).await {
                self.host.log(Level::Error, &format!("azure: ending a failed launch: {t}"));
            }
            return Err(e);
        }
        self.host.log(Level::Info, &format!("azure: made {} VM(s) for job {}", made.len(), request.job));
        Ok(made)
    }

    async fn list(&self, request: ListRequest) -> Result<Vec<NodeInfo>, ProviderError> {
        use futures::StreamExt;
        let arm = self.arm().await?;
        let mut pages = arm.virtual_machines_client().list(self.group()?, self.subscription()?).into_stream();
        let mut nodes = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| arm_err("VirtualMachines_List", &e))?;
            nodes.extend(
                page.value
                    .iter()
                    .filter(|vm| alive(vm))
                    .filter_map(node_of)
                    .filter(|n| request.job.as_ref().is_none_or(|j| *j == n.job)),
            );
        }
        nodes.sort_by(|a, b| (&a.job, &a.node).cmp(&(&b.job, &b.node)));
        Ok(nodes)
    }

    async fn terminate(&self, request: TerminateRequest) -> Result<(), ProviderError> {
        let ids: Vec<String> = request.nodes.iter().map(|n| n.id.clone()).collect();
        // Deleting is the end (no stop: a stopped VM bills); the grace bounds the wait.
        self.delete(&ids, Duration::from_millis(request.grace_ms).max(Duration::from_secs(30))).await
    }

    async fn identify(&self) -> Result<Option<NodeInfo>, ProviderError> {
        let Some(id) = self.my_vm().await else { return Ok(None) };
        let (group, name) =
            parse_vm_id(&id).ok_or_else(|| fail(ErrorKind::Protocol, format!("{id}: not a VM's resource id")))?;
        Ok(self.get_vm(&group, &name).await?.as_ref().and_then(node_of))
    }

    async fn terminate_self(&self) -> Result<(), ProviderError> {
        let id = self
            .my_vm()
            .await
            .ok_or_else(|| fail(ErrorKind::Unsupported, "this process is not on an Azure VM (no resource id)"))?;
        // Deleted, not stopped: the custom data's `mayfly-end-vm` retries if this fails.
        let (group, name) =
            parse_vm_id(&id).ok_or_else(|| fail(ErrorKind::Protocol, format!("{id}: not a VM's resource id")))?;
        let arm = self.arm().await?;
        match arm.virtual_machines_client().delete(&group, &name, self.subscription()?).send().await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(arm_err(&format!("VirtualMachines_Delete({name}), this VM"), &e)),
        }
    }

    async fn credentials(&self, request: CredentialRequest) -> Result<Credential, ProviderError> {
        let credential = {
            let mut held = self.storage_credential.lock().await;
            match &*held {
                Some(c) if !request.refused => c.clone(),
                _ => {
                    let fresh = credentials::credential(self.source, self.identity_client_id.as_deref())?;
                    *held = Some(fresh.clone());
                    fresh
                }
            }
        };
        let now = now_ms();
        let (token, expires_at) = credentials::token(credential.as_ref(), STORAGE_SCOPE).await?;
        let secret = Secret::Bearer { token };
        Ok(Credential { node: request.node, secret, validity: Validity { issued_at: now, expires_at } })
    }

    async fn object_store(&self, url: String) -> Result<StoreConfig, ProviderError> {
        if !url.starts_with("az://") {
            return Err(fail(ErrorKind::Unsupported, format!("{url}: the azure provider serves az:// URLs")));
        }
        let account = match (&self.storage_account, &self.storage_endpoint) {
            (Some(a), _) => a.clone(),
            // An emulator's endpoint names its account: http://host/<account>.
            (None, Some(e)) => e.trim_end_matches('/').rsplit('/').next().unwrap_or_default().to_owned(),
            (None, None) => {
                return Err(fail(
                    ErrorKind::Config,
                    "`provider.storage_account` is not set: the account of az:// locations",
                ));
            }
        };
        let mut options = BTreeMap::from([("azure_storage_account_name".to_owned(), account)]);
        if let Some(e) = &self.storage_endpoint {
            options.insert("azure_storage_endpoint".into(), e.trim_end_matches('/').to_owned());
            if e.starts_with("http://") {
                options.insert("allow_http".into(), "true".into());
            }
        }
        Ok(StoreConfig { scheme: "az".into(), options })
    }

    async fn adapt_event(&self, event: serde_json::Value) -> Result<BootstrapRequest, ProviderError> {
        let storage = self.storage_url().ok();
        events::adapt_event(&event, self.event_job_url.as_deref(), self.event_prefix.as_deref(), storage.as_deref())
    }

    async fn permissions(
        &self,
        request: mayfly_provider_api::PermissionsRequest,
    ) -> Result<serde_json::Value, ProviderError> {
        role_definitions(
            &request.locations,
            self.subscription_id.as_deref(),
            self.resource_group.as_deref(),
            self.event_job_url.as_deref(),
            self.node_artifact.as_deref(),
        )
    }

    async fn deploy(&self, request: mayfly_provider_api::DeployRequest) -> Result<serde_json::Value, ProviderError> {
        self.deploy_app(&request).await
    }

    async fn prices(
        &self,
        request: mayfly_provider_api::PricesRequest,
    ) -> Result<mayfly_provider_api::PriceList, ProviderError> {
        let location = self.need(&self.location, "location", "the region whose prices are fetched")?;
        prices::fetch(&self.prices_endpoint, location, &request.node_types, self.api_timeout).await
    }

    async fn serve(&self) -> Result<(), ProviderError> {
        entrypoint::serve(self).await
    }
}

mayfly_provider_api::export_provider!(Azure);

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(node: &str, role: Role) -> NodeLaunch {
        NodeLaunch {
            job: "wc-1".into(),
            role,
            node: node.into(),
            args: ["node", "--role", &role.to_string(), "--node", node, "--dir", "az://c/s/wc-1"]
                .map(String::from)
                .to_vec(),
            expires_at: now_ms() + 600_000,
        }
    }

    #[test]
    fn the_vm_body_keeps_every_field_the_2024_07_01_model_knows() {
        let l = launch("worker-1", Role::Worker);
        let plan = VmPlan {
            location: "westeurope",
            size: "Standard_D2s_v5",
            image: "Canonical:ubuntu-24_04-lts:server:latest",
            subnet: "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/virtualNetworks/v/subnets/default",
            identity: Some(
                "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mayfly",
            ),
            ssh_public_key: None,
        };
        let body = vm_body(&plan, &l, "mf-x-worker-1", "#!/bin/sh\n");
        let vm: mgmt::models::VirtualMachine = serde_json::from_value(body.clone()).unwrap();
        let back = serde_json::to_value(&vm).unwrap();
        // Why `put_vm` sends the body itself: the legacy model loses the identities.
        assert_eq!(back.pointer("/identity/userAssignedIdentities"), Some(&serde_json::json!({})));
        // What deletes everything that bills, and what the harness reads, survive the model.
        for pointer in [
            "/properties/storageProfile/osDisk/deleteOption",
            "/properties/networkProfile/networkInterfaceConfigurations/0/properties/deleteOption",
            "/properties/networkProfile/networkInterfaceConfigurations/0/properties/ipConfigurations/0/properties/subnet/id",
            "/properties/osProfile/customData",
            "/tags/mayfly:job",
            "/tags/mayfly:expires-at",
        ] {
            assert_eq!(back.pointer(pointer), body.pointer(pointer), "{pointer} in {back}");
            assert!(back.pointer(pointer).is_some(), "{pointer}");
        }
        assert_eq!(back.pointer("/properties/storageProfile/osDisk/deleteOption").unwrap(), "Delete");
        assert_eq!(back.pointer("/identity/type").unwrap(), "UserAssigned");
    }

    #[test]
    fn custom_data_carries_the_launch_is_valid_sh_and_stays_under_azures_limit() {
        let l = launch("master", Role::Master);
        let hash = "ab".repeat(32);
        let url = format!("https://acct.blob.core.windows.net/dist/node-{hash}.tar.gz");
        let boot = Boot {
            binary: "/usr/local/bin/mayfly",
            artifact: Some(&url),
            arm: "https://management.azure.com",
            client_id: Some("00000000-0000-0000-0000-000000000001"),
        };
        let script = custom_data(&l, boot, Duration::from_secs(60)).unwrap();
        assert_eq!(NodeLaunch::from_custom_data(&script).as_ref(), Some(&l));
        assert!(script.contains(&format!("| cut -c1-64)\" = {hash} ]")), "the hash is checked: {script}");
        assert!(script.contains("-X DELETE"), "the VM deletes itself: {script}");
        assert!(script.contains("client_id=00000000-0000-0000-0000-000000000001"), "{script}");
        let file = std::env::temp_dir().join(format!("mayfly-custom-data-{}.sh", std::process::id()));
        let plain = custom_data(&l, Boot { artifact: None, ..boot }, Duration::from_secs(60)).unwrap();
        for s in [&script, &plain] {
            std::fs::write(&file, s).unwrap();
            let syntax = std::process::Command::new("sh").arg("-n").arg(&file).output().unwrap();
            assert!(syntax.status.success(), "{}\n{s}", String::from_utf8_lossy(&syntax.stderr));
        }
        let _ = std::fs::remove_file(&file);
        let mut big = l.clone();
        big.args.push("x".repeat(CUSTOM_DATA_LIMIT));
        let e = custom_data(&big, boot, Duration::ZERO).unwrap_err();
        assert!(e.message.contains("over Azure's 65535-byte limit"), "{e}");
    }

    #[test]
    fn vm_names_fit_azure_and_keep_long_jobs_apart() {
        assert_eq!(vm_name("wc-1", "worker-3"), format!("mf-wc-1-{:08x}-worker-3", fnv("wc-1")));
        let a = vm_name(&"j".repeat(100), "worker-12");
        let b = vm_name(&format!("{}x", "j".repeat(99)), "worker-12");
        assert!(a.len() <= 64 && a.ends_with("-worker-12"), "{a}");
        assert_ne!(a, b);
        assert!(vm_name("a/b c", "master").chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        let id = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/mf-a-1";
        assert_eq!(parse_vm_id(id), Some(("rg".into(), "mf-a-1".into())));
        assert_eq!(parse_vm_id("/subscriptions/s"), None);
    }

    #[test]
    fn plans_are_priced_from_the_vm_sizes_the_settings_select() {
        let make = |v: serde_json::Value| {
            let serde_json::Value::Object(map) = v else { unreachable!() };
            <Azure as Provider>::create(Settings::new("?", map), Arc::new(mayfly_provider_api::NoHost))
                .unwrap()
                .info()
                .nodes
                .unwrap()
        };
        let n = make(serde_json::json!({ "vm_size": "Standard_F2s_v2", "credential": "developer" }));
        assert_eq!((n.master.as_str(), n.worker.as_str()), ("Standard_F2s_v2", "Standard_F2s_v2"));
        assert_eq!(n.prices["Standard_F2s_v2"], 0.0846);
        assert!(n.prices_source.contains("2025-06"), "a dated source: {}", n.prices_source);
        let n = make(serde_json::json!({ "master_vm_size": "Standard_D4s_v5", "credential": "developer" }));
        assert_eq!((n.master.as_str(), n.worker.as_str()), ("Standard_D4s_v5", "Standard_D2s_v5"));
    }

    #[test]
    fn settings_outside_what_azure_allows_are_refused_before_any_call() {
        let make = |v: serde_json::Value| {
            let serde_json::Value::Object(map) = v else { unreachable!() };
            <Azure as Provider>::create(Settings::new("?", map), Arc::new(mayfly_provider_api::NoHost))
        };
        let e = make(serde_json::json!({ "bootstrap_limit": "11m", "credential": "developer" })).unwrap_err();
        assert!(e.message.contains("runs 10s to 600s"), "{e}");
        let e = make(serde_json::json!({ "subnet_id": "default", "credential": "developer" })).unwrap_err();
        assert!(e.message.contains("expected a subnet's resource id"), "{e}");
        let e = make(serde_json::json!({ "node_artifact": "s3://b/k", "credential": "developer" })).unwrap_err();
        assert!(e.message.contains("expected az://container/key"), "{e}");
        let e = make(serde_json::json!({ "credential": "password" })).unwrap_err();
        assert!(e.message.contains("expected managed_identity"), "{e}");
        let e = make(serde_json::json!({ "arm_endpoint": "localhost:1", "credential": "developer" })).unwrap_err();
        assert!(e.message.contains("http:// or https://"), "{e}");
    }

    #[test]
    fn role_definitions_cover_the_calls_and_the_containers() {
        let locations = vec!["az://data/in".to_owned(), "az://work/out".to_owned(), "az://work/state".to_owned()];
        let r = role_definitions(&locations, Some("sub"), Some("rg"), None, None).unwrap();
        let actions = |k: &str| -> Vec<String> {
            r[k]["Actions"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect()
        };
        // The ARM operations the provider calls (its Provider impl and its
        // compute module), by their RBAC action. The code above the tests
        // only: the test's own strings must not count.
        let file = include_str!("lib.rs");
        let source = [&file[..file.find("#[cfg(test)]").unwrap()], include_str!("compute.rs")].concat();
        for (call, action) in [
            ("self.put_vm(", "Microsoft.Compute/virtualMachines/write"),
            (".get(", "Microsoft.Compute/virtualMachines/read"),
            (".list(", "Microsoft.Compute/virtualMachines/read"),
            (".delete(", "Microsoft.Compute/virtualMachines/delete"),
        ] {
            assert!(source.contains(call), "{call}");
            assert!(actions("function_role").contains(&action.to_owned()), "{action}");
        }
        assert!(actions("node_role").contains(&"Microsoft.Compute/virtualMachines/delete".to_owned()));
        assert!(!actions("node_role").iter().any(|a| a.ends_with("virtualMachines/write")), "nodes make no VM");
        assert_eq!(r["function_role"]["AssignableScopes"][0], "/subscriptions/sub/resourceGroups/rg");
        let text = r.to_string();
        assert!(text.contains("StringEquals 'data'") && text.contains("StringEquals 'work'"), "{text}");
        let e = role_definitions(&["s3://b/x".into()], None, None, None, None).unwrap_err();
        assert!(e.message.contains("az:// locations"), "{e}");
    }
}
