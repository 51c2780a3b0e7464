//! The scheduler in-process, with a test operator: caching, matrix expansion, and sweep
//! points whose keys coincide running once.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use expflow_engine::{
    CancelToken, Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType,
    Ports, Registry, Resources, RunOptions, Signature, Workspace, compile, workspace,
};
use serde_json::json;

static RUNS: AtomicUsize = AtomicUsize::new(0);

struct Echo;

impl Operator for Echo {
    fn kind(&self) -> &'static str {
        "test.echo"
    }
    fn version(&self) -> u32 {
        1
    }
    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Open(PortType::File),
            outputs: Ports::Fixed(vec![Port::new("out", PortType::File, "text")]),
            params: vec![
                ParamSpec::with_default("text", ParamKind::Any, json!(""), "what to write"),
                ParamSpec::with_default("lr", ParamKind::Float, json!(0.1), "ignored"),
            ],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }
    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        RUNS.fetch_add(1, Ordering::SeqCst);
        let mut text = ctx.params()["text"].to_string();
        for i in ctx.inputs().values() {
            text.push_str(&std::fs::read_to_string(&i.path)?);
        }
        std::fs::write(&ctx.output("out")?.path, text)?;
        Ok(())
    }
}

fn run(dir: &Path, yaml: &str) -> expflow_engine::RunSummary {
    let mut reg = Registry::new();
    reg.register(Arc::new(Echo));
    let p = compile::compile(&dir.join("p.yaml"), yaml, &reg, &[]).expect("compiles");
    let ws = Workspace::open(&dir.join(".expflow"), workspace::holder("test", &p.name, None)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = RunOptions { jobs: 4, ..RunOptions::default() };
    rt.block_on(expflow_engine::run(&ws, &p, &workspace::new_run_id(), &opts, CancelToken::new())).unwrap()
}

const SWEEP: &str = r#"
pipeline: sweep
params: {word: hi}
nodes:
  src:
    op: test.echo
    params: {text: "${params.word}"}
  prep:
    op: test.echo
    matrix: {lr: [0.1, 0.2, 0.3]}
    in: {x: src.out}
    params: {text: same for every lr}
  train:
    op: test.echo
    matrix: {lr: [0.1, 0.2, 0.3]}
    in: {x: prep.out}
    params: {text: "lr ${matrix.lr}", lr: "${matrix.lr}"}
"#;

#[test]
fn matrix_points_with_equal_keys_run_once_and_reruns_are_cached() {
    let dir = tempfile::tempdir().unwrap();
    let before = RUNS.load(Ordering::SeqCst);
    let s = run(dir.path(), SWEEP);
    assert_eq!(s.status, "ok", "{:?}", s.errors);
    // src, three train points, and prep: 3 instances with one key → executed once.
    let mut executed = s.executed.clone();
    executed.sort();
    assert_eq!(executed.iter().filter(|n| n.starts_with("prep[")).count(), 1, "{executed:?}");
    assert_eq!(s.cached.iter().filter(|n| n.starts_with("prep[")).count(), 2);
    assert_eq!(executed.iter().filter(|n| n.starts_with("train[")).count(), 3);
    assert!(executed.contains(&"train[lr=0.2]".to_string()), "{executed:?}");
    assert_eq!(RUNS.load(Ordering::SeqCst) - before, 5);
    let again = run(dir.path(), SWEEP);
    assert!(again.executed.is_empty());
    assert_eq!(again.cached.len(), 7);
}
