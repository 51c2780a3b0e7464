//! The one error type of this crate.

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// WordNet's files are missing or unreadable (the message names the directory and the
    /// Debian package that provides them).
    #[error("{0}")]
    WordNet(String),
    /// The option letters for answer extraction are not usable.
    #[error("{0}")]
    Letters(String),
    /// The corpus cannot be scored as given (for example, a row without references).
    #[error("{0}")]
    Input(String),
}
