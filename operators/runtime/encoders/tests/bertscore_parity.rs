//! BERTScore against the `bert-score` package (0.3.13) on the tiny BERT fixture
//! (tests/fixtures/make_fixtures.py), and layer-L states against transformers.

mod common;

use candle_core::Device;
use common::{assert_close, expected, fixtures, floats, strings};
use expflow_encoders::{Baseline, BertScorer};
use expflow_models::{ModelDir, Needs};

fn dir() -> ModelDir {
    ModelDir::open(fixtures().join("bert-tiny"), Needs::Tokenizer).unwrap()
}

#[test]
fn scores_match_the_bert_score_package() {
    let e = expected("bertscore_expected.json");
    let layers = e["num_layers"].as_u64().unwrap() as usize;
    let scorer = BertScorer::load(&dir(), &Device::Cpu, layers, None).unwrap();
    let cands = strings(&e["cands"]);
    let refs = strings(&e["refs"]);
    let baseline = Baseline::from_csv(&fixtures().join("bertscore_baseline.csv"), layers).unwrap();
    assert_eq!(
        baseline,
        Baseline {
            p: e["baseline"]["P"].as_f64().unwrap() as f32,
            r: e["baseline"]["R"].as_f64().unwrap() as f32,
            f: e["baseline"]["F"].as_f64().unwrap() as f32,
        }
    );
    for run in e["runs"].as_array().unwrap() {
        let idf = run["idf"].as_bool().unwrap();
        let rescale = run["rescale"].as_bool().unwrap();
        let s = scorer
            .score(&cands, &refs, idf, rescale.then_some(baseline))
            .unwrap();
        let what = format!("idf={idf} rescale={rescale}");
        assert_close(&format!("P {what}"), &[s.p], &[floats(&run["P"])], 1e-4);
        assert_close(&format!("R {what}"), &[s.r], &[floats(&run["R"])], 1e-4);
        assert_close(&format!("F {what}"), &[s.f], &[floats(&run["F"])], 1e-4);
    }
}

#[test]
fn idf_follows_bert_score_and_empty_sentences_score_zero() {
    let scorer = BertScorer::load(&dir(), &Device::Cpu, 2, None).unwrap();
    let refs: Vec<String> = ["a dog runs", "a cat runs", "the flame"]
        .map(String::from)
        .to_vec();
    let idf = scorer.idf(&refs).unwrap();
    assert_eq!(idf.default, 4f64.ln());
    // "a" is in 2 of 3 references: ln(4 / 3); "the" in 1: ln(4 / 2); [CLS]/[SEP] weigh 0.
    let id = token_id;
    assert!((idf.weights[&id("a")] - (4.0f64 / 3.0).ln()).abs() < 1e-12);
    assert!((idf.weights[&id("the")] - 2f64.ln()).abs() < 1e-12);
    assert_eq!(idf.weights[&id("[CLS]")], 0.0);

    let s = scorer
        .score(
            &["".to_string(), "a dog".into()],
            &["a dog".into(), "   ".into()],
            false,
            None,
        )
        .unwrap();
    assert_eq!(
        (s.p.clone(), s.r.clone(), s.f.clone()),
        (vec![0.0, 0.0], vec![0.0, 0.0], vec![0.0, 0.0])
    );
    let same = scorer
        .score(&["a dog runs".into()], &["a dog runs".into()], false, None)
        .unwrap();
    assert!((same.f[0] - 1.0).abs() < 1e-5, "{same:?}");
    // One reference: every idf is ln(2/2) = 0, so P and R are 0/0 (NaN) and F is 0, as in
    // bert-score.
    let one = scorer
        .score(&["a dog runs".into()], &["a dog runs".into()], true, None)
        .unwrap();
    assert!(
        one.p[0].is_nan() && one.r[0].is_nan() && one.f[0] == 0.0,
        "{one:?}"
    );
    let err = scorer
        .score(&["x".into()], &[], false, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("as many candidates as references"), "{err}");
    let err = BertScorer::load(&dir(), &Device::Cpu, 4, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("layer 4") && err.contains("3 layers"), "{err}");
}

/// The id of `t` in the fixture's tokenizer (the scorer's own).
fn token_id(t: &str) -> u32 {
    let tok =
        tokenizers::Tokenizer::from_file(fixtures().join("bert-tiny/tokenizer.json")).unwrap();
    tok.token_to_id(t).unwrap()
}

#[test]
fn baseline_file_errors_name_the_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("base.csv");
    std::fs::write(&p, "LAYER,P,R\n2,0.1,0.2\n").unwrap();
    let err = Baseline::from_csv(&p, 2).unwrap_err().to_string();
    assert!(
        err.contains("base.csv") && err.contains("no `F` column"),
        "{err}"
    );
    std::fs::write(&p, "LAYER,P,R,F\n1,0.1,0.2,0.3\n").unwrap();
    let err = Baseline::from_csv(&p, 2).unwrap_err().to_string();
    assert!(err.contains("no row for layer 2"), "{err}");
}
