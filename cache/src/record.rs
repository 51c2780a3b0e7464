//! What the store keeps: a record per finished node, and an index of runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// One output artifact of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputRef {
    /// The blob digest; for a directory, the digest of its manifest.
    pub digest: Digest,
    /// The port type (`table`, `model`, `file`, ...).
    pub kind: String,
    /// Whether `digest` names a manifest.
    pub dir: bool,
    /// Bytes of the file, or of all files of the directory.
    pub size: u64,
}

/// A finished node: its key, outputs and how they were made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub key: Digest,
    pub pipeline: String,
    pub node: String,
    pub op: String,
    pub op_version: u32,
    pub determinism: String,
    /// Output port name to artifact.
    pub outputs: BTreeMap<String, OutputRef>,
    /// The full key material, for `explain`.
    pub material: serde_json::Value,
    pub started_ms: u64,
    pub duration_ms: u64,
    pub host: String,
    pub engine_version: String,
    /// The node log, stored as a blob.
    pub log: Option<Digest>,
    pub run_id: String,
    /// Names of the secrets the node used (never their values).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Per-item blobs of a map-style operator.
    pub items: Vec<Digest>,
    /// Compute threads of the process that made the outputs (`RAYON_NUM_THREADS`, else the
    /// cores): a seeded node's bytes are reproducible for the same count, which `audit`
    /// needs to know. 0 in records written before it was kept.
    #[serde(default)]
    pub threads: u32,
    /// The values of the outputs that hold metrics, so comparing runs needs no blob.
    #[serde(default, skip_serializing_if = "Metrics::is_empty")]
    pub metrics: Metrics,
}

/// Metric values kept in a record. Names are `PORT.PATH`: `scores.bleu` for a field of a
/// JSON metrics output, `metrics.loss` for a column of a metrics table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Numbers of JSON metrics outputs (nested objects flattened with `.`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scalars: BTreeMap<String, f64>,
    /// Numeric columns of metrics tables (training curves), row by row; `None` where a row
    /// has no value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub series: BTreeMap<String, Vec<Option<f64>>>,
}

impl Metrics {
    pub fn is_empty(&self) -> bool {
        self.scalars.is_empty() && self.series.is_empty()
    }
}

impl Record {
    /// Every blob the record needs, with a label for messages: outputs (directory outputs
    /// by their manifest only), the log, and items.
    pub fn blob_refs(&self) -> Vec<(String, Digest, bool)> {
        let mut out: Vec<(String, Digest, bool)> = self
            .outputs
            .iter()
            .map(|(port, o)| (format!("output {port}"), o.digest, o.dir))
            .collect();
        if let Some(log) = self.log {
            out.push(("log".to_string(), log, false));
        }
        out.extend(
            self.items
                .iter()
                .enumerate()
                .map(|(i, d)| (format!("item {i}"), *d, false)),
        );
        out
    }
}

/// One run of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub run_id: String,
    pub pipeline: String,
    pub pipeline_path: String,
    pub started_ms: u64,
    pub finished_ms: u64,
    pub status: String,
    /// Node name to the record key the run used or produced.
    pub nodes: Vec<(String, Digest)>,
    /// The pipeline's global `params:` as the run used them (`--set` applied).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// `--profile`: the profiles the run merged into the pipeline file, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// `--input`: the declared inputs whose path the run replaced, name → path. Not in any
    /// key (keys see the inputs' content only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
}

/// What listing runs needs of a record, decoded without the rest: its key and run, the
/// node's parameters, and each metric's value (a series by its last value). Reading it
/// allocates no training curve and none of the key material but the parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RecordSummary {
    pub key: Digest,
    pub run_id: String,
    /// `material.params`: the node's parameters.
    #[serde(default, rename = "material", deserialize_with = "params_of_material")]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// `PORT.FIELD` → value: every scalar metric, and the last value of every series that
    /// has one.
    #[serde(default, deserialize_with = "last_metrics")]
    pub metrics: Vec<(String, f64)>,
}

impl RecordSummary {
    /// The summary of a full record (what decoding its stored form gives).
    pub fn of(rec: &Record) -> RecordSummary {
        let params = match rec.material.get("params") {
            Some(serde_json::Value::Object(m)) => m.clone(),
            _ => serde_json::Map::new(),
        };
        let mut metrics: Vec<(String, f64)> = rec
            .metrics
            .scalars
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (name, values) in &rec.metrics.series {
            if let Some(last) = values.iter().rev().flatten().next() {
                metrics.push((name.clone(), *last));
            }
        }
        RecordSummary {
            key: rec.key,
            run_id: rec.run_id.clone(),
            params,
            metrics,
        }
    }
}

fn params_of_material<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<serde_json::Map<String, serde_json::Value>, D::Error> {
    #[derive(Deserialize)]
    struct Material {
        #[serde(default)]
        params: Option<serde_json::Value>,
    }
    // `material` is any JSON value (`null` in a record without one).
    let m: Option<Material> = Option::deserialize(d)?;
    Ok(match m.and_then(|m| m.params) {
        Some(serde_json::Value::Object(p)) => p,
        _ => serde_json::Map::new(),
    })
}

fn last_metrics<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(String, f64)>, D::Error> {
    #[derive(Deserialize)]
    struct Lasts {
        #[serde(default)]
        scalars: BTreeMap<String, f64>,
        #[serde(default)]
        series: BTreeMap<String, LastValue>,
    }
    let m = Lasts::deserialize(d)?;
    let mut out: Vec<(String, f64)> = m.scalars.into_iter().collect();
    out.extend(
        m.series
            .into_iter()
            .filter_map(|(name, LastValue(v))| v.map(|v| (name, v))),
    );
    Ok(out)
}

/// The last non-null number of a JSON array, read without keeping the array.
struct LastValue(Option<f64>);

impl<'de> Deserialize<'de> for LastValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = LastValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of numbers or nulls")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<LastValue, A::Error> {
                let mut last = None;
                while let Some(v) = seq.next_element::<Option<f64>>()? {
                    if v.is_some() {
                        last = v;
                    }
                }
                Ok(LastValue(last))
            }
        }
        d.deserialize_seq(V)
    }
}

/// What a cache hit needs of a record, in one lookup: its outputs, and the stat of each
/// output's blob file when expflow last found the blob intact (a blob whose stat is still the
/// same is trusted without reading it, as with the stat cache).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub outputs: BTreeMap<String, OutputRef>,
    /// Port → the stat of its blob file as last checked; absent until checked.
    #[serde(default)]
    pub stats: BTreeMap<String, crate::stat::StatKey>,
}
