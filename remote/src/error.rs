//! The one error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong with a remote.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The remotes file or a command-line value is wrong.
    #[error("{0}")]
    Usage(String),

    /// A request to the object store failed.
    #[error("remote {remote}: cannot {action} {path}: {source}")]
    Store {
        remote: String,
        action: &'static str,
        path: String,
        #[source]
        source: Box<object_store::Error>,
    },

    /// A remote object is damaged or missing where a record says it must be.
    #[error("remote {remote}: {what}; run `expflow verify --remote {remote}` and push again")]
    Damaged { remote: String, what: String },

    /// A key file cannot be read, written or parsed.
    #[error("{path}: {reason}")]
    Key { path: PathBuf, reason: String },

    /// A local file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Cache(#[from] expflow_cache::CacheError),

    #[error(transparent)]
    Engine(#[from] expflow_engine::EngineError),
}

/// Shorthand for results in this crate.
pub type Result<T, E = RemoteError> = std::result::Result<T, E>;

impl RemoteError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        RemoteError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
