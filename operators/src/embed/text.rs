//! `embed.text`: one vector per row of a text column, from a BERT-family encoder.
//!
//! Each distinct text is memoised under (text, model digest, pooling, normalize, max_len),
//! so an edit re-embeds only the changed texts. Each text is run on its own: in a batch,
//! padding (although masked) and the batch size itself change the last bits of a vector on
//! CPU, and a memoised vector must not depend on which other texts were missing in the run
//! that computed it.

use expflow_encoders::{EncoderDefaults, Pooling, TextEncoder};
use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use expflow_models::{Needs, default_device};
use serde_json::{Map, Value, json};

use super::common::{
    check_new_column, chunks, distinct, log_device, memo_vectors, open_model, text_column,
    with_vectors,
};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};
use crate::table_io::{read_table, write_table};

pub struct EmbedText;

const KIND: &str = "embed.text";

/// The pooling names `pooling` accepts.
pub const POOLINGS: [&str; 4] = ["mean", "cls", "last_token", "max"];

struct Config {
    column: String,
    output: String,
    pooling: Option<Pooling>,
    normalize: Option<bool>,
    max_len: Option<usize>,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let pooling = match p.opt_str("pooling")? {
            None => None,
            Some(_) => {
                Some(Pooling::parse(p.choice("pooling", &POOLINGS)?).expect("a known pooling"))
            }
        };
        let normalize = match p.get("normalize") {
            None => None,
            Some(_) => Some(p.bool("normalize")?),
        };
        let max_len = p.opt_u64("max_len")?.map(|n| n as usize);
        if max_len == Some(0) {
            return Err(OperatorError::param(KIND, "max_len", "must be at least 1"));
        }
        Ok(Config {
            column: p.str("column")?.to_string(),
            output: p.str("output")?.to_string(),
            pooling,
            normalize,
            max_len,
        })
    }
}

impl Operator for EmbedText {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        let s = |name, kind, default: Value, doc| ParamSpec::with_default(name, kind, default, doc);
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new("rows", PortType::Table, "the table with the text column"),
                Port::new(
                    "model",
                    PortType::Model,
                    "a BERT-family encoder directory (config.json, safetensors, tokenizer.json)",
                ),
            ]),
            outputs: Ports::Fixed(vec![Port::new(
                "table",
                PortType::Table,
                "the input table with the embedding column (list<f32>) added",
            )]),
            params: vec![
                ParamSpec::required("column", ParamKind::String, "the text column to embed"),
                s(
                    "output",
                    ParamKind::String,
                    json!("embedding"),
                    "name of the new list<f32> column",
                ),
                s(
                    "pooling",
                    ParamKind::String,
                    Value::Null,
                    "mean, cls, last_token or max; default from the model's sentence-transformers files (else mean)",
                ),
                s(
                    "normalize",
                    ParamKind::Bool,
                    Value::Null,
                    "L2-normalise; default from the model's sentence-transformers files (else false)",
                ),
                s(
                    "max_len",
                    ParamKind::Int,
                    Value::Null,
                    "maximum tokens per text, special tokens included; default from the model",
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
        let df = read_table(&ctx.input("rows")?.path)?;
        let texts = text_column(&df, KIND, "column", &cfg.column)?;
        check_new_column(&df, KIND, &cfg.output)?;
        let model = open_model(ctx, KIND, Needs::Tokenizer)?;
        let (pooling, normalize, max_len) = match (cfg.pooling, cfg.normalize, cfg.max_len) {
            (Some(p), Some(n), Some(m)) => (p, n, m),
            (p, n, m) => {
                let d = EncoderDefaults::read(&model.dir)?;
                (
                    p.unwrap_or(d.pooling),
                    n.unwrap_or(d.normalize),
                    m.unwrap_or(d.max_len),
                )
            }
        };
        ctx.log(&format!(
            "{} rows from `{}`: pooling {pooling:?}, normalize {normalize}, max_len {max_len}",
            texts.len(),
            cfg.column
        ));
        let (unique, index) = distinct(&texts);
        let items: Vec<Value> = unique
            .iter()
            .map(|t| {
                json!({
                    "text": t,
                    "model": model.digest,
                    "pooling": pooling,
                    "normalize": normalize,
                    "max_len": max_len,
                })
            })
            .collect();
        let mut encoder: Option<TextEncoder> = None;
        let plan = |missing| Ok(chunks(missing, 1));
        let vectors = memo_vectors(ctx, &items, plan, |chunk| {
            if encoder.is_none() {
                let device = default_device()?;
                log_device(ctx, &device);
                encoder = Some(TextEncoder::load(
                    &model.dir, &device, pooling, normalize, max_len,
                )?);
            }
            let enc = encoder.as_ref().expect("loaded above");
            let batch: Vec<String> = chunk.iter().map(|&i| unique[i].clone()).collect();
            Ok(enc.embed(&batch)?)
        })?;
        let per_row: Vec<Vec<f32>> = index.iter().map(|&i| vectors[i].clone()).collect();
        let mut out = with_vectors(df, KIND, &cfg.output, &per_row)?;
        write_table(&mut out, &ctx.output("table")?.path)?;
        Ok(())
    }
}
