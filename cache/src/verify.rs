//! `expflow verify`: rehash every blob and check that every record's blobs are intact.

use std::collections::HashMap;

use rayon::prelude::*;
use serde::Serialize;
use tracing::info;

use crate::cas::{BlobState, Cas};
use crate::digest::Digest;
use crate::error::Result;
use crate::store::Store;

/// A record whose blob is missing or corrupt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadRecord {
    pub key: Digest,
    pub node: String,
    /// Which blob: "output rows", "output model file config.json", "log", "item 3".
    pub what: String,
    pub digest: Digest,
    pub state: BlobState,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub blobs_checked: usize,
    pub bytes_checked: u64,
    /// Blobs whose bytes do not hash to their name.
    pub bad_blobs: Vec<(Digest, BlobState)>,
    pub records_checked: usize,
    pub bad_records: Vec<BadRecord>,
}

impl VerifyReport {
    /// No bad blob and no bad record.
    pub fn is_clean(&self) -> bool {
        self.bad_blobs.is_empty() && self.bad_records.is_empty()
    }
}

/// Rehashes every blob in `cas` (in parallel) and checks that the outputs (directory
/// outputs: manifest and every file), log and items of every record in `store` are present
/// and intact.
pub fn verify(cas: &Cas, store: &dyn Store) -> Result<VerifyReport> {
    let blobs = cas.list()?;
    let checked: Vec<(Digest, u64, BlobState)> = blobs
        .par_iter()
        .map(|(d, size)| Ok((*d, *size, cas.check(d)?)))
        .collect::<Result<_>>()?;

    let mut report = VerifyReport {
        blobs_checked: checked.len(),
        bytes_checked: checked.iter().map(|(_, n, _)| n).sum(),
        ..VerifyReport::default()
    };
    let mut states: HashMap<Digest, BlobState> = HashMap::with_capacity(checked.len());
    for (d, _, state) in checked {
        if state != BlobState::Ok {
            report.bad_blobs.push((d, state));
        }
        states.insert(d, state);
    }
    let state_of = |d: &Digest| states.get(d).copied().unwrap_or(BlobState::Missing);

    let records = store.records()?;
    report.records_checked = records.len();
    for rec in &records {
        let mut bad = |what: String, digest: Digest, state: BlobState| {
            report.bad_records.push(BadRecord {
                key: rec.key,
                node: rec.node.clone(),
                what,
                digest,
                state,
            });
        };
        for (what, d, dir) in rec.blob_refs() {
            let state = state_of(&d);
            if state != BlobState::Ok {
                bad(what, d, state);
                continue;
            }
            if !dir {
                continue;
            }
            match cas.read_manifest(&d) {
                Ok(manifest) => {
                    for e in &manifest.entries {
                        let state = state_of(&e.digest);
                        if state != BlobState::Ok {
                            bad(format!("{what} file {}", e.path), e.digest, state);
                        }
                    }
                }
                // The blob hashes correctly but is not a manifest.
                Err(e) => bad(format!("{what} (unreadable manifest: {e})"), d, state),
            }
        }
    }
    info!(
        blobs = report.blobs_checked,
        bytes = report.bytes_checked,
        bad_blobs = report.bad_blobs.len(),
        records = report.records_checked,
        bad_records = report.bad_records.len(),
        "verified"
    );
    Ok(report)
}
