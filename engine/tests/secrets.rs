//! Secrets in the engine, in-process with a test operator that takes a credential: the
//! placeholder stays in the key (which depends on the name only), the operator gets the
//! value, the record names the secret, and the log, the events and the error of a failing
//! node show `***` instead of the value.
//!
//! One test sets the environment variable, before any other thread of this binary runs
//! expflow code that reads the environment.

use std::path::Path;
use std::sync::Arc;

use expflow_engine::{
    CancelToken, Context, Determinism, EngineError, OpError, Operator, ParamKind, ParamSpec, Port,
    PortType, Ports, Registry, Resources, RunOptions, Signature, Workspace, compile, workspace,
};
use serde_json::json;

const VAR: &str = "EXPFLOW_TEST_ENGINE_SECRET";

struct UseSecret;

impl Operator for UseSecret {
    fn kind(&self) -> &'static str {
        "test.use_secret"
    }
    fn version(&self) -> u32 {
        1
    }
    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(Vec::new()),
            outputs: Ports::Fixed(vec![Port::new("out", PortType::File, "the value's length")]),
            params: vec![
                ParamSpec::optional("token", ParamKind::String, "a credential").takes_secrets(),
                ParamSpec::with_default("note", ParamKind::String, json!(""), "plain text"),
            ],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }
    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let token = ctx.reveal(ctx.param_str("token")?)?;
        ctx.log(&format!("using {token}"));
        if ctx.param_str("note")? == "fail" {
            return Err(format!("the server refused {token}").into());
        }
        std::fs::write(&ctx.output("out")?.path, token.len().to_string())?;
        Ok(())
    }
}

fn registry() -> Registry {
    let mut reg = Registry::new();
    reg.register(Arc::new(UseSecret));
    reg
}

const PIPE: &str = r#"
pipeline: sec
secrets: [EXPFLOW_TEST_ENGINE_SECRET]
params: {note: ok}
nodes:
  a:
    op: test.use_secret
    params: {token: "Bearer ${secrets.EXPFLOW_TEST_ENGINE_SECRET}", note: "${params.note}"}
"#;

fn run(dir: &Path, yaml: &str, note: &str) -> Result<expflow_engine::RunSummary, EngineError> {
    let p = compile::compile(
        &dir.join("p.yaml"),
        yaml,
        &registry(),
        &[("note".into(), json!(note))],
    )
    .expect("compiles");
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
}

fn all_bytes(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out
}

fn holds(bytes: &[u8], s: &str) -> bool {
    bytes.windows(s.len()).any(|w| w == s.as_bytes())
}

#[test]
fn the_value_reaches_the_operator_and_nothing_that_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    // Unset: the run stops before anything executes or is written.
    let e = run(dir.path(), PIPE, "ok").unwrap_err();
    assert!(matches!(e, EngineError::Usage(_)), "{e:?}");
    assert!(
        e.to_string().contains(&format!("`{VAR}` is not set")),
        "{e}"
    );
    assert!(
        !dir.path().join(".expflow/runs").exists() || {
            std::fs::read_dir(dir.path().join(".expflow/runs"))
                .unwrap()
                .count()
                == 0
        }
    );

    let value = "v4lue-that-must-not-be-stored";
    // SAFETY: the only environment write of this binary; the other tests only compile.
    unsafe { std::env::set_var(VAR, value) };
    let s = run(dir.path(), PIPE, "ok").unwrap();
    assert_eq!(s.executed, ["a"]);
    let ws = Workspace::open(
        &dir.path().join(".expflow"),
        workspace::holder("inspect", "sec", None),
    )
    .unwrap();
    let records = ws.store.records().unwrap();
    let rec = &records[0];
    assert_eq!(rec.secrets, [VAR], "the record names the secret");
    assert_eq!(
        rec.material["params"]["token"],
        json!(format!("Bearer ${{secrets.{VAR}}}")),
        "the key material keeps the placeholder"
    );
    let out = std::fs::read_to_string(ws.cas.blob_path(&rec.outputs["out"].digest)).unwrap();
    assert_eq!(out, format!("Bearer {value}").len().to_string());
    let key = rec.key;
    drop(ws);

    // Another value: the same key, a cache hit.
    unsafe { std::env::set_var(VAR, "another-value") };
    let s = run(dir.path(), PIPE, "ok").unwrap();
    assert_eq!(s.cached, ["a"]);
    unsafe { std::env::set_var(VAR, value) };

    // A failure whose message holds the value: masked in the error and the events.
    let s = run(dir.path(), PIPE, "fail").unwrap();
    assert_eq!(s.failed, ["a"]);
    let err = &s.errors[0].1;
    assert!(err.contains("the server refused Bearer ***"), "{err}");

    // No file expflow wrote holds the value; the logs show the mask.
    let files = all_bytes(&dir.path().join(".expflow"));
    for (p, b) in &files {
        assert!(!holds(b, value), "{} holds the value", p.display());
    }
    let logs: Vec<String> = files
        .iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "log"))
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(
        logs.iter().any(|l| l.contains("using Bearer ***")),
        "{logs:?}"
    );
    assert!(
        files
            .iter()
            .any(|(p, b)| p.ends_with("events.jsonl") && holds(b, "the server refused Bearer ***")),
        "the failure event is masked"
    );
    assert_ne!(key.to_hex(), "", "a key was recorded");
}

fn problems(yaml: &str) -> String {
    match compile::compile(Path::new("/x/p.yaml"), yaml, &registry(), &[]) {
        Ok(_) => String::new(),
        Err(d) => d.to_string(),
    }
}

#[test]
fn references_are_checked_when_compiled() {
    let d = problems(
        "pipeline: s\nsecrets: [TOKEN]\nnodes:\n  a:\n    op: test.use_secret\n    params: {token: \"${secrets.TOKN}\", note: \"${secrets.TOKEN}\"}\n",
    );
    assert!(
        d.contains("p.yaml:6:21: bad interpolation in parameter `token` of node `a`: `${secrets.TOKN}`: no secret `TOKN` is declared; did you mean `${secrets.TOKEN}`?"),
        "{d}"
    );
    assert!(
        d.contains("p.yaml:6:46: bad interpolation in parameter `note` of node `a`: `${secrets.TOKEN}` can only be used where a credential goes"),
        "{d}"
    );
    let d = problems(
        "pipeline: s\nsecrets: [TOKEN, TOKEN, 9x, [a]]\nnodes:\n  a:\n    op: test.use_secret\n",
    );
    assert!(d.contains("p.yaml:2:18: duplicate secret `TOKEN`"), "{d}");
    assert!(
        d.contains("p.yaml:2:25: secret name `9x` is not valid"),
        "{d}"
    );
    assert!(d.contains("a secret must be a name, found a list"), "{d}");
    let d = problems("pipeline: s\nsecrets: TOKEN\nnodes:\n  a:\n    op: test.use_secret\n");
    assert!(d.contains("`secrets` must be a list of names"), "{d}");
    // Declared and used where allowed: no problem, and the placeholder is kept.
    let p = compile::compile(
        Path::new("/x/p.yaml"),
        "pipeline: s\nsecrets: [TOKEN]\nnodes:\n  a:\n    op: test.use_secret\n    params: {token: \"${secrets.TOKEN} $${HOME}\"}\n",
        &registry(),
        &[],
    )
    .unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(p.secrets, ["TOKEN"]);
    assert_eq!(
        p.nodes[0].params["token"],
        json!("${secrets.TOKEN} $${HOME}")
    );
}
