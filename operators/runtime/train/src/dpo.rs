//! Direct preference optimisation (TRL's `dpo_loss`, spec §5): with
//! `h = [log π(y_w) − log π(y_l)] − [log π_ref(y_w) − log π_ref(y_l)]`,
//! - sigmoid: `−(1−ε)·log σ(β·h) − ε·log σ(−β·h)` (ε: label smoothing, cDPO);
//! - ipo: `(h − 1/(2β))²` on length-averaged log-probabilities;
//! - hinge: `max(0, 1 − β·h)`.
//!
//! Logged per pair: `rewards/chosen = β·(log π(y_w) − log π_ref(y_w))`, `rewards/rejected`
//! likewise, `rewards/accuracies` (chosen reward above rejected), `rewards/margins`,
//! `logps/chosen`, `logps/rejected`.

use std::collections::BTreeMap;

use candle_core::Tensor;
use expflow_models::{ChatMessage, IGNORE, TrainSequence, Trainable};
use serde::{Deserialize, Serialize};

use crate::data::Pair;
use crate::error::{Result, TrainError};
use crate::trainer::{Objective, sequence_logps};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    Sigmoid,
    Ipo,
    Hinge,
}

impl Loss {
    pub fn parse(s: &str) -> Result<Loss> {
        match s {
            "sigmoid" => Ok(Loss::Sigmoid),
            "ipo" => Ok(Loss::Ipo),
            "hinge" => Ok(Loss::Hinge),
            o => Err(TrainError::Config(format!(
                "DPO loss `{o}` is unknown; use sigmoid, ipo or hinge"
            ))),
        }
    }
}

/// A pair, tokenised: only the final answer is labelled in each sequence.
#[derive(Clone, Debug)]
pub struct EncodedPair {
    pub chosen: TrainSequence,
    pub rejected: TrainSequence,
}

/// Reference log-probabilities of one pair: sums over the answer tokens and their counts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefLogps {
    pub chosen: f64,
    pub chosen_tokens: usize,
    pub rejected: f64,
    pub rejected_tokens: usize,
}

/// `prompt` + `answer` tokenised with only the answer labelled; `prompt_len` is the
/// prompt's own token count (earlier assistant turns belong to the prompt).
fn answer_only(
    model: &dyn Trainable,
    prompt: &[ChatMessage],
    prompt_len: usize,
    answer: &str,
    max_len: usize,
) -> Result<TrainSequence> {
    let mut msgs = prompt.to_vec();
    msgs.push(ChatMessage::text("assistant", answer));
    let mut seq = model.encode_chat(&msgs, max_len)?;
    let prefix = prompt_len.min(seq.ids.len());
    for l in &mut seq.labels[..prefix] {
        *l = IGNORE;
    }
    Ok(seq)
}

/// Tokenises pairs; a pair whose answers do not fit in `max_len` is an error naming it.
pub fn encode_pairs(
    model: &dyn Trainable,
    pairs: &[Pair],
    max_len: usize,
) -> Result<Vec<EncodedPair>> {
    pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let prompt_len = model.encode_chat(&p.prompt, usize::MAX)?.ids.len();
            let chosen = answer_only(model, &p.prompt, prompt_len, &p.chosen, max_len)?;
            let rejected = answer_only(model, &p.prompt, prompt_len, &p.rejected, max_len)?;
            if chosen.trained_tokens() == 0 || rejected.trained_tokens() == 0 {
                return Err(TrainError::Data(format!(
                    "pair {}: an answer has no token within max_len {max_len}; raise max_len",
                    i + 1
                )));
            }
            Ok(EncodedPair { chosen, rejected })
        })
        .collect()
}

/// Log-probabilities of both answers under `model` as it is (no adapter: the reference).
pub fn reference_logps(
    model: &dyn Trainable,
    pairs: &[EncodedPair],
    batch: usize,
) -> Result<Vec<RefLogps>> {
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch.max(1)) {
        let seqs: Vec<&TrainSequence> = chunk
            .iter()
            .flat_map(|p| [&p.chosen, &p.rejected])
            .collect();
        let logits = model.train_logits(&seqs)?;
        let labels: Vec<&[i64]> = seqs.iter().map(|s| s.labels.as_slice()).collect();
        let (lp, counts) = sequence_logps(&logits, &labels)?;
        let lp = lp.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        for k in 0..chunk.len() {
            out.push(RefLogps {
                chosen: lp[2 * k],
                chosen_tokens: counts[2 * k],
                rejected: lp[2 * k + 1],
                rejected_tokens: counts[2 * k + 1],
            });
        }
    }
    Ok(out)
}

/// `log σ(x)`, stable for large |x|: `min(x, 0) − log(1 + e^{−|x|})`.
fn log_sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    let neg_part = x.neg()?.relu()?.neg()?;
    let soft = ((x.abs()?.neg()?.exp()? + 1.0)?).log()?;
    neg_part - soft
}

/// The per-pair losses for policy and reference log-probabilities (already averaged for IPO).
pub fn pair_losses(
    loss: Loss,
    beta: f64,
    label_smoothing: f64,
    policy_chosen: &Tensor,
    policy_rejected: &Tensor,
    ref_chosen: &Tensor,
    ref_rejected: &Tensor,
) -> candle_core::Result<Tensor> {
    let h = ((policy_chosen - policy_rejected)? - (ref_chosen - ref_rejected)?)?;
    match loss {
        Loss::Sigmoid => {
            let bh = (&h * beta)?;
            let a = (log_sigmoid(&bh)? * -(1.0 - label_smoothing))?;
            let b = (log_sigmoid(&bh.neg()?)? * -label_smoothing)?;
            a + b
        }
        Loss::Ipo => (h - 1.0 / (2.0 * beta))?.sqr(),
        Loss::Hinge => ((h * -beta)? + 1.0)?.relu(),
    }
}

/// The DPO objective over encoded pairs with their reference log-probabilities.
pub struct Dpo {
    pub pairs: Vec<EncodedPair>,
    pub reference: Vec<RefLogps>,
    pub loss: Loss,
    pub beta: f64,
    pub label_smoothing: f64,
}

impl Objective for Dpo {
    fn items(&self) -> usize {
        self.pairs.len()
    }

    fn micro(
        &mut self,
        model: &dyn Trainable,
        items: &[usize],
    ) -> Result<(Tensor, f64, BTreeMap<String, f64>)> {
        let seqs: Vec<&TrainSequence> = items
            .iter()
            .flat_map(|&i| [&self.pairs[i].chosen, &self.pairs[i].rejected])
            .collect();
        let logits = model.train_logits(&seqs)?;
        let labels: Vec<&[i64]> = seqs.iter().map(|s| s.labels.as_slice()).collect();
        let (lp, counts) = sequence_logps(&logits, &labels)?;
        let k = items.len();
        let device = lp.device().clone();
        let lp = lp.reshape((k, 2))?;
        let (mut pc, mut pr) = (
            lp.narrow(1, 0, 1)?.squeeze(1)?,
            lp.narrow(1, 1, 1)?.squeeze(1)?,
        );
        let refs: Vec<RefLogps> = items.iter().map(|&i| self.reference[i]).collect();
        let avg = self.loss == Loss::Ipo;
        let mut rc = Vec::with_capacity(k);
        let mut rr = Vec::with_capacity(k);
        let mut nc = Vec::with_capacity(k);
        let mut nr = Vec::with_capacity(k);
        for (j, r) in refs.iter().enumerate() {
            let (cn, rn) = (counts[2 * j].max(1) as f32, counts[2 * j + 1].max(1) as f32);
            nc.push(if avg { 1.0 / cn } else { 1.0 });
            nr.push(if avg { 1.0 / rn } else { 1.0 });
            rc.push(if avg {
                r.chosen / r.chosen_tokens.max(1) as f64
            } else {
                r.chosen
            } as f32);
            rr.push(if avg {
                r.rejected / r.rejected_tokens.max(1) as f64
            } else {
                r.rejected
            } as f32);
        }
        pc = pc.mul(&Tensor::from_vec(nc, k, &device)?)?;
        pr = pr.mul(&Tensor::from_vec(nr, k, &device)?)?;
        let rc = Tensor::from_vec(rc, k, &device)?;
        let rr = Tensor::from_vec(rr, k, &device)?;
        let losses = pair_losses(
            self.loss,
            self.beta,
            self.label_smoothing,
            &pc,
            &pr,
            &rc,
            &rr,
        )?;
        let v = |t: &Tensor| -> Result<Vec<f64>> {
            Ok(t.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?)
        };
        let (pcv, prv, rcv, rrv) = (v(&pc)?, v(&pr)?, v(&rc)?, v(&rr)?);
        let mut stats = BTreeMap::new();
        for j in 0..k {
            let wc = self.beta * (pcv[j] - rcv[j]);
            let wr = self.beta * (prv[j] - rrv[j]);
            *stats.entry("rewards/chosen".to_string()).or_insert(0.0) += wc;
            *stats.entry("rewards/rejected".to_string()).or_insert(0.0) += wr;
            *stats.entry("rewards/accuracies".to_string()).or_insert(0.0) +=
                f64::from(u8::from(wc > wr));
            *stats.entry("rewards/margins".to_string()).or_insert(0.0) += wc - wr;
            *stats.entry("logps/chosen".to_string()).or_insert(0.0) += pcv[j];
            *stats.entry("logps/rejected".to_string()).or_insert(0.0) += prv[j];
        }
        Ok((losses.sum_all()?, k as f64, stats))
    }

    fn evaluate(&mut self, _model: &mut dyn Trainable) -> Result<BTreeMap<String, f64>> {
        Ok(BTreeMap::new())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    fn sigma(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    #[test]
    fn losses_match_the_formulas() {
        // Policy log-probs (chosen, rejected) and reference log-probs for two pairs.
        let (pc, pr, rc, rr) = (
            [-5.0f64, -2.0],
            [-7.0f64, -1.0],
            [-6.0f64, -2.5],
            [-6.5f64, -1.5],
        );
        let tt = |a: [f64; 2]| t(&[a[0] as f32, a[1] as f32]);
        let (beta, eps) = (0.1, 0.2);
        let h = |j: usize| (pc[j] - pr[j]) - (rc[j] - rr[j]);
        let got = |loss, beta, eps| -> Vec<f32> {
            pair_losses(loss, beta, eps, &tt(pc), &tt(pr), &tt(rc), &tt(rr))
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let s = got(Loss::Sigmoid, beta, eps);
        let i = got(Loss::Ipo, beta, 0.0);
        let g = got(Loss::Hinge, beta, 0.0);
        let plain = got(Loss::Sigmoid, beta, 0.0);
        for j in 0..2 {
            let want_s = -(1.0 - eps) * sigma(beta * h(j)).ln() - eps * sigma(-beta * h(j)).ln();
            assert!((f64::from(s[j]) - want_s).abs() < 1e-5, "sigmoid {j}");
            assert!((f64::from(plain[j]) - (-sigma(beta * h(j)).ln())).abs() < 1e-5);
            let want_i = (h(j) - 1.0 / (2.0 * beta)).powi(2);
            assert!(
                (f64::from(i[j]) - want_i).abs() < 1e-3,
                "ipo {j}: {} vs {want_i}",
                i[j]
            );
            let want_g = (1.0 - beta * h(j)).max(0.0);
            assert!((f64::from(g[j]) - want_g).abs() < 1e-5, "hinge {j}");
        }
        // Stable at extreme margins.
        let big = pair_losses(
            Loss::Sigmoid,
            1.0,
            0.0,
            &t(&[0.0]),
            &t(&[-200.0]),
            &t(&[0.0]),
            &t(&[0.0]),
        )
        .unwrap();
        assert!(big.to_vec1::<f32>().unwrap()[0].abs() < 1e-6);
        let bad = pair_losses(
            Loss::Sigmoid,
            1.0,
            0.0,
            &t(&[-200.0]),
            &t(&[0.0]),
            &t(&[0.0]),
            &t(&[0.0]),
        )
        .unwrap();
        assert!((bad.to_vec1::<f32>().unwrap()[0] - 200.0).abs() < 1e-3);
    }
}
