//! The HTTP routes: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/embeddings`,
//! `GET /stats`, `GET /health`; anything else is a 404 OpenAI error object. With an API key,
//! the `/v1` routes answer 401 to a request without `Authorization: Bearer KEY`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use expflow_models::{ContentPart, GenRequest};
use serde_json::{Value, json};

use crate::batch::{Queue, Stats};
use crate::model::{EmbedModel, Failure};
use crate::wire::{self, ApiError, Defaults};

/// What the server answers with.
pub enum Served {
    Chat { queue: Queue, defaults: Defaults },
    Embed(Arc<dyn EmbedModel>),
}

/// Shared state of the routes.
pub struct AppState {
    pub name: String,
    pub card: crate::Card,
    pub api_key: Option<crate::ApiKey>,
    /// Special tokens' text, longest first (left out of replies by `skip_special_tokens`).
    pub special: Vec<String>,
    pub served: Served,
    pub render: Option<Arc<dyn crate::model::ChatModel>>,
    pub stats: Arc<Stats>,
    pub next_id: AtomicU64,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        (status, axum::Json(self.body())).into_response()
    }
}

impl From<Failure> for ApiError {
    fn from(f: Failure) -> ApiError {
        if f.client {
            ApiError::bad("", f.message)
        } else {
            ApiError::server(f.message)
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/stats", get(stats))
        .route("/health", get(|| async { "ok" }))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(
        format!(
            "no route `{}`; this server has GET /v1/models, POST /v1/chat/completions, POST /v1/embeddings",
            uri.path()
        ),
        "unknown_url",
    )
}

async fn models(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, ApiError> {
    authorize(&s, &headers)?;
    Ok(axum::Json(json!({
        "object": "list",
        "data": [{
            "id": s.name,
            "object": "model",
            "created": s.card.created,
            "owned_by": "expflow",
            "root": s.card.root,
        }],
    })))
}

/// With an API key: the request must carry `Authorization: Bearer KEY`.
fn authorize(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &s.api_key else {
        return Ok(());
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compared without an early exit, so the time taken does not tell how much matched.
    let (a, b) = (given.as_bytes(), key.0.as_bytes());
    let differ = a.len() != b.len() || a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) != 0;
    if differ {
        return Err(ApiError {
            status: 401,
            kind: "invalid_request_error",
            message: "missing or wrong API key: send `Authorization: Bearer KEY`".into(),
            param: None,
            code: Some("invalid_api_key"),
        });
    }
    Ok(())
}

pub use expflow_models::special::strip_special;

async fn stats(State(s): State<Arc<AppState>>) -> axum::Json<crate::batch::StatsSnapshot> {
    axum::Json(s.stats.snapshot())
}

fn check_model(s: &AppState, asked: Option<&str>) -> Result<(), ApiError> {
    match asked {
        Some(m) if m != s.name => Err(ApiError::not_found(
            format!(
                "the model `{m}` does not exist; this server serves `{}`",
                s.name
            ),
            "model_not_found",
        )),
        _ => Ok(()),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn chat(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    authorize(&s, &headers)?;
    let n = s.stats.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let (queue, defaults) = match &s.served {
        Served::Chat { queue, defaults } => (queue, defaults),
        Served::Embed(_) => {
            return Err(ApiError::not_found(
                format!(
                    "`{}` is an encoder: it serves POST /v1/embeddings, not chat completions",
                    s.name
                ),
                "wrong_model_kind",
            ));
        }
    };
    let call = wire::parse_chat(&body, defaults)?;
    check_model(&s, call.model.as_deref())?;
    let model = s
        .render
        .as_ref()
        .ok_or_else(|| ApiError::server("no chat model is loaded"))?;
    let prompt = model.render(&call.messages)?;
    let (mut images, mut videos) = (Vec::new(), Vec::new());
    for p in call.messages.iter().flat_map(|m| &m.content) {
        match p {
            ContentPart::Image { path } => images.push(path.clone()),
            ContentPart::Video { path } => videos.push(path.clone()),
            ContentPart::Text { .. } => {}
        }
    }
    tracing::debug!(request = n, "chat completion queued");
    let rx = queue.submit(GenRequest {
        prompt,
        images,
        videos,
        sampling: call.sampling,
    })?;
    let mut generation = rx
        .await
        .map_err(|_| ApiError::unavailable("the server is shutting down"))??;
    if call.skip_special_tokens {
        for c in &mut generation.completions {
            c.text = strip_special(&c.text, &s.special);
        }
    }
    let id = s.next_id.fetch_add(1, Ordering::Relaxed);
    Ok(axum::Json(wire::chat_response(
        &format!("chatcmpl-{id}"),
        now(),
        &s.name,
        &generation,
    )))
}

async fn embeddings(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    authorize(&s, &headers)?;
    s.stats.embedding_requests.fetch_add(1, Ordering::Relaxed);
    let Served::Embed(model) = &s.served else {
        return Err(ApiError::not_found(
            format!(
                "`{}` is a generative model: it serves POST /v1/chat/completions, not embeddings",
                s.name
            ),
            "wrong_model_kind",
        ));
    };
    let (asked, texts) = wire::parse_embeddings(&body)?;
    check_model(&s, asked.as_deref())?;
    let model = Arc::clone(model);
    let (vectors, tokens) = tokio::task::spawn_blocking(move || {
        let tokens: usize = texts.iter().map(|t| model.count_tokens(t)).sum();
        model.embed(&texts).map(|v| (v, tokens))
    })
    .await
    .map_err(|e| ApiError::server(format!("the embedding task failed: {e}")))??;
    Ok(axum::Json(wire::embeddings_response(
        &s.name, &vectors, tokens,
    )))
}
