//! What a node runs when its VM boots: the launch record (`NodeLaunch`, what
//! the custom data says it is), the VM's name, and the custom data itself
//! (`vm-kit`'s boot script with Azure's metadata calls and a dead-man switch
//! that deletes the VM through ARM).

use super::*;

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

/// The variable in which a node's boot script leaves its VM's resource id.
pub const VM_ENV: &str = "MAYFLY_VM_ID";

/// The custom data of a VM: a shell script (cloud-init runs it as root) that
/// marks the machine as a mayfly node, writes `mayfly-end-vm` (delete this
/// VM through ARM with the VM's managed identity, retried; power off only as
/// the last resort), arms the dead-man switch (`mayfly-end-vm` `grace` after
/// the deadline), fetches the node artifact with a storage token (its sha256
/// checked; retried, else the VM ends itself), and runs `mayfly` in the
/// background with its output in a log file, ending the VM when it exits.
/// The node finds its VM's resource id in [`VM_ENV`], so that ending itself
/// does not hang on a metadata service that is slow by then.
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
         # Who this VM is, for the node too: asked once while there is time to wait for the answer.\n\
         {vm_env}=$ID; export {vm_env}\n\
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
        vm_env = VM_ENV,
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

pub(crate) fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}
