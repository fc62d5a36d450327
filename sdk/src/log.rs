use crate::bindings::mayfly::task::{host, types};

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that the task handled.
    Warn,
    /// A failure.
    Error,
}

/// Sends one log line to the host. The macros ([`crate::info!`] and friends) call this.
pub fn log(level: Level, message: &str, fields: &[(&str, String)]) {
    let level = match level {
        Level::Trace => types::Level::Trace,
        Level::Debug => types::Level::Debug,
        Level::Info => types::Level::Info,
        Level::Warn => types::Level::Warn,
        Level::Error => types::Level::Error,
    };
    let fields: Vec<types::Field> =
        fields.iter().map(|(key, value)| types::Field { key: (*key).to_owned(), value: value.clone() }).collect();
    host::log(level, message, &fields);
}

/// Logs at a level: `log_at!(Level::Info, "text {}", x)` or, with fields,
/// `log_at!(Level::Info, key = value, other = x; "text {}", y)`.
#[macro_export]
macro_rules! log_at {
    ($level:expr, $($key:ident = $value:expr),+ ; $($arg:tt)+) => {
        $crate::log($level, &::std::format!($($arg)+), &[$((::std::stringify!($key), ::std::string::ToString::to_string(&$value))),+])
    };
    ($level:expr, $($arg:tt)+) => {
        $crate::log($level, &::std::format!($($arg)+), &[])
    };
}

/// Logs at trace level. See [`log_at!`] for the forms with fields.
#[macro_export]
macro_rules! trace { ($($arg:tt)+) => { $crate::log_at!($crate::Level::Trace, $($arg)+) }; }
/// Logs at debug level. See [`log_at!`] for the forms with fields.
#[macro_export]
macro_rules! debug { ($($arg:tt)+) => { $crate::log_at!($crate::Level::Debug, $($arg)+) }; }
/// Logs at info level: `info!("read {} lines", n)` or `info!(lines = n; "done")`.
#[macro_export]
macro_rules! info { ($($arg:tt)+) => { $crate::log_at!($crate::Level::Info, $($arg)+) }; }
/// Logs at warn level. See [`log_at!`] for the forms with fields.
#[macro_export]
macro_rules! warn { ($($arg:tt)+) => { $crate::log_at!($crate::Level::Warn, $($arg)+) }; }
/// Logs at error level. See [`log_at!`] for the forms with fields.
#[macro_export]
macro_rules! error { ($($arg:tt)+) => { $crate::log_at!($crate::Level::Error, $($arg)+) }; }
