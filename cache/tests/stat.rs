mod common;

use std::fs::{self, File};
use std::time::{Duration, SystemTime};

use expflow_cache::{Cas, Digest, SledStore, StatKey, Store, digest_path_cached};

fn set_mtime(path: &std::path::Path, t: SystemTime) {
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

fn an_hour_ago() -> SystemTime {
    SystemTime::now() - Duration::from_secs(3600)
}

#[test]
fn an_unchanged_stat_returns_the_cached_digest_without_reading_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join(".expflow")).unwrap();
    let file = dir.path().join("raw.csv");
    fs::write(&file, b"a,b\n1,2\n").unwrap();
    set_mtime(&file, an_hour_ago());

    let (d, n) = digest_path_cached(&file, &store).unwrap();
    assert_eq!((d, n), (Digest::of_bytes(b"a,b\n1,2\n"), 8));
    let key = StatKey::of(&file).unwrap();
    assert_eq!(
        store.stat_get(&key).unwrap(),
        Some(d),
        "the digest is remembered"
    );

    // Plant a different digest under the same stat: a cache hit returns it, proving the
    // file was not read again.
    let planted = Digest::of_bytes(b"planted");
    store.stat_put(&key, &planted).unwrap();
    assert_eq!(digest_path_cached(&file, &store).unwrap(), (planted, 8));
}

#[test]
fn a_changed_mtime_forces_a_rehash() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join(".expflow")).unwrap();
    let file = dir.path().join("raw.csv");
    fs::write(&file, b"version 1").unwrap();
    let t = an_hour_ago();
    set_mtime(&file, t);
    assert_eq!(
        digest_path_cached(&file, &store).unwrap().0,
        Digest::of_bytes(b"version 1")
    );

    // Same size, new bytes, mtime moved by one second.
    fs::write(&file, b"version 2").unwrap();
    set_mtime(&file, t + Duration::from_secs(1));
    assert_eq!(
        digest_path_cached(&file, &store).unwrap().0,
        Digest::of_bytes(b"version 2")
    );
}

#[test]
fn a_file_modified_just_now_is_hashed_but_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join(".expflow")).unwrap();
    let file = dir.path().join("fresh.txt");
    fs::write(&file, b"fresh").unwrap();
    let (d, _) = digest_path_cached(&file, &store).unwrap();
    assert_eq!(d, Digest::of_bytes(b"fresh"));
    assert_eq!(store.stat_get(&StatKey::of(&file).unwrap()).unwrap(), None);
}

#[test]
fn a_directory_digest_equals_the_digest_put_dir_stores() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join(".expflow")).unwrap();
    let cas = Cas::open(&dir.path().join(".expflow/cas")).unwrap();
    let src = dir.path().join("model");
    common::write_model_dir(&src);
    let (d, n) = digest_path_cached(&src, &store).unwrap();
    assert_eq!(cas.put_dir(&src).unwrap(), (d, n));
    assert!(cas.contains(&d));
}
