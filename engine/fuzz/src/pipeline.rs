//! AFL++ target: arbitrary bytes as a pipeline file, compiled with every operator of
//! expflow-operators. A panic, an abort from the allocation cap, or a hang is a finding.

use expflow_cache::fuzzing::CappedAlloc;

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc::new(1 << 30);

fn main() {
    let registry = expflow_operators::registry();
    afl::fuzz!(|data: &[u8]| {
        expflow_engine::fuzzing::pipeline(&registry, data);
    });
}
