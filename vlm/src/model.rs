//! [`VisionLanguageModel`]: a Qwen2.5-VL directory loaded for inference: the processor, the
//! vision tower, the M-RoPE decoder, the tokenizer and the chat template; prompt logits and
//! generation (greedy or seeded sampling, stop strings, log-probabilities).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use expflow_models::sampling::{Rng, log_softmax, pick, top_n};
use expflow_models::{
    ChatMessage, ChatTemplate, Completion, ContentPart, FinishReason, GenRequest, Generation,
    KvCache, ModelDir, Qwen2, Sampling, TokenLogprob,
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

/// An image or a video, preprocessed, as the prompt places it.
#[derive(Clone, Debug)]
pub(crate) struct Visual {
    pub pixels: PixelValues,
    /// Videos: seconds per temporal grid step; `None` for images.
    pub seconds_per_grid: Option<f64>,
}

impl Visual {
    pub fn image(pixels: PixelValues) -> Visual {
        Visual {
            pixels,
            seconds_per_grid: None,
        }
    }

    pub fn video(v: Video) -> Visual {
        Visual {
            pixels: v.pixels,
            seconds_per_grid: Some(v.seconds_per_grid),
        }
    }

    pub fn images(images: &[PixelValues]) -> Vec<Visual> {
        images.iter().cloned().map(Visual::image).collect()
    }
}

/// A loaded Qwen2.5-VL model.
#[derive(Debug)]
pub struct VisionLanguageModel {
    pub config: VlmConfig,
    pub processor: ImageProcessor,
    pub(crate) vision: VisionTower,
    pub(crate) text: Qwen2,
    pub(crate) mrope: MRope,
    pub(crate) tokenizer: Tokenizer,
    pub(crate) chat: ChatTemplate,
    eos: Vec<u32>,
    pub(crate) device: Device,
}

/// A prompt's state after the prefill: the cache, the last position's logits, the rope delta.
struct Prefilled {
    cache: KvCache,
    last_logits: Vec<f32>,
    delta: i64,
    len: usize,
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
    fn expand(
        &self,
        raw: &[u32],
        images: &[PixelValues],
        videos: &[Video],
    ) -> Result<(Vec<u32>, Vec<Visual>)> {
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
                ("image", Visual::image(img.clone()))
            } else {
                let v = next_video.next().ok_or_else(|| {
                    VlmError::Request(format!(
                        "the prompt has more video placeholders than the {} videos given",
                        videos.len()
                    ))
                })?;
                ("video", Visual::video(v.clone()))
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
            let pixels: Vec<PixelValues> = media.iter().map(|m| m.pixels.clone()).collect();
            let feats = self.vision_features(&pixels)?.to_dtype(embeds.dtype())?;
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

    fn prefill(&self, ids: &[u32], media: &[Visual]) -> Result<Prefilled> {
        let mut cache = self.text.new_cache();
        let (hidden, delta) = self.prefill_hidden(ids, media, &mut cache)?;
        let last = hidden.narrow(1, ids.len() - 1, 1)?.squeeze(0)?;
        let last_logits = self
            .text
            .logits(&last)?
            .squeeze(0)?
            .to_dtype(DType::F32)?
            .to_vec1()?;
        Ok(Prefilled {
            cache,
            last_logits,
            delta,
            len: ids.len(),
        })
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
        let lp = log_softmax(&self.prefill(&ids, &media)?.last_logits);
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

    /// Logits of the next position after feeding `token` at index `index`.
    fn step(&self, token: u32, index: usize, delta: i64, cache: &mut KvCache) -> Result<Vec<f32>> {
        let p = index as i64 + delta;
        let rows = [vec![p], vec![p], vec![p]];
        let (cos, sin) = self.mrope.tables(&rows, self.text.dtype(), &self.device)?;
        let embeds = self.embed_ids(&[token])?;
        let hidden = self.run_decoder(&embeds, &cos, &sin, cache)?;
        let last = hidden.squeeze(0)?;
        Ok(self
            .text
            .logits(&last)?
            .squeeze(0)?
            .to_dtype(DType::F32)?
            .to_vec1()?)
    }

    /// Completes every request: `n` completions each, in request order. Requests run one at
    /// a time (no batching across requests yet); the `n` samples of a request share one
    /// prefill.
    ///
    /// A completion ends at an end-of-sequence token (not included), at a stop string (the
    /// text is cut before it; `token_ids` keeps every sampled token), or after
    /// `max_new_tokens` (or `max_position_embeddings`).
    pub fn generate(&self, requests: &[GenRequest]) -> Result<Vec<Generation>> {
        let started = Instant::now();
        let mut out = Vec::with_capacity(requests.len());
        let mut new_tokens = 0;
        for (i, r) in requests.iter().enumerate() {
            if r.sampling.n == 0 {
                return Err(VlmError::Request(format!(
                    "request {i}: sampling.n must be at least 1"
                )));
            }
            let images = self.process_images(&r.images)?;
            let videos = self.process_videos(&r.videos)?;
            let (ids, media) = self.expand(&self.encode(&r.prompt)?, &images, &videos)?;
            let max_pos = self.config.text.max_position_embeddings;
            if ids.len() >= max_pos {
                return Err(VlmError::Request(format!(
                    "request {i}: the prompt has {} tokens; max_position_embeddings is {max_pos}",
                    ids.len()
                )));
            }
            let pre = self.prefill(&ids, &media)?;
            let mut completions = Vec::with_capacity(r.sampling.n);
            for k in 0..r.sampling.n {
                let c = self.complete(
                    &pre,
                    &r.sampling,
                    Rng::for_sample(r.sampling.seed, k as u64),
                )?;
                new_tokens += c.token_ids.len();
                completions.push(c);
            }
            out.push(Generation {
                prompt_tokens: ids.len(),
                completions,
            });
        }
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            requests = requests.len(),
            new_tokens,
            secs,
            tokens_per_s = new_tokens as f64 / secs.max(1e-9),
            "generated"
        );
        Ok(out)
    }

    fn complete(&self, pre: &Prefilled, s: &Sampling, mut rng: Rng) -> Result<Completion> {
        let mut cache = pre.cache.clone();
        let mut logits = pre.last_logits.clone();
        let mut ids: Vec<u32> = Vec::new();
        let mut logprobs = Vec::new();
        let max_pos = self.config.text.max_position_embeddings;
        let mut finish = FinishReason::Length;
        let mut text = None;
        while ids.len() < s.max_new_tokens && pre.len + ids.len() < max_pos {
            let tok = pick(&logits, s, &mut rng);
            if self.eos.contains(&tok) {
                finish = FinishReason::Stop;
                break;
            }
            ids.push(tok);
            if s.logprobs {
                let lp = log_softmax(&logits);
                let mut top = Vec::new();
                for (id, v) in top_n(&lp, s.top_logprobs) {
                    top.push((self.decode(&[id])?, v));
                }
                logprobs.push(TokenLogprob {
                    id: tok,
                    token: self.decode(&[tok])?,
                    logprob: lp[tok as usize],
                    top,
                });
            }
            if !s.stop.is_empty() {
                let so_far = self.decode(&ids)?;
                let cut = s
                    .stop
                    .iter()
                    .filter(|x| !x.is_empty())
                    .filter_map(|x| so_far.find(x.as_str()))
                    .min();
                if let Some(at) = cut {
                    text = Some(so_far[..at].to_string());
                    finish = FinishReason::Stop;
                    break;
                }
            }
            if ids.len() >= s.max_new_tokens || pre.len + ids.len() >= max_pos {
                break;
            }
            logits = self.step(tok, pre.len + ids.len() - 1, pre.delta, &mut cache)?;
        }
        let text = match text {
            Some(t) => t,
            None => self.decode(&ids)?,
        };
        Ok(Completion {
            text,
            token_ids: ids,
            finish_reason: finish,
            logprobs: s.logprobs.then_some(logprobs),
        })
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
