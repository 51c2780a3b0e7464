//! `expstar.merge`: concatenates rows tables (spec §C.4, DAG node 12), inputs in port name
//! order, rows in table order; the merged table's columns follow [`super::rows_table`] (a
//! key that some inputs lack becomes a JSON-text column). Writes `merged` and
//! `merge_stats.json` (rows per input, named `lines` as the original's; no absolute paths).

use expflow_engine::{
    Context, Determinism, OpError, Operator, Port, PortType, Ports, Resources, Signature,
};
use serde_json::{Map, json};

use super::{py_json_indent, read_rows, write_file, write_rows};

pub struct Merge;

const KIND: &str = "expstar.merge";

impl Operator for Merge {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        // 2: rows travel as Parquet tables, not JSON Lines (docs/decisions.md).
        2
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Open(PortType::Table),
            outputs: Ports::Fixed(vec![
                Port::new("merged", PortType::Table, "the concatenation, a rows table"),
                Port::new("stats", PortType::File, "merge_stats.json"),
            ]),
            params: vec![],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let mut out = Vec::new();
        let mut per = Map::new();
        for (port, input) in ctx.inputs() {
            let rows = read_rows(&input.path)?;
            per.insert(port.clone(), json!(rows.len()));
            out.extend(rows);
        }
        let stats = json!({"files_merged": per.len(), "lines": per, "total_lines": out.len()});
        ctx.log(&format!("{} rows from {} inputs", out.len(), per.len()));
        write_rows(&ctx.output("merged")?.path, &out)?;
        write_file(
            &ctx.output("stats")?.path,
            py_json_indent(&stats, 2).as_bytes(),
        )?;
        Ok(())
    }
}
