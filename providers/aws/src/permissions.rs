//! The least-privilege IAM policies of the function's role and of the nodes'
//! role, for jobs on given locations.

use super::*;

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
