//! # The AWS provider
//!
//! A mayfly provider plugin for AWS: nodes are EC2 instances, credentials
//! come from STS (a job role, assumed for a bounded duration) or from the
//! instance profile, data lives on S3.
//!
//! Each launch is one `RunInstances` call per run of nodes of the same role
//! with consecutive names (`worker-1..worker-N`): the instances share their
//! user data, and each learns its name from its launch index. Instances are
//! tagged `mayfly:job`, `mayfly:role`, `mayfly:expires-at` (and their name or
//! name run), set to terminate (not stop) when their OS shuts down, and their
//! user data arms an OS-level dead-man switch at the deadline.
//!
//! Settings (`[provider]` keys): `region` (default: `AWS_REGION`, else
//! us-east-1), `endpoint_url` (an EC2/STS/S3/Lambda endpoint, e.g. an
//! emulator), `credentials_file` (an AWS shared credentials file for the
//! provider's own calls; default: the SDK's chain, i.e. the function's role
//! on Lambda and the instance profile on a node), `image_id`, `instance_type`
//! and `master_instance_type`, `subnet_id`, `security_group_ids`
//! (comma-separated; without it each job gets a group of its own that admits
//! only its nodes, deleted by `sweep` `sweep_after` its deadline, default
//! 5m), `instance_profile`, `role_arn` (the job role), `credential_ttl` (its
//! session length: 15m to 1h: nodes assume it with their instance profile's
//! role session, and STS caps role chaining at 1h), `bootstrap_limit` (at most Lambda's
//! 900 s), `max_nodes`, `node_artifact` (the `s3://` URL of the node artifact
//! `mayfly deploy aws` uploaded; else `node_binary`, where `mayfly` is on the
//! image), `instance_id` (the instance this process is, for tests; a node
//! asks IMDSv2), `imds_endpoint`, `api_timeout` (each AWS call, retries
//! included; default 30s), `event_job_url` and `event_prefix` (the job an S3
//! event runs), `spot` (workers on spot capacity, on demand when EC2 has none;
//! the master is always on demand).
//!
//! It imports the provider API, `mayfly-vm-kit` and the AWS SDK; it must not
//! import any crate of mayfly's core (`mayfly` loads it as a plugin).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::{
    Filter, IamInstanceProfileSpecification, Instance, InstanceInterruptionBehavior, InstanceMarketOptionsRequest,
    InstanceType, IpPermission, MarketType, ResourceType, ShutdownBehavior, SpotInstanceType, SpotMarketOptions, Tag,
    TagSpecification, UserIdGroupPair,
};
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
mod credentials;
mod deploy;
mod entrypoint;
mod events;
mod permissions;
mod prices;

pub use boot::*;
use compute::*;
#[cfg(test)]
use credentials::session_name;
pub use events::*;
pub use permissions::*;

const NAME: &str = "aws";
/// EC2's limit on user data, before base64.
pub const USER_DATA_LIMIT: usize = 16 * 1024;
/// Lambda's limit on an invocation.
pub const LAMBDA_LIMIT: Duration = Duration::from_secs(900);
/// The shortest session STS grants.
pub const MIN_SESSION: Duration = Duration::from_secs(900);
/// The longest session of a chained role (a role assumed with a role's credentials,
/// as the function's role and the instance profile are).
pub const CHAINED_SESSION_CAP: Duration = Duration::from_secs(3600);
/// The longest session STS gives (a role's maximum session duration at most).
pub const MAX_SESSION: Duration = Duration::from_secs(43_200);
/// The line of the user data that carries the node's launch, and the file
/// the user data writes on a real node (its presence allows the OS shutdown
/// fallback of `terminate_self`): as every VM provider's.
pub use mayfly_vm_kit::{NODE_LINE, NODE_MARKER};

fn fail(kind: ErrorKind, message: impl Into<String>) -> ProviderError {
    ProviderError::new(NAME, kind, message)
}

fn api_err(what: &str, e: impl std::fmt::Display) -> ProviderError {
    fail(ErrorKind::Unavailable, format!("{what}: {e}"))
}

struct Clients {
    ec2: aws_sdk_ec2::Client,
    lambda: aws_sdk_lambda::Client,
    sts: aws_sdk_sts::Client,
    config: aws_config::SdkConfig,
}

/// The AWS provider.
pub struct Aws {
    region: String,
    endpoint_url: Option<String>,
    credentials_file: Option<PathBuf>,
    image_id: Option<String>,
    master_type: String,
    worker_type: String,
    subnet_id: Option<String>,
    security_groups: Vec<String>,
    instance_profile: Option<String>,
    role_arn: Option<String>,
    credential_ttl: Duration,
    bootstrap_limit: Duration,
    max_nodes: u32,
    node_binary: String,
    node_artifact: Option<String>,
    instance_id: Option<String>,
    imds_endpoint: Option<String>,
    api_timeout: Duration,
    event_job_url: Option<String>,
    event_prefix: Option<String>,
    clients: OnceCell<Clients>,
    /// The jobs' security groups made or found so far.
    groups: tokio::sync::Mutex<BTreeMap<String, String>>,
    sweep_after: Duration,
    spot: bool,
    host: Arc<dyn Host>,
}

impl std::fmt::Debug for Aws {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aws")
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("role_arn", &self.role_arn)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Provider for Aws {
    fn create(settings: Settings, host: Arc<dyn Host>) -> Result<Self, ProviderError> {
        let mut s = settings.named(NAME);
        // As the AWS tools do: the setting, else the environment's (Lambda sets AWS_REGION).
        let region = match s.string("region")? {
            Some(r) => r,
            None => std::env::var("AWS_REGION")
                .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|_| "us-east-1".into()),
        };
        let endpoint_url = s.string("endpoint_url")?;
        let credentials_file = s.string("credentials_file")?.map(PathBuf::from);
        let image_id = s.string("image_id")?;
        let worker_type = s.string("instance_type")?.unwrap_or_else(|| "t3.medium".into());
        let master_type = s.string("master_instance_type")?.unwrap_or_else(|| worker_type.clone());
        let subnet_id = s.string("subnet_id")?;
        let security_groups = s
            .string("security_group_ids")?
            .map(|g| g.split(',').map(|x| x.trim().to_owned()).filter(|x| !x.is_empty()).collect())
            .unwrap_or_default();
        let instance_profile = s.string("instance_profile")?;
        let role_arn = s.string("role_arn")?;
        let credential_ttl = s.duration("credential_ttl", CHAINED_SESSION_CAP)?;
        let bootstrap_limit = s.duration("bootstrap_limit", LAMBDA_LIMIT)?;
        let max_nodes = s.u64("max_nodes", 100)?;
        let node_binary = s.string("node_binary")?.unwrap_or_else(|| "/usr/local/bin/mayfly".into());
        let node_artifact = s.string("node_artifact")?;
        let instance_id = s.string("instance_id")?;
        let imds_endpoint = s.string("imds_endpoint")?;
        let api_timeout = s.duration("api_timeout", Duration::from_secs(30))?;
        let event_job_url = s.string("event_job_url")?;
        let event_prefix = s.string("event_prefix")?;
        let sweep_after = s.duration("sweep_after", SWEEP_AFTER)?;
        let spot = s.bool("spot", false)?;
        s.finish()?;
        if let Some(url) = &node_artifact
            && (!url.starts_with("s3://") || url.len() <= 5)
        {
            return Err(fail(
                ErrorKind::Config,
                format!(
                    "`provider.node_artifact` {url:?}: expected s3://bucket/key (what `mayfly deploy aws` printed)"
                ),
            ));
        }
        if let Some(url) = &event_job_url
            && !url.starts_with("s3://")
        {
            return Err(fail(ErrorKind::Config, format!("`provider.event_job_url` {url:?}: expected s3://bucket/key")));
        }
        if role_arn.is_some() && !(MIN_SESSION..=MAX_SESSION).contains(&credential_ttl) {
            return Err(fail(
                ErrorKind::Config,
                format!(
                    "`provider.credential_ttl` is {}s: a job role's session must be 900s to 43200s (STS's range)",
                    credential_ttl.as_secs()
                ),
            ));
        }
        if role_arn.is_some() && credential_ttl > CHAINED_SESSION_CAP {
            // The nodes assume the job role with their instance profile's
            // credentials (a role session), and the function with its role's:
            // role chaining, which STS caps at 1 h.
            return Err(fail(
                ErrorKind::Config,
                format!(
                    "`provider.credential_ttl` is {}s, over the 3600s STS allows when a role session assumes the job role (role chaining: the nodes' instance profile and the function's role are role sessions); set it to 1h at most (core renews it before it expires)",
                    credential_ttl.as_secs()
                ),
            ));
        }
        if credential_ttl < MIN_SESSION && role_arn.is_none() {
            return Err(fail(ErrorKind::Config, "`provider.credential_ttl` must be at least 15m"));
        }
        if bootstrap_limit > LAMBDA_LIMIT || bootstrap_limit < Duration::from_secs(10) {
            return Err(fail(
                ErrorKind::Config,
                format!("`provider.bootstrap_limit` is {}s: Lambda allows 10s to 900s", bootstrap_limit.as_secs()),
            ));
        }
        let max_nodes = u32::try_from(max_nodes)
            .ok()
            .filter(|n| (2..=10_000).contains(n))
            .ok_or_else(|| fail(ErrorKind::Config, "`provider.max_nodes` must be between 2 and 10000"))?;
        if endpoint_url.as_deref().is_some_and(|u| !u.starts_with("http://") && !u.starts_with("https://")) {
            return Err(fail(ErrorKind::Config, "`provider.endpoint_url` must be an http:// or https:// URL"));
        }
        Ok(Aws {
            region,
            endpoint_url,
            credentials_file,
            image_id,
            master_type,
            worker_type,
            subnet_id,
            security_groups,
            instance_profile,
            role_arn,
            credential_ttl,
            bootstrap_limit,
            max_nodes,
            node_binary,
            node_artifact,
            instance_id,
            imds_endpoint,
            api_timeout,
            event_job_url,
            event_prefix,
            clients: OnceCell::new(),
            groups: Default::default(),
            sweep_after,
            spot,
            host,
        })
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            name: NAME.into(),
            limits: Limits::new(self.bootstrap_limit, self.credential_ttl, self.max_nodes),
            capabilities: Capabilities {
                entrypoint: Some("aws-lambda".into()),
                prices: Some(prices::LIVE_SOURCE.into()),
            },
            schemes: vec!["s3".into()],
            nodes: Some(prices::node_types(&self.master_type, &self.worker_type, &self.region)),
        }
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Vec<NodeInfo>, ProviderError> {
        self.info().limits.check_launch(NAME, request.nodes.len())?;
        let groups = match self.security_groups.is_empty() {
            true => vec![self.job_group(&request.job, request.expires_at).await?],
            false => self.security_groups.clone(),
        };
        let mut launched: Vec<NodeInfo> = Vec::new();
        for (launch, count) in plan_launch(&request) {
            match self.run(&launch, count, &groups).await {
                Ok(nodes) => launched.extend(nodes),
                Err(e) => {
                    // Nothing half-launched may stay.
                    let ids = launched.iter().map(|n| n.id.clone()).collect();
                    if let Err(t) = self.terminate_ids(ids, Duration::from_secs(60)).await {
                        self.host.log(Level::Error, &format!("aws: ending a failed launch: {t}"));
                    }
                    return Err(e);
                }
            }
        }
        self.host.log(Level::Info, &format!("aws: launched {} instance(s) for job {}", launched.len(), request.job));
        Ok(launched)
    }

    async fn list(&self, request: ListRequest) -> Result<Vec<NodeInfo>, ProviderError> {
        let by_job = match &request.job {
            Some(job) => Filter::builder().name("tag:mayfly:job").values(job).build(),
            None => Filter::builder().name("tag-key").values(vm_kit::tags::JOB).build(),
        };
        let mut nodes: Vec<NodeInfo> =
            self.describe(vec![by_job, state_filter()], vec![]).await?.iter().filter_map(node_of).collect();
        nodes.sort_by(|a, b| (&a.job, &a.node).cmp(&(&b.job, &b.node)));
        Ok(nodes)
    }

    async fn terminate(&self, request: TerminateRequest) -> Result<(), ProviderError> {
        let ids = request.nodes.iter().map(|n| n.id.clone()).collect();
        // EC2 has no gentle stop that mayfly uses: terminating is the end. The
        // grace only bounds how long to wait for it.
        self.terminate_ids(ids, Duration::from_millis(request.grace_ms).max(Duration::from_secs(30))).await
    }

    async fn identify(&self) -> Result<Option<NodeInfo>, ProviderError> {
        let Some(id) = self.my_instance().await else { return Ok(None) };
        Ok(self.describe(vec![], vec![id]).await?.iter().find_map(node_of))
    }

    async fn terminate_self(&self) -> Result<(), ProviderError> {
        let id = self
            .my_instance()
            .await
            .ok_or_else(|| fail(ErrorKind::Unsupported, "this process is not on an EC2 instance (no instance id)"))?;
        let c = self.clients().await?;
        let result = c.ec2.terminate_instances().instance_ids(&id).send().await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = api_err(&format!("TerminateInstances({id})"), aws_sdk_ec2::error::DisplayErrorContext(e));
                // On a real node the OS shutdown terminates the instance instead.
                let root = std::env::var("MAYFLY_ROOT").unwrap_or_default();
                if std::path::Path::new(&format!("{root}{NODE_MARKER}")).exists() {
                    self.host.log(Level::Error, &format!("{e}; shutting the OS down instead"));
                    let _ = std::process::Command::new("shutdown").args(["-h", "now"]).status();
                }
                Err(e)
            }
        }
    }

    async fn credentials(&self, request: CredentialRequest) -> Result<Credential, ProviderError> {
        self.issue_credentials(request).await
    }

    async fn object_store(&self, url: String) -> Result<StoreConfig, ProviderError> {
        if !url.starts_with("s3://") {
            return Err(fail(ErrorKind::Unsupported, format!("{url}: the aws provider serves s3:// URLs")));
        }
        let mut options = BTreeMap::from([("aws_region".to_owned(), self.region.clone())]);
        if let Some(e) = &self.endpoint_url {
            options.insert("aws_endpoint".into(), e.clone());
            if e.starts_with("http://") {
                options.insert("aws_allow_http".into(), "true".into());
            }
        }
        Ok(StoreConfig { scheme: "s3".into(), options })
    }

    async fn adapt_event(&self, event: serde_json::Value) -> Result<BootstrapRequest, ProviderError> {
        adapt_event(&event, self.event_job_url.as_deref(), self.event_prefix.as_deref())
    }

    async fn permissions(
        &self,
        request: mayfly_provider_api::PermissionsRequest,
    ) -> Result<serde_json::Value, ProviderError> {
        policies(
            &request.locations,
            self.role_arn.as_deref(),
            self.instance_profile.as_deref(),
            self.event_job_url.as_deref(),
            self.node_artifact.as_deref(),
            self.spot,
        )
    }

    async fn sweep(&self) -> Result<Vec<String>, ProviderError> {
        self.sweep_groups().await
    }

    async fn deploy(&self, request: mayfly_provider_api::DeployRequest) -> Result<serde_json::Value, ProviderError> {
        deploy::deploy(self, request).await
    }

    async fn prices(
        &self,
        request: mayfly_provider_api::PricesRequest,
    ) -> Result<mayfly_provider_api::PriceList, ProviderError> {
        prices::fetch(self, request).await
    }

    async fn serve(&self) -> Result<(), ProviderError> {
        entrypoint::serve(self).await
    }
}

/// The tag every instance of a job carries: what the EC2 statements are bound to.
const JOB_TAG: &str = vm_kit::tags::JOB;

mayfly_provider_api::export_provider!(Aws);

#[cfg(test)]
mod tests {
    use super::*;
    use mayfly_vm_kit::artifact_hash;

    fn s3_record(key: &str, sequencer: &str) -> serde_json::Value {
        serde_json::json!({
            "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "data"}, "object": {"key": key, "sequencer": sequencer}}
        })
    }

    /// Every `name()` call on an EC2 or STS client in the provider's own calls.
    fn calls_in_this_file() -> Vec<String> {
        calls_on(
            &[include_str!("lib.rs"), include_str!("compute.rs"), include_str!("credentials.rs")].concat(),
            &[".ec2", ".sts"],
        )
    }

    /// Every `name()` call in `source` on one of the `clients` (`.ec2`, `lambda`).
    fn calls_on(source: &str, clients: &[&str]) -> Vec<String> {
        let mut calls: Vec<String> = clients
            .iter()
            .flat_map(|client| source.split(client).skip(1))
            .filter_map(|rest| {
                let rest = rest.trim_start().strip_prefix('.')?;
                let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                rest[name.len()..].starts_with("()").then_some(name)
            })
            .collect();
        calls.sort();
        calls.dedup();
        calls
    }

    #[test]
    fn the_policies_cover_every_call_and_no_more() {
        let locations = vec!["s3://data/in".to_owned(), "s3://work/out/".to_owned(), "s3://work/state".to_owned()];
        let p =
            policies(&locations, None, Some("mayfly-node"), None, Some("s3://dist/mayfly/node.tar.gz"), false).unwrap();
        let actions = |doc: &serde_json::Value| -> Vec<String> {
            let mut all: Vec<String> = doc["Statement"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|s| match &s["Action"] {
                    serde_json::Value::String(a) => vec![a.clone()],
                    v => v.as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect(),
                })
                .collect();
            all.sort();
            all.dedup();
            all
        };
        // The SDK calls this provider makes, by IAM action name.
        let iam_name = |call: &str| -> String {
            let (service, op) = match call {
                "assume_role" => ("sts", call),
                _ => ("ec2", call),
            };
            let op: String = op.split('_').map(|w| w[..1].to_uppercase() + &w[1..]).collect();
            format!("{service}:{op}")
        };
        let calls = calls_in_this_file();
        assert_eq!(
            calls,
            vec![
                "assume_role",
                "authorize_security_group_ingress",
                "create_security_group",
                "delete_security_group",
                "describe_instances",
                "describe_security_groups",
                "describe_subnets",
                "run_instances",
                "terminate_instances"
            ],
            "a new AWS call needs its permission in `policies`"
        );
        let function = actions(&p["function_role"]);
        for call in &calls {
            if call != "assume_role" {
                assert!(function.contains(&iam_name(call)), "{call} missing from {function:?}");
            }
        }
        let nodes = actions(&p["node_role"]);
        assert!(
            !nodes.iter().any(|a| a == "ec2:RunInstances" || a == "iam:PassRole" || a.contains("SecurityGroup")),
            "nodes launch nothing and open nothing: {nodes:?}"
        );
        // S3: the data path's calls, bound to the prefixes.
        for a in ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"] {
            assert!(nodes.contains(&a.to_owned()) && function.contains(&a.to_owned()), "{a}");
        }
        let text = p.to_string();
        assert!(text.contains("arn:aws:s3:::data/in*") && text.contains("arn:aws:s3:::work/out*"), "{text}");
        assert!(!text.contains("arn:aws:s3:::*"), "no bucket is open to all: {text}");
        // Terminating is bound to the job tag.
        assert!(text.contains("aws:ResourceTag/mayfly:job"), "{text}");

        // With a job role, S3 is that role's; the others only assume it.
        let p = policies(&locations, Some("arn:aws:iam::1:role/job"), Some("mayfly-node"), None, None, false).unwrap();
        assert!(actions(&p["node_role"]).contains(&"sts:AssumeRole".to_owned()));
        assert!(!actions(&p["node_role"]).iter().any(|a| a.starts_with("s3:")));
        assert!(actions(&p["job_role"]).contains(&"s3:PutObject".to_owned()));

        // `mayfly deploy`'s Lambda calls are the deployer's.
        let lambda_calls = calls_on(include_str!("deploy.rs"), &["lambda"]);
        assert_eq!(lambda_calls.len(), 5, "{lambda_calls:?}");
        let p =
            policies(&locations, None, Some("mayfly-node"), None, Some("s3://dist/mayfly/node.tar.gz"), false).unwrap();
        let deployer = actions(&p["deployer"]);
        for call in &lambda_calls {
            let op: String = call.split('_').map(|w| w[..1].to_uppercase() + &w[1..]).collect();
            assert!(deployer.contains(&format!("lambda:{op}")), "{call} missing from {deployer:?}");
        }
        assert!(deployer.contains(&"lambda:TagResource".to_owned()), "CreateFunction with tags needs TagResource");
        let text = p.to_string();
        assert!(text.contains("arn:aws:s3:::dist/mayfly/*"), "{text}");
        assert!(actions(&p["node_role"]).contains(&"s3:GetObject".to_owned()));
        assert!(text.contains("\"arn:aws:s3:::dist/mayfly/node-*\""), "the nodes read the artifacts only: {text}");

        let e = policies(&["/local/dir".to_owned()], None, None, None, None, false).unwrap_err();
        assert!(e.message.contains("s3:// locations"), "{e}");
        assert!(policies(&[], None, None, None, None, false).unwrap_err().message.contains("no locations"));
    }

    #[test]
    fn events_become_bootstrap_requests_or_clear_errors() {
        let job = "s3://conf/jobs/wc.toml";
        let direct = adapt_event(&serde_json::json!({"job_url": job}), None, None).unwrap();
        assert_eq!((direct.job.as_str(), direct.job_url.as_deref()), ("", Some(job)));
        let both = adapt_event(&serde_json::json!({"job": "x", "job_url": job}), None, None).unwrap_err();
        assert!(both.message.contains("one of them"), "{both}");

        let event = serde_json::json!({"Records": [s3_record("incoming/batch+7/_READY", "0055AED6DC")]});
        let r = adapt_event(&event, Some(job), Some("incoming/")).unwrap();
        assert_eq!(r.job_url.as_deref(), Some(job));
        assert_eq!(r.overrides["MAYFLY_INPUT"], "s3://data/incoming/batch 7");
        assert_eq!(r.overrides["MAYFLY_JOB_ID"], "incoming-batch-7-0055AED6DC", "the same event, the same id");

        let e = adapt_event(&event, None, None).unwrap_err();
        assert!(e.message.contains("no `event_job_url` setting"), "{e}");
        let e = adapt_event(&event, Some(job), Some("other/")).unwrap_err();
        assert!(e.message.contains("not under the configured prefix"), "{e}");
        let long = format!("{}/_READY", "p".repeat(150));
        let a = adapt_event(&serde_json::json!({"Records": [s3_record(&long, "0A")]}), Some(job), None).unwrap();
        let b = adapt_event(&serde_json::json!({"Records": [s3_record(&long, "0B")]}), Some(job), None).unwrap();
        assert!(a.overrides["MAYFLY_JOB_ID"].len() <= 100 && a.overrides["MAYFLY_JOB_ID"].ends_with("-0A"));
        assert_ne!(a.overrides["MAYFLY_JOB_ID"], b.overrides["MAYFLY_JOB_ID"], "long prefixes keep their sequencer");
        let top = serde_json::json!({"Records": [s3_record("_READY", "01")]});
        assert!(adapt_event(&top, Some(job), None).unwrap_err().message.contains("no prefix"));
        let mixed = serde_json::json!({"Records": [s3_record("a/x", "01"), s3_record("b/y", "02")]});
        assert!(adapt_event(&mixed, Some(job), None).unwrap_err().message.contains("different prefixes"));
        let removed = serde_json::json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectRemoved:Delete"}]});
        assert!(adapt_event(&removed, Some(job), None).unwrap_err().message.contains("object-created"));
    }
    use mayfly_provider_api::NodeSpec;

    fn spec(node: &str, role: Role) -> NodeSpec {
        NodeSpec {
            node: node.into(),
            role,
            args: ["node", "--role", &role.to_string(), "--node", node, "--dir", "/s/j"].map(String::from).to_vec(),
        }
    }

    fn request(nodes: Vec<NodeSpec>) -> LaunchRequest {
        LaunchRequest { job: "j".into(), state: "/s/j".into(), expires_at: now_ms() + 600_000, nodes }
    }

    #[test]
    fn consecutive_workers_are_one_call_and_each_learns_its_name() {
        let runs = plan_launch(&request(vec![
            spec("master", Role::Master),
            spec("worker-1", Role::Worker),
            spec("worker-2", Role::Worker),
            spec("worker-3", Role::Worker),
            spec("worker-7", Role::Worker),
        ]));
        let shape: Vec<(Option<String>, String, u64, u32)> =
            runs.iter().map(|(l, n)| (l.node.clone(), l.prefix.clone(), l.first, *n)).collect();
        assert_eq!(
            shape,
            vec![
                (Some("master".into()), String::new(), 0, 1),
                (None, "worker-".into(), 1, 3),
                (None, "worker-".into(), 7, 1)
            ]
        );
        let (workers, _) = &runs[1];
        assert_eq!(workers.name(2), "worker-3");
        assert_eq!(workers.args_for(1), spec("worker-2", Role::Worker).args);
    }

    #[test]
    fn session_names_keep_what_sts_allows_and_fit() {
        assert_eq!(session_name("a_b", "worker-1"), "mayfly-a_b-worker-1");
        assert_ne!(session_name("a_b", "worker-1"), session_name("ab", "worker-1"));
        assert_eq!(session_name("j/ob", "w 1"), "mayfly-job-w1");
        assert_eq!(session_name(&"x".repeat(100), "worker-1").len(), 64);
    }

    #[test]
    fn user_data_carries_the_launch_and_stays_under_ec2s_limit() {
        let runs = plan_launch(&request(vec![spec("worker-1", Role::Worker), spec("worker-2", Role::Worker)]));
        let (launch, count) = &runs[0];
        let on_image =
            Boot { binary: "/usr/local/bin/mayfly", artifact: None, region: "eu-west-1", endpoint_url: None };
        let hash = "ab".repeat(32);
        let url = format!("s3://b/mayfly/node-{hash}.tar.gz");
        let fetched = Boot { artifact: Some(&url), ..on_image };
        let script = user_data(launch, *count, fetched, Duration::from_secs(60)).unwrap();
        assert!(script.contains(&format!("aws s3 cp --only-show-errors --region 'eu-west-1' '{url}'")), "{script}");
        assert!(script.contains(&format!("| cut -c1-64)\" = {hash} ]")), "the hash is checked: {script}");
        assert_eq!(artifact_hash("s3://b/node.tar.gz"), None);
        assert!(script.contains("B=\"$D/mayfly\""), "{script}");
        let plain = user_data(launch, *count, on_image, Duration::from_secs(60)).unwrap();
        assert!(!plain.contains("aws s3 cp") && plain.contains("B='/usr/local/bin/mayfly'"), "{plain}");
        assert_eq!(NodeLaunch::from_user_data(&script).as_ref(), Some(launch));
        assert!(script.contains(&format!("(( ({} + 60 - $(date +%s)", launch.expires_at / 1000)), "{script}");
        assert!(script.contains("NODE='worker-'\"$((1 + I))\""), "{script}");
        assert!(script.contains("'--node' \"$NODE\"") && script.contains("; poweroff'"), "{script}");
        // The script is valid sh.
        let file = std::env::temp_dir().join(format!("mayfly-user-data-{}.sh", std::process::id()));
        std::fs::write(&file, &script).unwrap();
        for script in [&script, &plain] {
            std::fs::write(&file, script).unwrap();
            let syntax = std::process::Command::new("sh").arg("-n").arg(&file).output().unwrap();
            assert!(syntax.status.success(), "{}\n{script}", String::from_utf8_lossy(&syntax.stderr));
        }
        let _ = std::fs::remove_file(&file);
        let mut big = launch.clone();
        big.args.push("x".repeat(USER_DATA_LIMIT));
        let e = user_data(&big, 1, on_image, Duration::ZERO).unwrap_err();
        assert!(e.message.contains("over EC2's 16384-byte limit"), "{e}");
    }

    #[test]
    fn plans_are_priced_from_the_instance_types_the_settings_select() {
        let make = |v: serde_json::Value| {
            let serde_json::Value::Object(map) = v else { unreachable!() };
            Aws::create(Settings::new("?", map), Arc::new(mayfly_provider_api::NoHost)).unwrap().info().nodes.unwrap()
        };
        let n = make(serde_json::json!({ "instance_type": "c5.large", "master_instance_type": "m5.large" }));
        assert_eq!((n.master.as_str(), n.worker.as_str()), ("m5.large", "c5.large"));
        assert_eq!((n.prices["m5.large"], n.prices["c5.large"]), (0.096, 0.085));
        assert!(n.prices_source.contains("2025-06"), "a dated source: {}", n.prices_source);
        let n = make(serde_json::json!({}));
        assert_eq!((n.master.as_str(), n.worker.as_str()), ("t3.medium", "t3.medium"), "the defaults");
    }

    #[test]
    fn sessions_outside_what_sts_allows_are_refused_before_any_call() {
        let make = |v: serde_json::Value| {
            let serde_json::Value::Object(map) = v else { unreachable!() };
            Aws::create(Settings::new("?", map), Arc::new(mayfly_provider_api::NoHost))
        };
        let role = "arn:aws:iam::123456789012:role/job";
        let e = make(serde_json::json!({ "role_arn": role, "credential_ttl": "13h" })).unwrap_err();
        assert!(e.message.contains("is 46800s: a job role's session must be 900s to 43200s"), "{e}");
        // In STS's range, but over role chaining's cap, which the nodes' assumption always is.
        let e = make(serde_json::json!({ "role_arn": role, "credential_ttl": "2h" })).unwrap_err();
        assert!(e.message.contains("is 7200s, over the 3600s STS allows when a role session assumes"), "{e}");
        let e = make(serde_json::json!({ "role_arn": role, "credential_ttl": "5m" })).unwrap_err();
        assert!(e.message.contains("is 300s"), "{e}");
        assert!(make(serde_json::json!({ "role_arn": role, "credential_ttl": "1h" })).is_ok());
        let e = make(serde_json::json!({ "bootstrap_limit": "20m" })).unwrap_err();
        assert!(e.message.contains("Lambda allows 10s to 900s"), "{e}");
        let e = make(serde_json::json!({ "endpoint_url": "localhost:5000" })).unwrap_err();
        assert!(e.message.contains("http:// or https://"), "{e}");
    }
}
