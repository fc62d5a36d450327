use std::any::Any;
use std::fmt;

/// The result of a task.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a task failed, and whether running it again could help.
///
/// Any error type converts into `Error` with `?`; such errors are not retryable,
/// except I/O errors from the host's storage, which are. Use
/// [`Error::retryable`] for a failure you know to be transient.
pub struct Error {
    message: String,
    retryable: bool,
}

impl Error {
    /// A failure that running the same item again could fix (a transient condition).
    pub fn retryable(message: impl Into<String>) -> Self {
        Error { message: message.into(), retryable: true }
    }

    /// A failure that will happen again on the same item (bad data, bad parameters).
    pub fn fatal(message: impl Into<String>) -> Self {
        Error { message: message.into(), retryable: false }
    }

    /// The message shown to the operator.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the host may retry the item.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error").field("message", &self.message).field("retryable", &self.retryable).finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

// `Error` deliberately does not implement `std::error::Error`, so that this
// blanket conversion (the one `?` uses) does not overlap with `From<T> for T`.
impl<E: std::error::Error + Send + Sync + 'static> From<E> for Error {
    fn from(err: E) -> Self {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        let retryable = (&err as &dyn Any)
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<crate::input::HostStorageError>());
        Error { message, retryable }
    }
}
