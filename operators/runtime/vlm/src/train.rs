//! [`Trainable`] for the vision-language model: conversations with images rendered by the
//! chat template, each image placeholder expanded to the image's token count (never
//! labelled), and logits of right-padded batches with the vision features merged in and
//! M-RoPE positions per sequence. Adapters go on the language model's linears; the vision
//! tower stays frozen.

use candle_core::{DType, Device, Tensor};
use expflow_models::train_impl::chat_segments;
use expflow_models::{
    ChatMessage, ContentPart, GenRequest, IGNORE, Linear, ModelError, Sampling, TrainSequence,
    Trainable,
};

use crate::error::VlmError;
use crate::model::{VisionLanguageModel, Visual};

fn model_error(e: VlmError) -> ModelError {
    match e {
        VlmError::Model(m) => m,
        VlmError::Candle(c) => ModelError::Candle(c),
        other => ModelError::Request(other.to_string()),
    }
}

impl VisionLanguageModel {
    fn train_sequence(
        &self,
        messages: &[ChatMessage],
        max_len: usize,
    ) -> crate::Result<TrainSequence> {
        let mut images = Vec::new();
        for p in messages.iter().flat_map(|m| &m.content) {
            match p {
                ContentPart::Image { path } => images.push(path.clone()),
                ContentPart::Video { path } => {
                    return Err(VlmError::Request(format!(
                        "{}: training on videos is not supported; sample frames and pass them as images",
                        path.display()
                    )));
                }
                ContentPart::Text { .. } => {}
            }
        }
        let segments = chat_segments(|m, g| self.chat.render(m, g), messages)?;
        let pad = self.config.image_token_id;
        let (mut ids, mut labels) = (Vec::new(), Vec::new());
        // Where each image's placeholder run starts and ends.
        let mut runs = Vec::new();
        for (text, trained) in &segments {
            for t in self.encode(text)? {
                if t == pad {
                    let path = images.get(runs.len()).ok_or_else(|| {
                        VlmError::Request(format!(
                            "the chat template wrote more image placeholders than the {} images",
                            images.len()
                        ))
                    })?;
                    let n = self.tokens_for_file(path)?;
                    runs.push((ids.len(), ids.len() + n));
                    ids.extend(std::iter::repeat_n(pad, n));
                    labels.extend(std::iter::repeat_n(IGNORE, n));
                } else {
                    ids.push(t);
                    labels.push(if *trained { i64::from(t) } else { IGNORE });
                }
            }
        }
        if runs.len() != images.len() {
            return Err(VlmError::Request(format!(
                "{} images, but the chat template wrote {} image placeholders",
                images.len(),
                runs.len()
            )));
        }
        // Cut at `max_len`, and before an image whose tokens would not all fit.
        let kept = runs.iter().take_while(|(_, end)| *end <= max_len).count();
        let len = match runs.get(kept) {
            Some((start, _)) => (*start).min(max_len),
            None => max_len,
        };
        ids.truncate(len);
        labels.truncate(len);
        images.truncate(kept);
        Ok(TrainSequence {
            ids,
            labels,
            images,
        })
    }

    fn batch_logits(&self, batch: &[&TrainSequence]) -> crate::Result<Tensor> {
        if batch.iter().any(|s| s.ids.is_empty()) {
            return Err(VlmError::Request("an empty training sequence".into()));
        }
        let len = batch.iter().map(|s| s.ids.len()).max().unwrap_or(0);
        let dtype = self.text.dtype();
        let hidden = self.config.text.hidden_size;
        let (mut embeds, mut coss, mut sins, mut keys) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for seq in batch {
            let pixels = self.process_images(&seq.images)?;
            let media = Visual::images(&pixels);
            let s = seq.ids.len();
            let mut e = self.merged_embeds(&seq.ids, &media)?;
            let mut rows = self.media_positions(&seq.ids, &media)?.rows;
            if s < len {
                let zeros = Tensor::zeros((1, len - s, hidden), e.dtype(), &self.device)?;
                e = Tensor::cat(&[&e, &zeros], 1)?;
                for r in &mut rows {
                    r.resize(len, 0);
                }
            }
            let (cos, sin) = self.mrope.tables(&rows, dtype, &self.device)?;
            embeds.push(e);
            coss.push(cos);
            sins.push(sin);
            keys.extend(std::iter::repeat_n(1u8, s).chain(std::iter::repeat_n(0u8, len - s)));
        }
        let embeds = Tensor::cat(&embeds, 0)?;
        let cos = Tensor::cat(&coss, 0)?;
        let sin = Tensor::cat(&sins, 0)?;
        let keys = Tensor::from_vec(keys, (batch.len(), len), &self.device)?;
        let h = self.text.forward_embeds(&embeds, &cos, &sin, &keys, None)?;
        Ok(self.text.logits(&h)?.to_dtype(DType::F32)?)
    }
}

impl Trainable for VisionLanguageModel {
    fn encode_chat(
        &self,
        messages: &[ChatMessage],
        max_len: usize,
    ) -> expflow_models::Result<TrainSequence> {
        self.train_sequence(messages, max_len).map_err(model_error)
    }

    fn train_logits(&self, batch: &[&TrainSequence]) -> expflow_models::Result<Tensor> {
        self.batch_logits(batch).map_err(model_error)
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        self.text.linears_mut()
    }

    fn set_differentiable(&mut self, on: bool) {
        self.text.differentiable = on;
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn next_token_logprobs(
        &self,
        messages: &[ChatMessage],
        candidates: &[&str],
    ) -> expflow_models::Result<Vec<f32>> {
        self.render_chat(messages)
            .and_then(|req| VisionLanguageModel::next_token_logprobs(self, &req, candidates))
            .map_err(model_error)
    }

    fn complete(
        &self,
        messages: &[ChatMessage],
        max_new_tokens: usize,
    ) -> expflow_models::Result<String> {
        let run = || -> crate::Result<String> {
            let req = GenRequest {
                sampling: Sampling {
                    max_new_tokens,
                    ..Sampling::default()
                },
                ..self.render_chat(messages)?
            };
            let out = self.generate(&[req])?;
            Ok(out
                .into_iter()
                .next()
                .map(|g| g.into_first_text())
                .unwrap_or_default())
        };
        run().map_err(model_error)
    }
}
