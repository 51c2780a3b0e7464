use super::*;
use crate::yaml::parse;

fn applied(text: &str, selected: &[&str]) -> (Node, Diagnostics) {
    let mut root = parse(text).unwrap();
    let mut diags = Diagnostics::new("p.yaml");
    let names: Vec<String> = selected.iter().map(|s| s.to_string()).collect();
    apply(&mut root, &names, &mut diags);
    (root, diags)
}

fn get<'a>(n: &'a Node, path: &[&str]) -> Option<&'a Node> {
    let mut cur = n;
    for part in path {
        cur = &cur
            .as_map()?
            .iter()
            .rev()
            .find(|(k, _)| k.as_key().as_deref() == Some(*part))?
            .1;
    }
    Some(cur)
}

const BASE: &str = "\
pipeline: p
params: {lr: 0.01, keep: 1}
inputs: {raw: data.csv}
nodes:
  sft:
    op: train.sft
    params:
      lr: 0.01
      extra: {a: 1, b: 2}
      targets: [q, v]
    resources: {cpus: 2}
  infer:
    op: infer.chat
  other:
    op: infer.chat
    in: {prompts: a.b}
    params: {backend: native}
outputs:
  out.json: sft.metrics
  gone.json: infer.table
profiles:
  gpu:
    description: the real one
    params: {lr: 0.0001, added: x}
    inputs: {model: /models/qwen, raw: other.csv}
    nodes:
      sft:
        params:
          extra: {b: 3, c: 4}
          targets: [all]
        resources: {gpus: 1}
      infer: null
      other:
        op: infer.vllm_infer
        params: {script: s.py}
      serve:
        op: command
    outputs:
      gone.json: null
      new.json: serve.out
  more:
    params: {lr: 0.5}
";

#[test]
fn maps_merge_lists_replace_null_removes_new_nodes_are_added() {
    let (root, diags) = applied(BASE, &["gpu"]);
    assert!(diags.is_empty(), "{diags}");
    let params = get(&root, &["params"]).unwrap().to_json();
    assert_eq!(
        params,
        serde_json::json!({"lr": 0.0001, "keep": 1, "added": "x"})
    );
    let inputs = get(&root, &["inputs"]).unwrap().to_json();
    assert_eq!(
        inputs,
        serde_json::json!({"raw": "other.csv", "model": "/models/qwen"})
    );
    let sft = get(&root, &["nodes", "sft"]).unwrap().to_json();
    assert_eq!(
        sft,
        serde_json::json!({
            "op": "train.sft",
            "params": {"lr": 0.01, "extra": {"a": 1, "b": 3, "c": 4}, "targets": ["all"]},
            "resources": {"cpus": 2, "gpus": 1},
        })
    );
    assert!(get(&root, &["nodes", "infer"]).is_none());
    // Another `op`: replaced whole, nothing of the base's ports or parameters kept.
    assert_eq!(
        get(&root, &["nodes", "other"]).unwrap().to_json(),
        serde_json::json!({"op": "infer.vllm_infer", "params": {"script": "s.py"}})
    );
    assert_eq!(
        get(&root, &["nodes", "serve", "op"]).unwrap().as_str(),
        Some("command")
    );
    let outputs = get(&root, &["outputs"]).unwrap().to_json();
    assert_eq!(
        outputs,
        serde_json::json!({"out.json": "sft.metrics", "new.json": "serve.out"})
    );
}

#[test]
fn merged_values_keep_where_they_were_written() {
    let (root, _) = applied(BASE, &["gpu"]);
    let line_of = |text: &str| BASE.lines().position(|l| l.contains(text)).unwrap() as u32 + 1;
    // From the profile: its own line.
    let gpus = get(&root, &["nodes", "sft", "resources", "gpus"]).unwrap();
    assert_eq!(gpus.loc.line, line_of("resources: {gpus: 1}"));
    let targets = get(&root, &["nodes", "sft", "params", "targets"]).unwrap();
    assert_eq!(targets.loc.line, line_of("targets: [all]"));
    // Kept from the base: the base's line.
    let a = get(&root, &["nodes", "sft", "params", "extra", "a"]).unwrap();
    assert_eq!(a.loc.line, line_of("extra: {a: 1, b: 2}"));
    let op = get(&root, &["nodes", "sft", "op"]).unwrap();
    assert_eq!(op.loc.line, line_of("op: train.sft"));
    let serve = get(&root, &["nodes", "serve", "op"]).unwrap();
    assert_eq!(serve.loc.line, line_of("op: command"));
}

#[test]
fn profiles_apply_in_order_and_none_leaves_the_base() {
    let (root, _) = applied(BASE, &["gpu", "more"]);
    assert_eq!(
        get(&root, &["params", "lr"]).unwrap().to_json(),
        serde_json::json!(0.5)
    );
    let (root, _) = applied(BASE, &["more", "gpu"]);
    assert_eq!(
        get(&root, &["params", "lr"]).unwrap().to_json(),
        serde_json::json!(0.0001)
    );
    let (root, diags) = applied(BASE, &[]);
    assert!(diags.is_empty());
    assert_eq!(root, parse(BASE).unwrap());
}

#[test]
fn unknown_profiles_and_bad_sections_are_reported_with_hints() {
    let (_, diags) = applied(BASE, &["gpux"]);
    assert_eq!(diags.items.len(), 1, "{diags}");
    assert_eq!(diags.items[0].message, "--profile gpux: no profile `gpux`");
    assert!(
        diags.items[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("did you mean `gpu`?")
    );
    assert!(
        diags.items[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("gpu, more")
    );
    let text = "pipeline: p\nnodes:\n  a: {op: command}\nprofiles:\n  x:\n    parms: {a: 1}\n    nodes:\n      b: {params: {run: hi}}\n      c: null\n";
    let (_, diags) = applied(text, &["x"]);
    let got: Vec<(u32, &str)> = diags
        .items
        .iter()
        .map(|d| (d.loc.line, d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (6, "unknown key `parms` in profile `x`"),
            (
                8,
                "profile `x` changes node `b`, which the pipeline does not declare"
            ),
            (
                9,
                "profile `x` removes node `c`, which the pipeline does not declare"
            ),
        ]
    );
    assert_eq!(
        diags.items[0].hint.as_deref(),
        Some("did you mean `params`?")
    );
}
