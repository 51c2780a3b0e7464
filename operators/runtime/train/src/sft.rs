//! Supervised fine-tuning: cross-entropy on the assistant turns' tokens.

use std::collections::BTreeMap;

use candle_core::Tensor;
use expflow_models::{ChatMessage, TrainSequence, Trainable};

use crate::error::{Result, TrainError};
use crate::trainer::{Objective, sequence_logps};

/// Token-level SFT on tokenised conversations, with an optional dev set for `eval_loss`.
pub struct Sft {
    pub train: Vec<TrainSequence>,
    pub dev: Vec<TrainSequence>,
    pub eval_batch: usize,
}

impl Sft {
    /// Tokenises conversations (cut at `max_len` tokens); a conversation left with no
    /// labelled token is an error naming it.
    pub fn encode(
        model: &dyn Trainable,
        conversations: &[Vec<ChatMessage>],
        max_len: usize,
        what: &str,
    ) -> Result<Vec<TrainSequence>> {
        conversations
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let s = model.encode_chat(c, max_len)?;
                if s.labels
                    .iter()
                    .skip(1)
                    .all(|&l| l == expflow_models::IGNORE)
                {
                    return Err(TrainError::Data(format!(
                        "{what} row {}: no assistant token within max_len {max_len} ({} tokens \
                         before the first answer); raise max_len",
                        i + 1,
                        s.ids.len()
                    )));
                }
                Ok(s)
            })
            .collect()
    }

    /// Mean negative log-likelihood per trained token over `seqs`.
    pub fn mean_nll(model: &dyn Trainable, seqs: &[TrainSequence], batch: usize) -> Result<f64> {
        let (mut sum, mut n) = (0f64, 0usize);
        for chunk in seqs.chunks(batch.max(1)) {
            let refs: Vec<&TrainSequence> = chunk.iter().collect();
            let logits = model.train_logits(&refs)?;
            let labels: Vec<&[i64]> = chunk.iter().map(|s| s.labels.as_slice()).collect();
            let (lp, counts) = sequence_logps(&logits, &labels)?;
            sum -= lp
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            n += counts.iter().sum::<usize>();
        }
        Ok(sum / n.max(1) as f64)
    }
}

impl Objective for Sft {
    fn items(&self) -> usize {
        self.train.len()
    }

    fn micro(
        &mut self,
        model: &dyn Trainable,
        items: &[usize],
    ) -> Result<(Tensor, f64, BTreeMap<String, f64>)> {
        let batch: Vec<&TrainSequence> = items.iter().map(|&i| &self.train[i]).collect();
        let logits = model.train_logits(&batch)?;
        let labels: Vec<&[i64]> = batch.iter().map(|s| s.labels.as_slice()).collect();
        let (lp, counts) = sequence_logps(&logits, &labels)?;
        let loss = lp.sum_all()?.neg()?;
        Ok((loss, counts.iter().sum::<usize>() as f64, BTreeMap::new()))
    }

    fn evaluate(&mut self, model: &mut dyn Trainable) -> Result<BTreeMap<String, f64>> {
        if self.dev.is_empty() {
            return Ok(BTreeMap::new());
        }
        let loss = Sft::mean_nll(model, &self.dev, self.eval_batch)?;
        Ok(BTreeMap::from([("eval_loss".to_string(), loss)]))
    }
}
