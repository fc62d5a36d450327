//! The job report: one self-contained HTML page about a batch job.
//!
//! `mayfly report <job>` gathers a [`Report`] (the job's figures, its shards, every
//! attempt and every failure) and [`render`] turns it into a single HTML document:
//! the figures, a timeline of the attempts on each node, the balance of shard sizes,
//! the throughput over time and the failures. The page needs no network: its style,
//! its charts (inline SVG) and its one small script are all in the file, and its
//! content security policy forbids loading anything else.
//!
//! In `mayfly-ops`'s flow (`core/tests/flow.rs` checks it) it must not import `reap`,
//! `scaffold`, `check`, `replay` or `watch`, or anything above, nor its peers `cost`,
//! `package` and `demo`; like its crate, it must not import the binary.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write};

use mayfly_model::units::{ByteSize, HumanDuration, Utc};
use serde::{Deserialize, Serialize};

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptEnd {
    /// Its shard was committed by this attempt.
    Committed,
    /// It failed and the shard ran again (or will).
    Retried,
    /// It failed and the shard failed for good.
    Failed,
    /// Its lease expired: the node died, stalled or was killed.
    Lost,
    /// Handed back without a failure (node draining, storage trouble).
    Released,
    /// No end recorded: still running, or cut by the job's end or deadline.
    Unfinished,
}

impl AttemptEnd {
    /// Every outcome, in the order the legend shows them.
    pub const ALL: [AttemptEnd; 6] = [
        AttemptEnd::Committed,
        AttemptEnd::Retried,
        AttemptEnd::Failed,
        AttemptEnd::Lost,
        AttemptEnd::Released,
        AttemptEnd::Unfinished,
    ];

    /// The outcome's name: as serialized, and the CSS class the page gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptEnd::Committed => "committed",
            AttemptEnd::Retried => "retried",
            AttemptEnd::Failed => "failed",
            AttemptEnd::Lost => "lost",
            AttemptEnd::Released => "released",
            AttemptEnd::Unfinished => "unfinished",
        }
    }
}

/// One attempt at a shard: a lease of it by a node, and how that ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportAttempt {
    /// The shard's id.
    pub shard: u32,
    /// The attempt's number for that shard, from 1.
    pub attempt: u32,
    /// The node that ran it.
    pub node: String,
    /// When it started, in milliseconds since the Unix epoch.
    pub start: u64,
    /// When it ended, in milliseconds since the Unix epoch, if recorded.
    pub end: Option<u64>,
    /// How it ended.
    pub outcome: AttemptEnd,
    /// Its error, if it failed with one.
    pub error: Option<String>,
    /// The reduce partition it ran, when it was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce_partition: Option<u32>,
}

/// One shard of the plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportShard {
    /// The shard's id.
    pub id: u32,
    /// Its input bytes.
    pub bytes: u64,
    /// Its number of items.
    pub items: usize,
    /// Its state: `committed`, `failed`, `pending` or `leased`.
    pub state: String,
}

/// A shard that failed for good.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportFailure {
    /// The shard's id.
    pub shard: u32,
    /// Its final error.
    pub error: String,
    /// The shard's log lines, each prefixed with its node.
    pub log: Vec<String>,
}

/// Everything the report page shows about one job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The job's id.
    pub job: String,
    /// The job's name.
    pub name: String,
    /// The job's provider.
    pub provider: String,
    /// The job's task.
    pub task: String,
    /// When the job was created, in milliseconds since the Unix epoch.
    pub created_at: u64,
    /// The job's deadline, in milliseconds since the Unix epoch.
    pub expires_at: u64,
    /// When the job ended, in milliseconds since the Unix epoch, if it did.
    pub ended_at: Option<u64>,
    /// `done`, `deadline`, `running` or `lost` (the master is gone and the job never ended).
    pub outcome: String,
    /// Workers the job ran on.
    pub workers: u32,
    /// Input objects.
    pub objects: u64,
    /// Bytes of all inputs.
    pub total_bytes: u64,
    /// Bytes of the committed shards.
    pub committed_bytes: u64,
    /// Shards committed.
    pub committed: u32,
    /// Shards failed for good.
    pub failed: u32,
    /// Shards not yet committed nor failed.
    pub pending: u32,
    /// Attempts that were run again.
    pub retries: u32,
    /// Outputs written.
    pub outputs: usize,
    /// Items left out of their shards: (shard, item, error).
    #[serde(default)]
    pub quarantined: Vec<(u32, String, String)>,
    /// The reduce step's error, if it failed.
    pub reduce_error: Option<String>,
    /// The reduce stage's partitions (committed, of how many), when the job
    /// has a reduce: shards numbered from `shards.len()` on are its partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce: Option<(u32, u32)>,
    /// The nodes: the master first, then the workers in order.
    pub nodes: Vec<String>,
    /// The shards, by id.
    pub shards: Vec<ReportShard>,
    /// Every attempt, sorted by start.
    pub attempts: Vec<ReportAttempt>,
    /// The shards that failed for good.
    pub failures: Vec<ReportFailure>,
    /// When the report was made, in milliseconds since the Unix epoch.
    pub generated_at: u64,
}

/// Bytes in a mebibyte.
const MIB: f64 = 1024.0 * 1024.0;
/// The most rows the failures table lists.
const MAX_FAILURE_ROWS: usize = 200;
/// The most log lines shown for one failure (its last ones).
const MAX_LOG_LINES: usize = 200;
/// The longest error shown whole; longer ones are cut.
const MAX_ERROR_CHARS: usize = 4000;
/// The longest error in a tooltip.
const MAX_TOOLTIP_ERROR_CHARS: usize = 400;
/// Bins of the throughput chart.
const RATE_BINS: usize = 40;
/// Width of every chart's view box.
const CHART_W: f64 = 1000.0;
/// Left margin of the charts: the node labels, the value axis.
const CHART_LEFT: f64 = 150.0;
/// Right margin of the charts.
const CHART_RIGHT: f64 = 24.0;
/// Width of the charts' plot area.
const PLOT_W: f64 = CHART_W - CHART_LEFT - CHART_RIGHT;

/// The page's style sheet.
const STYLE: &str = r#"
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f5f6f8; color: #1f2430; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 20px 40px; }
header h1 { margin: 0 0 4px; font-size: 1.45em; overflow-wrap: anywhere; }
header .sub { margin: 0; color: #5b6372; overflow-wrap: anywhere; }
section { margin: 18px 0; padding: 14px 18px 18px; background: #fff; border: 1px solid #e0e3e9; border-radius: 8px; }
h2 { margin: 0 0 10px; font-size: 1.12em; }
p { margin: 8px 0; }
.note, footer { color: #5b6372; font-size: .9em; }
dl.figures { display: grid; grid-template-columns: max-content 1fr; gap: 4px 20px; margin: 0; }
dl.figures dt { color: #5b6372; }
dl.figures dd { margin: 0; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 0 8px; border-radius: 10px; background: #e8eaee; font-weight: 600; }
.badge.o-done { background: #dff3e5; color: #1c6b34; }
.badge.o-deadline { background: #fdebd3; color: #8a4b06; }
.badge.o-running { background: #e0ebfb; color: #1f4f9a; }
.badge.o-lost { background: #eee3f8; color: #5b2f8c; }
.error { color: #a12b2b; }
svg.chart { display: block; width: 100%; height: auto; }
svg text { font-size: 11px; fill: #3c4350; }
svg text.caption { fill: #6b7280; }
rect.band { fill: #f4f5f8; }
line.axis { stroke: #9aa1ad; }
line.grid { stroke: #e6e8ec; }
line.deadline { stroke: #d64545; stroke-width: 1.5; stroke-dasharray: 6 4; }
line.ended { stroke: #1f2430; stroke-width: 1.2; stroke-dasharray: 2 3; }
line.mean { stroke: #1f2430; stroke-dasharray: 4 3; }
text.deadline { fill: #d64545; }
.committed { --c: #2e9e4f; }
.retried { --c: #ef8a17; }
.failed { --c: #d64545; }
.lost { --c: #8e5cc4; }
.released { --c: #6f8fb0; }
.unfinished, .pending { --c: #c4c8cf; }
.leased { --c: #4a7fd4; }
rect.attempt, rect.bar { fill: var(--c, #9aa1ad); }
rect.attempt:hover, rect.bar:hover { stroke: #1f2430; stroke-width: 1; }
rect.attempt.unfinished { fill: url(#stripes); stroke: #9aa1ad; stroke-width: .5; }
polyline.rate { fill: none; stroke: #2563c9; stroke-width: 2; stroke-linejoin: round; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: .9em; color: #3c4350; }
.sw { display: inline-block; width: 14px; height: 10px; margin-right: 5px; border-radius: 2px; vertical-align: middle; background: var(--c, #9aa1ad); }
.sw.unfinished { background: repeating-linear-gradient(45deg, #b8bdc6 0 3px, #e5e7eb 3px 6px); }
.ln { display: inline-block; width: 18px; margin-right: 5px; vertical-align: middle; border-top: 2px dashed #d64545; }
.ln.ended { border-top: 2px dotted #1f2430; }
table { width: 100%; border-collapse: collapse; font-size: .92em; }
th, td { padding: 6px 8px; border-top: 1px solid #e6e8ec; text-align: left; vertical-align: top; }
th { background: #f7f8fa; }
pre { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre.log { max-height: 320px; overflow: auto; padding: 6px 8px; background: #f5f6f8; border-radius: 4px; }
#rendered { color: #9aa1ad; font-size: .85em; }
"#;

/// The page's script: tells a headless browser the page rendered and ran.
const SCRIPT: &str = "
window.addEventListener('load', function () {
  var n = document.querySelectorAll('rect.attempt').length;
  document.getElementById('rendered').textContent = n + ' attempts drawn';
});
";

/// Renders the report as one self-contained HTML document.
pub fn render(r: &Report) -> String {
    let mut out = String::with_capacity(32 * 1024 + r.attempts.len() * 320 + r.shards.len() * 200);
    // Writing into a String does not fail.
    let _ = page(&mut out, r);
    out
}

/// The whole page.
fn page(out: &mut String, r: &Report) -> fmt::Result {
    let job = escape(&r.job);
    writeln!(out, "<!doctype html>")?;
    writeln!(out, r#"<html lang="en">"#)?;
    writeln!(out, "<head>")?;
    writeln!(out, r#"<meta charset="utf-8">"#)?;
    writeln!(out, r#"<meta name="viewport" content="width=device-width, initial-scale=1">"#)?;
    writeln!(
        out,
        r#"<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">"#
    )?;
    writeln!(out, "<title>mayfly report: {job}</title>")?;
    writeln!(out, "<style>{STYLE}</style>")?;
    writeln!(out, "</head>")?;
    writeln!(out, "<body>")?;
    writeln!(out, "<main>")?;
    header(out, r)?;
    let span = Span::of(r);
    figures(out, r)?;
    timeline(out, r, span)?;
    balance(out, r)?;
    throughput(out, r, span)?;
    failures(out, r)?;
    let generated = fmt_time(r.generated_at);
    let version = env!("CARGO_PKG_VERSION");
    writeln!(out, "<footer>")?;
    writeln!(out, "<p>Generated {generated} by mayfly {version}. This page is self-contained: it loads nothing.</p>")?;
    writeln!(out, r#"<p id="rendered"></p>"#)?;
    writeln!(out, "</footer>")?;
    writeln!(out, "</main>")?;
    writeln!(out, "<script>{SCRIPT}</script>")?;
    writeln!(out, "</body>")?;
    writeln!(out, "</html>")
}

/// The page's heading.
fn header(out: &mut String, r: &Report) -> fmt::Result {
    let job = escape(&r.job);
    let name = escape(&r.name);
    let task = escape(&r.task);
    let provider = escape(&r.provider);
    let badge = outcome_badge(&r.outcome);
    writeln!(out, "<header>")?;
    writeln!(out, "<h1>mayfly report: {job}</h1>")?;
    writeln!(out, r#"<p class="sub">{name} · task {task} · provider {provider} · {badge}</p>"#)?;
    writeln!(out, "</header>")
}

/// The job's outcome as a coloured badge.
fn outcome_badge(outcome: &str) -> String {
    let class = class_token(outcome);
    let text = escape(outcome);
    format!(r#"<span class="badge o-{class}">{text}</span>"#)
}

/// What a job outcome means.
fn outcome_note(outcome: &str) -> &'static str {
    match outcome {
        "done" => "the job ended",
        "deadline" => "the job was stopped at its deadline",
        "storage" => "the job was stopped: its storage refused every commit for too long",
        "running" => "the job was still running when this report was made",
        "lost" => "the master is gone and the job never ended",
        _ => "",
    }
}

/// Section 1: the job's figures.
fn figures(out: &mut String, r: &Report) -> fmt::Result {
    writeln!(out, r#"<section id="figures">"#)?;
    writeln!(out, "<h2>Figures</h2>")?;
    writeln!(out, r#"<dl class="figures">"#)?;
    item(out, "Job", &escape(&r.job))?;
    item(out, "Name", &escape(&r.name))?;
    item(out, "Task", &escape(&r.task))?;
    item(out, "Provider", &escape(&r.provider))?;
    let badge = outcome_badge(&r.outcome);
    let note = outcome_note(&r.outcome);
    item(out, "Outcome", &format!("{badge} {note}"))?;
    item(out, "Started", &fmt_time(r.created_at))?;
    if let Some(ended) = r.ended_at {
        item(out, "Ended", &fmt_time(ended))?;
    }
    let duration = r.ended_at.unwrap_or(r.generated_at).saturating_sub(r.created_at);
    let so_far = if r.ended_at.is_none() { " (so far)" } else { "" };
    let took = fmt_duration(duration);
    item(out, "Duration", &format!("{took}{so_far}"))?;
    let deadline = fmt_time(r.expires_at);
    let allowed = fmt_duration(r.expires_at.saturating_sub(r.created_at));
    item(out, "Deadline", &format!("{deadline} ({allowed} after the start)"))?;
    item(out, "Workers", &r.workers.to_string())?;
    let objects = plural(r.objects, "object", "objects");
    let input = human_bytes(r.total_bytes);
    item(out, "Input", &format!("{objects}, {input}"))?;
    let (committed, failed, pending) = (r.committed, r.failed, r.pending);
    let shards = r.shards.len();
    item(out, "Shards", &format!("{committed} committed, {failed} failed, {pending} pending (of {shards})"))?;
    if let Some((done, partitions)) = r.reduce {
        let partitions = plural(u64::from(partitions), "partition", "partitions");
        item(out, "Reduce", &format!("{done} committed of {partitions} (the timeline's shards from {shards} on)"))?;
    }
    let committed_bytes = human_bytes(r.committed_bytes);
    item(out, "Committed bytes", &format!("{committed_bytes} of {input}"))?;
    item(out, "Retries", &r.retries.to_string())?;
    item(out, "Outputs", &r.outputs.to_string())?;
    if !r.quarantined.is_empty() {
        let shown: Vec<String> = r
            .quarantined
            .iter()
            .take(10)
            .map(|(shard, key, error)| {
                format!("{} (shard {shard}): {}", escape(key), escape(&shorten(error, MAX_ERROR_CHARS)))
            })
            .collect();
        let more = r.quarantined.len().saturating_sub(shown.len());
        let more = if more > 0 { format!("<br>and {more} more (all in _manifest.json)") } else { String::new() };
        item(
            out,
            "Quarantined items",
            &format!(r#"<span class="error">{}: {}{more}</span>"#, r.quarantined.len(), shown.join("<br>")),
        )?;
    }
    let seconds = duration.max(1) as f64 / 1000.0;
    item(out, "Mean throughput", &fmt_rate(r.committed_bytes as f64 / MIB / seconds))?;
    if let Some(error) = &r.reduce_error {
        let error = escape(&shorten(error, MAX_ERROR_CHARS));
        item(out, "Reduce error", &format!(r#"<span class="error">{error}</span>"#))?;
    }
    writeln!(out, "</dl>")?;
    writeln!(out, "</section>")
}

/// One term of a description list; `html` is already escaped.
fn item(out: &mut String, term: &str, html: &str) -> fmt::Result {
    writeln!(out, "<dt>{term}</dt><dd>{html}</dd>")
}

/// The time the charts span: from the job's creation to its last event, at least 1 ms.
#[derive(Debug, Clone, Copy)]
struct Span {
    /// The first instant, in milliseconds since the Unix epoch.
    start: u64,
    /// The last instant, after `start`.
    end: u64,
}

impl Span {
    /// The span of a report: its creation to the last attempt's end or the job's end
    /// (or, while the job runs, the report's making).
    fn of(r: &Report) -> Span {
        let start = r.created_at;
        let mut end = r.ended_at.unwrap_or(start);
        for a in &r.attempts {
            end = end.max(a.start).max(a.end.unwrap_or(0));
        }
        if r.ended_at.is_none() && r.outcome == "running" {
            end = end.max(r.generated_at);
        }
        Span { start, end: end.max(start.saturating_add(1)) }
    }

    /// Its length in milliseconds, at least 1.
    fn ms(self) -> u64 {
        (self.end - self.start).max(1)
    }

    /// Its length in seconds.
    fn seconds(self) -> f64 {
        self.ms() as f64 / 1000.0
    }

    /// Where instant `t` (clamped to the span) falls on the plot area.
    fn x(self, t: u64) -> f64 {
        let dt = t.clamp(self.start, self.end) - self.start;
        CHART_LEFT + dt as f64 / self.ms() as f64 * PLOT_W
    }

    /// Whether instant `t` is within the span.
    fn contains(self, t: u64) -> bool {
        (self.start..=self.end).contains(&t)
    }
}

/// Section 2: a Gantt chart of the attempts, one row per node.
fn timeline(out: &mut String, r: &Report, span: Span) -> fmt::Result {
    /// Room above the rows, for the markers' labels.
    const TOP: f64 = 20.0;
    /// Height of a row.
    const ROW: f64 = 22.0;
    writeln!(out, r#"<section id="timeline">"#)?;
    writeln!(out, "<h2>Timeline</h2>")?;
    attempt_legend(out)?;
    let rows = node_rows(r);
    if rows.is_empty() {
        writeln!(out, "<p>No nodes or attempts were recorded.</p>")?;
        return writeln!(out, "</section>");
    }
    let axis_y = TOP + rows.len() as f64 * ROW;
    let height = axis_y + 36.0;
    writeln!(
        out,
        r#"<svg class="chart gantt" viewBox="0 0 {CHART_W} {height:.0}" role="img" aria-label="attempts over time, one row per node">"#
    )?;
    writeln!(
        out,
        r##"<defs><pattern id="stripes" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#e5e7eb"/><rect width="3" height="6" fill="#b8bdc6"/></pattern></defs>"##
    )?;
    for (i, node) in rows.iter().enumerate() {
        let y = TOP + i as f64 * ROW;
        if i.is_multiple_of(2) {
            writeln!(out, r#"<rect class="band" x="0" y="{y:.1}" width="{CHART_W}" height="{ROW}"/>"#)?;
        }
        let label = escape(&shorten(node, 22));
        let full = escape(node);
        let lx = CHART_LEFT - 8.0;
        let ly = y + ROW / 2.0 + 4.0;
        writeln!(
            out,
            r#"<text class="node" x="{lx:.1}" y="{ly:.1}" text-anchor="end"><title>{full}</title>{label}</text>"#
        )?;
    }
    time_axis(out, span, TOP, axis_y)?;
    let index: HashMap<&str, usize> = rows.iter().enumerate().map(|(i, node)| (*node, i)).collect();
    for a in &r.attempts {
        let Some(&row) = index.get(a.node.as_str()) else { continue };
        let end = a.end.unwrap_or(span.end);
        let x = span.x(a.start);
        let width = (span.x(end) - x).max(3.0);
        let y = TOP + row as f64 * ROW + 3.0;
        let h = ROW - 6.0;
        let outcome = a.outcome.as_str();
        let shard = a.shard;
        let node = escape(&a.node);
        let tip = escape(&attempt_tooltip(a, end));
        writeln!(
            out,
            r#"<rect class="attempt {outcome}" data-shard="{shard}" data-node="{node}" data-outcome="{outcome}" x="{x:.1}" y="{y:.1}" width="{width:.1}" height="{h:.0}"><title>{tip}</title></rect>"#
        )?;
    }
    if span.contains(r.expires_at) {
        let x = span.x(r.expires_at);
        let tx = x - 3.0;
        writeln!(
            out,
            r#"<line class="deadline" x1="{x:.1}" y1="4" x2="{x:.1}" y2="{axis_y:.1}"/><text class="deadline" x="{tx:.1}" y="12" text-anchor="end">deadline</text>"#
        )?;
    }
    if let Some(ended) = r.ended_at
        && span.contains(ended)
    {
        let x = span.x(ended);
        let tx = x + 3.0;
        writeln!(
            out,
            r#"<line class="ended" x1="{x:.1}" y1="4" x2="{x:.1}" y2="{axis_y:.1}"/><text class="ended" x="{tx:.1}" y="12">end</text>"#
        )?;
    }
    writeln!(out, "</svg>")?;
    writeln!(out, "</section>")
}

/// The nodes the timeline has rows for: the report's, then any other an attempt names.
fn node_rows(r: &Report) -> Vec<&str> {
    let mut seen = HashSet::new();
    let mut rows = Vec::new();
    for node in r.nodes.iter().chain(r.attempts.iter().map(|a| &a.node)) {
        if seen.insert(node.as_str()) {
            rows.push(node.as_str());
        }
    }
    rows
}

/// The legend of the timeline: the six outcomes and the two markers.
fn attempt_legend(out: &mut String) -> fmt::Result {
    write!(out, r#"<p class="legend">"#)?;
    for outcome in AttemptEnd::ALL {
        let name = outcome.as_str();
        write!(out, r#"<span class="key"><span class="sw {name}"></span>{name}</span>"#)?;
    }
    write!(out, r#"<span class="key"><span class="ln"></span>deadline</span>"#)?;
    write!(out, r#"<span class="key"><span class="ln ended"></span>job's end</span>"#)?;
    writeln!(out, "</p>")
}

/// An attempt's tooltip (not escaped); `drawn_end` is where its bar ends.
fn attempt_tooltip(a: &ReportAttempt, drawn_end: u64) -> String {
    let outcome = a.outcome.as_str();
    let mut tip = match a.reduce_partition {
        Some(p) => format!("reduce partition {p} (shard {}) attempt {} on {}: ", a.shard, a.attempt, a.node),
        None => format!("shard {} attempt {} on {}: ", a.shard, a.attempt, a.node),
    };
    match a.end {
        Some(end) => {
            let took = fmt_duration(end.saturating_sub(a.start));
            let _ = write!(tip, "{outcome} in {took}");
        }
        None => {
            let drawn = fmt_duration(drawn_end.saturating_sub(a.start));
            let _ = write!(tip, "{outcome}, no end recorded ({drawn} drawn)");
        }
    }
    if let Some(error) = &a.error {
        tip.push('\n');
        tip.push_str(&shorten(error, MAX_TOOLTIP_ERROR_CHARS));
    }
    tip
}

/// A time axis under a plot from `top` to `axis_y`: grid lines, tick labels in
/// seconds since the start, and a caption.
fn time_axis(out: &mut String, span: Span, top: f64, axis_y: f64) -> fmt::Result {
    let seconds = span.seconds();
    let label_y = axis_y + 14.0;
    for (t, label) in ticks(seconds) {
        let x = CHART_LEFT + t / seconds * PLOT_W;
        writeln!(
            out,
            r#"<line class="grid" x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{axis_y:.1}"/><text class="tick" x="{x:.1}" y="{label_y:.1}" text-anchor="middle">{label} s</text>"#
        )?;
    }
    let right = CHART_LEFT + PLOT_W;
    writeln!(out, r#"<line class="axis" x1="{CHART_LEFT}" y1="{axis_y:.1}" x2="{right}" y2="{axis_y:.1}"/>"#)?;
    let cx = CHART_LEFT + PLOT_W / 2.0;
    let cy = axis_y + 30.0;
    writeln!(
        out,
        r#"<text class="caption" x="{cx:.1}" y="{cy:.1}" text-anchor="middle">seconds since the job started</text>"#
    )
}

/// Four to eight round tick values from 0 to `span` seconds, with their labels.
fn ticks(span: f64) -> Vec<(f64, String)> {
    let raw = (span / 5.0).max(1e-3);
    let magnitude = 10_f64.powf(raw.log10().floor());
    let f = raw / magnitude;
    // The round step nearest the raw one: from 4 to 8 ticks.
    let nice = if f < 1.5 {
        1.0
    } else if f < 3.0 {
        2.0
    } else if f < 7.0 {
        5.0
    } else {
        10.0
    };
    let step = nice * magnitude;
    let decimals = if step >= 1.0 { 0 } else { ((-step.log10() - 1e-9).ceil() as usize).min(3) };
    let mut ticks = Vec::new();
    for i in 0..=100_u32 {
        let t = f64::from(i) * step;
        if t > span * (1.0 + 1e-9) {
            break;
        }
        ticks.push((t, format!("{t:.decimals$}")));
    }
    ticks
}

/// The legend of the shard balance chart: the shard states.
fn shard_legend(out: &mut String) -> fmt::Result {
    write!(out, r#"<p class="legend">"#)?;
    for state in ["committed", "failed", "pending", "leased"] {
        write!(out, r#"<span class="key"><span class="sw {state}"></span>{state}</span>"#)?;
    }
    writeln!(out, "</p>")
}

/// Section 3: the size of every shard.
fn balance(out: &mut String, r: &Report) -> fmt::Result {
    /// Room above the bars.
    const TOP: f64 = 10.0;
    /// Height of the tallest bar.
    const H: f64 = 150.0;
    writeln!(out, r#"<section id="balance">"#)?;
    writeln!(out, "<h2>Shard sizes</h2>")?;
    let Some(largest) = r.shards.iter().max_by_key(|s| s.bytes) else {
        writeln!(out, "<p>No shards.</p>")?;
        return writeln!(out, "</section>");
    };
    shard_legend(out)?;
    let n = r.shards.len();
    let max = largest.bytes;
    let total: u64 = r.shards.iter().map(|s| s.bytes).sum();
    let mean = total as f64 / n as f64;
    let axis_y = TOP + H;
    let height = axis_y + 24.0;
    writeln!(
        out,
        r#"<svg class="chart shards" viewBox="0 0 {CHART_W} {height:.0}" role="img" aria-label="bytes per shard">"#
    )?;
    let slot = PLOT_W / n as f64;
    let gap = if slot >= 4.0 { slot * 0.2 } else { 0.0 };
    let bar_w = (slot - gap).max(0.3);
    for (i, s) in r.shards.iter().enumerate() {
        let h = if max > 0 { s.bytes as f64 / max as f64 * H } else { 0.0 };
        let x = CHART_LEFT + i as f64 * slot + gap / 2.0;
        let y = axis_y - h;
        let state = class_token(&s.state);
        let id = s.id;
        let size = human_bytes(s.bytes);
        let bytes = s.bytes;
        let items = plural(s.items as u64, "item", "items");
        let shown_state = escape(&s.state);
        writeln!(
            out,
            r#"<rect class="bar {state}" data-shard="{id}" x="{x:.2}" y="{y:.1}" width="{bar_w:.2}" height="{h:.1}"><title>shard {id}: {size} ({bytes} bytes), {items}, {shown_state}</title></rect>"#
        )?;
    }
    let right = CHART_LEFT + PLOT_W;
    writeln!(out, r#"<line class="axis" x1="{CHART_LEFT}" y1="{axis_y:.1}" x2="{right}" y2="{axis_y:.1}"/>"#)?;
    writeln!(out, r#"<line class="axis" x1="{CHART_LEFT}" y1="{TOP}" x2="{CHART_LEFT}" y2="{axis_y:.1}"/>"#)?;
    if max > 0 {
        let y = axis_y - mean / max as f64 * H;
        let ty = y - 3.0;
        let tx = right - 2.0;
        writeln!(
            out,
            r#"<line class="mean" x1="{CHART_LEFT}" y1="{y:.1}" x2="{right}" y2="{y:.1}"/><text class="caption" x="{tx:.1}" y="{ty:.1}" text-anchor="end">mean</text>"#
        )?;
    }
    let lx = CHART_LEFT - 6.0;
    let top_label = human_bytes(max);
    let top_y = TOP + 8.0;
    let zero_y = axis_y + 4.0;
    writeln!(out, r#"<text class="tick" x="{lx:.1}" y="{top_y:.1}" text-anchor="end">{top_label}</text>"#)?;
    writeln!(out, r#"<text class="tick" x="{lx:.1}" y="{zero_y:.1}" text-anchor="end">0 B</text>"#)?;
    let cx = CHART_LEFT + PLOT_W / 2.0;
    let cy = axis_y + 18.0;
    let shards = plural(n as u64, "shard", "shards");
    writeln!(
        out,
        r#"<text class="caption" x="{cx:.1}" y="{cy:.1}" text-anchor="middle">{shards}, in plan order</text>"#
    )?;
    writeln!(out, "</svg>")?;
    let id = largest.id;
    let largest_size = human_bytes(max);
    let mean_size = human_bytes(mean.round() as u64);
    let ratio = if mean > 0.0 { format!("{:.2}", max as f64 / mean) } else { "n/a (every shard is empty)".to_string() };
    writeln!(
        out,
        "<p>Largest shard: shard {id}, {largest_size}; mean: {mean_size}; largest / mean: <strong>{ratio}</strong>.</p>"
    )?;
    writeln!(out, "</section>")
}

/// Section 4: committed bytes per second over time.
fn throughput(out: &mut String, r: &Report, span: Span) -> fmt::Result {
    /// Room above the plot.
    const TOP: f64 = 12.0;
    /// Height of the plot.
    const H: f64 = 180.0;
    writeln!(out, r#"<section id="throughput">"#)?;
    writeln!(out, "<h2>Throughput</h2>")?;
    let sizes: HashMap<u32, u64> = r.shards.iter().map(|s| (s.id, s.bytes)).collect();
    let bin_ms = span.ms() as f64 / RATE_BINS as f64;
    let mut bins = [0_u64; RATE_BINS];
    let mut any = false;
    for a in r.attempts.iter().filter(|a| a.outcome == AttemptEnd::Committed) {
        any = true;
        let end = a.end.unwrap_or(a.start).clamp(span.start, span.end);
        let i = (((end - span.start) as f64 / bin_ms) as usize).min(RATE_BINS - 1);
        bins[i] = bins[i].saturating_add(sizes.get(&a.shard).copied().unwrap_or(0));
    }
    if !any {
        if r.committed == 0 {
            writeln!(out, "<p>Nothing was committed, so there is no throughput to show.</p>")?;
        } else {
            writeln!(out, "<p>No committed attempt was recorded, so there is no throughput to show.</p>")?;
        }
        return writeln!(out, "</section>");
    }
    let bin_s = bin_ms / 1000.0;
    let rates: Vec<f64> = bins.iter().map(|&b| b as f64 / MIB / bin_s).collect();
    let peak = rates.iter().copied().fold(0.0, f64::max);
    let axis_y = TOP + H;
    let height = axis_y + 36.0;
    writeln!(
        out,
        r#"<svg class="chart rate" viewBox="0 0 {CHART_W} {height:.0}" role="img" aria-label="committed MiB/s over time">"#
    )?;
    time_axis(out, span, TOP, axis_y)?;
    writeln!(out, r#"<line class="axis" x1="{CHART_LEFT}" y1="{TOP}" x2="{CHART_LEFT}" y2="{axis_y:.1}"/>"#)?;
    let lx = CHART_LEFT - 6.0;
    let top_y = TOP + 8.0;
    let zero_y = axis_y + 4.0;
    let peak_label = fmt_rate(peak);
    writeln!(out, r#"<text class="tick" x="{lx:.1}" y="{top_y:.1}" text-anchor="end">{peak_label}</text>"#)?;
    writeln!(out, r#"<text class="tick" x="{lx:.1}" y="{zero_y:.1}" text-anchor="end">0 MiB/s</text>"#)?;
    let mut points = String::new();
    for (i, &rate) in rates.iter().enumerate() {
        let x = CHART_LEFT + (i as f64 + 0.5) * PLOT_W / RATE_BINS as f64;
        let y = if peak > 0.0 { axis_y - rate / peak * H } else { axis_y };
        if i > 0 {
            points.push(' ');
        }
        write!(points, "{x:.1},{y:.1}")?;
    }
    writeln!(out, r#"<polyline class="rate" points="{points}"/>"#)?;
    writeln!(out, "</svg>")?;
    let bin = fmt_duration(bin_ms.round() as u64);
    writeln!(
        out,
        "<p>Committed bytes by when their attempt committed, in {RATE_BINS} bins of {bin}; peak {peak_label}.</p>"
    )?;
    writeln!(out, "</section>")
}

/// Section 5: the shards that failed for good, and the attempts retried or lost.
fn failures(out: &mut String, r: &Report) -> fmt::Result {
    writeln!(out, r#"<section id="failures">"#)?;
    writeln!(out, "<h2>Failures</h2>")?;
    let attempts: Vec<&ReportAttempt> =
        r.attempts.iter().filter(|a| matches!(a.outcome, AttemptEnd::Retried | AttemptEnd::Lost)).collect();
    let total = r.failures.len() + attempts.len();
    if total == 0 {
        writeln!(out, "<p>No failures.</p>")?;
        return writeln!(out, "</section>");
    }
    let failed = plural(r.failures.len() as u64, "shard", "shards");
    let troubled = plural(attempts.len() as u64, "attempt", "attempts");
    writeln!(out, "<p>{failed} failed for good; {troubled} retried or lost.</p>")?;
    writeln!(out, "<table>")?;
    writeln!(out, "<thead><tr><th>Shard</th><th>What</th><th>Error</th><th>Log</th></tr></thead>")?;
    writeln!(out, "<tbody>")?;
    let failure_rows = r.failures.len().min(MAX_FAILURE_ROWS);
    for f in &r.failures[..failure_rows] {
        let shard = f.shard;
        let error = escape(&shorten(&f.error, MAX_ERROR_CHARS));
        let log = log_html(&f.log)?;
        writeln!(
            out,
            r#"<tr class="failed"><td>{shard}</td><td>failed for good</td><td><pre class="error">{error}</pre></td><td>{log}</td></tr>"#
        )?;
    }
    for a in attempts.iter().take(MAX_FAILURE_ROWS - failure_rows) {
        let shard = a.shard;
        let number = a.attempt;
        let node = escape(&a.node);
        let outcome = a.outcome.as_str();
        let error = match (&a.error, a.outcome) {
            (Some(error), _) => format!(r#"<pre class="error">{}</pre>"#, escape(&shorten(error, MAX_ERROR_CHARS))),
            (None, AttemptEnd::Lost) => "lease expired (no error recorded)".to_string(),
            (None, _) => "(no error recorded)".to_string(),
        };
        writeln!(
            out,
            r#"<tr class="{outcome}"><td>{shard}</td><td>attempt {number} on {node}: {outcome}</td><td>{error}</td><td></td></tr>"#
        )?;
    }
    writeln!(out, "</tbody>")?;
    writeln!(out, "</table>")?;
    if total > MAX_FAILURE_ROWS {
        let left_out = total - MAX_FAILURE_ROWS;
        writeln!(
            out,
            r#"<p class="note">{left_out} more rows left out: the table lists at most {MAX_FAILURE_ROWS}.</p>"#
        )?;
    }
    writeln!(out, "</section>")
}

/// A failure's log lines (its last [`MAX_LOG_LINES`]) as escaped HTML.
fn log_html(log: &[String]) -> Result<String, fmt::Error> {
    if log.is_empty() {
        return Ok(r#"<span class="note">(no log lines)</span>"#.to_string());
    }
    let skip = log.len().saturating_sub(MAX_LOG_LINES);
    let mut html = String::from(r#"<pre class="log">"#);
    if skip > 0 {
        writeln!(html, "[{skip} earlier lines left out]")?;
    }
    for (i, line) in log[skip..].iter().enumerate() {
        if i > 0 {
            html.push('\n');
        }
        html.push_str(&escape(line));
    }
    html.push_str("</pre>");
    Ok(html)
}

/// Escapes text for HTML content and attribute values: `& < > " '`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Text made safe to use as a CSS class: only ASCII letters, digits, `-` and `_`.
fn class_token(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect()
}

/// `s` cut to at most `max` characters, with an ellipsis if it was cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let kept: String = s.chars().take(max.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// `n` with the singular or plural word.
fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 { format!("{n} {one}") } else { format!("{n} {many}") }
}

/// Bytes for people: `1.5 MiB` ([`ByteSize`]'s `{:#}`).
fn human_bytes(bytes: u64) -> String {
    format!("{:#}", ByteSize(bytes))
}

/// A rate in MiB/s, with more decimals when it is small.
fn fmt_rate(mib_per_s: f64) -> String {
    if mib_per_s >= 100.0 {
        format!("{mib_per_s:.0} MiB/s")
    } else if mib_per_s >= 1.0 {
        format!("{mib_per_s:.1} MiB/s")
    } else {
        format!("{mib_per_s:.2} MiB/s")
    }
}

/// A duration for people: `850 ms`, `1.2 s`, `3 min 05 s` ([`HumanDuration`]'s `{:#}`).
fn fmt_duration(ms: u64) -> String {
    format!("{:#}", HumanDuration::from_millis(ms))
}

/// An instant in milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
fn fmt_time(ms: u64) -> String {
    Utc(ms).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-27 16:29:58.908 UTC.
    const T0: u64 = 1_795_796_998_908;
    /// An error with every character that must be escaped.
    const RAW_ERROR: &str = "disk <full> & \"quota\" isn't";

    fn attempt(shard: u32, n: u32, node: &str, start: u64, end: Option<u64>, outcome: AttemptEnd) -> ReportAttempt {
        let error = matches!(outcome, AttemptEnd::Retried | AttemptEnd::Failed | AttemptEnd::Lost)
            .then(|| RAW_ERROR.to_string());
        ReportAttempt {
            shard,
            attempt: n,
            node: node.to_string(),
            start: T0 + start,
            end: end.map(|e| T0 + e),
            outcome,
            error,
            reduce_partition: None,
        }
    }

    fn shard(id: u32, bytes: u64, state: &str) -> ReportShard {
        ReportShard { id, bytes, items: 3, state: state.to_string() }
    }

    fn empty() -> Report {
        Report {
            job: "job-1".to_string(),
            name: "words".to_string(),
            provider: "local".to_string(),
            task: "wordcount".to_string(),
            created_at: T0,
            expires_at: T0 + 600_000,
            ended_at: None,
            outcome: "running".to_string(),
            workers: 0,
            objects: 0,
            total_bytes: 0,
            committed_bytes: 0,
            committed: 0,
            failed: 0,
            pending: 0,
            retries: 0,
            outputs: 0,
            quarantined: Vec::new(),
            reduce_error: None,
            reduce: None,
            nodes: Vec::new(),
            shards: Vec::new(),
            attempts: Vec::new(),
            failures: Vec::new(),
            generated_at: T0 + 5_000,
        }
    }

    /// Two workers, four shards, an attempt with each outcome, one failure with a log.
    fn small() -> Report {
        let mib = 1024 * 1024;
        Report {
            ended_at: Some(T0 + 4_000),
            outcome: "done".to_string(),
            workers: 2,
            objects: 7,
            total_bytes: 6 * mib + mib / 2,
            committed_bytes: 3 * mib,
            committed: 2,
            failed: 1,
            pending: 1,
            retries: 2,
            outputs: 2,
            quarantined: vec![(1, "bad <1>.csv".to_string(), "not a csv".to_string())],
            reduce_error: Some("reduce <broke>".to_string()),
            reduce: Some((0, 2)),
            nodes: vec!["master".to_string(), "worker-1".to_string(), "worker-2".to_string()],
            shards: vec![
                shard(0, mib, "committed"),
                shard(1, 2 * mib, "committed"),
                shard(2, mib / 2, "failed"),
                shard(3, 3 * mib, "leased"),
            ],
            attempts: vec![
                attempt(0, 1, "worker-1", 100, Some(1_300), AttemptEnd::Committed),
                attempt(1, 1, "worker-2", 150, Some(900), AttemptEnd::Lost),
                attempt(2, 1, "worker-1", 1_400, Some(2_000), AttemptEnd::Retried),
                attempt(1, 2, "worker-1", 2_100, Some(3_000), AttemptEnd::Committed),
                attempt(2, 2, "worker-2", 2_200, Some(2_500), AttemptEnd::Failed),
                attempt(3, 1, "worker-2", 2_600, Some(2_700), AttemptEnd::Released),
                attempt(3, 2, "worker-1", 3_100, None, AttemptEnd::Unfinished),
            ],
            failures: vec![ReportFailure {
                shard: 2,
                error: RAW_ERROR.to_string(),
                log: vec!["worker-1: reading".to_string(), "worker-2: <boom> & 'gone'".to_string()],
            }],
            ..empty()
        }
    }

    #[test]
    fn escape_escapes_the_five() {
        assert_eq!(escape("<script>&\"'"), "&lt;script&gt;&amp;&quot;&#39;");
        assert_eq!(escape("plain text ü"), "plain text ü");
    }

    #[test]
    fn ticks_are_round_and_cover_the_span() {
        let t = ticks(12.0);
        assert_eq!(t.first().map(|(_, l)| l.as_str()), Some("0"));
        assert!((4..=8).contains(&t.len()), "{t:?}");
        assert!(t.iter().all(|(v, _)| *v <= 12.0));
        let t = ticks(0.001);
        assert!((1..=8).contains(&t.len()), "{t:?}");
        for span in [0.5, 1.0, 3.7, 10.0, 35.0, 59.9, 100.0, 3600.0, 86_400.0] {
            let t = ticks(span);
            assert!((4..=8).contains(&t.len()), "{span}: {t:?}");
        }
        assert_eq!(ticks(1.0).get(1).map(|(_, l)| l.as_str()), Some("0.2"));
    }

    #[test]
    fn outcomes_serialize_lowercase() {
        for outcome in AttemptEnd::ALL {
            assert_eq!(serde_json::to_string(&outcome).unwrap(), format!("\"{}\"", outcome.as_str()));
        }
    }

    #[test]
    fn small_report_renders_every_section() {
        let r = small();
        let html = render(&r);
        assert!(html.starts_with("<!doctype html>"));
        assert!(html.contains(r#"<meta charset="utf-8">"#));
        assert!(html.contains("<title>mayfly report: job-1</title>"));
        for id in ["figures", "timeline", "balance", "throughput", "failures"] {
            assert!(html.contains(&format!(r#"<section id="{id}">"#)), "section {id}");
        }
        assert!(html.contains(r#"<p id="rendered"></p>"#));

        let committed = r.attempts.iter().filter(|a| a.outcome == AttemptEnd::Committed).count();
        assert_eq!(committed, 2);
        assert_eq!(html.matches(r#"class="attempt committed""#).count(), committed);
        assert_eq!(html.matches(r#"<rect class="attempt "#).count(), r.attempts.len());
        for outcome in AttemptEnd::ALL {
            assert!(html.contains(&format!(r#"class="attempt {}""#, outcome.as_str())), "{outcome:?}");
        }
        assert!(html.contains(r#"data-node="worker-2""#));
        assert_eq!(html.matches(r#"<rect class="bar "#).count(), r.shards.len());
        assert!(html.contains(r#"<polyline class="rate""#));
        assert!(html.contains("shard 0 attempt 1 on worker-1: committed in 1.2 s"));

        let escaped = "disk &lt;full&gt; &amp; &quot;quota&quot; isn&#39;t";
        assert!(html.contains(escaped));
        assert!(!html.contains(RAW_ERROR));
        assert!(!html.contains("<full>"));
        assert!(html.contains("worker-2: &lt;boom&gt; &amp; &#39;gone&#39;"));
        assert!(!html.contains("<boom>"));
        assert!(html.contains("reduce &lt;broke&gt;"));
        assert!(
            html.contains("Quarantined items") && html.contains("bad &lt;1&gt;.csv (shard 1): not a csv"),
            "{html}"
        );

        assert!(!html.contains("http://"));
        assert!(!html.contains("https://"));
        assert!(html.contains("2026-11-27 16:29:58 UTC"));
        assert!(!html.contains("No failures."));
        // One failure, one retried and one lost attempt.
        assert_eq!(html.matches("<tr class=").count(), 3);
    }

    #[test]
    fn text_from_the_job_is_escaped_everywhere() {
        let mut r = small();
        r.job = "j<script>alert(1)</script>".to_string();
        r.attempts[0].node = "n\"><script>".to_string();
        let html = render(&r);
        assert!(html.contains("<title>mayfly report: j&lt;script&gt;alert(1)&lt;/script&gt;</title>"));
        assert_eq!(html.matches("<script>").count(), 1, "only the page's own script");
    }

    #[test]
    fn empty_report_renders() {
        let html = render(&empty());
        assert!(html.contains(r#"<section id="timeline">"#));
        assert!(html.contains("Nothing was committed"));
        assert!(html.contains("No shards."));
        assert!(html.contains("No failures."));
        assert!(!html.contains("<rect class=\"attempt"));
        assert!(!html.contains("http://") && !html.contains("https://"));
    }

    #[test]
    fn long_failure_lists_are_cut() {
        let mut r = small();
        r.failures = (0..250)
            .map(|i| ReportFailure {
                shard: i,
                error: format!("error {i}"),
                log: (0..300).map(|l| format!("worker-1: line {l}")).collect(),
            })
            .collect();
        let html = render(&r);
        assert_eq!(html.matches(r#"<tr class="failed">"#).count(), MAX_FAILURE_ROWS);
        assert_eq!(html.matches("<tr class=").count(), MAX_FAILURE_ROWS);
        // 250 failures and 2 attempts retried or lost; 200 rows shown.
        assert!(html.contains("52 more rows left out"));
        assert!(html.contains("[100 earlier lines left out]"));
        assert!(!html.contains("worker-1: line 99\n"));
        assert!(html.contains("worker-1: line 299"));
    }

    #[test]
    fn a_running_job_spans_to_the_report() {
        let mut r = small();
        r.ended_at = None;
        r.outcome = "running".to_string();
        r.generated_at = T0 + 10_000;
        let span = Span::of(&r);
        assert_eq!(span.end, T0 + 10_000);
        let html = render(&r);
        assert!(html.contains("(so far)"));
        assert!(!html.contains(r#"<line class="ended""#));
    }
}
