//! The lazy store: a run of a pipeline whose last-hits file is up to date is answered
//! without opening the database, records its run in the journal only, and every other
//! state of the workspace opens the database as before.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use expflow_cache::{Cas, Digest, Hit, LazyStore, StatKey, Store};

struct Ws {
    _dir: tempfile::TempDir,
    root: PathBuf,
    cas: Cas,
}

/// A workspace where pipeline `p` ran once: nodes a and b with records, last keys and
/// checked hits, a stat-cache entry for an input, and the last-hits file written.
fn ran_once() -> (Ws, Vec<(String, Digest)>, BTreeMap<Digest, Hit>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join(".expflow");
    let cas = Cas::open(&root.join("cas")).unwrap();
    let store = LazyStore::open(&root, None).unwrap();
    assert!(store.db_is_open());
    let mut hits = BTreeMap::new();
    for (node, bytes) in [("a", b"alpha".as_slice()), ("b", b"beta".as_slice())] {
        let out = common::file_output(&cas, bytes);
        let rec = common::record(node, "p", node, &[("out", out.clone())]);
        store.put_record(&rec).unwrap();
        store.set_last("p", node, &rec.key).unwrap();
        let hit = Hit {
            outputs: [("out".to_string(), out.clone())].into(),
            stats: [("out".to_string(), cas.stat_blob(&out.digest).unwrap())].into(),
        };
        store.put_hit(&rec.key, &hit).unwrap();
        hits.insert(rec.key, hit);
    }
    store
        .stat_put(&input_stat(), &Digest::of_bytes(b"input"))
        .unwrap();
    let last = store.last_keys("p").unwrap();
    store
        .put_run(&common::run("r1", "p", 1_000, &[("a", last[0].1)]))
        .unwrap();
    store.keep_last_hits("p");
    drop(store);
    (
        Ws {
            _dir: dir,
            root,
            cas,
        },
        last,
        hits,
    )
}

fn input_stat() -> StatKey {
    StatKey {
        path: "/data/input.csv".into(),
        dev: 1,
        ino: 2,
        size: 3,
        mtime_ns: 4,
        ctime_ns: 5,
    }
}

fn last_hits_file(root: &Path) -> PathBuf {
    let dir = root.join("last-hits");
    let files: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one file for one pipeline: {files:?}");
    files[0].clone()
}

fn run_ids(root: &Path) -> Vec<String> {
    let store = LazyStore::open(root, None).unwrap();
    store
        .runs()
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect()
}

#[test]
fn a_no_op_run_is_answered_and_recorded_without_opening_the_database() {
    let (ws, last, hits) = ran_once();
    for round in 2..=3 {
        let store = LazyStore::open(&ws.root, Some("p")).unwrap();
        assert!(!store.db_is_open(), "round {round}: the file is up to date");
        assert_eq!(store.last_keys("p").unwrap(), last);
        assert_eq!(store.get_last("p", "b").unwrap(), Some(last[1].1));
        assert_eq!(store.get_last("p", "zz").unwrap(), None);
        for (key, hit) in &hits {
            assert_eq!(store.get_hit(key).unwrap().as_ref(), Some(hit));
        }
        assert_eq!(
            store.stat_get(&input_stat()).unwrap(),
            Some(Digest::of_bytes(b"input"))
        );
        let run = common::run(
            &format!("r{round}"),
            "p",
            round * 1_000,
            &[("a", last[0].1)],
        );
        store.put_run(&run).unwrap();
        store.flush().unwrap();
        store.keep_last_hits("p");
        assert!(
            !store.db_is_open(),
            "round {round}: nothing needed the database"
        );
    }
    // The runs recorded in the journal only are in the database once it opens.
    assert_eq!(run_ids(&ws.root), ["r1", "r2", "r3"]);
    // ... and the file is still up to date after that open (which wrote no journal line).
    let store = LazyStore::open(&ws.root, Some("p")).unwrap();
    assert!(!store.db_is_open());
}

#[test]
fn anything_the_file_does_not_hold_opens_the_database() {
    let (ws, _, _) = ran_once();
    let store = LazyStore::open(&ws.root, Some("p")).unwrap();
    // A key with no hit in the file (the record of a node that changed).
    let other = common::record("c", "p", "c", &[]);
    assert_eq!(store.get_hit(&other.key).unwrap(), None);
    assert!(store.db_is_open());
    drop(store);

    let store = LazyStore::open(&ws.root, Some("p")).unwrap();
    assert_eq!(store.last_keys("q").unwrap(), Vec::new());
    assert!(store.db_is_open(), "another pipeline's keys");
    drop(store);

    let store = LazyStore::open(&ws.root, Some("p")).unwrap();
    let changed = StatKey {
        size: 30,
        ..input_stat()
    };
    assert_eq!(store.stat_get(&changed).unwrap(), None);
    assert!(!store.db_is_open(), "a stat-cache miss only costs a hash");
    store
        .stat_put(&changed, &Digest::of_bytes(b"input 2"))
        .unwrap();
    assert!(store.db_is_open(), "storing the new digest");
    drop(store);

    let store = LazyStore::open(&ws.root, Some("p")).unwrap();
    let a = Digest::of_bytes(b"a");
    store.set_last("p", "a", &a).unwrap();
    assert!(store.db_is_open(), "a write other than a run");
    store
        .put_run(&common::run("r2", "p", 2_000, &[("a", a)]))
        .unwrap();
    store.keep_last_hits("p");
    drop(store);
    // That write reached the file too: the next run finds the new last key without the
    // database.
    let store = LazyStore::open(&ws.root, Some("p")).unwrap();
    assert!(!store.db_is_open());
    assert_eq!(store.get_last("p", "a").unwrap(), Some(a));
    assert!(!store.db_is_open());
}

#[test]
fn a_journal_that_changed_since_the_file_was_written_makes_it_unused() {
    let (ws, last, _) = ran_once();
    // A record stored by a run that stopped before it wrote the file again.
    let store = LazyStore::open(&ws.root, None).unwrap();
    let out = common::file_output(&ws.cas, b"alpha 2");
    let rec = common::record("a2", "p", "a", &[("out", out)]);
    store.put_record(&rec).unwrap();
    store.set_last("p", "a", &rec.key).unwrap();
    store.flush().unwrap();
    drop(store);
    let store = LazyStore::open(&ws.root, Some("p")).unwrap();
    assert!(
        store.db_is_open(),
        "the journal grew: the file is out of date"
    );
    assert_eq!(store.get_last("p", "a").unwrap(), Some(rec.key));
    assert_ne!(rec.key, last[0].1);
}

#[test]
fn a_journal_replaced_by_one_of_the_same_length_makes_the_file_unused() {
    let (ws, _, _) = ran_once();
    let journal = ws.root.join("journal.jsonl");
    let mut text = fs::read(&journal).unwrap();
    let n = text.len();
    // Same length, one byte different in the last line: "r1" becomes "r9".
    let at = text.windows(4).rposition(|w| w == b"\"r1\"").unwrap();
    text[at + 2] = b'9';
    assert_eq!(text.len(), n);
    fs::write(&journal, &text).unwrap();
    let store = LazyStore::open(&ws.root, Some("p")).unwrap();
    assert!(store.db_is_open());
}

#[test]
fn a_damaged_or_truncated_file_is_not_used() {
    let (ws, last, hits) = ran_once();
    let file = last_hits_file(&ws.root);
    let good = fs::read(&file).unwrap();
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    for (what, bytes) in [
        ("one byte flipped", flipped),
        ("cut short", good[..good.len() - 10].to_vec()),
        ("empty", Vec::new()),
    ] {
        fs::write(&file, &bytes).unwrap();
        let store = LazyStore::open(&ws.root, Some("p")).unwrap();
        assert!(store.db_is_open(), "{what}");
        assert_eq!(store.last_keys("p").unwrap(), last, "{what}");
        let (key, hit) = hits.iter().next().unwrap();
        assert_eq!(store.get_hit(key).unwrap().as_ref(), Some(hit), "{what}");
    }
}

#[test]
fn the_file_is_the_same_bytes_for_the_same_state() {
    let (ws, _, _) = ran_once();
    let file = last_hits_file(&ws.root);
    let first = fs::read(&file).unwrap();
    // Written again from the database against the same journal.
    let store = LazyStore::open(&ws.root, None).unwrap();
    store.stat_get(&input_stat()).unwrap();
    store.keep_last_hits("p");
    drop(store);
    assert_eq!(fs::read(&file).unwrap(), first);
}

#[test]
fn a_replaced_database_is_opened_not_bypassed() {
    let (ws, last, _) = ran_once();
    // Deleted: opened (made again from the journal), so that it is whole again.
    fs::remove_dir_all(ws.root.join("db")).unwrap();
    let store = LazyStore::open(&ws.root, Some("p")).unwrap();
    assert!(store.db_is_open());
    assert_eq!(store.last_keys("p").unwrap(), last);
    drop(store);
    // Swapped for one sled cannot open: the run reports it, as without the file.
    let store = LazyStore::open(&ws.root, None).unwrap();
    store.keep_last_hits("p");
    drop(store);
    assert!(!LazyStore::open(&ws.root, Some("p")).unwrap().db_is_open());
    fs::remove_dir_all(ws.root.join("db")).unwrap();
    fs::create_dir_all(ws.root.join("db/db")).unwrap();
    fs::create_dir_all(ws.root.join("db/conf")).unwrap();
    assert!(LazyStore::open(&ws.root, Some("p")).is_err());
}
