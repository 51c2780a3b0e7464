//! `expstar.export_swift`: rows → ms-swift JSON Lines with `messages`, `videos` and, for DPO
//! rows, `rejected_response` (in that order; other fields are dropped unless `keep_id`).
//! `video_root` replaces the `path_prefix` written by `expstar.step_meta`, so the file can
//! point at where the clips really are.

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use serde_json::{Map, Value, json};

use super::{read_jsonl, write_jsonl};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct ExportSwift;

const KIND: &str = "expstar.export_swift";

/// Rewrites a video path that starts with `prefix` to start with `root`.
pub fn rewrite(path: &str, prefix: &str, root: Option<&str>) -> String {
    match root {
        Some(root) if !prefix.is_empty() => match path.strip_prefix(prefix) {
            Some(rest) => format!("{}{rest}", root.trim_end_matches('/')),
            None => path.to_string(),
        },
        _ => path.to_string(),
    }
}

pub fn videos(row: &Value, prefix: &str, root: Option<&str>) -> Value {
    Value::Array(
        row.get("videos")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|v| json!(rewrite(v.as_str().unwrap_or(""), prefix, root)))
                    .collect()
            })
            .unwrap_or_default(),
    )
}

pub fn convert(row: &Value, prefix: &str, root: Option<&str>, keep_id: bool) -> Result<Value> {
    let messages = row
        .get("messages")
        .filter(|m| m.is_array())
        .ok_or_else(|| OperatorError::data(KIND, "a row has no `messages` list"))?;
    let mut m = Map::new();
    m.insert("messages".into(), messages.clone());
    m.insert("videos".into(), videos(row, prefix, root));
    if let Some(r) = row.get("rejected_response") {
        m.insert("rejected_response".into(), r.clone());
    }
    if keep_id && let Some(id) = row.get("id") {
        m.insert("id".into(), id.clone());
    }
    Ok(Value::Object(m))
}

impl Operator for ExportSwift {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new("rows", PortType::File, "rows, JSON Lines")]),
            outputs: Ports::Fixed(vec![Port::new(
                "file",
                PortType::File,
                "ms-swift JSON Lines",
            )]),
            params: vec![
                ParamSpec::with_default(
                    "path_prefix",
                    ParamKind::String,
                    json!("/path/to"),
                    "the prefix of the video paths in the rows",
                ),
                ParamSpec::with_default(
                    "video_root",
                    ParamKind::String,
                    Value::Null,
                    "replaces `path_prefix` (null: keep paths)",
                ),
                ParamSpec::with_default(
                    "keep_id",
                    ParamKind::Bool,
                    json!(false),
                    "keep each row's `id`",
                ),
            ],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        let p = Params::new(KIND, params);
        let mut out = problems(p.str("path_prefix"));
        out.extend(problems(p.opt_str("video_root")));
        out.extend(problems(p.bool("keep_id")));
        out
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let p = Params::new(KIND, ctx.params());
        let (prefix, root, keep) = (
            p.str("path_prefix")?,
            p.opt_str("video_root")?,
            p.bool("keep_id")?,
        );
        let rows = read_jsonl(&ctx.input("rows")?.path)?;
        let out = rows
            .iter()
            .map(|r| convert(r, prefix, root, keep))
            .collect::<Result<Vec<_>>>()?;
        write_jsonl(&ctx.output("file")?.path, &out)?;
        Ok(())
    }
}
