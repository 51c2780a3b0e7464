//! Text + video query fusion for ExpStar (spec `expstar-pipeline.md` §D.1).
//!
//! The original projects its 512-d CLIP video vector to the 768-d Contriever space with a
//! freshly created, randomly initialised, untrained `nn.Linear` for every query (no seed), so
//! its video half is noise and its results are not reproducible. expflow does not reproduce
//! that: it fuses only vectors that already share a space (text and video from the same
//! CLIP-style model), as `q = w·text + (1 − w)·video`, optionally L2-normalised. Vectors of
//! different sizes are refused. A query without video uses its text vector alone, and the
//! result says so.

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
                 embeddings from the same CLIP-style encoder (one shared space), or drop the \
                 video column and retrieve with text only.",
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
