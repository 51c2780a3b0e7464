//! The prompt tables, tag strings and target rules shared by the baseline and the self-RAG
//! rows (spec §C.1, §C.2), and the reader of a step-metadata tree.

use std::path::Path;

use serde_json::Value;

use super::{files_with_ext, read_json, split_number, str_field};
use crate::error::Result;

pub const NARRATION: &str = "<Narration>\n";
pub const PRINCIPLE: &str = "<Principle>\n";
pub const SAFETY: &str = "<Safety>\n";
pub const RETRIEVAL: &str = "[Retrieval]";
pub const NO_RETRIEVAL: &str = "[No Retrieval]";
pub const IS_RELEVANT: &str = "[Is Relevant?]";
pub const RELEVANT: &str = "[Relevant]";
pub const IRRELEVANT: &str = "[Irrelevant]";
pub const PARAGRAPH_PLACEHOLDER: &str = "<paragraph>passage</paragraph>";

/// The system prompt of `subject` (seven families and a generic one).
pub fn system_prompt(subject: &str) -> String {
    let first = match subject {
        "chemistry" => {
            "You are an expert narrator for chemistry experiment videos, helping students better understand chemistry experiments, principles, and operational procedures. "
        }
        "physics" => {
            "You are an expert narrator for physics experiment videos, helping students better understand physical phenomena, principles, and key operational points. "
        }
        "biology" => {
            "You are an expert narrator for biology experiment videos, helping students better understand biological concepts, experimental processes, and observational results. "
        }
        "kid" => {
            "You are a friendly narrator for children's fun science experiment videos, using simple and engaging language to explain scientific concepts to children aged 6-12, inspiring their interest and curiosity in science. "
        }
        "electronic" => {
            "You are an expert narrator for electronics experiment videos, helping learners better understand electronic circuits, principles, and assembly and debugging points. "
        }
        "civil" => {
            "You are an expert narrator for civil engineering experiment videos, helping learners better understand building structures, material properties, and engineering principles. "
        }
        "material" => {
            "You are an expert narrator for materials science experiment videos, helping learners better understand material properties, structures, and application characteristics. "
        }
        _ => {
            "You are an expert narrator for science experiment videos, helping viewers better understand experimental content and scientific principles. "
        }
    };
    format!(
        "{first}Always use <Narration> tags to mark the narration content. When necessary, please: 1. Use <Principle> tags to mark explanations of scientific principles or theories. 2. Use <Safety> tags to mark safety precautions or warnings. "
    )
}

/// The first line of the user prompt.
pub fn prompt_head(subject: &str, title: &str) -> String {
    if subject == "kid" {
        return format!(
            "<video>Please generate a lively and fun narration for the current step of the children's science experiment titled \"{title}\".\n\n"
        );
    }
    let what = match subject {
        "chemistry" => "chemistry",
        "physics" => "physics",
        "biology" => "biology",
        "electronic" => "electronics",
        "civil" => "civil engineering",
        "material" => "materials science",
        _ => "science",
    };
    format!(
        "<video>Please generate a detailed narration for the current step of the {what} experiment titled \"{title}\".\n\n"
    )
}

/// The user prompt of step `k`, with the ground-truth descriptions of the earlier steps
/// (`previous[j-1]` is step j's `step_en`, `None` when step j has no file).
pub fn user_prompt(subject: &str, title: &str, k: i64, previous: &[Option<String>]) -> String {
    let mut s = prompt_head(subject, title);
    if k > 1 {
        s.push_str("In previous steps:\n");
        for j in 1..k {
            if let Some(Some(text)) = previous.get((j - 1) as usize) {
                s.push_str(&format!("- Step {j}: {text}\n"));
            }
        }
        s.push_str(&format!("\nNow proceeding with Step {k}:\n"));
    }
    s
}

/// Narration, principle and safety lines of a step's annotations (sorted by the
/// `startTime` string, as the original; principle and safety de-duplicated).
pub struct Lines {
    pub narration: Vec<String>,
    pub principle: Vec<String>,
    pub safety: Vec<String>,
}

pub fn lines(annotations: &[Value]) -> Lines {
    let mut sorted: Vec<&Value> = annotations.iter().collect();
    // A stable sort on the string, like Python's `sorted(key=startTime)`.
    sorted.sort_by(|a, b| {
        let ka = a
            .get("startTime")
            .and_then(Value::as_str)
            .unwrap_or("0:00:00");
        let kb = b
            .get("startTime")
            .and_then(Value::as_str)
            .unwrap_or("0:00:00");
        ka.cmp(kb)
    });
    let mut out = Lines {
        narration: Vec::new(),
        principle: Vec::new(),
        safety: Vec::new(),
    };
    for a in sorted {
        let text = str_field(a, "text_en");
        if !text.is_empty() {
            out.narration.push(text.to_string());
        }
        let safety = str_field(a, "safety_en");
        if !safety.is_empty() && !out.safety.iter().any(|s| s == safety) {
            out.safety.push(safety.to_string());
        }
        let principle = str_field(a, "principle_en");
        if !principle.is_empty() && !out.principle.iter().any(|s| s == principle) {
            out.principle.push(principle.to_string());
        }
    }
    out
}

/// `<Narration>\n` + lines joined by `\n` + `\n` (empty without narration).
pub fn narration_block(l: &Lines) -> String {
    if l.narration.is_empty() {
        String::new()
    } else {
        format!("{NARRATION}{}\n", l.narration.join("\n"))
    }
}

/// The Principle and Safety sections, each line ending with `\n`.
pub fn knowledge_block(l: &Lines) -> String {
    let mut s = String::new();
    if !l.principle.is_empty() {
        s.push_str(PRINCIPLE);
        for p in &l.principle {
            s.push_str(p);
            s.push('\n');
        }
    }
    if !l.safety.is_empty() {
        s.push_str(SAFETY);
        for p in &l.safety {
            s.push_str(p);
            s.push('\n');
        }
    }
    s
}

/// One experiment of a step-metadata tree.
pub struct Experiment {
    pub subject: String,
    pub unit: String,
    pub exp_dir: String,
    /// Step metadata documents, sorted by `step_number` (numerically).
    pub steps: Vec<Value>,
}

/// Reads a step-metadata tree: files at `<subject>/<unit>/[json/]<NN>-<title>/<stem>.json`.
/// Experiments are ordered by subject, unit, numeric experiment number and name; steps by
/// `step_number`. Nothing depends on the order the directory is listed in.
pub fn read_meta_tree(dir: &Path) -> Result<Vec<Experiment>> {
    let mut exps: Vec<Experiment> = Vec::new();
    for path in files_with_ext(dir, ".json")? {
        let rel = path.strip_prefix(dir).unwrap_or(&path);
        let comps: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if comps.len() < 4 {
            continue;
        }
        let (subject, unit, exp_dir) = (
            comps[0].clone(),
            comps[1].clone(),
            comps[comps.len() - 2].clone(),
        );
        let doc = read_json(&path)?;
        match exps
            .iter_mut()
            .find(|e| e.subject == subject && e.unit == unit && e.exp_dir == exp_dir)
        {
            Some(e) => e.steps.push(doc),
            None => exps.push(Experiment {
                subject,
                unit,
                exp_dir,
                steps: vec![doc],
            }),
        }
    }
    let num = |d: &str| split_number(d).map(|(n, ..)| n).unwrap_or(u64::MAX);
    exps.sort_by(|a, b| {
        (&a.subject, &a.unit, num(&a.exp_dir), &a.exp_dir).cmp(&(
            &b.subject,
            &b.unit,
            num(&b.exp_dir),
            &b.exp_dir,
        ))
    });
    for e in &mut exps {
        e.steps.sort_by_key(step_number);
    }
    Ok(exps)
}

pub fn step_number(doc: &Value) -> i64 {
    doc.get("step_number").and_then(Value::as_i64).unwrap_or(0)
}

/// `previous[j-1]` = step j's `step_en` for the steps of one experiment.
pub fn step_texts(steps: &[Value]) -> Vec<Option<String>> {
    let max = steps.iter().map(step_number).max().unwrap_or(0).max(0) as usize;
    let mut out = vec![None; max];
    for s in steps {
        let n = step_number(s);
        if n >= 1 {
            out[(n - 1) as usize] = Some(str_field(s, "step_en").to_string());
        }
    }
    out
}

/// Row ids: `step` gives `<unit>_<NN>_<k>` (stable: it names the step); `counter` gives the
/// original's `<unit>_<i>`, a running counter over the unit's rows in sorted order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum IdScheme {
    Step,
    Counter,
}

impl IdScheme {
    pub fn parse(s: &str) -> Option<IdScheme> {
        match s {
            "step" => Some(IdScheme::Step),
            "counter" => Some(IdScheme::Counter),
            _ => None,
        }
    }
}

/// Hands out ids in row order.
pub struct Ids {
    scheme: IdScheme,
    unit: String,
    counter: usize,
}

impl Ids {
    pub fn new(scheme: IdScheme) -> Ids {
        Ids {
            scheme,
            unit: String::new(),
            counter: 0,
        }
    }

    pub fn next(&mut self, unit: &str, exp_dir: &str, k: i64) -> String {
        if unit != self.unit {
            self.unit = unit.to_string();
            self.counter = 0;
        }
        let id = match self.scheme {
            IdScheme::Step => {
                let num = split_number(exp_dir).map(|(_, n, ..)| n).unwrap_or(exp_dir);
                format!("{unit}_{num}_{k}")
            }
            IdScheme::Counter => format!("{unit}_{}", self.counter),
        };
        self.counter += 1;
        id
    }
}
