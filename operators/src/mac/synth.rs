//! Synthetic MAC data (`expflow synth mac`): issues of a few journals, each with a generated
//! cover PNG and a cover story, written as MAC's raw layout, MAC's CSV and LLaMA-Factory
//! alpaca JSON. Every choice is a [`super::rank`] of the seed, so a seed gives the same bytes.
//!
//! ```text
//! OUT/Cover/<journal>/<issue>.png      generated cover (size × size RGB)
//! OUT/Story/<journal>/<issue>.txt      its cover story
//! OUT/mac_image2text.json              alpaca records, one per issue (id i2t_<journal>_<issue>)
//! OUT/mac_text2image.json              alpaca records, one per issue (id t2i_<journal>_<issue>)
//! OUT/image2text_info.csv              MAC CSV of the image2text items
//! OUT/text2image_info.csv              MAC CSV of the text2image items
//! OUT/datasets/<task>_<split>.json     the task's six files (task: image2text, text2image;
//!                                      split: train, dev, test), records {system, input,
//!                                      output, images}; test records add `id`, `output` null
//! OUT/datasets/<task>_test_key.json    the withheld test answers, [{"id", "output"}]
//! ```
//!
//! The six files are laid out as the task gives them: each task's items are split on their
//! own (as MAC's builder splits each task's file), 15% test, 15% dev (at least one each), the
//! rest train, by rank(seed, id, "split"); records keep the issue order within a file.
//!
//! `items` issues are spread round-robin over `min(6, items / 4)` journals, so every journal
//! has at least four issues and distractors (other issues of the same journal, as MAC's
//! "easy" builder draws them) always exist. Image paths in the records are relative to OUT.

use std::path::Path;

use serde_json::{Value, json};

use super::{I2T_QUESTION, Item, T2I_QUESTION, Task, Template, pretty, rank, ranked, write_file};
use crate::error::{OperatorError, Result};

const JOURNALS: [&str; 6] = [
    "Nature",
    "Science",
    "Cell",
    "ACS_Central_Science",
    "Nature_Chemistry",
    "Cell_Reports",
];
const SUBJECTS: [&str; 12] = [
    "a coral reef",
    "a branching neuron",
    "a crystal lattice",
    "a spiral galaxy",
    "a folded protein",
    "a leaf's stomata",
    "a quantum dot array",
    "a migrating bird flock",
    "a volcanic plume",
    "a bacterial biofilm",
    "a graphene sheet",
    "a glacier crevasse",
];
const COLORS: [(&str, [u8; 3]); 8] = [
    ("deep blue", [20, 40, 160]),
    ("crimson", [180, 20, 40]),
    ("emerald green", [20, 150, 70]),
    ("golden yellow", [230, 190, 30]),
    ("violet", [130, 40, 170]),
    ("teal", [20, 140, 140]),
    ("orange", [240, 120, 20]),
    ("silver grey", [170, 170, 180]),
];
const SHAPES: [&str; 4] = [
    "concentric rings",
    "diagonal stripes",
    "a grid of dots",
    "a central disc",
];
const TOPICS: [&str; 10] = [
    "how cells sense mechanical force",
    "a new route to room-temperature catalysis",
    "the early evolution of flowering plants",
    "energy transfer in light-harvesting complexes",
    "memory consolidation during sleep",
    "defects that strengthen a metal alloy",
    "climate records stored in ancient ice",
    "a vaccine that trains the innate immune system",
    "topological states in layered materials",
    "how soil microbes store carbon",
];

/// What [`write_mac`] wrote.
#[derive(Debug, PartialEq)]
pub struct Summary {
    pub issues: usize,
    pub journals: usize,
}

struct Issue {
    journal: &'static str,
    issue: String,
    key: String,
    story: String,
    color: [u8; 3],
    shape: usize,
}

fn pick(seed: u64, key: &str, what: &str, n: usize) -> usize {
    let r = rank(seed, &[key.as_bytes(), what.as_bytes()]);
    let x = u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]]);
    (x % n as u64) as usize
}

fn cover_png(seed: u64, issue: &Issue, size: u32) -> Vec<u8> {
    let n = size as usize;
    let mut rgb = Vec::with_capacity(n * n * 3);
    let noise = rank(seed, &[issue.key.as_bytes(), b"noise"]);
    let c = n as i64 / 2;
    let band = (n / 8).max(1);
    let grid = (n / 6).max(2);
    for y in 0..n {
        for x in 0..n {
            let (dx, dy) = (x as i64 - c, y as i64 - c);
            let d2 = dx * dx + dy * dy;
            let on = match issue.shape {
                0 => ((d2 as f64).sqrt() as usize / band).is_multiple_of(2),
                1 => ((x + y) / band).is_multiple_of(2),
                2 => x % grid < 2 && y % grid < 2,
                _ => d2 < (c * c) / 3,
            };
            let jitter = noise[(x * 7 + y * 13) % 32] / 16;
            for (k, base) in issue.color.iter().enumerate() {
                let v = if on { *base } else { 255 - base / 2 };
                rgb.push(
                    v.saturating_add(jitter)
                        .saturating_sub((k as u8) * (jitter / 2)),
                );
            }
        }
    }
    super::png::encode_rgb(size, size, &rgb)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv(items: &[Item]) -> String {
    let mut out = String::from(
        "journal,id,question,cover_image,answer,option_A,option_B,option_C,option_D\n",
    );
    for it in items {
        let cover = match it.task {
            Task::ImageToText => it.cover_image.clone().unwrap_or_default(),
            Task::TextToImage => it.story.clone().unwrap_or_default(),
        };
        let mut fields = vec![
            it.journal.clone(),
            it.id.clone(),
            it.question.clone(),
            cover,
            it.answer_letter(),
        ];
        fields.extend(it.options.iter().cloned());
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

fn record(it: &Item) -> Value {
    json!({
        "id": it.id,
        "journal": it.journal,
        "system": it.system,
        "input": it.input,
        "output": it.output,
        "images": it.images,
    })
}

/// The split of each of `items` (0 train, 1 dev, 2 test): see the module docs.
fn splits(items: &[Item], seed: u64) -> Vec<usize> {
    let n = items.len();
    let held = ((n as f64 * 0.15).round() as usize).max(1);
    let ids: Vec<String> = items.iter().map(|it| it.id.clone()).collect();
    let order = ranked(seed, &[b"split"], &ids);
    let mut split = vec![0; n];
    for (pos, id) in order.iter().enumerate() {
        let i = ids.iter().position(|x| x == id).unwrap_or_default();
        split[i] = if pos < held {
            2
        } else if pos < 2 * held {
            1
        } else {
            0
        };
    }
    split
}

/// Writes one task's three files and its test key under `dir`.
fn write_splits(dir: &Path, items: &[Item], task: Task, seed: u64) -> Result<()> {
    let split = splits(items, seed);
    for (k, name) in ["train", "dev", "test"].iter().enumerate() {
        let chosen = items.iter().zip(&split).filter(|(_, s)| **s == k);
        let records: Vec<Value> = chosen
            .clone()
            .map(|(it, _)| {
                let mut r = json!({
                    "system": it.system,
                    "input": it.input,
                    "output": it.output,
                    "images": it.images,
                });
                if k == 2 {
                    r = json!({
                        "id": it.id,
                        "system": it.system,
                        "input": it.input,
                        "output": null,
                        "images": it.images,
                    });
                }
                r
            })
            .collect();
        write_file(
            &dir.join(super::load_split::file_name(task, name)),
            &pretty(&Value::Array(records)),
        )?;
        if k == 2 {
            let key: Vec<Value> = chosen
                .map(|(it, _)| json!({"id": it.id, "output": it.answer_letter()}))
                .collect();
            write_file(
                &dir.join(super::load_split::key_name(task)),
                &pretty(&Value::Array(key)),
            )?;
        }
    }
    Ok(())
}

/// Writes `items` synthetic issues under `out` (see the module docs), covers `size` pixels
/// square.
pub fn write_mac(out: &Path, items: usize, seed: u64, size: u32) -> Result<Summary> {
    if items < 4 {
        return Err(OperatorError::data(
            "synth mac",
            format!(
                "--items {items}: at least 4 are needed (an item has 3 same-journal distractors)"
            ),
        ));
    }
    if !(8..=1024).contains(&size) {
        return Err(OperatorError::data(
            "synth mac",
            format!("image size {size}: use 8 to 1024"),
        ));
    }
    let journals = (items / 4).clamp(1, JOURNALS.len());
    let mut issues: Vec<Issue> = Vec::with_capacity(items);
    for i in 0..items {
        let journal = JOURNALS[i % journals];
        let issue = format!("2024_{}", i / journals + 1);
        let key = format!("{journal}_{issue}");
        let subject = SUBJECTS[pick(seed, &key, "subject", SUBJECTS.len())];
        let (color_name, color) = COLORS[pick(seed, &key, "color", COLORS.len())];
        let shape = pick(seed, &key, "shape", SHAPES.len());
        let topic = TOPICS[pick(seed, &key, "topic", TOPICS.len())];
        let story = format!(
            "On the cover: {subject} in {color_name}, drawn as {}. The image illustrates research on {topic}, reported in issue {issue} of {}.",
            SHAPES[shape],
            journal.replace('_', " ")
        );
        issues.push(Issue {
            journal,
            issue,
            key,
            story,
            color,
            shape,
        });
    }
    let cover_path = |is: &Issue| format!("Cover/{}/{}.png", is.journal, is.issue);
    for is in &issues {
        write_file(&out.join(cover_path(is)), &cover_png(seed, is, size))?;
        write_file(
            &out.join(format!("Story/{}/{}.txt", is.journal, is.issue)),
            format!("{}\n", is.story).as_bytes(),
        )?;
    }
    let template = Template::default();
    let (mut i2t, mut t2i) = (Vec::new(), Vec::new());
    for (i, is) in issues.iter().enumerate() {
        let others: Vec<String> = (0..issues.len())
            .filter(|&j| j != i && issues[j].journal == is.journal)
            .map(|j| format!("{j:08}"))
            .collect();
        for task in [Task::ImageToText, Task::TextToImage] {
            let tag = match task {
                Task::ImageToText => "i2t",
                Task::TextToImage => "t2i",
            };
            let id = format!("{tag}_{}", is.key);
            let chosen: Vec<usize> = ranked(seed, &[id.as_bytes(), b"distractor"], &others)
                .into_iter()
                .take(3)
                .map(|s| s.parse().unwrap_or_default())
                .collect();
            let answer = pick(seed, &id, "answer", 4);
            let mut order = chosen;
            order.insert(answer, i);
            let options: [String; 4] = std::array::from_fn(|k| match task {
                Task::ImageToText => issues[order[k]].story.clone(),
                Task::TextToImage => cover_path(&issues[order[k]]),
            });
            let mut item = Item {
                id: id.clone(),
                source_id: id,
                variant: "original".into(),
                journal: is.journal.to_string(),
                task,
                question: match task {
                    Task::ImageToText => I2T_QUESTION.into(),
                    Task::TextToImage => T2I_QUESTION.into(),
                },
                cover_image: (task == Task::ImageToText).then(|| cover_path(is)),
                story: (task == Task::TextToImage).then(|| is.story.clone()),
                options,
                answer: Some(answer),
                system: String::new(),
                input: String::new(),
                output: String::new(),
                images: Vec::new(),
            };
            template.render(&mut item);
            match task {
                Task::ImageToText => i2t.push(item),
                Task::TextToImage => t2i.push(item),
            }
        }
    }
    let records = |items: &[Item]| Value::Array(items.iter().map(record).collect());
    write_file(&out.join("mac_image2text.json"), &pretty(&records(&i2t)))?;
    write_file(&out.join("mac_text2image.json"), &pretty(&records(&t2i)))?;
    write_file(&out.join("image2text_info.csv"), csv(&i2t).as_bytes())?;
    write_splits(&out.join("datasets"), &i2t, Task::ImageToText, seed)?;
    write_splits(&out.join("datasets"), &t2i, Task::TextToImage, seed)?;
    write_file(&out.join("text2image_info.csv"), csv(&t2i).as_bytes())?;
    Ok(Summary {
        issues: items,
        journals,
    })
}
