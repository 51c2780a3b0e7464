//! The fuzz corpus of `engine/fuzz/` (the pipeline front end), replayed on the stable
//! toolchain without AFL: every file goes through the same entry function as the fuzz
//! target, with every operator of this crate registered, and none may panic (a broken
//! promise of the compiled graph panics too) or hold more than 256 MiB at once. New findings
//! are added to the corpus as files, so this test keeps them fixed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use expflow_cache::fuzzing::CappedAlloc;

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc::new(4 << 30);

const PEAK_LIMIT: usize = 256 << 20;

// One test, so that no other test allocates while a peak is measured.
#[test]
fn every_corpus_pipeline_compiles_or_is_refused_without_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/fuzz/corpus/pipeline");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{}: too few corpus files", dir.display());
    let registry = expflow_operators::registry();
    let mut failures = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        ALLOC.reset_peak();
        let before = ALLOC.peak();
        let result = catch_unwind(AssertUnwindSafe(|| {
            expflow_engine::fuzzing::pipeline(&registry, &bytes)
        }));
        if let Err(panic) = result {
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
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
