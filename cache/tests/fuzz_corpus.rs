//! The fuzz corpora of `cache/fuzz/` (journal and record readers), replayed on the stable
//! toolchain without AFL: every file goes through the same entry function as the fuzz
//! target, and none may panic or hold more than 256 MiB at once. New findings are added to
//! the corpus as files, so this test keeps them fixed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use expflow_cache::fuzzing::{self, CappedAlloc};

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc::new(4 << 30);

const PEAK_LIMIT: usize = 256 << 20;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{}: too few corpus files", dir.display());
    files
}

/// Runs `entry` on every file of the corpus of `target`; returns the failures.
fn replay(target: &str, entry: impl Fn(&[u8])) -> Vec<String> {
    let mut failures = Vec::new();
    for path in corpus(target) {
        let bytes = std::fs::read(&path).unwrap();
        ALLOC.reset_peak();
        let before = ALLOC.peak();
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| entry(&bytes))) {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{}: panicked: {msg}", path.display()));
        }
        let used = ALLOC.peak().saturating_sub(before);
        if used > PEAK_LIMIT {
            failures.push(format!("{}: held {used} bytes at once", path.display()));
        }
    }
    failures
}

// One test, so that no other test allocates while a peak is measured.
#[test]
fn every_corpus_file_is_read_without_panic_or_unbounded_allocation() {
    let mut failures = replay("journal", |b| {
        fuzzing::journal(b);
    });
    failures.extend(replay("record", |b| {
        fuzzing::record(b);
    }));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
