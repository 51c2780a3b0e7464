//! Tests of the `embed` operators on the encoders crate's tiny fixture models.

use std::path::{Path, PathBuf};

use expflow_encoders::{
    Baseline, BertScorer, ClipModel, FrameSampling, Pooling, TextEncoder, VideoOptions,
};
use expflow_engine::harness::{Harness, HarnessRun};
use expflow_engine::{OpError, Operator, PortType};
use expflow_models::{ModelDir, Needs, default_device};
use polars::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::table_io::{read_table, write_table};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime/encoders/tests/fixtures")
}

fn bert() -> PathBuf {
    fixtures().join("bert-tiny")
}

fn clip() -> PathBuf {
    fixtures().join("clip-tiny")
}

/// A harness that keeps its store between runs, so memoisation carries over.
struct Bench {
    dir: tempfile::TempDir,
    harness: Harness,
    tables: usize,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let harness = Harness::new(&dir.path().join("work space")).unwrap();
        Bench {
            dir,
            harness,
            tables: 0,
        }
    }

    fn table(&mut self, df: &DataFrame) -> PathBuf {
        self.tables += 1;
        let p = self.dir.path().join(format!("t{}.parquet", self.tables));
        write_table(&mut df.clone(), &p).unwrap();
        p
    }

    fn run(
        &mut self,
        op: &dyn Operator,
        inputs: &[(&str, PortType, &Path)],
        params: Value,
    ) -> Result<HarnessRun, OpError> {
        self.harness.run(op, inputs, params, &[])
    }

    /// Runs an operator with a `rows` table and a model; returns the run and its table.
    fn embed(
        &mut self,
        op: &dyn Operator,
        df: &DataFrame,
        model: &Path,
        dir: Option<&Path>,
        params: Value,
    ) -> Result<(HarnessRun, DataFrame), OpError> {
        let t = self.table(df);
        let mut inputs = vec![
            ("rows", PortType::Table, t.as_path()),
            ("model", PortType::Model, model),
        ];
        if let Some(d) = dir {
            inputs.push(("dir", PortType::Dir, d));
        }
        let run = self.run(op, &inputs, params)?;
        let out = read_table(&run.outputs["table"])?;
        Ok((run, out))
    }
}

fn vectors(df: &DataFrame, name: &str) -> Vec<Vec<f32>> {
    let ca = df.column(name).unwrap().list().unwrap().clone();
    assert_eq!(ca.inner_dtype(), &DataType::Float32);
    (0..ca.len())
        .map(|i| {
            let s = ca.get_as_series(i).unwrap();
            s.f32().unwrap().into_no_null_iter().collect()
        })
        .collect()
}

fn texts_frame(texts: &[&str]) -> DataFrame {
    df!(
        "id" => (0..texts.len() as i64).collect::<Vec<_>>(),
        "text" => texts,
    )
    .unwrap()
}

#[test]
fn embed_text_adds_vectors_equal_to_the_encoder() {
    let texts = [
        "the cat sat",
        "a dog runs far",
        "the cat sat",
        "hello world",
    ];
    let mut b = Bench::new();
    let (run, out) = b
        .embed(
            &EmbedText,
            &texts_frame(&texts),
            &bert(),
            None,
            json!({"column": "text"}),
        )
        .unwrap();
    let names: Vec<&str> = out.get_column_names().iter().map(|n| n.as_str()).collect();
    assert_eq!(names, ["id", "text", "embedding"]);
    let got = vectors(&out, "embedding");
    let dir = ModelDir::open(bert(), Needs::Tokenizer).unwrap();
    let enc = TextEncoder::load_default(&dir, &default_device().unwrap()).unwrap();
    // Each text is embedded on its own (see the module docs).
    let want: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| enc.embed(&[t.to_string()]).unwrap().remove(0))
        .collect();
    assert_eq!(got, want);
    assert_eq!(got[0].len(), enc.dim());
    // Three distinct texts, none memoised yet.
    assert_eq!(run.memo, (0, 3));
    assert!(run.log.contains("weights blake3 "), "{}", run.log);
    assert!(run.log.contains("device Cpu"), "{}", run.log);
}

#[test]
fn embed_text_reembeds_only_changed_texts() {
    let mut b = Bench::new();
    let before = texts_frame(&["one fish", "two fish", "red fish", "blue fish"]);
    let params = json!({"column": "text"});
    let (first, _) = b
        .embed(&EmbedText, &before, &bert(), None, params.clone())
        .unwrap();
    assert_eq!(first.memo, (0, 4));
    let after = texts_frame(&["one fish", "two fish", "green fish", "blue fish"]);
    let (second, out) = b
        .embed(&EmbedText, &after, &bert(), None, params.clone())
        .unwrap();
    assert_eq!(second.memo, (3, 1));
    assert!(
        second.log.contains("3 memo hits, 1 computed"),
        "{}",
        second.log
    );
    // A cold run on the edited table gives the same bytes: vectors do not depend on which
    // texts shared a batch.
    let (_, cold) = Bench::new()
        .embed(&EmbedText, &after, &bert(), None, params)
        .unwrap();
    assert_eq!(out, cold);
    // Other settings are other items.
    let (third, norm) = b
        .embed(
            &EmbedText,
            &after,
            &bert(),
            None,
            json!({"column": "text", "pooling": "cls", "normalize": true, "output": "v"}),
        )
        .unwrap();
    assert_eq!(third.memo, (0, 4));
    for v in vectors(&norm, "v") {
        let n: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-5, "norm {n}");
    }
    assert_ne!(vectors(&norm, "v"), vectors(&out, "embedding"));
}

#[test]
fn embed_text_errors_name_the_problem() {
    let mut b = Bench::new();
    let df = texts_frame(&["a", "b"]);
    let e = b
        .embed(&EmbedText, &df, &bert(), None, json!({"column": "body"}))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("column `body`") && e.contains("available columns: id, text"),
        "{e}"
    );
    let e = b
        .embed(
            &EmbedText,
            &df,
            &bert(),
            None,
            json!({"column": "text", "output": "id"}),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("`output`") && e.contains("already has"), "{e}");
    // The images directory is no model: the error names the port and the missing file.
    let e = b
        .embed(
            &EmbedText,
            &df,
            &fixtures().join("images"),
            None,
            json!({"column": "text"}),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("input `model`") && e.contains("config.json"),
        "{e}"
    );
    let e = EmbedText.check(
        json!({"column": "text", "output": "e", "pooling": "sum"})
            .as_object()
            .unwrap(),
    );
    assert!(e[0].contains("`pooling` is `sum`"), "{e:?}");
}

#[test]
fn embed_image_resolves_paths_and_memoises_per_file() {
    let images = fixtures().join("images");
    let df = df!("image" => ["gradient.png", "gray.png", "gradient.png"]).unwrap();
    let mut b = Bench::new();
    let params = json!({"column": "image", "normalize": true});
    let (run, out) = b
        .embed(&EmbedImage, &df, &clip(), Some(&images), params.clone())
        .unwrap();
    assert_eq!(run.memo, (0, 2));
    let got = vectors(&out, "embedding");
    let dir = ModelDir::open(clip(), Needs::WeightsOnly).unwrap();
    let model = ClipModel::load(&dir, &default_device().unwrap(), true).unwrap();
    let one = |name: &str| model.embed_images(&[images.join(name)]).unwrap().remove(0);
    let want = [one("gradient.png"), one("gray.png")];
    assert_eq!(got, vec![want[0].clone(), want[1].clone(), want[0].clone()]);
    assert_eq!(got[0].len(), model.dim());
    let (again, same) = b
        .embed(&EmbedImage, &df, &clip(), Some(&images), params.clone())
        .unwrap();
    assert_eq!(again.memo, (2, 0));
    assert_eq!(same, out);
    // A missing file is named with its row.
    let bad = df!("image" => ["gray.png", "missing.png"]).unwrap();
    let e = b
        .embed(&EmbedImage, &bad, &clip(), Some(&images), params)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("row 1") && e.contains("missing.png"), "{e}");
}

#[test]
fn embed_video_matches_the_encoder() {
    let tmp = tempfile::tempdir().unwrap();
    let video = tmp.path().join("clip.mp4");
    let made = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-f", "lavfi", "-i"])
        .arg("testsrc=size=48x32:rate=5:duration=2")
        .args(["-pix_fmt", "yuv420p", "-y"])
        .arg(&video)
        .status();
    if !made.is_ok_and(|s| s.success()) {
        expflow_tests::skip::skip_or_fail(
            "ffmpeg cannot make a test video (apt-get install ffmpeg)",
        );
        return;
    }
    let df = df!("video" => [video.to_string_lossy().to_string()]).unwrap();
    let mut b = Bench::new();
    let (run, out) = b
        .embed(
            &EmbedVideo,
            &df,
            &clip(),
            None,
            json!({"column": "video", "frames": 3, "pooling": "mean"}),
        )
        .unwrap();
    assert_eq!(run.memo, (0, 1));
    let dir = ModelDir::open(clip(), Needs::WeightsOnly).unwrap();
    let model = ClipModel::load(&dir, &default_device().unwrap(), false).unwrap();
    let opts = VideoOptions {
        sampling: FrameSampling::Uniform(3),
        pooling: Pooling::Mean,
        normalize_frames: false,
        normalize: false,
    };
    assert_eq!(
        vectors(&out, "embedding"),
        vec![model.embed_video(&video, &opts).unwrap()]
    );
    // A relative path without `dir` that does not exist is named with its row.
    let bad = df!("video" => ["nowhere/clip.mp4"]).unwrap();
    let e = b
        .embed(&EmbedVideo, &bad, &clip(), None, json!({"column": "video"}))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("row 0") && e.contains("nowhere/clip.mp4"), "{e}");
    let e = EmbedVideo.check(
        json!({"column": "v", "output": "e", "normalize": false, "fps": 1.0, "frames": 4,
               "pooling": "max", "normalize_frames": false})
        .as_object()
        .unwrap(),
    );
    assert!(e[0].contains("give one of them"), "{e:?}");
}

#[test]
fn bertscore_metrics_equal_the_scorer() {
    let hyps = ["the cat sat on the mat", "a dog runs", "hello there world"];
    let refs = ["the cat is on the mat", "the dog is running", "hello world"];
    let df = df!("hyp" => hyps, "refs" => refs).unwrap();
    let mut b = Bench::new();
    let t = b.table(&df);
    let run = b
        .run(
            &ScoreBertScore,
            &[
                ("table", PortType::Table, t.as_path()),
                ("model", PortType::Model, bert().as_path()),
            ],
            json!({"layer": 2, "idf": true, "baseline": {"p": 0.31, "r": 0.29, "f": 0.3}}),
        )
        .unwrap();
    let dir = ModelDir::open(bert(), Needs::Tokenizer).unwrap();
    let scorer = BertScorer::load(&dir, &default_device().unwrap(), 2, None).unwrap();
    let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let baseline = Baseline {
        p: 0.31,
        r: 0.29,
        f: 0.3,
    };
    let want = scorer
        .score(&own(&hyps), &own(&refs), true, Some(baseline))
        .unwrap();
    let scores = read_table(&run.outputs["scores"]).unwrap();
    assert_eq!(scores.height(), 3);
    let col = |n: &str| -> Vec<f32> {
        scores
            .column(n)
            .unwrap()
            .f32()
            .unwrap()
            .into_no_null_iter()
            .collect()
    };
    assert_eq!(
        (col("p"), col("r"), col("f")),
        (want.p.clone(), want.r.clone(), want.f.clone())
    );
    let m: Value =
        serde_json::from_slice(&std::fs::read(&run.outputs["metrics"]).unwrap()).unwrap();
    let mean = |xs: &[f32]| xs.iter().map(|&x| f64::from(x)).sum::<f64>() / xs.len() as f64;
    assert_eq!(m["n"], json!(3));
    assert_eq!(m["bertscore_p"], json!(mean(&want.p)));
    assert_eq!(m["bertscore_r"], json!(mean(&want.r)));
    assert_eq!(m["bertscore_f"], json!(mean(&want.f)));
    assert_eq!(m["layer"], json!(2));
    // Without `layer`, all layers; a missing column is named.
    let e = b
        .run(
            &ScoreBertScore,
            &[
                ("table", PortType::Table, t.as_path()),
                ("model", PortType::Model, bert().as_path()),
            ],
            json!({"refs": "ref"}),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("column `ref`") && e.contains("available columns: hyp, refs"),
        "{e}"
    );
    let e = ScoreBertScore.check(
        json!({"hyp": "h", "refs": "r", "idf": false, "baseline": {"p": 0.1}})
            .as_object()
            .unwrap(),
    );
    assert!(e[0].contains("`baseline`"), "{e:?}");
}

#[test]
fn score_text_fills_the_bertscore_columns_when_a_model_is_connected() {
    use crate::score::{CSV_HEADER, ScoreText};
    // ExpStar's scorer architecture (DeBERTa v1, as microsoft/deberta-large-mnli), tiny.
    let deberta = fixtures().join("deberta-tiny");
    let hyps = [
        "<Narration>\nAdd the yeast to the beaker.",
        "open the gas valve slowly",
        "measure the temperature",
    ];
    let refs = [
        "<Narration>\nAdd 3 spatulas of yeast to the beaker.",
        "open the valve of the gas cylinder slowly",
        "measure the temperature every ten seconds",
    ];
    let df = df!("hyp" => hyps, "refs" => refs, "data_type" => ["a", "b", "a"]).unwrap();
    let mut b = Bench::new();
    let t = b.table(&df);
    let params = json!({"metrics": ["bleu"], "group_by": "data_type", "experiment": "arm",
                        "bertscore_layer": 2});
    let run = b
        .run(
            &ScoreText,
            &[
                ("table", PortType::Table, t.as_path()),
                ("bertscore_model", PortType::Model, deberta.as_path()),
            ],
            params.clone(),
        )
        .unwrap();
    let dir = ModelDir::open(&deberta, Needs::Tokenizer).unwrap();
    let scorer = BertScorer::load(&dir, &default_device().unwrap(), 2, None).unwrap();
    let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let want = scorer.score(&own(&hyps), &own(&refs), false, None).unwrap();
    let mean = |xs: &[f32], idx: &[usize]| {
        idx.iter().map(|&i| f64::from(xs[i])).sum::<f64>() / idx.len() as f64
    };
    let cell = |x: f64| format!("{:.2}", x * 100.0);
    let csv = std::fs::read_to_string(&run.outputs["results"]).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], CSV_HEADER);
    for (line, idx) in [(1, vec![0, 1, 2]), (2, vec![0, 2]), (3, vec![1])] {
        let cells: Vec<&str> = lines[line].split(',').collect();
        assert_eq!(
            cells[9..],
            [
                cell(mean(&want.p, &idx)),
                cell(mean(&want.r, &idx)),
                cell(mean(&want.f, &idx))
            ],
            "{csv}"
        );
    }
    let m: Value =
        serde_json::from_slice(&std::fs::read(&run.outputs["metrics"]).unwrap()).unwrap();
    assert_eq!(m["bertscore_f"], json!(mean(&want.f, &[0, 1, 2])));
    assert_eq!(
        m["groups"]["a"]["bertscore_p"],
        json!(mean(&want.p, &[0, 2]))
    );
    let scores = read_table(&run.outputs["scores"]).unwrap();
    let f: Vec<f32> = scores
        .column("bertscore_f")
        .unwrap()
        .f32()
        .unwrap()
        .into_no_null_iter()
        .collect();
    assert_eq!(f, want.f);

    // Without the model the BERTScore cells stay empty, as batch_evaluate.py writes NaN.
    let plain = b
        .run(
            &ScoreText,
            &[("table", PortType::Table, t.as_path())],
            params,
        )
        .unwrap();
    let csv = std::fs::read_to_string(&plain.outputs["results"]).unwrap();
    assert!(csv.lines().nth(1).unwrap().ends_with(",,,"), "{csv}");
}

#[test]
fn bertscore_rows_take_the_best_reference() {
    use crate::score::BertRows;
    let dir = ModelDir::open(fixtures().join("roberta-tiny"), Needs::Tokenizer).unwrap();
    let scorer = BertScorer::load(&dir, &default_device().unwrap(), 2, None).unwrap();
    let h = vec!["open the gas valve slowly".to_string()];
    let r1 = "measure the temperature".to_string();
    let r2 = "open the valve of the gas cylinder slowly".to_string();
    let both = BertRows::score(&scorer, &h, &[vec![r1.clone(), r2.clone()]], false, None).unwrap();
    let a = scorer
        .score(&h, std::slice::from_ref(&r1), false, None)
        .unwrap();
    let c = scorer
        .score(&h, std::slice::from_ref(&r2), false, None)
        .unwrap();
    assert_eq!(both.p, vec![a.p[0].max(c.p[0])]);
    assert_eq!(both.r, vec![a.r[0].max(c.r[0])]);
    assert_eq!(both.f, vec![a.f[0].max(c.f[0])]);
    let e = BertRows::score(&scorer, &h, &[vec![]], false, None).unwrap_err();
    assert!(e.contains("row 0 has no reference"), "{e}");
}
