//! expflow's OpenAI-compatible server on the native model runtime (`expflow serve`).
//!
//! Dependencies: axum and tokio, `expflow-models`, `expflow-encoders` and `expflow-vlm`. The
//! engine and the operators appear only among its dev-dependencies (tests that run pipelines
//! against a live server); the cli depends on it for `expflow serve`, and no other crate may.
//!
//! A generative model directory is served at `POST /v1/chat/completions`, an encoder at
//! `POST /v1/embeddings`; both list themselves at `GET /v1/models`, with `root` the digest
//! of the model directory's files and `created` their newest modification time, so that a
//! client can tell two models served under one name apart. With an API key every `/v1`
//! route wants `Authorization: Bearer KEY` (as vLLM's `--api-key`). Chat requests are
//! batched ([`batch`]): one thread collects requests for up to `batch_wait` or `max_batch`
//! requests and runs one `generate` over them. `GET /stats` returns the counters (requests,
//! batches, the largest batch, tokens). Errors are OpenAI error objects with the HTTP status
//! that fits (400 for a bad request, 404 for an unknown model or route, 500 for a failure).
//!
//! - [`wire`]: the OpenAI JSON format, parsed and written;
//! - [`model`]: what a served model must do; [`native`]: that on `expflow-models` and
//!   `expflow-encoders`;
//! - [`serve`] (async, until a shutdown future resolves) and [`spawn`] (on its own thread,
//!   for tests and in-process use).

pub mod batch;
pub mod error;
pub mod model;
pub mod native;
pub mod routes;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

pub use batch::{Stats, StatsSnapshot};
pub use error::{Result, ServeError};
pub use model::{ChatModel, EmbedModel, Failure};
pub use native::load;
pub use native::model_card;
pub use wire::{ApiError, Defaults};

use routes::{AppState, Served};

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// Most requests in one `generate` call.
    pub max_batch: usize,
    /// How long the batcher waits for more requests after the first.
    pub batch_wait: Duration,
    /// When set, `/v1` routes answer 401 without `Authorization: Bearer KEY`.
    pub api_key: Option<ApiKey>,
}

/// An API key; `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(pub String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            max_batch: 8,
            batch_wait: Duration::from_millis(10),
            api_key: None,
        }
    }
}

/// A loaded model, ready to serve under `name`.
pub struct Loaded {
    pub name: String,
    pub kind: LoadedKind,
    /// What `GET /v1/models` says about the model's version: `created` (Unix seconds) and
    /// `root`.
    pub card: Card,
}

/// The version fields of a model's `/v1/models` entry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Card {
    /// The newest modification time of the model's files, Unix seconds.
    pub created: u64,
    /// `blake3:HEX`, a digest of the model directory's files (names and bytes).
    pub root: Option<String>,
}

pub enum LoadedKind {
    Chat {
        model: Arc<dyn ChatModel>,
        defaults: Defaults,
    },
    Embed(Arc<dyn EmbedModel>),
}

/// The router and what must outlive it.
struct Prepared {
    router: axum::Router,
    stats: Arc<Stats>,
    batcher: Option<std::thread::JoinHandle<()>>,
}

fn prepare(loaded: Loaded, cfg: &ServeConfig) -> Result<Prepared> {
    let stats = Arc::new(Stats::default());
    let special = match &loaded.kind {
        LoadedKind::Chat { model, .. } => {
            let mut t = model.special_tokens();
            // Longest first, so that no token is cut by a shorter one inside it.
            t.sort_by_key(|s| std::cmp::Reverse(s.len()));
            t
        }
        LoadedKind::Embed(_) => Vec::new(),
    };
    let (served, render, batcher) = match loaded.kind {
        LoadedKind::Chat { model, defaults } => {
            let (queue, handle) = batch::start(
                Arc::clone(&model),
                cfg.max_batch,
                cfg.batch_wait,
                Arc::clone(&stats),
            )
            .map_err(|e| ServeError::Runtime(format!("cannot start the batching thread: {e}")))?;
            (Served::Chat { queue, defaults }, Some(model), Some(handle))
        }
        LoadedKind::Embed(model) => (Served::Embed(model), None, None),
    };
    let state = Arc::new(AppState {
        name: loaded.name,
        card: loaded.card,
        api_key: cfg.api_key.clone(),
        special,
        served,
        render,
        stats: Arc::clone(&stats),
        next_id: AtomicU64::new(0),
    });
    Ok(Prepared {
        router: routes::router(state),
        stats,
        batcher,
    })
}

async fn bind(cfg: &ServeConfig) -> Result<tokio::net::TcpListener> {
    let addr = format!("{}:{}", cfg.host, cfg.port);
    tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|error| ServeError::Bind { addr, error })
}

async fn run(
    listener: tokio::net::TcpListener,
    prepared: Prepared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let Prepared {
        router,
        stats,
        batcher,
    } = prepared;
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|error| ServeError::Bind {
            addr: addr.clone(),
            error,
        })?;
    // The router (and with it the queue's sender) is gone: the batcher finishes its batch
    // and stops.
    if let Some(h) = batcher {
        let _ = tokio::task::spawn_blocking(move || h.join()).await;
    }
    let s = stats.snapshot();
    tracing::info!(
        requests = s.requests,
        batches = s.batches,
        max_batch = s.max_batch,
        completion_tokens = s.completion_tokens,
        "server on {addr} stopped"
    );
    Ok(())
}

/// Serves `loaded` until `shutdown` resolves (e.g. Ctrl-C); requests in flight finish.
/// `ready` is called with the bound address once the server accepts connections.
pub async fn serve(
    loaded: Loaded,
    cfg: &ServeConfig,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listener = bind(cfg).await?;
    let local = listener
        .local_addr()
        .map_err(|e| ServeError::Runtime(e.to_string()))?;
    let name = loaded.name.clone();
    let prepared = prepare(loaded, cfg)?;
    ready(local);
    tracing::info!(
        "serving `{name}` on http://{local}/v1 (max batch {}, batch wait {} ms)",
        cfg.max_batch,
        cfg.batch_wait.as_millis()
    );
    run(listener, prepared, shutdown).await
}

/// A server running on its own thread and runtime; stopped (gracefully) by [`Running::stop`]
/// or on drop.
pub struct Running {
    pub addr: SocketAddr,
    stats: Arc<Stats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Running {
    /// The OpenAI base URL, `http://ADDR/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Stops accepting, lets requests in flight finish, and waits for the server's thread.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| ServeError::Runtime("the server thread panicked".into()))?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Starts serving `loaded` on a thread of its own (bound before this returns, so
/// `cfg.port = 0` gives a free port in [`Running::addr`]).
pub fn spawn(loaded: Loaded, cfg: &ServeConfig) -> Result<Running> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ServeError::Runtime(format!("cannot start a tokio runtime: {e}")))?;
    let listener = rt.block_on(bind(cfg))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Runtime(e.to_string()))?;
    let prepared = prepare(loaded, cfg)?;
    let stats = Arc::clone(&prepared.stats);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("expflow-serve".into())
        .spawn(move || {
            rt.block_on(run(listener, prepared, async {
                let _ = stopped.await;
            }))
        })
        .map_err(|e| ServeError::Runtime(format!("cannot start the server thread: {e}")))?;
    Ok(Running {
        addr,
        stats,
        stop: Some(stop),
        thread: Some(thread),
    })
}
