//! `expstar.export_llamafactory`: rows → a LLaMA-Factory dataset directory: `<name>.json`
//! (a JSON array) and `dataset_info.json` with its entry (macbench spec §2.1–2.4).
//!
//! - `sharegpt`: `{"conversations": [{"from": "human"|"gpt", "value"}…], "system", "videos"}`;
//!   entry `formatting: sharegpt` with `columns` {messages, system, videos} and the tags.
//! - `alpaca`: `{"instruction": last user turn, "input": "", "output": last assistant turn,
//!   "system", "history": [[user, assistant]…], "videos"}`.
//! - Rows with `rejected_response` (DPO) become the preference format: sharegpt
//!   `conversations` ending with the human turn plus `chosen`/`rejected` `{"from": "gpt",
//!   "value"}`, or alpaca `instruction`/`chosen`/`rejected`; the entry gets `ranking: true`.
//!
//! The `<video>` placeholder stays in the first user turn (LLaMA-Factory requires one per
//! video). Video paths are written relative, as in `expstar.export_swift`, and the clips they
//! name (from the `clips` input) are carried in the dataset directory at those paths:
//! LLaMA-Factory resolves relative media against `media_dir`, which defaults to the dataset
//! directory, so the directory trains wherever it is materialised.

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use serde_json::{Map, Value, json};

use super::export_swift::{Media, clips_port, prefix_param, videos};
use super::{py_json_indent, read_rows, str_field, write_file};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct ExportLlamaFactory;

const KIND: &str = "expstar.export_llamafactory";

fn turns(row: &Value) -> Result<(String, Vec<(String, String)>)> {
    let msgs = row
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            OperatorError::data(
                KIND,
                format!("row `{}` has no `messages` list", str_field(row, "id")),
            )
        })?;
    let mut system = String::new();
    let mut out = Vec::new();
    for m in msgs {
        let role = str_field(m, "role");
        let content = str_field(m, "content").to_string();
        match role {
            "system" => system = content,
            "user" | "assistant" => out.push((role.to_string(), content)),
            other => {
                return Err(OperatorError::data(
                    KIND,
                    format!("row `{}`: unknown role `{other}`", str_field(row, "id")),
                ));
            }
        }
    }
    Ok((system, out))
}

pub fn convert(row: &Value, format: &str, prefix: &str) -> Result<Value> {
    let (system, mut turns) = turns(row)?;
    let rejected = row.get("rejected_response").and_then(Value::as_str);
    let vids = videos(row, prefix);
    let chosen = if rejected.is_some() {
        match turns.pop() {
            Some((r, c)) if r == "assistant" => Some(c),
            _ => {
                return Err(OperatorError::data(
                    KIND,
                    format!(
                        "DPO row `{}` does not end with an assistant turn",
                        str_field(row, "id")
                    ),
                ));
            }
        }
    } else {
        None
    };
    let mut m = Map::new();
    if format == "sharegpt" {
        let conv: Vec<Value> = turns
            .iter()
            .map(|(r, c)| json!({"from": if r == "user" { "human" } else { "gpt" }, "value": c}))
            .collect();
        m.insert("conversations".into(), Value::Array(conv));
        if let (Some(c), Some(r)) = (&chosen, rejected) {
            m.insert("chosen".into(), json!({"from": "gpt", "value": c}));
            m.insert("rejected".into(), json!({"from": "gpt", "value": r}));
        }
    } else {
        let (instruction, output) = if chosen.is_some() {
            (turns.pop().map(|t| t.1).unwrap_or_default(), None)
        } else {
            let out = turns.pop().map(|t| t.1).unwrap_or_default();
            (turns.pop().map(|t| t.1).unwrap_or_default(), Some(out))
        };
        let history: Vec<Value> = turns
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| json!([c[0].1, c[1].1]))
            .collect();
        m.insert("instruction".into(), json!(instruction));
        m.insert("input".into(), json!(""));
        match (output, &chosen, rejected) {
            (Some(o), _, _) => {
                m.insert("output".into(), json!(o));
            }
            (None, Some(c), Some(r)) => {
                m.insert("chosen".into(), json!(c));
                m.insert("rejected".into(), json!(r));
            }
            _ => {}
        }
        m.insert("history".into(), Value::Array(history));
    }
    m.insert("system".into(), json!(system));
    m.insert("videos".into(), vids);
    Ok(Value::Object(m))
}

pub fn dataset_info(name: &str, format: &str, ranking: bool) -> Value {
    let mut columns = Map::new();
    if format == "sharegpt" {
        columns.insert("messages".into(), json!("conversations"));
    } else {
        columns.insert("prompt".into(), json!("instruction"));
        columns.insert("query".into(), json!("input"));
        if !ranking {
            columns.insert("response".into(), json!("output"));
        }
        columns.insert("history".into(), json!("history"));
    }
    if ranking {
        columns.insert("chosen".into(), json!("chosen"));
        columns.insert("rejected".into(), json!("rejected"));
    }
    columns.insert("system".into(), json!("system"));
    columns.insert("videos".into(), json!("videos"));
    let mut entry = Map::new();
    entry.insert("file_name".into(), json!(format!("{name}.json")));
    entry.insert("formatting".into(), json!(format));
    if ranking {
        entry.insert("ranking".into(), json!(true));
    }
    entry.insert("columns".into(), Value::Object(columns));
    if format == "sharegpt" {
        entry.insert(
            "tags".into(),
            json!({"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}),
        );
    }
    json!({ name: Value::Object(entry) })
}

impl Operator for ExportLlamaFactory {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        // 2: relative video paths and the clips carried in the directory (no `video_root`).
        // 3: rows travel as Parquet tables, not JSON Lines (docs/decisions.md).
        3
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new("rows", PortType::Table, "rows (SFT or DPO), a rows table"),
                clips_port(),
            ]),
            outputs: Ports::Fixed(vec![Port::new(
                "dataset",
                PortType::Dir,
                "<name>.json, dataset_info.json and the clips at the relative paths the rows name",
            )]),
            params: vec![
                ParamSpec::with_default(
                    "name",
                    ParamKind::String,
                    json!("expstar"),
                    "dataset name (file and dataset_info key)",
                ),
                ParamSpec::with_default(
                    "format",
                    ParamKind::String,
                    json!("sharegpt"),
                    "`sharegpt` or `alpaca`",
                ),
                prefix_param(),
            ],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        let p = Params::new(KIND, params);
        let mut out = problems(p.choice("format", &["sharegpt", "alpaca"]));
        out.extend(problems(p.str("name")));
        out
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let p = Params::new(KIND, ctx.params());
        let format = p.choice("format", &["sharegpt", "alpaca"])?;
        let name = p.str("name")?;
        let prefix = p.str("path_prefix")?;
        let rows = read_rows(&ctx.input("rows")?.path)?;
        let ranking = rows.iter().any(|r| r.get("rejected_response").is_some());
        if ranking && rows.iter().any(|r| r.get("rejected_response").is_none()) {
            return Err(OperatorError::data(KIND, "some rows have `rejected_response` and some do not; export SFT and DPO rows separately").into());
        }
        let dir = &ctx.output("dataset")?.path;
        std::fs::create_dir_all(dir)
            .map_err(|e| OperatorError::io("cannot create directory", dir, e))?;
        let clips = ctx.inputs().get("clips").map(|c| c.path.clone());
        let mut media = Media::new(KIND, clips.as_deref(), dir);
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let e = convert(r, format, prefix)?;
            media.carry(r, &e)?;
            out.push(e);
        }
        write_file(
            &dir.join(format!("{name}.json")),
            py_json_indent(&Value::Array(out), 2).as_bytes(),
        )?;
        write_file(
            &dir.join("dataset_info.json"),
            py_json_indent(&dataset_info(name, format, ranking), 2).as_bytes(),
        )?;
        ctx.log(&format!(
            "{} rows as {format}{}; {}",
            rows.len(),
            if ranking { " (preference)" } else { "" },
            media.summary()
        ));
        Ok(())
    }
}
