//! The configs of a Qwen2.5-VL directory. Both layouts are read: the hub's (text fields at the
//! top level, `rope_scaling.mrope_section`) and transformers 5's (`text_config`,
//! `rope_parameters.mrope_section`).

use expflow_models::{ModelDir, Qwen2Config};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Result, VlmError};

/// The language model's fields.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "d_theta")]
    pub rope_theta: f64,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    /// Rotary frequency pairs given to the temporal, height and width positions.
    #[serde(skip)]
    pub mrope_section: Vec<usize>,
}

fn d_eps() -> f64 {
    1e-6
}
fn d_theta() -> f64 {
    1_000_000.0
}
fn d_max_pos() -> usize {
    128_000
}
fn d_act() -> String {
    "silu".into()
}

impl TextConfig {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The same decoder as `expflow_models`' Qwen2 config (its rotary tables are replaced
    /// by M-RoPE's at run time).
    pub fn qwen2(&self) -> Qwen2Config {
        Qwen2Config {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            hidden_act: self.hidden_act.clone(),
        }
    }
}

/// The vision tower's fields (`vision_config`), with transformers' defaults.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "d_depth")]
    pub depth: usize,
    #[serde(default = "d_vhidden")]
    pub hidden_size: usize,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_vinter")]
    pub intermediate_size: usize,
    #[serde(default = "d_vheads")]
    pub num_heads: usize,
    /// `in_channels`, or the older `in_chans` when only that is written (transformers
    /// writes both in some versions; they must agree).
    #[serde(default = "d_three")]
    pub in_channels: usize,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    #[serde(default = "d_two")]
    pub spatial_merge_size: usize,
    #[serde(default = "d_two")]
    pub temporal_patch_size: usize,
    #[serde(default = "d_tps")]
    pub tokens_per_second: f64,
    #[serde(default = "d_window")]
    pub window_size: usize,
    #[serde(default = "d_vhidden")]
    pub out_hidden_size: usize,
    #[serde(default = "d_fullatt")]
    pub fullatt_block_indexes: Vec<usize>,
    /// `rope_parameters.rope_theta` (10000 when absent).
    #[serde(skip)]
    pub rope_theta: f64,
}

fn d_depth() -> usize {
    32
}
fn d_vhidden() -> usize {
    3584
}
fn d_vinter() -> usize {
    3420
}
fn d_vheads() -> usize {
    16
}
fn d_three() -> usize {
    3
}
fn d_patch() -> usize {
    14
}
fn d_two() -> usize {
    2
}
fn d_tps() -> f64 {
    4.0
}
fn d_window() -> usize {
    112
}
fn d_fullatt() -> Vec<usize> {
    vec![7, 15, 23, 31]
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Patches per merged token (`spatial_merge_size²`).
    pub fn merge_unit(&self) -> usize {
        self.spatial_merge_size * self.spatial_merge_size
    }
}

/// The whole model's config.
#[derive(Clone, Debug, PartialEq)]
pub struct VlmConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
}

impl VlmConfig {
    /// Reads and checks the config of `dir`.
    pub fn from_dir(dir: &ModelDir) -> Result<VlmConfig> {
        VlmConfig::from_value(&dir.config, &dir.root.join("config.json"))
    }

    /// Reads and checks a parsed `config.json` (`path` names it in errors).
    pub fn from_value(top: &Value, path: &std::path::Path) -> Result<VlmConfig> {
        let bad = |problem: String| VlmError::Config {
            path: path.to_path_buf(),
            problem,
        };
        let sub = |key: &str| top.get(key).filter(|v| v.is_object());
        let text_value = sub("text_config").unwrap_or(top);
        let mut text: TextConfig = serde_json::from_value(text_value.clone())
            .map_err(|e| bad(format!("text config: {e}")))?;
        if text_value.get("tie_word_embeddings").is_none() {
            text.tie_word_embeddings = top
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false);
        }
        text.mrope_section = find_mrope_section(text_value)
            .or_else(|| find_mrope_section(top))
            .ok_or_else(|| {
                bad(
                    "no `mrope_section` in `rope_parameters` or `rope_scaling`; \
                     a Qwen2.5-VL config has one (e.g. [16, 24, 24])"
                        .into(),
                )
            })?;
        let vision_value = sub("vision_config")
            .ok_or_else(|| bad("no `vision_config`; this is not a Qwen2.5-VL checkpoint".into()))?;
        let mut vision: VisionConfig = serde_json::from_value(vision_value.clone())
            .map_err(|e| bad(format!("vision_config: {e}")))?;
        let channels = |key: &str| vision_value.get(key).and_then(Value::as_u64);
        match (channels("in_channels"), channels("in_chans")) {
            (Some(a), Some(b)) if a != b => {
                return Err(bad(format!(
                    "vision_config: `in_channels` ({a}) and `in_chans` ({b}) disagree; keep one"
                )));
            }
            (None, Some(b)) => vision.in_channels = b as usize,
            _ => {}
        }
        vision.rope_theta = vision_value
            .get("rope_parameters")
            .and_then(|r| r.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(10000.0);
        let token = |key: &str, default: u32| -> u32 {
            top.get(key)
                .and_then(Value::as_u64)
                .map(|v| v as u32)
                .unwrap_or(default)
        };
        let cfg = VlmConfig {
            image_token_id: token("image_token_id", 151655),
            video_token_id: token("video_token_id", 151656),
            vision_start_token_id: token("vision_start_token_id", 151652),
            vision_end_token_id: token("vision_end_token_id", 151653),
            text,
            vision,
        };
        cfg.check().map_err(bad)?;
        Ok(cfg)
    }

    fn check(&self) -> std::result::Result<(), String> {
        let (t, v) = (&self.text, &self.vision);
        if t.hidden_act != "silu" || v.hidden_act != "silu" {
            return Err(format!(
                "hidden_act `{}` (text) / `{}` (vision): only `silu` is implemented",
                t.hidden_act, v.hidden_act
            ));
        }
        if t.num_attention_heads == 0 || t.hidden_size % t.num_attention_heads != 0 {
            return Err(format!(
                "text hidden_size {} is not a multiple of num_attention_heads {}",
                t.hidden_size, t.num_attention_heads
            ));
        }
        if t.kv_heads() == 0 || t.num_attention_heads % t.kv_heads() != 0 {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                t.num_attention_heads,
                t.kv_heads()
            ));
        }
        let sum: usize = t.mrope_section.iter().sum();
        if sum * 2 != t.head_dim() {
            return Err(format!(
                "mrope_section {:?} sums to {sum}; it must be half the head dimension {}",
                t.mrope_section,
                t.head_dim()
            ));
        }
        if v.num_heads == 0 || v.hidden_size % v.num_heads != 0 || v.head_dim() % 4 != 0 {
            return Err(format!(
                "vision hidden_size {} must split into {} heads of a size divisible by 4",
                v.hidden_size, v.num_heads
            ));
        }
        if v.out_hidden_size != t.hidden_size {
            return Err(format!(
                "vision_config.out_hidden_size {} differs from the text hidden_size {}",
                v.out_hidden_size, t.hidden_size
            ));
        }
        let unit = v.spatial_merge_size * v.patch_size;
        if v.spatial_merge_size == 0 || v.window_size < unit || v.window_size % unit != 0 {
            return Err(format!(
                "vision window_size {} must be a positive multiple of spatial_merge_size × patch_size = {unit}",
                v.window_size
            ));
        }
        if let Some(&i) = v.fullatt_block_indexes.iter().find(|&&i| i >= v.depth) {
            return Err(format!(
                "vision fullatt_block_indexes has {i}, but depth is {}",
                v.depth
            ));
        }
        Ok(())
    }
}

fn find_mrope_section(v: &Value) -> Option<Vec<usize>> {
    ["rope_parameters", "rope_scaling"].iter().find_map(|k| {
        let s = v.get(*k)?.get("mrope_section")?.as_array()?;
        s.iter()
            .map(|x| x.as_u64().map(|n| n as usize))
            .collect::<Option<Vec<_>>>()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny checkpoint's config with `vision_config` edited by `edit`.
    fn parsed(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Result<VlmConfig> {
        let dir = tempfile::tempdir().unwrap();
        crate::tiny::write_tiny_vlm(dir.path(), &Default::default(), &["a b".into()]).unwrap();
        let path = dir.path().join("config.json");
        let mut top: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(top["vision_config"].as_object_mut().unwrap());
        VlmConfig::from_value(&top, &path)
    }

    #[test]
    fn in_channels_is_read_under_either_name_and_both_must_agree() {
        let only_old = parsed(|v| {
            v.remove("in_channels");
            v.insert("in_chans".into(), 1.into());
        })
        .unwrap();
        assert_eq!(only_old.vision.in_channels, 1);
        let both = parsed(|v| {
            v.insert("in_channels".into(), 1.into());
            v.insert("in_chans".into(), 1.into());
        })
        .unwrap();
        assert_eq!(both.vision.in_channels, 1);
        let err = parsed(|v| {
            v.insert("in_channels".into(), 3.into());
            v.insert("in_chans".into(), 1.into());
        })
        .unwrap_err();
        assert!(err.to_string().contains("disagree"), "{err}");
    }
}
