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

mod deploy;
mod lambda;
mod prices;

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

/// What the user data of a launch carries (the line after [`NODE_LINE`]):
/// enough for a node, or a test's hypervisor, to start `mayfly`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLaunch {
    /// The job.
    pub job: String,
    /// The nodes' role.
    pub role: Role,
    /// The name of a single node, or (`None`) `prefix` + (`first` + launch index).
    pub node: Option<String>,
    /// A run's name prefix.
    pub prefix: String,
    /// A run's first number.
    pub first: u64,
    /// `mayfly`'s arguments, with `{node}` for the node's name.
    pub args: Vec<String>,
    /// The job's deadline.
    pub expires_at: u64,
}

impl NodeLaunch {
    /// The name of the instance at `launch_index`.
    pub fn name(&self, launch_index: u64) -> String {
        match &self.node {
            Some(n) => n.clone(),
            None => format!("{}{}", self.prefix, self.first + launch_index),
        }
    }

    /// The arguments of the instance at `launch_index`.
    pub fn args_for(&self, launch_index: u64) -> Vec<String> {
        let name = self.name(launch_index);
        self.args.iter().map(|a| if a == "{node}" { name.clone() } else { a.clone() }).collect()
    }

    /// Reads it back from user data.
    pub fn from_user_data(user_data: &str) -> Option<NodeLaunch> {
        vm_kit::read_launch(user_data)
    }
}

/// Splits `worker-12` into (`worker-`, 12).
fn split_number(name: &str) -> Option<(&str, u64)> {
    let digits = name.len() - name.bytes().rev().take_while(u8::is_ascii_digit).count();
    let (prefix, number) = name.split_at(digits);
    if number.is_empty() || number.starts_with('0') && number.len() > 1 {
        return None;
    }
    Some((prefix, number.parse().ok()?))
}

/// Groups the nodes of a launch into runs that one `RunInstances` call can
/// start: same role, consecutive numbers after the same prefix, and the same
/// arguments but for the name.
pub fn plan_launch(request: &LaunchRequest) -> Vec<(NodeLaunch, u32)> {
    let mut runs: Vec<(NodeLaunch, u32)> = Vec::new();
    for spec in &request.nodes {
        let args: Vec<String> =
            spec.args.iter().map(|a| if *a == spec.node { "{node}".to_owned() } else { a.clone() }).collect();
        if let Some((last, count)) = runs.last_mut()
            && last.node.is_none()
            && last.role == spec.role
            && last.args == args
            && split_number(&spec.node) == Some((last.prefix.as_str(), last.first + u64::from(*count)))
        {
            *count += 1;
            continue;
        }
        let (prefix, first, node) = match split_number(&spec.node) {
            Some((prefix, first)) => (prefix.to_owned(), first, None),
            None => (String::new(), 0, Some(spec.node.clone())),
        };
        runs.push((
            NodeLaunch {
                job: request.job.clone(),
                role: spec.role,
                node,
                prefix,
                first,
                args,
                expires_at: request.expires_at,
            },
            1,
        ));
    }
    runs
}

/// How a node gets `mayfly`: on the image already (`binary`), or from the
/// node artifact `mayfly package` made and `mayfly deploy` uploaded
/// (`artifact`, an `s3://` URL read with the instance profile by the image's
/// AWS CLI, as on Amazon Linux 2023).
#[derive(Debug, Clone, Copy)]
pub struct Boot<'a> {
    /// `mayfly`'s path on the image, when there is no artifact.
    pub binary: &'a str,
    /// The node artifact (a gzipped tar of `mayfly` and the plugin).
    pub artifact: Option<&'a str>,
    /// The region of the artifact's bucket.
    pub region: &'a str,
    /// An S3 endpoint other than AWS's (an emulator).
    pub endpoint_url: Option<&'a str>,
}

/// The user data of a launch: a shell script that marks the machine as a
/// mayfly node, arms the OS dead-man switch (shutdown, which terminates the
/// instance, `grace` after the deadline, counted from boot), finds the node's
/// name from its launch index (IMDSv2, retried; no index: power off), fetches
/// the node artifact (if any; retried, else power off), and runs `mayfly` in
/// the background with its output in a log file, powering the machine off
/// when it ends, whatever `terminate_self` managed.
///
/// On EC2, `MAYFLY_ROOT` and `MAYFLY_IMDS` are unset: the files are under `/`
/// and the metadata service is EC2's. A test's hypervisor sets them to run
/// the same script in a directory of its own against its own IMDS.
pub fn user_data(launch: &NodeLaunch, names: u32, boot: Boot<'_>, grace: Duration) -> Result<String, ProviderError> {
    let line = vm_kit::launch_line(launch).map_err(|e| fail(ErrorKind::Other, e.to_string()))?;
    let quoted: Vec<String> = launch.args.iter().map(|a| shell_quote(a)).collect();
    let name = match &launch.node {
        Some(n) => shell_quote(n),
        None => format!("{}\"$(({} + I))\"", shell_quote(&launch.prefix), launch.first),
    };
    let artifact = boot.artifact.map(|url| {
        let endpoint = boot.endpoint_url.map(|e| format!(" --endpoint-url {}", shell_quote(e))).unwrap_or_default();
        vm_kit::boot::Artifact {
            url,
            read_with: "the instance profile",
            download: format!(
                "aws s3 cp --only-show-errors --region {}{endpoint} {} \"$D/node.tar.gz\"",
                shell_quote(boot.region),
                shell_quote(url)
            ),
            give_up: ("powering off", "poweroff"),
        }
    });
    let written_by = format!("mayfly-provider-aws ({names} instance(s))");
    let header = vm_kit::boot::Header {
        written_by: &written_by,
        job: &launch.job,
        launch_line: &line,
        export_root: false,
        more_dirs: &[],
    };
    let script = format!(
        "{header}\
         # The dead-man switch: whatever happens, the OS shuts down (and the instance is\n\
         # terminated) {grace_s}s after the job's deadline.\n\
         M=$(( ({expires_s} + {grace_s} - $(date +%s) + 59) / 60 )); [ \"$M\" -lt 1 ] && M=1\n\
         shutdown -h +\"$M\" >/dev/null 2>&1 &\n\
         md() {{ curl -sf --retry 5 --retry-connrefused --connect-timeout 2 -H \"X-aws-ec2-metadata-token: $T\" \"$IMDS/latest/meta-data/$1\"; }}\n\
         T=$(curl -sf --retry 5 --retry-connrefused --connect-timeout 2 -X PUT \"$IMDS/latest/api/token\" -H 'X-aws-ec2-metadata-token-ttl-seconds: 600')\n\
         I=$(md ami-launch-index)\n\
         case \"$I\" in ''|*[!0-9]*) echo 'mayfly: no launch index from IMDSv2; powering off' >&2; poweroff; exit 1;; esac\n\
         NODE={name}\n\
         # The master serves the job's nodes on the instance's private address (over TLS).\n\
         MAYFLY_LISTEN=$(md local-ipv4); export MAYFLY_LISTEN\n\
         {log}{fetch}{run}",
        log = vm_kit::boot::NODE_LOG,
        header = vm_kit::boot::header(&header),
        fetch = vm_kit::boot::fetch(boot.binary, artifact.as_ref()),
        run = vm_kit::boot::run(&quoted.join(" ").replace("'{node}'", "\"$NODE\""), "poweroff"),
        expires_s = launch.expires_at / 1000,
        grace_s = grace.as_secs(),
    );
    if script.len() > USER_DATA_LIMIT {
        return Err(fail(
            ErrorKind::Config,
            format!(
                "the user data of {names} node(s) is {} bytes, over EC2's {USER_DATA_LIMIT}-byte limit; shorten the paths",
                script.len()
            ),
        ));
    }
    Ok(script)
}

/// An STS role session name for a node: `[\w+=,.@-]`, 2 to 64 characters.
fn session_name(job: &str, node: &str) -> String {
    format!("mayfly-{job}-{node}")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(*c))
        .take(64)
        .collect()
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

fn tag(key: &str, value: impl Into<String>) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn tag_of<'a>(i: &'a Instance, key: &str) -> Option<&'a str> {
    i.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// The node an instance is, from its tags and launch index.
fn node_of(i: &Instance) -> Option<NodeInfo> {
    let job = tag_of(i, vm_kit::tags::JOB)?.to_owned();
    let role = match tag_of(i, vm_kit::tags::ROLE)? {
        "master" => Role::Master,
        _ => Role::Worker,
    };
    let node = match tag_of(i, vm_kit::tags::NODE) {
        Some(n) => n.to_owned(),
        None => {
            let prefix = tag_of(i, "mayfly:node-prefix")?;
            let first: u64 = tag_of(i, "mayfly:node-first")?.parse().ok()?;
            format!("{prefix}{}", first + i.ami_launch_index().unwrap_or(0) as u64)
        }
    };
    Some(NodeInfo {
        node,
        role,
        job,
        id: i.instance_id()?.to_owned(),
        expires_at: tag_of(i, vm_kit::tags::EXPIRES_AT).and_then(|t| t.parse().ok()).unwrap_or(0),
        launched_at: i.launch_time().map(|t| t.secs().max(0) as u64 * 1000).unwrap_or(0),
        process: None,
    })
}

/// States of an instance that still exists and may bill (shutting-down and
/// terminated do not).
const ALIVE: [&str; 4] = ["pending", "running", "stopping", "stopped"];

impl Aws {
    async fn clients(&self) -> Result<&Clients, ProviderError> {
        self.clients
            .get_or_try_init(|| async {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(self.region.clone()))
                    .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(5))
                    .timeout_config(
                        aws_config::timeout::TimeoutConfig::builder()
                            .connect_timeout(Duration::from_secs(3))
                            .operation_attempt_timeout(self.api_timeout / 3)
                            .operation_timeout(self.api_timeout)
                            .build(),
                    );
                if let Some(url) = &self.endpoint_url {
                    loader = loader.endpoint_url(url);
                }
                if let Some(file) = &self.credentials_file {
                    use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
                    let files = EnvConfigFiles::builder().with_file(EnvConfigFileKind::Credentials, file).build();
                    loader = loader.credentials_provider(
                        aws_config::profile::ProfileFileCredentialsProvider::builder().profile_files(files).build(),
                    );
                }
                let config = loader.load().await;
                Ok(Clients {
                    ec2: aws_sdk_ec2::Client::new(&config),
                    lambda: aws_sdk_lambda::Client::new(&config),
                    sts: aws_sdk_sts::Client::new(&config),
                    config,
                })
            })
            .await
    }

    fn imds(&self) -> Result<aws_config::imds::Client, ProviderError> {
        let mut b = aws_config::imds::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(2))
            .max_attempts(2);
        if let Some(e) = &self.imds_endpoint {
            b = b.endpoint(e).map_err(|e| fail(ErrorKind::Config, format!("`provider.imds_endpoint`: {e}")))?;
        }
        Ok(b.build())
    }

    /// This process's instance id: the setting, or IMDSv2 (`None` off EC2).
    async fn my_instance(&self) -> Option<String> {
        if let Some(id) = &self.instance_id {
            return Some(id.clone());
        }
        let imds = self.imds().ok()?;
        imds.get("/latest/meta-data/instance-id").await.ok().map(|s| s.as_ref().to_owned())
    }

    async fn describe(&self, filters: Vec<Filter>, ids: Vec<String>) -> Result<Vec<Instance>, ProviderError> {
        let c = self.clients().await?;
        let mut pages = c
            .ec2
            .describe_instances()
            .set_filters(Some(filters))
            .set_instance_ids(if ids.is_empty() { None } else { Some(ids) })
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| api_err("DescribeInstances", aws_sdk_ec2::error::DisplayErrorContext(e)))?;
            out.extend(page.reservations().iter().flat_map(|r| r.instances().iter().cloned()));
        }
        Ok(out)
    }

    async fn run(&self, launch: &NodeLaunch, count: u32, groups: &[String]) -> Result<Vec<NodeInfo>, ProviderError> {
        let c = self.clients().await?;
        let image = self.image_id.as_deref().ok_or_else(|| {
            fail(ErrorKind::Config, "`provider.image_id` is not set: the AMI the nodes boot (with mayfly installed)")
        })?;
        let boot = Boot {
            binary: &self.node_binary,
            artifact: self.node_artifact.as_deref(),
            region: &self.region,
            endpoint_url: self.endpoint_url.as_deref(),
        };
        let script = user_data(launch, count, boot, Duration::from_secs(60))?;
        let kind = if launch.role == Role::Master { &self.master_type } else { &self.worker_type };
        let mut tags = vec![
            tag(vm_kit::tags::JOB, &launch.job),
            tag(vm_kit::tags::ROLE, launch.role.to_string()),
            tag(vm_kit::tags::EXPIRES_AT, launch.expires_at.to_string()),
            tag("Name", format!("mayfly {} {}", launch.job, launch.name(0))),
        ];
        match &launch.node {
            Some(n) => tags.push(tag(vm_kit::tags::NODE, n)),
            None => {
                tags.push(tag("mayfly:node-prefix", &launch.prefix));
                tags.push(tag("mayfly:node-first", launch.first.to_string()));
            }
        }
        let spec = TagSpecification::builder().resource_type(ResourceType::Instance).set_tags(Some(tags)).build();
        let mut attempt = 0;
        // Workers on spot capacity when asked (the master, which the job cannot
        // lose cheaply, always on demand); no spot capacity: on demand.
        let mut spot = self.spot && launch.role == Role::Worker;
        loop {
            let mut call = c
                .ec2
                .run_instances()
                .image_id(image)
                .instance_type(InstanceType::from(kind.as_str()))
                .min_count(count as i32)
                .max_count(count as i32)
                .user_data(base64::engine::general_purpose::STANDARD.encode(&script))
                .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
                .tag_specifications(spec.clone())
                .set_subnet_id(self.subnet_id.clone())
                .set_security_group_ids(Some(groups.to_vec()));
            if let Some(profile) = &self.instance_profile {
                call = call.iam_instance_profile(IamInstanceProfileSpecification::builder().name(profile).build());
            }
            if spot {
                // A one-time request: an interrupted instance is terminated (a lost
                // worker, whose leases expire), never stopped or hibernated.
                let options = SpotMarketOptions::builder()
                    .spot_instance_type(SpotInstanceType::OneTime)
                    .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                    .build();
                call = call.instance_market_options(
                    InstanceMarketOptionsRequest::builder().market_type(MarketType::Spot).spot_options(options).build(),
                );
            }
            match call.send().await {
                Ok(out) => {
                    // Known from the launch itself, not from tags the answer may lack.
                    let nodes: Vec<NodeInfo> = out
                        .instances()
                        .iter()
                        .filter_map(|i| {
                            Some(NodeInfo {
                                node: launch.name(i.ami_launch_index().unwrap_or(0).max(0) as u64),
                                role: launch.role,
                                job: launch.job.clone(),
                                id: i.instance_id()?.to_owned(),
                                expires_at: launch.expires_at,
                                launched_at: now_ms(),
                                process: None,
                            })
                        })
                        .collect();
                    if nodes.len() != count as usize {
                        let ids = nodes.iter().map(|n| n.id.clone()).collect();
                        let _ = self.terminate_ids(ids, Duration::from_secs(60)).await;
                        return Err(fail(
                            ErrorKind::Unavailable,
                            format!("RunInstances started {} of the {count} instances asked for", nodes.len()),
                        ));
                    }
                    return Ok(nodes);
                }
                Err(e) => {
                    let code = e.as_service_error().and_then(|s| s.meta().code()).unwrap_or_default().to_owned();
                    if spot && SPOT_UNAVAILABLE.contains(&code.as_str()) {
                        self.host.log(
                            Level::Warn,
                            &format!("aws: no spot capacity for {count} {kind} ({code}); launching them on demand"),
                        );
                        spot = false;
                        continue;
                    }
                    let capacity = matches!(
                        code.as_str(),
                        "InsufficientInstanceCapacity" | "InsufficientCapacity" | "RequestLimitExceeded"
                    );
                    attempt += 1;
                    if !capacity || attempt >= 4 {
                        return Err(api_err(
                            &format!("RunInstances ({count} {kind} for {})", launch.name(0)),
                            aws_sdk_ec2::error::DisplayErrorContext(e),
                        ));
                    }
                    self.host
                        .log(Level::Warn, &format!("aws: no capacity yet for {kind}; retrying (attempt {attempt})"));
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
            }
        }
    }

    /// The security group of a job's nodes (`mayfly-<job>`, in the subnet's
    /// VPC or the default one): TCP from its own members only, so the master's
    /// port is open to the job's workers and to nothing else; all egress (S3,
    /// STS, EC2). Made at the job's first launch, found again at the next (the
    /// workers', a resumed job's master).
    async fn job_group(&self, job: &str, expires_at: u64) -> Result<String, ProviderError> {
        let mut known = self.groups.lock().await;
        if let Some(id) = known.get(job) {
            return Ok(id.clone());
        }
        let c = self.clients().await?;
        let name = format!("mayfly-{job}");
        let vpc = match &self.subnet_id {
            Some(subnet) => {
                let out = c.ec2.describe_subnets().subnet_ids(subnet).send().await.map_err(|e| {
                    api_err(&format!("DescribeSubnets({subnet})"), aws_sdk_ec2::error::DisplayErrorContext(e))
                })?;
                out.subnets().first().and_then(|s| s.vpc_id()).map(str::to_owned)
            }
            None => None,
        };
        let find = || async {
            let mut filters = vec![Filter::builder().name("group-name").values(&name).build()];
            if let Some(vpc) = &vpc {
                filters.push(Filter::builder().name("vpc-id").values(vpc).build());
            }
            let out = c
                .ec2
                .describe_security_groups()
                .set_filters(Some(filters))
                .send()
                .await
                .map_err(|e| api_err("DescribeSecurityGroups", aws_sdk_ec2::error::DisplayErrorContext(e)))?;
            Ok::<_, ProviderError>(out.security_groups().first().and_then(|g| g.group_id()).map(str::to_owned))
        };
        let id = match find().await? {
            Some(id) => id,
            None => {
                let tags =
                    vec![tag(JOB_TAG, job), tag(vm_kit::tags::EXPIRES_AT, expires_at.to_string()), tag("Name", &name)];
                let spec =
                    TagSpecification::builder().resource_type(ResourceType::SecurityGroup).set_tags(Some(tags)).build();
                let made = c
                    .ec2
                    .create_security_group()
                    .group_name(&name)
                    .description(format!("mayfly job {job}: its nodes reach each other, nothing else reaches them"))
                    .set_vpc_id(vpc.clone())
                    .tag_specifications(spec)
                    .send()
                    .await;
                match made {
                    Ok(out) => out
                        .group_id()
                        .map(str::to_owned)
                        .ok_or_else(|| fail(ErrorKind::Unavailable, "CreateSecurityGroup answered no group id"))?,
                    // Another launch of the job made it meanwhile.
                    Err(e) if e.as_service_error().and_then(|s| s.meta().code()) == Some("InvalidGroup.Duplicate") => {
                        find()
                            .await?
                            .ok_or_else(|| fail(ErrorKind::Unavailable, format!("{name} exists and cannot be found")))?
                    }
                    Err(e) => {
                        return Err(api_err(
                            &format!("CreateSecurityGroup({name})"),
                            aws_sdk_ec2::error::DisplayErrorContext(e),
                        ));
                    }
                }
            }
        };
        // Always (a launch may have died between making the group and this):
        // a rule already there is fine.
        let own = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(0)
            .to_port(65_535)
            .user_id_group_pairs(UserIdGroupPair::builder().group_id(&id).build())
            .build();
        let admitted = c.ec2.authorize_security_group_ingress().group_id(&id).ip_permissions(own).send().await;
        if let Err(e) = admitted {
            let duplicate = e.as_service_error().and_then(|s| s.meta().code()) == Some("InvalidPermission.Duplicate");
            if !duplicate {
                return Err(api_err(
                    &format!("AuthorizeSecurityGroupIngress({id})"),
                    aws_sdk_ec2::error::DisplayErrorContext(e),
                ));
            }
        }
        known.insert(job.to_owned(), id.clone());
        Ok(id)
    }

    /// Deletes the groups of jobs whose deadline (and the dead-man switch's
    /// grace) has passed: by then their instances are gone or going. A group
    /// still in use (an instance shutting down) is left to the next sweep.
    async fn sweep_groups(&self) -> Result<Vec<String>, ProviderError> {
        let c = self.clients().await?;
        let out = c
            .ec2
            .describe_security_groups()
            .filters(Filter::builder().name("tag-key").values(JOB_TAG).build())
            .send()
            .await
            .map_err(|e| api_err("DescribeSecurityGroups", aws_sdk_ec2::error::DisplayErrorContext(e)))?;
        let now = now_ms();
        let mut removed = Vec::new();
        for g in out.security_groups() {
            let tag = |key: &str| g.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value());
            let ended = tag(vm_kit::tags::EXPIRES_AT)
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|t| t + self.sweep_after.as_millis() as u64 <= now);
            let (Some(id), Some(job)) = (g.group_id(), tag(JOB_TAG)) else { continue };
            if !ended {
                continue;
            }
            match c.ec2.delete_security_group().group_id(id).send().await {
                Ok(_) => {
                    self.groups.lock().await.remove(job);
                    removed.push(format!("security group {id} of job {job}"));
                }
                Err(e) => self.host.log(
                    Level::Info,
                    &format!(
                        "aws: security group {id} of job {job} stays for now: {}",
                        aws_sdk_ec2::error::DisplayErrorContext(e)
                    ),
                ),
            }
        }
        Ok(removed)
    }

    async fn terminate_ids(&self, ids: Vec<String>, patience: Duration) -> Result<(), ProviderError> {
        if ids.is_empty() {
            return Ok(());
        }
        let c = self.clients().await?;
        let not_found = |e: &aws_sdk_ec2::error::SdkError<_, _>| {
            e.as_service_error()
                .and_then(|s: &aws_sdk_ec2::operation::terminate_instances::TerminateInstancesError| s.meta().code())
                .is_some_and(|code| code == "InvalidInstanceID.NotFound")
        };
        let all = c.ec2.terminate_instances().set_instance_ids(Some(ids.clone())).send().await;
        match all {
            Ok(_) => {}
            // One unknown id fails the whole call: end the others one by one.
            Err(e) if not_found(&e) => {
                for id in &ids {
                    match c.ec2.terminate_instances().instance_ids(id).send().await {
                        Ok(_) => {}
                        Err(e) if not_found(&e) => {}
                        Err(e) => {
                            return Err(api_err("TerminateInstances", aws_sdk_ec2::error::DisplayErrorContext(e)));
                        }
                    }
                }
            }
            Err(e) => return Err(api_err("TerminateInstances", aws_sdk_ec2::error::DisplayErrorContext(e))),
        }
        let start = std::time::Instant::now();
        loop {
            let alive = self.describe(vec![state_filter()], ids.clone()).await?;
            if alive.is_empty() {
                return Ok(());
            }
            if start.elapsed() > patience {
                return Err(fail(
                    ErrorKind::Unavailable,
                    format!("{} instance(s) still not terminated after {patience:?}", alive.len()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn state_filter() -> Filter {
    Filter::builder()
        .name("instance-state-name")
        .set_values(Some(ALIVE.iter().map(|s| s.to_string()).collect()))
        .build()
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
            limits: Limits {
                bootstrap_limit_ms: self.bootstrap_limit.as_millis() as u64,
                credential_ttl_ms: self.credential_ttl.as_millis() as u64,
                max_nodes: self.max_nodes,
            },
            capabilities: Capabilities { entrypoint: Some("aws-lambda".into()) },
            schemes: vec!["s3".into()],
            nodes: Some(prices::node_types(&self.master_type, &self.worker_type)),
        }
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Vec<NodeInfo>, ProviderError> {
        if request.nodes.len() > self.max_nodes as usize {
            return Err(fail(
                ErrorKind::Config,
                format!("a launch of {} nodes exceeds max_nodes = {}", request.nodes.len(), self.max_nodes),
            ));
        }
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
        let c = self.clients().await?;
        let now = now_ms();
        let (secret, expires_at) = match &self.role_arn {
            Some(role) => {
                let session = session_name(&request.job, &request.node);
                let out = c
                    .sts
                    .assume_role()
                    .role_arn(role)
                    .role_session_name(session)
                    .duration_seconds(self.credential_ttl.as_secs() as i32)
                    .send()
                    .await
                    .map_err(|e| api_err(&format!("AssumeRole({role})"), aws_sdk_sts::error::DisplayErrorContext(e)))?;
                let cred =
                    out.credentials().ok_or_else(|| fail(ErrorKind::Unavailable, "AssumeRole gave no credentials"))?;
                let expires = cred.expiration().secs().max(0) as u64 * 1000;
                let secret = Secret::S3 {
                    key_id: cred.access_key_id().to_owned(),
                    secret_key: cred.secret_access_key().to_owned(),
                    session_token: Some(cred.session_token().to_owned()),
                };
                (secret, expires)
            }
            None => {
                use aws_credential_types::provider::ProvideCredentials;
                let provider = c
                    .config
                    .credentials_provider()
                    .ok_or_else(|| fail(ErrorKind::Config, "no AWS credentials are configured"))?;
                let cred = provider.provide_credentials().await.map_err(|e| api_err("the credential chain", e))?;
                // Credentials that do not say when they expire (environment
                // variables, as Lambda gives its function's role; a profile's
                // keys) are read again from the chain every UNKNOWN_EXPIRY, so
                // that rotated ones are picked up by core's refresh rule.
                let expires = cred
                    .expiry()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(now + UNKNOWN_EXPIRY.as_millis() as u64);
                let secret = Secret::S3 {
                    key_id: cred.access_key_id().to_owned(),
                    secret_key: cred.secret_access_key().to_owned(),
                    session_token: cred.session_token().map(str::to_owned),
                };
                (secret, expires)
            }
        };
        Ok(Credential { node: request.node, secret, validity: Validity { issued_at: now, expires_at } })
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

    async fn serve(&self) -> Result<(), ProviderError> {
        lambda::serve(self).await
    }
}

/// Turns a Lambda event into a bootstrap request:
///
/// - a direct invocation: `{"job": "<job file>"}` or `{"job_url": "s3://bucket/job.toml"}`,
///   with optional `base_dir` and `overrides` (`MAYFLY_*` names);
/// - an S3 object-created event: the job at `event_job_url` (the function's
///   setting), on the "directory" of the object that arrived (`s3://bucket/<its
///   prefix>`, which must lie under `event_prefix` if that is set), with a job id made
///   from that prefix and the event's sequencer, so that a duplicate delivery of
///   the event is refused as a job id already used instead of running twice.
pub fn adapt_event(
    event: &serde_json::Value,
    event_job_url: Option<&str>,
    event_prefix: Option<&str>,
) -> Result<BootstrapRequest, ProviderError> {
    let bad = |m: &str| fail(ErrorKind::Config, format!("event: {m}"));
    let obj = event.as_object().ok_or_else(|| bad("expected a JSON object with `job`, `job_url` or `Records`"))?;
    if let Some(records) = obj.get("Records") {
        return s3_event(records, event_job_url, event_prefix);
    }
    BootstrapRequest::from_direct(event, "s3").map_err(|m| bad(&m))
}

fn s3_event(
    records: &serde_json::Value,
    event_job_url: Option<&str>,
    event_prefix: Option<&str>,
) -> Result<BootstrapRequest, ProviderError> {
    let bad = |m: String| fail(ErrorKind::Config, format!("S3 event: {m}"));
    let job_url = event_job_url.ok_or_else(|| {
        bad("this function has no `event_job_url` setting: which job runs for an object-created event".into())
    })?;
    let records = records.as_array().filter(|r| !r.is_empty()).ok_or_else(|| bad("`Records` is empty".into()))?;
    let mut found: Option<(String, String, String)> = None;
    for r in records {
        let name = r.pointer("/eventName").and_then(|v| v.as_str()).unwrap_or_default();
        if r.pointer("/eventSource").and_then(|v| v.as_str()) != Some("aws:s3") || !name.starts_with("ObjectCreated:") {
            return Err(bad(format!("expected S3 object-created records, got {name:?}")));
        }
        let bucket = r.pointer("/s3/bucket/name").and_then(|v| v.as_str()).unwrap_or_default();
        let key = r.pointer("/s3/object/key").and_then(|v| v.as_str()).unwrap_or_default();
        let sequencer = r.pointer("/s3/object/sequencer").and_then(|v| v.as_str()).unwrap_or_default();
        if bucket.is_empty() || key.is_empty() {
            return Err(bad("a record without `s3.bucket.name` or `s3.object.key`".into()));
        }
        // Keys arrive URL-encoded ('+' for spaces).
        let key = url_decode(key).ok_or_else(|| bad(format!("key {key:?} is not valid URL encoding")))?;
        let dir = key.rsplit_once('/').map(|(d, _)| d.to_owned()).unwrap_or_default();
        if dir.is_empty() {
            return Err(bad(format!("s3://{bucket}/{key} has no prefix to run a job on (put it under a folder)")));
        }
        if let Some(p) = event_prefix
            && !format!("{dir}/").starts_with(p)
        {
            return Err(bad(format!("s3://{bucket}/{key} is not under the configured prefix {p:?}")));
        }
        match &found {
            Some((b, d, _)) if (b.as_str(), d.as_str()) != (bucket, dir.as_str()) => {
                return Err(bad("records for different prefixes in one event".into()));
            }
            Some(_) => {}
            None => found = Some((bucket.to_owned(), dir, sequencer.to_owned())),
        }
    }
    let (bucket, dir, sequencer) = found.ok_or_else(|| bad("no record".into()))?;
    // The prefix part is shortened, never the sequencer: two batches under one
    // long prefix must not share an id.
    let sequencer: String = sequencer.chars().filter(char::is_ascii_alphanumeric).take(40).collect();
    let mut id: String = dir
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .take(100 - sequencer.len() - 1)
        .collect();
    if !sequencer.is_empty() {
        id.push('-');
        id.push_str(&sequencer);
    }
    let overrides =
        BTreeMap::from([("MAYFLY_INPUT".to_owned(), format!("s3://{bucket}/{dir}")), ("MAYFLY_JOB_ID".to_owned(), id)]);
    Ok(BootstrapRequest { job_url: Some(job_url.to_owned()), overrides, ..Default::default() })
}

/// Decodes an S3 event's key (`%XX` escapes, `+` for a space).
fn url_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// How long credentials that carry no expiry are taken to be good for before
/// the chain is read again.
const UNKNOWN_EXPIRY: Duration = Duration::from_secs(15 * 60);

/// What EC2 answers when a spot request cannot be met: then on demand.
const SPOT_UNAVAILABLE: [&str; 5] = [
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
    "UnfulfillableCapacity",
];

/// How long after a job's deadline its security group is deleted (the
/// `sweep_after` setting's default): the dead-man switch's grace and the
/// instances' shutdown are over by then.
const SWEEP_AFTER: Duration = Duration::from_secs(5 * 60);

/// The tag every instance of a job carries: what the EC2 statements are bound to.
const JOB_TAG: &str = vm_kit::tags::JOB;

/// The least-privilege IAM policies of the bootstrap function's role and of the
/// nodes' instance profile role, for jobs on `locations` (`s3://bucket/prefix`).
/// Every AWS call this provider and core's data path make is covered, and no
/// other: `RunInstances` only with the job tag, `TerminateInstances` only on
/// tagged instances, `iam:PassRole` only for the instance profile's role (to EC2),
/// `sts:AssumeRole` only for the job role, S3 only under the given prefixes.
pub fn policies(
    locations: &[String],
    role_arn: Option<&str>,
    instance_profile: Option<&str>,
    event_job_url: Option<&str>,
    node_artifact: Option<&str>,
    spot: bool,
) -> Result<serde_json::Value, ProviderError> {
    use serde_json::json;
    let mut s3 = Vec::new();
    let mut urls: Vec<&str> = locations.iter().map(String::as_str).collect();
    urls.extend(event_job_url);
    if urls.is_empty() {
        return Err(fail(
            ErrorKind::Config,
            "no locations: name the job's input, output and state (s3://bucket/prefix), or give a job file",
        ));
    }
    for url in urls {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            fail(ErrorKind::Config, format!("{url}: the aws provider's jobs read and write s3:// locations"))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(fail(ErrorKind::Config, format!("{url}: expected s3://bucket/prefix")));
        }
        let prefix = prefix.trim_end_matches('/');
        let objects = if prefix.is_empty() {
            format!("arn:aws:s3:::{bucket}/*")
        } else {
            format!("arn:aws:s3:::{bucket}/{prefix}*")
        };
        s3.push(json!({
            "Sid": format!("List{}", s3.len() / 2),
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": format!("arn:aws:s3:::{bucket}"),
            "Condition": {"StringLike": {"s3:prefix": [if prefix.is_empty() { "*".to_owned() } else { format!("{prefix}*") }]}}
        }));
        s3.push(json!({
            "Sid": format!("Objects{}", s3.len() / 2),
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            "Resource": objects
        }));
    }
    let tagged = json!({"Null": {format!("aws:ResourceTag/{JOB_TAG}"): "false"}});
    let mut launch_with = vec![
        "arn:aws:ec2:*::image/*",
        "arn:aws:ec2:*:*:subnet/*",
        "arn:aws:ec2:*:*:network-interface/*",
        "arn:aws:ec2:*:*:security-group/*",
        "arn:aws:ec2:*:*:volume/*",
    ];
    if spot {
        // A spot launch also creates a spot instance request.
        launch_with.push("arn:aws:ec2:*:*:spot-instances-request/*");
    }
    let mut nodes = vec![
        json!({"Sid": "SeeInstances", "Effect": "Allow", "Action": "ec2:DescribeInstances", "Resource": "*"}),
        json!({"Sid": "EndJobInstances", "Effect": "Allow", "Action": "ec2:TerminateInstances",
               "Resource": "arn:aws:ec2:*:*:instance/*", "Condition": tagged.clone()}),
    ];
    let mut function = vec![
        json!({"Sid": "LaunchTaggedInstances", "Effect": "Allow", "Action": "ec2:RunInstances",
               "Resource": "arn:aws:ec2:*:*:instance/*",
               "Condition": {"Null": {format!("aws:RequestTag/{JOB_TAG}"): "false"}}}),
        json!({"Sid": "LaunchWith", "Effect": "Allow", "Action": "ec2:RunInstances",
               "Resource": launch_with}),
        json!({"Sid": "TagAtLaunch", "Effect": "Allow", "Action": "ec2:CreateTags",
               "Resource": ["arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:*:*:volume/*"],
               "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances"}}}),
        json!({"Sid": "JobGroups", "Effect": "Allow", "Action": "ec2:CreateSecurityGroup",
               "Resource": "arn:aws:ec2:*:*:security-group/*",
               "Condition": {"Null": {format!("aws:RequestTag/{JOB_TAG}"): "false"}}}),
        json!({"Sid": "JobGroupsInVpc", "Effect": "Allow", "Action": "ec2:CreateSecurityGroup",
               "Resource": "arn:aws:ec2:*:*:vpc/*"}),
        json!({"Sid": "TagGroupsAtCreation", "Effect": "Allow", "Action": "ec2:CreateTags",
               "Resource": "arn:aws:ec2:*:*:security-group/*",
               "Condition": {"StringEquals": {"ec2:CreateAction": "CreateSecurityGroup"}}}),
        json!({"Sid": "JobGroupRules", "Effect": "Allow",
               "Action": ["ec2:AuthorizeSecurityGroupIngress", "ec2:DeleteSecurityGroup"],
               "Resource": "arn:aws:ec2:*:*:security-group/*",
               "Condition": {"Null": {format!("aws:ResourceTag/{JOB_TAG}"): "false"}}}),
        json!({"Sid": "SeeNetwork", "Effect": "Allow",
               "Action": ["ec2:DescribeSecurityGroups", "ec2:DescribeSubnets"], "Resource": "*"}),
        json!({"Sid": "Logs", "Effect": "Allow",
               "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"], "Resource": "*"}),
    ];
    function.extend(nodes.iter().cloned());
    let mut notes = vec![
        "function_role: the Lambda function's execution role; node_role: the role of the nodes' instance profile"
            .to_owned(),
    ];
    match instance_profile {
        Some(profile) => {
            function.push(json!({"Sid": "PassNodeRole", "Effect": "Allow", "Action": "iam:PassRole",
                "Resource": "arn:aws:iam::*:role/*",
                "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}}));
            notes.push(format!(
                "narrow PassNodeRole's Resource to the role of instance profile {profile:?} once you know its ARN"
            ));
        }
        None => notes.push("no instance_profile is set: nodes would have no credentials of their own".into()),
    }
    if let Some(role) = role_arn {
        let assume = json!({"Sid": "JobRole", "Effect": "Allow", "Action": "sts:AssumeRole", "Resource": role});
        function.push(assume.clone());
        nodes.push(assume);
        notes.push(format!("with role_arn, the S3 statements belong to {role}; the roles above only assume it"));
    } else {
        function.extend(s3.iter().cloned());
        nodes.extend(s3.iter().cloned());
    }
    // `mayfly deploy aws`: the operator's (or a CI's) role.
    let mut deployer = vec![
        json!({"Sid": "Function", "Effect": "Allow",
               "Action": ["lambda:GetFunction", "lambda:GetFunctionConfiguration", "lambda:CreateFunction",
                          "lambda:UpdateFunctionCode", "lambda:UpdateFunctionConfiguration", "lambda:TagResource"],
               "Resource": "arn:aws:lambda:*:*:function:*"}),
        json!({"Sid": "PassFunctionRole", "Effect": "Allow", "Action": "iam:PassRole", "Resource": "arn:aws:iam::*:role/*",
               "Condition": {"StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}}}),
    ];
    notes.push("deployer: who runs `mayfly deploy aws`; narrow its Resources to the function's name and role".into());
    if spot {
        notes.push(
            "spot: the account needs EC2's Spot service-linked role once (aws iam create-service-linked-role --aws-service-name spot.amazonaws.com)"
                .into(),
        );
    }
    match node_artifact {
        Some(url) => {
            let (bucket, key) = url
                .strip_prefix("s3://")
                .and_then(|r| r.split_once('/'))
                .ok_or_else(|| fail(ErrorKind::Config, format!("`node_artifact` {url:?}: expected s3://bucket/key")))?;
            // The artifacts' "folder": `mayfly deploy` puts each node artifact
            // there under its content's hash (node-<sha256>.tar.gz).
            let dir = key.rsplit_once('/').map_or(String::new(), |(d, _)| format!("{d}/"));
            nodes.push(json!({"Sid": "NodeArtifact", "Effect": "Allow", "Action": "s3:GetObject",
                              "Resource": [format!("arn:aws:s3:::{bucket}/{dir}node-*"),
                                           format!("arn:aws:s3:::{bucket}/{key}")]}));
            let objects = format!("arn:aws:s3:::{bucket}/{dir}*");
            // Lambda reads the function's code from S3 with the deployer's rights.
            deployer.push(json!({"Sid": "Artifacts", "Effect": "Allow", "Action": ["s3:PutObject", "s3:GetObject"],
                                 "Resource": objects}));
        }
        None => notes.push(
            "no node_artifact is set: the nodes' image must have mayfly at node_binary, and the deployer's upload is not covered".into(),
        ),
    }
    // `mayfly reap --provider aws`, on a schedule.
    let reaper = vec![
        json!({"Sid": "See", "Effect": "Allow", "Action": ["ec2:DescribeInstances", "ec2:DescribeSecurityGroups"],
               "Resource": "*"}),
        json!({"Sid": "EndExpired", "Effect": "Allow", "Action": ["ec2:TerminateInstances", "ec2:DeleteSecurityGroup"],
               "Resource": ["arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:*:*:security-group/*"], "Condition": tagged.clone()}),
    ];
    notes.push("reaper: who runs `mayfly reap --provider aws` on a schedule".into());
    let doc = |statements: Vec<serde_json::Value>| json!({"Version": "2012-10-17", "Statement": statements});
    let mut out = json!({"function_role": doc(function), "node_role": doc(nodes), "deployer": doc(deployer),
                         "reaper": doc(reaper), "notes": notes});
    if role_arn.is_some() {
        out["job_role"] = doc(s3);
    }
    Ok(out)
}

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

    /// Every `name()` call on an EC2 or STS client in this file.
    fn calls_in_this_file() -> Vec<String> {
        calls_on(include_str!("lib.rs"), &[".ec2", ".sts"])
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
