//! BERTScore (Zhang et al. 2020) on the text encoders of [`crate::text`] (BERT, RoBERTa,
//! DeBERTa v1 as `microsoft/deberta-large-mnli`, DeBERTa v2/v3), following the `bert-score`
//! package (0.3.13):
//!
//! - the model is cut after `num_layers` transformer layers and its last states are the token
//!   embeddings (bert-score does the same truncation);
//! - sentences are stripped and tokenised with special tokens, truncated at the tokenizer's
//!   `model_max_length` (capped at the positions the model has); for a GPT-2 or RoBERTa
//!   tokenizer bert-score asks for `add_prefix_space`, so a space is put before the sentence
//!   (DeBERTa's GPT-2 BPE gets none, as in bert-score). transformers 5 ignores that keyword
//!   (its tokenizers take `add_prefix_space` only when loaded), so bert-score under
//!   transformers 5 encodes RoBERTa without the space: [`BertScorer::with_prefix_space`]
//!   picks either; the default is the space, as under transformers 4, which bert-score's
//!   published baselines and ExpStar's era used;
//! - every token embedding is divided by its L2 norm; greedy matching takes, for each
//!   candidate token, the best cosine against all reference tokens (precision) and the other
//!   way round (recall); `[CLS]`/`[SEP]` take part in matching but weigh 0;
//! - weights are 1, or with `idf` the reference-corpus idf `ln((M + 1) / (df + 1))`
//!   (`ln(M + 1)` for tokens no reference has), normalised per sentence;
//! - F = 2PR / (P + R) (0 when undefined); a candidate or reference with no tokens besides
//!   `[CLS]`/`[SEP]` scores P = R = F = 0, as bert-score does;
//! - when every weight of a sentence is 0 (with idf over a single reference, say), P and R
//!   are 0/0 = NaN and F is 0, again as in bert-score;
//! - optional baseline rescaling: `(x - b) / (1 - b)` for P, R, F separately.
//!
//! - bert-score matches the pairs in batches of `batch_size` (its argument; 64 by default,
//!   15 in ExpStar's `batch_evaluate.py`), padded to the batch's longest candidate and
//!   reference, and multiplies the padded similarities by 0; so when the reference is shorter
//!   than the batch's longest, a candidate token's best cosine is at least 0 (likewise for
//!   recall with the candidate). This scorer does the same with the same batches
//!   ([`BertScorer::with_batch_size`]), so a token whose cosines are all negative scores as
//!   there.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, Device, Tensor};
use expflow_models::{ModelDir, Pooling};
use serde_json::Value;

use crate::error::{EncoderError, Result};
use crate::text::{Architecture, TextEncoder};

/// Baseline values of one layer, for rescaling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Baseline {
    pub p: f32,
    pub r: f32,
    pub f: f32,
}

impl Baseline {
    /// Reads bert-score's baseline CSV layout (`LAYER,P,R,F`, one row per layer) and returns
    /// the row of `layer`.
    pub fn from_csv(path: &Path, layer: usize) -> Result<Baseline> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            EncoderError::config(path, format!("cannot read the baseline file: {e}"))
        })?;
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<String> = lines
            .next()
            .unwrap_or("")
            .split(',')
            .map(|h| h.trim().to_ascii_uppercase())
            .collect();
        let col = |name: &str| {
            header.iter().position(|h| h == name).ok_or_else(|| {
                EncoderError::config(path, format!("no `{name}` column (expected LAYER,P,R,F)"))
            })
        };
        let (cl, cp, cr, cf) = (col("LAYER")?, col("P")?, col("R")?, col("F")?);
        for line in lines {
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            let num = |i: usize| cells.get(i).and_then(|c| c.parse::<f64>().ok());
            if num(cl).map(|l| l as usize) == Some(layer) {
                return match (num(cp), num(cr), num(cf)) {
                    (Some(p), Some(r), Some(f)) => Ok(Baseline {
                        p: p as f32,
                        r: r as f32,
                        f: f as f32,
                    }),
                    _ => Err(EncoderError::config(
                        path,
                        format!("row of layer {layer} is not numeric: {line}"),
                    )),
                };
            }
        }
        Err(EncoderError::config(
            path,
            format!("no row for layer {layer}"),
        ))
    }
}

/// Precision, recall and F1 per candidate/reference pair.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BertScores {
    pub p: Vec<f32>,
    pub r: Vec<f32>,
    pub f: Vec<f32>,
}

/// Token weights: idf from a reference corpus, or 1 for every token.
#[derive(Clone, Debug, PartialEq)]
pub struct IdfWeights {
    /// Token id → weight; tokens not listed get `default`.
    pub weights: HashMap<u32, f64>,
    pub default: f64,
}

/// A BERT model cut after `num_layers` layers, scoring candidate/reference pairs.
pub struct BertScorer {
    encoder: TextEncoder,
    cls_id: Option<u32>,
    sep_id: Option<u32>,
    num_layers: usize,
    prefix_space: bool,
    prefix_space_applies: bool,
    batch_size: usize,
}

/// bert-score's default `batch_size`.
pub const DEFAULT_BATCH_SIZE: usize = 64;

fn special_token(dir: &ModelDir, key: &str, default: &str) -> String {
    match dir.tokenizer_config.as_ref().and_then(|t| t.get(key)) {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string(),
        None => default.to_string(),
    }
}

/// The best cosine of each candidate token (a row of `sim`) and of each of the `n_ref`
/// reference tokens (a column). With `hyp_floor` the reference was padded in its batch, whose
/// padded similarities bert-score multiplies by 0: a candidate token's best is then at least
/// 0; `ref_floor` likewise for the reference tokens.
fn greedy_best(
    sim: &[Vec<f32>],
    n_ref: usize,
    (hyp_floor, ref_floor): (bool, bool),
) -> (Vec<f32>, Vec<f32>) {
    let start = |floor: bool| if floor { 0.0 } else { f32::NEG_INFINITY };
    let per_hyp = sim
        .iter()
        .map(|row| row.iter().copied().fold(start(hyp_floor), f32::max))
        .collect();
    let per_ref = (0..n_ref)
        .map(|j| {
            sim.iter()
                .map(|row| row[j])
                .fold(start(ref_floor), f32::max)
        })
        .collect();
    (per_hyp, per_ref)
}

/// Whether bert-score encodes with `add_prefix_space=True`: it does for the tokenizer classes
/// `GPT2Tokenizer` and `RobertaTokenizer` (and, through transformers' Auto classes, their fast
/// twins), which RoBERTa checkpoints name or imply.
fn prefix_space(dir: &ModelDir, arch: Architecture) -> bool {
    let class = dir
        .tokenizer_config
        .as_ref()
        .and_then(|t| t.get("tokenizer_class"))
        .and_then(Value::as_str);
    match class {
        Some(c) => matches!(
            c.trim_end_matches("Fast"),
            "GPT2Tokenizer" | "RobertaTokenizer"
        ),
        None => arch == Architecture::Roberta,
    }
}

impl BertScorer {
    /// Loads the first `num_layers` layers of the BERT model in `dir`. `max_len` defaults to
    /// the tokenizer's `model_max_length`, capped at `max_position_embeddings`.
    pub fn load(
        dir: &ModelDir,
        device: &Device,
        num_layers: usize,
        max_len: Option<usize>,
    ) -> Result<BertScorer> {
        let arch = Architecture::of(dir)?;
        let max_pos = arch.positions(dir);
        let max_len = max_len.unwrap_or_else(|| {
            dir.tokenizer_config
                .as_ref()
                .and_then(|t| t.get("model_max_length"))
                .and_then(Value::as_u64)
                .map_or(max_pos, |m| (m as usize).min(max_pos))
        });
        let encoder =
            TextEncoder::load_layers(dir, device, Pooling::Mean, false, max_len, Some(num_layers))?;
        let (cls, sep) = match arch {
            Architecture::Roberta => ("<s>", "</s>"),
            _ => ("[CLS]", "[SEP]"),
        };
        let cls_id = encoder.token_id(&special_token(dir, "cls_token", cls));
        let sep_id = encoder.token_id(&special_token(dir, "sep_token", sep));
        Ok(BertScorer {
            encoder,
            cls_id,
            sep_id,
            num_layers,
            prefix_space: prefix_space(dir, arch),
            prefix_space_applies: prefix_space(dir, arch),
            batch_size: DEFAULT_BATCH_SIZE,
        })
    }

    /// Whether a space goes before each sentence (see the module notes): `true` is bert-score
    /// under transformers 4, `false` under transformers 5. Only GPT-2/RoBERTa tokenizers are
    /// affected; for others this does nothing.
    pub fn with_prefix_space(mut self, on: bool) -> BertScorer {
        self.prefix_space = on && self.prefix_space_applies;
        self
    }

    /// bert-score's `batch_size`: the pairs matched together, whose padding floors a best
    /// cosine at 0 (see the module notes). At least 1.
    pub fn with_batch_size(mut self, batch_size: usize) -> BertScorer {
        self.batch_size = batch_size.max(1);
        self
    }

    pub fn prefix_space(&self) -> bool {
        self.prefix_space
    }

    pub fn num_layers(&self) -> usize {
        self.num_layers
    }

    /// The texts as bert-score hands them to the tokenizer: stripped, and after a space for
    /// the tokenizers it calls with `add_prefix_space=True`.
    fn prepare(&self, texts: &[String]) -> Vec<String> {
        texts
            .iter()
            .map(|t| {
                let t = t.trim();
                if self.prefix_space && !t.is_empty() {
                    format!(" {t}")
                } else {
                    t.to_string()
                }
            })
            .collect()
    }

    /// Each text's token ids and layer-L token states.
    pub fn token_states(&self, texts: &[String]) -> Result<Vec<crate::text::TokenStates>> {
        self.encoder.token_states(&self.prepare(texts))
    }

    /// Each text's token ids, as bert-score's `sent_encode` gives them.
    pub fn encode(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        self.encoder.tokenize(&self.prepare(texts))
    }

    fn special(&self, id: u32) -> bool {
        Some(id) == self.cls_id || Some(id) == self.sep_id
    }

    /// idf weights from `refs` (bert-score's `get_idf_dict`), with `[CLS]`/`[SEP]` at 0.
    pub fn idf(&self, refs: &[String]) -> Result<IdfWeights> {
        let ids = self.encode(refs)?;
        let m = refs.len() as f64;
        let mut df: HashMap<u32, usize> = HashMap::new();
        for row in &ids {
            let mut seen: Vec<u32> = row.clone();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                *df.entry(id).or_default() += 1;
            }
        }
        let mut weights: HashMap<u32, f64> = df
            .into_iter()
            .map(|(id, c)| (id, ((m + 1.0) / (c as f64 + 1.0)).ln()))
            .collect();
        for id in [self.cls_id, self.sep_id].into_iter().flatten() {
            weights.insert(id, 0.0);
        }
        Ok(IdfWeights {
            weights,
            default: (m + 1.0).ln(),
        })
    }

    /// Weight 1 for every token but `[CLS]`/`[SEP]`.
    pub fn uniform_weights(&self) -> IdfWeights {
        let mut weights = HashMap::new();
        for id in [self.cls_id, self.sep_id].into_iter().flatten() {
            weights.insert(id, 0.0);
        }
        IdfWeights {
            weights,
            default: 1.0,
        }
    }

    /// Scores `cands[i]` against `refs[i]`; `idf` weights by the references' idf; `baseline`
    /// rescales.
    pub fn score(
        &self,
        cands: &[String],
        refs: &[String],
        idf: bool,
        baseline: Option<Baseline>,
    ) -> Result<BertScores> {
        if cands.len() != refs.len() {
            return Err(EncoderError::Param(format!(
                "BERTScore needs as many candidates as references ({} vs {})",
                cands.len(),
                refs.len()
            )));
        }
        let weights = if idf {
            self.idf(refs)?
        } else {
            self.uniform_weights()
        };
        self.score_with(cands, refs, &weights, baseline)
    }

    /// Scores with given token weights (for example idf from a larger corpus).
    pub fn score_with(
        &self,
        cands: &[String],
        refs: &[String],
        weights: &IdfWeights,
        baseline: Option<Baseline>,
    ) -> Result<BertScores> {
        let hyp_states = self.encoder.token_states(&self.prepare(cands))?;
        let ref_states = self.encoder.token_states(&self.prepare(refs))?;
        let mut out = BertScores::default();
        // The longest candidate and reference of each of bert-score's batches.
        let longest = |states: &[crate::text::TokenStates]| -> Vec<usize> {
            states
                .chunks(self.batch_size)
                .map(|c| c.iter().map(|s| s.ids.len()).max().unwrap_or(0))
                .collect()
        };
        let (hyp_max, ref_max) = (longest(&hyp_states), longest(&ref_states));
        for (k, (h, r)) in hyp_states.iter().zip(&ref_states).enumerate() {
            let b = k / self.batch_size;
            let floors = (r.ids.len() < ref_max[b], h.ids.len() < hyp_max[b]);
            let (mut p, mut rc, mut f) =
                self.pair(&h.ids, &h.states, &r.ids, &r.states, weights, floors)?;
            if let Some(b) = baseline {
                p = (p - b.p as f64) / (1.0 - b.p as f64);
                rc = (rc - b.r as f64) / (1.0 - b.r as f64);
                f = (f - b.f as f64) / (1.0 - b.f as f64);
            }
            out.p.push(p as f32);
            out.r.push(rc as f32);
            out.f.push(f as f32);
        }
        Ok(out)
    }

    fn pair(
        &self,
        hyp_ids: &[u32],
        hyp: &Tensor,
        ref_ids: &[u32],
        refs: &Tensor,
        w: &IdfWeights,
        (hyp_floor, ref_floor): (bool, bool),
    ) -> Result<(f64, f64, f64)> {
        let content = |ids: &[u32]| ids.iter().filter(|&&i| !self.special(i)).count();
        if content(hyp_ids) == 0 || content(ref_ids) == 0 {
            return Ok((0.0, 0.0, 0.0));
        }
        let unit = |t: &Tensor| -> Result<Tensor> {
            Ok(t.broadcast_div(&t.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?)
        };
        let sim = unit(hyp)?.matmul(&unit(refs)?.t()?)?.to_vec2::<f32>()?;
        let weight = |id: &u32| *w.weights.get(id).unwrap_or(&w.default);
        let weighted = |best: Vec<f32>, ids: &[u32]| -> f64 {
            let ws: Vec<f64> = ids.iter().map(weight).collect();
            let total: f64 = ws.iter().sum();
            best.iter()
                .zip(&ws)
                .map(|(b, w)| *b as f64 * w / total)
                .sum()
        };
        let (best_per_hyp, best_per_ref) = greedy_best(&sim, ref_ids.len(), (hyp_floor, ref_floor));
        let p = weighted(best_per_hyp, hyp_ids);
        let r = weighted(best_per_ref, ref_ids);
        let f = 2.0 * p * r / (p + r);
        Ok((p, r, if f.is_nan() { 0.0 } else { f }))
    }
}

#[cfg(test)]
mod tests {
    use super::greedy_best;

    #[test]
    fn padding_floors_the_best_cosine_at_zero() {
        // Candidate token 0 has only negative cosines; reference token 1 too.
        let sim = vec![vec![-0.4, -0.2], vec![0.9, -0.5]];
        assert_eq!(
            greedy_best(&sim, 2, (false, false)),
            (vec![-0.2, 0.9], vec![0.9, -0.2])
        );
        // The reference was padded in its batch: candidate tokens see a 0.
        assert_eq!(
            greedy_best(&sim, 2, (true, false)),
            (vec![0.0, 0.9], vec![0.9, -0.2])
        );
        // The candidate was padded: reference tokens see a 0.
        assert_eq!(
            greedy_best(&sim, 2, (false, true)),
            (vec![-0.2, 0.9], vec![0.9, 0.0])
        );
    }
}
