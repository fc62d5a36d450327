//! EC2: instances (run, described, terminated; spot with an on-demand
//! fallback), their tags, and each job's security group (made at its first
//! launch, swept after its deadline).

use super::*;

pub(crate) fn tag(key: &str, value: impl Into<String>) -> Tag {
    Tag::builder().key(key).value(value).build()
}

pub(crate) fn tag_of<'a>(i: &'a Instance, key: &str) -> Option<&'a str> {
    i.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// The node an instance is, from its tags and launch index.
pub(crate) fn node_of(i: &Instance) -> Option<NodeInfo> {
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
pub(crate) const ALIVE: [&str; 4] = ["pending", "running", "stopping", "stopped"];

impl Aws {
    pub(crate) async fn clients(&self) -> Result<&Clients, ProviderError> {
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

    pub(crate) fn imds(&self) -> Result<aws_config::imds::Client, ProviderError> {
        let mut b = aws_config::imds::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(2))
            .max_attempts(2);
        if let Some(e) = &self.imds_endpoint {
            b = b.endpoint(e).map_err(|e| fail(ErrorKind::Config, format!("`provider.imds_endpoint`: {e}")))?;
        }
        Ok(b.build())
    }

    /// This process's instance id: the setting, what the node's boot script
    /// found ([`crate::boot::INSTANCE_ENV`]), or IMDSv2 (`None` off EC2, or
    /// when it does not answer in time).
    pub(crate) async fn my_instance(&self) -> Option<String> {
        if let Some(id) = &self.instance_id {
            return Some(id.clone());
        }
        if let Some(id) = std::env::var(crate::boot::INSTANCE_ENV).ok().filter(|id| id.starts_with("i-")) {
            return Some(id);
        }
        let imds = self.imds().ok()?;
        imds.get("/latest/meta-data/instance-id").await.ok().map(|s| s.as_ref().to_owned())
    }

    pub(crate) async fn describe(
        &self,
        filters: Vec<Filter>,
        ids: Vec<String>,
    ) -> Result<Vec<Instance>, ProviderError> {
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

    pub(crate) async fn run(
        &self,
        launch: &NodeLaunch,
        count: u32,
        groups: &[String],
    ) -> Result<Vec<NodeInfo>, ProviderError> {
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
    pub(crate) async fn job_group(&self, job: &str, expires_at: u64) -> Result<String, ProviderError> {
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
    pub(crate) async fn sweep_groups(&self) -> Result<Vec<String>, ProviderError> {
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

    pub(crate) async fn terminate_ids(&self, ids: Vec<String>, patience: Duration) -> Result<(), ProviderError> {
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

pub(crate) fn state_filter() -> Filter {
    Filter::builder()
        .name("instance-state-name")
        .set_values(Some(ALIVE.iter().map(|s| s.to_string()).collect()))
        .build()
}

/// What EC2 answers when a spot request cannot be met: then on demand.
pub(crate) const SPOT_UNAVAILABLE: [&str; 5] = [
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
    "UnfulfillableCapacity",
];

/// How long after a job's deadline its security group is deleted (the
/// `sweep_after` setting's default): the dead-man switch's grace and the
/// instances' shutdown are over by then.
pub(crate) const SWEEP_AFTER: Duration = Duration::from_secs(5 * 60);
