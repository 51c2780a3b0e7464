//! The one error type of the crate. Every variant names the path or digest involved and,
//! where the user can act, what to do.

use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// Everything that can go wrong in the cache crate.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file-system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "cannot read".
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A string that should be a 64-character hex BLAKE3 digest is not one.
    #[error(
        "invalid digest {text:?}: {reason} (a digest is 64 hex characters, as printed by `b3sum`)"
    )]
    BadDigest { text: String, reason: &'static str },

    /// A path that must be a regular file is something else.
    #[error("{path} is not a regular file ({found}); give the path of a file")]
    NotAFile { path: PathBuf, found: &'static str },

    /// A path that must be a directory is something else.
    #[error("{path} is not a directory ({found}); give the path of a directory")]
    NotADirectory { path: PathBuf, found: &'static str },

    /// A directory artifact contains a symbolic link, which expflow never follows.
    #[error(
        "{path} is a symbolic link; directory artifacts may contain only regular files and \
         directories: replace the link with a copy of what it points to"
    )]
    Symlink { path: PathBuf },

    /// A directory artifact contains a socket, FIFO or device.
    #[error(
        "{path} is a {found}; directory artifacts may contain only regular files and directories: \
         remove it"
    )]
    SpecialFile { path: PathBuf, found: &'static str },

    /// A file name inside a directory artifact cannot be written in a manifest.
    #[error("{path}: {reason}; rename it")]
    BadPath { path: PathBuf, reason: &'static str },

    /// Manifest text is not canonical or cannot be parsed.
    #[error("invalid manifest{}: line {line}: {reason}", .digest.map(|d| format!(" {d}")).unwrap_or_default())]
    BadManifest {
        /// The manifest blob, when the text came from the CAS.
        digest: Option<Digest>,
        line: usize,
        reason: String,
    },

    /// A blob the caller needs is not in the CAS.
    #[error(
        "blob {digest} is missing from the CAS (expected at {path}); re-run the node that \
         produced it, and run `expflow verify` to find other damage"
    )]
    BlobMissing { digest: Digest, path: PathBuf },

    /// A blob's bytes do not hash to its name.
    #[error(
        "blob {digest} at {path} is corrupt (its bytes hash to {actual}); run `expflow verify` \
         and re-run the node that produced it"
    )]
    BlobCorrupt {
        digest: Digest,
        actual: Digest,
        path: PathBuf,
    },

    /// A file changed (was written, truncated or extended) while it was being hashed, so no
    /// digest describes it.
    #[error(
        "{path} changed while it was being read ({size_before} bytes when reading began, \
         {read} read, {size_after} now); wait until whatever writes it has finished, then try again"
    )]
    ChangedWhileRead {
        path: PathBuf,
        size_before: u64,
        read: u64,
        size_after: u64,
    },

    /// sled refused to open the database because its files are damaged.
    #[error(
        "the database at {path} cannot be opened ({source_msg}); run `expflow db rebuild` to \
         recreate it from the journal and the CAS (nothing in the CAS is lost)"
    )]
    DbUnreadable { path: PathBuf, source_msg: String },

    /// Another process holds the database.
    #[error(
        "the database at {path} is held by another expflow process; wait for it to finish or \
         stop it, then try again"
    )]
    DbLocked { path: PathBuf },

    /// A database operation failed after the database was opened.
    #[error("database error at {path}: {source_msg}")]
    Db { path: PathBuf, source_msg: String },

    /// A value stored in the database could not be decoded.
    #[error(
        "cannot decode {what} stored in the database at {path}: {reason}; run `expflow db \
         rebuild` to recreate the database from the journal"
    )]
    Decode {
        what: String,
        path: PathBuf,
        reason: String,
    },

    /// A value could not be encoded as JSON (a bug: every stored type is plain data).
    #[error("cannot encode {what} as JSON: {reason}")]
    Encode { what: &'static str, reason: String },
}

/// Shorthand for results in this crate.
pub type Result<T, E = CacheError> = std::result::Result<T, E>;

impl CacheError {
    pub(crate) fn io(action: &'static str, path: impl AsRef<Path>, source: io::Error) -> Self {
        CacheError::Io {
            action,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

/// Attaches an action and a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, action: &'static str, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, action: &'static str, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| CacheError::io(action, path, e))
    }
}
