//! Opening a store must leave sled's IO thread pool alone. expflow builds a copy of sled
//! 0.34.7 (vendor/sled) with two changes, each checked here:
//!
//! - sled initialized its thread pool behind a bare spin lock: the first open spawned seven
//!   `sled-io-*` threads that spun on that lock until the spawning thread was done, taking
//!   both cores of a 2-core machine (about 7 ms of CPU per process; docs/decisions.md,
//!   "sled's thread pool spun on start").
//! - sled read the header of every log segment on its pool while opening and waited for all
//!   of them; each read then waited for a pool thread to be woken, which on this project's
//!   2-vCPU machines took up to 3 ms (docs/decisions.md, "sled reads its segment headers in
//!   place").
//!
//! Each open runs in a fresh child process of this test binary, so that it is the pool's
//! first use there.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use expflow_cache::{SledStore, Store};

/// The `/proc/self/task` entries of this process's threads named `sled-io-*`.
fn sled_io_tasks() -> Vec<PathBuf> {
    fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|t| t.unwrap().path())
        .filter(|dir| fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.starts_with("sled-io")))
        .collect()
}

/// Nanoseconds the `sled-io-*` threads of this process have run on a CPU
/// (`/proc/self/task/*/schedstat`, first field).
fn sled_io_cpu_ns() -> u64 {
    sled_io_tasks()
        .iter()
        .filter_map(|dir| {
            let stat = fs::read_to_string(dir.join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// What a child process does: `write N` (a database of N rows of 512 bytes) or `open`
/// (open it as a store and print the IO threads' CPU time and count).
const ROLE: &str = "EXPFLOW_TEST_SLED_ROLE";

/// Runs test `test` of this binary as a child in `role` on workspace `ws`; its stdout.
fn child(test: &str, role: &str, ws: &Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env("EXPFLOW_TEST_WS", ws)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Plays the child's role when this process is one; true when it did.
fn play_child_role() -> bool {
    let Ok(role) = std::env::var(ROLE) else {
        return false;
    };
    let ws = PathBuf::from(std::env::var("EXPFLOW_TEST_WS").unwrap());
    if let Some(rows) = role.strip_prefix("write ") {
        // A database with something in its log, so that opening it reads segments.
        let db = sled::open(ws.join("db")).unwrap();
        for i in 0..rows.parse::<u32>().unwrap() {
            db.insert(i.to_be_bytes(), vec![7u8; 512]).unwrap();
        }
        db.flush().unwrap();
        drop(db);
        // The store's own trees made now, so that the opening child writes nothing (a tree
        // made while it opens is a dirty page: sled's flusher thread may hand its write to
        // the IO pool at any moment after, which is not what the tests look for).
        let store = SledStore::open(&ws).unwrap();
        store.flush().unwrap();
        drop(store);
    } else {
        let store = SledStore::open(&ws).unwrap();
        // Right after the open: sled's log flusher may start the pool on its own later.
        let threads = sled_io_tasks().len();
        drop(store);
        // Give any thread still spinning time to show.
        std::thread::sleep(std::time::Duration::from_millis(20));
        println!("sled-io-ns {}", sled_io_cpu_ns());
        println!("sled-io-threads {threads}");
    }
    true
}

/// The figure printed after `label` in a child's output.
fn figure(out: &str, label: &str) -> f64 {
    out.lines()
        .find_map(|l| l.split_once(label).map(|(_, n)| n))
        .unwrap_or_else(|| panic!("no {label:?} in the child's output: {out}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn opening_a_store_leaves_the_io_threads_idle() {
    const TEST: &str = "opening_a_store_leaves_the_io_threads_idle";
    if play_child_role() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join(".expflow");
    child(TEST, "write 2000", &ws);
    let mut ms: Vec<f64> = (0..5)
        .map(|_| figure(&child(TEST, "open", &ws), "sled-io-ns ") / 1e6)
        .collect();
    ms.sort_by(f64::total_cmp);
    eprintln!("sled-io threads ran {ms:.3?} ms in five opens");
    // Measured on 2 cores: patched 0.3-0.8 ms per open; the spinning start 1.3-18 ms.
    assert!(
        ms[2] < 1.5,
        "sled's IO threads ran a median {:.1} ms of CPU while a store opened; the spinning \
         thread-pool start is back (is vendor/sled patched in through [patch.crates-io]?)",
        ms[2]
    );
}

#[test]
fn opening_a_store_reads_its_segments_in_place() {
    const TEST: &str = "opening_a_store_reads_its_segments_in_place";
    if play_child_role() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join(".expflow");
    // Several segments (512 KiB each) in the log, so that opening reads their headers.
    child(TEST, "write 8000", &ws);
    let segments = fs::metadata(ws.join("db/db")).unwrap().len() / (512 << 10);
    assert!(
        segments >= 4,
        "the log has {segments} segments; the test wants several"
    );
    let threads = figure(&child(TEST, "open", &ws), "sled-io-threads ");
    assert_eq!(
        threads, 0.0,
        "opening a store of {segments} segments started sled's IO thread pool; its segment \
         headers are read on the pool again (is vendor/sled patched in through \
         [patch.crates-io]?)"
    );
}
