mod common;

use std::fs;
use std::path::Path;

use expflow_cache::{CacheError, Cas, Digest, SledStore, StatKey, Store};

fn workspace() -> (tempfile::TempDir, std::path::PathBuf, Cas) {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join(".expflow");
    let cas = Cas::open(&ws.join("cas")).unwrap();
    (dir, ws, cas)
}

fn journal_types(ws: &Path) -> Vec<String> {
    fs::read_to_string(ws.join("journal.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["type"].as_str().unwrap().to_string()
        })
        .collect()
}

fn stat_key(path: &str) -> StatKey {
    StatKey {
        path: path.into(),
        dev: 1,
        ino: 2,
        size: 3,
        mtime_ns: 1_700_000_000_123_456_789,
        ctime_ns: 1_700_000_000_987_654_321,
    }
}

#[test]
fn everything_written_survives_reopen() {
    let (_d, ws, cas) = workspace();
    let rec = common::record(
        "k1",
        "demo",
        "steps",
        &[("rows", common::file_output(&cas, b"rows"))],
    );
    let run = common::run("r1", "demo", 10, &[("steps", rec.key)]);
    let item = Digest::of_bytes(b"item-key");
    let item_blob = Digest::of_bytes(b"item-blob");
    let sk = stat_key("/data/raw.mp4");
    {
        let store = SledStore::open(&ws).unwrap();
        assert_eq!(store.get_record(&rec.key).unwrap(), None);
        store.put_record(&rec).unwrap();
        store.set_last("demo", "steps", &rec.key).unwrap();
        store.put_run(&run).unwrap();
        store.pin("r1").unwrap();
        store.memo_put(&item, &item_blob).unwrap();
        store.stat_put(&sk, &rec.key).unwrap();
        store.flush().unwrap();
    }
    let store = SledStore::open(&ws).unwrap();
    assert_eq!(store.get_record(&rec.key).unwrap().as_ref(), Some(&rec));
    assert_eq!(store.records().unwrap(), vec![rec.clone()]);
    assert_eq!(store.get_last("demo", "steps").unwrap(), Some(rec.key));
    assert_eq!(store.runs().unwrap(), vec![run]);
    assert_eq!(store.pins().unwrap(), vec!["r1".to_string()]);
    assert_eq!(store.memo_get(&item).unwrap(), Some(item_blob));
    assert_eq!(store.stat_get(&sk).unwrap(), Some(rec.key));
    // The key material keeps its field order and numbers.
    let back = store.get_record(&rec.key).unwrap().unwrap();
    assert_eq!(back.material.to_string(), rec.material.to_string());
}

#[test]
fn durable_writes_are_journaled_in_order_and_caches_are_not() {
    let (_d, ws, cas) = workspace();
    let store = SledStore::open(&ws).unwrap();
    let rec = common::record(
        "k1",
        "demo",
        "a",
        &[("rows", common::file_output(&cas, b"x"))],
    );
    store.put_record(&rec).unwrap();
    store.set_last("demo", "a", &rec.key).unwrap();
    store.stat_put(&stat_key("/x"), &rec.key).unwrap();
    store.memo_put(&rec.key, &rec.key).unwrap();
    store
        .put_run(&common::run("r1", "demo", 1, &[("a", rec.key)]))
        .unwrap();
    store.pin("r1").unwrap();
    store.unpin("r1").unwrap();
    store.remove_record(&rec.key).unwrap();
    assert_eq!(
        journal_types(&ws),
        ["record", "last", "run", "pin", "unpin", "forget"]
    );
    let first: serde_json::Value = serde_json::from_str(
        fs::read_to_string(ws.join("journal.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["record"]["key"], rec.key.to_hex());
    assert_eq!(store.get_record(&rec.key).unwrap(), None);
    assert!(store.pins().unwrap().is_empty());
}

#[test]
fn runs_sort_by_start_and_last_keys_stay_within_their_pipeline() {
    let (_d, ws, _cas) = workspace();
    let store = SledStore::open(&ws).unwrap();
    let k = |s: &str| Digest::of_bytes(s.as_bytes());
    store
        .put_run(&common::run("zz-late", "demo", 300, &[]))
        .unwrap();
    store
        .put_run(&common::run("aa-early", "demo", 100, &[]))
        .unwrap();
    store
        .put_run(&common::run("mm-mid", "other", 200, &[]))
        .unwrap();
    let ids: Vec<String> = store
        .runs()
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(ids, ["aa-early", "mm-mid", "zz-late"]);

    store.set_last("demo", "b", &k("1")).unwrap();
    store.set_last("demo", "a", &k("2")).unwrap();
    store.set_last("demo", "a", &k("3")).unwrap();
    store.set_last("demo2", "a", &k("4")).unwrap();
    store.set_last("dem", "o", &k("5")).unwrap();
    assert_eq!(
        store.last_keys("demo").unwrap(),
        vec![("a".to_string(), k("3")), ("b".to_string(), k("1"))]
    );
    assert_eq!(store.get_last("demo", "zzz").unwrap(), None);
}

#[test]
fn stat_cache_needs_the_whole_tuple_to_match() {
    let (_d, ws, _cas) = workspace();
    let store = SledStore::open(&ws).unwrap();
    let key = stat_key("/data/a.csv");
    let d = Digest::of_bytes(b"a.csv");
    store.stat_put(&key, &d).unwrap();
    assert_eq!(store.stat_get(&key).unwrap(), Some(d));
    let variants = [
        StatKey {
            dev: 9,
            ..key.clone()
        },
        StatKey {
            ino: 9,
            ..key.clone()
        },
        StatKey {
            size: 9,
            ..key.clone()
        },
        StatKey {
            mtime_ns: key.mtime_ns + 1,
            ..key.clone()
        },
        StatKey {
            ctime_ns: key.ctime_ns + 1,
            ..key.clone()
        },
        StatKey {
            path: "/data/b.csv".into(),
            ..key.clone()
        },
    ];
    for v in variants {
        assert_eq!(store.stat_get(&v).unwrap(), None, "{v:?}");
    }
}

#[test]
fn a_second_open_is_db_locked() {
    let (_d, ws, _cas) = workspace();
    let _held = SledStore::open(&ws).unwrap();
    let err = SledStore::open(&ws)
        .err()
        .expect("the second open must fail");
    assert!(matches!(err, CacheError::DbLocked { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&ws.join("db").display().to_string()),
        "{err}"
    );
}

#[test]
fn a_damaged_database_is_db_unreadable_and_says_how_to_rebuild() {
    let (_d, ws, _cas) = workspace();
    drop(SledStore::open(&ws).unwrap());
    let conf = ws.join("db/conf");
    let len = fs::metadata(&conf).unwrap().len() as usize;
    fs::write(&conf, vec![b'z'; len]).unwrap();
    let err = SledStore::open(&ws)
        .err()
        .expect("a damaged database must not open");
    assert!(matches!(err, CacheError::DbUnreadable { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "the database at {} cannot be opened",
            ws.join("db").display()
        )),
        "{msg}"
    );
    assert!(msg.contains("run `expflow db rebuild`"), "{msg}");
    assert!(msg.contains("nothing in the CAS is lost"), "{msg}");
}

#[test]
fn open_replays_journal_entries_the_database_lost() {
    let (_d, ws, cas) = workspace();
    let recs: Vec<_> = (0..20)
        .map(|i| {
            let out = common::file_output(&cas, format!("out {i}").as_bytes());
            common::record(&format!("k{i}"), "demo", &format!("n{i}"), &[("rows", out)])
        })
        .collect();
    {
        let store = SledStore::open(&ws).unwrap();
        for r in &recs {
            store.put_record(r).unwrap();
            store.set_last("demo", &r.node, &r.key).unwrap();
        }
        store.remove_record(&recs[0].key).unwrap();
        store.flush().unwrap();
    }
    // Damage the start of sled's data file: sled 0.34 then opens with its data silently
    // truncated. The journal brings everything back.
    let data = ws.join("db/db");
    let mut bytes = fs::read(&data).unwrap();
    let n = bytes.len().min(4096);
    for b in &mut bytes[..n] {
        *b ^= 0x5a;
    }
    fs::write(&data, bytes).unwrap();
    let journal_before = fs::read(ws.join("journal.jsonl")).unwrap();

    let store = SledStore::open(&ws).unwrap();
    let mut got = store.records().unwrap();
    got.sort_by(|a, b| a.node.cmp(&b.node));
    let mut want: Vec<_> = recs[1..].to_vec();
    want.sort_by(|a, b| a.node.cmp(&b.node));
    assert_eq!(got, want);
    assert_eq!(store.last_keys("demo").unwrap().len(), 20);
    drop(store);
    assert_eq!(
        fs::read(ws.join("journal.jsonl")).unwrap(),
        journal_before,
        "replaying must not append to the journal"
    );
}

#[test]
fn a_torn_journal_line_does_not_swallow_the_next_entry() {
    let (_d, ws, cas) = workspace();
    let a = common::record(
        "a",
        "demo",
        "a",
        &[("rows", common::file_output(&cas, b"a"))],
    );
    let b = common::record(
        "b",
        "demo",
        "b",
        &[("rows", common::file_output(&cas, b"b"))],
    );
    {
        let store = SledStore::open(&ws).unwrap();
        store.put_record(&a).unwrap();
    }
    // A crash in the middle of an append.
    let journal = ws.join("journal.jsonl");
    let mut text = fs::read(&journal).unwrap();
    text.extend_from_slice(br#"{"type":"record","record":{"key":"00"#);
    fs::write(&journal, text).unwrap();
    {
        let store = SledStore::open(&ws).unwrap();
        store.put_record(&b).unwrap();
        assert_eq!(store.records().unwrap().len(), 2);
    }
    let text = fs::read_to_string(&journal).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(serde_json::from_str::<serde_json::Value>(lines[1]).is_err());
    let last: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
    assert_eq!(last["record"]["key"], b.key.to_hex());
}

#[test]
fn the_store_is_usable_from_many_threads() {
    let (_d, ws, cas) = workspace();
    let store = std::sync::Arc::new(SledStore::open(&ws).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let store = std::sync::Arc::clone(&store);
            let cas = cas.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    let out = common::file_output(&cas, format!("{t}-{i}").as_bytes());
                    let rec = common::record(
                        &format!("{t}-{i}"),
                        "demo",
                        &format!("n{t}_{i}"),
                        &[("rows", out)],
                    );
                    store.put_record(&rec).unwrap();
                    store.set_last("demo", &rec.node, &rec.key).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(store.records().unwrap().len(), 40);
    assert_eq!(journal_types(&ws).len(), 80);
}

/// A record's summary read from the database (without its curves or key material) is what
/// summarising the whole record gives: parameters, scalars, and each series' last number
/// (a trailing null skipped, an all-null series left out); a record with no material or no
/// metrics has none.
#[test]
fn record_summary_matches_the_full_record() {
    let (_d, ws, _cas) = workspace();
    let store = SledStore::open(&ws).unwrap();
    let mut rec = common::record("summary", "p", "train", &[]);
    rec.metrics.scalars.insert("scores.bleu".into(), 31.5);
    rec.metrics
        .series
        .insert("metrics.loss".into(), vec![Some(2.0), Some(1.25), None]);
    rec.metrics
        .series
        .insert("metrics.eval".into(), vec![None, None]);
    store.put_record(&rec).unwrap();
    let mut bare = common::record("bare", "p", "other", &[]);
    bare.material = serde_json::Value::Null;
    store.put_record(&bare).unwrap();

    let s = store.get_record_summary(&rec.key).unwrap().unwrap();
    assert_eq!(s, expflow_cache::RecordSummary::of(&rec));
    assert_eq!(s.params["lr"], serde_json::json!(0.0001));
    let mut metrics = s.metrics.clone();
    metrics.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        metrics,
        vec![
            ("metrics.loss".to_string(), 1.25),
            ("scores.bleu".to_string(), 31.5)
        ]
    );
    let b = store.get_record_summary(&bare.key).unwrap().unwrap();
    assert_eq!(b, expflow_cache::RecordSummary::of(&bare));
    assert!(b.params.is_empty() && b.metrics.is_empty());
    assert!(
        store
            .get_record_summary(&Digest::of_bytes(b"none"))
            .unwrap()
            .is_none()
    );
}

/// The hit index: a record stored before it existed (no entry) is found through the record,
/// without blob stats; an entry stored for it is found itself, survives reopening, and is
/// dropped when the record is stored again or forgotten (so a hit never uses outputs other
/// than the record's).
#[test]
fn hit_entries_come_from_records_and_are_dropped_with_them() {
    let (_d, ws, cas) = workspace();
    let out = common::file_output(&cas, b"hit");
    let rec = common::record("hit", "p", "n", &[("o", out.clone())]);
    let stat = stat_key(&cas.blob_path(&out.digest).display().to_string());
    {
        let store = SledStore::open(&ws).unwrap();
        store.put_record(&rec).unwrap();
        let h = store.get_hit(&rec.key).unwrap().unwrap();
        assert_eq!(h.outputs, rec.outputs);
        assert!(h.stats.is_empty());
        let mut with = h.clone();
        with.stats.insert("o".into(), stat.clone());
        store.put_hit(&rec.key, &with).unwrap();
        assert_eq!(store.get_hit(&rec.key).unwrap().unwrap(), with);
        store.flush().unwrap();
    }
    let store = SledStore::open(&ws).unwrap();
    assert_eq!(store.get_hit(&rec.key).unwrap().unwrap().stats["o"], stat);
    store.put_record(&rec).unwrap();
    assert!(store.get_hit(&rec.key).unwrap().unwrap().stats.is_empty());
    store
        .put_hit(
            &rec.key,
            &expflow_cache::Hit {
                outputs: rec.outputs.clone(),
                stats: [("o".to_string(), stat)].into_iter().collect(),
            },
        )
        .unwrap();
    store.remove_record(&rec.key).unwrap();
    assert!(store.get_hit(&rec.key).unwrap().is_none());
}
