//! The one error type of this crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The model directory could not be opened or loaded.
    #[error("cannot load the model in {dir}: {message}")]
    Load { dir: PathBuf, message: String },
    /// Binding or serving the listening socket failed.
    #[error("cannot serve on {addr}: {error}")]
    Bind { addr: String, error: std::io::Error },
    /// The server's own runtime or thread failed.
    #[error("server: {0}")]
    Runtime(String),
}

pub type Result<T, E = ServeError> = std::result::Result<T, E>;
