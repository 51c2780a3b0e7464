//! `mac.load_split`: one split of the task's own dataset directory → the item table.
//!
//! The directory holds the task's six files, `image2text_{train,dev,test}.json` and
//! `text2image_{train,dev,test}.json`: JSON lists of alpaca records `{system, input, output,
//! images}` (read as [`super::load`] reads them; image paths relative to the image root).
//! `split` picks train, dev or test; `task` one task's file or both (image2text first).
//!
//! Train and dev records must carry their answer letter: one without is an error naming the
//! file and the record. Test records have an `id` and `output` null: they load as unanswered
//! items (`answer` empty), which `mcq.answer` answers and `mac.export_answers` writes out. When
//! the directory also holds `<task>_test_key.json` (a grader's file `[{"id", "output"}]`, as
//! `expflow synth mac` writes beside its test sets), and `key` is on, the test items take their
//! answers from it, so accuracy can be measured on synthetic data; the key must give a letter
//! A–D for every test record and name no other id.

use std::collections::BTreeMap;
use std::path::Path;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use serde_json::{Map, Value, json};

use super::{Item, LETTERS, Task, load::load_bytes, write_items};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct LoadSplit;

const KIND: &str = "mac.load_split";

struct Config {
    split: &'static str,
    task: &'static str,
    key: bool,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        Ok(Config {
            split: p.choice("split", &["train", "dev", "test"])?,
            task: p.choice("task", &["both", "image2text", "text2image"])?,
            key: p.bool("key")?,
        })
    }

    fn tasks(&self) -> Vec<Task> {
        match self.task {
            "image2text" => vec![Task::ImageToText],
            "text2image" => vec![Task::TextToImage],
            _ => vec![Task::ImageToText, Task::TextToImage],
        }
    }
}

/// The file name of a task's split: `image2text_train.json`.
pub fn file_name(task: Task, split: &str) -> String {
    format!("{}_{split}.json", task.as_str())
}

/// The file name of a task's test key: `image2text_test_key.json`.
pub fn key_name(task: Task) -> String {
    format!("{}_test_key.json", task.as_str())
}

/// Prefixes a data error with the file it is about.
fn in_file(e: OperatorError, file: &Path) -> OperatorError {
    match e {
        OperatorError::Data { op, message } => OperatorError::Data {
            op,
            message: format!("{}: {message}", file.display()),
        },
        other => other,
    }
}

/// Reads one task's split from `dir`.
fn load_task(dir: &Path, task: Task, cfg: &Config) -> Result<Vec<Item>> {
    let path = dir.join(file_name(task, cfg.split));
    let bytes = std::fs::read(&path).map_err(|e| {
        OperatorError::data(
            KIND,
            format!(
                "cannot read {} ({e}); the `datasets` directory must hold the task's six files \
                 image2text_{{train,dev,test}}.json and text2image_{{train,dev,test}}.json",
                path.display()
            ),
        )
    })?;
    let mut params = Map::new();
    params.insert("format".into(), json!("alpaca"));
    params.insert("task".into(), json!(task.as_str()));
    params.insert("system".into(), json!(""));
    params.insert(
        "id_prefix".into(),
        json!(format!("{}_{}_", task.as_str(), cfg.split)),
    );
    params.insert(
        "answers".into(),
        json!(if cfg.split == "test" {
            "optional"
        } else {
            "required"
        }),
    );
    let mut items = load_bytes(&bytes, &path, &params).map_err(|e| in_file(e, &path))?;
    if let Some((i, it)) = items.iter().enumerate().find(|(_, it)| it.task != task) {
        return Err(OperatorError::data(
            KIND,
            format!(
                "{}: {}: a {} record in the {} file",
                path.display(),
                super::record_name(i, &it.id),
                it.task.as_str(),
                task.as_str()
            ),
        ));
    }
    let key_path = dir.join(key_name(task));
    if cfg.split == "test" && cfg.key && key_path.exists() {
        apply_key(&mut items, &key_path)?;
    }
    Ok(items)
}

/// Sets the answers of test `items` from the grader's key at `path`.
fn apply_key(items: &mut [Item], path: &Path) -> Result<()> {
    let bad = |what: String| OperatorError::data(KIND, format!("{}: {what}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| OperatorError::io("cannot read", path, e))?;
    let entries: Vec<Value> = serde_json::from_slice(&bytes).map_err(|e| OperatorError::Parse {
        path: path.to_path_buf(),
        format: "answer key JSON",
        location: format!("line {}: ", e.line()),
        message: e.to_string(),
    })?;
    let mut key = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        let id = match e.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(bad(format!("entry {i} has no string `id`"))),
        };
        let letter = e.get("output").and_then(Value::as_str).unwrap_or_default();
        let k = LETTERS
            .iter()
            .position(|l| letter.trim() == l.to_string())
            .ok_or_else(|| {
                bad(format!(
                    "entry {i} (id `{id}`): `output` {letter:?} is not A–D"
                ))
            })?;
        key.insert(id, k);
    }
    for (i, it) in items.iter_mut().enumerate() {
        let k = key.remove(&it.id).ok_or_else(|| {
            bad(format!(
                "has no answer for test {}; a key covers every test record",
                super::record_name(i, &it.id)
            ))
        })?;
        it.answer = Some(k);
    }
    if let Some(extra) = key.keys().next() {
        return Err(bad(format!(
            "names id `{extra}`, which no test record has ({} such id(s))",
            key.len()
        )));
    }
    Ok(())
}

impl Operator for LoadSplit {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new(
                "datasets",
                PortType::Dir,
                "the task's directory: image2text_{train,dev,test}.json, text2image_{train,dev,test}.json",
            )]),
            outputs: Ports::Fixed(vec![Port::new(
                "table",
                PortType::Table,
                "the split's MAC items (test items without a key: answer empty)",
            )]),
            params: vec![
                ParamSpec::required("split", ParamKind::String, "train, dev or test"),
                ParamSpec::with_default(
                    "task",
                    ParamKind::String,
                    json!("both"),
                    "both (image2text first), image2text or text2image",
                ),
                ParamSpec::with_default(
                    "key",
                    ParamKind::Bool,
                    json!(true),
                    "test: take answers from <task>_test_key.json when the directory has one",
                ),
            ],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let dir = ctx.input("datasets")?.path.clone();
        let mut items = Vec::new();
        for task in cfg.tasks() {
            let loaded = load_task(&dir, task, &cfg)?;
            let answered = loaded.iter().filter(|i| i.answer.is_some()).count();
            ctx.log(&format!(
                "{}: {} items, {answered} with an answer",
                file_name(task, cfg.split),
                loaded.len()
            ));
            items.extend(loaded);
        }
        let mut seen = BTreeMap::new();
        for (i, it) in items.iter().enumerate() {
            if let Some(first) = seen.insert(it.id.clone(), i) {
                return Err(OperatorError::data(
                    KIND,
                    format!(
                        "id `{}` is used by item {first} and item {i} of the {} split; ids must be unique",
                        it.id, cfg.split
                    ),
                )
                .into());
            }
        }
        write_items(ctx, KIND, "table", &items)
    }
}
