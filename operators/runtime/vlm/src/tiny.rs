//! Tiny random-weight Qwen2.5-VL directories, for the CPU pipelines and tests: the text side
//! of `expflow_models::tiny` (byte-level BPE tokenizer trained on a corpus, seeded weights)
//! plus the vision special tokens, a small vision tower, the Qwen2-VL chat template and an
//! image processor that keeps images small. The same spec and corpus give the same bytes.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use expflow_models::tiny::{SPECIAL_TOKENS, write_json, write_tokenizer, write_weights};
use expflow_models::{Qwen2, TinySpec};
use serde_json::json;

use crate::config::VlmConfig;
use crate::error::{Result, VlmError};
use crate::vision::VisionTower;

/// The Qwen2-VL chat template (images as `<|vision_start|><|image_pad|><|vision_end|>`).
pub const QWEN2_VL_TEMPLATE: &str = include_str!("chat_template.jinja");

/// The vision tokens, after the text model's special tokens.
pub const VISION_TOKENS: [&str; 4] = [
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
];

/// The shape of a tiny vision-language model.
#[derive(Clone, Debug, PartialEq)]
pub struct TinyVlmSpec {
    /// The language model (its head dimension must be a multiple of 8 for M-RoPE).
    pub text: TinySpec,
    pub vision_hidden: usize,
    pub vision_depth: usize,
    pub vision_heads: usize,
    pub vision_intermediate: usize,
    /// Largest image area in pixels the processor resizes to (a multiple of 28² gives
    /// `max_pixels / 784` image tokens at most).
    pub max_pixels: usize,
}

impl Default for TinyVlmSpec {
    /// The default text model, a 2-block vision tower of width 32, images of at most 16
    /// tokens (112 × 112 pixels).
    fn default() -> Self {
        TinyVlmSpec {
            text: TinySpec::default(),
            vision_hidden: 32,
            vision_depth: 2,
            vision_heads: 2,
            vision_intermediate: 48,
            max_pixels: 112 * 112,
        }
    }
}

/// Writes a Qwen2.5-VL directory into `dir`: `config.json`, `generation_config.json`,
/// `preprocessor_config.json`, `tokenizer.json`, `tokenizer_config.json` (with the chat
/// template) and `model.safetensors`.
pub fn write_tiny_vlm(dir: &Path, spec: &TinyVlmSpec, corpus: &[String]) -> Result<()> {
    let t = &spec.text;
    let specials: Vec<&str> = SPECIAL_TOKENS
        .iter()
        .chain(&VISION_TOKENS)
        .copied()
        .collect();
    let bad = |m: String| VlmError::Request(format!("TinyVlmSpec: {m}"));
    if t.vocab < 256 + specials.len() {
        return Err(bad(format!(
            "vocab {} is below {} (256 byte symbols and {} special tokens)",
            t.vocab,
            256 + specials.len(),
            specials.len()
        )));
    }
    if t.heads == 0
        || t.kv_heads == 0
        || !t.hidden.is_multiple_of(t.heads)
        || !t.heads.is_multiple_of(t.kv_heads)
    {
        return Err(bad(format!(
            "hidden {} must split into {} heads, and heads into {} key/value heads",
            t.hidden, t.heads, t.kv_heads
        )));
    }
    let head_dim = t.hidden / t.heads;
    if !head_dim.is_multiple_of(8) {
        return Err(bad(format!(
            "the text head dimension {head_dim} must be a multiple of 8 (M-RoPE splits it in \
             temporal, height and width sections)"
        )));
    }
    if spec.max_pixels < 56 * 56 {
        return Err(bad(format!(
            "max_pixels {} is below 3136 (56 × 56)",
            spec.max_pixels
        )));
    }
    let half = head_dim / 2;
    let section = [
        half / 4,
        (half - half / 4) / 2,
        half - half / 4 - (half - half / 4) / 2,
    ];
    let id = |tok: &str| specials.iter().position(|s| *s == tok).unwrap_or(0) as u32;
    let (eot, im_end) = (id("<|endoftext|>"), id("<|im_end|>"));
    std::fs::create_dir_all(dir).map_err(|e| expflow_models::ModelError::io("create", dir, e))?;
    write_tokenizer(dir, t.vocab, corpus, &specials)?;
    let config = json!({
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "vocab_size": t.vocab,
        "hidden_size": t.hidden,
        "intermediate_size": t.intermediate,
        "num_hidden_layers": t.layers,
        "num_attention_heads": t.heads,
        "num_key_value_heads": t.kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": section},
        "tie_word_embeddings": false,
        "bos_token_id": eot,
        "eos_token_id": im_end,
        "image_token_id": id("<|image_pad|>"),
        "video_token_id": id("<|video_pad|>"),
        "vision_start_token_id": id("<|vision_start|>"),
        "vision_end_token_id": id("<|vision_end|>"),
        "torch_dtype": "float32",
        "vision_config": {
            "depth": spec.vision_depth,
            "hidden_size": spec.vision_hidden,
            "intermediate_size": spec.vision_intermediate,
            "num_heads": spec.vision_heads,
            "out_hidden_size": t.hidden,
            "in_chans": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [spec.vision_depth.saturating_sub(1)],
            "tokens_per_second": 2,
            "hidden_act": "silu",
        },
    });
    let config_path = dir.join("config.json");
    let parsed = VlmConfig::from_value(&config, &config_path)?;
    write_json(dir, "config.json", &config)?;
    write_json(
        dir,
        "generation_config.json",
        &json!({"bos_token_id": eot, "eos_token_id": [im_end, eot], "pad_token_id": eot, "do_sample": false}),
    )?;
    write_json(
        dir,
        "preprocessor_config.json",
        &json!({
            "image_processor_type": "Qwen2VLImageProcessor",
            "do_convert_rgb": true, "do_normalize": true, "do_rescale": true, "do_resize": true,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "merge_size": 2, "patch_size": 14, "temporal_patch_size": 2, "resample": 3,
            "rescale_factor": 0.00392156862745098,
            "size": {"shortest_edge": 3136, "longest_edge": spec.max_pixels},
        }),
    )?;
    write_json(
        dir,
        "tokenizer_config.json",
        &json!({
            "tokenizer_class": "Qwen2Tokenizer",
            "bos_token": null,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "model_max_length": 1024,
            "additional_special_tokens": specials[1..].to_vec(),
            "chat_template": QWEN2_VL_TEMPLATE,
        }),
    )?;
    let names = tensor_names(&parsed)?;
    write_weights(&dir.join("model.safetensors"), &names, t.seed)?;
    Ok(())
}

/// Every tensor a model of `config` loads, with its shape, in name order: found by loading
/// the model from an empty variable map, so the list cannot drift from the loaders.
fn tensor_names(config: &VlmConfig) -> Result<Vec<(String, Vec<usize>)>> {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
    VisionTower::load(&config.vision, vb.pp("visual"))?;
    Qwen2::from_parts(config.text.qwen2(), vb.pp("model"), vb.clone())?;
    let data = map
        .data()
        .lock()
        .map_err(|_| VlmError::Request("the variable map's lock is poisoned".into()))?;
    let mut names: Vec<(String, Vec<usize>)> = data
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    names.sort();
    Ok(names)
}
