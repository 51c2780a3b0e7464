//! `score.text`: BLEU, ROUGE-L, METEOR and CIDEr-D of a table of hypotheses and references,
//! and BERTScore P/R/F1 when a `bertscore_model` is connected (ExpStar's results table, spec
//! G: `microsoft/deberta-large-mnli`, layer 18, no idf, no baseline rescaling).

use std::collections::BTreeMap;
use std::path::PathBuf;

use expflow_encoders::{Baseline, BertScorer};
use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use expflow_models::{ModelDir, Needs, default_device};
use polars::prelude::*;
use serde_json::{Map, Value, json};

use super::bleu::Smooth;
use super::corpus::{self, CorpusScores, Metric, RougeAggregate, RowScores, TextConfig};
use super::sections::{SECTIONS, section};
use super::tokenize::Tokenizer;
use super::wordnet;
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};
use crate::table_io::{read_table, write_table};

pub struct ScoreText;

const KIND: &str = "score.text";

/// BERTScore settings (used when the `bertscore_model` input is connected).
struct BertConfig {
    batch_size: usize,
    prefix_space: bool,
    layer: Option<usize>,
    idf: bool,
    baseline: Option<Baseline>,
    max_len: Option<usize>,
}

struct Config {
    bert: BertConfig,
    hyp: Option<String>,
    refs: Option<String>,
    group_by: Option<String>,
    sections: bool,
    experiment: Option<String>,
    text: TextConfig,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let metrics = match p.opt_strings("metrics")? {
            Some(names) => {
                let mut ms = Vec::new();
                for n in names {
                    let m = Metric::parse(&n).ok_or_else(|| {
                        OperatorError::param(
                            KIND,
                            "metrics",
                            format!(
                                "has unknown metric `{n}`; known: {}",
                                Metric::NAMES.join(", ")
                            ),
                        )
                    })?;
                    if !ms.contains(&m) {
                        ms.push(m);
                    }
                }
                ms.sort();
                ms
            }
            None => TextConfig::default().metrics,
        };
        let tok = p.choice("tokenize", &Tokenizer::NAMES)?;
        let smooth_name = p.choice("smooth", &Smooth::NAMES)?;
        let smooth =
            Smooth::parse(smooth_name, p.opt_f64("smooth_value")?).expect("a known method");
        let rouge_aggregate = match p.choice("rouge_aggregate", &["mean", "bootstrap"])? {
            "bootstrap" => RougeAggregate::Bootstrap {
                samples: p.u64("bootstrap_samples")? as usize,
                seed: p.u64("bootstrap_seed")?,
            },
            _ => RougeAggregate::Mean,
        };
        let sigma = p.f64("cider_sigma")?;
        if sigma <= 0.0 {
            return Err(OperatorError::param(
                KIND,
                "cider_sigma",
                "must be positive",
            ));
        }
        let bert_max_len = p.opt_u64("bertscore_max_len")?.map(|n| n as usize);
        if bert_max_len == Some(0) {
            return Err(OperatorError::param(
                KIND,
                "bertscore_max_len",
                "must be at least 1",
            ));
        }
        Ok(Config {
            bert: BertConfig {
                batch_size: match p.u64("bertscore_batch_size")? {
                    0 => {
                        return Err(OperatorError::param(
                            KIND,
                            "bertscore_batch_size",
                            "must be at least 1",
                        ));
                    }
                    n => n as usize,
                },
                prefix_space: p.bool("bertscore_prefix_space")?,
                layer: p.opt_u64("bertscore_layer")?.map(|n| n as usize),
                idf: p.bool("bertscore_idf")?,
                baseline: bert_baseline(&p)?,
                max_len: bert_max_len,
            },
            hyp: p.opt_str("hyp")?.map(str::to_string),
            refs: p.opt_str("refs")?.map(str::to_string),
            group_by: p.opt_str("group_by")?.map(str::to_string),
            sections: p.bool("sections")?,
            experiment: p.opt_str("experiment")?.map(str::to_string),
            text: TextConfig {
                metrics,
                tokenizer: Tokenizer::parse(tok).expect("a known tokenizer"),
                lowercase: p.bool("lowercase")?,
                smooth,
                rouge_stemmer: p.bool("rouge_stemmer")?,
                rouge_aggregate,
                cider_sigma: sigma,
                wordnet_dir: PathBuf::from(p.str("wordnet_dir")?),
                ..TextConfig::default()
            },
        })
    }
}

/// A column by name, or a struct field as `column.field` (ExpStar's `pred.feedback`).
/// `bertscore_baseline`: bert-score's baseline row `{p, r, f}` of the layer used, or null.
fn bert_baseline(p: &Params<'_>) -> Result<Option<Baseline>> {
    let Some(v) = p.get("bertscore_baseline") else {
        return Ok(None);
    };
    let bad = || {
        OperatorError::param(
            KIND,
            "bertscore_baseline",
            format!("must be a map of numbers {{p, r, f}} (bert-score's baseline row), got {v}"),
        )
    };
    let m = v.as_object().ok_or_else(bad)?;
    let num = |k: &str| m.get(k).and_then(Value::as_f64).ok_or_else(bad);
    if m.len() != 3 {
        return Err(bad());
    }
    Ok(Some(Baseline {
        p: num("p")? as f32,
        r: num("r")? as f32,
        f: num("f")? as f32,
    }))
}

/// BERTScore P, R and F1 of each row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BertRows {
    pub p: Vec<f32>,
    pub r: Vec<f32>,
    pub f: Vec<f32>,
}

impl BertRows {
    /// Scores each hypothesis against its references; with several references a row takes
    /// the best P, R and F1 over them (each on its own), as bert-score does.
    pub fn score(
        scorer: &BertScorer,
        hyps: &[String],
        refs: &[Vec<String>],
        idf: bool,
        baseline: Option<Baseline>,
    ) -> std::result::Result<BertRows, String> {
        let mut flat_h = Vec::new();
        let mut flat_r = Vec::new();
        let mut bounds = Vec::new();
        for (h, rs) in hyps.iter().zip(refs) {
            if rs.is_empty() {
                return Err(format!(
                    "row {} has no reference; BERTScore needs at least one",
                    bounds.len()
                ));
            }
            let start = flat_h.len();
            for r in rs {
                flat_h.push(h.clone());
                flat_r.push(r.clone());
            }
            bounds.push(start..flat_h.len());
        }
        let s = scorer
            .score(&flat_h, &flat_r, idf, baseline)
            .map_err(|e| e.to_string())?;
        let best = |v: &[f32], b: &std::ops::Range<usize>| {
            v[b.clone()]
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max)
        };
        let mut out = BertRows::default();
        for b in &bounds {
            out.p.push(best(&s.p, b));
            out.r.push(best(&s.r, b));
            out.f.push(best(&s.f, b));
        }
        Ok(out)
    }

    /// Means of P, R and F1 over the rows `idx` (none where a mean is NaN or there are no
    /// rows), in f64 over the f32 values.
    fn means(&self, idx: &[usize]) -> [Option<f64>; 3] {
        let mean = |v: &[f32]| {
            let m = idx.iter().map(|&i| f64::from(v[i])).sum::<f64>() / idx.len() as f64;
            (!idx.is_empty() && m.is_finite()).then_some(m)
        };
        [mean(&self.p), mean(&self.r), mean(&self.f)]
    }
}

fn insert_bert(m: &mut Map<String, Value>, means: [Option<f64>; 3]) {
    for (k, v) in ["bertscore_p", "bertscore_r", "bertscore_f"]
        .iter()
        .zip(means)
    {
        m.insert((*k).to_string(), v.map_or(Value::Null, |x| json!(x)));
    }
}

fn column_series(df: &DataFrame, name: &str) -> Result<Series> {
    if let Ok(c) = df.column(name) {
        return Ok(c.as_materialized_series().clone());
    }
    if let Some((col, field)) = name.split_once('.')
        && let Ok(c) = df.column(col)
    {
        let st = c
            .struct_()
            .map_err(|e| OperatorError::polars(KIND, format!("reading `{col}` as a struct"), e))?;
        return st.field_by_name(field).map_err(|e| {
            OperatorError::polars(KIND, format!("reading field `{field}` of `{col}`"), e)
        });
    }
    let names: Vec<&str> = df.get_column_names().iter().map(|n| n.as_str()).collect();
    Err(OperatorError::data(
        KIND,
        format!(
            "column `{name}` not found; available columns: {}",
            names.join(", ")
        ),
    ))
}

fn strings(s: &Series, what: &str) -> Result<Vec<String>> {
    let s = s
        .cast(&DataType::String)
        .map_err(|e| OperatorError::polars(KIND, format!("reading `{what}` as text"), e))?;
    let ca = s
        .str()
        .map_err(|e| OperatorError::polars(KIND, format!("reading `{what}`"), e))?;
    Ok(ca
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect())
}

fn string_lists(s: &Series, what: &str) -> Result<Vec<Vec<String>>> {
    if let DataType::List(_) = s.dtype() {
        let ca = s
            .list()
            .map_err(|e| OperatorError::polars(KIND, format!("reading `{what}`"), e))?;
        let mut out = Vec::with_capacity(s.len());
        for i in 0..ca.len() {
            out.push(match ca.get_as_series(i) {
                Some(inner) => strings(&inner, what)?,
                None => Vec::new(),
            });
        }
        Ok(out)
    } else {
        Ok(strings(s, what)?.into_iter().map(|t| vec![t]).collect())
    }
}

/// The hypothesis and reference columns: as given, else `hyp`/`refs`, else ExpStar's
/// `pred.feedback`/`gt.feedback`.
fn texts(
    df: &DataFrame,
    hyp: Option<&str>,
    refs: Option<&str>,
) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    let (h, r) = if df.column("hyp").is_ok() || df.column("pred").is_err() {
        (hyp.unwrap_or("hyp"), refs.unwrap_or("refs"))
    } else {
        (
            hyp.unwrap_or("pred.feedback"),
            refs.unwrap_or("gt.feedback"),
        )
    };
    let hyps = strings(&column_series(df, h)?, h)?;
    let refs = string_lists(&column_series(df, r)?, r)?;
    Ok((hyps, refs))
}

fn scores_table(
    rows: &[RowScores],
    cfg: &TextConfig,
    groups: Option<(&str, &[String])>,
    bert: Option<&BertRows>,
) -> Result<DataFrame> {
    let n = rows.len();
    let mut cols = vec![Column::new("row".into(), (0..n as i64).collect::<Vec<_>>())];
    if let Some((name, g)) = groups {
        cols.push(Column::new(name.into(), g.to_vec()));
    }
    let f = |get: &dyn Fn(&RowScores) -> Option<f64>| rows.iter().map(get).collect::<Vec<_>>();
    if cfg.has(Metric::Bleu) {
        cols.push(Column::new("bleu".into(), f(&|r| r.bleu)));
    }
    if cfg.has(Metric::RougeL) {
        cols.push(Column::new(
            "rouge_l_precision".into(),
            f(&|r| r.rouge_l.map(|x| x.precision)),
        ));
        cols.push(Column::new(
            "rouge_l_recall".into(),
            f(&|r| r.rouge_l.map(|x| x.recall)),
        ));
        cols.push(Column::new(
            "rouge_l".into(),
            f(&|r| r.rouge_l.map(|x| x.fmeasure)),
        ));
    }
    if cfg.has(Metric::Meteor) {
        cols.push(Column::new("meteor".into(), f(&|r| r.meteor)));
    }
    if cfg.has(Metric::CiderD) {
        cols.push(Column::new("cider_d".into(), f(&|r| r.cider_d)));
    }
    if let Some(b) = bert {
        cols.push(Column::new("bertscore_p".into(), b.p.clone()));
        cols.push(Column::new("bertscore_r".into(), b.r.clone()));
        cols.push(Column::new("bertscore_f".into(), b.f.clone()));
    }
    DataFrame::new(n, cols).map_err(|e| OperatorError::polars(KIND, "building the scores table", e))
}

/// The header of `batch_evaluate.py`'s `evaluation_results.csv`.
pub const CSV_HEADER: &str = "experiment,data_type,BLEU-1,BLEU-2,BLEU-3,BLEU-4,METEOR,ROUGE-L-F,CIDer,BERTScore-p,BERTScore-r,BERTScore-f1";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One results line in `batch_evaluate.py`'s form: every value ×100 with two decimals;
/// values not computed (BERTScore without a model, metrics not asked for) are empty, as NaN
/// is there.
fn csv_line(experiment: &str, data_type: &str, c: &CorpusScores, bert: [Option<f64>; 3]) -> String {
    let v = |x: Option<f64>| x.map(|x| format!("{:.2}", x * 100.0)).unwrap_or_default();
    let b = |k: usize| c.bleu.as_ref().map(|b| b.stats.precision(k));
    [
        csv_field(experiment),
        csv_field(data_type),
        v(b(0)),
        v(b(1)),
        v(b(2)),
        v(b(3)),
        v(c.meteor),
        v(c.rouge_l.map(|r| r.fmeasure)),
        v(c.cider_d),
        v(bert[0]),
        v(bert[1]),
        v(bert[2]),
    ]
    .join(",")
}

/// What `score.text` computes.
pub struct TextResult {
    pub rows: Vec<RowScores>,
    pub corpus: CorpusScores,
    /// The metrics artifact: the corpus scores, plus `groups` and `sections` when asked.
    pub metrics: Map<String, Value>,
    /// The results CSV (header, `all`, then one line per group).
    pub csv: String,
}

/// Scores hypotheses against references, overall, per group and per ExpStar section.
pub fn evaluate(
    hyps: &[String],
    refs: &[Vec<String>],
    groups: Option<&[String]>,
    sections: bool,
    experiment: &str,
    cfg: &TextConfig,
) -> std::result::Result<TextResult, String> {
    evaluate_with_bertscore(hyps, refs, groups, sections, experiment, cfg, None)
}

/// [`evaluate`], with the BERTScore of each row (computed by [`BertRows::score`]) in the
/// metrics (`bertscore_p`, `bertscore_r`, `bertscore_f`: means over the rows, overall and
/// per group) and in the CSV's BERTScore columns.
pub fn evaluate_with_bertscore(
    hyps: &[String],
    refs: &[Vec<String>],
    groups: Option<&[String]>,
    sections: bool,
    experiment: &str,
    cfg: &TextConfig,
    bert: Option<&BertRows>,
) -> std::result::Result<TextResult, String> {
    let (rows, all) = corpus::score(hyps, refs, cfg).map_err(|e| e.to_string())?;
    let bert_means = |idx: &[usize]| bert.map_or([None; 3], |b| b.means(idx));
    let every: Vec<usize> = (0..hyps.len()).collect();
    let mut metrics = all.to_json();
    if bert.is_some() {
        insert_bert(&mut metrics, bert_means(&every));
    }
    let mut csv = format!(
        "{CSV_HEADER}\n{}\n",
        csv_line(experiment, "all", &all, bert_means(&every))
    );
    if let Some(g) = groups {
        let mut by: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, k) in g.iter().enumerate() {
            by.entry(k.as_str()).or_default().push(i);
        }
        let mut gm = Map::new();
        for (k, idx) in by {
            let h: Vec<&str> = idx.iter().map(|&i| hyps[i].as_str()).collect();
            let r: Vec<Vec<&str>> = idx
                .iter()
                .map(|&i| refs[i].iter().map(String::as_str).collect())
                .collect();
            let (_, c) = corpus::score(&h, &r, cfg).map_err(|e| e.to_string())?;
            csv.push_str(&csv_line(experiment, k, &c, bert_means(&idx)));
            csv.push('\n');
            let mut cm = c.to_json();
            if bert.is_some() {
                insert_bert(&mut cm, bert_means(&idx));
            }
            gm.insert(k.to_string(), Value::Object(cm));
        }
        metrics.insert("groups".into(), Value::Object(gm));
    }
    if sections {
        let mut sm = Map::new();
        for name in SECTIONS {
            let mut h = Vec::new();
            let mut r = Vec::new();
            for (hyp, rs) in hyps.iter().zip(refs) {
                let hs = section(hyp, name);
                let rss: Vec<Option<String>> = rs.iter().map(|x| section(x, name)).collect();
                if hs.is_none() && rss.iter().all(Option::is_none) {
                    continue;
                }
                h.push(hs.unwrap_or_default());
                r.push(
                    rss.into_iter()
                        .map(Option::unwrap_or_default)
                        .collect::<Vec<_>>(),
                );
            }
            let (_, c) = corpus::score(&h, &r, cfg).map_err(|e| e.to_string())?;
            sm.insert(name.to_string(), Value::Object(c.to_json()));
        }
        metrics.insert("sections".into(), Value::Object(sm));
    }
    Ok(TextResult {
        rows,
        corpus: all,
        metrics,
        csv,
    })
}

/// Loads the BERTScore model at `path` and scores every row.
fn bertscore(
    ctx: &Context,
    path: &std::path::Path,
    cfg: &BertConfig,
    hyps: &[String],
    refs: &[Vec<String>],
) -> std::result::Result<BertRows, OpError> {
    let dir = ModelDir::open(path, Needs::Tokenizer).map_err(|e| {
        OperatorError::data(
            KIND,
            format!(
                "input `bertscore_model` ({}) is not a usable model directory: {e}",
                path.display()
            ),
        )
    })?;
    let layers = match cfg.layer {
        Some(l) => l,
        None => dir
            .config
            .get("num_hidden_layers")
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                OperatorError::data(
                    KIND,
                    "the BERTScore model's config.json has no `num_hidden_layers`; set `bertscore_layer`",
                )
            })? as usize,
    };
    ctx.log(&format!(
        "BERTScore model {}: weights blake3 {}, layer {layers}, idf {}, baseline {:?}, batch size {}",
        path.display(),
        dir.weight_digest()?,
        cfg.idf,
        cfg.baseline,
        cfg.batch_size
    ));
    let device = default_device()?;
    ctx.log(&format!("device {device:?}"));
    let scorer = BertScorer::load(&dir, &device, layers, cfg.max_len)?
        .with_batch_size(cfg.batch_size)
        .with_prefix_space(cfg.prefix_space);
    Ok(BertRows::score(&scorer, hyps, refs, cfg.idf, cfg.baseline)
        .map_err(|e| OperatorError::data(KIND, format!("BERTScore: {e}")))?)
}

fn write_json(path: &std::path::Path, v: Map<String, Value>) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(&Value::Object(v))
        .map_err(|e| OperatorError::data(KIND, e.to_string()))?;
    bytes.push(b'\n');
    std::fs::write(path, bytes).map_err(|e| OperatorError::io("writing", path, e))
}

impl Operator for ScoreText {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        2
    }

    fn signature(&self) -> Signature {
        let s = |name, kind, default: Value, doc| ParamSpec::with_default(name, kind, default, doc);
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new(
                    "table",
                    PortType::Table,
                    "hypotheses and references (`hyp`/`refs`, or ExpStar's `pred.feedback`/`gt.feedback`)",
                ),
                Port::new(
                    "bertscore_model",
                    PortType::Dir,
                    "BERTScore's encoder (BERT, RoBERTa, DeBERTa v1/v2/v3 directory with tokenizer.json; \
                     ExpStar: microsoft/deberta-large-mnli); when connected, BERTScore P/R/F1 are scored",
                )
                .optional(),
            ]),
            outputs: Ports::Fixed(vec![
                Port::new(
                    "scores",
                    PortType::Table,
                    "per-row scores (0-1; CIDEr-D on its own scale)",
                ),
                Port::new("metrics", PortType::Metrics, "corpus scores (JSON)"),
                Port::new(
                    "results",
                    PortType::File,
                    "batch_evaluate.py's results CSV (×100, two decimals)",
                ),
            ]),
            params: vec![
                s(
                    "hyp",
                    ParamKind::String,
                    Value::Null,
                    "hypothesis column (`col.field` for a struct field); default `hyp`, else `pred.feedback`",
                ),
                s(
                    "refs",
                    ParamKind::String,
                    Value::Null,
                    "reference column, text or list of texts; default `refs`, else `gt.feedback`",
                ),
                s(
                    "metrics",
                    ParamKind::List,
                    json!(Metric::NAMES),
                    "any of bleu, rouge_l, meteor, cider_d",
                ),
                s(
                    "tokenize",
                    ParamKind::String,
                    json!("13a"),
                    "sacrebleu tokeniser for BLEU, METEOR and CIDEr-D: 13a, intl, zh, char, none",
                ),
                s(
                    "lowercase",
                    ParamKind::Bool,
                    json!(false),
                    "lower-case before tokenising (METEOR always lower-cases)",
                ),
                s(
                    "smooth",
                    ParamKind::String,
                    json!("exp"),
                    "BLEU smoothing: exp, floor, add-k, none",
                ),
                s(
                    "smooth_value",
                    ParamKind::Float,
                    Value::Null,
                    "the floor (default 0.1) or add-k (default 1) value",
                ),
                s(
                    "rouge_stemmer",
                    ParamKind::Bool,
                    json!(false),
                    "Porter-stem ROUGE tokens longer than 3 characters",
                ),
                s(
                    "rouge_aggregate",
                    ParamKind::String,
                    json!("mean"),
                    "corpus ROUGE-L: mean, or bootstrap (mid of seeded resampling)",
                ),
                s(
                    "bootstrap_samples",
                    ParamKind::Int,
                    json!(1000),
                    "resamples of the bootstrap aggregate",
                ),
                s(
                    "bootstrap_seed",
                    ParamKind::Int,
                    json!(0),
                    "seed of the bootstrap aggregate",
                ),
                s(
                    "cider_sigma",
                    ParamKind::Float,
                    json!(6.0),
                    "σ of CIDEr-D's length penalty",
                ),
                s(
                    "wordnet_dir",
                    ParamKind::String,
                    json!(wordnet::DEFAULT_DIR),
                    "WordNet 3.0 dict directory (Debian package wordnet-base)",
                ),
                s(
                    "sections",
                    ParamKind::Bool,
                    json!(false),
                    "also score ExpStar's Narration, Principle and Safety sections",
                ),
                s(
                    "group_by",
                    ParamKind::String,
                    Value::Null,
                    "a column to group by (e.g. `data_type`): corpus scores per value",
                ),
                s(
                    "experiment",
                    ParamKind::String,
                    Value::Null,
                    "the CSV's experiment name; default the node name",
                ),
                s(
                    "bertscore_layer",
                    ParamKind::Int,
                    Value::Null,
                    "BERTScore: the states after this many layers (bert-score's num_layers; \
                     18 for microsoft/deberta-large-mnli); default all layers",
                ),
                s(
                    "bertscore_idf",
                    ParamKind::Bool,
                    json!(false),
                    "BERTScore: weight tokens by their idf over the references (bert-score's default: off)",
                ),
                s(
                    "bertscore_baseline",
                    ParamKind::Map,
                    Value::Null,
                    "BERTScore: rescale with bert-score's baseline row {p, r, f} of the layer (default: no rescaling)",
                ),
                s(
                    "bertscore_batch_size",
                    ParamKind::Int,
                    json!(expflow_encoders::bertscore::DEFAULT_BATCH_SIZE),
                    "BERTScore: bert-score's batch_size (its padding can floor a best cosine at 0; \
                     ExpStar's batch_evaluate.py uses 15)",
                ),
                s(
                    "bertscore_prefix_space",
                    ParamKind::Bool,
                    json!(true),
                    "BERTScore with a GPT-2/RoBERTa tokenizer: a space before each text, as bert-score \
                     under transformers 4 (false: as under transformers 5, which drops it)",
                ),
                s(
                    "bertscore_max_len",
                    ParamKind::Int,
                    Value::Null,
                    "BERTScore: maximum tokens per text; default the tokenizer's model_max_length",
                ),
            ],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> std::result::Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let df = read_table(&ctx.input("table")?.path)?;
        let (hyps, refs) = texts(&df, cfg.hyp.as_deref(), cfg.refs.as_deref())?;
        let groups = match &cfg.group_by {
            Some(g) => Some(strings(&column_series(&df, g)?, g)?),
            None => None,
        };
        let experiment = cfg
            .experiment
            .clone()
            .unwrap_or_else(|| ctx.node().to_string());
        let bert = match ctx.inputs().get("bertscore_model") {
            None => None,
            Some(input) => Some(bertscore(ctx, &input.path, &cfg.bert, &hyps, &refs)?),
        };
        let r = evaluate_with_bertscore(
            &hyps,
            &refs,
            groups.as_deref(),
            cfg.sections,
            &experiment,
            &cfg.text,
            bert.as_ref(),
        )
        .map_err(|e| OperatorError::data(KIND, e))?;
        ctx.log(&format!("scored {} rows", r.rows.len()));
        let mut table = scores_table(
            &r.rows,
            &cfg.text,
            cfg.group_by.as_deref().zip(groups.as_deref()),
            bert.as_ref(),
        )?;
        write_table(&mut table, &ctx.output("scores")?.path)?;
        write_json(&ctx.output("metrics")?.path, r.metrics)?;
        let path = &ctx.output("results")?.path;
        std::fs::write(path, r.csv).map_err(|e| OperatorError::io("writing", path, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use expflow_engine::PortType;

    use super::*;
    use crate::testing::{InputBytes, run_op, table_bytes, table_from_bytes};

    fn run(df: &DataFrame, params: Value) -> std::collections::BTreeMap<String, Vec<u8>> {
        run_op(
            &ScoreText,
            &[InputBytes {
                port: "table",
                ty: PortType::Table,
                bytes: table_bytes(df),
            }],
            params,
            &[],
        )
        .unwrap()
    }

    #[test]
    fn scores_a_table_and_writes_metrics_and_csv() {
        let df = df!(
            "hyp" => ["the cat sat on the mat", "a dog runs", ""],
            "refs" => ["the cat is on the mat", "the dog is running", "nothing"],
            "data_type" => ["x", "y", "x"],
        )
        .unwrap();
        let out = run(
            &df,
            json!({"metrics": ["bleu", "rouge_l", "cider_d"], "group_by": "data_type", "experiment": "demo"}),
        );
        let scores = table_from_bytes(&out["scores"]);
        assert_eq!(scores.height(), 3);
        let names: Vec<&str> = scores
            .get_column_names()
            .iter()
            .map(|n| n.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "row",
                "data_type",
                "bleu",
                "rouge_l_precision",
                "rouge_l_recall",
                "rouge_l",
                "cider_d"
            ]
        );
        let m: Value = serde_json::from_slice(&out["metrics"]).unwrap();
        assert_eq!(m["n"], json!(3));
        assert!(m["groups"]["x"]["n"] == json!(2));
        let csv = String::from_utf8(out["results"].clone()).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert!(lines[1].starts_with("demo,all,"), "{csv}");
        assert_eq!(lines.len(), 4);
        // Deterministic bytes.
        let again = run(
            &df,
            json!({"metrics": ["bleu", "rouge_l", "cider_d"], "group_by": "data_type", "experiment": "demo"}),
        );
        assert_eq!(out, again);
    }

    #[test]
    fn reads_expstar_rows_and_scores_sections() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/expstar-demo/7eval/eval.jsonl");
        let Ok(text) = std::fs::read_to_string(&path) else {
            expflow_tests::skip::skip_or_fail(&format!(
                "{} is missing (the ../shared checkout)",
                path.display()
            ));
            return;
        };
        let mut pred = Vec::new();
        let mut gt = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).unwrap();
            pred.push(v["pred"]["feedback"].as_str().unwrap().to_string());
            gt.push(v["gt"]["feedback"].as_str().unwrap().to_string());
        }
        let p = StructChunked::from_series(
            "pred".into(),
            pred.len(),
            [Series::new("feedback".into(), pred.clone())].iter(),
        )
        .unwrap()
        .into_series();
        let g = StructChunked::from_series(
            "gt".into(),
            gt.len(),
            [Series::new("feedback".into(), gt.clone())].iter(),
        )
        .unwrap()
        .into_series();
        let df = DataFrame::new(pred.len(), vec![g.into(), p.into()]).unwrap();
        let out = run(
            &df,
            json!({"metrics": ["bleu", "rouge_l", "cider_d"], "sections": true}),
        );
        let m: Value = serde_json::from_slice(&out["metrics"]).unwrap();
        assert_eq!(m["n"], json!(pred.len()));
        assert!(m["sections"]["Narration"]["n"].as_u64().unwrap() >= 1);
        let direct = corpus::score(
            &pred,
            &gt.iter().map(|g| vec![g.clone()]).collect::<Vec<_>>(),
            &TextConfig {
                metrics: vec![Metric::Bleu],
                ..TextConfig::default()
            },
        )
        .unwrap()
        .1;
        assert_eq!(m["bleu"], json!(direct.bleu.unwrap().score / 100.0));
    }

    #[test]
    fn bad_parameters_are_named() {
        let e = ScoreText.check(
            &json!({"metrics": ["bleu", "bert"], "tokenize": "13a", "smooth": "exp",
                    "rouge_aggregate": "mean", "cider_sigma": 6.0, "sections": false,
                    "lowercase": false, "rouge_stemmer": false, "wordnet_dir": "/x"})
            .as_object()
            .unwrap()
            .clone(),
        );
        assert!(e[0].contains("unknown metric `bert`"), "{e:?}");
    }

    #[test]
    fn missing_wordnet_is_a_clear_error() {
        let df = df!("hyp" => ["a"], "refs" => ["a"]).unwrap();
        let e = run_op(
            &ScoreText,
            &[InputBytes {
                port: "table",
                ty: PortType::Table,
                bytes: table_bytes(&df),
            }],
            json!({"metrics": ["meteor"], "wordnet_dir": "/nonexistent/wordnet"}),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("wordnet-base"), "{e}");
    }
}
