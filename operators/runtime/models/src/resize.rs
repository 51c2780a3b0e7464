//! Bicubic resize bit-identical to Pillow's `Image.resize(size, BICUBIC)` for 8-bit RGB: the
//! one implementation the CLIP and Qwen2.5-VL image processors share (both are checked
//! against transformers' Pillow-based processors in their parity tests).

use image::RgbImage;

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// PIL's `precompute_coeffs` followed by `normalize_coeffs_8bpc`: for each output index, the
/// first input index and fixed-point weights.
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut w: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                for k in &mut w {
                    *k /= total;
                }
            }
            let fixed = w
                .iter()
                .map(|&k| {
                    let s = k * (1u32 << PRECISION_BITS) as f64;
                    if k < 0.0 {
                        (s - 0.5) as i32
                    } else {
                        (s + 0.5) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Bicubic resize exactly as PIL's `Image.resize(size, BICUBIC)` does it for RGB images.
pub fn resize_bicubic(img: &RgbImage, new_w: usize, new_h: usize) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let src = img.as_raw();
    let half = 1i32 << (PRECISION_BITS - 1);
    let vert = coefficients(h, new_h);
    // The rows the vertical pass reads; the horizontal pass only computes those.
    let (first, last) = if new_h != h {
        let (f, _) = &vert[0];
        let (l, lk) = &vert[new_h - 1];
        (*f, l + lk.len())
    } else {
        (0, h)
    };
    let (mid, mid_w) = if new_w != w {
        let horiz = coefficients(w, new_w);
        let mut mid = vec![0u8; (last - first) * new_w * 3];
        for y in first..last {
            let row = &src[y * w * 3..(y + 1) * w * 3];
            for (xx, (xmin, k)) in horiz.iter().enumerate() {
                let mut s = [half; 3];
                for (i, &kv) in k.iter().enumerate() {
                    let p = (xmin + i) * 3;
                    for c in 0..3 {
                        s[c] += row[p + c] as i32 * kv;
                    }
                }
                let o = ((y - first) * new_w + xx) * 3;
                for c in 0..3 {
                    mid[o + c] = clip8(s[c]);
                }
            }
        }
        (mid, new_w)
    } else {
        (src[first * w * 3..last * w * 3].to_vec(), w)
    };
    if new_h == h {
        return RgbImage::from_raw(mid_w as u32, new_h as u32, mid).expect("buffer size matches");
    }
    let mut out = vec![0u8; new_h * mid_w * 3];
    for (yy, (ymin, k)) in vert.iter().enumerate() {
        for x in 0..mid_w {
            let mut s = [half; 3];
            for (i, &kv) in k.iter().enumerate() {
                let p = ((ymin - first + i) * mid_w + x) * 3;
                for c in 0..3 {
                    s[c] += mid[p + c] as i32 * kv;
                }
            }
            let o = (yy * mid_w + x) * 3;
            for c in 0..3 {
                out[o + c] = clip8(s[c]);
            }
        }
    }
    RgbImage::from_raw(mid_w as u32, new_h as u32, out).expect("buffer size matches")
}
