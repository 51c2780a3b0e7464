//! `expstar.apply_split`: applies the assignment of `expstar.split` to another row set (the
//! self-RAG rows), so both sets get the same partition (spec §C.3: "compute once, apply to
//! both"). A group the assignment lacks (an experiment none of whose steps gave a baseline
//! row) goes to train and is logged.

use std::collections::BTreeMap;

use expflow_engine::{
    Context, Determinism, OpError, Operator, Port, PortType, Ports, Resources, Signature,
};

use super::split::apply;
use super::{read_json, read_rows, write_rows};
use crate::error::OperatorError;

pub struct ApplySplit;

const KIND: &str = "expstar.apply_split";

impl Operator for ApplySplit {
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
                Port::new("rows", PortType::Table, "rows, a rows table"),
                Port::new(
                    "assignment",
                    PortType::File,
                    "the assignment from expstar.split",
                ),
            ]),
            outputs: Ports::Fixed(vec![
                Port::new("train", PortType::Table, "train rows, a rows table"),
                Port::new("test", PortType::Table, "test rows, a rows table"),
            ]),
            params: vec![],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let a = read_json(&ctx.input("assignment")?.path)?;
        let obj = a.as_object().ok_or_else(|| {
            OperatorError::data(
                KIND,
                "the assignment must be a JSON object of group → train|test",
            )
        })?;
        let assignment: BTreeMap<String, bool> = obj
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str() != Some("test")))
            .collect();
        let rows = read_rows(&ctx.input("rows")?.path)?;
        let (tr, te, unknown) = apply(rows, &assignment);
        for key in &unknown {
            ctx.log(&format!(
                "group {key} is not in the assignment; its rows go to train"
            ));
        }
        ctx.log(&format!("{} train rows, {} test rows", tr.len(), te.len()));
        write_rows(&ctx.output("train")?.path, &tr)?;
        write_rows(&ctx.output("test")?.path, &te)?;
        Ok(())
    }
}
