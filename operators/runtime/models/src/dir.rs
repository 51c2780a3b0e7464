//! A Hugging-Face-style model directory: `config.json`, `*.safetensors` (one file, or shards
//! with `model.safetensors.index.json`), `tokenizer.json`, and optionally
//! `generation_config.json`, `tokenizer_config.json` and a chat template
//! (`chat_template.jinja`, `chat_template.json`, or `chat_template` inside
//! `tokenizer_config.json`).
//!
//! [`ModelDir::open`] checks all of it before any weight is read, so a broken directory fails
//! with the file and what was expected, not with a tensor-shape error deep inside a model.
//! Configs written by transformers 5 are normalised to the layout hub checkpoints use
//! (see [`normalise_config`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{ModelError, Result};

/// What [`ModelDir::open`] requires besides `config.json` and the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// `tokenizer.json` must be present (text models).
    Tokenizer,
    /// Weights and config only (e.g. a vision tower).
    WeightsOnly,
}

/// One tensor's entry in a safetensors header.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub dtype: String,
    pub shape: Vec<usize>,
    /// The shard that holds it.
    pub file: PathBuf,
}

/// A checked model directory.
#[derive(Clone, Debug)]
pub struct ModelDir {
    pub root: PathBuf,
    /// `config.json`, normalised.
    pub config: Value,
    /// The safetensors files, sorted by name.
    pub weights: Vec<PathBuf>,
    /// Every tensor, by name.
    pub tensors: BTreeMap<String, TensorInfo>,
    pub tokenizer_path: Option<PathBuf>,
    pub tokenizer_config: Option<Value>,
    pub generation_config: Option<Value>,
    pub chat_template: Option<String>,
}

impl ModelDir {
    /// Opens and checks `root`.
    pub fn open(root: impl AsRef<Path>, needs: Needs) -> Result<ModelDir> {
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(ModelError::MissingFile {
                dir: root.clone(),
                file: String::new(),
                expected: "a model directory (config.json, *.safetensors, tokenizer.json)".into(),
            });
        }
        let config_path = root.join("config.json");
        let mut config = read_json(
            &root,
            "config.json",
            "the model's configuration (JSON object)",
        )?;
        if !config.is_object() {
            return Err(ModelError::bad(config_path, "expected a JSON object"));
        }
        normalise_config(&mut config);

        let (weights, tensors) = read_weights(&root)?;

        let tokenizer_path = root.join("tokenizer.json");
        let tokenizer_path = if tokenizer_path.is_file() {
            Some(tokenizer_path)
        } else if needs == Needs::Tokenizer {
            return Err(ModelError::MissingFile {
                dir: root.clone(),
                file: "tokenizer.json".into(),
                expected:
                    "the Hugging Face tokenizers file (save it with `tokenizer.save_pretrained`)"
                        .into(),
            });
        } else {
            None
        };
        let tokenizer_config = read_optional_json(&root, "tokenizer_config.json")?;
        let generation_config = read_optional_json(&root, "generation_config.json")?;
        let chat_template = read_chat_template(&root, tokenizer_config.as_ref())?;
        Ok(ModelDir {
            root,
            config,
            weights,
            tensors,
            tokenizer_path,
            tokenizer_config,
            generation_config,
            chat_template,
        })
    }

    /// `config.json` as `T`, with the field that failed named in the error.
    pub fn config_as<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.config.clone()).map_err(|e| ModelError::Config {
            path: self.root.join("config.json"),
            problem: format!("{e}"),
        })
    }

    /// A sub-object of the config (for example `text_config` or `vision_config`), normalised.
    pub fn sub_config(&self, key: &str) -> Option<&Value> {
        self.config.get(key)
    }

    /// `model_type` from `config.json`, if given.
    pub fn model_type(&self) -> Option<&str> {
        self.config.get("model_type").and_then(Value::as_str)
    }

    /// `architectures[0]` from `config.json`, if given.
    pub fn architecture(&self) -> Option<&str> {
        self.config
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
    }

    /// A candle `VarBuilder` over the memory-mapped weights.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        // SAFETY: the files are opened read-only and mapped; the directory is an immutable
        // artifact (or a user's directory that must not change while a node runs).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&self.weights, dtype, device)? };
        Ok(vb)
    }

    /// Fails with the tensor's name and the expected shape when `name` is absent or differs.
    pub fn expect_tensor(&self, name: &str, shape: &[usize]) -> Result<()> {
        match self.tensors.get(name) {
            None => Err(ModelError::bad(
                self.root.join("config.json"),
                format!(
                    "the weights have no tensor `{name}` (shape {shape:?}) that this config needs; \
                     the directory holds a different architecture or an incomplete save"
                ),
            )),
            Some(t) if t.shape != shape => Err(ModelError::bad(
                t.file.clone(),
                format!(
                    "tensor `{name}` has shape {:?}, config.json implies {shape:?}",
                    t.shape
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// The loaded tokenizer.
    pub fn tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        let path = self
            .tokenizer_path
            .as_ref()
            .ok_or_else(|| ModelError::MissingFile {
                dir: self.root.clone(),
                file: "tokenizer.json".into(),
                expected: "the Hugging Face tokenizers file".into(),
            })?;
        tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::bad(path.clone(), format!("not a tokenizers file: {e}")))
    }

    /// BLAKE3 over the weight files' names and contents, in name order: the model's weight
    /// digest, which enters the key of every node that uses it (through the model artifact's
    /// digest) and is written into the node's log.
    pub fn weight_digest(&self) -> Result<String> {
        let mut h = blake3::Hasher::new();
        for w in &self.weights {
            let (d, len) = expflow_cache::hash_file(w)
                .map_err(|e| ModelError::bad(w.clone(), format!("cannot hash: {e}")))?;
            let name = w.file_name().unwrap_or_default().to_string_lossy();
            h.update(name.as_bytes());
            h.update(&[0]);
            h.update(&d.0);
            h.update(&len.to_le_bytes());
        }
        Ok(h.finalize().to_hex().to_string())
    }

    /// A value from `generation_config.json`, if present.
    pub fn generation_value(&self, key: &str) -> Option<&Value> {
        self.generation_config.as_ref().and_then(|g| g.get(key))
    }
}

fn read_json(root: &Path, file: &str, expected: &str) -> Result<Value> {
    let path = root.join(file);
    if !path.is_file() {
        return Err(ModelError::MissingFile {
            dir: root.to_path_buf(),
            file: file.into(),
            expected: expected.into(),
        });
    }
    let text = fs::read_to_string(&path).map_err(|e| ModelError::io("read", &path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::bad(path, format!("not valid JSON: {e}")))
}

fn read_optional_json(root: &Path, file: &str) -> Result<Option<Value>> {
    if root.join(file).is_file() {
        read_json(root, file, "").map(Some)
    } else {
        Ok(None)
    }
}

fn read_chat_template(root: &Path, tokenizer_config: Option<&Value>) -> Result<Option<String>> {
    let jinja = root.join("chat_template.jinja");
    if jinja.is_file() {
        return fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| ModelError::io("read", &jinja, e));
    }
    if let Some(v) = read_optional_json(root, "chat_template.json")?
        && let Some(t) = v.get("chat_template").and_then(Value::as_str)
    {
        return Ok(Some(t.to_string()));
    }
    Ok(tokenizer_config
        .and_then(|c| c.get("chat_template"))
        .and_then(|t| match t {
            Value::String(s) => Some(s.clone()),
            // A list of named templates: take `default`, else the first.
            Value::Array(list) => list
                .iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some("default"))
                .or_else(|| list.first())
                .and_then(|e| e.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        }))
}

/// Finds and checks the safetensors files: with an index, every shard it names must exist
/// and hold the tensors it lists; without one, every `*.safetensors` file in the directory.
fn read_weights(root: &Path) -> Result<(Vec<PathBuf>, BTreeMap<String, TensorInfo>)> {
    let index_path = root.join("model.safetensors.index.json");
    let mut tensors = BTreeMap::new();
    let files: Vec<PathBuf> = if index_path.is_file() {
        let index = read_json(root, "model.safetensors.index.json", "")?;
        let map = index
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ModelError::bad(&index_path, "has no `weight_map` object"))?;
        let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                ModelError::bad(
                    &index_path,
                    format!("weight_map[{tensor:?}] is not a file name"),
                )
            })?;
            wanted
                .entry(file.to_string())
                .or_default()
                .push(tensor.clone());
        }
        let mut files = Vec::new();
        for (file, names) in &wanted {
            let path = root.join(file);
            if !path.is_file() {
                return Err(ModelError::MissingFile {
                    dir: root.to_path_buf(),
                    file: file.clone(),
                    expected: format!(
                        "a weight shard named in model.safetensors.index.json ({} tensors)",
                        names.len()
                    ),
                });
            }
            let header = read_header(&path)?;
            for n in names {
                if !header.contains_key(n) {
                    return Err(ModelError::bad(
                        &path,
                        format!(
                            "model.safetensors.index.json puts tensor `{n}` here, but the shard does not hold it"
                        ),
                    ));
                }
            }
            tensors.extend(header);
            files.push(path);
        }
        files
    } else {
        let mut files = Vec::new();
        let entries = fs::read_dir(root).map_err(|e| ModelError::io("list", root, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ModelError::io("list", root, e))?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "safetensors") && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(ModelError::MissingFile {
                dir: root.to_path_buf(),
                file: "*.safetensors".into(),
                expected:
                    "the weights (model.safetensors, or shards with model.safetensors.index.json); \
                           PyTorch .bin files are not read: convert them with safetensors"
                        .into(),
            });
        }
        for f in &files {
            let header = read_header(f)?;
            for name in header.keys() {
                if tensors.contains_key(name) {
                    return Err(ModelError::bad(
                        f,
                        format!(
                            "tensor `{name}` is also in another .safetensors file here; remove the stale file"
                        ),
                    ));
                }
            }
            tensors.extend(header);
        }
        files
    };
    let mut seen = BTreeSet::new();
    let files = files
        .into_iter()
        .filter(|f| seen.insert(f.clone()))
        .collect();
    Ok((files, tensors))
}

/// Reads and checks one safetensors header: the length prefix, the JSON, each tensor's dtype,
/// shape and byte range against the file's size.
pub fn read_header(path: &Path) -> Result<BTreeMap<String, TensorInfo>> {
    let mut f = fs::File::open(path).map_err(|e| ModelError::io("open", path, e))?;
    let size = f
        .metadata()
        .map_err(|e| ModelError::io("stat", path, e))?
        .len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| {
        ModelError::bad(path, "too short for a safetensors file (no header length)")
    })?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 || 8 + n > size {
        return Err(ModelError::bad(
            path,
            format!(
                "safetensors header length {n} does not fit the file's {size} bytes (truncated or not safetensors)"
            ),
        ));
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf)
        .map_err(|e| ModelError::io("read", path, e))?;
    let header: Map<String, Value> = serde_json::from_slice(&buf).map_err(|e| {
        ModelError::bad(
            path,
            format!("safetensors header is not a JSON object: {e}"),
        )
    })?;
    let data_len = size - 8 - n;
    let mut out = BTreeMap::new();
    for (name, v) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = v
            .get("dtype")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let shape: Vec<usize> = v
            .get("shape")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|d| d as usize)
                    .collect()
            })
            .unwrap_or_default();
        let end = v
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|a| a.get(1))
            .and_then(Value::as_u64)
            .ok_or_else(|| ModelError::bad(path, format!("tensor `{name}` has no data_offsets")))?;
        if end > data_len {
            return Err(ModelError::bad(
                path,
                format!(
                    "tensor `{name}` ends at byte {end} of a {data_len}-byte data section (file truncated)"
                ),
            ));
        }
        out.insert(
            name,
            TensorInfo {
                dtype,
                shape,
                file: path.to_path_buf(),
            },
        );
    }
    Ok(out)
}

/// Brings a `config.json` written by transformers 5 to the layout hub checkpoints (4.x) use,
/// in place, for this level and the nested `text_config` / `vision_config`:
/// - `rope_parameters.rope_theta` is copied to `rope_theta` when that is absent;
/// - `sliding_window: null` becomes `max_position_embeddings` (no window in effect);
/// - other `null` values are removed, so serde defaults apply;
/// - a top-level `tie_word_embeddings` is copied into `text_config` when that lacks it.
pub fn normalise_config(config: &mut Value) {
    fn level(obj: &mut Map<String, Value>) {
        if !obj.contains_key("rope_theta")
            && let Some(theta) = obj
                .get("rope_parameters")
                .and_then(|r| r.get("rope_theta"))
                .cloned()
        {
            obj.insert("rope_theta".into(), theta);
        }
        if obj.get("sliding_window").is_some_and(Value::is_null) {
            let max = obj
                .get("max_position_embeddings")
                .cloned()
                .unwrap_or(Value::from(32768));
            obj.insert("sliding_window".into(), max);
        }
        obj.retain(|_, v| !v.is_null());
    }
    let Some(top) = config.as_object_mut() else {
        return;
    };
    level(top);
    let tie = top.get("tie_word_embeddings").cloned();
    for key in ["text_config", "vision_config"] {
        if let Some(Value::Object(sub)) = top.get_mut(key) {
            level(sub);
            if key == "text_config"
                && !sub.contains_key("tie_word_embeddings")
                && let Some(t) = &tie
            {
                sub.insert("tie_word_embeddings".into(), t.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write_safetensors(path: &Path, tensors: &[(&str, &[usize])]) {
        let mut header = Map::new();
        let mut off = 0u64;
        for (name, shape) in tensors {
            let n: usize = shape.iter().product::<usize>() * 4;
            header.insert(
                name.to_string(),
                json!({"dtype": "F32", "shape": shape, "data_offsets": [off, off + n as u64]}),
            );
            off += n as u64;
        }
        let h = serde_json::to_vec(&Value::Object(header)).unwrap();
        let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
        bytes.extend(h);
        bytes.extend(vec![0u8; off as usize]);
        fs::write(path, bytes).unwrap();
    }

    fn dir_with(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in files {
            match *f {
                "config.json" => fs::write(d.path().join(f), r#"{"model_type": "qwen2"}"#).unwrap(),
                "tokenizer.json" => fs::write(d.path().join(f), "{}").unwrap(),
                "model.safetensors" => write_safetensors(&d.path().join(f), &[("a", &[2, 3])]),
                _ => unreachable!(),
            }
        }
        d
    }

    #[test]
    fn missing_files_are_named() {
        let d = dir_with(&["tokenizer.json", "model.safetensors"]);
        let e = ModelDir::open(d.path(), Needs::Tokenizer)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing `config.json`"), "{e}");

        let d = dir_with(&["config.json", "tokenizer.json"]);
        let e = ModelDir::open(d.path(), Needs::Tokenizer)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing `*.safetensors`"), "{e}");

        let d = dir_with(&["config.json", "model.safetensors"]);
        let e = ModelDir::open(d.path(), Needs::Tokenizer)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing `tokenizer.json`"), "{e}");
        assert!(ModelDir::open(d.path(), Needs::WeightsOnly).is_ok());
    }

    #[test]
    fn truncated_weights_are_caught_before_loading() {
        let d = dir_with(&["config.json", "tokenizer.json", "model.safetensors"]);
        let p = d.path().join("model.safetensors");
        let bytes = fs::read(&p).unwrap();
        fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        let e = ModelDir::open(d.path(), Needs::Tokenizer)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tensor `a` ends at byte 24") && e.contains("truncated"),
            "{e}"
        );
    }

    #[test]
    fn sharded_index_must_match_the_shards() {
        let d = dir_with(&["config.json", "tokenizer.json"]);
        write_safetensors(
            &d.path().join("model-00001-of-00002.safetensors"),
            &[("a", &[2])],
        );
        write_safetensors(
            &d.path().join("model-00002-of-00002.safetensors"),
            &[("b", &[3])],
        );
        let index = json!({"metadata": {}, "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors"}});
        fs::write(
            d.path().join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
        let m = ModelDir::open(d.path(), Needs::Tokenizer).unwrap();
        assert_eq!(m.weights.len(), 2);
        assert_eq!(m.tensors["b"].shape, vec![3]);
        m.expect_tensor("b", &[3]).unwrap();
        let e = m.expect_tensor("b", &[4]).unwrap_err().to_string();
        assert!(e.contains("has shape [3], config.json implies [4]"), "{e}");

        fs::remove_file(d.path().join("model-00002-of-00002.safetensors")).unwrap();
        let e = ModelDir::open(d.path(), Needs::Tokenizer)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing `model-00002-of-00002.safetensors`"),
            "{e}"
        );
    }

    #[test]
    fn transformers5_configs_are_normalised() {
        let mut c = json!({
            "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"},
            "sliding_window": null, "max_position_embeddings": 128,
            "suppress_tokens": null, "tie_word_embeddings": false,
            "text_config": {"rope_parameters": {"rope_theta": 5e5}}
        });
        normalise_config(&mut c);
        assert_eq!(c["rope_theta"], json!(1e6));
        assert_eq!(c["sliding_window"], json!(128));
        assert!(c.get("suppress_tokens").is_none());
        assert_eq!(c["text_config"]["rope_theta"], json!(5e5));
        assert_eq!(c["text_config"]["tie_word_embeddings"], json!(false));
    }

    #[test]
    fn chat_template_sources() {
        let d = dir_with(&["config.json", "tokenizer.json", "model.safetensors"]);
        fs::write(
            d.path().join("tokenizer_config.json"),
            r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
        )
        .unwrap();
        let m = ModelDir::open(d.path(), Needs::Tokenizer).unwrap();
        assert_eq!(m.chat_template.as_deref(), Some("D"));
        fs::write(d.path().join("chat_template.jinja"), "J").unwrap();
        let m = ModelDir::open(d.path(), Needs::Tokenizer).unwrap();
        assert_eq!(m.chat_template.as_deref(), Some("J"));
    }
}
