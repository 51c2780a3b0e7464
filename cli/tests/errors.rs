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
