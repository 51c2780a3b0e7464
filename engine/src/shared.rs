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
    /// The cache as cluster jobs use it in the object-storage data mode, if it can serve
    /// them (a remote that compute nodes reach).
    fn exchange(&self) -> Option<&dyn ObjectExchange> {
        None
    }
}

/// Where a cluster job finds a shared cache (the object-storage data mode): its name, URL
/// and endpoint. Never credentials: a job reads those from its own environment.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Locator {
    pub name: String,
    pub url: String,
    pub endpoint: Option<String>,
}

/// What the object-storage data mode needs of a shared cache besides records: moving
/// artifacts (a blob; for a directory, its manifest and every file) both ways, and small
/// exchange objects (task and result files, under `jobs/`) between the coordinator and its
/// jobs. Write-once like everything on a remote.
pub trait ObjectExchange: Send + Sync {
    /// Where jobs find this cache.
    fn locator(&self) -> Locator;
    /// Uploads the artifacts `(digest, is_dir)` of `cas` that the cache lacks (each blob
    /// re-hashed on the way).
    fn upload(&self, cas: &Cas, artifacts: &[(Digest, bool)]) -> Result<Fetched>;
    /// Downloads the artifacts that `cas` lacks (each blob re-hashed before it is stored).
    fn download(&self, cas: &Cas, artifacts: &[(Digest, bool)]) -> Result<Fetched>;
    /// Writes `bytes` at `path` unless something is there already.
    fn put_object(&self, path: &str, bytes: Vec<u8>) -> Result<()>;
    /// The bytes at `path`; none when nothing is there.
    fn get_object(&self, path: &str) -> Result<Option<Vec<u8>>>;
    /// The paths under `prefix`.
    fn list_objects(&self, prefix: &str) -> Result<Vec<String>>;
}
