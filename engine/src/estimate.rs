//! What a node that will run is expected to cost, from earlier records: the last record of
//! the same node, else the record of the same operator whose parameters agree most.

use std::collections::BTreeMap;

use expflow_cache::Record;
use serde::Serialize;
use serde_json::Value;

use crate::compile::Pipeline;
use crate::error::Result;
use crate::workspace::Workspace;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Estimate {
    pub seconds: f64,
    /// Seconds × the node's declared GPUs, in hours.
    pub gpu_hours: f64,
    /// Bytes of the outputs.
    pub bytes: u64,
    /// The record it comes from, in words.
    pub basis: String,
}

/// Estimates for nodes `nodes` of `p` (indices), each `None` when nothing comparable ran.
pub struct Estimator<'a> {
    ws: &'a Workspace,
    /// Every record, by operator, read once when a node has no record of its own.
    by_op: Option<BTreeMap<String, Vec<Record>>>,
}

impl<'a> Estimator<'a> {
    pub fn new(ws: &'a Workspace) -> Estimator<'a> {
        Estimator { ws, by_op: None }
    }

    pub fn estimate(&mut self, p: &Pipeline, i: usize) -> Result<Option<Estimate>> {
        let node = &p.nodes[i];
        let gpus = f64::from(node.resources.gpus);
        let of = |r: &Record, basis: String| Estimate {
            seconds: r.duration_ms as f64 / 1000.0,
            gpu_hours: r.duration_ms as f64 / 3_600_000.0 * gpus,
            bytes: r.outputs.values().map(|o| o.size).sum(),
            basis,
        };
        if let Some(last) = self.ws.store.get_last(&p.name, &node.name)?
            && let Some(r) = self.ws.store.get_record(&last)?
        {
            return Ok(Some(of(&r, format!("its run {}", r.run_id))));
        }
        if self.by_op.is_none() {
            let mut by_op: BTreeMap<String, Vec<Record>> = BTreeMap::new();
            for r in self.ws.store.records()? {
                by_op.entry(r.op.clone()).or_default().push(r);
            }
            self.by_op = Some(by_op);
        }
        let Some(candidates) = self.by_op.as_ref().and_then(|m| m.get(node.op.kind())) else {
            return Ok(None);
        };
        let agree = |r: &Record| -> usize {
            match r.material.get("params") {
                Some(Value::Object(params)) => node
                    .params
                    .iter()
                    .filter(|(k, v)| params.get(*k) == Some(*v))
                    .count(),
                _ => 0,
            }
        };
        let best = candidates
            .iter()
            .max_by_key(|r| (agree(r), r.started_ms))
            .map(|r| {
                of(
                    r,
                    format!(
                        "{} of run {} ({} of {} parameters equal)",
                        r.node,
                        r.run_id,
                        agree(r),
                        node.params.len()
                    ),
                )
            });
        Ok(best)
    }
}
