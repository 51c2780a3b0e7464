//! `expstar.export_swift`: rows → ms-swift JSON Lines with `messages`, `videos` and, for DPO
//! rows, `rejected_response` (in that order; other fields are dropped unless `keep_id`), and
//! the clips those rows name.
//!
//! The rows name their clips `<path_prefix>/<subject>/<unit>/video/<NN>-<title>/<stem>.mp4`
//! (as `expstar.step_meta` writes them). The export writes each path relative, without the
//! prefix (the layout the original tools produce under their data root), and carries the
//! clips: `media` holds them at those relative paths, taken from the `clips` input (the
//! `clips` output of `expstar.cut_clips`). A training node given `file` and `media` resolves
//! the paths against its own copy of `media` when it runs, so nothing depends on where the
//! workspace is.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use serde_json::{Map, Value, json};

use super::{read_rows, str_field, write_jsonl};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct ExportSwift;

const KIND: &str = "expstar.export_swift";

/// A row's video path relative to the clips directory: `path` without `prefix/`. A path
/// outside the prefix stays as it is.
pub fn relative(path: &str, prefix: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return path.trim_start_matches('/').to_string();
    }
    match path.strip_prefix(prefix) {
        Some(rest) if rest.starts_with('/') => rest.trim_start_matches('/').to_string(),
        _ => path.to_string(),
    }
}

pub fn videos(row: &Value, prefix: &str) -> Value {
    Value::Array(
        row.get("videos")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|v| json!(relative(v.as_str().unwrap_or(""), prefix)))
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// Carries the clips the exported rows name into an output directory, at their relative
/// paths (a hard link to the input's copy where the file system allows, else a copy).
pub struct Media<'a> {
    op: &'static str,
    clips: Option<&'a Path>,
    dest: &'a Path,
    done: BTreeSet<String>,
}

impl<'a> Media<'a> {
    pub fn new(op: &'static str, clips: Option<&'a Path>, dest: &'a Path) -> Media<'a> {
        Media {
            op,
            clips,
            dest,
            done: BTreeSet::new(),
        }
    }

    /// Carries the videos of one exported row (`videos` already relative).
    pub fn carry(&mut self, row: &Value, exported: &Value) -> Result<()> {
        let Some(clips) = self.clips else {
            return Ok(());
        };
        let vids = exported
            .get("videos")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for v in vids {
            let rel = v.as_str().unwrap_or_default();
            if self.done.contains(rel) {
                continue;
            }
            let safe = !rel.is_empty()
                && Path::new(rel)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)));
            if !safe {
                return Err(OperatorError::data(
                    self.op,
                    format!(
                        "row `{}` names video `{rel}`, which is not below `path_prefix`; set \
                         `path_prefix` to the prefix the rows' video paths start with",
                        str_field(row, "id")
                    ),
                ));
            }
            let src = clips.join(rel);
            if !src.is_file() {
                return Err(OperatorError::data(
                    self.op,
                    format!(
                        "row `{}` names clip `{rel}`, which the `clips` input does not hold; \
                         connect `clips` to the expstar.cut_clips node whose clips the rows name",
                        str_field(row, "id")
                    ),
                ));
            }
            let to = self.dest.join(rel);
            link_or_copy(&src, &to)?;
            self.done.insert(rel.to_string());
        }
        Ok(())
    }

    /// How many clips were carried.
    pub fn count(&self) -> usize {
        self.done.len()
    }

    /// A line for the node's log.
    pub fn summary(&self) -> String {
        match self.clips {
            Some(_) => format!("{} clips carried", self.done.len()),
            None => "`clips` is not connected: the video paths are relative, and no clips are \
                     carried with them"
                .to_string(),
        }
    }
}

fn link_or_copy(src: &Path, to: &PathBuf) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| OperatorError::io("cannot create directory", parent, e))?;
    }
    if std::fs::hard_link(src, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(src, to).map_err(|e| OperatorError::io("cannot copy clip to", to, e))?;
    Ok(())
}

pub fn convert(row: &Value, prefix: &str, keep_id: bool) -> Result<Value> {
    let messages = row
        .get("messages")
        .filter(|m| m.is_array())
        .ok_or_else(|| OperatorError::data(KIND, "a row has no `messages` list"))?;
    let mut m = Map::new();
    m.insert("messages".into(), messages.clone());
    m.insert("videos".into(), videos(row, prefix));
    if let Some(r) = row.get("rejected_response") {
        m.insert("rejected_response".into(), r.clone());
    }
    if keep_id && let Some(id) = row.get("id") {
        m.insert("id".into(), id.clone());
    }
    Ok(Value::Object(m))
}

/// The `clips` input both exports take.
pub fn clips_port() -> Port {
    Port::new(
        "clips",
        PortType::Dir,
        "the clips the rows name (the `clips` output of expstar.cut_clips), carried with the export",
    )
    .optional()
}

pub fn prefix_param() -> ParamSpec {
    ParamSpec::with_default(
        "path_prefix",
        ParamKind::String,
        json!("/path/to"),
        "the prefix of the rows' video paths; the export writes them relative, without it",
    )
}

impl Operator for ExportSwift {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        // 2: relative video paths and the clips carried in `media` (no `video_root`).
        // 3: rows travel as Parquet tables, not JSON Lines (docs/decisions.md).
        3
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new("rows", PortType::Table, "rows, a rows table"),
                clips_port(),
            ]),
            outputs: Ports::Fixed(vec![
                Port::new(
                    "file",
                    PortType::File,
                    "ms-swift JSON Lines, video paths relative to `media`",
                ),
                Port::new(
                    "media",
                    PortType::Dir,
                    "the clips the file names, at its relative paths (connect to the training node's `media`)",
                ),
            ]),
            params: vec![
                prefix_param(),
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
        out.extend(problems(p.bool("keep_id")));
        out
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let p = Params::new(KIND, ctx.params());
        let (prefix, keep) = (p.str("path_prefix")?, p.bool("keep_id")?);
        let rows = read_rows(&ctx.input("rows")?.path)?;
        let media_dir = ctx.output("media")?.path.clone();
        std::fs::create_dir_all(&media_dir)
            .map_err(|e| OperatorError::io("cannot create directory", &media_dir, e))?;
        let clips = ctx.inputs().get("clips").map(|c| c.path.clone());
        let mut media = Media::new(KIND, clips.as_deref(), &media_dir);
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let e = convert(r, prefix, keep)?;
            media.carry(r, &e)?;
            out.push(e);
        }
        write_jsonl(&ctx.output("file")?.path, &out)?;
        ctx.log(&format!("{} rows; {}", out.len(), media.summary()));
        Ok(())
    }
}
