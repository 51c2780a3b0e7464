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
  table2:
    op: load
    in: {src: inputs.curve}
  twin:
    op: command
    in: {t: table2.table}
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
    let second = p.run("p.yaml", &["--keep-going", "--set", "scale=3"]);
    second.expect_code(1);
    let (a, b) = (run_id(&a), run_id(&second));

    // The latest run, compared with the first.
    let seen = check_report(&p, &browser, "demo", &["--baseline", &a]);
    let nodes = seen["nodes"].as_u64().unwrap();
    assert_eq!(
        nodes, 9,
        "table, curve, table2, twin, 2 points, all, broken, after: {seen}"
    );
    assert_eq!(
        seen["dagNodes"].as_u64(),
        Some(nodes),
        "a small DAG is drawn whole: {seen}"
    );
    // `table2` and `twin` do what `table` and `curve` do (same keys, one record each), but
    // the DAG keeps their own edge; `after` (skipped, no record) keeps its edge too.
    let edges: Vec<&str> = seen["edgeNames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        edges,
        [
            "all > broken",
            "broken > after",
            "curve > train[lr=1]",
            "curve > train[lr=3]",
            "table > curve",
            "table2 > twin",
            "train[lr=1] > all",
            "train[lr=3] > all",
        ],
        "{seen}"
    );
    let states: Vec<&str> = seen["dagStates"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for state in ["st-executed", "st-failed", "st-skipped"] {
        assert!(states.contains(&state), "{state}: {seen}");
    }
    // One timeline bar per node that ran (executed, or failed: `broken`).
    let mut ran = second.executed();
    ran.extend(second.nodes("node_failed"));
    ran.dedup();
    assert_eq!(
        seen["ganttBars"].as_u64(),
        Some(ran.len() as u64),
        "{ran:?}: {seen}"
    );
    // acc of the two points, each value linked to its record.
    assert!(seen["metricLinks"].as_u64().unwrap() >= 2, "{seen}");
    assert!(
        seen["diff"].as_u64().unwrap() >= 2,
        "params and metrics tables: {seen}"
    );
    assert!(
        seen["diffCharts"].as_u64().unwrap() >= 1,
        "the loss curve changed, so a before/after chart: {seen}"
    );
    let detail = seen["detail"].as_str().unwrap();
    let clicked = seen["clicked"].as_str().unwrap();
    assert!(
        detail.contains(clicked) && detail.contains("key"),
        "{detail}"
    );

    // A run found entirely in the cache has only cached (and the failing) nodes; the run
    // argument may be a pipeline file.
    let c = p.run("p.yaml", &["--keep-going", "--set", "scale=3"]);
    c.expect_code(1);
    assert!(c.executed().is_empty(), "{:?}", c.executed());
    let html = p.path("reports/cached.html");
    let out = p.expflow(&["report", "p.yaml", "--out", html.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&run_id(&c)),
        "the pipeline's latest run: {text}"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("default-src 'none'"), "a strict CSP");
    assert!(
        !page.contains("failing on purpose <script>"),
        "log text is escaped"
    );
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
    assert!(
        err.contains("no run `nosuchrun`") && err.contains("expflow runs"),
        "{err}"
    );
    let out = p.expflow(&["report", "--out", "r.txt"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("r.txt") && err.contains("FILE.html"), "{err}");
    assert!(!p.path("r.txt").exists());
}

/// The 10,000-node measurement in README.md: 100 stages of 100 `command` nodes, each
/// reading two nodes of the stage before (every node's work differs, so all execute), plus
/// a training-curve table; then the report's
/// size, the time `expflow report` takes, and the time chromium takes to render it.
/// `cargo test -p expflow-tests --test report_browser -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement: runs 10,000 nodes (minutes on 2 cores)"]
fn report_of_10000_nodes() {
    let Some(browser) = Browser::find() else {
        return;
    };
    let (stages, width) = (100, 100);
    let mut yaml = String::from(
        "pipeline: wide\ninputs:\n  curve: curve.csv\nnodes:\n  table:\n    op: load\n    in: {src: inputs.curve}\n  curve:\n    op: command\n    in: {t: table.table}\n    out: {t: table}\n    metrics: [t]\n    params: {run: \"cp ${in.t} ${out.t}\"}\n",
    );
    for s in 0..stages {
        for j in 0..width {
            yaml.push_str(&format!("  n{s}_{j}:\n    op: command\n"));
            if s == 0 {
                yaml.push_str(&format!(
                    "    out: {{o: file}}\n    params: {{run: \"echo {s}_{j} > ${{out.o}}\"}}\n"
                ));
            } else {
                let other = (j * 7 + 1) % width;
                yaml.push_str(&format!(
                    "    in: {{a: n{p}_{j}.o, b: n{p}_{other}.o}}\n    out: {{o: file}}\n    params: {{run: \"cp ${{in.a}} ${{out.o}} && echo {s}_{j} >> ${{out.o}}\"}}\n",
                    p = s - 1
                ));
            }
        }
    }
    let p = Project::new();
    p.write("wide.yaml", &yaml);
    let curve: String = (1..=500)
        .map(|i| format!("{i},{}\n", 3.0 / f64::from(i).sqrt()))
        .collect();
    p.write("curve.csv", &format!("step,loss\n{curve}"));
    let started = std::time::Instant::now();
    p.run("wide.yaml", &[]).expect_code(0);
    println!(
        "run of {} nodes: {:.1} s",
        stages * width + 2,
        started.elapsed().as_secs_f64()
    );

    let started = std::time::Instant::now();
    let seen = check_report(&p, &browser, "wide", &[]);
    let html = expflow_tests::browser::screenshots().join("wide.html");
    let bytes = std::fs::metadata(&html).unwrap().len();
    println!(
        "report + browser check: {:.1} s; file {:.2} MiB; chromium: load to first render {} ms (script {} ms after navigation start); {} of {} nodes and {} edges drawn; {} timeline bars drawn",
        started.elapsed().as_secs_f64(),
        bytes as f64 / 1048576.0,
        seen["loadToReadyMs"],
        seen["renderMs"],
        seen["dagNodes"],
        seen["nodes"],
        seen["dagEdges"],
        seen["ganttBars"],
    );
    let t = std::time::Instant::now();
    let out = p.expflow(&["report", "--out", p.path("again.html").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    println!("expflow report alone: {} ms", t.elapsed().as_millis());
    assert_eq!(seen["nodes"].as_u64(), Some((stages * width + 2) as u64));
    assert_eq!(
        seen["dagStates"],
        serde_json::json!(["st-executed"]),
        "{seen}"
    );
    let drawn = seen["dagNodes"].as_u64().unwrap();
    assert!(
        drawn > 0 && drawn < 1000,
        "only what is in view is drawn: {drawn}"
    );
    assert!(seen["loadToReadyMs"].as_u64().unwrap() < 10_000, "{seen}");
}
