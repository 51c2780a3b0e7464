//! The scheduler in-process, with a test operator: caching, matrix expansion, and sweep
//! points whose keys coincide running once.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use expflow_engine::run::{Prefetch, run_prefetched};
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
    run_with(dir, yaml, None)
}

/// [`run`], with a [`Prefetch`] gathered first for the pipeline name `prefetch` names.
fn run_with(dir: &Path, yaml: &str, prefetch: Option<&str>) -> expflow_engine::RunSummary {
    let mut reg = Registry::new();
    reg.register(Arc::new(Echo));
    let p = compile::compile(&dir.join("p.yaml"), yaml, &reg, &[]).expect("compiles");
    let ws = Workspace::open(
        &dir.join(".expflow"),
        workspace::holder("test", &p.name, None),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = RunOptions {
        jobs: 4,
        ..RunOptions::default()
    };
    let prefetch = prefetch.map(|name| Prefetch::gather(&ws, name).unwrap());
    rt.block_on(run_prefetched(
        &ws,
        &p,
        &workspace::new_run_id(),
        &opts,
        CancelToken::new(),
        prefetch,
    ))
    .unwrap()
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
    assert_eq!(
        executed.iter().filter(|n| n.starts_with("prep[")).count(),
        1,
        "{executed:?}"
    );
    assert_eq!(
        s.cached.iter().filter(|n| n.starts_with("prep[")).count(),
        2
    );
    assert_eq!(
        executed.iter().filter(|n| n.starts_with("train[")).count(),
        3
    );
    assert!(
        executed.contains(&"train[lr=0.2]".to_string()),
        "{executed:?}"
    );
    assert_eq!(RUNS.load(Ordering::SeqCst) - before, 5);
    let again = run(dir.path(), SWEEP);
    assert!(again.executed.is_empty());
    assert_eq!(again.cached.len(), 7);
}

static ITEMS: AtomicUsize = AtomicUsize::new(0);

/// A map-style operator: one output line per input line, each memoised as an item.
struct Upper;

impl Operator for Upper {
    fn kind(&self) -> &'static str {
        "test.upper"
    }
    fn version(&self) -> u32 {
        1
    }
    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new("lines", PortType::File, "text")]),
            outputs: Ports::Fixed(vec![Port::new("out", PortType::File, "text")]),
            params: vec![],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }
    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let text = std::fs::read_to_string(&ctx.input("lines")?.path)?;
        let mut out = Vec::new();
        for line in text.lines() {
            let bytes = ctx.memo(&json!({"line": line}), || {
                ITEMS.fetch_add(1, Ordering::SeqCst);
                Ok(line.to_uppercase().into_bytes())
            })?;
            out.extend(bytes);
            out.push(b'\n');
        }
        std::fs::write(&ctx.output("out")?.path, out)?;
        Ok(())
    }
}

#[test]
fn map_operators_recompute_only_changed_items() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..1000).map(|i| format!("line {i}")).collect();
    std::fs::write(dir.path().join("in.txt"), lines.join("\n")).unwrap();
    let yaml = "pipeline: map\ninputs: {src: in.txt}\nnodes:\n  up:\n    op: test.upper\n    in: {lines: inputs.src}\n";
    let mut reg = Registry::new();
    reg.register(Arc::new(Upper));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let go = || {
        let p = compile::compile(&dir.path().join("p.yaml"), yaml, &reg, &[]).unwrap();
        let ws = Workspace::open(
            &dir.path().join(".expflow"),
            workspace::holder("t", "map", None),
        )
        .unwrap();
        rt.block_on(expflow_engine::run(
            &ws,
            &p,
            &workspace::new_run_id(),
            &RunOptions::default(),
            CancelToken::new(),
        ))
        .unwrap()
    };
    let before = ITEMS.load(Ordering::SeqCst);
    assert_eq!(go().executed, vec!["up".to_string()]);
    assert_eq!(ITEMS.load(Ordering::SeqCst) - before, 1000);
    let mut changed = lines.clone();
    changed[500] = "an edited line".into();
    std::fs::write(dir.path().join("in.txt"), changed.join("\n")).unwrap();
    let before = ITEMS.load(Ordering::SeqCst);
    let s = go();
    assert_eq!(s.executed, vec!["up".to_string()], "the node re-runs");
    assert_eq!(
        ITEMS.load(Ordering::SeqCst) - before,
        1,
        "but computes one item and reuses 999"
    );
}

#[test]
fn pipelines_larger_than_the_default_yaml_budget_compile() {
    // 40,000 nodes of ~8 YAML nodes each: above serde-saphyr's default 250,000-node budget.
    let mut yaml = String::from("pipeline: big\nnodes:\n");
    for i in 0..40_000 {
        yaml.push_str(&format!(
            "  n{i}:\n    op: test.echo\n    params: {{text: \"{i}\", lr: 0.5}}\n"
        ));
    }
    let mut reg = Registry::new();
    reg.register(Arc::new(Echo));
    let p = compile::compile(Path::new("/tmp/big.yaml"), &yaml, &reg, &[]).expect("compiles");
    assert_eq!(p.nodes.len(), 40_000);
    assert_eq!(p.nodes[39_999].name, "n39999");
}

/// Every blob file under `dir` (the CAS), recursively.
fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The second run finds every node cached and keeps each hit's blob stats beside its
/// outputs; a blob changed after that is not trusted on its stat (the stat changed): the
/// third run finds it corrupt and executes the node again, and its dependant with it only if
/// its key changes (it does not: the output is made again with the same bytes).
#[test]
fn a_blob_changed_after_a_cached_run_is_rechecked_and_remade() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "pipeline: hits\nnodes:\n  a:\n    op: test.echo\n    params: {text: apple}\n  b:\n    op: test.echo\n    in: {x: a.out}\n    params: {text: pie}\n";
    assert_eq!(run(dir.path(), yaml).executed.len(), 2);
    let second = run(dir.path(), yaml);
    assert_eq!((second.executed.len(), second.cached.len()), (0, 2));
    let mut blobs = Vec::new();
    files_under(&dir.path().join(".expflow/cas"), &mut blobs);
    let apple = blobs
        .into_iter()
        .find(|b| std::fs::read(b).ok().as_deref() == Some(b"\"apple\"".as_slice()))
        .expect("a's output is stored");
    let mut perm = std::fs::metadata(&apple).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&apple, perm).unwrap();
    std::fs::write(&apple, "\"apricot\"").unwrap();
    let third = run(dir.path(), yaml);
    assert_eq!(third.executed, vec!["a".to_string()]);
    assert_eq!(third.cached, vec!["b".to_string()]);
    assert_eq!(std::fs::read(&apple).unwrap(), b"\"apple\"");
    let fourth = run(dir.path(), yaml);
    assert_eq!((fourth.executed.len(), fourth.cached.len()), (0, 2));
}

/// What the command line looks up while a pipeline compiles (each node's last key and the
/// checked hits of those keys) leads the run to the same decisions as looking them up
/// itself: the edited node executes, the rest is cached. A prefetch made under another
/// pipeline name is ignored, and one gathered before anything ran finds nothing.
#[test]
fn a_prefetched_run_decides_as_a_plain_one() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = |b: &str| {
        format!(
            "pipeline: pre\nnodes:\n  a:\n    op: test.echo\n    params: {{text: one}}\n  b:\n    op: test.echo\n    in: {{x: a.out}}\n    params: {{text: {b}}}\n  c:\n    op: test.echo\n    in: {{x: b.out}}\n"
        )
    };
    let first = run_with(dir.path(), &yaml("v1"), Some("pre"));
    assert_eq!(first.executed.len(), 3, "{:?}", first.errors);
    for (edit, name) in [("v2", "pre"), ("v3", "another")] {
        let s = run_with(dir.path(), &yaml(edit), Some(name));
        let mut executed = s.executed.clone();
        executed.sort();
        assert_eq!(executed, ["b", "c"], "prefetch for {name}");
        assert_eq!(s.cached, ["a"], "prefetch for {name}");
    }
    let again = run_with(dir.path(), &yaml("v3"), Some("pre"));
    assert_eq!((again.executed.len(), again.cached.len()), (0, 3));
}
