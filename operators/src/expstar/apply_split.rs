//! `expstar.apply_split`: applies the assignment of `expstar.split` to another row set (the
//! self-RAG rows), so both sets get the same partition (spec §C.3: "compute once, apply to
//! both"). A group the assignment lacks (an experiment none of whose steps gave a baseline
//! row) goes to train and is logged.

use std::collections::BTreeMap;

use expflow_engine::{
    Context, Determinism, OpError, Operator, Port, PortType, Ports, Resources, Signature,
};

use super::split::apply;
use super::{read_json, read_jsonl, write_jsonl};
use crate::error::OperatorError;

pub struct ApplySplit;

const KIND: &str = "expstar.apply_split";

impl Operator for ApplySplit {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new("rows", PortType::File, "rows, JSON Lines"),
                Port::new(
                    "assignment",
                    PortType::File,
                    "the assignment from expstar.split",
                ),
            ]),
            outputs: Ports::Fixed(vec![
                Port::new("train", PortType::File, "train rows, JSON Lines"),
                Port::new("test", PortType::File, "test rows, JSON Lines"),
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
        let rows = read_jsonl(&ctx.input("rows")?.path)?;
        let (tr, te, unknown) = apply(rows, &assignment);
        for key in &unknown {
            ctx.log(&format!(
                "group {key} is not in the assignment; its rows go to train"
            ));
        }
        ctx.log(&format!("{} train rows, {} test rows", tr.len(), te.len()));
        write_jsonl(&ctx.output("train")?.path, &tr)?;
        write_jsonl(&ctx.output("test")?.path, &te)?;
        Ok(())
    }
}
