//! Where chat requests go: an OpenAI-compatible server ([`OpenAi`]) or the native runtime
//! in-process (`super::native`). Both memoise each request under its content, so a re-run
//! asks only what changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use expflow_engine::{Context, OpError};
use expflow_models::{ChatMessage, ContentPart, Sampling};
use serde_json::{Map, Value, json};

use super::openai::{Client, ClientConfig, Reply, base64, for_each, image_mime, memo_chat};
use crate::error::{OperatorError, Result};
use crate::params::Params;

/// One chat request.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatReq {
    pub messages: Vec<ChatMessage>,
    pub sampling: Sampling,
    /// Whether `sampling.seed` is sent to a remote server (the native runtime always uses it).
    pub send_seed: bool,
    /// Keep special tokens' text in replies (`skip_special_tokens: false`, sent to a server
    /// only when set). Off, replies are decoded as vLLM does by default.
    pub keep_special: bool,
}

/// A backend answers chat requests, each memoised.
pub trait Backend: Sync {
    /// One reply per request, in order; `names` label each in logs and errors.
    fn chat(
        &self,
        ctx: &Context,
        reqs: &[ChatReq],
        names: &[String],
    ) -> Result<Vec<Reply>, OpError>;

    /// Of `candidates` (texts that could follow the assistant's partial reply `partial` to
    /// `messages`), the probability of each, normalised over the candidates. `None` when the
    /// backend cannot score (a remote server).
    fn choice_probabilities(
        &self,
        _ctx: &Context,
        _messages: &[ChatMessage],
        _partial: &str,
        _candidates: &[&str],
    ) -> Result<Option<Vec<f64>>, OpError> {
        Ok(None)
    }

    /// HTTP requests sent and retries (zero for the native runtime).
    fn http_counts(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// BLAKE3 digests of media files, computed once per path.
#[derive(Default)]
pub struct Digests(Mutex<HashMap<PathBuf, String>>);

impl Digests {
    pub fn of(&self, op: &'static str, path: &Path) -> Result<String> {
        if let Some(d) = self.0.lock().ok().and_then(|m| m.get(path).cloned()) {
            return Ok(d);
        }
        let (d, _) = expflow_cache::hash_file(path).map_err(|e| {
            OperatorError::data(
                op,
                format!("cannot read media file {}: {e}", path.display()),
            )
        })?;
        let hex = d.to_hex();
        if let Ok(mut m) = self.0.lock() {
            m.insert(path.to_path_buf(), hex.clone());
        }
        Ok(hex)
    }
}

/// How images and videos are sent to a remote server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Media {
    /// `image_url` / `video_url` parts with `file://` URLs (expflow serve; vLLM with
    /// `--allowed-local-media-path`): the server must see the same files.
    FileUrl,
    /// Images inlined as base64 `data:` URLs (hosted APIs); videos are refused.
    DataUrl,
    /// ms-swift's form: text content with an `<image>`/`<video>` tag where each file goes,
    /// and top-level `images` / `videos` path lists.
    Swift,
    /// Media are left out.
    None,
}

impl Media {
    pub const NAMES: [&'static str; 4] = ["file_url", "data_url", "swift", "none"];

    /// Reads the `media` parameter.
    pub fn parse(p: &Params) -> Result<Media> {
        Ok(match p.choice("media", &Media::NAMES)? {
            "file_url" => Media::FileUrl,
            "data_url" => Media::DataUrl,
            "swift" => Media::Swift,
            _ => Media::None,
        })
    }
}

/// An OpenAI-compatible server, or the replicas of a `serve.model` endpoint started for this
/// node (requests spread over them; stopped when the backend is dropped).
pub struct OpenAi<'a> {
    op: &'static str,
    /// One client per server; request `i` goes to `clients[i % len]`.
    clients: Vec<Client>,
    model: String,
    media: Media,
    digests: Digests,
    /// Which model answers (see [`super::identity`]); part of every memo item.
    identity: Value,
    /// The server's URL in memo items: the `base_url` given, or `serve.model` for an
    /// endpoint (its ports change from run to run; the model digest is in `identity`).
    memo_url: String,
    /// Declared after `clients`: the servers stop after the clients are gone.
    _served: Option<super::served::Served<'a>>,
}

impl<'a> OpenAi<'a> {
    pub fn new(
        ctx: &Context,
        op: &'static str,
        cfg: ClientConfig,
        model: String,
        media: Media,
    ) -> std::result::Result<OpenAi<'a>, OpError> {
        let client = Client::new(ctx, op, cfg)?;
        let identity = super::identity::model_identity(ctx, op, &client, &model)?;
        Ok(OpenAi {
            op,
            memo_url: client.config().url.clone(),
            clients: vec![client],
            model,
            media,
            digests: Digests::default(),
            identity,
            _served: None,
        })
    }

    /// Starts the replicas of the endpoint directory `dir` (a `serve.model` output) and
    /// talks to them; `model` defaults to the endpoint's served name.
    pub fn served(
        ctx: &'a Context,
        op: &'static str,
        cfg: ClientConfig,
        model: Option<String>,
        media: Media,
        dir: &Path,
    ) -> std::result::Result<OpenAi<'a>, OpError> {
        let served = super::served::Served::start(ctx, dir)?;
        let clients = served
            .base_urls()
            .iter()
            .map(|b| Client::new(ctx, op, cfg.with_base(b)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let ep = &served.endpoint;
        let model = model.unwrap_or_else(|| ep.served_name.clone());
        let mut identity = serde_json::Map::new();
        identity.insert("artifact".into(), json!(ep.model_digest));
        if let Some(r) = &cfg.model_revision {
            identity.insert("revision".into(), json!(r));
        }
        ctx.log(&format!(
            "answers are memoised under the served model's digest {}",
            ep.model_digest
        ));
        Ok(OpenAi {
            op,
            clients,
            model,
            media,
            digests: Digests::default(),
            identity: Value::Object(identity),
            memo_url: "serve.model".into(),
            _served: Some(served),
        })
    }

    /// The request body; with `for_memo`, media are named by digest instead of path/bytes.
    pub fn body(&self, req: &ChatReq, for_memo: bool) -> Result<Value> {
        let mut images = Vec::new();
        let mut videos = Vec::new();
        let mut messages = Vec::new();
        for m in &req.messages {
            let content = match self.media {
                Media::None => json!(m.joined_text()),
                Media::Swift => {
                    // ms-swift's convention: a tag marks where each file goes.
                    let mut text = String::new();
                    for p in &m.content {
                        match p {
                            ContentPart::Image { path } => {
                                images.push(self.media_ref(path, for_memo)?);
                                text.push_str("<image>");
                            }
                            ContentPart::Video { path } => {
                                videos.push(self.media_ref(path, for_memo)?);
                                text.push_str("<video>");
                            }
                            ContentPart::Text { text: t } => text.push_str(t),
                        }
                    }
                    json!(text)
                }
                Media::FileUrl | Media::DataUrl => {
                    let only_text = m
                        .content
                        .iter()
                        .all(|p| matches!(p, ContentPart::Text { .. }));
                    if only_text {
                        json!(m.joined_text())
                    } else {
                        let parts: Vec<Value> = m
                            .content
                            .iter()
                            .map(|p| self.part(p, for_memo))
                            .collect::<Result<_>>()?;
                        Value::Array(parts)
                    }
                }
            };
            messages.push(json!({"role": m.role, "content": content}));
        }
        let s = &req.sampling;
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_new_tokens,
        });
        let Some(o) = body.as_object_mut() else {
            unreachable!("a JSON object literal");
        };
        if s.n > 1 {
            o.insert("n".into(), json!(s.n));
        }
        if s.top_k > 0 {
            o.insert("top_k".into(), json!(s.top_k));
        }
        if !s.stop.is_empty() {
            o.insert("stop".into(), json!(s.stop));
        }
        if req.send_seed {
            o.insert("seed".into(), json!(s.seed));
        }
        if req.keep_special {
            o.insert("skip_special_tokens".into(), json!(false));
        }
        if s.logprobs {
            o.insert("logprobs".into(), json!(true));
            if s.top_logprobs > 0 {
                o.insert("top_logprobs".into(), json!(s.top_logprobs));
            }
        }
        if self.media == Media::Swift {
            if !images.is_empty() {
                o.insert("images".into(), Value::Array(images));
            }
            if !videos.is_empty() {
                o.insert("videos".into(), Value::Array(videos));
            }
        }
        Ok(body)
    }

    fn media_ref(&self, path: &Path, for_memo: bool) -> Result<Value> {
        if for_memo {
            Ok(json!({"blake3": self.digests.of(self.op, path)?}))
        } else {
            Ok(json!(path.to_string_lossy()))
        }
    }

    fn part(&self, p: &ContentPart, for_memo: bool) -> Result<Value> {
        let (ty, path) = match p {
            ContentPart::Text { text } => return Ok(json!({"type": "text", "text": text})),
            ContentPart::Image { path } => ("image_url", path),
            ContentPart::Video { path } => ("video_url", path),
        };
        if for_memo {
            return Ok(json!({"type": ty, ty: {"blake3": self.digests.of(self.op, path)?}}));
        }
        let url = match (self.media, ty) {
            (Media::DataUrl, "image_url") => {
                let bytes = std::fs::read(path)
                    .map_err(|e| OperatorError::io("cannot read image", path, e))?;
                let name = path.to_string_lossy();
                format!("data:{};base64,{}", image_mime(&name), base64(&bytes))
            }
            (Media::DataUrl, _) => {
                return Err(OperatorError::param(
                    self.op,
                    "media",
                    format!(
                        "is data_url, which cannot carry the video {}; use file_url or swift",
                        path.display()
                    ),
                ));
            }
            _ => file_url(path),
        };
        Ok(json!({"type": ty, ty: {"url": url}}))
    }
}

/// A `file://` URL for an absolute path (spaces, `%`, `#` and `?` percent-encoded).
pub fn file_url(path: &Path) -> String {
    let mut s = String::from("file://");
    for c in path.to_string_lossy().chars() {
        match c {
            ' ' => s.push_str("%20"),
            '%' => s.push_str("%25"),
            '#' => s.push_str("%23"),
            '?' => s.push_str("%3F"),
            c => s.push(c),
        }
    }
    s
}

impl Backend for OpenAi<'_> {
    fn chat(
        &self,
        ctx: &Context,
        reqs: &[ChatReq],
        names: &[String],
    ) -> Result<Vec<Reply>, OpError> {
        let bodies: Vec<(Value, Value)> = reqs
            .iter()
            .map(|r| {
                Ok((
                    self.body(r, false)?,
                    json!({
                        "url": self.memo_url,
                        "body": self.body(r, true)?,
                        "model_identity": self.identity,
                    }),
                ))
            })
            .collect::<Result<_>>()?;
        let n = self.clients.len();
        let concurrency = self.clients[0].config().concurrency * n;
        for_each(ctx, reqs.len(), concurrency, |i| {
            let client = &self.clients[i % n];
            memo_chat(ctx, client, &names[i], &bodies[i].0, &bodies[i].1)
        })
    }

    fn http_counts(&self) -> (u64, u64) {
        self.clients
            .iter()
            .fold((0, 0), |(s, r), c| (s + c.sent(), r + c.retried()))
    }
}

/// Sampling from the common parameters `temperature`, `top_p`, `top_k`, `max_tokens`,
/// `n`, `stop`, `logprobs`, `top_logprobs` and `sampling_seed`; the bool says whether a
/// seed was given.
pub fn sampling(op: &'static str, map: &Map<String, Value>) -> Result<(Sampling, bool)> {
    let (base, seeded) = base_sampling(op, map)?;
    let p = Params::new(op, map);
    let n = p.u64("n")?;
    if n == 0 || n > 16 {
        return Err(OperatorError::param(
            op,
            "n",
            format!("is {n}; use 1 to 16"),
        ));
    }
    let logprobs = p.bool("logprobs")?;
    let top_logprobs = p.u64("top_logprobs")?;
    if top_logprobs > 20 || (top_logprobs > 0 && !logprobs) {
        return Err(OperatorError::param(
            op,
            "top_logprobs",
            format!("is {top_logprobs}; use 0 to 20, with `logprobs: true`"),
        ));
    }
    Ok((
        Sampling {
            stop: p.opt_strings("stop")?.unwrap_or_default(),
            n: n as usize,
            logprobs,
            top_logprobs: top_logprobs as usize,
            ..base
        },
        seeded,
    ))
}

/// The part of [`sampling`] every inference operator takes: `temperature`, `top_p`, `top_k`,
/// `max_tokens` and `sampling_seed` (one completion, no stop strings, no log-probabilities).
pub fn base_sampling(op: &'static str, map: &Map<String, Value>) -> Result<(Sampling, bool)> {
    let p = Params::new(op, map);
    let temperature = p.f64("temperature")?;
    if !(0.0..=2.0).contains(&temperature) {
        return Err(OperatorError::param(
            op,
            "temperature",
            format!("is {temperature}; use 0 to 2 (0 is greedy)"),
        ));
    }
    let top_p = p.f64("top_p")?;
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(OperatorError::param(
            op,
            "top_p",
            format!("is {top_p}; use a value in (0, 1]"),
        ));
    }
    let max_tokens = p.u64("max_tokens")?;
    if max_tokens == 0 {
        return Err(OperatorError::param(
            op,
            "max_tokens",
            "is 0; use at least 1",
        ));
    }
    let seed = p.opt_u64("sampling_seed")?;
    Ok((
        Sampling {
            temperature,
            top_p,
            top_k: p.u64("top_k")? as usize,
            max_new_tokens: max_tokens as usize,
            seed: seed.unwrap_or(0),
            ..Sampling::default()
        },
        seed.is_some(),
    ))
}

/// The parameter specs [`sampling`] reads, with defaults (`max_tokens` as given).
pub fn sampling_params(max_tokens: i64) -> Vec<expflow_engine::ParamSpec> {
    use expflow_engine::{ParamKind, ParamSpec};
    vec![
        ParamSpec::with_default("temperature", ParamKind::Float, json!(0.0), "0 is greedy"),
        ParamSpec::with_default(
            "top_p",
            ParamKind::Float,
            json!(1.0),
            "nucleus sampling mass",
        ),
        ParamSpec::with_default(
            "top_k",
            ParamKind::Int,
            json!(0),
            "0 keeps every token; sent only when > 0",
        ),
        ParamSpec::with_default(
            "max_tokens",
            ParamKind::Int,
            json!(max_tokens),
            "the response budget in tokens",
        ),
        ParamSpec::with_default("n", ParamKind::Int, json!(1), "completions per prompt"),
        ParamSpec::with_default("stop", ParamKind::List, json!([]), "stop strings"),
        ParamSpec::with_default(
            "logprobs",
            ParamKind::Bool,
            json!(false),
            "return each token's log-probability",
        ),
        ParamSpec::with_default(
            "top_logprobs",
            ParamKind::Int,
            json!(0),
            "with logprobs: this many alternatives per token",
        ),
        ParamSpec::with_default(
            "sampling_seed",
            ParamKind::Int,
            Value::Null,
            "the sampling seed (sent as `seed`; the native runtime uses 0 when null)",
        ),
    ]
}
