//! `expstar.scan`: a raw ExpStar tree → one table row per step (DAG nodes 1, 3 and 7).
//!
//! Layout (spec §A.1), below the `raw` directory:
//! `<steps_dir>/<subject>/<unit>/step/<NN>[-_]<title>.json`,
//! `<videos_dir>/<subject>/<unit>/<NN>[-_]<title>.mp4|.mkv` and
//! `<asr_dir>/<subject>/<unit>/asr/<NN>[-_]<title>.json`.
//!
//! Matching (spec §B.2, §B.3): a step file whose name does not parse is skipped; its video is
//! the first (in sorted order) whose name starts with `<NN><sep>` and whose rest contains the
//! title without dots (or is contained in it), else the first whose name starts with
//! `<NN>-` or `<NN>_`; its ASR file has the same name up to `_`↔`-`, else the same number and
//! title. An experiment without a video is skipped and reported.
//!
//! Step times (spec §A.4): a step starts at the `startTime` of its first subtitle and ends at
//! the `startTime` of the next step's first subtitle; the last step ends at its last
//! subtitle's `endTime`. Every step whose given times differ from the derived ones, and every
//! step whose `ASR_id` is not a sorted contiguous run of subtitles carrying that step, is
//! listed in the `report`. `times` chooses which times are used (the other fills in when
//! one is missing).
//!
//! Annotations (spec §B.3): the subtitles whose `step` equals the step's 1-based position,
//! with `id`, `startTime`, `endTime`, `text`, `text_en` (default `""`) and whichever of
//! `safety_en`, `safety_zh`, `equation`, `principle_zh`, `principle_en` are present.

use std::collections::BTreeMap;
use std::path::Path;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use serde_json::{Map, Value, json};

use super::steps::{StepRow, write_steps};
use super::{
    format_time, parse_time, py_json, py_json_indent, read_json, split_number, write_file,
};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct Scan;

const KIND: &str = "expstar.scan";
const OPTIONAL_FIELDS: [&str; 5] = [
    "safety_en",
    "safety_zh",
    "equation",
    "principle_zh",
    "principle_en",
];

struct Config {
    steps_dir: String,
    videos_dir: String,
    asr_dir: String,
    derived: bool,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        Ok(Config {
            steps_dir: p.str("steps_dir")?.to_string(),
            videos_dir: p.str("videos_dir")?.to_string(),
            asr_dir: p.str("asr_dir")?.to_string(),
            derived: p.choice("times", &["given", "derived"])? == "derived",
        })
    }
}

/// What the scan found besides the steps.
#[derive(Default)]
pub struct Report {
    pub skipped: Vec<Value>,
    pub disagreements: Vec<Value>,
    pub alignment: Vec<Value>,
    pub missing_annotations: Vec<Value>,
    pub experiments: usize,
}

impl Report {
    fn to_json(&self, steps: usize) -> Value {
        json!({
            "experiments": self.experiments,
            "steps": steps,
            "skipped": self.skipped,
            "time_disagreements": self.disagreements,
            "alignment_problems": self.alignment,
            "missing_annotations": self.missing_annotations,
        })
    }
}

fn list_dirs(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(dir).map_err(|e| OperatorError::io("cannot list", dir, e))? {
        let entry = entry.map_err(|e| OperatorError::io("cannot list", dir, e))?;
        if entry.path().is_dir()
            && let Some(n) = entry.file_name().to_str()
        {
            out.push(n.to_string());
        }
    }
    out.sort();
    Ok(out)
}

fn list_files(dir: &Path, exts: &[&str]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(dir).map_err(|e| OperatorError::io("cannot list", dir, e))? {
        let entry = entry.map_err(|e| OperatorError::io("cannot list", dir, e))?;
        if entry.path().is_file()
            && let Some(n) = entry.file_name().to_str()
            && exts.iter().any(|x| n.to_lowercase().ends_with(x))
        {
            out.push(n.to_string());
        }
    }
    out.sort();
    Ok(out)
}

/// The video for experiment `num`/`sep`/`title` among `videos` (sorted names).
pub fn match_video<'a>(num: &str, sep: char, title: &str, videos: &'a [String]) -> Option<&'a str> {
    let clean: String = title.chars().filter(|c| *c != '.').collect();
    let prefix = format!("{num}{sep}");
    let first = videos.iter().find(|v| {
        v.strip_prefix(&prefix)
            .is_some_and(|rest| !rest.is_empty() && (rest.contains(&clean) || clean.contains(rest)))
    });
    first
        .or_else(|| {
            videos
                .iter()
                .find(|v| split_number(v).is_some_and(|(_, n, _, _)| n == num))
        })
        .map(String::as_str)
}

/// The ASR file for the step file stem `stem` among `asr` (sorted names).
pub fn match_asr<'a>(stem: &str, asr: &'a [String]) -> Option<&'a str> {
    let norm = |s: &str| s.replace('_', "-");
    let want = norm(stem);
    let base = |n: &'a String| n.strip_suffix(".json").unwrap_or(n);
    if let Some(hit) = asr.iter().find(|n| base(n) == stem) {
        return Some(hit);
    }
    if let Some(hit) = asr.iter().find(|n| norm(base(n)) == want) {
        return Some(hit);
    }
    let (_, num, _, title) = split_number(stem)?;
    asr.iter()
        .find(|n| {
            split_number(base(n)).is_some_and(|(_, m, _, t)| m == num && norm(t) == norm(title))
        })
        .map(String::as_str)
}

fn subtitle_time(sub: &Value, key: &str) -> Option<String> {
    sub.get(key).and_then(Value::as_str).map(str::to_string)
}

fn int_of(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

/// Derived (start, end) per step, from the subtitles and each step's `ASR_id` (or, when a
/// step has none, the subtitles whose `step` field names it). Also returns alignment
/// problems as messages.
pub fn derive_times(
    steps: &[Value],
    subtitles: &[Value],
) -> (Vec<Option<(String, String)>>, Vec<String>) {
    let by_id: BTreeMap<i64, &Value> = subtitles
        .iter()
        .filter_map(|s| Some((int_of(s.get("id")?)?, s)))
        .collect();
    let mut problems = Vec::new();
    let ids: Vec<Vec<i64>> = steps
        .iter()
        .map(|st| {
            let listed: Vec<i64> = st
                .get("ASR_id")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(int_of).collect())
                .unwrap_or_default();
            if !listed.is_empty() {
                return listed;
            }
            let n = st.get("step").and_then(int_of);
            subtitles
                .iter()
                .filter(|s| n.is_some() && s.get("step").and_then(int_of) == n)
                .filter_map(|s| s.get("id").and_then(int_of))
                .collect()
        })
        .collect();
    for (k, (st, list)) in steps.iter().zip(&ids).enumerate() {
        let label = st.get("step").and_then(int_of).unwrap_or(k as i64 + 1);
        if list.windows(2).any(|w| w[1] != w[0] + 1) {
            problems.push(format!(
                "step {label}: ASR_id {list:?} is not a sorted contiguous run"
            ));
        }
        for id in list {
            match by_id.get(id) {
                None => problems.push(format!("step {label}: subtitle {id} does not exist")),
                Some(sub) => {
                    let s = sub.get("step").and_then(int_of);
                    if s.is_some() && s != Some(label) {
                        problems.push(format!(
                            "step {label}: subtitle {id} carries step {}",
                            s.unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }
    let first_start = |list: &Vec<i64>| {
        list.first()
            .and_then(|id| by_id.get(id))
            .and_then(|s| subtitle_time(s, "startTime"))
    };
    let times = (0..steps.len())
        .map(|k| {
            let start = first_start(&ids[k])?;
            let end = if k + 1 < steps.len() {
                first_start(&ids[k + 1])?
            } else {
                ids[k]
                    .last()
                    .and_then(|id| by_id.get(id))
                    .and_then(|s| subtitle_time(s, "endTime"))?
            };
            Some((start, end))
        })
        .collect();
    (times, problems)
}

/// The annotations of the step at 1-based position `k`, in subtitle order.
pub fn annotations_for(k: i64, subtitles: &[Value]) -> Vec<Value> {
    subtitles
        .iter()
        .filter(|s| s.get("step").and_then(int_of) == Some(k))
        .map(|s| {
            let mut m = Map::new();
            for key in ["id", "startTime", "endTime", "text"] {
                m.insert(key.into(), s.get(key).cloned().unwrap_or(Value::Null));
            }
            m.insert(
                "text_en".into(),
                s.get("text_en").cloned().unwrap_or(json!("")),
            );
            for key in OPTIONAL_FIELDS {
                if let Some(v) = s.get(key) {
                    m.insert(key.into(), v.clone());
                }
            }
            Value::Object(m)
        })
        .collect()
}

fn same_time(a: &str, b: &str) -> bool {
    match (parse_time(a), parse_time(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Scans `raw` into step rows (sorted) and a report.
pub fn scan(
    raw: &Path,
    cfg_steps: &str,
    cfg_videos: &str,
    cfg_asr: &str,
    derived: bool,
) -> Result<(Vec<StepRow>, Report)> {
    let mut rows = Vec::new();
    let mut report = Report::default();
    let steps_root = raw.join(cfg_steps);
    for subject in list_dirs(&steps_root)? {
        for unit in list_dirs(&steps_root.join(&subject))? {
            let step_dir = steps_root.join(&subject).join(&unit).join("step");
            let video_rel = format!("{cfg_videos}/{subject}/{unit}");
            let asr_rel = format!("{cfg_asr}/{subject}/{unit}/asr");
            let videos = list_files(&raw.join(&video_rel), &[".mp4", ".mkv"])?;
            let asrs = list_files(&raw.join(&asr_rel), &[".json"])?;
            for file in list_files(&step_dir, &[".json"])? {
                let step_rel = format!("{cfg_steps}/{subject}/{unit}/step/{file}");
                let stem = file.strip_suffix(".json").unwrap_or(&file);
                let Some((_, num, sep, title)) = split_number(stem) else {
                    report
                        .skipped
                        .push(json!({"file": step_rel, "reason": "name is not <NN>-<title>.json"}));
                    continue;
                };
                let Some(video) = match_video(num, sep, title, &videos) else {
                    report
                        .skipped
                        .push(json!({"file": step_rel, "reason": "no matching video"}));
                    continue;
                };
                let doc = read_json(&raw.join(&step_rel))?;
                let Some(steps) = doc.get("steps").and_then(Value::as_array) else {
                    report
                        .skipped
                        .push(json!({"file": step_rel, "reason": "no `steps` list"}));
                    continue;
                };
                let (asr_file, subtitles) = match match_asr(stem, &asrs) {
                    Some(a) => {
                        let rel = format!("{asr_rel}/{a}");
                        let asr = read_json(&raw.join(&rel))?;
                        let subs = asr
                            .get("subtitles")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default();
                        (rel, subs)
                    }
                    None => (String::new(), Vec::new()),
                };
                report.experiments += 1;
                let exp_dir = format!("{num}-{title}");
                let title_zh = doc.get("title_zh").and_then(Value::as_str).unwrap_or(title);
                let title_en = doc.get("title_en").and_then(Value::as_str).unwrap_or("");
                let (derived_times, align) = if subtitles.is_empty() {
                    (vec![None; steps.len()], Vec::new())
                } else {
                    derive_times(steps, &subtitles)
                };
                for msg in align {
                    report.alignment.push(json!({"experiment": format!("{subject}/{unit}/{exp_dir}"), "problem": msg}));
                }
                for (i, st) in steps.iter().enumerate() {
                    let k = i as i64 + 1;
                    let given = (
                        st.get("startTime")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                        st.get("endTime")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                    );
                    let given = match given {
                        (Some(a), Some(b)) => Some((a, b)),
                        _ => None,
                    };
                    let der = derived_times[i].clone();
                    let agree = match (&given, &der) {
                        (Some(g), Some(d)) => same_time(&g.0, &d.0) && same_time(&g.1, &d.1),
                        _ => true,
                    };
                    if !agree && let (Some(g), Some(d)) = (&given, &der) {
                        report.disagreements.push(json!({
                            "experiment": format!("{subject}/{unit}/{exp_dir}"),
                            "step": k,
                            "given": [g.0, g.1],
                            "derived": [d.0, d.1],
                        }));
                    }
                    let chosen = if derived {
                        der.clone().or(given.clone())
                    } else {
                        given.clone().or(der.clone())
                    };
                    let Some((start, end)) = chosen else {
                        report.skipped.push(json!({"file": step_rel, "step": k, "reason": "no startTime/endTime and none can be derived"}));
                        continue;
                    };
                    let anns = annotations_for(k, &subtitles);
                    if anns.is_empty() {
                        report.missing_annotations.push(
                            json!({"experiment": format!("{subject}/{unit}/{exp_dir}"), "step": k}),
                        );
                    }
                    let (gs, ge) = given.clone().unwrap_or_default();
                    let (ds, de) = der.clone().unwrap_or_default();
                    rows.push(StepRow {
                        subject: subject.clone(),
                        unit: unit.clone(),
                        exp_num: num.to_string(),
                        exp_dir: exp_dir.clone(),
                        title_zh: title_zh.to_string(),
                        title_en: title_en.to_string(),
                        step_index: k,
                        step: st.get("step").and_then(int_of).unwrap_or(k),
                        step_zh: super::str_field(st, "step_zh").to_string(),
                        step_en: super::str_field(st, "step_en").to_string(),
                        start: normalise(&start),
                        end: normalise(&end),
                        given_start: gs,
                        given_end: ge,
                        derived_start: ds,
                        derived_end: de,
                        times_agree: agree,
                        video: format!("{video_rel}/{video}"),
                        step_file: step_rel.clone(),
                        asr_file: asr_file.clone(),
                        annotations: py_json(&Value::Array(anns)),
                        clip: String::new(),
                        clip_ok: false,
                    });
                }
            }
        }
    }
    rows.sort_by_key(StepRow::order_key);
    Ok((rows, report))
}

/// A time as `H:MM:SS` when it parses, else as given.
fn normalise(t: &str) -> String {
    parse_time(t)
        .map(format_time)
        .unwrap_or_else(|| t.to_string())
}

impl Operator for Scan {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new(
                "raw",
                PortType::Dir,
                "the raw tree: step JSON, source videos, ASR JSON",
            )]),
            outputs: Ports::Fixed(vec![
                Port::new("steps", PortType::Table, "one row per step"),
                Port::new(
                    "report",
                    PortType::File,
                    "JSON: skipped files, time disagreements, alignment problems",
                ),
            ]),
            params: vec![
                ParamSpec::with_default(
                    "steps_dir",
                    ParamKind::String,
                    json!("dataset"),
                    "step files: <steps_dir>/<subject>/<unit>/step/",
                ),
                ParamSpec::with_default(
                    "videos_dir",
                    ParamKind::String,
                    json!("source_video"),
                    "videos: <videos_dir>/<subject>/<unit>/",
                ),
                ParamSpec::with_default(
                    "asr_dir",
                    ParamKind::String,
                    json!("annotations"),
                    "ASR files: <asr_dir>/<subject>/<unit>/asr/",
                ),
                ParamSpec::with_default(
                    "times",
                    ParamKind::String,
                    json!("given"),
                    "which step times to cut by: `given` (the original) or `derived` (spec §A.4)",
                ),
            ],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let raw = &ctx.input("raw")?.path;
        let (rows, report) = scan(
            raw,
            &cfg.steps_dir,
            &cfg.videos_dir,
            &cfg.asr_dir,
            cfg.derived,
        )?;
        ctx.log(&format!(
            "{} experiments, {} steps, {} skipped, {} time disagreements, {} alignment problems",
            report.experiments,
            rows.len(),
            report.skipped.len(),
            report.disagreements.len(),
            report.alignment.len()
        ));
        write_steps(&rows, &ctx.output("steps")?.path)?;
        let text = py_json_indent(&report.to_json(rows.len()), 2);
        write_file(&ctx.output("report")?.path, text.as_bytes())?;
        Ok(())
    }
}
