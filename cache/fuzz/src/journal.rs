//! AFL++ target: arbitrary bytes as `journal.jsonl`, read and replayed as `db rebuild` does.

use expflow_cache::fuzzing::CappedAlloc;

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc::new(1 << 30);

fn main() {
    afl::fuzz!(|data: &[u8]| {
        expflow_cache::fuzzing::journal(data);
    });
}
