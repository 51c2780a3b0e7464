//! `expstar.postprocess`: multi-turn inference results → evaluation rows (spec §F.3
//! "post-processing", DAG node 29).
//!
//! `full_dialogue` = the round contents joined by one space; `response` = `full_dialogue`
//! with `[Retrieval]`, `[No Retrieval]`, `[Relevant]` and `[Irrelevant]` removed (which
//! leaves the `\n \n` the Demo shows); `labels` = the last assistant message of `gt`; `id`
//! = the row's `id` (or `row_<i>` when it has none, logged); the input row is kept under
//! `evaluation_data` (without its `id`).

use expflow_engine::{
    Context, Determinism, OpError, Operator, Port, PortType, Ports, Resources, Signature,
};
use serde_json::{Value, json};

use super::prompts::{IRRELEVANT, NO_RETRIEVAL, RELEVANT, RETRIEVAL};
use super::{read_rows, write_rows};

pub struct Postprocess;

const KIND: &str = "expstar.postprocess";

/// One result row → (evaluation row, whether the id was made up).
pub fn convert(row: &Value, index: usize) -> (Value, bool) {
    let rounds: Vec<&str> = row
        .get("rounds")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| r.get("content").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let full = rounds.join(" ");
    let mut response = full.clone();
    for token in [RETRIEVAL, NO_RETRIEVAL, RELEVANT, IRRELEVANT] {
        response = response.replace(token, "");
    }
    let labels = row
        .get("gt")
        .and_then(Value::as_array)
        .and_then(|msgs| {
            msgs.iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        })
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let (id, made_up) = match row.get("id").and_then(Value::as_str) {
        Some(id) => (id.to_string(), false),
        None => (format!("row_{index}"), true),
    };
    let mut data = row.clone();
    if let Some(m) = data.as_object_mut() {
        m.shift_remove("id");
    }
    (
        json!({"id": id, "response": response, "full_dialogue": full, "labels": labels, "evaluation_data": data}),
        made_up,
    )
}

impl Operator for Postprocess {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        // 2: rows travel as Parquet tables, not JSON Lines (docs/decisions.md).
        2
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new(
                "results",
                PortType::Table,
                "{rounds, gt, …} rows, a rows table (a results file through expstar.from_jsonl)",
            )]),
            outputs: Ports::Fixed(vec![Port::new(
                "rows",
                PortType::Table,
                "{id, response, full_dialogue, labels, evaluation_data}, a rows table",
            )]),
            params: vec![],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let rows = read_rows(&ctx.input("results")?.path)?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let (r, made_up) = convert(row, i);
            if made_up {
                ctx.log(&format!("row {i} has no id; named row_{i}"));
            }
            out.push(r);
        }
        write_rows(&ctx.output("rows")?.path, &out)?;
        Ok(())
    }
}
