//! `score.bertscore`: BERTScore precision, recall and F1 of each hypothesis against its
//! reference, per row and as means (see `expflow_encoders::bertscore` for the definition).
//!
//! The metrics JSON holds `n` and the means `bertscore_p`, `bertscore_r`, `bertscore_f`
//! (computed in f64 over the per-row f32 values; `null` when a mean is NaN, which idf
//! weighting over identical references can cause), plus the settings used.

use expflow_encoders::{Baseline, BertScorer};
use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use expflow_models::{Needs, default_device};
use polars::prelude::*;
use serde_json::{Map, Value, json};

use super::common::{log_device, open_model, text_column};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};
use crate::table_io::{read_table, write_table};

pub struct ScoreBertScore;

const KIND: &str = "score.bertscore";

struct Config {
    hyp: String,
    refs: String,
    layer: Option<usize>,
    idf: bool,
    baseline: Option<Baseline>,
    max_len: Option<usize>,
}

fn baseline(p: &Params<'_>) -> Result<Option<Baseline>> {
    let Some(v) = p.get("baseline") else {
        return Ok(None);
    };
    let bad = || {
        OperatorError::param(
            KIND,
            "baseline",
            format!("must be a map of numbers {{p, r, f}} (bert-score's baseline row), got {v}"),
        )
    };
    let m = v.as_object().ok_or_else(bad)?;
    if m.len() != 3 {
        return Err(bad());
    }
    let num = |k: &str| m.get(k).and_then(Value::as_f64).ok_or_else(bad);
    Ok(Some(Baseline {
        p: num("p")? as f32,
        r: num("r")? as f32,
        f: num("f")? as f32,
    }))
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let max_len = p.opt_u64("max_len")?.map(|n| n as usize);
        if max_len == Some(0) {
            return Err(OperatorError::param(KIND, "max_len", "must be at least 1"));
        }
        Ok(Config {
            hyp: p.str("hyp")?.to_string(),
            refs: p.str("refs")?.to_string(),
            layer: p.opt_u64("layer")?.map(|n| n as usize),
            idf: p.bool("idf")?,
            baseline: baseline(&p)?,
            max_len,
        })
    }
}

/// The mean of `xs` in f64, or `null` when it is NaN or there are none.
fn mean(xs: &[f32]) -> Value {
    if xs.is_empty() {
        return Value::Null;
    }
    let m = xs.iter().map(|&x| f64::from(x)).sum::<f64>() / xs.len() as f64;
    if m.is_finite() { json!(m) } else { Value::Null }
}

impl Operator for ScoreBertScore {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        // 2: RoBERTa and DeBERTa models; bert-score's batch padding (batches of 64).
        2
    }

    fn signature(&self) -> Signature {
        let s = |name, kind, default: Value, doc| ParamSpec::with_default(name, kind, default, doc);
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new("table", PortType::Table, "hypotheses and references"),
                Port::new(
                    "model",
                    PortType::Model,
                    "a BERT model directory (config.json, safetensors, tokenizer.json)",
                ),
            ]),
            outputs: Ports::Fixed(vec![
                Port::new(
                    "scores",
                    PortType::Table,
                    "per-row `row`, `p`, `r`, `f` (f32)",
                ),
                Port::new(
                    "metrics",
                    PortType::Metrics,
                    "n and mean P/R/F as bertscore_p, bertscore_r, bertscore_f (JSON)",
                ),
            ]),
            params: vec![
                s(
                    "hyp",
                    ParamKind::String,
                    json!("hyp"),
                    "hypothesis (candidate) text column",
                ),
                s(
                    "refs",
                    ParamKind::String,
                    json!("refs"),
                    "reference text column, one reference per row",
                ),
                s(
                    "layer",
                    ParamKind::Int,
                    Value::Null,
                    "use the states after this many layers (bert-score's num_layers); default all",
                ),
                s(
                    "idf",
                    ParamKind::Bool,
                    json!(false),
                    "weight tokens by their idf over the references",
                ),
                s(
                    "baseline",
                    ParamKind::Map,
                    Value::Null,
                    "rescale with bert-score's baseline row {p, r, f}: (x - b) / (1 - b)",
                ),
                s(
                    "max_len",
                    ParamKind::Int,
                    Value::Null,
                    "maximum tokens per text; default the tokenizer's model_max_length",
                ),
            ],
            determinism: Determinism::Deterministic,
            resources: Resources {
                cpus: 2,
                gpus: 0,
                mem_gb: 2.0,
            },
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> std::result::Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let df = read_table(&ctx.input("table")?.path)?;
        let hyps = text_column(&df, KIND, "hyp", &cfg.hyp)?;
        let refs = text_column(&df, KIND, "refs", &cfg.refs)?;
        let model = open_model(ctx, KIND, Needs::Tokenizer)?;
        let layers = match cfg.layer {
            Some(l) => l,
            None => model
                .dir
                .config
                .get("num_hidden_layers")
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    OperatorError::data(
                        KIND,
                        "the model's config.json has no `num_hidden_layers`; set `layer`",
                    )
                })? as usize,
        };
        let device = default_device()?;
        log_device(ctx, &device);
        let scorer = BertScorer::load(&model.dir, &device, layers, cfg.max_len)?;
        ctx.log(&format!(
            "{} pairs: layer {layers}, idf {}, baseline {:?}",
            hyps.len(),
            cfg.idf,
            cfg.baseline
        ));
        let s = scorer.score(&hyps, &refs, cfg.idf, cfg.baseline)?;
        let n = hyps.len();
        let mut table = DataFrame::new(
            n,
            vec![
                Column::new("row".into(), (0..n as i64).collect::<Vec<_>>()),
                Column::new("p".into(), s.p.clone()),
                Column::new("r".into(), s.r.clone()),
                Column::new("f".into(), s.f.clone()),
            ],
        )
        .map_err(|e| OperatorError::polars(KIND, "building the scores table", e))?;
        write_table(&mut table, &ctx.output("scores")?.path)?;
        let metrics = json!({
            "n": n,
            "bertscore_p": mean(&s.p),
            "bertscore_r": mean(&s.r),
            "bertscore_f": mean(&s.f),
            "layer": layers,
            "idf": cfg.idf,
            "rescaled": cfg.baseline.is_some(),
        });
        let mut bytes = serde_json::to_vec_pretty(&metrics)?;
        bytes.push(b'\n');
        let path = &ctx.output("metrics")?.path;
        std::fs::write(path, bytes).map_err(|e| OperatorError::io("writing", path, e))?;
        Ok(())
    }
}
