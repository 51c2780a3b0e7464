//! Pooling of token (or frame) states into one vector, and L2 normalisation.

use candle_core::{D, DType, IndexOp, Tensor};
use expflow_models::Pooling;

use crate::error::Result;

/// Pools `hidden` (`[batch, seq, dim]`) over the tokens where `mask` (`[batch, seq]`, 1 for a
/// real token, 0 for padding) is set; `lens[i]` is row i's number of real tokens, which are
/// at the start of the row (right padding).
///
/// - mean: sum of real tokens' states / their count (count clamped at 1e-9, as
///   sentence-transformers does);
/// - CLS: the first token's state; last token: the state at `lens[i] - 1`;
/// - max: element-wise maximum over real tokens (padding set to -1e9 first).
pub fn pool_tokens(
    hidden: &Tensor,
    mask: &Tensor,
    lens: &[usize],
    pooling: Pooling,
) -> Result<Tensor> {
    let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
    Ok(match pooling {
        Pooling::Mean => {
            let sum = hidden.broadcast_mul(&mask)?.sum(1)?;
            let count = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
            sum.broadcast_div(&count)?
        }
        Pooling::Cls => hidden.i((.., 0))?.contiguous()?,
        Pooling::LastToken => {
            let rows = lens
                .iter()
                .enumerate()
                .map(|(i, &l)| hidden.i((i, l.saturating_sub(1))))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::stack(&rows, 0)?
        }
        Pooling::Max => {
            let penalty = ((mask.ones_like()? - &mask)? * -1e9)?;
            hidden.broadcast_add(&penalty)?.max(1)?
        }
    })
}

/// Pools `[n, dim]` rows (for example video frames) into one `[dim]` vector: mean or
/// element-wise max. CLS and last-token pooling pick the first and last row.
pub fn pool_rows(rows: &Tensor, pooling: Pooling) -> Result<Tensor> {
    let n = rows.dim(0)?;
    Ok(match pooling {
        Pooling::Mean => rows.mean(0)?,
        Pooling::Max => rows.max(0)?,
        Pooling::Cls => rows.i(0)?,
        Pooling::LastToken => rows.i(n.saturating_sub(1))?,
    })
}

/// Divides each vector along the last dimension by its L2 norm (clamped at 1e-12, as
/// `torch.nn.functional.normalize` does).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&norm)?)
}

/// L2-normalises a plain vector in place (norm clamped at 1e-12).
pub fn l2_normalize_vec(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    for x in v {
        *x /= norm;
    }
}
