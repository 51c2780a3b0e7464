//! The one error type of this crate.
//!
//! Every message names what it is about (the operator, file, column, parameter or port) and,
//! where there is one, what to do about it. Underlying errors (I/O, Polars) are written into
//! the message rather than exposed as `source`, so the engine's chain printer shows each cause
//! once.

use std::path::{Path, PathBuf};

use polars::prelude::PolarsError;

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// Reading or writing a file failed.
    #[error("{action} {path}: {error}")]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// A parameter is missing, has the wrong type, or has a value the operator cannot use.
    #[error("{op}: parameter `{name}` {problem}")]
    Param {
        op: &'static str,
        name: String,
        problem: String,
    },
    /// A file could not be parsed as the given format.
    #[error("cannot read {path} as {format}: {location}{message}")]
    Parse {
        path: PathBuf,
        format: &'static str,
        /// `line 3: `, `record 7: ` or empty.
        location: String,
        message: String,
    },
    /// A column named by a parameter does not exist.
    #[error(
        "{op}: column `{column}` (from `{param}`) not found in {table}; available columns: {available}"
    )]
    UnknownColumn {
        op: &'static str,
        param: &'static str,
        column: String,
        table: String,
        available: String,
    },
    /// Polars refused an operation on a table.
    #[error("{op}: {action}: {error}")]
    Polars {
        op: &'static str,
        action: String,
        error: PolarsError,
    },
    /// The input data does not fit what the operator needs.
    #[error("{op}: {message}")]
    Data { op: &'static str, message: String },
    /// A `command` could not be run, failed, or did not produce a declared output.
    #[error("command: {message}")]
    Command { message: String },
}

impl OperatorError {
    pub fn io(action: &'static str, path: &Path, error: std::io::Error) -> OperatorError {
        OperatorError::Io {
            action,
            path: path.to_path_buf(),
            error,
        }
    }

    pub fn param(op: &'static str, name: &str, problem: impl Into<String>) -> OperatorError {
        OperatorError::Param {
            op,
            name: name.to_string(),
            problem: problem.into(),
        }
    }

    pub fn polars(
        op: &'static str,
        action: impl Into<String>,
        error: PolarsError,
    ) -> OperatorError {
        OperatorError::Polars {
            op,
            action: action.into(),
            error,
        }
    }

    pub fn data(op: &'static str, message: impl Into<String>) -> OperatorError {
        OperatorError::Data {
            op,
            message: message.into(),
        }
    }

    pub fn command(message: impl Into<String>) -> OperatorError {
        OperatorError::Command {
            message: message.into(),
        }
    }
}

pub type Result<T, E = OperatorError> = std::result::Result<T, E>;
