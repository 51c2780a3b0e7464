//! CIDEr-D as `pycocoevalcap`'s `Cider` scorer computes it on tokenised text (tokens are
//! whitespace-separated, as its `precook` splits them): n-grams 1-4, TF-IDF vectors with
//! document frequencies from the corpus references and `log(#items)` as the reference
//! length, clipped similarity (`min(hyp, ref) * ref`), the Gaussian length penalty with
//! σ = 6, mean over n, mean over references, ×10.
//!
//! One quirk is kept on purpose: the "length" in the penalty counts bigrams, not words,
//! because the original adds term frequencies when the 0-based order `n == 1`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::tokenize::{Interner, ngram_key, ngram_order};

const N: usize = 4;
pub const SIGMA: f64 = 6.0;

/// Hashes the packed `u128` n-gram keys with a folded 64x64-bit multiply, so every token
/// id reaches the low bits the table indexes by (FxHash leaves them to the last id alone).
#[derive(Default, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, i: u64) {
        let m = u128::from(self.0 ^ i ^ 0x243f_6a88_85a3_08d3) * 0x9e37_79b9_7f4a_7c15;
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
    fn write_u128(&mut self, i: u128) {
        let m = u128::from((i as u64) ^ 0x243f_6a88_85a3_08d3)
            * u128::from(((i >> 64) as u64) ^ 0x1319_8a2e_0370_7344);
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

type KeyMap<V> = HashMap<u128, V, BuildHasherDefault<KeyHasher>>;

/// Sorted (n-gram key, count) pairs.
type Counts = Vec<(u128, f64)>;

fn precook(ids: &[u32]) -> Counts {
    let mut keys: Vec<u128> = Vec::with_capacity(ids.len() * N);
    for k in 1..=N {
        if ids.len() < k {
            break;
        }
        keys.extend(ids.windows(k).map(ngram_key));
    }
    keys.sort_unstable();
    let mut out: Counts = Vec::with_capacity(keys.len());
    for k in keys {
        match out.last_mut() {
            Some((last, c)) if *last == k => *c += 1.0,
            _ => out.push((k, 1.0)),
        }
    }
    out
}

/// TF-IDF weights in key order, with the norm per order and the (bigram) length.
struct Vector {
    items: Vec<(u128, f64)>,
    norm: [f64; N],
    length: f64,
}

/// `counts2vec` with `ln(max(df, 1))` per n-gram already known (`log_df(i, key)` for the
/// `i`-th n-gram); the arithmetic and its order are the reference's.
fn counts2vec(cnts: &Counts, ref_len: f64, mut log_df: impl FnMut(usize, u128) -> f64) -> Vector {
    let mut items = Vec::with_capacity(cnts.len());
    let mut norm = [0.0f64; N];
    let mut length = 0.0;
    for (i, &(k, tf)) in cnts.iter().enumerate() {
        let d = log_df(i, k);
        let n = ngram_order(k) - 1;
        let v = tf * (ref_len - d);
        items.push((k, v));
        norm[n] += v * v;
        if n == 1 {
            length += tf;
        }
    }
    Vector {
        items,
        norm: norm.map(f64::sqrt),
        length,
    }
}

fn sim(h: &Vector, r: &Vector, sigma: f64) -> [f64; N] {
    let delta = h.length - r.length;
    let mut val = [0.0f64; N];
    let (mut i, mut j) = (0, 0);
    while i < h.items.len() && j < r.items.len() {
        let (hk, hv) = h.items[i];
        let (rk, rv) = r.items[j];
        match hk.cmp(&rk) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                val[ngram_order(hk) - 1] += hv.min(rv) * rv;
                i += 1;
                j += 1;
            }
        }
    }
    let penalty = std::f64::consts::E.powf(-(delta * delta) / (2.0 * sigma * sigma));
    for (n, v) in val.iter_mut().enumerate() {
        if h.norm[n] != 0.0 && r.norm[n] != 0.0 {
            *v /= h.norm[n] * r.norm[n];
        }
        *v *= penalty;
    }
    val
}

/// Per-item CIDEr-D scores of a corpus of tokenised texts (one hypothesis and one or more
/// references per item); the corpus score is their mean. An item without references
/// scores 0.
///
/// Every distinct reference n-gram gets a dense index once (one hash insert per reference
/// n-gram); document frequencies and their logarithms live in vectors by that index, so
/// reference vectors need no further hashing and only hypothesis n-grams are looked up.
pub fn cider_d<H: AsRef<str>, R: AsRef<str>>(
    hyps: &[Vec<H>],
    refs: &[Vec<Vec<R>>],
    sigma: f64,
) -> Vec<f64> {
    let mut interner = Interner::default();
    let ctest: Vec<Counts> = hyps.iter().map(|h| precook(&interner.ids(h))).collect();
    let crefs: Vec<Vec<Counts>> = refs
        .iter()
        .map(|rs| rs.iter().map(|r| precook(&interner.ids(r))).collect())
        .collect();
    // Dense index per distinct reference n-gram, and each reference's indices in key order.
    let mut index: KeyMap<u32> = KeyMap::default();
    let mut df: Vec<u32> = Vec::new();
    let mut ref_idx: Vec<Vec<Vec<u32>>> = Vec::with_capacity(crefs.len());
    let mut seen: Vec<u32> = Vec::new();
    for rs in &crefs {
        let idx: Vec<Vec<u32>> = rs
            .iter()
            .map(|r| {
                r.iter()
                    .map(|(k, _)| {
                        let next = df.len() as u32;
                        let i = *index.entry(*k).or_insert(next);
                        if i == next {
                            df.push(0);
                        }
                        i
                    })
                    .collect()
            })
            .collect();
        // Each item counts an n-gram once, however many of its references hold it.
        if idx.len() == 1 {
            for &i in &idx[0] {
                df[i as usize] += 1;
            }
        } else {
            seen.clear();
            for r in &idx {
                seen.extend_from_slice(r);
            }
            seen.sort_unstable();
            seen.dedup();
            for &i in &seen {
                df[i as usize] += 1;
            }
        }
        ref_idx.push(idx);
    }
    // ln(max(df, 1)); every indexed n-gram has df >= 1, an unseen one has ln(1) = 0.
    let log_df: Vec<f64> = df.iter().map(|&c| f64::from(c).max(1.0).ln()).collect();
    let ref_len = (crefs.len() as f64).ln();
    ctest
        .iter()
        .zip(&crefs)
        .zip(&ref_idx)
        .map(|((t, rs), ris)| {
            if rs.is_empty() {
                return 0.0;
            }
            // Hypothesis n-grams its first reference holds take that reference's index (a
            // merge of the two sorted lists); only the others are hashed.
            let (r0, ri0) = (&rs[0], &ris[0]);
            let mut j = 0;
            let v = counts2vec(t, ref_len, |_, k| {
                while j < r0.len() && r0[j].0 < k {
                    j += 1;
                }
                if j < r0.len() && r0[j].0 == k {
                    log_df[ri0[j] as usize]
                } else {
                    index.get(&k).map_or(0.0, |&i| log_df[i as usize])
                }
            });
            let mut score = [0.0f64; N];
            for (r, ri) in rs.iter().zip(ris) {
                let vr = counts2vec(r, ref_len, |i, _| log_df[ri[i] as usize]);
                for (acc, s) in score.iter_mut().zip(sim(&v, &vr, sigma)) {
                    *acc += s;
                }
            }
            let mut avg = score.iter().sum::<f64>() / N as f64;
            avg /= rs.len() as f64;
            avg * 10.0
        })
        .collect()
}

/// The corpus CIDEr-D (mean of the item scores; 0 for no items).
pub fn mean(scores: &[f64]) -> f64 {
    if scores.is_empty() {
        0.0
    } else {
        scores.iter().sum::<f64>() / scores.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disjoint_texts_score_zero_and_copies_score_high() {
        let hyps = vec![vec!["a", "b", "c", "d", "e"], vec!["x", "y", "z", "w", "v"]];
        let refs = vec![
            vec![vec!["a", "b", "c", "d", "e"]],
            vec![vec!["p", "q", "r", "s", "t"]],
        ];
        let s = cider_d(&hyps, &refs, SIGMA);
        assert!((s[0] - 10.0).abs() < 1e-9, "{s:?}");
        assert_eq!(s[1], 0.0);
    }
}
