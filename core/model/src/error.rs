//! Errors that are mayfly's own fault, not the input's: the CLI exits 70
//! for them (not 2, "bad input"), wherever in a chain of causes they are.
//!
//! Must not import: anything; every module may use it.

/// Something inside mayfly failed, not the input: an async runtime that
/// could not start, a call that panicked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Internal(pub String);

impl Internal {
    /// Whether `e` is one, or an I/O error that carries one.
    pub fn is_in(e: &(dyn std::error::Error + 'static)) -> bool {
        e.is::<Internal>()
            || e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<Internal>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_error_is_found_bare_or_inside_an_io_error() {
        let bare = Internal("no runtime".into());
        assert!(Internal::is_in(&bare));
        assert!(Internal::is_in(&std::io::Error::other(bare.clone())));
        assert!(!Internal::is_in(&std::io::Error::other("not found")));
        let chain = anyhow::Error::from(std::io::Error::other(bare)).context("reading the input");
        assert!(chain.chain().any(Internal::is_in));
        assert!(!anyhow::anyhow!("bad job file").chain().any(Internal::is_in));
    }
}
