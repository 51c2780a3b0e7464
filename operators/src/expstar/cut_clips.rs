//! `expstar.cut_clips`: one clip per step with ffmpeg, each checked with ffprobe (DAG nodes 4
//! and 5).
//!
//! The command is the original's (`-ss`/`-to` after `-i`, so seeking is frame-accurate;
//! x264 at crf 23, preset medium; AAC audio) plus what makes the bytes repeatable:
//! `-threads 1`, the bitexact flags for the muxer and both encoders, and no copied metadata.
//! Two runs give identical bytes (tested). A clip is good when ffmpeg exits 0, the file is
//! not empty and ffprobe counts at least one video packet; a bad clip is reported in the
//! log and gets `clip_ok = false` (the original skipped its metadata).
//!
//! Each clip is memoised by (the source video's BLAKE3, start, end, encoder arguments,
//! ffmpeg version): a step whose times did not change is copied from the store, not cut.
//! `ffmpeg -version` and `ffprobe -version` enter the node key through `environment()`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use serde_json::{Map, Value, json};

use super::steps::{StepRow, read_steps, write_steps};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct CutClips;

const KIND: &str = "expstar.cut_clips";

struct Config {
    crf: u64,
    preset: String,
    jobs: usize,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let jobs = p.u64("jobs")?;
        if jobs == 0 {
            return Err(OperatorError::param(KIND, "jobs", "must be at least 1"));
        }
        Ok(Config {
            crf: p.u64("crf")?,
            preset: p.str("preset")?.to_string(),
            jobs: jobs as usize,
        })
    }
}

/// The first line of `<tool> -version`.
pub fn tool_version(tool: &str) -> Result<String, OpError> {
    let out = Command::new(tool)
        .arg("-version")
        .output()
        .map_err(|e| format!("{KIND}: cannot run `{tool} -version` ({e}); install ffmpeg (Debian: apt-get install ffmpeg)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

/// The encoder arguments between the input and the output path.
pub fn encoder_args(start: &str, end: &str, crf: u64, preset: &str) -> Vec<String> {
    [
        "-ss",
        start,
        "-to",
        end,
        "-map",
        "0:v:0",
        "-map",
        "0:a:0?",
        "-c:v",
        "libx264",
        "-preset",
        preset,
        "-crf",
        &crf.to_string(),
        "-threads",
        "1",
        "-c:a",
        "aac",
        "-strict",
        "experimental",
        "-fflags",
        "+bitexact",
        "-flags:v",
        "+bitexact",
        "-flags:a",
        "+bitexact",
        "-map_metadata",
        "-1",
        "-map_chapters",
        "-1",
        "-f",
        "mp4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Video packets in `clip` as counted by ffprobe.
pub fn count_packets(ctx: &Context, clip: &Path) -> Result<u64, OpError> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_packets",
            "-show_entries",
            "stream=nb_read_packets",
            "-of",
            "csv=p=0",
        ])
        .arg(clip)
        .output()
        .map_err(|e| format!("{KIND}: cannot run ffprobe: {e}"))?;
    if !out.status.success() {
        ctx.log(&String::from_utf8_lossy(&out.stderr));
        return Err(format!("{KIND}: ffprobe failed on {}", clip.display()).into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.trim().parse().unwrap_or(0))
}

fn cut_one(
    ctx: &Context,
    row: &StepRow,
    raw: &Path,
    digest: &str,
    cfg: &Config,
    ffmpeg: &str,
) -> Result<std::path::PathBuf, OpError> {
    let args = encoder_args(&row.start, &row.end, cfg.crf, &cfg.preset);
    let item = json!({"video": digest, "args": args, "ffmpeg": ffmpeg});
    ctx.memo_file(&item, |tmp| {
        let status = ctx.run_command(
            Command::new("ffmpeg")
                .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-i"])
                .arg(raw.join(&row.video))
                .args(&args)
                .arg("-y")
                .arg(tmp),
        )?;
        if !status.success() {
            return Err(format!("ffmpeg failed ({status}) for {}", row.stem()).into());
        }
        let size = std::fs::metadata(tmp).map(|m| m.len()).unwrap_or(0);
        if size == 0 {
            return Err(format!("ffmpeg wrote an empty clip for {}", row.stem()).into());
        }
        if count_packets(ctx, tmp)? == 0 {
            return Err(format!("ffprobe counts no video packets in {}", row.stem()).into());
        }
        Ok(())
    })
}

impl Operator for CutClips {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new("steps", PortType::Table, "the step table from expstar.scan"),
                Port::new(
                    "raw",
                    PortType::Dir,
                    "the raw tree holding the source videos",
                ),
            ]),
            outputs: Ports::Fixed(vec![
                Port::new(
                    "clips",
                    PortType::Dir,
                    "<subject>/<unit>/video/<NN>-<title>/<stem>.mp4",
                ),
                Port::new(
                    "steps",
                    PortType::Table,
                    "the step table with `clip` and `clip_ok` filled in",
                ),
            ]),
            params: vec![
                ParamSpec::with_default(
                    "crf",
                    ParamKind::Int,
                    json!(23),
                    "x264 constant rate factor (the original used the default, 23)",
                ),
                ParamSpec::with_default(
                    "preset",
                    ParamKind::String,
                    json!("medium"),
                    "x264 preset",
                ),
                ParamSpec::with_default(
                    "jobs",
                    ParamKind::Int,
                    json!(2),
                    "clips cut at once (each ffmpeg uses one thread)",
                ),
            ],
            determinism: Determinism::Deterministic,
            resources: Resources {
                cpus: 2,
                gpus: 0,
                mem_gb: 0.0,
            },
        }
    }

    fn environment(&self) -> Result<BTreeMap<String, String>, OpError> {
        Ok(BTreeMap::from([
            ("ffmpeg".to_string(), tool_version("ffmpeg")?),
            ("ffprobe".to_string(), tool_version("ffprobe")?),
        ]))
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let raw = ctx.input("raw")?.path.clone();
        let mut rows = read_steps(&ctx.input("steps")?.path)?;
        let ffmpeg = tool_version("ffmpeg")?;
        // One digest per source video.
        let mut digests: BTreeMap<String, String> = BTreeMap::new();
        for row in &rows {
            if !digests.contains_key(&row.video) {
                let p = raw.join(&row.video);
                let (d, _) = expflow_cache::hash_file(&p)?;
                digests.insert(row.video.clone(), d.to_hex());
            }
        }
        let out_dir = ctx.output("clips")?.path.clone();
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let total = rows.len() as u64;
        let results: Mutex<Vec<Option<Result<std::path::PathBuf, String>>>> =
            Mutex::new(vec![None; rows.len()]);
        std::thread::scope(|s| {
            for _ in 0..cfg.jobs.min(rows.len().max(1)) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= rows.len() || ctx.is_cancelled() {
                            break;
                        }
                        let row = &rows[i];
                        let r = cut_one(ctx, row, &raw, &digests[&row.video], &cfg, &ffmpeg)
                            .map_err(|e| e.to_string());
                        if let Ok(mut all) = results.lock() {
                            all[i] = Some(r);
                        }
                        let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                        ctx.progress_of(n as u64, total, "clips", "");
                    }
                });
            }
        });
        ctx.check_cancelled()?;
        let results = results.into_inner().map_err(|_| "poisoned")?;
        let mut bad = 0;
        for (row, result) in rows.iter_mut().zip(results) {
            let rel = format!(
                "{}/{}/video/{}/{}.mp4",
                row.subject,
                row.unit,
                row.exp_dir,
                row.stem()
            );
            match result {
                Some(Ok(blob)) => {
                    let dest = out_dir.join(&rel);
                    if let Some(parent) = dest.parent() {
                        std::fs::create_dir_all(parent)
                            .map_err(|e| OperatorError::io("cannot create directory", parent, e))?;
                    }
                    std::fs::copy(&blob, &dest)
                        .map_err(|e| OperatorError::io("cannot copy clip to", &dest, e))?;
                    let mut perm = std::fs::metadata(&dest)
                        .map_err(|e| OperatorError::io("cannot stat", &dest, e))?
                        .permissions();
                    #[allow(clippy::permissions_set_readonly_false)]
                    perm.set_readonly(false);
                    std::fs::set_permissions(&dest, perm)
                        .map_err(|e| OperatorError::io("cannot chmod", &dest, e))?;
                    row.clip = rel;
                    row.clip_ok = true;
                }
                Some(Err(e)) => {
                    bad += 1;
                    ctx.log(&format!(
                        "problem: {}/{}/{}: {e}",
                        row.subject,
                        row.unit,
                        row.stem()
                    ));
                    row.clip = String::new();
                    row.clip_ok = false;
                }
                None => return Err("a clip was not processed".into()),
            }
        }
        let (hits, misses) = ctx.memo_counts();
        ctx.log(&format!(
            "{} clips: {hits} from the store, {misses} cut, {bad} problems",
            rows.len()
        ));
        write_steps(&rows, &ctx.output("steps")?.path)?;
        Ok(())
    }
}
