//! The Qwen2-VL image processor (`Qwen2VLImageProcessor`, Pillow backend): smart resize to
//! multiples of `patch_size × merge_size`, bicubic resampling computed exactly as Pillow does
//! it for 8-bit images, rescale and CLIP normalisation, temporal patches (an image is repeated
//! to `temporal_patch_size` frames), and the flattened patch layout transformers uses.

use std::path::Path;

use candle_core::{Device, Tensor};
use expflow_models::ModelDir;
use image::RgbImage;
use serde_json::Value;

use crate::error::{Result, VlmError};

const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Preprocessing settings (`preprocessor_config.json`).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageProcessor {
    pub min_pixels: usize,
    pub max_pixels: usize,
    pub patch_size: usize,
    pub merge_size: usize,
    pub temporal_patch_size: usize,
    pub rescale_factor: f64,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
}

impl Default for ImageProcessor {
    /// transformers' defaults (`min_pixels` 56², `max_pixels` 28²·1280).
    fn default() -> Self {
        ImageProcessor {
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            patch_size: 14,
            merge_size: 2,
            temporal_patch_size: 2,
            rescale_factor: 1.0 / 255.0,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
        }
    }
}

/// Patches of one image or video: `rows = t·h·w` of `C·T·patch²` values each.
#[derive(Clone, Debug, PartialEq)]
pub struct PixelValues {
    pub data: Vec<f32>,
    /// `(grid_t, grid_h, grid_w)` in patches.
    pub grid_thw: [usize; 3],
    /// Values per patch (`C · temporal_patch_size · patch_size²`).
    pub patch_dim: usize,
}

impl PixelValues {
    pub fn rows(&self) -> usize {
        self.grid_thw.iter().product()
    }

    /// `(rows, patch_dim)` on `device`.
    pub fn to_tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::from_slice(&self.data, (self.rows(), self.patch_dim), device)
    }

    /// Tokens the language model sees for it (`rows / merge_size²`).
    pub fn num_tokens(&self, merge_size: usize) -> usize {
        self.rows() / (merge_size * merge_size)
    }
}

/// `(height, width)` rounded to multiples of `factor`, scaled into
/// `[min_pixels, max_pixels]` keeping the aspect ratio (transformers' `smart_resize`).
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    if height == 0 || width == 0 {
        return Err(VlmError::Request(format!(
            "image of size {width}x{height} is empty"
        )));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        return Err(VlmError::Request(format!(
            "image of size {width}x{height}: the aspect ratio must be below 200"
        )));
    }
    // Python's round() rounds halves to even.
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as usize, w_bar as usize))
}

impl ImageProcessor {
    /// Reads `preprocessor_config.json` of `dir` (transformers' defaults when absent).
    /// `min_pixels`/`max_pixels` are taken from the top level, then from `size`
    /// (`min_pixels`/`max_pixels` or transformers 5's `shortest_edge`/`longest_edge`).
    /// transformers ≥ 5 saves the settings as the `image_processor` object of
    /// `processor_config.json` instead (a LLaMA-Factory export, for one); that is read when
    /// `preprocessor_config.json` is absent.
    pub fn from_dir(dir: &ModelDir) -> Result<ImageProcessor> {
        let path = dir.root.join("preprocessor_config.json");
        let bundled = dir.root.join("processor_config.json");
        if !path.is_file() && bundled.is_file() {
            let v: Value = std::fs::read_to_string(&bundled)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(Value::Null);
            if let Some(ip) = v.get("image_processor") {
                return ImageProcessor::from_json(ip).map_err(|problem| VlmError::Config {
                    path: bundled,
                    problem,
                });
            }
        }
        if !path.is_file() {
            tracing::warn!(dir = %dir.root.display(), "no preprocessor_config.json; using transformers' defaults");
            return Ok(ImageProcessor::default());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| VlmError::Config {
            path: path.clone(),
            problem: format!("cannot read: {e}"),
        })?;
        let v: Value = serde_json::from_str(&text).map_err(|e| VlmError::Config {
            path: path.clone(),
            problem: format!("not JSON: {e}"),
        })?;
        ImageProcessor::from_json(&v).map_err(|problem| VlmError::Config { path, problem })
    }

    /// Settings from a parsed `preprocessor_config.json`.
    pub fn from_json(v: &Value) -> std::result::Result<ImageProcessor, String> {
        let d = ImageProcessor::default();
        let size = v.get("size");
        let num = |keys: &[(&str, bool)]| -> Option<u64> {
            keys.iter().find_map(|(k, in_size)| {
                let src = if *in_size { size? } else { v };
                src.get(*k).and_then(Value::as_u64)
            })
        };
        let triple = |key: &str, default: [f64; 3]| -> std::result::Result<[f64; 3], String> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(a) => {
                    let xs: Vec<f64> = a
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_f64).collect())
                        .unwrap_or_default();
                    xs.try_into()
                        .map_err(|_| format!("`{key}` must be a list of 3 numbers"))
                }
            }
        };
        let p = ImageProcessor {
            min_pixels: num(&[
                ("min_pixels", false),
                ("min_pixels", true),
                ("shortest_edge", true),
            ])
            .map_or(d.min_pixels, |x| x as usize),
            max_pixels: num(&[
                ("max_pixels", false),
                ("max_pixels", true),
                ("longest_edge", true),
            ])
            .map_or(d.max_pixels, |x| x as usize),
            patch_size: num(&[("patch_size", false)]).map_or(d.patch_size, |x| x as usize),
            merge_size: num(&[("merge_size", false)]).map_or(d.merge_size, |x| x as usize),
            temporal_patch_size: num(&[("temporal_patch_size", false)])
                .map_or(d.temporal_patch_size, |x| x as usize),
            rescale_factor: v
                .get("rescale_factor")
                .and_then(Value::as_f64)
                .unwrap_or(d.rescale_factor),
            image_mean: triple("image_mean", d.image_mean)?,
            image_std: triple("image_std", d.image_std)?,
        };
        if p.patch_size == 0 || p.merge_size == 0 || p.temporal_patch_size == 0 {
            return Err("patch_size, merge_size and temporal_patch_size must be positive".into());
        }
        if p.min_pixels > p.max_pixels {
            return Err(format!(
                "min_pixels {} is above max_pixels {}",
                p.min_pixels, p.max_pixels
            ));
        }
        Ok(p)
    }

    /// The size an image of `width × height` is resized to, `(height, width)`.
    pub fn target_size(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        smart_resize(
            height,
            width,
            self.patch_size * self.merge_size,
            self.min_pixels,
            self.max_pixels,
        )
    }

    /// Language-model tokens for an image of `width × height`.
    pub fn num_image_tokens(&self, height: usize, width: usize) -> Result<usize> {
        let (h, w) = self.target_size(height, width)?;
        Ok(h * w / (self.patch_size * self.merge_size).pow(2))
    }

    /// One image: resized, normalised, repeated to `temporal_patch_size` frames, patchified.
    pub fn process_image(&self, img: &RgbImage) -> Result<PixelValues> {
        let (h, w) = self.target_size(img.height() as usize, img.width() as usize)?;
        let frame = self.normalised(&resize_bicubic(img, w as u32, h as u32));
        let frames = vec![&frame; self.temporal_patch_size];
        Ok(self.patchify(&frames, h, w))
    }

    /// Video frames (already sampled, e.g. with ffmpeg), all resized to the size the first
    /// frame gets; the frame count is padded to a multiple of `temporal_patch_size` by
    /// repeating the last frame. `grid_t = frames / temporal_patch_size`.
    pub fn process_frames(&self, frames: &[RgbImage]) -> Result<PixelValues> {
        let first = frames
            .first()
            .ok_or_else(|| VlmError::Request("a video needs at least one frame".into()))?;
        let (h, w) = self.target_size(first.height() as usize, first.width() as usize)?;
        let mut normed: Vec<Vec<f32>> = frames
            .iter()
            .map(|f| self.normalised(&resize_bicubic(f, w as u32, h as u32)))
            .collect();
        while !normed.len().is_multiple_of(self.temporal_patch_size) {
            let last = normed[normed.len() - 1].clone();
            normed.push(last);
        }
        let refs: Vec<&Vec<f32>> = normed.iter().collect();
        Ok(self.patchify(&refs, h, w))
    }

    /// Reads and processes an image file.
    pub fn process_file(&self, path: &Path) -> Result<PixelValues> {
        self.process_image(&load_rgb(path)?)
    }

    /// `(C, H, W)` values: `(u8 · rescale_factor − mean) / std`, as numpy does in float32.
    fn normalised(&self, img: &RgbImage) -> Vec<f32> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut out = vec![0f32; 3 * h * w];
        for (x, y, p) in img.enumerate_pixels() {
            for c in 0..3 {
                let v = (p.0[c] as f64 * self.rescale_factor) as f32;
                let m = self.image_mean[c] as f32;
                let s = self.image_std[c] as f32;
                out[c * h * w + y as usize * w + x as usize] = (v - m) / s;
            }
        }
        out
    }

    /// Rows in `(t, h/m, w/m, m, m)` order, each `(C, T, p, p)`, as transformers lays them out.
    fn patchify(&self, frames: &[&Vec<f32>], h: usize, w: usize) -> PixelValues {
        let (p, m, tp) = (self.patch_size, self.merge_size, self.temporal_patch_size);
        let (gt, gh, gw) = (frames.len() / tp, h / p, w / p);
        let patch_dim = 3 * tp * p * p;
        let mut data = Vec::with_capacity(gt * gh * gw * patch_dim);
        for t in 0..gt {
            for bh in 0..gh / m {
                for bw in 0..gw / m {
                    for mh in 0..m {
                        for mw in 0..m {
                            let (y0, x0) = ((bh * m + mh) * p, (bw * m + mw) * p);
                            for c in 0..3 {
                                for tt in 0..tp {
                                    let f = frames[t * tp + tt];
                                    for py in 0..p {
                                        let row = c * h * w + (y0 + py) * w + x0;
                                        data.extend_from_slice(&f[row..row + p]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        PixelValues {
            data,
            grid_thw: [gt, gh, gw],
            patch_dim,
        }
    }
}

/// An image file as 8-bit RGB (alpha dropped, as Pillow's `convert("RGB")`).
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let img = image::open(path).map_err(|e| VlmError::Image {
        path: path.to_path_buf(),
        problem: format!("cannot read the image: {e}"),
    })?;
    Ok(img.to_rgb8())
}

/// Bicubic resize bit-identical to Pillow's `Image.resize(size, Image.BICUBIC)`
/// (`expflow_models::resize`, shared with the CLIP processor).
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    expflow_models::resize::resize_bicubic(img, width as usize, height as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_rounds_and_bounds() {
        // Halves round to even, as Python's round(): 70/28 = 2.5 -> 2.
        assert_eq!(smart_resize(70, 280, 28, 0, 1 << 30).unwrap(), (56, 280));
        // Too many pixels: scaled down, floored to multiples of 28.
        let (h, w) = smart_resize(1000, 2000, 28, 3136, 28 * 28 * 64).unwrap();
        assert!(
            h * w <= 28 * 28 * 64 && h % 28 == 0 && w % 28 == 0,
            "{h}x{w}"
        );
        // Too few: scaled up.
        let (h, w) = smart_resize(20, 30, 28, 56 * 56, 1 << 30).unwrap();
        assert!(h * w >= 56 * 56 && h % 28 == 0 && w % 28 == 0, "{h}x{w}");
        assert!(smart_resize(1, 300, 28, 0, 1 << 30).is_err());
    }

    #[test]
    fn settings_bundled_in_processor_config_are_read_without_a_preprocessor_config() {
        let d = tempfile::tempdir().unwrap();
        crate::write_tiny_vlm(
            d.path(),
            &crate::TinyVlmSpec::default(),
            &["a cover".to_string()],
        )
        .unwrap();
        let pre = d.path().join("preprocessor_config.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&pre).unwrap()).unwrap();
        v["size"] = serde_json::json!({"shortest_edge": 6272, "longest_edge": 25088});
        std::fs::remove_file(&pre).unwrap();
        let bundled =
            serde_json::json!({"image_processor": v, "processor_class": "Qwen2_5_VLProcessor"});
        std::fs::write(d.path().join("processor_config.json"), bundled.to_string()).unwrap();
        let dir = ModelDir::open(d.path(), expflow_models::Needs::Tokenizer).unwrap();
        let p = ImageProcessor::from_dir(&dir).unwrap();
        assert_eq!((p.min_pixels, p.max_pixels), (6272, 25088));
    }

    #[test]
    fn resize_keeps_a_constant_image_constant() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([200, 10, 77]));
        let out = resize_bicubic(&img, 56, 28);
        assert_eq!((out.width(), out.height()), (56, 28));
        assert!(out.pixels().all(|p| p.0 == [200, 10, 77]));
    }

    #[test]
    fn patchify_puts_merge_blocks_together() {
        // A 2-channel-free check: pixel value = its x coordinate in the red channel.
        let proc = ImageProcessor {
            min_pixels: 0,
            image_mean: [0.0; 3],
            image_std: [1.0; 3],
            rescale_factor: 1.0,
            ..ImageProcessor::default()
        };
        let mut img = RgbImage::new(56, 28);
        for (x, _, p) in img.enumerate_pixels_mut() {
            p.0 = [x as u8, 0, 0];
        }
        let pv = proc.process_image(&img).unwrap();
        assert_eq!(pv.grid_thw, [1, 2, 4]);
        assert_eq!(pv.patch_dim, 3 * 2 * 14 * 14);
        // Rows: block (0,0) holds patches (0,0), (0,1), (1,0), (1,1); then block (0,1).
        let first_x = |row: usize| pv.data[row * pv.patch_dim];
        let xs: Vec<f32> = (0..8).map(first_x).collect();
        assert_eq!(xs, vec![0.0, 14.0, 0.0, 14.0, 28.0, 42.0, 28.0, 42.0]);
        // The temporal copy follows the first frame's 14x14 block of the same channel.
        assert_eq!(pv.data[14 * 14], pv.data[0]);
    }

    #[test]
    fn frames_pair_into_temporal_patches() {
        let proc = ImageProcessor::default();
        let frame = |v: u8| RgbImage::from_pixel(56, 56, image::Rgb([v, v, v]));
        let pv = proc
            .process_frames(&[frame(0), frame(255), frame(100)])
            .unwrap();
        // Three frames padded to four: grid_t 2.
        assert_eq!(pv.grid_thw, [2, 4, 4]);
        let p2 = 14 * 14;
        let row0 = &pv.data[..pv.patch_dim];
        // Red channel: frame 0 then frame 1 of the first temporal patch.
        assert!(row0[0] < row0[p2], "{} {}", row0[0], row0[p2]);
        // The last temporal patch repeats frame 2.
        let last = &pv.data[pv.data.len() - pv.patch_dim..];
        assert_eq!(last[0], last[p2]);
        assert!(proc.process_frames(&[]).is_err());
    }
}
