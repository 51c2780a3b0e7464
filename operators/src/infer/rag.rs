//! `expstar.rag_infer`: ExpStar's retrieval-aware multi-turn inference (spec §F.3, DAG node
//! 28), in the form the model was trained on (§C.2, §C.5).
//!
//! For each test row (`{id, messages: [system, user, assistant], videos}`):
//! 1. Turn 1 sends `[system, user]` (the video in place of the user text's `<video>` tag).
//! 2. The reply asks for retrieval when it contains `[Retrieval]`; it is cut just after it.
//!    With `threshold` (native backend only) turn 1 is generated up to the retrieval token
//!    instead, and retrieval happens when P(`[Retrieval]`) / (P(`[Retrieval]`) +
//!    P(`[No Retrieval]`)) at that point exceeds the threshold, as in self-RAG.
//! 3. With retrieval, the row's retrieved documents (the first `passages`) are looked up by
//!    row id, else by the normalised `videos[0]`. `second_turn: paragraph` (the trained form)
//!    asks once per passage, `[system, user, assistant(turn 1), user("<paragraph>{text}
//!    </paragraph>")]`; a reply starting with `[Relevant]` marks its passage relevant, and
//!    the continuation kept is the first relevant passage's (else the first passage's).
//!    `second_turn: json_dump` reproduces the released client: one turn with
//!    `"Here are the retrieved documents:\n"` and the documents as indented JSON.
//!
//! With `protocol: baseline` (spec §F.1, DAG node 30) the node is the baseline arm's
//! single-turn inference instead: turn 1 only, no retrieval (the `retrieval` input is not
//! needed), and the output rows are `{id, response, labels}` (`labels` = the row's last
//! assistant message), the form `swift infer` writes and `expstar.eval_rows` reads.
//!
//! With `samples: N` (and a temperature above 0) each row is answered N times, sample k
//! drawn with seed `sampling_seed + k`, one output row per sample in row order: the
//! candidates of spec §C.6 for `expstar.reward` (DAG node 23). The native backend samples
//! reproducibly for the seed (the node's class is Seeded); a server may not.
//!
//! Output rows, JSON Lines, as `expstar.postprocess` reads them: `{id, rounds: [{role:
//! assistant, content}…], gt: the row's messages, is_retrieval, rag_passages,
//! relevant_passages}`. A row whose retrieval entry is missing keeps turn 1 only (logged and
//! counted); the released client dropped such rows.
//!
//! Retrieval input: a JSON list (or JSON Lines, or a Parquet table with a `documents`
//! column) of `{id?, query?, video_path?, documents: [text | {text, …}]}`, the form
//! `expstar.add_rag` reads. Requests are memoised per request by the backend; declared
//! nondeterministic like `infer.chat`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use expflow_models::{ChatMessage, ContentPart, Sampling};
use serde_json::{Map, Value, json};

use super::backend::ChatReq;
use super::openai::client_params;
use super::{BackendKind, open_backend};
use crate::error::{OperatorError, Result};
use crate::expstar::prompts::{NO_RETRIEVAL, RELEVANT, RETRIEVAL};
use crate::expstar::{py_json_indent, read_jsonl, read_rows, write_rows};
use crate::params::{Params, problems};
use crate::table_io::read_table;

pub struct RagInfer;

const KIND: &str = "expstar.rag_infer";
const DUMP_PREFIX: &str = "Here are the retrieved documents:\n";

struct Config {
    sampling: Sampling,
    send_seed: bool,
    threshold: Option<f64>,
    passages: usize,
    json_dump: bool,
    drop_media: bool,
    baseline: bool,
    samples: usize,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let backend = BackendKind::parse(KIND, map)?;
        let (sampling, send_seed) = super::backend::base_sampling(KIND, map)?;
        let threshold = p.opt_f64("threshold")?;
        if let Some(t) = threshold {
            if !(0.0..=1.0).contains(&t) {
                return Err(OperatorError::param(
                    KIND,
                    "threshold",
                    format!("is {t}; use a probability from 0 to 1"),
                ));
            }
            if matches!(backend, BackendKind::OpenAi { .. }) {
                return Err(OperatorError::param(
                    KIND,
                    "threshold",
                    "needs the native backend (a remote server gives no next-token probabilities here); \
                     set it to null to decide by the emitted [Retrieval] token",
                ));
            }
        }
        let passages = p.u64("passages")?;
        if passages == 0 {
            return Err(OperatorError::param(
                KIND,
                "passages",
                "is 0; use at least 1",
            ));
        }
        let samples = p.u64("samples")?;
        if samples == 0 {
            return Err(OperatorError::param(
                KIND,
                "samples",
                "is 0; use at least 1",
            ));
        }
        if samples > 1 && sampling.temperature == 0.0 {
            return Err(OperatorError::param(
                KIND,
                "samples",
                format!(
                    "is {samples} with temperature 0: greedy decoding gives the same answer each \
                     time; set temperature above 0 (and sampling_seed for reproducible samples)"
                ),
            ));
        }
        Ok(Config {
            samples: samples as usize,
            sampling,
            send_seed,
            threshold,
            passages: passages as usize,
            json_dump: p.choice("second_turn", &["paragraph", "json_dump"])? == "json_dump",
            drop_media: p.choice("media", &super::backend::Media::NAMES)? == "none",
            baseline: p.choice("protocol", &["expstar", "baseline"])? == "baseline",
        })
    }
}

/// Python's `os.path.normpath` for POSIX paths (lexical: `.`, `..`, repeated slashes).
pub fn normpath(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let abs = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !abs {
                    parts.push("..");
                }
            }
            c => parts.push(c),
        }
    }
    let body = parts.join("/");
    match (abs, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".into(),
        (false, false) => body,
    }
}

/// The retrieval entries, by id and by normalised video path.
pub struct Retrieval {
    by_id: HashMap<String, Vec<Value>>,
    by_video: HashMap<String, Vec<Value>>,
}

impl Retrieval {
    pub fn from_entries(entries: &[Value]) -> Retrieval {
        let mut r = Retrieval {
            by_id: HashMap::new(),
            by_video: HashMap::new(),
        };
        for e in entries {
            let docs = e
                .get("documents")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if let Some(id) = e.get("id").and_then(Value::as_str) {
                r.by_id
                    .entry(id.to_string())
                    .or_insert_with(|| docs.clone());
            }
            if let Some(v) = e.get("video_path").and_then(Value::as_str) {
                r.by_video.entry(normpath(v)).or_insert(docs);
            }
        }
        r
    }

    /// Reads a JSON list, JSON Lines, or a Parquet table with a `documents` column (a list
    /// of strings, or JSON text).
    pub fn read(path: &Path) -> Result<Retrieval> {
        let bytes = std::fs::read(path).map_err(|e| OperatorError::io("cannot read", path, e))?;
        if bytes.starts_with(b"PAR1") {
            return Retrieval::from_table(path);
        }
        let text = String::from_utf8_lossy(&bytes);
        let entries = match serde_json::from_str::<Value>(&text) {
            Ok(Value::Array(a)) => a,
            Ok(v) if v.is_object() => vec![v],
            _ => read_jsonl(path)?,
        };
        Ok(Retrieval::from_entries(&entries))
    }

    fn from_table(path: &Path) -> Result<Retrieval> {
        let df = read_table(path)?;
        let n = df.height();
        let text = |c: &str| super::rows::text_column(KIND, &df, c);
        let ids = text("id")?;
        let videos = text("video_path")?;
        let docs: Vec<Vec<Value>> = match df.column("documents").map(|c| c.dtype().clone()) {
            Ok(polars::prelude::DataType::List(_)) => {
                super::rows::path_column(KIND, &df, "documents")?
                    .unwrap_or_default()
                    .into_iter()
                    .map(|d| d.into_iter().map(Value::String).collect())
                    .collect()
            }
            Ok(_) => text("documents")?
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, t)| match t {
                    None => Ok(Vec::new()),
                    Some(t) => serde_json::from_str::<Vec<Value>>(&t).map_err(|e| {
                        OperatorError::data(
                            KIND,
                            format!("retrieval table row {i}: `documents` is not a JSON list: {e}"),
                        )
                    }),
                })
                .collect::<Result<_>>()?,
            Err(_) => {
                return Err(OperatorError::data(
                    KIND,
                    format!(
                        "the retrieval table {} has no `documents` column",
                        path.display()
                    ),
                ));
            }
        };
        let entries: Vec<Value> = (0..n)
            .map(|i| {
                json!({
                    "id": ids.as_ref().and_then(|c| c[i].clone()),
                    "video_path": videos.as_ref().and_then(|c| c[i].clone()),
                    "documents": docs[i],
                })
            })
            .collect();
        Ok(Retrieval::from_entries(&entries))
    }

    /// The documents for a row (by id, then by video path), or `None`.
    pub fn lookup(&self, id: Option<&str>, video: Option<&str>) -> Option<&[Value]> {
        id.and_then(|i| self.by_id.get(i))
            .or_else(|| video.and_then(|v| self.by_video.get(&normpath(v))))
            .map(Vec::as_slice)
    }
}

/// A document's passage text: the string itself, or its `text` field.
fn doc_text(d: &Value) -> String {
    match d {
        Value::String(s) => s.clone(),
        other => other
            .get("text")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| other.to_string()),
    }
}

fn resolve_video(media: Option<&Path>, v: &str, row: usize) -> Result<PathBuf> {
    super::rows::resolve(KIND, media, v, row)
}

/// The turn-1 messages of a row: its system message (if any) and its first user message,
/// the video in place of the user text's `<video>` tag (or before the text).
fn turn1(
    row: &Value,
    i: usize,
    media: Option<&Path>,
    drop_media: bool,
) -> Result<Vec<ChatMessage>> {
    let msgs = row
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            OperatorError::data(
                KIND,
                format!("row {i}: no `messages` list (a baseline-format test row is expected)"),
            )
        })?;
    let text_of = |role: &str| {
        msgs.iter()
            .find(|m| m.get("role").and_then(Value::as_str) == Some(role))
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
    };
    let user = text_of("user")
        .ok_or_else(|| OperatorError::data(KIND, format!("row {i}: no user message")))?;
    let mut out = Vec::new();
    if let Some(s) = text_of("system") {
        out.push(ChatMessage::text("system", s));
    }
    let video = row
        .get("videos")
        .and_then(Value::as_array)
        .and_then(|v| v.first())
        .and_then(Value::as_str);
    let mut content = Vec::new();
    match video {
        Some(v) => {
            let part = if drop_media {
                None
            } else {
                Some(ContentPart::Video {
                    path: resolve_video(media, v, i)?,
                })
            };
            let (before, after) = user.split_once("<video>").unwrap_or(("", user));
            if !before.is_empty() {
                content.push(ContentPart::Text {
                    text: before.into(),
                });
            }
            content.extend(part);
            content.push(ContentPart::Text { text: after.into() });
        }
        None => content.push(ContentPart::Text { text: user.into() }),
    }
    out.push(ChatMessage {
        role: "user".into(),
        content,
    });
    Ok(out)
}

/// `base` with its seed moved on by `sample`, so each of a row's samples draws differently
/// and reproducibly.
fn seeded(base: &Sampling, sample: u64) -> Sampling {
    let mut s = base.clone();
    s.seed = s.seed.wrapping_add(sample);
    s
}

struct RowState {
    /// The input row this state answers.
    row: usize,
    /// Which of the row's `samples` this is (added to the sampling seed).
    sample: u64,
    id: Option<String>,
    name: String,
    messages: Vec<ChatMessage>,
    turn1: String,
    retrieve: bool,
    docs: Vec<Value>,
    missing: bool,
}

fn with_turns(base: &[ChatMessage], assistant: &str, user: &str) -> Vec<ChatMessage> {
    let mut m = base.to_vec();
    m.push(ChatMessage::text("assistant", assistant));
    m.push(ChatMessage::text("user", user));
    m
}

/// The baseline arm (spec §F.1): one turn per row; `{id, response, labels}` rows.
fn baseline(
    ctx: &Context,
    cfg: &Config,
    backend: &dyn super::backend::Backend,
    rows: &[Value],
    states: &[RowState],
) -> Result<(), OpError> {
    let reqs: Vec<ChatReq> = states
        .iter()
        .map(|s| ChatReq {
            messages: s.messages.clone(),
            sampling: seeded(&cfg.sampling, s.sample),
            send_seed: cfg.send_seed || cfg.samples > 1,
            keep_special: true,
        })
        .collect();
    let names: Vec<String> = states.iter().map(|s| s.name.clone()).collect();
    let replies = if reqs.is_empty() {
        Vec::new()
    } else {
        backend.chat(ctx, &reqs, &names)?
    };
    let mut out = Vec::with_capacity(rows.len());
    for (s, r) in states.iter().zip(&replies) {
        let row = &rows[s.row];
        let labels = row
            .get("messages")
            .and_then(Value::as_array)
            .and_then(|m| {
                m.iter()
                    .rev()
                    .find(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
            })
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                OperatorError::data(
                    KIND,
                    format!("{}: no assistant message to take the labels from", s.name),
                )
            })?;
        let response = r
            .choices
            .first()
            .map(|c| c.text.clone())
            .unwrap_or_default();
        let mut m = Map::new();
        if let Some(id) = &s.id {
            m.insert("id".into(), json!(id));
        }
        m.insert("response".into(), json!(response));
        m.insert("labels".into(), json!(labels));
        out.push(Value::Object(m));
    }
    write_rows(&ctx.output("results")?.path, &out)?;
    let (hits, misses) = ctx.memo_counts();
    ctx.note("memoised", hits);
    ctx.note("asked", misses);
    let report = json!({"rows": out.len(), "retrieval": 0, "missing_retrieval": 0, "passages": 0, "relevant": 0});
    ctx.log(&format!("report: {report}"));
    let mut bytes = serde_json::to_vec_pretty(&report)?;
    bytes.push(b'\n');
    std::fs::write(&ctx.output("report")?.path, bytes)?;
    Ok(())
}

impl Operator for RagInfer {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        // 2: the report holds counts about the rows only; memo and HTTP figures are notes.
        // 3: rows travel as Parquet tables, not JSON Lines (docs/decisions.md).
        3
    }

    fn signature(&self) -> Signature {
        let mut params = vec![
            ParamSpec::with_default(
                "protocol",
                ParamKind::String,
                json!("expstar"),
                "expstar (retrieval-aware, two turns, §F.3) or baseline (one turn, no retrieval, {id, response, labels} rows, §F.1)",
            ),
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
                json!("swift"),
                "openai: how the video is sent: swift (top-level videos, ms-swift's form), file_url, none (also drops it for native)",
            ),
            ParamSpec::with_default(
                "batch_size",
                ParamKind::Int,
                json!(8),
                "native: prompts per generate call",
            ),
            ParamSpec::with_default(
                "threshold",
                ParamKind::Float,
                Value::Null,
                "native only: retrieve when P([Retrieval]) exceeds this; null: when the reply contains [Retrieval]",
            ),
            ParamSpec::with_default(
                "passages",
                ParamKind::Int,
                json!(8),
                "retrieved documents used per row (the first ones)",
            ),
            ParamSpec::with_default(
                "second_turn",
                ParamKind::String,
                json!("paragraph"),
                "paragraph (one <paragraph> passage per turn, as trained) or json_dump (the released client)",
            ),
            ParamSpec::with_default(
                "samples",
                ParamKind::Int,
                json!(1),
                "answers per row (DPO candidates, spec §C.6): sample k uses seed sampling_seed + k; needs temperature > 0. Native sampling is reproducible for the seed (Seeded); a server promises nothing",
            ),
            ParamSpec::with_default("temperature", ParamKind::Float, json!(0.0), "0 is greedy"),
            ParamSpec::with_default(
                "top_p",
                ParamKind::Float,
                json!(1.0),
                "nucleus sampling mass",
            ),
            ParamSpec::with_default("top_k", ParamKind::Int, json!(0), "0 keeps every token"),
            ParamSpec::with_default(
                "max_tokens",
                ParamKind::Int,
                json!(1024),
                "the budget of each reply",
            ),
            ParamSpec::with_default(
                "sampling_seed",
                ParamKind::Int,
                Value::Null,
                "the sampling seed (sent as `seed`; native uses 0 when null)",
            ),
        ];
        params.extend(client_params(false));
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new(
                    "rows",
                    PortType::Table,
                    "baseline-format test rows {id, messages, videos}, a rows table",
                ),
                Port::new(
                    "retrieval",
                    PortType::File,
                    "retrieved documents per row: JSON list [{id, query, video_path, documents}], JSON Lines or a table (protocol expstar)",
                )
                .optional(),
                Port::new(
                    "model",
                    PortType::Model,
                    "native: the generative model directory",
                )
                .optional(),
                Port::new(
                    "media",
                    PortType::Dir,
                    "the directory relative video paths are in",
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
                    "results",
                    PortType::Table,
                    "{id, rounds, gt, is_retrieval, rag_passages, relevant_passages} (protocol baseline: {id, response, labels}), a rows table",
                ),
                Port::new(
                    "report",
                    PortType::Metrics,
                    "counts: rows, retrieval, passages, relevant, missing entries",
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
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let rows = read_rows(&ctx.input("rows")?.path)?;
        let retrieval = match (cfg.baseline, ctx.inputs().get("retrieval")) {
            (true, _) => Retrieval::from_entries(&[]),
            (false, Some(r)) => Retrieval::read(&r.path)?,
            (false, None) => {
                return Err(OperatorError::data(
                    KIND,
                    "the `retrieval` input is not connected; protocol expstar needs the retrieved \
                     documents (or set `protocol: baseline` for single-turn inference)",
                )
                .into());
            }
        };
        let media = ctx.inputs().get("media").map(|i| i.path.clone());
        let backend = open_backend(ctx, KIND)?;

        let mut states: Vec<RowState> = Vec::with_capacity(rows.len() * cfg.samples);
        for (i, row) in rows.iter().enumerate() {
            let id = row.get("id").and_then(Value::as_str).map(str::to_owned);
            let messages = turn1(row, i, media.as_deref(), cfg.drop_media)?;
            for k in 0..cfg.samples {
                let mut name = match &id {
                    Some(id) => format!("row {i} (id `{id}`)"),
                    None => format!("row {i}"),
                };
                if cfg.samples > 1 {
                    name.push_str(&format!(", sample {k}"));
                }
                states.push(RowState {
                    row: i,
                    sample: k as u64,
                    messages: messages.clone(),
                    id: id.clone(),
                    name,
                    turn1: String::new(),
                    retrieve: false,
                    docs: Vec::new(),
                    missing: false,
                });
            }
        }

        // Turn 1.
        let mut first = cfg.sampling.clone();
        if cfg.baseline {
            return baseline(ctx, &cfg, backend.as_ref(), &rows, &states);
        }
        if cfg.threshold.is_some() {
            first.stop = vec![RETRIEVAL.to_string(), NO_RETRIEVAL.to_string()];
        }
        let reqs: Vec<ChatReq> = states
            .iter()
            .map(|s| ChatReq {
                messages: s.messages.clone(),
                sampling: seeded(&first, s.sample),
                send_seed: cfg.send_seed || cfg.samples > 1,
                // The reflection tokens (`[Retrieval]`, ...) are the protocol.
                keep_special: true,
            })
            .collect();
        let names: Vec<String> = states
            .iter()
            .map(|s| format!("{}: turn 1", s.name))
            .collect();
        let replies = if reqs.is_empty() {
            Vec::new()
        } else {
            backend.chat(ctx, &reqs, &names)?
        };
        for (s, r) in states.iter_mut().zip(&replies) {
            let text = r
                .choices
                .first()
                .map(|c| c.text.clone())
                .unwrap_or_default();
            match cfg.threshold {
                Some(t) => {
                    let p = backend
                        .choice_probabilities(ctx, &s.messages, &text, &[RETRIEVAL, NO_RETRIEVAL])?
                        .ok_or("the backend cannot score the retrieval token")?[0];
                    s.retrieve = p > t;
                    ctx.log(&format!("{}: P([Retrieval]) = {p:.4}", s.name));
                    s.turn1 = text + if s.retrieve { RETRIEVAL } else { NO_RETRIEVAL };
                }
                None => match text.find(RETRIEVAL) {
                    Some(at) => {
                        s.retrieve = true;
                        s.turn1 = text[..at + RETRIEVAL.len()].to_string();
                    }
                    None => s.turn1 = text,
                },
            }
        }
        for s in states.iter_mut() {
            if !s.retrieve {
                continue;
            }
            let video = rows[s.row]
                .get("videos")
                .and_then(Value::as_array)
                .and_then(|v| v.first())
                .and_then(Value::as_str);
            match retrieval.lookup(s.id.as_deref(), video) {
                Some(d) if !d.is_empty() => s.docs = d.iter().take(cfg.passages).cloned().collect(),
                _ => {
                    s.missing = true;
                    ctx.log(&format!("{}: asked for retrieval, but the retrieval input has no documents for it; keeping turn 1 only", s.name));
                }
            }
        }

        // Turn 2: one request per passage (or one with all of them).
        let mut reqs = Vec::new();
        let mut names = Vec::new();
        let mut owner = Vec::new();
        for (i, s) in states.iter().enumerate() {
            if s.docs.is_empty() {
                continue;
            }
            let second = cfg.sampling.clone();
            if cfg.json_dump {
                let dump = format!(
                    "{DUMP_PREFIX}{}",
                    py_json_indent(&Value::Array(s.docs.clone()), 2)
                );
                reqs.push(ChatReq {
                    messages: with_turns(&s.messages, &s.turn1, &dump),
                    sampling: seeded(&second, s.sample),
                    send_seed: cfg.send_seed || cfg.samples > 1,
                    // The reflection tokens (`[Retrieval]`, ...) are the protocol.
                    keep_special: true,
                });
                names.push(format!("{}: documents", s.name));
                owner.push(i);
            } else {
                for (k, d) in s.docs.iter().enumerate() {
                    let para = format!("<paragraph>{}</paragraph>", doc_text(d));
                    reqs.push(ChatReq {
                        messages: with_turns(&s.messages, &s.turn1, &para),
                        sampling: seeded(&second, s.sample),
                        send_seed: cfg.send_seed || cfg.samples > 1,
                        // The reflection tokens (`[Retrieval]`, ...) are the protocol.
                        keep_special: true,
                    });
                    names.push(format!("{}: passage {k}", s.name));
                    owner.push(i);
                }
            }
        }
        let second = if reqs.is_empty() {
            Vec::new()
        } else {
            backend.chat(ctx, &reqs, &names)?
        };
        let mut answers: Vec<Vec<String>> = vec![Vec::new(); states.len()];
        for (&i, r) in owner.iter().zip(&second) {
            answers[i].push(
                r.choices
                    .first()
                    .map(|c| c.text.clone())
                    .unwrap_or_default(),
            );
        }

        let (mut n_retrieval, mut n_passages, mut n_relevant, mut n_missing) = (0, 0, 0, 0);
        let mut out = Vec::with_capacity(states.len());
        for (i, s) in states.iter().enumerate() {
            let mut rounds = vec![json!({"role": "assistant", "content": s.turn1})];
            let mut rag_passages = Vec::new();
            let mut relevant = Vec::new();
            n_retrieval += usize::from(s.retrieve);
            n_missing += usize::from(s.missing);
            if cfg.json_dump {
                if let Some(a) = answers[i].first() {
                    rounds.push(json!({"role": "assistant", "content": a}));
                    rag_passages = s.docs.clone();
                    n_passages += s.docs.len();
                }
            } else if !answers[i].is_empty() {
                let mut chosen = None;
                for (d, a) in s.docs.iter().zip(&answers[i]) {
                    let para = json!(format!("<paragraph>{}</paragraph>", doc_text(d)));
                    let is_relevant = a.trim_start().starts_with(RELEVANT);
                    if is_relevant {
                        relevant.push(para.clone());
                        chosen.get_or_insert(a);
                    }
                    rag_passages.push(para);
                }
                n_passages += answers[i].len();
                n_relevant += relevant.len();
                let a = chosen.unwrap_or(&answers[i][0]);
                rounds.push(json!({"role": "assistant", "content": a}));
            }
            let mut row = Map::new();
            if let Some(id) = &s.id {
                row.insert("id".into(), json!(id));
            }
            row.insert("rounds".into(), Value::Array(rounds));
            row.insert(
                "gt".into(),
                rows[s.row].get("messages").cloned().unwrap_or(Value::Null),
            );
            row.insert("is_retrieval".into(), json!(s.retrieve));
            row.insert("rag_passages".into(), Value::Array(rag_passages));
            row.insert("relevant_passages".into(), Value::Array(relevant));
            out.push(Value::Object(row));
        }
        write_rows(&ctx.output("results")?.path, &out)?;
        // Figures about this execution, which depend on what the memo store held: notes
        // (the log and the node's event), never the report.
        let (hits, misses) = ctx.memo_counts();
        let (sent, retried) = backend.http_counts();
        ctx.note("memoised", hits);
        ctx.note("asked", misses);
        ctx.note("http_requests", sent);
        ctx.note("retries", retried);
        let report = json!({
            "rows": states.len(),
            "retrieval": n_retrieval,
            "missing_retrieval": n_missing,
            "passages": n_passages,
            "relevant": n_relevant,
        });
        ctx.log(&format!("report: {report}"));
        let mut bytes = serde_json::to_vec_pretty(&report)?;
        bytes.push(b'\n');
        std::fs::write(&ctx.output("report")?.path, bytes)?;
        Ok(())
    }
}
