//! LLaMA-Factory for real (`.ci/run` installs it and sets `EXPFLOW_LLAMAFACTORY`; under
//! `CI=true` its absence fails these tests): a LoRA SFT of a tiny random Qwen2.5-VL made by
//! `train.tiny_model`, through `train.sft` with `backend: llamafactory`, on a MAC dataset
//! with cover images exported by `mac.export_llamafactory`, checkpoints saved at each
//! evaluation, every checkpoint scored on the dev set by expflow on the native runtime, and
//! the best one by dev accuracy the node's model. Then parity: the native runtime applying
//! the imported adapter computes what LLaMA-Factory's own merge (`llamafactory-cli export`,
//! PEFT's `merge_and_unload`) computes.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use expflow_engine::PortType;
use expflow_engine::harness::Harness;
use expflow_models::{ChatMessage, ContentPart, ModelDir, Needs, Trainable};
use expflow_operators::mac;
use expflow_operators::table_io::read_table;
use expflow_operators::train::{Sft, TinyModel};
use expflow_vlm::VisionLanguageModel;
use polars::prelude::*;
use serde_json::{Value, json};

const COLORS: [(&str, [u8; 3]); 4] = [
    ("red", [220, 30, 30]),
    ("green", [30, 200, 60]),
    ("blue", [30, 60, 220]),
    ("yellow", [230, 220, 40]),
];

/// MAC image2text records in the task's format, covers written under `media/covers/`: the
/// answer is the option naming the cover's colour.
fn records(media: &Path, name: &str, n: usize, offset: usize) -> PathBuf {
    std::fs::create_dir_all(media.join("covers")).unwrap();
    let mut recs = Vec::new();
    for i in 0..n {
        let k = i + offset;
        let (color, rgb) = COLORS[k % 4];
        let cover = format!("covers/{color}.png");
        let px: Vec<u8> = (0..56 * 56).flat_map(|_| rgb).collect();
        std::fs::write(media.join(&cover), mac::png::encode_rgb(56, 56, &px)).unwrap();
        let answer = (k / 4) % 4;
        let mut options: Vec<String> = COLORS
            .iter()
            .filter(|(c, _)| *c != color)
            .map(|(c, _)| format!("A {c} cover story"))
            .collect();
        options.insert(answer, format!("A {color} cover story"));
        let letters = ["A", "B", "C", "D"];
        let listed: Vec<String> = options
            .iter()
            .zip(letters)
            .map(|(o, l)| format!("{l}: {o}"))
            .collect();
        recs.push(json!({
            "id": format!("{name}_{k}"),
            "journal": "Nature",
            "system": "Answer with one letter.",
            "input": format!("<image>Which of the following options best describe the cover image?\n{}", listed.join("\n")),
            "output": letters[answer],
            "images": [cover],
        }));
    }
    let path = media.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&recs).unwrap()).unwrap();
    path
}

fn column_f64(df: &DataFrame, name: &str) -> Vec<Option<f64>> {
    df.column(name)
        .unwrap_or_else(|_| panic!("no `{name}` column in {:?}", df.get_column_names()))
        .cast(&DataType::Float64)
        .unwrap()
        .f64()
        .unwrap()
        .iter()
        .collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn llamafactory_sft_of_a_tiny_vlm_keeps_the_checkpoint_with_the_best_dev_accuracy() {
    let Some(tool) = expflow_tests::skip::llamafactory_cli() else {
        return;
    };
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let media = dir.path().join("media");
    let train_file = records(&media, "train", 8, 0);
    let dev_file = records(&media, "dev", 4, 8);
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let mut run =
        |op: &dyn expflow_engine::Operator, inputs: &[(&str, PortType, &Path)], params: Value| {
            h.run(op, inputs, params, &[])
                .unwrap_or_else(|e| panic!("{}: {e}", op.kind()))
        };
    let train = run(
        &mac::Load,
        &[("src", PortType::File, &train_file)],
        json!({}),
    )
    .outputs["table"]
        .clone();
    let dev =
        run(&mac::Load, &[("src", PortType::File, &dev_file)], json!({})).outputs["table"].clone();
    let train_ds = run(
        &mac::ExportLlamaFactory,
        &[
            ("table", PortType::Table, &train),
            ("media", PortType::Dir, &media),
        ],
        json!({"name": "mac_train"}),
    )
    .outputs["dataset"]
        .clone();
    let dataset = run(
        &mac::ExportLlamaFactory,
        &[
            ("table", PortType::Table, &dev),
            ("base", PortType::Dir, &train_ds),
            ("media", PortType::Dir, &media),
        ],
        json!({"name": "mac_dev"}),
    )
    .outputs["dataset"]
        .clone();
    assert!(dataset.join("covers/red.png").is_file(), "covers exported");
    let base = run(
        &TinyModel,
        &[("text", PortType::Table, &train)],
        json!({"kind": "vision_language", "params": 100000, "vocab": 400,
               "columns": ["system", "input", "output"], "image_tokens": 16, "seed": 1}),
    )
    .outputs["model"]
        .clone();
    let sft = run(
        &Sft,
        &[
            ("dataset", PortType::Dir, &dataset),
            ("model", PortType::Model, &base),
        ],
        json!({"backend": "llamafactory", "tool": tool, "dataset_name": "mac_train",
               "eval_dataset_name": "mac_dev", "template": "qwen2_vl", "bf16": false,
               "max_steps": 6, "eval_steps": 2, "logging_steps": 1, "batch_size": 2,
               "learning_rate": 0.01, "lora_rank": 4, "lora_alpha": 8.0, "max_len": 512,
               "merge": false, "eval_metric": "accuracy", "eval_max_tokens": 4,
               "extra": {"image_max_pixels": 3136, "preprocessing_num_workers": 1,
                         "dataloader_num_workers": 0}}),
    );
    let metrics = read_table(&sft.outputs["metrics"]).unwrap();
    let steps: Vec<Option<f64>> = column_f64(&metrics, "step");
    let acc = column_f64(&metrics, "eval_accuracy");
    let scored: Vec<(usize, f64)> = steps
        .iter()
        .zip(&acc)
        .filter_map(|(s, a)| Some((s.unwrap() as usize, (*a)?)))
        .collect();
    assert_eq!(
        scored.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![2, 4, 6],
        "one dev accuracy per saved checkpoint: {metrics}"
    );
    for (_, a) in &scored {
        assert!(
            (0.0..=1.0).contains(a) && (a * 4.0).fract() == 0.0,
            "4 dev items: {a}"
        );
    }
    let losses = column_f64(&metrics, "loss");
    assert!(
        losses.iter().flatten().count() >= 6,
        "train loss per logged step: {metrics}"
    );
    assert!(
        column_f64(&metrics, "eval_loss").iter().flatten().count() >= 3,
        "LLaMA-Factory's eval_loss at each evaluation: {metrics}"
    );
    // The kept adapter is the checkpoint with the best dev accuracy (earliest among equals).
    let best = scored
        .iter()
        .fold(None::<(usize, f64)>, |b, &(s, a)| match b {
            Some((_, x)) if x >= a => b,
            _ => Some((s, a)),
        })
        .unwrap();
    assert!(
        sft.log
            .contains(&format!("best checkpoint by dev accuracy: step {}", best.0)),
        "{}",
        sft.log
    );
    let model = &sft.outputs["model"];
    let from = sft
        .log
        .lines()
        .find_map(|l| {
            l.split_once("adapter from ")
                .map(|(_, p)| p.trim().to_string())
        })
        .unwrap_or_default();
    assert!(
        from.ends_with(&format!("checkpoint-{}", best.0)),
        "the adapter comes from the best checkpoint's directory, not {from:?}"
    );

    // Parity: LLaMA-Factory's merge of the kept adapter against the native runtime applying it.
    let merged = dir.path().join("merged");
    let cfg = dir.path().join("export.yaml");
    std::fs::write(
        &cfg,
        expflow_operators::tools::llamafactory::export_yaml(
            &base.display().to_string(),
            model,
            "qwen2_vl",
            &merged,
        ) + "infer_dtype: float32\n",
    )
    .unwrap();
    let status = std::process::Command::new(&tool)
        .arg("export")
        .arg(&cfg)
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "llamafactory-cli export failed");
    let open = |d: &Path| {
        VisionLanguageModel::load(&ModelDir::open(d, Needs::Tokenizer).unwrap(), &Device::Cpu)
            .unwrap()
    };
    let chat = vec![
        ChatMessage {
            role: "user".into(),
            content: vec![
                ContentPart::Image {
                    path: media.join("covers/blue.png"),
                },
                ContentPart::Text {
                    text: "Answer with one letter.\nWhich of the following options best describe the cover image?".into(),
                },
            ],
        },
        ChatMessage::text("assistant", "C"),
    ];
    let mut applied = open(&base);
    let seq = applied.encode_chat(&chat, 512).unwrap();
    let plain = applied.train_logits(&[&seq]).unwrap();
    expflow_train::peft::load_adapter(&mut applied, model).unwrap();
    let got = applied.train_logits(&[&seq]).unwrap();
    let want = open(&merged).train_logits(&[&seq]).unwrap();
    assert!(
        max_diff(&got, &plain) > 1e-4,
        "training changed the model (else parity means nothing)"
    );
    let d = max_diff(&got, &want);
    assert!(
        d < 1e-3,
        "native adapter vs LLaMA-Factory's merged weights: logits differ by {d}"
    );
    // The kept adapter scores the best dev accuracy again.
    let dev_rows: Vec<Value> =
        serde_json::from_slice(&std::fs::read(dataset.join("mac_dev.json")).unwrap()).unwrap();
    let pairs: Vec<(Vec<ChatMessage>, String)> = dev_rows
        .iter()
        .map(|r| {
            let image = dataset.join(r["images"][0].as_str().unwrap());
            let text = format!(
                "{}\n{}",
                r["system"].as_str().unwrap(),
                r["input"].as_str().unwrap()
            );
            let mut msgs = vec![ChatMessage::text("user", &text)];
            expflow_models::place_media(&mut msgs, vec![ContentPart::Image { path: image }]);
            (msgs, r["output"].as_str().unwrap().to_string())
        })
        .collect();
    let again =
        expflow_operators::train::checkpoints::dev_score(&applied, &pairs, "accuracy", 4).unwrap();
    assert_eq!(again, best.1, "the kept adapter's dev accuracy");
    eprintln!(
        "llamafactory real SFT + checkpoint evaluation + export: {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
