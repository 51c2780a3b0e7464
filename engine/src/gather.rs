//! Gathering the points of a `matrix` node into one input (`in: {runs: sweep[*].table}`):
//! a directory artifact built from the stored outputs without copying a byte: each point's
//! output under `NNNN` (`.parquet` for tables, `.json` for metrics; a directory output as a
//! directory), and `points.json` listing the points in the file's order with their matrix
//! values, node names, types and paths. Its digest follows every point's output digest and
//! matrix values, so a changed point re-runs the node that gathers.

use expflow_cache::{Cas, Digest, Manifest, ManifestEntry, OutputRef};
use serde_json::{Map, Value, json};

use crate::error::Result;

/// The file holding the list of points.
pub const POINTS: &str = "points.json";

/// One gathered point: its node name, matrix values and output.
pub struct Point<'a> {
    pub node: &'a str,
    pub matrix: &'a Map<String, Value>,
    pub output: &'a OutputRef,
}

/// The gathered directory's manifest and the bytes of its `points.json`.
pub fn manifest(cas: &Cas, points: &[Point<'_>]) -> Result<(Manifest, Vec<u8>)> {
    let mut entries = Vec::new();
    let mut list = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let ext = match p.output.kind.as_str() {
            "table" => ".parquet",
            "metrics" => ".json",
            _ => "",
        };
        let path = format!("{i:04}{ext}");
        if p.output.dir {
            for e in cas.read_manifest(&p.output.digest)?.entries {
                entries.push(ManifestEntry {
                    path: format!("{path}/{}", e.path),
                    ..e
                });
            }
        } else {
            entries.push(ManifestEntry {
                path: path.clone(),
                mode: 0o644,
                digest: p.output.digest,
                size: p.output.size,
            });
        }
        list.push(json!({
            "node": p.node,
            "matrix": p.matrix,
            "type": p.output.kind,
            "path": path,
        }));
    }
    let mut bytes = serde_json::to_vec_pretty(&list).unwrap_or_default();
    bytes.push(b'\n');
    entries.push(ManifestEntry {
        path: POINTS.into(),
        mode: 0o644,
        digest: Digest::of_bytes(&bytes),
        size: bytes.len() as u64,
    });
    Ok((Manifest { entries }, bytes))
}

/// The gathered directory's digest, without storing anything (for `plan`).
pub fn digest(cas: &Cas, points: &[Point<'_>]) -> Result<Digest> {
    Ok(manifest(cas, points)?.0.digest())
}

/// Stores the gathered directory (its `points.json` and manifest; the points' blobs are
/// stored already) and returns its digest and size.
pub fn store(cas: &Cas, points: &[Point<'_>]) -> Result<(Digest, u64)> {
    let (m, bytes) = manifest(cas, points)?;
    m.validate()?;
    cas.put_bytes(&bytes)?;
    let d = cas.put_bytes(m.to_text().as_bytes())?;
    Ok((d, m.total_size()))
}
