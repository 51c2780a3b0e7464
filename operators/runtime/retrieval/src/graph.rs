//! The HNSW graph as plain neighbour lists: taken from `hnsw_rs` after a build, searched here,
//! and written to and read from an index artifact's `hnsw.graph`.
//!
//! `hnsw_rs` builds the graph; its fields are private to that crate, so a graph read back
//! from disk cannot be turned into an `hnsw_rs::Hnsw` without inserting every point again
//! (the 2-minute build this file exists to avoid). Search therefore runs here, on the lists,
//! for freshly built and loaded indexes alike, so both give the same results.
//!
//! The lists are kept as `hnsw_rs` left them. Its lists of a layer can name a row whose own
//! top layer is lower (a row that was the entry point while that layer was still empty), and
//! such a row then has lists above its top layer; search reads them as `hnsw_rs`'s does.
//!
//! File layout (all integers little-endian): the magic `EXPHNSW1`; `count`, `m`,
//! `ef_construction`, `entry` as u32; then, for each row in order, the number of layers it has
//! lists on (u8, 1 to 16: up to its highest non-empty list) and, for each of those layers
//! from 0, the neighbour count (u32) and the neighbour rows (u32 each). Equal graphs give
//! equal bytes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;

use hnsw_rs::hnsw::Hnsw;

use crate::error::{Result, RetrievalError};

/// The first bytes of `hnsw.graph`.
const MAGIC: &[u8; 8] = b"EXPHNSW1";
/// `hnsw_rs` has at most 16 layers (0 to 15).
const MAX_LAYERS: u8 = 16;

/// Neighbour lists of one layer, over all rows (rows below the layer have empty lists).
#[derive(Clone, Debug, Default)]
struct Lists {
    offsets: Vec<usize>,
    ids: Vec<u32>,
}

impl Lists {
    fn of(&self, row: usize) -> &[u32] {
        &self.ids[self.offsets[row]..self.offsets[row + 1]]
    }
}

/// An HNSW graph: each row's neighbours on each layer, and the entry point.
#[derive(Clone, Debug)]
pub(crate) struct Graph {
    /// The row search starts from: `hnsw_rs`'s entry point, the first row (in insertion
    /// order) of the top layer.
    entry: u32,
    /// Number of rows.
    count: usize,
    /// `layers[l]`: the neighbour lists of layer `l`.
    layers: Vec<Lists>,
}

/// A candidate during search: distance (smaller is closer), then row, for a total order.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Cand(f32, u32);

impl Eq for Cand {}

impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Cand {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// One visited bit per row.
struct Visited(Vec<u64>);

impl Visited {
    fn new(n: usize) -> Self {
        Visited(vec![0; n.div_ceil(64)])
    }

    /// Marks `row`; true when it was not marked before.
    fn insert(&mut self, row: u32) -> bool {
        let (w, b) = (row as usize / 64, row % 64);
        let fresh = self.0[w] & (1 << b) == 0;
        self.0[w] |= 1 << b;
        fresh
    }
}

impl Graph {
    /// The graph `hnsw` built over rows `0..count` (each inserted with its row as id).
    pub(crate) fn from_hnsw<D>(hnsw: &Hnsw<'_, f32, D>, count: usize) -> Result<Graph>
    where
        D: hnsw_rs::anndists::dist::Distance<f32> + Send + Sync,
    {
        let points = hnsw.get_point_indexation();
        let top = points.get_max_level_observed();
        let mut per_row: Vec<Option<Vec<Vec<u32>>>> = vec![None; count];
        let mut entry = None;
        for level in 0..=top {
            for p in points.get_layer_iterator(level as usize) {
                let row = p.get_origin_id();
                let slot = per_row.get_mut(row).filter(|s| s.is_none()).ok_or_else(|| {
                    RetrievalError::Data(format!(
                        "the HNSW graph holds row {row} twice or out of range ({count} rows); this is a bug in the build"
                    ))
                })?;
                let mut lists: Vec<Vec<u32>> = p
                    .get_neighborhood_id()
                    .iter()
                    .map(|l| l.iter().map(|n| n.d_id as u32).collect())
                    .collect();
                while lists.len() > 1 && lists.last().is_some_and(Vec::is_empty) {
                    lists.pop();
                }
                *slot = Some(lists);
                if level == top && entry.is_none() {
                    entry = Some(row as u32);
                }
            }
        }
        let per_row: Vec<Vec<Vec<u32>>> = per_row
            .into_iter()
            .enumerate()
            .map(|(row, l)| {
                l.ok_or_else(|| {
                    RetrievalError::Data(format!(
                        "row {row} is missing from the HNSW graph; this is a bug in the build"
                    ))
                })
            })
            .collect::<Result<_>>()?;
        Ok(Graph::from_lists(entry.unwrap_or(0), &per_row))
    }

    fn from_lists(entry: u32, per_row: &[Vec<Vec<u32>>]) -> Graph {
        let layers = per_row.iter().map(Vec::len).max().unwrap_or(1);
        let layers = (0..layers)
            .map(|l| {
                let mut lists = Lists {
                    offsets: Vec::with_capacity(per_row.len() + 1),
                    ids: Vec::new(),
                };
                lists.offsets.push(0);
                for row in per_row {
                    if let Some(ns) = row.get(l) {
                        lists.ids.extend_from_slice(ns);
                    }
                    lists.offsets.push(lists.ids.len());
                }
                lists
            })
            .collect();
        Graph {
            entry,
            count: per_row.len(),
            layers,
        }
    }

    /// The about `ef` nearest rows by `dist` (smaller is closer), closest first: greedy
    /// descent through the upper layers, then a best-first search of width `ef` on layer 0.
    pub(crate) fn search(&self, dist: impl Fn(usize) -> f32, ef: usize) -> Vec<(f32, usize)> {
        let n = self.count;
        if n == 0 || ef == 0 {
            return Vec::new();
        }
        let mut cur = Cand(dist(self.entry as usize), self.entry);
        for lists in self.layers.iter().skip(1).rev() {
            loop {
                let mut best = cur;
                for &nb in lists.of(cur.1 as usize) {
                    let c = Cand(dist(nb as usize), nb);
                    if c < best {
                        best = c;
                    }
                }
                if best == cur {
                    break;
                }
                cur = best;
            }
        }
        let mut visited = Visited::new(n);
        visited.insert(cur.1);
        // Candidates to expand, closest first; results, farthest first.
        let mut todo = BinaryHeap::from([Reverse(cur)]);
        let mut found = BinaryHeap::from([cur]);
        while let Some(Reverse(c)) = todo.pop() {
            if found.len() >= ef && found.peek().is_some_and(|far| c > *far) {
                break;
            }
            for &nb in self.layers[0].of(c.1 as usize) {
                if !visited.insert(nb) {
                    continue;
                }
                let e = Cand(dist(nb as usize), nb);
                if found.len() < ef || found.peek().is_some_and(|far| e < *far) {
                    todo.push(Reverse(e));
                    found.push(e);
                    if found.len() > ef {
                        found.pop();
                    }
                }
            }
        }
        found
            .into_sorted_vec()
            .into_iter()
            .map(|c| (c.0, c.1 as usize))
            .collect()
    }

    /// The bytes of `hnsw.graph` for a graph built with `m` and `ef_construction`.
    pub(crate) fn to_bytes(&self, m: usize, ef_construction: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + 5 * self.count + 4 * self.layers[0].ids.len());
        out.extend_from_slice(MAGIC);
        for v in [self.count, m, ef_construction] {
            out.extend_from_slice(&(v as u32).to_le_bytes());
        }
        out.extend_from_slice(&self.entry.to_le_bytes());
        for row in 0..self.count {
            let used = self
                .layers
                .iter()
                .rposition(|l| !l.of(row).is_empty())
                .map_or(1, |l| l + 1);
            out.push(used as u8);
            for lists in &self.layers[..used] {
                let ns = lists.of(row);
                out.extend_from_slice(&(ns.len() as u32).to_le_bytes());
                for nb in ns {
                    out.extend_from_slice(&nb.to_le_bytes());
                }
            }
        }
        out
    }

    /// Reads `hnsw.graph` bytes, checking them against the manifest's `count`, `m` and
    /// `ef_construction`.
    pub(crate) fn from_bytes(
        path: &Path,
        bytes: &[u8],
        count: usize,
        m: usize,
        ef_construction: usize,
    ) -> Result<Graph> {
        let bad = |message: String| RetrievalError::Format {
            path: path.to_path_buf(),
            message: format!(
                "{message}; the file is damaged or comes from another build: delete it to rebuild the graph from the vectors when the index is loaded"
            ),
        };
        let mut r = Reader { bytes, at: 0 };
        if r.take(8) != Some(MAGIC.as_slice()) {
            return Err(bad("does not start with `EXPHNSW1`".into()));
        }
        let truncated = || bad("ends too early".into());
        let header: Vec<usize> = (0..4)
            .map(|_| r.u32().map(|v| v as usize).ok_or_else(truncated))
            .collect::<Result<_>>()?;
        let (n, file_m, file_ef, entry) = (header[0], header[1], header[2], header[3]);
        if (n, file_m, file_ef) != (count, m, ef_construction) {
            return Err(bad(format!(
                "holds {n} rows built with M {file_m}, ef_construction {file_ef}, but index.json says {count} rows, M {m}, ef_construction {ef_construction}"
            )));
        }
        let mut per_row = Vec::with_capacity(n);
        for row in 0..n {
            let used = r.u8().ok_or_else(truncated)?;
            if !(1..=MAX_LAYERS).contains(&used) {
                return Err(bad(format!(
                    "row {row} has lists on {used} layers (1 to 16)"
                )));
            }
            let mut lists = Vec::with_capacity(used as usize);
            for l in 0..used {
                let len = r.u32().ok_or_else(truncated)? as usize;
                let ids = (0..len)
                    .map(|_| r.u32().ok_or_else(truncated))
                    .collect::<Result<Vec<u32>>>()?;
                if let Some(nb) = ids.iter().find(|&&nb| nb as usize >= n) {
                    return Err(bad(format!(
                        "row {row} has neighbour {nb} on layer {l}, but there are {n} rows"
                    )));
                }
                lists.push(ids);
            }
            per_row.push(lists);
        }
        if r.at != bytes.len() {
            return Err(bad(format!(
                "has {} bytes after the last row",
                bytes.len() - r.at
            )));
        }
        if n > 0 && entry >= n {
            return Err(bad(format!(
                "its entry point {entry} is not a row ({n} rows)"
            )));
        }
        Ok(Graph::from_lists(entry as u32, &per_row))
    }
}

/// A cursor over little-endian bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}
