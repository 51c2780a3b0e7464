//! `expflow report` loaded in headless chromium: a small pipeline with every node state
//! (executed, cached, failed, skipped), a sweep gathered by another node, JSON metrics and
//! a training-curve table, run twice with an input changed in between. The shipped
//! pipelines' reports are checked at the end of `pipelines_e2e.rs`, on the workspaces that
//! test makes. The 10,000-node measurement is `report_of_10000_nodes` (ignored; run it with
//! `--ignored --nocapture`).

use expflow_tests::Project;
use expflow_tests::browser::{Browser, check_report};
use serde_json::Value;

const PIPE: &str = r#"
pipeline: report_demo
params:
  scale: 2
inputs:
  curve: curve.csv
nodes:
  table:
    op: load
    in: {src: inputs.curve}
  curve:
    op: command
    in: {t: table.table}
    out: {t: table}
    metrics: [t]
    params: {run: "cp ${in.t} ${out.t}"}
  train:
    op: command
    matrix: {lr: [1, 3]}
    in: {t: curve.t}
    out: {m: metrics}
    params:
      run: "echo \"{\\\"acc\\\": $(( ${matrix.lr} * ${params.scale} ))}\" > ${out.m}"
  all:
    op: command
    in: {ms: "train[*].m"}
    out: {list: file}
    params: {run: "ls ${in.ms} > ${out.list}"}
  broken:
    op: command
    in: {list: all.list}
    out: {x: file}
    params: {run: "echo 'failing on purpose <script>' >&2; exit 3"}
  after:
    op: command
    in: {x: broken.x}
    out: {y: file}
    params: {run: "cp ${in.x} ${out.y}"}
"#;

fn run_id(r: &expflow_tests::RunResult) -> String {
    r.summary["run_id"].as_str().expect("run id").to_string()
}

#[test]
fn a_report_shows_every_state_the_diff_and_curves_offline_in_chromium() {
    let Some(browser) = Browser::find() else {
        return;
    };
    let p = Project::new();
    p.write("p.yaml", PIPE);
    p.write("curve.csv", "step,loss\n1,2.5\n2,1.25\n3,0.75\n");
    let a = p.run("p.yaml", &["--keep-going"]);
    a.expect_code(1);
    p.write("curve.csv", "step,loss\n1,2.0\n2,1.0\n3,0.5\n4,0.25\n");
    let b = p.run("p.yaml", &["--keep-going", "--set", "scale=3"]);
    b.expect_code(1);
    let (a, b) = (run_id(&a), run_id(&b));

    // The latest run, compared with the first.
    let seen = check_report(&p, &browser, "demo", &["--baseline", &a]);
    let nodes = seen["nodes"].as_u64().unwrap();
    assert_eq!(nodes, 7, "table, curve, 2 sweep points, all, broken, after: {seen}");
    assert_eq!(seen["dagNodes"].as_u64(), Some(nodes), "a small DAG is drawn whole: {seen}");
    // Edges: table→curve, curve→2 points, 2 points→all, all→broken, broken→after.
    assert_eq!(seen["dagEdges"].as_u64(), Some(7), "{seen}");
    let states: Vec<&str> = seen["dagStates"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        states,
        ["st-executed", "st-failed", "st-skipped"],
        "the input changed, so everything before `broken` re-ran: {seen}"
    );
    // `table`, `curve`, the two points, `all` and `broken` (failed) ran.
    assert_eq!(seen["ganttBars"].as_u64(), Some(6), "{seen}");
    // acc of the two points, each value linked to its record.
    assert!(seen["metricLinks"].as_u64().unwrap() >= 2, "{seen}");
    assert!(seen["diff"].as_u64().unwrap() >= 2, "params and metrics tables: {seen}");
    assert!(
        seen["diffCharts"].as_u64().unwrap() >= 1,
        "the loss curve changed, so a before/after chart: {seen}"
    );
    let detail = seen["detail"].as_str().unwrap();
    let clicked = seen["clicked"].as_str().unwrap();
    assert!(detail.contains(clicked) && detail.contains("key"), "{detail}");

    // A run found entirely in the cache has only cached (and the failing) nodes; the run
    // argument may be a pipeline file.
    let c = p.run("p.yaml", &["--keep-going", "--set", "scale=3"]);
    c.expect_code(1);
    assert!(c.executed().is_empty(), "{:?}", c.executed());
    let html = p.path("reports/cached.html");
    let out = p.expflow(&["report", "p.yaml", "--out", html.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&run_id(&c)), "the pipeline's latest run: {text}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("default-src 'none'"), "a strict CSP");
    assert!(!page.contains("failing on purpose <script>"), "log text is escaped");
    assert!(
        page.contains(&format!("\"rec_run\":\"{b}\"")),
        "cached nodes name the run that made their records"
    );
}

#[test]
fn report_refuses_an_unknown_run_and_an_output_that_is_not_html() {
    let p = Project::new();
    p.write("p.yaml", "pipeline: x\nnodes:\n  a:\n    op: command\n    out: {o: file}\n    params: {run: \"echo 1 > ${out.o}\"}\n");
    p.run("p.yaml", &[]).expect_code(0);
    let out = p.expflow(&["report", "nosuchrun", "--out", "r.html"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no run `nosuchrun`") && err.contains("expflow runs"), "{err}");
    let out = p.expflow(&["report", "--out", "r.txt"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("r.txt") && err.contains("FILE.html"), "{err}");
    assert!(!p.path("r.txt").exists());
}
