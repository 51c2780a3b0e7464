//! `retrieve.search`: the top `k` documents of an `index` for every row of a query table.
//!
//! A BM25 index is searched with the text in `query_text_column`; a vector index with the
//! embedding in `query_embedding_column` (same dimension as the index; HNSW explores `ef`
//! candidates). The output has one row per hit, in query order then rank: `query_id`, `rank`
//! (1-based), `passage_id`, `score`, and, when a `passages` table is connected, its
//! `passage_columns` looked up by `passage_id_column`. Ties rank by document position.
//! BM25 returns only documents sharing a word with the query, so a query may have fewer
//! than `k` rows.

use std::collections::HashMap;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use expflow_retrieval::{Hit, Index, IndexKind};
use polars::prelude::*;
use serde_json::{Map, Value, json};

use super::{flatten, id_column, lib_error, string_column, vector_column};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};
use crate::table_io::{read_table, write_table};

pub struct Search;

const KIND: &str = "retrieve.search";

/// The columns every output has, in order.
pub const HIT_COLUMNS: [&str; 4] = ["query_id", "rank", "passage_id", "score"];

struct Config {
    k: usize,
    ef: usize,
    query_id_column: String,
    query_text_column: String,
    query_embedding_column: String,
    passage_id_column: String,
    passage_columns: Vec<String>,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let k = p.u64("k")?;
        if k == 0 {
            return Err(OperatorError::param(
                KIND,
                "k",
                "is 0; ask for at least one document (ExpStar uses 8)",
            ));
        }
        let passage_columns = p.opt_strings("passage_columns")?.unwrap_or_default();
        if let Some(c) = passage_columns
            .iter()
            .find(|c| HIT_COLUMNS.contains(&c.as_str()))
        {
            return Err(OperatorError::param(
                KIND,
                "passage_columns",
                format!(
                    "names `{c}`, which the output already has; rename that passage column first"
                ),
            ));
        }
        let to_usize = |v: u64, name: &str| {
            usize::try_from(v).map_err(|_| OperatorError::param(KIND, name, "is too large"))
        };
        Ok(Config {
            k: to_usize(k, "k")?,
            ef: to_usize(p.u64("ef")?, "ef")?,
            query_id_column: p.str("query_id_column")?.to_string(),
            query_text_column: p.str("query_text_column")?.to_string(),
            query_embedding_column: p.str("query_embedding_column")?.to_string(),
            passage_id_column: p.str("passage_id_column")?.to_string(),
            passage_columns,
        })
    }
}

/// The hits of every query, in query order.
fn run_queries(
    ctx: &Context,
    cfg: &Config,
    index: &Index,
    queries: &DataFrame,
) -> Result<Vec<Vec<Hit>>, OpError> {
    let table = "the query table";
    if let IndexKind::Bm25(_) = index.kind {
        let texts = string_column(
            KIND,
            "query_text_column",
            queries,
            table,
            &cfg.query_text_column,
        )?;
        let mut out = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            ctx.check_cancelled()?;
            let text = text.as_deref().ok_or_else(|| {
                OperatorError::data(
                    KIND,
                    format!("query row {i} has no `{}` text", cfg.query_text_column),
                )
            })?;
            out.push(index.search_text(text, cfg.k).map_err(lib_error(KIND))?);
        }
        return Ok(out);
    }
    let rows = vector_column(
        KIND,
        "query_embedding_column",
        queries,
        table,
        &cfg.query_embedding_column,
    )?;
    let (flat, dim) = flatten(KIND, &cfg.query_embedding_column, table, &rows)?;
    let want = index.dim().unwrap_or(0);
    if !rows.is_empty() && dim != want {
        return Err(OperatorError::data(
            KIND,
            format!(
                "the query embeddings in `{}` are {dim}-d but the index is {want}-d; embed the queries with the encoder that built the index",
                cfg.query_embedding_column
            ),
        )
        .into());
    }
    Ok(index
        .search_vectors(&flat, cfg.k, cfg.ef)
        .map_err(lib_error(KIND))?)
}

/// The passage columns of each hit, looked up by id.
fn passage_rows(cfg: &Config, passages: &DataFrame, hit_ids: &[&str]) -> Result<DataFrame> {
    let table = "the passage table";
    let ids = id_column(
        KIND,
        "passage_id_column",
        passages,
        table,
        &cfg.passage_id_column,
    )?;
    let mut by_id: HashMap<&str, IdxSize> = HashMap::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        if by_id.insert(id.as_str(), i as IdxSize).is_some() {
            return Err(OperatorError::data(
                KIND,
                format!("passage id `{id}` appears twice in the passage table; ids must be unique"),
            ));
        }
    }
    let rows = hit_ids
        .iter()
        .map(|id| {
            by_id.get(id).copied().ok_or_else(|| {
                OperatorError::data(
                    KIND,
                    format!("the index returned passage `{id}`, which is not in the passage table; connect the table the index was built from"),
                )
            })
        })
        .collect::<Result<Vec<IdxSize>>>()?;
    let mut columns = Vec::with_capacity(cfg.passage_columns.len());
    for name in &cfg.passage_columns {
        // Checked for existence (with the available names) before selecting.
        string_column(KIND, "passage_columns", passages, table, name)?;
        columns.push(name.as_str());
    }
    passages
        .select(columns)
        .and_then(|df| df.take(&IdxCa::from_vec("rows".into(), rows)))
        .map_err(|e| OperatorError::polars(KIND, "attaching passage columns", e))
}

impl Operator for Search {
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
                    "queries",
                    PortType::Table,
                    "one query per row: an id and text or an embedding",
                ),
                Port::new(
                    "index",
                    PortType::Index,
                    "a retrieve.bm25_index or retrieve.vector_index output",
                ),
                Port::new(
                    "passages",
                    PortType::Table,
                    "the passage table, to attach passage columns",
                )
                .optional(),
            ]),
            outputs: Ports::Fixed(vec![Port::new(
                "table",
                PortType::Table,
                "query_id, rank, passage_id, score and the passage columns, one row per hit",
            )]),
            params: vec![
                ParamSpec::with_default("k", ParamKind::Int, json!(8), "documents per query"),
                ParamSpec::with_default(
                    "ef",
                    ParamKind::Int,
                    json!(64),
                    "HNSW: candidates explored per query (at least k)",
                ),
                ParamSpec::with_default(
                    "query_id_column",
                    ParamKind::String,
                    json!("id"),
                    "the query id column",
                ),
                ParamSpec::with_default(
                    "query_text_column",
                    ParamKind::String,
                    json!("query"),
                    "BM25: the query text column",
                ),
                ParamSpec::with_default(
                    "query_embedding_column",
                    ParamKind::String,
                    json!("embedding"),
                    "vector indexes: the query embedding column",
                ),
                ParamSpec::with_default(
                    "passage_id_column",
                    ParamKind::String,
                    json!("id"),
                    "the passage table's id column",
                ),
                ParamSpec::with_default(
                    "passage_columns",
                    ParamKind::List,
                    json!(["title", "text"]),
                    "passage columns attached to each hit when `passages` is connected",
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
        let index = Index::load(&ctx.input("index")?.path).map_err(lib_error(KIND))?;
        let queries = read_table(&ctx.input("queries")?.path)?;
        let query_ids = id_column(
            KIND,
            "query_id_column",
            &queries,
            "the query table",
            &cfg.query_id_column,
        )?;
        let hits = run_queries(ctx, &cfg, &index, &queries)?;
        let total: usize = hits.iter().map(Vec::len).sum();
        let (mut qid, mut rank, mut pid, mut score) = (
            Vec::with_capacity(total),
            Vec::with_capacity(total),
            Vec::with_capacity(total),
            Vec::with_capacity(total),
        );
        for (q, list) in query_ids.iter().zip(&hits) {
            for (r, h) in list.iter().enumerate() {
                qid.push(q.as_str());
                rank.push(r as i64 + 1);
                pid.push(index.ids[h.index].as_str());
                score.push(h.score);
            }
        }
        let mut columns = vec![
            Column::new("query_id".into(), &qid),
            Column::new("rank".into(), rank),
            Column::new("passage_id".into(), &pid),
            Column::new("score".into(), score),
        ];
        if let Ok(input) = ctx.input("passages") {
            let passages = read_table(&input.path)?;
            let attached = passage_rows(&cfg, &passages, &pid)?;
            columns.extend(attached.columns().iter().cloned());
        }
        let mut out = DataFrame::new(total, columns)
            .map_err(|e| OperatorError::polars(KIND, "building the output", e))?;
        ctx.log(&format!(
            "{} queries against a {} index of {} documents: {total} hits",
            query_ids.len(),
            index.kind.name(),
            index.len()
        ));
        write_table(&mut out, &ctx.output("table")?.path)?;
        Ok(())
    }
}
