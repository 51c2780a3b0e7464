//! `expstar.merge`: concatenates JSON Lines files (spec §C.4, DAG node 12), inputs in port
//! name order, checking that every line is JSON. Lines are copied byte for byte, each
//! ending with a newline (a missing final newline is added). Writes `merged` and
//! `merge_stats.json` (lines per input; no absolute paths).

use expflow_engine::{
    Context, Determinism, OpError, Operator, Port, PortType, Ports, Resources, Signature,
};
use serde_json::{Map, Value, json};

use super::{py_json_indent, write_file};
use crate::error::OperatorError;

pub struct Merge;

const KIND: &str = "expstar.merge";

impl Operator for Merge {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Open(PortType::File),
            outputs: Ports::Fixed(vec![
                Port::new("merged", PortType::File, "the concatenation, JSON Lines"),
                Port::new("stats", PortType::File, "merge_stats.json"),
            ]),
            params: vec![],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let mut out = String::new();
        let mut per = Map::new();
        let mut total = 0u64;
        for (port, input) in ctx.inputs() {
            let text = std::fs::read_to_string(&input.path)
                .map_err(|e| OperatorError::io("cannot read", &input.path, e))?;
            let mut n = 0u64;
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                serde_json::from_str::<Value>(line).map_err(|e| {
                    OperatorError::data(
                        KIND,
                        format!("input `{port}` line {}: not JSON: {e}", i + 1),
                    )
                })?;
                out.push_str(line);
                out.push('\n');
                n += 1;
            }
            per.insert(port.clone(), json!(n));
            total += n;
        }
        let stats = json!({"files_merged": per.len(), "lines": per, "total_lines": total});
        ctx.log(&format!("{total} lines from {} inputs", per.len()));
        write_file(&ctx.output("merged")?.path, out.as_bytes())?;
        write_file(
            &ctx.output("stats")?.path,
            py_json_indent(&stats, 2).as_bytes(),
        )?;
        Ok(())
    }
}
