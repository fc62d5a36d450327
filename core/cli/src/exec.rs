//! `mayfly exec`: a task over one input on this machine, in the sandbox.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mayfly_core::host::{Attempt, ConcatInput, FileInput, InputSource, Limits, Runtime, RuntimeConfig};
use mayfly_model::units::{ByteSize, HumanDuration};

use crate::{Ended, say};

pub(crate) fn execute(args: Args) -> Result<Ended> {
    cmd_exec(args)
}

/// `mayfly exec`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
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

fn parse_range(s: &str) -> Result<(u64, u64)> {
    let (a, b) = s.split_once("..").with_context(|| format!("--range {s:?}: expected START..END, e.g. 0..1048576"))?;
    let start: u64 = a.trim().parse().with_context(|| format!("--range {s:?}: START is not a number"))?;
    let end: u64 = b.trim().parse().with_context(|| format!("--range {s:?}: END is not a number"))?;
    if end < start {
        bail!("--range {s:?}: END is before START");
    }
    Ok((start, end))
}

fn parse_params(args: &Args) -> Result<String> {
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

fn open_inputs(args: &Args) -> Result<Arc<dyn InputSource>> {
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

fn cmd_exec(args: Args) -> Result<Ended> {
    let component =
        if args.task.is_dir() { mayfly_core::build::build_task(&args.task, &mut say)? } else { args.task.clone() };
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

    let runtime = Runtime::new(&RuntimeConfig { max_concurrent: 1, ..RuntimeConfig::default() })?;
    if let Some(w) = &runtime.cache_warning {
        say(&w.to_string());
    }
    let task = runtime.load(&component)?;
    let rt = crate::runtime()?;
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
        Ok(()) => Ok(Ended::Success),
        Err(f) => {
            let retry = if f.is_retryable() { "retryable" } else { "not retryable" };
            eprintln!("error: task {} failed on {}: {f} [{}; {retry}]", task.name(), input.name(), f.kind());
            Ok(Ended::TaskFailed)
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
