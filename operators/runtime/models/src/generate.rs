//! Text generation with the Qwen2 decoder: static batches (left padding and a key mask), a KV
//! cache per call (so one [`Generator`] can serve several threads), greedy or seeded
//! sampling, stop strings, log-probabilities, and scoring of given continuations.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use tokenizers::Tokenizer;

use crate::api::{ChatMessage, GenRequest, Generation};
use crate::chat::ChatTemplate;
use crate::decoding::Row;
use crate::dir::ModelDir;
use crate::error::{ModelError, Result};
use crate::qwen2::{KvCache, Qwen2};
use crate::sampling::log_softmax;

/// A loaded causal language model with its tokenizer and chat template.
#[derive(Debug)]
pub struct Generator {
    model: Qwen2,
    tokenizer: Tokenizer,
    chat: ChatTemplate,
    eos: Vec<u32>,
    pad: u32,
    device: Device,
    /// Most sequences run together in one batch (default 16).
    pub max_batch: usize,
}

impl Generator {
    /// Loads a Qwen2-family directory (f32 on CPU, bf16 on a GPU).
    pub fn load(dir: &ModelDir, device: &Device) -> Result<Generator> {
        let dtype = if device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        };
        Generator::load_with_dtype(dir, device, dtype)
    }

    pub fn load_with_dtype(dir: &ModelDir, device: &Device, dtype: DType) -> Result<Generator> {
        let arch = dir.architecture().unwrap_or("");
        let mt = dir.model_type().unwrap_or("");
        if !(arch == "Qwen2ForCausalLM" || mt == "qwen2") {
            return Err(ModelError::Config {
                path: dir.root.join("config.json"),
                problem: format!(
                    "architecture `{arch}` / model_type `{mt}` is not a Qwen2 causal LM \
                     (Qwen2ForCausalLM, model_type qwen2), the only generator implemented"
                ),
            });
        }
        let started = Instant::now();
        let model = Qwen2::load(dir, dtype, device)?;
        let tokenizer = dir.tokenizer()?;
        let chat = ChatTemplate::from_dir(dir)?;
        let eos = eos_ids(dir, &tokenizer);
        if eos.is_empty() {
            tracing::warn!(dir = %dir.root.display(), "no eos_token_id found; generation stops only at max_new_tokens or stop strings");
        }
        let pad = dir
            .generation_value("pad_token_id")
            .and_then(|v| v.as_u64())
            .map(|v| v as u32)
            .or_else(|| eos.first().copied())
            .unwrap_or(0);
        tracing::info!(dir = %dir.root.display(), layers = model.config.num_hidden_layers,
            hidden = model.config.hidden_size, ?eos, secs = started.elapsed().as_secs_f64(), "generator loaded");
        Ok(Generator {
            model,
            tokenizer,
            chat,
            eos,
            pad,
            device: device.clone(),
            max_batch: 16,
        })
    }

    pub fn model(&self) -> &Qwen2 {
        &self.model
    }

    /// For attaching adapters before generating.
    pub fn model_mut(&mut self) -> &mut Qwen2 {
        &mut self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The id right-padded and left-padded positions carry.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The token ids that end a completion.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// The prompt for `messages` under the model's chat template (ChatML without one).
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.chat.render(messages, add_generation_prompt)
    }

    /// Token ids of `text`, without adding special tokens (a rendered chat prompt already
    /// has them); special tokens written in the text are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(format!("cannot encode {:?}: {e}", short(text))))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens kept (so markers like `[Retrieval]` stay visible).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| ModelError::Tokenizer(format!("cannot decode {ids:?}: {e}")))
    }

    /// Completes every request: `n` completions each, in request order.
    ///
    /// A completion ends at an end-of-sequence token (not included in its ids or text), at a
    /// stop string (the text is cut before it; `token_ids` keeps every sampled token), or
    /// after `max_new_tokens` (or the model's `max_position_embeddings`).
    pub fn generate(&self, requests: &[GenRequest]) -> Result<Vec<Generation>> {
        let started = Instant::now();
        let mut prompts = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            if !r.images.is_empty() || !r.videos.is_empty() {
                return Err(ModelError::Request(format!(
                    "request {i} has {} images and {} videos, but this Qwen2 model is text-only",
                    r.images.len(),
                    r.videos.len()
                )));
            }
            if r.sampling.n == 0 {
                return Err(ModelError::Request(format!(
                    "request {i}: sampling.n must be at least 1"
                )));
            }
            let ids = self.encode(&r.prompt)?;
            if ids.is_empty() {
                return Err(ModelError::Request(format!(
                    "request {i} has an empty prompt"
                )));
            }
            if ids.len() >= self.model.config.max_position_embeddings {
                return Err(ModelError::Request(format!(
                    "request {i}: the prompt has {} tokens; the model's max_position_embeddings is {}",
                    ids.len(),
                    self.model.config.max_position_embeddings
                )));
            }
            prompts.push(ids);
        }
        let mut rows = Vec::new();
        let mut row_prompts = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            for k in 0..r.sampling.n {
                rows.push(Row::new(prompts[i].len(), &r.sampling, k));
                row_prompts.push(prompts[i].as_slice());
            }
        }
        let max_batch = self.max_batch.max(1);
        for (chunk, ps) in rows
            .chunks_mut(max_batch)
            .zip(row_prompts.chunks(max_batch))
        {
            crate::kernels::in_pool(|| self.run_batch(chunk, ps))?;
        }
        let new_tokens: usize = rows.iter().map(|r| r.ids.len()).sum();
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            requests = requests.len(),
            sequences = rows.len(),
            new_tokens,
            secs,
            tokens_per_s = new_tokens as f64 / secs.max(1e-9),
            "generated"
        );

        let mut rows = rows.into_iter();
        let mut out = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            let mut completions = Vec::with_capacity(r.sampling.n);
            for row in rows.by_ref().take(r.sampling.n) {
                completions.push(row.into_completion(&self.tokenizer)?);
            }
            out.push(Generation {
                prompt_tokens: prompts[i].len(),
                completions,
            });
        }
        Ok(out)
    }

    fn run_batch(&self, rows: &mut [Row], prompts: &[&[u32]]) -> Result<()> {
        let b = rows.len();
        let len = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        let max_pos = self.model.config.max_position_embeddings;
        let most_new = rows
            .iter()
            .map(|r| r.sampling.max_new_tokens)
            .max()
            .unwrap_or(0);
        let capacity = (len + most_new).min(max_pos);
        // Each prompt is prefilled alone, so no padding position goes through the matrix
        // products (with prompts of 23 to 62 tokens, a third of a padded batch's rows); the
        // caches are then stacked left-padded for the batched decode steps.
        let mut caches = Vec::with_capacity(b);
        let mut last = Vec::with_capacity(b);
        for p in prompts {
            let n = p.len();
            let ids = Tensor::from_slice(p, (1, n), &self.device)?;
            let pos = Tensor::from_vec((0..n as u32).collect::<Vec<_>>(), (1, n), &self.device)?;
            let keys = Tensor::ones((1, n), DType::U8, &self.device)?;
            let mut cache = self
                .model
                .new_cache_with_capacity(if b == 1 { capacity } else { n });
            let hidden = self
                .model
                .forward_hidden(&ids, &pos, &keys, Some(&mut cache))?;
            last.push(hidden.narrow(1, n - 1, 1)?.squeeze(1)?);
            caches.push(cache);
        }
        let mut cache = match caches.pop() {
            Some(c) if b == 1 => c,
            Some(c) => {
                caches.push(c);
                KvCache::stack_left_padded(&caches, capacity)?
            }
            None => return Ok(()),
        };
        drop(caches);
        // Key mask, one row per sequence: 0 for left padding, 1 for real positions.
        let mut mask: Vec<Vec<u8>> = prompts
            .iter()
            .map(|p| {
                let mut m = Vec::with_capacity(capacity.max(len) + 1);
                m.extend(std::iter::repeat_n(0u8, len - p.len()));
                m.extend(std::iter::repeat_n(1u8, p.len()));
                m
            })
            .collect();
        let mut hidden = Tensor::cat(&last, 0)?;
        let mut step = 0usize;
        loop {
            let logits = self
                .model
                .logits(&hidden)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?;
            for (r, lg) in rows.iter_mut().zip(&logits) {
                if r.finish.is_none() {
                    r.advance(lg, &self.eos, &self.tokenizer, max_pos)?;
                }
            }
            if rows.iter().all(|r| r.finish.is_some()) {
                return Ok(());
            }
            step += 1;
            let next: Vec<u32> = rows.iter().map(|r| r.next_input(self.pad)).collect();
            let next_pos: Vec<u32> = rows
                .iter()
                .map(|r| (r.prompt_len + step - 1) as u32)
                .collect();
            // The new column of the mask: one more real key for every row.
            for m in &mut mask {
                m.push(1);
            }
            let mask_t = Tensor::from_vec(mask.concat(), (b, len + step), &self.device)?;
            let ids_t = Tensor::from_vec(next, (b, 1), &self.device)?;
            let pos_t = Tensor::from_vec(next_pos, (b, 1), &self.device)?;
            hidden = self
                .model
                .forward_hidden(&ids_t, &pos_t, &mask_t, Some(&mut cache))?
                .squeeze(1)?;
        }
    }

    /// For each continuation, the log-probability of each of its tokens given the prompt and
    /// the continuation's earlier tokens. Prompt and continuation are tokenised separately
    /// and joined (as TRL does for DPO).
    pub fn continuation_logprobs<S: AsRef<str>>(
        &self,
        prompt: &str,
        continuations: &[S],
    ) -> Result<Vec<Vec<f32>>> {
        let p = self.encode(prompt)?;
        if p.is_empty() {
            return Err(ModelError::Request(
                "continuation_logprobs: the prompt is empty; the first continuation token needs a prompt token to be predicted from".into(),
            ));
        }
        let conts: Vec<Vec<u32>> = continuations
            .iter()
            .map(|c| self.encode(c.as_ref()))
            .collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(conts.len());
        for chunk in conts.chunks(self.max_batch.max(1)) {
            let seqs: Vec<Vec<u32>> = chunk.iter().map(|c| [p.as_slice(), c].concat()).collect();
            let nc = chunk.iter().map(Vec::len).max().unwrap_or(0);
            if nc == 0 {
                out.extend(chunk.iter().map(|_| Vec::new()));
                continue;
            }
            let (ids, pos, mask, len) = self.left_pad(&seqs)?;
            let hidden = self.model.forward_hidden(&ids, &pos, &mask, None)?;
            // Position len-1-k predicts the token at len-k: the last nc predictors.
            let h = hidden.narrow(1, len - 1 - nc, nc)?;
            let logits = self
                .model
                .logits(&h)?
                .to_dtype(DType::F32)?
                .to_vec3::<f32>()?;
            for (c, lg) in chunk.iter().zip(&logits) {
                let first = nc - c.len();
                let lps = c
                    .iter()
                    .enumerate()
                    .map(|(t, &tok)| log_softmax(&lg[first + t])[tok as usize])
                    .collect();
                out.push(lps);
            }
        }
        Ok(out)
    }

    /// The log-probability that the token after `prompt` is the first token of each
    /// candidate (e.g. `" A"`, `"[Retrieval]"`).
    pub fn next_token_logprobs<S: AsRef<str>>(
        &self,
        prompt: &str,
        candidates: &[S],
    ) -> Result<Vec<f32>> {
        let p = self.encode(prompt)?;
        if p.is_empty() {
            return Err(ModelError::Request(
                "next_token_logprobs: the prompt is empty".into(),
            ));
        }
        let (ids, pos, mask, len) = self.left_pad(&[p])?;
        let hidden = self.model.forward_hidden(&ids, &pos, &mask, None)?;
        let last = hidden.narrow(1, len - 1, 1)?.squeeze(1)?;
        let logits = self
            .model
            .logits(&last)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        let lp = log_softmax(&logits[0]);
        candidates
            .iter()
            .map(|c| {
                let ids = self.encode(c.as_ref())?;
                let first = ids.first().ok_or_else(|| {
                    ModelError::Request(format!(
                        "next_token_logprobs: candidate {:?} has no tokens",
                        c.as_ref()
                    ))
                })?;
                Ok(lp[*first as usize])
            })
            .collect()
    }

    /// `(ids, positions, key_mask, length)` of left-padded sequences.
    fn left_pad(&self, seqs: &[Vec<u32>]) -> Result<(Tensor, Tensor, Tensor, usize)> {
        let b = seqs.len();
        let len = seqs.iter().map(Vec::len).max().unwrap_or(0);
        if len > self.model.config.max_position_embeddings {
            return Err(ModelError::Request(format!(
                "a sequence of {len} tokens exceeds the model's max_position_embeddings {}",
                self.model.config.max_position_embeddings
            )));
        }
        let (mut ids, mut pos, mut mask) = (Vec::new(), Vec::new(), Vec::new());
        for s in seqs {
            let pad = len - s.len();
            ids.extend(std::iter::repeat_n(self.pad, pad).chain(s.iter().copied()));
            pos.extend(std::iter::repeat_n(0u32, pad).chain(0..s.len() as u32));
            mask.extend(std::iter::repeat_n(0u8, pad).chain(std::iter::repeat_n(1u8, s.len())));
        }
        Ok((
            Tensor::from_vec(ids, (b, len), &self.device)?,
            Tensor::from_vec(pos, (b, len), &self.device)?,
            Tensor::from_vec(mask, (b, len), &self.device)?,
            len,
        ))
    }
}

/// End-of-sequence ids: `eos_token_id` of generation_config.json and config.json (a number
/// or a list), and the id of tokenizer_config.json's `eos_token`.
fn eos_ids(dir: &ModelDir, tok: &Tokenizer) -> Vec<u32> {
    let mut out = Vec::new();
    let mut add = |v: Option<&serde_json::Value>| match v {
        Some(serde_json::Value::Number(n)) => out.extend(n.as_u64().map(|x| x as u32)),
        Some(serde_json::Value::Array(a)) => {
            out.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32))
        }
        _ => {}
    };
    add(dir.generation_value("eos_token_id"));
    add(dir.config.get("eos_token_id"));
    let tc = dir
        .tokenizer_config
        .as_ref()
        .and_then(|c| c.get("eos_token"));
    let name = match tc {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        None => None,
    };
    if let Some(id) = name.and_then(|n| tok.token_to_id(&n)) {
        out.push(id);
    }
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|x| seen.insert(*x));
    out
}

fn short(s: &str) -> String {
    s.chars().take(60).collect()
}
