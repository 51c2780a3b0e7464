//! Adapters in Hugging Face PEFT's layout (`adapter_model.safetensors` with
//! `base_model.model.<module>.lora_A.weight` / `lora_B.weight`, and `adapter_config.json`),
//! and merging them into a full model directory (`W + (α/r)·B·A`) that any loader of the
//! base architecture opens.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::error::{Result, TrainError};
use crate::lora::Lora;

/// Writes the adapter files into `dir` (created if absent).
pub fn save_adapter(dir: &Path, lora: &Lora, base_model: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io("cannot create", dir, e))?;
    let mut map: HashMap<String, Tensor> = HashMap::new();
    let mut modules: Vec<String> = Vec::new();
    for l in &lora.layers {
        let p = format!("base_model.model.{}", l.name);
        map.insert(format!("{p}.lora_A.weight"), l.a.as_tensor().detach());
        map.insert(format!("{p}.lora_B.weight"), l.b.as_tensor().detach());
        let leaf = l.name.rsplit('.').next().unwrap_or(&l.name).to_string();
        if !modules.contains(&leaf) {
            modules.push(leaf);
        }
    }
    modules.sort();
    candle_core::safetensors::save(&map, dir.join("adapter_model.safetensors"))?;
    let c = &lora.config;
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": c.rank,
        "lora_alpha": c.alpha,
        "lora_dropout": c.dropout,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
    });
    let path = dir.join("adapter_config.json");
    let text =
        serde_json::to_string_pretty(&config).map_err(|e| TrainError::Config(e.to_string()))?;
    std::fs::write(&path, text + "\n").map_err(|e| TrainError::io("cannot write", &path, e))
}

/// Every tensor of the model directory's safetensors files.
fn read_weights(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| TrainError::io("cannot read", dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(TrainError::File {
            path: dir.to_path_buf(),
            problem: "no *.safetensors weights to merge into".into(),
        });
    }
    let mut all = HashMap::new();
    for f in files {
        all.extend(candle_core::safetensors::load(&f, &Device::Cpu)?);
    }
    Ok(all)
}

/// Writes a full model directory into `out`: the base directory's other files copied, and
/// one `model.safetensors` whose target weights have the adapters merged in.
pub fn merge(base: &Path, lora: &Lora, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| TrainError::io("cannot create", out, e))?;
    let mut entries: Vec<_> = std::fs::read_dir(base)
        .map_err(|e| TrainError::io("cannot read", base, e))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let weights = name.ends_with(".safetensors") || name == "model.safetensors.index.json";
        if p.is_file() && !weights {
            let dest = out.join(&name);
            std::fs::copy(&p, &dest).map_err(|e| TrainError::io("cannot copy", &p, e))?;
        }
    }
    let mut weights = read_weights(base)?;
    let scale = lora.config.scale();
    for l in &lora.layers {
        let key = format!("{}.weight", l.name);
        let w = weights.get(&key).ok_or_else(|| TrainError::File {
            path: base.to_path_buf(),
            problem: format!("no tensor `{key}` to merge the adapter into"),
        })?;
        let dtype = w.dtype();
        let delta =
            (l.b.as_tensor()
                .to_device(&Device::Cpu)?
                .matmul(&l.a.as_tensor().to_device(&Device::Cpu)?)?
                * scale)?;
        let merged = (w.to_dtype(DType::F32)? + delta)?.to_dtype(dtype)?;
        weights.insert(key, merged);
    }
    candle_core::safetensors::save(&weights, out.join("model.safetensors"))?;
    Ok(())
}
