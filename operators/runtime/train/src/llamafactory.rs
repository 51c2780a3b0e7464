//! Rows of a LLaMA-Factory dataset directory, read as LLaMA-Factory reads them: the entry of
//! `dataset_info.json` names the file and maps its columns (`alpaca` formatting) or its
//! message tags (`sharegpt`). The rows come out in the forms of [`crate::data`]: alpaca
//! `{system, instruction, input, output | chosen/rejected, history, images, videos}` or
//! ms-swift `{messages, rejected_response?, images, videos}`.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::data::read_rows;
use crate::error::{Result, TrainError};

fn problem(path: &Path, problem: impl Into<String>) -> TrainError {
    TrainError::File {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// The rows of dataset `name` in `dir`, with media paths as written (LLaMA-Factory resolves
/// them against its `media_dir`, by default the dataset directory).
pub fn dataset_rows(dir: &Path, name: &str) -> Result<Vec<Value>> {
    let info_path = dir.join("dataset_info.json");
    let text = std::fs::read_to_string(&info_path)
        .map_err(|e| TrainError::io("cannot read", &info_path, e))?;
    let info: Map<String, Value> = serde_json::from_str(&text)
        .map_err(|e| problem(&info_path, format!("not a JSON object: {e}")))?;
    let entry = info.get(name).and_then(Value::as_object).ok_or_else(|| {
        let mut names: Vec<&str> = info.keys().map(String::as_str).collect();
        names.sort();
        problem(
            &info_path,
            format!(
                "no dataset `{name}`; it has: {}; set `dataset_name` to one of them",
                names.join(", ")
            ),
        )
    })?;
    let file = entry
        .get("file_name")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            problem(
                &info_path,
                format!("`{name}` has no `file_name`; only local files can be read natively"),
            )
        })?;
    let rows = read_rows(&dir.join(file))?;
    let columns = entry.get("columns").and_then(Value::as_object);
    // As LLaMA-Factory's DatasetAttr: with a `columns` map only the columns it names are
    // read; without one, prompt/query/response/messages have their default names and the
    // others (system, history, images, ...) are not read.
    let col = |key: &str, default: &str| -> String {
        match columns {
            Some(c) => c.get(key).and_then(Value::as_str).unwrap_or("").to_string(),
            None if matches!(key, "prompt" | "query" | "response" | "messages") => {
                default.to_string()
            }
            None => String::new(),
        }
    };
    let ranking = entry
        .get("ranking")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    match entry
        .get("formatting")
        .and_then(Value::as_str)
        .unwrap_or("alpaca")
    {
        "alpaca" => {
            let map = [
                ("instruction", col("prompt", "instruction")),
                ("input", col("query", "input")),
                ("output", col("response", "output")),
                ("system", col("system", "system")),
                ("history", col("history", "history")),
                ("images", col("images", "images")),
                ("videos", col("videos", "videos")),
                ("chosen", col("chosen", "chosen")),
                ("rejected", col("rejected", "rejected")),
            ];
            Ok(rows
                .iter()
                .map(|row| {
                    let mut out = Map::new();
                    for (to, from) in &map {
                        if from.is_empty() || (ranking && *to == "output") {
                            continue;
                        }
                        if let Some(v) = row.get(from.as_str()).filter(|v| !v.is_null()) {
                            out.insert((*to).to_string(), v.clone());
                        }
                    }
                    Value::Object(out)
                })
                .collect())
        }
        "sharegpt" => {
            let tags = entry.get("tags").and_then(Value::as_object);
            let tag = |key: &str, default: &str| -> String {
                tags.and_then(|t| t.get(key))
                    .and_then(Value::as_str)
                    .unwrap_or(default)
                    .to_string()
            };
            let t = Tags {
                role: tag("role_tag", "from"),
                content: tag("content_tag", "value"),
                user: tag("user_tag", "human"),
                assistant: tag("assistant_tag", "gpt"),
                system: tag("system_tag", "system"),
            };
            let (messages, system) = (col("messages", "conversations"), col("system", "system"));
            let (images, videos) = (col("images", "images"), col("videos", "videos"));
            rows.iter()
                .enumerate()
                .map(|(i, row)| {
                    let list = row
                        .get(&messages)
                        .and_then(Value::as_array)
                        .ok_or_else(|| {
                            problem(
                                &dir.join(file),
                                format!("row {}: `{messages}` must be a list of messages", i + 1),
                            )
                        })?;
                    let mut msgs = Vec::new();
                    if let Some(s) = row.get(system.as_str()).and_then(Value::as_str) {
                        msgs.push(json!({"role": "system", "content": s}));
                    }
                    for m in list {
                        msgs.push(t.message(m, &dir.join(file), i + 1)?);
                    }
                    let mut out = Map::new();
                    if ranking {
                        let pick = |key: &str| -> Result<Value> {
                            let v = row.get(col(key, key).as_str()).ok_or_else(|| {
                                problem(&dir.join(file), format!("row {}: no `{key}`", i + 1))
                            })?;
                            t.message(v, &dir.join(file), i + 1)
                        };
                        msgs.push(pick("chosen")?);
                        out.insert(
                            "rejected_response".into(),
                            pick("rejected")?["content"].clone(),
                        );
                    }
                    out.insert("messages".into(), Value::Array(msgs));
                    for (to, from) in [("images", &images), ("videos", &videos)] {
                        if let Some(v) = row.get(from.as_str()).filter(|v| !v.is_null()) {
                            out.insert(to.to_string(), v.clone());
                        }
                    }
                    Ok(Value::Object(out))
                })
                .collect()
        }
        other => Err(problem(
            &info_path,
            format!("`{name}` has formatting `{other}`; expected alpaca or sharegpt"),
        )),
    }
}

struct Tags {
    role: String,
    content: String,
    user: String,
    assistant: String,
    system: String,
}

impl Tags {
    fn message(&self, m: &Value, path: &Path, row: usize) -> Result<Value> {
        let role = m.get(&self.role).and_then(Value::as_str).unwrap_or("");
        let role = if role == self.user {
            "user"
        } else if role == self.assistant {
            "assistant"
        } else if role == self.system {
            "system"
        } else {
            return Err(problem(
                path,
                format!(
                    "row {row}: role `{role}` is none of the tags `{}`, `{}`, `{}`",
                    self.user, self.assistant, self.system
                ),
            ));
        };
        let content = m.get(&self.content).cloned().unwrap_or(Value::Null);
        Ok(json!({"role": role, "content": content}))
    }
}

/// Media paths of a row: `images` and `videos`, each a string or a list of strings.
pub fn row_media(row: &Value) -> (Vec<String>, Vec<String>) {
    let list = |key: &str| -> Vec<String> {
        match row.get(key) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    };
    (list("images"), list("videos"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpaca_columns_and_sharegpt_tags_are_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(
            p.join("dataset_info.json"),
            json!({
                "mac": {"file_name": "mac.json", "formatting": "alpaca",
                        "columns": {"prompt": "system", "query": "input", "response": "output", "images": "images"}},
                "chat": {"file_name": "chat.jsonl", "formatting": "sharegpt",
                         "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
                         "columns": {"messages": "messages", "images": "images"}},
            })
            .to_string(),
        )
        .unwrap();
        std::fs::write(
            p.join("mac.json"),
            json!([{"system": "Answer A-D.", "input": "<image>Which?", "output": "B", "images": ["c/1.png"]}]).to_string(),
        )
        .unwrap();
        std::fs::write(
            p.join("chat.jsonl"),
            json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "images": "x.png"}).to_string() + "\n",
        )
        .unwrap();
        let rows = dataset_rows(p, "mac").unwrap();
        assert_eq!(
            rows[0],
            json!({"instruction": "Answer A-D.", "input": "<image>Which?", "output": "B", "images": ["c/1.png"]})
        );
        let conv = crate::data::sft_conversations(&rows).unwrap();
        assert_eq!(conv[0][0].joined_text(), "Answer A-D.\n<image>Which?");
        let rows = dataset_rows(p, "chat").unwrap();
        assert_eq!(
            rows[0]["messages"][1],
            json!({"role": "assistant", "content": "yo"})
        );
        assert_eq!(row_media(&rows[0]), (vec!["x.png".to_string()], vec![]));
        let err = dataset_rows(p, "nope").unwrap_err().to_string();
        assert!(
            err.contains("no dataset `nope`") && err.contains("chat, mac"),
            "{err}"
        );
    }
}
