//! `mac.load`: MAC records → the item table (see [`super`]).
//!
//! Two sources:
//!
//! - LLaMA-Factory alpaca records (a JSON array, or JSON Lines): `system`, `input` and/or
//!   `instruction` (both given: `instruction` + "\n" + `input`, as LLaMA-Factory joins prompt
//!   and query), `output`, `images`; optional `id`, `journal`, `task`. The task is `task`
//!   when given, else image2text for one image and text2image for four. image2text text is
//!   the question followed by option lines `A: …` … `D: …` (also `A.` or `A)`; an option
//!   runs until the next option line); text2image text is the story, then the question (the
//!   last line with a `?`), and the four images are the options A–D in order. The gold
//!   letter is read from `output` (a bare letter, or a rationale ending in one; see
//!   [`super::extract_answer`]). `id` defaults to `id_prefix` + the record index; `journal` to
//!   the directory of the (gold) cover image (`Cover/<journal>/<issue>.png`).
//! - MAC's CSV (`journal,id,question,cover_image,answer,option_A..option_D`, spec §1.3): a
//!   row whose `cover_image` is an image path is image2text, else text2image (where
//!   `cover_image` holds the story and the options are image paths), unless `task` says.
//!   Rows are rendered with the default template and `system`.
//!
//! Every record is checked: one `<image>` per image path, options A–D present, a gold
//! letter; the first problem fails the node with `record N (id `X`)`.

use std::io::Cursor;
use std::path::Path;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use polars::prelude::*;
use serde_json::{Map, Value, json};

use super::{
    IMAGE, Item, LETTERS, Task, Template, count_images, extract_answer, is_image_path, journal_of,
    record_name, write_items,
};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct Load;

const KIND: &str = "mac.load";

struct Config {
    format: &'static str,
    task: &'static str,
    system: String,
    id_prefix: String,
    /// Whether every record must carry its answer (test records may not).
    require_answer: bool,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        Ok(Config {
            format: p.choice("format", &["auto", "alpaca", "csv"])?,
            task: p.choice("task", &["auto", "image2text", "text2image"])?,
            system: p.str("system")?.to_string(),
            id_prefix: p.str("id_prefix")?.to_string(),
            require_answer: p.choice("answers", &["required", "optional"])? == "required",
        })
    }
}

/// Parses image2text text (placeholders removed): the question, then options A–D.
fn parse_options(text: &str) -> std::result::Result<(String, [String; 4]), String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut starts = Vec::new();
    let mut from = 0;
    for letter in LETTERS {
        let found = (from..lines.len()).find(|&i| option_line(lines[i], letter).is_some());
        match found {
            Some(i) => {
                starts.push(i);
                from = i + 1;
            }
            None => {
                return Err(format!(
                    "options A–D do not parse: no line starting `{letter}:` (or `{letter}.`, `{letter})`){}",
                    if letter == 'A' {
                        ""
                    } else {
                        " after the previous option"
                    }
                ));
            }
        }
    }
    let question = lines[..starts[0]].join("\n").trim().to_string();
    let mut options: [String; 4] = Default::default();
    for (k, &s) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(lines.len());
        let mut parts = vec![option_line(lines[s], LETTERS[k]).unwrap_or_default()];
        parts.extend(lines[s + 1..end].iter().copied());
        options[k] = parts.join("\n").trim().to_string();
        if options[k].is_empty() {
            return Err(format!("option {} is empty", LETTERS[k]));
        }
    }
    Ok((question, options))
}

/// The text after `X:` / `X.` / `X)` when `line` is option `letter`'s line.
fn option_line(line: &str, letter: char) -> Option<&str> {
    let t = line.trim_start();
    let rest = t.strip_prefix(letter)?;
    let rest = rest
        .strip_prefix(':')
        .or_else(|| rest.strip_prefix('.'))
        .or_else(|| rest.strip_prefix(')'))?;
    if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    Some(rest.trim())
}

/// Splits text2image text (placeholders removed) into the story and the question.
fn split_story(text: &str) -> (String, String) {
    let lines: Vec<&str> = text.lines().collect();
    match lines.iter().rposition(|l| l.contains('?')) {
        Some(q) => (
            lines[..q].join("\n").trim().to_string(),
            lines[q].trim().to_string(),
        ),
        None => (text.trim().to_string(), String::new()),
    }
}

fn field_str(rec: &Map<String, Value>, name: &str) -> std::result::Result<Option<String>, String> {
    match rec.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) if name == "id" => Ok(Some(n.to_string())),
        Some(v) => Err(format!("`{name}` must be a string, got {v}")),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// One alpaca record → an item.
fn from_alpaca(index: usize, rec: &Value, cfg: &Config) -> Result<Item> {
    let fallback_id = format!("{}{index}", cfg.id_prefix);
    let id_guess = rec
        .get("id")
        .filter(|v| !v.is_null())
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string())
        })
        .unwrap_or_else(|| fallback_id.clone());
    let fail = |what: String| {
        OperatorError::data(KIND, format!("{}: {what}", record_name(index, &id_guess)))
    };
    let rec = rec
        .as_object()
        .ok_or_else(|| fail(format!("must be a JSON object, got {rec}")))?;
    let get = |name: &str| field_str(rec, name).map_err(&fail);
    let id = get("id")?.unwrap_or(fallback_id);
    let system = get("system")?.unwrap_or_default();
    let input = match (get("instruction")?, get("input")?) {
        (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => format!("{a}\n{b}"),
        (Some(a), Some(b)) if a.is_empty() => b,
        (Some(a), _) => a,
        (None, Some(b)) => b,
        (None, None) => return Err(fail("has neither `input` nor `instruction`".into())),
    };
    let output = match get("output")? {
        Some(o) => Some(o),
        None if !cfg.require_answer => None,
        None => {
            return Err(fail(
                "has no `output` (its answer letter); only test records may leave it null".into(),
            ));
        }
    };
    let images: Vec<String> = match rec.get("images") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| fail(format!("`images` must hold path strings, got {v}")))
            })
            .collect::<Result<_>>()?,
        Some(Value::String(s)) => vec![s.clone()],
        None | Some(Value::Null) => Vec::new(),
        Some(v) => return Err(fail(format!("`images` must be a list of paths, got {v}"))),
    };
    let placeholders = count_images(&input);
    if placeholders != images.len() {
        return Err(fail(format!(
            "{placeholders} `<image>` placeholder(s) in the text for {} image path(s); LLaMA-Factory needs one per image",
            images.len()
        )));
    }
    let task = match get("task")? {
        Some(t) => Task::parse(&t)
            .ok_or_else(|| fail(format!("task `{t}` is neither image2text nor text2image")))?,
        None => match images.len() {
            1 => Task::ImageToText,
            4 => Task::TextToImage,
            n => {
                return Err(fail(format!(
                    "has {n} image(s): a MAC item has 1 (image2text) or 4 (text2image)"
                )));
            }
        },
    };
    if images.len() != task.image_count() {
        return Err(fail(format!(
            "a {} item needs {} image(s), it has {}",
            task.as_str(),
            task.image_count(),
            images.len()
        )));
    }
    let answer = match &output {
        Some(output) => Some(extract_answer(output).ok_or_else(|| {
            fail(format!(
                "no answer letter A–D in `output` {:?}",
                truncate(output, 80)
            ))
        })?),
        None => None,
    };
    let text = input.replace(IMAGE, "");
    let (question, cover_image, story, options) = match task {
        Task::ImageToText => {
            let (q, opts) = parse_options(&text).map_err(&fail)?;
            (q, Some(images[0].clone()), None, opts)
        }
        Task::TextToImage => {
            let (story, q) = split_story(&text);
            let opts: [String; 4] = std::array::from_fn(|k| images[k].clone());
            (q, None, Some(story), opts)
        }
    };
    let journal = match get("journal")? {
        Some(j) => j,
        None => match (task, answer) {
            (Task::ImageToText, _) => journal_of(&images[0]),
            (Task::TextToImage, Some(a)) => journal_of(&images[a]),
            // Without the answer, the journal every option shares (MAC draws distractors
            // from the cover's own journal), else `unknown`.
            (Task::TextToImage, None) => {
                let js: std::collections::BTreeSet<String> =
                    images.iter().map(|i| journal_of(i)).collect();
                match js.len() {
                    1 => js.into_iter().next().unwrap_or_default(),
                    _ => "unknown".into(),
                }
            }
        },
    };
    Ok(Item {
        source_id: id.clone(),
        id,
        variant: "original".into(),
        journal,
        task,
        question,
        cover_image,
        story,
        options,
        answer,
        system,
        input,
        output: output.unwrap_or_default(),
        images,
    })
}

fn read_alpaca(bytes: &[u8], cfg: &Config, path: &Path) -> Result<Vec<Item>> {
    let text = std::str::from_utf8(bytes).map_err(|e| OperatorError::Parse {
        path: path.to_path_buf(),
        format: "alpaca JSON",
        location: String::new(),
        message: format!("not UTF-8: {e}"),
    })?;
    let records: Vec<Value> = if text.trim_start().starts_with('[') {
        serde_json::from_str(text).map_err(|e| OperatorError::Parse {
            path: path.to_path_buf(),
            format: "alpaca JSON",
            location: format!("line {}: ", e.line()),
            message: e.to_string(),
        })?
    } else {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            out.push(
                serde_json::from_str(line).map_err(|e| OperatorError::Parse {
                    path: path.to_path_buf(),
                    format: "alpaca JSON Lines",
                    location: format!("line {}: ", i + 1),
                    message: e.to_string(),
                })?,
            );
        }
        out
    };
    records
        .iter()
        .enumerate()
        .map(|(i, r)| from_alpaca(i, r, cfg))
        .collect()
}

const CSV_COLUMNS: [&str; 9] = [
    "journal",
    "id",
    "question",
    "cover_image",
    "answer",
    "option_A",
    "option_B",
    "option_C",
    "option_D",
];

fn read_csv(bytes: &[u8], cfg: &Config, path: &Path) -> Result<Vec<Item>> {
    let df = CsvReadOptions::default()
        .with_has_header(true)
        // Every column is text: ids like `2018_1` or `2018` must not turn into numbers.
        .with_infer_schema_length(Some(0))
        .into_reader_with_file_handle(Cursor::new(bytes))
        .finish()
        .map_err(|e| OperatorError::Parse {
            path: path.to_path_buf(),
            format: "MAC CSV",
            location: String::new(),
            message: e
                .to_string()
                .split("\n\n")
                .next()
                .unwrap_or_default()
                .to_string(),
        })?;
    let mut cols = Vec::new();
    for name in CSV_COLUMNS {
        let c = df.column(name).map_err(|_| {
            OperatorError::data(
                KIND,
                format!(
                    "{}: MAC CSV needs column `{name}` (journal, id, question, cover_image, answer, option_A..option_D)",
                    path.display()
                ),
            )
        })?;
        let ca = c
            .str()
            .map_err(|e| OperatorError::polars(KIND, format!("reading CSV column `{name}`"), e))?
            .clone();
        cols.push(ca);
    }
    let template = Template {
        system: cfg.system.clone(),
        ..Template::default()
    };
    let mut items = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let v = |k: usize| cols[k].get(i).unwrap_or_default().to_string();
        let id = match v(1) {
            raw if raw.is_empty() => format!("{}{i}", cfg.id_prefix),
            raw => raw,
        };
        let fail =
            |what: String| OperatorError::data(KIND, format!("{}: {what}", record_name(i, &id)));
        let cover = v(3);
        let task = match cfg.task {
            "image2text" => Task::ImageToText,
            "text2image" => Task::TextToImage,
            _ if is_image_path(&cover) => Task::ImageToText,
            _ => Task::TextToImage,
        };
        let options = [v(5), v(6), v(7), v(8)];
        if let Some(k) = options.iter().position(|o| o.trim().is_empty()) {
            return Err(fail(format!("option {} is empty", LETTERS[k])));
        }
        let a = v(4);
        let answer = match LETTERS.iter().position(|l| a.trim() == l.to_string()) {
            Some(k) => Some(k),
            None if a.trim().is_empty() && !cfg.require_answer => None,
            None => return Err(fail(format!("answer `{a}` is not one of A, B, C, D"))),
        };
        if task == Task::TextToImage
            && let Some(k) = options.iter().position(|o| !is_image_path(o))
        {
            return Err(fail(format!(
                "text2image option {} `{}` is not an image path",
                LETTERS[k],
                truncate(&options[k], 60)
            )));
        }
        let mut item = Item {
            source_id: id.clone(),
            id: id.clone(),
            variant: "original".into(),
            journal: v(0),
            task,
            question: v(2),
            cover_image: (task == Task::ImageToText).then(|| cover.clone()),
            story: (task == Task::TextToImage).then(|| cover.clone()),
            options,
            answer,
            system: String::new(),
            input: String::new(),
            output: String::new(),
            images: Vec::new(),
        };
        template.render(&mut item);
        item.validate().map_err(fail)?;
        items.push(item);
    }
    Ok(items)
}

/// Reads MAC records from `bytes` (the file at `path`) with the parameters in `params`.
pub fn load_bytes(bytes: &[u8], path: &Path, params: &Map<String, Value>) -> Result<Vec<Item>> {
    let cfg = Config::parse(params)?;
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let format = match cfg.format {
        "auto" => match text.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'[') | Some(b'{') => "alpaca",
            Some(_) => "csv",
            None => {
                return Err(OperatorError::data(
                    KIND,
                    format!(
                        "{} is empty: there are no MAC records to load",
                        path.display()
                    ),
                ));
            }
        },
        f => f,
    };
    let items = if format == "alpaca" {
        read_alpaca(text, &cfg, path)?
    } else {
        read_csv(text, &cfg, path)?
    };
    let mut seen = std::collections::BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        if let Some(first) = seen.insert(it.id.clone(), i) {
            return Err(OperatorError::data(
                KIND,
                format!(
                    "{}: the id is also record {first}'s; ids must be unique",
                    record_name(i, &it.id)
                ),
            ));
        }
    }
    Ok(items)
}

impl Operator for Load {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new(
                "src",
                PortType::File,
                "alpaca JSON / JSON Lines, or MAC's CSV",
            )]),
            outputs: Ports::Fixed(vec![Port::new("table", PortType::Table, "the MAC items")]),
            params: vec![
                ParamSpec::with_default(
                    "format",
                    ParamKind::String,
                    json!("auto"),
                    "auto, alpaca or csv; auto: `[` or `{` first means alpaca",
                ),
                ParamSpec::with_default(
                    "task",
                    ParamKind::String,
                    json!("auto"),
                    "CSV only: auto (by cover_image), image2text or text2image",
                ),
                ParamSpec::with_default(
                    "system",
                    ParamKind::String,
                    json!("Answer with one letter."),
                    "CSV only: the `system` text of rendered records",
                ),
                ParamSpec::with_default(
                    "answers",
                    ParamKind::String,
                    json!("required"),
                    "required, or optional: a record with `output` null (CSV: `answer` empty) is an unanswered test item",
                ),
                ParamSpec::with_default(
                    "id_prefix",
                    ParamKind::String,
                    json!("mac-"),
                    "ids of records without one: prefix + record index",
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
        let input = ctx.input("src")?;
        let bytes = std::fs::read(&input.path)
            .map_err(|e| OperatorError::io("cannot read", &input.path, e))?;
        let items = load_bytes(&bytes, &input.path, ctx.params())?;
        let i2t = items.iter().filter(|i| i.task == Task::ImageToText).count();
        ctx.log(&format!(
            "{} items: {i2t} image2text, {} text2image",
            items.len(),
            items.len() - i2t
        ));
        write_items(ctx, KIND, "table", &items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_with_multi_line_text_and_other_markers() {
        let (q, o) = parse_options("Which?\nA: one\nB. two\ncontinued\nC) three\nD: four").unwrap();
        assert_eq!(q, "Which?");
        assert_eq!(
            o,
            ["one", "two\ncontinued", "three", "four"].map(String::from)
        );
        let e = parse_options("Which?\nA: one\nB: two\nD: four").unwrap_err();
        assert!(e.contains("no line starting `C:`"), "{e}");
        assert!(option_line("Abstract: x", 'A').is_none());
    }

    #[test]
    fn story_and_question_split_at_the_last_question_line() {
        let (s, q) = split_story("Story line one.\nLine two?\nWhich story?\n");
        assert_eq!(
            (s.as_str(), q.as_str()),
            ("Story line one.\nLine two?", "Which story?")
        );
    }
}
