//! `audit` compares what each node's determinism class allows: deterministic nodes byte for
//! byte (every memoised item computed again, the workspace's memo left as it was); seeded
//! nodes byte for byte with the thread count they were recorded with, and by their metrics
//! within the tolerance with another; nondeterministic nodes by their metrics within the
//! tolerance, or skipped, saying why, when they have none.
//!
//! One test: it sets RAYON_NUM_THREADS, which every node's record reads.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use expflow_engine::audit::{AuditEntry, AuditOptions, AuditSummary, audit};
use expflow_engine::{
    CancelToken, Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType,
    Ports, Registry, Resources, RunOptions, Signature, Workspace, compile, workspace,
};
use serde_json::json;

/// Executions of `test.sampler` so far: each one samples a little differently.
static SAMPLES: AtomicU64 = AtomicU64::new(0);
/// Executions of `test.remote` so far.
static REPLIES: AtomicU64 = AtomicU64::new(0);
/// Items `test.items` computed (not taken from the memo).
static COMPUTED: AtomicU64 = AtomicU64::new(0);

fn signature(determinism: Determinism, outputs: Vec<Port>, params: Vec<ParamSpec>) -> Signature {
    Signature {
        inputs: Ports::Fixed(vec![]),
        outputs: Ports::Fixed(outputs),
        params,
        determinism,
        resources: Resources::default(),
    }
}

/// Nondeterministic: a remote model's answers (different on every execution) and their
/// accuracy, which moves by `spread` per execution.
struct Sampler;

impl Operator for Sampler {
    fn kind(&self) -> &'static str {
        "test.sampler"
    }
    fn version(&self) -> u32 {
        1
    }
    fn signature(&self) -> Signature {
        signature(
            Determinism::Nondeterministic,
            vec![
                Port::new("answers", PortType::File, "answers"),
                Port::new("metrics", PortType::Metrics, "accuracy"),
            ],
            vec![ParamSpec::with_default(
                "spread",
                ParamKind::Float,
                json!(0.01),
                "accuracy moves by this much per execution",
            )],
        )
    }
    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let n = SAMPLES.fetch_add(1, Ordering::SeqCst);
        let accuracy = 0.5 + ctx.param_f64("spread")? * (n % 2) as f64;
        std::fs::write(&ctx.output("answers")?.path, format!("sample {n}\n"))?;
        std::fs::write(
            &ctx.output("metrics")?.path,
            json!({"accuracy": accuracy, "task": "i2t"}).to_string(),
        )?;
        Ok(())
    }
}

/// Nondeterministic with nothing to compare within a tolerance.
struct Remote;

impl Operator for Remote {
    fn kind(&self) -> &'static str {
        "test.remote"
    }
    fn version(&self) -> u32 {
        1
    }
    fn signature(&self) -> Signature {
        signature(
            Determinism::Nondeterministic,
            vec![Port::new("text", PortType::File, "a reply")],
            vec![],
        )
    }
    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let n = REPLIES.fetch_add(1, Ordering::SeqCst);
        std::fs::write(&ctx.output("text")?.path, format!("reply {n}\n"))?;
        Ok(())
    }
}

/// Seeded training whose bytes depend on the thread count, as float sums over threads do.
struct Trainer;

impl Operator for Trainer {
    fn kind(&self) -> &'static str {
        "test.trainer"
    }
    fn version(&self) -> u32 {
        1
    }
    fn signature(&self) -> Signature {
        signature(
            Determinism::Seeded,
            vec![
                Port::new("weights", PortType::File, "weights"),
                Port::new("metrics", PortType::Metrics, "final loss"),
            ],
            vec![ParamSpec::with_default(
                "seed",
                ParamKind::Int,
                json!(1),
                "seed",
            )],
        )
    }
    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let threads = expflow_engine::node::compute_threads();
        let loss = 1.0 + f64::from(threads) / 1024.0;
        std::fs::write(
            &ctx.output("weights")?.path,
            format!("seed {} threads {threads}\n", ctx.seed()),
        )?;
        std::fs::write(
            &ctx.output("metrics")?.path,
            json!({"loss": loss}).to_string(),
        )?;
        Ok(())
    }
}

/// Deterministic and map-style: squares `n` items, each memoised.
struct Items;

impl Operator for Items {
    fn kind(&self) -> &'static str {
        "test.items"
    }
    fn version(&self) -> u32 {
        1
    }
    fn signature(&self) -> Signature {
        signature(
            Determinism::Deterministic,
            vec![Port::new("squares", PortType::File, "one square a line")],
            vec![ParamSpec::with_default(
                "n",
                ParamKind::Int,
                json!(4),
                "items",
            )],
        )
    }
    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let mut text = String::new();
        for i in 0..ctx.param_u64("n")? {
            let bytes = ctx.memo(&json!({"i": i}), || {
                COMPUTED.fetch_add(1, Ordering::SeqCst);
                Ok((i * i).to_string().into_bytes())
            })?;
            text.push_str(&String::from_utf8_lossy(&bytes));
            text.push('\n');
        }
        ctx.note("items", ctx.param_u64("n")?);
        std::fs::write(&ctx.output("squares")?.path, text)?;
        Ok(())
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(Sampler))
        .register(Arc::new(Remote))
        .register(Arc::new(Trainer))
        .register(Arc::new(Items));
    r
}

const PIPE: &str = r#"
pipeline: classes
nodes:
  sampled:
    op: test.sampler
  reply:
    op: test.remote
  train:
    op: test.trainer
  squares:
    op: test.items
"#;

fn run_pipeline(dir: &Path, text: &str) -> Workspace {
    let reg = registry();
    let p = compile::compile(&dir.join("p.yaml"), text, &reg, &[]).expect("compiles");
    let ws = Workspace::open(
        &dir.join(".expflow"),
        workspace::holder("test", &p.name, None),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let summary = rt
        .block_on(expflow_engine::run(
            &ws,
            &p,
            &workspace::new_run_id(),
            &RunOptions::default(),
            CancelToken::new(),
        ))
        .unwrap();
    assert_eq!(summary.status, "ok", "{summary:?}");
    ws
}

fn by_node<'a>(entries: &'a [AuditEntry], node: &str) -> &'a AuditEntry {
    entries
        .iter()
        .find(|e| e.node == node)
        .unwrap_or_else(|| panic!("{node} was not audited: {entries:?}"))
}

fn set_threads(n: &str) {
    // SAFETY: the only test in this binary, and no other thread of it reads the environment
    // while this one writes.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", n) };
}

#[test]
fn audit_compares_what_each_class_allows_and_says_why_it_skips() {
    set_threads("3");
    let dir = tempfile::tempdir().unwrap();
    let ws = run_pipeline(dir.path(), PIPE);
    let computed_by_run = COMPUTED.load(Ordering::SeqCst);
    assert_eq!(computed_by_run, 4);
    let all = AuditOptions {
        fraction: 1.0,
        seed: 0,
        tolerance: 0.05,
    };

    let entries = audit(&ws, &registry(), all).unwrap();
    assert_eq!(entries.len(), 4, "{entries:?}");
    let e = by_node(&entries, "squares");
    assert_eq!(
        (e.outcome.as_str(), e.class.as_str()),
        ("match", "deterministic")
    );
    assert_eq!(
        COMPUTED.load(Ordering::SeqCst),
        computed_by_run + 4,
        "audit computes every item again instead of reading the memo"
    );
    let e = by_node(&entries, "train");
    assert_eq!(
        (e.outcome.as_str(), e.class.as_str()),
        ("match", "seeded"),
        "{e:?}"
    );
    let e = by_node(&entries, "sampled");
    assert_eq!(e.outcome, "within_tolerance", "{e:?}");
    assert!(e.detail.contains("metrics (metrics) within 0.05"), "{e:?}");
    let e = by_node(&entries, "reply");
    assert_eq!(e.outcome, "skipped");
    assert_eq!(
        e.reason.as_deref(),
        Some("nondeterministic without metrics")
    );
    let summary = AuditSummary::of(&entries);
    assert_eq!(
        summary.line(),
        "2 nodes compared exactly, 1 within tolerance, 1 skipped (1 nondeterministic without \
         metrics); 0 mismatches, 0 failed"
    );

    // The workspace's memo still serves the next run: a bigger `squares` computes only the
    // new items.
    drop(ws);
    let before = COMPUTED.load(Ordering::SeqCst);
    let ws = run_pipeline(
        dir.path(),
        &PIPE.replace("op: test.items", "op: test.items\n    params: {n: 6}"),
    );
    assert_eq!(COMPUTED.load(Ordering::SeqCst), before + 2);

    // Another thread count: the seeded node's bytes differ as its class allows, and its
    // metrics are compared instead.
    set_threads("5");
    let entries = audit(&ws, &registry(), all).unwrap();
    let e = by_node(&entries, "train");
    assert_eq!(e.outcome, "within_tolerance", "{e:?}");
    assert!(
        e.detail
            .contains("recorded with 3 threads and re-executed with 5"),
        "{e:?}"
    );
    // A tolerance too tight for the sampler's spread is a mismatch naming the metric.
    let tight = audit(
        &ws,
        &registry(),
        AuditOptions {
            tolerance: 0.001,
            ..all
        },
    )
    .unwrap();
    let e = by_node(&tight, "train");
    assert_eq!(e.outcome, "mismatch", "{e:?}");
    assert!(
        e.detail
            .contains("metrics.loss: recorded 1.0029296875, now 1.0048828125"),
        "{e:?}"
    );
    set_threads("3");
}
