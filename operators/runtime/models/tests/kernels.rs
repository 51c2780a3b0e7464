//! Each fused kernel against the composite candle ops it replaces: outputs and gradients
//! (of `Σ out · r` for a random `r`) agree within f32 rounding.

use candle_core::{D, DType, Device, Tensor, Var};
use expflow_models::kernels;

fn rand(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Output and gradients with respect to `vars` of `f`, through `Σ f(vars) · r`.
fn run(vars: &[Var], r: &Tensor, f: impl Fn(&[Tensor]) -> Tensor) -> (Tensor, Vec<Tensor>) {
    let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&xs);
    let loss = (&out * r).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let grads = vars
        .iter()
        .map(|v| g.get(v.as_tensor()).expect("a gradient").clone())
        .collect();
    (out, grads)
}

fn check(
    shapes: &[&[usize]],
    out_shape: &[usize],
    fused: impl Fn(&[Tensor]) -> Tensor,
    composite: impl Fn(&[Tensor]) -> Tensor,
    tol: f32,
) {
    let vars: Vec<Var> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| Var::from_tensor(&rand(s, 10 + i as u64)).unwrap())
        .collect();
    let r = rand(out_shape, 99);
    let (a, ga) = run(&vars, &r, fused);
    let (b, gb) = run(&vars, &r, composite);
    assert_eq!(a.dims(), out_shape);
    assert!(
        max_diff(&a, &b) <= tol,
        "outputs differ by {}",
        max_diff(&a, &b)
    );
    for (i, (x, y)) in ga.iter().zip(&gb).enumerate() {
        let d = max_diff(x, y);
        assert!(d <= tol, "gradient {i} differs by {d}");
    }
}

#[test]
fn linear_with_and_without_lora() {
    let w = rand(&[24, 16], 1);
    let bias = rand(&[24], 2);
    check(
        &[&[2, 5, 16]],
        &[2, 5, 24],
        |v| kernels::linear(&v[0], &w, Some(&bias), None).unwrap(),
        |v| {
            v[0].broadcast_matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&bias)
                .unwrap()
        },
        1e-5,
    );
    check(
        &[&[7, 16], &[4, 16], &[24, 4]],
        &[7, 24],
        |v| {
            let l = kernels::LoraParts {
                a: v[1].clone(),
                b: v[2].clone(),
                scale: 2.0,
            };
            kernels::linear(&v[0], &w, None, Some(&l)).unwrap()
        },
        |v| {
            let y = v[0].matmul(&w.t().unwrap()).unwrap();
            let d = (v[0]
                .matmul(&v[1].t().unwrap())
                .unwrap()
                .matmul(&v[2].t().unwrap())
                .unwrap()
                * 2.0)
                .unwrap();
            (y + d).unwrap()
        },
        1e-5,
    );
}

#[test]
fn rms_norm_matches_the_composite() {
    let w = rand(&[32], 3);
    check(
        &[&[3, 4, 32]],
        &[3, 4, 32],
        |v| kernels::rms_norm(&v[0], &w, 1e-6).unwrap(),
        |v| candle_nn::ops::rms_norm_slow(&v[0], &w, 1e-6).unwrap(),
        1e-5,
    );
}

#[test]
fn masked_softmax_matches_the_composite() {
    // A causal mask with one padded key in the second row.
    let (b, h, s) = (2, 3, 5);
    let mut m = Vec::new();
    for bi in 0..b {
        for i in 0..s {
            for j in 0..s {
                let padded = bi == 1 && j == 0;
                m.push(if j <= i && !padded { 0f32 } else { -1e30 });
            }
        }
    }
    let mask = Tensor::from_vec(m, (b, 1, s, s), &Device::Cpu).unwrap();
    let scale = 0.3f32;
    check(
        &[&[b, h, s, s]],
        &[b, h, s, s],
        |v| kernels::masked_softmax(&v[0], Some(&mask), scale).unwrap(),
        |v| {
            let x = (&v[0] * f64::from(scale))
                .unwrap()
                .broadcast_add(&mask)
                .unwrap();
            candle_nn::ops::softmax(&x, D::Minus1).unwrap()
        },
        1e-6,
    );
    // A key mask broadcast over queries, as BERT uses it.
    let key = Tensor::from_vec(
        vec![0f32, 0.0, -1e30, 0.0, 0.0, 0.0],
        (2, 1, 1, 3),
        &Device::Cpu,
    )
    .unwrap();
    check(
        &[&[2, 2, 4, 3]],
        &[2, 2, 4, 3],
        |v| kernels::masked_softmax(&v[0], Some(&key), 1.0).unwrap(),
        |v| candle_nn::ops::softmax(&v[0].broadcast_add(&key).unwrap(), D::Minus1).unwrap(),
        1e-6,
    );
}

fn rotate_half(x: &Tensor) -> Tensor {
    let d = x.dim(D::Minus1).unwrap();
    let x1 = x.narrow(D::Minus1, 0, d / 2).unwrap();
    let x2 = x.narrow(D::Minus1, d / 2, d / 2).unwrap();
    Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap()
}

#[test]
fn rope_matches_the_composite() {
    let cos = rand(&[2, 1, 5, 8], 4);
    let sin = rand(&[2, 1, 5, 8], 5);
    check(
        &[&[2, 3, 5, 8]],
        &[2, 3, 5, 8],
        |v| kernels::rope(&v[0], &cos, &sin).unwrap(),
        |v| {
            (v[0].broadcast_mul(&cos).unwrap() + rotate_half(&v[0]).broadcast_mul(&sin).unwrap())
                .unwrap()
        },
        1e-6,
    );
}

#[test]
fn silu_mul_matches_the_composite() {
    check(
        &[&[4, 33], &[4, 33]],
        &[4, 33],
        |v| (kernels::silu_mul(&(&v[0] * 4.0).unwrap(), &v[1])).unwrap(),
        |v| ((&v[0] * 4.0).unwrap().silu().unwrap() * &v[1]).unwrap(),
        1e-5,
    );
}

#[test]
fn token_logps_match_log_softmax_and_gather() {
    let rows = [0u32, 2, 3, 5];
    let targets = [7u32, 0, 7, 19];
    check(
        &[&[6, 20]],
        &[4],
        |v| kernels::token_logps(&(&v[0] * 5.0).unwrap(), &rows, &targets).unwrap(),
        |v| {
            let x = (&v[0] * 5.0).unwrap();
            let idx = Tensor::new(&rows, &Device::Cpu).unwrap();
            let lp =
                candle_nn::ops::log_softmax(&x.index_select(&idx, 0).unwrap(), D::Minus1).unwrap();
            let t = Tensor::new(&targets, &Device::Cpu)
                .unwrap()
                .unsqueeze(1)
                .unwrap();
            lp.gather(&t, 1).unwrap().squeeze(1).unwrap()
        },
        1e-5,
    );
}

#[test]
fn gelu_and_erf_match_candle() {
    let x = (rand(&[1000], 6) * 6.0).unwrap();
    let a = kernels::gelu_erf(&x).unwrap();
    let b = x.gelu_erf().unwrap();
    assert!(
        max_diff(&a, &b) < 1e-6,
        "gelu differs by {}",
        max_diff(&a, &b)
    );
    for v in x.to_vec1::<f32>().unwrap() {
        let want = candle_core::cpu::erf::erf_f64(f64::from(v));
        let got = f64::from(kernels::erf(v));
        assert!((got - want).abs() < 1e-6, "erf({v}) = {got}, want {want}");
    }
}

#[test]
fn layer_norm_matches_candle() {
    let x = rand(&[3, 7, 48], 7);
    let w = rand(&[48], 8);
    let b = rand(&[48], 9);
    let a = kernels::layer_norm(&x, &w, &b, 1e-12).unwrap();
    let want = candle_nn::ops::layer_norm(&x, &w, &b, 1e-12).unwrap();
    assert!(
        max_diff(&a, &want) < 1e-5,
        "layer norm differs by {}",
        max_diff(&a, &want)
    );
    assert_eq!(a.dtype(), DType::F32);
}

/// `softmax(q kᵀ · scale + mask) v` in candle's ops, keys repeated per query head, as
/// `(b, s, heads · d)`.
fn attention_composite(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Tensor {
    let (b, heads, s, d) = q.dims4().unwrap();
    let kv = k.dim(1).unwrap();
    let rep = heads / kv;
    let repeat = |x: &Tensor| {
        let (b, kv, t, d) = x.dims4().unwrap();
        x.contiguous()
            .unwrap()
            .unsqueeze(2)
            .unwrap()
            .expand((b, kv, rep, t, d))
            .unwrap()
            .reshape((b, kv * rep, t, d))
            .unwrap()
    };
    let (k, v) = (repeat(k), repeat(v));
    let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale)
        .unwrap()
        .broadcast_add(mask)
        .unwrap();
    let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
    probs
        .matmul(&v)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, s, heads * d))
        .unwrap()
}

#[test]
fn attention_matches_the_composite_with_cached_keys_and_grouped_heads() {
    // 2 sequences, 8 query heads over 2 key heads, head size 20 (not a multiple of 8), keys
    // and values read through a view of a larger cache, as decoding does.
    let (b, heads, kv, d, cap) = (2, 8, 2, 20, 16);
    let cache_k = rand(&[b, kv, cap, d], 1);
    let cache_v = rand(&[b, kv, cap, d], 2);
    for (s, t) in [(1, 11), (5, 5), (3, 9)] {
        let q = rand(&[b, heads, s, d], 3 + s as u64);
        let k = cache_k.narrow(2, 0, t).unwrap();
        let v = cache_v.narrow(2, 0, t).unwrap();
        assert!(!k.is_contiguous(), "the test reads keys through a view");
        // Sequence 0 has its first two keys padded out when there are cached keys; causal
        // within the new rows.
        let mut m = vec![0f32; b * s * t];
        for bi in 0..b {
            for si in 0..s {
                for j in 0..t {
                    let future = j > t - s + si;
                    let padded = bi == 0 && j < 2 && t - s >= 2;
                    if future || padded {
                        m[(bi * s + si) * t + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, s, t), &Device::Cpu).unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        let fused = kernels::attention(&q, &k, &v, &mask, scale as f32).unwrap();
        let composite = attention_composite(&q, &k, &v, &mask, scale);
        assert_eq!(fused.dims(), &[b, s, heads * d]);
        let diff = max_diff(&fused, &composite);
        assert!(diff < 1e-5, "s {s}, t {t}: max difference {diff}");
        // A mask broadcast over the batch gives the same as the mask repeated.
        let one = mask.narrow(0, 1, 1).unwrap();
        let fused = kernels::attention(&q, &k, &v, &one, scale as f32).unwrap();
        let composite = attention_composite(&q, &k, &v, &one, scale);
        assert!(max_diff(&fused, &composite) < 1e-5);
    }
}

#[test]
fn attention_says_which_shapes_do_not_fit() {
    let q = rand(&[1, 6, 1, 8], 1);
    let k = rand(&[1, 4, 3, 8], 2);
    let mask = Tensor::zeros((1, 1, 1, 3), DType::F32, &Device::Cpu).unwrap();
    let e = kernels::attention(&q, &k, &k, &mask, 1.0).unwrap_err();
    assert!(
        e.to_string().contains("6 query heads for 4 key heads"),
        "{e}"
    );
    let bad_mask = Tensor::zeros((1, 1, 1, 4), DType::F32, &Device::Cpu).unwrap();
    let k = rand(&[1, 2, 3, 8], 2);
    let e = kernels::attention(&q, &k, &k, &bad_mask, 1.0).unwrap_err();
    assert!(e.to_string().contains("does not broadcast"), "{e}");
}
