//! Approximate search with an HNSW graph from `hnsw_rs` 0.3.5, over the same vectors as an
//! [`ExactIndex`], which also rescores the candidates exactly.
//!
//! **Inner product in HNSW.** HNSW needs a non-negative distance, so maximum inner product
//! is reduced to nearest neighbour (Bachrach et al. 2014): each vector `x` becomes
//! `[x, sqrt(R² − |x|²)]`, where `R` is the largest norm, and a query `q` becomes `[q, 0]`;
//! then `|q' − x'|² = |q|² + R² − 2·q·x`, which orders exactly as `−q·x`. The returned scores
//! are the exact inner products (or cosines), ranked by score, then index.
//!
//! **Graph.** `hnsw_rs` builds the graph; its neighbour lists are then copied out (see
//! [`crate::graph`]) and `hnsw_rs`'s structure, with its copy of the vectors, is dropped.
//! Search runs on those lists with the distance `−q·x` on the index's own vectors (the same
//! order as the augmented distance above), so a graph saved with the index and read back
//! searches exactly like the freshly built one.
//!
//! **Determinism.** `hnsw_rs` draws node levels from its own generator seeded with a fixed
//! constant; it offers no seed parameter. Serial insertion (in row order) therefore builds
//! the same graph every time, and that is the default. `parallel: true` inserts with rayon,
//! which is faster but whose graph depends on thread timing, so results may differ
//! slightly between builds (a saved graph is searched the same way after every load).
//!
//! **Logging.** `hnsw_rs` logs through the `log` crate (info level at construction). Nothing
//! is printed unless the program installs a `log` consumer; the expflow CLI's tracing
//! subscriber forwards it, and its `warn` default level keeps it quiet.

use hnsw_rs::anndists::dist::Distance;
use hnsw_rs::hnsw::Hnsw;
use serde::{Deserialize, Serialize};

use crate::error::{Result, RetrievalError};
use crate::exact::ExactIndex;
use crate::graph::Graph;
use crate::hit::{Hit, rank_order};

/// The largest layer count `hnsw_rs` supports.
const MAX_LAYERS: usize = 16;

/// HNSW build parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswParams {
    /// Neighbours kept per node and layer (`M`, 2 to 256).
    pub m: usize,
    /// Candidate list size while building.
    pub ef_construction: usize,
    /// Insert in parallel (faster, not deterministic); serial insertion is deterministic.
    pub parallel: bool,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 200,
            parallel: false,
        }
    }
}

impl HnswParams {
    pub fn validate(&self) -> Result<()> {
        // hnsw_rs exits the process for M > 256, so the bound is checked here.
        if !(2..=256).contains(&self.m) {
            return Err(RetrievalError::param(
                "m",
                format!("is {}; use 2 to 256 (16 is typical)", self.m),
            ));
        }
        if self.ef_construction == 0 {
            return Err(RetrievalError::param(
                "ef_construction",
                "is 0; use at least M (200 is typical)",
            ));
        }
        Ok(())
    }
}

/// Squared Euclidean distance on the augmented vectors (non-negative, as HNSW requires).
#[derive(Clone, Copy, Debug, Default)]
pub struct SquaredL2;

impl Distance<f32> for SquaredL2 {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
    }
}

/// An HNSW graph over an [`ExactIndex`]'s vectors.
pub struct HnswIndex {
    exact: ExactIndex,
    params: HnswParams,
    graph: Graph,
}

impl std::fmt::Debug for HnswIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HnswIndex")
            .field("count", &self.exact.len())
            .field("dim", &self.exact.dim())
            .field("params", &self.params)
            .finish()
    }
}

/// The inner product in f32 with eight partial sums (fast; used only to steer the search).
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `row` with the MIPS augmentation coordinate for the largest norm `r`.
fn augment(row: &[f32], r: f64) -> Vec<f32> {
    let sq: f64 = row.iter().map(|x| f64::from(*x) * f64::from(*x)).sum();
    let mut v = Vec::with_capacity(row.len() + 1);
    v.extend_from_slice(row);
    v.push((r * r - sq).max(0.0).sqrt() as f32);
    v
}

impl HnswIndex {
    /// Builds the graph over `exact`'s vectors.
    pub fn build(exact: ExactIndex, params: HnswParams) -> Result<HnswIndex> {
        params.validate()?;
        let n = exact.len();
        let r = (0..n)
            .map(|i| {
                exact
                    .row(i)
                    .iter()
                    .map(|x| f64::from(*x) * f64::from(*x))
                    .sum::<f64>()
            })
            .fold(0.0f64, f64::max)
            .sqrt();
        let graph = Hnsw::new(
            params.m,
            n.max(1),
            MAX_LAYERS,
            params.ef_construction,
            SquaredL2,
        );
        let augmented: Vec<Vec<f32>> = (0..n).map(|i| augment(exact.row(i), r)).collect();
        if params.parallel {
            let items: Vec<(&[f32], usize)> = augmented
                .iter()
                .enumerate()
                .map(|(i, v)| (v.as_slice(), i))
                .collect();
            graph.parallel_insert_slice(&items);
        } else {
            for (i, v) in augmented.iter().enumerate() {
                graph.insert_slice((v, i));
            }
        }
        let graph = Graph::from_hnsw(&graph, n)?;
        tracing::debug!(count = n, m = params.m, "built an HNSW graph");
        Ok(HnswIndex {
            exact,
            params,
            graph,
        })
    }

    /// An index over `exact` with a graph read back from an artifact.
    pub(crate) fn with_graph(exact: ExactIndex, params: HnswParams, graph: Graph) -> HnswIndex {
        HnswIndex {
            exact,
            params,
            graph,
        }
    }

    /// The graph, as `hnsw.graph` stores it.
    pub(crate) fn graph_bytes(&self) -> Vec<u8> {
        self.graph
            .to_bytes(self.params.m, self.params.ef_construction)
    }

    pub fn params(&self) -> HnswParams {
        self.params
    }

    /// The vectors (and exact search over them).
    pub fn exact(&self) -> &ExactIndex {
        &self.exact
    }

    pub fn len(&self) -> usize {
        self.exact.len()
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
    }

    /// About the best `k` rows for `query`, exploring `ef` candidates (at least `k`), with
    /// exact scores, ranked by score, then index.
    pub fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Hit>> {
        self.exact.check_query_dim(query)?;
        let q = self.exact.prepare_queries(query)?;
        if self.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        // The `ef` candidates are rescored exactly and the best `k` of them kept.
        let found = self
            .graph
            .search(|i| -dot_f32(&q, self.exact.row(i)), ef.max(k));
        let mut hits: Vec<Hit> = found
            .iter()
            .map(|&(_, i)| Hit {
                index: i,
                score: self.exact.dot(&q, i),
            })
            .collect();
        hits.sort_by(rank_order);
        hits.truncate(k);
        Ok(hits)
    }

    /// [`HnswIndex::search`] for each row of `queries`, in parallel.
    pub fn search_batch(&self, queries: &[f32], k: usize, ef: usize) -> Result<Vec<Vec<Hit>>> {
        use rayon::prelude::*;
        // Shape and value checks once, for the error message.
        self.exact.prepare_queries(queries)?;
        queries
            .par_chunks(self.exact.dim())
            .map(|q| self.search(q, k, ef))
            .collect()
    }

    /// Mean recall@k of HNSW search against exact search over the same vectors: the
    /// fraction of each query's exact top `k` that HNSW (with `ef`) also returns.
    pub fn recall_at_k(&self, queries: &[f32], k: usize, ef: usize) -> Result<f64> {
        let truth = self.exact.search_batch(queries, k)?;
        let approx = self.search_batch(queries, k, ef)?;
        let mut total = 0.0;
        let mut counted = 0usize;
        for (t, a) in truth.iter().zip(&approx) {
            if t.is_empty() {
                continue;
            }
            let found = t
                .iter()
                .filter(|h| a.iter().any(|x| x.index == h.index))
                .count();
            total += found as f64 / t.len() as f64;
            counted += 1;
        }
        if counted == 0 {
            return Err(RetrievalError::Data(
                "recall needs at least one query and a non-empty index".into(),
            ));
        }
        Ok(total / counted as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exact::Metric;

    /// Deterministic pseudo-random values in [-1, 1) (splitmix64).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn index(metric: Metric, parallel: bool) -> HnswIndex {
        let exact = ExactIndex::build(values(2000 * 16, 1), 16, metric).unwrap();
        let params = HnswParams {
            m: 16,
            ef_construction: 100,
            parallel,
        };
        HnswIndex::build(exact, params).unwrap()
    }

    #[test]
    fn recall_against_exact_is_high_for_both_metrics() {
        let queries = values(50 * 16, 2);
        for metric in [Metric::InnerProduct, Metric::Cosine] {
            let idx = index(metric, false);
            let recall = idx.recall_at_k(&queries, 10, 100).unwrap();
            assert!(recall >= 0.9, "{metric:?}: recall@10 {recall}");
        }
    }

    #[test]
    fn serial_builds_give_identical_results() {
        let a = index(Metric::InnerProduct, false);
        let b = index(Metric::InnerProduct, false);
        let queries = values(20 * 16, 3);
        assert_eq!(
            a.search_batch(&queries, 10, 40).unwrap(),
            b.search_batch(&queries, 10, 40).unwrap()
        );
    }

    #[test]
    fn scores_are_exact_and_ranked() {
        let idx = index(Metric::InnerProduct, true);
        let q = values(16, 4);
        let hits = idx.search(&q, 5, 64).unwrap();
        assert_eq!(hits.len(), 5);
        for h in &hits {
            assert_eq!(h.score, idx.exact().dot(&q, h.index));
        }
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    }

    #[test]
    fn bad_parameters_and_dimensions_are_refused() {
        let exact = ExactIndex::build(values(32, 5), 4, Metric::InnerProduct).unwrap();
        let bad = HnswParams {
            m: 300,
            ..HnswParams::default()
        };
        let e = HnswIndex::build(exact.clone(), bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("parameter `m` is 300"), "{e}");
        let idx = HnswIndex::build(exact, HnswParams::default()).unwrap();
        let e = idx.search(&[1.0; 3], 2, 10).unwrap_err().to_string();
        assert!(e.contains("dimension 3, but 4 is needed"), "{e}");
    }
}
