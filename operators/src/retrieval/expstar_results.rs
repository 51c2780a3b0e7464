//! `retrieve.expstar_results`: `retrieve.search` hits → ExpStar's retrieval file (spec §D.1
//! output, read by §C.5 and §F): a JSON list, indent 2, in query-table order, of
//! `{"id", "query", "video_path", "documents": [{"id", "title", "text"}, …]}` with documents
//! in rank order. A query without hits gets `"documents": []`.
//!
//! The file carries no `is_rag` or `relevant`: the original's relevance judge is unreleased
//! (spec §D.4), and `expstar.add_rag` keeps rows unchanged until a judge adds them.

use std::collections::HashMap;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use serde_json::{Map, Value, json};

use super::{id_column, string_column};
use crate::error::{OperatorError, Result};
use crate::expstar::{py_json_indent, write_file};
use crate::params::{Params, problems};
use crate::table_io::read_table;

pub struct ExpstarResults;

const KIND: &str = "retrieve.expstar_results";

struct Config {
    query_id_column: String,
    query_column: String,
    video_column: String,
    title_column: String,
    text_column: String,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        Ok(Config {
            query_id_column: p.str("query_id_column")?.to_string(),
            query_column: p.str("query_column")?.to_string(),
            video_column: p.str("video_column")?.to_string(),
            title_column: p.str("title_column")?.to_string(),
            text_column: p.str("text_column")?.to_string(),
        })
    }
}

/// The retrieval file's value.
fn build(
    cfg: &Config,
    hits: &polars::prelude::DataFrame,
    queries: &polars::prelude::DataFrame,
) -> Result<Value> {
    let qt = "the query table";
    let ht = "the hits table (connect `passages` to retrieve.search to attach titles and texts)";
    let ids = id_column(KIND, "query_id_column", queries, qt, &cfg.query_id_column)?;
    let text = string_column(KIND, "query_column", queries, qt, &cfg.query_column)?;
    let video = string_column(KIND, "video_column", queries, qt, &cfg.video_column)?;
    let hq = id_column(KIND, "query_id_column", hits, ht, "query_id")?;
    let hp = id_column(KIND, "query_id_column", hits, ht, "passage_id")?;
    let rank = string_column(KIND, "query_id_column", hits, ht, "rank")?;
    let title = string_column(KIND, "title_column", hits, ht, &cfg.title_column)?;
    let body = string_column(KIND, "text_column", hits, ht, &cfg.text_column)?;
    let mut position: HashMap<&str, usize> = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        if position.insert(id.as_str(), i).is_some() {
            return Err(OperatorError::data(
                KIND,
                format!("query id `{id}` appears twice in the query table; ids must be unique"),
            ));
        }
    }
    let mut docs: Vec<Vec<(i64, Value)>> = vec![Vec::new(); ids.len()];
    for i in 0..hq.len() {
        let q = *position.get(hq[i].as_str()).ok_or_else(|| {
            OperatorError::data(KIND, format!("the hits name query `{}`, which is not in the query table; connect the queries that were searched", hq[i]))
        })?;
        let r: i64 = rank[i]
            .as_deref()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                OperatorError::data(
                    KIND,
                    format!("hit row {i} has no integer `rank`; is this a retrieve.search output?"),
                )
            })?;
        let doc = json!({
            "id": hp[i],
            "title": title[i].clone().unwrap_or_default(),
            "text": body[i].clone().unwrap_or_default(),
        });
        docs[q].push((r, doc));
    }
    let list = ids
        .iter()
        .zip(text)
        .zip(video)
        .zip(docs)
        .map(|(((id, query), video), mut d)| {
            d.sort_by_key(|(r, _)| *r);
            json!({
                "id": id,
                "query": query,
                "video_path": video,
                "documents": d.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Value::Array(list))
}

impl Operator for ExpstarResults {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new(
                    "hits",
                    PortType::Table,
                    "a retrieve.search output with passage titles and texts",
                ),
                Port::new(
                    "queries",
                    PortType::Table,
                    "the query table: id, query text, video path",
                ),
            ]),
            outputs: Ports::Fixed(vec![Port::new(
                "retrieval",
                PortType::File,
                "retrieval_results.json in ExpStar's form",
            )]),
            params: vec![
                ParamSpec::with_default(
                    "query_id_column",
                    ParamKind::String,
                    json!("id"),
                    "the query id column",
                ),
                ParamSpec::with_default(
                    "query_column",
                    ParamKind::String,
                    json!("query"),
                    "the query text column",
                ),
                ParamSpec::with_default(
                    "video_column",
                    ParamKind::String,
                    json!("video_path"),
                    "the clip path column (the key expstar.add_rag matches)",
                ),
                ParamSpec::with_default(
                    "title_column",
                    ParamKind::String,
                    json!("title"),
                    "the hits' passage title column",
                ),
                ParamSpec::with_default(
                    "text_column",
                    ParamKind::String,
                    json!("text"),
                    "the hits' passage text column",
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
        let hits = read_table(&ctx.input("hits")?.path)?;
        let queries = read_table(&ctx.input("queries")?.path)?;
        let value = build(&cfg, &hits, &queries)?;
        ctx.log(&format!(
            "{} queries, {} documents",
            queries.height(),
            hits.height()
        ));
        write_file(
            &ctx.output("retrieval")?.path,
            py_json_indent(&value, 2).as_bytes(),
        )?;
        Ok(())
    }
}
