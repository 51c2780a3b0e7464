//! Multimodal rotary positions (M-RoPE): three position rows (temporal, height, width). Text
//! tokens have the same position in all three; an image's or video's tokens get their grid
//! coordinates offset by the position where they start. The head dimension's frequency pairs
//! are split by `mrope_section` between the three rows.

use candle_core::{D, DType, Device, Tensor};

use crate::error::{Result, VlmError};

/// One image's or video's place in a prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionSpan {
    /// `(t, h, w)` in patches (before merging).
    pub grid_thw: [usize; 3],
    /// Temporal position step per grid frame: 1 for images, `tokens_per_second ·
    /// seconds_per_grid` for videos.
    pub time_interval: f64,
}

/// The three position rows of a prompt and `delta` such that a token at index `i` after the
/// prompt has position `i + delta` in all rows (`rope_deltas` in transformers).
#[derive(Clone, Debug, PartialEq)]
pub struct RopeIndex {
    pub rows: [Vec<i64>; 3],
    pub delta: i64,
}

/// `get_rope_index` for one sequence: `ids` holds each vision input as a run of
/// `t·h·w / merge²` tokens equal to `image_token` or `video_token`; `spans` describes them
/// in order. After a vision input, text continues at the largest position so far plus one.
pub fn rope_index(
    ids: &[u32],
    image_token: u32,
    video_token: u32,
    spans: &[VisionSpan],
    merge: usize,
) -> Result<RopeIndex> {
    let mut rows: [Vec<i64>; 3] = std::array::from_fn(|_| Vec::with_capacity(ids.len()));
    let mut next_span = spans.iter();
    let mut pos: i64 = 0;
    let mut i = 0;
    while i < ids.len() {
        let id = ids[i];
        if id != image_token && id != video_token {
            for r in &mut rows {
                r.push(pos);
            }
            pos += 1;
            i += 1;
            continue;
        }
        let span = next_span.next().ok_or_else(|| {
            VlmError::Request(format!(
                "token {i} is a vision placeholder, but all {} images/videos are placed already",
                spans.len()
            ))
        })?;
        let [t, h, w] = span.grid_thw;
        let (lh, lw) = (h / merge, w / merge);
        let n = t * lh * lw;
        if i + n > ids.len() || ids[i..i + n].iter().any(|&x| x != id) {
            return Err(VlmError::Request(format!(
                "the vision input at token {i} (grid {:?}) needs {n} consecutive placeholder tokens",
                span.grid_thw
            )));
        }
        let mut max = pos;
        for ti in 0..t {
            let tp = (ti as f64 * span.time_interval) as i64 + pos;
            for y in 0..lh {
                for x in 0..lw {
                    let (yp, xp) = (y as i64 + pos, x as i64 + pos);
                    rows[0].push(tp);
                    rows[1].push(yp);
                    rows[2].push(xp);
                    max = max.max(tp).max(yp).max(xp);
                }
            }
        }
        pos = max + 1;
        i += n;
    }
    if next_span.next().is_some() {
        return Err(VlmError::Request(format!(
            "{} images/videos given, but the prompt has placeholders for fewer",
            spans.len()
        )));
    }
    Ok(RopeIndex {
        rows,
        delta: pos - ids.len() as i64,
    })
}

/// Rotary tables for M-RoPE.
#[derive(Clone, Debug)]
pub struct MRope {
    inv_freq: Vec<f32>,
    /// For each frequency pair, the position row it reads (0 temporal, 1 height, 2 width).
    row_of: Vec<usize>,
}

impl MRope {
    pub fn new(head_dim: usize, theta: f64, mrope_section: &[usize]) -> MRope {
        let inv_freq = (0..head_dim / 2)
            .map(|j| 1.0 / (theta as f32).powf((2 * j) as f32 / head_dim as f32))
            .collect();
        let row_of = mrope_section
            .iter()
            .enumerate()
            .flat_map(|(i, &n)| std::iter::repeat_n(i % 3, n))
            .collect();
        MRope { inv_freq, row_of }
    }

    /// `cos`, `sin` of shape `(1, 1, seq, head_dim)` for position rows `rows[r][s]`.
    pub fn tables(
        &self,
        rows: &[Vec<i64>; 3],
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let s = rows[0].len();
        let half = self.inv_freq.len();
        let mut freqs = Vec::with_capacity(s * half);
        let cols: Vec<&Vec<i64>> = self.row_of.iter().map(|&r| &rows[r]).collect();
        for i in 0..s {
            freqs.extend(
                cols.iter()
                    .zip(&self.inv_freq)
                    .map(|(c, f)| c[i] as f32 * f),
            );
        }
        let freqs = Tensor::from_vec(freqs, (1, 1, s, half), device)?;
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1)?;
        Ok((emb.cos()?.to_dtype(dtype)?, emb.sin()?.to_dtype(dtype)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_image_text_positions() {
        // 2 text tokens, an image of 1x4x6 patches (2x3 tokens), 2 text tokens.
        let ids = [9, 9, 5, 5, 5, 5, 5, 5, 9, 9];
        let spans = [VisionSpan {
            grid_thw: [1, 4, 6],
            time_interval: 1.0,
        }];
        let r = rope_index(&ids, 5, 6, &spans, 2).unwrap();
        assert_eq!(r.rows[0], vec![0, 1, 2, 2, 2, 2, 2, 2, 5, 6]);
        assert_eq!(r.rows[1], vec![0, 1, 2, 2, 2, 3, 3, 3, 5, 6]);
        assert_eq!(r.rows[2], vec![0, 1, 2, 3, 4, 2, 3, 4, 5, 6]);
        assert_eq!(r.delta, 7 - 10);
    }

    #[test]
    fn placeholder_count_must_match() {
        let spans = [VisionSpan {
            grid_thw: [1, 4, 6],
            time_interval: 1.0,
        }];
        assert!(rope_index(&[9, 5, 5, 9], 5, 6, &spans, 2).is_err());
        assert!(rope_index(&[9, 9], 5, 6, &spans, 2).is_err());
    }

    #[test]
    fn sections_pick_rows() {
        let m = MRope::new(8, 10000.0, &[1, 2, 1]);
        assert_eq!(m.row_of, vec![0, 1, 1, 2]);
    }
}
