use std::path::PathBuf;

/// Errors of the trainer. Each names what is wrong and, where it can, the fix.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] expflow_models::ModelError),
    #[error("tensor computation: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Data(String),
    #[error("training was cancelled at step {0}; run again to resume from the last checkpoint")]
    Cancelled(usize),
}

impl TrainError {
    pub fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> TrainError {
        TrainError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;
