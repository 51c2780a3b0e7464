//! Prompt tables → chat messages: a JSON `messages` column, or `system` / `user` columns,
//! with optional image and video path columns.

use std::path::{Path, PathBuf};

use expflow_models::{ChatMessage, ContentPart};
use polars::prelude::*;
use serde_json::Value;

use crate::error::{OperatorError, Result};

/// A column's values as text (`None` for nulls), or `None` when the table has no such column.
pub fn text_column(
    op: &'static str,
    df: &DataFrame,
    name: &str,
) -> Result<Option<Vec<Option<String>>>> {
    let Ok(col) = df.column(name) else {
        return Ok(None);
    };
    let col = col
        .cast(&DataType::String)
        .map_err(|e| OperatorError::polars(op, format!("reading column `{name}` as text"), e))?;
    let ca = col
        .str()
        .map_err(|e| OperatorError::polars(op, format!("reading column `{name}`"), e))?;
    Ok(Some(ca.iter().map(|v| v.map(str::to_owned)).collect()))
}

/// A column of paths: a list of strings per row, or one string per row (a path, or a JSON
/// list of paths); nulls and empty strings give no path. `None` when the column is absent.
pub fn path_column(
    op: &'static str,
    df: &DataFrame,
    name: &str,
) -> Result<Option<Vec<Vec<String>>>> {
    let Ok(col) = df.column(name) else {
        return Ok(None);
    };
    if let DataType::List(_) = col.dtype() {
        let ca = col
            .list()
            .map_err(|e| OperatorError::polars(op, format!("reading column `{name}`"), e))?;
        let mut out = Vec::with_capacity(ca.len());
        for i in 0..ca.len() {
            let mut paths = Vec::new();
            if let Some(s) = ca.get_as_series(i) {
                let s = s.cast(&DataType::String).map_err(|e| {
                    OperatorError::polars(op, format!("reading column `{name}` as paths"), e)
                })?;
                let s = s.str().map_err(|e| {
                    OperatorError::polars(op, format!("reading column `{name}`"), e)
                })?;
                paths.extend(
                    s.iter()
                        .flatten()
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned),
                );
            }
            out.push(paths);
        }
        return Ok(Some(out));
    }
    let text = text_column(op, df, name)?.unwrap_or_default();
    text.into_iter()
        .enumerate()
        .map(|(i, v)| match v.as_deref().map(str::trim) {
            None | Some("") => Ok(Vec::new()),
            Some(s) if s.starts_with('[') => serde_json::from_str::<Vec<String>>(s).map_err(|e| {
                OperatorError::data(
                    op,
                    format!("row {i}: column `{name}` is not a JSON list of paths: {e}"),
                )
            }),
            Some(s) => Ok(vec![s.to_string()]),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// `path` made absolute against `media` (the `media` input directory) when relative.
pub fn resolve(op: &'static str, media: Option<&Path>, path: &str, row: usize) -> Result<PathBuf> {
    let p = Path::new(path);
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        match media {
            Some(m) => m.join(p),
            None => {
                return Err(OperatorError::data(
                    op,
                    format!(
                        "row {row}: the media path `{path}` is relative; connect the `media` input \
                         (the directory it is relative to) or use absolute paths"
                    ),
                ));
            }
        }
    };
    if !full.is_file() {
        return Err(OperatorError::data(
            op,
            format!("row {row}: media file {} does not exist", full.display()),
        ));
    }
    Ok(full)
}

/// Parses one message list in OpenAI's form: `content` a string or a list of `text`,
/// `image_url`/`image` and `video_url`/`video` parts (paths resolved against `media`).
pub fn parse_messages(
    op: &'static str,
    v: &Value,
    media: Option<&Path>,
    row: usize,
) -> Result<Vec<ChatMessage>> {
    let bad = |m: String| OperatorError::data(op, format!("row {row}: {m}"));
    let list = v
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| bad("`messages` must be a non-empty JSON list of {role, content}".into()))?;
    let mut out = Vec::with_capacity(list.len());
    for (j, m) in list.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("message {j} has no string `role`")))?;
        let content = match m.get("content") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![ContentPart::Text { text: s.clone() }],
            Some(Value::Array(parts)) => {
                let mut c = Vec::new();
                for p in parts {
                    let ty = p.get("type").and_then(Value::as_str).unwrap_or("");
                    let url = |key: &str| match p.get(key) {
                        Some(Value::String(s)) => Some(s.clone()),
                        Some(o) => o.get("url").and_then(Value::as_str).map(str::to_owned),
                        None => None,
                    };
                    let local = |u: String| -> Result<PathBuf> {
                        let u = u.strip_prefix("file://").map(str::to_owned).unwrap_or(u);
                        resolve(op, media, &u, row)
                    };
                    c.push(match ty {
                        "text" => ContentPart::Text {
                            text: p.get("text").and_then(Value::as_str).unwrap_or("").to_string(),
                        },
                        "image_url" | "image" => ContentPart::Image {
                            path: local(url(ty).ok_or_else(|| bad(format!("message {j}: an {ty} part needs a path")))?)?,
                        },
                        "video_url" | "video" => ContentPart::Video {
                            path: local(url(ty).ok_or_else(|| bad(format!("message {j}: a {ty} part needs a path")))?)?,
                        },
                        other => {
                            return Err(bad(format!(
                                "message {j}: unknown part type `{other}`; use text, image_url or video_url"
                            )));
                        }
                    });
                }
                c
            }
            Some(_) => {
                return Err(bad(format!(
                    "message {j}: `content` must be a string or a list of parts"
                )));
            }
        };
        out.push(ChatMessage {
            role: role.to_string(),
            content,
        });
    }
    Ok(out)
}

/// Puts media parts into the messages: see [`expflow_models::place_media`].
pub fn attach(messages: &mut [ChatMessage], media: Vec<ContentPart>) {
    expflow_models::place_media(messages, media);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(p: &str) -> ContentPart {
        ContentPart::Image { path: p.into() }
    }

    fn text(t: &str) -> ContentPart {
        ContentPart::Text { text: t.into() }
    }

    #[test]
    fn placeholders_take_the_media_in_order_else_media_go_first() {
        let mut m = vec![ChatMessage::text("user", "Story<image><image>Which?")];
        attach(&mut m, vec![image("a.png"), image("b.png")]);
        assert_eq!(
            m[0].content,
            [
                text("Story"),
                image("a.png"),
                image("b.png"),
                text("Which?")
            ]
        );
        let mut m = vec![ChatMessage::text("user", "<image> only one tag")];
        attach(&mut m, vec![image("a.png"), image("b.png")]);
        assert_eq!(
            m[0].content,
            [image("a.png"), image("b.png"), text("<image> only one tag")]
        );
    }
}
