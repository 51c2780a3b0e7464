//! `expflow verify --remote NAME [--fraction F]`: every record's signature is checked and
//! every blob it names must exist (directory outputs: every file of the manifest); a sample
//! of the blobs is downloaded and re-hashed.

use std::collections::{BTreeMap, BTreeSet};

use expflow_cache::{Digest, Manifest};
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::ObjectStoreExt as _;
use serde::Serialize;

use crate::client::{CONCURRENCY, Remote, blob_path};
use crate::error::{RemoteError, Result};
use crate::push::exist;

/// What `verify --remote` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub records_checked: usize,
    /// Records not used by this user (bad signature, untrusted signer), one message each.
    pub rejected: Vec<String>,
    pub blobs_referenced: usize,
    /// `node (key): blob digest`, for blobs a trusted record names that the remote lacks.
    pub missing: Vec<String>,
    pub blobs_rehashed: usize,
    pub bytes_rehashed: u64,
    /// Sampled blobs whose bytes hash to another digest.
    pub corrupt: Vec<String>,
}

impl VerifyReport {
    /// No missing or corrupt blob and no record with a bad signature.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.corrupt.is_empty()
            && !self.rejected.iter().any(|r| r.contains("does not verify"))
    }
}

impl Remote {
    /// Checks every record and re-hashes `fraction` of the blobs (at least one when there
    /// are any and `fraction` > 0), starting at a place that changes between calls.
    pub fn verify(&self, fraction: f64) -> Result<VerifyReport> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(RemoteError::Usage(format!(
                "--fraction {fraction}: give a number from 0 to 1"
            )));
        }
        let mut report = VerifyReport::default();
        // Blob → the records naming it.
        let mut refs: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
        for key in self.record_keys()? {
            let Some(rec) = self.find(&key)? else {
                continue;
            };
            report.records_checked += 1;
            let label = format!("{} ({})", rec.node, key.short());
            for (_, d, dir) in rec.blob_refs() {
                refs.entry(d).or_default().push(label.clone());
                if dir {
                    match self.manifest(&d) {
                        Ok(Some(m)) => {
                            for e in m.entries {
                                refs.entry(e.digest).or_default().push(label.clone());
                            }
                        }
                        Ok(None) => report.missing.push(format!("{label}: manifest {d}")),
                        Err(RemoteError::Damaged { what, .. }) => {
                            report.corrupt.push(format!("{label}: {what}"))
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        report.rejected = self.rejections();
        report.blobs_referenced = refs.len();
        let all: Vec<Digest> = refs.keys().copied().collect();
        let present = self.block(exist(self.ctx(), all.clone()))?;
        for d in &all {
            if !present.contains(d) {
                for who in &refs[d] {
                    report.missing.push(format!("{who}: blob {d}"));
                }
            }
        }
        report.missing.sort();
        report.missing.dedup();
        // The sample: every blob when fraction is 1, else a run of consecutive digests
        // (digests are uniformly spread) from a start that moves with the clock.
        let present: Vec<Digest> = all.into_iter().filter(|d| present.contains(d)).collect();
        let n = if fraction <= 0.0 || present.is_empty() {
            0
        } else {
            ((present.len() as f64 * fraction).ceil() as usize).clamp(1, present.len())
        };
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.subsec_nanos() as usize)
            % present.len().max(1);
        let sample: Vec<Digest> = (0..n)
            .map(|i| present[(start + i) % present.len()])
            .collect();
        let ctx = self.ctx();
        let hashed: Vec<(Digest, Digest, u64)> = self.block(async move {
            futures::stream::iter(sample)
                .map(|d| {
                    let c = ctx.clone();
                    async move {
                        let path = blob_path(&d);
                        let r = c
                            .store
                            .get(&path)
                            .await
                            .map_err(|e| c.err("read", &path, e))?;
                        let mut s = r.into_stream();
                        let mut h = blake3::Hasher::new();
                        while let Some(chunk) = s.next().await {
                            h.update(&chunk.map_err(|e| c.err("read", &path, e))?);
                        }
                        Ok::<_, RemoteError>((d, h.finalize().into(), h.count()))
                    }
                })
                .buffer_unordered(CONCURRENCY / 2)
                .try_collect()
                .await
        })?;
        for (d, actual, bytes) in hashed {
            report.blobs_rehashed += 1;
            report.bytes_rehashed += bytes;
            if actual != d {
                let who: BTreeSet<&String> = refs[&d].iter().collect();
                let who: Vec<&str> = who.into_iter().map(String::as_str).collect();
                report.corrupt.push(format!(
                    "blob {d} (of {}) hashes to {actual}",
                    who.join(", ")
                ));
            }
        }
        Ok(report)
    }

    /// The manifest blob `d` from the remote (checked against its name), if it is there.
    fn manifest(&self, d: &Digest) -> Result<Option<Manifest>> {
        let ctx = self.ctx();
        let path = blob_path(d);
        let Some(bytes) = self.block(async move { ctx.get(&path).await })? else {
            return Ok(None);
        };
        let damaged = |what: String| RemoteError::Damaged {
            remote: self.name.clone(),
            what,
        };
        if Digest::of_bytes(&bytes) != *d {
            return Err(damaged(format!("manifest {d} is corrupt")));
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| damaged(format!("manifest {d} is not text")))?;
        Ok(Some(Manifest::parse(text)?))
    }
}
