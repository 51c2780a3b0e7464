//! `expstar.template_rows`: the two-turn self-RAG template rows (spec §C.2, DAG node 9).
//!
//! Turn 1 is the narration block followed by `[Retrieval]` when the step has a Principle
//! or Safety line, else `[No Retrieval]` (and the row ends there, 3 messages). With
//! retrieval, the row goes on with the user turn `<paragraph>passage</paragraph>` and the
//! assistant turn `[Is Relevant?]\n` + Principle/Safety, stripped of surrounding
//! whitespace (5 messages); `expstar.add_rag` fills both placeholders in. Unlike the
//! baseline, a step with no annotations is kept (its turn 1 is just `[No Retrieval]`).

use expflow_engine::{Context, OpError, Operator, Signature};
use serde_json::{Map, Value, json};

use super::baseline_rows::{RowMemo, build_rows, context_memo, id_scheme, rows_signature};
use super::prompts::{
    IS_RELEVANT, IdScheme, NO_RETRIEVAL, PARAGRAPH_PLACEHOLDER, RETRIEVAL, knowledge_block, lines,
    narration_block, system_prompt, user_prompt,
};
use super::{str_field, write_rows};
use crate::params::problems;

pub struct TemplateRows;

const KIND: &str = "expstar.template_rows";

/// The template rows of a step-metadata tree (every step gives a row); each step's content
/// goes through `memo` (see [`super::baseline_rows::RowMemo`]).
pub fn build(
    dir: &std::path::Path,
    scheme: IdScheme,
    memo: &mut RowMemo<'_>,
) -> std::result::Result<Vec<Value>, OpError> {
    build_rows(dir, scheme, memo, |subject, doc, k, previous| {
        let anns = doc
            .get("annotations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let l = lines(&anns);
        let retrieve = !l.principle.is_empty() || !l.safety.is_empty();
        let turn1 = format!(
            "{}{}",
            narration_block(&l),
            if retrieve { RETRIEVAL } else { NO_RETRIEVAL }
        );
        let mut messages = vec![
            json!({"role": "system", "content": system_prompt(subject)}),
            json!({"role": "user", "content": user_prompt(subject, str_field(doc, "title_en"), k, previous)}),
            json!({"role": "assistant", "content": turn1}),
        ];
        if retrieve {
            let turn2 = format!("{IS_RELEVANT}\n{}", knowledge_block(&l));
            messages.push(json!({"role": "user", "content": PARAGRAPH_PLACEHOLDER}));
            messages.push(json!({"role": "assistant", "content": turn2.trim()}));
        }
        let video = match str_field(doc, "clip_video_path") {
            "" => str_field(doc, "original_video"),
            v => v,
        };
        json!({"messages": messages, "videos": [video]})
    })
}

impl Operator for TemplateRows {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        // 2: rows travel as Parquet tables, not JSON Lines (docs/decisions.md).
        2
    }

    fn signature(&self) -> Signature {
        rows_signature("self-RAG template rows {messages, videos, id}, a rows table")
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(id_scheme(KIND, params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let scheme = id_scheme(KIND, ctx.params())?;
        let rows = build(&ctx.input("meta")?.path, scheme, &mut context_memo(ctx))?;
        ctx.log(&format!("{} rows", rows.len()));
        write_rows(&ctx.output("rows")?.path, &rows)?;
        Ok(())
    }
}
