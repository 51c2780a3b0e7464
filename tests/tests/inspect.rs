//! plan and explain.

use expflow_tests::Project;
use serde_json::Value;

const PIPE: &str = "pipeline: pl\nparams:\n  word: hi\nnodes:\n  a:\n    op: command\n    out: {o: file}\n    params:\n      run: \"echo ${params.word} > ${out.o}\"\n  b:\n    op: command\n    in: {x: a.o}\n    out: {o: file}\n    params:\n      run: \"cat ${in.x} ${in.x} > ${out.o}\"\n";

fn plan(p: &Project, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["plan", "pipe.yaml", "--json"];
    args.extend_from_slice(extra);
    let out = p.expflow(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn plan_json_on_a_fresh_and_on_a_cached_workspace() {
    let p = Project::new();
    p.write("pipe.yaml", PIPE);
    let fresh = plan(&p, &[]);
    assert_eq!(fresh.len(), 2);
    assert_eq!(fresh[0]["name"], "a");
    assert_eq!(fresh[0]["state"], "run");
    assert_eq!(fresh[0]["key"].as_str().map(str::len), Some(64));
    assert_eq!(fresh[0]["reasons"], serde_json::json!(["never run"]));
    assert_eq!(fresh[1]["state"], "pending");
    assert!(fresh[1]["key"].is_null());
    assert_eq!(fresh[1]["reasons"][0], "waits on a");
    let run = p.run("pipe.yaml", &[]);
    run.expect_code(0);
    let cached = plan(&p, &[]);
    assert!(
        cached
            .iter()
            .all(|e| e["state"] == "cached" && e["key"].is_string())
    );
    // The planned key is the key the run used.
    let executed_key = run
        .events
        .iter()
        .find(|e| e["event"] == "node_executed" && e["node"] == "a")
        .unwrap()["key"]
        .clone();
    assert_eq!(cached[0]["key"], executed_key);
    assert_eq!(fresh[0]["key"], executed_key);
}

#[test]
fn plan_reports_a_missing_output_and_what_waits_on_it() {
    let p = Project::new();
    p.write("pipe.yaml", PIPE);
    let run = p.run("pipe.yaml", &[]);
    run.expect_code(0);
    let a = run
        .events
        .iter()
        .find(|e| e["event"] == "node_executed" && e["node"] == "a")
        .unwrap();
    let blob = expflow_tests::blob_path(
        &p.dir.path().join(".expflow"),
        a["outputs"]["o"].as_str().unwrap(),
    );
    std::fs::remove_file(&blob).unwrap();
    let planned = plan(&p, &[]);
    assert_eq!(planned[0]["state"], "run");
    assert_eq!(planned[0]["key"], a["key"]);
    assert_eq!(
        planned[0]["reasons"],
        serde_json::json!(["a stored output is missing or corrupt; it will be recomputed"])
    );
    assert_eq!(planned[1]["state"], "pending");
    assert_eq!(planned[1]["reasons"], serde_json::json!(["waits on a"]));
    // The plan changed nothing: the run recomputes a, and b is a hit again.
    let again = p.run("pipe.yaml", &[]);
    again.expect_code(0);
    assert!(
        again
            .events
            .iter()
            .any(|e| e["event"] == "node_executed" && e["node"] == "a")
    );
    assert!(
        again
            .events
            .iter()
            .any(|e| e["event"] == "node_cached" && e["node"] == "b")
    );
}

#[test]
fn explain_names_the_changed_field() {
    let p = Project::new();
    p.write("pipe.yaml", PIPE);
    p.run("pipe.yaml", &[]).expect_code(0);
    let out = p.expflow(&["explain", "pipe.yaml", "a", "--set", "word=ho", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ex: Value = serde_json::from_slice(&out.stdout).unwrap();
    let changes = ex[0]["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        changes[0],
        "param run: echo hi > ${out.o} → echo ho > ${out.o}"
    );
    assert_eq!(ex[0]["state"], "run");
    let text = p.expflow(&["explain", "pipe.yaml", "a", "--set", "word=ho"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("param run"));
    // After a run with the new value, b's input changed:
    p.run("pipe.yaml", &["--set", "word=ho"]).expect_code(0);
    let out = p.expflow(&["explain", "pipe.yaml", "b", "--json"]);
    let ex: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        ex[0]["changes"][0]
            .as_str()
            .unwrap()
            .starts_with("input x changed"),
        "{ex}"
    );
}

#[test]
fn log_shows_the_latest_run_even_within_one_second() {
    let p = Project::new();
    p.write("pipe.yaml", PIPE);
    p.run("pipe.yaml", &[]).expect_code(0);
    // Two runs started in the same second: their ids sort by a random suffix, the opposite
    // of the order they ran in.
    for (id, t, text) in [
        ("29991231-235959-ffff", 4_102_444_799_000u64, "earlier\n"),
        ("29991231-235959-0000", 4_102_444_799_500u64, "later\n"),
    ] {
        p.write(
            &format!(".expflow/runs/{id}/events.jsonl"),
            &format!("{{\"t_ms\":{t},\"event\":\"run_started\",\"run_id\":\"{id}\",\"pipeline\":\"pl\",\"pipeline_path\":\"pipe.yaml\",\"pid\":1,\"jobs\":1,\"nodes\":2}}\n"),
        );
        p.write(&format!(".expflow/runs/{id}/logs/z.log"), text);
    }
    // `z` has no record, so its log comes from the latest run.
    let out = p.expflow(&["log", "z"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "later\n");
}

#[test]
fn log_of_a_node_the_latest_run_found_cached_names_the_run_that_produced_it() {
    let p = Project::new();
    p.write(
        "pipe.yaml",
        "pipeline: pl\nnodes:\n  a:\n    op: command\n    out: {o: file}\n    params:\n      run: \"echo making o; echo hi > ${out.o}\"\n",
    );
    let first = p.run("pipe.yaml", &[]);
    first.expect_code(0);
    let second = p.run("pipe.yaml", &[]);
    second.expect_code(0);
    assert_eq!(second.cached(), ["a"]);
    let (one, two) = (
        first.summary["run_id"].as_str().unwrap(),
        second.summary["run_id"].as_str().unwrap(),
    );
    let out = p.expflow(&["log", "a"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let key = &first
        .events
        .iter()
        .find(|e| e["event"] == "node_executed")
        .unwrap()["key"];
    let want = format!(
        "== log of `a` from run {one}, which produced its current record ({}); the latest run, \
         {two}, found it cached ==",
        &key.as_str().unwrap()[..12]
    );
    assert_eq!(text.lines().next(), Some(want.as_str()), "{text}");
    assert!(text.ends_with("\nmaking o\n"), "{text}");
    let json: Value = serde_json::from_slice(&p.expflow(&["log", "a", "--json"]).stdout).unwrap();
    assert_eq!(json["run_id"], one);
    assert_eq!(json["latest_run"], two);
    assert_eq!(json["latest_run_state"], "cached");
    assert!(
        json["log"].as_str().unwrap().ends_with("making o\n"),
        "{json}"
    );
    // --run still shows what that run wrote for the node: nothing, it was cached.
    let cached = p.expflow(&["log", "a", "--run", two]);
    assert_ne!(cached.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&cached.stderr).contains("has no log in run"));
}

/// `expflow show NODE.PORT` prints ExpStar's rows tables: the Arrow schema (nested
/// `messages` and `videos` columns, irregular values as `KEY.json` text) and the first rows.
#[test]
fn show_prints_an_expstar_rows_table() {
    let p = Project::new();
    p.write(
        "rows.jsonl",
        concat!(
            r#"{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "<video>Narrate step 1"}, {"role": "assistant", "content": "Light the lamp"}], "videos": ["/path/to/chemistry/ch_1/video/01-a/01-a_step_1.mp4"], "id": "ch_1_01-a_1", "extra": {"k": 1}}"#,
            "\n",
            r#"{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "<video>Narrate step 2"}, {"role": "assistant", "content": "Heat the tube"}], "videos": ["/path/to/chemistry/ch_1/video/01-a/01-a_step_2.mp4"], "id": "ch_1_01-a_2"}"#,
            "\n",
        ),
    );
    p.write(
        "pipe.yaml",
        "pipeline: rows\ninputs:\n  rows: rows.jsonl\nnodes:\n  rows:\n    op: expstar.from_jsonl\n    in: {file: inputs.rows}\n  back:\n    op: expstar.to_jsonl\n    in: {rows: rows.rows}\n",
    );
    p.run("pipe.yaml", &[]).expect_code(0);
    let out = p.expflow(&["show", "rows.rows"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // The first line names the stored digest: pinned bytes, but not what this test is about.
    let (head, table) = text.split_once('\n').unwrap();
    assert!(head.starts_with("rows.rows: table "), "{head}");
    insta::assert_snapshot!("show_expstar_rows_table", table);
    // The JSON Lines boundary gives back the input's bytes.
    let file = p.expflow(&["show", "back.file", "--json"]);
    let meta: Value = serde_json::from_slice(&file.stdout).unwrap();
    let path = meta["path"].as_str().unwrap();
    assert_eq!(std::fs::read_to_string(path).unwrap(), p.read("rows.jsonl"));
}
