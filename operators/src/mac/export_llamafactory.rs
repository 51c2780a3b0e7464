//! `mac.export_llamafactory`: items → a LLaMA-Factory dataset directory (spec §2.1–2.3):
//!
//! - `<name>.json`: a JSON array of alpaca records `{"system", "input", "output", "images"}`
//!   (image paths with `image_prefix` prepended), each checked again for one `<image>` per
//!   image;
//! - `<name>.ids.json`: the item ids in the same order, because `vllm_infer.py` writes its
//!   predictions by row index without ids (spec §2.7);
//! - `dataset_info.json`: the registry with the entry `<name>: {"file_name", "formatting":
//!   "alpaca", "columns"}` added or replaced. `system_as: user` registers the team's mapping
//!   `{"prompt": "system", "query": "input", "response": "output", "images": "images"}`, where
//!   LLaMA-Factory puts the `system` text in the user turn; `system_as: system` registers
//!   `{"prompt": "input", "system": "system", …}` for a real system prompt (spec §2.2). Use
//!   one mapping for train, dev and test.
//!
//! With the optional `base` input (an earlier export's directory), its files are copied in
//! first and its `dataset_info.json` is the registry extended (then the optional `info`
//! file's entries, then this dataset's), so chained exports build one directory with train,
//! dev and test sets. With the optional `media` input (the directory the image paths are
//! relative to), every referenced image is copied in under its path, so the directory is
//! both `dataset_dir` and `media_dir`; a missing image is an error naming the record.

use std::path::Path;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use serde_json::{Map, Value, json};

use super::{Item, pretty, read_items, record_name, write_file};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct ExportLlamaFactory;

const KIND: &str = "mac.export_llamafactory";

struct Config {
    name: String,
    system_as: &'static str,
    image_prefix: String,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let name = p.str("name")?.to_string();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(OperatorError::param(
                KIND,
                "name",
                format!("is `{name}`; use letters, digits, `_`, `-` and `.` (it names a file)"),
            ));
        }
        Ok(Config {
            name,
            system_as: p.choice("system_as", &["user", "system"])?,
            image_prefix: p.str("image_prefix")?.to_string(),
        })
    }
}

/// The `dataset_info.json` entry for a dataset file.
pub fn info_entry(file_name: &str, system_as: &str) -> Value {
    let columns = if system_as == "system" {
        json!({"prompt": "input", "system": "system", "response": "output", "images": "images"})
    } else {
        json!({"prompt": "system", "query": "input", "response": "output", "images": "images"})
    };
    json!({"file_name": file_name, "formatting": "alpaca", "columns": columns})
}

/// The alpaca records of `items`.
pub fn records(op: &'static str, items: &[Item], image_prefix: &str) -> Result<Vec<Value>> {
    items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            it.validate()
                .map_err(|e| OperatorError::data(op, format!("{}: {e}", record_name(i, &it.id))))?;
            let images: Vec<String> = it
                .images
                .iter()
                .map(|p| format!("{image_prefix}{p}"))
                .collect();
            Ok(json!({
                "system": it.system,
                "input": it.input,
                "output": it.output,
                "images": images,
            }))
        })
        .collect()
}

fn read_registry(path: &Path) -> Result<Map<String, Value>> {
    let bytes = std::fs::read(path).map_err(|e| OperatorError::io("cannot read", path, e))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) | Err(_) => Err(OperatorError::Parse {
            path: path.to_path_buf(),
            format: "dataset_info.json",
            location: String::new(),
            message: "must be a JSON object keyed by dataset name".into(),
        }),
    }
}

/// Copies a file's bytes (not its permissions: stored inputs are read-only).
fn copy_file(src: &Path, dst: &Path) -> Result<()> {
    let bytes = std::fs::read(src).map_err(|e| OperatorError::io("cannot read", src, e))?;
    std::fs::write(dst, bytes).map_err(|e| OperatorError::io("cannot write", dst, e))
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let entries = std::fs::read_dir(from).map_err(|e| OperatorError::io("cannot list", from, e))?;
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for src in paths {
        let dst = to.join(src.file_name().unwrap_or_default());
        if src.is_dir() {
            std::fs::create_dir_all(&dst)
                .map_err(|e| OperatorError::io("cannot create directory", &dst, e))?;
            copy_tree(&src, &dst)?;
        } else if dst.file_name().is_some_and(|n| n != "dataset_info.json") {
            copy_file(&src, &dst)?;
        }
    }
    Ok(())
}

fn copy_images(items: &[Item], media: &Path, out: &Path) -> Result<usize> {
    let mut copied = std::collections::BTreeSet::new();
    for (i, it) in items.iter().enumerate() {
        for p in &it.images {
            if copied.contains(p) {
                continue;
            }
            let rel = Path::new(p);
            if rel.is_absolute()
                || rel
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(OperatorError::data(
                    KIND,
                    format!(
                        "{}: image `{p}` is not a relative path inside `media`",
                        record_name(i, &it.id)
                    ),
                ));
            }
            let src = media.join(rel);
            if !src.is_file() {
                return Err(OperatorError::data(
                    KIND,
                    format!(
                        "{}: image `{p}` is not in the `media` directory",
                        record_name(i, &it.id)
                    ),
                ));
            }
            let dst = out.join(rel);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| OperatorError::io("cannot create directory", parent, e))?;
            }
            copy_file(&src, &dst)?;
            copied.insert(p.clone());
        }
    }
    Ok(copied.len())
}

impl Operator for ExportLlamaFactory {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new("table", PortType::Table, "MAC items"),
                Port::new(
                    "info",
                    PortType::File,
                    "an existing dataset_info.json to extend",
                )
                .optional(),
                Port::new(
                    "base",
                    PortType::Dir,
                    "an earlier export's directory to extend",
                )
                .optional(),
                Port::new(
                    "media",
                    PortType::Dir,
                    "the directory image paths are relative to",
                )
                .optional(),
            ]),
            outputs: Ports::Fixed(vec![Port::new(
                "dataset",
                PortType::Dir,
                "<name>.json, <name>.ids.json, dataset_info.json (and the images with `media`)",
            )]),
            params: vec![
                ParamSpec::with_default(
                    "name",
                    ParamKind::String,
                    json!("mac_train"),
                    "the dataset name",
                ),
                ParamSpec::with_default(
                    "system_as",
                    ParamKind::String,
                    json!("user"),
                    "user: register `system` as the prompt column (the team's mapping); system: as the system column",
                ),
                ParamSpec::with_default(
                    "image_prefix",
                    ParamKind::String,
                    json!(""),
                    "prepended to every image path",
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
        let items = read_items(ctx, KIND, "table")?;
        let out = &ctx.output("dataset")?.path;
        let mut info = Map::new();
        if let Some(base) = ctx.inputs().get("base") {
            copy_tree(&base.path, out)?;
            let reg = base.path.join("dataset_info.json");
            if reg.is_file() {
                info = read_registry(&reg)?;
            }
        }
        if let Some(input) = ctx.inputs().get("info") {
            info.extend(read_registry(&input.path)?);
        }
        let recs = records(KIND, &items, &cfg.image_prefix)?;
        let file_name = format!("{}.json", cfg.name);
        write_file(&out.join(&file_name), &pretty(&Value::Array(recs)))?;
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        write_file(
            &out.join(format!("{}.ids.json", cfg.name)),
            &pretty(&json!(ids)),
        )?;
        info.insert(cfg.name.clone(), info_entry(&file_name, cfg.system_as));
        write_file(
            &out.join("dataset_info.json"),
            &pretty(&Value::Object(info)),
        )?;
        if let Some(media) = ctx.inputs().get("media") {
            let n = copy_images(&items, &media.path, out)?;
            ctx.log(&format!("copied {n} images"));
        }
        ctx.log(&format!("{file_name}: {} records", items.len()));
        Ok(())
    }
}
