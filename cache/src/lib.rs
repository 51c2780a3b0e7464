//! expflow's cache: BLAKE3 digests, the content-addressed blob store (CAS), the record
//! store (sled plus a journal it can be rebuilt from), the stat cache, verify and gc.
//!
//! Dependencies: the bottom of the workspace. It may use blake3, sled and serde, and no other
//! expflow crate. Everything else may depend on it (the engine, the model runtime's weight
//! digests, the cli); it must never learn about pipelines, operators or models.
//!
//! On disk, under the workspace's `.expflow/`:
//! - `cas/<2 hex>/<64 hex>`: immutable blobs named by the BLAKE3 of their bytes
//!   (`b3sum` agrees); a directory is a manifest blob listing its files.
//! - `db/`: the sled database; `journal.jsonl`: every durable write, one JSON line each.

mod cas;
mod digest;
mod error;
pub mod fuzzing;
mod gc;
mod hit_code;
mod journal;
mod last_hits;
mod lazy;
mod manifest;
mod rebuild;
mod record;
mod stat;
mod store;
mod tree_stat;
mod verify;
mod walk;

pub use cas::{BlobState, Cas};
pub use digest::{Digest, PARALLEL_HASH_THRESHOLD, hash_file, hash_reader};
pub use error::{CacheError, Result};
pub use gc::{GcReport, gc};
pub use lazy::LazyStore;
pub use manifest::{Manifest, ManifestEntry};
pub use rebuild::{RebuildReport, rebuild};
pub use record::{Hit, Metrics, OutputRef, Record, RecordSummary, RunInfo};
pub use stat::{StatKey, digest_path_cached};
pub use store::{SledStore, Store};
pub use tree_stat::{TreeStat, digest_path, pinned_mtime};
pub use verify::{BadRecord, VerifyReport, verify};
