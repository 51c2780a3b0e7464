//! CLIP image and text towers on candle-transformers' `clip` modules.
//!
//! candle's `ClipConfig` has no serde, so `config.json` is mapped by hand
//! ([`clip_config`]); sizes must be present, and the values candle hard-codes
//! (`quick_gelu`, layer-norm eps 1e-5) are checked rather than assumed.
//!
//! Text pooling follows transformers: with `text_config.eos_token_id == 2` (configs saved
//! before transformers#24773, the OpenAI checkpoints) the state at the highest token id is
//! taken (the OpenAI EOT rule that candle's own text tower applies); otherwise the state at
//! the first `eos_token_id`. Padding is on the right, after EOS, so the causal mask keeps it
//! out of the pooled state.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::Linear;
use candle_transformers::models::clip::text_model::{
    Activation, ClipTextConfig, ClipTextTransformer,
};
use candle_transformers::models::clip::vision_model::{ClipVisionConfig, ClipVisionTransformer};
use expflow_models::ModelDir;
use serde_json::Value;
use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{EncoderError, Result};
use crate::pooling::l2_normalize;
use crate::preprocess::ImagePreprocess;
use crate::text::length_sorted_batches;

/// Texts or images per forward pass.
const BATCH: usize = 32;

/// Where the text tower's pooled state is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextPoolRule {
    /// At the highest token id (legacy configs with `eos_token_id == 2`).
    ArgmaxId,
    /// At the first occurrence of this token id.
    FirstEos(u32),
}

/// The parts of `config.json` the towers need.
#[derive(Clone, Debug)]
pub struct ClipSettings {
    pub text: ClipTextConfig,
    pub vision: ClipVisionConfig,
    pub projection_dim: usize,
    pub logit_scale_init_value: f32,
    pub pool_rule: TextPoolRule,
    /// The id right-padded batches are filled with.
    pub pad_token_id: u32,
}

/// A loaded CLIP model: both towers, both projections, the logit scale.
pub struct ClipModel {
    text: ClipTextTransformer,
    vision: ClipVisionTransformer,
    text_projection: Linear,
    visual_projection: Linear,
    logit_scale: Tensor,
    tokenizer: Option<Tokenizer>,
    preprocess: ImagePreprocess,
    settings: ClipSettings,
    normalize: bool,
    device: Device,
    root: PathBuf,
}

fn field<'a>(path: &Path, section: &str, obj: &'a Value, key: &str) -> Result<&'a Value> {
    obj.get(key).ok_or_else(|| {
        EncoderError::config(
            path,
            format!("`{section}.{key}` is missing; CLIP needs it (save the model with transformers' save_pretrained)"),
        )
    })
}

fn usize_field(path: &Path, section: &str, obj: &Value, key: &str) -> Result<usize> {
    field(path, section, obj, key)?
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| {
            EncoderError::config(
                path,
                format!("`{section}.{key}` must be a non-negative integer"),
            )
        })
}

fn check_hard_coded(path: &Path, section: &str, obj: &Value) -> Result<()> {
    if let Some(act) = obj.get("hidden_act").and_then(Value::as_str)
        && act != "quick_gelu"
    {
        return Err(EncoderError::config(
            path,
            format!("`{section}.hidden_act` is `{act}`; candle's CLIP supports `quick_gelu` only"),
        ));
    }
    if let Some(eps) = obj.get("layer_norm_eps").and_then(Value::as_f64)
        && (eps - 1e-5).abs() > 1e-12
    {
        return Err(EncoderError::config(
            path,
            format!("`{section}.layer_norm_eps` is {eps}; candle's CLIP uses 1e-5"),
        ));
    }
    Ok(())
}

/// `text_config` / `vision_config` (or the older `*_dict` spelling) of `config.json`.
fn section<'a>(dir: &'a ModelDir, path: &Path, key: &str) -> Result<&'a Value> {
    dir.config
        .get(key)
        .or_else(|| dir.config.get(format!("{key}_dict").as_str()))
        .filter(|v| v.is_object())
        .ok_or_else(|| {
            EncoderError::config(
                path,
                format!("`{key}` is missing; is this a CLIPModel directory?"),
            )
        })
}

/// Maps `config.json` of a `CLIPModel` directory to candle's configs.
pub fn clip_config(dir: &ModelDir) -> Result<ClipSettings> {
    let path = dir.root.join("config.json");
    let t = section(dir, &path, "text_config")?;
    let v = section(dir, &path, "vision_config")?;
    check_hard_coded(&path, "text_config", t)?;
    check_hard_coded(&path, "vision_config", v)?;
    let projection_dim = match dir.config.get("projection_dim") {
        Some(p) => p
            .as_u64()
            .ok_or_else(|| EncoderError::config(&path, "`projection_dim` must be an integer"))?
            as usize,
        None => 512,
    };
    let text = ClipTextConfig {
        vocab_size: usize_field(&path, "text_config", t, "vocab_size")?,
        embed_dim: usize_field(&path, "text_config", t, "hidden_size")?,
        activation: Activation::QuickGelu,
        intermediate_size: usize_field(&path, "text_config", t, "intermediate_size")?,
        max_position_embeddings: usize_field(&path, "text_config", t, "max_position_embeddings")?,
        pad_with: None,
        num_hidden_layers: usize_field(&path, "text_config", t, "num_hidden_layers")?,
        num_attention_heads: usize_field(&path, "text_config", t, "num_attention_heads")?,
        projection_dim,
    };
    let vision = ClipVisionConfig {
        embed_dim: usize_field(&path, "vision_config", v, "hidden_size")?,
        activation: Activation::QuickGelu,
        intermediate_size: usize_field(&path, "vision_config", v, "intermediate_size")?,
        num_hidden_layers: usize_field(&path, "vision_config", v, "num_hidden_layers")?,
        num_attention_heads: usize_field(&path, "vision_config", v, "num_attention_heads")?,
        projection_dim,
        num_channels: v.get("num_channels").and_then(Value::as_u64).unwrap_or(3) as usize,
        image_size: usize_field(&path, "vision_config", v, "image_size")?,
        patch_size: usize_field(&path, "vision_config", v, "patch_size")?,
    };
    if vision.num_channels != 3 {
        return Err(EncoderError::config(
            &path,
            "`vision_config.num_channels` must be 3 (RGB)",
        ));
    }
    // transformers' default when the config does not say.
    let eos = t
        .get("eos_token_id")
        .and_then(Value::as_u64)
        .unwrap_or(49407) as u32;
    let pool_rule = if eos == 2 {
        TextPoolRule::ArgmaxId
    } else {
        TextPoolRule::FirstEos(eos)
    };
    let pad_token_id = t
        .get("pad_token_id")
        .and_then(Value::as_u64)
        .map_or(eos, |p| p as u32);
    Ok(ClipSettings {
        text,
        vision,
        projection_dim,
        logit_scale_init_value: dir
            .config
            .get("logit_scale_init_value")
            .and_then(Value::as_f64)
            .unwrap_or(2.6592) as f32,
        pool_rule,
        pad_token_id,
    })
}

impl ClipModel {
    /// Loads a `CLIPModel` directory. `tokenizer.json` is needed only by the text methods;
    /// `normalize` L2-normalises every returned embedding.
    pub fn load(dir: &ModelDir, device: &Device, normalize: bool) -> Result<ClipModel> {
        let s = clip_config(dir)?;
        let (th, vh, p) = (s.text.embed_dim, s.vision.embed_dim, s.projection_dim);
        let positions = (s.vision.image_size / s.vision.patch_size).pow(2) + 1;
        for (name, shape) in [
            (
                "text_model.embeddings.token_embedding.weight",
                vec![s.text.vocab_size, th],
            ),
            (
                "text_model.embeddings.position_embedding.weight",
                vec![s.text.max_position_embeddings, th],
            ),
            ("vision_model.embeddings.class_embedding", vec![vh]),
            (
                "vision_model.embeddings.position_embedding.weight",
                vec![positions, vh],
            ),
            ("text_projection.weight", vec![p, th]),
            ("visual_projection.weight", vec![p, vh]),
        ] {
            dir.expect_tensor(name, &shape)?;
        }
        let vb = dir.var_builder(DType::F32, device)?;
        let text = ClipTextTransformer::new(vb.pp("text_model"), &s.text)?;
        let vision = ClipVisionTransformer::new(vb.pp("vision_model"), &s.vision)?;
        let text_projection = candle_nn::linear_no_bias(th, p, vb.pp("text_projection"))?;
        let visual_projection = candle_nn::linear_no_bias(vh, p, vb.pp("visual_projection"))?;
        let logit_scale = if vb.contains_tensor("logit_scale") {
            vb.get((), "logit_scale")?
        } else {
            Tensor::new(s.logit_scale_init_value, device)?
        };
        let tokenizer = match &dir.tokenizer_path {
            Some(_) => {
                let mut t = dir.tokenizer()?;
                t.with_padding(None);
                t.with_truncation(Some(TruncationParams {
                    max_length: s.text.max_position_embeddings,
                    ..Default::default()
                }))
                .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
                Some(t)
            }
            None => None,
        };
        let preprocess = ImagePreprocess::from_dir(dir, s.vision.image_size)?;
        tracing::debug!(dir = %dir.root.display(), dim = p, rule = ?s.pool_rule, "CLIP loaded");
        Ok(ClipModel {
            text,
            vision,
            text_projection,
            visual_projection,
            logit_scale,
            tokenizer,
            preprocess,
            settings: s,
            normalize,
            device: device.clone(),
            root: dir.root.clone(),
        })
    }

    /// The size of the projected embeddings.
    pub fn dim(&self) -> usize {
        self.settings.projection_dim
    }

    pub fn settings(&self) -> &ClipSettings {
        &self.settings
    }

    pub fn preprocess(&self) -> &ImagePreprocess {
        &self.preprocess
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Projected image features (`[n, dim]`, not normalised) of a `[n, 3, h, w]` batch.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        Ok(pixel_values
            .apply(&self.vision)?
            .apply(&self.visual_projection)?)
    }

    /// One embedding per preprocessed image (see [`ImagePreprocess::pixel_values`]).
    pub fn embed_pixels(&self, pixels: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(pixels.len());
        let mut rest = pixels.into_iter().peekable();
        while rest.peek().is_some() {
            let chunk: Vec<Vec<f32>> = rest.by_ref().take(BATCH).collect();
            let batch = self.preprocess.batch(chunk, &self.device)?;
            out.extend(self.finish(self.image_features(&batch)?)?);
        }
        Ok(out)
    }

    /// One embedding per image file, in the order given; errors name the file.
    pub fn embed_images(&self, paths: &[PathBuf]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(BATCH) {
            let pixels = chunk
                .iter()
                .map(|p| self.preprocess.load(p))
                .collect::<Result<Vec<_>>>()?;
            out.extend(self.embed_pixels(pixels)?);
        }
        Ok(out)
    }

    /// Token ids of each text, truncated to `max_position_embeddings` with EOS kept.
    pub fn tokenize(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        let tok = self.tokenizer.as_ref().ok_or_else(|| {
            EncoderError::config(
                self.root.join("tokenizer.json"),
                "missing: the CLIP text tower needs the tokenizer (save it with the processor's save_pretrained)",
            )
        })?;
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let enc = tok
            .encode_batch(inputs, true)
            .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
        Ok(enc.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Projected text features (`[n, dim]`, not normalised) of token-id rows.
    pub fn text_features(&self, ids: &[&[u32]]) -> Result<Tensor> {
        let t = ids.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let mut flat = Vec::with_capacity(ids.len() * t);
        let mut positions = Vec::with_capacity(ids.len());
        for row in ids {
            positions.push(self.pool_position(row)?);
            flat.extend_from_slice(row);
            flat.extend(std::iter::repeat_n(
                self.settings.pad_token_id,
                t - row.len(),
            ));
        }
        let input = Tensor::from_vec(flat, (ids.len(), t), &self.device)?;
        let hidden = self.text.forward_with_mask(&input, usize::MAX)?;
        let rows = positions
            .iter()
            .enumerate()
            .map(|(i, &p)| hidden.i((i, p)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&rows, 0)?.apply(&self.text_projection)?)
    }

    fn pool_position(&self, row: &[u32]) -> Result<usize> {
        match self.settings.pool_rule {
            TextPoolRule::ArgmaxId => {
                let max = row.iter().copied().max().unwrap_or(0);
                Ok(row.iter().position(|&id| id == max).unwrap_or(0))
            }
            TextPoolRule::FirstEos(eos) => row.iter().position(|&id| id == eos).ok_or_else(|| {
                EncoderError::config(
                    self.root.join("tokenizer.json"),
                    format!(
                        "the tokenizer did not append the end-of-text token (id {eos}, \
                         text_config.eos_token_id); its post_processor must add it"
                    ),
                )
            }),
        }
    }

    /// One embedding per text, in the order given.
    pub fn embed_texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let ids = self.tokenize(texts)?;
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in length_sorted_batches(&ids, BATCH) {
            let rows: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            let emb = self.finish(self.text_features(&rows)?)?;
            for (e, &i) in emb.into_iter().zip(&chunk) {
                out[i] = e;
            }
        }
        Ok(out)
    }

    /// `exp(logit_scale) · cos(image, text)` for every image (rows) and text (columns), as
    /// transformers' `logits_per_image`.
    pub fn logits_per_image(&self, images: &[PathBuf], texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let pixels = images
            .iter()
            .map(|p| self.preprocess.load(p))
            .collect::<Result<Vec<_>>>()?;
        let img =
            l2_normalize(&self.image_features(&self.preprocess.batch(pixels, &self.device)?)?)?;
        let ids = self.tokenize(texts)?;
        let rows: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        let txt = l2_normalize(&self.text_features(&rows)?)?;
        let scale = self.logit_scale.exp()?.to_dtype(DType::F32)?;
        let logits = img.matmul(&txt.t()?)?.broadcast_mul(&scale)?;
        Ok(logits.to_vec2::<f32>()?)
    }

    fn finish(&self, features: Tensor) -> Result<Vec<Vec<f32>>> {
        let f = if self.normalize {
            l2_normalize(&features)?
        } else {
            features.to_dtype(DType::F32)?
        };
        Ok(f.to_vec2::<f32>()?)
    }
}
