//! `infer.chat`: a table of prompts → the same table with the model's replies.
//!
//! Prompts come from a `messages` column (a JSON list of `{role, content}` in OpenAI's
//! form, images and videos as local paths), or from `user` and optional `system` columns (or
//! the `system_prompt` parameter); optional `image` / `video` columns (a path, a JSON list of
//! paths, or a list column) are put before the user text. Relative media paths are resolved
//! against the `media` input directory.
//!
//! Backends: `openai` sends each prompt to `{base_url}/chat/completions` (any
//! OpenAI-compatible server: `expflow serve`, vLLM, hosted APIs) through the shared client;
//! `native` runs the generator in-process on the `model` input, in batches. Every request is
//! memoised under its content (the request body with media by digest, or the model's digest
//! with the rendered prompt and sampling), so a re-run asks only what changed.
//!
//! Output columns added: `response` (the first completion), `finish_reason`, `prompt_tokens`,
//! `completion_tokens`; with `n > 1` also `responses` (all n, a list); with `logprobs` also
//! `logprobs` (JSON: OpenAI's `logprobs.content` list, or a list of them per completion when
//! `n > 1`).
//!
//! Declared nondeterministic: a remote server's sampling is not reproducible. The native
//! backend is reproducible for greedy decoding or a fixed `sampling_seed` on the same
//! hardware and thread count, but a kind has one declaration, so it is the weaker one.

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use expflow_models::{ChatMessage, ContentPart};
use polars::prelude::*;
use serde_json::{Map, Value, json};

use super::backend::{ChatReq, sampling, sampling_params};
use super::openai::{Reply, client_params};
use super::rows::{attach, parse_messages, path_column, resolve, text_column};
use super::{BackendKind, open_backend};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};
use crate::table_io::{read_table, write_table};

pub struct Chat;

const KIND: &str = "infer.chat";

struct Columns {
    messages: String,
    system: String,
    user: String,
    image: String,
    video: String,
    system_prompt: Option<String>,
    /// The system text joins the user turn (`system\nuser`) instead of being a system message.
    system_in_user: bool,
}

fn parse_columns(map: &Map<String, Value>) -> Result<Columns> {
    let p = Params::new(KIND, map);
    Ok(Columns {
        messages: p.str("messages_column")?.to_string(),
        system: p.str("system_column")?.to_string(),
        user: p.str("user_column")?.to_string(),
        image: p.str("image_column")?.to_string(),
        video: p.str("video_column")?.to_string(),
        system_prompt: p.opt_str("system_prompt")?.map(str::to_owned),
        system_in_user: p.choice("system_as", &["system", "user"])? == "user",
    })
}

fn check_all(map: &Map<String, Value>) -> Result<()> {
    BackendKind::parse(KIND, map)?;
    sampling(KIND, map)?;
    parse_columns(map)?;
    Ok(())
}

/// The chat requests of the table's rows.
fn requests(
    df: &DataFrame,
    cols: &Columns,
    media: Option<&std::path::Path>,
) -> Result<Vec<Vec<ChatMessage>>> {
    let n = df.height();
    let images = path_column(KIND, df, &cols.image)?;
    let videos = path_column(KIND, df, &cols.video)?;
    let mut all: Vec<Vec<ChatMessage>> = if let Some(msgs) = text_column(KIND, df, &cols.messages)?
    {
        msgs.iter()
            .enumerate()
            .map(|(i, m)| {
                let text = m.as_deref().ok_or_else(|| {
                    OperatorError::data(KIND, format!("row {i}: `{}` is null", cols.messages))
                })?;
                let v: Value = serde_json::from_str(text).map_err(|e| {
                    OperatorError::data(
                        KIND,
                        format!("row {i}: `{}` is not JSON: {e}", cols.messages),
                    )
                })?;
                parse_messages(KIND, &v, media, i)
            })
            .collect::<Result<_>>()?
    } else {
        let user = text_column(KIND, df, &cols.user)?.ok_or_else(|| {
            OperatorError::data(
                KIND,
                format!(
                    "the table has neither a `{}` column (JSON messages) nor a `{}` column (the user \
                     prompt); columns: {}; set `messages_column` or `user_column`",
                    cols.messages,
                    cols.user,
                    df.get_column_names()
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        let system = text_column(KIND, df, &cols.system)?;
        (0..n)
            .map(|i| {
                let mut m = Vec::new();
                let sys = system
                    .as_ref()
                    .and_then(|s| s[i].clone())
                    .or_else(|| cols.system_prompt.clone())
                    .filter(|s| !s.is_empty());
                let user = user[i].as_deref().unwrap_or("");
                match sys {
                    Some(s) if cols.system_in_user => {
                        let joined = if user.is_empty() {
                            s
                        } else {
                            format!("{s}\n{user}")
                        };
                        m.push(ChatMessage::text("user", &joined));
                    }
                    Some(s) => {
                        m.push(ChatMessage::text("system", &s));
                        m.push(ChatMessage::text("user", user));
                    }
                    None => m.push(ChatMessage::text("user", user)),
                }
                m
            })
            .collect()
    };
    for (i, msgs) in all.iter_mut().enumerate() {
        let mut parts = Vec::new();
        for p in images.as_ref().map(|c| c[i].as_slice()).unwrap_or(&[]) {
            parts.push(ContentPart::Image {
                path: resolve(KIND, media, p, i)?,
            });
        }
        for p in videos.as_ref().map(|c| c[i].as_slice()).unwrap_or(&[]) {
            parts.push(ContentPart::Video {
                path: resolve(KIND, media, p, i)?,
            });
        }
        attach(msgs, parts);
    }
    Ok(all)
}

fn add_columns(df: &mut DataFrame, replies: &[Reply], n: usize, logprobs: bool) -> Result<()> {
    let first = |f: &dyn Fn(&super::openai::Choice) -> String| -> Vec<String> {
        replies
            .iter()
            .map(|r| r.choices.first().map(f).unwrap_or_default())
            .collect()
    };
    let mut cols = vec![
        Column::new("response".into(), first(&|c| c.text.clone())),
        Column::new("finish_reason".into(), first(&|c| c.finish_reason.clone())),
        Column::new(
            "prompt_tokens".into(),
            replies
                .iter()
                .map(|r| r.prompt_tokens)
                .collect::<Vec<u64>>(),
        ),
        Column::new(
            "completion_tokens".into(),
            replies
                .iter()
                .map(|r| r.completion_tokens)
                .collect::<Vec<u64>>(),
        ),
    ];
    if n > 1 {
        let mut b =
            ListStringChunkedBuilder::new("responses".into(), replies.len(), replies.len() * n);
        for r in replies {
            b.append_values_iter(r.choices.iter().map(|c| c.text.as_str()));
        }
        cols.push(b.finish().into_series().into_column());
    }
    if logprobs {
        let lp: Vec<String> = replies
            .iter()
            .map(|r| {
                let per: Vec<Value> = r
                    .choices
                    .iter()
                    .map(|c| c.logprobs.clone().unwrap_or(Value::Null))
                    .collect();
                if n > 1 {
                    Value::Array(per).to_string()
                } else {
                    per.into_iter().next().unwrap_or(Value::Null).to_string()
                }
            })
            .collect();
        cols.push(Column::new("logprobs".into(), lp));
    }
    for c in cols {
        df.with_column(c)
            .map_err(|e| OperatorError::polars(KIND, "adding the reply columns", e))?;
    }
    Ok(())
}

impl Operator for Chat {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        // 2: the report holds counts about the replies only; memo and HTTP figures are notes.
        2
    }

    fn signature(&self) -> Signature {
        let s =
            |name, v: &str, doc| ParamSpec::with_default(name, ParamKind::String, json!(v), doc);
        let mut params = vec![
            ParamSpec::required(
                "backend",
                ParamKind::String,
                "openai (an OpenAI-compatible server) or native (the `model` input, in-process)",
            ),
            ParamSpec::with_default(
                "model",
                ParamKind::String,
                Value::Null,
                "openai: the model's name at the server",
            ),
            ParamSpec::with_default(
                "media",
                ParamKind::String,
                json!("file_url"),
                "openai: how media are sent: file_url, data_url (images), swift (top-level images/videos), none",
            ),
            ParamSpec::with_default(
                "batch_size",
                ParamKind::Int,
                json!(8),
                "native: prompts per generate call",
            ),
            s(
                "messages_column",
                "messages",
                "column of JSON message lists (used when present)",
            ),
            s(
                "system_column",
                "system",
                "column of system prompts (optional)",
            ),
            s(
                "user_column",
                "user",
                "column of user prompts (when there is no messages column)",
            ),
            s("image_column", "image", "column of image paths (optional)"),
            s("video_column", "video", "column of video paths (optional)"),
            ParamSpec::with_default(
                "system_prompt",
                ParamKind::String,
                Value::Null,
                "the system prompt when there is no system column",
            ),
            s(
                "system_as",
                "system",
                "system: a system message; user: the system text and a newline before the user text (LLaMA-Factory's alpaca columns {prompt: system, query: input}, as mac.export_llamafactory registers them)",
            ),
        ];
        params.extend(sampling_params(256));
        params.extend(client_params(false));
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new("prompts", PortType::Table, "one prompt per row"),
                Port::new(
                    "model",
                    PortType::Model,
                    "native: the generative model directory",
                )
                .optional(),
                Port::new(
                    "media",
                    PortType::Dir,
                    "the directory relative media paths are in",
                )
                .optional(),
                Port::new(
                    "endpoint",
                    PortType::Dir,
                    "openai: a serve.model endpoint, its servers started for this node (instead of base_url)",
                )
                .optional(),
            ]),
            outputs: Ports::Fixed(vec![
                Port::new(
                    "table",
                    PortType::Table,
                    "the prompts with response, finish_reason, token counts",
                ),
                Port::new(
                    "report",
                    PortType::Metrics,
                    "counts: rows, prompt and completion tokens, truncated replies",
                ),
            ]),
            params,
            determinism: Determinism::Nondeterministic,
            resources: Resources::default(),
        }
    }

    fn determinism(&self, params: &Map<String, Value>) -> Determinism {
        super::determinism(params)
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(check_all(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let (sampling, send_seed) = sampling(KIND, ctx.params())?;
        let cols = parse_columns(ctx.params())?;
        let df = read_table(&ctx.input("prompts")?.path)?;
        let media = ctx.inputs().get("media").map(|i| i.path.clone());
        let prompts = requests(&df, &cols, media.as_deref())?;
        let reqs: Vec<ChatReq> = prompts
            .into_iter()
            .map(|messages| ChatReq {
                messages,
                sampling: sampling.clone(),
                send_seed,
                keep_special: false,
            })
            .collect();
        let names: Vec<String> = (0..reqs.len()).map(|i| format!("row {i}")).collect();
        let backend = open_backend(ctx, KIND)?;
        let replies = if reqs.is_empty() {
            Vec::new()
        } else {
            backend.chat(ctx, &reqs, &names)?
        };
        let mut out = df;
        add_columns(&mut out, &replies, sampling.n, sampling.logprobs)?;
        write_table(&mut out, &ctx.output("table")?.path)?;
        // Figures about this execution, which depend on what the memo store held: notes
        // (the log and the node's event), never the report.
        let (hits, misses) = ctx.memo_counts();
        let (sent, retried) = backend.http_counts();
        ctx.note("memoised", hits);
        ctx.note("asked", misses);
        ctx.note("http_requests", sent);
        ctx.note("retries", retried);
        let truncated = replies
            .iter()
            .flat_map(|r| &r.choices)
            .filter(|c| c.finish_reason == "length")
            .count();
        let report = json!({
            "rows": replies.len(),
            "prompt_tokens": replies.iter().map(|r| r.prompt_tokens).sum::<u64>(),
            "completion_tokens": replies.iter().map(|r| r.completion_tokens).sum::<u64>(),
            "truncated": truncated,
        });
        ctx.log(&format!("report: {report}"));
        let mut bytes = serde_json::to_vec_pretty(&report)?;
        bytes.push(b'\n');
        std::fs::write(&ctx.output("report")?.path, bytes)?;
        Ok(())
    }
}
