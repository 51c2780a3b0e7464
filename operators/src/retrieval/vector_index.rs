//! `retrieve.vector_index`: a table of ids and embeddings (a list-of-floats column) → an
//! exact or HNSW `index` (see `expflow_retrieval::{exact, hnsw}`). The artifact holds the
//! vectors, the HNSW parameters and the graph (built once here, by deterministic serial
//! insertion unless `parallel`), so searching nodes load it instead of rebuilding it.

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use expflow_retrieval::{HnswParams, Index, Metric};
use serde_json::{Map, Value, json};

use super::{flatten, id_column, lib_error, vector_column, write_index};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};
use crate::table_io::read_table;

pub struct VectorIndexOp;

const KIND: &str = "retrieve.vector_index";

struct Config {
    id_column: String,
    embedding_column: String,
    hnsw: Option<HnswParams>,
    metric: Metric,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let kind = p.choice("kind", &["exact", "hnsw"])?;
        let metric = match p.choice("metric", &["ip", "cosine"])? {
            "cosine" => Metric::Cosine,
            _ => Metric::InnerProduct,
        };
        let usize_param = |name: &str| -> Result<usize> {
            usize::try_from(p.u64(name)?)
                .map_err(|_| OperatorError::param(KIND, name, "is too large"))
        };
        let params = HnswParams {
            m: usize_param("m")?,
            ef_construction: usize_param("ef_construction")?,
            parallel: false,
        };
        params
            .validate()
            .map_err(|e| OperatorError::data(KIND, e.to_string()))?;
        Ok(Config {
            id_column: p.str("id_column")?.to_string(),
            embedding_column: p.str("embedding_column")?.to_string(),
            hnsw: (kind == "hnsw").then_some(params),
            metric,
        })
    }
}

impl Operator for VectorIndexOp {
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
                "an id column and an embedding column (a list of floats per row)",
            )]),
            outputs: Ports::Fixed(vec![Port::new(
                "index",
                PortType::Index,
                "the vector index",
            )]),
            params: vec![
                ParamSpec::with_default(
                    "id_column",
                    ParamKind::String,
                    json!("id"),
                    "the id column",
                ),
                ParamSpec::with_default(
                    "embedding_column",
                    ParamKind::String,
                    json!("embedding"),
                    "the embedding column",
                ),
                ParamSpec::with_default("kind", ParamKind::String, json!("exact"), "exact or hnsw"),
                ParamSpec::with_default(
                    "metric",
                    ParamKind::String,
                    json!("ip"),
                    "ip (inner product, as faiss IndexFlatIP) or cosine",
                ),
                ParamSpec::with_default(
                    "m",
                    ParamKind::Int,
                    json!(16),
                    "HNSW: neighbours per node (2 to 256)",
                ),
                ParamSpec::with_default(
                    "ef_construction",
                    ParamKind::Int,
                    json!(200),
                    "HNSW: candidate list size while building",
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
        let table = "the embedding table";
        let ids = id_column(KIND, "id_column", &df, table, &cfg.id_column)?;
        let rows = vector_column(KIND, "embedding_column", &df, table, &cfg.embedding_column)?;
        let (data, dim) = flatten(KIND, &cfg.embedding_column, table, &rows)?;
        if rows.is_empty() {
            return Err(OperatorError::data(
                KIND,
                "the embedding table has no rows; an index needs at least one vector",
            )
            .into());
        }
        match cfg.hnsw {
            None => {
                let index = Index::exact(ids, data, dim, cfg.metric).map_err(lib_error(KIND))?;
                write_index(ctx, KIND, &index)
            }
            Some(params) => {
                let index =
                    Index::hnsw(ids, data, dim, cfg.metric, params).map_err(lib_error(KIND))?;
                ctx.log(&format!(
                    "index: {} hnsw vectors, dimension {dim}, M {}, ef_construction {}",
                    index.len(),
                    params.m,
                    params.ef_construction
                ));
                write_index(ctx, KIND, &index)
            }
        }
    }
}
