//! The readers of untrusted bytes, as entry points for the fuzz targets in `cache/fuzz/` and
//! for the test that replays their corpus (`cache/tests/fuzz_corpus.rs`). Each runs the same
//! code as the real reader, without the file system, and must return (never panic, hang or
//! allocate without bound) whatever the bytes are.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::digest::Digest;
use crate::journal::parse_entries;
use crate::manifest::Manifest;
use crate::rebuild::State;
use crate::record::{Record, RunInfo};
use crate::store::{StatValue, decode};

/// What [`journal`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalSummary {
    /// Entries read.
    pub entries: usize,
    /// Non-blank lines that are not entries.
    pub lines_bad: usize,
    /// Records, last keys, runs and pins after replaying the entries.
    pub records: usize,
    pub last: usize,
    pub runs: usize,
    pub pins: usize,
}

/// Reads `bytes` as `journal.jsonl` (as `expflow db rebuild` and the store's catch-up do)
/// and replays the entries into the state a rebuilt database would hold.
pub fn journal(bytes: &[u8]) -> JournalSummary {
    let (entries, lines_bad) = parse_entries(bytes, Path::new("journal.jsonl"), 0);
    let n = entries.len();
    let state = State::replay(entries);
    // What verify and gc do with every record: list the blobs it needs.
    for rec in state.records.values() {
        let _ = rec.blob_refs();
    }
    JournalSummary {
        entries: n,
        lines_bad,
        records: state.records.len(),
        last: state.last.len(),
        runs: state.runs.len(),
        pins: state.pins.len(),
    }
}

/// Decodes `bytes` as each value the database stores (a record, a run, a digest, a
/// stat-cache entry, the journal mark) and, if it is text, as a directory manifest from the
/// CAS. Returns how many of them accepted the bytes.
pub fn record(bytes: &[u8]) -> usize {
    let db = Path::new("db");
    let mut ok = 0;
    if let Ok(rec) = decode::<Record>(|| "a record".into(), db, bytes) {
        let _ = rec.blob_refs();
        ok += 1;
    }
    ok += usize::from(decode::<RunInfo>(|| "a run".into(), db, bytes).is_ok());
    ok += usize::from(decode::<Digest>(|| "a digest".into(), db, bytes).is_ok());
    ok += usize::from(decode::<StatValue>(|| "a stat entry".into(), db, bytes).is_ok());
    ok += usize::from(decode::<u64>(|| "the journal mark".into(), db, bytes).is_ok());
    if let Ok(text) = std::str::from_utf8(bytes)
        && let Ok(m) = Manifest::parse(text)
    {
        // A parsed manifest is canonical: it writes back to the same text.
        assert_eq!(
            m.to_text(),
            text,
            "a parsed manifest must write back unchanged"
        );
        let _ = m.total_size();
        ok += 1;
    }
    ok
}

/// A global allocator for fuzz targets and corpus replays: the system allocator, counting
/// live bytes and the peak, which aborts the process (a crash the fuzzer records) when one
/// input would hold more than `limit` bytes at once. Unbounded allocation shows up as that
/// abort rather than as the machine running out of memory.
///
/// ```ignore
/// #[global_allocator]
/// static ALLOC: CappedAlloc = CappedAlloc::new(1 << 30);
/// ```
pub struct CappedAlloc {
    limit: usize,
    live: AtomicUsize,
    peak: AtomicUsize,
}

impl CappedAlloc {
    pub const fn new(limit: usize) -> CappedAlloc {
        CappedAlloc {
            limit,
            live: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// The most bytes live at once since the last [`CappedAlloc::reset_peak`].
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Starts measuring the peak from the bytes live now.
    pub fn reset_peak(&self) {
        self.peak
            .store(self.live.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    fn grow(&self, size: usize) {
        let now = self.live.fetch_add(size, Ordering::Relaxed) + size;
        self.peak.fetch_max(now, Ordering::Relaxed);
        if now > self.limit {
            // No allocation here: the message is static.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"CappedAlloc: more memory live than the fuzzing limit allows; aborting\n",
            );
            std::process::abort();
        }
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments and only adds
// bookkeeping on atomics.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.grow(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.grow(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.live.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            self.grow(new_size - layout.size());
        } else {
            self.live
                .fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
