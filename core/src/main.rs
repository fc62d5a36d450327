//! The `mayfly` command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use mayfly_core::build;
use mayfly_core::history::LogFilter;
use mayfly_core::host::{Attempt, ConcatInput, FileInput, InputSource, Limits, Runtime, RuntimeConfig};
use mayfly_core::units::{ByteSize, HumanDuration};

mod jobs;

/// Exit code when the task ran and failed.
pub(crate) const EXIT_TASK_FAILED: u8 = 1;
/// Exit code for bad input: arguments, files, a task that cannot load.
pub(crate) const EXIT_USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "mayfly",
    version,
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
    /// Build a task crate into a WebAssembly component and print its path.
    #[command(after_help = "Examples:\n  mayfly build tasks/wordcount\n  mayfly build ~/my-task")]
    Build {
        /// The task crate's directory.
        dir: PathBuf,
    },
    /// Run a task over one input file on this machine, in the sandbox.
    #[command(after_help = "Examples:\n  \
        mayfly exec tasks/wordcount --input README.md\n  \
        mayfly exec tasks/grep --input src/main.rs --param pattern='fn \\w+' --out /tmp/grep-out\n  \
        mayfly exec target/wasm32-wasip2/release/sha256.wasm --input big.iso --json\n  \
        mayfly exec tasks/wordcount --input a.tsv --input b.tsv --param mode=reduce\n\n\
        Several --input files are concatenated into one item (how a reduce task sees map outputs).\n\
        A --param value is read as JSON when it parses (42, true, \"x\", [1,2]) and as a string otherwise.")]
    Exec(ExecArgs),
    /// Run a job on its provider, follow it to the end, and print a summary.
    #[command(after_help = "Examples:\n  mayfly run job.toml\n  MAYFLY_WORKERS=4 mayfly run job.toml\n\n\
        Exit codes: 0 every shard committed; 1 some shards failed or the deadline passed; 2 bad input; 3 the master was lost (resume it).")]
    Run {
        /// The job file.
        job: PathBuf,
    },
    /// Show what a job would do and cost: shards and their balance, time,
    /// node-hours and price, the bootstrap and credential budgets, and a
    /// warning for each rule it would break. Nothing is launched.
    #[command(after_help = "Examples:\n  \
        mayfly plan job.toml\n  \
        mayfly plan job.toml --rate 40MiB     a slower task: 40 MiB/s per worker\n  \
        mayfly plan job.toml --json | jq .estimate.ceiling_usd\n\n\
        Prices: USD per node-hour from a shipped table (common AWS and Azure sizes, on demand,\n\
        us-east-1 / East US, dated) or the job file's [prices] table, e.g.\n  \
        [prices]\n  \
        \"c5.large\" = 0.034   # a spot price\n\n\
        The ceiling is every node billed to the deadline: no node outlives it.")]
    Plan {
        /// The job file.
        job: PathBuf,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
        /// The rate one worker is assumed to process input at (per second).
        #[arg(long, value_name = "SIZE", default_value = "100MiB")]
        rate: ByteSize,
    },
    /// Show a job's progress: live while it runs (shards, rate, ETA, the
    /// deadline, each worker), its summary once it has ended.
    #[command(after_help = "Examples:\n  \
        mayfly status wordcount-demo-20261127-162005-ab12 --state mayfly-demo/state\n  \
        mayfly status <job> --once           one snapshot, then exit\n  \
        mayfly status <job> --json | jq .counts\n\n\
        While the job runs the view refreshes until it ends (Ctrl-C stops watching; the job goes on).\n\
        Exit codes: 0 shown; 2 no such job; 3 no running master and the job did not end (the message says what to do).")]
    Status {
        /// The job id.
        job: String,
        #[command(flatten)]
        at: jobs::StateArgs,
        /// Print as JSON (one snapshot).
        #[arg(long)]
        json: bool,
        /// Print one snapshot and exit.
        #[arg(long)]
        once: bool,
        /// How often the live view refreshes.
        #[arg(long, value_name = "DURATION", default_value = "1s")]
        every: HumanDuration,
    },
    /// Print a job's node and task logs (they outlive the nodes); follow them
    /// while it runs.
    #[command(after_help = "Examples:\n  \
        mayfly logs <job>                       every node's log, master first\n  \
        mayfly logs <job> --node worker-1\n  \
        mayfly logs <job> --shard 12            what every node said about shard 12\n  \
        mayfly logs <job> --level warn          warnings and errors only\n  \
        mayfly logs <job> --follow              new lines as they come, until the job ends\n\n\
        Each line is prefixed with its node. Node lines read `<ms since epoch> <LEVEL> <node>: ...`;\n\
        task lines `[shard N item] <LEVEL> ...`.\n\
        Exit codes: 0 shown (--follow: the job ended); 2 no such job or node; 3 (--follow) every node is\n\
        gone and the job did not end (its master was lost: `mayfly resume <job>`).")]
    Logs {
        /// The job id.
        job: String,
        /// Only this node (`master`, `worker-1`, ...).
        #[arg(long)]
        node: Option<String>,
        /// Only lines about this shard.
        #[arg(long)]
        shard: Option<u32>,
        /// Only lines at least this severe: trace, debug, info, warn, error.
        #[arg(long, value_parser = parse_level)]
        level: Option<mayfly_core::host::Level>,
        /// Keep printing new lines until the job ends.
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        at: jobs::StateArgs,
    },
    /// Continue a job whose master was lost: committed shards are not redone.
    #[command(after_help = "Example:\n  mayfly resume <job>")]
    Resume {
        /// The job id.
        job: String,
        #[command(flatten)]
        at: jobs::StateArgs,
    },
    /// Run one shard of a job again on this machine, exactly as its workers
    /// ran it: the same component (checked by sha256), parameters, input
    /// ranges and limits. Outputs go to a local directory, never to the job's.
    #[command(after_help = "Examples:\n  \
        mayfly replay <job> 12                    every item of shard 12\n  \
        mayfly replay <job> 12 --item logs/a.txt  one item\n  \
        mayfly replay <job> 12 --out /tmp/r --json\n\n\
        `mayfly logs <job> --shard 12` shows what the cluster said about it.\n\
        Exit codes: 0 every item succeeded; 1 an item failed (its error and logs are printed); 2 bad input.")]
    Replay {
        /// The job id.
        job: String,
        /// The shard.
        shard: u32,
        /// Use the inputs a held node kept (run this where that node runs; locally, here).
        #[arg(long)]
        node: Option<String>,
        /// Only this item (its key, as the logs name it).
        #[arg(long)]
        item: Option<String>,
        /// Where the outputs go (default `replay-<job>-shard-<N>`).
        #[arg(long, short = 'o')]
        out: Option<PathBuf>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: jobs::StateArgs,
    },
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
    Hold {
        /// The job id.
        job: String,
        /// Only this worker (default: every worker of the job).
        #[arg(long)]
        node: Option<String>,
        /// How long (cut to the job's deadline).
        #[arg(long = "for", value_name = "DURATION", default_value = "30m")]
        for_: HumanDuration,
        #[command(flatten)]
        at: jobs::StateArgs,
    },
    /// End a hold: the worker resumes, or ends by the normal rules.
    #[command(
        after_help = "Examples:\n  mayfly release <job> --node worker-3\n  mayfly release <job>   every hold of the job"
    )]
    Release {
        /// The job id.
        job: String,
        /// Only this worker's hold (default: every hold of the job).
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        at: jobs::StateArgs,
    },
    /// Show how to reach a running node (locally: its pid, log and directory;
    /// in a cloud: its instance), then stream its log until it ends.
    #[command(after_help = "Example:\n  mayfly attach <job> --node worker-3")]
    Attach {
        /// The job id.
        job: String,
        /// The node (`master`, `worker-1`, ...).
        #[arg(long)]
        node: String,
        #[command(flatten)]
        at: jobs::StateArgs,
    },
    /// Write a job's report: one self-contained HTML file with a timeline of
    /// every attempt per node, shard balance, throughput, failures and logs.
    #[command(after_help = "Examples:\n  \
        mayfly report <job> -o report.html\n  \
        mayfly report <job> --state s3://bucket/state --provider aws --set region=eu-west-1\n\n\
        It reads only the job's state (journal, logs, final state): it works after every node is gone,\n\
        and on a running job (what has happened so far).")]
    Report {
        /// The job id.
        job: String,
        /// The HTML file to write.
        #[arg(long, short = 'o', default_value = "report.html")]
        out: PathBuf,
        #[command(flatten)]
        at: jobs::StateArgs,
    },
    /// Create a task crate that builds and passes its own test at once, with
    /// a job file and sample data to run it.
    #[command(after_help = "Examples:\n  \
        mayfly init linecount\n  \
        mayfly init linecount --dir ~/tasks\n\n\
        Then: cd linecount && cargo test && mayfly run job.toml")]
    Init {
        /// The task's name (a Rust package name: letters, digits, `-`, `_`).
        name: String,
        /// Where the crate's directory is created.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// mayfly's sdk directory (default: the one this mayfly was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// End every node whose job's deadline has passed: those of the jobs under
    /// a state location (each through its own provider), or with --provider,
    /// every node that provider can see (e.g. every tagged EC2 instance).
    #[command(after_help = "Examples:\n  mayfly reap --state .mayfly/jobs\n  \
                            mayfly reap --provider aws --set region=eu-west-1")]
    Reap {
        /// The state location to scan.
        #[arg(long, default_value = ".mayfly/jobs")]
        state: PathBuf,
        /// A provider to ask directly: a name (`aws`) or a plugin's path.
        #[arg(long)]
        provider: Option<String>,
        /// A setting of that provider (repeatable), as in a job's `[provider]` section.
        #[arg(long = "set", value_name = "KEY=VALUE", requires = "provider")]
        settings: Vec<String>,
    },
    /// Serve a provider's serverless entrypoint: each event bootstraps a job
    /// (e.g. the bootstrap of a Lambda function: `mayfly serve --provider aws`).
    #[command(after_help = "Example (a Lambda function's bootstrap script):\n  \
                            exec mayfly serve --provider /opt/libmayfly_provider_aws.so --set region=eu-west-1")]
    Serve {
        /// The provider: a name (`aws`) or a plugin's path.
        #[arg(long)]
        provider: String,
        /// A setting of that provider (repeatable), as in a job's `[provider]` section.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
    /// Print the least privilege a provider's principals need (on AWS: the IAM
    /// policies of the Lambda function's role and of the nodes' role).
    #[command(after_help = "Examples:\n  \
                            mayfly iam-policy aws --location s3://data/in --location s3://work/out --location s3://work/state\n  \
                            mayfly iam-policy --job job.toml")]
    IamPolicy {
        /// The provider: a name (`aws`) or a plugin's path.
        #[arg(required_unless_present = "job")]
        provider: Option<String>,
        /// A setting of that provider (repeatable), as in a job's `[provider]` section.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// A location the jobs read or write (repeatable).
        #[arg(long = "location", value_name = "URL")]
        locations: Vec<String>,
        /// Take the provider and the locations (input, output, state) from this job file.
        #[arg(long, conflicts_with = "provider")]
        job: Option<PathBuf>,
    },
    /// Build what a provider's cloud runs: the serverless function's package
    /// (function.zip) and the nodes' artifact (node.tar.gz), from this checkout.
    #[command(after_help = "Example (from mayfly's checkout):\n  mayfly package aws --out dist/aws\n\n\
        For aws the build links glibc 2.34 (Amazon Linux 2023, Lambda's provided.al2023) with cargo-zigbuild:\n  \
        cargo install --locked cargo-zigbuild && pip install ziglang")]
    Package {
        /// The provider (`aws`).
        provider: String,
        /// Where the package goes.
        #[arg(long, default_value = "dist")]
        out: PathBuf,
        /// The mayfly checkout to build (default: the current directory).
        #[arg(long, default_value = ".")]
        workspace: PathBuf,
        /// The cargo profile to build with: `ship` (optimized, stripped: what a
        /// cloud should run) or `package-test` (unoptimized, quick to build:
        /// for trying the packaging, as mayfly's own tests do).
        #[arg(long, default_value = "ship")]
        profile: String,
    },
    /// Create or update a provider's serverless function from a package, and
    /// upload the nodes' artifact (then set `node_artifact` in jobs' [provider]).
    #[command(after_help = "Example:\n  mayfly deploy aws --from dist/aws --function mayfly \\\n    \
        --role arn:aws:iam::123456789012:role/mayfly-function --artifacts s3://my-bucket/mayfly \\\n    \
        --set region=eu-west-1 --set event_job_url=s3://my-bucket/jobs/nightly.toml --set event_prefix=incoming/\n\n\
        The --set settings are the function's (kept in its MAYFLY_PROVIDER_SETTINGS environment variable)\n\
        and this command's; the job files name the rest (image_id, instance_profile, node_artifact, ...).")]
    Deploy {
        /// The provider (`aws`), a name or a plugin's path.
        provider: String,
        /// The package's directory (from `mayfly package`).
        #[arg(long, default_value = "dist")]
        from: PathBuf,
        /// The function's name.
        #[arg(long)]
        function: String,
        /// The identity the function runs as (on AWS, its execution role's ARN).
        #[arg(long)]
        role: String,
        /// Where the artifacts are uploaded (`s3://bucket/prefix`): function.zip, and
        /// node.tar.gz as node-<its sha256>.tar.gz.
        #[arg(long, value_name = "URL")]
        artifacts: String,
        /// The function's time limit.
        #[arg(long, value_name = "DURATION")]
        timeout: Option<HumanDuration>,
        /// The function's memory, in MiB.
        #[arg(long, value_name = "MIB", default_value_t = 512)]
        memory: u64,
        /// A setting of the provider (repeatable), as in a job's `[provider]` section.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
    /// Generate a sample dataset and run wordcount (map and reduce) over it locally.
    Demo {
        /// Where the dataset, outputs and state go.
        #[arg(long, default_value = "mayfly-demo")]
        dir: PathBuf,
        /// Workers.
        #[arg(long, default_value_t = 2)]
        workers: u32,
    },
    /// Run one node of a job (launched by a provider, not by hand).
    #[command(hide = true)]
    Node {
        #[arg(long)]
        role: String,
        #[arg(long)]
        job: String,
        #[arg(long)]
        node: String,
        #[arg(long)]
        dir: String,
        /// The provider's selection (JSON), for a remote state.
        #[arg(long)]
        provider: Option<String>,
    },
    /// Hold a node that does nothing until it is ended (provider conformance tests).
    #[command(hide = true)]
    Idle {
        /// How long at most.
        #[arg(long = "for", default_value = "10m")]
        for_: mayfly_core::units::HumanDuration,
    },
}

#[derive(clap::Args, Debug)]
struct ExecArgs {
    /// A component (.wasm) or a task crate directory (built first).
    task: PathBuf,
    /// The input file (repeat to concatenate several).
    #[arg(long = "input", short = 'i', required = true)]
    inputs: Vec<PathBuf>,
    /// Only bytes START..END of the input (as a job does with a split range).
    #[arg(long, value_name = "START..END")]
    range: Option<String>,
    /// A task parameter, `key=value` (repeatable).
    #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// All parameters as one JSON object (merged under the --param ones).
    #[arg(long, value_name = "JSON")]
    params_json: Option<String>,
    /// Where outputs go (they appear only if the task succeeds).
    #[arg(long, short = 'o', default_value = "mayfly-out")]
    out: PathBuf,
    /// Wall-time limit of the attempt.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<HumanDuration>,
    /// Memory limit across all of the task's memories.
    #[arg(long, value_name = "SIZE")]
    memory: Option<ByteSize>,
    /// Limit on the bytes of all outputs.
    #[arg(long, value_name = "SIZE")]
    max_output: Option<ByteSize>,
    /// Limit on the bytes of log lines (stdout and stderr included).
    #[arg(long, value_name = "SIZE")]
    max_log: Option<ByteSize>,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build { dir } => cmd_build(&dir).map(|()| ExitCode::SUCCESS),
        Command::Exec(args) => cmd_exec(args),
        Command::Run { job } => jobs::cmd_run(&job),
        Command::Plan { job, json, rate } => jobs::cmd_plan(&job, json, rate.0).map(|()| ExitCode::SUCCESS),
        Command::Replay { job, shard, node, item, out, json, at } => {
            jobs::cmd_replay(&job, &at, &jobs::ReplayArgs { node, shard, item, out, json })
        }
        Command::Hold { job, node, for_, at } => jobs::cmd_hold(&job, &at, node.as_deref(), for_.0),
        Command::Release { job, node, at } => jobs::cmd_release(&job, &at, node.as_deref()),
        Command::Attach { job, node, at } => jobs::cmd_attach(&job, &at, &node),
        Command::Report { job, out, at } => jobs::cmd_report(&job, &at, &out),
        Command::Init { name, dir, sdk } => jobs::cmd_init(&name, &dir, sdk.as_deref()),
        Command::Status { job, at, json, once, every } => {
            jobs::cmd_status(&job, &at, &jobs::StatusArgs { json, once, every: every.0 })
        }
        Command::Logs { job, node, shard, level, follow, at } => {
            jobs::cmd_logs(&job, &at, &jobs::LogsArgs { filter: LogFilter { node, shard, level }, follow })
        }
        Command::Resume { job, at } => jobs::cmd_resume(&job, &at),
        Command::Reap { state, provider, settings } => {
            jobs::cmd_reap(&state, provider.as_deref(), &settings).map(|()| ExitCode::SUCCESS)
        }
        Command::Serve { provider, settings } => jobs::cmd_serve(&provider, &settings),
        Command::IamPolicy { provider, settings, locations, job } => {
            jobs::cmd_permissions(provider.as_deref(), &settings, &locations, job.as_deref())
        }
        Command::Demo { dir, workers } => jobs::cmd_demo(&dir, workers),
        Command::Package { provider, out, workspace, profile } => {
            jobs::cmd_package(&provider, &out, &workspace, &profile)
        }
        Command::Deploy { provider, from, function, role, artifacts, timeout, memory, settings } => jobs::cmd_deploy(
            &provider,
            &settings,
            &from,
            jobs::DeployArgs {
                function,
                role,
                artifacts,
                timeout_s: timeout.map_or(0, |t| t.0.as_secs()),
                memory_mb: memory,
            },
        ),
        Command::Node { role, job, node, dir, provider } => {
            jobs::cmd_node(&role, &job, &node, &dir, provider.as_deref())
        }
        Command::Idle { for_ } => jobs::cmd_idle(for_.0),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn parse_level(s: &str) -> Result<mayfly_core::host::Level, String> {
    mayfly_core::history::parse_level(s)
        .ok_or_else(|| format!("{s:?} is not a level; use trace, debug, info, warn or error"))
}

pub(crate) fn say(msg: &str) {
    eprintln!("mayfly: {msg}");
}

fn cmd_build(dir: &Path) -> Result<()> {
    let path = build::build_task(dir, &mut say)?;
    println!("{}", path.display());
    Ok(())
}

fn parse_range(s: &str) -> Result<(u64, u64)> {
    let (a, b) = s.split_once("..").with_context(|| format!("--range {s:?}: expected START..END, e.g. 0..1048576"))?;
    let start: u64 = a.trim().parse().with_context(|| format!("--range {s:?}: START is not a number"))?;
    let end: u64 = b.trim().parse().with_context(|| format!("--range {s:?}: END is not a number"))?;
    if end < start {
        bail!("--range {s:?}: END is before START");
    }
    Ok((start, end))
}

fn parse_params(args: &ExecArgs) -> Result<String> {
    let mut map = match &args.params_json {
        Some(raw) => match serde_json::from_str::<serde_json::Value>(raw) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(_) => bail!("--params-json must be a JSON object, like '{{\"pattern\": \"x\"}}'"),
            Err(e) => bail!("--params-json is not valid JSON: {e}"),
        },
        None => serde_json::Map::new(),
    };
    for p in &args.params {
        let (k, v) = p.split_once('=').with_context(|| format!("--param {p:?}: expected KEY=VALUE"))?;
        if k.is_empty() {
            bail!("--param {p:?}: the key is empty");
        }
        let value = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_owned()));
        map.insert(k.to_owned(), value);
    }
    Ok(serde_json::Value::Object(map).to_string())
}

fn open_inputs(args: &ExecArgs) -> Result<Arc<dyn InputSource>> {
    let name_of =
        |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string());
    let open = |p: &PathBuf| -> Result<FileInput> {
        FileInput::open(p, name_of(p)).with_context(|| format!("cannot read input {}", p.display()))
    };
    if let Some(range) = &args.range {
        if args.inputs.len() != 1 {
            bail!("--range works with exactly one --input");
        }
        let (start, end) = parse_range(range)?;
        let path = &args.inputs[0];
        let input = FileInput::range(path, name_of(path), start, end - start)
            .with_context(|| format!("cannot read input {}", path.display()))?;
        return Ok(Arc::new(input));
    }
    if args.inputs.len() == 1 {
        return Ok(Arc::new(open(&args.inputs[0])?));
    }
    let parts =
        args.inputs.iter().map(|p| open(p).map(|f| Arc::new(f) as Arc<dyn InputSource>)).collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(ConcatInput::new(format!("{} inputs", parts.len()), parts)))
}

fn cmd_exec(args: ExecArgs) -> Result<ExitCode> {
    let component = if args.task.is_dir() { build::build_task(&args.task, &mut say)? } else { args.task.clone() };
    let params = parse_params(&args)?;
    let input = open_inputs(&args)?;
    let defaults = Limits::default();
    let limits = Limits {
        attempt_time: args.timeout.unwrap_or(defaults.attempt_time),
        memory: args.memory.unwrap_or(defaults.memory),
        output: args.max_output.unwrap_or(defaults.output),
        log: args.max_log.unwrap_or(defaults.log),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create output directory {}", args.out.display()))?;
    let staging = args.out.join(format!(".mayfly-staging-{}", std::process::id()));

    let runtime =
        Runtime::new(&RuntimeConfig { max_concurrent: 1, ..RuntimeConfig::default() }).map_err(anyhow::Error::msg)?;
    if let Some(w) = &runtime.cache_warning {
        say(w);
    }
    let task = runtime.load(&component)?;
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_time().build().context("starting the async runtime")?;
    let outcome = rt.block_on(
        runtime.run(&task, Attempt { input: input.clone(), params: params.into(), limits, staging: staging.clone() }),
    );

    let published = if outcome.result.is_ok() { publish(&outcome.outputs, &args.out)? } else { Vec::new() };
    let _ = std::fs::remove_dir_all(&staging);

    if args.json {
        let json = serde_json::json!({
            "task": task.name(),
            "task_sha256": task.sha256(),
            "input": input.name(),
            "input_bytes": input.size(),
            "ok": outcome.result.is_ok(),
            "failure": outcome.result.as_ref().err(),
            "error": outcome.result.as_ref().err().map(|f| f.to_string()),
            "retryable": outcome.result.as_ref().err().map(|f| f.is_retryable()),
            "outputs": published.iter().map(|(p, b)| serde_json::json!({"path": p, "bytes": b})).collect::<Vec<_>>(),
            "logs": outcome.logs,
            "elapsed_ms": outcome.elapsed.as_secs_f64() * 1e3,
            "peak_memory": outcome.peak_memory,
            "input_read": outcome.input_read,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        let how = if task.from_cache { "loaded from cache" } else { "compiled" };
        println!("task     {} ({how} in {})", task.name(), ms(task.load_time));
        println!("input    {} ({} bytes)", input.name(), input.size());
        match &outcome.result {
            Ok(()) => println!(
                "result   ok in {} (read {} bytes, peak memory {})",
                ms(outcome.elapsed),
                outcome.input_read,
                ByteSize(outcome.peak_memory)
            ),
            Err(f) => println!("result   FAILED in {}: {f}", ms(outcome.elapsed)),
        }
        if !published.is_empty() {
            println!("outputs");
            for (path, bytes) in &published {
                println!("  {}  ({bytes} bytes)", path.display());
            }
        }
        if !outcome.logs.is_empty() {
            println!("logs");
            for line in &outcome.logs {
                println!("  {line}");
            }
        }
    }
    match outcome.result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(f) => {
            let retry = if f.is_retryable() { "retryable" } else { "not retryable" };
            eprintln!("error: task {} failed on {}: {f} [{}; {retry}]", task.name(), input.name(), f.kind());
            Ok(ExitCode::from(EXIT_TASK_FAILED))
        }
    }
}

/// Publishes a successful attempt's staged outputs under `dir`: each is
/// renamed into place, so a reader sees the old file or the new one, never a
/// partial one. Returns each output's path and size.
pub(crate) fn publish(outputs: &[mayfly_core::host::StagedOutput], dir: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let mut published = Vec::new();
    for out in outputs {
        let dest = dir.join(&out.name);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::rename(&out.path, &dest).with_context(|| format!("publishing {}", dest.display()))?;
        published.push((dest, out.bytes));
    }
    Ok(published)
}

fn ms(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}
