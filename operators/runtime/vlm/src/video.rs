//! Videos as Qwen2.5-VL takes them (qwen-vl-utils' `fetch_video`): frames sampled uniformly
//! at about `fps` per second of video (2 by default), at least 4, at most `max_frames`, an
//! even count; each pair of frames is one temporal patch, and one temporal grid step lasts
//! `temporal_patch_size / sample_fps` seconds, which M-RoPE turns into
//! `tokens_per_second × seconds` positions.
//!
//! Frames are decoded by ffmpeg (`expflow_encoders::video`) and resized with the image
//! processor's rule (its `min_pixels` / `max_pixels`); the reference's video processor has its
//! own pixel bounds (`VIDEO_MAX_PIXELS` and a total-pixel budget), so a large video may be
//! resized differently (docs/vlm.md).

use std::path::Path;

use expflow_encoders::FrameSampling;
use expflow_encoders::video::{probe, sample_frames};

use crate::error::{Result, VlmError};
use crate::image::{ImageProcessor, PixelValues};

/// Sampling defaults of qwen-vl-utils.
pub const FPS: f64 = 2.0;
pub const MIN_FRAMES: usize = 4;
pub const MAX_FRAMES: usize = 768;

/// A preprocessed video.
#[derive(Clone, Debug, PartialEq)]
pub struct Video {
    pub pixels: PixelValues,
    /// Seconds of video per temporal grid step.
    pub seconds_per_grid: f64,
}

/// How many frames qwen-vl-utils' `smart_nframes` samples from `total` frames at
/// `video_fps`: `total / video_fps × fps`, clamped to `[4, min(max_frames, total)]`, rounded
/// down to an even count.
pub fn frame_count(total: usize, video_fps: f64, fps: f64, max_frames: usize) -> Result<usize> {
    let floor2 = |x: f64| ((x / 2.0).floor() * 2.0) as usize;
    let hi = floor2(max_frames.min(total) as f64);
    let want = total as f64 / video_fps * fps;
    let n = floor2(want.max(MIN_FRAMES as f64).min(hi as f64).min(total as f64));
    if n < 2 || n > total {
        return Err(VlmError::Request(format!(
            "a video of {total} frames is too short: Qwen2.5-VL needs at least 2 frames"
        )));
    }
    Ok(n)
}

/// Samples and preprocesses the video at `path`.
pub fn load_video(processor: &ImageProcessor, path: &Path, max_frames: usize) -> Result<Video> {
    let media = |e: expflow_encoders::EncoderError| VlmError::Image {
        path: path.to_path_buf(),
        problem: e.to_string(),
    };
    let (video_fps, total) = probe(path).map_err(media)?;
    let n = frame_count(total, video_fps, FPS, max_frames)?;
    let frames = sample_frames(path, FrameSampling::Uniform(n)).map_err(media)?;
    if frames.len() < 2 {
        return Err(VlmError::Image {
            path: path.to_path_buf(),
            problem: format!("ffmpeg decoded {} frames; expected {n}", frames.len()),
        });
    }
    let sample_fps = frames.len() as f64 / total.max(1) as f64 * video_fps;
    Ok(Video {
        pixels: processor.process_frames(&frames)?,
        seconds_per_grid: processor.temporal_patch_size as f64 / sample_fps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_counts_follow_smart_nframes() {
        // 10 s at 25 fps: 20 frames at 2 fps.
        assert_eq!(frame_count(250, 25.0, 2.0, 768).unwrap(), 20);
        // 1 s: at least 4.
        assert_eq!(frame_count(25, 25.0, 2.0, 768).unwrap(), 4);
        // Long videos stop at max_frames (even).
        assert_eq!(frame_count(100_000, 25.0, 2.0, 31).unwrap(), 30);
        // Fewer frames than the minimum: all of them, even.
        assert_eq!(frame_count(3, 25.0, 2.0, 768).unwrap(), 2);
        assert!(frame_count(1, 25.0, 2.0, 768).is_err());
    }
}
