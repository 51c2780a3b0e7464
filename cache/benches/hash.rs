//! Hashing throughput of `hash_file`, beside `b3sum` on the same file when it is installed.
//!
//! Run: `cargo bench -p expflow-cache --bench hash`. The files are written once to a temp
//! directory and stay in the page cache, so these are warm-cache (CPU-bound) figures.

use std::fs::File;
use std::hint::black_box;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use expflow_cache::{Digest, hash_file};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// Writes `len` bytes from a seeded xorshift64 generator (not all zeros, reproducible).
fn write_file(path: &Path, len: u64, seed: u64) {
    let mut state = seed.max(1);
    let mut out =
        BufWriter::with_capacity(MIB as usize, File::create(path).expect("create bench file"));
    let mut chunk = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(MIB) as usize;
        out.write_all(&chunk[..n]).expect("write bench file");
        left -= n as u64;
    }
    out.flush().expect("flush bench file");
}

/// Whether `b3sum` runs.
fn have_b3sum() -> bool {
    Command::new("b3sum")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn b3sum(path: &Path) -> String {
    let out = Command::new("b3sum")
        .arg("--no-names")
        .arg(path)
        .output()
        .expect("run b3sum");
    assert!(
        out.status.success(),
        "b3sum failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("b3sum prints hex")
        .trim()
        .to_string()
}

fn bench_hash(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let b3 = have_b3sum();
    if !b3 {
        println!(
            "b3sum not found on PATH: skipping the b3sum comparison \
             (install it with `apt-get install b3sum` or `cargo install b3sum`)"
        );
    }

    let big = dir.path().join("1GiB.bin");
    write_file(&big, GIB, 0x5eed);
    let (ours, n) = hash_file(&big).expect("hash");
    assert_eq!(n, GIB);
    if b3 {
        assert_eq!(b3sum(&big), ours.to_hex(), "b3sum and hash_file disagree");
    }

    let mut group = c.benchmark_group("hash_1GiB");
    group.throughput(Throughput::Bytes(GIB));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(15));
    group.bench_function("hash_file", |b| {
        b.iter(|| black_box(hash_file(black_box(&big)).expect("hash")))
    });
    if b3 {
        group.bench_function("b3sum --no-names", |b| b.iter(|| black_box(b3sum(&big))));
    }
    group.finish();

    let mut group = c.benchmark_group("hash_small");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    for (label, len) in [("1MiB", MIB), ("64MiB", 64 * MIB)] {
        let path = dir.path().join(format!("{label}.bin"));
        write_file(&path, len, len);
        let (d, _) = hash_file(&path).expect("hash");
        assert_ne!(d, Digest::of_bytes(&[]));
        group.throughput(Throughput::Bytes(len));
        group.bench_with_input(BenchmarkId::new("hash_file", label), &path, |b, p| {
            b.iter(|| black_box(hash_file(black_box(p)).expect("hash")))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_hash);
criterion_main!(benches);
