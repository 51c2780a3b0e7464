//! Grouped-query attention for inference in one pass per (sequence, head): the scores of
//! each query row against every key, the scaled and masked softmax, and the weighted sum of
//! the values, without materialising the scores tensor and with one parallel section per
//! call. Decoding calls attention once per layer and step with one query row per head; as
//! two batched matrix products, a softmax and a mask addition it was a handful of small ops
//! per layer, each handing work to the thread pool and back.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::softmax::softmax_row;
use super::{data, with_data};

/// `softmax(q kᵀ · scale + mask) v`, for inference (no backward pass).
///
/// `q` is `(b, heads, s, d)`; `k` and `v` are `(b, kv_heads, t, d)` (views into a key/value
/// cache are fine as long as each row of `d` values is contiguous); query head `h` reads key
/// head `h / (heads / kv_heads)`. `mask` is `(b or 1, 1, s or 1, t)` and added to the scaled
/// scores. Returns `(b, s, heads · d)`, the layout the output projection takes.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f32) -> Result<Tensor> {
    let (b, heads, s, d) = q.dims4()?;
    let (kb, kv_heads, t, kd) = k.dims4()?;
    if kb != b || kd != d || v.dims4()? != (b, kv_heads, t, d) {
        candle_core::bail!(
            "kernel attention: q {:?}, k {:?} and v {:?} do not fit together",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if kv_heads == 0 || heads % kv_heads != 0 {
        candle_core::bail!("kernel attention: {heads} query heads for {kv_heads} key heads");
    }
    let (mb, mh, ms, mt) = mask.dims4()?;
    if !(mb == 1 || mb == b) || mh != 1 || !(ms == 1 || ms == s) || mt != t {
        candle_core::bail!(
            "kernel attention: mask of shape {:?} does not broadcast to ({b}, {heads}, {s}, {t})",
            mask.dims()
        );
    }
    let rows = |x: &Tensor| -> Result<Tensor> {
        if x.stride()[3] == 1 {
            Ok(x.clone())
        } else {
            x.contiguous()
        }
    };
    q.contiguous()?.apply_op3_no_bwd(
        &rows(k)?,
        &rows(v)?,
        &Attention {
            mask: mask.contiguous()?,
            mask_batch: mb,
            mask_queries: ms,
            scale,
        },
    )
}

struct Attention {
    mask: Tensor,
    mask_batch: usize,
    mask_queries: usize,
    scale: f32,
}

/// Rows of `d` values of a 4-d tensor whose last dimension is contiguous.
struct Rows<'a> {
    data: &'a [f32],
    start: usize,
    stride: [usize; 3],
}

impl<'a> Rows<'a> {
    fn new(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<Rows<'a>> {
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("kernel attention: expected f32 {what}")
        };
        let st = l.stride();
        if st.len() != 4 || st[3] != 1 {
            candle_core::bail!("kernel attention: the rows of {what} are not contiguous");
        }
        Ok(Rows {
            data: v,
            start: l.start_offset(),
            stride: [st[0], st[1], st[2]],
        })
    }

    #[inline(always)]
    fn row(&self, i: usize, j: usize, k: usize, d: usize) -> &'a [f32] {
        let at = self.start + i * self.stride[0] + j * self.stride[1] + k * self.stride[2];
        &self.data[at..at + d]
    }
}

/// `Σ a_i b_i` in eight partial sums (so that it vectorises).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() / 8 * 8);
    let (b8, b_rest) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for (acc, (x, y)) in acc.iter_mut().zip(x.iter().zip(y)) {
            *acc += x * y;
        }
    }
    let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in a_rest.iter().zip(b_rest) {
        sum += x * y;
    }
    sum
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = data(qs, ql, "attention")?;
        let (b, heads, s, d) = ql.shape().dims4()?;
        let (_, kv_heads, t, _) = kl.shape().dims4()?;
        let (k, v) = (Rows::new(ks, kl, "k")?, Rows::new(vs, vl, "v")?);
        let rep = heads / kv_heads;
        // (b, heads, s, d): one contiguous block per (sequence, head), computed in parallel.
        let mut by_head = vec![0f32; b * heads * s * d];
        let avx2 = avx2();
        with_data(&self.mask, "attention mask", |mask| {
            let job = Job {
                q,
                k,
                v,
                mask,
                mask_batch: self.mask_batch,
                mask_queries: self.mask_queries,
                scale: self.scale,
                heads,
                rep,
                s,
                t,
                d,
            };
            by_head
                .par_chunks_mut(s * d)
                .enumerate()
                .for_each(|(task, out)| {
                    #[cfg(target_arch = "x86_64")]
                    if avx2 {
                        // SAFETY: `avx2()` found AVX2 on this CPU.
                        unsafe { head_avx2(&job, task, out) };
                        return;
                    }
                    head(&job, task, out);
                });
            Ok(())
        })?;
        // To (b, s, heads · d).
        let mut out = vec![0f32; by_head.len()];
        for bi in 0..b {
            for h in 0..heads {
                for si in 0..s {
                    let src = ((bi * heads + h) * s + si) * d;
                    let dst = ((bi * s + si) * heads + h) * d;
                    out[dst..dst + d].copy_from_slice(&by_head[src..src + d]);
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, s, heads * d))))
    }
}

/// What every (sequence, head) task reads.
struct Job<'a> {
    q: &'a [f32],
    k: Rows<'a>,
    v: Rows<'a>,
    mask: &'a [f32],
    mask_batch: usize,
    mask_queries: usize,
    scale: f32,
    heads: usize,
    rep: usize,
    s: usize,
    t: usize,
    d: usize,
}

/// Whether this CPU has AVX2 (looked up once).
fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| std::is_x86_feature_detected!("avx2"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// [`head`] compiled for AVX2: the same operations in the same order on wider registers, so
/// the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn head_avx2(job: &Job, task: usize, out: &mut [f32]) {
    head(job, task, out)
}

/// Attention of the query rows of one (sequence, head) task into `out` (`s · d` values).
#[inline(always)]
fn head(job: &Job, task: usize, out: &mut [f32]) {
    let Job {
        q,
        ref k,
        ref v,
        mask,
        mask_batch: mb,
        mask_queries: ms,
        scale,
        heads,
        rep,
        s,
        t,
        d,
    } = *job;
    let (bi, h) = (task / heads, task % heads);
    let g = h / rep;
    let (mut scores, mut p) = (vec![0f32; t], vec![0f32; t]);
    for si in 0..s {
        let qrow = &q[(task * s + si) * d..][..d];
        let mi = if mb == 1 { 0 } else { bi };
        let mq = if ms == 1 { 0 } else { si };
        let mrow = &mask[(mi * ms + mq) * t..][..t];
        for (j, x) in scores.iter_mut().enumerate() {
            *x = dot(qrow, k.row(bi, g, j, d));
        }
        softmax_row(&mut p, &scores, Some(mrow), scale);
        let o = &mut out[si * d..(si + 1) * d];
        for (j, w) in p.iter().enumerate() {
            for (o, x) in o.iter_mut().zip(v.row(bi, g, j, d)) {
                *o += w * x;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_build_gives_the_same_bits() {
        if !avx2() {
            eprintln!("no AVX2 on this CPU: nothing to compare");
            return;
        }
        let (b, heads, kv, s, t, d) = (2, 4, 2, 3, 13, 20);
        let q = values(b * heads * s * d, 1);
        let kd = values(b * kv * t * d, 2);
        let vd = values(b * kv * t * d, 3);
        let mask = values(b * s * t, 4);
        let rows = |data| Rows {
            data,
            start: 0,
            stride: [kv * t * d, t * d, d],
        };
        let job = Job {
            q: &q,
            k: rows(&kd),
            v: rows(&vd),
            mask: &mask,
            mask_batch: b,
            mask_queries: s,
            scale: 0.25,
            heads,
            rep: heads / kv,
            s,
            t,
            d,
        };
        for task in 0..b * heads {
            let (mut plain, mut wide) = (vec![0f32; s * d], vec![0f32; s * d]);
            head(&job, task, &mut plain);
            // SAFETY: checked above that the CPU has AVX2.
            unsafe { head_avx2(&job, task, &mut wide) };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&plain), bits(&wide), "task {task}");
        }
    }
}
