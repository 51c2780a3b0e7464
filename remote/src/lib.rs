//! The shared cache on object storage: `remote add|list|remove`, `push`, `pull`, lookups for
//! `run --remote`, signed records (`keys`) and `verify --remote`.
//!
//! Dependencies: `expflow-cache`, `expflow-engine` (the [`SharedCache`] hook it implements),
//! `object_store` (S3 and local file back ends) and `ring` (ed25519). Only the cli depends on
//! it, so the HTTP client stack stays out of every other crate.
//!
//! Layout under the remote's URL (`s3://bucket/prefix` or `file:///dir`):
//! - `blobs/<2 hex>/<64 hex>`: blobs, named by the BLAKE3 of their bytes as in the local CAS;
//! - `records/<node key>/<signer id>.json`: a record signed by one key (one slot per signer,
//!   written once).
//!
//! [`SharedCache`]: expflow_engine::shared::SharedCache

mod client;
mod config;
mod error;
mod exchange;
mod fetch;
mod keys;
mod push;
mod signed;
mod verify;

pub use client::Remote;
pub use config::{RemoteSpec, Remotes};
pub use error::{RemoteError, Result};
pub use fetch::PullReport;
pub use keys::{KeyPair, PublicKey, Trust, config_dir};
pub use push::PushReport;
pub use verify::VerifyReport;
