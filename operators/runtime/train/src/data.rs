//! Training rows → conversations. Accepted forms, one JSON object per row:
//! - ms-swift: `{"messages": [{"role", "content"}, ...], "images"?, "videos"?}`, and for
//!   preference data `"rejected_response"` (the last assistant message is the chosen one);
//! - LLaMA-Factory alpaca: `{"system"?, "instruction"?, "input"?, "output", "history"?}`
//!   (the user turn is instruction + "\n" + input, as LLaMA-Factory joins them), and for
//!   preference data `"chosen"` / `"rejected"` instead of `output`.
//!
//! Text models see `<image>` / `<video>` placeholders as text.

use expflow_models::ChatMessage;
use serde_json::Value;

use crate::error::{Result, TrainError};

/// A preference pair: the conversation before the answer, and the two answers.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    pub prompt: Vec<ChatMessage>,
    pub chosen: String,
    pub rejected: String,
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn swift_messages(row: &Value, line: usize) -> Result<Vec<ChatMessage>> {
    let list = row
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| TrainError::Data(format!("row {line}: `messages` must be a list")))?;
    list.iter()
        .enumerate()
        .map(|(j, m)| {
            let role = text(m, "role").ok_or_else(|| {
                TrainError::Data(format!("row {line}: message {j} has no string `role`"))
            })?;
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(_) => {
                    return Err(TrainError::Data(format!(
                        "row {line}: message {j}: `content` must be a string"
                    )));
                }
            };
            Ok(ChatMessage::text(&role, &content))
        })
        .collect()
}

/// The system message and user turns of an alpaca record (everything but the answer).
fn alpaca_prompt(row: &Value) -> Vec<ChatMessage> {
    let mut out = Vec::new();
    if let Some(s) = text(row, "system").filter(|s| !s.is_empty()) {
        out.push(ChatMessage::text("system", &s));
    }
    if let Some(h) = row.get("history").and_then(Value::as_array) {
        for turn in h {
            if let Some([q, a]) = turn.as_array().map(Vec::as_slice) {
                out.push(ChatMessage::text("user", q.as_str().unwrap_or("")));
                out.push(ChatMessage::text("assistant", a.as_str().unwrap_or("")));
            }
        }
    }
    let user = match (text(row, "instruction"), text(row, "input")) {
        (Some(i), Some(x)) if !i.is_empty() && !x.is_empty() => format!("{i}\n{x}"),
        (Some(i), _) if !i.is_empty() => i,
        (_, Some(x)) => x,
        _ => String::new(),
    };
    out.push(ChatMessage::text("user", &user));
    out
}

/// One supervised conversation per row; each must end with an assistant turn.
pub fn sft_conversations(rows: &[Value]) -> Result<Vec<Vec<ChatMessage>>> {
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let line = i + 1;
        let msgs = if row.get("messages").is_some() {
            swift_messages(row, line)?
        } else if let Some(o) = text(row, "output") {
            let mut m = alpaca_prompt(row);
            m.push(ChatMessage::text("assistant", &o));
            m
        } else {
            return Err(TrainError::Data(format!(
                "row {line}: neither `messages` (ms-swift) nor `output` (alpaca); \
                 an SFT row needs one of them"
            )));
        };
        if !msgs.iter().any(|m| m.role == "assistant") {
            return Err(TrainError::Data(format!(
                "row {line}: no assistant turn to learn from; add the answer as an \
                 assistant message"
            )));
        }
        out.push(msgs);
    }
    Ok(out)
}

/// One preference pair per row.
pub fn pairs(rows: &[Value]) -> Result<Vec<Pair>> {
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let line = i + 1;
        let pair = if row.get("messages").is_some() {
            let mut msgs = swift_messages(row, line)?;
            let rejected = text(row, "rejected_response").ok_or_else(|| {
                TrainError::Data(format!(
                    "row {line}: an ms-swift preference row needs `rejected_response`"
                ))
            })?;
            match msgs.pop() {
                Some(m) if m.role == "assistant" => Pair {
                    prompt: msgs,
                    chosen: m.joined_text(),
                    rejected,
                },
                _ => {
                    return Err(TrainError::Data(format!(
                        "row {line}: the last message must be the chosen assistant answer"
                    )));
                }
            }
        } else {
            let (Some(chosen), Some(rejected)) = (text(row, "chosen"), text(row, "rejected"))
            else {
                return Err(TrainError::Data(format!(
                    "row {line}: a preference row needs `messages` + `rejected_response` \
                     (ms-swift) or `chosen` + `rejected` (alpaca)"
                )));
            };
            Pair {
                prompt: alpaca_prompt(row),
                chosen,
                rejected,
            }
        };
        out.push(pair);
    }
    Ok(out)
}

/// Reads JSON Lines or a JSON array.
pub fn read_rows(path: &std::path::Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io("cannot read", path, e))?;
    let bad = |line: usize, e: serde_json::Error| TrainError::File {
        path: path.to_path_buf(),
        problem: format!("line {line}: not JSON: {e}"),
    };
    if text.trim_start().starts_with('[') {
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(e.line(), e))?;
        return Ok(v.as_array().cloned().unwrap_or_default());
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| bad(i + 1, e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn both_forms_give_conversations_and_pairs() {
        let rows = vec![
            json!({"messages": [{"role": "user", "content": "<video>go"}, {"role": "assistant", "content": "ok"}], "videos": ["v.mp4"]}),
            json!({"system": "S", "instruction": "Q", "input": "x", "output": "A"}),
        ];
        let c = sft_conversations(&rows).unwrap();
        assert_eq!(c[0][0].joined_text(), "<video>go");
        assert_eq!(
            c[1],
            vec![
                ChatMessage::text("system", "S"),
                ChatMessage::text("user", "Q\nx"),
                ChatMessage::text("assistant", "A")
            ]
        );
        let err = sft_conversations(&[json!({"messages": [{"role": "user", "content": "q"}]})])
            .unwrap_err();
        assert!(
            err.to_string().contains("row 1: no assistant turn"),
            "{err}"
        );
        let p = pairs(&[
            json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}], "rejected_response": "bad"}),
            json!({"instruction": "q", "chosen": "good", "rejected": "bad"}),
        ])
        .unwrap();
        assert_eq!(p[0], p[1]);
        assert_eq!(p[0].chosen, "good");
    }
}
