//! `expflow db rebuild`: recreate the sled database from the journal and the CAS.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tracing::{info, warn};

use crate::cas::Cas;
use crate::digest::Digest;
use crate::error::{CacheError, IoContext, Result};
use crate::journal::{Entry, read_entries};
use crate::record::{Record, RunInfo};
use crate::store::{SledStore, Store, check_not_locked};

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RebuildReport {
    /// Records in the new database.
    pub records: usize,
    /// Records left out because an output blob (or a directory's manifest or one of its
    /// files) is not in the CAS.
    pub skipped_missing: usize,
    /// Runs in the new database.
    pub runs: usize,
    /// Journal lines that could not be read (a torn last line after a crash, typically).
    pub lines_bad: usize,
    /// Where the previous database directory was moved (it is never deleted).
    pub moved_aside: Option<PathBuf>,
}

/// Moves `expflow_dir/db` aside to `db.broken-<unix secs>`, creates a fresh database and
/// replays `expflow_dir/journal.jsonl` into it. The journal is left as it was. Stat-cache
/// and item-memo entries are not journaled and start empty.
pub fn rebuild(expflow_dir: &Path, cas: &Cas) -> Result<RebuildReport> {
    let db_path = expflow_dir.join("db");
    let journal_path = expflow_dir.join("journal.jsonl");
    let moved_aside = move_aside(&db_path)?;
    if !journal_path.exists() {
        warn!(journal = %journal_path.display(), "no journal: the rebuilt database will be empty");
    }
    // What is replayed now must not be replayed again when the store next opens.
    let journal_len = fs::metadata(&journal_path).map_or(0, |m| m.len());
    let (entries, lines_bad) = read_entries(&journal_path)?;
    let state = State::replay(entries);

    let store = SledStore::open_db(&db_path)?;
    let mut records = 0;
    let mut skipped_missing = 0;
    for rec in state.records.values() {
        if let Some(what) = missing_output(cas, rec) {
            warn!(node = %rec.node, key = %rec.key.short(), missing = %what, "leaving out a record whose outputs are not in the CAS");
            skipped_missing += 1;
            continue;
        }
        store.put_record(rec)?;
        records += 1;
    }
    for ((pipeline, node), key) in &state.last {
        store.set_last(pipeline, node, key)?;
    }
    for run in state.runs.values() {
        store.put_run(run)?;
    }
    for run_id in &state.pins {
        store.pin(run_id)?;
    }
    store.set_journal_mark(journal_len)?;
    store.flush()?;
    let report = RebuildReport {
        records,
        skipped_missing,
        runs: state.runs.len(),
        lines_bad,
        moved_aside,
    };
    info!(?report, "rebuilt the database");
    Ok(report)
}

/// The final state the journal describes.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) records: BTreeMap<Digest, Record>,
    pub(crate) last: BTreeMap<(String, String), Digest>,
    pub(crate) runs: BTreeMap<String, RunInfo>,
    pub(crate) pins: BTreeSet<String>,
}

impl State {
    pub(crate) fn replay(entries: Vec<Entry>) -> State {
        let mut s = State::default();
        for e in entries {
            match e {
                Entry::Record { record } => {
                    s.records.insert(record.key, *record);
                }
                Entry::Forget { key } => {
                    s.records.remove(&key);
                }
                Entry::Last {
                    pipeline,
                    node,
                    key,
                } => {
                    s.last.insert((pipeline, node), key);
                }
                Entry::Run { run } => {
                    s.runs.insert(run.run_id.clone(), run);
                }
                Entry::Pin { run_id } => {
                    s.pins.insert(run_id);
                }
                Entry::Unpin { run_id } => {
                    s.pins.remove(&run_id);
                }
            }
        }
        s
    }
}

/// The first output of `rec` that is not in the CAS, described.
fn missing_output(cas: &Cas, rec: &Record) -> Option<String> {
    for (port, out) in &rec.outputs {
        if !cas.contains(&out.digest) {
            return Some(format!("output {port} ({})", out.digest.short()));
        }
        if out.dir {
            let manifest = match cas.read_manifest(&out.digest) {
                Ok(m) => m,
                Err(e) => return Some(format!("output {port}: {e}")),
            };
            if let Some(e) = manifest.entries.iter().find(|e| !cas.contains(&e.digest)) {
                return Some(format!(
                    "output {port}: file {} ({})",
                    e.path,
                    e.digest.short()
                ));
            }
        }
    }
    None
}

/// Renames `db_path` to `db.broken-<secs>` (with a counter if that exists). Returns the new
/// name, or None if there was no database.
fn move_aside(db_path: &Path) -> Result<Option<PathBuf>> {
    match fs::symlink_metadata(db_path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CacheError::io("cannot stat", db_path, e)),
    }
    check_not_locked(db_path)?;
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = format!("db.broken-{secs}");
    let mut target = db_path.with_file_name(&base);
    let mut n = 1;
    while fs::symlink_metadata(&target).is_ok() {
        n += 1;
        target = db_path.with_file_name(format!("{base}-{n}"));
    }
    fs::rename(db_path, &target).ctx("cannot move the old database aside", db_path)?;
    warn!(from = %db_path.display(), to = %target.display(), "moved the old database aside");
    Ok(Some(target))
}
