//! AFL++ target: arbitrary bytes as a pipeline file, compiled with every operator of
//! expflow-operators. A panic, an abort from the allocation cap, or a hang is a finding.

use std::panic::AssertUnwindSafe;

use expflow_cache::fuzzing::CappedAlloc;
use expflow_engine::Registry;

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc::new(1 << 30);

fn main() {
    // Compiling only reads the registry; a panic ends the process anyway.
    let registry = AssertUnwindSafe(expflow_operators::registry());
    afl::fuzz!(|data: &[u8]| {
        let registry: &Registry = &registry;
        expflow_engine::fuzzing::pipeline(registry, data);
    });
}
