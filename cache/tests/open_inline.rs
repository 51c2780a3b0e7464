//! Opening a store must not wait on sled's IO thread pool. sled 0.34.7 read the header of
//! every log segment on its pool while opening and waited for all of them; each read then
//! waited for a pool thread to be woken, which on this project's 2-vCPU machines took up to
//! 3 ms (an idle vCPU is halted by the hypervisor; `perf sched timehist` showed the pool's
//! threads waiting behind the busy core while the other idled). vendor/sled reads them in
//! place. This test runs alone in its process and opens in fresh child processes, so the
//! open is the pool's first use: with the reads in place, no pool thread exists after it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use expflow_cache::SledStore;

/// Threads of this process named `sled-io-*`.
fn sled_io_threads() -> usize {
    fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|t| {
            let comm = fs::read_to_string(t.as_ref().unwrap().path().join("comm"));
            comm.is_ok_and(|c| c.starts_with("sled-io"))
        })
        .count()
}

const TEST: &str = "opening_a_store_reads_its_segments_in_place";

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
fn opening_a_store_reads_its_segments_in_place() {
    match std::env::var(ROLE).as_deref() {
        Ok("write") => {
            // Several segments (512 KiB each) in the log, so that opening reads their headers.
            let ws = PathBuf::from(std::env::var("EXPFLOW_TEST_WS").unwrap());
            let db = sled::open(ws.join("db")).unwrap();
            for i in 0..8_000u32 {
                db.insert(i.to_be_bytes(), vec![7u8; 512]).unwrap();
            }
            db.flush().unwrap();
            return;
        }
        Ok("open") => {
            let ws = PathBuf::from(std::env::var("EXPFLOW_TEST_WS").unwrap());
            let store = SledStore::open(&ws).unwrap();
            println!("sled-io-threads {}", sled_io_threads());
            drop(store);
            return;
        }
        _ => {}
    }
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join(".expflow");
    child("write", &ws);
    let segments = fs::metadata(ws.join("db/db")).unwrap().len() / (512 << 10);
    assert!(
        segments >= 4,
        "the log has {segments} segments; the test wants several"
    );
    let out = child("open", &ws);
    let threads: usize = out
        .lines()
        .find_map(|l| l.split_once("sled-io-threads ").map(|(_, n)| n))
        .unwrap_or_else(|| panic!("no figure in the child's output: {out}"))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        threads, 0,
        "opening a store of {segments} segments started sled's IO thread pool; its segment \
         headers are read on the pool again (is vendor/sled patched in through \
         [patch.crates-io]?)"
    );
}
