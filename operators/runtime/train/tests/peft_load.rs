//! PEFT adapters read back onto a model: the adapter-applied model computes what the merged
//! weights compute (a text Qwen2, and a Qwen2.5-VL whose adapter names its modules as
//! transformers ≥ 4.52 does), and adapters the runtime cannot apply are refused by name.

use std::path::Path;

use candle_core::{Device, Tensor};
use expflow_models::{
    ChatMessage, ContentPart, Generator, ModelDir, Needs, TinySpec, Trainable, write_tiny_qwen2,
};
use expflow_train::{Lora, LoraConfig, peft};
use expflow_vlm::{TinyVlmSpec, VisionLanguageModel, write_tiny_vlm};

fn corpus() -> Vec<String> {
    (0..30)
        .map(|i| format!("Which cover matches story {i}? A. the cell B. the star C. the river"))
        .collect()
}

/// Attaches adapters and gives every B a nonzero, position-dependent value, so the adapter
/// changes the logits.
fn adapt(model: &mut dyn Trainable) -> Lora {
    let lora = Lora::attach(
        model,
        &LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: vec!["all-linear".into()],
            seed: 5,
        },
    )
    .unwrap();
    for (k, l) in lora.layers.iter().enumerate() {
        let n = l.b.elem_count();
        let vals: Vec<f32> = (0..n)
            .map(|i| (((i * 7 + k * 13) % 17) as f32 - 8.0) * 0.01)
            .collect();
        let t = Tensor::from_vec(vals, l.b.dims(), &Device::Cpu).unwrap();
        l.b.set(&t).unwrap();
    }
    lora
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

fn chat(image: Option<&Path>) -> Vec<ChatMessage> {
    let mut content = Vec::new();
    if let Some(p) = image {
        content.push(ContentPart::Image {
            path: p.to_path_buf(),
        });
    }
    content.push(ContentPart::Text {
        text: "Which story? A. the cell B. the star".into(),
    });
    vec![
        ChatMessage {
            role: "user".into(),
            content,
        },
        ChatMessage::text("assistant", "B"),
    ]
}

#[test]
fn a_saved_adapter_read_back_computes_the_merged_models_logits() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    write_tiny_qwen2(&base, &TinySpec::default(), &corpus()).unwrap();
    let open = |d: &Path| {
        Generator::load(&ModelDir::open(d, Needs::Tokenizer).unwrap(), &Device::Cpu).unwrap()
    };
    let mut trained = open(&base);
    let seq = trained.encode_chat(&chat(None), 256).unwrap();
    let base_logits = trained.train_logits(&[&seq]).unwrap();
    let lora = adapt(&mut trained);
    peft::save_adapter(&dir.path().join("adapter"), &lora, "tiny").unwrap();
    peft::merge(&base, &lora, &dir.path().join("merged")).unwrap();

    let mut applied = open(&base);
    let loaded = peft::load_adapter(&mut applied, &dir.path().join("adapter")).unwrap();
    assert_eq!(loaded.layers.len(), lora.layers.len());
    let got = applied.train_logits(&[&seq]).unwrap();
    assert!(
        max_diff(&got, &base_logits) > 1e-3,
        "the adapter must change the logits for this test to mean anything"
    );
    let merged = open(&dir.path().join("merged"));
    let d = max_diff(&got, &merged.train_logits(&[&seq]).unwrap());
    assert!(d < 1e-4, "adapter-applied and merged logits differ by {d}");
    Lora::detach(&mut applied);
    assert!(max_diff(&applied.train_logits(&[&seq]).unwrap(), &base_logits) < 1e-6);
}

/// Renames the adapter's module paths as transformers ≥ 4.52 writes Qwen2.5-VL's
/// (`model.language_model.layers…`), as PEFT under LLaMA-Factory saves them.
fn to_nested_names(adapter: &Path) {
    let file = adapter.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let renamed: std::collections::HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| {
            (
                k.replace(
                    "base_model.model.model.",
                    "base_model.model.model.language_model.",
                ),
                v,
            )
        })
        .collect();
    assert!(renamed.keys().all(|k| k.contains("language_model")));
    candle_core::safetensors::save(&renamed, &file).unwrap();
}

#[test]
fn a_vision_language_adapter_in_either_naming_matches_the_merged_weights() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    write_tiny_vlm(&base, &TinyVlmSpec::default(), &corpus()).unwrap();
    let open = |d: &Path| {
        VisionLanguageModel::load(&ModelDir::open(d, Needs::Tokenizer).unwrap(), &Device::Cpu)
            .unwrap()
    };
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vlm/tests/fixtures/a.png");
    let mut trained = open(&base);
    let seq = trained.encode_chat(&chat(Some(&image)), 256).unwrap();
    let lora = adapt(&mut trained);
    let want = trained.train_logits(&[&seq]).unwrap();
    let adapter = dir.path().join("adapter");
    peft::save_adapter(&adapter, &lora, "tiny").unwrap();
    to_nested_names(&adapter);
    peft::merge(&base, &lora, &dir.path().join("merged")).unwrap();

    let mut applied = open(&base);
    peft::load_adapter(&mut applied, &adapter).unwrap();
    let got = applied.train_logits(&[&seq]).unwrap();
    let merged = open(&dir.path().join("merged"))
        .train_logits(&[&seq])
        .unwrap();
    assert!(max_diff(&got, &want) < 1e-5);
    let d = max_diff(&got, &merged);
    assert!(d < 1e-4, "adapter-applied and merged logits differ by {d}");
}

#[test]
fn adapters_the_runtime_cannot_apply_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    write_tiny_qwen2(&base, &TinySpec::default(), &corpus()).unwrap();
    let mut g = Generator::load(
        &ModelDir::open(&base, Needs::Tokenizer).unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    let lora = adapt(&mut g);
    let adapter = dir.path().join("adapter");
    peft::save_adapter(&adapter, &lora, "tiny").unwrap();
    Lora::detach(&mut g);

    // A vision-tower module the model does not adapt.
    let file = adapter.join("adapter_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let a = Tensor::zeros((4, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros((8, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    tensors.insert(
        "base_model.model.model.visual.blocks.0.attn.qkv.lora_A.weight".into(),
        a,
    );
    tensors.insert(
        "base_model.model.model.visual.blocks.0.attn.qkv.lora_B.weight".into(),
        b,
    );
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let e = peft::load_adapter(&mut g, &adapter)
        .unwrap_err()
        .to_string();
    assert!(e.contains("visual.blocks.0.attn.qkv"), "{e}");
    assert!(
        g.linears_mut().iter().all(|(_, l)| l.adapter.is_none()),
        "a refused adapter leaves the model as it was"
    );

    let cfg = adapter.join("adapter_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["use_dora"] = serde_json::json!(true);
    std::fs::write(&cfg, v.to_string()).unwrap();
    let e = peft::load_adapter(&mut g, &adapter)
        .unwrap_err()
        .to_string();
    assert!(e.contains("use_dora"), "{e}");
}
