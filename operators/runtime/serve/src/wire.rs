//! The OpenAI wire format: request bodies parsed into the runtime's types, results written
//! back as OpenAI JSON, and OpenAI error objects.

use std::path::PathBuf;

use expflow_models::{ChatMessage, ContentPart, FinishReason, Generation, Sampling};
use serde_json::{Map, Value, json};

/// Most completions one request may ask for.
pub const MAX_N: usize = 16;
/// Most alternatives per token `top_logprobs` may ask for by default (OpenAI's limit and
/// vLLM's default `--max-logprobs`); `expflow serve --max-logprobs N` raises it.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// An OpenAI error object with its HTTP status.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 `invalid_request_error` about `param`.
    pub fn bad(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            kind: "invalid_request_error",
            message: message.into(),
            param: (!param.is_empty()).then(|| param.to_string()),
            code: None,
        }
    }

    pub fn not_found(message: impl Into<String>, code: &'static str) -> ApiError {
        ApiError {
            status: 404,
            kind: "invalid_request_error",
            message: message.into(),
            param: None,
            code: Some(code),
        }
    }

    pub fn server(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 500,
            kind: "server_error",
            message: message.into(),
            param: None,
            code: None,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 503,
            kind: "server_error",
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

/// Sampling values used when a request leaves them out (from `generation_config.json`,
/// then OpenAI's defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct Defaults {
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub max_tokens: usize,
    /// Most alternatives per token a request's `top_logprobs` may ask for (vLLM's
    /// `--max-logprobs`).
    pub max_logprobs: usize,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_tokens: 256,
            max_logprobs: MAX_TOP_LOGPROBS,
        }
    }
}

impl Defaults {
    /// OpenAI's defaults overridden by `temperature`, `top_p` and `top_k` from a
    /// `generation_config.json` object (sampling off there, `do_sample: false`, means greedy).
    pub fn from_generation_config(g: Option<&Value>, max_tokens: usize) -> Defaults {
        let mut d = Defaults {
            max_tokens,
            ..Defaults::default()
        };
        let Some(g) = g else { return d };
        if let Some(t) = g.get("temperature").and_then(Value::as_f64) {
            d.temperature = t;
        }
        if let Some(p) = g.get("top_p").and_then(Value::as_f64) {
            d.top_p = p;
        }
        if let Some(k) = g.get("top_k").and_then(Value::as_u64) {
            d.top_k = k as usize;
        }
        if g.get("do_sample").and_then(Value::as_bool) == Some(false) {
            d.temperature = 0.0;
        }
        d
    }
}

/// A parsed `POST /v1/chat/completions` body.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatCall {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub sampling: Sampling,
    /// vLLM's `skip_special_tokens` (default true): special tokens' text is left out of
    /// the reply's `content`.
    pub skip_special_tokens: bool,
}

fn field<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|v| !v.is_null())
}

fn number(
    body: &Map<String, Value>,
    name: &str,
    lo: f64,
    hi: f64,
) -> Result<Option<f64>, ApiError> {
    match field(body, name) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x >= lo && x <= hi => Ok(Some(x)),
            _ => Err(ApiError::bad(
                name,
                format!("`{name}` must be a number from {lo} to {hi}, got {v}"),
            )),
        },
    }
}

fn count(body: &Map<String, Value>, name: &str, lo: u64, hi: u64) -> Result<Option<u64>, ApiError> {
    match field(body, name) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(x) if x >= lo && x <= hi => Ok(Some(x)),
            _ => Err(ApiError::bad(
                name,
                format!("`{name}` must be an integer from {lo} to {hi}, got {v}"),
            )),
        },
    }
}

/// A local file named by a path or a `file://` URL; other URLs are refused.
pub fn local_path(url: &str, param: &str) -> Result<PathBuf, ApiError> {
    let path = if let Some(rest) = url.strip_prefix("file://") {
        // file:///abs/path, or file://localhost/abs/path
        let rest = rest.strip_prefix("localhost").unwrap_or(rest);
        percent_decode(rest)
    } else if url.contains("://") || url.starts_with("data:") {
        return Err(ApiError::bad(
            param,
            format!(
                "`{}` is not a local file: this server reads images and videos from its own \
                 filesystem; give a path or a file:// URL",
                truncate(url, 80)
            ),
        ));
    } else {
        url.to_string()
    };
    let path = PathBuf::from(path);
    if !path.is_file() {
        return Err(ApiError::bad(
            param,
            format!("{}: no such file on the server", path.display()),
        ));
    }
    Ok(path)
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn url_of(part: &Value, key: &str) -> Option<String> {
    match part.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("url").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn parse_part(part: &Value, param: &str) -> Result<ContentPart, ApiError> {
    let ty = part.get("type").and_then(Value::as_str).unwrap_or("");
    match ty {
        "text" => {
            let text = part
                .get("text")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad(param, "a `text` part needs a string `text`"))?;
            Ok(ContentPart::Text {
                text: text.to_string(),
            })
        }
        "image_url" | "image" => {
            let url = url_of(part, ty).ok_or_else(|| {
                ApiError::bad(param, format!("an `{ty}` part needs `{ty}.url` (a path)"))
            })?;
            Ok(ContentPart::Image {
                path: local_path(&url, param)?,
            })
        }
        "video_url" | "video" => {
            let url = url_of(part, ty).ok_or_else(|| {
                ApiError::bad(param, format!("a `{ty}` part needs `{ty}.url` (a path)"))
            })?;
            Ok(ContentPart::Video {
                path: local_path(&url, param)?,
            })
        }
        other => Err(ApiError::bad(
            param,
            format!("unknown content part type `{other}`; use text, image_url or video_url"),
        )),
    }
}

fn parse_message(i: usize, m: &Value) -> Result<ChatMessage, ApiError> {
    let param = format!("messages[{i}]");
    let obj = m
        .as_object()
        .ok_or_else(|| ApiError::bad(&param, format!("`{param}` must be an object")))?;
    let role = obj
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad(&param, format!("`{param}.role` must be a string")))?;
    if !matches!(role, "system" | "user" | "assistant" | "developer" | "tool") {
        return Err(ApiError::bad(
            &param,
            format!("`{param}.role` is `{role}`; use system, user or assistant"),
        ));
    }
    let role = if role == "developer" { "system" } else { role };
    let content = match obj.get("content") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![ContentPart::Text { text: s.clone() }],
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| parse_part(p, &format!("{param}.content[{j}]")))
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::bad(
                &param,
                format!("`{param}.content` must be a string or a list of parts"),
            ));
        }
    };
    Ok(ChatMessage {
        role: role.to_string(),
        content,
    })
}

/// Attaches ms-swift's top-level `images` / `videos` lists: each `<image>` / `<video>` tag
/// in the user messages' text is replaced by the next file of its list, in order; files left
/// over go before the text of the first user message.
fn attach_media(
    messages: &mut [ChatMessage],
    images: Vec<PathBuf>,
    videos: Vec<PathBuf>,
) -> Result<(), ApiError> {
    if images.is_empty() && videos.is_empty() {
        return Ok(());
    }
    let mut images = images.into_iter();
    let mut videos = videos.into_iter();
    for m in messages.iter_mut().filter(|m| m.role == "user") {
        let mut parts = Vec::new();
        for p in std::mem::take(&mut m.content) {
            let ContentPart::Text { text } = p else {
                parts.push(p);
                continue;
            };
            let mut rest = text.as_str();
            loop {
                let img = rest.find("<image>");
                let vid = rest.find("<video>");
                let (at, is_image) = match (img, vid) {
                    (Some(a), Some(b)) if a < b => (a, true),
                    (Some(a), None) => (a, true),
                    (_, Some(b)) => (b, false),
                    (None, None) => break,
                };
                let file = if is_image {
                    images.next().map(|path| ContentPart::Image { path })
                } else {
                    videos.next().map(|path| ContentPart::Video { path })
                };
                let Some(file) = file else { break };
                if at > 0 {
                    parts.push(ContentPart::Text {
                        text: rest[..at].to_string(),
                    });
                }
                parts.push(file);
                // Both tags are seven bytes long.
                rest = &rest[at + "<image>".len()..];
            }
            if !rest.is_empty() {
                parts.push(ContentPart::Text {
                    text: rest.to_string(),
                });
            }
        }
        m.content = parts;
    }
    let left: Vec<ContentPart> = images
        .map(|path| ContentPart::Image { path })
        .chain(videos.map(|path| ContentPart::Video { path }))
        .collect();
    if !left.is_empty() {
        let first = messages
            .iter_mut()
            .find(|m| m.role == "user")
            .ok_or_else(|| ApiError::bad("messages", "images or videos need a user message"))?;
        let mut parts = left;
        parts.append(&mut first.content);
        first.content = parts;
    }
    Ok(())
}

fn paths(body: &Map<String, Value>, name: &str) -> Result<Vec<PathBuf>, ApiError> {
    match field(body, name) {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let p = format!("{name}[{i}]");
                let s = v
                    .as_str()
                    .ok_or_else(|| ApiError::bad(&p, format!("`{p}` must be a path")))?;
                local_path(s, &p)
            })
            .collect(),
        Some(_) => Err(ApiError::bad(
            name,
            format!("`{name}` must be a list of paths"),
        )),
    }
}

/// Parses a chat completions body.
pub fn parse_chat(bytes: &[u8], defaults: &Defaults) -> Result<ChatCall, ApiError> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad("", format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(body) = v else {
        return Err(ApiError::bad("", "the request body must be a JSON object"));
    };
    if field(&body, "stream").and_then(Value::as_bool) == Some(true) {
        return Err(ApiError::bad(
            "stream",
            "streaming is not supported; send `stream: false`",
        ));
    }
    let model = match field(&body, "model") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::bad("model", "`model` must be a string")),
    };
    let raw = match field(&body, "messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        _ => {
            return Err(ApiError::bad(
                "messages",
                "`messages` must be a non-empty list of {role, content}",
            ));
        }
    };
    let mut messages: Vec<ChatMessage> = raw
        .iter()
        .enumerate()
        .map(|(i, m)| parse_message(i, m))
        .collect::<Result<_, _>>()?;
    attach_media(
        &mut messages,
        paths(&body, "images")?,
        paths(&body, "videos")?,
    )?;

    let mut s = Sampling {
        temperature: number(&body, "temperature", 0.0, 2.0)?.unwrap_or(defaults.temperature),
        top_p: defaults.top_p,
        top_k: defaults.top_k,
        max_new_tokens: defaults.max_tokens,
        ..Sampling::default()
    };
    if let Some(p) = number(&body, "top_p", 0.0, 1.0)? {
        if p == 0.0 {
            return Err(ApiError::bad("top_p", "`top_p` must be greater than 0"));
        }
        s.top_p = p;
    }
    if let Some(k) = field(&body, "top_k") {
        // vLLM's extension: -1 or 0 keep every token.
        s.top_k = match k.as_i64() {
            Some(k) if k <= 0 => 0,
            Some(k) => k as usize,
            None => return Err(ApiError::bad("top_k", "`top_k` must be an integer")),
        };
    }
    if let Some(m) = count(&body, "max_completion_tokens", 1, 1 << 20)?.or(count(
        &body,
        "max_tokens",
        1,
        1 << 20,
    )?) {
        s.max_new_tokens = m as usize;
    }
    s.n = count(&body, "n", 1, MAX_N as u64)?.unwrap_or(1) as usize;
    if let Some(seed) = field(&body, "seed") {
        s.seed = match (seed.as_u64(), seed.as_i64()) {
            (Some(u), _) => u,
            (None, Some(i)) => i as u64,
            _ => return Err(ApiError::bad("seed", "`seed` must be an integer")),
        };
    }
    s.stop = match field(&body, "stop") {
        None => Vec::new(),
        Some(Value::String(x)) => vec![x.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str().map(str::to_owned).ok_or_else(|| {
                    ApiError::bad("stop", "`stop` must be a string or a list of strings")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::bad(
                "stop",
                "`stop` must be a string or a list of strings",
            ));
        }
    };
    if s.stop.iter().any(String::is_empty) {
        return Err(ApiError::bad("stop", "`stop` strings must not be empty"));
    }
    s.logprobs = match field(&body, "logprobs") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::bad(
                "logprobs",
                "`logprobs` must be true or false",
            ));
        }
    };
    if let Some(k) = count(&body, "top_logprobs", 0, defaults.max_logprobs as u64)? {
        if !s.logprobs && k > 0 {
            return Err(ApiError::bad(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`",
            ));
        }
        s.top_logprobs = k as usize;
    }
    let skip_special_tokens = match field(&body, "skip_special_tokens") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::bad(
                "skip_special_tokens",
                "`skip_special_tokens` must be true or false",
            ));
        }
    };
    Ok(ChatCall {
        model,
        messages,
        sampling: s,
        skip_special_tokens,
    })
}

fn token_entry(token: &str, logprob: f32) -> Value {
    json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()})
}

/// The `chat.completion` object for one generation.
pub fn chat_response(id: &str, created: u64, model: &str, g: &Generation) -> Value {
    let mut completion_tokens = 0;
    let choices: Vec<Value> = g
        .completions
        .iter()
        .enumerate()
        .map(|(i, c)| {
            completion_tokens += c.token_ids.len();
            let logprobs = c.logprobs.as_ref().map(|lps| {
                let content: Vec<Value> = lps
                    .iter()
                    .map(|t| {
                        let mut e = token_entry(&t.token, t.logprob);
                        e["top_logprobs"] = Value::Array(
                            t.top
                                .iter()
                                .map(|(tok, lp)| token_entry(tok, *lp))
                                .collect(),
                        );
                        e
                    })
                    .collect();
                json!({"content": content})
            });
            json!({
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": logprobs,
                "finish_reason": match c.finish_reason {
                    FinishReason::Stop => "stop",
                    FinishReason::Length => "length",
                },
            })
        })
        .collect();
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": g.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": g.prompt_tokens + completion_tokens,
        },
    })
}

/// The texts of a `POST /v1/embeddings` body (`input`: a string or a list of strings).
pub fn parse_embeddings(bytes: &[u8]) -> Result<(Option<String>, Vec<String>), ApiError> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad("", format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(body) = v else {
        return Err(ApiError::bad("", "the request body must be a JSON object"));
    };
    if let Some(f) = field(&body, "encoding_format").and_then(Value::as_str)
        && f != "float"
    {
        return Err(ApiError::bad(
            "encoding_format",
            format!("encoding_format `{f}` is not supported; use float"),
        ));
    }
    let model = field(&body, "model")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let texts = match field(&body, "input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|x| {
                x.as_str().map(str::to_owned).ok_or_else(|| {
                    ApiError::bad("input", "`input` must be a string or a list of strings (token ids are not supported)")
                })
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::bad(
                "input",
                "`input` must be a string or a non-empty list of strings",
            ));
        }
    };
    Ok((model, texts))
}

/// The `list` object of embeddings.
pub fn embeddings_response(model: &str, vectors: &[Vec<f32>], tokens: usize) -> Value {
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<ChatCall, ApiError> {
        parse_chat(v.to_string().as_bytes(), &Defaults::default())
    }

    #[test]
    fn strings_and_parts_become_messages() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a b.png");
        std::fs::write(&img, b"x").unwrap();
        let url = format!("file://{}", img.display()).replace(' ', "%20");
        let c = parse(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": "what is it?"}
                ]}
            ],
            "temperature": 0, "n": 2, "seed": 7, "max_tokens": 9, "stop": "\n",
            "logprobs": true, "top_logprobs": 3
        }))
        .unwrap();
        assert_eq!(c.model.as_deref(), Some("m"));
        assert_eq!(c.messages[0], ChatMessage::text("system", "be brief"));
        assert_eq!(c.messages[1].content[0], ContentPart::Image { path: img });
        let s = &c.sampling;
        assert_eq!(
            (s.temperature, s.n, s.seed, s.max_new_tokens),
            (0.0, 2, 7, 9)
        );
        assert_eq!(s.stop, vec!["\n".to_string()]);
        assert!(s.logprobs);
        assert_eq!(s.top_logprobs, 3);
    }

    #[test]
    fn swift_videos_replace_their_tags() {
        let dir = tempfile::tempdir().unwrap();
        let vid = dir.path().join("clip.mp4");
        std::fs::write(&vid, b"x").unwrap();
        let c = parse(json!({
            "messages": [{"role": "user", "content": "<video>Narrate this step."}],
            "videos": [vid.to_str().unwrap()]
        }))
        .unwrap();
        assert_eq!(
            c.messages[0].content,
            vec![
                ContentPart::Video { path: vid },
                ContentPart::Text {
                    text: "Narrate this step.".into()
                }
            ]
        );
    }

    #[test]
    fn bad_requests_name_the_parameter() {
        let cases = [
            (json!({"messages": []}), "messages"),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "temperature": 3}),
                "temperature",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "n": 0}),
                "n",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}),
                "top_logprobs",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "stream": true}),
                "stream",
            ),
            (
                json!({"messages": [{"role": "robot", "content": "x"}]}),
                "messages[0]",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/no/such.png"}}]}]}),
                "messages[0].content[0]",
            ),
        ];
        for (body, param) in cases {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
        let e = parse_chat(b"{not json", &Defaults::default()).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("not valid JSON"));
    }

    #[test]
    fn defaults_come_from_the_generation_config() {
        let g = json!({"temperature": 0.7, "top_p": 0.8, "top_k": 20});
        let d = Defaults::from_generation_config(Some(&g), 64);
        let c = parse_chat(
            json!({"messages": [{"role": "user", "content": "x"}]})
                .to_string()
                .as_bytes(),
            &d,
        )
        .unwrap();
        assert_eq!(
            (
                c.sampling.temperature,
                c.sampling.top_p,
                c.sampling.top_k,
                c.sampling.max_new_tokens
            ),
            (0.7, 0.8, 20, 64)
        );
        let greedy = Defaults::from_generation_config(Some(&json!({"do_sample": false})), 8);
        assert_eq!(greedy.temperature, 0.0);
    }
}
