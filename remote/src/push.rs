//! `expflow push`: blobs first, then records. Every blob a record names (directory outputs:
//! the manifest and each file) is uploaded if the remote lacks it, re-hashed from the local
//! CAS on the way; then, per record, one batch existence check of all its blobs, and only
//! when all are there is the signed record written, write-once (conditional create). A push
//! killed at any point therefore leaves blobs without a record, never a record without blobs.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use expflow_cache::{Cas, Digest, Record};
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::{ObjectStoreExt as _, WriteMultipart};
use serde::Serialize;
use tokio::io::AsyncReadExt as _;

use crate::client::{CONCURRENCY, Created, Ctx, Remote, blob_path, record_path};
use crate::error::{RemoteError, Result};
use crate::keys::KeyPair;
use crate::signed::Envelope;

/// Blobs up to this size are sent in one request; larger ones in parts of this size.
const PART: usize = 8 << 20;

/// What a push did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PushReport {
    pub records_published: usize,
    /// Records the remote had already (same signer, same content).
    pub records_present: usize,
    /// Records the remote holds in a different version from this signer (kept as it is).
    pub records_differing: Vec<String>,
    pub blobs_uploaded: usize,
    pub bytes_uploaded: u64,
    /// Blobs the remote had already.
    pub blobs_present: usize,
    pub seconds: f64,
}

/// Every blob `rec` needs, read from the local CAS: outputs (and each file of a directory
/// output), the log and the items.
pub(crate) fn local_blobs(cas: &Cas, rec: &Record) -> Result<BTreeSet<Digest>> {
    let mut out = BTreeSet::new();
    for (_, d, dir) in rec.blob_refs() {
        out.insert(d);
        if dir {
            out.extend(cas.read_manifest(&d)?.entries.iter().map(|e| e.digest));
        }
    }
    Ok(out)
}

impl Remote {
    /// Pushes `records` (their blobs from `cas`), signed with `key`.
    pub fn push(&self, cas: &Cas, records: &[Record], key: &KeyPair) -> Result<PushReport> {
        let started = std::time::Instant::now();
        let mut report = PushReport::default();
        let mut needs: Vec<(Record, BTreeSet<Digest>)> = Vec::new();
        let mut all: BTreeMap<Digest, u64> = BTreeMap::new();
        for rec in records {
            let blobs = local_blobs(cas, rec)?;
            for d in &blobs {
                let path = cas.blob_path(d);
                let size = std::fs::metadata(&path)
                    .map_err(|_| expflow_cache::CacheError::BlobMissing { digest: *d, path })?
                    .len();
                all.insert(*d, size);
            }
            needs.push((rec.clone(), blobs));
        }
        // Which blobs the remote lacks (one batch of HEAD requests).
        let ctx = self.ctx();
        let digests: Vec<Digest> = all.keys().copied().collect();
        let present = self.block(exist(ctx.clone(), digests))?;
        let mut missing: Vec<(Digest, u64)> = all
            .iter()
            .filter(|(d, _)| !present.contains(d))
            .map(|(d, n)| (*d, *n))
            .collect();
        report.blobs_present = all.len() - missing.len();
        // Small blobs first: many small uploads finish while the large ones stream.
        missing.sort_by_key(|(d, n)| (*n, *d));
        let uploads: Vec<(Digest, std::path::PathBuf, u64)> = missing
            .iter()
            .map(|(d, n)| (*d, cas.blob_path(d), *n))
            .collect();
        let c = ctx.clone();
        let sent = self.block(async move {
            futures::stream::iter(uploads)
                .map(|(d, path, n)| {
                    let c = c.clone();
                    async move { upload(&c, d, &path).await.map(|()| n) }
                })
                .buffer_unordered(CONCURRENCY / 2)
                .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
                .await
        })?;
        report.blobs_uploaded = missing.len();
        report.bytes_uploaded = sent;
        // Records: each only after all its blobs are seen on the remote.
        for (rec, blobs) in needs {
            let wanted: Vec<Digest> = blobs.iter().copied().collect();
            let there = self.block(exist(ctx.clone(), wanted.clone()))?;
            if let Some(d) = wanted.iter().find(|d| !there.contains(d)) {
                return Err(RemoteError::Damaged {
                    remote: self.name.clone(),
                    what: format!(
                        "blob {d} of {} is not on the remote after its upload; the record was not published",
                        rec.node
                    ),
                });
            }
            let env = Envelope::sign(&rec, key);
            let bytes = Bytes::from(env.to_bytes());
            let path = record_path(&rec.key, &key.public.id());
            let c = ctx.clone();
            let (created, existing) = self.block(async move {
                match c.create(&path, bytes.clone()).await? {
                    Created::New => Ok((true, None)),
                    Created::Existed => Ok((false, c.get(&path).await?.map(|b| b == bytes))),
                }
            })?;
            match (created, existing) {
                (true, _) => report.records_published += 1,
                (false, Some(true)) => report.records_present += 1,
                _ => {
                    tracing::warn!(
                        "remote {} already holds another record of {} ({}) signed by this key \
                         (a node that is not deterministic, pushed from two runs?); keeping the remote one",
                        self.name,
                        rec.node,
                        rec.key.short()
                    );
                    report.records_differing.push(rec.node.clone());
                }
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }
}

/// Which of `digests` the remote has (HEAD requests, many at once).
pub(crate) async fn exist(ctx: Ctx, digests: Vec<Digest>) -> Result<BTreeSet<Digest>> {
    let found: Vec<Option<Digest>> = futures::stream::iter(digests)
        .map(|d| {
            let c = ctx.clone();
            async move { Ok::<_, RemoteError>(c.size(&blob_path(&d)).await?.map(|_| d)) }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    Ok(found.into_iter().flatten().collect())
}

/// Uploads the local blob at `path`, checking on the way that its bytes hash to `d` (a
/// damaged local blob is never published under its name).
pub(crate) async fn upload(ctx: &Ctx, d: Digest, path: &std::path::Path) -> Result<()> {
    let damaged = |actual: Digest| {
        RemoteError::Cache(expflow_cache::CacheError::BlobCorrupt {
            digest: d,
            actual,
            path: path.to_path_buf(),
        })
    };
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| RemoteError::io("cannot open", path, e))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| RemoteError::io("cannot stat", path, e))?
        .len();
    let dest = blob_path(&d);
    if len as usize <= PART {
        let mut buf = Vec::with_capacity(len as usize);
        file.read_to_end(&mut buf)
            .await
            .map_err(|e| RemoteError::io("cannot read", path, e))?;
        let actual = Digest::of_bytes(&buf);
        if actual != d {
            return Err(damaged(actual));
        }
        // Content-addressed: an object already there under this name holds these bytes
        // unless damaged, which `verify --remote` finds; its size is checked here.
        if ctx.create(&dest, Bytes::from(buf)).await? == Created::Existed
            && ctx.size(&dest).await? != Some(len)
        {
            return Err(RemoteError::Damaged {
                remote: ctx.name.clone(),
                what: format!("blob {d} exists with the wrong size"),
            });
        }
        return Ok(());
    }
    // Large: a multipart upload, which becomes visible only when it completes.
    let up = ctx
        .store
        .put_multipart(&dest)
        .await
        .map_err(|e| ctx.err("start uploading", &dest, e))?;
    let mut w = WriteMultipart::new_with_chunk_size(up, PART);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; PART];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| RemoteError::io("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        w.wait_for_capacity(4)
            .await
            .map_err(|e| ctx.err("upload", &dest, e))?;
        w.put(Bytes::copy_from_slice(&buf[..n]));
    }
    let actual: Digest = hasher.finalize().into();
    if actual != d {
        let _ = w.abort().await;
        return Err(damaged(actual));
    }
    w.finish().await.map_err(|e| ctx.err("upload", &dest, e))?;
    Ok(())
}
