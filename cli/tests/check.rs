//! `expflow check`, `--profile` and `--input`: what they say, and that the shipped pipelines
//! pass for every profile on a machine without GPUs or model weights.

use std::path::{Path, PathBuf};
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

/// The directory replaced by `[DIR]` so snapshots do not depend on where the test ran.
fn redact(text: &str, dir: &Path) -> String {
    let real = dir.canonicalize().unwrap();
    text.replace(&real.display().to_string(), "[DIR]")
        .replace(&dir.display().to_string(), "[DIR]")
}

const PIPE: &str = r#"pipeline: p
params:
  n: 2
inputs:
  raw: data.csv
nodes:
  rows:
    op: load
    in: {src: inputs.raw}
  top:
    op: table.sample
    in: {table: rows.table}
    params: {n: "${params.n}"}
outputs:
  out/top.csv: top.table
profiles:
  big:
    description: "more rows, from the full data"
    params: {n: 100}
    inputs: {raw: /nonexistent/full.csv}
  broken:
    nodes:
      top:
        params: {rows: 3}
      extra:
        op: table.filtre
        in: {table: rows.table}
"#;

fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), PIPE).unwrap();
    dir
}

#[test]
fn check_reports_each_profile_and_points_into_the_profile() {
    let dir = project();
    // data.csv does not exist: a note, not an error.
    let (code, stdout, stderr) = expflow(dir.path(), &["check", "p.yaml"]);
    assert_eq!(code, 2, "{stderr}");
    insta::assert_snapshot!(redact(&stdout, dir.path()));
}

#[test]
fn check_of_one_valid_profile_exits_0_with_notes() {
    let dir = project();
    let (code, stdout, stderr) = expflow(dir.path(), &["check", "p.yaml", "--profile", "big"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    insta::assert_snapshot!(redact(&stdout, dir.path()));
    // --input replaces the profile's input too; a relative path is the current directory's.
    std::fs::write(dir.path().join("here.csv"), "x\n1\n").unwrap();
    let (code, stdout, _) = expflow(
        dir.path(),
        &[
            "check",
            "p.yaml",
            "--profile",
            "big",
            "--input",
            "raw=here.csv",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(
        v["configurations"][0]["missing_inputs"],
        serde_json::json!([])
    );
}

#[test]
fn an_unknown_profile_lists_the_declared_ones() {
    let dir = project();
    let (code, stdout, _) = expflow(dir.path(), &["check", "p.yaml", "--profile", "bigg"]);
    assert_eq!(code, 2);
    insta::assert_snapshot!(stdout);
    // Every command that compiles a pipeline takes --profile.
    let (code, _, stderr) = expflow(dir.path(), &["plan", "p.yaml", "--profile", "bigg"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("did you mean `big`?"), "{stderr}");
}

#[test]
fn an_unknown_input_override_lists_the_declared_inputs() {
    let dir = project();
    std::fs::write(dir.path().join("data.csv"), "x\n1\n").unwrap();
    let (code, _, stderr) = expflow(dir.path(), &["plan", "p.yaml", "--input", "ra=data.csv"]);
    assert_eq!(code, 2);
    insta::assert_snapshot!(stderr);
    let (code, _, stderr) = expflow(dir.path(), &["graph", "p.yaml", "--input", "raw"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("write NAME=PATH"), "{stderr}");
}

fn pipelines() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines")
}

#[test]
fn every_profile_of_the_shipped_pipelines_checks_without_gpus_or_weights() {
    for file in ["macbench.yaml", "expstar.yaml"] {
        let (code, stdout, stderr) = expflow(&pipelines(), &["check", file, "--json"]);
        assert_eq!(code, 0, "{file}: {stdout}{stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let configs = v["configurations"].as_array().unwrap();
        // The base and the real configuration at least.
        let profiles: Vec<&str> = configs
            .iter()
            .filter_map(|c| c["profiles"][0].as_str())
            .collect();
        assert!(profiles.contains(&"gpu"), "{file}: {profiles:?}");
        assert!(
            configs.iter().all(|c| c["valid"] == true),
            "{file}: {stdout}"
        );
        let (code, stdout, stderr) = expflow(&pipelines(), &["check", file, "--profile", "gpu"]);
        assert_eq!(code, 0, "{file}: {stdout}{stderr}");
    }
}

#[test]
fn a_problem_of_the_base_is_reported_once_not_under_each_profile() {
    let dir = tempfile::tempdir().unwrap();
    let text = PIPE.replace("op: table.sample", "op: table.sampel");
    std::fs::write(dir.path().join("p.yaml"), text).unwrap();
    let (code, stdout, _) = expflow(dir.path(), &["check", "p.yaml"]);
    assert_eq!(code, 2);
    assert_eq!(
        stdout.matches("unknown operator `table.sampel`").count(),
        1,
        "{stdout}"
    );
    assert!(
        stdout.contains("p.yaml (--profile big: more rows, from the full data): invalid, through the problems above"),
        "{stdout}"
    );
    // The broken profile's own problem is still reported.
    assert!(
        stdout.contains("unknown operator `table.filtre`"),
        "{stdout}"
    );
}

/// A declared input that is a directory feeds a `model` port (the user's own model
/// directory); a declared input file still does not.
#[test]
fn a_declared_input_directory_is_a_model_a_file_is_not() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.csv"), "prompt\nhello\n").unwrap();
    std::fs::create_dir(dir.path().join("my-model")).unwrap();
    std::fs::write(dir.path().join("weights.bin"), "not a model").unwrap();
    let pipe = |model: &str| {
        format!(
            "pipeline: p\ninputs:\n  raw: data.csv\n  base: {model}\nnodes:\n  rows:\n    op: load\n    in: {{src: inputs.raw}}\n  answers:\n    op: infer.chat\n    in: {{prompts: rows.table, model: inputs.base}}\n    params: {{backend: native}}\n"
        )
    };
    std::fs::write(dir.path().join("dir.yaml"), pipe("my-model")).unwrap();
    std::fs::write(dir.path().join("file.yaml"), pipe("weights.bin")).unwrap();
    let (code, _, err) = expflow(dir.path(), &["check", "dir.yaml"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = expflow(dir.path(), &["check", "file.yaml"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        out.contains("type mismatch: input `model` of node `answers` wants a model, but `inputs.base` is a file"),
        "{out}{err}"
    );
}

/// `expflow check … | head -1`: a reader that closes the pipe ends the command quietly (by
/// SIGPIPE, as other command-line tools), never with a panic.
#[test]
fn a_closed_pipe_ends_check_quietly() {
    use std::process::Stdio;
    let dir = project();
    let mut child = Command::new(env!("CARGO_BIN_EXE_expflow"))
        .args(["check", "p.yaml"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}
