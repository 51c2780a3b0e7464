//! `expstar.step_meta`: the per-step metadata JSON with its annotations (DAG nodes 6 and 7;
//! spec §B.2 step 4 and §B.3), one file per step at
//! `<subject>/<unit>/json/<NN>-<title>/<stem>.json`, written with indent 2 like the original.
//!
//! Paths are written anonymised, in the Demo's layout: `original_video` =
//! `<path_prefix>/<subject>/<unit>/<video file>`, `clip_video_path` =
//! `<path_prefix>/<subject>/<unit>/video/<NN>-<title>/<stem>.mp4` (the clip's place in the
//! `clips` output of `expstar.cut_clips` below `<path_prefix>`). No machine path enters an
//! artifact. Steps whose clip failed are left out (as in the original) unless
//! `require_clip` is false.

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use serde_json::{Map, Value, json};

use super::steps::{StepRow, read_steps};
use super::{py_json_indent, write_file};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct StepMeta;

const KIND: &str = "expstar.step_meta";

/// The metadata document of one step.
pub fn meta_doc(row: &StepRow, prefix: &str) -> Result<Value> {
    let video_name = row.video.rsplit('/').next().unwrap_or(&row.video);
    let base = format!("{prefix}/{}/{}", row.subject, row.unit);
    let annotations: Value = if row.annotations.is_empty() {
        json!([])
    } else {
        serde_json::from_str(&row.annotations).map_err(|e| {
            OperatorError::data(KIND, format!("{}: bad annotations: {e}", row.stem()))
        })?
    };
    let mut m = Map::new();
    m.insert("title_zh".into(), json!(row.title_zh));
    m.insert("title_en".into(), json!(row.title_en));
    m.insert(
        "original_video".into(),
        json!(format!("{base}/{video_name}")),
    );
    m.insert("clip_start".into(), json!(row.start));
    m.insert("clip_end".into(), json!(row.end));
    m.insert("step_zh".into(), json!(row.step_zh));
    m.insert("step_en".into(), json!(row.step_en));
    m.insert("step_number".into(), json!(row.step_index));
    m.insert(
        "clip_video_path".into(),
        json!(format!("{base}/video/{}/{}.mp4", row.exp_dir, row.stem())),
    );
    m.insert("subject".into(), json!(row.subject));
    if annotations.as_array().is_some_and(|a| !a.is_empty()) {
        m.insert("annotations".into(), annotations);
    }
    Ok(Value::Object(m))
}

impl Operator for StepMeta {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new(
                "steps",
                PortType::Table,
                "the step table (from expstar.cut_clips, or expstar.scan with require_clip false)",
            )]),
            outputs: Ports::Fixed(vec![Port::new(
                "meta",
                PortType::Dir,
                "<subject>/<unit>/json/<NN>-<title>/<stem>.json",
            )]),
            params: vec![
                ParamSpec::with_default(
                    "path_prefix",
                    ParamKind::String,
                    json!("/path/to"),
                    "the root written into video paths",
                ),
                ParamSpec::with_default(
                    "require_clip",
                    ParamKind::Bool,
                    json!(true),
                    "leave out steps whose clip is missing or failed",
                ),
            ],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        let p = Params::new(KIND, params);
        let mut out = problems(p.str("path_prefix"));
        out.extend(problems(p.bool("require_clip")));
        out
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let p = Params::new(KIND, ctx.params());
        let prefix = p.str("path_prefix")?.trim_end_matches('/').to_string();
        let require = p.bool("require_clip")?;
        let rows = read_steps(&ctx.input("steps")?.path)?;
        let out = &ctx.output("meta")?.path;
        let mut written = 0;
        for row in &rows {
            if require && !row.clip_ok {
                ctx.log(&format!(
                    "skipped {}/{}/{}: no clip",
                    row.subject,
                    row.unit,
                    row.stem()
                ));
                continue;
            }
            let doc = meta_doc(row, &prefix)?;
            let path = out
                .join(&row.subject)
                .join(&row.unit)
                .join("json")
                .join(&row.exp_dir)
                .join(format!("{}.json", row.stem()));
            write_file(&path, py_json_indent(&doc, 2).as_bytes())?;
            written += 1;
        }
        ctx.log(&format!("{written} step files of {} steps", rows.len()));
        Ok(())
    }
}
