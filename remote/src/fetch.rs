//! Reading from a remote: finding a trusted record for a node key, downloading the blobs a
//! record names (each re-hashed before it enters the local CAS), and `pull`.

use std::collections::BTreeSet;
use std::io::Write as _;

use expflow_cache::{Cas, Digest, Record, Store};
use expflow_engine::shared::{Fetched, SharedCache};
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::ObjectStoreExt as _;
use serde::Serialize;

use crate::client::{CONCURRENCY, Ctx, Remote, blob_path, record_dir};
use crate::error::{RemoteError, Result};
use crate::signed::{Envelope, Rejection};

/// What `pull` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PullReport {
    /// Records stored locally (with all their blobs).
    pub records: usize,
    /// Records the workspace had already.
    pub present: usize,
    /// Remote records not used (untrusted, bad signature), one message each.
    pub rejected: Vec<String>,
    pub blobs: usize,
    pub bytes: u64,
    pub seconds: f64,
}

impl Remote {
    /// The record for node key `key` signed by a trusted key (the user's own first), if the
    /// remote has one. Records that are not used are warned about once, naming the signer.
    pub fn find(&self, key: &Digest) -> Result<Option<Record>> {
        let ctx = self.ctx();
        let dir = record_dir(key);
        let own = self.trust.own_id().map(str::to_string);
        let found: Vec<(String, Option<bytes::Bytes>)> = self.block(async move {
            let mut paths = ctx.list(&dir).await?;
            // The user's own record first, then the others in name order.
            paths.sort_by_key(|p| (Some(stem(p)) != own, p.to_string()));
            let mut out = Vec::new();
            for p in paths {
                out.push((p.to_string(), ctx.get(&p).await?));
            }
            Ok(out)
        })?;
        for (path, bytes) in found {
            let Some(bytes) = bytes else { continue };
            match Envelope::open(&bytes, key, &self.trust) {
                Ok((rec, _)) => return Ok(Some(rec)),
                Err(why) => self.reject(key, &path, &why),
            }
        }
        Ok(None)
    }

    fn reject(&self, key: &Digest, path: &str, why: &Rejection) {
        let msg = format!(
            "remote {}: ignoring the record of {} at {path}: {why}",
            self.name,
            key.short()
        );
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.insert(path.to_string(), msg.clone()).is_none() {
            tracing::warn!("{msg}");
        }
    }

    /// Downloads the blobs of `rec` that `cas` lacks.
    pub fn fetch(&self, rec: &Record, cas: &Cas) -> Result<Fetched> {
        let mut got = Fetched::default();
        // Directory outputs: their manifests first, which name the files.
        let manifests: Vec<Digest> = rec
            .outputs
            .values()
            .filter(|o| o.dir)
            .map(|o| o.digest)
            .collect();
        self.download(cas, manifests.iter().copied(), &rec.node, &mut got)?;
        let mut wanted: BTreeSet<Digest> = rec.blob_refs().into_iter().map(|(_, d, _)| d).collect();
        for m in &manifests {
            wanted.extend(cas.read_manifest(m)?.entries.iter().map(|e| e.digest));
        }
        self.download(cas, wanted.into_iter(), &rec.node, &mut got)?;
        Ok(got)
    }

    /// Downloads the blobs `digests` that `cas` lacks; `node` names whose they are in
    /// messages.
    pub(crate) fn download(
        &self,
        cas: &Cas,
        digests: impl Iterator<Item = Digest>,
        node: &str,
        got: &mut Fetched,
    ) -> Result<()> {
        let todo: Vec<Digest> = digests.filter(|d| !cas.contains(d)).collect();
        if todo.is_empty() {
            return Ok(());
        }
        let (ctx, cas2, node) = (self.ctx(), cas.clone(), node.to_string());
        let bytes = self.block(async move {
            futures::stream::iter(todo)
                .map(|d| {
                    let (c, cas, node) = (ctx.clone(), cas2.clone(), node.clone());
                    async move { download_one(&c, &cas, d, &node).await }
                })
                .buffer_unordered(CONCURRENCY / 2)
                .try_fold(
                    (0usize, 0u64),
                    |(n, b), x| async move { Ok((n + 1, b + x)) },
                )
                .await
        })?;
        got.blobs += bytes.0;
        got.bytes += bytes.1;
        Ok(())
    }

    /// Every node key that has at least one record on the remote.
    pub fn record_keys(&self) -> Result<Vec<Digest>> {
        let ctx = self.ctx();
        let paths =
            self.block(async move { ctx.list(&object_store::path::Path::from("records")).await })?;
        let mut keys: Vec<Digest> = paths
            .iter()
            .filter_map(|p| p.parts().nth(1))
            .filter_map(|k| Digest::from_hex(k.as_ref()).ok())
            .collect();
        keys.dedup();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// `pull` without a pipeline file: every trusted record on the remote (of `pipeline`
    /// only, when given) that the workspace lacks, with all its blobs.
    pub fn pull_all(
        &self,
        cas: &Cas,
        store: &dyn Store,
        pipeline: Option<&str>,
    ) -> Result<PullReport> {
        let started = std::time::Instant::now();
        let mut report = PullReport::default();
        for key in self.record_keys()? {
            let Some(rec) = self.find(&key)? else {
                continue;
            };
            if pipeline.is_some_and(|p| p != rec.pipeline) {
                continue;
            }
            if let Some(local) = store.get_record(&key)?
                && expflow_engine::node::record_ok(cas, store, &local)?
            {
                report.present += 1;
                continue;
            }
            let got = self.fetch(&rec, cas)?;
            store.put_record(&rec)?;
            store.set_last(&rec.pipeline, &rec.node, &rec.key)?;
            report.records += 1;
            report.blobs += got.blobs;
            report.bytes += got.bytes;
        }
        report.rejected = self.rejections();
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }
}

impl Remote {
    /// Every message about a remote record that was not used, so far.
    pub fn rejections(&self) -> Vec<String> {
        let warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        warned.values().cloned().collect()
    }
}

fn stem(p: &object_store::path::Path) -> String {
    p.filename()
        .and_then(|f| f.strip_suffix(".json"))
        .unwrap_or("")
        .to_string()
}

/// Downloads blob `d` into a temp file under the CAS, hashing on the way; a blob whose
/// bytes do not hash to its name never enters the CAS. Returns its size.
async fn download_one(ctx: &Ctx, cas: &Cas, d: Digest, node: &str) -> Result<u64> {
    let path = blob_path(&d);
    let res = match ctx.store.get(&path).await {
        Ok(r) => r,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(RemoteError::Damaged {
                remote: ctx.name.clone(),
                what: format!("blob {d} of {node} is missing"),
            });
        }
        Err(e) => return Err(ctx.err("read", &path, e)),
    };
    let tmp_dir = cas.root().join("tmp");
    let mut tmp = tempfile::Builder::new()
        .prefix("fetch-")
        .tempfile_in(&tmp_dir)
        .map_err(|e| RemoteError::io("cannot create a temp file in", &tmp_dir, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut stream = res.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ctx.err("read", &path, e))?;
        hasher.update(&chunk);
        tmp.write_all(&chunk)
            .map_err(|e| RemoteError::io("cannot write", tmp.path(), e))?;
    }
    let actual: Digest = hasher.finalize().into();
    if actual != d {
        return Err(RemoteError::Damaged {
            remote: ctx.name.clone(),
            what: format!(
                "blob {d} of {node} is corrupt (its bytes hash to {actual}); it was not stored"
            ),
        });
    }
    let n = hasher.count();
    let (file, tmp_path) = tmp.into_parts();
    drop(file);
    // The CAS hashes what it stores once more: the name always matches the bytes.
    let (stored, _) = cas.put_file_move(&tmp_path)?;
    debug_assert_eq!(stored, d);
    Ok(n)
}

impl SharedCache for Remote {
    fn name(&self) -> &str {
        &self.name
    }

    fn find(&self, key: &Digest) -> expflow_engine::Result<Option<Record>> {
        Remote::find(self, key).map_err(|e| expflow_engine::EngineError::Other(e.to_string()))
    }

    fn fetch(&self, rec: &Record, cas: &Cas) -> expflow_engine::Result<Fetched> {
        Remote::fetch(self, rec, cas).map_err(|e| expflow_engine::EngineError::Other(e.to_string()))
    }

    fn exchange(&self) -> Option<&dyn expflow_engine::shared::ObjectExchange> {
        Some(self)
    }
}
