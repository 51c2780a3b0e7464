//! `expstar.eval_rows`: `{labels, response}` rows → `{"gt": {"feedback": labels}, "pred":
//! {"feedback": response}}` (spec §G input conversion, DAG node 31). A row lacking either
//! field is an error naming its line.
//!
//! With the `test` input (the test rows the results came from), each row also gets
//! `data_type`: the subject of the test row with the same `id`, read from its clip path
//! `…/<subject>/<unit>/video/<NN>-<title>/<stem>.mp4`, so `score.text` with `group_by:
//! data_type` scores each subject as `batch_evaluate.py` scores each `data_type`.

use std::collections::HashMap;

use expflow_engine::{
    Context, Determinism, OpError, Operator, Port, PortType, Ports, Resources, Signature,
};
use serde_json::{Value, json};

use super::{read_rows, write_rows};
use crate::error::OperatorError;

pub struct EvalRows;

const KIND: &str = "expstar.eval_rows";

/// The subject of each test row by id, from `videos[0]` = `…/<subject>/<unit>/video/…`.
fn subjects(test: &[Value]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for row in test {
        let (Some(id), Some(video)) = (
            row.get("id").and_then(Value::as_str),
            row.get("videos")
                .and_then(Value::as_array)
                .and_then(|v| v.first())
                .and_then(Value::as_str),
        ) else {
            continue;
        };
        let parts: Vec<&str> = video.split('/').filter(|p| !p.is_empty()).collect();
        if parts.len() >= 5 && parts[parts.len() - 3] == "video" {
            out.entry(id.to_string())
                .or_insert_with(|| parts[parts.len() - 5].to_string());
        }
    }
    out
}

impl Operator for EvalRows {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        // 2: rows travel as Parquet tables, not JSON Lines (docs/decisions.md).
        2
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new(
                    "rows",
                    PortType::Table,
                    "{labels, response} rows, a rows table",
                ),
                Port::new(
                    "test",
                    PortType::Table,
                    "the test rows {id, videos} the results came from: adds `data_type` (the subject)",
                )
                .optional(),
            ]),
            outputs: Ports::Fixed(vec![Port::new(
                "rows",
                PortType::Table,
                "{gt, pred} rows (struct columns gt.feedback, pred.feedback), a rows table",
            )]),
            params: vec![],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let rows = read_rows(&ctx.input("rows")?.path)?;
        let subjects = match ctx.inputs().get("test") {
            Some(t) => Some(subjects(&read_rows(&t.path)?)),
            None => None,
        };
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let field = |k: &str| {
                row.get(k).and_then(Value::as_str).ok_or_else(|| {
                    OperatorError::data(KIND, format!("row {}: no string `{k}`", i + 1))
                })
            };
            let mut r = json!({"gt": {"feedback": field("labels")?}, "pred": {"feedback": field("response")?}});
            if let Some(subjects) = &subjects {
                let id = row.get("id").and_then(Value::as_str).unwrap_or_default();
                let subject = subjects.get(id).ok_or_else(|| {
                    OperatorError::data(
                        KIND,
                        format!(
                            "row {}: id `{id}` is not among the `test` rows (with a subject in \
                             its clip path); connect the test rows these results came from",
                            i + 1
                        ),
                    )
                })?;
                r["data_type"] = json!(subject);
            }
            out.push(r);
        }
        write_rows(&ctx.output("rows")?.path, &out)?;
        Ok(())
    }
}
