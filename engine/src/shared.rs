//! The hook through which a run uses a shared cache (a remote on object storage, see the
//! `expflow-remote` crate): on a local miss the scheduler asks it for the node's record, and
//! it downloads the blobs of only those nodes whose bytes the run needs (a node that
//! executes reads its inputs; the run's targets and `outputs:` are materialised). Other
//! remote hits contribute their output digests to downstream keys and nothing else.

use expflow_cache::{Cas, Digest, Record};

use crate::error::Result;

/// What one download brought into the local CAS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Blobs downloaded (blobs already present locally are not counted).
    pub blobs: usize,
    pub bytes: u64,
}

/// A cache shared between workspaces.
pub trait SharedCache: Send + Sync {
    /// How messages name it (the remote's name).
    fn name(&self) -> &str;
    /// A record for `key` that the cache holds and trusts (its signature is checked); none
    /// when the cache has no acceptable record. Its blobs are not downloaded.
    fn find(&self, key: &Digest) -> Result<Option<Record>>;
    /// Makes every blob `rec` names (outputs, the files of directory outputs, the log and
    /// the items) present in `cas`, re-hashing each downloaded blob before it is stored.
    fn fetch(&self, rec: &Record, cas: &Cas) -> Result<Fetched>;
}
