//! `expstar.dpo_pairs`: DPO pairs from scored candidate responses (spec §C.6, DAG node 25).
//!
//! Candidates are `{"id", "response", "reward"}` rows; `reward` counts as positive when it
//! is truthy (as in Python: true, a non-zero number, a non-empty string). For each id (in
//! first-seen order) every positive × negative pair gives `{"id", "messages": [system, user,
//! assistant = positive], "videos": [video], "rejected_response": negative}` (ms-swift's
//! RLHF format). System, user and video come from the rows with that id (the last one wins;
//! the system falls back to "You are a helpful AI assistant"). An id missing from the rows
//! is an error naming it, or with `missing_ids: skip` is logged and left out (for
//! candidates sampled over more rows than the ones given, e.g. before a re-split).

use std::collections::HashMap;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use serde_json::{Map, Value, json};

use super::{first_video, message, read_rows, str_field, write_rows};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct DpoPairs;

const KIND: &str = "expstar.dpo_pairs";

fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|x| x != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

/// The pairs, and the candidate ids not found among the rows (when `skip_missing`).
pub fn pairs(
    candidates: &[Value],
    rows: &[Value],
    skip_missing: bool,
) -> Result<(Vec<Value>, Vec<String>)> {
    let mut by_id: HashMap<&str, &Value> = HashMap::new();
    for r in rows {
        by_id.insert(str_field(r, "id"), r);
    }
    let mut order: Vec<&str> = Vec::new();
    let mut groups: HashMap<&str, (Vec<&str>, Vec<&str>)> = HashMap::new();
    for c in candidates {
        let id = str_field(c, "id");
        if !groups.contains_key(id) {
            order.push(id);
        }
        let g = groups.entry(id).or_default();
        let resp = str_field(c, "response");
        if truthy(c.get("reward")) {
            g.0.push(resp);
        } else {
            g.1.push(resp);
        }
    }
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for id in order {
        let (pos, neg) = &groups[id];
        if pos.is_empty() || neg.is_empty() {
            continue;
        }
        let Some(row) = by_id.get(id) else {
            if skip_missing {
                missing.push(id.to_string());
                continue;
            }
            return Err(OperatorError::data(
                KIND,
                format!("candidate id `{id}` is not among the rows"),
            ));
        };
        let system = message(row, "system").unwrap_or("You are a helpful AI assistant");
        let user = message(row, "user").unwrap_or("");
        let video = first_video(row).unwrap_or("");
        for p in pos {
            for n in neg {
                out.push(json!({
                    "id": id,
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": user},
                        {"role": "assistant", "content": p},
                    ],
                    "videos": [video],
                    "rejected_response": n,
                }));
            }
        }
    }
    Ok((out, missing))
}

fn skip_missing(map: &Map<String, Value>) -> Result<bool> {
    Ok(Params::new(KIND, map).choice("missing_ids", &["error", "skip"])? == "skip")
}

impl Operator for DpoPairs {
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
                    "candidates",
                    PortType::Table,
                    "{id, response, reward} rows, a rows table (a hand-made JSON Lines file through expstar.from_jsonl)",
                ),
                Port::new(
                    "rows",
                    PortType::Table,
                    "the rows the ids refer to (merged train), a rows table",
                ),
            ]),
            outputs: Ports::Fixed(vec![Port::new(
                "pairs",
                PortType::Table,
                "DPO rows {id, messages, videos, rejected_response}, a rows table",
            )]),
            params: vec![ParamSpec::with_default(
                "missing_ids",
                ParamKind::String,
                json!("error"),
                "a candidate id not among the rows: `error` (the original) or `skip`",
            )],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(skip_missing(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let skip = skip_missing(ctx.params())?;
        let candidates = read_rows(&ctx.input("candidates")?.path)?;
        let rows = read_rows(&ctx.input("rows")?.path)?;
        let (out, missing) = pairs(&candidates, &rows, skip)?;
        for id in &missing {
            ctx.log(&format!(
                "candidate id `{id}` is not among the rows; skipped"
            ));
        }
        ctx.log(&format!(
            "{} candidates → {} pairs",
            candidates.len(),
            out.len()
        ));
        write_rows(&ctx.output("pairs")?.path, &out)?;
        Ok(())
    }
}
