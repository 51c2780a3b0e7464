//! `expflow gc`: keep what recent and pinned runs need, remove the rest.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use tracing::{info, warn};

use crate::cas::Cas;
use crate::digest::Digest;
use crate::error::Result;
use crate::store::Store;

/// What `gc` removed (or, in a dry run, would remove) and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub bytes_removed: u64,
    pub records_removed: usize,
    pub blobs_kept: usize,
    pub bytes_kept: u64,
}

/// Removes every record and blob that neither the last `keep_last` runs of each pipeline
/// (by start time) nor a pinned run needs. A live record keeps its outputs (directory
/// outputs: manifest and files), its log and its items. With `dry_run`, nothing is removed
/// and the report says what would be.
///
/// Records go first, then blobs, so an interrupted gc leaves unreferenced blobs (removed
/// next time), never a record without its blobs. Run it only while no run is in progress
/// (the engine holds the database, which guarantees this).
pub fn gc(cas: &Cas, store: &dyn Store, keep_last: usize, dry_run: bool) -> Result<GcReport> {
    // Roots: the newest `keep_last` runs of each pipeline, plus pinned runs.
    let runs = store.runs()?; // oldest first
    let pins: HashSet<String> = store.pins()?.into_iter().collect();
    let mut per_pipeline: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, run) in runs.iter().enumerate() {
        per_pipeline.entry(&run.pipeline).or_default().push(i);
    }
    let mut root_runs: HashSet<usize> = HashSet::new();
    for indices in per_pipeline.values() {
        root_runs.extend(indices.iter().rev().take(keep_last));
    }
    for (i, run) in runs.iter().enumerate() {
        if pins.contains(&run.run_id) {
            root_runs.insert(i);
        }
    }
    let live_keys: HashSet<Digest> = root_runs
        .iter()
        .flat_map(|&i| runs[i].nodes.iter().map(|(_, key)| *key))
        .collect();

    // Live records and the blobs they need.
    let records = store.records()?;
    let mut live_blobs: HashSet<Digest> = HashSet::new();
    let mut dead_records = Vec::new();
    for rec in &records {
        if !live_keys.contains(&rec.key) {
            dead_records.push(rec.key);
            continue;
        }
        for (what, d, dir) in rec.blob_refs() {
            live_blobs.insert(d);
            if dir {
                match cas.read_manifest(&d) {
                    Ok(m) => live_blobs.extend(m.entries.iter().map(|e| e.digest)),
                    Err(e) => warn!(node = %rec.node, key = %rec.key.short(), %what, error = %e,
                        "cannot read the manifest of a live record; its files cannot be kept"),
                }
            }
        }
    }

    let mut report = GcReport {
        records_removed: dead_records.len(),
        ..GcReport::default()
    };
    if !dry_run {
        for key in &dead_records {
            store.remove_record(key)?;
        }
        store.flush()?;
    }
    for (d, size) in cas.list()? {
        if live_blobs.contains(&d) {
            report.blobs_kept += 1;
            report.bytes_kept += size;
        } else {
            report.blobs_removed += 1;
            report.bytes_removed += size;
            if !dry_run {
                cas.remove(&d)?;
            }
        }
    }
    info!(?report, dry_run, keep_last, "gc finished");
    Ok(report)
}
