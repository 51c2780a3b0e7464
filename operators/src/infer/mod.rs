//! Inference operators and the OpenAI-compatible client they share:
//! - `infer.chat` ([`chat`]): a table of prompts → the model's replies;
//! - the backends ([`backend`]): an OpenAI-compatible server ([`openai`]) or the native
//!   runtime in-process ([`native`]);
//! - [`rows`]: prompt tables → chat messages.
//!
//! `expstar.rag_infer` (in [`crate::expstar`]'s family, kind `expstar.rag_infer`) lives in
//! [`rag`], `expstar.reward` (which can ask a judge model) in [`reward`].

pub mod backend;
pub mod chat;
pub mod identity;
pub mod native;
pub mod openai;
pub mod rag;
pub mod relevance;
pub mod reward;
pub mod rows;
pub mod serve_op;
pub mod served;

pub use chat::Chat;
pub use rag::RagInfer;
pub use relevance::Relevance;
pub use reward::Reward;
pub use serve_op::ServeModel;

use expflow_engine::{Context, Determinism, OpError};
use serde_json::{Map, Value};

use backend::{Backend, Media, OpenAi};
use openai::ClientConfig;

use crate::error::{OperatorError, Result};
use crate::params::Params;

/// The `backend` parameter and what it needs.
pub enum BackendKind {
    OpenAi {
        client: ClientConfig,
        /// Required unless an endpoint is connected (then its served name).
        model: Option<String>,
        media: Media,
    },
    Native {
        batch_size: usize,
    },
}

impl BackendKind {
    /// Reads `backend` and, for `openai`, the client parameters, `model` and `media`; for
    /// `native`, `batch_size`.
    pub fn parse(op: &'static str, map: &Map<String, Value>) -> Result<BackendKind> {
        let p = Params::new(op, map);
        match p.choice("backend", &["openai", "native"])? {
            "openai" => Ok(BackendKind::OpenAi {
                client: ClientConfig::parse(op, map)?,
                model: p.opt_str("model")?.map(str::to_owned),
                media: Media::parse(&p)?,
            }),
            _ => {
                let batch_size = p.u64("batch_size")?;
                if batch_size == 0 {
                    return Err(OperatorError::param(
                        op,
                        "batch_size",
                        "is 0; use at least 1",
                    ));
                }
                Ok(BackendKind::Native {
                    batch_size: batch_size as usize,
                })
            }
        }
    }
}

/// The backend the node's parameters name, ready to use. With backend `openai` and a
/// `serve.model` endpoint at the `endpoint` input, the endpoint's replicas are started here
/// and stopped when the backend is dropped.
pub fn open_backend<'a>(
    ctx: &'a Context,
    op: &'static str,
) -> Result<Box<dyn Backend + 'a>, OpError> {
    Ok(match BackendKind::parse(op, ctx.params())? {
        BackendKind::OpenAi {
            client,
            model,
            media,
        } => {
            if let Some(ep) = ctx.inputs().get("endpoint") {
                if client.has_url() {
                    return Err(OperatorError::param(
                        op,
                        "base_url",
                        "is given and so is an `endpoint` input; keep one (the endpoint's servers are started for this node)",
                    )
                    .into());
                }
                Box::new(OpenAi::served(ctx, op, client, model, media, &ep.path)?)
            } else {
                if !client.has_url() {
                    return Err(OperatorError::param(
                        op,
                        "base_url",
                        "is required with backend openai: give the server's URL (e.g. http://127.0.0.1:8000/v1), or connect a serve.model node's endpoint to the `endpoint` input",
                    )
                    .into());
                }
                let model = model.ok_or_else(|| {
                    OperatorError::param(
                        op,
                        "model",
                        "is required with backend openai: the model's name at the server (see GET /v1/models)",
                    )
                })?;
                Box::new(OpenAi::new(ctx, op, client, model, media)?)
            }
        }
        BackendKind::Native { batch_size } => Box::new(native::Native::load(ctx, op, batch_size)?),
    })
}

/// How reproducible an inference node is: a remote server promises nothing; the native
/// runtime is deterministic when greedy and reproducible for a seed when sampling.
pub fn determinism(map: &Map<String, Value>) -> Determinism {
    let native = map.get("backend").and_then(Value::as_str) == Some("native");
    let greedy = map.get("temperature").and_then(Value::as_f64) == Some(0.0);
    match (native, greedy) {
        (false, _) => Determinism::Nondeterministic,
        (true, true) => Determinism::Deterministic,
        (true, false) => Determinism::Seeded,
    }
}
