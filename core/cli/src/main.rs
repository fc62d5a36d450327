//! The `mayfly` binary: parses the command line and runs one command. Each
//! command is a module (its arguments and `execute`); what a command does
//! beyond reading arguments and printing lives in the libraries
//! (`mayfly_ops`, `mayfly_core`, `mayfly_data`, `mayfly_model`). Exit codes
//! are decided here, in one place ([`exit_code`]), and the process's async
//! runtime is built here ([`runtime`]). It is the top of mayfly's flow: it may
//! import every crate, and none imports it.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod attach;
mod build;
mod demo;
mod deploy;
mod exec;
mod hold;
mod init;
mod logs;
mod lookup;
mod node;
mod package;
mod permissions;
mod plan;
mod prices;
mod reap;
mod replay;
mod report;
mod resume;
mod run;
mod serve;
mod status;
mod text;

/// How a command ended (a failure is an `Err`): the process's exit code,
/// as [`exit_code`] maps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It did what it was asked.
    Success,
    /// The task ran and failed (exec, replay), or a job ended with failed
    /// shards or at its deadline (run, resume).
    TaskFailed,
    /// The master was lost before the job ended (run, resume, status, logs --follow).
    MasterLost,
    /// A node ended with this code (its role's own).
    Node(u8),
}

/// Exit code: the task ran and failed.
const EXIT_TASK_FAILED: u8 = 1;
/// Exit code: bad input (arguments, files, a job file, a task that cannot
/// load, a job that cannot be found or reached).
const EXIT_USAGE: u8 = 2;
/// Exit code: the master was lost and the job must be resumed.
const EXIT_MASTER_LOST: u8 = 3;
/// Exit code: something inside mayfly failed (an async runtime could not
/// start, a storage call panicked), not the input.
const EXIT_INTERNAL: u8 = 70;

/// The one map from how a command ended to the process's exit code.
fn exit_code(result: &anyhow::Result<Ended>) -> u8 {
    match result {
        Ok(Ended::Success) => 0,
        Ok(Ended::TaskFailed) => EXIT_TASK_FAILED,
        Ok(Ended::MasterLost) => EXIT_MASTER_LOST,
        Ok(Ended::Node(code)) => *code,
        Err(e) if e.chain().any(mayfly_model::Internal::is_in) => EXIT_INTERNAL,
        Err(_) => EXIT_USAGE,
    }
}

/// `mayfly --version`: the crate's version and the commit it was built from
/// (with that commit's date; `build.rs` finds them).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("MAYFLY_COMMIT"), ")");

#[derive(Parser, Debug)]
#[command(
    name = "mayfly",
    version = VERSION,
    about = "Batch work over many files on clusters that live only as long as the work.",
    after_help = "Exit codes:\n  \
        0  success\n  \
        1  the task ran and failed (exec, replay), or a job ended with failed shards or at its deadline (run, resume)\n  \
        2  bad input: arguments, files, a job file, a task that cannot load, a job that cannot be found or reached\n  \
        3  the master was lost before the job ended (run, resume, status, logs --follow): `mayfly resume <job>`\n  \
        4  (nodes) the job's deadline passed and the node ended itself\n  \
        70 an internal error: an async runtime could not start, or a storage call panicked\n\n\
        Start: `mayfly init <name>` for a new task, `mayfly demo` for a job on this machine."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build a task (a Rust crate, or a Python task directory) into a
    /// WebAssembly component, check that the sandbox accepts it, and print its path.
    #[command(after_help = "Examples:\n  mayfly build tasks/wordcount\n  mayfly build tasks/wordcount-py\n  \
        mayfly build ~/my-task\n\n\
        A Python task is a directory with app.py, or a pyproject.toml with a [tool.mayfly] table;\n\
        the first Python build installs componentize-py into mayfly's cache directory.")]
    Build(build::Args),
    /// Run a task over one input file on this machine, in the sandbox.
    #[command(after_help = "Examples:\n  \
        mayfly exec tasks/wordcount --input README.md\n  \
        mayfly exec tasks/grep --input src/main.rs --param pattern='fn \\w+' --out /tmp/grep-out\n  \
        mayfly exec target/wasm32-wasip2/release/sha256.wasm --input big.iso --json\n  \
        mayfly exec tasks/wordcount --input a.tsv --input b.tsv --param mode=reduce\n\n\
        Several --input files are concatenated into one item (how a reduce task sees map outputs).\n\
        A --param value is read as JSON when it parses (42, true, \"x\", [1,2]) and as a string otherwise.")]
    Exec(exec::Args),
    /// Run a job on its provider, follow it to the end, and print a summary.
    #[command(after_help = "Examples:\n  mayfly run job.toml\n  MAYFLY_WORKERS=4 mayfly run job.toml\n\n\
        Exit codes: 0 every shard committed; 1 some shards failed or the deadline passed; 2 bad input; 3 the master was lost (resume it).")]
    Run(run::Args),
    /// Show what a job would do and cost: shards and their balance, the
    /// tasks tried on a sample of the inputs (the preflight), time,
    /// node-hours and price, the bootstrap and credential budgets, and a
    /// warning for each rule it would break. Nothing is launched.
    #[command(after_help = "Examples:\n  \
        mayfly plan job.toml\n  \
        mayfly plan job.toml --rate 40MiB     time at 40 MiB/s per worker, not the preflight's rate\n  \
        mayfly plan job.toml --json | jq .estimate.ceiling_usd\n\n\
        Prices: USD per node-hour from the prices `mayfly prices refresh --job job.toml` fetched (cached,\n\
        dated), else a shipped table (common AWS and Azure sizes, on demand, us-east-1 / East US, dated),\n\
        or the job file's [prices] table, which wins, e.g.\n  \
        [prices]\n  \
        \"c5.large\" = 0.034   # a spot price\n\n\
        The ceiling is every node billed to the deadline: no node outlives it.\n\
        Exit code 2 when the preflight refuses the job (the tasks fail on the sample).")]
    Plan(plan::Args),
    /// Show a job's progress: live while it runs (shards, rate, ETA, the
    /// deadline, each worker), its summary once it has ended.
    #[command(after_help = "Examples:\n  \
        mayfly status wordcount-demo-20261127-162005-ab12 --state mayfly-demo/state\n  \
        mayfly status <job> --once           one snapshot, then exit\n  \
        mayfly status <job> --json | jq .counts\n\n\
        While the job runs the view refreshes until it ends (Ctrl-C stops watching; the job goes on).\n\
        Exit codes: 0 shown; 2 no such job; 3 no running master and the job did not end (the message says what to do).")]
    Status(status::Args),
    /// Print a job's node and task logs (they outlive the nodes); follow them
    /// while it runs.
    #[command(after_help = "Examples:\n  \
        mayfly logs <job>                       every node's log, master first\n  \
        mayfly logs <job> --node worker-1\n  \
        mayfly logs <job> --shard 12            what every node said about shard 12\n  \
        mayfly logs <job> --level warn          warnings and errors only\n  \
        mayfly logs <job> --follow              new lines as they come, until the job ends\n  \
        mayfly logs <job> --json | jq -c 'select(.level == \"ERROR\")'\n\n\
        Each line is prefixed with its node. Node lines read `<ms since epoch> <LEVEL> <node>: ...`;\n\
        task lines `[shard N item] <LEVEL> ...`. Nodes write JSON lines instead (job, node, role, shard,\n\
        attempt, item, level, message, the task's fields) when the job says `log_format = \"json\"` in\n\
        [job], or MAYFLY_LOG_FORMAT=json is set on them; they are shown as text, and --json prints\n\
        every line as one JSON object, whichever format it was written in.\n\
        Exit codes: 0 shown (--follow: the job ended); 2 no such job or node; 3 (--follow) the job's master\n\
        was lost before it ended (`mayfly resume <job>` continues it).")]
    Logs(logs::Args),
    /// Continue a job whose master was lost: committed shards are not redone.
    #[command(after_help = "Example:\n  mayfly resume <job>")]
    Resume(resume::Args),
    /// Run one shard of a job again on this machine, exactly as its workers
    /// ran it: the same component (checked by sha256), parameters, input
    /// ranges and limits. Outputs go to a local directory, never to the job's.
    #[command(after_help = "Examples:\n  \
        mayfly replay <job> 12                    every item of shard 12\n  \
        mayfly replay <job> 12 --item logs/a.txt  one item\n  \
        mayfly replay <job> 12 --out /tmp/r --json\n\n\
        `mayfly logs <job> --shard 12` shows what the cluster said about it.\n\
        Exit codes: 0 every item succeeded; 1 an item failed (its error and logs are printed); 2 bad input.")]
    Replay(replay::Args),
    /// Hold a worker (or every worker) of a running job for debugging: it
    /// hands its shard back, takes no work, keeps what it has, and does not end
    /// itself until released, the hold expires, or the job's deadline.
    #[command(after_help = "Examples:\n  \
        mayfly hold <job> --node worker-3 --for 30m\n  \
        mayfly hold <job>                       every worker, for 30 minutes\n\n\
        A hold never outlives the job's deadline: asked for longer, it is cut to it (and says so).\n\
        Every hold and release is recorded in the job's state (holds/log/) with who asked.\n\
        Then: `mayfly attach <job> --node worker-3`, `mayfly replay <job> <shard> --node worker-3`,\n\
        `mayfly release <job> --node worker-3`.")]
    Hold(hold::Args),
    /// End a hold: the worker resumes, or ends by the normal rules.
    #[command(
        after_help = "Examples:\n  mayfly release <job> --node worker-3\n  mayfly release <job>   every hold of the job"
    )]
    Release(hold::ReleaseArgs),
    /// Show how to reach a running node (locally: its pid, log and directory;
    /// in a cloud: its instance), then stream its log until it ends.
    #[command(after_help = "Example:\n  mayfly attach <job> --node worker-3")]
    Attach(attach::Args),
    /// Write a job's report: one self-contained HTML file with a timeline of
    /// every attempt per node, shard balance, throughput, failures and logs.
    #[command(after_help = "Examples:\n  \
        mayfly report <job> -o report.html\n  \
        mayfly report <job> --state s3://bucket/state --provider aws --set region=eu-west-1\n\n\
        It reads only the job's state (journal, logs, final state): it works after every node is gone,\n\
        and on a running job (what has happened so far).")]
    Report(report::Args),
    /// Create a task (a Rust crate, or Python with --lang python) that builds
    /// and passes its own tests at once, with a job file and sample data to run it.
    #[command(after_help = "Examples:\n  \
        mayfly init linecount\n  \
        mayfly init linecount --dir ~/tasks\n  \
        mayfly init linecount --lang python\n\n\
        Then: cd linecount && cargo test && mayfly run job.toml\n\
        (Python: cd linecount && python3 -m unittest && mayfly run job.toml)")]
    Init(init::Args),
    /// End every node whose job's deadline has passed: those of the jobs under
    /// a state location (each through its own provider), or with --provider,
    /// every node that provider can see (e.g. every tagged EC2 instance).
    #[command(after_help = "Examples:\n  mayfly reap --state .mayfly/jobs\n  \
                            mayfly reap --provider aws --set region=eu-west-1")]
    Reap(reap::Args),
    /// Serve a provider's serverless entrypoint: each event bootstraps a job
    /// (e.g. the bootstrap of a Lambda function: `mayfly serve --provider aws`).
    #[command(after_help = "Example (a Lambda function's bootstrap script):\n  \
                            exec mayfly serve --provider /opt/libmayfly_provider_aws.so --set region=eu-west-1")]
    Serve(serve::Args),
    /// Print the least privilege a provider's principals need (on AWS: the IAM
    /// policies of the Lambda function's role and of the nodes' role).
    #[command(after_help = "Examples:\n  \
                            mayfly iam-policy aws --location s3://data/in --location s3://work/out --location s3://work/state\n  \
                            mayfly iam-policy --job job.toml")]
    IamPolicy(permissions::Args),
    /// Fetch live node prices from a provider's public price list (AWS Price
    /// List Query API, Azure Retail Prices), cached with their date for `mayfly plan job.toml`.
    #[command(
        subcommand,
        after_help = "Examples:\n  \
        mayfly prices refresh aws --set region=eu-west-1 --set instance_type=c5.large\n  \
        mayfly prices refresh azure --set location=westeurope --type Standard_F4s_v2\n  \
        mayfly prices refresh --job job.toml\n  \
        mayfly prices show\n\n\
        Without a refresh, a plan prices nodes from the table the provider was built with (and says its date);\n\
        a job's [prices] wins over both."
    )]
    Prices(prices::Args),
    /// Build what a provider's cloud runs: the serverless function's package
    /// (function.zip) and the nodes' artifact (node.tar.gz), from this checkout.
    #[command(after_help = "Example (from mayfly's checkout):\n  mayfly package aws --out dist/aws\n\n\
        For aws the build links glibc 2.34 (Amazon Linux 2023, Lambda's provided.al2023) with cargo-zigbuild:\n  \
        cargo install --locked cargo-zigbuild && pip install ziglang")]
    Package(package::Args),
    /// Create or update a provider's serverless function from a package, and
    /// upload the nodes' artifact (then set `node_artifact` in jobs' [provider]).
    #[command(after_help = "Example:\n  mayfly deploy aws --from dist/aws --function mayfly \\\n    \
        --role arn:aws:iam::123456789012:role/mayfly-function --artifacts s3://my-bucket/mayfly \\\n    \
        --set region=eu-west-1 --set event_job_url=s3://my-bucket/jobs/nightly.toml --set event_prefix=incoming/\n\n\
        The --set settings are the function's (kept in its MAYFLY_PROVIDER_SETTINGS environment variable)\n\
        and this command's; the job files name the rest (image_id, instance_profile, node_artifact, ...).")]
    Deploy(deploy::Args),
    /// Generate a sample dataset and run wordcount (map and reduce) over it locally.
    #[command(after_help = "Examples:\n  mayfly demo\n  mayfly demo --workers 4")]
    Demo(demo::Args),
    /// Print a shell completion script for mayfly's commands and flags.
    #[command(after_help = "Examples:\n  \
        mayfly completions bash > ~/.local/share/bash-completion/completions/mayfly\n  \
        mayfly completions zsh > ~/.zfunc/_mayfly       (with fpath+=~/.zfunc before compinit)\n  \
        mayfly completions fish > ~/.config/fish/completions/mayfly.fish")]
    Completions(CompletionsArgs),
    /// Run one node of a job (launched by a provider, not by hand).
    #[command(hide = true)]
    Node(node::Args),
    /// Hold a node that does nothing until it is ended (provider conformance tests).
    #[command(hide = true)]
    Idle(node::IdleArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Every line a node (or the bootstrap's provider) writes goes through
    // `tracing`, in the format MAYFLY_LOG_FORMAT names (text by default).
    if let Err(e) = mayfly_data::nodelog::install() {
        say(&format!("{}: {e}; writing text", mayfly_data::nodelog::FORMAT_ENV));
    }
    let result = match cli.command {
        Command::Build(args) => build::execute(args),
        Command::Exec(args) => exec::execute(args),
        Command::Run(args) => run::execute(args),
        Command::Plan(args) => plan::execute(args),
        Command::Status(args) => status::execute(args),
        Command::Logs(args) => logs::execute(args),
        Command::Resume(args) => resume::execute(args),
        Command::Replay(args) => replay::execute(args),
        Command::Hold(args) => hold::execute(args),
        Command::Release(args) => hold::release(args),
        Command::Attach(args) => attach::execute(args),
        Command::Report(args) => report::execute(args),
        Command::Init(args) => init::execute(args),
        Command::Reap(args) => reap::execute(args),
        Command::Serve(args) => serve::execute(args),
        Command::IamPolicy(args) => permissions::execute(args),
        Command::Prices(args) => prices::execute(args),
        Command::Package(args) => package::execute(args),
        Command::Deploy(args) => deploy::execute(args),
        Command::Demo(args) => demo::execute(args),
        Command::Completions(args) => completions(args),
        Command::Node(args) => node::execute(args),
        Command::Idle(args) => node::idle(args),
    };
    if let Err(err) = &result {
        for line in error_lines(err) {
            eprintln!("{line}");
        }
    }
    ExitCode::from(exit_code(&result))
}

/// `mayfly completions <shell>`.
#[derive(clap::Args, Debug)]
struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Writes the completion script for `args.shell` to stdout.
fn completions(args: CompletionsArgs) -> anyhow::Result<Ended> {
    use clap::CommandFactory;
    clap_complete::generate(args.shell, &mut Cli::command(), "mayfly", &mut std::io::stdout());
    Ok(Ended::Success)
}

/// The process's async runtime, built here and nowhere else in mayfly (the
/// provider bridge in `mayfly-data` aside: its blocking calls are made from
/// inside this runtime's tasks, so it has threads of its own). The commands
/// that run tasks or serve (`node`, `exec`, `replay`) build it once and hand
/// its `Handle` down to the library.
pub(crate) fn start_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("mayfly").enable_all().build()
}

/// [`start_runtime`] for a command: failing is mayfly's own failure (exit 70).
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    start_runtime().map_err(|e| mayfly_model::Internal(format!("cannot start the async runtime: {e}")).into())
}

/// How an error is told: `error: ...`, then each cause that the line before
/// does not already say (typed errors often name their cause in their own
/// message).
fn error_lines(err: &anyhow::Error) -> Vec<String> {
    let mut lines = vec![format!("error: {err}")];
    let mut said = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !said.contains(&cause) {
            lines.push(format!("  caused by: {cause}"));
        }
        said = cause;
    }
    lines
}

/// A line to the operator on stderr, `mayfly: ...`.
pub(crate) fn say(msg: &str) {
    eprintln!("mayfly: {msg}");
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every command line that `--help` shows: the lines under each
    /// `Example...:` heading (continued by a trailing `\`, without the
    /// comment after two spaces), and every `mayfly ...` quoted in backticks;
    /// with the command's name.
    fn help_examples() -> Vec<(String, String)> {
        let quoted = regex::Regex::new(r"`(mayfly [^`]+)`").unwrap();
        let mut found = Vec::new();
        let top = Cli::command();
        let commands = std::iter::once(&top).chain(top.get_subcommands().filter(|c| !c.is_hide_set()));
        for command in commands {
            let name = command.get_name().to_owned();
            let text = [command.get_about(), command.get_long_about(), command.get_after_help()]
                .into_iter()
                .flatten()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join("\n");
            found.extend(quoted.captures_iter(&text).map(|c| (name.clone(), c[1].to_owned())));
            let mut lines = text.lines();
            while let Some(line) = lines.next() {
                if !(line.trim_start().starts_with("Example") && line.trim_end().ends_with(':')) {
                    continue;
                }
                let mut example = String::new();
                for line in lines.by_ref() {
                    let line = line.trim();
                    if line.is_empty() {
                        break;
                    }
                    match line.strip_suffix('\\') {
                        Some(continued) => example.push_str(continued),
                        None => {
                            example.push_str(line.split("  ").next().unwrap_or(line));
                            found.push((name.clone(), std::mem::take(&mut example)));
                        }
                    }
                }
            }
        }
        found
    }

    /// An example's words as the shell hands them to mayfly: variables set
    /// before it and `exec` dropped, the words after a pipe or redirection
    /// dropped, and `<placeholder>`s filled in.
    fn argv(example: &str) -> Vec<String> {
        let words = shlex::split(example).unwrap_or_else(|| panic!("`{example}` does not split as a shell would"));
        let words = words.into_iter().skip_while(|w| {
            w == "exec" || w.split_once('=').is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        });
        words
            .take_while(|w| !["|", ">", "&&"].contains(&w.as_str()))
            .map(|w| match w.as_str() {
                "<job>" => "wordcount-demo-20261127-162005-ab12".to_owned(),
                "<shard>" => "12".to_owned(),
                _ => w.trim_start_matches('<').trim_end_matches('>').to_owned(),
            })
            .collect()
    }

    #[test]
    fn every_example_in_help_parses_as_written() {
        let examples = help_examples();
        let mut failures = Vec::new();
        for (command, example) in &examples {
            let argv = argv(example);
            assert_eq!(argv.first().map(String::as_str), Some("mayfly"), "`{example}` (mayfly {command} --help)");
            if let Err(e) = Cli::try_parse_from(&argv) {
                failures.push(format!("mayfly {command} --help shows `{example}`, which mayfly refuses: {e}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        // Every command a user can see shows how it is used.
        for command in Cli::command().get_subcommands().filter(|c| !c.is_hide_set()) {
            let name = command.get_name();
            assert!(
                examples.iter().any(|(c, e)| c == name && e.starts_with(&format!("mayfly {name}"))),
                "mayfly {name} --help shows no example of itself"
            );
        }
    }

    #[test]
    fn an_example_that_would_not_parse_is_caught() {
        // The test above can fail: a flag that does not exist is refused.
        assert!(Cli::try_parse_from(argv("mayfly logs <job> --nodes worker-1")).is_err());
        assert!(Cli::try_parse_from(argv("MAYFLY_WORKERS=4 mayfly run job.toml | less")).is_ok());
    }

    #[test]
    fn the_version_names_the_commit() {
        let version = Cli::command().render_version();
        assert!(version.starts_with(&format!("mayfly {} (", env!("CARGO_PKG_VERSION"))), "{version}");
    }

    #[test]
    fn a_cause_already_said_is_not_said_again() {
        let disk = || anyhow::Error::new(std::io::Error::other("disk full"));
        assert_eq!(error_lines(&disk().context("writing x: disk full")), ["error: writing x: disk full"]);
        assert_eq!(error_lines(&disk().context("writing x")), ["error: writing x", "  caused by: disk full"]);
    }
}
