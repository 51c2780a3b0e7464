//! AFL++ target: arbitrary bytes as a database value (record, run, digest, stat entry,
//! journal mark) and as a directory manifest.

use expflow_cache::fuzzing::CappedAlloc;

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc::new(1 << 30);

fn main() {
    afl::fuzz!(|data: &[u8]| {
        expflow_cache::fuzzing::record(data);
    });
}
