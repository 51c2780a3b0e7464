//! Default pooling, normalisation and length of a text encoder, read from the
//! sentence-transformers files of a model directory when they are there.
//!
//! - `modules.json` lists the pipeline. A `…Pooling` module's `config.json` (usually
//!   `1_Pooling/config.json`) picks the pooling: `pooling_mode_mean_tokens` → mean,
//!   `pooling_mode_cls_token` → CLS, `pooling_mode_lasttoken` → last token,
//!   `pooling_mode_max_tokens` → max. A `…Normalize` module turns on L2 normalisation.
//!   Modules this crate does not run (`Dense`, `LayerNorm`, several pooling modes at once,
//!   `mean_sqrt_len`, `weightedmean`) are an error rather than silently different vectors.
//! - `sentence_bert_config.json`'s `max_seq_length` is the maximum length.
//! - Without `modules.json`: mean pooling, no normalisation (the Contriever convention), and
//!   the smaller of `tokenizer_config.json`'s `model_max_length` and the config's
//!   `max_position_embeddings`.

use std::fs;
use std::path::Path;

use expflow_models::{ModelDir, Pooling};
use serde_json::Value;

use crate::error::{EncoderError, Result};

/// What a text encoder uses when the caller does not say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncoderDefaults {
    pub pooling: Pooling,
    pub normalize: bool,
    pub max_len: usize,
}

impl EncoderDefaults {
    /// Reads the defaults of `dir` as described in the module documentation.
    pub fn read(dir: &ModelDir) -> Result<EncoderDefaults> {
        let max_pos = dir
            .config
            .get("max_position_embeddings")
            .and_then(Value::as_u64)
            .unwrap_or(512) as usize;
        let mut max_len = dir
            .tokenizer_config
            .as_ref()
            .and_then(|t| t.get("model_max_length"))
            .and_then(Value::as_u64)
            .map_or(max_pos, |m| (m as usize).min(max_pos));
        let st_config = dir.root.join("sentence_bert_config.json");
        if st_config.is_file() {
            let v = read_json(&st_config)?;
            if let Some(m) = v.get("max_seq_length").and_then(Value::as_u64) {
                max_len = (m as usize).min(max_pos);
            }
        }
        let modules_path = dir.root.join("modules.json");
        if !modules_path.is_file() {
            return Ok(EncoderDefaults {
                pooling: Pooling::Mean,
                normalize: false,
                max_len,
            });
        }
        let modules = read_json(&modules_path)?;
        let list = modules.as_array().ok_or_else(|| {
            EncoderError::config(&modules_path, "expected a JSON array of modules")
        })?;
        let mut pooling = None;
        let mut normalize = false;
        for m in list {
            let kind = m.get("type").and_then(Value::as_str).unwrap_or("");
            let short = kind.rsplit('.').next().unwrap_or(kind);
            match short {
                "Transformer" => {}
                "Normalize" => normalize = true,
                "Pooling" => {
                    let sub = m.get("path").and_then(Value::as_str).unwrap_or("");
                    pooling = Some(read_pooling(&dir.root.join(sub).join("config.json"))?);
                }
                _ => {
                    return Err(EncoderError::config(
                        &modules_path,
                        format!(
                            "module type `{kind}` is not supported by the native text encoder \
                             (it runs Transformer → Pooling → Normalize only)"
                        ),
                    ));
                }
            }
        }
        Ok(EncoderDefaults {
            pooling: pooling.unwrap_or(Pooling::Mean),
            normalize,
            max_len,
        })
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path)
        .map_err(|e| EncoderError::config(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text)
        .map_err(|e| EncoderError::config(path, format!("not valid JSON: {e}")))
}

fn read_pooling(path: &Path) -> Result<Pooling> {
    let v = read_json(path)?;
    let on = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    let mut modes = Vec::new();
    for (key, pooling) in [
        ("pooling_mode_cls_token", Some(Pooling::Cls)),
        ("pooling_mode_mean_tokens", Some(Pooling::Mean)),
        ("pooling_mode_max_tokens", Some(Pooling::Max)),
        ("pooling_mode_lasttoken", Some(Pooling::LastToken)),
        ("pooling_mode_mean_sqrt_len_tokens", None),
        ("pooling_mode_weightedmean_tokens", None),
    ] {
        if on(key) {
            modes.push((key, pooling));
        }
    }
    match modes.as_slice() {
        [(_, Some(p))] => Ok(*p),
        [(key, None)] => Err(EncoderError::config(
            path,
            format!("`{key}` is not supported; use mean, cls, max or lasttoken pooling"),
        )),
        [] => Err(EncoderError::config(path, "no `pooling_mode_*` is true")),
        _ => Err(EncoderError::config(
            path,
            format!(
                "several pooling modes are on ({}); concatenated poolings are not supported",
                modes.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}
