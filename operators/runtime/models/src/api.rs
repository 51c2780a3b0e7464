//! The request and result types of generation and embedding, shared by the native runtime,
//! the OpenAI-compatible server (`expflow-serve`) and the inference operators.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One part of a chat message's content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text {
        text: String,
    },
    /// A local image file.
    Image {
        path: PathBuf,
    },
    /// A local video file; vision-language models see frames sampled from it.
    Video {
        path: PathBuf,
    },
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Vec<ContentPart>,
}

impl ChatMessage {
    /// A text-only message.
    pub fn text(role: &str, text: &str) -> ChatMessage {
        ChatMessage {
            role: role.to_string(),
            content: vec![ContentPart::Text {
                text: text.to_string(),
            }],
        }
    }

    /// The message's text parts joined (images and videos left out).
    pub fn joined_text(&self) -> String {
        let mut s = String::new();
        for p in &self.content {
            if let ContentPart::Text { text } = p {
                s.push_str(text);
            }
        }
        s
    }
}

/// Puts media parts into a conversation. Where the text-only messages hold one `<image>` /
/// `<video>` placeholder per image / video (LLaMA-Factory's and ms-swift's convention), each
/// placeholder is replaced by its part, in order across the messages; otherwise the parts go
/// before the text of the last user message.
pub fn place_media(messages: &mut [ChatMessage], media: Vec<ContentPart>) {
    if media.is_empty() {
        return;
    }
    let is_image = |p: &ContentPart| matches!(p, ContentPart::Image { .. });
    let images = media.iter().filter(|p| is_image(p)).count();
    let videos = media.len() - images;
    let text_only = |m: &ChatMessage| {
        m.content
            .iter()
            .all(|p| matches!(p, ContentPart::Text { .. }))
    };
    let count = |tag: &str| -> usize {
        messages
            .iter()
            .filter(|m| text_only(m))
            .map(|m| m.joined_text().matches(tag).count())
            .sum()
    };
    if count("<image>") == images && count("<video>") == videos {
        let mut imgs = media.iter().filter(|p| is_image(p)).cloned();
        let mut vids = media.iter().filter(|p| !is_image(p)).cloned();
        for m in messages.iter_mut().filter(|m| text_only(m)) {
            let text = m.joined_text();
            if !text.contains("<image>") && !text.contains("<video>") {
                continue;
            }
            let mut parts = Vec::new();
            let mut rest = text.as_str();
            loop {
                let next = [("<image>", true), ("<video>", false)]
                    .into_iter()
                    .filter_map(|(tag, img)| rest.find(tag).map(|at| (at, tag, img)))
                    .min_by_key(|(at, _, _)| *at);
                let Some((at, tag, img)) = next else {
                    break;
                };
                if at > 0 {
                    parts.push(ContentPart::Text {
                        text: rest[..at].to_string(),
                    });
                }
                parts.extend(if img { imgs.next() } else { vids.next() });
                rest = &rest[at + tag.len()..];
            }
            if !rest.is_empty() {
                parts.push(ContentPart::Text {
                    text: rest.to_string(),
                });
            }
            m.content = parts;
        }
    } else if let Some(m) = messages.iter_mut().rev().find(|m| m.role == "user") {
        let mut parts = media;
        parts.append(&mut m.content);
        m.content = parts;
    }
}

/// How to pick tokens. `temperature == 0` is greedy; otherwise tokens are sampled with a
/// generator seeded from `seed` (and the sample's index when `n > 1`), so the same request
/// gives the same text on the same hardware and thread count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sampling {
    pub temperature: f64,
    pub top_p: f64,
    /// 0 keeps every token.
    pub top_k: usize,
    pub max_new_tokens: usize,
    /// Generation stops before the first occurrence of any of these strings.
    pub stop: Vec<String>,
    /// Completions per prompt.
    pub n: usize,
    pub seed: u64,
    /// Return each generated token's log-probability.
    pub logprobs: bool,
    /// With `logprobs`, also the this many most likely tokens at each step.
    pub top_logprobs: usize,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 256,
            stop: Vec::new(),
            n: 1,
            seed: 0,
            logprobs: false,
            top_logprobs: 0,
        }
    }
}

/// One prompt to complete: text already rendered with the chat template, plus any images
/// (for vision-language models) in the order their placeholders appear.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenRequest {
    pub prompt: String,
    #[serde(default)]
    pub images: Vec<PathBuf>,
    /// Video files in the order of their placeholders (vision-language models).
    #[serde(default)]
    pub videos: Vec<PathBuf>,
    #[serde(default)]
    pub sampling: Sampling,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The end-of-sequence token or a stop string.
    Stop,
    /// `max_new_tokens` reached.
    Length,
}

/// A generated token's log-probability, and the most likely alternatives when asked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub id: u32,
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

/// One completion of a prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub logprobs: Option<Vec<TokenLogprob>>,
}

/// The `n` completions of one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub prompt_tokens: usize,
    pub completions: Vec<Completion>,
}

impl Generation {
    /// The first completion's text (empty when there is none).
    pub fn into_first_text(self) -> String {
        self.completions
            .into_iter()
            .next()
            .map(|c| c.text)
            .unwrap_or_default()
    }
}

/// How an encoder turns token states into one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean over non-padding tokens (MiniLM, Contriever).
    Mean,
    /// The first token's state.
    Cls,
    /// The last non-padding token's state.
    LastToken,
    /// Element-wise maximum over tokens or frames.
    Max,
}

impl Pooling {
    pub fn parse(s: &str) -> Option<Pooling> {
        match s {
            "mean" => Some(Pooling::Mean),
            "cls" => Some(Pooling::Cls),
            "last_token" | "last" => Some(Pooling::LastToken),
            "max" => Some(Pooling::Max),
            _ => None,
        }
    }
}
