//! Index artifacts: a directory holding `index.json` (format, kind, dim, metric, params,
//! count, ids) and either `vectors.f32` (row-major little-endian f32, normalised under
//! cosine) or `bm25.json` (stopwords, document lengths, postings sorted by term). An HNSW
//! index also holds its graph in `hnsw.graph` (layout in [`crate::graph`]), so loading it
//! reads the graph instead of building it again.
//!
//! Every file is written from sorted or ordered data with a fixed serialiser, so equal
//! inputs give equal bytes. An HNSW artifact without `hnsw.graph` (written before the graph
//! was stored, or by [`Index::save_hnsw_unbuilt`]) still loads: the graph is rebuilt from the
//! saved vectors and parameters, which gives the same graph when `parallel` is false.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bm25::{Bm25Index, Bm25Params};
use crate::error::{Result, RetrievalError};
use crate::exact::{ExactIndex, Metric};
use crate::graph::Graph;
use crate::hit::Hit;
use crate::hnsw::{HnswIndex, HnswParams};

/// The `format` value of `index.json`.
pub const FORMAT: &str = "expflow-index";
/// The version of the on-disk layout.
pub const VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "index.json";
pub const VECTORS_FILE: &str = "vectors.f32";
pub const BM25_FILE: &str = "bm25.json";
pub const GRAPH_FILE: &str = "hnsw.graph";

/// The search structure of an [`Index`].
#[derive(Debug)]
pub enum IndexKind {
    Bm25(Bm25Index),
    Exact(ExactIndex),
    Hnsw(HnswIndex),
}

impl IndexKind {
    pub fn name(&self) -> &'static str {
        match self {
            IndexKind::Bm25(_) => "bm25",
            IndexKind::Exact(_) => "exact",
            IndexKind::Hnsw(_) => "hnsw",
        }
    }
}

/// An index with the ids of its documents (document `i` is `ids[i]`).
#[derive(Debug)]
pub struct Index {
    pub ids: Vec<String>,
    pub kind: IndexKind,
}

/// The contents of `index.json`, in field order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub kind: String,
    pub dim: Option<usize>,
    pub metric: Option<Metric>,
    pub params: Value,
    pub count: usize,
    pub ids: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Bm25File {
    stopwords: Vec<String>,
    doc_lens: Vec<u32>,
    postings: std::collections::BTreeMap<String, Vec<(u32, u32)>>,
}

fn unique_ids(ids: &[String], count: usize) -> Result<()> {
    if ids.len() != count {
        return Err(RetrievalError::Data(format!(
            "{} ids were given for {count} documents; give one id per document",
            ids.len()
        )));
    }
    let mut seen = BTreeSet::new();
    if let Some(dup) = ids.iter().find(|id| !seen.insert(id.as_str())) {
        return Err(RetrievalError::Data(format!(
            "the id `{dup}` appears more than once; document ids must be unique"
        )));
    }
    Ok(())
}

impl Index {
    /// A BM25 index over `texts` with `ids`.
    pub fn bm25<S: AsRef<str>>(
        ids: Vec<String>,
        texts: &[S],
        params: Bm25Params,
        stopwords: &[String],
    ) -> Result<Index> {
        unique_ids(&ids, texts.len())?;
        Ok(Index {
            ids,
            kind: IndexKind::Bm25(Bm25Index::build(texts, params, stopwords)?),
        })
    }

    /// An exact index over row-major `data` of dimension `dim`.
    pub fn exact(ids: Vec<String>, data: Vec<f32>, dim: usize, metric: Metric) -> Result<Index> {
        let exact = ExactIndex::build(data, dim, metric)?;
        unique_ids(&ids, exact.len())?;
        Ok(Index {
            ids,
            kind: IndexKind::Exact(exact),
        })
    }

    /// An HNSW index over row-major `data` of dimension `dim`.
    pub fn hnsw(
        ids: Vec<String>,
        data: Vec<f32>,
        dim: usize,
        metric: Metric,
        params: HnswParams,
    ) -> Result<Index> {
        params.validate()?;
        let exact = ExactIndex::build(data, dim, metric)?;
        unique_ids(&ids, exact.len())?;
        Ok(Index {
            ids,
            kind: IndexKind::Hnsw(HnswIndex::build(exact, params)?),
        })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The vector dimension (`None` for BM25).
    pub fn dim(&self) -> Option<usize> {
        match &self.kind {
            IndexKind::Bm25(_) => None,
            IndexKind::Exact(e) => Some(e.dim()),
            IndexKind::Hnsw(h) => Some(h.exact().dim()),
        }
    }

    /// What `index.json` holds for this index.
    pub fn manifest(&self) -> Manifest {
        let (dim, metric, params) = match &self.kind {
            IndexKind::Bm25(b) => (None, None, serde_json::json!(b.params)),
            IndexKind::Exact(e) => (Some(e.dim()), Some(e.metric()), serde_json::json!({})),
            IndexKind::Hnsw(h) => (
                Some(h.exact().dim()),
                Some(h.exact().metric()),
                serde_json::json!(h.params()),
            ),
        };
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            kind: self.kind.name().into(),
            dim,
            metric,
            params,
            count: self.len(),
            ids: self.ids.clone(),
        }
    }

    /// Writes the HNSW index artifact of `ids` and `exact` with `params` into `dir` without
    /// building the graph: the files [`Index::save`] of the built index would write, less
    /// `hnsw.graph`, so every load builds the graph.
    pub fn save_hnsw_unbuilt(
        dir: &Path,
        ids: &[String],
        exact: &ExactIndex,
        params: HnswParams,
    ) -> Result<()> {
        params.validate()?;
        unique_ids(ids, exact.len())?;
        let manifest = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            kind: "hnsw".into(),
            dim: Some(exact.dim()),
            metric: Some(exact.metric()),
            params: serde_json::json!(params),
            count: ids.len(),
            ids: ids.to_vec(),
        };
        write_manifest(dir, &manifest)?;
        write_vectors(&dir.join(VECTORS_FILE), exact.data())
    }

    /// Writes the index into directory `dir` (created if missing).
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_manifest(dir, &self.manifest())?;
        match &self.kind {
            IndexKind::Bm25(b) => {
                let file = Bm25File {
                    stopwords: b.stopwords.clone(),
                    doc_lens: b.doc_lens.clone(),
                    postings: b.postings.clone(),
                };
                let path = dir.join(BM25_FILE);
                let bytes = serde_json::to_vec(&file).map_err(|e| json_error(&path, e))?;
                write(&path, &bytes)
            }
            IndexKind::Exact(e) => write_vectors(&dir.join(VECTORS_FILE), e.data()),
            IndexKind::Hnsw(h) => {
                write_vectors(&dir.join(VECTORS_FILE), h.exact().data())?;
                write(&dir.join(GRAPH_FILE), &h.graph_bytes())
            }
        }
    }

    /// Reads an index saved by [`Index::save`], checking every size against `index.json`.
    pub fn load(dir: &Path) -> Result<Index> {
        let mpath = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&mpath).map_err(|e| {
            RetrievalError::io(
                "cannot read the index manifest (is this an index directory?)",
                &mpath,
                e,
            )
        })?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| json_error(&mpath, e))?;
        let bad = |message: String| RetrievalError::Format {
            path: mpath.clone(),
            message,
        };
        if m.format != FORMAT || m.version != VERSION {
            return Err(bad(format!(
                "format `{}` version {} is not `{FORMAT}` version {VERSION}; rebuild the index with this expflow",
                m.format, m.version
            )));
        }
        if m.count != m.ids.len() {
            return Err(bad(format!(
                "count is {} but {} ids are listed",
                m.count,
                m.ids.len()
            )));
        }
        let kind = match m.kind.as_str() {
            "bm25" => {
                let params: Bm25Params = serde_json::from_value(m.params.clone())
                    .map_err(|e| bad(format!("bm25 params: {e}")))?;
                params.validate()?;
                IndexKind::Bm25(read_bm25(&dir.join(BM25_FILE), params, m.count)?)
            }
            "exact" | "hnsw" => {
                let dim = m
                    .dim
                    .filter(|d| *d > 0)
                    .ok_or_else(|| bad(format!("a {} index needs a positive `dim`", m.kind)))?;
                let metric = m
                    .metric
                    .ok_or_else(|| bad(format!("a {} index needs a `metric`", m.kind)))?;
                let data = read_vectors(&dir.join(VECTORS_FILE), m.count, dim)?;
                let exact = ExactIndex::from_prepared(data, dim, m.count, metric)?;
                if m.kind == "exact" {
                    IndexKind::Exact(exact)
                } else {
                    let params: HnswParams = serde_json::from_value(m.params.clone())
                        .map_err(|e| bad(format!("hnsw params: {e}")))?;
                    params
                        .validate()
                        .map_err(|e| bad(format!("hnsw params: {e}")))?;
                    IndexKind::Hnsw(load_hnsw(dir, exact, params)?)
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown kind `{other}`; expected bm25, exact or hnsw"
                )));
            }
        };
        unique_ids(&m.ids, m.count).map_err(|e| bad(e.to_string()))?;
        Ok(Index { ids: m.ids, kind })
    }

    /// The best `k` documents for a text query (BM25 indexes only).
    pub fn search_text(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        match &self.kind {
            IndexKind::Bm25(b) => Ok(b.search(query, k)),
            other => Err(RetrievalError::Data(format!(
                "a text query was given to a {} index, which needs query embeddings; give a query embedding column",
                other.name()
            ))),
        }
    }

    /// The best `k` documents for each row of `queries` (vector indexes only); `ef` is used
    /// by HNSW.
    pub fn search_vectors(&self, queries: &[f32], k: usize, ef: usize) -> Result<Vec<Vec<Hit>>> {
        match &self.kind {
            IndexKind::Bm25(_) => Err(RetrievalError::Data(
                "query embeddings were given to a bm25 index, which needs query text; give a query text column".into(),
            )),
            IndexKind::Exact(e) => e.search_batch(queries, k),
            IndexKind::Hnsw(h) => h.search_batch(queries, k, ef),
        }
    }
}

fn json_error(path: &Path, e: serde_json::Error) -> RetrievalError {
    RetrievalError::Format {
        path: path.to_path_buf(),
        message: format!("invalid JSON: {e}"),
    }
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| RetrievalError::io("cannot create", dir, e))?;
    let path = dir.join(MANIFEST_FILE);
    let mut bytes = serde_json::to_vec_pretty(manifest).map_err(|e| json_error(&path, e))?;
    bytes.push(b'\n');
    write(&path, &bytes)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| RetrievalError::io("cannot write", path, e))
}

fn write_vectors(path: &Path, data: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    write(path, &bytes)
}

/// The HNSW index over `exact`: its graph from `hnsw.graph`, or built again when the artifact
/// has no graph file.
fn load_hnsw(dir: &Path, exact: ExactIndex, params: HnswParams) -> Result<HnswIndex> {
    let path = dir.join(GRAPH_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let graph =
                Graph::from_bytes(&path, &bytes, exact.len(), params.m, params.ef_construction)?;
            Ok(HnswIndex::with_graph(exact, params, graph))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(
                index = %dir.display(),
                count = exact.len(),
                "the HNSW index has no {GRAPH_FILE} (written by an older expflow or unbuilt); building its graph"
            );
            HnswIndex::build(exact, params)
        }
        Err(e) => Err(RetrievalError::io("cannot read", &path, e)),
    }
}

fn read_vectors(path: &Path, count: usize, dim: usize) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).map_err(|e| RetrievalError::io("cannot read", path, e))?;
    let want = count * dim * 4;
    if bytes.len() != want {
        return Err(RetrievalError::Format {
            path: PathBuf::from(path),
            message: format!(
                "holds {} bytes, but index.json says {count} vectors of dimension {dim} ({want} bytes); the index is damaged or its files come from different builds",
                bytes.len()
            ),
        });
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn read_bm25(path: &Path, params: Bm25Params, count: usize) -> Result<Bm25Index> {
    let bytes = std::fs::read(path).map_err(|e| RetrievalError::io("cannot read", path, e))?;
    let f: Bm25File = serde_json::from_slice(&bytes).map_err(|e| json_error(path, e))?;
    let bad = |message: String| RetrievalError::Format {
        path: path.to_path_buf(),
        message,
    };
    if f.doc_lens.len() != count {
        return Err(bad(format!(
            "has {} document lengths, but index.json lists {count} ids",
            f.doc_lens.len()
        )));
    }
    for (term, list) in &f.postings {
        if list.iter().any(|(d, _)| *d as usize >= count)
            || !list.windows(2).all(|w| w[0].0 < w[1].0)
        {
            return Err(bad(format!(
                "the postings of `{term}` are out of range or out of order"
            )));
        }
    }
    Ok(Bm25Index {
        params,
        stopwords: f.stopwords,
        doc_lens: f.doc_lens,
        postings: f.postings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("p{i}")).collect()
    }

    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }

    fn vectors() -> Vec<f32> {
        (0..60)
            .map(|i| ((i * 37 % 17) as f32) / 4.0 - 2.0)
            .collect()
    }

    #[test]
    fn equal_inputs_give_equal_bytes_and_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let texts = ["salt water", "red ink in water", "燃烧反应"];
        let stop = vec!["in".to_string()];
        let build = || {
            vec![
                Index::bm25(ids(3), &texts, Bm25Params::default(), &stop).unwrap(),
                Index::exact(ids(20), vectors(), 3, Metric::Cosine).unwrap(),
                Index::hnsw(
                    ids(20),
                    vectors(),
                    3,
                    Metric::InnerProduct,
                    HnswParams::default(),
                )
                .unwrap(),
            ]
        };
        for (i, (a, b)) in build().iter().zip(build().iter()).enumerate() {
            let (da, db) = (
                dir.path().join(format!("a{i}")),
                dir.path().join(format!("b{i}")),
            );
            a.save(&da).unwrap();
            b.save(&db).unwrap();
            assert_eq!(files(&da), files(&db));
            let back = Index::load(&da).unwrap();
            assert_eq!(back.ids, a.ids);
            assert_eq!(back.manifest(), a.manifest());
            // Saving what was loaded gives the same bytes again.
            let dc = dir.path().join(format!("c{i}"));
            back.save(&dc).unwrap();
            assert_eq!(files(&da), files(&dc));
        }
        let loaded = Index::load(&dir.path().join("a0")).unwrap();
        assert_eq!(loaded.search_text("red water", 1).unwrap()[0].index, 1);
        let loaded = Index::load(&dir.path().join("a2")).unwrap();
        let q = [1.0f32, 0.5, -0.5];
        assert_eq!(
            loaded.search_vectors(&q, 3, 50).unwrap(),
            build()[2].search_vectors(&q, 3, 50).unwrap()
        );
        // The unbuilt HNSW artifact is the built one's, byte for byte, less the graph.
        let e = ExactIndex::build(vectors(), 3, Metric::InnerProduct).unwrap();
        let du = dir.path().join("unbuilt");
        Index::save_hnsw_unbuilt(&du, &ids(20), &e, HnswParams::default()).unwrap();
        let mut built = files(&dir.path().join("a2"));
        built.retain(|(name, _)| name != GRAPH_FILE);
        assert_eq!(files(&du), built);
        let m = std::fs::read_to_string(dir.path().join("a1").join(MANIFEST_FILE)).unwrap();
        assert!(
            m.contains("\"kind\": \"exact\"") && m.contains("\"metric\": \"cosine\""),
            "{m}"
        );
    }

    /// Seeded pseudo-random values in [-1, 1) (splitmix64).
    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn hnsw_index(parallel: bool) -> Index {
        let params = HnswParams {
            m: 8,
            ef_construction: 64,
            parallel,
        };
        Index::hnsw(ids(1500), random(1500 * 12, 11), 12, Metric::Cosine, params).unwrap()
    }

    #[test]
    fn a_saved_hnsw_graph_loads_back_and_searches_identically() {
        let dir = tempfile::tempdir().unwrap();
        let queries = random(40 * 12, 12);
        for parallel in [false, true] {
            let built = hnsw_index(parallel);
            let d = dir.path().join(format!("p{parallel}"));
            built.save(&d).unwrap();
            let graph = std::fs::read(d.join(GRAPH_FILE)).unwrap();
            assert!(
                graph.starts_with(b"EXPHNSW1") && graph.len() > 1500 * 8,
                "{}",
                graph.len()
            );
            let loaded = Index::load(&d).unwrap();
            for ef in [10, 40, 200] {
                assert_eq!(
                    loaded.search_vectors(&queries, 10, ef).unwrap(),
                    built.search_vectors(&queries, 10, ef).unwrap(),
                    "parallel {parallel}, ef {ef}"
                );
            }
            if !parallel {
                // A second serial build writes the same graph, byte for byte.
                let d2 = dir.path().join("second");
                hnsw_index(false).save(&d2).unwrap();
                assert_eq!(files(&d), files(&d2));
            }
            // The loaded graph is the saved one (also for a parallel build, whose graph a
            // rebuild would not reproduce).
            let again = dir.path().join(format!("again{parallel}"));
            loaded.save(&again).unwrap();
            assert_eq!(files(&d), files(&again));
        }
    }

    #[test]
    fn an_hnsw_artifact_without_its_graph_is_rebuilt_identically() {
        let dir = tempfile::tempdir().unwrap();
        let built = hnsw_index(false);
        built.save(dir.path()).unwrap();
        let saved = files(dir.path());
        std::fs::remove_file(dir.path().join(GRAPH_FILE)).unwrap();
        let rebuilt = Index::load(dir.path()).unwrap();
        let queries = random(40 * 12, 13);
        assert_eq!(
            rebuilt.search_vectors(&queries, 10, 50).unwrap(),
            built.search_vectors(&queries, 10, 50).unwrap()
        );
        let d = dir.path().join("resaved");
        rebuilt.save(&d).unwrap();
        assert_eq!(files(&d), saved);
    }

    #[test]
    fn a_damaged_or_foreign_graph_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        hnsw_index(false).save(dir.path()).unwrap();
        let g = dir.path().join(GRAPH_FILE);
        let bytes = std::fs::read(&g).unwrap();
        let load_err = |b: &[u8]| {
            std::fs::write(&g, b).unwrap();
            Index::load(dir.path()).unwrap_err().to_string()
        };
        let e = load_err(&bytes[..bytes.len() - 3]);
        assert!(
            e.contains("hnsw.graph") && e.contains("ends too early") && e.contains("delete it"),
            "{e}"
        );
        let e = load_err(&[&bytes[..], &[0]].concat());
        assert!(e.contains("1 bytes after the last row"), "{e}");
        let e = load_err(b"not a graph");
        assert!(e.contains("does not start with `EXPHNSW1`"), "{e}");
        // A graph of another index (other parameters) is refused, not searched.
        let other = dir.path().join("other");
        Index::hnsw(
            ids(1500),
            random(1500 * 12, 11),
            12,
            Metric::Cosine,
            HnswParams::default(),
        )
        .unwrap()
        .save(&other)
        .unwrap();
        let e = load_err(&std::fs::read(other.join(GRAPH_FILE)).unwrap());
        assert!(
            e.contains("M 16, ef_construction 200") && e.contains("M 8, ef_construction 64"),
            "{e}"
        );
        // A neighbour out of range: the last neighbour id of the last row set to 1500.
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 4..].copy_from_slice(&1500u32.to_le_bytes());
        let e = load_err(&bad);
        assert!(e.contains("neighbour 1500 on layer"), "{e}");
    }

    #[test]
    fn damaged_or_mismatched_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::exact(ids(20), vectors(), 3, Metric::InnerProduct).unwrap();
        idx.save(dir.path()).unwrap();
        let v = dir.path().join(VECTORS_FILE);
        let bytes = std::fs::read(&v).unwrap();
        std::fs::write(&v, &bytes[..bytes.len() - 4]).unwrap();
        let e = Index::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("vectors.f32") && e.contains("20 vectors of dimension 3"),
            "{e}"
        );
        let e = Index::load(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("index.json") && e.contains("is this an index directory"),
            "{e}"
        );
        let e = idx
            .search_vectors(&[1.0; 4], 1, 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dimension") && e.contains("3 is needed"), "{e}");
        let e = idx.search_text("water", 1).unwrap_err().to_string();
        assert!(
            e.contains("exact index, which needs query embeddings"),
            "{e}"
        );
    }

    #[test]
    fn ids_must_be_unique_and_one_per_document() {
        let dup = vec!["a".to_string(), "a".to_string()];
        let e = Index::bm25(dup, &["x", "y"], Bm25Params::default(), &[]).unwrap_err();
        assert!(e.to_string().contains("`a` appears more than once"), "{e}");
        let e = Index::exact(ids(3), vectors(), 3, Metric::InnerProduct).unwrap_err();
        assert!(
            e.to_string().contains("3 ids were given for 20 documents"),
            "{e}"
        );
    }
}
