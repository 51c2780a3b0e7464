//! Tests of the ExpStar operators through the engine's harness: the scan rules on a
//! hand-made tree, clip cutting with the real ffmpeg (bytes and per-step memoisation),
//! golden comparisons against `../shared/fixtures/expstar-demo`, and the dataset stages.
//!
//! Tests that need ffmpeg or the shared fixtures say `SKIPPED: …` and return when these are
//! missing, so their absence is visible in the output rather than silent; under `CI=true`
//! they fail instead (`.ci/run` provides both).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use expflow_engine::harness::{Harness, HarnessRun};
use expflow_engine::{Operator, PortType};
use expflow_operators::expstar::{
    self, AddRag, ApplySplit, BaselineRows, CutClips, DpoPairs, EvalRows, ExportLlamaFactory,
    ExportSwift, FromJsonl, Merge, Postprocess, Scan, Split, StepMeta, TemplateRows, ToJsonl,
    py_json, read_jsonl, read_rows, steps::read_steps,
};
use serde_json::{Value, json};

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn fixtures() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/expstar-demo");
    if p.is_dir() {
        Some(p)
    } else {
        expflow_tests::skip::skip_or_fail(&format!(
            "{} is missing (the ../shared checkout)",
            p.display()
        ));
        None
    }
}

fn have_ffmpeg() -> bool {
    let ok = Command::new("ffmpeg").arg("-version").output().is_ok()
        && Command::new("ffprobe").arg("-version").output().is_ok();
    if !ok {
        expflow_tests::skip::skip_or_fail(
            "ffmpeg/ffprobe are not installed (apt-get install ffmpeg)",
        );
    }
    ok
}

fn run(
    h: &mut Harness,
    op: &dyn Operator,
    inputs: &[(&str, PortType, &Path)],
    params: Value,
) -> HarnessRun {
    h.run(op, inputs, params, &[])
        .unwrap_or_else(|e| panic!("{}: {e}", op.kind()))
}

/// A step file and an ASR file for `n` steps of 2 subtitles each (3 s apart).
fn experiment(n: usize, title_en: &str) -> (String, String) {
    let t = |s: u64| expstar::format_time(s);
    let mut steps = Vec::new();
    let mut subs = Vec::new();
    for k in 1..=n as u64 {
        let a = 2 * k - 1;
        let start = (k - 1) * 6 + 1;
        subs.push(json!({"id": a, "startTime": t(start), "endTime": t(start + 2), "text": format!("第{k}步"), "text_en": format!("Step {k} narration"), "step": k}));
        let mut b = json!({"id": a + 1, "startTime": t(start + 3), "endTime": t(start + 5), "text": "说明", "text_en": format!("Step {k} more"), "step": k});
        if k % 2 == 0 {
            b["safety_en"] = json!(format!("Careful at step {k}"));
            b["safety_zh"] = json!("小心");
        }
        subs.push(b);
        let end = if k as usize == n {
            start + 5
        } else {
            start + 6
        };
        steps.push(json!({"step": k, "step_zh": format!("步骤{k}"), "step_en": format!("Do thing {k}"), "ASR_id": [a, a + 1], "startTime": t(start), "endTime": t(end)}));
    }
    (
        py_json(&json!({"summary": "摘要", "title_en": title_en, "steps": steps})),
        py_json(&json!({"subtitles": subs})),
    )
}

fn raw_tree(root: &Path, video: Option<&Path>) {
    let (s1, a1) = experiment(11, "Eleven Steps");
    write(
        &root.join("dataset/chemistry/ch_1/step/01-十一步.json"),
        &s1,
    );
    write(
        &root.join("annotations/chemistry/ch_1/asr/01_十一步.json"),
        &a1,
    );
    let (s2, a2) = experiment(2, "Two Steps");
    write(&root.join("dataset/chemistry/ch_1/step/02_两步.json"), &s2);
    write(
        &root.join("annotations/chemistry/ch_1/asr/02-两步.json"),
        &a2,
    );
    // No video for experiment 03: skipped and reported.
    write(
        &root.join("dataset/chemistry/ch_1/step/03-无视频.json"),
        &s2,
    );
    write(&root.join("dataset/chemistry/ch_1/step/notes.json"), "{}");
    for name in ["01-十一步.mp4", "02_两步 (final).mkv"] {
        let p = root.join("source_video/chemistry/ch_1").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        match video {
            Some(v) => {
                std::fs::copy(v, &p).unwrap();
            }
            None => std::fs::write(&p, b"not a video").unwrap(),
        }
    }
}

#[test]
fn scan_matches_files_orders_steps_numerically_and_derives_times() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw");
    raw_tree(&raw, None);
    // Make one given time disagree with the subtitles.
    let p = raw.join("dataset/chemistry/ch_1/step/02_两步.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replacen("\"0:00:07\"", "\"0:00:09\"", 1);
    std::fs::write(&p, text).unwrap();
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let r = run(&mut h, &Scan, &[("raw", PortType::Dir, &raw)], json!({}));
    let rows = read_steps(&r.outputs["steps"]).unwrap();
    assert_eq!(rows.len(), 13);
    let stems: Vec<String> = rows.iter().map(|r| r.stem()).collect();
    assert_eq!(stems[8], "01-十一步_step_9");
    assert_eq!(stems[9], "01-十一步_step_10");
    assert_eq!(stems[10], "01-十一步_step_11");
    assert_eq!(stems[11], "02-两步_step_1");
    assert_eq!(
        rows[11].video,
        "source_video/chemistry/ch_1/02_两步 (final).mkv"
    );
    assert_eq!(
        rows[11].asr_file,
        "annotations/chemistry/ch_1/asr/02-两步.json"
    );
    assert_eq!(rows[0].title_en, "Eleven Steps");
    // Derived: start of the first subtitle → start of the next step's first subtitle.
    assert_eq!(
        (rows[0].derived_start.as_str(), rows[0].derived_end.as_str()),
        ("0:00:01", "0:00:07")
    );
    assert_eq!(rows[10].derived_end, "0:01:06");
    assert!(rows[..11].iter().all(|r| r.times_agree));
    assert!(!rows[11].times_agree && rows[12].times_agree);
    assert_eq!(rows[11].given_end, "0:00:09");
    assert_eq!(
        rows[11].end, "0:00:09",
        "`times: given` cuts by the given times"
    );
    let anns: Value = serde_json::from_str(&rows[1].annotations).unwrap();
    assert_eq!(anns[1]["safety_en"], "Careful at step 2");
    let report: Value =
        serde_json::from_slice(&std::fs::read(&r.outputs["report"]).unwrap()).unwrap();
    assert_eq!(
        report["time_disagreements"][0]["derived"],
        json!(["0:00:01", "0:00:07"])
    );
    assert_eq!(
        report["time_disagreements"][0]["given"],
        json!(["0:00:01", "0:00:09"])
    );
    let skipped = report["skipped"].to_string();
    assert!(
        skipped.contains("03-无视频.json") && skipped.contains("notes.json"),
        "{skipped}"
    );
    // Derived times on request.
    let r = run(
        &mut h,
        &Scan,
        &[("raw", PortType::Dir, &raw)],
        json!({"times": "derived"}),
    );
    let rows = read_steps(&r.outputs["steps"]).unwrap();
    assert_eq!(rows[11].end, "0:00:07");
}

#[test]
fn scan_does_not_depend_on_listing_order() {
    // Two trees with the same content created in opposite orders give the same bytes.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    raw_tree(&a, None);
    let (s2, a2) = experiment(2, "Two Steps");
    write(&b.join("annotations/chemistry/ch_1/asr/02-两步.json"), &a2);
    write(&b.join("dataset/chemistry/ch_1/step/02_两步.json"), &s2);
    raw_tree(&b, None);
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let ra = run(&mut h, &Scan, &[("raw", PortType::Dir, &a)], json!({}));
    let rb = run(&mut h, &Scan, &[("raw", PortType::Dir, &b)], json!({}));
    assert_eq!(
        std::fs::read(&ra.outputs["steps"]).unwrap(),
        std::fs::read(&rb.outputs["steps"]).unwrap()
    );
}

fn test_video(dir: &Path) -> PathBuf {
    let v = dir.join("src.mp4");
    let status = Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x120:rate=10:duration=80",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=80",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
            "-shortest",
            "-y",
        ])
        .arg(&v)
        .status()
        .unwrap();
    assert!(status.success());
    v
}

#[test]
fn clips_are_cut_identically_and_memoised_per_step() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let video = test_video(dir.path());
    let raw = dir.path().join("raw");
    raw_tree(&raw, Some(&video));
    let params = json!({"crf": 30, "preset": "ultrafast"});
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let scan = run(&mut h, &Scan, &[("raw", PortType::Dir, &raw)], json!({}));
    let steps = scan.outputs["steps"].clone();
    let first = run(
        &mut h,
        &CutClips,
        &[
            ("steps", PortType::Table, &steps),
            ("raw", PortType::Dir, &raw),
        ],
        params.clone(),
    );
    // Step 1 of both experiments is the same cut of the same video: it is cut once.
    assert_eq!(first.memo, (1, 12), "{}", first.log);
    let rows = read_steps(&first.outputs["steps"]).unwrap();
    assert!(rows.iter().all(|r| r.clip_ok), "{}", first.log);
    let clip = first.outputs["clips"].join(&rows[9].clip);
    assert!(
        rows[9]
            .clip
            .ends_with("video/01-十一步/01-十一步_step_10.mp4")
    );
    // A fresh store cuts again, and the bytes are the same.
    let mut h2 = Harness::new(&dir.path().join("ws2")).unwrap();
    let scan2 = run(&mut h2, &Scan, &[("raw", PortType::Dir, &raw)], json!({}));
    let again = run(
        &mut h2,
        &CutClips,
        &[
            ("steps", PortType::Table, &scan2.outputs["steps"]),
            ("raw", PortType::Dir, &raw),
        ],
        params.clone(),
    );
    assert_eq!(again.memo, (1, 12));
    let clip2 = again.outputs["clips"].join(&rows[9].clip);
    assert_eq!(
        std::fs::read(&clip).unwrap(),
        std::fs::read(&clip2).unwrap(),
        "x264 output must be bit-identical"
    );
    // Same store, nothing changed: every clip comes from the store.
    let cached = run(
        &mut h,
        &CutClips,
        &[
            ("steps", PortType::Table, &steps),
            ("raw", PortType::Dir, &raw),
        ],
        params.clone(),
    );
    assert_eq!(cached.memo, (13, 0));
    // Edit one step's times: only that step is cut again.
    let p = raw.join("dataset/chemistry/ch_1/step/02_两步.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replacen("\"0:00:07\"", "\"0:00:06\"", 1);
    std::fs::write(&p, text).unwrap();
    let scan3 = run(&mut h, &Scan, &[("raw", PortType::Dir, &raw)], json!({}));
    let edited = run(
        &mut h,
        &CutClips,
        &[
            ("steps", PortType::Table, &scan3.outputs["steps"]),
            ("raw", PortType::Dir, &raw),
        ],
        params.clone(),
    );
    assert_eq!(edited.memo, (12, 1));
    // Probe: the clip of step 10 lasts 6 s at 10 fps.
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
        .arg(&clip)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "60");
    // Step metadata from the cut table.
    let meta = run(
        &mut h,
        &StepMeta,
        &[("steps", PortType::Table, &edited.outputs["steps"])],
        json!({}),
    );
    let doc: Value = serde_json::from_slice(
        &std::fs::read(
            meta.outputs["meta"].join("chemistry/ch_1/json/02-两步/02-两步_step_1.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(doc["clip_start"], "0:00:01");
    assert_eq!(doc["clip_end"], "0:00:06");
    assert_eq!(
        doc["clip_video_path"],
        "/path/to/chemistry/ch_1/video/02-两步/02-两步_step_1.mp4"
    );
    assert_eq!(
        doc["original_video"],
        "/path/to/chemistry/ch_1/02_两步 (final).mkv"
    );
}

#[test]
fn a_clip_outside_the_video_is_a_reported_problem() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("short.mp4");
    let status = Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x48:rate=5:duration=4",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-y",
        ])
        .arg(&video)
        .status()
        .unwrap();
    assert!(status.success());
    let raw = dir.path().join("raw");
    let (s, a) = experiment(2, "Short");
    write(&raw.join("dataset/physics/phy_1/step/01-短.json"), &s);
    write(&raw.join("annotations/physics/phy_1/asr/01-短.json"), &a);
    std::fs::create_dir_all(raw.join("source_video/physics/phy_1")).unwrap();
    std::fs::copy(&video, raw.join("source_video/physics/phy_1/01-短.mp4")).unwrap();
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let scan = run(&mut h, &Scan, &[("raw", PortType::Dir, &raw)], json!({}));
    let cut = run(
        &mut h,
        &CutClips,
        &[
            ("steps", PortType::Table, &scan.outputs["steps"]),
            ("raw", PortType::Dir, &raw),
        ],
        json!({"preset": "ultrafast"}),
    );
    let rows = read_steps(&cut.outputs["steps"]).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.clip_ok).collect::<Vec<_>>(),
        [true, false],
        "{}",
        cut.log
    );
    assert!(
        cut.log.contains("problem: physics/phy_1/01-短_step_2"),
        "{}",
        cut.log
    );
    let meta = run(
        &mut h,
        &StepMeta,
        &[("steps", PortType::Table, &cut.outputs["steps"])],
        json!({}),
    );
    assert!(
        !meta.outputs["meta"]
            .join("physics/phy_1/json/01-短/01-短_step_2.json")
            .exists()
    );
}

/// The Demo's step files arranged as a step-metadata tree.
fn demo_meta(fx: &Path, dir: &Path) -> PathBuf {
    let meta = dir.join("meta");
    let exp = meta.join("chemistry/ch_67/json/02-一氧化碳的燃烧");
    std::fs::create_dir_all(&exp).unwrap();
    for e in std::fs::read_dir(fx.join("2pair-data/step-02-一氧化碳的燃烧")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), exp.join(e.file_name())).unwrap();
    }
    meta
}

/// The rows table at `rows` written as JSON Lines by `expstar.to_jsonl`.
fn to_jsonl(h: &mut Harness, rows: &Path) -> PathBuf {
    run(h, &ToJsonl, &[("rows", PortType::Table, rows)], json!({})).outputs["file"].clone()
}

fn fields_equal(got: &Value, want: &Value, skip: &[&str]) {
    let (g, w) = (got.as_object().unwrap(), want.as_object().unwrap());
    assert_eq!(g.keys().collect::<Vec<_>>(), w.keys().collect::<Vec<_>>());
    for (k, v) in w {
        if !skip.contains(&k.as_str()) {
            assert_eq!(&g[k], v, "field `{k}`");
        }
    }
}

#[test]
fn golden_baseline_rows_from_the_demo_step_files() {
    let Some(fx) = fixtures() else { return };
    let dir = tempfile::tempdir().unwrap();
    let meta = demo_meta(&fx, dir.path());
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let r = run(
        &mut h,
        &BaselineRows,
        &[("meta", PortType::Dir, &meta)],
        json!({"id_scheme": "counter"}),
    );
    let got = read_rows(&r.outputs["rows"]).unwrap();
    let want = read_jsonl(&fx.join("3baseline_dataset/ch_67-02-一氧化碳的燃烧.jsonl")).unwrap();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        // Intended difference: ids are counted from 0 within what is given (the original's
        // counter ran over the unit's other experiments first, in listing order).
        fields_equal(g, w, &["id"]);
        assert_eq!(g["id"], format!("ch_67_{i}"));
        assert_eq!(w["id"], format!("ch_67_{}", 271 + i));
    }
    // Byte for byte, apart from the ids and the Demo's missing final newline.
    // Byte for byte at the JSON Lines boundary (expstar.to_jsonl).
    let text = std::fs::read_to_string(to_jsonl(&mut h, &r.outputs["rows"])).unwrap();
    let want_text =
        std::fs::read_to_string(fx.join("3baseline_dataset/ch_67-02-一氧化碳的燃烧.jsonl"))
            .unwrap();
    let renumber = (0..5).fold(text.clone(), |t, i| {
        t.replace(&format!("\"ch_67_{i}\""), &format!("\"ch_67_{}\"", 271 + i))
    });
    assert_eq!(renumber.trim_end_matches('\n'), want_text);
    // The default ids name the step.
    let r = run(
        &mut h,
        &BaselineRows,
        &[("meta", PortType::Dir, &meta)],
        json!({}),
    );
    let got = read_rows(&r.outputs["rows"]).unwrap();
    assert_eq!(got[4]["id"], "ch_67_02_5");
}

#[test]
fn editing_one_steps_annotations_rebuilds_only_that_steps_row() {
    let Some(fx) = fixtures() else { return };
    let dir = tempfile::tempdir().unwrap();
    let meta = demo_meta(&fx, dir.path());
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    for op in [&BaselineRows as &dyn Operator, &TemplateRows] {
        let first = run(&mut h, op, &[("meta", PortType::Dir, &meta)], json!({}));
        let before = read_rows(&first.outputs["rows"]).unwrap();
        let again = run(&mut h, op, &[("meta", PortType::Dir, &meta)], json!({}));
        assert_eq!(
            again.memo,
            (5, 0),
            "{}: nothing changed, every row reused",
            op.kind()
        );
        assert_eq!(read_rows(&again.outputs["rows"]).unwrap(), before);
    }
    // Edit one annotation of step 3.
    let step3 = meta.join("chemistry/ch_67/json/02-一氧化碳的燃烧/02-一氧化碳的燃烧_step_3.json");
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&step3).unwrap()).unwrap();
    doc["annotations"][0]["text_en"] = json!("Light the gas at the outlet with a match");
    std::fs::write(&step3, serde_json::to_string(&doc).unwrap()).unwrap();
    for op in [&BaselineRows as &dyn Operator, &TemplateRows] {
        let r = run(&mut h, op, &[("meta", PortType::Dir, &meta)], json!({}));
        assert_eq!(
            r.memo,
            (4, 1),
            "{}: only step 3's row is rebuilt",
            op.kind()
        );
        let rows = read_rows(&r.outputs["rows"]).unwrap();
        assert!(
            rows[2].to_string().contains("Light the gas at the outlet"),
            "{}",
            op.kind()
        );
    }
}

/// A retrieval file that reproduces the Demo's passages and verdicts.
fn demo_retrieval(want: &[Value]) -> Value {
    let mut by_video: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for row in want {
        let msgs = row["messages"].as_array().unwrap();
        if msgs.len() < 5 {
            continue;
        }
        let para = msgs[3]["content"].as_str().unwrap();
        let text = para
            .strip_prefix("<paragraph>")
            .unwrap()
            .strip_suffix("</paragraph>")
            .unwrap();
        let relevant = if msgs[4]["content"]
            .as_str()
            .unwrap()
            .starts_with("[Relevant]")
        {
            5
        } else {
            1
        };
        by_video
            .entry(row["videos"][0].as_str().unwrap().to_string())
            .or_default()
            .push(json!({"id": "x", "title": "t", "text": text, "relevant": relevant}));
    }
    Value::Array(
        by_video
            .into_iter()
            .map(|(v, docs)| json!({"video_path": v, "is_rag": true, "documents": docs}))
            .collect(),
    )
}

#[test]
fn golden_expstar_rows_from_the_demo_step_files() {
    let Some(fx) = fixtures() else { return };
    let dir = tempfile::tempdir().unwrap();
    let meta = demo_meta(&fx, dir.path());
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let t = run(
        &mut h,
        &TemplateRows,
        &[("meta", PortType::Dir, &meta)],
        json!({"id_scheme": "counter"}),
    );
    let template = read_rows(&t.outputs["rows"]).unwrap();
    assert_eq!(template.len(), 5);
    assert_eq!(
        template[0]["messages"][3]["content"],
        "<paragraph>passage</paragraph>"
    );
    assert!(
        template[0]["messages"][4]["content"]
            .as_str()
            .unwrap()
            .starts_with("[Is Relevant?]\n<Principle>\n")
    );
    assert_eq!(template[4]["messages"].as_array().unwrap().len(), 3);
    let want = read_jsonl(&fx.join("4Expstar_dataset/ch_67-02-一氧化碳的燃烧.jsonl")).unwrap();
    let retrieval = dir.path().join("retrieval.json");
    std::fs::write(&retrieval, py_json(&demo_retrieval(&want))).unwrap();
    let r = run(
        &mut h,
        &AddRag,
        &[
            ("rows", PortType::Table, &t.outputs["rows"]),
            ("retrieval", PortType::File, &retrieval),
        ],
        json!({}),
    );
    let got = read_rows(&r.outputs["rows"]).unwrap();
    assert_eq!(
        got.len(),
        want.len(),
        "step 1 → 3 rows, 2 and 4 → 1, 3 → 2, 5 stays"
    );
    for (g, w) in got.iter().zip(&want) {
        fields_equal(g, w, &["id"]);
        let gi: usize = g["id"]
            .as_str()
            .unwrap()
            .trim_start_matches("ch_67_")
            .parse()
            .unwrap();
        assert_eq!(w["id"], format!("ch_67_{}", 271 + gi));
    }
}

#[test]
fn golden_step_times_derived_from_the_raw_demo_files() {
    let Some(fx) = fixtures() else { return };
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw");
    // The Demo flattens the layout; experiment 01's files, with the Demo video standing in.
    let copy = |from: &str, to: &str| {
        let p = raw.join(to);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::copy(fx.join(from), p).unwrap();
    };
    copy(
        "1data/step-ch_67-01-CO还原氧化铁.json",
        "dataset/chemistry/ch_67/step/01-CO还原氧化铁.json",
    );
    copy(
        "1data/asr-ch_67-01-CO还原氧化铁.json",
        "annotations/chemistry/ch_67/asr/01-CO还原氧化铁.json",
    );
    write(
        &raw.join("source_video/chemistry/ch_67/01-CO还原氧化铁.mp4"),
        "placeholder",
    );
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let r = run(&mut h, &Scan, &[("raw", PortType::Dir, &raw)], json!({}));
    let rows = read_steps(&r.outputs["steps"]).unwrap();
    assert_eq!(rows.len(), 6);
    for row in &rows {
        assert_eq!(
            (&row.derived_start, &row.derived_end),
            (&row.given_start, &row.given_end),
            "step {}",
            row.step_index
        );
        assert!(row.times_agree);
    }
    let report: Value =
        serde_json::from_slice(&std::fs::read(&r.outputs["report"]).unwrap()).unwrap();
    assert_eq!(report["time_disagreements"], json!([]));
    assert_eq!(report["alignment_problems"], json!([]));
    // The pair files of experiment 02 follow the same rule: each clip starts at its first
    // annotation and ends where the next step's first annotation starts.
    let meta = demo_meta(&fx, dir.path());
    let docs: Vec<Value> = (1..=5)
        .map(|k| {
            serde_json::from_slice(
                &std::fs::read(meta.join(format!(
                    "chemistry/ch_67/json/02-一氧化碳的燃烧/02-一氧化碳的燃烧_step_{k}.json"
                )))
                .unwrap(),
            )
            .unwrap()
        })
        .collect();
    for k in 0..5 {
        assert_eq!(
            docs[k]["clip_start"],
            docs[k]["annotations"][0]["startTime"]
        );
        if k + 1 < 5 {
            assert_eq!(
                docs[k]["clip_end"],
                docs[k + 1]["annotations"][0]["startTime"]
            );
        }
    }
}

#[test]
fn golden_postprocess_of_the_demo_results() {
    let Some(fx) = fixtures() else { return };
    let dir = tempfile::tempdir().unwrap();
    let want = read_jsonl(&fx.join("6Expstar_result/result.jsonl")).unwrap();
    let input: Vec<Value> = want
        .iter()
        .map(|w| {
            let mut m = w["evaluation_data"].as_object().unwrap().clone();
            m.insert("id".into(), w["id"].clone());
            Value::Object(m)
        })
        .collect();
    let p = dir.path().join("results.jsonl");
    expstar::write_jsonl(&p, &input).unwrap();
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    // The results file enters through the JSON Lines boundary.
    let p = run(
        &mut h,
        &FromJsonl,
        &[("file", PortType::File, &p)],
        json!({}),
    )
    .outputs["rows"]
        .clone();
    let r = run(
        &mut h,
        &Postprocess,
        &[("results", PortType::Table, &p)],
        json!({}),
    );
    let got = read_rows(&r.outputs["rows"]).unwrap();
    assert_eq!(got, want);
    let e = run(
        &mut h,
        &EvalRows,
        &[("rows", PortType::Table, &r.outputs["rows"])],
        json!({}),
    );
    let conv = read_rows(&e.outputs["rows"]).unwrap();
    assert_eq!(conv[0]["gt"]["feedback"], want[0]["labels"]);
    assert_eq!(conv[0]["pred"]["feedback"], want[0]["response"]);
    assert!(
        !conv[0]["pred"]["feedback"]
            .as_str()
            .unwrap()
            .contains("[Retrieval]")
    );
}

/// A rows table at `dir/name`, as the row stages pass them.
fn rows_file(dir: &Path, name: &str, rows: &[Value]) -> PathBuf {
    let p = dir.join(name);
    expstar::write_rows(&p, rows).unwrap();
    p
}

fn row(subject: &str, unit: &str, exp: &str, k: u32) -> Value {
    let stem = format!("{exp}_step_{k}");
    json!({
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "<video>u"}, {"role": "assistant", "content": format!("a {stem}")}],
        "videos": [format!("/path/to/{subject}/{unit}/video/{exp}/{stem}.mp4")],
        "id": format!("{unit}_{exp}_{k}"),
    })
}

#[test]
fn split_keeps_experiments_together_and_applies_to_other_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    for e in 1..=22 {
        for k in 1..=3 {
            rows.push(row("chemistry", "ch_1", &format!("{e:02}-实验"), k));
        }
    }
    rows.push(row("physics", "phy_1", "01-单个", 1));
    let p = rows_file(dir.path(), "rows.jsonl", &rows);
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let r = run(&mut h, &Split, &[("rows", PortType::Table, &p)], json!({}));
    let stats: Value =
        serde_json::from_slice(&std::fs::read(&r.outputs["stats"]).unwrap()).unwrap();
    assert_eq!(
        stats["stats"]["subjects"]["chemistry"],
        json!({"train_items": 60, "test_items": 6, "train_groups": 20, "test_groups": 2})
    );
    assert_eq!(
        stats["stats"]["subjects"]["physics"]["test_groups"], 1,
        "a single group goes to test"
    );
    assert_eq!(stats["ratios"], "10:1");
    let test = read_rows(&r.outputs["test"]).unwrap();
    let groups: std::collections::BTreeSet<String> = test
        .iter()
        .map(|r| expstar::split::group_key(r["videos"][0].as_str().unwrap()).1)
        .collect();
    assert_eq!(groups.len(), 3);
    // Same seed, same partition; another seed, another one.
    let again = run(&mut h, &Split, &[("rows", PortType::Table, &p)], json!({}));
    assert_eq!(
        std::fs::read(&again.outputs["assignment"]).unwrap(),
        std::fs::read(&r.outputs["assignment"]).unwrap()
    );
    let other = run(
        &mut h,
        &Split,
        &[("rows", PortType::Table, &p)],
        json!({"seed": 7}),
    );
    assert_ne!(
        std::fs::read(&other.outputs["test"]).unwrap(),
        std::fs::read(&r.outputs["test"]).unwrap()
    );
    // Applying the assignment to another row set gives the same partition.
    let applied = run(
        &mut h,
        &ApplySplit,
        &[
            ("rows", PortType::Table, &p),
            ("assignment", PortType::File, &r.outputs["assignment"]),
        ],
        json!({}),
    );
    assert_eq!(
        std::fs::read(&applied.outputs["test"]).unwrap(),
        std::fs::read(&r.outputs["test"]).unwrap()
    );
    // Merge in port order; a key only some inputs have stays absent where it was.
    let a = rows_file(dir.path(), "a.parquet", &[json!({"x": 1}), json!({"x": 2})]);
    let m = h
        .run(
            &Merge,
            &[
                ("b_test", PortType::Table, &r.outputs["test"]),
                ("a", PortType::Table, &a),
            ],
            json!({}),
            &[],
        )
        .unwrap();
    let merged = read_rows(&m.outputs["merged"]).unwrap();
    assert_eq!(merged.len(), 2 + test.len());
    assert_eq!(merged[..2], [json!({"x": 1}), json!({"x": 2})]);
    assert_eq!(merged[2..], test[..]);
    let text = std::fs::read_to_string(to_jsonl(&mut h, &m.outputs["merged"])).unwrap();
    assert!(
        text.starts_with("{\"x\": 1}\n{\"x\": 2}\n{\"messages\": [{\"role\": \"system\""),
        "{text}"
    );
    let stats: Value =
        serde_json::from_slice(&std::fs::read(&m.outputs["stats"]).unwrap()).unwrap();
    assert_eq!(stats["lines"], json!({"a": 2, "b_test": test.len()}));
}

#[test]
fn group_keys_follow_the_rules() {
    use expstar::split::group_key;
    assert_eq!(
        group_key("/d/processed/chemistry/ch_1/video/02-x/02-x_step_3.mp4").1,
        "chemistry/ch_1/02-x"
    );
    assert_eq!(
        group_key("/path/to/chemistry/ch_67/video/02-x/02-x_step_1.mp4"),
        ("chemistry".into(), "chemistry/ch_67/02-x".into())
    );
    assert_eq!(group_key("clips/02-x_step_12.mp4").1, "02-x");
}

#[test]
fn rag_less_picks_one_irrelevant_passage_by_seed() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = row("chemistry", "ch_1", "01-a", 1);
    r["messages"].as_array_mut().unwrap().extend([
        json!({"role": "user", "content": "<paragraph>passage</paragraph>"}),
        json!({"role": "assistant", "content": "[Is Relevant?]\n<Safety>\nx"}),
    ]);
    let mut plain = row("chemistry", "ch_1", "01-a", 2);
    plain["videos"] = json!(["/elsewhere.mp4"]);
    let p = rows_file(dir.path(), "rows.jsonl", &[r.clone(), plain.clone()]);
    let docs: Vec<Value> = (0..5)
        .map(|i| json!({"text": format!("doc {i}"), "relevant": if i == 2 { 4 } else { i % 3 }}))
        .collect();
    let ret = dir.path().join("ret.json");
    std::fs::write(
        &ret,
        py_json(&json!([{"video_path": r["videos"][0], "is_rag": true, "documents": docs}])),
    )
    .unwrap();
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let out = run(
        &mut h,
        &AddRag,
        &[
            ("rows", PortType::Table, &p),
            ("retrieval", PortType::File, &ret),
        ],
        json!({"less": true, "seed": 1}),
    );
    let rows = read_rows(&out.outputs["rows"]).unwrap();
    assert_eq!(
        rows.len(),
        3,
        "1 relevant + 1 irrelevant + the unmatched row"
    );
    assert_eq!(
        rows[0]["messages"][3]["content"],
        "<paragraph>doc 2</paragraph>"
    );
    assert_eq!(rows[0]["messages"][4]["content"], "[Relevant]\n<Safety>\nx");
    assert!(
        rows[1]["messages"][4]["content"]
            .as_str()
            .unwrap()
            .starts_with("[Irrelevant]")
    );
    assert_eq!(rows[2], plain);
    let again = run(
        &mut h,
        &AddRag,
        &[
            ("rows", PortType::Table, &p),
            ("retrieval", PortType::File, &ret),
        ],
        json!({"less": true, "seed": 1}),
    );
    assert_eq!(read_rows(&again.outputs["rows"]).unwrap(), rows);
    let all = run(
        &mut h,
        &AddRag,
        &[
            ("rows", PortType::Table, &p),
            ("retrieval", PortType::File, &ret),
        ],
        json!({"threshold": 2}),
    );
    assert_eq!(
        read_rows(&all.outputs["rows"]).unwrap().len(),
        6,
        "docs 2 and 5%3=2 relevant, 3 irrelevant, 1 unmatched"
    );
}

#[test]
fn dpo_pairs_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        row("chemistry", "ch_1", "01-a", 1),
        row("chemistry", "ch_1", "01-a", 2),
    ];
    let p = rows_file(dir.path(), "rows.jsonl", &rows);
    let id = rows[0]["id"].as_str().unwrap();
    let cands = [
        json!({"id": id, "response": "good 1", "reward": 1}),
        json!({"id": id, "response": "bad", "reward": 0}),
        json!({"id": id, "response": "good 2", "reward": true}),
        json!({"id": rows[1]["id"], "response": "only good", "reward": 1}),
    ];
    let c = rows_file(dir.path(), "cands.jsonl", &cands);
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let d = run(
        &mut h,
        &DpoPairs,
        &[
            ("candidates", PortType::Table, &c),
            ("rows", PortType::Table, &p),
        ],
        json!({}),
    );
    let pairs = read_rows(&d.outputs["pairs"]).unwrap();
    assert_eq!(pairs.len(), 2);
    assert_eq!(pairs[1]["messages"][2]["content"], "good 2");
    assert_eq!(pairs[1]["rejected_response"], "bad");
    assert_eq!(pairs[0]["messages"][1]["content"], "<video>u");
    // An unknown id names itself.
    let bad = rows_file(
        dir.path(),
        "bad.jsonl",
        &[
            json!({"id": "nope", "response": "a", "reward": 1}),
            json!({"id": "nope", "response": "b", "reward": 0}),
        ],
    );
    let e = h
        .run(
            &DpoPairs,
            &[
                ("candidates", PortType::Table, &bad),
                ("rows", PortType::Table, &p),
            ],
            json!({}),
            &[],
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("candidate id `nope`"), "{e}");
    // The clips the rows name, as expstar.cut_clips lays them out.
    let clips = dir.path().join("clips");
    for k in 1..=2 {
        write(
            &clips.join(format!("chemistry/ch_1/video/01-a/01-a_step_{k}.mp4")),
            &format!("clip {k}"),
        );
    }
    write(&clips.join("chemistry/ch_1/video/01-a/unused.mp4"), "other");
    // ms-swift: messages, videos, rejected_response; paths relative, the clips carried.
    let s = run(
        &mut h,
        &ExportSwift,
        &[
            ("rows", PortType::Table, &d.outputs["pairs"]),
            ("clips", PortType::Dir, &clips),
        ],
        json!({}),
    );
    let text = std::fs::read_to_string(&s.outputs["file"]).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(
        first.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["messages", "videos", "rejected_response"]
    );
    let rel = "chemistry/ch_1/video/01-a/01-a_step_1.mp4";
    assert_eq!(
        first["videos"][0], rel,
        "the original's path without /path/to/"
    );
    // Only the clips the rows name travel (the DPO rows name step 1 only).
    assert_eq!(walk(&s.outputs["media"]), [s.outputs["media"].join(rel)]);
    assert_eq!(
        std::fs::read_to_string(s.outputs["media"].join(rel)).unwrap(),
        "clip 1"
    );
    // A row naming a clip the `clips` input lacks is an error naming the row and the fix.
    let gone = rows_file(
        dir.path(),
        "gone.jsonl",
        &[row("physics", "ph_9", "02-b", 1)],
    );
    let e = h
        .run(
            &ExportSwift,
            &[
                ("rows", PortType::Table, &gone),
                ("clips", PortType::Dir, &clips),
            ],
            json!({}),
            &[],
        )
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("row `ph_9_02-b_1` names clip `physics/ph_9/video/02-b/02-b_step_1.mp4`")
            && e.contains("connect `clips`"),
        "{e}"
    );
    // LLaMA-Factory: sharegpt SFT, and the preference format for DPO rows.
    let lf = run(
        &mut h,
        &ExportLlamaFactory,
        &[
            ("rows", PortType::Table, &p),
            ("clips", PortType::Dir, &clips),
        ],
        json!({}),
    );
    let data: Value =
        serde_json::from_slice(&std::fs::read(lf.outputs["dataset"].join("expstar.json")).unwrap())
            .unwrap();
    assert_eq!(
        data[0]["conversations"][0],
        json!({"from": "human", "value": "<video>u"})
    );
    // Every video path resolves inside the dataset directory (LLaMA-Factory's media_dir).
    for r in data.as_array().unwrap() {
        let v = r["videos"][0].as_str().unwrap();
        assert!(lf.outputs["dataset"].join(v).is_file(), "{v}");
    }
    assert_eq!(data[0]["system"], "s");
    let info: Value = serde_json::from_slice(
        &std::fs::read(lf.outputs["dataset"].join("dataset_info.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(info["expstar"]["formatting"], "sharegpt");
    assert_eq!(info["expstar"]["columns"]["videos"], "videos");
    let lf = run(
        &mut h,
        &ExportLlamaFactory,
        &[("rows", PortType::Table, &d.outputs["pairs"])],
        json!({"name": "expstar_dpo"}),
    );
    let data: Value = serde_json::from_slice(
        &std::fs::read(lf.outputs["dataset"].join("expstar_dpo.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(data[0]["conversations"].as_array().unwrap().len(), 1);
    assert_eq!(data[0]["chosen"], json!({"from": "gpt", "value": "good 1"}));
    assert_eq!(data[0]["rejected"], json!({"from": "gpt", "value": "bad"}));
    let info: Value = serde_json::from_slice(
        &std::fs::read(lf.outputs["dataset"].join("dataset_info.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(info["expstar_dpo"]["ranking"], true);
    let lf = run(
        &mut h,
        &ExportLlamaFactory,
        &[("rows", PortType::Table, &p)],
        json!({"format": "alpaca"}),
    );
    let data: Value =
        serde_json::from_slice(&std::fs::read(lf.outputs["dataset"].join("expstar.json")).unwrap())
            .unwrap();
    assert_eq!(data[0]["instruction"], "<video>u");
    assert_eq!(data[0]["output"], "a 01-a_step_1");
}

#[test]
fn derived_times_recut_only_the_steps_whose_subtitles_moved() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let video = test_video(dir.path());
    let raw = dir.path().join("raw");
    raw_tree(&raw, Some(&video));
    let params = json!({"crf": 30, "preset": "ultrafast"});
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let cut = |h: &mut Harness| {
        let scan = run(
            h,
            &Scan,
            &[("raw", PortType::Dir, &raw)],
            json!({"times": "derived"}),
        );
        run(
            h,
            &CutClips,
            &[
                ("steps", PortType::Table, &scan.outputs["steps"]),
                ("raw", PortType::Dir, &raw),
            ],
            params.clone(),
        )
    };
    assert_eq!(cut(&mut h).memo, (1, 12));
    // A changed sentence does not move any step: nothing is cut.
    let asr = raw.join("annotations/chemistry/ch_1/asr/01_十一步.json");
    let text = std::fs::read_to_string(&asr)
        .unwrap()
        .replacen("Step 4 more", "Step 4, edited", 1);
    std::fs::write(&asr, &text).unwrap();
    assert_eq!(cut(&mut h).memo, (13, 0));
    // Moving the first subtitle of step 4 moves the start of step 4 and the end of step 3.
    let text = text.replacen(
        "\"startTime\": \"0:00:19\"",
        "\"startTime\": \"0:00:20\"",
        1,
    );
    std::fs::write(&asr, &text).unwrap();
    assert_eq!(cut(&mut h).memo, (11, 2));
}

#[test]
fn golden_clips_of_the_demo_video_have_the_demo_frame_counts() {
    let Some(fx) = fixtures() else { return };
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/expstar-demo/raw");
    // The demo tree's experiment 02, with the full-size Demo video.
    let tree = dir.path().join("raw");
    for sub in ["dataset", "annotations"] {
        let from = raw.join(sub).join("chemistry/ch_67");
        for e in walk(&from) {
            if e.to_string_lossy().contains("02-") {
                let to = tree
                    .join(sub)
                    .join("chemistry/ch_67")
                    .join(e.strip_prefix(&from).unwrap());
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::copy(&e, &to).unwrap();
            }
        }
    }
    let v = tree.join("source_video/chemistry/ch_67/02-一氧化碳的燃烧.mp4");
    std::fs::create_dir_all(v.parent().unwrap()).unwrap();
    std::fs::copy(fx.join("1data/video-ch_67-02-一氧化碳的燃烧.mp4"), &v).unwrap();
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let scan = run(&mut h, &Scan, &[("raw", PortType::Dir, &tree)], json!({}));
    let cut = run(
        &mut h,
        &CutClips,
        &[
            ("steps", PortType::Table, &scan.outputs["steps"]),
            ("raw", PortType::Dir, &tree),
        ],
        json!({}),
    );
    let rows = read_steps(&cut.outputs["steps"]).unwrap();
    assert_eq!(rows.len(), 5);
    let packets = |p: &Path| {
        let out = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-count_packets",
                "-show_entries",
                "stream=nb_read_packets,width,height",
                "-of",
                "csv=p=0",
            ])
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    for row in &rows {
        let ours = packets(&cut.outputs["clips"].join(&row.clip));
        let theirs = packets(&fx.join(format!(
            "2pair-data/video-02-一氧化碳的燃烧/{}.mp4",
            row.stem()
        )));
        assert_eq!(ours, theirs, "{}", row.stem());
    }
    // The step metadata equals the Demo's pair files byte for byte (without the final
    // newline the Demo files lack, which Python's json.dump does not write either).
    let meta = run(
        &mut h,
        &StepMeta,
        &[("steps", PortType::Table, &cut.outputs["steps"])],
        json!({}),
    );
    for k in 1..=5 {
        let name = format!("02-一氧化碳的燃烧_step_{k}.json");
        let ours = std::fs::read_to_string(
            meta.outputs["meta"]
                .join("chemistry/ch_67/json/02-一氧化碳的燃烧")
                .join(&name),
        )
        .unwrap();
        let theirs =
            std::fs::read_to_string(fx.join("2pair-data/step-02-一氧化碳的燃烧").join(&name))
                .unwrap();
        assert_eq!(ours, theirs, "{name}");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn the_expstar_pipeline_compiles() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/expstar.yaml");
    let pipeline = expflow_engine::compile::load(&p, &expflow_operators::registry(), &[]);
    assert!(
        pipeline.is_ok(),
        "{:?}",
        pipeline.err().map(|e| e.to_string())
    );
}
