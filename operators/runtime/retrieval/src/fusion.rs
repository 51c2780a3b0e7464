//! Text + video query fusion for ExpStar (spec `expstar-pipeline.md` §D.1).
//!
//! The original projects its 512-d CLIP video vector to the 768-d Contriever space with a
//! freshly created, randomly initialised, untrained `nn.Linear` for every query (no seed), so
//! its video half is noise and its results are not reproducible. expflow does not reproduce
//! that: it fuses only vectors that already share a space (text and video from the same
//! CLIP-style model), as `q = w·text + (1 − w)·video`, optionally L2-normalised. Vectors of
//! different sizes are refused. A query without video uses its text vector alone, and the
//! result says so.
//!
//! To keep the original's shape (a 512-d CLIP video vector fused with a 768-d Contriever text
//! vector), [`Projection::seeded`] builds the same kind of untrained linear map, initialised
//! as `torch.nn.Linear` is (weights and bias uniform in ±1/√in), but once, from a seed: every
//! query is projected by the same map, so the results are reproducible. The video half is
//! still untrained noise, as in the original.

use serde::{Deserialize, Serialize};

use crate::error::{Result, RetrievalError};
use crate::exact::normalized;

/// How text and video vectors are combined.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FusionParams {
    /// Weight of the text vector, 0 to 1 (the original uses 0.3); video gets `1 − w`.
    pub text_weight: f32,
    /// L2-normalise the fused query (the original normalises the fused vector).
    pub normalize: bool,
}

impl Default for FusionParams {
    fn default() -> Self {
        FusionParams {
            text_weight: 0.3,
            normalize: true,
        }
    }
}

/// Which vectors a fused query was built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuerySource {
    /// `w·text + (1 − w)·video`.
    #[serde(rename = "text+video")]
    TextAndVideo,
    /// The text vector alone (the query had no video vector).
    #[serde(rename = "text")]
    TextOnly,
}

impl QuerySource {
    pub fn as_str(self) -> &'static str {
        match self {
            QuerySource::TextAndVideo => "text+video",
            QuerySource::TextOnly => "text",
        }
    }
}

/// A fused query vector and what it was built from.
#[derive(Clone, Debug, PartialEq)]
pub struct FusedQuery {
    pub vector: Vec<f32>,
    pub source: QuerySource,
}

/// A fixed linear map `y = W·x + b` from `in_dim` to `out_dim`.
#[derive(Clone, Debug, PartialEq)]
pub struct Projection {
    pub in_dim: usize,
    pub out_dim: usize,
    /// Row-major `out_dim × in_dim`.
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// SplitMix64: a small, portable generator, the same stream on every platform.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-bound, bound), from the top 24 bits.
    fn uniform(&mut self, bound: f32) -> f32 {
        let unit = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * unit - 1.0) * bound
    }
}

impl Projection {
    /// `torch.nn.Linear(in_dim, out_dim)`'s initial distribution (weights and bias uniform in
    /// ±1/√in_dim), drawn from `seed`: the same map for the same arguments, everywhere.
    pub fn seeded(in_dim: usize, out_dim: usize, seed: u64) -> Result<Projection> {
        if in_dim == 0 || out_dim == 0 {
            return Err(RetrievalError::param(
                "projection",
                format!("maps {in_dim}-d to {out_dim}-d; both sizes must be at least 1"),
            ));
        }
        let bound = 1.0 / (in_dim as f32).sqrt();
        let mut rng = SplitMix64(seed);
        let weight = (0..in_dim * out_dim).map(|_| rng.uniform(bound)).collect();
        let bias = (0..out_dim).map(|_| rng.uniform(bound)).collect();
        Ok(Projection {
            in_dim,
            out_dim,
            weight,
            bias,
        })
    }

    /// `W·x + b`; `x` must be `in_dim` long.
    pub fn apply(&self, x: &[f32]) -> Result<Vec<f32>> {
        if x.len() != self.in_dim {
            return Err(RetrievalError::Fusion(format!(
                "the projection maps {}-d video vectors, but this one is {}-d; embed every clip with the same encoder",
                self.in_dim,
                x.len()
            )));
        }
        Ok(self
            .weight
            .chunks(self.in_dim)
            .zip(&self.bias)
            .map(|(row, b)| row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>() + b)
            .collect())
    }
}

/// Fuses `text` with `video` (`None` or empty: text only). See the module docs.
pub fn fuse(text: &[f32], video: Option<&[f32]>, params: FusionParams) -> Result<FusedQuery> {
    let w = params.text_weight;
    if !(0.0..=1.0).contains(&w) {
        return Err(RetrievalError::param(
            "text_weight",
            format!("is {w}; use a weight from 0 to 1 (ExpStar uses 0.3)"),
        ));
    }
    if text.is_empty() {
        return Err(RetrievalError::Data(
            "the text query vector is empty; every query needs a text embedding".into(),
        ));
    }
    let (mut vector, source) = match video.filter(|v| !v.is_empty()) {
        None => (text.to_vec(), QuerySource::TextOnly),
        Some(video) if video.len() != text.len() => {
            return Err(RetrievalError::Fusion(format!(
                "cannot fuse a {}-d text vector with a {}-d video vector. ExpStar's original \
                 maps video into the text space with a freshly created, untrained random \
                 nn.Linear for every query, which makes its video half noise and its results \
                 irreproducible; expflow does not reproduce that. Use text and video \
                 embeddings from the same CLIP-style encoder (one shared space), project the \
                 video vectors with a fixed seeded map first (retrieve.fuse's `projection: \
                 seeded`), or drop the video column and retrieve with text only.",
                text.len(),
                video.len()
            )));
        }
        Some(video) => (
            text.iter()
                .zip(video)
                .map(|(t, v)| w * t + (1.0 - w) * v)
                .collect(),
            QuerySource::TextAndVideo,
        ),
    };
    if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
        return Err(RetrievalError::Data(format!(
            "the fused query holds a non-finite value at position {i}; check the embeddings"
        )));
    }
    if params.normalize {
        vector = normalized(&vector, "the fused query")?;
    }
    Ok(FusedQuery { vector, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_space_vectors_are_weighted_and_normalised() {
        let p = FusionParams {
            text_weight: 0.25,
            normalize: false,
        };
        let q = fuse(&[4.0, 0.0], Some(&[0.0, 4.0]), p).unwrap();
        assert_eq!(q.vector, [1.0, 3.0]);
        assert_eq!(q.source, QuerySource::TextAndVideo);
        let n = fuse(
            &[4.0, 0.0],
            Some(&[0.0, 4.0]),
            FusionParams {
                normalize: true,
                ..p
            },
        )
        .unwrap();
        let len: f32 = n.vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((len - 1.0).abs() < 1e-6);
        assert!((n.vector[1] / n.vector[0] - 3.0).abs() < 1e-5);
    }

    #[test]
    fn missing_video_falls_back_to_text_and_says_so() {
        let p = FusionParams {
            text_weight: 0.3,
            normalize: false,
        };
        for video in [None, Some(&[][..])] {
            let q = fuse(&[1.0, 2.0], video, p).unwrap();
            assert_eq!(q.vector, [1.0, 2.0]);
            assert_eq!(q.source, QuerySource::TextOnly);
        }
    }

    #[test]
    fn the_seeded_projection_is_fixed_and_bounded() {
        let a = Projection::seeded(512, 768, 7).unwrap();
        let b = Projection::seeded(512, 768, 7).unwrap();
        let c = Projection::seeded(512, 768, 8).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let bound = 1.0 / 512f32.sqrt();
        assert!(a.weight.iter().chain(&a.bias).all(|w| w.abs() <= bound));
        // Not degenerate: the draws spread over the range.
        let max = a.weight.iter().fold(0f32, |m, w| m.max(w.abs()));
        assert!(max > 0.9 * bound, "{max}");
        let v = vec![0.5; 512];
        let p = a.apply(&v).unwrap();
        assert_eq!(p.len(), 768);
        assert_eq!(p, b.apply(&v).unwrap());
        let q = fuse(&[0.1; 768], Some(&p), FusionParams::default()).unwrap();
        assert_eq!(q.source, QuerySource::TextAndVideo);
        let e = a.apply(&[1.0; 3]).unwrap_err().to_string();
        assert!(
            e.contains("maps 512-d video vectors, but this one is 3-d"),
            "{e}"
        );
        assert!(Projection::seeded(0, 4, 1).is_err());
    }

    #[test]
    fn different_sizes_are_refused_with_the_reason() {
        let e = fuse(&[0.1; 768], Some(&[0.1; 512]), FusionParams::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("768-d text vector with a 512-d video vector"),
            "{e}"
        );
        assert!(e.contains("untrained random"), "{e}");
        assert!(e.contains("same CLIP-style encoder"), "{e}");
        let bad = FusionParams {
            text_weight: 1.5,
            normalize: true,
        };
        let e = fuse(&[1.0], None, bad).unwrap_err().to_string();
        assert!(e.contains("`text_weight` is 1.5"), "{e}");
    }
}
