mod common;

use std::fs;

use expflow_cache::{Cas, Digest, SledStore, Store, rebuild};

fn workspace() -> (tempfile::TempDir, std::path::PathBuf, Cas) {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join(".expflow");
    let cas = Cas::open(&ws.join("cas")).unwrap();
    (dir, ws, cas)
}

#[test]
fn rebuild_restores_records_last_keys_runs_and_pins_into_a_fresh_db() {
    let (dir, ws, cas) = workspace();
    let model_src = dir.path().join("model");
    common::write_model_dir(&model_src);
    let a = common::record(
        "a",
        "demo",
        "a",
        &[("rows", common::file_output(&cas, b"a rows"))],
    );
    let mut b = common::record(
        "b",
        "demo",
        "b",
        &[("model", common::dir_output(&cas, &model_src))],
    );
    b.log = Some(cas.put_bytes(b"log of b").unwrap());
    let gone = common::record(
        "gone",
        "demo",
        "c",
        &[("rows", common::file_output(&cas, b"c"))],
    );
    let run = common::run("r1", "demo", 5, &[("a", a.key), ("b", b.key)]);
    {
        let store = SledStore::open(&ws).unwrap();
        for r in [&a, &b, &gone] {
            store.put_record(r).unwrap();
            store.set_last("demo", &r.node, &r.key).unwrap();
        }
        store.remove_record(&gone.key).unwrap();
        store.put_run(&run).unwrap();
        store.pin("r1").unwrap();
        store.pin("r0").unwrap();
        store.unpin("r0").unwrap();
        store.flush().unwrap();
    }
    let journal_before = fs::read(ws.join("journal.jsonl")).unwrap();
    fs::remove_dir_all(ws.join("db")).unwrap();

    let report = rebuild(&ws, &cas).unwrap();
    assert_eq!(report.records, 2);
    assert_eq!(report.skipped_missing, 0);
    assert_eq!(report.runs, 1);
    assert_eq!(report.lines_bad, 0);
    assert_eq!(report.moved_aside, None);
    assert_eq!(
        fs::read(ws.join("journal.jsonl")).unwrap(),
        journal_before,
        "rebuild must leave the journal as it was"
    );

    let store = SledStore::open(&ws).unwrap();
    assert_eq!(store.get_record(&a.key).unwrap(), Some(a.clone()));
    assert_eq!(store.get_record(&b.key).unwrap(), Some(b.clone()));
    assert_eq!(
        store.get_record(&gone.key).unwrap(),
        None,
        "forget is replayed"
    );
    assert_eq!(
        store.last_keys("demo").unwrap(),
        vec![
            ("a".to_string(), a.key),
            ("b".to_string(), b.key),
            ("c".to_string(), gone.key)
        ]
    );
    assert_eq!(store.runs().unwrap(), vec![run]);
    assert_eq!(store.pins().unwrap(), vec!["r1".to_string()]);
    // Opening the rebuilt store replays nothing and appends nothing.
    drop(store);
    assert_eq!(fs::read(ws.join("journal.jsonl")).unwrap(), journal_before);
}

#[test]
fn rebuild_skips_records_whose_outputs_are_not_in_the_cas() {
    let (dir, ws, cas) = workspace();
    let model_src = dir.path().join("model");
    common::write_model_dir(&model_src);
    let kept = common::record(
        "kept",
        "demo",
        "kept",
        &[("rows", common::file_output(&cas, b"kept"))],
    );
    let lost_file_out = common::file_output(&cas, b"lost");
    let lost_file = common::record(
        "lost-file",
        "demo",
        "lf",
        &[("rows", lost_file_out.clone())],
    );
    let dir_out = common::dir_output(&cas, &model_src);
    let lost_dir = common::record("lost-dir", "demo", "ld", &[("model", dir_out.clone())]);
    {
        let store = SledStore::open(&ws).unwrap();
        for r in [&kept, &lost_file, &lost_dir] {
            store.put_record(r).unwrap();
            store.set_last("demo", &r.node, &r.key).unwrap();
        }
    }
    cas.remove(&lost_file_out.digest).unwrap();
    // Remove one file of the directory, not its manifest.
    let weights = cas
        .read_manifest(&dir_out.digest)
        .unwrap()
        .entries
        .into_iter()
        .find(|e| e.path == "model.safetensors")
        .unwrap();
    cas.remove(&weights.digest).unwrap();

    let report = rebuild(&ws, &cas).unwrap();
    assert_eq!(report.records, 1);
    assert_eq!(report.skipped_missing, 2);
    let aside = report
        .moved_aside
        .clone()
        .expect("the old db is moved aside");
    assert!(aside.is_dir(), "{aside:?}");
    assert!(
        aside
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("db.broken-"),
        "{aside:?}"
    );

    let store = SledStore::open(&ws).unwrap();
    let keys: Vec<Digest> = store
        .records()
        .unwrap()
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(keys, vec![kept.key]);
    // The skipped records do not come back through the journal on a later open.
    drop(store);
    let store = SledStore::open(&ws).unwrap();
    assert_eq!(store.records().unwrap().len(), 1);
}

#[test]
fn rebuild_counts_and_skips_a_torn_last_line() {
    let (_d, ws, cas) = workspace();
    let a = common::record(
        "a",
        "demo",
        "a",
        &[("rows", common::file_output(&cas, b"a"))],
    );
    {
        let store = SledStore::open(&ws).unwrap();
        store.put_record(&a).unwrap();
    }
    let journal = ws.join("journal.jsonl");
    let mut bytes = fs::read(&journal).unwrap();
    bytes.extend_from_slice(br#"{"type":"last","pipeline":"demo","no"#);
    fs::write(&journal, &bytes).unwrap();

    let report = rebuild(&ws, &cas).unwrap();
    assert_eq!((report.records, report.lines_bad), (1, 1));
    let store = SledStore::open(&ws).unwrap();
    assert_eq!(store.records().unwrap(), vec![a]);
}

#[test]
fn rebuild_refuses_a_database_held_by_another_handle() {
    let (_d, ws, cas) = workspace();
    let _held = SledStore::open(&ws).unwrap();
    let err = rebuild(&ws, &cas).unwrap_err();
    assert!(
        matches!(err, expflow_cache::CacheError::DbLocked { .. }),
        "{err}"
    );
    assert!(
        ws.join("db").is_dir(),
        "the held database must stay in place"
    );
}
