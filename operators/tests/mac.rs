//! The MAC-Bench operators end to end through the harness, on synthetic data from
//! `mac::synth` and on hand-written records.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use expflow_engine::harness::Harness;
use expflow_engine::{Operator, PortType};
use expflow_operators::mac::{self, Item, Task};
use expflow_operators::table_io::read_table;
use serde_json::{Value, json};

fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

struct Bench {
    _dir: tempfile::TempDir,
    root: PathBuf,
    harness: Harness,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let harness = Harness::new(&root.join("ws")).unwrap();
        Bench {
            _dir: dir,
            root,
            harness,
        }
    }

    fn synth(&self, items: usize, seed: u64) -> PathBuf {
        let out = self.root.join(format!("synth-{items}-{seed}"));
        mac::synth::write_mac(&out, items, seed, 16).unwrap();
        out
    }

    fn run(
        &mut self,
        op: &dyn Operator,
        inputs: &[(&str, PortType, &Path)],
        params: Value,
    ) -> Result<BTreeMap<String, PathBuf>, String> {
        self.harness
            .run(op, inputs, params, &[])
            .map(|r| r.outputs)
            .map_err(|e| e.to_string())
    }

    fn load(&mut self, file: &Path, params: Value) -> Result<PathBuf, String> {
        Ok(self.run(&mac::Load, &[("src", PortType::File, file)], params)?["table"].clone())
    }

    fn load_text(&mut self, text: &str, params: Value) -> Result<PathBuf, String> {
        let p = self
            .root
            .join(format!("in-{}.txt", blake3::hash(text.as_bytes()).to_hex()));
        std::fs::write(&p, text).unwrap();
        self.load(&p, params)
    }

    fn apply(&mut self, op: &dyn Operator, table: &Path, params: Value) -> PathBuf {
        self.run(op, &[("table", PortType::Table, table)], params)
            .unwrap()["table"]
            .clone()
    }
}

fn items(table: &Path) -> Vec<Item> {
    mac::df_to_items("test", &read_table(table).unwrap()).unwrap()
}

#[test]
fn synth_is_deterministic_and_its_files_load_alike() {
    let mut b = Bench::new();
    let a = b.synth(12, 7);
    let again = b.root.join("again");
    mac::synth::write_mac(&again, 12, 7, 16).unwrap();
    let (fa, fb) = (files(&a), files(&again));
    assert_eq!(fa, fb, "same seed, same bytes");
    assert!(
        fa.keys()
            .any(|p| p.starts_with("Cover") && p.extension().is_some_and(|e| e == "png"))
    );
    let other = b.synth(12, 8);
    assert_ne!(files(&other), fa, "another seed gives other data");

    let from_json = items(&b.load(&a.join("mac_image2text.json"), json!({})).unwrap());
    let from_csv = items(&b.load(&a.join("image2text_info.csv"), json!({})).unwrap());
    assert_eq!(from_json.len(), 12);
    assert_eq!(from_json, from_csv, "alpaca and CSV give the same items");
    let t2i_json = items(&b.load(&a.join("mac_text2image.json"), json!({})).unwrap());
    let t2i_csv = items(&b.load(&a.join("text2image_info.csv"), json!({})).unwrap());
    assert_eq!(t2i_json, t2i_csv);
    for it in from_json.iter().chain(&t2i_json) {
        it.validate().unwrap();
        // Distractors come from the same journal.
        for o in &it.options {
            let j = match it.task {
                Task::ImageToText => o.contains(&it.journal.replace('_', " ")),
                Task::TextToImage => mac::journal_of(o) == it.journal,
            };
            assert!(j, "{}: option {o} from another journal", it.id);
        }
        for p in &it.images {
            assert!(a.join(p).is_file(), "{p} exists");
        }
    }
    assert_eq!(t2i_json[0].task, Task::TextToImage);
    assert!(
        t2i_json[0]
            .story
            .as_deref()
            .unwrap()
            .starts_with("On the cover")
    );
}

const GOOD: &str = "<image>Which of the following options best describe the cover image?\nA: alpha\nB: beta\nC: gamma\nD: delta";

#[test]
fn load_checks_records_and_names_them() {
    let mut b = Bench::new();
    let rec = |input: &str, images: Value, output: &str| json!({"id": "x7", "system": "s", "input": input, "output": output, "images": images});
    let ok = rec(GOOD, json!(["Cover/Nature/2024_1.png"]), "C");
    let t = b.load_text(&json!([ok]).to_string(), json!({})).unwrap();
    let it = &items(&t)[0];
    assert_eq!(
        (it.journal.as_str(), it.answer, it.options[1].as_str()),
        ("Nature", Some(2), "beta")
    );
    assert_eq!(it.input, GOOD, "the record's text is kept as it is");

    let two = rec(
        &format!("<image>{GOOD}"),
        json!(["Cover/Nature/2024_1.png"]),
        "C",
    );
    let e = b
        .load_text(&json!([ok, two]).to_string(), json!({}))
        .unwrap_err();
    assert!(
        e.contains("record 1 (id `x7`)")
            && e.contains("2 `<image>` placeholder(s) in the text for 1 image path(s)"),
        "{e}"
    );

    let no_c = rec(
        &GOOD.replace("C: gamma", "gamma"),
        json!(["Cover/Nature/2024_1.png"]),
        "C",
    );
    let e = b
        .load_text(&json!([no_c]).to_string(), json!({}))
        .unwrap_err();
    assert!(
        e.contains("record 0 (id `x7`)") && e.contains("no line starting `C:`"),
        "{e}"
    );

    let no_letter = json!({"input": GOOD, "output": "maybe", "images": ["a/b.png"]});
    let e = b
        .load_text(&format!("{no_letter}\n"), json!({}))
        .unwrap_err();
    assert!(
        e.contains("record 0 (id `mac-0`)") && e.contains("no answer letter"),
        "{e}"
    );

    let three = rec(
        "<image><image><image>x",
        json!(["a.png", "b.png", "c.png"]),
        "A",
    );
    let e = b
        .load_text(&json!([three]).to_string(), json!({}))
        .unwrap_err();
    assert!(e.contains("has 3 image(s)"), "{e}");

    let csv = "journal,id,question,cover_image,answer,option_A,option_B,option_C,option_D\nCell,2018_1,Q?,Cover/Cell/2018_1.png,E,a,b,c,d\n";
    let e = b.load_text(csv, json!({})).unwrap_err();
    assert!(
        e.contains("record 0 (id `2018_1`)") && e.contains("answer `E`"),
        "{e}"
    );
    let csv_t2i = "journal,id,question,cover_image,answer,option_A,option_B,option_C,option_D\nCell,2018,Q?,\"A story, with a comma\",B,x/1.png,x/2.png,x/3.png,not an image\n";
    let e = b.load_text(csv_t2i, json!({})).unwrap_err();
    assert!(
        e.contains("record 0 (id `2018`)") && e.contains("option D"),
        "{e}"
    );
}

#[test]
fn permutation_remaps_the_answer_and_draws_distractors_from_the_journal() {
    let mut b = Bench::new();
    let d = b.synth(40, 1);
    let t = b.load(&d.join("mac_image2text.json"), json!({})).unwrap();
    let orig = items(&t);
    let p1 = b.apply(&mac::PermuteOptions, &t, json!({"seed": 3, "copies": 2}));
    let p2 = b.apply(&mac::PermuteOptions, &t, json!({"seed": 3, "copies": 2}));
    assert_eq!(
        std::fs::read(&p1).unwrap(),
        std::fs::read(&p2).unwrap(),
        "seeded: same bytes"
    );
    let out = items(&p1);
    assert_eq!(out.len(), orig.len() * 3);
    assert_eq!(&out[..orig.len()], &orig[..], "originals first");
    let by_id: BTreeMap<&str, &Item> = orig.iter().map(|i| (i.id.as_str(), i)).collect();
    let mut moved = 0;
    for c in &out[orig.len()..] {
        let o = by_id[c.source_id.as_str()];
        assert_eq!(
            c.options[c.answer.unwrap()],
            o.options[o.answer.unwrap()],
            "{}: gold follows",
            c.id
        );
        let (a, b2): (BTreeSet<_>, BTreeSet<_>) =
            (c.options.iter().collect(), o.options.iter().collect());
        assert_eq!(a, b2, "same options, other order");
        assert!(c.id.starts_with(&o.id) && c.variant.starts_with("perm"));
        assert!(c.input.contains(&format!(
            "{}: {}",
            mac::LETTERS[c.answer.unwrap()],
            o.options[o.answer.unwrap()]
        )));
        assert_eq!(c.output, mac::LETTERS[c.answer.unwrap()].to_string());
        c.validate().unwrap();
        moved += usize::from(c.answer.unwrap() != o.answer.unwrap());
    }
    assert!(moved > orig.len(), "most copies move the answer ({moved})");
    let other = items(&b.apply(&mac::PermuteOptions, &t, json!({"seed": 4, "copies": 2})));
    assert_ne!(other, out);

    // New distractors: from the same journal, never the gold, four distinct options.
    let nd = items(&b.apply(
        &mac::PermuteOptions,
        &t,
        json!({"seed": 3, "new_distractors": 2, "keep_original": false}),
    ));
    assert_eq!(nd.len(), orig.len());
    let mut pool: BTreeMap<&str, BTreeSet<&String>> = BTreeMap::new();
    for o in &orig {
        pool.entry(o.journal.as_str())
            .or_default()
            .extend(o.options.iter());
    }
    let mut replaced = 0;
    for c in &nd {
        let o = by_id[c.source_id.as_str()];
        assert_eq!(c.options[c.answer.unwrap()], o.options[o.answer.unwrap()]);
        assert_eq!(c.options.iter().collect::<BTreeSet<_>>().len(), 4);
        for x in &c.options {
            assert!(
                pool[c.journal.as_str()].contains(x),
                "{}: {x} not from {}",
                c.id,
                c.journal
            );
        }
        replaced += c.options.iter().filter(|x| !o.options.contains(x)).count();
    }
    assert_eq!(replaced, 2 * orig.len());
}

#[test]
fn templates_re_render_items_and_are_checked() {
    let mut b = Bench::new();
    let d = b.synth(8, 2);
    let t = b.load(&d.join("mac_text2image.json"), json!({})).unwrap();
    let orig = items(&t);
    let templates = json!([
        {"name": "terse", "system": "Reply with A, B, C or D.", "text2image": "Story: {story}\n{images}\n{question}"},
        {"name": "paren", "option": "({letter}) {text}", "output": "The answer is {answer}."}
    ]);
    let out = items(&b.apply(
        &mac::VaryTemplates,
        &t,
        json!({"templates": templates, "per_item": 0, "keep_original": false}),
    ));
    assert_eq!(out.len(), 2 * orig.len());
    for (c, o) in out.iter().zip(orig.iter().flat_map(|o| [o, o])) {
        c.validate().unwrap();
        assert_eq!(
            (c.answer.unwrap(), &c.options),
            (o.answer.unwrap(), &o.options)
        );
        if c.variant == "tpl-terse" {
            assert!(c.input.starts_with("Story: On the cover"), "{}", c.input);
            assert_eq!(c.system, "Reply with A, B, C or D.");
        } else {
            assert_eq!(c.variant, "tpl-paren");
            assert_eq!(c.output, format!("The answer is {}.", o.answer_letter()));
        }
    }
    let one = items(&b.apply(
        &mac::VaryTemplates,
        &t,
        json!({"templates": templates, "seed": 5}),
    ));
    assert_eq!(one.len(), 2 * orig.len(), "originals + one template each");

    let bad = json!({"templates": [{"name": "x", "image2text": "{question}\n{options}"}]});
    let e = b
        .run(&mac::VaryTemplates, &[("table", PortType::Table, &t)], bad)
        .unwrap_err();
    assert!(e.contains("0 `<image>` placeholder(s), 1 needed"), "{e}");
    let bad = json!({"templates": [{"name": "x", "output": "{letter}"}]});
    let e = b
        .run(&mac::VaryTemplates, &[("table", PortType::Table, &t)], bad)
        .unwrap_err();
    assert!(e.contains("unknown placeholder `{letter}`"), "{e}");
}

#[test]
fn recombination_asks_the_same_pairs_the_other_way() {
    let mut b = Bench::new();
    let d = b.synth(12, 3);
    let i2t_table = b.load(&d.join("mac_image2text.json"), json!({})).unwrap();
    let i2t = items(&i2t_table);
    let out = items(&b.apply(
        &mac::Recombine,
        &i2t_table,
        json!({"seed": 1, "keep_original": false}),
    ));
    assert_eq!(out.len(), i2t.len());
    let cover_of: BTreeMap<String, String> = i2t
        .iter()
        .map(|i| {
            (
                i.options[i.answer.unwrap()].clone(),
                i.cover_image.clone().unwrap(),
            )
        })
        .collect();
    for (n, o) in out.iter().zip(&i2t) {
        assert_eq!(n.task, Task::TextToImage);
        assert_eq!(n.pair(), o.pair(), "same pair");
        assert_eq!(n.answer.unwrap(), o.answer.unwrap(), "same letter");
        assert_eq!(n.question, mac::T2I_QUESTION);
        assert_eq!(n.source_id, o.id);
        for k in 0..4 {
            // Every story of these items is some issue's gold story, so each distractor is
            // the cover of the distractor story at the same letter.
            assert_eq!(n.options[k], cover_of[&o.options[k]], "{} option {k}", n.id);
        }
        n.validate().unwrap();
    }
    // The original text2image items already ask those pairs: nothing new for them.
    let t2i_table = b.load(&d.join("mac_text2image.json"), json!({})).unwrap();
    let both = b
        .run(
            &expflow_operators::table::Concat,
            &[
                ("a", PortType::Table, &i2t_table),
                ("b", PortType::Table, &t2i_table),
            ],
            json!({}),
        )
        .unwrap();
    let all = items(&b.apply(&mac::Recombine, &both["table"], json!({})));
    assert_eq!(
        all.len(),
        2 * i2t.len(),
        "pairs already asked both ways are skipped"
    );
    // text2image → image2text.
    let back = items(&b.apply(
        &mac::Recombine,
        &t2i_table,
        json!({"keep_original": false, "to": "image2text"}),
    ));
    assert_eq!(back.len(), i2t.len());
    for n in &back {
        assert_eq!(n.task, Task::ImageToText);
        n.validate().unwrap();
        let story = &n.options[n.answer.unwrap()];
        assert_eq!(&cover_of[story], n.cover_image.as_ref().unwrap());
    }
}

#[test]
fn writers_give_llamafactory_datasets_and_grader_files() {
    let mut b = Bench::new();
    let d = b.synth(8, 4);
    let t = b.load(&d.join("mac_text2image.json"), json!({})).unwrap();
    let orig = items(&t);
    let info = b.root.join("info.json");
    std::fs::write(&info, r#"{"identity": {"file_name": "identity.json"}}"#).unwrap();
    let out = b
        .run(
            &mac::ExportLlamaFactory,
            &[
                ("table", PortType::Table, &t),
                ("info", PortType::File, &info),
                ("media", PortType::Dir, &d),
            ],
            json!({"name": "mac_test_t2i"}),
        )
        .unwrap();
    let ds = &out["dataset"];
    let recs: Value =
        serde_json::from_slice(&std::fs::read(ds.join("mac_test_t2i.json")).unwrap()).unwrap();
    let recs = recs.as_array().unwrap();
    assert_eq!(recs.len(), orig.len());
    assert_eq!(recs[0]["images"].as_array().unwrap().len(), 4);
    assert_eq!(
        recs[0]["input"]
            .as_str()
            .unwrap()
            .matches("<image>")
            .count(),
        4
    );
    for p in recs[0]["images"].as_array().unwrap() {
        assert!(ds.join(p.as_str().unwrap()).is_file(), "images copied");
    }
    let reg: Value =
        serde_json::from_slice(&std::fs::read(ds.join("dataset_info.json")).unwrap()).unwrap();
    assert_eq!(
        reg["identity"]["file_name"], "identity.json",
        "existing entries kept"
    );
    assert_eq!(
        reg["mac_test_t2i"],
        json!({"file_name": "mac_test_t2i.json", "formatting": "alpaca", "columns": {"prompt": "system", "query": "input", "response": "output", "images": "images"}})
    );
    let ids: Vec<String> =
        serde_json::from_slice(&std::fs::read(ds.join("mac_test_t2i.ids.json")).unwrap()).unwrap();
    assert_eq!(ids, orig.iter().map(|i| i.id.clone()).collect::<Vec<_>>());

    let missing = b.root.join("empty-media");
    std::fs::create_dir_all(&missing).unwrap();
    let e = b
        .run(
            &mac::ExportLlamaFactory,
            &[
                ("table", PortType::Table, &t),
                ("media", PortType::Dir, &missing),
            ],
            json!({}),
        )
        .unwrap_err();
    assert!(
        e.contains(&format!("record 0 (id `{}`)", orig[0].id))
            && e.contains("not in the `media` directory"),
        "{e}"
    );

    let key = b
        .run(
            &mac::ExportAnswers,
            &[("table", PortType::Table, &t)],
            json!({}),
        )
        .unwrap();
    let key: Value = serde_json::from_slice(&std::fs::read(&key["file"]).unwrap()).unwrap();
    let want: Vec<Value> = orig
        .iter()
        .map(|i| json!({"id": i.id, "output": i.answer_letter().to_string()}))
        .collect();
    assert_eq!(key, Value::Array(want));
    // Free-text predictions: extracted, unparsable → "None", filtered by task.
    let preds = b.root.join("preds.csv");
    std::fs::write(&preds, "id,task,predict\na,image2text,\"Reasoning.\nAnswer: B\"\nb,image2text,no idea\nc,text2image,C\n").unwrap();
    let pt = b
        .run(
            &expflow_operators::io::Load,
            &[("src", PortType::File, &preds)],
            json!({}),
        )
        .unwrap();
    let f = b
        .run(
            &mac::ExportAnswers,
            &[("table", PortType::Table, &pt["table"])],
            json!({"column": "predict", "task": "image2text"}),
        )
        .unwrap();
    let got: Value = serde_json::from_slice(&std::fs::read(&f["file"]).unwrap()).unwrap();
    assert_eq!(
        got,
        json!([{"id": "a", "output": "B"}, {"id": "b", "output": "None"}])
    );
}

fn load_split(b: &mut Bench, dir: &Path, params: Value) -> Result<PathBuf, String> {
    Ok(b.run(&mac::LoadSplit, &[("datasets", PortType::Dir, dir)], params)?["table"].clone())
}

#[test]
fn the_tasks_six_files_load_as_train_dev_and_unanswered_test() {
    let mut b = Bench::new();
    let d = b.synth(24, 5);
    let ds = d.join("datasets");
    for task in ["image2text", "text2image"] {
        for split in ["train", "dev", "test"] {
            assert!(ds.join(format!("{task}_{split}.json")).is_file());
        }
    }
    // The test files are as the task gives them: an id each, `output` null.
    let raw: Value =
        serde_json::from_slice(&std::fs::read(ds.join("image2text_test.json")).unwrap()).unwrap();
    for r in raw.as_array().unwrap() {
        assert!(r["output"].is_null() && r["id"].is_string(), "{r}");
    }
    let whole = items(&b.load(&d.join("mac_image2text.json"), json!({})).unwrap());
    let gold: BTreeMap<&str, Option<usize>> =
        whole.iter().map(|i| (i.id.as_str(), i.answer)).collect();

    let train = items(&load_split(&mut b, &ds, json!({"split": "train"})).unwrap());
    let dev = items(&load_split(&mut b, &ds, json!({"split": "dev"})).unwrap());
    assert!(train.iter().chain(&dev).all(|i| i.answer.is_some()));
    assert_eq!(
        train.iter().filter(|i| i.task == Task::TextToImage).count(),
        train.len() / 2,
        "both tasks' training files"
    );
    // Without its key (the task's own data), test items have no answer.
    let bare = b.root.join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    for split in ["train", "dev", "test"] {
        for task in ["image2text", "text2image"] {
            let f = format!("{task}_{split}.json");
            std::fs::copy(ds.join(&f), bare.join(&f)).unwrap();
        }
    }
    let test = items(
        &load_split(
            &mut b,
            &bare,
            json!({"split": "test", "task": "image2text"}),
        )
        .unwrap(),
    );
    assert!(
        !test.is_empty()
            && test
                .iter()
                .all(|i| i.answer.is_none() && i.output.is_empty())
    );
    // With the synthetic key beside them, the withheld answers come back.
    let keyed =
        items(&load_split(&mut b, &ds, json!({"split": "test", "task": "image2text"})).unwrap());
    assert_eq!(keyed.len(), test.len());
    for it in &keyed {
        assert_eq!(it.answer, gold[it.id.as_str()], "{}", it.id);
    }
    assert_eq!(
        train.len() + dev.len() + 2 * test.len(),
        2 * whole.len(),
        "every item in exactly one split"
    );
    // Test items are answered, never augmented.
    let t = load_split(&mut b, &bare, json!({"split": "test"})).unwrap();
    let e = b
        .run(
            &mac::PermuteOptions,
            &[("table", PortType::Table, &t)],
            json!({}),
        )
        .unwrap_err();
    assert!(e.contains("has no answer (a test item)"), "{e}");

    // A training record without a valid letter: an error naming the file and the record.
    let mut recs: Value =
        serde_json::from_slice(&std::fs::read(bare.join("text2image_train.json")).unwrap())
            .unwrap();
    recs[2]["output"] = Value::Null;
    std::fs::write(bare.join("text2image_train.json"), recs.to_string()).unwrap();
    let e = load_split(&mut b, &bare, json!({"split": "train"})).unwrap_err();
    assert!(
        e.contains("text2image_train.json") && e.contains("record 2 ") && e.contains("no `output`"),
        "{e}"
    );
    recs[2]["output"] = json!("E");
    std::fs::write(bare.join("text2image_train.json"), recs.to_string()).unwrap();
    let e = load_split(&mut b, &bare, json!({"split": "train"})).unwrap_err();
    assert!(
        e.contains("text2image_train.json")
            && e.contains("record 2 ")
            && e.contains("no answer letter"),
        "{e}"
    );
    std::fs::remove_file(bare.join("image2text_dev.json")).unwrap();
    let e = load_split(&mut b, &bare, json!({"split": "dev"})).unwrap_err();
    assert!(
        e.contains("image2text_dev.json") && e.contains("six files"),
        "{e}"
    );
    // A key that misses a test record is refused.
    let mut key: Value =
        serde_json::from_slice(&std::fs::read(ds.join("text2image_test_key.json")).unwrap())
            .unwrap();
    let dropped = key.as_array_mut().unwrap().remove(0);
    std::fs::write(ds.join("text2image_test_key.json"), key.to_string()).unwrap();
    let e = load_split(&mut b, &ds, json!({"split": "test"})).unwrap_err();
    assert!(
        e.contains("text2image_test_key.json") && e.contains(dropped["id"].as_str().unwrap()),
        "{e}"
    );
}

#[test]
fn recombination_never_asks_what_a_held_out_item_asks() {
    let mut b = Bench::new();
    let d = b.synth(24, 6);
    let ds = d.join("datasets");
    let train = load_split(&mut b, &ds, json!({"split": "train"})).unwrap();
    let test = load_split(&mut b, &ds, json!({"split": "test", "key": false})).unwrap();
    let free = items(&b.apply(&mac::Recombine, &train, json!({"keep_original": false})));
    let held: BTreeSet<(Task, String)> = items(&test).iter().map(|i| (i.task, i.given())).collect();
    let leaking = free
        .iter()
        .filter(|n| held.contains(&(n.task, n.given())))
        .count();
    assert!(
        leaking > 0,
        "without `exclude`, some recombined items ask test questions"
    );
    let out = b
        .run(
            &mac::Recombine,
            &[
                ("table", PortType::Table, &train),
                ("exclude", PortType::Table, &test),
            ],
            json!({"keep_original": false}),
        )
        .unwrap();
    let kept = items(&out["table"]);
    assert_eq!(kept.len(), free.len() - leaking);
    assert!(kept.iter().all(|n| !held.contains(&(n.task, n.given()))));
}

fn clip_tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime/encoders/tests/fixtures/clip-tiny")
}

#[test]
fn hard_distractors_are_the_nearest_in_clip_space_and_rank_the_curriculum() {
    let mut b = Bench::new();
    let d = b.synth(24, 9);
    let i2t = b.load(&d.join("mac_image2text.json"), json!({})).unwrap();
    let t2i = b.load(&d.join("mac_text2image.json"), json!({})).unwrap();
    let both = b
        .run(
            &expflow_operators::table::Concat,
            &[("a", PortType::Table, &i2t), ("b", PortType::Table, &t2i)],
            json!({}),
        )
        .unwrap()["table"]
        .clone();
    let orig = items(&both);
    let run = |b: &mut Bench, params: Value| {
        let out = b
            .run(
                &mac::HardDistractors,
                &[
                    ("table", PortType::Table, &both),
                    ("model", PortType::Model, &clip_tiny()),
                    ("media", PortType::Dir, &d),
                ],
                params,
            )
            .unwrap();
        let df = read_table(&out["table"]).unwrap();
        let diff: Vec<f64> = df
            .column("difficulty")
            .unwrap()
            .f64()
            .unwrap()
            .into_no_null_iter()
            .collect();
        (mac::df_to_items("test", &df).unwrap(), diff)
    };
    let (kept, base_diff) = run(&mut b, json!({"replace": 0}));
    assert_eq!(kept, orig, "replace 0 keeps every option");
    let (hard, hard_diff) = run(&mut b, json!({"replace": 3}));
    assert_eq!(hard.len(), orig.len());
    for ((h, o), (dh, d0)) in hard.iter().zip(&orig).zip(hard_diff.iter().zip(&base_diff)) {
        h.validate().unwrap();
        assert_eq!(h.answer, o.answer, "the gold letter stays");
        let a = h.answer.unwrap();
        assert_eq!(h.options[a], o.options[a]);
        // Same journal, and at least as close to the gold as the distractors they replace.
        for (k, opt) in h.options.iter().enumerate() {
            let j = match h.task {
                Task::ImageToText => opt.contains(&h.journal.replace('_', " ")),
                Task::TextToImage => mac::journal_of(opt) == h.journal,
            };
            assert!(j, "{} option {k}: {opt}", h.id);
        }
        assert!(dh >= &(d0 - 1e-9), "{}: {dh} < {d0}", h.id);
    }
    assert!(
        hard.iter().any(|h| h.id.ends_with("#sim")),
        "some items get nearer distractors"
    );
    // Deterministic: same bytes again.
    assert_eq!(run(&mut b, json!({"replace": 3})).1, hard_diff);

    // Curricula: easy first sorts by difficulty; repeat_hard adds the hardest quarter again.
    let (easy, easy_diff) = run(&mut b, json!({"replace": 3, "curriculum": "easy_first"}));
    assert!(easy_diff.windows(2).all(|w| w[0] <= w[1]), "{easy_diff:?}");
    assert_eq!(easy.len(), orig.len());
    let (rep, rep_diff) = run(
        &mut b,
        json!({"replace": 3, "curriculum": "repeat_hard", "hard_fraction": 0.25}),
    );
    let extra = (orig.len() as f64 * 0.25).round() as usize;
    assert_eq!(rep.len(), orig.len() + extra);
    let mut sorted = hard_diff.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let threshold = sorted[extra - 1];
    for (it, d) in rep[orig.len()..].iter().zip(&rep_diff[orig.len()..]) {
        assert!(it.id.ends_with("#hard") && *d >= threshold, "{} {d}", it.id);
    }
}
