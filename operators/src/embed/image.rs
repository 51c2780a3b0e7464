//! `embed.image`: one CLIP image embedding per row of a column of image paths.
//!
//! Relative paths are resolved against the optional `dir` input. Each distinct file is
//! memoised under (its BLAKE3, the model digest, normalize) and embedded on its own: on CPU
//! the batch size changes the last bits of a vector, and a memoised vector must not depend on
//! which other files were missing in the run that computed it.

use expflow_encoders::ClipModel;
use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use expflow_models::{Needs, default_device};
use serde_json::{Map, Value, json};

use super::common::{
    check_new_column, chunks, file_column, log_device, memo_vectors, open_model, with_vectors,
};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};
use crate::table_io::{read_table, write_table};

pub struct EmbedImage;

const KIND: &str = "embed.image";

struct Config {
    column: String,
    output: String,
    normalize: bool,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        Ok(Config {
            column: p.str("column")?.to_string(),
            output: p.str("output")?.to_string(),
            normalize: p.bool("normalize")?,
        })
    }
}

/// The ports and parameters `embed.image` and `embed.video` share.
pub(super) fn media_signature(what: &'static str, mut extra: Vec<ParamSpec>) -> Signature {
    let s = |name, kind, default: Value, doc| ParamSpec::with_default(name, kind, default, doc);
    let mut params = vec![
        ParamSpec::required("column", ParamKind::String, "the column of file paths"),
        s(
            "output",
            ParamKind::String,
            json!("embedding"),
            "name of the new list<f32> column",
        ),
        s(
            "normalize",
            ParamKind::Bool,
            json!(false),
            "L2-normalise each embedding",
        ),
    ];
    params.append(&mut extra);
    Signature {
        inputs: Ports::Fixed(vec![
            Port::new("rows", PortType::Table, what),
            Port::new(
                "model",
                PortType::Model,
                "a CLIP model directory (config.json, safetensors, preprocessor_config.json)",
            ),
            Port::new(
                "dir",
                PortType::Dir,
                "the directory relative paths are resolved against",
            )
            .optional(),
        ]),
        outputs: Ports::Fixed(vec![Port::new(
            "table",
            PortType::Table,
            "the input table with the embedding column (list<f32>) added",
        )]),
        params,
        determinism: Determinism::Deterministic,
        resources: Resources {
            cpus: 2,
            gpus: 0,
            mem_gb: 2.0,
        },
    }
}

impl Operator for EmbedImage {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        media_signature("the table with the image path column", Vec::new())
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> std::result::Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let df = read_table(&ctx.input("rows")?.path)?;
        check_new_column(&df, KIND, &cfg.output)?;
        let files = file_column(ctx, &df, KIND, &cfg.column, None)?;
        let model = open_model(ctx, KIND, Needs::WeightsOnly)?;
        ctx.log(&format!(
            "{} rows, {} distinct images from `{}`: normalize {}",
            files.index.len(),
            files.paths.len(),
            cfg.column,
            cfg.normalize
        ));
        let items: Vec<Value> = files
            .digests
            .iter()
            .map(|d| json!({"file": d, "model": model.digest, "normalize": cfg.normalize}))
            .collect();
        let mut clip: Option<ClipModel> = None;
        // One image per forward pass, for the reason `embed.text` gives.
        let plan = |missing| Ok(chunks(missing, 1));
        let vectors = memo_vectors(ctx, &items, plan, |chunk| {
            if clip.is_none() {
                let device = default_device()?;
                log_device(ctx, &device);
                clip = Some(ClipModel::load(&model.dir, &device, cfg.normalize)?);
            }
            let clip = clip.as_ref().expect("loaded above");
            let pixels = chunk
                .iter()
                .map(|&i| {
                    clip.preprocess().load(&files.paths[i]).map_err(|e| {
                        OperatorError::data(KIND, format!("row {}: {e}", files.rows[i]))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(clip.embed_pixels(pixels)?)
        })?;
        let per_row: Vec<Vec<f32>> = files.index.iter().map(|&i| vectors[i].clone()).collect();
        let mut out = with_vectors(df, KIND, &cfg.output, &per_row)?;
        write_table(&mut out, &ctx.output("table")?.path)?;
        Ok(())
    }
}
