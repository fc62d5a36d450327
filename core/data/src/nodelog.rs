//! A node's log: its lines, and the pump that carries them.
//!
//! **Lines.** Every line a node writes is a `tracing` event, written by this
//! module's subscriber ([`install`]) as one line on stderr, in one of two
//! formats ([`Format`]): text for people, `<ms> <LEVEL> <who>: <message>`
//! (a task's lines `[shard N item] LEVEL message k=v`), or JSON for log
//! services, one object per line with the fields of the spans around the
//! event (`job`, `node`, `role` from the node's span; `shard`, `attempt` from
//! the attempt's) and the event's own (`item`, the task's `fields`).
//! `mayfly logs` reads both back (`mayfly_ops::history::parse_line`).
//! Credentials and tokens are never a field: nothing here is given one.
//!
//! **The pump.** A node's stdout and stderr are its log (a file the
//! provider's launch opened, in the state location or on the machine). If that
//! file cannot be written for a while (the state location unwritable, a full
//! disk), a plain `eprintln!` panics and the node dies of its log. So a node
//! writes into a pipe, and a thread copies the pipe to the log: a write that
//! fails is kept in memory (up to [`KEEP`] bytes; beyond, the loss is counted
//! and said in the log) and tried again every 200 ms, so the node goes on and
//! its lines reach the log once it can be written.
//!
//! In `mayfly-data`'s flow (`core/tests/flow.rs` checks it) it must not import `provider`
//! or anything above, nor its peers `readahead` and `plugin`; like its crate, it must not
//! import `mayfly-core`, `mayfly-ops` or the binary.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The most bytes kept while the log cannot be written.
pub const KEEP: usize = 16 << 20;

struct Pump {
    /// The log file itself (a duplicate of the node's original stderr).
    log: File,
    /// Says when the pump has written (or given up on) everything.
    done: std::sync::mpsc::Receiver<()>,
}

static PUMP: Mutex<Option<Pump>> = Mutex::new(None);

/// Ends the pump when dropped (see [`finish`]): on every way out of a node,
/// early errors and panics included, its last lines reach the log.
#[derive(Debug)]
#[must_use = "the pump ends when the guard is dropped"]
pub struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        finish(Duration::from_secs(5));
    }
}

/// How a node writes its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `<ms> <LEVEL> <who>: <message>`, for people.
    #[default]
    Text,
    /// One JSON object per line, with fields, for log services.
    Json,
}

/// A log format that is neither `text` nor `json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a log format; use text or json")]
pub struct UnknownFormat(pub String);

impl std::str::FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            _ => Err(UnknownFormat(s.to_owned())),
        }
    }
}

/// The environment variable that chooses the format of every mayfly process
/// that inherits it (`MAYFLY_LOG_FORMAT=json`); a job's `log_format` wins
/// on its nodes.
pub const FORMAT_ENV: &str = "MAYFLY_LOG_FORMAT";

/// Whether lines are JSON (the format is the process's, set at any time).
static JSON: AtomicBool = AtomicBool::new(false);

/// Sets the format of this process's lines from now on.
pub fn set_format(format: Format) {
    JSON.store(format == Format::Json, Ordering::Relaxed);
}

/// The format of this process's lines.
pub fn format() -> Format {
    if JSON.load(Ordering::Relaxed) { Format::Json } else { Format::Text }
}

/// The target of a task's lines (a node's own are under `mayfly_*` modules').
pub const TASK_TARGET: &str = "mayfly_task";

/// Installs this process's `tracing` subscriber (the first call does; later
/// ones, and a process that already has one, keep theirs), with the format
/// [`FORMAT_ENV`] names, if any. Returns what was wrong with that variable.
pub fn install() -> Result<(), UnknownFormat> {
    use tracing_subscriber::layer::SubscriberExt;
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Lines::new(None, write_line)));
    match std::env::var(FORMAT_ENV) {
        Ok(v) if !v.trim().is_empty() => v.parse().map(set_format),
        _ => Ok(()),
    }
}

/// Writes one line of a node's log as a `tracing` event: `who` says which
/// part of the node speaks (`master`, `worker-1`, `provider aws`). In text,
/// `<ms since the epoch> <LEVEL> <who>: <message>`, the shape `mayfly logs`
/// reads back. Every node line (master, worker, provider, reduce) goes
/// through here. Without a subscriber (a library's test), the text line is
/// written directly.
pub fn line(level: &str, who: &str, message: impl std::fmt::Display) {
    if tracing::dispatcher::get_default(|d| d.is::<tracing::subscriber::NoSubscriber>()) {
        let now = mayfly_model::policy::Clock::now(&mayfly_model::policy::SystemClock);
        write_line(&format!("{now} {level} {who}: {message}\n"));
        return;
    }
    match level {
        "ERROR" => tracing::error!(who, "{message}"),
        "WARN" => tracing::warn!(who, "{message}"),
        "DEBUG" => tracing::debug!(who, "{message}"),
        "TRACE" => tracing::trace!(who, "{message}"),
        _ => tracing::info!(who, "{message}"),
    }
}

/// Writes the lines a task logged in one call on `shard` (for `item`; `None`
/// for the task's `start` and `finish`), each an event under [`TASK_TARGET`]
/// at the task's level, with its fields.
pub fn task_lines(shard: u32, item: Option<&str>, lines: &[mayfly_sandbox::LogLine]) {
    use mayfly_sandbox::{Level as Task, LogSource};
    if tracing::dispatcher::get_default(|d| d.is::<tracing::subscriber::NoSubscriber>()) {
        // Without a subscriber (a library's test), as the text format has them.
        let text: String = lines
            .iter()
            .map(|line| match item {
                Some(item) => format!("[shard {shard} {item}] {line}\n"),
                None => format!("[shard {shard}] {line}\n"),
            })
            .collect();
        write_line(&text);
        return;
    }
    for line in lines {
        let stream = match line.source {
            LogSource::Task => None,
            LogSource::Stdout => Some("stdout"),
            LogSource::Stderr => Some("stderr"),
        };
        // The task's fields in their order, as JSON pairs (a field of an
        // event has a name fixed at compile time).
        let fields = (!line.fields.is_empty()).then(|| serde_json::to_string(&line.fields).unwrap_or_default());
        let (message, fields) = (line.message.as_str(), fields.as_deref());
        macro_rules! task_event {
            ($level:expr) => {
                tracing::event!(target: TASK_TARGET, $level, shard, item, stream, task_fields = fields, "{message}")
            };
        }
        match line.level {
            Task::Error => task_event!(Level::ERROR),
            Task::Warn => task_event!(Level::WARN),
            Task::Info => task_event!(Level::INFO),
            Task::Debug => task_event!(Level::DEBUG),
            Task::Trace => task_event!(Level::TRACE),
        }
    }
}

/// Writes a whole line at once: `eprintln!` writes each piece of a format
/// with a system call of its own (stderr is unbuffered), eight per line, and a
/// master logs a line per commit. A log that cannot be written is the pump's
/// to handle; a line is never worth a panic.
fn write_line(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// The subscriber's one layer: each event as one line, in the process's
/// [`Format`] (or a fixed one), handed to `out` whole.
struct Lines {
    fixed: Option<Format>,
    out: Box<dyn Fn(&str) + Send + Sync>,
    /// The fields of the node's span (`job`, `node`, `role`), for events on
    /// threads that are not inside it.
    node: Mutex<Option<Fields>>,
}

impl Lines {
    fn new(fixed: Option<Format>, out: impl Fn(&str) + Send + Sync + 'static) -> Lines {
        Lines { fixed, out: Box::new(out), node: Mutex::new(None) }
    }
}

/// The fields of a span or an event, in the order recorded.
#[derive(Debug, Clone, Default)]
struct Fields(Vec<(&'static str, Value)>);

impl Fields {
    fn set(&mut self, name: &'static str, value: Value) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => *v = value,
            None => self.0.push((name, value)),
        }
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    fn text(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field.name(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field.name(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field.name(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `message` is the formatted text (its Debug is its Display).
        self.set(field.name(), Value::from(format!("{value:?}")));
    }
}

/// Whether a callsite's events are written: every one of mayfly's (its own
/// modules and tasks), and other libraries' warnings and errors.
fn wanted(metadata: &Metadata<'_>) -> bool {
    metadata.target().starts_with("mayfly") || *metadata.level() <= Level::WARN
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Lines {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        if wanted(metadata) { tracing::subscriber::Interest::always() } else { tracing::subscriber::Interest::never() }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        wanted(metadata)
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if attrs.metadata().name() == "node"
            && let Ok(mut node) = self.node.lock()
        {
            *node = Some(fields.clone());
        }
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let now = mayfly_model::policy::Clock::now(&mayfly_model::policy::SystemClock);
        let (target, level) = (event.metadata().target(), *event.metadata().level());
        let task = target == TASK_TARGET;
        let format = self.fixed.unwrap_or_else(format);
        // A text line needs no span's field when the event says who speaks
        // (every `line`) or is a task's (its shard and item are its own): the
        // master writes one per commit, so none are gathered then.
        let mut own = Fields::default();
        event.record(&mut own);
        if format == Format::Text && (task || own.get("who").is_some()) {
            (self.out)(&text_line(now, level, &TextParts::of(task, target, &own)));
            return;
        }
        // The node's fields, then each span's from the outermost, then the
        // event's own: the nearest wins.
        let mut fields = self.node.lock().ok().and_then(|n| n.clone()).unwrap_or_default();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(theirs) = span.extensions().get::<Fields>() {
                    for (name, value) in &theirs.0 {
                        fields.set(name, value.clone());
                    }
                }
            }
        }
        for (name, value) in own.0 {
            fields.set(name, value);
        }
        let line = match format {
            Format::Text => text_line(now, level, &TextParts::of(task, target, &fields)),
            Format::Json => json_line(now, level, task, target, &fields),
        };
        (self.out)(&line);
    }
}

/// What a text line says.
struct TextParts<'a> {
    message: &'a str,
    /// A task's line: its shard and item.
    task: Option<(u64, Option<&'a str>)>,
    fields: Vec<(String, String)>,
    stream: Option<&'a str>,
    who: &'a str,
}

impl<'a> TextParts<'a> {
    /// From an event's fields (and its spans'); another library's event
    /// speaks as its target.
    fn of(task: bool, target: &'a str, fields: &'a Fields) -> TextParts<'a> {
        let who = match fields.text("who") {
            Some(who) => who,
            None if !target.starts_with("mayfly") => target,
            None => fields.text("node").unwrap_or("mayfly"),
        };
        TextParts {
            message: fields.text("message").unwrap_or_default(),
            task: task.then(|| (fields.get("shard").and_then(Value::as_u64).unwrap_or_default(), fields.text("item"))),
            fields: fields.text("task_fields").and_then(|f| serde_json::from_str(f).ok()).unwrap_or_default(),
            stream: fields.text("stream"),
            who,
        }
    }
}

/// A line for people: a node's `<ms> <LEVEL> <who>: <message>`, a task's
/// `[shard N item] LEVEL message k=v (stream)` (as `mayfly exec` prints it).
fn text_line(now: u64, level: Level, parts: &TextParts<'_>) -> String {
    let message = parts.message;
    let Some((shard, item)) = parts.task else {
        return format!("{now} {level} {}: {message}\n", parts.who);
    };
    let mut line = match item {
        Some(item) => format!("[shard {shard} {item}] {level:>5} {message}"),
        None => format!("[shard {shard}] {level:>5} {message}"),
    };
    for (k, v) in &parts.fields {
        line.push_str(&format!(" {k}={v}"));
    }
    if let Some(stream) = parts.stream {
        line.push_str(&format!(" ({stream})"));
    }
    line.push('\n');
    line
}

/// A JSON line (as this module writes them) as the text line the same event
/// would have been, without its newline; `None` for anything else.
pub fn json_to_text(line: &str) -> Option<String> {
    let Value::Object(object) = serde_json::from_str::<Value>(line).ok()? else { return None };
    let level: Level = object.get("level")?.as_str()?.parse().ok()?;
    let text = |name: &str| object.get(name).and_then(Value::as_str);
    let task = text("source") == Some("task");
    let parts = TextParts {
        message: text("message").unwrap_or_default(),
        task: task.then(|| (object.get("shard").and_then(Value::as_u64).unwrap_or_default(), text("item"))),
        fields: object
            .get("fields")
            .and_then(Value::as_object)
            .map(|f| {
                f.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect()
            })
            .unwrap_or_default(),
        stream: text("stream"),
        who: text("who").or_else(|| text("target")).or_else(|| text("node")).unwrap_or("mayfly"),
    };
    let mut line = text_line(object.get("ts").and_then(Value::as_u64).unwrap_or_default(), level, &parts);
    line.pop();
    Some(line)
}

/// A line for log services: one JSON object (its keys in alphabetical
/// order): `ts` (ms since the epoch), `level`, `source` (`node` or `task`),
/// `job`, `node`, `role`, `who`, `shard`, `attempt`, `item` where known,
/// `message`, the task's `fields` as an object (a key given twice keeps its
/// last value), and any other field of mayfly's events or spans. Another
/// library's event keeps only its `target`, `message` and `error`: its other
/// fields are not ours to vouch for.
fn json_line(now: u64, level: Level, task: bool, target: &str, fields: &Fields) -> String {
    let mut object = Map::new();
    object.insert("ts".into(), Value::from(now));
    object.insert("level".into(), Value::from(level.as_str()));
    object.insert("source".into(), Value::from(if task { "task" } else { "node" }));
    let foreign = !task && !target.starts_with("mayfly");
    if foreign {
        object.insert("target".into(), Value::from(target));
    }
    let spans = ["job", "node", "role", "shard", "attempt"];
    for (name, value) in &fields.0 {
        if foreign && !spans.contains(name) && !["message", "error"].contains(name) {
            continue;
        }
        match *name {
            "task_fields" => {
                let pairs: Vec<(String, String)> =
                    value.as_str().and_then(|f| serde_json::from_str(f).ok()).unwrap_or_default();
                object.insert(
                    "fields".into(),
                    Value::Object(pairs.into_iter().map(|(k, v)| (k, Value::from(v))).collect()),
                );
            }
            _ if value.is_null() => {}
            name => {
                object.insert(name.to_owned(), value.clone());
            }
        }
    }
    let mut line = Value::Object(object).to_string();
    line.push('\n');
    line
}

/// Puts this process's stdout and stderr through the pump, until the guard is
/// dropped or [`finish`] is called. Without a usable stderr, or if a pipe
/// cannot be made, output stays as it is.
pub fn start() -> std::io::Result<Guard> {
    let log = File::from(nix::unistd::dup(std::io::stderr().as_fd())?);
    let target = log.try_clone()?;
    let (read, write) = nix::unistd::pipe()?;
    let _ = std::io::stdout().flush();
    nix::unistd::dup2_stdout(&write)?;
    nix::unistd::dup2_stderr(&write)?;
    drop(write);
    let (tx, done) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("mayfly-log".into()).spawn(move || {
        copy(File::from(read), target);
        let _ = tx.send(());
    })?;
    // A panic's report goes straight to the log: the process may be gone
    // before the pump would have copied it.
    let direct = log.try_clone()?;
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("<unnamed>");
        let _ = writeln!(&direct, "thread '{name}' panicked: {info}");
        let _ = (&direct).flush();
        if PUMP.lock().map(|p| p.is_none()).unwrap_or(false) {
            default(info);
        }
    }));
    if let Ok(mut pump) = PUMP.lock() {
        *pump = Some(Pump { log, done });
    }
    Ok(Guard(()))
}

/// Ends the pump: stdout and stderr write to the log directly again, and the
/// pump's last lines are written first (waiting at most `limit` for a log
/// that still cannot be written). Call before the log is shipped or the node
/// ends. Does nothing if the pump was not started.
pub fn finish(limit: Duration) {
    let Some(pump) = PUMP.lock().ok().and_then(|mut p| p.take()) else { return };
    let _ = std::io::stdout().flush();
    // The pipe's last writers go: the pump reads to its end.
    let _ = nix::unistd::dup2_stdout(&pump.log);
    let _ = nix::unistd::dup2_stderr(&pump.log);
    let _ = pump.done.recv_timeout(limit);
}

fn copy(mut from: File, mut to: impl Write) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut buf = vec![0u8; 64 << 10];
    let mut pending: Vec<u8> = Vec::new();
    let (mut lost, mut open) = (0u64, true);
    let mut ended_at: Option<Instant> = None;
    while open || !pending.is_empty() {
        if open {
            // Wait for output; while lines wait for the log, no longer than 200 ms.
            let wait = if pending.is_empty() { PollTimeout::NONE } else { PollTimeout::from(200u16) };
            let ready = poll(&mut [PollFd::new(from.as_fd(), PollFlags::POLLIN)], wait).unwrap_or(1);
            if ready > 0 {
                match from.read(&mut buf) {
                    Ok(0) => open = false,
                    Ok(n) if pending.len() + n <= KEEP => pending.extend_from_slice(&buf[..n]),
                    Ok(n) => lost += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => open = false,
                }
            }
        } else {
            // The node is ending: a log that stays unwritable is given up on
            // after 2 s (`finish` waits no longer anyway).
            let since = *ended_at.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(2) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if pending.is_empty() {
            continue;
        }
        if lost > 0 {
            let note = format!("[mayfly: {lost} bytes of this log were lost while it could not be written]\n");
            if to.write_all(note.as_bytes()).is_ok() {
                lost = 0;
            }
        }
        match to.write(&pending) {
            Ok(n) => {
                pending.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // Kept; tried again at the next output or within 200 ms.
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a node logs (a line of its own in the node's span, one in an
    /// attempt's span, a task's line with fields, another library's info and
    /// warning), written by a subscriber of `format`.
    fn logged(format: Format) -> Vec<String> {
        use tracing_subscriber::layer::SubscriberExt;
        let got = std::sync::Arc::new(Mutex::new(String::new()));
        let sink = got.clone();
        let dispatch =
            tracing::Dispatch::new(tracing_subscriber::registry().with(Lines::new(Some(format), move |l: &str| {
                sink.lock().unwrap().push_str(l);
            })));
        tracing::dispatcher::with_default(&dispatch, || {
            let node = tracing::info_span!("node", job = "wc-1", node = "worker-2", role = "worker");
            let _node = node.enter();
            line("INFO", "worker-2", "leased shard 7");
            let attempt = tracing::info_span!("attempt", shard = 7u32, attempt = 2u32);
            let _attempt = attempt.enter();
            line("WARN", "provider local", format_args!("slow {}", "disk"));
            let task = mayfly_sandbox::LogLine {
                at_ms: 3,
                level: mayfly_sandbox::Level::Warn,
                source: mayfly_sandbox::LogSource::Task,
                message: "odd line skipped".into(),
                fields: vec![("line".into(), "3".into()), ("why".into(), "tab=\"\t\"".into())],
            };
            task_lines(7, Some("a/b.txt#0-10"), &[task]);
            // A line on another thread, outside the spans: still the node's.
            std::thread::scope(|s| {
                s.spawn(|| {
                    tracing::dispatcher::with_default(&dispatch, || line("ERROR", "worker-2", "heartbeat failed"))
                });
            });
            tracing::info!(target: "hyper::client", "connected");
            tracing::warn!(target: "object_store::client", url = "https://b.s3/k?X-Amz-Signature=abc", "retrying");
        });
        let text = got.lock().unwrap().clone();
        text.lines().map(without_time).collect()
    }

    /// A line without its leading time (a node's line has one; a task's not).
    fn without_time(line: &str) -> String {
        match line.split_once(' ') {
            Some((ts, rest)) if ts.len() >= 12 && ts.bytes().all(|b| b.is_ascii_digit()) => rest.to_owned(),
            _ => line.to_owned(),
        }
    }

    #[test]
    fn text_lines_are_what_people_and_mayfly_logs_read() {
        assert_eq!(
            logged(Format::Text),
            [
                "INFO worker-2: leased shard 7",
                "WARN provider local: slow disk",
                "[shard 7 a/b.txt#0-10]  WARN odd line skipped line=3 why=tab=\"\t\"",
                "ERROR worker-2: heartbeat failed",
                "WARN object_store::client: retrying",
            ]
        );
    }

    #[test]
    fn json_lines_carry_the_spans_and_the_tasks_fields() {
        let lines = logged(Format::Json);
        let values: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(values.len(), 5, "{lines:?}");
        let node = &values[0];
        assert_eq!(
            (node["job"].as_str(), node["node"].as_str(), node["role"].as_str()),
            (Some("wc-1"), Some("worker-2"), Some("worker"))
        );
        assert_eq!(
            (node["level"].as_str(), node["source"].as_str(), node["message"].as_str()),
            (Some("INFO"), Some("node"), Some("leased shard 7"))
        );
        assert!(node["ts"].as_u64().unwrap() > 1_700_000_000_000 && node.get("shard").is_none());
        let provider = &values[1];
        assert_eq!(
            (provider["shard"].as_u64(), provider["attempt"].as_u64(), provider["who"].as_str()),
            (Some(7), Some(2), Some("provider local"))
        );
        let task = &values[2];
        assert_eq!(
            (task["source"].as_str(), task["item"].as_str(), task["shard"].as_u64()),
            (Some("task"), Some("a/b.txt#0-10"), Some(7))
        );
        assert_eq!(task["fields"], serde_json::json!({ "line": "3", "why": "tab=\"\t\"" }));
        assert_eq!(
            (task["level"].as_str(), task["attempt"].as_u64(), task["job"].as_str()),
            (Some("WARN"), Some(2), Some("wc-1"))
        );
        let other_thread = &values[3];
        assert_eq!((other_thread["node"].as_str(), other_thread["level"].as_str()), (Some("worker-2"), Some("ERROR")));
        assert!(other_thread.get("shard").is_none(), "outside the attempt's span");
        assert_eq!(values[4]["target"].as_str(), Some("object_store::client"));
        assert!(values[4].get("url").is_none(), "another library's fields are left out: {}", values[4]);
        // Each JSON line reads back as the text line it would have been.
        let text = logged(Format::Text);
        for (json, text) in lines.iter().zip(&text) {
            assert_eq!(without_time(&json_to_text(json).unwrap()), *text, "{json}");
        }
        assert_eq!(json_to_text("{\"not\": \"ours\"}"), None);
        assert_eq!(json_to_text("plain"), None);
    }

    #[test]
    fn a_format_is_text_or_json() {
        assert_eq!("JSON".parse(), Ok(Format::Json));
        assert_eq!(" text".parse(), Ok(Format::Text));
        assert!("yaml".parse::<Format>().unwrap_err().to_string().contains("use text or json"));
    }

    /// A log that refuses its first `failures` writes, then takes everything.
    struct Flaky {
        failures: u32,
        got: std::sync::Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.failures > 0 {
                self.failures -= 1;
                return Err(std::io::Error::from_raw_os_error(1));
            }
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_log_that_fails_for_a_while_gets_every_line_once_it_can_be_written() {
        let (read, write) = nix::unistd::pipe().unwrap();
        let got = std::sync::Arc::new(Mutex::new(Vec::new()));
        let log = Flaky { failures: 5, got: got.clone() };
        let pump = std::thread::spawn(move || copy(File::from(read), log));
        let mut w = File::from(write);
        for i in 0..1000 {
            writeln!(w, "line {i}").unwrap();
        }
        drop(w);
        pump.join().unwrap();
        let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000, "every line, once");
        assert!(lines.iter().enumerate().all(|(i, l)| *l == format!("line {i}")), "in order");
    }

    #[test]
    fn output_is_never_blocked_by_a_log_that_keeps_failing() {
        let (read, write) = nix::unistd::pipe().unwrap();
        let full = File::options().write(true).open("/dev/full").unwrap();
        let pump = std::thread::spawn(move || copy(File::from(read), full));
        let started = Instant::now();
        let mut w = File::from(write);
        // Far more than a pipe's buffer: a pump stuck on its log would block this writer.
        for _ in 0..64 {
            w.write_all(&[b'x'; 16 << 10]).unwrap();
        }
        drop(w);
        pump.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
