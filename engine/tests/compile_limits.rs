//! What a short pipeline file cannot make the compiler do: expand into more nodes or
//! copied values than its budget (`engine/src/budget.rs`), or hash numbers JSON cannot
//! hold. Each was a way for a small file to exhaust memory or to give different
//! parameters one key.

use std::sync::Arc;
use std::time::Instant;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports, Registry,
    Resources, Signature, budget, compile,
};
use serde_json::json;

struct Take;

impl Operator for Take {
    fn kind(&self) -> &'static str {
        "t.take"
    }
    fn version(&self) -> u32 {
        1
    }
    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Open(PortType::File),
            outputs: Ports::Fixed(vec![Port::new("out", PortType::File, "nothing")]),
            params: vec![ParamSpec::with_default(
                "value",
                ParamKind::Any,
                json!(null),
                "anything",
            )],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }
    fn run(&self, _ctx: &Context) -> Result<(), OpError> {
        Ok(())
    }
}

fn compile_text(yaml: &str) -> Result<usize, String> {
    let mut reg = Registry::new();
    reg.register(Arc::new(Take));
    compile::compile(std::path::Path::new("/nonexistent/p.yaml"), yaml, &reg, &[])
        .map(|p| p.nodes.len())
        .map_err(|d| {
            d.items
                .iter()
                .map(|i| format!("{}:{}: {}", i.loc.line, i.loc.column, i.message))
                .collect::<Vec<_>>()
                .join("\n")
        })
}

#[test]
fn a_matrix_of_two_to_the_forty_points_is_refused_quickly() {
    let vars: Vec<String> = (0..40).map(|i| format!("v{i}: [0, 1]")).collect();
    let yaml = format!(
        "pipeline: p\nnodes:\n  n:\n    op: t.take\n    matrix: {{{}}}\n",
        vars.join(", ")
    );
    let start = Instant::now();
    let e = compile_text(&yaml).unwrap_err();
    assert!(start.elapsed().as_secs() < 10);
    let factors = vec!["2"; 40].join(" × ");
    assert!(
        e.contains(&format!(
            "the matrix of node `n` expands to {factors} = {} nodes, over the limit of",
            1u64 << 40
        )),
        "{e}"
    );
    assert!(e.starts_with("5:"), "the matrix is named: {e}");
}

#[test]
fn a_matrix_whose_point_count_overflows_is_refused() {
    let values: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    let vars: Vec<String> = (0..10)
        .map(|i| format!("v{i}: [{}]", values.join(", ")))
        .collect();
    let yaml = format!(
        "pipeline: p\nnodes:\n  n:\n    op: t.take\n    matrix: {{{}}}\n",
        vars.join(", ")
    );
    let e = compile_text(&yaml).unwrap_err();
    assert!(
        e.contains("= more than 2^64 nodes, over the limit of"),
        "{e}"
    );
}

#[test]
fn a_parameter_copied_a_million_times_is_refused() {
    let big: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
    let refs = vec!["\"${params.big}\""; 600].join(", ");
    let yaml = format!(
        "pipeline: p\nparams:\n  big: [{}]\nnodes:\n  n:\n    op: t.take\n    params: {{value: [{refs}]}}\n",
        big.join(", ")
    );
    assert!(yaml.len() < budget::MIN_VALUES);
    let e = compile_text(&yaml).unwrap_err();
    assert!(
        e.contains("`${params.big}` is copied so often that the pipeline would hold more than"),
        "{e}"
    );
    // A hundred copies are fine.
    let refs = vec!["\"${params.big}\""; 100].join(", ");
    let yaml = format!(
        "pipeline: p\nparams:\n  big: [{}]\nnodes:\n  n:\n    op: t.take\n    params: {{value: [{refs}]}}\n",
        big.join(", ")
    );
    assert_eq!(compile_text(&yaml), Ok(1));
}

#[test]
fn honest_sweeps_still_compile() {
    let yaml = "pipeline: p\nparams: {seed: 1}\nnodes:\n  a:\n    op: t.take\n    matrix: {x: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], y: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], z: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}\n    params: {value: [\"${matrix.x}\", \"${params.seed}\"]}\n  b:\n    op: t.take\n    matrix: {x: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], y: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], z: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}\n    in: {i: a.out}\n";
    assert_eq!(compile_text(yaml), Ok(2000));
}

#[test]
fn infinite_and_nan_numbers_are_refused_where_they_are() {
    // JSON, and so a key, has no infinity or NaN: were they read, `.inf`, `.nan` and `null`
    // would hash alike. The YAML reader refuses them, naming the place.
    for (yaml, at) in [
        (
            "pipeline: p\nparams: {a: .inf}\nnodes:\n  n: {op: t.take}\n",
            "2:13",
        ),
        (
            "pipeline: p\nnodes:\n  n:\n    op: t.take\n    params: {value: [1, -.inf]}\n",
            "5:25",
        ),
        (
            "pipeline: p\nnodes:\n  m:\n    op: t.take\n    matrix: {x: [1, .nan]}\n",
            "5:21",
        ),
    ] {
        let e = compile_text(yaml).unwrap_err();
        assert!(
            e.starts_with(&format!("{at}: invalid YAML: non-finite float")),
            "{e}"
        );
    }
    // Quoted, they are strings.
    let ok =
        "pipeline: p\nnodes:\n  n:\n    op: t.take\n    params: {value: [\".inf\", \".nan\"]}\n";
    assert_eq!(compile_text(ok), Ok(1));
}
