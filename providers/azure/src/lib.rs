//! # The Azure provider
//!
//! A mayfly provider plugin for Azure: nodes are virtual machines made with
//! `azure_mgmt_compute` (API 2024-07-01), credentials come from
//! `azure_identity` (a user-assigned managed identity on nodes and in the
//! function; the developer's chain for an operator), data lives on Blob
//! storage (`az://container/prefix`, core's data path with the `azure`
//! feature), and the bootstrap runs as an Azure Functions custom handler.
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
//! `event_job_url` and `event_prefix` (the job a Blob trigger runs).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_mgmt_compute::package_2024_07_01 as compute;
use base64::Engine;
use mayfly_provider_api::{
    BootstrapRequest, Capabilities, Credential, CredentialRequest, ErrorKind, Host, LaunchRequest, Level, Limits,
    ListRequest, NodeInfo, Provider, ProviderError, ProviderInfo, Role, Secret, Settings, StoreConfig,
    TerminateRequest, Validity, async_trait, now_ms,
};
use mayfly_vm_kit::{self as vm_kit, shell_quote};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

mod handler;
pub mod identity;
mod prices;

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
    fail(kind, format!("{what}: {}", identity::chain(e)))
}

fn status_of(e: &azure_core_legacy::Error) -> Option<u16> {
    match e.kind() {
        azure_core_legacy::error::ErrorKind::HttpResponse { status, .. } => Some(u16::from(*status)),
        _ => None,
    }
}

/// What the custom data of a VM carries (the line after [`NODE_LINE`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLaunch {
    /// The job.
    pub job: String,
    /// The node's role.
    pub role: Role,
    /// The node's name.
    pub node: String,
    /// `mayfly`'s arguments.
    pub args: Vec<String>,
    /// The job's deadline.
    pub expires_at: u64,
}

impl NodeLaunch {
    /// Reads it back from custom data.
    pub fn from_custom_data(script: &str) -> Option<NodeLaunch> {
        vm_kit::read_launch(script)
    }
}

/// How a node gets `mayfly` and ends itself.
#[derive(Debug, Clone, Copy)]
pub struct Boot<'a> {
    /// `mayfly`'s path on the image, when there is no artifact.
    pub binary: &'a str,
    /// The node artifact's Blob URL (`https://<account>.blob.../container/node-<sha256>.tar.gz`).
    pub artifact: Option<&'a str>,
    /// ARM's endpoint (the VM deletes itself there).
    pub arm: &'a str,
    /// The client id of the VM's user-assigned identity.
    pub client_id: Option<&'a str>,
}

/// The custom data of a VM: a shell script (cloud-init runs it as root) that
/// marks the machine as a mayfly node, writes `mayfly-end-vm` (delete this
/// VM through ARM with the VM's managed identity, retried; power off only as
/// the last resort), arms the dead-man switch (`mayfly-end-vm` `grace` after
/// the deadline), fetches the node artifact with a storage token (its sha256
/// checked; retried, else the VM ends itself), and runs `mayfly` in the
/// background with its output in a log file, ending the VM when it exits.
///
/// On Azure, `MAYFLY_ROOT` and `MAYFLY_IMDS` are unset: files are under `/`
/// and the metadata service is Azure's. A test's harness sets them.
pub fn custom_data(launch: &NodeLaunch, boot: Boot<'_>, grace: Duration) -> Result<String, ProviderError> {
    let line = vm_kit::launch_line(launch).map_err(|e| fail(ErrorKind::Other, e.to_string()))?;
    let args: Vec<String> = launch.args.iter().map(|a| shell_quote(a)).collect();
    let client = boot.client_id.map(|c| format!("&client_id={c}")).unwrap_or_default();
    let arm_resource = format!("{}/", boot.arm.trim_end_matches('/'));
    let artifact = boot.artifact.map(|url| vm_kit::boot::Artifact {
        url,
        read_with: "the VM's identity",
        download: format!(
            "printf 'Authorization: Bearer %s\\n' \"$(tok https://storage.azure.com/)\" | curl -sf --retry 3 -H @- -H 'x-ms-version: 2021-08-06' -o \"$D/node.tar.gz\" {}",
            shell_quote(url)
        ),
        give_up: ("ending this VM", "\"$E\""),
    });
    let header = vm_kit::boot::Header {
        written_by: "mayfly-provider-azure",
        job: &launch.job,
        launch_line: &line,
        export_root: true,
        more_dirs: &["usr/local/sbin"],
    };
    let script = format!(
        "{header}\
         md() {{ curl -sf --retry 5 --retry-connrefused --connect-timeout 2 -H Metadata:true \"$IMDS/metadata/$1\"; }}\n\
         tok() {{ md \"identity/oauth2/token?api-version=2018-02-01&resource=$1{client}\" | sed -n 's/.*\"access_token\" *: *\"\\([^\"]*\\)\".*/\\1/p'; }}\n\
         ID=$(md 'instance/compute/resourceId?api-version=2021-02-01&format=text')\n\
         case \"$ID\" in /subscriptions/*) ;; *) echo 'mayfly: no resource id from the metadata service; powering off' >&2; poweroff; exit 1;; esac\n\
         # Ends this VM: deletes it through ARM (a stopped VM still bills); power off is the last resort.\n\
         E=\"$R/usr/local/sbin/mayfly-end-vm\"; export ID E\n\
         cat > \"$E\" <<'EOF'\n\
         #!/bin/sh\n\
         tok() {{ curl -sf --retry 3 --connect-timeout 2 -H Metadata:true \"$IMDS/metadata/identity/oauth2/token?api-version=2018-02-01&resource={arm_res}{client}\" | sed -n 's/.*\"access_token\" *: *\"\\([^\"]*\\)\".*/\\1/p'; }}\n\
         n=0\n\
         until printf 'Authorization: Bearer %s\\n' \"$(tok)\" | curl -sf -o /dev/null -X DELETE -H @- \"{arm_url}$ID?api-version={API_VERSION}\"; do\n\
         \x20 n=$((n + 1)); [ \"$n\" -ge 10 ] && break; sleep 5\n\
         done\n\
         poweroff\n\
         EOF\n\
         chmod 755 \"$E\"\n\
         # The dead-man switch: whatever happens, the VM deletes itself {grace_s}s after the job's deadline.\n\
         S=$(( {expires_s} + {grace_s} - $(date +%s) )); [ \"$S\" -lt 1 ] && S=1\n\
         nohup sh -c 'sleep \"$0\"; exec \"$1\"' \"$S\" \"$E\" >/dev/null 2>&1 &\n\
         # The master serves the job's nodes on the VM's private address (over TLS).\n\
         MAYFLY_LISTEN=$(md 'instance/network/interface/0/ipv4/ipAddress/0/privateIpAddress?api-version=2021-02-01&format=text'); export MAYFLY_LISTEN\n\
         {log}{fetch}{run}",
        header = vm_kit::boot::header(&header),
        log = vm_kit::boot::NODE_LOG,
        fetch = vm_kit::boot::fetch(boot.binary, artifact.as_ref()),
        run = vm_kit::boot::run(&args.join(" "), "exec \"$E\""),
        arm_res = arm_resource,
        arm_url = boot.arm.trim_end_matches('/'),
        expires_s = launch.expires_at / 1000,
        grace_s = grace.as_secs(),
    );
    if script.len() > CUSTOM_DATA_LIMIT {
        return Err(fail(
            ErrorKind::Config,
            format!(
                "the custom data of node {} is {} bytes, over Azure's {CUSTOM_DATA_LIMIT}-byte limit; shorten the paths",
                launch.node,
                script.len()
            ),
        ));
    }
    Ok(script)
}

/// A VM's name: Azure allows 1 to 64 letters, digits, `-`, `_` and `.`
/// (Linux host names: 64). The job's id is shortened, never the node's name,
/// and a hash of the whole id keeps two long ids apart.
pub fn vm_name(job: &str, node: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect()
    };
    let hash = fnv(job);
    let node = clean(node);
    let room = 64usize.saturating_sub("mf--".len() + 8 + 1 + node.len());
    let short: String = clean(job).chars().take(room.min(30)).collect();
    format!("mf-{short}-{hash:08x}-{node}").chars().take(64).collect()
}

fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// (resource group, VM name) of a VM's resource id.
fn parse_vm_id(id: &str) -> Option<(String, String)> {
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

fn random_password() -> String {
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
fn node_of(vm: &compute::models::VirtualMachine) -> Option<NodeInfo> {
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
fn alive(vm: &compute::models::VirtualMachine) -> bool {
    let state = vm.properties.as_ref().and_then(|p| p.provisioning_state.as_deref()).unwrap_or("");
    !state.eq_ignore_ascii_case("Deleting")
}

/// ARM: the generated client (get, list, delete), and its pipeline for the create.
struct Arm {
    client: compute::Client,
    pipeline: azure_core_legacy::Pipeline,
    bridge: Arc<identity::Bridge>,
    endpoint: azure_core_legacy::Url,
    scope: String,
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
    source: identity::Source,
    credential_ttl: Duration,
    bootstrap_limit: Duration,
    max_nodes: u32,
    node_binary: String,
    node_artifact: Option<String>,
    imds_endpoint: Option<String>,
    api_timeout: Duration,
    event_job_url: Option<String>,
    event_prefix: Option<String>,
    credential: OnceCell<Arc<dyn TokenCredential>>,
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

impl Azure {
    fn need<'a>(&self, value: &'a Option<String>, key: &str, what: &str) -> Result<&'a str, ProviderError> {
        value.as_deref().ok_or_else(|| fail(ErrorKind::Config, format!("`provider.{key}` is not set: {what}")))
    }

    fn subscription(&self) -> Result<&str, ProviderError> {
        self.need(&self.subscription_id, "subscription_id", "the subscription the job's VMs are in")
    }

    fn group(&self) -> Result<&str, ProviderError> {
        self.need(&self.resource_group, "resource_group", "the resource group the job's VMs are made in")
    }

    async fn credential(&self) -> Result<&Arc<dyn TokenCredential>, ProviderError> {
        self.credential
            .get_or_try_init(|| async { identity::credential(self.source, self.identity_client_id.as_deref()) })
            .await
    }

    async fn arm(&self) -> Result<&compute::Client, ProviderError> {
        Ok(&self.arm_parts().await?.client)
    }

    async fn arm_parts(&self) -> Result<&Arm, ProviderError> {
        let credential = self.credential().await?.clone();
        self.arm
            .get_or_try_init(|| async {
                let endpoint = azure_core_legacy::Url::parse(&self.arm_endpoint)
                    .map_err(|e| fail(ErrorKind::Config, format!("`provider.arm_endpoint`: {e}")))?;
                let scope = format!("{}/.default", self.arm_endpoint.trim_end_matches('/'));
                let retry = azure_core_legacy::RetryOptions::exponential(
                    azure_core_legacy::ExponentialRetryOptions::default()
                        .max_retries(4u32)
                        .initial_delay(Duration::from_millis(200))
                        .max_total_elapsed(self.api_timeout),
                );
                let bridge = Arc::new(identity::Bridge(credential));
                let pipeline = azure_core_legacy::Pipeline::new(
                    Some("mayfly-provider-azure"),
                    Some(env!("CARGO_PKG_VERSION")),
                    azure_core_legacy::ClientOptions::default().retry(retry.clone()),
                    Vec::new(),
                    Vec::new(),
                );
                let client = compute::Client::builder(bridge.clone())
                    .endpoint(endpoint.clone())
                    .scopes(&[&scope])
                    .retry(retry)
                    .build()
                    .map_err(|e| fail(ErrorKind::Config, format!("the ARM client: {e}")))?;
                Ok(Arm { client, pipeline, bridge, endpoint, scope })
            })
            .await
    }

    /// The instance metadata service: the `MAYFLY_IMDS` environment (a
    /// test's harness), the setting, or Azure's.
    fn imds(&self) -> String {
        std::env::var("MAYFLY_IMDS")
            .ok()
            .or_else(|| self.imds_endpoint.clone())
            .unwrap_or_else(|| "http://169.254.169.254".into())
    }

    /// This VM's resource id, from the instance metadata service (`None` off
    /// Azure, where nothing answers in time; an error status is asked again,
    /// three times in all).
    async fn my_vm(&self) -> Option<String> {
        let url = format!("{}/metadata/instance/compute/resourceId?api-version=2021-02-01&format=text", self.imds());
        for _ in 0..3 {
            match handler::get(&url, &[("Metadata", "true")], Duration::from_secs(2)).await {
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

    async fn get_vm(&self, group: &str, name: &str) -> Result<Option<compute::models::VirtualMachine>, ProviderError> {
        let arm = self.arm().await?;
        match arm.virtual_machines_client().get(group, name, self.subscription()?).await {
            Ok(vm) => Ok(Some(vm)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(arm_err(&format!("VirtualMachines_Get({name})"), &e)),
        }
    }

    /// Creates one VM: a single PUT (`VirtualMachines_CreateOrUpdate`).
    async fn make_vm(&self, launch: &NodeLaunch) -> Result<NodeInfo, ProviderError> {
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
    async fn put_vm(
        &self,
        group: &str,
        name: &str,
        body: &serde_json::Value,
    ) -> azure_core_legacy::Result<compute::models::VirtualMachine> {
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
    async fn provisioned(&self, nodes: &[NodeInfo], patience: Duration) -> Result<(), ProviderError> {
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
    async fn delete(&self, ids: &[String], patience: Duration) -> Result<(), ProviderError> {
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
    fn blob_url(&self, url: &str) -> Result<String, ProviderError> {
        let rest = url
            .strip_prefix("az://")
            .filter(|r| r.contains('/'))
            .ok_or_else(|| fail(ErrorKind::Config, format!("{url:?}: expected az://container/key")))?;
        Ok(format!("{}/{rest}", self.storage_url()?))
    }

    fn storage_url(&self) -> Result<String, ProviderError> {
        if let Some(e) = &self.storage_endpoint {
            return Ok(e.trim_end_matches('/').to_owned());
        }
        let account = self.need(&self.storage_account, "storage_account", "the storage account of az:// locations")?;
        Ok(format!("https://{account}.blob.core.windows.net"))
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
        s.finish()?;
        let on_node =
            std::path::Path::new(&format!("{}{NODE_MARKER}", std::env::var("MAYFLY_ROOT").unwrap_or_default()))
                .exists();
        let source = identity::Source::parse(credential.as_deref(), on_node)?;
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
            credential: OnceCell::new(),
            arm: OnceCell::new(),
            host,
        })
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            name: NAME.into(),
            limits: Limits {
                bootstrap_limit_ms: self.bootstrap_limit.as_millis() as u64,
                credential_ttl_ms: self.credential_ttl.as_millis() as u64,
                max_nodes: self.max_nodes,
            },
            capabilities: Capabilities { entrypoint: Some("azure-functions".into()) },
            schemes: vec!["az".into()],
            nodes: Some(prices::node_types(&self.master_size, &self.worker_size)),
        }
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Vec<NodeInfo>, ProviderError> {
        if request.nodes.len() > self.max_nodes as usize {
            return Err(fail(
                ErrorKind::Config,
                format!("a launch of {} nodes exceeds max_nodes = {}", request.nodes.len(), self.max_nodes),
            ));
        }
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
        let credential = self.credential().await?;
        let now = now_ms();
        let (token, expires_at) = identity::token(credential.as_ref(), STORAGE_SCOPE).await?;
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
        handler::adapt_event(&event, self.event_job_url.as_deref(), self.event_prefix.as_deref(), storage.as_deref())
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
        deploy_plan(&request, &self.storage_url()?)
    }

    async fn serve(&self) -> Result<(), ProviderError> {
        handler::serve(self).await
    }
}

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

/// The custom role definitions (Azure RBAC) of the function's identity, the
/// nodes' identity and the reaper, scoped to the job's resource group (and
/// the storage the job's `az://` locations are in): exactly the ARM
/// operations this provider calls and the Blob data actions of core's data
/// path.
pub fn role_definitions(
    locations: &[String],
    subscription: Option<&str>,
    group: Option<&str>,
    event_job_url: Option<&str>,
    node_artifact: Option<&str>,
) -> Result<serde_json::Value, ProviderError> {
    use serde_json::json;
    let mut urls: Vec<&str> = locations.iter().map(String::as_str).collect();
    urls.extend(event_job_url);
    if urls.is_empty() {
        return Err(fail(
            ErrorKind::Config,
            "no locations: name the job's input, output and state (az://container/prefix), or give a job file",
        ));
    }
    let mut containers = Vec::new();
    for url in &urls {
        let rest = url.strip_prefix("az://").ok_or_else(|| {
            fail(ErrorKind::Config, format!("{url}: the azure provider's jobs read and write az:// locations"))
        })?;
        let container = rest.split('/').next().unwrap_or_default();
        if container.is_empty() {
            return Err(fail(ErrorKind::Config, format!("{url}: expected az://container/prefix")));
        }
        if !containers.contains(&container) {
            containers.push(container);
        }
    }
    let sub = subscription.unwrap_or("<subscription-id>");
    let rg = group.unwrap_or("<resource-group>");
    let scope = format!("/subscriptions/{sub}/resourceGroups/{rg}");
    let blobs = [
        "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
        "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write",
        "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete",
        "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/add/action",
    ];
    let condition = containers
        .iter()
        .map(|c| {
            format!("@Resource[Microsoft.Storage/storageAccounts/blobServices/containers:name] StringEquals '{c}'")
        })
        .collect::<Vec<_>>()
        .join(" OR ");
    let role = |name: &str, about: &str, actions: Vec<&str>, data: bool| {
        json!({
            "Name": name,
            "IsCustom": true,
            "Description": about,
            "Actions": actions,
            "NotActions": [],
            "DataActions": if data { blobs.to_vec() } else { vec![] },
            "NotDataActions": [],
            "AssignableScopes": [scope.clone()],
        })
    };
    let mut function = role(
        "mayfly function",
        "The bootstrap function's identity: makes, watches and deletes the job's VMs in the resource group; reads and writes the job's containers.",
        vec![
            "Microsoft.Compute/virtualMachines/read",
            "Microsoft.Compute/virtualMachines/write",
            "Microsoft.Compute/virtualMachines/delete",
            "Microsoft.Compute/disks/write",
            "Microsoft.Compute/disks/delete",
            "Microsoft.Network/networkInterfaces/read",
            "Microsoft.Network/networkInterfaces/write",
            "Microsoft.Network/networkInterfaces/delete",
            "Microsoft.Network/networkInterfaces/join/action",
            "Microsoft.Network/virtualNetworks/subnets/join/action",
            "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action",
        ],
        true,
    );
    // The Blob trigger (an identity-based connection) keeps its receipts in queues.
    if let Some(data) = function["DataActions"].as_array_mut() {
        for a in [
            "Microsoft.Storage/storageAccounts/queueServices/queues/messages/read",
            "Microsoft.Storage/storageAccounts/queueServices/queues/messages/write",
            "Microsoft.Storage/storageAccounts/queueServices/queues/messages/delete",
            "Microsoft.Storage/storageAccounts/queueServices/queues/messages/process/action",
        ] {
            data.push(a.into());
        }
    }
    let nodes = role(
        "mayfly node",
        "The nodes' user-assigned identity: sees the job's VMs and deletes them (itself, the master's leftover workers); reads and writes the job's containers.",
        vec![
            "Microsoft.Compute/virtualMachines/read",
            "Microsoft.Compute/virtualMachines/delete",
            "Microsoft.Compute/disks/delete",
            "Microsoft.Network/networkInterfaces/delete",
        ],
        true,
    );
    let reaper = role(
        "mayfly reaper",
        "Who runs `mayfly reap --provider azure` on a schedule: lists and deletes expired VMs.",
        vec![
            "Microsoft.Compute/virtualMachines/read",
            "Microsoft.Compute/virtualMachines/delete",
            "Microsoft.Compute/disks/delete",
            "Microsoft.Network/networkInterfaces/delete",
        ],
        false,
    );
    let mut notes = vec![
        format!(
            "assign each role at {scope}; the data actions need the storage account's scope too (or the resource group's, if the account is in it)"
        ),
        format!("restrict the data actions to the job's containers with this role assignment condition: {condition}"),
        "the nodes' identity is the user-assigned identity named by `identity` (its client id in `identity_client_id`)"
            .to_owned(),
    ];
    if subscription.is_none() || group.is_none() {
        notes.push("set subscription_id and resource_group to fill in the scope".into());
    }
    if let Some(a) = node_artifact {
        notes.push(format!("the nodes read the node artifact {a}: its container needs the nodes' blobs/read"));
    }
    Ok(json!({ "function_role": function, "node_role": nodes, "reaper": reaper, "notes": notes }))
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
        let vm: compute::models::VirtualMachine = serde_json::from_value(body.clone()).unwrap();
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
        // The ARM operations this file calls, by their RBAC action.
        // The code above the tests only: the test's own strings must not count.
        let file = include_str!("lib.rs");
        let source = &file[..file.find("#[cfg(test)]").unwrap()];
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
