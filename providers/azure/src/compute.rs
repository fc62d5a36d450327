//! ARM's `Microsoft.Compute`: VMs (one PUT each, then GETs until they run;
//! deleted with their disk and NIC), their body, their tags, and this
//! process's own VM from the metadata service.

use super::*;

/// (resource group, VM name) of a VM's resource id.
pub(crate) fn parse_vm_id(id: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = id.trim_matches('/').split('/').collect();
    let at = |key: &str| parts.iter().position(|p| p.eq_ignore_ascii_case(key)).and_then(|i| parts.get(i + 1));
    Some(((*at("resourceGroups")?).to_owned(), (*at("virtualMachines")?).to_owned()))
}

/// The VM a node is: its ARM body (`Microsoft.Compute/virtualMachines`, 2024-07-01).
#[derive(Debug, Clone)]
pub struct VmPlan<'a> {
    /// Where.
    pub location: &'a str,
    /// `vmSize`.
    pub size: &'a str,
    /// `publisher:offer:sku:version` or an image resource id.
    pub image: &'a str,
    /// The subnet's resource id.
    pub subnet: &'a str,
    /// The user-assigned identity's resource id.
    pub identity: Option<&'a str>,
    /// An SSH public key for the admin account.
    pub ssh_public_key: Option<&'a str>,
}

/// The body of a VM's create: tags, identity, NIC inside the VM, every billed
/// part deleted with it, the custom data.
pub fn vm_body(plan: &VmPlan<'_>, launch: &NodeLaunch, name: &str, script: &str) -> serde_json::Value {
    use serde_json::json;
    let image = if plan.image.starts_with('/') {
        json!({ "id": plan.image })
    } else {
        let p: Vec<&str> = plan.image.split(':').collect();
        json!({ "publisher": p.first(), "offer": p.get(1), "sku": p.get(2), "version": p.get(3).unwrap_or(&"latest") })
    };
    let linux = match plan.ssh_public_key {
        Some(key) => json!({ "disablePasswordAuthentication": true,
            "ssh": { "publicKeys": [{ "path": "/home/mayfly/.ssh/authorized_keys", "keyData": key }] } }),
        None => json!({ "disablePasswordAuthentication": false }),
    };
    let mut os_profile = json!({
        "computerName": name,
        "adminUsername": "mayfly",
        "customData": base64::engine::general_purpose::STANDARD.encode(script),
        "linuxConfiguration": linux,
    });
    if plan.ssh_public_key.is_none() {
        // Nobody keeps it: nothing logs in, the VM has no public address.
        os_profile["adminPassword"] = json!(random_password());
    }
    let mut body = json!({
        "location": plan.location,
        "tags": {
            JOB_TAG: launch.job, vm_kit::tags::ROLE: launch.role.to_string(), vm_kit::tags::NODE: launch.node,
            vm_kit::tags::EXPIRES_AT: launch.expires_at.to_string(),
        },
        "properties": {
            "hardwareProfile": { "vmSize": plan.size },
            "storageProfile": {
                "imageReference": image,
                "osDisk": { "createOption": "FromImage", "deleteOption": "Delete",
                            "managedDisk": { "storageAccountType": "Standard_LRS" } },
            },
            "osProfile": os_profile,
            "networkProfile": {
                "networkApiVersion": "2020-11-01",
                "networkInterfaceConfigurations": [{
                    "name": format!("{name}-nic"),
                    "properties": {
                        "primary": true,
                        "deleteOption": "Delete",
                        "ipConfigurations": [{ "name": "ipconfig1",
                            "properties": { "primary": true, "subnet": { "id": plan.subnet } } }],
                    },
                }],
            },
        },
    });
    if let Some(id) = plan.identity {
        body["identity"] = json!({ "type": "UserAssigned", "userAssignedIdentities": { id: {} } });
    }
    body
}

pub(crate) fn random_password() -> String {
    use std::hash::{BuildHasher, Hasher};
    // Four independently keyed hashes of the time: 64 characters nobody keeps.
    let mut out = String::from("Mf1!");
    for i in 0..4u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i ^ now_ms());
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// The node a VM is, from its tags.
pub(crate) fn node_of(vm: &mgmt::models::VirtualMachine) -> Option<NodeInfo> {
    let tags = vm.resource.tags.as_ref()?;
    let tag = |k: &str| tags.get(k).and_then(|v| v.as_str());
    let role = match tag(vm_kit::tags::ROLE)? {
        "master" => Role::Master,
        _ => Role::Worker,
    };
    let launched_at = vm
        .properties
        .as_ref()
        .and_then(|p| p.time_created)
        .map(|t| (t.unix_timestamp().max(0) as u64) * 1000)
        .unwrap_or(0);
    Some(NodeInfo {
        node: tag(vm_kit::tags::NODE)?.to_owned(),
        role,
        job: tag(JOB_TAG)?.to_owned(),
        id: vm.resource.id.clone()?,
        expires_at: tag(vm_kit::tags::EXPIRES_AT).and_then(|t| t.parse().ok()).unwrap_or(0),
        launched_at,
        process: None,
    })
}

/// A VM being deleted no longer counts; a stopped or deallocated one does
/// (its disk, or its compute, still bills).
pub(crate) fn alive(vm: &mgmt::models::VirtualMachine) -> bool {
    let state = vm.properties.as_ref().and_then(|p| p.provisioning_state.as_deref()).unwrap_or("");
    !state.eq_ignore_ascii_case("Deleting")
}

/// ARM: the generated client (get, list, delete), and its pipeline for the create.
pub(crate) struct Arm {
    client: mgmt::Client,
    pub(crate) pipeline: azure_core_legacy::Pipeline,
    bridge: Arc<credentials::Bridge>,
    pub(crate) endpoint: azure_core_legacy::Url,
    scope: String,
}

impl Azure {
    pub(crate) fn need<'a>(&self, value: &'a Option<String>, key: &str, what: &str) -> Result<&'a str, ProviderError> {
        value.as_deref().ok_or_else(|| fail(ErrorKind::Config, format!("`provider.{key}` is not set: {what}")))
    }

    pub(crate) fn subscription(&self) -> Result<&str, ProviderError> {
        self.need(&self.subscription_id, "subscription_id", "the subscription the job's VMs are in")
    }

    pub(crate) fn group(&self) -> Result<&str, ProviderError> {
        self.need(&self.resource_group, "resource_group", "the resource group the job's VMs are made in")
    }

    pub(crate) async fn credential(&self) -> Result<&Arc<dyn TokenCredential>, ProviderError> {
        self.credential
            .get_or_try_init(|| async { credentials::credential(self.source, self.identity_client_id.as_deref()) })
            .await
    }

    pub(crate) async fn arm(&self) -> Result<&mgmt::Client, ProviderError> {
        Ok(&self.arm_parts().await?.client)
    }

    pub(crate) async fn arm_parts(&self) -> Result<&Arm, ProviderError> {
        let credential = self.credential().await?.clone();
        self.arm
            .get_or_try_init(|| async {
                let endpoint = azure_core_legacy::Url::parse(&self.arm_endpoint)
                    .map_err(|e| fail(ErrorKind::Config, format!("`provider.arm_endpoint`: {e}")))?;
                let scope = format!("{}/.default", self.arm_endpoint.trim_end_matches('/'));
                // Time ends the retries (`api_timeout`), not a small count:
                // ARM throttles (429) for as long as its Retry-After says, and
                // a few throttled answers in a row must not fail a launch
                // (found by the seeded chaos on the emulators: 5 in a row
                // did). 40 tries, at most 5 s apart unless ARM asks for more,
                // outlast the `api_timeout` one would set, and keep the
                // backoff's 2^n in range.
                let retry = azure_core_legacy::RetryOptions::exponential(
                    azure_core_legacy::ExponentialRetryOptions::default()
                        .max_retries(40u32)
                        .max_delay(Duration::from_secs(5))
                        .initial_delay(Duration::from_millis(200))
                        .max_total_elapsed(self.api_timeout),
                );
                let bridge = Arc::new(credentials::Bridge(credential));
                // Every try of a request carries a token asked for then.
                let fresh: Arc<dyn azure_core_legacy::Policy> =
                    Arc::new(FreshToken { bridge: bridge.clone(), scope: scope.clone() });
                let options = azure_core_legacy::ClientOptions::default().retry(retry).per_retry_policies(vec![fresh]);
                let pipeline = azure_core_legacy::Pipeline::new(
                    Some("mayfly-provider-azure"),
                    Some(env!("CARGO_PKG_VERSION")),
                    options.clone(),
                    Vec::new(),
                    Vec::new(),
                );
                let client = mgmt::Client::new(endpoint.clone(), bridge.clone(), vec![scope.clone()], options);
                Ok(Arm { client, pipeline, bridge, endpoint, scope })
            })
            .await
    }

    /// The instance metadata service: the `MAYFLY_IMDS` environment (a
    /// test's harness), the setting, or Azure's.
    pub(crate) fn imds(&self) -> String {
        std::env::var("MAYFLY_IMDS")
            .ok()
            .or_else(|| self.imds_endpoint.clone())
            .unwrap_or_else(|| "http://169.254.169.254".into())
    }

    /// This VM's resource id: what the node's boot script found
    /// ([`crate::boot::VM_ENV`]), or the instance metadata service's answer
    /// (`None` off Azure, where nothing answers in time; an error status is
    /// asked again, three times in all).
    pub(crate) async fn my_vm(&self) -> Option<String> {
        if let Some(id) = std::env::var(crate::boot::VM_ENV).ok().filter(|id| id.starts_with("/subscriptions/")) {
            return Some(id);
        }
        let url = format!("{}/metadata/instance/compute/resourceId?api-version=2021-02-01&format=text", self.imds());
        for _ in 0..3 {
            match entrypoint::get(&url, &[("Metadata", "true")], Duration::from_secs(2)).await {
                Ok(text) => {
                    let id = text.trim().to_owned();
                    return id.starts_with("/subscriptions/").then_some(id);
                }
                // Nothing there at all (not on a VM): no point in asking again.
                Err(e) if e.contains("no answer") || e.contains("refused") => return None,
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        None
    }

    pub(crate) async fn get_vm(
        &self,
        group: &str,
        name: &str,
    ) -> Result<Option<mgmt::models::VirtualMachine>, ProviderError> {
        let arm = self.arm().await?;
        match arm.virtual_machines_client().get(group, name, self.subscription()?).await {
            Ok(vm) => Ok(Some(vm)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(arm_err(&format!("VirtualMachines_Get({name})"), &e)),
        }
    }

    /// Creates one VM: a single PUT (`VirtualMachines_CreateOrUpdate`).
    pub(crate) async fn make_vm(&self, launch: &NodeLaunch) -> Result<NodeInfo, ProviderError> {
        let group = self.group()?;
        let plan = VmPlan {
            location: self.need(&self.location, "location", "the region the VMs are made in")?,
            size: if launch.role == Role::Master { &self.master_size } else { &self.worker_size },
            image: &self.image,
            subnet: self.need(&self.subnet_id, "subnet_id", "the subnet (resource id) the VMs' interfaces join")?,
            identity: self.identity.as_deref(),
            ssh_public_key: self.ssh_public_key.as_deref(),
        };
        let artifact = self.node_artifact.as_deref().map(|u| self.blob_url(u)).transpose()?;
        let boot = Boot {
            binary: &self.node_binary,
            artifact: artifact.as_deref(),
            arm: &self.arm_endpoint,
            client_id: self.identity_client_id.as_deref(),
        };
        let script = custom_data(launch, boot, Duration::from_secs(60))?;
        let name = vm_name(&launch.job, &launch.node);
        let body = vm_body(&plan, launch, &name, &script);
        // A conflict (409: the VM of that name is still being deleted, as when a
        // resumed job's master follows its predecessor) passes: retried until
        // `api_timeout`. Throttling (429) is the pipeline's, with Retry-After.
        let started = std::time::Instant::now();
        let made = loop {
            match self.put_vm(group, &name, &body).await {
                Ok(vm) => break vm,
                Err(e) if status_of(&e) == Some(409) && started.elapsed() < self.api_timeout => {
                    self.host.log(Level::Info, &format!("azure: VM {name} is busy (409); trying again"));
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => return Err(arm_err(&format!("VirtualMachines_CreateOrUpdate({name})"), &e)),
            }
        };
        let id = made.resource.id.clone().unwrap_or_else(|| {
            format!(
                "/subscriptions/{}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{name}",
                self.subscription_id.as_deref().unwrap_or_default()
            )
        });
        Ok(NodeInfo {
            node: launch.node.clone(),
            role: launch.role,
            job: launch.job.clone(),
            id,
            expires_at: launch.expires_at,
            launched_at: now_ms(),
            process: None,
        })
    }

    /// `VirtualMachines_CreateOrUpdate`, sent once through the same pipeline
    /// (retries, throttling) as the generated client: its model of a VM
    /// cannot carry `identity.userAssignedIdentities` (the legacy generator
    /// made the map an empty struct), and its long-running future re-sends
    /// the PUT until the state is terminal.
    pub(crate) async fn put_vm(
        &self,
        group: &str,
        name: &str,
        body: &serde_json::Value,
    ) -> azure_core_legacy::Result<mgmt::models::VirtualMachine> {
        use azure_core_legacy::auth::TokenCredential as _;
        let arm = self.arm_parts().await.map_err(|e| {
            azure_core_legacy::Error::message(azure_core_legacy::error::ErrorKind::Credential, e.to_string())
        })?;
        let mut url = arm.endpoint.clone();
        url.set_path(&format!(
            "/subscriptions/{}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{name}",
            self.subscription_id.as_deref().unwrap_or_default()
        ));
        url.query_pairs_mut().append_pair("api-version", API_VERSION);
        let mut request = azure_core_legacy::Request::new(url, azure_core_legacy::Method::Put);
        let token = arm.bridge.get_token(&[&arm.scope]).await?;
        request.insert_header(azure_core_legacy::headers::AUTHORIZATION, format!("Bearer {}", token.token.secret()));
        request.insert_header("content-type", "application/json");
        request.set_body(serde_json::to_vec(body)?);
        let response = arm.pipeline.send(&azure_core_legacy::Context::default(), &mut request).await?;
        let bytes = response.into_body().collect().await?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Waits until each VM's provisioning state is terminal: `Succeeded`, or
    /// an error naming the VM that `Failed` (or is gone).
    pub(crate) async fn provisioned(&self, nodes: &[NodeInfo], patience: Duration) -> Result<(), ProviderError> {
        let start = std::time::Instant::now();
        let mut pending: Vec<&NodeInfo> = nodes.iter().collect();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for n in pending {
                let (group, name) = parse_vm_id(&n.id)
                    .ok_or_else(|| fail(ErrorKind::Protocol, format!("{}: not a VM's resource id", n.id)))?;
                // Gone after ARM accepted it: it was made and has already ended
                // (a short job's node deletes its own VM) or was deleted; ARM keeps
                // a VM that failed to provision, in state Failed.
                let Some(vm) = self.get_vm(&group, &name).await? else {
                    self.host.log(
                        Level::Info,
                        &format!("azure: VM {name} ({}) ended before its launch was seen done", n.node),
                    );
                    continue;
                };
                let state = vm.properties.as_ref().and_then(|p| p.provisioning_state.clone()).unwrap_or_default();
                match state.as_str() {
                    "Succeeded" => {}
                    "Failed" | "Canceled" => {
                        return Err(fail(
                            ErrorKind::Unavailable,
                            format!("VM {name} ({}) could not be made: provisioning state {state}", n.node),
                        ));
                    }
                    _ => still.push(n),
                }
            }
            pending = still;
            if !pending.is_empty() {
                if start.elapsed() > patience {
                    return Err(fail(
                        ErrorKind::Unavailable,
                        format!("{} VM(s) still not provisioned after {patience:?}", pending.len()),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Ok(())
    }

    /// Deletes VMs (`VirtualMachines_Delete`; one already gone is fine) and
    /// waits, up to `patience`, until ARM no longer has them.
    pub(crate) async fn delete(&self, ids: &[String], patience: Duration) -> Result<(), ProviderError> {
        if ids.is_empty() {
            return Ok(());
        }
        let arm = self.arm().await?;
        let sub = self.subscription()?.to_owned();
        // Every VM is asked to go, whatever another's deletion answers.
        let mut targets = Vec::new();
        let mut first_error = None;
        for id in ids {
            let Some((group, name)) = parse_vm_id(id) else {
                first_error.get_or_insert(fail(ErrorKind::Config, format!("{id}: not a VM's resource id")));
                continue;
            };
            match arm.virtual_machines_client().delete(&group, &name, &sub).send().await {
                Ok(_) => targets.push((group, name)),
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => {
                    first_error.get_or_insert(arm_err(&format!("VirtualMachines_Delete({name})"), &e));
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let start = std::time::Instant::now();
        loop {
            let mut left = Vec::new();
            for (group, name) in targets {
                // Being deleted counts as gone: ARM finishes it, and list no longer shows it.
                if self.get_vm(&group, &name).await?.as_ref().is_some_and(alive) {
                    left.push((group, name));
                }
            }
            if left.is_empty() {
                return Ok(());
            }
            if start.elapsed() > patience {
                let names: Vec<&str> = left.iter().map(|(_, n)| n.as_str()).collect();
                return Err(fail(
                    ErrorKind::Unavailable,
                    format!("VM(s) {} still not deleted after {patience:?}", names.join(", ")),
                ));
            }
            targets = left;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The Blob URL of an `az://container/key`.
    pub(crate) fn blob_url(&self, url: &str) -> Result<String, ProviderError> {
        let rest = url
            .strip_prefix("az://")
            .filter(|r| r.split_once('/').is_some_and(|(container, key)| !container.is_empty() && !key.is_empty()))
            .ok_or_else(|| fail(ErrorKind::Config, format!("{url:?}: expected az://container/key")))?;
        Ok(format!("{}/{rest}", self.storage_url()?))
    }

    pub(crate) fn storage_url(&self) -> Result<String, ProviderError> {
        if let Some(e) = &self.storage_endpoint {
            return Ok(e.trim_end_matches('/').to_owned());
        }
        let account = self.need(&self.storage_account, "storage_account", "the storage account of az:// locations")?;
        Ok(format!("https://{account}.blob.core.windows.net"))
    }
}

/// Sets the bearer token on every try of an ARM request (a per-retry policy).
/// The generated client, like `Azure::put_vm`, sets one before the
/// pipeline, whose retries would send it again after it expired: 6 s of
/// throttling with 20-second tokens ended a launch in 401
/// `ExpiredAuthenticationToken`. Each try asks the credential (which may
/// answer from its cache, or ask its token service: short-lived tokens are
/// asked for anew); a token it cannot get ends the request, as the one
/// asked for before the pipeline would.
#[derive(Debug)]
struct FreshToken {
    bridge: Arc<credentials::Bridge>,
    scope: String,
}

#[async_trait::async_trait]
impl azure_core_legacy::Policy for FreshToken {
    async fn send(
        &self,
        ctx: &azure_core_legacy::Context,
        request: &mut azure_core_legacy::Request,
        next: &[Arc<dyn azure_core_legacy::Policy>],
    ) -> azure_core_legacy::PolicyResult {
        use azure_core_legacy::auth::TokenCredential as _;
        let token = self.bridge.get_token(&[&self.scope]).await?;
        request.insert_header(azure_core_legacy::headers::AUTHORIZATION, format!("Bearer {}", token.token.secret()));
        match next.split_first() {
            Some((policy, rest)) => policy.send(ctx, request, rest).await,
            None => Err(azure_core_legacy::Error::message(
                azure_core_legacy::error::ErrorKind::Other,
                "the ARM pipeline has no transport",
            )),
        }
    }
}
