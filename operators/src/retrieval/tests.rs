//! Tests of the retrieval operators through the engine's harness, chained as in a pipeline:
//! index → search → ExpStar results → `expstar.add_rag`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use expflow_engine::PortType;
use expflow_engine::harness::Harness;
use polars::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::expstar::{AddRag, read_rows, write_rows};
use crate::table_io::{read_table, write_table};
use crate::testing::{column_i64, column_str};

/// A harness with helpers to write input tables and run operators on paths.
struct Bench {
    dir: tempfile::TempDir,
    harness: Harness,
    files: usize,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let harness = Harness::new(&dir.path().join("work")).unwrap();
        Bench {
            dir,
            harness,
            files: 0,
        }
    }

    fn table(&mut self, df: &DataFrame) -> PathBuf {
        self.files += 1;
        let p = self.dir.path().join(format!("t{}.parquet", self.files));
        write_table(&mut df.clone(), &p).unwrap();
        p
    }

    fn run(
        &mut self,
        op: &dyn expflow_engine::Operator,
        inputs: &[(&str, PortType, &Path)],
        params: Value,
    ) -> Result<BTreeMap<String, PathBuf>, expflow_engine::OpError> {
        Ok(self.harness.run(op, inputs, params, &[])?.outputs)
    }
}

fn passages() -> DataFrame {
    df!(
        "id" => ["p1", "p2", "p3", "p4"],
        "title" => ["Combustion", "Salt water", "Diffusion", "燃烧"],
        "text" => [
            "Combustion is a chemical reaction between a fuel and an oxidant that produces heat.",
            "Salt water conducts electricity because dissolved salt forms ions.",
            "Ink spreads through water by diffusion, faster when the water is warm.",
            "燃烧是可燃物与氧化剂发生的剧烈化学反应。",
        ],
    )
    .unwrap()
}

fn queries() -> DataFrame {
    df!(
        "id" => ["q1", "q2", "q3"],
        "query" => ["red ink drops in warm water", "why does salt water conduct", "燃烧的化学反应"],
        "video_path" => ["clips/a/1.mp4", "clips/a/2.mp4", "clips/b/1.mp4"],
    )
    .unwrap()
}

fn list_column(name: &str, rows: &[Option<Vec<f32>>]) -> Column {
    let mut b = ListPrimitiveChunkedBuilder::<Float32Type>::new(
        name.into(),
        rows.len(),
        8,
        DataType::Float32,
    );
    for r in rows {
        match r {
            Some(v) => b.append_slice(v),
            None => b.append_null(),
        }
    }
    b.finish().into_column()
}

fn dir_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
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

/// BM25 index → search with passages attached.
fn bm25_search(b: &mut Bench, k: u64) -> (PathBuf, PathBuf) {
    let p = b.table(&passages());
    let q = b.table(&queries());
    let index = b
        .run(
            &Bm25IndexOp,
            &[("table", PortType::Table, &p)],
            json!({"text_columns": ["title", "text"]}),
        )
        .unwrap()["index"]
        .clone();
    let hits = b
        .run(
            &Search,
            &[
                ("queries", PortType::Table, &q),
                ("index", PortType::Index, &index),
                ("passages", PortType::Table, &p),
            ],
            json!({"k": k}),
        )
        .unwrap()["table"]
        .clone();
    (index, hits)
}

#[test]
fn bm25_search_ranks_and_attaches_passages() {
    let mut b = Bench::new();
    let (index, hits) = bm25_search(&mut b, 2);
    let df = read_table(&hits).unwrap();
    let names: Vec<&str> = df.get_column_names().iter().map(|n| n.as_str()).collect();
    assert_eq!(
        names,
        ["query_id", "rank", "passage_id", "score", "title", "text"]
    );
    let qid = column_str(&df, "query_id");
    let pid = column_str(&df, "passage_id");
    let rank = column_i64(&df, "rank");
    let first = |q: &str| {
        let i = qid.iter().position(|x| x.as_deref() == Some(q)).unwrap();
        (pid[i].clone().unwrap(), rank[i].unwrap())
    };
    assert_eq!(first("q1"), ("p3".to_string(), 1));
    assert_eq!(first("q2"), ("p2".to_string(), 1));
    assert_eq!(first("q3"), ("p4".to_string(), 1));
    let titles = column_str(&df, "title");
    let i = pid.iter().position(|p| p.as_deref() == Some("p4")).unwrap();
    assert_eq!(titles[i].as_deref(), Some("燃烧"));
    // Scores fall with rank within each query.
    let score: Vec<f64> = df
        .column("score")
        .unwrap()
        .f64()
        .unwrap()
        .into_no_null_iter()
        .collect();
    for i in 1..df.height() {
        if qid[i] == qid[i - 1] {
            assert!(score[i] <= score[i - 1]);
            assert_eq!(rank[i].unwrap(), rank[i - 1].unwrap() + 1);
        }
    }
    // The same inputs give the same index and table bytes.
    let mut b2 = Bench::new();
    let (index2, hits2) = bm25_search(&mut b2, 2);
    assert_eq!(dir_bytes(&index), dir_bytes(&index2));
    assert_eq!(
        std::fs::read(&hits).unwrap(),
        std::fs::read(&hits2).unwrap()
    );
}

fn embeddings() -> DataFrame {
    let rows: Vec<Option<Vec<f32>>> = vec![
        Some(vec![1.0, 0.0, 0.0]),
        Some(vec![0.0, 1.0, 0.0]),
        Some(vec![0.0, 0.0, 1.0]),
        Some(vec![0.6, 0.6, 0.0]),
    ];
    DataFrame::new(
        4,
        vec![
            Column::new("id".into(), ["p1", "p2", "p3", "p4"]),
            list_column("embedding", &rows),
        ],
    )
    .unwrap()
}

#[test]
fn exact_and_hnsw_vector_search_agree_on_a_small_table() {
    let mut b = Bench::new();
    let e = b.table(&embeddings());
    let qdf = DataFrame::new(
        2,
        vec![
            Column::new("id".into(), ["q1", "q2"]),
            list_column(
                "embedding",
                &[Some(vec![0.1, 0.9, 0.0]), Some(vec![0.0, 0.1, 2.0])],
            ),
        ],
    )
    .unwrap();
    let q = b.table(&qdf);
    let mut results = Vec::new();
    for kind in ["exact", "hnsw"] {
        let index = b
            .run(
                &VectorIndexOp,
                &[("table", PortType::Table, &e)],
                json!({"kind": kind}),
            )
            .unwrap()["index"]
            .clone();
        let manifest = std::fs::read_to_string(index.join("index.json")).unwrap();
        assert!(
            manifest.contains(&format!("\"kind\": \"{kind}\"")),
            "{manifest}"
        );
        let hits = b
            .run(
                &Search,
                &[
                    ("queries", PortType::Table, &q),
                    ("index", PortType::Index, &index),
                ],
                json!({"k": 2}),
            )
            .unwrap()["table"]
            .clone();
        let df = read_table(&hits).unwrap();
        results.push((
            column_str(&df, "passage_id"),
            df.column("score").unwrap().clone(),
        ));
    }
    assert_eq!(results[0], results[1]);
    let ids = &results[0].0;
    assert_eq!(ids[0].as_deref(), Some("p2"));
    assert_eq!(ids[1].as_deref(), Some("p4"));
    assert_eq!(ids[2].as_deref(), Some("p3"));
}

#[test]
fn query_dimension_and_index_kind_mismatches_are_explained() {
    let mut b = Bench::new();
    let e = b.table(&embeddings());
    let index = b
        .run(&VectorIndexOp, &[("table", PortType::Table, &e)], json!({}))
        .unwrap()["index"]
        .clone();
    let qdf = DataFrame::new(
        1,
        vec![
            Column::new("id".into(), ["q1"]),
            list_column("embedding", &[Some(vec![1.0, 2.0])]),
        ],
    )
    .unwrap();
    let q = b.table(&qdf);
    let err = b
        .run(
            &Search,
            &[
                ("queries", PortType::Table, &q),
                ("index", PortType::Index, &index),
            ],
            json!({}),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("2-d but the index is 3-d"), "{err}");
    let q = b.table(&queries());
    let err = b
        .run(
            &Search,
            &[
                ("queries", PortType::Table, &q),
                ("index", PortType::Index, &index),
            ],
            json!({}),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("column `embedding` (from `query_embedding_column`) not found"),
        "{err}"
    );
}

#[test]
fn fuse_weights_same_space_vectors_and_records_text_only_rows() {
    let mut b = Bench::new();
    let df = DataFrame::new(
        2,
        vec![
            Column::new("id".into(), ["q1", "q2"]),
            list_column(
                "text_embedding",
                &[Some(vec![1.0, 0.0]), Some(vec![3.0, 4.0])],
            ),
            list_column("video_embedding", &[Some(vec![0.0, 1.0]), None]),
        ],
    )
    .unwrap();
    let t = b.table(&df);
    let out = b
        .run(
            &Fuse,
            &[("table", PortType::Table, &t)],
            json!({"text_weight": 0.25, "normalize": false}),
        )
        .unwrap()["table"]
        .clone();
    let out = read_table(&out).unwrap();
    assert_eq!(
        column_str(&out, "fusion"),
        [Some("text+video".into()), Some("text".into())]
    );
    let rows = vector_column("test", "x", &out, "out", "embedding").unwrap();
    assert_eq!(rows, [Some(vec![0.25, 0.75]), Some(vec![3.0, 4.0])]);

    let bad = DataFrame::new(
        1,
        vec![
            Column::new("id".into(), ["q1"]),
            list_column("text_embedding", &[Some(vec![1.0, 0.0, 0.0])]),
            list_column("video_embedding", &[Some(vec![0.0, 1.0])]),
        ],
    )
    .unwrap();
    let t = b.table(&bad);
    let err = b
        .run(&Fuse, &[("table", PortType::Table, &t)], json!({}))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("row 0") && err.contains("untrained random"),
        "{err}"
    );
}

#[test]
fn fuse_with_a_seeded_projection_is_deterministic_and_text_only_without_video() {
    let mut b = Bench::new();
    let df = DataFrame::new(
        3,
        vec![
            Column::new("id".into(), ["q1", "q2", "q3"]),
            list_column(
                "text_embedding",
                &[
                    Some(vec![1.0, 0.0, 0.0]),
                    Some(vec![0.0, 1.0, 0.0]),
                    Some(vec![0.0, 0.0, 2.0]),
                ],
            ),
            list_column(
                "video_embedding",
                &[Some(vec![0.5, -1.0]), Some(vec![0.5, -1.0]), None],
            ),
        ],
    )
    .unwrap();
    let t = b.table(&df);
    let mut fused = |seed: u64| {
        let out = b
            .run(
                &Fuse,
                &[("table", PortType::Table, &t)],
                json!({"projection": "seeded", "projection_seed": seed, "normalize": false}),
            )
            .unwrap()["table"]
            .clone();
        (std::fs::read(&out).unwrap(), read_table(&out).unwrap())
    };
    let (bytes, one) = fused(3);
    let (again, _) = fused(3);
    let (_, other) = fused(4);
    assert_eq!(bytes, again, "same seed, same bytes");
    let v = vector_column("test", "x", &one, "out", "embedding").unwrap();
    let w = vector_column("test", "x", &other, "out", "embedding").unwrap();
    assert_ne!(v[0], w[0], "another seed, another projection");
    // The same clip vector is projected by the same map for every query: the video halves of
    // q1 and q2 are equal, so their fused vectors differ by the text halves alone.
    let (a, c) = (v[0].clone().unwrap(), v[1].clone().unwrap());
    let diff: Vec<f32> = a.iter().zip(&c).map(|(x, y)| x - y).collect();
    for (d, want) in diff.iter().zip([0.3, -0.3, 0.0]) {
        assert!((d - want).abs() < 1e-6, "{diff:?}");
    }
    let p = expflow_retrieval::Projection::seeded(2, 3, 3).unwrap();
    let video = p.apply(&[0.5, -1.0]).unwrap();
    for (x, (t, pv)) in a.iter().zip([1.0f32, 0.0, 0.0].iter().zip(&video)) {
        assert!((x - (0.3 * t + 0.7 * pv)).abs() < 1e-6, "{a:?}");
    }
    assert_eq!(
        v[2],
        Some(vec![0.0, 0.0, 2.0]),
        "no clip: the text vector alone"
    );
    assert_eq!(
        column_str(&one, "fusion"),
        [
            Some("text+video".into()),
            Some("text+video".into()),
            Some("text".into())
        ]
    );
}

/// A self-RAG template row for `video` (the shape expstar.template_rows writes).
fn template_row(id: &str, video: &str) -> Value {
    json!({
        "id": id,
        "messages": [
            {"role": "system", "content": "You are an expert narrator."},
            {"role": "user", "content": "<video>Describe the step."},
            {"role": "assistant", "content": "<Narration>\nAdd ink.\n[Retrieval]"},
            {"role": "user", "content": "<paragraph>passage</paragraph>"},
            {"role": "assistant", "content": "[Is Relevant?]<Principle>\nDiffusion."},
        ],
        "videos": [video],
    })
}

#[test]
fn expstar_results_feed_add_rag() {
    let mut b = Bench::new();
    let (_, hits) = bm25_search(&mut b, 2);
    let q = b.table(&queries());
    let out = b
        .run(
            &ExpstarResults,
            &[
                ("hits", PortType::Table, &hits),
                ("queries", PortType::Table, &q),
            ],
            json!({}),
        )
        .unwrap()["retrieval"]
        .clone();
    let text = std::fs::read_to_string(&out).unwrap();
    let results: Value = serde_json::from_str(&text).unwrap();
    let list = results.as_array().unwrap();
    assert_eq!(list.len(), 3);
    let keys: Vec<&str> = list[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["id", "query", "video_path", "documents"]);
    let doc_keys: Vec<&str> = list[0]["documents"][0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(doc_keys, ["id", "title", "text"]);
    assert_eq!(list[0]["id"], "q1");
    assert_eq!(list[0]["video_path"], "clips/a/1.mp4");
    assert_eq!(list[0]["documents"][0]["id"], "p3");
    assert!(text.starts_with("[\n  {\n    \"id\": \"q1\""), "{text}");
    assert!(text.contains("燃烧"), "non-ASCII is written raw: {text}");

    let rows_path = b.dir.path().join("rows.parquet");
    let rows = vec![
        template_row("s1", "clips/a/1.mp4"),
        template_row("s2", "clips/b/1.mp4"),
    ];
    write_rows(&rows_path, &rows).unwrap();

    // Unjudged results (no `is_rag`) leave the rows as they are.
    let same = b
        .run(
            &AddRag,
            &[
                ("rows", PortType::Table, &rows_path),
                ("retrieval", PortType::File, &out),
            ],
            json!({}),
        )
        .unwrap()["rows"]
        .clone();
    assert_eq!(read_rows(&same).unwrap(), rows);

    // The judge (unreleased in the original; done by hand here) marks clip a/1 for RAG and its
    // top document relevant.
    let mut judged = results.clone();
    for entry in judged.as_array_mut().unwrap() {
        entry["is_rag"] = json!(entry["video_path"] == "clips/a/1.mp4");
        for (i, d) in entry["documents"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .enumerate()
        {
            d["relevant"] = json!(if i == 0 { 5 } else { 1 });
        }
    }
    let judged_path = b.dir.path().join("judged.json");
    std::fs::write(&judged_path, serde_json::to_vec(&judged).unwrap()).unwrap();
    let expanded = b
        .run(
            &AddRag,
            &[
                ("rows", PortType::Table, &rows_path),
                ("retrieval", PortType::File, &judged_path),
            ],
            json!({}),
        )
        .unwrap()["rows"]
        .clone();
    let expanded = read_rows(&expanded).unwrap();
    let n_docs = list[0]["documents"].as_array().unwrap().len();
    assert_eq!(
        expanded.len(),
        n_docs + 1,
        "one row per document of s1, and s2 unchanged"
    );
    let top = list[0]["documents"][0]["text"].as_str().unwrap();
    assert_eq!(
        expanded[0]["messages"][3]["content"],
        format!("<paragraph>{top}</paragraph>")
    );
    assert_eq!(
        expanded[0]["messages"][4]["content"],
        "[Relevant]<Principle>\nDiffusion."
    );
    assert_eq!(
        expanded[1]["messages"][4]["content"],
        "[Irrelevant]<Principle>\nDiffusion."
    );
    assert_eq!(expanded[n_docs], rows[1]);
}
