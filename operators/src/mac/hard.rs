//! `mac.hard_distractors`: distractors ranked by CLIP embedding similarity (MAC's "hard"
//! builder, spec §1.4 item 3), a difficulty score per item, and a curriculum.
//!
//! Within each journal (the same-journal rule kept), the candidates are the journal's
//! stories (image2text options) or covers (text2image options) found anywhere in the input.
//! Stories are embedded with CLIP's text tower, covers with its image tower (both
//! L2-normalised), each distinct text or file once. For every item, the candidates other than
//! the gold option are ranked by cosine similarity to the gold option (ties: the candidate's
//! text), and the `replace` most similar become the item's distractors, at its distractor
//! letters in order; the gold letter does not move. With `replace: 0` the options stay.
//!
//! `difficulty` (a new column) is the mean cosine similarity of the item's distractors to its
//! gold option after replacement: near distractors make a hard item. `curriculum` orders or
//! weights the rows by it: `none` keeps the input order; `easy_first` sorts by difficulty
//! (stable), for a trainer that reads rows in order; `repeat_hard` keeps the order and adds one
//! copy (id `<id>#hard`) of each item in the hardest `hard_fraction`, for trainers that
//! shuffle (the native one does), so hard items weigh twice.
//!
//! Replaced items get id `<id>#sim`, variant `+sim`, and are re-rendered with `template`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use expflow_encoders::ClipModel;
use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use expflow_models::{Needs, default_device};
use polars::prelude::*;
use serde_json::{Map, Value, json};

use super::{Item, Task, Template, items_to_df, read_labelled};
use crate::embed::common::{log_device, open_model};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};
use crate::table_io::write_table;

pub struct HardDistractors;

const KIND: &str = "mac.hard_distractors";

struct Config {
    replace: usize,
    curriculum: &'static str,
    hard_fraction: f64,
    template: Template,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let replace = p.u64("replace")? as usize;
        if replace > 3 {
            return Err(OperatorError::param(
                KIND,
                "replace",
                format!("{replace}: an item has 3 distractors (use 0 to 3)"),
            ));
        }
        let hard_fraction = p.f64("hard_fraction")?;
        if !(0.0..=1.0).contains(&hard_fraction) {
            return Err(OperatorError::param(
                KIND,
                "hard_fraction",
                format!("{hard_fraction}: use a share from 0 to 1"),
            ));
        }
        Ok(Config {
            replace,
            curriculum: p.choice("curriculum", &["none", "easy_first", "repeat_hard"])?,
            hard_fraction,
            template: Template::from_param(KIND, map, "template")?,
        })
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// The items with their distractors replaced and their difficulty, given an embedding of
/// every option text (story or cover path) of the input.
pub fn harden(
    items: &[Item],
    emb: &BTreeMap<String, Vec<f32>>,
    replace: usize,
) -> Vec<(Item, f64)> {
    // (journal, task) → every option of that kind seen in the journal.
    let mut pools: BTreeMap<(String, Task), BTreeSet<String>> = BTreeMap::new();
    for it in items {
        pools
            .entry((it.journal.clone(), it.task))
            .or_default()
            .extend(it.options.iter().cloned());
    }
    let sim = |a: &str, b: &str| match (emb.get(a), emb.get(b)) {
        (Some(x), Some(y)) => cosine(x, y),
        _ => 0.0,
    };
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        let Some(answer) = it.answer else { continue };
        let gold = it.options[answer].clone();
        let mut item = it.clone();
        if replace > 0 {
            let mut ranked: Vec<(f64, &String)> = pools[&(it.journal.clone(), it.task)]
                .iter()
                .filter(|c| **c != gold)
                .map(|c| (sim(&gold, c), c))
                .collect();
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
            let nearest: Vec<String> = ranked
                .iter()
                .take(replace)
                .map(|(_, c)| (*c).clone())
                .collect();
            if nearest.len() == replace {
                let slots: Vec<usize> = (0..4).filter(|&k| k != answer).collect();
                // Keep the distractors the nearest set does not displace, in their slots.
                let keep: Vec<String> = it
                    .options
                    .iter()
                    .enumerate()
                    .filter(|(k, o)| *k != answer && !nearest.contains(o))
                    .map(|(_, o)| o.clone())
                    .take(3 - replace)
                    .collect();
                let mut fill = nearest.iter().chain(&keep);
                for &k in &slots {
                    if let Some(o) = fill.next() {
                        item.options[k] = o.clone();
                    }
                }
                if item.options != it.options {
                    item = {
                        let mut d = it.derive("sim");
                        d.options = item.options.clone();
                        d
                    };
                }
            }
        }
        let distractors: Vec<f64> = (0..4)
            .filter(|&k| k != answer)
            .map(|k| sim(&gold, &item.options[k]))
            .collect();
        let difficulty = distractors.iter().sum::<f64>() / distractors.len() as f64;
        out.push((item, difficulty));
    }
    out
}

impl Operator for HardDistractors {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        let s = |name, kind, default: Value, doc| ParamSpec::with_default(name, kind, default, doc);
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new("table", PortType::Table, "MAC items with answers"),
                Port::new(
                    "model",
                    PortType::Model,
                    "a CLIP model directory (config.json, safetensors, preprocessor_config.json, tokenizer.json)",
                ),
                Port::new(
                    "media",
                    PortType::Dir,
                    "the directory the cover paths are relative to",
                ),
            ]),
            outputs: Ports::Fixed(vec![Port::new(
                "table",
                PortType::Table,
                "the items (distractors replaced by the nearest), with `difficulty`, in curriculum order",
            )]),
            params: vec![
                s(
                    "replace",
                    ParamKind::Int,
                    json!(3),
                    "distractors replaced by the most similar same-journal candidates (0 to 3)",
                ),
                s(
                    "curriculum",
                    ParamKind::String,
                    json!("none"),
                    "none, easy_first (sorted by difficulty) or repeat_hard (the hardest hard_fraction twice)",
                ),
                s(
                    "hard_fraction",
                    ParamKind::Float,
                    json!(0.25),
                    "repeat_hard: the share of items, hardest first, added again",
                ),
                s(
                    "template",
                    ParamKind::Map,
                    Value::Null,
                    "how replaced items are written (see mac.vary_templates); null: the default",
                ),
            ],
            determinism: Determinism::Deterministic,
            resources: Resources {
                cpus: 2,
                gpus: 0,
                mem_gb: 2.0,
            },
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> std::result::Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let items = read_labelled(ctx, KIND, "table")?;
        let media = ctx.input("media")?.path.clone();
        let model = open_model(ctx, KIND, Needs::Tokenizer)?;
        let device = default_device()?;
        log_device(ctx, &device);
        let clip = ClipModel::load(&model.dir, &device, true)?;
        let mut stories = BTreeSet::new();
        let mut covers = BTreeSet::new();
        for it in &items {
            match it.task {
                Task::ImageToText => stories.extend(it.options.iter().cloned()),
                Task::TextToImage => covers.extend(it.options.iter().cloned()),
            }
        }
        let stories: Vec<String> = stories.into_iter().collect();
        let covers: Vec<String> = covers.into_iter().collect();
        let paths: Vec<PathBuf> = covers.iter().map(|c| media.join(c)).collect();
        if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
            return Err(OperatorError::data(
                KIND,
                format!(
                    "cover {} is not in `media`; give the image root the options' paths are relative to",
                    missing.display()
                ),
            )
            .into());
        }
        ctx.log(&format!(
            "{} items: embedding {} stories (text tower) and {} covers (image tower)",
            items.len(),
            stories.len(),
            covers.len()
        ));
        let mut emb = BTreeMap::new();
        if !stories.is_empty() {
            emb.extend(stories.iter().cloned().zip(clip.embed_texts(&stories)?));
        }
        if !covers.is_empty() {
            emb.extend(covers.iter().cloned().zip(clip.embed_images(&paths)?));
        }
        let mut rows = harden(&items, &emb, cfg.replace);
        for (it, _) in rows.iter_mut() {
            if it.variant.split('+').any(|t| t == "sim") {
                cfg.template.render(it);
            }
        }
        let replaced = rows
            .iter()
            .filter(|(it, _)| it.id.ends_with("#sim"))
            .count();
        match cfg.curriculum {
            "easy_first" => rows.sort_by(|a, b| a.1.total_cmp(&b.1)),
            "repeat_hard" => {
                let n = (rows.len() as f64 * cfg.hard_fraction).round() as usize;
                let mut order: Vec<usize> = (0..rows.len()).collect();
                order.sort_by(|&a, &b| rows[b].1.total_cmp(&rows[a].1).then(a.cmp(&b)));
                let extra: Vec<(Item, f64)> = order[..n]
                    .iter()
                    .map(|&i| (rows[i].0.derive("hard"), rows[i].1))
                    .collect();
                rows.extend(extra);
            }
            _ => {}
        }
        let mean = rows.iter().map(|r| r.1).sum::<f64>() / rows.len().max(1) as f64;
        ctx.log(&format!(
            "{replaced} item(s) got nearer distractors; mean difficulty {mean:.4}; curriculum {}: {} rows",
            cfg.curriculum,
            rows.len()
        ));
        let items: Vec<Item> = rows.iter().map(|r| r.0.clone()).collect();
        let mut df = items_to_df(KIND, &items)?;
        let difficulty: Vec<f64> = rows.iter().map(|r| r.1).collect();
        df.with_column(Column::new("difficulty".into(), difficulty))
            .map_err(|e| OperatorError::polars(KIND, "adding `difficulty`", e))?;
        write_table(&mut df, &ctx.output("table")?.path)?;
        Ok(())
    }
}
