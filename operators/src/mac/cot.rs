//! `mac.cot`: chain-of-thought augmentation through a teacher model behind an
//! OpenAI-compatible endpoint (`POST {base_url}/chat/completions`, spec §4.2–4.3; vLLM,
//! OpenAI, DashScope, …).
//!
//! For every item a chat request is built from the item (system + user prompt with
//! `{question}`, `{options}`, `{story}`; with images as `data:` URLs read from the optional
//! `media` directory unless `images: none`), and sent through the shared client
//! ([`crate::infer::openai`]): `concurrency` threads, retries with backoff on 429, 408, 5xx
//! and transport errors, a `timeout_s` budget per request.
//!
//! **Memoisation.** Each request is memoised (`Context::memo`) under its own content: the
//! URL, model, sampling parameters and messages, with images by their BLAKE3 digest instead
//! of their bytes, and the identity of the model that answers (`crate::infer::identity`: the
//! digest of a connected `model` input, else the server's `/v1/models` entry, plus
//! `model_revision`). A re-run re-asks only requests whose content changed; a failed run
//! keeps the answers it already got. The API key (`api_key: ${secrets.NAME}`, or
//! `api_key_env`) is never part of a parameter, key, memo item, log line or output.
//!
//! **Filter.** A rationale is kept only when its final letter ([`super::extract_answer`]) is
//! the item's gold letter, it never argues for another option on the way ([`argued_for`]:
//! "the answer is B", "option B is correct" with B not gold), and the response was not cut
//! off (`finish_reason: length`). Kept items: the rationale (trimmed) as `output`, id
//! `<id>#cot`, variant `cot`. The `report` output counts items, kept, wrong, contradicts
//! (right final letter, another option argued for), unparsable and truncated.
//!
//! Declared nondeterministic: a teacher's sampling is not reproducible across servers.

use std::path::Path;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use serde_json::{Map, Value, json};

use super::{
    Item, LETTERS, Task, extract_answer, fill, pretty, read_labelled, record_name, write_file,
    write_items,
};
use crate::error::{OperatorError, Result};
use crate::infer::identity::model_identity;
use crate::infer::openai::{Client, ClientConfig, base64, client_params, for_each, image_mime};
use crate::params::{Params, problems};

pub struct Cot;

const KIND: &str = "mac.cot";

const SYSTEM: &str = "You are an excellent scientific image reader. Reason step by step, then give the final answer.";
const I2T_PROMPT: &str = "{question}\n{options}\n\nDescribe what the cover image shows, reason step by step about which cover story it illustrates, and end with a last line of the form \"Answer: X\" where X is A, B, C or D.";
const T2I_PROMPT: &str = "{story}\n\n{question}\nThe images are, in order, A, B, C and D.\n\nDescribe each image, reason step by step about which one illustrates the story, and end with a last line of the form \"Answer: X\" where X is A, B, C or D.";

struct Config {
    client: ClientConfig,
    model: String,
    system: String,
    image2text: String,
    text2image: String,
    images: &'static str,
    temperature: f64,
    max_tokens: u64,
    sampling_seed: Option<u64>,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let client = ClientConfig::parse(KIND, map)?;
        if !client.has_url() {
            return Err(OperatorError::param(
                KIND,
                "base_url",
                "is required: give the server's URL, e.g. http://127.0.0.1:8000/v1",
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
        Ok(Config {
            client,
            model: p.str("model")?.to_string(),
            system: p.str("system")?.to_string(),
            image2text: p.str("image2text")?.to_string(),
            text2image: p.str("text2image")?.to_string(),
            images: p.choice("images", &["auto", "none", "data_url"])?,
            temperature: p.f64("temperature")?,
            max_tokens: p.u64("max_tokens")?,
            sampling_seed: p.opt_u64("sampling_seed")?,
        })
    }
}

/// One request: the body sent, and the memo item (the body with image digests for bytes).
struct Request {
    body: Value,
    memo: Value,
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
            let url = format!("data:{};base64,{}", image_mime(p), base64(&bytes));
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
        memo: json!({"url": cfg.client.url, "body": memo_body}),
    })
}

/// What a finished request gave.
struct Answer {
    content: String,
    finish_reason: String,
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

/// The options a rationale states as the answer anywhere in its text: a letter A–D right
/// after "answer" (`answer is B`, `Answer: (B)`), or in "option B is correct/right/best/the
/// answer" / "B is the correct/right/best option/answer" (case of the words ignored; the
/// letter must stand alone).
pub fn argued_for(text: &str) -> std::collections::BTreeSet<usize> {
    let mut out = std::collections::BTreeSet::new();
    let words: Vec<String> = text
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '.' | '*' | '"' | '\''))
        .filter(|w| !w.is_empty())
        .map(|w| {
            w.trim_matches(|c| c == '(' || c == ')' || c == ':')
                .to_string()
        })
        .collect();
    let letter = |w: &str| LETTERS.iter().position(|l| w == l.to_string());
    let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    let verdict = |i: usize| -> bool {
        // `is [the] correct|right|best|answer` starting at word i.
        let mut j = i;
        if lower.get(j).map(String::as_str) != Some("is") {
            return false;
        }
        j += 1;
        if lower.get(j).map(String::as_str) == Some("the") {
            j += 1;
        }
        matches!(
            lower.get(j).map(String::as_str),
            Some("correct" | "right" | "best" | "answer")
        )
    };
    for (i, w) in words.iter().enumerate() {
        if lower[i] == "answer" || lower[i] == "answer:" {
            let mut j = i + 1;
            if lower.get(j).map(String::as_str) == Some("is") {
                j += 1;
            }
            if let Some(k) = words.get(j).and_then(|w| letter(w)) {
                out.insert(k);
            }
        }
        if let Some(k) = letter(w)
            && verdict(i + 1)
        {
            out.insert(k);
        }
    }
    out
}

impl Operator for Cot {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        // 2: the report holds counts about the items only; memo and HTTP figures are notes.
        2
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
                Port::new(
                    "model",
                    PortType::Model,
                    "the teacher's model directory, when the pipeline has it: its digest ties memoised answers to it",
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
                    "counts: items, kept, wrong, unparsable, truncated",
                ),
            ]),
            params: [
                ParamSpec::required(
                    "model",
                    ParamKind::String,
                    "the teacher model's name at the endpoint",
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
            ]
            .into_iter()
            .chain(client_params(true))
            .collect(),
            determinism: Determinism::Nondeterministic,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let items = read_labelled(ctx, KIND, "table")?;
        let media = ctx.inputs().get("media").map(|i| i.path.clone());
        let mut requests: Vec<Request> = items
            .iter()
            .enumerate()
            .map(|(i, it)| build(i, it, &cfg, media.as_deref()))
            .collect::<Result<_>>()?;
        let client = Client::new(ctx, KIND, cfg.client.clone())?;
        let identity = model_identity(ctx, KIND, &client, &cfg.model)?;
        for r in &mut requests {
            r.memo["model_identity"] = identity.clone();
        }
        let answers = for_each(ctx, items.len(), cfg.client.concurrency, |i| {
            let name = record_name(i, &items[i].id);
            let bytes = ctx.memo(&requests[i].memo, || {
                let body = serde_json::to_vec(&requests[i].body)?;
                let bytes = client.post(ctx, &name, &body)?;
                let a = parse_answer(&name, &bytes)?;
                Ok(serde_json::to_vec(&json!({
                    "content": a.content,
                    "finish_reason": a.finish_reason,
                }))?)
            })?;
            parse_memo(&bytes)
        })?;
        let total = items.len();
        let (mut kept, mut wrong, mut unparsable, mut truncated) = (Vec::new(), 0u64, 0u64, 0u64);
        let mut contradicts = 0u64;
        for (it, a) in items.iter().zip(answers) {
            if a.finish_reason == "length" {
                truncated += 1;
                continue;
            }
            match extract_answer(&a.content) {
                Some(k)
                    if Some(k) == it.answer && argued_for(&a.content).iter().any(|&o| o != k) =>
                {
                    contradicts += 1;
                }
                Some(k) if Some(k) == it.answer => {
                    let mut c = it.derive("cot");
                    c.output = a.content.trim().to_string();
                    kept.push(c);
                }
                Some(_) => wrong += 1,
                None => unparsable += 1,
            }
        }
        // Figures about this execution, which depend on what the memo store held: notes
        // (the log and the node's event), never the report.
        let (hits, misses) = ctx.memo_counts();
        ctx.note("memoised", hits);
        ctx.note("asked", misses);
        ctx.note("http_requests", client.sent());
        ctx.note("retries", client.retried());
        let report = json!({
            "items": total,
            "kept": kept.len(),
            "wrong": wrong,
            "contradicts": contradicts,
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
    use super::argued_for;

    #[test]
    fn rationales_arguing_for_an_option_are_found() {
        let set = |t: &str| argued_for(t).into_iter().collect::<Vec<_>>();
        assert_eq!(set("It shows a reef.\nAnswer: C"), [2]);
        assert_eq!(
            set("Option B is the best match at first sight. Looking closer, the answer is (C)."),
            [1, 2]
        );
        assert_eq!(set("B is correct because of the neuron.\nAnswer: B"), [1]);
        assert_eq!(
            set("Option B is not correct; the answer is not A. Answer: D"),
            [3]
        );
        assert!(argued_for("A coral reef is shown in blue.").is_empty());
    }
}
