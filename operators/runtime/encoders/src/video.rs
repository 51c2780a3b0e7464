//! Video embeddings: frames sampled with the `ffmpeg` binary, embedded with the CLIP image
//! tower, pooled over frames.
//!
//! Sampling (frame numbers count decoded frames from 0, as OpenCV's reader does):
//! - [`FrameSampling::Fps`]`(f)`: keep frames with `n % max(1, floor(video_fps / f)) == 0`,
//!   where `video_fps` is the stream's `r_frame_rate` — the ExpStar CLIP retriever's rule
//!   (frames 0, 25, 50, … at 25 fps for `f = 1`);
//! - [`FrameSampling::Uniform`]`(k)`: `k` frames at `round(i · (N − 1) / (k − 1))`
//!   (`numpy.linspace(0, N - 1, k).round()`), `N` being the packet count `ffprobe` reports;
//!   all frames when `k >= N`.
//!
//! ffmpeg (`$EXPFLOW_FFMPEG`, else `ffmpeg` on `PATH`; `ffprobe` likewise) decodes only the
//! selected frames to binary PPM (RGB24) on its stdout; frames are embedded in batches as they
//! arrive, so memory does not grow with the video's length.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use candle_core::Tensor;
use expflow_models::Pooling;
use image::RgbImage;

use crate::clip::ClipModel;
use crate::error::{EncoderError, Result};
use crate::pooling::{l2_normalize_vec, pool_rows};

/// Which frames of a video are embedded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FrameSampling {
    /// About this many frames per second of video (the frame-stride rule above).
    Fps(f64),
    /// This many frames spread uniformly over the video.
    Uniform(usize),
}

/// How a video becomes one vector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VideoOptions {
    pub sampling: FrameSampling,
    /// Over frames: mean or max (CLS / last token take the first / last frame).
    pub pooling: Pooling,
    /// L2-normalise each frame's embedding before pooling.
    pub normalize_frames: bool,
    /// L2-normalise the pooled vector.
    pub normalize: bool,
}

impl Default for VideoOptions {
    /// One frame per second, max pooling, no normalisation: the ExpStar retriever's settings.
    fn default() -> Self {
        VideoOptions {
            sampling: FrameSampling::Fps(1.0),
            pooling: Pooling::Max,
            normalize_frames: false,
            normalize: false,
        }
    }
}

const FRAME_BATCH: usize = 16;

fn tool(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

fn run_probe(video: &Path, args: &[&str]) -> Result<String> {
    let ffprobe = tool("EXPFLOW_FFPROBE", "ffprobe");
    let out = Command::new(&ffprobe)
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(args)
        .arg(video)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            EncoderError::media(
                video,
                format!("cannot run `{ffprobe}` ({e}); install ffmpeg (Debian: apt-get install ffmpeg) or set EXPFLOW_FFPROBE"),
            )
        })?;
    if !out.status.success() {
        return Err(EncoderError::media(
            video,
            format!(
                "ffprobe failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The stream's `r_frame_rate` as a number.
fn frame_rate(video: &Path) -> Result<f64> {
    let s = run_probe(
        video,
        &["-show_entries", "stream=r_frame_rate", "-of", "csv=p=0"],
    )?;
    let rate = match s.split_once('/') {
        Some((n, d)) => match (n.trim().parse::<f64>(), d.trim().parse::<f64>()) {
            (Ok(n), Ok(d)) if d > 0.0 => n / d,
            _ => f64::NAN,
        },
        None => s.parse().unwrap_or(f64::NAN),
    };
    if rate.is_finite() && rate > 0.0 {
        Ok(rate)
    } else {
        Err(EncoderError::media(
            video,
            format!("no video stream with a frame rate (ffprobe said {s:?})"),
        ))
    }
}

/// The number of video packets (= frames for the usual codecs).
fn frame_count(video: &Path) -> Result<usize> {
    let s = run_probe(
        video,
        &[
            "-count_packets",
            "-show_entries",
            "stream=nb_read_packets",
            "-of",
            "csv=p=0",
        ],
    )?;
    s.parse::<usize>().map_err(|_| {
        EncoderError::media(
            video,
            format!("no video stream with frames (ffprobe said {s:?})"),
        )
    })
}

/// The stream's frame rate (`r_frame_rate`) and frame (packet) count, from ffprobe.
pub fn probe(video: &Path) -> Result<(f64, usize)> {
    Ok((frame_rate(video)?, frame_count(video)?))
}

/// The frame numbers [`FrameSampling::Uniform`] picks out of `n` frames.
pub fn uniform_indices(n: usize, k: usize) -> Vec<usize> {
    if n == 0 || k == 0 {
        return Vec::new();
    }
    if k >= n {
        return (0..n).collect();
    }
    if k == 1 {
        return vec![0];
    }
    let mut idx: Vec<usize> = (0..k)
        .map(|i| ((i * (n - 1)) as f64 / (k - 1) as f64).round_ties_even() as usize)
        .collect();
    idx.dedup();
    idx
}

/// The ffmpeg `select` expression for `sampling`.
fn select_expr(video: &Path, sampling: FrameSampling) -> Result<String> {
    match sampling {
        FrameSampling::Fps(f) => {
            if !(f.is_finite() && f > 0.0) {
                return Err(EncoderError::Param(format!(
                    "frame sampling fps must be positive, got {f}"
                )));
            }
            let stride = ((frame_rate(video)? / f).floor() as usize).max(1);
            Ok(format!("not(mod(n\\,{stride}))"))
        }
        FrameSampling::Uniform(k) => {
            if k == 0 {
                return Err(EncoderError::Param(
                    "uniform frame sampling needs at least 1 frame".into(),
                ));
            }
            let idx = uniform_indices(frame_count(video)?, k);
            if idx.is_empty() {
                return Err(EncoderError::media(video, "the video has no frames"));
            }
            Ok(idx
                .iter()
                .map(|i| format!("eq(n\\,{i})"))
                .collect::<Vec<_>>()
                .join("+"))
        }
    }
}

/// Calls `each` with every sampled frame of `video`, in order.
pub fn for_each_frame(
    video: &Path,
    sampling: FrameSampling,
    mut each: impl FnMut(RgbImage) -> Result<()>,
) -> Result<usize> {
    if !video.is_file() {
        return Err(EncoderError::media(video, "no such video file"));
    }
    let select = select_expr(video, sampling)?;
    let ffmpeg = tool("EXPFLOW_FFMPEG", "ffmpeg");
    let mut child = Command::new(&ffmpeg)
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(video)
        .args(["-map", "0:v:0", "-vf", &format!("select={select}")])
        .args(["-fps_mode", "passthrough", "-pix_fmt", "rgb24", "-c:v", "ppm", "-f", "image2pipe", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            EncoderError::media(
                video,
                format!("cannot run `{ffmpeg}` ({e}); install ffmpeg (Debian: apt-get install ffmpeg) or set EXPFLOW_FFMPEG"),
            )
        })?;
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut count = 0;
    let mut result = Ok(());
    loop {
        match read_ppm(&mut out) {
            Ok(Some(img)) => {
                count += 1;
                if let Err(e) = each(img) {
                    result = Err(e);
                    break;
                }
            }
            Ok(None) => break,
            Err(problem) => {
                result = Err(EncoderError::media(
                    video,
                    format!("bad frame from ffmpeg: {problem}"),
                ));
                break;
            }
        }
    }
    if result.is_err() {
        let _ = child.kill();
    }
    drop(out);
    let status = child
        .wait()
        .map_err(|e| EncoderError::media(video, format!("waiting for ffmpeg: {e}")))?;
    let stderr = err_reader.join().unwrap_or_default();
    result?;
    if !status.success() {
        return Err(EncoderError::media(
            video,
            format!("ffmpeg failed ({status}): {}", stderr.trim()),
        ));
    }
    if count == 0 {
        return Err(EncoderError::media(
            video,
            "ffmpeg returned no frames (empty or undecodable video)",
        ));
    }
    tracing::debug!(video = %video.display(), frames = count, ?sampling, "frames sampled");
    Ok(count)
}

/// Every sampled frame of `video` (for tests and small clips; [`ClipModel::embed_video`]
/// streams instead).
pub fn sample_frames(video: &Path, sampling: FrameSampling) -> Result<Vec<RgbImage>> {
    let mut frames = Vec::new();
    for_each_frame(video, sampling, |f| {
        frames.push(f);
        Ok(())
    })?;
    Ok(frames)
}

fn read_token(r: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut tok = Vec::new();
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(if tok.is_empty() {
                None
            } else {
                Some(String::from_utf8_lossy(&tok).into())
            });
        }
        let b = buf[0];
        r.consume(1);
        if b.is_ascii_whitespace() {
            if !tok.is_empty() {
                return Ok(Some(String::from_utf8_lossy(&tok).into()));
            }
        } else if b == b'#' && tok.is_empty() {
            let mut skip = Vec::new();
            r.read_until(b'\n', &mut skip)?;
        } else {
            tok.push(b);
        }
    }
}

/// Reads one binary PPM (`P6`, maxval 255); `None` at a clean end of stream.
fn read_ppm(r: &mut impl BufRead) -> std::result::Result<Option<RgbImage>, String> {
    let e = |x: std::io::Error| x.to_string();
    let Some(magic) = read_token(r).map_err(e)? else {
        return Ok(None);
    };
    if magic != "P6" {
        return Err(format!("expected a P6 PPM frame, got {magic:?}"));
    }
    let mut num = || -> std::result::Result<usize, String> {
        read_token(r)
            .map_err(|x| x.to_string())?
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| "truncated PPM header".to_string())
    };
    let (w, h, max) = (num()?, num()?, num()?);
    if max != 255 {
        return Err(format!("PPM maxval {max}, expected 255"));
    }
    let mut data = vec![0u8; w * h * 3];
    r.read_exact(&mut data).map_err(e)?;
    RgbImage::from_raw(w as u32, h as u32, data)
        .map(Some)
        .ok_or_else(|| "PPM size mismatch".to_string())
}

impl ClipModel {
    /// One vector for `video`: sampled frames through the image tower (projected, not
    /// normalised unless `normalize_frames`), pooled, then L2-normalised if asked.
    /// Errors name the video file.
    pub fn embed_video(&self, video: &Path, opts: &VideoOptions) -> Result<Vec<f32>> {
        let mut features: Vec<Tensor> = Vec::new();
        let mut batch: Vec<Vec<f32>> = Vec::new();
        let flush = |batch: &mut Vec<Vec<f32>>, features: &mut Vec<Tensor>| -> Result<()> {
            if !batch.is_empty() {
                let px = self
                    .preprocess()
                    .batch(std::mem::take(batch), self.device())?;
                features.push(self.image_features(&px)?);
            }
            Ok(())
        };
        for_each_frame(video, opts.sampling, |frame| {
            batch.push(
                self.preprocess()
                    .pixel_values(&frame)
                    .map_err(|e| EncoderError::media(video, e.to_string()))?,
            );
            if batch.len() == FRAME_BATCH {
                flush(&mut batch, &mut features)?;
            }
            Ok(())
        })?;
        flush(&mut batch, &mut features)?;
        let mut rows = Tensor::cat(&features, 0)?;
        if opts.normalize_frames {
            rows = crate::pooling::l2_normalize(&rows)?;
        }
        let mut v = pool_rows(&rows, opts.pooling)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        if opts.normalize {
            l2_normalize_vec(&mut v);
        }
        Ok(v)
    }

    /// [`ClipModel::embed_video`] for each path, in order.
    pub fn embed_videos(&self, videos: &[PathBuf], opts: &VideoOptions) -> Result<Vec<Vec<f32>>> {
        videos.iter().map(|v| self.embed_video(v, opts)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_indices_follow_linspace() {
        assert_eq!(uniform_indices(30, 4), vec![0, 10, 19, 29]);
        assert_eq!(uniform_indices(5, 8), vec![0, 1, 2, 3, 4]);
        assert_eq!(uniform_indices(10, 1), vec![0]);
        assert_eq!(uniform_indices(0, 3), Vec::<usize>::new());
    }

    #[test]
    fn ppm_stream_is_split_into_frames() {
        let mut bytes = b"P6\n2 1\n255\n".to_vec();
        bytes.extend([1, 2, 3, 4, 5, 6]);
        bytes.extend(b"P6 # comment\n1 1 255\n");
        bytes.extend([7, 8, 9]);
        let mut r = BufReader::new(&bytes[..]);
        let a = read_ppm(&mut r).unwrap().unwrap();
        assert_eq!((a.width(), a.height()), (2, 1));
        assert_eq!(a.get_pixel(1, 0).0, [4, 5, 6]);
        let b = read_ppm(&mut r).unwrap().unwrap();
        assert_eq!(b.get_pixel(0, 0).0, [7, 8, 9]);
        assert!(read_ppm(&mut r).unwrap().is_none());
        let mut bad = BufReader::new(&b"P6\n2 2\n255\n\x01"[..]);
        assert!(read_ppm(&mut bad).is_err());
    }
}
