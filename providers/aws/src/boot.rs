//! What a node runs when its instance boots: the launch record (`NodeLaunch`,
//! what the user data says it is), the grouping of a launch into `RunInstances`
//! calls of consecutive names, and the user data itself (`vm-kit`'s boot script
//! with EC2's metadata calls and its OS dead-man switch).

use super::*;

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
pub(crate) fn split_number(name: &str) -> Option<(&str, u64)> {
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

/// The variable in which a node's boot script leaves its instance id.
pub const INSTANCE_ENV: &str = "MAYFLY_INSTANCE_ID";

/// The user data of a launch: a shell script that marks the machine as a
/// mayfly node, arms the OS dead-man switch (shutdown, which terminates the
/// instance, `grace` after the deadline, counted from boot), finds the node's
/// name from its launch index (IMDSv2, retried; no index: power off), keeps
/// its instance id in [`INSTANCE_ENV`] (so that ending itself does not hang on
/// a metadata service that is slow by then), fetches
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
         # Who this instance is, asked once while there is time to wait for the answer.\n\
         {instance_env}=$(md instance-id); export {instance_env}\n\
         # The master serves the job's nodes on the instance's private address (over TLS).\n\
         MAYFLY_LISTEN=$(md local-ipv4); export MAYFLY_LISTEN\n\
         {log}{fetch}{run}",
        log = vm_kit::boot::NODE_LOG,
        header = vm_kit::boot::header(&header),
        fetch = vm_kit::boot::fetch(boot.binary, artifact.as_ref()),
        run = vm_kit::boot::run(&quoted.join(" ").replace("'{node}'", "\"$NODE\""), "poweroff"),
        instance_env = INSTANCE_ENV,
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
