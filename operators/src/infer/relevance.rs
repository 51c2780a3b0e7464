//! `expstar.relevance` (spec §D.4, unreleased in the original): retrieval results → the judged
//! retrieval file that `expstar.add_rag` and `expstar.rag_infer` read (§C.5): each document
//! gets `relevant`, a grade from 1 to 5 by a judge model, and each clip `is_rag`.
//!
//! The judge (native with the `model` input, or any OpenAI-compatible server) is asked
//! greedily, per (clip query, passage), with [`relevance_prompt`]; the grade is the first digit
//! 1–5 of its reply, and a reply without one gets `unparsed` (counted in the log). `is_rag`
//! is `always` true for a clip with documents (what the original's file shows: clips whose
//! every passage is irrelevant still have `is_rag: true`), or `any_relevant`: true when a
//! passage reaches `threshold`. A clip without documents gets `is_rag: false`. Every other
//! field of the input is kept, in order; `documents` keeps only the first `documents`
//! passages when that is set. Deterministic on the native backend (greedy), and keyed on the
//! judge model's digest through the `model` input.

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use expflow_models::{ChatMessage, Sampling};
use serde_json::{Map, Value, json};

use super::backend::ChatReq;
use crate::error::{OperatorError, Result};
use crate::expstar::{py_json_indent, read_json, write_file};
use crate::params::{Params, problems};

pub struct Relevance;

const KIND: &str = "expstar.relevance";

/// The `is_rag` rules.
pub const IS_RAG: [&str; 2] = ["always", "any_relevant"];

/// The judge's request for one passage retrieved for one clip.
pub fn relevance_prompt(query: &str, title: &str, text: &str) -> Vec<ChatMessage> {
    let passage = if title.trim().is_empty() {
        text.trim().to_string()
    } else {
        format!("{}: {}", title.trim(), text.trim())
    };
    vec![
        ChatMessage::text(
            "system",
            "You judge whether a passage helps explain a step of a science experiment video.",
        ),
        ChatMessage::text(
            "user",
            &format!(
                "Experiment step:\n{query}\n\nPassage:\n{passage}\n\nHow relevant is the \
                 passage to the scientific principle or the safety of this step? Answer with \
                 one digit from 1 (irrelevant) to 5 (essential)."
            ),
        ),
    ]
}

/// The first digit 1–5 of a reply.
pub fn grade(reply: &str) -> Option<u8> {
    reply
        .chars()
        .find(|c| ('1'..='5').contains(c))
        .and_then(|c| c.to_digit(10))
        .map(|d| d as u8)
}

struct Config {
    threshold: f64,
    any_relevant: bool,
    unparsed: u8,
    documents: Option<usize>,
    max_tokens: usize,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        super::BackendKind::parse(KIND, map)?;
        let unparsed = p.u64("unparsed")?;
        if !(1..=5).contains(&unparsed) {
            return Err(OperatorError::param(
                KIND,
                "unparsed",
                format!("is {unparsed}; give a grade from 1 to 5"),
            ));
        }
        let documents = match p.opt_u64("documents")? {
            Some(0) => {
                return Err(OperatorError::param(
                    KIND,
                    "documents",
                    "is 0; judge at least 1 passage per clip, or null for all",
                ));
            }
            d => d.map(|d| d as usize),
        };
        Ok(Config {
            threshold: p.f64("threshold")?,
            any_relevant: p.choice("is_rag", &IS_RAG)? == "any_relevant",
            unparsed: unparsed as u8,
            documents,
            max_tokens: p.u64("max_tokens")?.max(1) as usize,
        })
    }
}

/// One passage to judge: (entry, document) positions and the prompt's parts.
struct Item {
    entry: usize,
    doc: usize,
    query: String,
    title: String,
    text: String,
}

/// The entries of a retrieval file, each with its first `limit` documents, and the items to
/// judge.
fn to_judge(
    doc: &Value,
    limit: Option<usize>,
) -> std::result::Result<(Vec<Value>, Vec<Item>), String> {
    let entries = doc
        .as_array()
        .ok_or("expected a JSON list of {id, query, video_path, documents} entries (retrieve.expstar_results)")?;
    let mut out = Vec::with_capacity(entries.len());
    let mut items = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let mut e = e
            .as_object()
            .cloned()
            .ok_or_else(|| format!("entry {}: not a JSON object", i + 1))?;
        let query = e
            .get("query")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let docs = e
            .get_mut("documents")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| format!("entry {}: no `documents` list", i + 1))?;
        if let Some(n) = limit {
            docs.truncate(n);
        }
        for (j, d) in docs.iter().enumerate() {
            let text = d
                .get("text")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("entry {}, document {}: no `text` string", i + 1, j + 1))?;
            items.push(Item {
                entry: i,
                doc: j,
                query: query.clone(),
                title: d
                    .get("title")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                text: text.to_string(),
            });
        }
        out.push(Value::Object(e));
    }
    Ok((out, items))
}

/// Writes the grades into the entries and sets `is_rag`; returns the relevant count.
fn label(entries: &mut [Value], items: &[Item], grades: &[u8], cfg: &Config) -> usize {
    let mut relevant = 0;
    for (item, g) in items.iter().zip(grades) {
        let d = &mut entries[item.entry]["documents"][item.doc];
        if let Some(obj) = d.as_object_mut() {
            obj.insert("relevant".into(), json!(g));
        }
        relevant += usize::from(f64::from(*g) >= cfg.threshold);
    }
    for e in entries.iter_mut() {
        let docs = e["documents"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let is_rag = !docs.is_empty()
            && (!cfg.any_relevant
                || docs.iter().any(|d| {
                    d.get("relevant")
                        .and_then(Value::as_f64)
                        .is_some_and(|g| g >= cfg.threshold)
                }));
        if let Some(obj) = e.as_object_mut() {
            obj.insert("is_rag".into(), json!(is_rag));
        }
    }
    relevant
}

impl Operator for Relevance {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        let mut params = vec![
            ParamSpec::with_default(
                "backend",
                ParamKind::String,
                json!("native"),
                "native (the `model` input, greedy) or openai (an OpenAI-compatible server)",
            ),
            ParamSpec::with_default(
                "model",
                ParamKind::String,
                Value::Null,
                "backend openai: the judge's name at the server",
            ),
            ParamSpec::with_default(
                "media",
                ParamKind::String,
                json!("none"),
                "the judge sees text only",
            ),
            ParamSpec::with_default(
                "batch_size",
                ParamKind::Int,
                json!(8),
                "native: prompts per generate call",
            ),
            ParamSpec::with_default(
                "max_tokens",
                ParamKind::Int,
                json!(4),
                "the budget of the judge's reply",
            ),
            ParamSpec::with_default(
                "threshold",
                ParamKind::Float,
                json!(3),
                "a passage graded at least this is relevant (is_rag: any_relevant, and the log); expstar.add_rag has its own",
            ),
            ParamSpec::with_default(
                "is_rag",
                ParamKind::String,
                json!("always"),
                "always (every clip with documents) or any_relevant (a passage reaches threshold)",
            ),
            ParamSpec::with_default(
                "unparsed",
                ParamKind::Int,
                json!(1),
                "the grade of a reply without a digit 1-5",
            ),
            ParamSpec::with_default(
                "documents",
                ParamKind::Int,
                Value::Null,
                "judge and keep the first N passages of each clip (null: all)",
            ),
        ];
        params.extend(super::openai::client_params(false));
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new(
                    "retrieval",
                    PortType::File,
                    "retrieval results [{id, query, video_path, documents: [{id, title, text}]}], JSON (retrieve.expstar_results)",
                ),
                Port::new(
                    "model",
                    PortType::Model,
                    "backend native: the judge model directory",
                )
                .optional(),
                Port::new(
                    "endpoint",
                    PortType::Dir,
                    "backend openai: a serve.model endpoint, its servers started for this node (instead of base_url)",
                )
                .optional(),
            ]),
            outputs: Ports::Fixed(vec![Port::new(
                "retrieval",
                PortType::File,
                "the judged retrieval: each entry with is_rag, each document with relevant (1-5), JSON (expstar.add_rag, expstar.rag_infer)",
            )]),
            params,
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn determinism(&self, params: &Map<String, Value>) -> Determinism {
        let mut greedy = params.clone();
        greedy.insert("temperature".into(), json!(0.0));
        super::determinism(&greedy)
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let path = &ctx.input("retrieval")?.path;
        let (mut entries, items) = to_judge(&read_json(path)?, cfg.documents)
            .map_err(|e| OperatorError::data(KIND, format!("{}: {e}", path.display())))?;
        let reqs: Vec<ChatReq> = items
            .iter()
            .map(|it| ChatReq {
                messages: relevance_prompt(&it.query, &it.title, &it.text),
                sampling: Sampling {
                    max_new_tokens: cfg.max_tokens,
                    ..Sampling::default()
                },
                send_seed: false,
                keep_special: false,
            })
            .collect();
        let replies = if reqs.is_empty() {
            Vec::new()
        } else {
            let backend = super::open_backend(ctx, KIND)?;
            let names: Vec<String> = items
                .iter()
                .map(|it| format!("clip {} passage {}", it.entry + 1, it.doc + 1))
                .collect();
            backend.chat(ctx, &reqs, &names)?
        };
        let mut unparsed = 0;
        let grades: Vec<u8> = replies
            .iter()
            .map(|r| {
                let text = r.choices.first().map(|c| c.text.as_str()).unwrap_or("");
                grade(text).unwrap_or_else(|| {
                    unparsed += 1;
                    cfg.unparsed
                })
            })
            .collect();
        let relevant = label(&mut entries, &items, &grades, &cfg);
        let rag = entries
            .iter()
            .filter(|e| e["is_rag"] == json!(true))
            .count();
        ctx.log(&format!(
            "{} clips, {} passages judged: {relevant} relevant (grade >= {}); {rag} clips is_rag",
            entries.len(),
            items.len(),
            cfg.threshold
        ));
        if unparsed > 0 {
            ctx.log(&format!(
                "{unparsed} of {} judge replies had no grade 1-5 (graded {})",
                replies.len(),
                cfg.unparsed
            ));
        }
        write_file(
            &ctx.output("retrieval")?.path,
            py_json_indent(&Value::Array(entries), 2).as_bytes(),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expstar::add_rag;
    use crate::expstar::prompts::{IS_RELEVANT, PARAGRAPH_PLACEHOLDER};

    fn cfg(any_relevant: bool) -> Config {
        Config {
            threshold: 3.0,
            any_relevant,
            unparsed: 1,
            documents: None,
            max_tokens: 4,
        }
    }

    fn results() -> Value {
        json!([
            {"id": "a_1", "query": "Burn CO", "video_path": "clips/a/1.mp4", "documents": [
                {"id": "p1", "title": "Combustion", "text": "CO burns blue."},
                {"id": "p2", "title": "Ink", "text": "Ink diffuses."}
            ]},
            {"id": "a_2", "query": "Pour", "video_path": "clips/a/2.mp4", "documents": [
                {"id": "p2", "title": "Ink", "text": "Ink diffuses."}
            ]},
            {"id": "a_3", "query": "None", "video_path": "clips/a/3.mp4", "documents": []}
        ])
    }

    #[test]
    fn grades_are_the_first_digit_from_1_to_5() {
        assert_eq!(grade("Relevance: 4"), Some(4));
        assert_eq!(grade("0 then 9 then 2"), Some(2));
        assert_eq!(grade("none"), None);
    }

    #[test]
    fn the_judged_file_has_the_format_add_rag_reads() {
        let (mut entries, items) = to_judge(&results(), None).unwrap();
        assert_eq!(items.len(), 3);
        assert!(
            relevance_prompt(&items[0].query, &items[0].title, &items[0].text)[1]
                .joined_text()
                .contains("Combustion: CO burns blue.")
        );
        let n = label(&mut entries, &items, &[5, 1, 2], &cfg(false));
        assert_eq!(n, 1);
        assert_eq!(entries[0]["documents"][0]["relevant"], json!(5));
        assert_eq!(entries[0]["documents"][1]["relevant"], json!(1));
        assert_eq!(entries[0]["documents"][0]["id"], json!("p1"));
        assert_eq!(entries[0]["video_path"], json!("clips/a/1.mp4"));
        // `always`: every clip with documents, even one whose passages are all irrelevant.
        let rag: Vec<&Value> = entries.iter().map(|e| &e["is_rag"]).collect();
        assert_eq!(rag, [&json!(true), &json!(true), &json!(false)]);
        // `any_relevant`: only a clip with a passage at the threshold.
        let (mut entries, items) = to_judge(&results(), None).unwrap();
        label(&mut entries, &items, &[5, 1, 2], &cfg(true));
        let rag: Vec<&Value> = entries.iter().map(|e| &e["is_rag"]).collect();
        assert_eq!(rag, [&json!(true), &json!(false), &json!(false)]);
        // The judged file is add_rag's input: one row per passage, relevant ones first.
        let (entries, items) = to_judge(&results(), None).unwrap();
        let mut entries = entries;
        label(&mut entries, &items, &[2, 4, 2], &cfg(false));
        let row = json!({"id": "a_1", "videos": ["clips/a/1.mp4"], "messages": [
            {"role": "user", "content": "<video>Burn CO"},
            {"role": "assistant", "content": "[Retrieval]"},
            {"role": "user", "content": PARAGRAPH_PLACEHOLDER},
            {"role": "assistant", "content": format!("{IS_RELEVANT} ok")}
        ]});
        let add = add_rag::Config {
            threshold: 3.0,
            less: false,
            seed: 0,
        };
        let rows = add_rag::expand(&[row], &Value::Array(entries), &add).unwrap();
        let parts: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| {
                (
                    r["messages"][2]["content"].as_str().unwrap(),
                    r["messages"][3]["content"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            parts,
            [
                ("<paragraph>Ink diffuses.</paragraph>", "[Relevant] ok"),
                ("<paragraph>CO burns blue.</paragraph>", "[Irrelevant] ok")
            ]
        );
    }

    #[test]
    fn documents_limits_the_passages_and_errors_name_the_entry() {
        let (entries, items) = to_judge(&results(), Some(1)).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(entries[0]["documents"].as_array().unwrap().len(), 1);
        let e = to_judge(&json!([{"query": "q"}]), None).err().unwrap();
        assert!(e.contains("entry 1: no `documents` list"), "{e}");
        let e = to_judge(&json!([{"documents": [{"title": "t"}]}]), None)
            .err()
            .unwrap();
        assert!(e.contains("entry 1, document 1: no `text` string"), "{e}");
    }

    #[test]
    fn parameters_are_checked() {
        let op = Relevance;
        let mut m = Map::new();
        m.insert("backend".into(), json!("native"));
        m.insert("batch_size".into(), json!(8));
        m.insert("max_tokens".into(), json!(4));
        m.insert("threshold".into(), json!(3));
        m.insert("is_rag".into(), json!("sometimes"));
        m.insert("unparsed".into(), json!(1));
        m.insert("documents".into(), Value::Null);
        assert!(
            op.check(&m).iter().any(|p| p.contains("is_rag")),
            "{:?}",
            op.check(&m)
        );
        m.insert("is_rag".into(), json!("always"));
        m.insert("unparsed".into(), json!(7));
        assert!(op.check(&m).iter().any(|p| p.contains("unparsed")));
        m.insert("unparsed".into(), json!(1));
        assert!(op.check(&m).is_empty(), "{:?}", op.check(&m));
        assert_eq!(op.determinism(&m), Determinism::Deterministic);
    }
}
