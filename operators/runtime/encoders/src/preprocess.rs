//! CLIP image preprocessing, written to match transformers' `CLIPImageProcessor` (PIL
//! backend) value for value:
//!
//! 1. convert to RGB (alpha dropped, grey expanded);
//! 2. resize so the shortest side is `shortest_edge`, the other side
//!    `floor(shortest_edge * long / short)`, with PIL's bicubic filter (a = -0.5, support
//!    widened when downscaling, 8-bit fixed-point passes: horizontal, then vertical);
//! 3. center crop (`top = (h - crop_h) / 2`, `left = (w - crop_w) / 2`, rounded down);
//! 4. rescale by 1/255 and normalise with the CLIP mean and standard deviation.
//!
//! The settings come from `preprocessor_config.json` when the model directory has one.

use std::path::Path;

use candle_core::{Device, Tensor};
use expflow_models::ModelDir;
use image::RgbImage;
use serde_json::Value;

use crate::error::{EncoderError, Result};

/// OpenAI CLIP's per-channel mean.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's per-channel standard deviation.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// How images become pixel values.
#[derive(Clone, Debug, PartialEq)]
pub struct ImagePreprocess {
    /// The shortest side after resizing.
    pub shortest_edge: usize,
    /// Center-crop height and width (each at most `shortest_edge`).
    pub crop: (usize, usize),
    pub rescale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ImagePreprocess {
    /// CLIP's preprocessing for square inputs of `size` pixels.
    pub fn clip(size: usize) -> ImagePreprocess {
        ImagePreprocess {
            shortest_edge: size,
            crop: (size, size),
            rescale: 1.0 / 255.0,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// Reads `preprocessor_config.json` of `dir` when present, else [`ImagePreprocess::clip`]
    /// of `image_size`. Settings this module does not implement (another resampling filter,
    /// resizing or cropping turned off) are an error naming the key.
    pub fn from_dir(dir: &ModelDir, image_size: usize) -> Result<ImagePreprocess> {
        let path = dir.root.join("preprocessor_config.json");
        if !path.is_file() {
            return Ok(Self::clip(image_size));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| EncoderError::config(&path, format!("cannot read: {e}")))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| EncoderError::config(&path, format!("not valid JSON: {e}")))?;
        let bad = |problem: String| EncoderError::config(&path, problem);
        for key in ["do_resize", "do_center_crop", "do_rescale", "do_normalize"] {
            if v.get(key).and_then(Value::as_bool) == Some(false) {
                return Err(bad(format!(
                    "`{key}: false` is not supported (CLIP preprocessing always does it)"
                )));
            }
        }
        if let Some(r) = v.get("resample").and_then(Value::as_u64)
            && r != 3
        {
            return Err(bad(format!(
                "`resample: {r}` is not supported; only 3 (bicubic) is implemented"
            )));
        }
        let shortest_edge = match v.get("size") {
            None => image_size,
            Some(Value::Number(n)) => n.as_u64().unwrap_or(0) as usize,
            Some(s) => s
                .get("shortest_edge")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("`size` must be a number or {\"shortest_edge\": n}".into()))?
                as usize,
        };
        let crop = match v.get("crop_size") {
            None => (image_size, image_size),
            Some(Value::Number(n)) => {
                let n = n.as_u64().unwrap_or(0) as usize;
                (n, n)
            }
            Some(c) => {
                let h = c.get("height").and_then(Value::as_u64);
                let w = c.get("width").and_then(Value::as_u64);
                match (h, w) {
                    (Some(h), Some(w)) => (h as usize, w as usize),
                    _ => return Err(bad("`crop_size` needs `height` and `width`".into())),
                }
            }
        };
        let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match v.get(key) {
                None => Ok(default),
                Some(Value::Array(a)) if a.len() == 3 && a.iter().all(Value::is_number) => Ok([
                    a[0].as_f64().unwrap_or(0.0) as f32,
                    a[1].as_f64().unwrap_or(0.0) as f32,
                    a[2].as_f64().unwrap_or(0.0) as f32,
                ]),
                Some(_) => Err(EncoderError::config(
                    &path,
                    format!("`{key}` must be three numbers"),
                )),
            }
        };
        let p = ImagePreprocess {
            shortest_edge,
            crop,
            rescale: v
                .get("rescale_factor")
                .and_then(Value::as_f64)
                .unwrap_or(1.0 / 255.0) as f32,
            mean: triple("image_mean", CLIP_MEAN)?,
            std: triple("image_std", CLIP_STD)?,
        };
        p.check().map_err(bad)?;
        if p.crop != (image_size, image_size) {
            return Err(bad(format!(
                "crop_size {:?} differs from the vision tower's image_size {image_size}",
                p.crop
            )));
        }
        Ok(p)
    }

    fn check(&self) -> std::result::Result<(), String> {
        let (h, w) = self.crop;
        if self.shortest_edge == 0 || h == 0 || w == 0 {
            return Err("sizes must be positive".into());
        }
        if h > self.shortest_edge || w > self.shortest_edge {
            return Err(format!(
                "crop {h}x{w} is larger than the resized shortest side {}",
                self.shortest_edge
            ));
        }
        Ok(())
    }

    /// The pixel values of `img`, channel-major (`[3, crop_h, crop_w]` flattened).
    pub fn pixel_values(&self, img: &RgbImage) -> Result<Vec<f32>> {
        self.check().map_err(EncoderError::Param)?;
        let (w, h) = (img.width() as usize, img.height() as usize);
        if w == 0 || h == 0 {
            return Err(EncoderError::Param("the image is empty (0 pixels)".into()));
        }
        let (new_w, new_h) = resized_size(w, h, self.shortest_edge);
        let resized = resize_bicubic(img, new_w, new_h);
        let (ch, cw) = self.crop;
        let top = (new_h - ch) / 2;
        let left = (new_w - cw) / 2;
        let mut out = vec![0f32; 3 * ch * cw];
        for y in 0..ch {
            for x in 0..cw {
                let p = resized.get_pixel((left + x) as u32, (top + y) as u32).0;
                for c in 0..3 {
                    let v = (p[c] as f64 * self.rescale as f64) as f32;
                    out[c * ch * cw + y * cw + x] = (v - self.mean[c]) / self.std[c];
                }
            }
        }
        Ok(out)
    }

    /// Reads `path` and returns its pixel values; errors name the file.
    pub fn load(&self, path: &Path) -> Result<Vec<f32>> {
        let img = image::open(path)
            .map_err(|e| EncoderError::media(path, format!("cannot read the image: {e}")))?
            .to_rgb8();
        self.pixel_values(&img)
            .map_err(|e| EncoderError::media(path, e.to_string()))
    }

    /// A `[n, 3, crop_h, crop_w]` batch from already preprocessed images.
    pub fn batch(&self, pixels: Vec<Vec<f32>>, device: &Device) -> Result<Tensor> {
        let n = pixels.len();
        let flat: Vec<f32> = pixels.into_iter().flatten().collect();
        Ok(Tensor::from_vec(
            flat,
            (n, 3, self.crop.0, self.crop.1),
            device,
        )?)
    }
}

/// The size after resizing the shortest side to `edge` (transformers'
/// `get_resize_output_image_size` with `default_to_square=False`).
pub fn resized_size(w: usize, h: usize, edge: usize) -> (usize, usize) {
    let long_of = |short: usize, long: usize| ((edge * long) as f64 / short as f64) as usize;
    if w <= h {
        (edge, long_of(w, h))
    } else {
        (long_of(h, w), edge)
    }
}

pub use expflow_models::resize::resize_bicubic;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_follows_transformers() {
        assert_eq!(resized_size(300, 240, 224), (280, 224));
        assert_eq!(resized_size(40, 90, 224), (224, 504));
        assert_eq!(resized_size(224, 224, 224), (224, 224));
    }

    #[test]
    fn resize_keeps_a_flat_image_flat() {
        let img = RgbImage::from_pixel(37, 53, image::Rgb([10, 128, 250]));
        let r = resize_bicubic(&img, 224, 320);
        assert_eq!((r.width(), r.height()), (224, 320));
        assert!(r.pixels().all(|p| p.0 == [10, 128, 250]));
    }

    #[test]
    fn crop_larger_than_resize_is_refused() {
        let mut p = ImagePreprocess::clip(224);
        p.shortest_edge = 200;
        let img = RgbImage::new(10, 10);
        assert!(
            p.pixel_values(&img)
                .unwrap_err()
                .to_string()
                .contains("larger than")
        );
    }
}
