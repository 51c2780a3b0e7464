//! `retrieve.fuse`: ExpStar's text + video query fusion (spec §D.1) for embeddings from one
//! shared space (e.g. a CLIP text and image tower): adds `output_column` =
//! `text_weight·text + (1 − text_weight)·video` (L2-normalised when `normalize`), and a
//! `fusion` column saying `text+video` or `text`. A row without a video embedding uses its
//! text embedding alone. Embeddings of different sizes are refused unless `projection:
//! seeded`: then every video vector is first mapped into the text space by one fixed linear
//! map drawn from `projection_seed` (`torch.nn.Linear`'s initial distribution), where the
//! original draws a fresh unseeded one for every query (see `expflow_retrieval::fusion`).
//! The choice and the seed are parameters, so they are in the node's key.

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use expflow_retrieval::{FusionParams, Projection, QuerySource, fuse};
use polars::prelude::*;
use serde_json::{Map, Value, json};

use super::vector_column;
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};
use crate::table_io::{read_table, write_table};

pub struct Fuse;

const KIND: &str = "retrieve.fuse";

struct Config {
    text_column: String,
    video_column: String,
    output_column: String,
    params: FusionParams,
    /// The seed of the fixed projection, when video vectors are projected.
    projection: Option<u64>,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let w = p.f64("text_weight")?;
        if !(0.0..=1.0).contains(&w) {
            return Err(OperatorError::param(
                KIND,
                "text_weight",
                format!("is {w}; use 0 to 1 (ExpStar uses 0.3)"),
            ));
        }
        let output_column = p.str("output_column")?.to_string();
        if output_column == "fusion" {
            return Err(OperatorError::param(
                KIND,
                "output_column",
                "is `fusion`, the name of the column that records the source; choose another",
            ));
        }
        Ok(Config {
            text_column: p.str("text_column")?.to_string(),
            video_column: p.str("video_column")?.to_string(),
            output_column,
            params: FusionParams {
                text_weight: w as f32,
                normalize: p.bool("normalize")?,
            },
            projection: match p.choice("projection", &["none", "seeded"])? {
                "seeded" => Some(p.u64("projection_seed")?),
                _ => None,
            },
        })
    }
}

impl Operator for Fuse {
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
                "queries with text and (optionally null) video embeddings",
            )]),
            outputs: Ports::Fixed(vec![Port::new(
                "table",
                PortType::Table,
                "the input with the fused embedding and a `fusion` column",
            )]),
            params: vec![
                ParamSpec::with_default(
                    "text_column",
                    ParamKind::String,
                    json!("text_embedding"),
                    "the text embedding column",
                ),
                ParamSpec::with_default(
                    "video_column",
                    ParamKind::String,
                    json!("video_embedding"),
                    "the video embedding column (null: text only)",
                ),
                ParamSpec::with_default(
                    "output_column",
                    ParamKind::String,
                    json!("embedding"),
                    "the fused embedding column written",
                ),
                ParamSpec::with_default(
                    "text_weight",
                    ParamKind::Float,
                    json!(0.3),
                    "weight of the text vector, 0 to 1",
                ),
                ParamSpec::with_default(
                    "normalize",
                    ParamKind::Bool,
                    json!(true),
                    "L2-normalise the fused query",
                ),
                ParamSpec::with_default(
                    "projection",
                    ParamKind::String,
                    json!("none"),
                    "none (text and video share a space) or seeded (video mapped to the text space by a fixed linear map, ExpStar's untrained nn.Linear made reproducible)",
                ),
                ParamSpec::with_default(
                    "projection_seed",
                    ParamKind::Int,
                    json!(0),
                    "projection seeded: the seed of the map",
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
        let table = "the query table";
        let text = vector_column(KIND, "text_column", &df, table, &cfg.text_column)?;
        let video = vector_column(KIND, "video_column", &df, table, &cfg.video_column)?;
        let n = df.height();
        let dim = text.iter().flatten().map(Vec::len).next().unwrap_or(0);
        let mut fused = ListPrimitiveChunkedBuilder::<Float32Type>::new(
            cfg.output_column.as_str().into(),
            n,
            n * dim,
            DataType::Float32,
        );
        let mut sources = Vec::with_capacity(n);
        let mut text_only = 0usize;
        let mut projection: Option<Projection> = None;
        for (i, (t, v)) in text.iter().zip(&video).enumerate() {
            let t = t.as_deref().ok_or_else(|| {
                OperatorError::data(
                    KIND,
                    format!(
                        "row {i} has no `{}` embedding; every query needs text",
                        cfg.text_column
                    ),
                )
            })?;
            let projected = match (cfg.projection, v.as_deref().filter(|v| !v.is_empty())) {
                (Some(seed), Some(video)) => {
                    if projection.is_none() {
                        projection = Some(
                            Projection::seeded(video.len(), t.len(), seed)
                                .map_err(|e| OperatorError::data(KIND, e.to_string()))?,
                        );
                        ctx.log(&format!(
                            "video vectors projected {}-d → {}-d by the fixed map of seed {seed}",
                            video.len(),
                            t.len()
                        ));
                    }
                    let p = projection.as_ref().expect("made above");
                    Some(
                        p.apply(video)
                            .map_err(|e| OperatorError::data(KIND, format!("row {i}: {e}")))?,
                    )
                }
                _ => None,
            };
            let video = projected.as_deref().or(v.as_deref());
            let q = fuse(t, video, cfg.params)
                .map_err(|e| OperatorError::data(KIND, format!("row {i}: {e}")))?;
            if q.source == QuerySource::TextOnly {
                text_only += 1;
            }
            sources.push(q.source.as_str());
            fused.append_slice(&q.vector);
        }
        let mut out = df
            .hstack(&[
                fused.finish().into_column(),
                Column::new("fusion".into(), sources),
            ])
            .map_err(|e| {
                OperatorError::polars(
                    KIND,
                    format!(
                        "adding `{}` (does the column exist already?)",
                        cfg.output_column
                    ),
                    e,
                )
            })?;
        ctx.log(&format!(
            "{n} queries: {} fused with video, {text_only} text only (no video embedding)",
            n - text_only
        ));
        write_table(&mut out, &ctx.output("table")?.path)?;
        Ok(())
    }
}
