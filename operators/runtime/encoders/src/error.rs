//! The one error type of this crate. Messages name the file, parameter or input they are about.

use std::path::PathBuf;

use expflow_models::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// The model directory is missing something or holds something unusable.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A tensor operation failed inside candle.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// A config value this runtime cannot use, or one that is missing.
    #[error("{path}: {problem}")]
    Config { path: PathBuf, problem: String },
    /// The tokenizer failed on some text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An image or video could not be read, decoded or sampled.
    #[error("{path}: {problem}")]
    Media { path: PathBuf, problem: String },
    /// A parameter of a call is out of range.
    #[error("{0}")]
    Param(String),
}

pub type Result<T, E = EncoderError> = std::result::Result<T, E>;

impl EncoderError {
    pub(crate) fn config(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        EncoderError::Config {
            path: path.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn media(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        EncoderError::Media {
            path: path.into(),
            problem: problem.into(),
        }
    }
}
