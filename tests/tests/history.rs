//! `runs`, `diff` and `compare` through the binary: a sweep whose metrics come from a JSON
//! output (type `metrics`) and a training-curve table named under `metrics:`, run three
//! times (as written, a global parameter changed, an input file changed).

use expflow_tests::Project;
use serde_json::Value;

const PIPE: &str = r#"
pipeline: sweep
params:
  scale: 2
inputs:
  data: data.txt
  curve: curve.csv
nodes:
  prep:
    op: command
    in: {d: inputs.data}
    out: {n: file}
    params: {run: "cat ${in.d} > ${out.n}"}
  train:
    op: command
    matrix: {lr: [1, 3]}
    in: {n: prep.n}
    out: {m: metrics}
    params:
      run: "echo \"{\\\"acc\\\": $(( $(cat ${in.n}) * ${matrix.lr} * ${params.scale} )), \\\"note\\\": \\\"x\\\"}\" > ${out.m}"
  table:
    op: load
    in: {src: inputs.curve}
  curve:
    op: command
    in: {t: table.table}
    out: {t: table}
    metrics: [t]
    params: {run: "cp ${in.t} ${out.t}"}
"#;

fn json(p: &Project, args: &[&str]) -> Value {
    let out = p.expflow(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn text(p: &Project, args: &[&str]) -> (i32, String, String) {
    let out = p.expflow(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Three runs: as written, `--set scale=3`, then `data.txt` changed (scale still 3).
fn three_runs() -> (Project, [String; 3]) {
    let p = Project::new();
    p.write("p.yaml", PIPE);
    p.write("data.txt", "5\n");
    p.write(
        "curve.csv",
        "step,loss,phase\n1,2.5,a\n2,1.25,a\n3,0.75,b\n",
    );
    let a = p.run("p.yaml", &[]);
    a.expect_code(0);
    let b = p.run("p.yaml", &["--set", "scale=3"]);
    b.expect_code(0);
    p.write("data.txt", "7\n");
    let c = p.run("p.yaml", &["--set", "scale=3"]);
    c.expect_code(0);
    let id = |r: &expflow_tests::RunResult| r.summary["run_id"].as_str().unwrap().to_string();
    let ids = [id(&a), id(&b), id(&c)];
    (p, ids)
}

#[test]
fn runs_list_changes_and_metrics_from_the_records() {
    let (p, ids) = three_runs();
    let rows = json(&p, &["runs", "--json"]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for (row, id) in rows.iter().zip(&ids) {
        assert_eq!(row["run_id"], id.as_str());
    }
    // Six nodes: prep, two sweep points, table, curve.
    assert_eq!(rows[0]["executed"], 5);
    assert_eq!(rows[0]["changed"], Value::Array(vec![]));
    assert_eq!(rows[1]["executed"], 2, "{}", rows[1]);
    assert_eq!(rows[1]["cached"], 3);
    let changed: Vec<&str> = rows[1]["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        changed,
        ["params.scale", "train[lr=1].run", "train[lr=3].run"]
    );
    // JSON numbers are kept, text is not; the curve keeps its numeric columns (last value).
    let m = &rows[0]["metrics"];
    assert_eq!(m["train[lr=3].m.acc"], 5.0 * 3.0 * 2.0);
    assert!(m.get("train[lr=3].m.note").is_none(), "{m}");
    assert_eq!(m["curve.t.loss"], 0.75);
    assert_eq!(m["curve.t.step"], 3.0);
    assert!(m.get("curve.t.phase").is_none(), "{m}");
    assert_eq!(rows[2]["metrics"]["train[lr=1].m.acc"], 7.0 * 3.0);
    // The same list for a pipeline given by its file, and as Markdown and CSV.
    assert_eq!(
        json(&p, &["runs", "p.yaml", "--json"])
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let (code, md, _) = text(&p, &["runs", "--md"]);
    assert_eq!(code, 0);
    assert_eq!(md.lines().count(), 2 + 3, "{md}");
    assert!(md.starts_with("| run | started |"), "{md}");
    let (code, csv, _) = text(&p, &["runs", "sweep", "--csv"]);
    assert_eq!(code, 0);
    assert_eq!(csv.lines().count(), 1 + 3, "{csv}");
}

#[test]
fn diff_names_what_changed_and_why() {
    let (p, ids) = three_runs();
    // A global parameter: the two sweep points re-ran because of their `run`.
    let d = json(&p, &["diff", &ids[0], &ids[1], "--json"]);
    assert_eq!(d["params"][0]["name"], "params.scale");
    assert_eq!(d["params"][0]["old"], 2);
    assert_eq!(d["params"][0]["new"], 3);
    let reran: Vec<&str> = d["reran"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(reran, ["train[lr=1]", "train[lr=3]"]);
    assert_eq!(d["reran"][0]["causes"][0]["kind"], "param");
    let acc = d["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "train[lr=3].m.acc")
        .unwrap();
    assert_eq!(acc["old"], 30.0);
    assert_eq!(acc["new"], 45.0);
    assert_eq!(acc["delta"], 15.0);

    // An input file: `prep` re-ran for it, the sweep for `prep`; each metric change is
    // attributed to the input file upstream.
    let d = json(&p, &["diff", &ids[1], &ids[2], "--json"]);
    assert_eq!(d["params"], Value::Array(vec![]));
    let prep = &d["reran"][0];
    assert_eq!(prep["node"], "prep");
    assert_eq!(prep["causes"][0]["kind"], "input_file");
    assert_eq!(prep["causes"][0]["input"], "data");
    assert_eq!(d["reran"][1]["causes"][0]["kind"], "upstream");
    assert_eq!(d["reran"][1]["causes"][0]["node"], "prep");
    for m in d["metrics"].as_array().unwrap() {
        assert_eq!(
            m["causes"],
            serde_json::json!(["prep: input file `data` changed (port d)"]),
            "{m}"
        );
    }
    let (code, out, _) = text(&p, &["diff", &ids[1], &ids[2]]);
    assert_eq!(code, 0);
    let out = out.replace(&ids[1], "RUN_B").replace(&ids[2], "RUN_C");
    insta::assert_snapshot!(out);

    // A prefix names a run when it is unique; a wrong id is a usage error.
    let (code, _, err) = text(&p, &["diff", "nosuch", &ids[0]]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no run `nosuch`") && err.contains("expflow runs"),
        "{err}"
    );
}

#[test]
fn compare_has_a_row_per_run_and_point_and_sorts_by_a_metric() {
    let (p, _) = three_runs();
    let t = json(&p, &["compare", "sweep", "--json"]);
    let rows = t["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3 * 2, "three runs of two points");
    assert_eq!(rows[0]["point"], "lr=1");
    assert_eq!(rows[1]["point"], "lr=3");
    // Points share base-name columns; nodes outside the matrix are in every row.
    assert!(
        t["params"]
            .as_array()
            .unwrap()
            .contains(&"train.run".into())
    );
    assert!(
        t["metrics"]
            .as_array()
            .unwrap()
            .contains(&"train.m.acc".into())
    );
    assert_eq!(rows[5]["metrics"]["curve.t.loss"], 0.75);

    let t = json(
        &p,
        &[
            "compare",
            "p.yaml",
            "--only-changed",
            "--sort",
            "train.m.acc",
            "--json",
        ],
    );
    let accs: Vec<f64> = t["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metrics"]["train.m.acc"].as_f64().unwrap())
        .collect();
    assert_eq!(accs, [63.0, 45.0, 30.0, 21.0, 15.0, 10.0]);
    let params: Vec<&str> = t["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        params,
        ["params.scale", "train.run"],
        "constant columns are left out"
    );
    assert_eq!(t["metrics"], serde_json::json!(["train.m.acc"]));

    // Text: the groups are named in a line above the headers.
    let (code, out, _) = text(&p, &["compare", "sweep", "--only-changed"]);
    assert_eq!(code, 0);
    let first = out.lines().next().unwrap();
    assert!(
        first.contains("| parameters") && first.contains("| metrics"),
        "{out}"
    );

    let (code, _, err) = text(&p, &["compare", "sweep", "--sort", "train.m.ac"]);
    assert_eq!(code, 2);
    assert!(err.contains("did you mean `train.m.acc`?"), "{err}");
    let (code, _, err) = text(&p, &["compare", "other"]);
    assert_eq!(code, 2);
    assert!(err.contains("it has runs of: sweep"), "{err}");
}

#[test]
fn metrics_must_name_an_output_that_can_hold_them() {
    let p = Project::new();
    p.write(
        "p.yaml",
        "pipeline: x\nnodes:\n  a:\n    op: command\n    out: {d: dir, m: metrics}\n    metrics: [d, mm]\n    params: {run: \"true\"}\n",
    );
    let (code, _, err) = text(&p, &["plan", "p.yaml"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("names output `d`, of type `dir`, which holds no metrics"),
        "{err}"
    );
    assert!(
        err.contains("names `mm`, which is not one of its outputs")
            && err.contains("did you mean `m`?"),
        "{err}"
    );
}

#[test]
fn plan_estimates_what_a_run_will_cost_from_earlier_records() {
    let (p, ids) = three_runs();
    let plan = json(&p, &["plan", "p.yaml", "--set", "scale=9", "--json"]);
    let entries = plan.as_array().unwrap();
    let train = entries.iter().find(|e| e["name"] == "train[lr=3]").unwrap();
    assert_eq!(train["state"], "run");
    let est = &train["estimate"];
    assert_eq!(
        est["basis"],
        format!("its run {}", ids[2]).as_str(),
        "{est}"
    );
    // The bytes are those of the record's outputs: `{"acc": 63, "note": "x"}` and a newline.
    assert_eq!(est["bytes"], r#"{"acc": 63, "note": "x"}"#.len() + 1);
    assert!(est["seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(est["gpu_hours"], 0.0);
    let prep = entries.iter().find(|e| e["name"] == "prep").unwrap();
    assert_eq!(prep["state"], "cached");
    assert!(prep.get("estimate").is_none());

    // A node never run before: the closest record of the same operator.
    let renamed = PIPE.replace("  train:\n", "  fit:\n");
    p.write("q.yaml", &renamed);
    let plan = json(&p, &["plan", "q.yaml", "--json"]);
    let fit = plan
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "fit[lr=1]")
        .unwrap();
    let basis = fit["estimate"]["basis"].as_str().unwrap();
    assert!(
        basis.starts_with("train[lr=1] of run ") && basis.ends_with("parameters equal)"),
        "{basis}"
    );
    let (code, text, _) = text(&p, &["plan", "p.yaml", "--set", "scale=9"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("expected: ")
            && text.contains("from earlier runs of 2 of the 2 nodes to run"),
        "{text}"
    );
}

#[test]
fn a_node_gathers_every_point_of_a_matrix_node() {
    let p = Project::new();
    let pipe = r#"
pipeline: gather
nodes:
  train:
    op: command
    matrix: {lr: [1, 3]}
    out: {m: metrics}
    params: {run: "echo \"{\\\"acc\\\": ${matrix.lr}}\" > ${out.m}"}
  all:
    op: command
    in:
      points: train[*].m
    out: {t: file}
    params: {run: "cat ${in.points}/points.json ${in.points}/0000.json ${in.points}/0001.json > ${out.t}"}
outputs:
  out/all.txt: all.t
"#;
    p.write("p.yaml", pipe);
    let first = p.run("p.yaml", &[]);
    first.expect_code(0);
    let gathered = p.read("out/all.txt");
    let (list, rest) = gathered.split_at(gathered.find("]\n").unwrap() + 2);
    let points: Value = serde_json::from_str(list).unwrap();
    assert_eq!(points[0]["node"], "train[lr=1]");
    assert_eq!(points[0]["matrix"]["lr"], 1);
    assert_eq!(points[1]["matrix"]["lr"], 3);
    assert_eq!(points[1]["type"], "metrics");
    assert_eq!(points[1]["path"], "0001.json");
    assert_eq!(rest, "{\"acc\": 1}\n{\"acc\": 3}\n");
    // Nothing changed: nothing runs. A changed point: it and the gathering node run.
    assert!(p.run("p.yaml", &[]).executed().is_empty());
    p.write("p.yaml", &pipe.replace("[1, 3]", "[1, 5]"));
    let again = p.run("p.yaml", &[]);
    again.expect_code(0);
    assert_eq!(again.executed(), ["all", "train[lr=5]"]);
    assert!(p.read("out/all.txt").ends_with("{\"acc\": 5}\n"));
    // The graph draws an edge from every point.
    let (code, dot, _) = text(&p, &["graph", "p.yaml", "--format", "dot"]);
    assert_eq!(code, 0);
    assert_eq!(dot.matches("m→points[*]").count(), 2, "{dot}");

    // Gathering needs a matrix node and one of its ports.
    p.write(
        "q.yaml",
        &pipe
            .replace("    matrix: {lr: [1, 3]}\n", "")
            .replace("${matrix.lr}", "1"),
    );
    let (code, _, err) = text(&p, &["plan", "q.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("node `train` has no `matrix`"), "{err}");
    p.write("r.yaml", &pipe.replace("train[*].m", "train[*].n"));
    let (code, _, err) = text(&p, &["plan", "r.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("did you mean `train[*].m`?"), "{err}");
}
