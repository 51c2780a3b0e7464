//! audit, gc, db rebuild, lineage, show, graph, log.

use expflow_tests::{Project, blobs, names};
use serde_json::Value;

const PIPE: &str = "pipeline: m\nparams:\n  word: hi\nnodes:\n  a:\n    op: command\n    out: {o: file}\n    params:\n      run: \"echo ${params.word} > ${out.o}\"\n  b:\n    op: command\n    in: {x: a.o}\n    out: {o: file}\n    params:\n      run: \"cat ${in.x} ${in.x} > ${out.o}\"\n";

fn json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn audit_reexecutes_and_catches_a_command_that_is_not_deterministic() {
    let p = Project::new();
    p.write("pipe.yaml", PIPE);
    p.run("pipe.yaml", &[]).expect_code(0);
    let ok = p.expflow(&["audit", "--fraction", "1", "--json"]);
    let report = json(&ok);
    assert_eq!(report["ok"], true);
    assert_eq!(report["audited"].as_array().unwrap().len(), 2);
    assert!(
        report["audited"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["outcome"] == "match")
    );
    assert_eq!(report["summary"]["exact"], 2);
    let text = p.expflow(&["audit", "--fraction", "1"]);
    assert_eq!(text.status.code(), Some(0));
    insta::assert_snapshot!("audit_text", String::from_utf8_lossy(&text.stdout));
    // A command whose output changes on every execution is caught.
    let q = Project::new();
    q.write("pipe.yaml", "pipeline: nd\nnodes:\n  t:\n    op: command\n    out: {o: file}\n    params:\n      run: \"date +%s%N > ${out.o}\"\n");
    q.run("pipe.yaml", &[]).expect_code(0);
    let bad = q.expflow(&["audit", "--fraction", "1", "--json"]);
    assert_eq!(bad.status.code(), Some(4));
    let report: Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(report["audited"][0]["outcome"], "mismatch");
    assert_eq!(report["audited"][0]["class"], "deterministic");
    assert_eq!(report["summary"]["mismatch"], 1);
}

#[test]
fn gc_keeps_what_recent_runs_reach_and_dry_run_deletes_nothing() {
    let p = Project::new();
    p.write("pipe.yaml", PIPE);
    for w in ["one", "two", "three"] {
        p.run("pipe.yaml", &["--set", &format!("word={w}")])
            .expect_code(0);
    }
    let ws = p.path(".expflow");
    let before = blobs(&ws).len();
    let dry = json(&p.expflow(&["gc", "--keep", "1", "--dry-run", "--json"]));
    assert!(dry["blobs_removed"].as_u64().unwrap() > 0);
    assert!(dry["bytes_removed"].as_u64().unwrap() > 0);
    assert_eq!(blobs(&ws).len(), before, "a dry run removes nothing");
    let real = json(&p.expflow(&["gc", "--keep", "1", "--json"]));
    assert_eq!(real["blobs_removed"], dry["blobs_removed"]);
    assert_eq!(
        blobs(&ws).len() as u64,
        before as u64 - real["blobs_removed"].as_u64().unwrap()
    );
    // What the last run reached is intact: everything is cached and verifies.
    let again = p.run("pipe.yaml", &["--set", "word=three"]);
    assert_eq!(again.cached(), names(&["a", "b"]));
    assert_eq!(p.expflow(&["verify"]).status.code(), Some(0));
    // An older configuration was collected and re-runs.
    let old = p.run("pipe.yaml", &["--set", "word=one"]);
    assert_eq!(old.executed(), names(&["a", "b"]));
}

#[test]
fn gc_keeps_resumable_state_unless_told_to_drop_it() {
    let p = Project::new();
    p.write("pipe.yaml", PIPE);
    p.run("pipe.yaml", &[]).expect_code(0);
    // What an interrupted training node leaves behind (see Context::resume_dir).
    p.write(
        ".expflow/resume/0123abcd/step-5/adapter.safetensors",
        "weights",
    );
    let kept = json(&p.expflow(&["gc", "--json"]));
    assert_eq!(kept["resume_states"], 1);
    assert_eq!(kept["resume_bytes"], 7);
    assert!(p.path(".expflow/resume/0123abcd").is_dir());
    let dry = json(&p.expflow(&["gc", "--drop-resume", "--dry-run", "--json"]));
    assert_eq!(dry["resume_states"], 1);
    assert!(
        p.path(".expflow/resume/0123abcd").is_dir(),
        "a dry run keeps it"
    );
    json(&p.expflow(&["gc", "--drop-resume", "--json"]));
    assert!(!p.path(".expflow/resume/0123abcd").exists());
}

#[test]
fn pinned_runs_survive_gc() {
    let p = Project::new();
    p.write("pipe.yaml", PIPE);
    let first = p.run("pipe.yaml", &["--set", "word=keepme"]);
    first.expect_code(0);
    p.run("pipe.yaml", &["--set", "word=other"]).expect_code(0);
    let id = first.summary["run_id"].as_str().unwrap();
    assert!(p.expflow(&["pin", id]).status.success());
    json(&p.expflow(&["gc", "--keep", "1", "--json"]));
    let back = p.run("pipe.yaml", &["--set", "word=keepme"]);
    assert_eq!(back.cached(), names(&["a", "b"]));
}

#[test]
fn a_garbled_database_heals_from_the_journal() {
    let p = Project::new();
    p.write("pipe.yaml", PIPE);
    p.run("pipe.yaml", &[]).expect_code(0);
    // Garbage in place of sled's files: sled opens it empty, the journal fills it again.
    let db = p.path(".expflow/db");
    std::fs::remove_dir_all(&db).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(db.join("conf"), b"\x00garbage").unwrap();
    std::fs::write(db.join("db"), b"\x00\x01\x02 not a sled file").unwrap();
    let r = p.run("pipe.yaml", &[]);
    r.expect_code(0);
    assert_eq!(r.cached(), names(&["a", "b"]), "nothing is lost");
}

#[test]
fn db_rebuild_recreates_an_unopenable_index_from_the_journal() {
    let p = Project::new();
    p.write("pipe.yaml", PIPE);
    p.run("pipe.yaml", &[]).expect_code(0);
    // A database sled cannot open at all.
    let db = p.path(".expflow/db");
    std::fs::remove_dir_all(&db).unwrap();
    std::fs::create_dir_all(db.join("db")).unwrap();
    std::fs::create_dir_all(db.join("conf")).unwrap();
    let broken = p.expflow(&["run", "pipe.yaml"]);
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert_eq!(broken.status.code(), Some(1));
    assert!(stderr.contains("run `expflow db rebuild`"), "{stderr}");
    let rebuilt = p.expflow(&["--workspace", ".expflow", "db", "rebuild"]);
    let out = String::from_utf8_lossy(&rebuilt.stdout);
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    assert!(out.contains("2 records restored"), "{out}");
    let r = p.run("pipe.yaml", &[]);
    r.expect_code(0);
    assert_eq!(r.cached(), names(&["a", "b"]), "nothing is lost");
    // The broken database was kept aside, not deleted.
    let kept = std::fs::read_dir(p.path(".expflow"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("db.broken-"));
    assert!(kept);
}

#[test]
fn lineage_show_graph_and_log() {
    let p = Project::new();
    p.write("pipe.yaml", PIPE);
    let run = p.run("pipe.yaml", &[]);
    run.expect_code(0);
    let lin = json(&p.expflow(&["lineage", "b", "--json"]));
    assert_eq!(lin["node"], "b");
    assert_eq!(lin["inputs"][0]["source"], "a.o");
    assert_eq!(lin["inputs"][0]["from"]["node"], "a");
    let shown = p.expflow(&["show", "b.o"]);
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("hi\nhi"),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );
    let meta = json(&p.expflow(&["show", "b", "--json"]));
    let path = meta["path"].as_str().unwrap();
    assert_eq!(std::fs::read_to_string(path).unwrap(), "hi\nhi\n");
    let dot = p.expflow(&["graph", "pipe.yaml", "--format", "dot"]);
    assert!(String::from_utf8_lossy(&dot.stdout).contains("\"a\" -> \"b\" [label=\"o→x\"]"));
    let mermaid = p.expflow(&["graph", "pipe.yaml", "--format", "mermaid"]);
    assert!(String::from_utf8_lossy(&mermaid.stdout).contains("a -->|o→x| b"));
    let log = p.expflow(&["log"]);
    let text = String::from_utf8_lossy(&log.stdout);
    assert!(
        text.contains("executed a") && text.contains("run finished: ok"),
        "{text}"
    );
    let status = json(&p.expflow(&["status", "--json"]));
    assert_eq!(status["records"], 2);
    assert_eq!(status["runs"][0]["run_id"], run.summary["run_id"]);
}

#[test]
fn show_piped_into_a_reader_that_stops_early_ends_quietly() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let p = Project::new();
    p.write(
        "pipe.yaml",
        "pipeline: m\nnodes:\n  a:\n    op: command\n    out: {o: file}\n    params:\n      run: \"seq 1 200000 > ${out.o}\"\n",
    );
    p.run("pipe.yaml", &[]).expect_code(0);
    let mut child = Command::new(expflow_tests::expflow_bin())
        .args(["show", "a.o", "--rows", "100000"])
        .current_dir(p.path(""))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The reader is gone (as `| head` exits); expflow must not panic.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
