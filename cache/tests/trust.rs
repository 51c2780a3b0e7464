//! Nothing stored is believed without a hash: a blob that is already present when the same
//! bytes are stored again is re-hashed unless the stat cache vouches for it, and a damaged
//! one is replaced; a file that changes while it is hashed never crashes the process.

mod common;

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use expflow_cache::{
    BlobState, CacheError, Cas, Digest, SledStore, StatKey, Store, hash_file, verify,
};

fn workspace() -> (tempfile::TempDir, Cas, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join(".expflow")).unwrap());
    let cas = Cas::open(&dir.path().join(".expflow/cas"))
        .unwrap()
        .with_stat_cache(store.clone());
    (dir, cas, store)
}

/// Overwrites the blob with different bytes of the same size and puts its mtime back, so
/// only a hash (or the ctime the kernel moved) can tell.
fn corrupt_same_size_keep_mtime(path: &Path) {
    // A write in the same clock tick as the blob's last stat change could leave its ctime
    // equal too (the "racy git" limit of every stat cache); real damage is not that quick.
    std::thread::sleep(Duration::from_millis(20));
    let mtime = fs::metadata(path).unwrap().modified().unwrap();
    let mut bytes = fs::read(path).unwrap();
    for b in &mut bytes {
        *b = b.wrapping_add(1);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
    let mut f = File::options().write(true).open(path).unwrap();
    f.write_all(&bytes).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    fs::set_permissions(path, fs::Permissions::from_mode(0o444)).unwrap();
}

fn intact(cas: &Cas, d: &Digest) -> bool {
    cas.check(d).unwrap() == BlobState::Ok
}

#[test]
fn a_same_size_corrupt_blob_is_replaced_when_its_bytes_are_stored_again() {
    let (dir, cas, store) = workspace();
    let bytes = b"row,value\n1,0.25\n2,0.75\n".to_vec();
    let d = cas.put_bytes(&bytes).unwrap();
    let blob = cas.blob_path(&d);
    let len = fs::metadata(&blob).unwrap().len();
    corrupt_same_size_keep_mtime(&blob);
    assert_eq!(fs::metadata(&blob).unwrap().len(), len, "same size");
    assert!(!intact(&cas, &d));
    assert!(!verify(&cas, store.as_ref()).unwrap().is_clean());

    // put_bytes: the fast path for present blobs must not believe name and size.
    assert_eq!(cas.put_bytes(&bytes).unwrap(), d);
    assert_eq!(fs::read(&blob).unwrap(), bytes, "the blob was repaired");
    assert_eq!(
        fs::metadata(&blob).unwrap().permissions().mode() & 0o777,
        0o444
    );
    assert!(verify(&cas, store.as_ref()).unwrap().is_clean());

    // put_file and put_file_move (how outputs are stored) repair it the same way.
    let out = dir.path().join("out.csv");
    for move_it in [false, true] {
        corrupt_same_size_keep_mtime(&blob);
        fs::write(&out, &bytes).unwrap();
        let stored = if move_it {
            cas.put_file_move(&out).unwrap()
        } else {
            cas.put_file(&out).unwrap()
        };
        assert_eq!(stored, (d, len));
        assert_eq!(fs::read(&blob).unwrap(), bytes, "move: {move_it}");
        assert!(verify(&cas, store.as_ref()).unwrap().is_clean());
    }
    assert!(!out.exists(), "put_file_move took the file");
}

#[test]
fn a_corrupt_file_inside_a_stored_directory_is_replaced_by_put_dir() {
    let (dir, cas, store) = workspace();
    let model = dir.path().join("model");
    common::write_model_dir(&model);
    cas.put_dir(&model).unwrap();
    let weights = Digest::of_bytes(&[7u8; 4096]);
    corrupt_same_size_keep_mtime(&cas.blob_path(&weights));
    assert!(!verify(&cas, store.as_ref()).unwrap().is_clean());
    cas.put_dir(&model).unwrap();
    assert!(intact(&cas, &weights));
    assert!(verify(&cas, store.as_ref()).unwrap().is_clean());
}

#[test]
fn without_a_stat_cache_a_present_blob_is_rehashed_too() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(&dir.path().join("cas")).unwrap();
    let d = cas.put_bytes(b"no stat cache here").unwrap();
    corrupt_same_size_keep_mtime(&cas.blob_path(&d));
    cas.put_bytes(b"no stat cache here").unwrap();
    assert!(intact(&cas, &d));
}

#[test]
fn the_stat_cache_vouches_for_a_blob_whose_stat_is_unchanged() {
    let (_dir, cas, store) = workspace();
    let d = cas.put_bytes(b"written once").unwrap();
    let blob = cas.blob_path(&d);
    let key = StatKey::of(&blob).unwrap();
    assert_eq!(
        store.stat_get(&key).unwrap(),
        Some(d),
        "a written blob's stat is remembered"
    );

    // A corruption changes the ctime, so the remembered stat no longer vouches.
    corrupt_same_size_keep_mtime(&blob);
    let after = StatKey::of(&blob).unwrap();
    assert_eq!(after.mtime_ns, key.mtime_ns, "mtime was put back");
    assert_ne!(after.ctime_ns, key.ctime_ns);
    assert_eq!(store.stat_get(&after).unwrap(), None);

    // Were the stat cache to vouch for this stat, the blob would be kept without a hash:
    // this is what saves re-hashing large outputs stored again. Plant such an entry to show
    // the store consults it (and is not re-hashing regardless).
    store.stat_put(&after, &d).unwrap();
    cas.put_bytes(b"written once").unwrap();
    assert!(!intact(&cas, &d), "kept: the stat cache vouched");
    // `check` (verify) always re-hashes; without the planted entry the put repairs it.
    store.stat_put(&after, &Digest::of_bytes(b"other")).unwrap();
    cas.put_bytes(b"written once").unwrap();
    assert!(intact(&cas, &d));
}

/// A file of `len` pseudo-random bytes.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn a_64_mib_file_truncated_while_it_is_hashed_is_an_error_or_a_consistent_digest() {
    // With a memory-mapped hash, reading pages past the new end raises SIGBUS and kills this
    // test binary; with plain reads every outcome is an error or the digest of what was read.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    let data = pseudo_random(64 << 20);
    let full = Digest::of_bytes(&data);
    fs::write(&path, &data).unwrap();
    let started = Instant::now();
    assert_eq!(hash_file(&path).unwrap(), (full, data.len() as u64));
    let one_hash = started.elapsed();

    let mut errors = 0;
    let mut consistent = 0;
    let tries = 16u32;
    for i in 0..tries {
        fs::write(&path, &data).unwrap();
        // Truncate at a point spread over the time one hash takes (to a different length
        // each time), from another thread, while this thread hashes.
        let delay = one_hash * i / tries;
        let keep = (data.len() / 2) - (i as usize) * 4096;
        let truncating = path.clone();
        let truncator = std::thread::spawn(move || {
            std::thread::sleep(delay);
            File::options()
                .write(true)
                .open(&truncating)
                .unwrap()
                .set_len(keep as u64)
                .unwrap();
        });
        let result = hash_file(&path);
        truncator.join().unwrap();
        match result {
            Ok((d, n)) => {
                let n = n as usize;
                assert!(n == data.len() || n == keep, "read {n} bytes");
                assert_eq!(d, Digest::of_bytes(&data[..n]), "digest of what was read");
                consistent += 1;
            }
            Err(CacheError::ChangedWhileRead {
                path: p,
                size_before,
                ..
            }) => {
                assert_eq!(p, path);
                assert!(size_before == data.len() as u64 || size_before == keep as u64);
                errors += 1;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(errors + consistent, tries);
    assert!(
        errors > 0,
        "no truncation landed during a hash in {tries} tries ({one_hash:?} per hash)"
    );
}

#[test]
fn a_file_changed_while_it_is_read_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("growing.log");
    fs::write(&path, pseudo_random(32 << 20)).unwrap();
    // Appends keep arriving while it is hashed.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut f = File::options().append(true).open(&path).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(b"another line\n").unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let mut seen = None;
    for _ in 0..20 {
        if let Err(e) = hash_file(&path) {
            seen = Some(e);
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let e = seen.expect("a file appended to all the time hashes with an error");
    let msg = e.to_string();
    assert!(msg.contains("growing.log"), "{msg}");
    assert!(msg.contains("changed while it was being read"), "{msg}");
}
