//! `expstar.baseline_rows`: single-turn SFT rows (spec §C.1, DAG node 8) from a
//! step-metadata tree: `{"messages": [system, user, assistant], "videos": [clip], "id"}`.
//! A step whose target is empty is skipped, as in the original.

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use serde_json::{Map, Value, json};

use super::prompts::{
    IdScheme, Ids, knowledge_block, lines, narration_block, read_meta_tree, step_number,
    step_texts, system_prompt, user_prompt,
};
use super::{str_field, write_rows};
use crate::error::{OperatorError, Result};
use crate::params::problems;

pub struct BaselineRows;

const KIND: &str = "expstar.baseline_rows";

pub fn id_scheme(op: &'static str, map: &Map<String, Value>) -> Result<IdScheme> {
    let p = crate::params::Params::new(op, map);
    let s = p.str("id_scheme")?;
    IdScheme::parse(s).ok_or_else(|| {
        OperatorError::param(
            op,
            "id_scheme",
            format!("is `{s}`; use `step` or `counter`"),
        )
    })
}

pub fn rows_signature(what: &'static str) -> Signature {
    Signature {
        inputs: Ports::Fixed(vec![Port::new(
            "meta",
            PortType::Dir,
            "step metadata: <subject>/<unit>/[json/]<NN>-<title>/<stem>.json",
        )]),
        outputs: Ports::Fixed(vec![Port::new("rows", PortType::Table, what)]),
        params: vec![ParamSpec::with_default(
            "id_scheme",
            ParamKind::String,
            json!("step"),
            "`step`: <unit>_<NN>_<k>; `counter`: the original <unit>_<i>",
        )],
        determinism: Determinism::Deterministic,
        resources: Resources::default(),
    }
}

/// Builds one step's row content (all but its id) through `memo`: the operators back it with
/// per-item memoisation, so editing one step's annotations rebuilds only that step's row.
/// `memo(item, compute)` returns `compute()` or the value stored for `item`.
pub type RowMemo<'a> =
    dyn FnMut(&Value, &mut dyn FnMut() -> Value) -> std::result::Result<Value, OpError> + 'a;

/// Per-item memoisation of row content through the node's context.
pub fn context_memo(
    ctx: &Context,
) -> impl FnMut(&Value, &mut dyn FnMut() -> Value) -> std::result::Result<Value, OpError> + '_ {
    move |item, compute| {
        let bytes = ctx.memo(item, || Ok(serde_json::to_vec(&compute())?))?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}

/// The memo item of one step: everything its row content depends on.
pub fn step_item(subject: &str, doc: &Value, previous: &[Option<String>]) -> Value {
    json!({"subject": subject, "step": doc, "previous": previous})
}

/// The rows of a step-metadata tree: for each step, `content(subject, doc, k, previous)`
/// gives the row without its id (`Null` skips the step), through `memo`; ids are assigned
/// afterwards in order, so the counter scheme counts only the rows kept.
pub fn build_rows(
    dir: &std::path::Path,
    scheme: IdScheme,
    memo: &mut RowMemo<'_>,
    content: impl Fn(&str, &Value, i64, &[Option<String>]) -> Value,
) -> std::result::Result<Vec<Value>, OpError> {
    let mut rows = Vec::new();
    let mut ids = Ids::new(scheme);
    for exp in read_meta_tree(dir)? {
        let previous = step_texts(&exp.steps);
        for doc in &exp.steps {
            let k = step_number(doc);
            let item = step_item(&exp.subject, doc, &previous);
            let row = memo(&item, &mut || content(&exp.subject, doc, k, &previous))?;
            let Value::Object(mut row) = row else {
                continue;
            };
            row.insert("id".into(), json!(ids.next(&exp.unit, &exp.exp_dir, k)));
            rows.push(Value::Object(row));
        }
    }
    Ok(rows)
}

/// The baseline rows of a step-metadata tree (a step with an empty target is skipped, as in
/// the original).
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
        let target = format!("{}{}", narration_block(&l), knowledge_block(&l));
        if target.is_empty() {
            return Value::Null;
        }
        json!({
            "messages": [
                {"role": "system", "content": system_prompt(subject)},
                {"role": "user", "content": user_prompt(subject, str_field(doc, "title_en"), k, previous)},
                {"role": "assistant", "content": target},
            ],
            "videos": [str_field(doc, "clip_video_path")],
        })
    })
}

impl Operator for BaselineRows {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        // 2: rows travel as Parquet tables, not JSON Lines (docs/decisions.md).
        2
    }

    fn signature(&self) -> Signature {
        rows_signature("baseline rows {messages, videos, id}, a rows table")
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
