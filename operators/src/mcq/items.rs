//! The multiple-choice items of an item table (`mac.*`'s shape: `id`, `task`, `system`,
//! `input`, `images`, `answer`) as conversations, built as `infer.chat`'s native path builds
//! them: the `system` text as a system message or joined before the user text
//! (`system_as: user`, LLaMA-Factory's alpaca mapping), the images at their `<image>`
//! placeholders in order.

use std::path::Path;

use expflow_models::{ChatMessage, ContentPart};
use polars::prelude::DataFrame;

use crate::error::{OperatorError, Result};
use crate::infer::rows::{attach, path_column, resolve, text_column};

/// One item to answer.
#[derive(Clone, Debug)]
pub struct McItem {
    pub id: String,
    pub task: String,
    /// The gold option (0 = A), when the table has one (test items have none).
    pub gold: Option<usize>,
    /// The system text (possibly empty).
    pub system: String,
    /// The user text with its `<image>` placeholders.
    pub input: String,
    /// The item's images, resolved, in placeholder order.
    pub images: Vec<std::path::PathBuf>,
}

impl McItem {
    /// The conversation asking the item, with `extra` (an instruction) appended to the user
    /// text after a blank line when given.
    pub fn messages(&self, system_in_user: bool, extra: Option<&str>) -> Vec<ChatMessage> {
        let mut user = self.input.clone();
        if let Some(e) = extra {
            user = format!("{user}\n\n{e}");
        }
        let mut m = text_messages(&self.system, &user, system_in_user);
        attach(
            &mut m,
            self.images
                .iter()
                .map(|p| ContentPart::Image { path: p.clone() })
                .collect(),
        );
        m
    }

    /// The user text without image placeholders (what a text-only second stage reads).
    pub fn text_only(&self) -> String {
        self.input.replace(crate::mac::IMAGE, "").trim().to_string()
    }
}

/// A system text and a user text as messages.
pub fn text_messages(system: &str, user: &str, system_in_user: bool) -> Vec<ChatMessage> {
    match (system.is_empty(), system_in_user) {
        (true, _) => vec![ChatMessage::text("user", user)],
        (false, true) => vec![ChatMessage::text("user", &format!("{system}\n{user}"))],
        (false, false) => vec![
            ChatMessage::text("system", system),
            ChatMessage::text("user", user),
        ],
    }
}

/// The items of `df`; relative image paths are resolved against `media`.
pub fn read(op: &'static str, df: &DataFrame, media: Option<&Path>) -> Result<Vec<McItem>> {
    let need = |name: &str| -> Result<Vec<Option<String>>> {
        text_column(op, df, name)?.ok_or_else(|| {
            OperatorError::data(
                op,
                format!(
                    "the item table has no `{name}` column (columns: {}); give a table of \
                     multiple-choice items as mac.load writes it",
                    df.get_column_names()
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    };
    let ids = need("id")?;
    let inputs = need("input")?;
    let tasks = text_column(op, df, "task")?;
    let systems = text_column(op, df, "system")?;
    let answers = text_column(op, df, "answer")?;
    let images = path_column(op, df, "images")?;
    let mut out = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let id = ids[i].clone().ok_or_else(|| {
            OperatorError::data(op, format!("row {i}: `id` is null; every item needs an id"))
        })?;
        let gold = match answers.as_ref().and_then(|a| a[i].as_deref()).map(str::trim) {
            None | Some("") => None,
            Some(a) => Some(crate::mac::LETTERS.iter().position(|l| a == l.to_string()).ok_or_else(
                || {
                    OperatorError::data(
                        op,
                        format!(
                            "row {i} (id `{id}`): `answer` is `{a}`; it must be a letter A-D, or \
                             empty for an unanswered (test) item"
                        ),
                    )
                },
            )?),
        };
        let paths = images.as_ref().map(|c| c[i].clone()).unwrap_or_default();
        out.push(McItem {
            task: tasks
                .as_ref()
                .and_then(|t| t[i].clone())
                .unwrap_or_else(|| "all".into()),
            gold,
            system: systems
                .as_ref()
                .and_then(|s| s[i].clone())
                .unwrap_or_default(),
            input: inputs[i].clone().unwrap_or_default(),
            images: paths
                .iter()
                .map(|p| resolve(op, media, p, i))
                .collect::<Result<_>>()?,
            id,
        });
    }
    Ok(out)
}
