//! A remote as the object data mode uses it: cluster jobs that share no file system with
//! the submitting workspace download their inputs from it and upload their outputs to it,
//! and task and result files travel through it under `jobs/<run id>/`. Blobs are checked
//! both ways as in `push` and `pull`: re-hashed before upload and after download.

use std::collections::BTreeSet;

use bytes::Bytes;
use expflow_cache::{Cas, Digest};
use expflow_engine::shared::{Fetched, Locator, ObjectExchange};
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path as ObjPath;

use crate::client::{CONCURRENCY, Remote};
use crate::error::{RemoteError, Result};
use crate::push::{exist, upload};

impl Remote {
    /// Every blob of `artifacts` (a directory's manifest and files), read from `cas`.
    fn expand(cas: &Cas, artifacts: &[(Digest, bool)]) -> Result<BTreeSet<Digest>> {
        let mut all = BTreeSet::new();
        for (d, dir) in artifacts {
            all.insert(*d);
            if *dir {
                all.extend(cas.read_manifest(d)?.entries.iter().map(|e| e.digest));
            }
        }
        Ok(all)
    }

    /// Uploads the blobs of `artifacts` that the remote lacks (one batch of HEAD requests
    /// first); each is re-hashed from `cas` on the way.
    pub fn upload_artifacts(&self, cas: &Cas, artifacts: &[(Digest, bool)]) -> Result<Fetched> {
        let all = Self::expand(cas, artifacts)?;
        let ctx = self.ctx();
        let present = self.block(exist(ctx.clone(), all.iter().copied().collect()))?;
        let mut todo = Vec::new();
        for d in all.into_iter().filter(|d| !present.contains(d)) {
            let path = cas.blob_path(&d);
            let size = std::fs::metadata(&path)
                .map_err(|_| expflow_cache::CacheError::BlobMissing {
                    digest: d,
                    path: path.clone(),
                })?
                .len();
            todo.push((d, path, size));
        }
        let blobs = todo.len();
        let bytes = self.block(async move {
            futures::stream::iter(todo)
                .map(|(d, path, n)| {
                    let c = ctx.clone();
                    async move { upload(&c, d, &path).await.map(|()| n) }
                })
                .buffer_unordered(CONCURRENCY / 2)
                .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
                .await
        })?;
        Ok(Fetched { blobs, bytes })
    }

    /// Downloads the blobs of `artifacts` that `cas` lacks (directory manifests first, then
    /// the files they name), each re-hashed before it enters `cas`.
    pub fn download_artifacts(&self, cas: &Cas, artifacts: &[(Digest, bool)]) -> Result<Fetched> {
        let mut got = Fetched::default();
        let manifests: Vec<Digest> = artifacts.iter().filter(|a| a.1).map(|a| a.0).collect();
        self.download(cas, manifests.into_iter(), "a job", &mut got)?;
        let all = Self::expand(cas, artifacts)?;
        self.download(cas, all.into_iter(), "a job", &mut got)?;
        Ok(got)
    }
}

/// `jobs/…` paths only: the exchange never reads or writes blobs or records by path.
fn job_path(path: &str) -> Result<ObjPath> {
    let p = ObjPath::from(path.trim_end_matches('/'));
    if p.parts()
        .next()
        .is_none_or(|first| first.as_ref() != "jobs")
    {
        return Err(RemoteError::Usage(format!(
            "{path}: not a job object (those live under jobs/)"
        )));
    }
    Ok(p)
}

fn engine_err(e: RemoteError) -> expflow_engine::EngineError {
    expflow_engine::EngineError::Other(e.to_string())
}

impl ObjectExchange for Remote {
    fn locator(&self) -> Locator {
        Locator {
            name: self.spec.name.clone(),
            url: self.spec.url.clone(),
            endpoint: self.spec.endpoint.clone(),
        }
    }

    fn upload(&self, cas: &Cas, artifacts: &[(Digest, bool)]) -> expflow_engine::Result<Fetched> {
        self.upload_artifacts(cas, artifacts).map_err(engine_err)
    }

    fn download(&self, cas: &Cas, artifacts: &[(Digest, bool)]) -> expflow_engine::Result<Fetched> {
        self.download_artifacts(cas, artifacts).map_err(engine_err)
    }

    fn put_object(&self, path: &str, bytes: Vec<u8>) -> expflow_engine::Result<()> {
        let p = job_path(path).map_err(engine_err)?;
        let ctx = self.ctx();
        // Write-once: a requeued job that wrote its result before keeps the first one.
        self.block(async move { ctx.create(&p, Bytes::from(bytes)).await.map(drop) })
            .map_err(engine_err)
    }

    fn get_object(&self, path: &str) -> expflow_engine::Result<Option<Vec<u8>>> {
        let p = job_path(path).map_err(engine_err)?;
        let ctx = self.ctx();
        self.block(async move { Ok(ctx.get(&p).await?.map(|b| b.to_vec())) })
            .map_err(engine_err)
    }

    fn list_objects(&self, prefix: &str) -> expflow_engine::Result<Vec<String>> {
        let p = job_path(prefix).map_err(engine_err)?;
        let ctx = self.ctx();
        self.block(async move {
            Ok(ctx
                .list(&p)
                .await?
                .into_iter()
                .map(|p| p.to_string())
                .collect())
        })
        .map_err(engine_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exchange_stays_under_jobs() {
        assert!(job_path("jobs/r1/results/").is_ok());
        assert!(job_path("records/abc/x.json").is_err());
        assert!(job_path("blobs/ab/abcd").is_err());
    }
}
