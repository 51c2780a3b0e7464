//! `mac.export_answers`: a table → the grader's file `[{"id": …, "output": "A"}, …]`
//! (spec "What an engine must speak" §8), one entry per row in row order.
//!
//! `column` names where the letter comes from: `answer` (the gold letters: an answer key)
//! or a column of model outputs (e.g. `predict` joined from `vllm_infer.py`); with
//! `extract`, free text goes through [`super::extract_answer`] and unparsable text becomes
//! `"None"` (judged wrong, like MAC's analyzer). `task` keeps only one task's rows (from the
//! `task` column).

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use polars::prelude::*;
use serde_json::{Map, Value, json};

use super::{LETTERS, extract_answer, pretty, write_file};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};
use crate::table_io::read_table;

pub struct ExportAnswers;

const KIND: &str = "mac.export_answers";

struct Config {
    id_column: String,
    column: String,
    extract: bool,
    task: Option<&'static str>,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let task = match p.get("task") {
            None => None,
            Some(_) => Some(p.choice("task", &["image2text", "text2image"])?),
        };
        Ok(Config {
            id_column: p.str("id_column")?.to_string(),
            column: p.str("column")?.to_string(),
            extract: p.bool("extract")?,
            task,
        })
    }
}

fn text_column(df: &DataFrame, name: &str, param: &'static str) -> Result<Vec<Option<String>>> {
    let col = df.column(name).map_err(|_| OperatorError::UnknownColumn {
        op: KIND,
        param,
        column: name.to_string(),
        table: "the input".into(),
        available: df
            .get_column_names()
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    let col = col
        .cast(&DataType::String)
        .map_err(|e| OperatorError::polars(KIND, format!("reading `{name}` as text"), e))?;
    Ok(col
        .str()
        .map_err(|e| OperatorError::polars(KIND, format!("reading `{name}`"), e))?
        .iter()
        .map(|v| v.map(str::to_owned))
        .collect())
}

/// The grader entries of a table.
fn answers(df: &DataFrame, cfg: &Config) -> Result<Vec<Value>> {
    let ids = text_column(df, &cfg.id_column, "id_column")?;
    let vals = text_column(df, &cfg.column, "column")?;
    let tasks = match cfg.task {
        Some(_) => Some(text_column(df, "task", "task")?),
        None => None,
    };
    let mut out = Vec::new();
    for i in 0..df.height() {
        if let (Some(want), Some(tasks)) = (cfg.task, &tasks)
            && tasks[i].as_deref() != Some(want)
        {
            continue;
        }
        let id = ids[i].clone().ok_or_else(|| {
            OperatorError::data(KIND, format!("row {i}: `{}` is null", cfg.id_column))
        })?;
        let text = vals[i].clone().unwrap_or_default();
        let letter = if cfg.extract {
            extract_answer(&text)
                .map(|k| LETTERS[k].to_string())
                .unwrap_or_else(|| "None".into())
        } else {
            text
        };
        out.push(json!({"id": id, "output": letter}));
    }
    Ok(out)
}

impl Operator for ExportAnswers {
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
                "items or predictions",
            )]),
            outputs: Ports::Fixed(vec![Port::new(
                "file",
                PortType::File,
                "a JSON array of {\"id\", \"output\"}",
            )]),
            params: vec![
                ParamSpec::with_default(
                    "id_column",
                    ParamKind::String,
                    json!("id"),
                    "the id column",
                ),
                ParamSpec::with_default(
                    "column",
                    ParamKind::String,
                    json!("answer"),
                    "the column holding the letter or the model's text",
                ),
                ParamSpec::with_default(
                    "extract",
                    ParamKind::Bool,
                    json!(true),
                    "find the final letter in free text; unparsable gives \"None\"",
                ),
                ParamSpec::with_default(
                    "task",
                    ParamKind::String,
                    Value::Null,
                    "keep only image2text or text2image rows",
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
        let entries = answers(&df, &cfg)?;
        let none = entries.iter().filter(|e| e["output"] == "None").count();
        ctx.log(&format!("{} answers, {none} unparsable", entries.len()));
        write_file(&ctx.output("file")?.path, &pretty(&Value::Array(entries)))?;
        Ok(())
    }
}
