//! The native backend: the `model` input loaded in-process (a Qwen2.5-VL directory as the
//! vision-language model, anything else with `expflow_models::Generator`), prompts rendered
//! with its chat template and generated in batches of `batch_size`. Each request is
//! memoised under the model's digest, the rendered prompt, the image digests and the
//! sampling, so a re-run generates only what changed.

use expflow_engine::{Context, OpError};
use expflow_models::{
    ChatMessage, ContentPart, GenRequest, Generation, Generator, ModelDir, Needs, TokenLogprob,
};
use serde_json::{Value, json};

use expflow_vlm::VisionLanguageModel;

use super::backend::{Backend, ChatReq, Digests};
use super::openai::{Choice, Reply};
use crate::error::OperatorError;

/// The loaded model.
enum Engine {
    Text(Box<Generator>),
    Vision(Box<VisionLanguageModel>),
}

pub struct Native {
    op: &'static str,
    engine: Engine,
    /// The model artifact's digest (it names the weights, config and tokenizer).
    model: String,
    batch_size: usize,
    digests: Digests,
    /// The tokenizer's special tokens' text, left out of replies unless a request keeps it
    /// (as vLLM's and `expflow serve`'s `skip_special_tokens` does by default).
    special: Vec<String>,
}

/// A memo probe that found nothing: `ctx.memo` stores nothing when compute fails.
#[derive(Debug)]
struct Miss;

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not memoised")
    }
}

impl std::error::Error for Miss {}

impl Native {
    /// Loads the `model` input.
    pub fn load(ctx: &Context, op: &'static str, batch_size: usize) -> Result<Native, OpError> {
        let input = ctx.inputs().get("model").ok_or_else(|| {
            OperatorError::param(
                op,
                "backend",
                "is native, which needs the `model` input (a model directory) connected",
            )
        })?;
        let dir = ModelDir::open(&input.path, Needs::Tokenizer)?;
        let device = expflow_models::default_device()?;
        let vision = expflow_vlm::is_qwen2_5_vl(&dir);
        let engine = if vision {
            Engine::Vision(Box::new(VisionLanguageModel::load(&dir, &device)?))
        } else {
            Engine::Text(Box::new(Generator::load(&dir, &device)?))
        };
        ctx.log(&format!(
            "native backend: {} model {} (weights {}), device {:?}",
            if vision { "vision-language" } else { "text" },
            input.digest.to_hex(),
            dir.weight_digest()?,
            device
        ));
        let special = expflow_models::special::special_texts(match &engine {
            Engine::Text(g) => g.tokenizer(),
            Engine::Vision(v) => v.tokenizer(),
        });
        Ok(Native {
            op,
            engine,
            special,
            model: input.digest.to_hex(),
            batch_size: batch_size.max(1),
            digests: Digests::default(),
        })
    }

    fn gen_request(&self, req: &ChatReq, name: &str) -> Result<(GenRequest, Value), OpError> {
        let (mut images, mut videos) = (Vec::new(), Vec::new());
        let (mut image_digests, mut video_digests) = (Vec::new(), Vec::new());
        for p in req.messages.iter().flat_map(|m| &m.content) {
            match p {
                ContentPart::Image { path } => {
                    image_digests.push(self.digests.of(self.op, path)?);
                    images.push(path.clone());
                }
                ContentPart::Video { path } => {
                    video_digests.push(self.digests.of(self.op, path)?);
                    videos.push(path.clone());
                }
                ContentPart::Text { .. } => {}
            }
        }
        let prompt = match &self.engine {
            Engine::Text(g) => {
                if !images.is_empty() || !videos.is_empty() {
                    return Err(format!(
                        "{}: {name}: the model is a text model and the prompt has {} image(s) and \
                         {} video(s); use a vision-language model (Qwen2.5-VL) or drop the media columns",
                        self.op,
                        images.len(),
                        videos.len()
                    )
                    .into());
                }
                g.render_chat(&req.messages, true)?
            }
            Engine::Vision(v) => v.render_chat(&req.messages)?.prompt,
        };
        let mut memo = json!({
            "backend": "native",
            "model": self.model,
            "prompt": prompt,
            "images": image_digests,
            "sampling": req.sampling,
        });
        // Only with videos, so that the memo keys of earlier requests stay the same.
        if !video_digests.is_empty() {
            memo["videos"] = json!(video_digests);
        }
        Ok((
            GenRequest {
                prompt,
                images,
                videos,
                sampling: req.sampling.clone(),
            },
            memo,
        ))
    }
}

/// OpenAI's `logprobs.content` entries for generated tokens.
pub fn openai_logprobs(lps: &[TokenLogprob]) -> Value {
    Value::Array(
        lps.iter()
            .map(|t| {
                json!({
                    "token": t.token,
                    "logprob": t.logprob,
                    "bytes": t.token.as_bytes(),
                    "top_logprobs": t.top.iter().map(|(tok, lp)| json!({
                        "token": tok, "logprob": lp, "bytes": tok.as_bytes()
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// A [`Reply`] from a native generation.
pub fn reply_of(g: &Generation) -> Reply {
    Reply {
        choices: g
            .completions
            .iter()
            .map(|c| Choice {
                text: c.text.clone(),
                finish_reason: match c.finish_reason {
                    expflow_models::FinishReason::Stop => "stop".into(),
                    expflow_models::FinishReason::Length => "length".into(),
                },
                logprobs: c.logprobs.as_deref().map(openai_logprobs),
            })
            .collect(),
        prompt_tokens: g.prompt_tokens as u64,
        completion_tokens: g.completions.iter().map(|c| c.token_ids.len() as u64).sum(),
    }
}

fn decode(bytes: &[u8]) -> Result<Reply, OpError> {
    Reply::from_json(&serde_json::from_slice(bytes)?)
}

impl Backend for Native {
    fn chat(
        &self,
        ctx: &Context,
        reqs: &[ChatReq],
        names: &[String],
    ) -> Result<Vec<Reply>, OpError> {
        let built: Vec<(GenRequest, Value)> = reqs
            .iter()
            .zip(names)
            .map(|(r, n)| self.gen_request(r, n))
            .collect::<Result<_, _>>()?;
        let mut out: Vec<Option<Reply>> = vec![None; reqs.len()];
        let mut todo = Vec::new();
        for (i, (_, memo)) in built.iter().enumerate() {
            match ctx.memo(memo, || Err(Box::new(Miss) as OpError)) {
                Ok(bytes) => out[i] = Some(decode(&bytes)?),
                Err(e) if e.is::<Miss>() => todo.push(i),
                Err(e) => return Err(e),
            }
        }
        let total = reqs.len() as u64;
        let mut done = total - todo.len() as u64;
        let started = std::time::Instant::now();
        let mut tokens = 0u64;
        ctx.progress_of(done, total, "prompts", "");
        for chunk in todo.chunks(self.batch_size) {
            ctx.check_cancelled()?;
            let batch: Vec<GenRequest> = chunk.iter().map(|&i| built[i].0.clone()).collect();
            let gens = match &self.engine {
                Engine::Text(g) => g.generate(&batch).map_err(|e| e.to_string()),
                Engine::Vision(v) => v.generate(&batch).map_err(|e| e.to_string()),
            }
            .map_err(|e| {
                let first = &names[chunk[0]];
                format!(
                    "{}: generating {first} and {} more: {e}",
                    self.op,
                    chunk.len() - 1
                )
            })?;
            for (&i, g) in chunk.iter().zip(&gens) {
                let reply = reply_of(g);
                tokens += reply.completion_tokens;
                let bytes = serde_json::to_vec(&reply.to_json())?;
                ctx.memo(&built[i].1, || Ok(bytes))?;
                out[i] = Some(reply);
            }
            done += chunk.len() as u64;
            let secs = started.elapsed().as_secs_f64();
            let rate = if secs > 0.0 {
                format!("{:.1} tok/s", tokens as f64 / secs)
            } else {
                String::new()
            };
            ctx.progress_of(done, total, "prompts", &rate);
        }
        // The memo holds the replies as generated; what a request does not keep is left out
        // here, as a server decoding with `skip_special_tokens` would.
        out.into_iter()
            .zip(names)
            .zip(reqs)
            .map(|((r, n), req)| {
                let mut r = r.ok_or_else(|| OpError::from(format!("{n} was not answered")))?;
                if !req.keep_special {
                    for c in &mut r.choices {
                        c.text = expflow_models::special::strip_special(&c.text, &self.special);
                    }
                }
                Ok(r)
            })
            .collect()
    }

    fn choice_probabilities(
        &self,
        _ctx: &Context,
        messages: &[ChatMessage],
        partial: &str,
        candidates: &[&str],
    ) -> Result<Option<Vec<f64>>, OpError> {
        let lps = match &self.engine {
            Engine::Text(g) => {
                let prompt = g.render_chat(messages, true)? + partial;
                g.next_token_logprobs(&prompt, candidates)?
            }
            Engine::Vision(v) => {
                let mut req = v.render_chat(messages)?;
                req.prompt.push_str(partial);
                v.next_token_logprobs(&req, candidates)?
            }
        };
        let max = lps.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f64> = lps.iter().map(|l| f64::from(l - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        Ok(Some(exps.into_iter().map(|e| e / sum).collect()))
    }
}
