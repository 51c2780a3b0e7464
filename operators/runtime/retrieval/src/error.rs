//! The one error type of this crate. Messages name the file, parameter or index involved and
//! say what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RetrievalError {
    /// Reading or writing an index file failed.
    #[error("{action} {path}: {error}")]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// An index file exists but does not hold what it should.
    #[error("index file {path}: {message}")]
    Format { path: PathBuf, message: String },
    /// A parameter has a value the index cannot use.
    #[error("parameter `{name}` {problem}")]
    Param { name: &'static str, problem: String },
    /// A vector's dimension does not match the index or the other vectors.
    #[error("{what} has dimension {got}, but {expected} is needed; {hint}")]
    Dim {
        what: String,
        got: usize,
        expected: usize,
        hint: &'static str,
    },
    /// The input vectors or documents cannot be indexed (empty, non-finite, duplicate ids…).
    #[error("{0}")]
    Data(String),
    /// Text and video vectors of different sizes cannot be fused.
    #[error("{0}")]
    Fusion(String),
    /// candle refused a tensor operation.
    #[error("tensor operation failed ({action}): {error}")]
    Tensor {
        action: &'static str,
        error: candle_core::Error,
    },
}

impl RetrievalError {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, error: std::io::Error) -> Self {
        RetrievalError::Io {
            action,
            path: path.to_path_buf(),
            error,
        }
    }

    pub(crate) fn param(name: &'static str, problem: impl Into<String>) -> Self {
        RetrievalError::Param {
            name,
            problem: problem.into(),
        }
    }
}

pub type Result<T, E = RetrievalError> = std::result::Result<T, E>;
