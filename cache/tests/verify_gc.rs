mod common;

use std::collections::HashSet;
use std::fs;

use expflow_cache::{BlobState, Cas, Digest, SledStore, Store, gc, verify};

fn workspace() -> (tempfile::TempDir, Cas, SledStore) {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join(".expflow");
    let cas = Cas::open(&ws.join("cas")).unwrap();
    let store = SledStore::open(&ws).unwrap();
    (dir, cas, store)
}

#[test]
fn verify_is_clean_on_intact_data_and_flags_corrupt_and_missing_blobs() {
    let (dir, cas, store) = workspace();
    let model_src = dir.path().join("model");
    common::write_model_dir(&model_src);
    let rows = common::file_output(&cas, b"rows of a");
    let mut a = common::record("a", "demo", "a", &[("rows", rows.clone())]);
    a.log = Some(cas.put_bytes(b"log a").unwrap());
    a.items = vec![
        cas.put_bytes(b"item 0").unwrap(),
        cas.put_bytes(b"item 1").unwrap(),
    ];
    let model = common::dir_output(&cas, &model_src);
    let b = common::record("b", "demo", "b", &[("model", model.clone())]);
    store.put_record(&a).unwrap();
    store.put_record(&b).unwrap();

    let clean = verify(&cas, &store).unwrap();
    assert!(clean.is_clean(), "{clean:?}");
    // rows, log, 2 items, manifest, 3 model files
    assert_eq!(clean.blobs_checked, 8);
    assert_eq!(clean.records_checked, 2);
    let total: u64 = cas.list().unwrap().iter().map(|(_, n)| n).sum();
    assert_eq!(clean.bytes_checked, total);

    // Corrupt the rows blob, lose the log and one model file.
    common::corrupt_blob(&cas, &rows.digest);
    cas.remove(&a.log.unwrap()).unwrap();
    let config = cas
        .read_manifest(&model.digest)
        .unwrap()
        .entries
        .into_iter()
        .find(|e| e.path == "config.json")
        .unwrap();
    cas.remove(&config.digest).unwrap();

    let report = verify(&cas, &store).unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.bad_blobs.len(), 1);
    assert_eq!(report.bad_blobs[0].0, rows.digest);
    assert!(matches!(report.bad_blobs[0].1, BlobState::Corrupt { .. }));

    let mut found: Vec<(String, String, Digest, BlobState)> = report
        .bad_records
        .iter()
        .map(|r| (r.node.clone(), r.what.clone(), r.digest, r.state))
        .collect();
    found.sort_by(|x, y| (&x.0, &x.1).cmp(&(&y.0, &y.1)));
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!((found[0].0.as_str(), found[0].1.as_str()), ("a", "log"));
    assert_eq!(found[0].3, BlobState::Missing);
    assert_eq!(
        (found[1].0.as_str(), found[1].1.as_str()),
        ("a", "output rows")
    );
    assert!(matches!(found[1].3, BlobState::Corrupt { .. }));
    assert_eq!(
        (found[2].0.as_str(), found[2].1.as_str()),
        ("b", "output model file config.json")
    );
    assert_eq!(
        (found[2].2, found[2].3),
        (config.digest, BlobState::Missing)
    );
}

/// Two runs of `demo` and one of `other`; returns what the test needs to check.
struct Fixture {
    old_only: Digest,
    shared: Digest,
    new_only: Digest,
    other_blob: Digest,
    old_rec: Digest,
    new_rec: Digest,
    model_files: Vec<Digest>,
    orphan: Digest,
}

fn fixture(dir: &std::path::Path, cas: &Cas, store: &SledStore) -> Fixture {
    let shared = common::file_output(cas, b"shared by both runs");
    let old_out = common::file_output(cas, b"old output");
    let new_out = common::file_output(cas, b"new output");
    let model_src = dir.join("model");
    common::write_model_dir(&model_src);
    let model = common::dir_output(cas, &model_src);
    let model_files: Vec<Digest> = cas
        .read_manifest(&model.digest)
        .unwrap()
        .entries
        .iter()
        .map(|e| e.digest)
        .collect();

    let old_rec = common::record("old", "demo", "a", &[("rows", old_out.clone())]);
    let old_shared = common::record("old-s", "demo", "s", &[("rows", shared.clone())]);
    let mut new_rec = common::record(
        "new",
        "demo",
        "a",
        &[("rows", new_out.clone()), ("model", model)],
    );
    new_rec.log = Some(cas.put_bytes(b"new log").unwrap());
    let new_shared = common::record("new-s", "demo", "s", &[("rows", shared.clone())]);
    let other_out = common::file_output(cas, b"other pipeline");
    let other_rec = common::record("other", "other", "x", &[("rows", other_out.clone())]);
    for r in [&old_rec, &old_shared, &new_rec, &new_shared, &other_rec] {
        store.put_record(r).unwrap();
    }
    store
        .put_run(&common::run(
            "r-old",
            "demo",
            100,
            &[("a", old_rec.key), ("s", old_shared.key)],
        ))
        .unwrap();
    store
        .put_run(&common::run(
            "r-new",
            "demo",
            200,
            &[("a", new_rec.key), ("s", new_shared.key)],
        ))
        .unwrap();
    // An older start time than both demo runs: keep_last is per pipeline.
    store
        .put_run(&common::run(
            "r-other",
            "other",
            50,
            &[("x", other_rec.key)],
        ))
        .unwrap();
    let orphan = cas.put_bytes(b"nobody refers to me").unwrap();
    Fixture {
        old_only: old_out.digest,
        shared: shared.digest,
        new_only: new_out.digest,
        other_blob: other_out.digest,
        old_rec: old_rec.key,
        new_rec: new_rec.key,
        model_files,
        orphan,
    }
}

#[test]
fn gc_keeps_what_recent_runs_need_and_dry_run_changes_nothing() {
    let (dir, cas, store) = workspace();
    let f = fixture(dir.path(), &cas, &store);
    let before_blobs = cas.list().unwrap();
    let before_records = store.records().unwrap().len();

    let dry = gc(&cas, &store, 1, true).unwrap();
    assert_eq!(
        cas.list().unwrap(),
        before_blobs,
        "a dry run removes no blob"
    );
    assert_eq!(
        store.records().unwrap().len(),
        before_records,
        "nor any record"
    );

    let real = gc(&cas, &store, 1, false).unwrap();
    assert_eq!(real, dry, "a dry run reports what a real run does");
    assert_eq!(real.records_removed, 2, "{real:?}"); // old and old-s
    assert_eq!(real.blobs_removed, 2, "{real:?}"); // old output and the orphan
    let removed_bytes = (b"old output".len() + b"nobody refers to me".len()) as u64;
    assert_eq!(real.bytes_removed, removed_bytes);
    assert_eq!(real.blobs_kept + real.blobs_removed, before_blobs.len());

    assert!(!cas.contains(&f.old_only));
    assert!(!cas.contains(&f.orphan));
    for d in [f.shared, f.new_only, f.other_blob]
        .iter()
        .chain(&f.model_files)
    {
        assert!(cas.contains(d), "live blob {d} was removed");
    }
    assert_eq!(store.get_record(&f.old_rec).unwrap(), None);
    assert!(store.get_record(&f.new_rec).unwrap().is_some());
    // Every remaining record is intact.
    assert!(verify(&cas, &store).unwrap().bad_records.is_empty());
    // Running again finds nothing more.
    let again = gc(&cas, &store, 1, false).unwrap();
    assert_eq!((again.blobs_removed, again.records_removed), (0, 0));
}

#[test]
fn gc_keeps_pinned_runs_and_honours_keep_last() {
    let (dir, cas, store) = workspace();
    let f = fixture(dir.path(), &cas, &store);
    store.pin("r-old").unwrap();
    let report = gc(&cas, &store, 1, false).unwrap();
    assert_eq!(report.records_removed, 0);
    assert_eq!(report.blobs_removed, 1, "only the orphan");
    assert!(cas.contains(&f.old_only));
    assert!(store.get_record(&f.old_rec).unwrap().is_some());

    // keep_last = 0 and no pins: everything goes.
    store.unpin("r-old").unwrap();
    let report = gc(&cas, &store, 0, false).unwrap();
    assert_eq!(report.records_removed, 5);
    assert_eq!(report.blobs_kept, 0);
    assert!(cas.list().unwrap().is_empty());
    let left: HashSet<_> = store
        .records()
        .unwrap()
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert!(left.is_empty());
    assert!(
        fs::read_dir(cas.root().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );
}
