//! An open remote: the object store, a small runtime of its own (so that the engine's
//! synchronous scheduler and the cli can call it from anywhere), and the user's trust.

use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use expflow_cache::Digest;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};

use crate::config::{Location, RemoteSpec};
use crate::error::{RemoteError, Result};
use crate::keys::Trust;

/// How many requests run at once.
pub(crate) const CONCURRENCY: usize = 16;

/// An open remote.
pub struct Remote {
    pub(crate) name: String,
    /// What it was opened from (jobs of the object data mode open it the same way).
    pub(crate) spec: RemoteSpec,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) trust: Trust,
    rt: Option<tokio::runtime::Runtime>,
    /// Remote records not used (path → message), so a run warns once per record.
    pub(crate) warned: Mutex<std::collections::BTreeMap<String, String>>,
}

impl Drop for Remote {
    fn drop(&mut self) {
        // Dropping a runtime blocks; shutting it down in the background is allowed inside
        // an async context too.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Remote {
    /// Opens `spec` with the trusted keys `trust`. S3 credentials and region come from the
    /// standard `AWS_*` environment variables.
    pub fn open(spec: &RemoteSpec, trust: Trust) -> Result<Remote> {
        spec.validate()?;
        let err = |source| RemoteError::Store {
            remote: spec.name.clone(),
            action: "open",
            path: spec.url.clone(),
            source: Box::new(source),
        };
        let store: Arc<dyn ObjectStore> = match spec.location()? {
            Location::S3 { bucket, prefix } => {
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                if std::env::var_os("AWS_DEFAULT_REGION").is_none()
                    && std::env::var_os("AWS_REGION").is_none()
                {
                    b = b.with_region("us-east-1");
                }
                if let Some(ep) = &spec.endpoint {
                    b = b
                        .with_endpoint(ep)
                        .with_allow_http(ep.starts_with("http://"));
                }
                let s3 = b.build().map_err(err)?;
                prefixed(s3, &prefix)
            }
            Location::File { dir } => {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| RemoteError::io("cannot create directory", &dir, e))?;
                let fs =
                    object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(err)?;
                Arc::new(fs)
            }
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("expflow-remote")
            .enable_all()
            .build()
            .map_err(|e| RemoteError::io("cannot start the runtime for remote", &spec.name, e))?;
        Ok(Remote {
            name: spec.name.clone(),
            spec: spec.clone(),
            store,
            trust,
            rt: Some(rt),
            warned: Mutex::new(Default::default()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `fut` on the remote's runtime and waits for it; callable from synchronous code
    /// and from inside another runtime alike.
    pub(crate) fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.rt
            .as_ref()
            .expect("the runtime lives until drop")
            .spawn(async move {
                let _ = tx.send(fut.await);
            });
        rx.recv().unwrap_or_else(|_| {
            Err(RemoteError::Usage(format!(
                "remote {}: a request task stopped unexpectedly",
                self.name
            )))
        })
    }

    pub(crate) fn ctx(&self) -> Ctx {
        Ctx {
            name: self.name.clone(),
            store: self.store.clone(),
        }
    }
}

fn prefixed<S: ObjectStore>(s: S, prefix: &str) -> Arc<dyn ObjectStore> {
    if prefix.is_empty() {
        Arc::new(s)
    } else {
        Arc::new(object_store::prefix::PrefixStore::new(s, prefix))
    }
}

/// What an async task needs of a remote (cheap to clone into tasks).
#[derive(Clone)]
pub(crate) struct Ctx {
    pub name: String,
    pub store: Arc<dyn ObjectStore>,
}

/// What a write-once put found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Created {
    New,
    /// An object was there already (its content not yet compared).
    Existed,
}

impl Ctx {
    pub fn err(
        &self,
        action: &'static str,
        path: &ObjPath,
        source: object_store::Error,
    ) -> RemoteError {
        RemoteError::Store {
            remote: self.name.clone(),
            action,
            path: path.to_string(),
            source: Box::new(source),
        }
    }

    /// The size of the object at `path`, or none if it does not exist.
    pub async fn size(&self, path: &ObjPath) -> Result<Option<u64>> {
        match self.store.head(path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("look up", path, e)),
        }
    }

    /// The bytes at `path`, or none if it does not exist.
    pub async fn get(&self, path: &ObjPath) -> Result<Option<Bytes>> {
        match self.store.get(path).await {
            Ok(r) => Ok(Some(
                r.bytes().await.map_err(|e| self.err("read", path, e))?,
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("read", path, e)),
        }
    }

    /// Writes `bytes` at `path` only if nothing is there (conditional create).
    pub async fn create(&self, path: &ObjPath, bytes: Bytes) -> Result<Created> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(path, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(Created::New),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(Created::Existed),
            Err(e) => Err(self.err("write", path, e)),
        }
    }

    /// Every object path under `prefix`.
    pub async fn list(&self, prefix: &ObjPath) -> Result<Vec<ObjPath>> {
        use futures::TryStreamExt as _;
        self.store
            .list(Some(prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| self.err("list", prefix, e))
    }
}

/// `blobs/<2 hex>/<64 hex>`.
pub(crate) fn blob_path(d: &Digest) -> ObjPath {
    let hex = d.to_hex();
    ObjPath::from(format!("blobs/{}/{hex}", &hex[..2]))
}

/// `records/<key>/`.
pub(crate) fn record_dir(key: &Digest) -> ObjPath {
    ObjPath::from(format!("records/{}", key.to_hex()))
}

/// `records/<key>/<signer id>.json`.
pub(crate) fn record_path(key: &Digest, signer_id: &str) -> ObjPath {
    ObjPath::from(format!("records/{}/{signer_id}.json", key.to_hex()))
}
