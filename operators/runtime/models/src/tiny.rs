//! Tiny random-weight Qwen2 directories for tests, benches and training smoke runs: a
//! byte-level BPE tokenizer trained on a given corpus, a ChatML template, and seeded weights.
//! The same spec and corpus always give the same bytes.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;

use serde_json::json;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerImpl,
};

use crate::chat::CHATML_TEMPLATE;
use crate::error::{ModelError, Result};
use crate::qwen2::Qwen2Config;
use crate::sampling::Rng;

/// Special tokens of tiny tokenizers, in id order from 0.
pub const SPECIAL_TOKENS: [&str; 9] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "[Retrieval]",
    "[No Retrieval]",
    "[Relevant]",
    "[Irrelevant]",
    "<paragraph>",
    "</paragraph>",
];

/// The shape of a tiny model. `vocab` is the model's vocabulary size and the tokenizer's
/// training target (special tokens and the 256 byte symbols included).
#[derive(Clone, Debug, PartialEq)]
pub struct TinySpec {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub seed: u64,
}

impl Default for TinySpec {
    /// About 100k parameters: vocab 384, hidden 64, 2 layers, 4 heads, 2 key/value heads.
    fn default() -> Self {
        TinySpec {
            vocab: 384,
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 128,
            seed: 0,
        }
    }
}

/// Writes `tokenizer.json`, `tokenizer_config.json`, `config.json`,
/// `generation_config.json` and `model.safetensors` into `dir` (created if absent).
pub fn write_tiny_qwen2(dir: &Path, spec: &TinySpec, corpus: &[String]) -> Result<()> {
    let min_vocab = 256 + SPECIAL_TOKENS.len();
    if spec.vocab < min_vocab {
        return Err(ModelError::Request(format!(
            "TinySpec.vocab {} is below {min_vocab} (256 byte symbols and {} special tokens)",
            spec.vocab,
            SPECIAL_TOKENS.len()
        )));
    }
    if spec.heads == 0
        || spec.kv_heads == 0
        || !spec.hidden.is_multiple_of(spec.heads)
        || !spec.heads.is_multiple_of(spec.kv_heads)
        || !(spec.hidden / spec.heads).is_multiple_of(2)
    {
        return Err(ModelError::Request(format!(
            "TinySpec: hidden {} must split into {} heads of even size, and heads into {} key/value heads",
            spec.hidden, spec.heads, spec.kv_heads
        )));
    }
    fs::create_dir_all(dir).map_err(|e| ModelError::io("create", dir, e))?;
    write_tokenizer(dir, spec.vocab, corpus, &SPECIAL_TOKENS)?;
    let id = |i: usize| i as u32;
    let (eot, im_end) = (id(0), id(2));
    let config = json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": spec.vocab,
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "bos_token_id": eot,
        "eos_token_id": im_end,
        "torch_dtype": "float32",
    });
    write_json(dir, "config.json", &config)?;
    let gen_config = json!({"bos_token_id": eot, "eos_token_id": [im_end, eot], "pad_token_id": eot, "do_sample": false});
    write_json(dir, "generation_config.json", &gen_config)?;
    let tok_config = json!({
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": null,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 512,
        "additional_special_tokens": SPECIAL_TOKENS[1..].to_vec(),
        "chat_template": CHATML_TEMPLATE,
    });
    write_json(dir, "tokenizer_config.json", &tok_config)?;
    let cfg: Qwen2Config = serde_json::from_value(config)
        .map_err(|e| ModelError::Request(format!("tiny config: {e}")))?;
    write_weights(
        &dir.join("model.safetensors"),
        &cfg.expected_tensors(),
        spec.seed,
    )
}

/// Writes `v` pretty-printed to `dir/name`.
pub fn write_json(dir: &Path, name: &str, v: &serde_json::Value) -> Result<()> {
    let path = dir.join(name);
    let text =
        serde_json::to_string_pretty(v).map_err(|e| ModelError::bad(&path, e.to_string()))?;
    fs::write(&path, text + "\n").map_err(|e| ModelError::io("write", &path, e))
}

type Trainable = TokenizerImpl<
    ModelWrapper,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

/// Trains a byte-level BPE tokenizer of `vocab` entries on `corpus`, `specials` first (ids
/// from 0), and writes `dir/tokenizer.json`.
pub fn write_tokenizer(
    dir: &Path,
    vocab: usize,
    corpus: &[String],
    specials: &[&str],
) -> Result<()> {
    let terr =
        |e: tokenizers::Error| ModelError::Tokenizer(format!("training the tiny tokenizer: {e}"));
    let specials: Vec<AddedToken> = specials
        .iter()
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let mut trainer = TrainerWrapper::BpeTrainer(
        BpeTrainerBuilder::new()
            .vocab_size(vocab)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(alphabet)
            .build(),
    );
    let byte_level = ByteLevel::new(false, false, true);
    let mut tok: Trainable = TokenizerImpl::new(ModelWrapper::BPE(BPE::default()));
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(byte_level)));
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)));
    tok.with_post_processor(Some(PostProcessorWrapper::ByteLevel(byte_level)));
    tok.train(&mut trainer, corpus.iter()).map_err(terr)?;
    let path = dir.join("tokenizer.json");
    tok.save(&path, false).map_err(terr)?;
    Ok(())
}

/// Seeded weights for `names` (tensor name and shape), uniform in `±1/sqrt(fan_in)`
/// (embeddings `±1`; norm weights 1: names ending `norm.weight`, and 1-D `norm`/`ln_`
/// weights), in a safetensors file written byte for byte the same for the same list and seed.
pub fn write_weights(path: &Path, names: &[(String, Vec<usize>)], seed: u64) -> Result<()> {
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for (k, (name, shape)) in names.iter().cloned().enumerate() {
        let n: usize = shape.iter().product();
        let mut rng = Rng::for_sample(seed, k as u64);
        let norm = name.ends_with("norm.weight")
            || (shape.len() == 1
                && name.ends_with(".weight")
                && (name.contains("norm") || name.contains("ln_")));
        let values: Vec<f32> = if norm {
            vec![1.0; n]
        } else {
            let bound = if name.contains("embed_tokens") {
                1.0
            } else {
                1.0 / (*shape.last().unwrap_or(&1) as f64).sqrt()
            };
            (0..n)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                .collect()
        };
        tensors.insert(name, (shape, values));
    }
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, (shape, values)) in &tensors {
        let end = offset + values.len() * 4;
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| ModelError::bad(path, e.to_string()))?;
    while (h.len() + 8) % 8 != 0 {
        h.push(b' ');
    }
    let mut bytes = Vec::with_capacity(8 + h.len() + offset);
    bytes.extend_from_slice(&(h.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&h);
    for (_, values) in tensors.values() {
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    fs::write(path, bytes).map_err(|e| ModelError::io("write", path, e))
}
