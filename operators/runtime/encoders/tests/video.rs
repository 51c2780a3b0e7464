//! Video embeddings: frame sampling through the ffmpeg binary and pooling over the CLIP image
//! tower. Skipped (with a message) when ffmpeg is not installed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use common::{assert_close, fixtures, max_abs_diff};
use expflow_encoders::video::{FrameSampling, VideoOptions, sample_frames};
use expflow_encoders::{ClipModel, Pooling};
use expflow_models::{ModelDir, Needs};

fn have_ffmpeg() -> bool {
    let ok = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        expflow_tests::skip::skip_or_fail(
            "the ffmpeg binary is not installed (apt-get install ffmpeg)",
        );
    }
    ok
}

/// A 3-second, 10 fps, 64x48 test-pattern clip (30 frames).
fn make_video(dir: &Path) -> PathBuf {
    let out = dir.join("clip.mkv");
    let status = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=3:size=64x48:rate=10",
        ])
        .args(["-c:v", "ffv1", "-pix_fmt", "yuv444p", "-y"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    out
}

/// Frame `n` decoded by ffmpeg to PNG independently of the code under test.
fn png_frame(video: &Path, n: usize, dir: &Path) -> image::RgbImage {
    let out = dir.join(format!("frame{n}.png"));
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(video)
        .args([
            "-vf",
            &format!("select=eq(n\\,{n})"),
            "-fps_mode",
            "passthrough",
            "-frames:v",
            "1",
            "-y",
        ])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    image::open(&out).unwrap().to_rgb8()
}

#[test]
fn frames_are_sampled_by_fps_and_uniformly() {
    if !have_ffmpeg() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let v = make_video(d.path());
    let fps = sample_frames(&v, FrameSampling::Fps(1.0)).unwrap();
    assert_eq!(fps.len(), 3);
    for (frame, n) in fps.iter().zip([0, 10, 20]) {
        assert_eq!((frame.width(), frame.height()), (64, 48));
        assert_eq!(frame, &png_frame(&v, n, d.path()), "frame {n}");
    }
    assert_eq!(sample_frames(&v, FrameSampling::Fps(2.5)).unwrap().len(), 8); // stride 4
    let uni = sample_frames(&v, FrameSampling::Uniform(4)).unwrap();
    assert_eq!(uni.len(), 4);
    for (frame, n) in uni.iter().zip([0, 10, 19, 29]) {
        assert_eq!(frame, &png_frame(&v, n, d.path()), "frame {n}");
    }
    assert_eq!(
        sample_frames(&v, FrameSampling::Uniform(100))
            .unwrap()
            .len(),
        30
    );
}

#[test]
fn video_embedding_pools_the_image_tower_over_frames() {
    if !have_ffmpeg() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let v = make_video(d.path());
    let dir = ModelDir::open(fixtures().join("clip-tiny"), Needs::WeightsOnly).unwrap();
    let clip = ClipModel::load(&dir, &Device::Cpu, false).unwrap();
    let frames = sample_frames(&v, FrameSampling::Fps(1.0)).unwrap();
    let pixels = frames
        .iter()
        .map(|f| clip.preprocess().pixel_values(f).unwrap())
        .collect();
    let per_frame = clip.embed_pixels(pixels).unwrap();
    let dim = clip.dim();
    let mean: Vec<f32> = (0..dim)
        .map(|k| per_frame.iter().map(|f| f[k]).sum::<f32>() / 3.0)
        .collect();
    let max: Vec<f32> = (0..dim)
        .map(|k| per_frame.iter().map(|f| f[k]).fold(f32::MIN, f32::max))
        .collect();

    let opts = VideoOptions::default();
    assert_eq!(
        (opts.sampling, opts.pooling),
        (FrameSampling::Fps(1.0), Pooling::Max)
    );
    let got_max = clip.embed_video(&v, &opts).unwrap();
    assert_close("max", std::slice::from_ref(&got_max), &[max], 1e-5);
    let mean_opts = VideoOptions {
        pooling: Pooling::Mean,
        ..opts
    };
    assert_close(
        "mean",
        &[clip.embed_video(&v, &mean_opts).unwrap()],
        std::slice::from_ref(&mean),
        1e-5,
    );
    assert!(
        max_abs_diff(&got_max, &mean) > 1e-3,
        "mean and max pooling should differ"
    );

    let norm = VideoOptions {
        normalize: true,
        ..mean_opts
    };
    let a = clip.embed_videos(&[v.clone(), v.clone()], &norm).unwrap();
    assert_eq!(a[0], a[1], "deterministic");
    let n: f32 = a[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((n - 1.0).abs() < 1e-5);
}

#[test]
fn video_errors_name_the_file() {
    if !have_ffmpeg() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("missing.mp4");
    let err = sample_frames(&missing, FrameSampling::Fps(1.0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing.mp4") && err.contains("no such video file"),
        "{err}"
    );
    let junk = d.path().join("junk.mp4");
    std::fs::write(&junk, b"not a video").unwrap();
    let err = sample_frames(&junk, FrameSampling::Uniform(3))
        .unwrap_err()
        .to_string();
    assert!(err.contains("junk.mp4"), "{err}");
    let v = make_video(d.path());
    let err = sample_frames(&v, FrameSampling::Fps(0.0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("fps must be positive"), "{err}");
}
