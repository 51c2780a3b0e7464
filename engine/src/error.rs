//! The engine's error type.

use std::path::PathBuf;

use expflow_cache::CacheError;

use crate::diag::Diagnostics;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The pipeline file is invalid; every problem is listed with file:line:column.
    #[error("{0}")]
    Invalid(Diagnostics),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Another run holds the workspace.
    #[error(
        "the workspace {workspace} is held by another run ({holder}); wait for it to finish, or stop it"
    )]
    Held { workspace: PathBuf, holder: String },
    /// A request that does not fit the pipeline or workspace (unknown node, no runs yet...).
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Other(String),
}

impl EngineError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> EngineError {
        EngineError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
