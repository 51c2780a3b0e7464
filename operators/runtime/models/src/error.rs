//! The one error type of this crate. Every message names the file, tensor or parameter it is
//! about and, where there is one, what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file the model directory must have is absent.
    #[error("model directory {dir}: missing `{file}`: {expected}")]
    MissingFile {
        dir: PathBuf,
        file: String,
        expected: String,
    },
    /// A file is present but its content is not what the runtime expects.
    #[error("{path}: {problem}")]
    BadFile { path: PathBuf, problem: String },
    /// `config.json` lacks a field or has a value this runtime cannot use.
    #[error("{path}: {problem}")]
    Config { path: PathBuf, problem: String },
    /// Reading a file failed.
    #[error("cannot {action} {path}: {error}")]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// The tokenizer failed on some text, or could not be built or trained.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be compiled or rendered.
    #[error("chat template of {dir}: {message}")]
    Template { dir: PathBuf, message: String },
    /// A request asks for something the model or runtime cannot do.
    #[error("{0}")]
    Request(String),
    /// A tensor operation failed inside candle.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// An image or video could not be decoded or sampled.
    #[error("{path}: {problem}")]
    Media { path: PathBuf, problem: String },
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub fn io(action: &'static str, path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        ModelError::Io {
            action,
            path: path.into(),
            error,
        }
    }

    pub(crate) fn bad(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        ModelError::BadFile {
            path: path.into(),
            problem: problem.into(),
        }
    }
}
