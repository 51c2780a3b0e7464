//! `train.tiny_model`: a small Qwen2 made from scratch for CPU experiments: a byte-level BPE
//! tokenizer trained on the text of the input rows (with ChatML and self-RAG special tokens)
//! and seeded random weights of about `params` parameters; with `kind: vision_language`, a
//! Qwen2.5-VL around that language model (a small vision tower, the vision special tokens,
//! the Qwen2-VL chat template). Same rows and parameters, same bytes.

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use serde_json::{Value, json};

use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct TinyModel;

const KIND: &str = "train.tiny_model";

/// Every string in the rows' `columns` (all string fields when empty), message contents
/// included, in row order.
pub fn texts(rows: &[Value], columns: &[String]) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) if !s.is_empty() => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(o) => {
                // Message lists: only what was said.
                if let Some(c) = o.get("content") {
                    walk(c, out);
                } else {
                    o.values().for_each(|x| walk(x, out));
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for row in rows {
        match row.as_object() {
            Some(o) if !columns.is_empty() => {
                for c in columns {
                    if let Some(v) = o.get(c) {
                        walk(v, &mut out);
                    }
                }
            }
            _ => walk(row, &mut out),
        }
    }
    out
}

impl Operator for TinyModel {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new(
                "text",
                PortType::File,
                "rows whose text trains the tokenizer (JSON Lines, JSON or a table)",
            )]),
            outputs: Ports::Fixed(vec![Port::new(
                "model",
                PortType::Model,
                "the model directory",
            )]),
            params: vec![
                ParamSpec::with_default(
                    "params",
                    ParamKind::Int,
                    json!(1_000_000),
                    "about this many parameters",
                ),
                ParamSpec::with_default(
                    "vocab",
                    ParamKind::Int,
                    json!(1024),
                    "tokenizer vocabulary size (256 bytes and 9 special tokens included)",
                ),
                ParamSpec::with_default(
                    "columns",
                    ParamKind::List,
                    json!([]),
                    "row fields whose text is used; empty: every string",
                ),
                ParamSpec::with_default(
                    "max_positions",
                    ParamKind::Int,
                    json!(4096),
                    "max_position_embeddings of the config",
                ),
                ParamSpec::with_default("seed", ParamKind::Int, json!(0), "weight initialisation"),
                ParamSpec::with_default(
                    "kind",
                    ParamKind::String,
                    json!("text"),
                    "text (a Qwen2) or vision_language (a Qwen2.5-VL: this language model, a small vision tower and 4 vision special tokens)",
                ),
                ParamSpec::with_default(
                    "image_tokens",
                    ParamKind::Int,
                    json!(16),
                    "vision_language: at most this many tokens per image (images are resized to at most 784 pixels per token)",
                ),
            ],
            determinism: Determinism::Seeded,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &serde_json::Map<String, Value>) -> Vec<String> {
        let p = Params::new(KIND, params);
        problems(p.choice("kind", &["text", "vision_language"]).map(|_| ()))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let p = Params::new(KIND, ctx.params());
        let rows = crate::train_io::read_rows(KIND, &ctx.input("text")?.path)?;
        let corpus = texts(&rows, &p.opt_strings("columns")?.unwrap_or_default());
        if corpus.is_empty() {
            return Err(OperatorError::data(
                KIND,
                "input `text` has no text to train a tokenizer on (check `columns`)",
            )
            .into());
        }
        let vocab = p.u64("vocab")? as usize;
        let spec =
            expflow_train::sizes::spec_for_params(p.u64("params")? as usize, vocab, p.u64("seed")?);
        let out = &ctx.output("model")?.path;
        let vision = p.choice("kind", &["text", "vision_language"])? == "vision_language";
        if vision {
            let image_tokens = (p.u64("image_tokens")? as usize).max(4);
            let vspec = expflow_vlm::TinyVlmSpec {
                text: spec.clone(),
                max_pixels: image_tokens * 28 * 28,
                ..expflow_vlm::TinyVlmSpec::default()
            };
            expflow_vlm::write_tiny_vlm(out, &vspec, &corpus)?;
        } else {
            expflow_models::write_tiny_qwen2(out, &spec, &corpus)?;
        }
        // Positions: the tiny writer's default is short; rotary embeddings have no hard limit.
        let cfg_path = out.join("config.json");
        let mut cfg: Value = serde_json::from_slice(
            &std::fs::read(&cfg_path)
                .map_err(|e| OperatorError::io("cannot read", &cfg_path, e))?,
        )
        .map_err(|e| OperatorError::data(KIND, format!("{}: {e}", cfg_path.display())))?;
        cfg["max_position_embeddings"] = json!(p.u64("max_positions")?);
        let text =
            serde_json::to_string_pretty(&cfg).map_err(|e| OpError::from(e.to_string()))? + "\n";
        std::fs::write(&cfg_path, text)
            .map_err(|e| OperatorError::io("cannot write", &cfg_path, e))?;
        ctx.log(&format!(
            "tiny {}: {} parameters in the language model (hidden {}, {} layers, {} heads, {} kv heads, intermediate {}, vocab {}), tokenizer trained on {} texts",
            if vision { "Qwen2.5-VL" } else { "Qwen2" },
            expflow_train::sizes::qwen2_params(&spec),
            spec.hidden,
            spec.layers,
            spec.heads,
            spec.kv_heads,
            spec.intermediate,
            spec.vocab,
            corpus.len()
        ));
        Ok(())
    }
}
