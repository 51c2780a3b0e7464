//! Resumable node state: what a failed attempt leaves in `Context::resume_dir` is found by the
//! next run of the same key, never recorded, and removed once the outputs are stored; and an
//! operator's parameters can change its declared determinism.

use std::path::Path;
use std::sync::Arc;

use expflow_engine::{
    CancelToken, Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType,
    Ports, Registry, Resources, RunOptions, Signature, Workspace, compile, workspace,
};
use serde_json::{Map, Value, json};

/// Counts to `steps`, one step per attempt at most `per_attempt` steps, keeping the count in
/// its resume directory: fails until the count is reached, then writes it.
struct Counter;

impl Operator for Counter {
    fn kind(&self) -> &'static str {
        "test.counter"
    }
    fn version(&self) -> u32 {
        1
    }
    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![]),
            outputs: Ports::Fixed(vec![Port::new("out", PortType::File, "the count")]),
            params: vec![
                ParamSpec::with_default("steps", ParamKind::Int, json!(5), "steps to count"),
                ParamSpec::with_default("per_attempt", ParamKind::Int, json!(2), "steps per run"),
                ParamSpec::with_default("temperature", ParamKind::Float, json!(0.0), "sampling"),
            ],
            determinism: Determinism::Nondeterministic,
            resources: Resources::default(),
        }
    }
    fn determinism(&self, params: &Map<String, Value>) -> Determinism {
        if params.get("temperature").and_then(Value::as_f64) == Some(0.0) {
            Determinism::Deterministic
        } else {
            Determinism::Nondeterministic
        }
    }
    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let state = ctx.resume_dir()?.join("count");
        let mut count: u64 = std::fs::read_to_string(&state)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (steps, per) = (ctx.param_u64("steps")?, ctx.param_u64("per_attempt")?);
        ctx.log(&format!("resuming at {count}"));
        for _ in 0..per {
            if count == steps {
                break;
            }
            count += 1;
            std::fs::write(&state, count.to_string())?;
        }
        if count < steps {
            return Err(format!("interrupted at {count}").into());
        }
        std::fs::write(&ctx.output("out")?.path, count.to_string())?;
        Ok(())
    }
}

const PIPE: &str = r#"
pipeline: resume
nodes:
  count:
    op: test.counter
    params: {steps: 5, per_attempt: 2}
  sampled:
    op: test.counter
    params: {steps: 1, per_attempt: 1, temperature: 0.7}
"#;

fn run(dir: &Path) -> expflow_engine::RunSummary {
    let mut reg = Registry::new();
    reg.register(Arc::new(Counter));
    let p = compile::compile(&dir.join("p.yaml"), PIPE, &reg, &[]).expect("compiles");
    let greedy = p.nodes.iter().find(|n| n.name == "count").unwrap();
    assert_eq!(greedy.determinism, Determinism::Deterministic);
    let sampled = p.nodes.iter().find(|n| n.name == "sampled").unwrap();
    assert_eq!(sampled.determinism, Determinism::Nondeterministic);
    let ws = Workspace::open(
        &dir.join(".expflow"),
        workspace::holder("test", &p.name, None),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(expflow_engine::run(
        &ws,
        &p,
        &workspace::new_run_id(),
        &RunOptions::default(),
        CancelToken::new(),
    ))
    .unwrap()
}

fn resume_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir.join(".expflow/resume"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn failed_attempts_leave_state_that_the_next_run_resumes_and_success_removes() {
    let dir = tempfile::tempdir().unwrap();
    let first = run(dir.path());
    assert_eq!(first.status, "failed", "{first:?}");
    assert_eq!(
        resume_entries(dir.path()),
        1,
        "the failed node keeps its state"
    );
    let second = run(dir.path());
    assert_eq!(second.status, "failed");
    let third = run(dir.path());
    assert_eq!(third.status, "ok", "{:?}", third.errors);
    assert!(third.executed.contains(&"count".to_string()));
    assert_eq!(
        resume_entries(dir.path()),
        0,
        "stored outputs end the state"
    );
    let again = run(dir.path());
    assert!(again.executed.is_empty(), "{again:?}");
}
