//! `retrieve.bm25_index`: a passage table (an id column and one or more text columns) → a
//! BM25 `index` (see `expflow_retrieval::bm25`). Text columns are joined with a space; a null
//! cell counts as empty text.

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use expflow_retrieval::{Bm25Params, Index};
use serde_json::{Map, Value, json};

use super::{id_column, lib_error, string_column, write_index};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};
use crate::table_io::read_table;

pub struct Bm25IndexOp;

const KIND: &str = "retrieve.bm25_index";

struct Config {
    id_column: String,
    text_columns: Vec<String>,
    params: Bm25Params,
    stopwords: Vec<String>,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let params = Bm25Params {
            k1: p.f64("k1")?,
            b: p.f64("b")?,
        };
        params
            .validate()
            .map_err(|e| OperatorError::data(KIND, e.to_string()))?;
        Ok(Config {
            id_column: p.str("id_column")?.to_string(),
            text_columns: p.strings("text_columns")?,
            params,
            stopwords: p.opt_strings("stopwords")?.unwrap_or_default(),
        })
    }
}

impl Operator for Bm25IndexOp {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new(
                "table",
                PortType::Table,
                "passages: an id column and text columns",
            )]),
            outputs: Ports::Fixed(vec![Port::new("index", PortType::Index, "the BM25 index")]),
            params: vec![
                ParamSpec::with_default(
                    "id_column",
                    ParamKind::String,
                    json!("id"),
                    "the passage id column",
                ),
                ParamSpec::with_default(
                    "text_columns",
                    ParamKind::List,
                    json!(["text"]),
                    "columns indexed, joined with a space (e.g. [title, text])",
                ),
                ParamSpec::with_default(
                    "k1",
                    ParamKind::Float,
                    json!(1.2),
                    "BM25 term-frequency saturation",
                ),
                ParamSpec::with_default(
                    "b",
                    ParamKind::Float,
                    json!(0.75),
                    "BM25 length normalisation, 0 to 1",
                ),
                ParamSpec::with_default(
                    "stopwords",
                    ParamKind::List,
                    json!([]),
                    "words left out of documents and queries (matched lowercased)",
                ),
            ],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let df = read_table(&ctx.input("table")?.path)?;
        let ids = id_column(KIND, "id_column", &df, "the passage table", &cfg.id_column)?;
        let mut texts = vec![String::new(); df.height()];
        for name in &cfg.text_columns {
            let col = string_column(KIND, "text_columns", &df, "the passage table", name)?;
            for (text, cell) in texts.iter_mut().zip(col) {
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(cell.as_deref().unwrap_or_default());
            }
        }
        let index =
            Index::bm25(ids, &texts, cfg.params, &cfg.stopwords).map_err(lib_error(KIND))?;
        write_index(ctx, KIND, &index)
    }
}
