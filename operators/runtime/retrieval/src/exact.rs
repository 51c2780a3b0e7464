//! Exact inner-product search: the vectors are one row-major f32 matrix, queries are scored
//! in blocks with one candle matmul (CPU) each, and the top k of every row are selected in
//! [`crate::hit::rank_order`]; their scores are then recomputed in f64 (so exact and HNSW
//! search report the same score for a document) and re-ranked. With [`Metric::Cosine`] the vectors and queries are
//! L2-normalised first, so the inner product is the cosine.

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Result, RetrievalError};
use crate::hit::{Hit, top_k};

/// Queries scored per matmul (bounds the score matrix to `QUERY_BLOCK × count` floats).
pub const QUERY_BLOCK: usize = 64;

/// How vectors are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Metric {
    /// Raw inner product (faiss `IndexFlatIP`; what ExpStar's Contriever index uses).
    #[serde(rename = "ip")]
    InnerProduct,
    /// Cosine: vectors and queries are L2-normalised, then compared by inner product.
    #[serde(rename = "cosine")]
    Cosine,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::InnerProduct => "ip",
            Metric::Cosine => "cosine",
        }
    }

    pub fn parse(s: &str) -> Result<Metric> {
        match s {
            "ip" => Ok(Metric::InnerProduct),
            "cosine" => Ok(Metric::Cosine),
            other => Err(RetrievalError::param(
                "metric",
                format!("is `{other}`; use `ip` (inner product) or `cosine`"),
            )),
        }
    }
}

/// `v` scaled to unit length; an error naming `what` when its norm is 0 or not finite.
pub fn normalized(v: &[f32], what: &str) -> Result<Vec<f32>> {
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Err(RetrievalError::Data(format!(
            "{what} has norm {norm}, so it has no direction; cosine needs non-zero finite vectors"
        )));
    }
    Ok(v.iter().map(|x| (f64::from(*x) / norm) as f32).collect())
}

/// Checks that `data` holds whole rows of `dim` finite values; returns the row count.
pub(crate) fn check_rows(data: &[f32], dim: usize, what: &str) -> Result<usize> {
    if dim == 0 {
        return Err(RetrievalError::Data(format!(
            "{what}: the vector dimension is 0; give vectors with at least one value"
        )));
    }
    if !data.len().is_multiple_of(dim) {
        return Err(RetrievalError::Data(format!(
            "{what}: {} values are not a whole number of rows of dimension {dim}",
            data.len()
        )));
    }
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        return Err(RetrievalError::Data(format!(
            "{what}: row {} holds a non-finite value ({}); remove or fix it",
            i / dim,
            data[i]
        )));
    }
    Ok(data.len() / dim)
}

fn tensor_err(action: &'static str) -> impl Fn(candle_core::Error) -> RetrievalError {
    move |error| RetrievalError::Tensor { action, error }
}

/// An exact inner-product (or cosine) index.
#[derive(Clone, Debug)]
pub struct ExactIndex {
    dim: usize,
    metric: Metric,
    /// Row-major, normalised under cosine (what is searched and saved).
    data: Vec<f32>,
    /// The same values as a `(count, dim)` tensor.
    matrix: Tensor,
}

impl ExactIndex {
    /// Builds the index from `data`, row-major rows of `dim` values (normalised under cosine).
    pub fn build(data: Vec<f32>, dim: usize, metric: Metric) -> Result<ExactIndex> {
        let count = check_rows(&data, dim, "the index vectors")?;
        let data = match metric {
            Metric::InnerProduct => data,
            Metric::Cosine => {
                let mut out = Vec::with_capacity(data.len());
                for (i, row) in data.chunks(dim).enumerate() {
                    out.extend(normalized(row, &format!("index vector {i}"))?);
                }
                out
            }
        };
        ExactIndex::from_prepared(data, dim, count, metric)
    }

    /// Wraps rows that are already in searchable form (normalised under cosine), as saved.
    pub(crate) fn from_prepared(
        data: Vec<f32>,
        dim: usize,
        count: usize,
        metric: Metric,
    ) -> Result<ExactIndex> {
        let matrix = Tensor::from_slice(&data, (count, dim), &Device::Cpu)
            .map_err(tensor_err("building the index matrix"))?;
        Ok(ExactIndex {
            dim,
            metric,
            data,
            matrix,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The stored rows (normalised under cosine).
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Checks a query block's shape and values and normalises it under cosine.
    pub(crate) fn prepare_queries(&self, queries: &[f32]) -> Result<Vec<f32>> {
        if !queries.len().is_multiple_of(self.dim) {
            return Err(RetrievalError::Dim {
                what: format!("a query block of {} values", queries.len()),
                got: queries.len() % self.dim,
                expected: self.dim,
                hint: "queries must be whole rows of the index's dimension; embed them with the encoder that built the index",
            });
        }
        check_rows(queries, self.dim, "the queries")?;
        match self.metric {
            Metric::InnerProduct => Ok(queries.to_vec()),
            Metric::Cosine => {
                let mut out = Vec::with_capacity(queries.len());
                for (i, row) in queries.chunks(self.dim).enumerate() {
                    out.extend(normalized(row, &format!("query {i}"))?);
                }
                Ok(out)
            }
        }
    }

    /// The best `k` rows for each query; `queries` is row-major with the index's dimension.
    pub fn search_batch(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Hit>>> {
        let queries = self.prepare_queries(queries)?;
        let n_queries = queries.len() / self.dim;
        let mut out = Vec::with_capacity(n_queries);
        if self.is_empty() {
            out.resize(n_queries, Vec::new());
            return Ok(out);
        }
        let rhs = self
            .matrix
            .t()
            .map_err(tensor_err("transposing the index"))?;
        for block in queries.chunks(QUERY_BLOCK * self.dim) {
            let rows = block.len() / self.dim;
            let q = Tensor::from_slice(block, (rows, self.dim), &Device::Cpu)
                .map_err(tensor_err("building the query matrix"))?;
            let scores: Vec<f32> = q
                .matmul(&rhs)
                .and_then(|s| s.flatten_all())
                .and_then(|s| s.to_vec1())
                .map_err(tensor_err("scoring queries against the index"))?;
            let n = self.len();
            let hits: Vec<Vec<Hit>> = scores
                .par_chunks(n)
                .zip(block.par_chunks(self.dim))
                .map(|(row, q)| self.rescore(q, top_k(row.iter().map(|&s| f64::from(s)), k)))
                .collect();
            out.extend(hits);
        }
        Ok(out)
    }

    /// The best `k` rows for one query.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>> {
        self.check_query_dim(query)?;
        Ok(self.search_batch(query, k)?.pop().unwrap_or_default())
    }

    pub(crate) fn check_query_dim(&self, query: &[f32]) -> Result<()> {
        if query.len() != self.dim {
            return Err(RetrievalError::Dim {
                what: "the query".into(),
                got: query.len(),
                expected: self.dim,
                hint: "embed queries with the encoder that built the index",
            });
        }
        Ok(())
    }

    /// `hits` with their scores recomputed by [`ExactIndex::dot`] and re-ranked, so exact and
    /// HNSW search report identical scores for the same document.
    pub(crate) fn rescore(&self, query: &[f32], hits: Vec<Hit>) -> Vec<Hit> {
        let mut hits: Vec<Hit> = hits
            .into_iter()
            .map(|h| Hit {
                index: h.index,
                score: self.dot(query, h.index),
            })
            .collect();
        hits.sort_by(crate::hit::rank_order);
        hits
    }

    /// The inner product of a prepared query with row `i`, accumulated in f64.
    pub(crate) fn dot(&self, query: &[f32], i: usize) -> f64 {
        self.row(i)
            .iter()
            .zip(query)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<f32> {
        vec![
            1.0, 0.0, 0.0, //
            0.0, 2.0, 0.0, //
            0.5, 0.5, 0.0, //
            0.0, 2.0, 0.0, // duplicate of row 1
            -1.0, 0.0, 3.0,
        ]
    }

    #[test]
    fn inner_product_ranks_and_scores_match_a_direct_loop() {
        let index = ExactIndex::build(rows(), 3, Metric::InnerProduct).unwrap();
        let queries = [0.2f32, 1.0, 0.1, 1.0, 0.0, 1.0];
        let hits = index.search_batch(&queries, 5).unwrap();
        for (qi, q) in queries.chunks(3).enumerate() {
            let mut want: Vec<(usize, f64)> = (0..5).map(|i| (i, index.dot(q, i))).collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let got: Vec<usize> = hits[qi].iter().map(|h| h.index).collect();
            assert_eq!(got, want.iter().map(|w| w.0).collect::<Vec<_>>());
            for (h, w) in hits[qi].iter().zip(&want) {
                assert_eq!(h.score, w.1);
            }
        }
        // The duplicate rows 1 and 3 tie; the lower index ranks first.
        assert_eq!(hits[0][0].index, 1);
        assert_eq!(hits[0][1].index, 3);
        assert_eq!(hits[0][0].score, hits[0][1].score);
    }

    #[test]
    fn cosine_normalises_vectors_and_queries() {
        let index = ExactIndex::build(rows(), 3, Metric::Cosine).unwrap();
        let hits = index.search(&[10.0, 10.0, 0.0], 1).unwrap();
        assert_eq!(hits[0].index, 2);
        assert!((hits[0].score - 1.0).abs() < 1e-6);
        let norm: f32 = index.row(4).iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-6);
        let e = ExactIndex::build(vec![0.0, 0.0], 2, Metric::Cosine).unwrap_err();
        assert!(e.to_string().contains("norm 0"), "{e}");
    }

    #[test]
    fn batches_larger_than_a_block_match_single_queries() {
        let dim = 4;
        let data: Vec<f32> = (0..40).map(|i| ((i * 7 % 11) as f32) - 5.0).collect();
        let index = ExactIndex::build(data, dim, Metric::InnerProduct).unwrap();
        let queries: Vec<f32> = (0..(QUERY_BLOCK + 3) * dim)
            .map(|i| ((i * 5 % 13) as f32) - 6.0)
            .collect();
        let batch = index.search_batch(&queries, 3).unwrap();
        assert_eq!(batch.len(), QUERY_BLOCK + 3);
        for (q, hits) in queries.chunks(dim).zip(&batch) {
            let one = index.search(q, 3).unwrap();
            let a: Vec<usize> = one.iter().map(|h| h.index).collect();
            let b: Vec<usize> = hits.iter().map(|h| h.index).collect();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn wrong_dimensions_and_bad_values_are_refused() {
        let index = ExactIndex::build(rows(), 3, Metric::InnerProduct).unwrap();
        let e = index.search(&[1.0, 2.0], 1).unwrap_err().to_string();
        assert!(e.contains("dimension 2, but 3 is needed"), "{e}");
        let e = ExactIndex::build(vec![1.0, f32::NAN], 2, Metric::InnerProduct).unwrap_err();
        assert!(
            e.to_string().contains("row 0 holds a non-finite value"),
            "{e}"
        );
        let e = ExactIndex::build(vec![1.0; 5], 2, Metric::InnerProduct).unwrap_err();
        assert!(e.to_string().contains("not a whole number of rows"), "{e}");
    }
}
