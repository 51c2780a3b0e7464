//! `--input` and `--profile` through real runs: keys see content only, and the run's record
//! says how it was asked for.

use expflow_tests::{Project, names};
use serde_json::Value;

const PIPE: &str = r#"
pipeline: prof
params:
  suffix: base
inputs:
  src: data/data.txt
nodes:
  count:
    op: command
    in: {src: inputs.src}
    out: {n: file}
    params:
      run: "wc -l < ${in.src} > ${out.n}"
  label:
    op: command
    in: {n: count.n}
    out: {text: file}
    params:
      run: "echo $(cat ${in.n}) ${params.suffix} > ${out.text}"
outputs:
  out/label.txt: label.text
profiles:
  big:
    description: "a longer label"
    params: {suffix: big}
"#;

fn runs_json(p: &Project) -> Vec<Value> {
    let out = p.expflow(&["runs", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("runs --json")
}

#[test]
fn a_moved_input_with_the_same_bytes_stays_cached() {
    let p = Project::new();
    p.write("pipe.yaml", PIPE);
    p.write("data/data.txt", "one\ntwo\n");
    let first = p.run("pipe.yaml", &[]);
    first.expect_code(0);
    assert_eq!(first.executed(), names(&["count", "label"]));
    // Move the data away from where the file says it is: without --input the pipeline is
    // refused, with it nothing executes (a relative path is taken from the current
    // directory, here the project's).
    std::fs::rename(p.path("data"), p.path("moved")).unwrap();
    let refused = p.expflow(&["plan", "pipe.yaml"]);
    assert_eq!(refused.status.code(), Some(2));
    let moved = p.run("pipe.yaml", &["--input", "src=moved/data.txt"]);
    moved.expect_code(0);
    assert!(moved.executed().is_empty(), "{:?}", moved.executed());
    assert_eq!(moved.cached(), names(&["count", "label"]));
    // Other bytes at the new place: the nodes that read them run again.
    p.write("moved/data.txt", "one\ntwo\nthree\n");
    let changed = p.run("pipe.yaml", &["--input", "src=moved/data.txt"]);
    changed.expect_code(0);
    assert_eq!(changed.executed(), names(&["count", "label"]));
    assert_eq!(p.read("out/label.txt"), "3 base\n");
    // The override is in the run's record (as an absolute path), and `runs` shows it.
    let runs = runs_json(&p);
    let with_input = runs
        .iter()
        .filter(|r| r.to_string().contains("moved/data.txt"))
        .count();
    assert_eq!(with_input, 1, "{runs:#?}");
    let expected = p.path("moved/data.txt").display().to_string();
    assert!(
        runs.iter().any(|r| r.to_string().contains(&expected)),
        "{runs:#?}"
    );
}

#[test]
fn a_profile_changes_content_only_and_is_recorded() {
    let p = Project::new();
    p.write("pipe.yaml", PIPE);
    p.write("data/data.txt", "one\n");
    p.run("pipe.yaml", &[]).expect_code(0);
    let big = p.run("pipe.yaml", &["--profile", "big"]);
    big.expect_code(0);
    // Only the node whose resolved content the profile changed runs.
    assert_eq!(big.executed(), names(&["label"]));
    assert_eq!(p.read("out/label.txt"), "1 big\n");
    // The same content without the profile: no node runs (the name is not in any key).
    let same = p.run("pipe.yaml", &["--set", "suffix=big"]);
    same.expect_code(0);
    assert!(same.executed().is_empty(), "{:?}", same.executed());
    let out = p.expflow(&["runs"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("profile"), "{text}");
    // diff between the base run and the profile's run names the profile.
    let ids: Vec<String> = runs_json(&p)
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    let out = p.expflow(&["diff", &ids[0], &ids[1], "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(diff.contains("\"profile\""), "{diff}");
    assert!(diff.contains("\"big\""), "{diff}");
}
