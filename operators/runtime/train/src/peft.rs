//! Adapters in Hugging Face PEFT's layout (`adapter_model.safetensors` with
//! `base_model.model.<module>.lora_A.weight` / `lora_B.weight`, and `adapter_config.json`),
//! and merging them into a full model directory (`W + (α/r)·B·A`) that any loader of the
//! base architecture opens.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use expflow_models::Trainable;
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

/// A module path as both tensor namings of Qwen2.5-VL write it: transformers ≥ 4.52 nests the
/// language model (`model.language_model.layers…`) and the vision tower (`model.visual…`),
/// the hub's checkpoints do not (`model.layers…`, `visual…`).
fn canonical_module(path: &str) -> String {
    if let Some(rest) = path.strip_prefix("model.language_model.") {
        format!("model.{rest}")
    } else if let Some(rest) = path.strip_prefix("model.visual.") {
        format!("visual.{rest}")
    } else {
        path.to_string()
    }
}

/// Reads a PEFT LoRA adapter directory (`adapter_config.json`, `adapter_model.safetensors`,
/// as PEFT, LLaMA-Factory and ms-swift save it) and attaches it to `model`'s linears, so the
/// model computes `x Wᵀ + (α/r)·x Aᵀ Bᵀ` without merging (`use_rslora`: α/√r). Module paths
/// are matched in either Qwen2.5-VL naming. An adapter this runtime cannot apply exactly
/// (DoRA, bias training, saved whole modules, weights for a linear the model has not, such as
/// the vision tower's) is an error naming what it holds.
pub fn load_adapter(model: &mut dyn Trainable, dir: &Path) -> Result<Lora> {
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .map_err(|e| TrainError::io("cannot read", &cfg_path, e))?;
    let bad = |problem: String| TrainError::File {
        path: cfg_path.clone(),
        problem,
    };
    let cfg: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    if cfg["peft_type"].as_str().is_some_and(|t| t != "LORA") {
        return Err(bad(format!(
            "peft_type is {}; only LORA adapters can be applied",
            cfg["peft_type"]
        )));
    }
    if cfg["use_dora"].as_bool() == Some(true) {
        return Err(bad("use_dora is true; DoRA adapters cannot be applied by the native runtime: merge it with the tool that trained it".into()));
    }
    if cfg["bias"].as_str().is_some_and(|b| b != "none") {
        return Err(bad(format!(
            "bias is {}; only adapters without trained biases can be applied",
            cfg["bias"]
        )));
    }
    let rank = cfg["r"]
        .as_u64()
        .filter(|&r| r > 0)
        .ok_or_else(|| bad("no positive `r` (the LoRA rank)".into()))? as usize;
    let alpha = cfg["lora_alpha"]
        .as_f64()
        .ok_or_else(|| bad("no `lora_alpha`".into()))?;
    let scale = if cfg["use_rslora"].as_bool() == Some(true) {
        alpha / (rank as f64).sqrt()
    } else {
        alpha / rank as f64
    };
    let weights_path = dir.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu)?;
    // module (canonical) → (A, B)
    let mut pairs: HashMap<String, (Option<Tensor>, Option<Tensor>)> = HashMap::new();
    for (key, t) in tensors {
        let body = key.strip_prefix("base_model.model.").unwrap_or(&key);
        let (module, which) = if let Some(m) = body.strip_suffix(".lora_A.weight") {
            (m, 0)
        } else if let Some(m) = body.strip_suffix(".lora_B.weight") {
            (m, 1)
        } else {
            return Err(TrainError::File {
                path: weights_path.clone(),
                problem: format!(
                    "tensor `{key}` is not a LoRA A/B weight (saved modules, biases or embeddings \
                     cannot be applied by the native runtime); merge the adapter with the tool that trained it"
                ),
            });
        };
        let slot = pairs.entry(canonical_module(module)).or_default();
        if which == 0 {
            slot.0 = Some(t);
        } else {
            slot.1 = Some(t);
        }
    }
    let device = model.device().clone();
    let mut layers = Vec::new();
    let switches = std::sync::Arc::new(crate::lora::Switches::default());
    for (name, linear) in model.linears_mut() {
        let Some((a, b)) = pairs.remove(&canonical_module(&name)) else {
            continue;
        };
        let (Some(a), Some(b)) = (a, b) else {
            return Err(TrainError::File {
                path: weights_path.clone(),
                problem: format!("`{name}` has only one of lora_A and lora_B"),
            });
        };
        let (out_dim, in_dim) = (linear.out_dim(), linear.in_dim());
        if a.dims() != [rank, in_dim] || b.dims() != [out_dim, rank] {
            return Err(TrainError::File {
                path: weights_path.clone(),
                problem: format!(
                    "`{name}`: lora_A is {:?} and lora_B {:?}, the model needs [{rank}, {in_dim}] and [{out_dim}, {rank}]; the adapter belongs to another base model",
                    a.dims(),
                    b.dims()
                ),
            });
        }
        let layer = std::sync::Arc::new(crate::lora::LoraLinear::loaded(
            name,
            a.to_dtype(DType::F32)?.to_device(&device)?,
            b.to_dtype(DType::F32)?.to_device(&device)?,
            scale,
            switches.clone(),
        )?);
        linear.adapter = Some(layer.clone());
        layers.push(layer);
    }
    if !pairs.is_empty() {
        let mut left: Vec<_> = pairs.into_keys().collect();
        left.sort();
        Lora::detach(model);
        return Err(TrainError::File {
            path: weights_path,
            problem: format!(
                "weights for linears this model does not adapt: {} (the native runtime applies \
                 adapters to the language model only; train with the vision tower frozen)",
                left.join(", ")
            ),
        });
    }
    if layers.is_empty() {
        return Err(TrainError::File {
            path: weights_path,
            problem: "holds no LoRA weights".into(),
        });
    }
    let mut targets: Vec<String> = layers
        .iter()
        .map(|l| l.name.rsplit('.').next().unwrap_or(&l.name).to_string())
        .collect();
    targets.sort();
    targets.dedup();
    Ok(Lora::from_layers(
        crate::lora::LoraConfig {
            rank,
            // α such that α/r is the scale applied (rsLoRA included), so a merge of this
            // `Lora` writes the weights the adapter computes.
            alpha: scale * rank as f64,
            dropout: 0.0,
            targets,
            seed: 0,
        },
        layers,
        switches,
    ))
}
