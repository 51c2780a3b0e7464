//! A [`Store`] that opens the database only when a look-up needs more than the pipeline's
//! last-hits file ([`crate::last_hits`]) holds.
//!
//! A re-run that finds every node cached reads each node's last key and the hit of that key,
//! checks the blobs' stats, and records the run. With a last-hits file written against the
//! journal as it is now, all of that is answered from the file, and the run is recorded as
//! a journal line (fsynced, so as durable as any run); the database adds that line when it
//! next opens, as it adds any journal tail it lacks. Anything else (a key not in the file, a
//! record, a write other than the run) opens the database first and is answered by it from
//! then on, as by [`SledStore`] alone.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use tracing::{debug, warn};

use crate::digest::Digest;
use crate::error::{IoContext, Result};
use crate::journal::{Entry, Journal};
use crate::last_hits::{LastHits, Stamp, db_file, restamp};
use crate::record::{Hit, OutputRef, Record, RecordSummary, RunInfo};
use crate::stat::StatKey;
use crate::store::{SledStore, Store};

/// How far the database may fall behind the journal (runs recorded only there) before a
/// run opens it anyway and catches up: replaying is cheap per run, but not unbounded.
const MAX_BEHIND: u64 = 4 << 20;

/// See the module documentation.
pub struct LazyStore {
    /// The workspace directory (`.expflow`).
    root: PathBuf,
    /// The last-hits file read at open, used while the database is closed.
    quick: Option<LastHits>,
    db: OnceLock<SledStore>,
    /// The journal while the database is closed (runs are appended to it); taken when the
    /// database opens, under this lock, so that no append and no opening overlap.
    journal: Mutex<Option<Journal>>,
    /// Paths looked up in the stat cache: their entries go into the next last-hits file.
    stat_paths: Mutex<HashSet<String>>,
}

impl LazyStore {
    /// Opens the store of workspace `root`. With `pipeline` named and a last-hits file of
    /// it that is up to date, the database stays closed until it is needed; otherwise it
    /// opens now ([`SledStore::open`]).
    pub fn open(root: &Path, pipeline: Option<&str>) -> Result<LazyStore> {
        if let Some(store) = pipeline.and_then(|name| Self::open_quick(root, name)) {
            return Ok(store);
        }
        let store = LazyStore::closed(root, None, None);
        let _ = store.db.set(SledStore::open(root)?);
        Ok(store)
    }

    fn closed(root: &Path, quick: Option<LastHits>, journal: Option<Journal>) -> LazyStore {
        LazyStore {
            root: root.to_path_buf(),
            quick,
            db: OnceLock::new(),
            journal: Mutex::new(journal),
            stat_paths: Mutex::new(HashSet::new()),
        }
    }

    /// The store with the database closed, if `pipeline`'s last-hits file is up to date.
    fn open_quick(root: &Path, pipeline: &str) -> Option<LazyStore> {
        let journal_path = root.join("journal.jsonl");
        let stamp = Stamp::of(&journal_path)?;
        let quick = LastHits::load(root, pipeline, &stamp)?;
        if db_file(&root.join("db")) != Some(quick.db_file) {
            debug!("the database was replaced since the last-hits file was written");
            return None;
        }
        if stamp.len - quick.db_mark.min(stamp.len) > MAX_BEHIND {
            debug!("the database is far behind the journal; opening it to catch up");
            return None;
        }
        let journal = Journal::open(&journal_path).ok()?;
        if journal.lock().len != stamp.len {
            return None;
        }
        debug!(pipeline, "last hits read; the database stays closed");
        Some(LazyStore::closed(root, Some(quick), Some(journal)))
    }

    /// Whether the database is open (for tests and the debug log).
    pub fn db_is_open(&self) -> bool {
        self.db.get().is_some()
    }

    /// The database, opened now if it is not yet.
    fn db(&self) -> Result<&SledStore> {
        if let Some(db) = self.db.get() {
            return Ok(db);
        }
        let mut journal = self.lock_journal();
        if let Some(db) = self.db.get() {
            return Ok(db);
        }
        debug!("a look-up needs the database; opening it");
        let db = SledStore::open(&self.root)?;
        *journal = None;
        let _ = self.db.set(db);
        Ok(self.db.get().expect("just set"))
    }

    fn lock_journal(&self) -> std::sync::MutexGuard<'_, Option<Journal>> {
        self.journal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last-hits file, while the database is closed.
    fn quick(&self) -> Option<&LastHits> {
        if self.db.get().is_some() {
            return None;
        }
        self.quick.as_ref()
    }

    fn note_stat_path(&self, path: &str) {
        let mut paths = self
            .stat_paths
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !paths.contains(path) {
            paths.insert(path.to_string());
        }
    }

    fn save(&self, pipeline: &str) -> Result<()> {
        let dir = self.root.join("last-hits");
        let file = match self.quick().filter(|q| q.pipeline == pipeline) {
            // Nothing but runs was written: the same contents, against the journal now.
            Some(q) => {
                let _journal = self.lock_journal();
                let Some(stamp) = Stamp::of(&self.root.join("journal.jsonl")) else {
                    return Ok(());
                };
                let mut bytes = q.bytes().to_vec();
                return restamp(&self.root, pipeline, &mut bytes, &stamp)
                    .ctx("cannot write the last-hits file in", dir);
            }
            None => {
                let paths: Vec<String> = self
                    .stat_paths
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .iter()
                    .cloned()
                    .collect();
                match self.db()?.last_hits(pipeline, &paths)? {
                    Some(file) => file,
                    None => return Ok(()),
                }
            }
        };
        file.save(&self.root)
            .ctx("cannot write the last-hits file in", dir)
    }
}

impl Store for LazyStore {
    fn get_record(&self, key: &Digest) -> Result<Option<Record>> {
        self.db()?.get_record(key)
    }

    fn get_record_outputs(&self, key: &Digest) -> Result<Option<BTreeMap<String, OutputRef>>> {
        self.db()?.get_record_outputs(key)
    }

    fn get_hit(&self, key: &Digest) -> Result<Option<Hit>> {
        if let Some(hit) = self.quick().and_then(|q| q.hit(key)) {
            return Ok(Some(hit));
        }
        self.db()?.get_hit(key)
    }

    fn put_hit(&self, key: &Digest, hit: &Hit) -> Result<()> {
        self.db()?.put_hit(key, hit)
    }

    fn get_record_summary(&self, key: &Digest) -> Result<Option<RecordSummary>> {
        self.db()?.get_record_summary(key)
    }

    fn put_record(&self, rec: &Record) -> Result<()> {
        self.db()?.put_record(rec)
    }

    fn remove_record(&self, key: &Digest) -> Result<()> {
        self.db()?.remove_record(key)
    }

    fn records(&self) -> Result<Vec<Record>> {
        self.db()?.records()
    }

    fn get_last(&self, pipeline: &str, node: &str) -> Result<Option<Digest>> {
        if let Some(q) = self.quick().filter(|q| q.pipeline == pipeline) {
            let found = q.last.binary_search_by(|(n, _)| n.as_str().cmp(node));
            return Ok(found.ok().map(|i| q.last[i].1));
        }
        self.db()?.get_last(pipeline, node)
    }

    fn set_last(&self, pipeline: &str, node: &str, key: &Digest) -> Result<()> {
        self.db()?.set_last(pipeline, node, key)
    }

    fn last_keys(&self, pipeline: &str) -> Result<Vec<(String, Digest)>> {
        if let Some(q) = self.quick().filter(|q| q.pipeline == pipeline) {
            return Ok(q.last.clone());
        }
        self.db()?.last_keys(pipeline)
    }

    fn stat_get(&self, k: &StatKey) -> Result<Option<Digest>> {
        self.note_stat_path(&k.path);
        // The stat cache only saves hashing: a miss here (a file whose stat changed, or one
        // too recently written to be cached) costs a hash, never a wrong digest, so it does
        // not open the database; storing the new digest does.
        if let Some(q) = self.quick() {
            let found = q
                .stats
                .binary_search_by(|(s, _)| s.path.as_str().cmp(&k.path))
                .ok();
            return Ok(found.filter(|&i| q.stats[i].0 == *k).map(|i| q.stats[i].1));
        }
        self.db()?.stat_get(k)
    }

    fn stat_put(&self, k: &StatKey, d: &Digest) -> Result<()> {
        self.note_stat_path(&k.path);
        self.db()?.stat_put(k, d)
    }

    fn memo_get(&self, item_key: &Digest) -> Result<Option<Digest>> {
        self.db()?.memo_get(item_key)
    }

    fn memo_put(&self, item_key: &Digest, blob: &Digest) -> Result<()> {
        self.db()?.memo_put(item_key, blob)
    }

    fn put_run(&self, run: &RunInfo) -> Result<()> {
        {
            let journal = self.lock_journal();
            if let Some(j) = journal.as_ref() {
                let ticket = {
                    let mut jf = j.lock();
                    j.stage(&mut jf, Entry::Run { run: run.clone() })?
                };
                // Durable once fsynced; the database adds it when it next opens.
                return j.commit(ticket, &|_, _| Vec::new());
            }
        }
        self.db()?.put_run(run)
    }

    fn runs(&self) -> Result<Vec<RunInfo>> {
        self.db()?.runs()
    }

    fn pin(&self, run_id: &str) -> Result<()> {
        self.db()?.pin(run_id)
    }

    fn unpin(&self, run_id: &str) -> Result<()> {
        self.db()?.unpin(run_id)
    }

    fn pins(&self) -> Result<Vec<String>> {
        self.db()?.pins()
    }

    fn flush(&self) -> Result<()> {
        match self.db.get() {
            Some(db) => db.flush(),
            // Every write made while it is closed is a journal line, fsynced.
            None => Ok(()),
        }
    }

    fn keep_last_hits(&self, pipeline: &str) {
        if let Err(e) = self.save(pipeline) {
            warn!("{e}; the next run opens the database instead");
        }
    }
}

impl std::fmt::Debug for LazyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyStore")
            .field("root", &self.root)
            .field("quick", &self.quick.as_ref().map(|q| &q.pipeline))
            .field("db_open", &self.db_is_open())
            .finish()
    }
}
