//! expflow's retrieval indexes:
//! - [`bm25`]: Okapi BM25 over Unicode words, with CJK characters as single tokens;
//! - [`exact`]: exact inner-product (or cosine) search, batched through a candle matmul;
//! - [`hnsw`]: approximate search on a graph built by `hnsw_rs`, rescored exactly, with recall
//!   against exact search;
//! - [`graph`]: the HNSW graph's neighbour lists, their search and their file format;
//! - [`fusion`]: ExpStar's text + video query fusion for vectors from one shared space;
//! - [`store`]: index artifacts on disk (same inputs, same bytes).
//!
//! Dependencies: candle (batched search) and hnsw_rs; no other expflow crate, and nothing
//! about pipelines or models. `expflow-operators` depends on it.
//!
//! Every search ranks by score descending, then document index ascending.

pub mod bm25;
pub mod error;
pub mod exact;
pub mod fusion;
pub mod graph;
pub mod hit;
pub mod hnsw;
pub mod store;
pub mod tokenize;

pub use bm25::{Bm25Index, Bm25Params};
pub use error::{Result, RetrievalError};
pub use exact::{ExactIndex, Metric};
pub use fusion::{FusedQuery, FusionParams, Projection, QuerySource, fuse};
pub use hit::Hit;
pub use hnsw::{HnswIndex, HnswParams};
pub use store::{Index, IndexKind, Manifest};
pub use tokenize::tokenize;
