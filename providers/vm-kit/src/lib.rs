//! What mayfly's VM providers have in common, so that the aws and azure
//! providers say it once: the parts of a node's boot script that do not depend
//! on the cloud ([`boot`]), shell quoting, the node artifact's hash, the line
//! of the boot script that carries the launch (a test's hypervisor reads it
//! back), the marker file of a node, and the tags every node carries.
//!
//! It knows no cloud: each provider writes its own metadata calls, dead-man
//! switch and way of ending the machine around these parts. It imports the
//! provider API only, and must not import any cloud SDK or any crate of
//! mayfly's core (a provider depends on neither).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The line of a boot script that carries the node's launch, as JSON.
pub const NODE_LINE: &str = "# mayfly-node: ";
/// A file the boot script writes on a real node (`$R` + this).
pub const NODE_MARKER: &str = "/etc/mayfly-node";

/// The tags (labels) every node of a job carries.
pub mod tags {
    /// The job's id.
    pub const JOB: &str = "mayfly:job";
    /// `master` or `worker`.
    pub const ROLE: &str = "mayfly:role";
    /// The node's name.
    pub const NODE: &str = "mayfly:node";
    /// The job's deadline, in ms since the epoch.
    pub const EXPIRES_AT: &str = "mayfly:expires-at";
}

/// `s` as one word of `sh`, in single quotes.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The sha256 a node artifact's name carries (`.../node-<64 hex digits>.tar.gz`),
/// lowercase as `sha256sum` prints it and `mayfly deploy` names it.
pub fn artifact_hash(url: &str) -> Option<&str> {
    let name = url.rsplit('/').next()?;
    let hash = name.strip_prefix("node-")?.strip_suffix(".tar.gz")?;
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(hash)
}

/// The launch line of a boot script: [`NODE_LINE`] and `launch` as JSON.
pub fn launch_line(launch: &impl Serialize) -> Result<String, serde_json::Error> {
    Ok(format!("{NODE_LINE}{}", serde_json::to_string(launch)?))
}

/// The launch a boot script carries, read back.
pub fn read_launch<T: DeserializeOwned>(script: &str) -> Option<T> {
    let line = script.lines().find_map(|l| l.strip_prefix(NODE_LINE))?;
    serde_json::from_str(line).ok()
}

/// The cloud-independent parts of a node's boot script (`sh`, run as root
/// at first boot). `$R` is the root the node's files go under (empty on a
/// real machine; a test's hypervisor sets `MAYFLY_ROOT`), `$IMDS` the
/// metadata service's address (`MAYFLY_IMDS` in tests).
pub mod boot {
    use super::{NODE_MARKER, shell_quote};

    /// How a boot script starts.
    #[derive(Debug, Clone, Copy)]
    pub struct Header<'a> {
        /// Who wrote it, for its comment (`mayfly-provider-aws (2 instance(s))`).
        pub written_by: &'a str,
        /// The job.
        pub job: &'a str,
        /// Its [`super::launch_line`].
        pub launch_line: &'a str,
        /// Whether `$R` and `$IMDS` are exported (to scripts it writes).
        pub export_root: bool,
        /// Directories under `$R` to make besides `etc` and `var/log`.
        pub more_dirs: &'a [&'a str],
    }

    /// The start: the shebang, the launch line, `$R`, `$IMDS` and `$HOME`,
    /// and the node marker (the job's id).
    pub fn header(h: &Header<'_>) -> String {
        let dirs: String = ["etc", "var/log"].iter().chain(h.more_dirs).map(|d| format!(" \"$R/{d}\"")).collect();
        format!(
            "#!/bin/sh\n\
             # A mayfly node of job {job}, written by {by}.\n\
             {line}\n\
             set -u\n\
             R=\"${{MAYFLY_ROOT:-}}\"; IMDS=\"${{MAYFLY_IMDS:-http://169.254.169.254}}\"{export}\n\
             : \"${{HOME:=$R/root}}\"; export HOME\n\
             mkdir -p{dirs}; echo {job_q} > \"$R{NODE_MARKER}\"\n",
            job = h.job.replace(['\n', '\r'], " "),
            by = h.written_by,
            line = h.launch_line,
            export = if h.export_root { "; export R IMDS" } else { "" },
            job_q = shell_quote(h.job),
        )
    }

    /// Where `mayfly` comes from: a node artifact fetched and verified.
    #[derive(Debug, Clone)]
    pub struct Artifact<'a> {
        /// The artifact's URL (its name carries its sha256, which is checked).
        pub url: &'a str,
        /// What it is read with, for the comment (`the instance profile`).
        pub read_with: &'a str,
        /// The command that downloads it to `"$D/node.tar.gz"`.
        pub download: String,
        /// What the node does when it cannot (`powering off`, and `poweroff`).
        pub give_up: (&'a str, &'a str),
    }

    /// Sets `$B` to `mayfly`: `binary` on the image, or the artifact's,
    /// downloaded, checked against its name's sha256 and unpacked under
    /// `$R/opt/mayfly` (five tries; then the node gives up).
    pub fn fetch(binary: &str, artifact: Option<&Artifact<'_>>) -> String {
        let Some(a) = artifact else { return format!("B={}\n", shell_quote(binary)) };
        let check = super::artifact_hash(a.url)
            .map(|h| format!(" && [ \"$(sha256sum \"$D/node.tar.gz\" | cut -c1-64)\" = {h} ]"))
            .unwrap_or_default();
        format!(
            "# mayfly itself: the node artifact, read with {read_with}.\n\
             D=\"$R/opt/mayfly\"; mkdir -p \"$D\"; n=0\n\
             until {download}{check} && tar -xzf \"$D/node.tar.gz\" -C \"$D\"; do\n\
             \x20 n=$((n + 1)); if [ \"$n\" -ge 5 ]; then echo 'mayfly: cannot fetch or verify the node artifact '{url}'; {words}' >&2; {give_up}; exit 1; fi; sleep 3\n\
             done\n\
             B=\"$D/mayfly\"\n",
            read_with = a.read_with,
            download = a.download,
            url = shell_quote(a.url),
            words = a.give_up.0,
            give_up = a.give_up.1,
        )
    }

    /// `$MAYFLY_NODE_LOG`: where the node's output goes (the node copies it to
    /// the job's state location as it goes and at its end).
    pub const NODE_LOG: &str = "# The node copies this log to the job's state location as it goes and at its end.\n\
                                MAYFLY_NODE_LOG=\"$R/var/log/mayfly-node.log\"; export MAYFLY_NODE_LOG\n";

    /// The end: `mayfly` (`$B`) with `args` (words of `sh`) in the
    /// background, its output in [`NODE_LOG`]'s file, and `then` when it
    /// exits (the machine ends itself).
    pub fn run(args: &str, then: &str) -> String {
        format!("nohup sh -c '\"$0\" \"$@\" >\"$MAYFLY_NODE_LOG\" 2>&1; {then}' \"$B\" {args} >/dev/null 2>&1 &\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_hashes_and_the_launch_line_round_trip() {
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        let hash = "0a".repeat(32);
        assert_eq!(artifact_hash(&format!("s3://b/node-{hash}.tar.gz")), Some(hash.as_str()));
        assert_eq!(artifact_hash("s3://b/node.tar.gz"), None);
        assert_eq!(artifact_hash(&format!("s3://b/node-{}.tar.gz", "0A".repeat(32))), None, "lowercase only");
        let line = launch_line(&serde_json::json!({ "job": "j" })).unwrap();
        let back: serde_json::Value = read_launch(&format!("#!/bin/sh\n{line}\necho\n")).unwrap();
        assert_eq!(back["job"], "j");
    }
}
