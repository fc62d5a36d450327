//! Misbehaving tasks are bounded, refused and reported, and the host stays
//! healthy for the next item. Each test fails if its limit or denial is removed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mayfly_core::host::{BytesInput, Failure, Limits, Outcome};
use mayfly_model::units::{ByteSize, HumanDuration};
use mayfly_tests::{run, scratch};

const GUEST: &str = "tests/guests/misbehave";

fn misbehave(mode: &str, limits: Limits, name: &str) -> (Outcome, std::path::PathBuf) {
    misbehave_in(GUEST, mode, limits, name)
}

/// One item of `guest` (a misbehaving task: `misbehave` or its Python twin)
/// in `mode`: its outcome and its staging directory.
pub(crate) fn misbehave_in(guest: &str, mode: &str, limits: Limits, name: &str) -> (Outcome, std::path::PathBuf) {
    let dir = scratch(name);
    let staging = dir.join("staging");
    let input = Arc::new(BytesInput::new("in.txt", &b"some input\n"[..]));
    let params = serde_json::json!({ "mode": mode }).to_string();
    (run(guest, input, &params, limits, &staging), staging)
}

pub(crate) fn small_limits() -> Limits {
    Limits {
        attempt_time: HumanDuration(Duration::from_secs(2)),
        memory: ByteSize(64 << 20),
        output: ByteSize(1 << 20),
        log: ByteSize(64 << 10),
    }
}

/// After any failure the same runtime still runs a good item.
fn host_still_healthy() {
    let dir = scratch("healthy");
    let outcome = mayfly_tests::run_bytes("tasks/wordcount", "ok.txt", b"still fine", "{}", &dir);
    assert_eq!(outcome.result, Ok(()));
}

#[test]
fn an_endless_loop_times_out() {
    let started = Instant::now();
    let (outcome, staging) = misbehave("loop", small_limits(), "loop");
    assert_eq!(outcome.result, Err(Failure::Timeout { limit: HumanDuration(Duration::from_secs(2)) }));
    assert!(outcome.result.as_ref().unwrap_err().is_retryable());
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(!staging.exists());
    host_still_healthy();
}

#[test]
fn blocking_in_a_host_call_times_out_too() {
    // std::thread::sleep blocks in wasi:io/poll, where epoch interruption cannot
    // reach; the host's own timer must.
    let started = Instant::now();
    let (outcome, _) = misbehave("sleep", small_limits(), "sleep");
    assert!(matches!(outcome.result, Err(Failure::Timeout { .. })), "{:?}", outcome.result);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[test]
fn unbounded_allocation_is_out_of_memory() {
    let (outcome, staging) = misbehave("alloc", small_limits(), "alloc");
    assert_eq!(outcome.result, Err(Failure::OutOfMemory { limit: ByteSize(64 << 20) }));
    assert!(!outcome.result.as_ref().unwrap_err().is_retryable());
    assert!(outcome.peak_memory <= 64 << 20, "peak {}", outcome.peak_memory);
    assert!(!staging.exists());
    host_still_healthy();
}

#[test]
fn unbounded_output_hits_the_output_limit_and_leaves_nothing() {
    let (outcome, staging) = misbehave("output", small_limits(), "output");
    assert_eq!(outcome.result, Err(Failure::OutputLimit { limit: ByteSize(1 << 20) }));
    assert!(outcome.outputs.is_empty());
    assert!(!staging.exists(), "the partial output must be removed");
    host_still_healthy();
}

#[test]
fn unbounded_logging_hits_the_log_limit() {
    let (outcome, _) = misbehave("log", small_limits(), "log");
    assert_eq!(outcome.result, Err(Failure::LogLimit { limit: ByteSize(64 << 10) }));
    let logged: usize = outcome.logs.iter().map(|l| l.message.len()).sum();
    assert!(logged <= 64 << 10, "kept {logged} bytes of logs");
    host_still_healthy();
}

#[test]
fn unbounded_stdout_counts_against_the_log_limit() {
    let (outcome, _) = misbehave("stdout", small_limits(), "stdout");
    assert_eq!(outcome.result, Err(Failure::LogLimit { limit: ByteSize(64 << 10) }));
    assert!(outcome.logs.iter().all(|l| l.source == mayfly_core::host::LogSource::Stdout));
    assert!(!outcome.logs.is_empty(), "stdout lines are kept up to the limit");
}

#[test]
fn a_panic_reports_its_message() {
    let (outcome, _) = misbehave("panic", small_limits(), "panic");
    match outcome.result {
        Err(Failure::Panic { message }) => {
            assert!(message.contains("boom while reading in.txt"), "{message}");
            assert!(message.contains("misbehave/src/lib.rs"), "{message}");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    host_still_healthy();
}

#[test]
fn a_trap_in_the_middle_of_an_output_leaves_no_partial_file() {
    let (outcome, staging) = misbehave("trap-mid-output", small_limits(), "trap");
    match &outcome.result {
        Err(Failure::Trap { message }) => assert!(message.contains("unreachable"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    assert!(outcome.outputs.is_empty());
    assert!(!staging.exists());
}

#[test]
fn task_errors_keep_their_retryability() {
    let (fatal, _) = misbehave("fatal", small_limits(), "fatal");
    assert_eq!(
        fatal.result,
        Err(Failure::TaskError { message: "this item can never succeed".into(), retryable: false })
    );
    let (retry, _) = misbehave("retryable", small_limits(), "retryable");
    assert_eq!(retry.result, Err(Failure::TaskError { message: "try me again later".into(), retryable: true }));
}

#[test]
fn output_names_cannot_escape_the_staging_directory() {
    let (outcome, staging) = misbehave("bad-output-name", small_limits(), "escape-name");
    let text = outcome.result.unwrap_err().to_string();
    assert!(text.contains("output name \"../escape.txt\""), "{text}");
    assert!(!staging.parent().unwrap().join("escape.txt").exists());
}

#[test]
fn files_environment_and_sockets_are_denied() {
    // A real host file and a real listening socket, so a leak would be visible.
    let dir = scratch("escape");
    let secret = dir.join("secret.txt");
    std::fs::write(&secret, "s3cret").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let params = serde_json::json!({ "mode": "escape", "port": port, "path": secret }).to_string();
    let input = Arc::new(BytesInput::new("in.txt", &b""[..]));
    let outcome = run(GUEST, input, &params, small_limits(), &dir.join("staging"));
    assert_eq!(outcome.result, Ok(()), "{:?}", outcome.logs);
    let report = std::fs::read_to_string(&outcome.outputs[0].path).unwrap();
    for line in report.lines() {
        let (what, result) = line.split_once('\t').unwrap();
        assert!(result.starts_with("denied"), "{what} was not denied: {result}");
    }
    for what in ["file", "climb", "proc", "append", "dir", "cwd", "env", "home", "args", "tcp", "udp", "dns", "create"]
    {
        assert!(report.contains(&format!("{what}\t")), "the report misses {what}:\n{report}");
    }
    assert!(listener.accept().is_err(), "the guest reached the listening socket");
    assert!(!std::path::Path::new("/tmp/mayfly-escape").exists());
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "s3cret", "the host file is as it was");
}

#[test]
fn each_attempt_is_bounded_independently() {
    // Two attempts, same runtime: the first's output count does not eat into
    // the second's limit.
    for i in 0..2 {
        let dir = scratch(&format!("indep{i}"));
        let data = vec![b'a'; 600 << 10];
        let limits = Limits { output: ByteSize(1 << 20), ..Limits::default() };
        let outcome = run(GUEST, Arc::new(BytesInput::new("a", data)), r#"{"mode":"echo"}"#, limits, &dir);
        assert_eq!(outcome.result, Ok(()), "attempt {i}");
    }
}
