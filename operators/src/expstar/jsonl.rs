//! The JSON Lines boundary of the ExpStar rows (`docs/expstar.md`, "Operators"):
//!
//! - `expstar.from_jsonl`: a JSON Lines file of rows (a hand-made candidates file, the
//!   results of an outside inference run) → a rows table ([`super::rows_table`]);
//! - `expstar.to_jsonl`: a rows table → JSON Lines written like Python's
//!   `json.dumps(ensure_ascii=False)`, one row a line, each ending with a newline: the bytes
//!   the original scripts write (`baseline_train.jsonl`, `predictions.jsonl`, …).

use expflow_engine::{
    Context, Determinism, OpError, Operator, Port, PortType, Ports, Resources, Signature,
};

use super::{read_jsonl, read_rows, write_jsonl, write_rows};

pub struct FromJsonl;
pub struct ToJsonl;

const FROM: &str = "expstar.from_jsonl";
const TO: &str = "expstar.to_jsonl";

impl Operator for FromJsonl {
    fn kind(&self) -> &'static str {
        FROM
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new(
                "file",
                PortType::File,
                "rows, JSON Lines (one JSON object a line; blank lines are skipped)",
            )]),
            outputs: Ports::Fixed(vec![Port::new("rows", PortType::Table, "a rows table")]),
            params: vec![],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let rows = read_jsonl(&ctx.input("file")?.path)?;
        ctx.log(&format!("{} rows", rows.len()));
        write_rows(&ctx.output("rows")?.path, &rows)?;
        Ok(())
    }
}

impl Operator for ToJsonl {
    fn kind(&self) -> &'static str {
        TO
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new("rows", PortType::Table, "a rows table")]),
            outputs: Ports::Fixed(vec![Port::new(
                "file",
                PortType::File,
                "the rows as JSON Lines in Python's json.dumps(ensure_ascii=False) style",
            )]),
            params: vec![],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let rows = read_rows(&ctx.input("rows")?.path)?;
        ctx.log(&format!("{} rows", rows.len()));
        write_jsonl(&ctx.output("file")?.path, &rows)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{InputBytes, run_op};
    use serde_json::json;

    #[test]
    fn jsonl_round_trips_byte_for_byte_through_a_table() {
        let text = concat!(
            r#"{"messages": [{"role": "user", "content": "<video>化学 \"x\"\n"}], "videos": ["/path/to/a.mp4"], "id": "c_1"}"#,
            "\n\n",
            r#"{"messages": [], "videos": [], "id": "c_2", "note": {"k": [1, 2.5, null]}}"#,
            "\n",
        );
        let table = run_op(
            &FromJsonl,
            &[InputBytes {
                port: "file",
                ty: PortType::File,
                bytes: text.as_bytes().to_vec(),
            }],
            json!({}),
            &[],
        )
        .unwrap();
        let file = run_op(
            &ToJsonl,
            &[InputBytes {
                port: "rows",
                ty: PortType::Table,
                bytes: table["rows"].clone(),
            }],
            json!({}),
            &[],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(file["file"].clone()).unwrap(),
            text.replace("\n\n", "\n")
        );
    }
}
