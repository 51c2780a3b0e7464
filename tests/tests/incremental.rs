//! Incremental behaviour, observed through the event log of each run.

use expflow_tests::{Project, names};

/// a → b → c, and d reading the input directly. `b` keeps only the first line of `a`'s
/// output, so changing what `a` writes after line one re-runs `b` with identical bytes.
const PIPE: &str = r#"
pipeline: inc
params:
  greeting: hello
  tail: one
inputs:
  src: data.txt
nodes:
  a:
    op: command
    in: {src: inputs.src}
    out: {text: file}
    params:
      run: "cat ${in.src} > ${out.text}; echo ${params.greeting} >> ${out.text}; echo ${params.tail} >> ${out.text}"
  b:
    op: command
    in: {text: a.text}
    out: {first: file}
    params:
      run: "head -n 1 ${in.text} > ${out.first}"
  c:
    op: command
    in: {first: b.first}
    out: {upper: file}
    params:
      run: "tr a-z A-Z < ${in.first} > ${out.upper}"
  d:
    op: command
    in: {src: inputs.src}
    out: {n: file}
    params:
      run: "wc -c < ${in.src} > ${out.n}"
outputs:
  out/upper.txt: c.upper
"#;

fn project() -> Project {
    let p = Project::new();
    p.write("pipe.yaml", PIPE);
    p.write("data.txt", "first line\n");
    p
}

#[test]
fn second_run_of_an_unchanged_pipeline_executes_nothing() {
    let p = project();
    let first = p.run("pipe.yaml", &[]);
    first.expect_code(0);
    assert_eq!(first.executed(), names(&["a", "b", "c", "d"]));
    assert_eq!(p.read("out/upper.txt"), "FIRST LINE\n");
    let second = p.run("pipe.yaml", &[]);
    second.expect_code(0);
    assert!(second.executed().is_empty(), "{:?}", second.executed());
    assert_eq!(second.cached(), names(&["a", "b", "c", "d"]));
}

#[test]
fn a_parameter_edit_reruns_the_node_and_only_descendants_whose_inputs_changed() {
    let p = project();
    p.run("pipe.yaml", &[]).expect_code(0);
    // `greeting` changes a's bytes after the first line: b re-runs, makes identical bytes,
    // and c (early cutoff) does not re-run; d does not depend on a at all.
    let r = p.run("pipe.yaml", &["--set", "greeting=bonjour"]);
    r.expect_code(0);
    assert_eq!(r.executed(), names(&["a", "b"]));
    assert_eq!(r.cached(), names(&["c", "d"]));
}

#[test]
fn identical_bytes_stop_the_wave() {
    let p = project();
    p.run("pipe.yaml", &[]).expect_code(0);
    let r = p.run("pipe.yaml", &["--set", "tail=two"]);
    r.expect_code(0);
    assert!(r.executed().contains(&"b".to_string()));
    assert!(
        !r.executed().contains(&"c".to_string()),
        "c must be cut off: {:?}",
        r.executed()
    );
}

#[test]
fn editing_an_input_reruns_its_consumers_and_touching_it_reruns_nothing() {
    let p = project();
    p.run("pipe.yaml", &[]).expect_code(0);
    // Same content, new mtime.
    std::thread::sleep(std::time::Duration::from_millis(20));
    p.write("data.txt", "first line\n");
    let touched = p.run("pipe.yaml", &[]);
    touched.expect_code(0);
    assert!(touched.executed().is_empty(), "{:?}", touched.executed());
    p.write("data.txt", "other line\n");
    let edited = p.run("pipe.yaml", &[]);
    edited.expect_code(0);
    assert_eq!(edited.executed(), names(&["a", "b", "c", "d"]));
    assert_eq!(p.read("out/upper.txt"), "OTHER LINE\n");
}

#[test]
fn a_failing_node_leaves_no_record_and_once_fixed_only_it_and_descendants_run() {
    let p = project();
    let broken = PIPE.replace("head -n 1 ${in.text}", "exit 3; head -n 1 ${in.text}");
    p.write("pipe.yaml", &broken);
    let r = p.run("pipe.yaml", &[]);
    r.expect_code(1);
    assert_eq!(r.summary["failed"], serde_json::json!(["b"]));
    assert!(r.nodes("node_skipped").contains(&"c".to_string()));
    assert!(
        r.stderr.contains("exit")
            || r.events
                .iter()
                .any(|e| e["error"].as_str().is_some_and(|s| s.contains("3")))
    );
    // plan: b has no record
    let plan = p.expflow(&["plan", "pipe.yaml", "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let b = plan
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "b")
        .unwrap();
    assert_eq!(b["state"], "run");
    p.write("pipe.yaml", PIPE);
    let fixed = p.run("pipe.yaml", &[]);
    fixed.expect_code(0);
    assert_eq!(fixed.executed(), names(&["b", "c"]));
}

#[test]
fn keep_going_runs_independent_nodes_after_a_failure() {
    let p = project();
    let broken = PIPE.replace("cat ${in.src} >", "exit 1; cat ${in.src} >");
    p.write("pipe.yaml", &broken);
    let r = p.run("pipe.yaml", &["--keep-going", "--jobs", "1"]);
    r.expect_code(1);
    assert_eq!(r.executed(), names(&["d"]));
    assert_eq!(r.nodes("node_skipped"), names(&["b", "c"]));
}

#[test]
fn retries_rerun_a_flaky_node() {
    let p = Project::new();
    p.write(
        "pipe.yaml",
        r#"
pipeline: flaky
params:
  counter: unset
nodes:
  f:
    op: command
    out: {o: file}
    retries: 2
    params:
      run: "n=$(cat ${params.counter} 2>/dev/null || echo 0); echo $((n+1)) > ${params.counter}; test $n -ge 1 && echo ok > ${out.o}"
"#,
    );
    let counter = format!("counter={}", p.path("count").display());
    let r = p.run("pipe.yaml", &["--set", &counter]);
    let starts = r
        .events
        .iter()
        .filter(|e| e["event"] == "node_started")
        .count();
    r.expect_code(0);
    assert_eq!(starts, 2, "one failure then one success");
}

/// Plain progress lines (stderr not a terminal): a re-run names every node it found cached,
/// once, before the summary; `cached` lines written together still come before the lines
/// of what ran after them, a failure included.
#[test]
fn plain_progress_names_cached_nodes_in_order_with_what_ran() {
    let p = project();
    p.run("pipe.yaml", &[]).expect_code(0);
    let out = p.expflow(&["run", "pipe.yaml"]);
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let mut cached: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("cached "))
        .collect();
    cached.sort_unstable();
    assert_eq!(cached, ["a", "b", "c", "d"], "{stderr}");
    let summary = lines
        .iter()
        .position(|l| l.contains("0 executed, 4 cached"));
    let last_cached = lines.iter().rposition(|l| l.starts_with("cached "));
    assert!(summary > last_cached, "{stderr}");

    p.write(
        "fail.yaml",
        r#"
pipeline: fail
params: {fail: 0}
nodes:
  x:
    op: command
    out: {o: file}
    params: {run: "echo x > ${out.o}"}
  y:
    op: command
    in: {x: x.o}
    out: {o: file}
    params: {run: "test ${params.fail} = 0 && cat ${in.x} > ${out.o}"}
"#,
    );
    assert_eq!(p.expflow(&["run", "fail.yaml"]).status.code(), Some(0));
    let out = p.expflow(&["run", "fail.yaml", "--set", "fail=1"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let at = |prefix: &str| {
        stderr
            .lines()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in {stderr}"))
    };
    assert!(at("cached x") < at("start y"), "{stderr}");
    assert!(at("start y") < at("FAILED y"), "{stderr}");
}

/// Names of the files in `dir`, sorted.
fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Sets the modification time of the project file `rel` an hour back: the stat cache keeps
/// no digest of a file written in the last two seconds (it may still be changing).
fn age(p: &Project, rel: &str) {
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::open(p.path(rel))
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
}

#[test]
fn no_op_re_runs_leave_the_database_closed_and_are_still_recorded() {
    let p = project();
    p.run("pipe.yaml", &[]).expect_code(0);
    age(&p, "data.txt");
    age(&p, "out/upper.txt");
    // This run stores the stat-cache entries of the aged files: it opens the database.
    p.run("pipe.yaml", &[]).expect_code(0);
    // sled writes a new snapshot file each time it opens: a run that opens the database
    // changes this listing.
    let db = p.path(".expflow/db");
    let before = listing(&db);
    for _ in 0..2 {
        let r = p.run("pipe.yaml", &[]);
        r.expect_code(0);
        assert!(r.executed().is_empty(), "{:?}", r.executed());
        assert_eq!(listing(&db), before, "a no-op re-run opened the database");
    }
    // A parameter edit stores new records: that run opens the database, and a no-op
    // re-run after it need not.
    let edit = ["--set", "greeting=bonjour"];
    assert_eq!(p.run("pipe.yaml", &edit).executed(), names(&["a", "b"]));
    let edited = listing(&db);
    assert_ne!(edited, before);
    let r = p.run("pipe.yaml", &edit);
    assert!(r.executed().is_empty(), "{:?}", r.executed());
    assert_eq!(listing(&db), edited, "a no-op re-run opened the database");
    // Every run is in the history, the ones the database did not see included.
    let out = p.expflow(&["runs", "inc"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let runs = text.lines().filter(|l| l.contains(" ok ")).count();
    assert_eq!(runs, 6, "{text}");
}
