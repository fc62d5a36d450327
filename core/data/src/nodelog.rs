//! A node's log pump. A node's stdout and stderr are its log (a file the
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
use std::time::{Duration, Instant};

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

/// Writes one line of a node's log: `<ms since the epoch> <LEVEL> <who>:
/// <message>`, the shape `mayfly logs` reads back (`history::parse_line`).
/// Every node line (master, worker, provider, reduce) goes through here.
pub fn line(level: &str, who: &str, message: impl std::fmt::Display) {
    // Formatted first and written at once: `eprintln!` writes each piece of
    // the format with a system call of its own (stderr is unbuffered), eight
    // per line, and a master logs a line per commit.
    let now = mayfly_model::policy::Clock::now(&mayfly_model::policy::SystemClock);
    let text = format!("{now} {level} {who}: {message}\n");
    // A log that cannot be written is the pump's to handle; a line is never
    // worth a panic.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
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
