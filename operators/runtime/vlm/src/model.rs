//! [`VisionLanguageModel`]: a Qwen2.5-VL directory loaded for inference: the processor, the
//! vision tower, the M-RoPE decoder, the tokenizer and the chat template; prompt logits and
//! generation (greedy or seeded sampling, stop strings, log-probabilities).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use expflow_models::decoding::Row;
use expflow_models::sampling::log_softmax;
use expflow_models::{
    ChatMessage, ChatTemplate, ContentPart, GenRequest, Generation, KvCache, ModelDir, Qwen2,
    Sampling,
};
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::config::VlmConfig;
use crate::error::{Result, VlmError};
use crate::image::{ImageProcessor, PixelValues};
use crate::rope::{MRope, VisionSpan, rope_index};
use crate::video::{MAX_FRAMES, Video, load_video};
use crate::vision::VisionTower;

/// Whether `dir` holds a Qwen2.5-VL checkpoint (by `model_type` or architecture).
pub fn is_qwen2_5_vl(dir: &ModelDir) -> bool {
    dir.model_type() == Some("qwen2_5_vl")
        || dir.architecture() == Some("Qwen2_5_VLForConditionalGeneration")
}

/// An image or a video, preprocessed, as the prompt places it (borrowed: pixel buffers are
/// never copied).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Visual<'a> {
    pub pixels: &'a PixelValues,
    /// Videos: seconds per temporal grid step; `None` for images.
    pub seconds_per_grid: Option<f64>,
}

impl<'a> Visual<'a> {
    pub fn image(pixels: &'a PixelValues) -> Visual<'a> {
        Visual {
            pixels,
            seconds_per_grid: None,
        }
    }

    pub fn video(v: &'a Video) -> Visual<'a> {
        Visual {
            pixels: &v.pixels,
            seconds_per_grid: Some(v.seconds_per_grid),
        }
    }

    pub fn images(images: &'a [PixelValues]) -> Vec<Visual<'a>> {
        images.iter().map(Visual::image).collect()
    }
}

/// A loaded Qwen2.5-VL model.
#[derive(Debug)]
pub struct VisionLanguageModel {
    pub config: VlmConfig,
    pub processor: ImageProcessor,
    /// Most sequences decoded together (default 8).
    pub max_batch: usize,
    pub(crate) vision: VisionTower,
    pub(crate) text: Qwen2,
    pub(crate) mrope: MRope,
    pub(crate) tokenizer: Tokenizer,
    pub(crate) chat: ChatTemplate,
    eos: Vec<u32>,
    pub(crate) device: Device,
}

/// A request ready to decode: its ids, embeddings with the visual features merged in, and
/// M-RoPE positions.
struct Prepared {
    len: usize,
    embeds: Tensor,
    rows: [Vec<i64>; 3],
    delta: i64,
}

impl VisionLanguageModel {
    /// Loads a Qwen2.5-VL directory (f32 on CPU, bf16 on a GPU). Accepts the hub's tensor
    /// names (`model.layers`, `visual`) and transformers ≥ 4.52's (`model.language_model`,
    /// `model.visual`).
    pub fn load(dir: &ModelDir, device: &Device) -> Result<VisionLanguageModel> {
        let dtype = if device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        };
        VisionLanguageModel::load_with_dtype(dir, device, dtype)
    }

    pub fn load_with_dtype(
        dir: &ModelDir,
        device: &Device,
        dtype: DType,
    ) -> Result<VisionLanguageModel> {
        let started = Instant::now();
        let arch = dir.architecture().unwrap_or("");
        let mt = dir.model_type().unwrap_or("");
        if !is_qwen2_5_vl(dir) {
            return Err(VlmError::Config {
                path: dir.root.join("config.json"),
                problem: format!(
                    "architecture `{arch}` / model_type `{mt}` is not Qwen2.5-VL \
                     (Qwen2_5_VLForConditionalGeneration, model_type qwen2_5_vl)"
                ),
            });
        }
        let config = VlmConfig::from_dir(dir)?;
        let processor = ImageProcessor::from_dir(dir)?;
        if processor.patch_size != config.vision.patch_size
            || processor.merge_size != config.vision.spatial_merge_size
            || processor.temporal_patch_size != config.vision.temporal_patch_size
        {
            return Err(VlmError::Config {
                path: dir.root.join("preprocessor_config.json"),
                problem: format!(
                    "patch_size {} / merge_size {} / temporal_patch_size {} differ from vision_config's {} / {} / {}",
                    processor.patch_size,
                    processor.merge_size,
                    processor.temporal_patch_size,
                    config.vision.patch_size,
                    config.vision.spatial_merge_size,
                    config.vision.temporal_patch_size
                ),
            });
        }
        let (text_prefix, vision_prefix) = if dir
            .tensors
            .contains_key("model.language_model.embed_tokens.weight")
        {
            ("model.language_model", "model.visual")
        } else {
            ("model", "visual")
        };
        check_tensors(dir, &config, text_prefix, vision_prefix)?;
        let vb = dir.var_builder(dtype, device)?;
        let vision = VisionTower::load(&config.vision, vb.pp(vision_prefix))?;
        let text = Qwen2::from_parts(config.text.qwen2(), vb.pp(text_prefix), vb.clone())?;
        let mrope = MRope::new(
            config.text.head_dim(),
            config.text.rope_theta,
            &config.text.mrope_section,
        );
        let tokenizer = dir.tokenizer()?;
        let chat = ChatTemplate::from_dir(dir)?;
        let eos = eos_ids(dir, &tokenizer);
        if eos.is_empty() {
            tracing::warn!(dir = %dir.root.display(), "no eos_token_id found; generation stops only at max_new_tokens or stop strings");
        }
        tracing::info!(dir = %dir.root.display(), layers = config.text.num_hidden_layers,
            vision_depth = config.vision.depth, ?eos, secs = started.elapsed().as_secs_f64(),
            "vision-language model loaded");
        Ok(VisionLanguageModel {
            config,
            processor,
            vision,
            text,
            mrope,
            tokenizer,
            chat,
            eos,
            device: device.clone(),
            max_batch: 8,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The token ids that end a completion.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// Token ids of `text` (special tokens in the text recognised, none added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| expflow_models::ModelError::Tokenizer(format!("cannot encode: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens kept.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(self.tokenizer.decode(ids, false).map_err(|e| {
            expflow_models::ModelError::Tokenizer(format!("cannot decode {ids:?}: {e}"))
        })?)
    }

    /// Reads and preprocesses image files.
    pub fn process_images(&self, paths: &[PathBuf]) -> Result<Vec<PixelValues>> {
        paths
            .iter()
            .map(|p| self.processor.process_file(p))
            .collect()
    }

    /// The vision tower's merged features for `images`, concatenated:
    /// `(Σ tokens, hidden_size)`.
    pub fn vision_features(&self, images: &[PixelValues]) -> Result<Tensor> {
        self.features(&images.iter().collect::<Vec<_>>())
    }

    fn features(&self, images: &[&PixelValues]) -> Result<Tensor> {
        let grids: Vec<[usize; 3]> = images.iter().map(|p| p.grid_thw).collect();
        let parts = images
            .iter()
            .map(|p| p.to_tensor(&self.device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pixels = Tensor::cat(&parts, 0)?;
        self.vision.forward(&pixels, &grids)
    }

    /// The prompt for `messages` under the chat template, with the generation prompt
    /// appended and each image's placeholder holding as many `<|image_pad|>` tokens as the
    /// image will have; `images` and `videos` list the files in order. A video keeps its
    /// single `<|video_pad|>`, expanded when its frames are sampled (see
    /// [`Self::prompt_ids`]).
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<GenRequest> {
        let mut images = Vec::new();
        let mut videos = Vec::new();
        for part in messages.iter().flat_map(|m| &m.content) {
            match part {
                ContentPart::Image { path } => images.push(path.clone()),
                ContentPart::Video { path } => videos.push(path.clone()),
                ContentPart::Text { .. } => {}
            }
        }
        let rendered = self.chat.render(messages, true)?;
        let pad = self.token_text(self.config.image_token_id)?;
        let video_pad = self.token_text(self.config.video_token_id)?;
        let written = rendered.matches(video_pad.as_str()).count();
        if written != videos.len() {
            return Err(VlmError::Request(format!(
                "the chat template wrote {written} video placeholders for {} videos",
                videos.len()
            )));
        }
        let pieces: Vec<&str> = rendered.split(pad.as_str()).collect();
        if pieces.len() != images.len() + 1 {
            return Err(VlmError::Request(format!(
                "the chat template wrote {} image placeholders for {} images",
                pieces.len() - 1,
                images.len()
            )));
        }
        let mut prompt = String::from(pieces[0]);
        for (path, rest) in images.iter().zip(&pieces[1..]) {
            let n = self.tokens_for_file(path)?;
            prompt.push_str(&pad.repeat(n));
            prompt.push_str(rest);
        }
        Ok(GenRequest {
            prompt,
            images,
            videos,
            sampling: Sampling::default(),
        })
    }

    /// Reads, samples and preprocesses video files (see [`crate::video`]).
    pub fn process_videos(&self, paths: &[PathBuf]) -> Result<Vec<Video>> {
        paths
            .iter()
            .map(|p| load_video(&self.processor, p, MAX_FRAMES))
            .collect()
    }

    /// Prompt token ids with each image's placeholder run checked against, or expanded to,
    /// the image's token count: a run of exactly that many pads is kept, a single pad is
    /// expanded, anything else is an error.
    pub fn prompt_ids(&self, prompt: &str, images: &[PixelValues]) -> Result<Vec<u32>> {
        Ok(self.expand(&self.encode(prompt)?, images, &[])?.0)
    }

    /// [`Self::prompt_ids`] for images and videos: the ids, and the visual inputs in the
    /// order their placeholders appear.
    fn expand<'a>(
        &self,
        raw: &[u32],
        images: &'a [PixelValues],
        videos: &'a [Video],
    ) -> Result<(Vec<u32>, Vec<Visual<'a>>)> {
        let (image_pad, video_pad) = (self.config.image_token_id, self.config.video_token_id);
        let merge = self.config.vision.spatial_merge_size;
        let mut ids = Vec::with_capacity(raw.len());
        let mut media = Vec::new();
        let (mut next_image, mut next_video) = (images.iter(), videos.iter());
        let mut i = 0;
        while i < raw.len() {
            let t = raw[i];
            if t != image_pad && t != video_pad {
                ids.push(t);
                i += 1;
                continue;
            }
            let run = raw[i..].iter().take_while(|&&x| x == t).count();
            let (kind, visual) = if t == image_pad {
                let img = next_image.next().ok_or_else(|| {
                    VlmError::Request(format!(
                        "the prompt has more image placeholders than the {} images given",
                        images.len()
                    ))
                })?;
                ("image", Visual::image(img))
            } else {
                let v = next_video.next().ok_or_else(|| {
                    VlmError::Request(format!(
                        "the prompt has more video placeholders than the {} videos given",
                        videos.len()
                    ))
                })?;
                ("video", Visual::video(v))
            };
            let n = visual.pixels.num_tokens(merge);
            if run != n && run != 1 {
                return Err(VlmError::Request(format!(
                    "{kind} {} needs {n} placeholder tokens (or 1 to expand); the prompt has {run}",
                    media.len()
                )));
            }
            ids.extend(std::iter::repeat_n(t, n));
            media.push(visual);
            i += run;
        }
        let (left_i, left_v) = (next_image.count(), next_video.count());
        if left_i + left_v > 0 {
            return Err(VlmError::Request(format!(
                "{} images and {} videos given, but the prompt has placeholders for {} and {}",
                images.len(),
                videos.len(),
                images.len() - left_i,
                videos.len() - left_v
            )));
        }
        Ok((ids, media))
    }

    /// Logits `(seq, vocab)` in f32 for every position of `ids` (already expanded, see
    /// [`Self::prompt_ids`]) with `images` merged at the image placeholders.
    pub fn prompt_logits(&self, ids: &[u32], images: &[PixelValues]) -> Result<Tensor> {
        let mut cache = self.text.new_cache();
        let media = Visual::images(images);
        let (hidden, _) = self.prefill_hidden(ids, &media, &mut cache)?;
        Ok(self
            .text
            .logits(&hidden.squeeze(0)?)?
            .to_dtype(DType::F32)?)
    }

    /// The three M-RoPE position rows of `ids` and the delta for later tokens.
    pub fn positions(&self, ids: &[u32], images: &[PixelValues]) -> Result<crate::rope::RopeIndex> {
        self.media_positions(ids, &Visual::images(images))
    }

    /// The position rows for visual inputs in placeholder order.
    pub(crate) fn media_positions(
        &self,
        ids: &[u32],
        media: &[Visual],
    ) -> Result<crate::rope::RopeIndex> {
        let tps = self.config.vision.tokens_per_second;
        let spans: Vec<VisionSpan> = media
            .iter()
            .map(|m| VisionSpan {
                grid_thw: m.pixels.grid_thw,
                time_interval: m.seconds_per_grid.map_or(1.0, |s| tps * s),
            })
            .collect();
        rope_index(
            ids,
            self.config.image_token_id,
            self.config.video_token_id,
            &spans,
            self.config.vision.spatial_merge_size,
        )
    }

    fn prefill_hidden(
        &self,
        ids: &[u32],
        media: &[Visual],
        cache: &mut KvCache,
    ) -> Result<(Tensor, i64)> {
        if ids.is_empty() {
            return Err(VlmError::Request("the prompt is empty".into()));
        }
        let index = self.media_positions(ids, media)?;
        let embeds = self.merged_embeds(ids, media)?;
        let (cos, sin) = self
            .mrope
            .tables(&index.rows, self.text.dtype(), &self.device)?;
        let hidden = self.run_decoder(&embeds, &cos, &sin, cache)?;
        Ok((hidden, index.delta))
    }

    /// Embeddings `(1, seq, hidden)` of `ids` with the vision features of `media` in place
    /// of the image and video placeholders, in order.
    pub(crate) fn merged_embeds(&self, ids: &[u32], media: &[Visual]) -> Result<Tensor> {
        let mut embeds = self.embed_ids(ids)?;
        if !media.is_empty() {
            let pixels: Vec<&PixelValues> = media.iter().map(|m| m.pixels).collect();
            let feats = self.features(&pixels)?.to_dtype(embeds.dtype())?;
            // Row i of the result: embedding i for text, feature k for the k-th pad.
            let s = ids.len();
            let mut k = 0u32;
            let idx: Vec<u32> = ids
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    if t == self.config.image_token_id || t == self.config.video_token_id {
                        k += 1;
                        s as u32 + k - 1
                    } else {
                        i as u32
                    }
                })
                .collect();
            if k as usize != feats.dim(0)? {
                return Err(VlmError::Request(format!(
                    "the prompt has {k} image and video tokens but the inputs give {} features",
                    feats.dim(0)?
                )));
            }
            let all = Tensor::cat(&[&embeds.squeeze(0)?, &feats], 0)?;
            let idx = Tensor::from_vec(idx, s, &self.device)?;
            embeds = all.index_select(&idx, 0)?.unsqueeze(0)?;
        }
        Ok(embeds)
    }

    /// Token embeddings `(1, seq, hidden)` of one sequence.
    fn embed_ids(&self, ids: &[u32]) -> Result<Tensor> {
        let t = Tensor::from_slice(ids, (1, ids.len()), &self.device)?;
        Ok(self.text.embed(&t)?)
    }

    /// One unpadded sequence through the decoder, causal over `cache` and the new positions.
    fn run_decoder(
        &self,
        embeds: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let t = cache.len() + embeds.dim(1)?;
        let keys = Tensor::ones((1, t), DType::U8, &self.device)?;
        Ok(self
            .text
            .forward_embeds(embeds, cos, sin, &keys, Some(cache))?)
    }

    /// The last position's logits after `ids`.
    fn last_logits(&self, ids: &[u32], media: &[Visual]) -> Result<Vec<f32>> {
        let mut cache = self.text.new_cache();
        let (hidden, _) = self.prefill_hidden(ids, media, &mut cache)?;
        let last = hidden.narrow(1, ids.len() - 1, 1)?.squeeze(0)?;
        Ok(self
            .text
            .logits(&last)?
            .squeeze(0)?
            .to_dtype(DType::F32)?
            .to_vec1()?)
    }

    /// The log-probability that the token after `req`'s prompt (its images and videos
    /// included) is the first token of each candidate (e.g. `"A"`, `"[Retrieval]"`).
    pub fn next_token_logprobs<S: AsRef<str>>(
        &self,
        req: &GenRequest,
        candidates: &[S],
    ) -> Result<Vec<f32>> {
        let images = self.process_images(&req.images)?;
        let videos = self.process_videos(&req.videos)?;
        let (ids, media) = self.expand(&self.encode(&req.prompt)?, &images, &videos)?;
        let lp = log_softmax(&self.last_logits(&ids, &media)?);
        candidates
            .iter()
            .map(|c| {
                let first = *self.encode(c.as_ref())?.first().ok_or_else(|| {
                    VlmError::Request(format!("candidate {:?} has no tokens", c.as_ref()))
                })?;
                Ok(lp[first as usize])
            })
            .collect()
    }

    /// Completes every request: `n` completions each, in request order. Sequences (the
    /// `n` samples of each request) run together in left-padded batches of up to
    /// `max_batch`, each with its own M-RoPE positions; a request's visual features are
    /// computed once for all its samples.
    ///
    /// A completion ends at an end-of-sequence token (not included), at a stop string (the
    /// text is cut before it; `token_ids` keeps every sampled token), or after
    /// `max_new_tokens` (or `max_position_embeddings`).
    pub fn generate(&self, requests: &[GenRequest]) -> Result<Vec<Generation>> {
        let started = Instant::now();
        let max_pos = self.config.text.max_position_embeddings;
        let mut prepared = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            if r.sampling.n == 0 {
                return Err(VlmError::Request(format!(
                    "request {i}: sampling.n must be at least 1"
                )));
            }
            let images = self.process_images(&r.images)?;
            let videos = self.process_videos(&r.videos)?;
            let (ids, media) = self.expand(&self.encode(&r.prompt)?, &images, &videos)?;
            if ids.is_empty() {
                return Err(VlmError::Request(format!(
                    "request {i}: the prompt is empty"
                )));
            }
            if ids.len() >= max_pos {
                return Err(VlmError::Request(format!(
                    "request {i}: the prompt has {} tokens; max_position_embeddings is {max_pos}",
                    ids.len()
                )));
            }
            let index = self.media_positions(&ids, &media)?;
            prepared.push(Prepared {
                len: ids.len(),
                embeds: self.merged_embeds(&ids, &media)?,
                rows: index.rows,
                delta: index.delta,
            });
        }
        let mut rows = Vec::new();
        let mut owner = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            for k in 0..r.sampling.n {
                rows.push(Row::new(prepared[i].len, &r.sampling, k));
                owner.push(&prepared[i]);
            }
        }
        let max_batch = self.max_batch.max(1);
        for (chunk, preps) in rows.chunks_mut(max_batch).zip(owner.chunks(max_batch)) {
            self.run_batch(chunk, preps)?;
        }
        let new_tokens: usize = rows.iter().map(|r| r.ids.len()).sum();
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            requests = requests.len(),
            sequences = rows.len(),
            new_tokens,
            secs,
            tokens_per_s = new_tokens as f64 / secs.max(1e-9),
            "generated"
        );
        let mut rows = rows.into_iter();
        let mut out = Vec::with_capacity(requests.len());
        for (r, p) in requests.iter().zip(&prepared) {
            let completions = rows
                .by_ref()
                .take(r.sampling.n)
                .map(|row| row.into_completion(&self.tokenizer))
                .collect::<expflow_models::Result<Vec<_>>>()?;
            out.push(Generation {
                prompt_tokens: p.len,
                completions,
            });
        }
        Ok(out)
    }

    /// Decodes one batch: a left-padded prefill of the merged embeddings, then one token per
    /// sequence per step at position `index + delta` in all three M-RoPE rows.
    fn run_batch(&self, rows: &mut [Row], preps: &[&Prepared]) -> Result<()> {
        let b = rows.len();
        let len = preps.iter().map(|p| p.len).max().unwrap_or(0);
        let hidden = self.config.text.hidden_size;
        let dtype = self.text.dtype();
        let max_pos = self.config.text.max_position_embeddings;
        let (mut embeds, mut coss, mut sins, mut mask) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for p in preps {
            let pad = len - p.len;
            let mut e = p.embeds.clone();
            let mut rows3 = p.rows.clone();
            if pad > 0 {
                let zeros = Tensor::zeros((1, pad, hidden), e.dtype(), &self.device)?;
                e = Tensor::cat(&[&zeros, &e], 1)?;
                for r in &mut rows3 {
                    r.splice(0..0, std::iter::repeat_n(0, pad));
                }
            }
            let (cos, sin) = self.mrope.tables(&rows3, dtype, &self.device)?;
            embeds.push(e);
            coss.push(cos);
            sins.push(sin);
            mask.extend(std::iter::repeat_n(0u8, pad).chain(std::iter::repeat_n(1u8, p.len)));
        }
        let mut cache = self.text.new_cache();
        let mut x = Tensor::cat(&embeds, 0)?;
        let mut cos = Tensor::cat(&coss, 0)?;
        let mut sin = Tensor::cat(&sins, 0)?;
        let mut width = len;
        while rows.iter().any(|r| r.finish.is_none()) {
            let keys = Tensor::from_vec(mask.clone(), (b, width), &self.device)?;
            let h = self
                .text
                .forward_embeds(&x, &cos, &sin, &keys, Some(&mut cache))?;
            let s = h.dim(1)?;
            let logits = self
                .text
                .logits(&h.narrow(1, s - 1, 1)?.squeeze(1)?)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?;
            for (r, lg) in rows.iter_mut().zip(&logits) {
                if r.finish.is_none() {
                    r.advance(lg, &self.eos, &self.tokenizer, max_pos)?;
                }
            }
            if rows.iter().all(|r| r.finish.is_some()) {
                break;
            }
            let next: Vec<u32> = rows.iter().map(|r| r.next_input(0)).collect();
            // The token just picked sits at index `prompt_len + ids.len() - 1`.
            let pos: Vec<i64> = rows
                .iter()
                .zip(preps)
                .map(|(r, p)| (p.len + r.ids.len()).saturating_sub(1) as i64 + p.delta)
                .collect();
            let (c, sn) =
                self.mrope
                    .tables(&[pos.clone(), pos.clone(), pos], dtype, &self.device)?;
            let hd = c.dim(3)?;
            cos = c.reshape((b, 1, 1, hd))?;
            sin = sn.reshape((b, 1, 1, hd))?;
            x = self
                .text
                .embed(&Tensor::from_vec(next, (b, 1), &self.device)?)?;
            let mut grown = Vec::with_capacity(b * (width + 1));
            for chunk in mask.chunks(width) {
                grown.extend_from_slice(chunk);
                grown.push(1u8);
            }
            mask = grown;
            width += 1;
        }
        Ok(())
    }

    pub(crate) fn token_text(&self, id: u32) -> Result<String> {
        self.tokenizer.id_to_token(id).ok_or_else(|| {
            VlmError::Request(format!(
                "token id {id} (image_token_id in config.json) is not in the tokenizer"
            ))
        })
    }

    pub(crate) fn tokens_for_file(&self, path: &Path) -> Result<usize> {
        let (w, h) = image::image_dimensions(path).map_err(|e| VlmError::Image {
            path: path.to_path_buf(),
            problem: format!("cannot read the image's size: {e}"),
        })?;
        self.processor.num_image_tokens(h as usize, w as usize)
    }
}

fn check_tensors(dir: &ModelDir, c: &VlmConfig, text: &str, vision: &str) -> Result<()> {
    let t = &c.text;
    let v = &c.vision;
    let (h, hd) = (t.hidden_size, t.head_dim());
    let mut need = vec![
        (format!("{text}.embed_tokens.weight"), vec![t.vocab_size, h]),
        (format!("{text}.norm.weight"), vec![h]),
        (
            format!("{vision}.patch_embed.proj.weight"),
            vec![
                v.hidden_size,
                v.in_channels,
                v.temporal_patch_size,
                v.patch_size,
                v.patch_size,
            ],
        ),
        (
            format!("{vision}.merger.mlp.2.weight"),
            vec![v.out_hidden_size, v.hidden_size * v.merge_unit()],
        ),
    ];
    if !t.tie_word_embeddings {
        need.push(("lm_head.weight".into(), vec![t.vocab_size, h]));
    }
    for l in 0..t.num_hidden_layers {
        need.push((
            format!("{text}.layers.{l}.self_attn.k_proj.weight"),
            vec![t.kv_heads() * hd, h],
        ));
    }
    for b in 0..v.depth {
        need.push((
            format!("{vision}.blocks.{b}.attn.qkv.weight"),
            vec![3 * v.hidden_size, v.hidden_size],
        ));
    }
    for (name, shape) in need {
        dir.expect_tensor(&name, &shape)?;
    }
    Ok(())
}

/// `eos_token_id` from `generation_config.json`, else from the config, else `<|im_end|>`.
fn eos_ids(dir: &ModelDir, tok: &Tokenizer) -> Vec<u32> {
    let parse = |v: &Value| -> Vec<u32> {
        match v {
            Value::Number(n) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_u64().map(|x| x as u32))
                .collect(),
            _ => Vec::new(),
        }
    };
    let from_gen = dir
        .generation_value("eos_token_id")
        .map(parse)
        .unwrap_or_default();
    if !from_gen.is_empty() {
        return from_gen;
    }
    let text = dir.sub_config("text_config").unwrap_or(&dir.config);
    let from_cfg = text
        .get("eos_token_id")
        .or_else(|| dir.config.get("eos_token_id"))
        .map(parse)
        .unwrap_or_default();
    if !from_cfg.is_empty() {
        return from_cfg;
    }
    tok.token_to_id("<|im_end|>").into_iter().collect()
}
