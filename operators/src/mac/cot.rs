//! `mac.cot`: chain-of-thought augmentation through a teacher model behind an
//! OpenAI-compatible endpoint (`POST {base_url}/chat/completions`, spec §4.2–4.3; vLLM,
//! OpenAI, DashScope, …).
//!
//! For every item a chat request is built from the item (system + user prompt with
//! `{question}`, `{options}`, `{story}`; with images as `data:` URLs read from the optional
//! `media` directory unless `images: none`), and sent with bounded concurrency
//! (`concurrency` threads). 429, 408, 5xx and transport errors (including timeouts) are
//! retried up to `max_retries` times with exponential backoff (`backoff_ms` · 2^attempt, at
//! most `max_backoff_ms`, at least a `Retry-After` given in seconds); other statuses fail the
//! node at once. Each request has a `timeout_s` budget.
//!
//! **Memoisation.** Each request is memoised (`Context::memo`) under its own content: the
//! URL, model, sampling parameters and messages, with images by their BLAKE3 digest instead
//! of their bytes. A re-run re-asks only requests whose content changed; a failed run keeps
//! the answers it already got. The API key is read with `Context::secret(api_key_env)` and
//! is never part of a parameter, key, memo item, log line or output.
//!
//! **Filter.** A rationale is kept only when its final letter ([`super::extract_answer`]) is
//! the item's gold letter and the response was not cut off (`finish_reason: length`). Kept
//! items: the rationale (trimmed) as `output`, id `<id>#cot`, variant `cot`. The `report`
//! output counts items, requests sent and memoised, kept, wrong, unparsable and truncated.
//!
//! Declared nondeterministic: a teacher's sampling is not reproducible across servers.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use serde_json::{Map, Value, json};

use super::{
    Item, LETTERS, Task, extract_answer, fill, pretty, read_items, record_name, write_file,
    write_items,
};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct Cot;

const KIND: &str = "mac.cot";

const SYSTEM: &str = "You are an excellent scientific image reader. Reason step by step, then give the final answer.";
const I2T_PROMPT: &str = "{question}\n{options}\n\nDescribe what the cover image shows, reason step by step about which cover story it illustrates, and end with a last line of the form \"Answer: X\" where X is A, B, C or D.";
const T2I_PROMPT: &str = "{story}\n\n{question}\nThe images are, in order, A, B, C and D.\n\nDescribe each image, reason step by step about which one illustrates the story, and end with a last line of the form \"Answer: X\" where X is A, B, C or D.";

struct Config {
    url: String,
    model: String,
    api_key_env: Option<String>,
    system: String,
    image2text: String,
    text2image: String,
    images: &'static str,
    temperature: f64,
    max_tokens: u64,
    sampling_seed: Option<u64>,
    concurrency: usize,
    max_retries: u32,
    backoff_ms: u64,
    max_backoff_ms: u64,
    timeout_s: u64,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let base = p.str("base_url")?;
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(OperatorError::param(
                KIND,
                "base_url",
                format!(
                    "is `{base}`; give an http:// or https:// URL such as http://127.0.0.1:8000/v1"
                ),
            ));
        }
        for name in ["image2text", "text2image", "system"] {
            let known: &[&str] = match name {
                "image2text" => &["question", "options"],
                "text2image" => &["question", "story"],
                _ => &[],
            };
            fill(p.str(name)?, &|n| known.contains(&n).then(String::new)).map_err(|bad| {
                OperatorError::param(
                    KIND,
                    name,
                    format!("has an unknown placeholder `{{{bad}}}`"),
                )
            })?;
        }
        let concurrency = p.u64("concurrency")?;
        if concurrency == 0 {
            return Err(OperatorError::param(
                KIND,
                "concurrency",
                "is 0; use at least 1",
            ));
        }
        Ok(Config {
            url: format!("{}/chat/completions", base.trim_end_matches('/')),
            model: p.str("model")?.to_string(),
            api_key_env: p
                .opt_str("api_key_env")?
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            system: p.str("system")?.to_string(),
            image2text: p.str("image2text")?.to_string(),
            text2image: p.str("text2image")?.to_string(),
            images: p.choice("images", &["auto", "none", "data_url"])?,
            temperature: p.f64("temperature")?,
            max_tokens: p.u64("max_tokens")?,
            sampling_seed: p.opt_u64("sampling_seed")?,
            concurrency: concurrency as usize,
            max_retries: p.u64("max_retries")?.min(20) as u32,
            backoff_ms: p.u64("backoff_ms")?,
            max_backoff_ms: p.u64("max_backoff_ms")?,
            timeout_s: p.u64("timeout_s")?.max(1),
        })
    }
}

/// One request: the body sent, and the memo item (the body with image digests for bytes).
struct Request {
    body: Value,
    memo: Value,
}

fn mime(path: &str) -> &'static str {
    let l = path.to_ascii_lowercase();
    if l.ends_with(".jpg") || l.ends_with(".jpeg") {
        "image/jpeg"
    } else if l.ends_with(".webp") {
        "image/webp"
    } else if l.ends_with(".gif") {
        "image/gif"
    } else {
        "image/png"
    }
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

fn build(index: usize, it: &Item, cfg: &Config, media: Option<&Path>) -> Result<Request> {
    let options: Vec<String> = LETTERS
        .iter()
        .zip(&it.options)
        .map(|(l, t)| format!("{l}: {t}"))
        .collect();
    let options = options.join("\n");
    let story = it.story.clone().unwrap_or_default();
    let lookup = |n: &str| match n {
        "question" => Some(it.question.clone()),
        "options" => Some(options.clone()),
        "story" => Some(story.clone()),
        _ => None,
    };
    let template = match it.task {
        Task::ImageToText => &cfg.image2text,
        Task::TextToImage => &cfg.text2image,
    };
    let text = fill(template, &lookup).unwrap_or_default();
    let mut parts = vec![json!({"type": "text", "text": text})];
    let mut memo_parts = parts.clone();
    let attach = match cfg.images {
        "none" => false,
        "data_url" => true,
        _ => media.is_some(),
    };
    if attach {
        let media = media.ok_or_else(|| {
            OperatorError::param(
                KIND,
                "images",
                "is data_url but the `media` input is not connected",
            )
        })?;
        for p in &it.images {
            let path = media.join(p);
            let bytes = std::fs::read(&path).map_err(|e| {
                OperatorError::data(
                    KIND,
                    format!(
                        "{}: cannot read image `{p}` in `media`: {e}",
                        record_name(index, &it.id)
                    ),
                )
            })?;
            let url = format!("data:{};base64,{}", mime(p), base64(&bytes));
            parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            let digest = blake3::hash(&bytes).to_hex().to_string();
            memo_parts.push(json!({"type": "image_url", "image_url": {"blake3": digest}}));
        }
    }
    let mut body = json!({
        "model": cfg.model,
        "messages": [
            {"role": "system", "content": cfg.system},
            {"role": "user", "content": parts},
        ],
        "temperature": cfg.temperature,
        "max_tokens": cfg.max_tokens,
    });
    if let Some(s) = cfg.sampling_seed {
        body["seed"] = json!(s);
    }
    let mut memo_body = body.clone();
    memo_body["messages"][1]["content"] = Value::Array(memo_parts);
    Ok(Request {
        body,
        memo: json!({"url": cfg.url, "body": memo_body}),
    })
}

/// What a finished request gave.
struct Answer {
    content: String,
    finish_reason: String,
}

struct Client<'a> {
    agent: ureq::Agent,
    cfg: &'a Config,
    auth: Option<String>,
    sent: AtomicU64,
    retried: AtomicU64,
}

impl Client<'_> {
    /// Sends `body`, retrying as the module docs say; returns the response bytes.
    fn send(
        &self,
        ctx: &Context,
        name: &str,
        body: &[u8],
    ) -> std::result::Result<Vec<u8>, OpError> {
        let mut attempt = 0u32;
        loop {
            ctx.check_cancelled()?;
            let mut req = self
                .agent
                .post(&self.cfg.url)
                .header("Content-Type", "application/json");
            if let Some(a) = &self.auth {
                req = req.header("Authorization", a);
            }
            self.sent.fetch_add(1, Ordering::Relaxed);
            let (retry, problem, retry_after) = match req.send(body) {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    let text = resp
                        .body_mut()
                        .with_config()
                        .limit(64 * 1024 * 1024)
                        .read_to_vec();
                    match text {
                        Ok(t) if (200..300).contains(&status) => return Ok(t),
                        Ok(t) => {
                            let snippet =
                                String::from_utf8_lossy(&t[..t.len().min(300)]).into_owned();
                            let retry = status == 429 || status == 408 || status >= 500;
                            (retry, format!("HTTP {status}: {snippet}"), retry_after)
                        }
                        Err(e) => (true, format!("reading the response failed: {e}"), None),
                    }
                }
                Err(e) => (true, format!("request failed: {e}"), None),
            };
            if !retry || attempt >= self.cfg.max_retries {
                let tries = attempt + 1;
                return Err(format!(
                    "{KIND}: {name}: {} gave {problem} (after {tries} attempt{})",
                    self.cfg.url,
                    if tries == 1 { "" } else { "s" }
                )
                .into());
            }
            let exp = self
                .cfg
                .backoff_ms
                .saturating_mul(1u64 << attempt.min(20))
                .min(self.cfg.max_backoff_ms);
            let wait = retry_after
                .map(|s| s.saturating_mul(1000).min(self.cfg.max_backoff_ms).max(exp))
                .unwrap_or(exp);
            ctx.log(&format!("{name}: {problem}; retrying in {wait} ms"));
            self.retried.fetch_add(1, Ordering::Relaxed);
            let mut left = wait;
            while left > 0 {
                ctx.check_cancelled()?;
                let step = left.min(50);
                std::thread::sleep(Duration::from_millis(step));
                left -= step;
            }
            attempt += 1;
        }
    }
}

fn parse_answer(name: &str, bytes: &[u8]) -> std::result::Result<Answer, OpError> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("{KIND}: {name}: the response is not JSON: {e}"))?;
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| format!("{KIND}: {name}: the response has no `choices[0]`"))?;
    let content = choice
        .pointer("/message/content")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let finish_reason = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Ok(Answer {
        content,
        finish_reason,
    })
}

fn parse_memo(bytes: &[u8]) -> std::result::Result<Answer, OpError> {
    let v: Value = serde_json::from_slice(bytes)?;
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Ok(Answer {
        content: s("content"),
        finish_reason: s("finish_reason"),
    })
}

impl Operator for Cot {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        let s = |v: &str| json!(v);
        let int = |name, v: i64, doc| ParamSpec::with_default(name, ParamKind::Int, json!(v), doc);
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new("table", PortType::Table, "MAC items (the prompts)"),
                Port::new(
                    "media",
                    PortType::Dir,
                    "the directory image paths are relative to",
                )
                .optional(),
            ]),
            outputs: Ports::Fixed(vec![
                Port::new(
                    "table",
                    PortType::Table,
                    "items whose rationale ends in the gold letter",
                ),
                Port::new(
                    "report",
                    PortType::Metrics,
                    "counts: asked, memoised, kept, wrong, unparsable, truncated",
                ),
            ]),
            params: vec![
                ParamSpec::required(
                    "base_url",
                    ParamKind::String,
                    "e.g. http://127.0.0.1:8000/v1",
                ),
                ParamSpec::required(
                    "model",
                    ParamKind::String,
                    "the teacher model's name at the endpoint",
                ),
                ParamSpec::with_default(
                    "api_key_env",
                    ParamKind::String,
                    Value::Null,
                    "environment variable holding the API key (sent as a Bearer token); null: none",
                ),
                ParamSpec::with_default(
                    "system",
                    ParamKind::String,
                    s(SYSTEM),
                    "the system prompt",
                ),
                ParamSpec::with_default(
                    "image2text",
                    ParamKind::String,
                    s(I2T_PROMPT),
                    "user prompt for image2text items: {question}, {options}",
                ),
                ParamSpec::with_default(
                    "text2image",
                    ParamKind::String,
                    s(T2I_PROMPT),
                    "user prompt for text2image items: {question}, {story}",
                ),
                ParamSpec::with_default(
                    "images",
                    ParamKind::String,
                    s("auto"),
                    "auto (data: URLs when `media` is connected), none, data_url",
                ),
                ParamSpec::with_default(
                    "temperature",
                    ParamKind::Float,
                    json!(0.0),
                    "sampling temperature",
                ),
                int("max_tokens", 1024, "the response budget"),
                ParamSpec::with_default(
                    "sampling_seed",
                    ParamKind::Int,
                    Value::Null,
                    "the request's `seed` field; null: not sent",
                ),
                int("concurrency", 4, "requests in flight at once"),
                int(
                    "max_retries",
                    4,
                    "retries on 429, 408, 5xx and transport errors",
                ),
                int("backoff_ms", 500, "first retry delay, doubled each time"),
                int("max_backoff_ms", 30000, "the longest retry delay"),
                int("timeout_s", 300, "per-request time limit"),
            ],
            determinism: Determinism::Nondeterministic,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let items = read_items(ctx, KIND, "table")?;
        let media = ctx.inputs().get("media").map(|i| i.path.clone());
        let requests: Vec<Request> = items
            .iter()
            .enumerate()
            .map(|(i, it)| build(i, it, &cfg, media.as_deref()))
            .collect::<Result<_>>()?;
        let auth = match &cfg.api_key_env {
            Some(var) => Some(format!("Bearer {}", ctx.secret(var)?)),
            None => None,
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(cfg.timeout_s)))
            .http_status_as_error(false)
            .build()
            .into();
        let client = Client {
            agent,
            cfg: &cfg,
            auth,
            sent: AtomicU64::new(0),
            retried: AtomicU64::new(0),
        };
        let total = items.len();
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let answers: Mutex<Vec<Option<Answer>>> = Mutex::new((0..total).map(|_| None).collect());
        let first_error: Mutex<Option<OpError>> = Mutex::new(None);
        ctx.progress(0, total as u64);
        std::thread::scope(|scope| {
            for _ in 0..cfg.concurrency.min(total.max(1)) {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= total || failed.load(Ordering::SeqCst) {
                            break;
                        }
                        let name = record_name(i, &items[i].id);
                        let got = ctx
                            .memo(&requests[i].memo, || {
                                let body = serde_json::to_vec(&requests[i].body)?;
                                let bytes = client.send(ctx, &name, &body)?;
                                let a = parse_answer(&name, &bytes)?;
                                Ok(serde_json::to_vec(&json!({
                                    "content": a.content,
                                    "finish_reason": a.finish_reason,
                                }))?)
                            })
                            .and_then(|bytes| parse_memo(&bytes));
                        match got {
                            Ok(a) => {
                                if let Ok(mut all) = answers.lock() {
                                    all[i] = Some(a);
                                }
                                let d = done.fetch_add(1, Ordering::SeqCst) + 1;
                                ctx.progress(d as u64, total as u64);
                            }
                            Err(e) => {
                                failed.store(true, Ordering::SeqCst);
                                if let Ok(mut slot) = first_error.lock()
                                    && slot.is_none()
                                {
                                    *slot = Some(e);
                                }
                                break;
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = first_error.into_inner().map_err(|_| "poisoned")? {
            return Err(e);
        }
        let answers = answers.into_inner().map_err(|_| "poisoned")?;
        let (mut kept, mut wrong, mut unparsable, mut truncated) = (Vec::new(), 0u64, 0u64, 0u64);
        for (it, a) in items.iter().zip(answers) {
            let a = a.ok_or("a request was not answered")?;
            if a.finish_reason == "length" {
                truncated += 1;
                continue;
            }
            match extract_answer(&a.content) {
                Some(k) if k == it.answer => {
                    let mut c = it.derive("cot");
                    c.output = a.content.trim().to_string();
                    kept.push(c);
                }
                Some(_) => wrong += 1,
                None => unparsable += 1,
            }
        }
        let (hits, misses) = ctx.memo_counts();
        let report = json!({
            "items": total,
            "memoised": hits,
            "asked": misses,
            "http_requests": client.sent.load(Ordering::Relaxed),
            "retries": client.retried.load(Ordering::Relaxed),
            "kept": kept.len(),
            "wrong": wrong,
            "unparsable": unparsable,
            "truncated": truncated,
        });
        ctx.log(&format!("report: {report}"));
        write_file(&ctx.output("report")?.path, &pretty(&report))?;
        write_items(ctx, KIND, "table", &kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
