//! The served models on the native runtime: a Qwen-family [`Generator`] or a Qwen2.5-VL
//! [`VisionLanguageModel`] for chat, a BERT [`TextEncoder`] for embeddings, chosen from
//! `config.json`.

use std::path::Path;

use expflow_encoders::{EncoderError, TextEncoder};
use expflow_models::{
    ChatMessage, ContentPart, GenRequest, Generation, Generator, ModelDir, ModelError, Needs,
};
use expflow_vlm::{VisionLanguageModel, VlmError};

use crate::error::{Result, ServeError};
use crate::model::{ChatModel, EmbedModel, Failure};
use crate::wire::Defaults;
use crate::{Loaded, LoadedKind};

fn model_failure(e: ModelError) -> Failure {
    match e {
        ModelError::Request(_) | ModelError::Media { .. } => Failure::client(e.to_string()),
        other => Failure::server(other.to_string()),
    }
}

impl ChatModel for Generator {
    fn render(&self, messages: &[ChatMessage]) -> Result<String, Failure> {
        if let Some(ContentPart::Video { path }) = messages
            .iter()
            .flat_map(|m| &m.content)
            .find(|p| matches!(p, ContentPart::Video { .. }))
        {
            return Err(Failure::client(format!(
                "this model does not take videos ({}); send text (and images, for a vision model)",
                path.display()
            )));
        }
        self.render_chat(messages, true).map_err(|e| match e {
            // A template that rejects the conversation (e.g. `raise_exception` on roles).
            ModelError::Template { .. } => Failure::client(e.to_string()),
            other => model_failure(other),
        })
    }

    fn generate(&self, batch: &[GenRequest]) -> Result<Vec<Generation>, Failure> {
        Generator::generate(self, batch).map_err(model_failure)
    }

    fn special_tokens(&self) -> Vec<String> {
        expflow_models::special::special_texts(self.tokenizer())
    }
}

impl ChatModel for VisionLanguageModel {
    fn render(&self, messages: &[ChatMessage]) -> Result<String, Failure> {
        // The prompt holds one `<|image_pad|>` per image token, as the processor expands it.
        self.render_chat(messages)
            .map(|r| r.prompt)
            .map_err(vlm_failure)
    }

    fn generate(&self, batch: &[GenRequest]) -> Result<Vec<Generation>, Failure> {
        VisionLanguageModel::generate(self, batch).map_err(vlm_failure)
    }

    fn special_tokens(&self) -> Vec<String> {
        expflow_models::special::special_texts(self.tokenizer())
    }
}

fn vlm_failure(e: VlmError) -> Failure {
    match e {
        VlmError::Model(m) => model_failure(m),
        VlmError::Request(_) | VlmError::Image { .. } => Failure::client(e.to_string()),
        other => Failure::server(other.to_string()),
    }
}

impl EmbedModel for TextEncoder {
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, Failure> {
        TextEncoder::embed(self, texts).map_err(|e| match e {
            EncoderError::Param(_) | EncoderError::Tokenizer(_) => Failure::client(e.to_string()),
            other => Failure::server(other.to_string()),
        })
    }

    fn count_tokens(&self, text: &str) -> usize {
        self.tokenize(std::slice::from_ref(&text.to_string()))
            .map(|t| t.first().map_or(0, Vec::len))
            .unwrap_or(0)
    }
}

/// Whether a model directory holds a generative model (`true`) or a text encoder.
pub fn is_generative(dir: &ModelDir) -> Result<bool> {
    let arch = dir.architecture().unwrap_or("");
    let mt = dir.model_type().unwrap_or("");
    if arch.ends_with("ForCausalLM") || arch.ends_with("ForConditionalGeneration") {
        return Ok(true);
    }
    if mt == "bert" || arch.starts_with("Bert") || dir.root.join("modules.json").is_file() {
        return Ok(false);
    }
    if mt.starts_with("qwen") {
        return Ok(true);
    }
    Err(ServeError::Load {
        dir: dir.root.clone(),
        message: format!(
            "config.json has architecture `{arch}` and model_type `{mt}`; expflow serve runs \
             causal LMs (`…ForCausalLM`, model_type qwen2) for chat and BERT encoders for embeddings"
        ),
    })
}

/// Loads the model in `dir`, served under `name` (default: the directory's name).
/// `max_tokens` is the reply budget when a request sets none.
pub fn load(dir: &Path, name: Option<String>, max_tokens: usize) -> Result<Loaded> {
    let fail = |message: String| ServeError::Load {
        dir: dir.to_path_buf(),
        message,
    };
    let md = ModelDir::open(dir, Needs::Tokenizer).map_err(|e| fail(e.to_string()))?;
    let device = expflow_models::default_device().map_err(|e| fail(e.to_string()))?;
    let name = name.unwrap_or_else(|| {
        dir.canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into())
    });
    let kind = if is_generative(&md)? {
        let defaults = Defaults::from_generation_config(md.generation_config.as_ref(), max_tokens);
        let model: std::sync::Arc<dyn ChatModel> = if expflow_vlm::is_qwen2_5_vl(&md) {
            let m = VisionLanguageModel::load(&md, &device).map_err(|e| fail(e.to_string()))?;
            std::sync::Arc::new(m)
        } else {
            let g = Generator::load(&md, &device).map_err(|e| fail(e.to_string()))?;
            std::sync::Arc::new(g)
        };
        tracing::info!(
            "loaded generative model `{name}` from {} ({defaults:?})",
            dir.display()
        );
        LoadedKind::Chat { model, defaults }
    } else {
        let e = TextEncoder::load_default(&md, &device).map_err(|e| fail(e.to_string()))?;
        tracing::info!(
            "loaded text encoder `{name}` from {} (dimension {})",
            dir.display(),
            e.dim()
        );
        LoadedKind::Embed(std::sync::Arc::new(e))
    };
    let card = model_card(dir)?;
    Ok(Loaded { name, kind, card })
}

/// The `/v1/models` version fields of the model in `dir`: `root` a BLAKE3 digest over the
/// sorted relative paths and bytes of its files, `created` their newest modification time.
/// Two different model directories served under one name thus list differently.
pub fn model_card(dir: &Path) -> Result<crate::Card> {
    let fail = |message: String| ServeError::Load {
        dir: dir.to_path_buf(),
        message,
    };
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| fail(format!("{}: {e}", d.display())))?;
        for e in entries {
            let e = e.map_err(|e| fail(e.to_string()))?;
            let path = e.path();
            let meta =
                std::fs::metadata(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                files.push((path, meta));
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut whole = blake3::Hasher::new();
    let mut created = 0u64;
    for (path, meta) in &files {
        let rel = path.strip_prefix(dir).unwrap_or(path).to_string_lossy();
        let mut h = blake3::Hasher::new();
        // Read, not memory-mapped: a file truncated while it is hashed is an error, not a
        // SIGBUS.
        std::fs::File::open(path)
            .and_then(|f| h.update_reader(f).map(|_| ()))
            .map_err(|e| fail(format!("{}: {e}", path.display())))?;
        whole.update(format!("{} {}\n", h.finalize().to_hex(), rel).as_bytes());
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        created = created.max(mtime);
    }
    Ok(crate::Card {
        created,
        root: Some(format!("blake3:{}", whole.finalize().to_hex())),
    })
}
