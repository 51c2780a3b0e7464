//! Picking the next token from logits: greedy, or seeded sampling with temperature, top-k
//! and top-p; and log-probabilities. Pure functions over `&[f32]`, no tensors.

use crate::api::Sampling;

/// A small deterministic generator (SplitMix64). The same seed gives the same stream on
/// every platform, which `rand`'s generators do not promise across versions.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// The generator of sample `index` of a request with `seed`: independent of which other
    /// requests share the batch.
    pub fn for_sample(seed: u64, index: u64) -> Rng {
        let mut r = Rng { state: seed };
        let a = r.next_u64();
        Rng {
            state: a ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03),
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The index of the largest logit; the lowest index among equal ones.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// `log softmax(logits)`, computed in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    logits.iter().map(|&v| (v as f64 - lse) as f32).collect()
}

/// The `n` largest values with their indices, largest first (ties: lower index first).
pub fn top_n(values: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..values.len() as u32).collect();
    idx.sort_by(|&a, &b| {
        values[b as usize]
            .total_cmp(&values[a as usize])
            .then(a.cmp(&b))
    });
    idx.truncate(n);
    idx.into_iter().map(|i| (i, values[i as usize])).collect()
}

/// The next token: the argmax when `temperature <= 0`, otherwise a draw from
/// `softmax(logits / temperature)` kept to the `top_k` most likely tokens (0: all) and then
/// to the smallest prefix whose probability reaches `top_p`, renormalised.
pub fn pick(logits: &[f32], s: &Sampling, rng: &mut Rng) -> u32 {
    if s.temperature <= 0.0 {
        return argmax(logits);
    }
    let t = s.temperature;
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut cand: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, ((v as f64 - max) / t).exp()))
        .collect();
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if s.top_k > 0 && s.top_k < cand.len() {
        cand.truncate(s.top_k);
    }
    let total: f64 = cand.iter().map(|c| c.1).sum();
    if s.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = cand.len();
        for (i, c) in cand.iter().enumerate() {
            acc += c.1 / total;
            if acc >= s.top_p {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep.max(1));
    }
    let total: f64 = cand.iter().map(|c| c.1).sum();
    let mut u = rng.next_f64() * total;
    for &(id, p) in &cand {
        if u < p {
            return id;
        }
        u -= p;
    }
    cand.last().map(|c| c.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f64, top_k: usize, top_p: f64) -> Sampling {
        Sampling {
            temperature,
            top_k,
            top_p,
            ..Sampling::default()
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut r = Rng::for_sample(0, 0);
        assert_eq!(
            pick(&[0.1, 2.0, 2.0, -1.0], &sampling(0.0, 0, 1.0), &mut r),
            1
        );
    }

    #[test]
    fn same_seed_same_draws_and_index_changes_them() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let s = sampling(1.0, 0, 1.0);
        let draw = |seed, idx| {
            let mut r = Rng::for_sample(seed, idx);
            (0..20)
                .map(|_| pick(&logits, &s, &mut r))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7, 0), draw(7, 0));
        assert_ne!(draw(7, 0), draw(7, 1));
        assert_ne!(draw(7, 0), draw(8, 0));
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let logits = [5.0, 4.0, 3.0, 0.0, -1.0];
        let mut r = Rng::for_sample(1, 0);
        for _ in 0..200 {
            assert!(pick(&logits, &sampling(1.0, 2, 1.0), &mut r) < 2);
        }
        // p(0) = 0.66, p(0) + p(1) = 0.91: top_p 0.9 keeps two tokens, 0.5 keeps one.
        let mut seen = [0usize; 5];
        for _ in 0..400 {
            seen[pick(&logits, &sampling(1.0, 0, 0.9), &mut r) as usize] += 1;
        }
        assert!(
            seen[0] > 0 && seen[1] > 0 && seen[2..].iter().all(|&c| c == 0),
            "{seen:?}"
        );
        for _ in 0..100 {
            assert_eq!(pick(&logits, &sampling(1.0, 0, 0.5), &mut r), 0);
        }
    }

    #[test]
    fn sampling_frequencies_follow_the_softmax() {
        let logits = [1.0f32, 0.0, 2.0];
        let lp = log_softmax(&logits);
        let mut r = Rng::for_sample(3, 0);
        let mut seen = [0f64; 3];
        let n = 20000;
        for _ in 0..n {
            seen[pick(&logits, &sampling(1.0, 0, 1.0), &mut r) as usize] += 1.0;
        }
        for i in 0..3 {
            let expected = (lp[i] as f64).exp();
            assert!(
                (seen[i] / n as f64 - expected).abs() < 0.02,
                "{i}: {seen:?}"
            );
        }
    }

    #[test]
    fn log_softmax_normalises_and_top_n_orders() {
        let lp = log_softmax(&[1.0, 3.0, 2.0, 3.0]);
        let sum: f64 = lp.iter().map(|&v| (v as f64).exp()).sum();
        assert!((sum - 1.0).abs() < 1e-6);
        let top = top_n(&lp, 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 2]);
    }
}
