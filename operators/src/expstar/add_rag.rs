//! `expstar.add_rag`: fills retrieved passages into the self-RAG rows (spec §C.5, DAG node
//! 20).
//!
//! The retrieval file is a JSON list of `{"video_path", "is_rag", "documents": [{"text",
//! "relevant"}]}`, looked up by the exact `videos[0]` string. A row without an entry, with
//! `is_rag` false or with no documents is kept unchanged. Otherwise each relevant document
//! (`relevant >= threshold`) and then each irrelevant one gives a copy of the row with
//! `<paragraph>passage</paragraph>` → `<paragraph>{text}</paragraph>` and `[Is Relevant?]` →
//! `[Relevant]` / `[Irrelevant]`; the original row is dropped. With `less`, one irrelevant
//! document is kept, chosen by a seeded rank (BLAKE3 of seed, row id and document index)
//! instead of the original's unseeded `random.choice`.

use std::collections::HashMap;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use serde_json::{Map, Value, json};

use super::prompts::{IRRELEVANT, IS_RELEVANT, PARAGRAPH_PLACEHOLDER, RELEVANT};
use super::{first_video, read_json, read_rows, str_field, write_rows};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct AddRag;

const KIND: &str = "expstar.add_rag";

pub struct Config {
    pub threshold: f64,
    pub less: bool,
    pub seed: u64,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        Ok(Config {
            threshold: p.f64("threshold")?,
            less: p.bool("less")?,
            seed: p.u64("seed")?,
        })
    }
}

fn fill(row: &Value, text: &str, verdict: &str) -> Value {
    let mut row = row.clone();
    if let Some(msgs) = row.get_mut("messages").and_then(Value::as_array_mut) {
        for m in msgs {
            let Some(content) = m.get("content").and_then(Value::as_str) else {
                continue;
            };
            let new = if content == PARAGRAPH_PLACEHOLDER {
                format!("<paragraph>{text}</paragraph>")
            } else if content.contains(IS_RELEVANT) {
                content.replace(IS_RELEVANT, verdict)
            } else {
                continue;
            };
            m["content"] = json!(new);
        }
    }
    row
}

fn pick(seed: u64, id: &str, n: usize) -> usize {
    (0..n)
        .min_by_key(|i| {
            let mut h = blake3::Hasher::new();
            h.update(&seed.to_le_bytes());
            h.update(id.as_bytes());
            h.update(&(*i as u64).to_le_bytes());
            *h.finalize().as_bytes()
        })
        .unwrap_or(0)
}

/// The expanded rows.
pub fn expand(rows: &[Value], retrieval: &Value, cfg: &Config) -> Result<Vec<Value>> {
    let list = retrieval
        .as_array()
        .ok_or_else(|| OperatorError::data(KIND, "the retrieval file must be a JSON list"))?;
    let by_video: HashMap<&str, &Value> = list
        .iter()
        .filter_map(|e| Some((e.get("video_path")?.as_str()?, e)))
        .collect();
    let mut out = Vec::new();
    for row in rows {
        let entry = first_video(row).and_then(|v| by_video.get(v));
        let docs = entry
            .filter(|e| e.get("is_rag").and_then(Value::as_bool).unwrap_or(false))
            .and_then(|e| e.get("documents"))
            .and_then(Value::as_array)
            .filter(|d| !d.is_empty());
        let Some(docs) = docs else {
            out.push(row.clone());
            continue;
        };
        let score = |d: &Value| d.get("relevant").and_then(Value::as_f64).unwrap_or(0.0);
        let relevant: Vec<&Value> = docs.iter().filter(|d| score(d) >= cfg.threshold).collect();
        let mut irrelevant: Vec<&Value> =
            docs.iter().filter(|d| score(d) < cfg.threshold).collect();
        if cfg.less && !irrelevant.is_empty() {
            let i = pick(cfg.seed, str_field(row, "id"), irrelevant.len());
            irrelevant = vec![irrelevant[i]];
        }
        for d in relevant {
            out.push(fill(row, str_field(d, "text"), RELEVANT));
        }
        for d in irrelevant {
            out.push(fill(row, str_field(d, "text"), IRRELEVANT));
        }
    }
    Ok(out)
}

impl Operator for AddRag {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        // 2: rows travel as Parquet tables, not JSON Lines (docs/decisions.md).
        2
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new(
                    "rows",
                    PortType::Table,
                    "self-RAG template rows (train), a rows table",
                ),
                Port::new(
                    "retrieval",
                    PortType::File,
                    "judged retrieval results, JSON",
                ),
            ]),
            outputs: Ports::Fixed(vec![Port::new(
                "rows",
                PortType::Table,
                "expanded rows, a rows table",
            )]),
            params: vec![
                ParamSpec::with_default(
                    "threshold",
                    ParamKind::Float,
                    json!(3),
                    "a document is relevant when `relevant` >= this",
                ),
                ParamSpec::with_default(
                    "less",
                    ParamKind::Bool,
                    json!(false),
                    "keep one irrelevant document per row",
                ),
                ParamSpec::with_default(
                    "seed",
                    ParamKind::Int,
                    json!(0),
                    "selects the irrelevant document under `less`",
                ),
            ],
            determinism: Determinism::Seeded,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let rows = read_rows(&ctx.input("rows")?.path)?;
        let retrieval = read_json(&ctx.input("retrieval")?.path)?;
        let out = expand(&rows, &retrieval, &cfg)?;
        ctx.log(&format!("{} rows in, {} rows out", rows.len(), out.len()));
        write_rows(&ctx.output("rows")?.path, &out)?;
        Ok(())
    }
}
