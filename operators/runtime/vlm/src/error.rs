//! The one error type of this crate. Messages name the file, tensor or parameter they are
//! about and, where there is one, what to do about it.

use std::path::PathBuf;

use expflow_models::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum VlmError {
    /// From the model runtime: a directory, config, tokenizer or chat-template problem.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A tensor operation failed inside candle.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// A config file lacks a field or has a value this implementation cannot use.
    #[error("{path}: {problem}")]
    Config { path: PathBuf, problem: String },
    /// An image could not be read, decoded or resized.
    #[error("{path}: {problem}")]
    Image { path: PathBuf, problem: String },
    /// A request asks for something the model cannot do, or its prompt and images disagree.
    #[error("{0}")]
    Request(String),
}

pub type Result<T, E = VlmError> = std::result::Result<T, E>;
