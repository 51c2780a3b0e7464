//! Generated pipelines and a trivial operator, shared by the engine bench and the
//! `noop` profiling example.
#![allow(dead_code)]

use std::sync::Arc;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports, Registry,
    Resources, Signature,
};
use serde_json::json;

/// A trivial operator: writes its `value` parameter and the size of its optional input.
pub struct Const;

impl Operator for Const {
    fn kind(&self) -> &'static str {
        "bench.const"
    }
    fn version(&self) -> u32 {
        1
    }
    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Open(PortType::File),
            outputs: Ports::Fixed(vec![Port::new("out", PortType::File, "a few bytes")]),
            params: vec![ParamSpec::with_default(
                "value",
                ParamKind::Any,
                json!(0),
                "written out",
            )],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }
    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let n: u64 = ctx
            .inputs()
            .values()
            .map(|i| std::fs::metadata(&i.path).map_or(0, |m| m.len()))
            .sum();
        std::fs::write(
            &ctx.output("out")?.path,
            format!("{} {n}\n", ctx.params()["value"]),
        )?;
        Ok(())
    }
}

pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(Const));
    r
}

/// A layered DAG: node i reads node i-1 and node i/2 (fan-in 2, depth ~n).
pub fn pipeline_text(n: usize) -> String {
    let mut s = String::with_capacity(n * 80);
    s.push_str("pipeline: gen\nparams:\n  v: 1\nnodes:\n");
    for i in 0..n {
        s.push_str(&format!("  n{i}:\n    op: bench.const\n"));
        if i > 0 {
            let j = i / 2;
            if j != i - 1 {
                s.push_str(&format!("    in: {{a: n{}.out, b: n{j}.out}}\n", i - 1));
            } else {
                s.push_str(&format!("    in: {{a: n{}.out}}\n", i - 1));
            }
        }
        s.push_str(&format!("    params: {{value: \"${{params.v}}-{i}\"}}\n"));
    }
    s
}

/// Independent nodes (width), for raw execution throughput.
pub fn wide_text(n: usize) -> String {
    let mut s = String::with_capacity(n * 60);
    s.push_str("pipeline: wide\nnodes:\n");
    for i in 0..n {
        s.push_str(&format!(
            "  n{i}:\n    op: bench.const\n    params: {{value: {i}}}\n"
        ));
    }
    s
}
