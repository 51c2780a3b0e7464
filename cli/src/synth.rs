//! `expflow synth expstar`: a synthetic raw tree in ExpStar's layout (spec §A.1), for tests
//! and benchmarks at scale.
//!
//! `OUT/dataset/<subject>/<unit>/step/<NN>-<title>.json`,
//! `OUT/annotations/<subject>/<unit>/asr/<NN>_<title>.json` (every third experiment uses `_`,
//! to exercise the matching rules) and `OUT/source_video/<subject>/<unit>/<NN>-<title>.mp4`,
//! made with ffmpeg's `testsrc2` and `sine` sources (small, 10 fps, deterministic encoder
//! settings). Step times follow the rule of spec §A.4 exactly: a step starts at its first
//! subtitle and ends where the next step's first subtitle starts (the last one at its last
//! subtitle's end). Text is Chinese (`text`, `step_zh`) and English (`text_en`, `step_en`);
//! every other subtitle carries a safety or principle note. Everything is a function of the
//! seed and the sizes: the same command writes the same bytes.
//!
//! Beside the tree, `OUT/corpus/` holds a small passages corpus for the retrieval stage
//! (spec §D) in both of its shapes: `psgs_w100.tsv` (`id\ttext\ttitle`, a header, quoted
//! texts as the Wikipedia dump has them) and `kb.jsonl` (`title`, `section`, `text`): a
//! passage on each experiment title, safety note and principle the tree uses, and a few
//! unrelated ones.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

#[derive(Subcommand)]
pub enum SynthCommand {
    /// A raw ExpStar tree: step JSON, ASR JSON and a test video per experiment.
    Expstar {
        /// Number of subjects (the seven prompt families first, then generic ones).
        #[arg(long, default_value_t = 2)]
        subjects: usize,
        /// Experiments per subject.
        #[arg(long, default_value_t = 3)]
        experiments: usize,
        /// Steps per experiment.
        #[arg(long, default_value_t = 4)]
        steps: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write no videos (the step and ASR files only).
        #[arg(long)]
        no_videos: bool,
        /// The directory to write into.
        out: PathBuf,
    },
    /// MAC-Bench records (alpaca JSON and MAC CSV) with generated cover PNGs.
    Mac(crate::synth_mac::MacArgs),
}

pub fn run(cmd: SynthCommand) -> Result<u8> {
    match cmd {
        SynthCommand::Mac(args) => crate::synth_mac::run(args),
        SynthCommand::Expstar {
            subjects,
            experiments,
            steps,
            seed,
            no_videos,
            out,
        } => {
            let n = expstar(&out, subjects, experiments, steps, seed, !no_videos)?;
            println!(
                "wrote {n} experiments ({subjects} subjects × {experiments}, {steps} steps each) to {}",
                out.display()
            );
            Ok(0)
        }
    }
}

const SUBJECTS: [(&str, &str); 21] = [
    ("chemistry", "ch"),
    ("physics", "phy"),
    ("biology", "bio"),
    ("kid", "kid"),
    ("electronic", "ele"),
    ("civil", "civ"),
    ("material", "mat"),
    ("astronomy", "ast"),
    ("geology", "geo"),
    ("medicine", "med"),
    ("optics", "opt"),
    ("mechanics", "mec"),
    ("ecology", "eco"),
    ("genetics", "gen"),
    ("robotics", "rob"),
    ("acoustics", "aco"),
    ("thermal", "thm"),
    ("agriculture", "agr"),
    ("environment", "env"),
    ("energy", "enr"),
    ("computing", "cmp"),
];

const TITLES: [(&str, &str); 8] = [
    ("酸碱中和", "Acid-Base Neutralization"),
    ("铁的生锈", "Rusting of Iron"),
    ("光的折射", "Refraction of Light"),
    ("植物的蒸腾作用", "Plant Transpiration"),
    ("电路的串联与并联", "Series and Parallel Circuits"),
    ("一氧化碳的燃烧", "Combustion of Carbon Monoxide"),
    ("水的电解", "Electrolysis of Water"),
    ("摩擦力的测量", "Measuring Friction"),
];

const ACTIONS: [(&str, &str); 8] = [
    ("取一支干净的试管", "Take a clean test tube"),
    ("加入少量溶液", "Add a small amount of the solution"),
    ("用酒精灯加热", "Heat it with the alcohol lamp"),
    ("观察颜色的变化", "Watch how the colour changes"),
    ("连接导线和电池", "Connect the wires to the battery"),
    ("记录测量的数据", "Write down the measured values"),
    ("轻轻摇晃容器", "Gently shake the container"),
    ("调整装置的位置", "Adjust the position of the apparatus"),
];

const SAFETY: [(&str, &str); 4] = [
    ("佩戴护目镜", "Wear safety goggles during this step."),
    (
        "远离明火",
        "Keep flammable materials away from open flames.",
    ),
    ("小心高温", "The glass stays hot; handle it with tongs."),
    ("保持通风", "Keep the room well ventilated."),
];

const PRINCIPLES: [&str; 4] = [
    "HCl + NaOH → NaCl + H₂O",
    "2H₂O → 2H₂↑ + O₂↑",
    "n₁ sin θ₁ = n₂ sin θ₂",
    "I = U / R",
];

/// The corpus's passages: (title, section, text).
fn corpus_passages() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (zh, en) in TITLES {
        out.push((
            en.to_string(),
            "Experiment".to_string(),
            format!(
                "The {} experiment ({zh}) is a classroom demonstration: the steps are done in order, the changes are observed and recorded, and the result is explained by the principle behind it.",
                en.to_lowercase()
            ),
        ));
    }
    for (zh, en) in SAFETY {
        out.push((
            "Laboratory safety".to_string(),
            "Precautions".to_string(),
            format!("{en} ({zh}) Laboratory rules ask for this whenever heat, flames or chemicals are used."),
        ));
    }
    for p in PRINCIPLES {
        out.push((
            "Principle".to_string(),
            "Equation".to_string(),
            format!("The relation {p} describes what happens in the experiment and lets the result be predicted."),
        ));
    }
    for (title, text) in [
        (
            "Photosynthesis",
            "Green plants use light to turn carbon dioxide and water into glucose and oxygen.",
        ),
        (
            "Plate tectonics",
            "The Earth's lithosphere is divided into plates that move a few centimetres a year.",
        ),
        (
            "Sound",
            "Sound is a pressure wave that travels through a medium; it cannot travel through a vacuum.",
        ),
    ] {
        out.push((title.to_string(), "Overview".to_string(), text.to_string()));
    }
    out
}

/// Writes `OUT/corpus/psgs_w100.tsv` and `OUT/corpus/kb.jsonl`; returns the passage count.
pub fn corpus(out: &Path) -> Result<usize> {
    let passages = corpus_passages();
    let mut tsv = String::from("id\ttext\ttitle\n");
    let mut jsonl = String::new();
    for (i, (title, section, text)) in passages.iter().enumerate() {
        tsv.push_str(&format!(
            "{}\t\"{}\"\t{title}\n",
            i + 1,
            text.replace('"', "\"\"")
        ));
        jsonl.push_str(&serde_json::to_string(
            &json!({"title": title, "section": section, "text": text}),
        )?);
        jsonl.push('\n');
    }
    write(&out.join("corpus/psgs_w100.tsv"), &tsv)?;
    write(&out.join("corpus/kb.jsonl"), &jsonl)?;
    Ok(passages.len())
}

/// SplitMix64, seeded from the seed and a label, so each experiment's content depends only
/// on (seed, subject, experiment) and not on how many others there are.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, label: &str) -> Rng {
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
        for b in label.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn time(secs: u64) -> String {
    format!("{}:{:02}:{:02}", secs / 3600, (secs / 60) % 60, secs % 60)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::create_dir_all(path.parent().context("a path with a parent")?)?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes the tree; returns the number of experiments.
pub fn expstar(
    out: &Path,
    subjects: usize,
    experiments: usize,
    steps: usize,
    seed: u64,
    videos: bool,
) -> Result<usize> {
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    let mut count = 0;
    for s in 0..subjects {
        let (subject, prefix) = match SUBJECTS.get(s) {
            Some((a, b)) => (a.to_string(), b.to_string()),
            None => (format!("subject{s}"), format!("s{s}")),
        };
        let unit = format!("{prefix}_{}", 10 + s);
        for e in 1..=experiments {
            let mut rng = Rng::new(seed, &format!("{subject}/{e}"));
            let (tz, te) = TITLES[rng.below(TITLES.len() as u64) as usize];
            let num = format!("{e:02}");
            let title_zh = format!("{tz}{e}");
            let title_en = format!("{te} {e}");
            let name = format!("{num}-{title_zh}");
            let mut subtitles = Vec::new();
            let mut step_docs = Vec::new();
            let mut t = 1 + rng.below(2);
            let mut id = 1u64;
            for k in 1..=steps as u64 {
                let n_subs = 2 + rng.below(2);
                let first = id;
                let mut ids = Vec::new();
                for j in 0..n_subs {
                    let (az, ae) = ACTIONS[rng.below(ACTIONS.len() as u64) as usize];
                    let len = 2 + rng.below(3);
                    let mut sub = json!({
                        "id": id, "startTime": time(t), "endTime": time(t + len),
                        "text": format!("{az}（{k}.{j}）"), "text_en": format!("{ae} ({k}.{j})"),
                    });
                    if id.is_multiple_of(2) {
                        if rng.below(2) == 0 {
                            let (sz, se) = SAFETY[rng.below(SAFETY.len() as u64) as usize];
                            sub["safety_zh"] = json!(sz);
                            sub["safety_en"] = json!(se);
                        } else {
                            let p = PRINCIPLES[rng.below(PRINCIPLES.len() as u64) as usize];
                            sub["principle_zh"] = json!(p);
                            sub["principle_en"] = json!(p);
                        }
                    }
                    sub["step"] = json!(k);
                    subtitles.push(sub);
                    ids.push(id);
                    id += 1;
                    t += len + rng.below(2);
                }
                let (az, ae) = ACTIONS[rng.below(ACTIONS.len() as u64) as usize];
                step_docs.push((k, first, ids, az, ae));
            }
            let start_of = |id: u64| subtitles[(id - 1) as usize]["startTime"].clone();
            let steps_json: Vec<Value> = step_docs
                .iter()
                .enumerate()
                .map(|(i, (k, first, ids, az, ae))| {
                    let end = match step_docs.get(i + 1) {
                        Some(next) => start_of(next.1),
                        None => subtitles[(*ids.last().unwrap_or(first) - 1) as usize]["endTime"].clone(),
                    };
                    json!({"step": k, "step_zh": format!("第{k}步：{az}"), "step_en": format!("Step {k}: {ae}"),
                           "ASR_id": ids, "startTime": start_of(*first), "endTime": end})
                })
                .collect();
            let step_doc = json!({"summary": format!("本实验演示{title_zh}。"), "title_zh": title_zh,
                                  "title_en": title_en, "steps": steps_json});
            write(
                &out.join(format!("dataset/{subject}/{unit}/step/{name}.json")),
                &serde_json::to_string_pretty(&step_doc)?,
            )?;
            let asr_name = if e.is_multiple_of(3) {
                format!("{num}_{title_zh}")
            } else {
                name.clone()
            };
            write(
                &out.join(format!("annotations/{subject}/{unit}/asr/{asr_name}.json")),
                &serde_json::to_string_pretty(&json!({"subtitles": subtitles}))?,
            )?;
            if videos {
                let duration = t + 1;
                let path = out.join(format!("source_video/{subject}/{unit}/{name}.mp4"));
                std::fs::create_dir_all(path.parent().context("a parent")?)?;
                let freq = 220 + 20 * rng.below(20);
                let status = Command::new("ffmpeg")
                    .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
                    .arg(format!("testsrc2=size=160x120:rate=10:duration={duration}"))
                    .args(["-f", "lavfi", "-i"])
                    .arg(format!("sine=frequency={freq}:sample_rate=22050:duration={duration}"))
                    .args(["-c:v", "libx264", "-preset", "ultrafast", "-threads", "1", "-c:a", "aac",
                           "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
                           "-map_metadata", "-1", "-shortest", "-y"])
                    .arg(&path)
                    .status()
                    .context("cannot run ffmpeg; install it (Debian: apt-get install ffmpeg) or pass --no-videos")?;
                if !status.success() {
                    bail!("ffmpeg failed ({status}) writing {}", path.display());
                }
            }
            count += 1;
        }
    }
    corpus(out)?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push((
                        p.strip_prefix(dir).unwrap().display().to_string(),
                        std::fs::read(&p).unwrap(),
                    ));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn same_seed_same_bytes_and_times_follow_the_rule() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        expstar(&a, 2, 3, 4, 5, false).unwrap();
        expstar(&b, 2, 3, 4, 5, false).unwrap();
        expstar(&c, 2, 3, 4, 6, false).unwrap();
        assert_eq!(digest_tree(&a), digest_tree(&b));
        assert_ne!(digest_tree(&a), digest_tree(&c));
        let files = digest_tree(&a);
        // The corpus, in both shapes, parses as the retrieval stage reads it.
        for name in ["corpus/psgs_w100.tsv", "corpus/kb.jsonl"] {
            let (_, bytes) = files.iter().find(|(p, _)| p == name).unwrap();
            let text = std::str::from_utf8(bytes).unwrap();
            let passages = expflow_operators::expstar::corpus::parse(text, "auto", name).unwrap();
            assert_eq!(passages.len(), corpus_passages().len(), "{name}");
            assert!(
                passages
                    .iter()
                    .any(|p| p.text.contains("Wear safety goggles"))
            );
        }
        assert!(files.iter().any(|(p, _)| p.contains("asr/03_")));
        for (p, bytes) in files.iter().filter(|(p, _)| p.starts_with("dataset/")) {
            let doc: Value = serde_json::from_slice(bytes).unwrap();
            let asr_rel = p
                .replacen("dataset/", "annotations/", 1)
                .replacen("/step/", "/asr/", 1);
            let (dir, name) = asr_rel.rsplit_once('/').unwrap();
            let alt = format!("{dir}/{}", name.replacen('-', "_", 1));
            let asr_path = files
                .iter()
                .find(|(q, _)| *q == asr_rel || *q == alt)
                .unwrap();
            let asr: Value = serde_json::from_slice(&asr_path.1).unwrap();
            let subs = asr["subtitles"].as_array().unwrap();
            let steps = doc["steps"].as_array().unwrap();
            assert_eq!(steps.len(), 4);
            for (i, st) in steps.iter().enumerate() {
                let first = st["ASR_id"][0].as_u64().unwrap() as usize - 1;
                assert_eq!(st["startTime"], subs[first]["startTime"]);
                if let Some(next) = steps.get(i + 1) {
                    let nf = next["ASR_id"][0].as_u64().unwrap() as usize - 1;
                    assert_eq!(st["endTime"], subs[nf]["startTime"]);
                }
            }
        }
    }
}
