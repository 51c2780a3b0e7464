//! [`Trainable`] for the Qwen2 [`Generator`]: conversations rendered with the model's chat
//! template and tokenised segment by segment, so that every assistant turn (its content and
//! the template's end-of-turn text) is labelled and nothing else is; logits of right-padded
//! batches.

use candle_core::{DType, Device, Tensor};

use crate::api::ChatMessage;
use crate::error::{ModelError, Result};
use crate::generate::Generator;
use crate::qwen2::Linear;
use crate::trainable::{IGNORE, TrainSequence, Trainable};

/// Splits the rendering of `messages` into `(text, trained)` segments: the text before each
/// assistant turn (its header included) is not trained on; the turn's rendered content up to
/// the next message is. Needs a template whose rendering of a prefix of the conversation is a
/// prefix of the whole (true of ChatML and of the Qwen, Llama and Mistral templates).
pub fn chat_segments(
    render: impl Fn(&[ChatMessage], bool) -> Result<String>,
    messages: &[ChatMessage],
) -> Result<Vec<(String, bool)>> {
    let mut segments = Vec::new();
    let mut done = 0usize; // bytes of the rendering already in segments
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let prompt = render(&messages[..i], true)?;
        let full = render(&messages[..=i], false)?;
        if !full.starts_with(&prompt) || prompt.len() < done {
            return Err(ModelError::Request(format!(
                "the chat template does not render message {i} (assistant) as an extension of \
                 the conversation before it, so its tokens cannot be labelled; use a template \
                 whose rendered prefixes are prefixes of the whole (ChatML, Qwen, Llama)"
            )));
        }
        if prompt.len() > done {
            segments.push((prompt[done..].to_string(), false));
        }
        segments.push((full[prompt.len()..].to_string(), true));
        done = full.len();
    }
    let whole = render(messages, false)?;
    if whole.len() > done && whole.starts_with(&segments_text(&segments)) {
        segments.push((whole[done..].to_string(), false));
    }
    Ok(segments)
}

fn segments_text(segments: &[(String, bool)]) -> String {
    segments.iter().map(|(s, _)| s.as_str()).collect()
}

/// `(ids, positions, key_mask)` of right-padded sequences, all `(batch, len)`.
pub fn right_pad(
    seqs: &[&[u32]],
    pad: u32,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let b = seqs.len();
    let len = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let (mut ids, mut pos, mut mask) = (Vec::new(), Vec::new(), Vec::new());
    for s in seqs {
        let pad_n = len - s.len();
        ids.extend(s.iter().copied().chain(std::iter::repeat_n(pad, pad_n)));
        pos.extend((0..s.len() as u32).chain(std::iter::repeat_n(0, pad_n)));
        mask.extend(std::iter::repeat_n(1u8, s.len()).chain(std::iter::repeat_n(0u8, pad_n)));
    }
    Ok((
        Tensor::from_vec(ids, (b, len), device)?,
        Tensor::from_vec(pos, (b, len), device)?,
        Tensor::from_vec(mask, (b, len), device)?,
    ))
}

impl Trainable for Generator {
    fn encode_chat(&self, messages: &[ChatMessage], max_len: usize) -> Result<TrainSequence> {
        if let Some(i) = messages.iter().position(|m| {
            m.content
                .iter()
                .any(|p| !matches!(p, crate::ContentPart::Text { .. }))
        }) {
            return Err(ModelError::Request(format!(
                "message {i} has an image or video part; a Qwen2 text model trains on text only"
            )));
        }
        let segments = chat_segments(|m, g| self.render_chat(m, g), messages)?;
        let (mut ids, mut labels) = (Vec::new(), Vec::new());
        for (text, trained) in &segments {
            let seg = self.encode(text)?;
            labels.extend(
                seg.iter()
                    .map(|&t| if *trained { i64::from(t) } else { IGNORE }),
            );
            ids.extend(seg);
        }
        ids.truncate(max_len);
        labels.truncate(max_len);
        Ok(TrainSequence {
            ids,
            labels,
            images: Vec::new(),
        })
    }

    fn train_logits(&self, batch: &[&TrainSequence]) -> Result<Tensor> {
        let seqs: Vec<&[u32]> = batch.iter().map(|s| s.ids.as_slice()).collect();
        if seqs.iter().any(|s| s.is_empty()) {
            return Err(ModelError::Request("an empty training sequence".into()));
        }
        let (ids, pos, mask) = right_pad(&seqs, self.pad_id(), self.device())?;
        let logits = self.model().forward(&ids, &pos, &mask, None)?;
        Ok(logits.to_dtype(DType::F32)?)
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        self.model_mut().linears_mut()
    }

    fn set_differentiable(&mut self, on: bool) {
        self.model_mut().differentiable = on;
    }

    fn device(&self) -> &Device {
        Generator::device(self)
    }

    fn next_token_logprobs(
        &self,
        messages: &[ChatMessage],
        candidates: &[&str],
    ) -> Result<Vec<f32>> {
        let prompt = self.render_chat(messages, true)?;
        Generator::next_token_logprobs(self, &prompt, candidates)
    }

    fn complete(&self, messages: &[ChatMessage], max_new_tokens: usize) -> Result<String> {
        let prompt = self.render_chat(messages, true)?;
        let req = crate::GenRequest {
            prompt,
            images: Vec::new(),
            videos: Vec::new(),
            sampling: crate::Sampling {
                max_new_tokens,
                ..crate::Sampling::default()
            },
        };
        let out = self.generate(&[req])?;
        Ok(out
            .into_iter()
            .next()
            .map(|g| g.into_first_text())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dir::{ModelDir, Needs};
    use crate::tiny::{TinySpec, write_tiny_qwen2};

    fn tiny() -> (tempfile::TempDir, Generator) {
        let dir = tempfile::tempdir().unwrap();
        let corpus: Vec<String> = (0..40)
            .map(|i| format!("step {i}: pour the acid slowly into water, then stir"))
            .collect();
        write_tiny_qwen2(dir.path(), &TinySpec::default(), &corpus).unwrap();
        let md = ModelDir::open(dir.path(), Needs::Tokenizer).unwrap();
        let g = Generator::load(&md, &Device::Cpu).unwrap();
        (dir, g)
    }

    #[test]
    fn only_assistant_turns_are_labelled() {
        let (_d, g) = tiny();
        let msgs = vec![
            ChatMessage::text("system", "You narrate."),
            ChatMessage::text("user", "step 1"),
            ChatMessage::text("assistant", "pour the acid"),
            ChatMessage::text("user", "step 2"),
            ChatMessage::text("assistant", "then stir"),
        ];
        let seq = g.encode_chat(&msgs, 4096).unwrap();
        assert_eq!(seq.ids.len(), seq.labels.len());
        // The whole sequence is the template's rendering, token for token.
        let whole = g.decode(&seq.ids).unwrap();
        assert_eq!(whole, g.render_chat(&msgs, false).unwrap());
        // The labelled tokens decode to the two assistant turns with their end markers.
        let trained: Vec<u32> = seq
            .labels
            .iter()
            .filter(|&&l| l != IGNORE)
            .map(|&l| l as u32)
            .collect();
        assert_eq!(
            g.decode(&trained).unwrap(),
            "pour the acid<|im_end|>\nthen stir<|im_end|>\n"
        );
        // Labels equal the ids where set.
        for (i, l) in seq.labels.iter().enumerate() {
            if *l != IGNORE {
                assert_eq!(*l, i64::from(seq.ids[i]));
            }
        }
        let cut = g.encode_chat(&msgs, 5).unwrap();
        assert_eq!(cut.ids, seq.ids[..5]);
    }

    #[test]
    fn right_padded_logits_match_each_sequence_alone() {
        let (_d, g) = tiny();
        let a = g
            .encode_chat(
                &[
                    ChatMessage::text("user", "step 3"),
                    ChatMessage::text("assistant", "stir"),
                ],
                4096,
            )
            .unwrap();
        let b = g
            .encode_chat(
                &[
                    ChatMessage::text("user", "step 12: pour the acid slowly"),
                    ChatMessage::text("assistant", "into water, then stir"),
                ],
                4096,
            )
            .unwrap();
        assert!(a.ids.len() < b.ids.len());
        let both = g.train_logits(&[&a, &b]).unwrap();
        let alone = g.train_logits(&[&a]).unwrap();
        let n = a.ids.len();
        let diff = (both.narrow(0, 0, 1).unwrap().narrow(1, 0, n).unwrap() - alone)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "padding changed the logits by {diff}");
    }
}
