//! Snapshot tests of what `expflow` says about invalid pipelines and bad usage.

use std::path::Path;
use std::process::Command;

fn expflow(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_expflow"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run expflow");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check(yaml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), yaml).unwrap();
    let (code, _, stderr) = expflow(dir.path(), &["plan", "bad.yaml"]);
    (code, stderr)
}

#[test]
fn every_problem_is_reported_at_once_with_places_and_hints() {
    let (code, stderr) = check(
        r#"pipeline: broken
params:
  n: 5
inputs:
  raw: missing/data.csv
nodes:
  load_it:
    op: lod
    in: {src: inputs.raw}
  rows:
    op: load
    in: {source: inputs.raw}
  pick:
    op: table.filter
    in: {table: rows.tabel}
    params: {wher: "x > 1"}
  head:
    op: command
    in: {rows: nowhere.out}
    out: {sample: file}
    params:
      run: "head -n ${params.m} ${in.rows} > ${out.sample}"
  typed:
    op: table.sort
    in: {table: inputs.raw}
    params: {by: [x]}
  x:
    op: command
    in: {i: y.o}
    out: {o: file}
    params: {run: "cp ${in.i} ${out.o}"}
  y:
    op: command
    in: {i: x.o}
    out: {o: file}
    params: {run: "cp ${in.i} ${out.o}"}
  y:
    op: command
"#,
    );
    assert_eq!(code, 2);
    insta::assert_snapshot!(stderr);
}

#[test]
fn yaml_syntax_errors_name_the_place() {
    let (code, stderr) = check("pipeline: x\nnodes:\n  a: {op: command\n  b: 1\n");
    assert_eq!(code, 2);
    insta::assert_snapshot!(stderr);
}

#[test]
fn unknown_keys_and_bad_types() {
    let (code, stderr) = check(
        "pipeline: x\nnode:\n  a:\n    op: command\nnodes:\n  Bad-Name:\n    op: command\n    retries: many\n    resources: {gpu: 1}\n    params: {run: 5}\n  c:\n    op: table.sample\n    matrix: {n: []}\n    params: {n: \"${matrix.n}\", seed: \"${foo.bar}\"}\n",
    );
    assert_eq!(code, 2);
    insta::assert_snapshot!(stderr);
}

#[test]
fn set_of_an_unknown_parameter_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "pipeline: x\nparams: {seed: 1}\nnodes:\n  a:\n    op: command\n    out: {o: file}\n    params: {run: \"echo ${params.seed} > ${out.o}\"}\n",
    )
    .unwrap();
    let (code, _, stderr) = expflow(dir.path(), &["run", "p.yaml", "--set", "sed=2"]);
    assert_eq!(code, 2);
    insta::assert_snapshot!(stderr);
}

#[test]
fn a_missing_pipeline_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = expflow(dir.path(), &["run", "nope.yaml"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("nope.yaml"), "{stderr}");
}

#[test]
fn help_lists_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, _) = expflow(dir.path(), &["--help"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(stdout);
}

#[test]
fn report_help_names_its_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, _) = expflow(dir.path(), &["report", "--help"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(stdout);
}

/// How many times `needle` occurs in `hay`.
fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

#[test]
fn a_missing_input_file_is_reported_once_not_at_each_use() {
    let (code, stderr) = check(
        r#"pipeline: x
inputs:
  raw: missing.csv
  bad: [not, a, path]
nodes:
  rows:
    op: load
    in: {src: inputs.raw}
  again:
    op: load
    in: {src: inputs.raw}
  other:
    op: load
    in: {src: inputs.bad}
  next:
    op: table.sort
    in: {table: gone.table}
    params: {by: [x]}
  gone:
    op: lod
"#,
    );
    assert_eq!(code, 2);
    assert_eq!(count(&stderr, "cannot read missing.csv"), 1, "{stderr}");
    assert_eq!(count(&stderr, "must be a path"), 1, "{stderr}");
    assert_eq!(count(&stderr, "unknown operator `lod`"), 1, "{stderr}");
    assert_eq!(count(&stderr, "unknown input"), 0, "{stderr}");
    assert_eq!(count(&stderr, "unknown node"), 0, "{stderr}");
    assert!(stderr.contains("has 3 problems"), "{stderr}");
}

#[test]
fn a_bad_matrix_value_is_reported_once() {
    let (code, stderr) = check(
        r#"pipeline: x
nodes:
  t:
    op: command
    out: {o: table}
    params: {run: "echo > ${out.o}"}
  c:
    op: table.sample
    matrix: {n: [], seed: 5}
    in: {table: t.o}
    params: {n: "${matrix.n}", seed: "${matrix.seed}"}
  d:
    op: table.sample
    matrix: 7
    in: {table: t.o}
    params: {n: "${matrix.n}"}
"#,
    );
    assert_eq!(code, 2);
    assert_eq!(count(&stderr, "must be a non-empty list"), 2, "{stderr}");
    assert_eq!(
        count(&stderr, "`nodes.d.matrix` must be a map"),
        1,
        "{stderr}"
    );
    assert_eq!(count(&stderr, "no matrix variable"), 0, "{stderr}");
    assert_eq!(count(&stderr, "must be given"), 0, "{stderr}");
    assert!(stderr.contains("has 3 problems"), "{stderr}");
}

#[test]
fn a_matrix_over_the_node_limit_is_refused() {
    let values = (0..10_000)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let yaml = format!(
        "pipeline: x\nnodes:\n  small:\n    op: command\n    out: {{o: file}}\n    params: {{run: \"echo > ${{out.o}}\"}}\n  big:\n    op: command\n    matrix:\n      a: [{values}]\n      b: [{values}]\n      c: [{values}]\n    out: {{o: file}}\n    params: {{run: \"echo ${{matrix.a}} > ${{out.o}}\"}}\n"
    );
    let (code, stderr) = check(&yaml);
    assert_eq!(code, 2);
    insta::assert_snapshot!(stderr);
}

#[test]
fn secrets_are_checked_where_they_are_written() {
    let (code, stderr) = check(
        r#"pipeline: s
secrets: [TOKEN, TOKEN, 9lives, {a: 1}]
nodes:
  a:
    op: command
    out: {o: table}
    params:
      run: "echo ${secrets.TOKN} > ${out.o}"
      shell: "${secrets.TOKEN}"
  b:
    op: infer.chat
    in: {prompts: a.o}
    params: {backend: openai, base_url: "http://127.0.0.1:8000/v1", model: m, api_key: sk-written-here}
"#,
    );
    assert_eq!(code, 2);
    insta::assert_snapshot!(stderr);
}

#[test]
fn max_nodes_counts_the_whole_pipeline_and_can_be_raised() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "pipeline: x\nnodes:\n  a:\n    op: command\n    matrix: {i: [1, 2, 3], j: [1, 2]}\n    out: {o: file}\n    params: {run: \"echo ${matrix.i} > ${out.o}\"}\n  b:\n    op: command\n    matrix: {i: [1, 2, 3]}\n    out: {o: file}\n    params: {run: \"echo ${matrix.i} > ${out.o}\"}\n",
    )
    .unwrap();
    let (code, _, stderr) = expflow(dir.path(), &["graph", "p.yaml", "--max-nodes", "8"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(
            "p.yaml:10:17: node `b` (3 nodes) takes the pipeline over the limit of 8 nodes (6 before it)"
        ),
        "{stderr}"
    );
    let (code, _, stderr) = expflow(dir.path(), &["plan", "p.yaml", "--max-nodes", "5"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("the matrix of node `a` expands to 3 × 2 = 6 nodes, over the limit of 5"),
        "{stderr}"
    );
    let (code, stdout, stderr) = expflow(dir.path(), &["plan", "p.yaml", "--max-nodes", "9"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.matches("[i=").count(), 9, "{stdout}");
}

#[test]
fn an_unset_secret_stops_the_run_before_any_node() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "pipeline: x\nsecrets: [EXPFLOW_TEST_CLI_NEVER_SET]\nnodes:\n  a:\n    op: command\n    out: {o: file}\n    params: {run: \"echo hi > ${out.o}\", env: {K: \"${secrets.EXPFLOW_TEST_CLI_NEVER_SET}\"}}\n",
    )
    .unwrap();
    let (code, _, stderr) = expflow(dir.path(), &["run", "p.yaml"]);
    assert_eq!(code, 2);
    insta::assert_snapshot!(stderr);
    let (code, _, _) = expflow(dir.path(), &["plan", "p.yaml"]);
    assert_eq!(code, 0, "plan executes nothing and needs no secret");
}
