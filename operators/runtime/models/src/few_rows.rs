//! `x W^T` for a few rows of `x` (a decode step: one row per sequence), f32 on the CPU.
//!
//! For an `(8, 512)` input gemm packs the whole weight matrix into its own layout on every
//! call, which costs about as much as the products themselves; at decode every weight is
//! used once per step, so that packing is pure overhead (it made batch-8 decoding barely
//! faster than transformers). This kernel reads each weight row straight from the model's
//! `(out, in)` layout, once per call, against all rows of `x` (which stay in L1), and splits
//! the weight rows between rayon's threads.
//!
//! Every output element is one dot product whose summation order depends only on `k`: eight
//! lane partial sums with fused multiply-adds, reduced pairwise, then the `k % 8` tail. So a
//! sequence's result does not depend on which other rows share its batch.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Inputs with at most this many rows take this kernel; larger ones go to gemm.
pub const MAX_ROWS: usize = 16;
const LANES: usize = 8;
/// Weight rows per inner tile.
const TILE: usize = 4;
/// Weight rows per parallel task.
const CHUNK: usize = 64;

/// Whether the kernel runs on this CPU with hardware fused multiply-add (AVX2 and FMA on
/// x86-64, always on aarch64); elsewhere callers keep gemm.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(target_arch = "aarch64")]
    {
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Whether `x` (`(rows, in)` or `(batch, seq, in)`) times `weight^T` should take this kernel:
/// few rows, f32 on the CPU, contiguous, and no gradient to track (the op has no backward).
pub fn applies(x: &Tensor, weight: &Tensor) -> bool {
    let rows = x.elem_count() / x.dims().last().copied().unwrap_or(1).max(1);
    rows <= MAX_ROWS
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && weight.rank() == 2
        && weight.is_contiguous()
        && !x.track_op()
        && !weight.track_op()
        && available()
}

/// `x W^T` of `x` `(m, k)` and `weight` `(n, k)`: `(m, n)`. Call only where [`applies`].
pub fn matmul_t(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(weight, &FewRowsMatmulT)
}

struct FewRowsMatmulT;

impl CustomOp2 for FewRowsMatmulT {
    fn name(&self) -> &'static str {
        "few-rows-matmul-t"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(w)) = (s1, s2) else {
            candle_core::bail!("few-rows-matmul-t: f32 inputs only");
        };
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("few-rows-matmul-t: x is ({m}, {k}) but the weight is ({n}, {k2})");
        }
        let (Some((xa, xb)), Some((wa, wb))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("few-rows-matmul-t: inputs must be contiguous");
        };
        let out = compute(&x[xa..xb], &w[wa..wb], m, n, k);
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// `[x W₁ᵀ + b₁ | x W₂ᵀ + b₂ | …]` of `x` `(m, k)` and weights `(nᵢ, k)`, `(m, Σ nᵢ)`, in one
/// parallel section: a decode step's query, key and value projections (or gate and up) read
/// `x` once and hand work to the threads once instead of once per product and once per bias.
/// Each element is the same dot product as [`matmul_t`] gives, plus the same bias addition,
/// so the result has the same bits as the separate products. Call only where [`applies`]
/// holds for `x` and every weight; each bias, when given, is `(nᵢ)`.
pub fn matmul_t_concat(
    x: &Tensor,
    weights: &[&Tensor],
    biases: &[Option<&Tensor>],
) -> candle_core::Result<Tensor> {
    if weights.len() != biases.len() {
        candle_core::bail!(
            "few-rows-matmul-t: {} weights but {} biases",
            weights.len(),
            biases.len()
        );
    }
    let k = x.dims2()?.1;
    for (w, b) in weights.iter().zip(biases) {
        let (n, k2) = w.dims2()?;
        if k2 != k {
            candle_core::bail!("few-rows-matmul-t: x has {k} columns but a weight is ({n}, {k2})");
        }
        if let Some(b) = b
            && b.dims() != [n]
        {
            candle_core::bail!(
                "few-rows-matmul-t: a bias of shape {:?} for {n} outputs",
                b.dims()
            );
        }
    }
    x.contiguous()?.apply_op1_no_bwd(&Concat {
        weights: weights.iter().map(|w| (*w).clone()).collect(),
        biases: biases
            .iter()
            .map(|b| b.map(|b| b.contiguous()).transpose())
            .collect::<candle_core::Result<_>>()?,
    })
}

struct Concat {
    weights: Vec<Tensor>,
    biases: Vec<Option<Tensor>>,
}

/// The f32 data of a contiguous CPU tensor, kept readable while `guard` lives.
fn cpu_f32<'a>(guard: &'a candle_core::Storage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    match guard {
        candle_core::Storage::Cpu(CpuStorage::F32(v)) => match layout.contiguous_offsets() {
            Some((a, b)) => Ok(&v[a..b]),
            None => candle_core::bail!("few-rows-matmul-t: inputs must be contiguous"),
        },
        _ => candle_core::bail!("few-rows-matmul-t: f32 CPU tensors only"),
    }
}

impl candle_core::CustomOp1 for Concat {
    fn name(&self) -> &'static str {
        "few-rows-matmul-t-concat"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = s else {
            candle_core::bail!("few-rows-matmul-t: f32 inputs only");
        };
        let (m, k) = l.shape().dims2()?;
        let Some((xa, xb)) = l.contiguous_offsets() else {
            candle_core::bail!("few-rows-matmul-t: inputs must be contiguous");
        };
        let x = &x[xa..xb];
        let wg: Vec<_> = self
            .weights
            .iter()
            .map(|w| w.storage_and_layout())
            .collect();
        let bg: Vec<_> = self
            .biases
            .iter()
            .map(|b| b.as_ref().map(|b| b.storage_and_layout()))
            .collect();
        let mut parts: Vec<Part> = Vec::with_capacity(wg.len());
        for ((g, wl), b) in wg.iter().zip(&bg) {
            let bias = match b {
                Some((g, bl)) => Some(cpu_f32(g, bl)?),
                None => None,
            };
            parts.push((cpu_f32(g, wl)?, wl.dims()[0], bias));
        }
        let n = parts.iter().map(|p| p.1).sum();
        let out = compute_many(x, &parts, m, k);
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// Row-major `(m, n)` result of `x` `(m, k)` times `w` `(n, k)` transposed.
fn compute(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    compute_many(x, &[(w, n, None)], m, k)
}

/// A weight `(rows, k)`, its row count and its bias.
type Part<'a> = (&'a [f32], usize, Option<&'a [f32]>);

/// Row-major `(m, Σ rows)`: `x W₁ᵀ + b₁ | x W₂ᵀ + b₂ | …`, every part's weight rows split
/// between the threads as one list.
fn compute_many(x: &[f32], parts: &[Part], m: usize, k: usize) -> Vec<f32> {
    let n: usize = parts.iter().map(|p| p.1).sum();
    // Each task fills whole weight rows: column-major (n, m), transposed at the end.
    let mut out_t = vec![0f32; n * m];
    if m == 0 || n == 0 {
        return out_t;
    }
    // One task per `CHUNK` rows of one weight.
    let mut tasks: Vec<(&[f32], &mut [f32])> = Vec::new();
    let mut rest = out_t.as_mut_slice();
    for &(w, rows, _) in parts {
        for c in (0..rows).step_by(CHUNK) {
            let r = CHUNK.min(rows - c);
            let (o, tail) = rest.split_at_mut(r * m);
            tasks.push((&w[c * k..(c + r) * k], o));
            rest = tail;
        }
    }
    if rayon::current_num_threads() > 1 && n >= 2 * CHUNK {
        tasks
            .into_par_iter()
            .for_each(|(w, o)| block(x, w, m, k, o));
    } else {
        for (w, o) in tasks {
            block(x, w, m, k, o);
        }
    }
    let mut out = vec![0f32; m * n];
    let mut j = 0;
    for &(_, rows, bias) in parts {
        for r in 0..rows {
            for (i, v) in out_t[(j + r) * m..(j + r + 1) * m].iter().enumerate() {
                out[i * n + j + r] = match bias {
                    Some(b) => *v + b[r],
                    None => *v,
                };
            }
        }
        j += rows;
    }
    out
}

/// Fills `out` (`(rows, m)`, column-major by weight row) from the first `rows` rows of `w`.
fn block(x: &[f32], w: &[f32], m: usize, k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(avx) = avx::Avx::detect() {
        avx.block(x, w, m, k, out);
        return;
    }
    block_with(&Portable, x, w, m, k, out)
}

/// How a tile's lane partial sums are computed: [`Portable`] arrays, or 256-bit vectors
/// (`avx::Avx`). Both run the same fused multiply-add chain per lane, so they give the same
/// bits; everything else ([`block_with`], [`tile`]) is shared.
trait Lanes {
    /// For each `c`, `r`: lane `l` sums `xs[r][p] · ws[c][p]` over `p < body` with
    /// `p % LANES == l`, in order of `p`, by fused multiply-adds.
    fn partials<const R: usize, const C: usize>(
        &self,
        xs: [&[f32]; R],
        ws: [&[f32]; C],
        body: usize,
    ) -> [[[f32; LANES]; R]; C];
}

/// Lane arrays the compiler may vectorise (it left them scalar on x86-64, hence `avx`).
struct Portable;

impl Lanes for Portable {
    #[inline(always)]
    fn partials<const R: usize, const C: usize>(
        &self,
        xs: [&[f32]; R],
        ws: [&[f32]; C],
        body: usize,
    ) -> [[[f32; LANES]; R]; C] {
        let mut acc = [[[0f32; LANES]; R]; C];
        let mut p = 0;
        while p < body {
            for c in 0..C {
                let wv: &[f32; LANES] = ws[c][p..p + LANES].try_into().expect("lane slice");
                for r in 0..R {
                    let xv: &[f32; LANES] = xs[r][p..p + LANES].try_into().expect("lane slice");
                    for l in 0..LANES {
                        acc[c][r][l] = xv[l].mul_add(wv[l], acc[c][r][l]);
                    }
                }
            }
            p += LANES;
        }
        acc
    }
}

#[inline(always)]
fn block_with<L: Lanes>(lanes: &L, x: &[f32], w: &[f32], m: usize, k: usize, out: &mut [f32]) {
    let rows = out.len() / m;
    let xr = |i: usize| &x[i * k..(i + 1) * k];
    let wr = |j: usize| &w[j * k..(j + 1) * k];
    let mut j = 0;
    while j + TILE <= rows {
        let ws = [wr(j), wr(j + 1), wr(j + 2), wr(j + 3)];
        let mut i = 0;
        while i + 2 <= m {
            let r = tile::<L, 2, TILE>(lanes, [xr(i), xr(i + 1)], ws, k);
            for (c, col) in r.iter().enumerate() {
                out[(j + c) * m + i] = col[0];
                out[(j + c) * m + i + 1] = col[1];
            }
            i += 2;
        }
        if i < m {
            let r = tile::<L, 1, TILE>(lanes, [xr(i)], ws, k);
            for (c, col) in r.iter().enumerate() {
                out[(j + c) * m + i] = col[0];
            }
        }
        j += TILE;
    }
    for j in j..rows {
        for i in 0..m {
            out[j * m + i] = tile::<L, 1, 1>(lanes, [xr(i)], [wr(j)], k)[0][0];
        }
    }
}

/// Dot products of `R` rows of `x` with `C` rows of `w`, as `[c][r]`.
#[inline(always)]
fn tile<L: Lanes, const R: usize, const C: usize>(
    lanes: &L,
    xs: [&[f32]; R],
    ws: [&[f32]; C],
    k: usize,
) -> [[f32; R]; C] {
    let body = k / LANES * LANES;
    let acc = lanes.partials(xs, ws, body);
    let mut out = [[0f32; R]; C];
    for c in 0..C {
        for r in 0..R {
            let a = &acc[c][r];
            let s = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
            let mut v = (s[0] + s[2]) + (s[1] + s[3]);
            for q in body..k {
                v = xs[r][q].mul_add(ws[c][q], v);
            }
            out[c][r] = v;
        }
    }
    out
}

/// Lane partial sums in 256-bit vectors: each lane array is one register. The compiler kept
/// [`Portable`]'s arrays as scalar multiply-adds with the accumulators on the stack (a
/// profile of batch-8 decoding: 81% of the time in this kernel, 3.4× slower than
/// transformers).
#[cfg(target_arch = "x86_64")]
mod avx {
    use super::{LANES, Lanes, block_with};
    use std::arch::x86_64::{
        __m256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };

    /// Proof that this CPU has AVX2 and FMA: only [`Avx::detect`] makes one.
    #[derive(Clone, Copy)]
    pub(super) struct Avx(());

    impl Avx {
        pub(super) fn detect() -> Option<Avx> {
            (std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"))
                .then_some(Avx(()))
        }

        pub(super) fn block(self, x: &[f32], w: &[f32], m: usize, k: usize, out: &mut [f32]) {
            // SAFETY: `self` exists only where the CPU has AVX2 and FMA.
            unsafe { block(self, x, w, m, k, out) }
        }
    }

    /// [`block_with`] compiled for AVX2 and FMA, so that [`partials`] inlines into it.
    #[target_feature(enable = "avx2,fma")]
    fn block(avx: Avx, x: &[f32], w: &[f32], m: usize, k: usize, out: &mut [f32]) {
        block_with(&avx, x, w, m, k, out)
    }

    impl Lanes for Avx {
        #[inline(always)]
        fn partials<const R: usize, const C: usize>(
            &self,
            xs: [&[f32]; R],
            ws: [&[f32]; C],
            body: usize,
        ) -> [[[f32; LANES]; R]; C] {
            // SAFETY: `self` exists only where the CPU has AVX2 and FMA.
            unsafe { partials(xs, ws, body) }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn partials<const R: usize, const C: usize>(
        xs: [&[f32]; R],
        ws: [&[f32]; C],
        body: usize,
    ) -> [[[f32; LANES]; R]; C] {
        assert!(xs.iter().chain(&ws).all(|row| row.len() >= body));
        let mut acc: [[__m256; R]; C] = [[_mm256_setzero_ps(); R]; C];
        let mut p = 0;
        while p + LANES <= body {
            for (wr, acc) in ws.iter().zip(acc.iter_mut()) {
                // SAFETY: p + LANES <= body <= every row's length (asserted above).
                let wv = unsafe { _mm256_loadu_ps(wr.as_ptr().add(p)) };
                for (xr, a) in xs.iter().zip(acc.iter_mut()) {
                    let xv = unsafe { _mm256_loadu_ps(xr.as_ptr().add(p)) };
                    *a = _mm256_fmadd_ps(xv, wv, *a);
                }
            }
            p += LANES;
        }
        let mut out = [[[0f32; LANES]; R]; C];
        for (o, a) in out.iter_mut().flatten().zip(acc.iter().flatten()) {
            // SAFETY: `o` holds 8 floats.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), *a) };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn concatenated_products_equal_the_separate_ones_bit_for_bit() {
        if !available() {
            return;
        }
        let dev = Device::Cpu;
        let (m, k) = (8, 70);
        let x = Tensor::from_vec(values(m * k, 5), (m, k), &dev).unwrap();
        // Sizes that are not multiples of a task's rows; the second has no bias.
        let ns = [200, 65, 131];
        let ws: Vec<Tensor> = ns
            .iter()
            .enumerate()
            .map(|(i, &n)| Tensor::from_vec(values(n * k, 10 + i as u64), (n, k), &dev).unwrap())
            .collect();
        let b0 = Tensor::from_vec(values(ns[0], 20), ns[0], &dev).unwrap();
        let b2 = Tensor::from_vec(values(ns[2], 22), ns[2], &dev).unwrap();
        let biases = [Some(&b0), None, Some(&b2)];
        let weights: Vec<&Tensor> = ws.iter().collect();
        let joined = matmul_t_concat(&x, &weights, &biases).unwrap();
        assert_eq!(joined.dims(), &[m, ns.iter().sum::<usize>()]);
        let separate: Vec<Tensor> = ws
            .iter()
            .zip(biases)
            .map(|(w, b)| {
                let y = matmul_t(&x, w).unwrap();
                match b {
                    Some(b) => y.broadcast_add(b).unwrap(),
                    None => y,
                }
            })
            .collect();
        let separate = Tensor::cat(&separate, 1).unwrap();
        let bits = |t: &Tensor| {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&joined), bits(&separate));
        let e = matmul_t_concat(&x, &weights, &[None]).unwrap_err();
        assert!(e.to_string().contains("3 weights but 1 biases"), "{e}");
    }

    #[test]
    fn equals_gemm_within_rounding() {
        if !available() {
            return;
        }
        let dev = Device::Cpu;
        for (m, n, k) in [
            (1, 7, 3),
            (2, 130, 64),
            (3, 257, 100),
            (8, 512, 512),
            (16, 131, 37),
        ] {
            let x = Tensor::from_vec(values(m * k, 1), (m, k), &dev).unwrap();
            let w = Tensor::from_vec(values(n * k, 2), (n, k), &dev).unwrap();
            assert!(applies(&x, &w));
            let fast = matmul_t(&x, &w).unwrap().to_vec2::<f32>().unwrap();
            let slow = x.matmul(&w.t().unwrap()).unwrap().to_vec2::<f32>().unwrap();
            for (a, b) in fast.iter().flatten().zip(slow.iter().flatten()) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "({m}, {n}, {k}): {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn a_row_does_not_depend_on_its_batch() {
        if !available() {
            return;
        }
        let dev = Device::Cpu;
        let (m, n, k) = (9, 300, 203);
        let xs = values(m * k, 3);
        let w = Tensor::from_vec(values(n * k, 4), (n, k), &dev).unwrap();
        let all = matmul_t(&Tensor::from_vec(xs.clone(), (m, k), &dev).unwrap(), &w)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for i in 0..m {
            let one = Tensor::from_vec(xs[i * k..(i + 1) * k].to_vec(), (1, k), &dev).unwrap();
            let alone = matmul_t(&one, &w).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(alone[0], all[i], "row {i}");
        }
    }

    #[test]
    fn vector_kernel_equals_the_portable_one_bit_for_bit() {
        if !available() {
            return;
        }
        for (m, n, k) in [(1, 5, 3), (3, 9, 17), (8, 64, 512), (7, 13, 203)] {
            let x = values(m * k, 5);
            let w = values(n * k, 6);
            let mut portable = vec![0f32; n * m];
            block_with(&Portable, &x, &w, m, k, &mut portable);
            let mut fast = vec![0f32; n * m];
            block(&x, &w, m, k, &mut fast);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&portable), "({m}, {n}, {k})");
        }
    }

    #[test]
    fn gradients_and_many_rows_keep_gemm() {
        let dev = Device::Cpu;
        let w = Tensor::zeros((4, 8), DType::F32, &dev).unwrap();
        let many = Tensor::zeros((MAX_ROWS + 1, 8), DType::F32, &dev).unwrap();
        assert!(!applies(&many, &w));
        let var = candle_core::Var::zeros((2, 8), DType::F32, &dev).unwrap();
        assert!(!applies(var.as_tensor(), &w));
    }
}
