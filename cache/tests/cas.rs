mod common;

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use expflow_cache::{BlobState, CacheError, Cas, Digest, Manifest, PARALLEL_HASH_THRESHOLD};

fn cas() -> (tempfile::TempDir, Cas) {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(&dir.path().join("cas")).unwrap();
    (dir, cas)
}

fn tmp_entries(cas: &Cas) -> usize {
    fs::read_dir(cas.root().join("tmp")).unwrap().count()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Deterministic, non-repeating test bytes.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

#[test]
fn blob_name_is_the_blake3_of_its_bytes() {
    let (_d, cas) = cas();
    let d = cas.put_bytes(b"abc").unwrap();
    assert_eq!(
        d.to_hex(),
        "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
    );
    let path = cas.blob_path(&d);
    assert_eq!(path, cas.root().join("64").join(d.to_hex()));
    let stored = fs::read(&path).unwrap();
    assert_eq!(stored, b"abc");
    assert_eq!(*blake3::hash(&stored).as_bytes(), d.0);
    assert_eq!(mode(&path), 0o444, "blobs are read-only");

    // `b3sum` semantics: when the tool is installed, it must agree with the blob's name.
    match Command::new("b3sum").arg("--no-names").arg(&path).output() {
        Ok(out) if out.status.success() => {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), d.to_hex());
        }
        _ => eprintln!("b3sum not installed; checked with the blake3 crate only"),
    }
}

#[test]
fn put_file_small_and_large_and_dedup() {
    let (dir, cas) = cas();
    for len in [0usize, 5, PARALLEL_HASH_THRESHOLD as usize + 4097] {
        let data = pseudo_random(len, len as u64 + 3);
        let src = dir.path().join(format!("src-{len}"));
        fs::write(&src, &data).unwrap();
        let (d, n) = cas.put_file(&src).unwrap();
        assert_eq!(n, len as u64);
        assert_eq!(d, Digest::of_bytes(&data));
        assert_eq!(fs::read(cas.blob_path(&d)).unwrap(), data);
        // Storing the same content again keeps one blob and leaves no temp file behind.
        let again = dir.path().join(format!("again-{len}"));
        fs::write(&again, &data).unwrap();
        assert_eq!(cas.put_file(&again).unwrap(), (d, n));
    }
    assert_eq!(cas.list().unwrap().len(), 3);
    assert_eq!(tmp_entries(&cas), 0);
}

#[test]
fn put_file_rejects_a_directory_and_names_it() {
    let (dir, cas) = cas();
    let err = cas.put_file(dir.path()).unwrap_err();
    assert!(matches!(err, CacheError::NotAFile { .. }), "{err}");
    assert!(err.to_string().contains(&dir.path().display().to_string()));
}

#[test]
fn put_file_and_hash_file_reject_a_fifo_instead_of_blocking() {
    let (dir, cas) = cas();
    let fifo = dir.path().join("pipe");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let err = cas.put_file(&fifo).unwrap_err();
    assert!(
        matches!(
            err,
            CacheError::NotAFile {
                found: "a FIFO",
                ..
            }
        ),
        "{err}"
    );
    let err = expflow_cache::hash_file(&fifo).unwrap_err();
    assert!(matches!(err, CacheError::NotAFile { .. }), "{err}");
    assert_eq!(tmp_entries(&cas), 0);
}

/// Yields `good` bytes, then fails.
struct FailingReader {
    good: usize,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.good == 0 {
            return Err(io::Error::other("disk on fire"));
        }
        let n = buf.len().min(self.good);
        buf[..n].fill(b'x');
        self.good -= n;
        Ok(n)
    }
}

#[test]
fn a_failed_put_leaves_no_partial_blob_and_no_temp_file() {
    let (_d, cas) = cas();
    let err = cas.put_reader(FailingReader { good: 3 << 20 }).unwrap_err();
    assert!(err.to_string().contains("disk on fire"), "{err}");
    assert!(cas.list().unwrap().is_empty(), "no blob may appear");
    assert_eq!(tmp_entries(&cas), 0, "the temp file must be removed");
    // The prefix that was read is not stored under its own name either.
    assert!(!cas.contains(&Digest::of_bytes(&vec![b'x'; 3 << 20])));
}

#[test]
fn clean_tmp_removes_leftovers_and_list_ignores_non_blobs() {
    let (_d, cas) = cas();
    let d = cas.put_bytes(b"kept").unwrap();
    let tmp = cas.root().join("tmp");
    fs::write(tmp.join("put-crashed"), b"half a blob").unwrap();
    fs::create_dir(tmp.join("dir-leftover")).unwrap();
    fs::write(tmp.join("dir-leftover/x"), b"x").unwrap();
    // Junk that is not a blob name.
    fs::write(cas.root().join("README"), b"hi").unwrap();
    fs::write(cas.blob_path(&d).with_file_name("not-hex"), b"junk").unwrap();

    assert_eq!(cas.list().unwrap(), vec![(d, 4)]);
    assert_eq!(cas.clean_tmp().unwrap(), 2);
    assert_eq!(tmp_entries(&cas), 0);
    assert!(cas.contains(&d));
}

#[test]
fn concurrent_puts_of_the_same_content_are_safe() {
    let (dir, cas) = cas();
    let data = Arc::new(pseudo_random(2 << 20, 11));
    let src = dir.path().join("same");
    fs::write(&src, &*data).unwrap();
    let expected = Digest::of_bytes(&data);
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let cas = cas.clone();
            let src = src.clone();
            let data = Arc::clone(&data);
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    cas.put_file(&src).unwrap().0
                } else {
                    cas.put_bytes(&data).unwrap()
                }
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), expected);
    }
    assert_eq!(cas.check(&expected).unwrap(), BlobState::Ok);
    assert_eq!(cas.list().unwrap().len(), 1);
    assert_eq!(tmp_entries(&cas), 0);
}

#[test]
fn concurrent_puts_into_a_shard_not_yet_made_all_land() {
    // Contents whose digests share a shard: every put finds the shard missing at first.
    let mut same_shard: Vec<Vec<u8>> = Vec::new();
    let mut i = 0u64;
    while same_shard.len() < 8 {
        let bytes = format!("content {i}").into_bytes();
        if Digest::of_bytes(&bytes).to_hex().starts_with("03") {
            same_shard.push(bytes);
        }
        i += 1;
    }
    for _round in 0..20 {
        let (_dir, cas) = cas();
        let barrier = Arc::new(std::sync::Barrier::new(same_shard.len()));
        let handles: Vec<_> = same_shard
            .iter()
            .cloned()
            .map(|bytes| {
                let cas = cas.clone();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    cas.put_bytes(&bytes).unwrap()
                })
            })
            .collect();
        for h in handles {
            let d = h.join().unwrap();
            assert_eq!(cas.check(&d).unwrap(), BlobState::Ok);
        }
        assert_eq!(cas.list().unwrap().len(), same_shard.len());
    }
}

#[test]
fn a_truncated_blob_is_replaced_by_the_next_put() {
    let (_d, cas) = cas();
    let d = cas.put_bytes(b"full content").unwrap();
    let path = cas.blob_path(&d);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&path, b"full").unwrap();
    assert!(matches!(cas.check(&d).unwrap(), BlobState::Corrupt { .. }));
    cas.put_bytes(b"full content").unwrap();
    assert_eq!(cas.check(&d).unwrap(), BlobState::Ok);
}

fn write_tree(root: &Path, order: &[&str]) {
    for name in order {
        let p = root.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, format!("content of {name}")).unwrap();
    }
}

#[test]
fn put_dir_is_order_independent_and_sensitive_to_modes_and_bytes() {
    let (dir, cas) = cas();
    let names = ["b.txt", "a/z.bin", "a/b/c.json", "with space.txt"];
    let one = dir.path().join("one");
    let two = dir.path().join("two");
    write_tree(&one, &names);
    let mut reversed = names;
    reversed.reverse();
    write_tree(&two, &reversed);

    let (d1, size1) = cas.put_dir(&one).unwrap();
    let (d2, _) = cas.put_dir(&two).unwrap();
    assert_eq!(d1, d2, "creation order must not matter");
    let expected_size: u64 = names
        .iter()
        .map(|n| format!("content of {n}").len() as u64)
        .sum();
    assert_eq!(size1, expected_size);

    // The directory digest is the digest of the stored manifest blob.
    let manifest_bytes = fs::read(cas.blob_path(&d1)).unwrap();
    assert_eq!(Digest::of_bytes(&manifest_bytes), d1);
    let m = Manifest::parse(std::str::from_utf8(&manifest_bytes).unwrap()).unwrap();
    let paths: Vec<&str> = m.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["a/b/c.json", "a/z.bin", "b.txt", "with space.txt"]);
    assert_eq!(cas.read_manifest(&d1).unwrap(), m);
    for e in &m.entries {
        assert_eq!(cas.check(&e.digest).unwrap(), BlobState::Ok);
    }

    // An execute bit changes the digest.
    fs::set_permissions(two.join("b.txt"), fs::Permissions::from_mode(0o744)).unwrap();
    let (d_mode, _) = cas.put_dir(&two).unwrap();
    assert_ne!(d_mode, d1);
    assert_eq!(cas.read_manifest(&d_mode).unwrap().entries[2].mode, 0o755);

    // So does one byte.
    fs::set_permissions(two.join("b.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(cas.put_dir(&two).unwrap().0, d1);
    fs::write(two.join("a/z.bin"), "content of a/z.biN").unwrap();
    assert_ne!(cas.put_dir(&two).unwrap().0, d1);
}

#[test]
fn put_dir_rejects_symlinks_naming_them() {
    let (dir, cas) = cas();
    let src = dir.path().join("src");
    write_tree(&src, &["real.txt"]);
    std::os::unix::fs::symlink(src.join("real.txt"), src.join("link.txt")).unwrap();
    let err = cas.put_dir(&src).unwrap_err();
    assert!(matches!(err, CacheError::Symlink { .. }), "{err}");
    assert!(err.to_string().contains("link.txt"), "{err}");
}

#[test]
fn put_dir_of_an_empty_directory_is_the_empty_manifest() {
    let (dir, cas) = cas();
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let (d, n) = cas.put_dir(&empty).unwrap();
    assert_eq!((d, n), (Digest::of_bytes(b""), 0));
    assert!(cas.read_manifest(&d).unwrap().entries.is_empty());
}

#[test]
fn materialize_file_round_trips_as_a_writable_copy() {
    let (dir, cas) = cas();
    let data = pseudo_random(100_000, 5);
    let d = cas.put_bytes(&data).unwrap();
    let dest = dir.path().join("out/nested/result.bin");
    cas.materialize_file(&d, &dest).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), data);
    assert_eq!(mode(&dest), 0o644);
    assert_ne!(
        fs::metadata(&dest).unwrap().ino(),
        fs::metadata(cas.blob_path(&d)).unwrap().ino(),
        "a copy, not a link"
    );
    // Writing to the copy must not touch the blob.
    fs::write(&dest, b"edited").unwrap();
    assert_eq!(cas.check(&d).unwrap(), BlobState::Ok);
    // Materialising again replaces the edited file.
    cas.materialize_file(&d, &dest).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), data);
}

#[test]
fn materialize_dir_round_trips_with_modes_and_replaces_the_destination() {
    let (dir, cas) = cas();
    let src = dir.path().join("src");
    common::write_model_dir(&src);
    fs::write(src.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
    let (d, _) = cas.put_dir(&src).unwrap();

    let dest = dir.path().join("dest");
    fs::create_dir_all(&dest).unwrap();
    fs::write(dest.join("stale.txt"), b"old").unwrap();
    cas.materialize_dir(&d, &dest).unwrap();

    assert!(!dest.join("stale.txt").exists(), "the old tree is replaced");
    for rel in [
        "config.json",
        "model.safetensors",
        "tokenizer/tokenizer.json",
        "run.sh",
    ] {
        assert_eq!(
            fs::read(dest.join(rel)).unwrap(),
            fs::read(src.join(rel)).unwrap(),
            "{rel}"
        );
    }
    assert_eq!(mode(&dest.join("run.sh")), 0o755);
    assert_eq!(mode(&dest.join("config.json")), 0o644);
    // And it hashes back to the same directory digest.
    assert_eq!(cas.put_dir(&dest).unwrap().0, d);
    // No staging directories are left beside it.
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".expflow-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn materialising_again_removes_what_a_killed_materialisation_left() {
    let (dir, cas) = cas();
    let src = dir.path().join("src");
    common::write_model_dir(&src);
    let (tree, _) = cas.put_dir(&src).unwrap();
    let file = cas.put_bytes(b"result").unwrap();
    // What a kill leaves: a half-copied file, a half-built tree, an old tree moved aside.
    let out = dir.path().join("out");
    fs::create_dir_all(out.join(".model.expflow-part/tokenizer")).unwrap();
    fs::write(out.join(".model.expflow-part/tokenizer/half"), b"ha").unwrap();
    fs::create_dir_all(out.join(".model.expflow-old")).unwrap();
    fs::write(out.join(".result.txt.expflow-part"), b"res").unwrap();
    cas.materialize_dir(&tree, &out.join("model")).unwrap();
    cas.materialize_file(&file, &out.join("result.txt"))
        .unwrap();
    let mut names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["model", "result.txt"]);
    assert_eq!(fs::read(out.join("result.txt")).unwrap(), b"result");
    assert_eq!(cas.put_dir(&out.join("model")).unwrap().0, tree);
}

#[test]
fn materialize_refuses_a_corrupt_blob_and_leaves_no_file() {
    let (dir, cas) = cas();
    let d = cas.put_bytes(b"precious bytes").unwrap();
    common::corrupt_blob(&cas, &d);
    let dest = dir.path().join("out.txt");
    let err = cas.materialize_file(&d, &dest).unwrap_err();
    assert!(matches!(err, CacheError::BlobCorrupt { .. }), "{err}");
    assert!(!dest.exists());

    let missing = Digest::of_bytes(b"never stored");
    let err = cas.materialize_file(&missing, &dest).unwrap_err();
    assert!(matches!(err, CacheError::BlobMissing { .. }), "{err}");
    assert!(err.to_string().contains(&missing.to_hex()), "{err}");
}

#[test]
fn link_or_copy_gives_the_bytes_and_refuses_to_overwrite() {
    let (dir, cas) = cas();
    let d = cas.put_bytes(b"input rows").unwrap();
    let dest = dir.path().join("scratch/in/rows.parquet");
    cas.link_or_copy_file(&d, &dest).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), b"input rows");
    assert_eq!(mode(&dest), 0o444, "inputs are read-only");
    let err = cas.link_or_copy_file(&d, &dest).unwrap_err();
    assert!(err.to_string().contains("rows.parquet"), "{err}");
}

#[test]
fn check_detects_missing_and_corrupt_blobs() {
    let (_d, cas) = cas();
    let good = cas.put_bytes(b"good").unwrap();
    let bad = cas.put_bytes(b"soon bad").unwrap();
    common::corrupt_blob(&cas, &bad);
    let missing = Digest::of_bytes(b"absent");

    assert_eq!(cas.check(&good).unwrap(), BlobState::Ok);
    assert_eq!(cas.check(&missing).unwrap(), BlobState::Missing);
    let mut flipped = b"soon bad".to_vec();
    flipped[0] ^= 0xff;
    assert_eq!(
        cas.check(&bad).unwrap(),
        BlobState::Corrupt {
            actual: Digest::of_bytes(&flipped)
        }
    );

    cas.remove(&good).unwrap();
    assert!(!cas.contains(&good));
    assert_eq!(cas.check(&good).unwrap(), BlobState::Missing);
    cas.remove(&good).unwrap(); // removing twice is fine
    assert_eq!(cas.list().unwrap(), vec![(bad, 8)]);
}

#[test]
fn put_file_move_stores_the_bytes_and_takes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cas = expflow_cache::Cas::open(&dir.path().join("cas")).unwrap();
    let src = dir.path().join("out.txt");
    std::fs::write(&src, b"moved bytes").unwrap();
    let (d, n) = cas.put_file_move(&src).unwrap();
    assert_eq!(d, expflow_cache::Digest::of_bytes(b"moved bytes"));
    assert_eq!(n, 11);
    assert!(!src.exists(), "the file was moved");
    assert_eq!(std::fs::read(cas.blob_path(&d)).unwrap(), b"moved bytes");
    // Moving equal bytes again keeps the one blob and removes the new file.
    std::fs::write(&src, b"moved bytes").unwrap();
    assert_eq!(cas.put_file_move(&src).unwrap().0, d);
    assert!(!src.exists());
    assert_eq!(cas.check(&d).unwrap(), expflow_cache::BlobState::Ok);
}

#[test]
fn a_blob_stat_from_the_open_directory_is_the_stat_of_its_path() {
    let (dir, cas) = cas();
    let d = cas.put_bytes(b"stat me").unwrap();
    let by_path = expflow_cache::StatKey::of(&cas.blob_path(&d)).unwrap();
    assert_eq!(cas.stat_blob(&d).unwrap(), by_path);
    // A blob that is not there is an error that names its path.
    let missing = Digest::of_bytes(b"never stored");
    let err = cas.stat_blob(&missing).unwrap_err().to_string();
    assert!(err.contains(&missing.to_hex()), "{err}");
    // The store keeps the directory it opened: one put in its place afterwards is not the
    // one its stats describe (a workspace is locked while it is open, and nothing replaces
    // its CAS directory meanwhile; `Cas::stat_blob` says so).
    let root = dir.path().join("cas");
    fs::rename(&root, dir.path().join("old")).unwrap();
    let fresh = Cas::open(&root).unwrap();
    let d2 = fresh.put_bytes(b"stat me").unwrap();
    assert_eq!(d2, d);
    let now = expflow_cache::StatKey::of(&cas.blob_path(&d)).unwrap();
    assert_ne!(now.ino, by_path.ino, "a new file");
    assert_eq!(
        cas.stat_blob(&d).unwrap().ino,
        by_path.ino,
        "the old directory is still open"
    );
}
