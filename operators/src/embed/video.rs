//! `embed.video`: one CLIP embedding per row of a column of video paths: frames sampled with
//! ffmpeg (`fps` per second, or `frames` spread uniformly), embedded with the image tower and
//! pooled (max by default, as ExpStar's CLIP retriever does).
//!
//! Relative paths are resolved against the optional `dir` input, after `strip_prefix` is
//! removed from their start (ExpStar's rows name clips `/path/to/<subject>/…`, relative to
//! `expstar.cut_clips`' `clips` directory). Each distinct file is
//! memoised under (its BLAKE3, the model digest, the sampling, pooling and normalisation).

use std::collections::BTreeMap;
use std::process::Command;

use expflow_encoders::{ClipModel, FrameSampling, Pooling, VideoOptions};
use expflow_engine::{Context, OpError, Operator, ParamKind, ParamSpec, Signature};
use expflow_models::{Needs, default_device};
use serde_json::{Map, Value, json};

use super::common::{
    check_new_column, chunks, file_column, log_device, memo_vectors, open_model, with_vectors,
};
use super::image::media_signature;
use super::text::POOLINGS;
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};
use crate::table_io::{read_table, write_table};

pub struct EmbedVideo;

const KIND: &str = "embed.video";

struct Config {
    column: String,
    output: String,
    strip_prefix: Option<String>,
    opts: VideoOptions,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let sampling = match (p.opt_f64("fps")?, p.opt_u64("frames")?) {
            (Some(_), Some(_)) => {
                return Err(OperatorError::param(
                    KIND,
                    "fps",
                    "and `frames` are both given; give one of them",
                ));
            }
            (Some(f), None) if f > 0.0 && f.is_finite() => FrameSampling::Fps(f),
            (Some(f), None) => {
                return Err(OperatorError::param(
                    KIND,
                    "fps",
                    format!("is {f}; it must be positive"),
                ));
            }
            (None, Some(0)) => {
                return Err(OperatorError::param(KIND, "frames", "must be at least 1"));
            }
            (None, Some(k)) => FrameSampling::Uniform(k as usize),
            (None, None) => VideoOptions::default().sampling,
        };
        let pooling = Pooling::parse(p.choice("pooling", &POOLINGS)?).expect("a known pooling");
        Ok(Config {
            column: p.str("column")?.to_string(),
            output: p.str("output")?.to_string(),
            strip_prefix: p.opt_str("strip_prefix")?.map(str::to_owned),
            opts: VideoOptions {
                sampling,
                pooling,
                normalize_frames: p.bool("normalize_frames")?,
                normalize: p.bool("normalize")?,
            },
        })
    }
}

/// The first line of `<tool> -version` (`$EXPFLOW_FFMPEG`/`$EXPFLOW_FFPROBE` when set).
fn tool_version(var: &str, tool: &str) -> std::result::Result<String, OpError> {
    let program = std::env::var(var).unwrap_or_else(|_| tool.to_string());
    let out = Command::new(&program).arg("-version").output().map_err(|e| {
        format!(
            "{KIND}: cannot run `{program} -version` ({e}); install ffmpeg (Debian: apt-get install ffmpeg) or set {var}"
        )
    })?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

fn sampling_json(s: FrameSampling) -> Value {
    match s {
        FrameSampling::Fps(f) => json!({"fps": f}),
        FrameSampling::Uniform(k) => json!({"frames": k}),
    }
}

impl Operator for EmbedVideo {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        let s = |name, kind, default: Value, doc| ParamSpec::with_default(name, kind, default, doc);
        media_signature(
            "the table with the video path column",
            vec![
                s(
                    "fps",
                    ParamKind::Float,
                    Value::Null,
                    "frames per second of video to embed (stride floor(video_fps / fps)); default 1 unless `frames` is given",
                ),
                s(
                    "frames",
                    ParamKind::Int,
                    Value::Null,
                    "embed this many frames spread uniformly instead",
                ),
                s(
                    "pooling",
                    ParamKind::String,
                    json!("max"),
                    "over frames: max or mean (cls / last_token take the first / last frame)",
                ),
                s(
                    "normalize_frames",
                    ParamKind::Bool,
                    json!(false),
                    "L2-normalise each frame's embedding before pooling",
                ),
                s(
                    "strip_prefix",
                    ParamKind::String,
                    Value::Null,
                    "removed from the start of each path before it is resolved against `dir` (e.g. ExpStar's `/path/to` clip paths against expstar.cut_clips' clips)",
                ),
            ],
        )
    }

    fn environment(&self) -> std::result::Result<BTreeMap<String, String>, OpError> {
        Ok(BTreeMap::from([
            (
                "ffmpeg".to_string(),
                tool_version("EXPFLOW_FFMPEG", "ffmpeg")?,
            ),
            (
                "ffprobe".to_string(),
                tool_version("EXPFLOW_FFPROBE", "ffprobe")?,
            ),
        ]))
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> std::result::Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let df = read_table(&ctx.input("rows")?.path)?;
        check_new_column(&df, KIND, &cfg.output)?;
        let files = file_column(ctx, &df, KIND, &cfg.column, cfg.strip_prefix.as_deref())?;
        let model = open_model(ctx, KIND, Needs::WeightsOnly)?;
        let o = cfg.opts;
        ctx.log(&format!(
            "{} rows, {} distinct videos from `{}`: {:?}, pooling {:?}, normalize_frames {}, normalize {}",
            files.index.len(),
            files.paths.len(),
            cfg.column,
            o.sampling,
            o.pooling,
            o.normalize_frames,
            o.normalize
        ));
        let items: Vec<Value> = files
            .digests
            .iter()
            .map(|d| {
                json!({
                    "file": d,
                    "model": model.digest,
                    "sampling": sampling_json(o.sampling),
                    "pooling": o.pooling,
                    "normalize_frames": o.normalize_frames,
                    "normalize": o.normalize,
                })
            })
            .collect();
        let mut clip: Option<ClipModel> = None;
        let plan = |missing| Ok(chunks(missing, 1));
        let vectors = memo_vectors(ctx, &items, plan, |chunk| {
            if clip.is_none() {
                let device = default_device()?;
                log_device(ctx, &device);
                clip = Some(ClipModel::load(&model.dir, &device, false)?);
            }
            let clip = clip.as_ref().expect("loaded above");
            chunk
                .iter()
                .map(|&i| {
                    clip.embed_video(&files.paths[i], &o).map_err(|e| {
                        OpError::from(OperatorError::data(
                            KIND,
                            format!("row {}: {e}", files.rows[i]),
                        ))
                    })
                })
                .collect()
        })?;
        let per_row: Vec<Vec<f32>> = files.index.iter().map(|&i| vectors[i].clone()).collect();
        let mut out = with_vectors(df, KIND, &cfg.output, &per_row)?;
        write_table(&mut out, &ctx.output("table")?.path)?;
        Ok(())
    }
}
