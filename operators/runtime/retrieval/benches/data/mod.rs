//! Seeded benchmark data shared by the retrieval benches: clustered vectors of dimension 384.

/// Vector dimension (all-MiniLM-L6-v2's).
pub const DIM: usize = 384;
/// Number of cluster centres.
pub const CENTRES: usize = 64;

/// splitmix64: a small seeded generator, so the data needs no extra crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// A standard normal value (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

/// `n` vectors around 64 seeded Gaussian centres (noise scaled by 0.3), drawn with `seed`.
pub fn clustered(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(7);
    let centres: Vec<f32> = (0..CENTRES * DIM).map(|_| rng.normal()).collect();
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(n * DIM);
    for _ in 0..n {
        let c = (rng.next_u64() % CENTRES as u64) as usize;
        out.extend((0..DIM).map(|j| centres[c * DIM + j] + 0.3 * rng.normal()));
    }
    out
}

/// `EXPFLOW_BENCH_N`, default 100,000.
pub fn bench_n() -> usize {
    std::env::var("EXPFLOW_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000)
}
