//! `expstar.eval_rows`: `{labels, response}` rows → `{"gt": {"feedback": labels}, "pred":
//! {"feedback": response}}` (spec §G input conversion, DAG node 31). A row lacking either
//! field is an error naming its line.

use expflow_engine::{
    Context, Determinism, OpError, Operator, Port, PortType, Ports, Resources, Signature,
};
use serde_json::{Value, json};

use super::{read_jsonl, write_jsonl};
use crate::error::OperatorError;

pub struct EvalRows;

const KIND: &str = "expstar.eval_rows";

impl Operator for EvalRows {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new(
                "rows",
                PortType::File,
                "{labels, response} rows, JSON Lines",
            )]),
            outputs: Ports::Fixed(vec![Port::new(
                "rows",
                PortType::File,
                "{gt, pred} rows, JSON Lines",
            )]),
            params: vec![],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let rows = read_jsonl(&ctx.input("rows")?.path)?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let field = |k: &str| {
                row.get(k).and_then(Value::as_str).ok_or_else(|| {
                    OperatorError::data(KIND, format!("row {}: no string `{k}`", i + 1))
                })
            };
            out.push(json!({"gt": {"feedback": field("labels")?}, "pred": {"feedback": field("response")?}}));
        }
        write_jsonl(&ctx.output("rows")?.path, &out)?;
        Ok(())
    }
}
