//! One sequence being generated: its sampler, the tokens picked so far, their
//! log-probabilities and why it ended. Shared by the text [`crate::Generator`] and the
//! vision-language model, whose batch loops differ only in how they run the decoder.

use tokenizers::Tokenizer;

use crate::api::{Completion, FinishReason, Sampling, TokenLogprob};
use crate::error::{ModelError, Result};
use crate::sampling::{Rng, log_softmax, pick, top_n};

/// A sequence's decoding state.
#[derive(Debug)]
pub struct Row<'a> {
    /// Tokens of its prompt.
    pub prompt_len: usize,
    pub sampling: &'a Sampling,
    rng: Rng,
    /// Tokens picked so far (an end-of-sequence token is not kept).
    pub ids: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    text: Option<String>,
    /// Why it ended; `None` while it runs.
    pub finish: Option<FinishReason>,
}

fn decode(tok: &Tokenizer, ids: &[u32]) -> Result<String> {
    tok.decode(ids, false)
        .map_err(|e| ModelError::Tokenizer(format!("cannot decode {ids:?}: {e}")))
}

impl<'a> Row<'a> {
    /// Sample `k` of a request (its generator is seeded with the request's seed and `k`).
    pub fn new(prompt_len: usize, sampling: &'a Sampling, k: usize) -> Row<'a> {
        Row {
            prompt_len,
            sampling,
            rng: Rng::for_sample(sampling.seed, k as u64),
            ids: Vec::new(),
            logprobs: Vec::new(),
            text: None,
            finish: (sampling.max_new_tokens == 0).then_some(FinishReason::Length),
        }
    }

    /// The token to feed next: the last one picked (or `pad` when none, or when finished).
    pub fn next_input(&self, pad: u32) -> u32 {
        match self.finish {
            None => *self.ids.last().unwrap_or(&pad),
            Some(_) => pad,
        }
    }

    /// Picks the next token from `logits` and updates the state: an end-of-sequence token in
    /// `eos`, a stop string, `max_new_tokens` or `max_pos` ends the sequence.
    pub fn advance(
        &mut self,
        logits: &[f32],
        eos: &[u32],
        tok: &Tokenizer,
        max_pos: usize,
    ) -> Result<()> {
        let s = self.sampling;
        let t = pick(logits, s, &mut self.rng);
        if eos.contains(&t) {
            self.finish = Some(FinishReason::Stop);
            return Ok(());
        }
        self.ids.push(t);
        if s.logprobs {
            let lp = log_softmax(logits);
            let mut top = Vec::new();
            for (id, v) in top_n(&lp, s.top_logprobs) {
                top.push((decode(tok, &[id])?, v));
            }
            self.logprobs.push(TokenLogprob {
                id: t,
                token: decode(tok, &[t])?,
                logprob: lp[t as usize],
                top,
            });
        }
        if !s.stop.is_empty() {
            let text = decode(tok, &self.ids)?;
            let cut = s
                .stop
                .iter()
                .filter(|x| !x.is_empty())
                .filter_map(|x| text.find(x.as_str()))
                .min();
            if let Some(at) = cut {
                self.text = Some(text[..at].to_string());
                self.finish = Some(FinishReason::Stop);
                return Ok(());
            }
        }
        if self.ids.len() >= s.max_new_tokens || self.prompt_len + self.ids.len() >= max_pos {
            self.finish = Some(FinishReason::Length);
        }
        Ok(())
    }

    /// The finished completion (text cut at a stop string, else the decoded tokens).
    pub fn into_completion(self, tok: &Tokenizer) -> Result<Completion> {
        let text = match self.text {
            Some(t) => t,
            None => decode(tok, &self.ids)?,
        };
        Ok(Completion {
            text,
            token_ids: self.ids,
            finish_reason: self.finish.unwrap_or(FinishReason::Length),
            logprobs: self.sampling.logprobs.then_some(self.logprobs),
        })
    }
}
