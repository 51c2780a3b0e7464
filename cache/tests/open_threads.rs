//! sled's IO threads must not burn CPU while a database opens. sled 0.34.7 initialized its
//! thread pool behind a bare spin lock: the first open spawned seven `sled-io-*` threads
//! that spun on that lock until the spawning thread was done, taking both cores of a
//! 2-core machine (about 7 ms of CPU per process; docs/decisions.md, "sled's thread pool
//! spun on start"). expflow builds a copy of sled with that lock replaced (vendor/sled).
//! This test runs alone in its process, so the open below is the pool's first use.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use expflow_cache::SledStore;

/// Nanoseconds the threads named `sled-io-*` of this process have run on a CPU
/// (`/proc/self/task/*/schedstat`, first field).
fn sled_io_cpu_ns() -> u64 {
    let mut total = 0;
    for task in fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("sled-io") {
            continue;
        }
        let stat = fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

const TEST: &str = "opening_a_store_leaves_the_io_threads_idle";

/// What a child process of the test does: `write` the database, or `open` it and print
/// the CPU time of the IO threads. Each open runs in a fresh process, so that it is the
/// first use of sled's thread pool there.
const ROLE: &str = "EXPFLOW_TEST_SLED_ROLE";

fn child(role: &str, ws: &Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
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

#[test]
fn opening_a_store_leaves_the_io_threads_idle() {
    match std::env::var(ROLE).as_deref() {
        Ok("write") => {
            // A database with something in its log, so that opening it reads segments.
            let ws = PathBuf::from(std::env::var("EXPFLOW_TEST_WS").unwrap());
            let db = sled::open(ws.join("db")).unwrap();
            for i in 0..2_000u32 {
                db.insert(i.to_be_bytes(), vec![7u8; 512]).unwrap();
            }
            db.flush().unwrap();
            return;
        }
        Ok("open") => {
            let ws = PathBuf::from(std::env::var("EXPFLOW_TEST_WS").unwrap());
            drop(SledStore::open(&ws).unwrap());
            // Give any thread still spinning time to show.
            std::thread::sleep(std::time::Duration::from_millis(20));
            println!("sled-io-ns {}", sled_io_cpu_ns());
            return;
        }
        _ => {}
    }
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join(".expflow");
    child("write", &ws);
    let mut ms: Vec<f64> = (0..5)
        .map(|_| {
            let out = child("open", &ws);
            let ns = out
                .lines()
                .find_map(|l| l.split_once("sled-io-ns ").map(|(_, ns)| ns))
                .unwrap_or_else(|| panic!("no figure in the child's output: {out}"));
            ns.trim().parse::<f64>().unwrap() / 1e6
        })
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
