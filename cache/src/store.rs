//! The record store: a trait, and its implementation on sled 0.34 plus a journal.
//!
//! sled has open reports of databases that refuse to open after an abrupt stop, and loses
//! acknowledged writes that were not flushed. So every durable write (records, last keys,
//! runs, pins) is also appended to `journal.jsonl`; a record is durable once its journal line
//! is fsynced, which happens before `put_record` returns. The database is an index over the
//! journal: on open, any journal tail it lacks is replayed (so sled's own flush is not on the
//! per-record path: it runs in the background, and at every run and pin), and
//! [`crate::rebuild`] recreates it from the journal when it cannot be opened at all.

use std::collections::{BTreeMap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tracing::{debug, warn};

use crate::digest::Digest;
use crate::error::{CacheError, IoContext, Result};
use crate::journal::{Entry, Journal, Staged, read_entries_from};
use crate::last_hits::{Contents, Stamp, db_file};
use crate::record::{Hit, OutputRef, Record, RecordSummary, RunInfo};
use crate::stat::StatKey;

/// Where the engine keeps records, last keys, the stat cache, item memos, runs and pins.
pub trait Store: Send + Sync {
    /// The record for node key `key`.
    fn get_record(&self, key: &Digest) -> Result<Option<Record>>;
    /// The outputs of the record for `key`: what a cache hit needs, read without the rest
    /// of the record.
    fn get_record_outputs(&self, key: &Digest) -> Result<Option<BTreeMap<String, OutputRef>>> {
        Ok(self.get_record(key)?.map(|r| r.outputs))
    }
    /// What a cache hit on `key` needs (see [`Hit`]), from the hit index where it has an
    /// entry, else from the record (with no blob stats).
    fn get_hit(&self, key: &Digest) -> Result<Option<Hit>> {
        Ok(self.get_record_outputs(key)?.map(|outputs| Hit {
            outputs,
            stats: BTreeMap::new(),
        }))
    }
    /// Keeps `hit` (the record's outputs, its blobs' stats as just checked) in the hit index
    /// (not journaled: it is derived from the record and the blobs, and a lost entry only
    /// costs a lookup of the record).
    fn put_hit(&self, _key: &Digest, _hit: &Hit) -> Result<()> {
        Ok(())
    }
    /// What listing runs needs of the record for `key` (see [`RecordSummary`]).
    fn get_record_summary(&self, key: &Digest) -> Result<Option<RecordSummary>> {
        Ok(self.get_record(key)?.as_ref().map(RecordSummary::of))
    }
    /// Stores `rec` durably: its journal line is fsynced before this returns.
    fn put_record(&self, rec: &Record) -> Result<()>;
    /// Forgets the record for `key` (journaled).
    fn remove_record(&self, key: &Digest) -> Result<()>;
    /// Every record.
    fn records(&self) -> Result<Vec<Record>>;

    /// The last key of `node` in `pipeline`.
    fn get_last(&self, pipeline: &str, node: &str) -> Result<Option<Digest>>;
    /// Sets the last key of `node` (journaled; flushed with the next record or run).
    fn set_last(&self, pipeline: &str, node: &str, key: &Digest) -> Result<()>;
    /// Every (node, last key) of `pipeline`, sorted by node.
    fn last_keys(&self, pipeline: &str) -> Result<Vec<(String, Digest)>>;

    /// The cached digest of the file `k` describes, if every field of `k` matches.
    fn stat_get(&self, k: &StatKey) -> Result<Option<Digest>>;
    /// Remembers the digest of the file `k` describes (not journaled).
    fn stat_put(&self, k: &StatKey, d: &Digest) -> Result<()>;

    /// The blob computed for a map item.
    fn memo_get(&self, item_key: &Digest) -> Result<Option<Digest>>;
    /// Remembers the blob computed for a map item (not journaled, not flushed).
    fn memo_put(&self, item_key: &Digest, blob: &Digest) -> Result<()>;

    /// Stores `run` durably (journaled and flushed).
    fn put_run(&self, run: &RunInfo) -> Result<()>;
    /// Every run, oldest first.
    fn runs(&self) -> Result<Vec<RunInfo>>;
    /// Protects a run (and its records and blobs) from gc (journaled and flushed).
    fn pin(&self, run_id: &str) -> Result<()>;
    /// Removes a pin (journaled and flushed).
    fn unpin(&self, run_id: &str) -> Result<()>;
    /// Pinned run ids, sorted.
    fn pins(&self) -> Result<Vec<String>>;

    /// Makes every write so far durable.
    fn flush(&self) -> Result<()>;

    /// Keeps what the next run of `pipeline` looks up first (its last keys and their hits)
    /// where that run finds it without opening the database, if this store can (see
    /// [`crate::LazyStore`]). Called at the end of a run, after its last write. Derived
    /// data: a failure is logged, not returned.
    fn keep_last_hits(&self, _pipeline: &str) {}
}

/// [`Store`] on sled, one tree per kind, values as JSON.
pub struct SledStore {
    db_path: PathBuf,
    journal_path: PathBuf,
    db: sled::Db,
    records: sled::Tree,
    last: sled::Tree,
    stat: sled::Tree,
    memo: sled::Tree,
    /// Node key → [`Hit`]: a record's outputs and its blobs' stats, derived from the records
    /// tree and the CAS (not journaled; an entry is dropped whenever its record is written
    /// or forgotten, and made again by the next hit).
    hits: sled::Tree,
    runs: sled::Tree,
    pins: sled::Tree,
    /// `journal_len`: how much of the journal the database is known to contain.
    meta: sled::Tree,
    /// None while rebuilding: replayed entries must not be appended again.
    journal: Option<Journal>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct StatValue {
    stat: StatKey,
    digest: Digest,
}

impl SledStore {
    /// Opens `expflow_dir/db` and `expflow_dir/journal.jsonl`, creating them if needed.
    ///
    /// A database held by another process is [`CacheError::DbLocked`]; one that sled
    /// cannot read is [`CacheError::DbUnreadable`], which tells the user to rebuild it.
    pub fn open(expflow_dir: &Path) -> Result<SledStore> {
        std::fs::create_dir_all(expflow_dir).ctx("cannot create directory", expflow_dir)?;
        let mut store = Self::open_db(&expflow_dir.join("db"))?;
        store.journal_path = expflow_dir.join("journal.jsonl");
        let journal = Journal::open(&store.journal_path)?;
        store.catch_up(&journal)?;
        store.journal = Some(journal);
        Ok(store)
    }

    /// Replays journal entries the database lacks. sled loses acknowledged writes that were
    /// not flushed when the process dies (and, with a damaged log, may open with less than
    /// it had); every journaled write also records how far the journal reached, so the
    /// missing tail is known and replayed here.
    fn catch_up(&self, journal: &Journal) -> Result<()> {
        let len = journal.lock().len;
        let mark = self.journal_mark()?;
        if mark == len {
            return Ok(());
        }
        if mark > len {
            warn!(journal = %journal.path().display(), mark, len,
                "the journal is shorter than the database remembers; was it replaced? keeping the database as it is");
            return self.set_journal_mark(len);
        }
        let (entries, bad) = read_entries_from(journal.path(), mark)?;
        if bad == 0 && entries.iter().all(|e| matches!(e, Entry::Run { .. })) {
            // Runs that found everything cached record themselves in the journal only
            // (see [`crate::LazyStore`]); they are expected here.
            debug!(
                entries = entries.len(),
                "adding the runs recorded while the database was closed"
            );
        } else {
            warn!(
                db = %self.db_path.display(),
                entries = entries.len(),
                unreadable = bad,
                "the database is behind its journal (the last run stopped abruptly?); replaying the missing entries"
            );
        }
        for e in &entries {
            self.apply_raw(e)?;
        }
        self.set_journal_mark(len)?;
        self.flush()
    }

    /// How many bytes of the journal the database contains.
    fn journal_mark(&self) -> Result<u64> {
        Ok(self
            .get_json(&self.meta, META_JOURNAL_LEN, || {
                "the journal mark".to_string()
            })?
            .unwrap_or(0))
    }

    pub(crate) fn set_journal_mark(&self, len: u64) -> Result<()> {
        let value = self.encode("journal mark", &len)?;
        self.meta
            .insert(META_JOURNAL_LEN, value)
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Opens the database at `db_path` without a journal (for rebuilding).
    pub(crate) fn open_db(db_path: &Path) -> Result<SledStore> {
        check_not_locked(db_path)?;
        let opened = catch_unwind(AssertUnwindSafe(|| {
            sled::Config::new().path(db_path).open()
        }));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(open_error(db_path, e)),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "sled panicked".to_string());
                return Err(CacheError::DbUnreadable {
                    path: db_path.to_path_buf(),
                    source_msg: msg,
                });
            }
        };
        let tree = |name: &str| {
            db.open_tree(name).map_err(|e| CacheError::DbUnreadable {
                path: db_path.to_path_buf(),
                source_msg: e.to_string(),
            })
        };
        Ok(SledStore {
            records: tree("records")?,
            last: tree("last")?,
            stat: tree("stat")?,
            memo: tree("memo")?,
            hits: tree("hits")?,
            runs: tree("runs")?,
            pins: tree("pins")?,
            meta: tree("meta")?,
            db,
            db_path: db_path.to_path_buf(),
            journal_path: PathBuf::new(),
            journal: None,
        })
    }

    /// The last-hits file's contents for `pipeline` as the database has them now, with the
    /// stat-cache entries of `stat_paths`; None unless the database holds the whole journal
    /// (it does after a run that opened it, unless applying an entry failed).
    pub(crate) fn last_hits(
        &self,
        pipeline: &str,
        stat_paths: &[String],
    ) -> Result<Option<Contents>> {
        let Some(journal) = &self.journal else {
            return Ok(None);
        };
        let len = journal.lock().len;
        if self.journal_mark()? != len {
            return Ok(None);
        }
        let Some(stamp) = Stamp::of(journal.path()).filter(|s| s.len == len) else {
            return Ok(None);
        };
        let Some(db_file) = db_file(&self.db_path) else {
            return Ok(None);
        };
        let last = self.last_keys(pipeline)?;
        let mut hits = HashMap::with_capacity(last.len());
        for (_, key) in &last {
            // Hit-index entries only (a key without one is looked up in the database when a
            // run needs it, and its entry made then).
            let Some(v) = self.hits.get(key.0).map_err(|e| self.db_err(e))? else {
                continue;
            };
            if let Ok(hit) = crate::hit_code::decode(&v) {
                hits.insert(*key, hit);
            }
        }
        let mut stats = Vec::new();
        for path in stat_paths {
            let v: Option<StatValue> = self.get_json(&self.stat, path.as_bytes(), || {
                format!("the stat-cache entry of {path}")
            })?;
            if let Some(v) = v {
                stats.push((v.stat, v.digest));
            }
        }
        stats.sort_by(|a, b| a.0.path.cmp(&b.0.path));
        stats.dedup_by(|a, b| a.0.path == b.0.path);
        Ok(Some(Contents {
            stamp,
            db_mark: len,
            db_file,
            pipeline: pipeline.to_string(),
            last,
            hits,
            stats,
        }))
    }

    /// The sled directory.
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// The journal file (empty path while rebuilding).
    pub fn journal_path(&self) -> &Path {
        &self.journal_path
    }

    /// Appends `entry` to the journal (if any) and applies it. A last key is applied at once
    /// and needs no fsync of its own: the next durable line makes it durable, and losing one
    /// only makes `explain` compare with an older run. Every other entry returns once its
    /// line is fsynced (in a group with the lines of other threads, see [`Journal::commit`])
    /// and then applied; the group's entries are applied in journal order and the journal
    /// mark moves past them together.
    fn journaled(&self, entry: Entry) -> Result<()> {
        let Some(j) = &self.journal else {
            return self.apply_raw(&entry);
        };
        if matches!(entry, Entry::Last { .. }) {
            let mut jf = j.lock();
            j.write(&mut jf, &entry)?;
            return self.apply_raw(&entry);
        }
        let ticket = {
            let mut jf = j.lock();
            j.stage(&mut jf, entry)?
        };
        j.commit(ticket, &|batch, len| self.apply_group(batch, len))
    }

    /// Applies a group of entries whose lines are durable, and moves the journal mark to
    /// `len` (the journal's length when they were fsynced), or to the start of the first
    /// entry that could not be applied, so that the next open replays it.
    fn apply_group(&self, batch: Vec<Staged>, len: u64) -> Vec<(u64, CacheError)> {
        let mut failed = Vec::new();
        let mut mark = len;
        for s in batch {
            if let Err(e) = self.apply_raw(&s.entry) {
                mark = mark.min(s.start);
                failed.push((s.end, e));
            }
        }
        if let Err(e) = self.set_journal_mark(mark) {
            warn!("{e}; the database catches up from the journal when it next opens");
        }
        failed
    }

    /// Writes `entry` to the trees, without journaling or flushing.
    pub(crate) fn apply_raw(&self, entry: &Entry) -> Result<()> {
        let res = match entry {
            Entry::Record { record } => {
                let value = self.encode("record", record)?;
                // A record stored again (its outputs made anew) invalidates its hit entry.
                self.hits
                    .remove(record.key.0)
                    .and_then(|_| self.records.insert(record.key.0, value))
                    .map(drop)
            }
            Entry::Forget { key } => self
                .hits
                .remove(key.0)
                .and_then(|_| self.records.remove(key.0))
                .map(drop),
            Entry::Last {
                pipeline,
                node,
                key,
            } => {
                let value = self.encode("digest", key)?;
                self.last.insert(last_key(pipeline, node), value).map(drop)
            }
            Entry::Run { run } => {
                let value = self.encode("run", run)?;
                self.runs.insert(run.run_id.as_bytes(), value).map(drop)
            }
            Entry::Pin { run_id } => self.pins.insert(run_id.as_bytes(), &[]).map(drop),
            Entry::Unpin { run_id } => self.pins.remove(run_id.as_bytes()).map(drop),
        };
        res.map_err(|e| self.db_err(e))
    }

    /// Flushes after a durable write. A store without a journal is being rebuilt, and the
    /// rebuild flushes once at the end instead. The write is already durable in the journal
    /// (its line is fsynced), and a database that lost it replays it when it next opens, so
    /// a failed flush (a full disk) is a warning, not an error.
    fn flush_durable(&self) -> Result<()> {
        if self.journal.is_some()
            && let Err(e) = self.flush()
        {
            warn!(
                "{e}; the journal holds the write, and the database catches up when it next opens"
            );
        }
        Ok(())
    }

    fn db_err(&self, e: sled::Error) -> CacheError {
        let source_msg = match e {
            sled::Error::Corruption { .. } => format!(
                "{e}; the database is damaged: run `expflow db rebuild` to recreate it from the \
                 journal and the CAS"
            ),
            // sled's own text for these is the Debug form of the io::Error.
            sled::Error::Io(io) => io.to_string(),
            other => other.to_string(),
        };
        CacheError::Db {
            path: self.db_path.clone(),
            source_msg,
        }
    }

    fn encode<T: Serialize>(&self, what: &'static str, v: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(v).map_err(|e| CacheError::Encode {
            what,
            reason: e.to_string(),
        })
    }

    fn decode<T: DeserializeOwned>(
        &self,
        what: impl FnOnce() -> String,
        bytes: &[u8],
    ) -> Result<T> {
        decode(what, &self.db_path, bytes)
    }

    fn get_json<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        what: impl FnOnce() -> String,
    ) -> Result<Option<T>> {
        match tree.get(key).map_err(|e| self.db_err(e))? {
            Some(v) => Ok(Some(self.decode(what, &v)?)),
            None => Ok(None),
        }
    }

    fn all_json<T: DeserializeOwned>(&self, tree: &sled::Tree, what: &str) -> Result<Vec<T>> {
        tree.iter()
            .values()
            .map(|v| {
                let v = v.map_err(|e| self.db_err(e))?;
                self.decode(|| what.to_string(), &v)
            })
            .collect()
    }
}

const META_JOURNAL_LEN: &[u8] = b"journal_len";

/// Decodes a database value (JSON), naming `what` and the database in the error.
pub(crate) fn decode<T: DeserializeOwned>(
    what: impl FnOnce() -> String,
    db_path: &Path,
    bytes: &[u8],
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| CacheError::Decode {
        what: what(),
        path: db_path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn last_key(pipeline: &str, node: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(pipeline.len() + node.len() + 1);
    k.extend_from_slice(pipeline.as_bytes());
    k.push(0);
    k.extend_from_slice(node.as_bytes());
    k
}

impl Store for SledStore {
    fn get_record(&self, key: &Digest) -> Result<Option<Record>> {
        self.get_json(&self.records, &key.0, || format!("record {key}"))
    }

    fn get_record_outputs(&self, key: &Digest) -> Result<Option<BTreeMap<String, OutputRef>>> {
        #[derive(Deserialize)]
        struct Outputs {
            outputs: BTreeMap<String, OutputRef>,
        }
        let o: Option<Outputs> =
            self.get_json(&self.records, &key.0, || format!("record {key}"))?;
        Ok(o.map(|o| o.outputs))
    }

    fn get_hit(&self, key: &Digest) -> Result<Option<Hit>> {
        if let Some(v) = self.hits.get(key.0).map_err(|e| self.db_err(e))? {
            // Binary entries; an older JSON one is still read. An entry that cannot be read
            // is derived data: it is made again from the record below.
            let hit = if v.first() == Some(&crate::hit_code::TAG) {
                crate::hit_code::decode(&v).map_err(|reason| reason.to_string())
            } else {
                // Written before the binary encoding: rewritten in it, once.
                let hit: std::result::Result<Hit, String> =
                    serde_json::from_slice(&v).map_err(|e| e.to_string());
                if let Ok(h) = &hit {
                    self.put_hit(key, h)?;
                }
                hit
            };
            match hit {
                Ok(hit) => return Ok(Some(hit)),
                Err(reason) => {
                    warn!(%key, reason, "unreadable hit entry; making it again from the record")
                }
            }
        }
        // A record from before the hit index, or whose entry was dropped: its outputs, and
        // the caller stores the entry once it has checked the blobs.
        Ok(self.get_record_outputs(key)?.map(|outputs| Hit {
            outputs,
            stats: BTreeMap::new(),
        }))
    }

    fn put_hit(&self, key: &Digest, hit: &Hit) -> Result<()> {
        let value = crate::hit_code::encode(hit);
        self.hits.insert(key.0, value).map_err(|e| self.db_err(e))?;
        Ok(())
    }

    fn get_record_summary(&self, key: &Digest) -> Result<Option<RecordSummary>> {
        self.get_json(&self.records, &key.0, || format!("record {key}"))
    }

    fn put_record(&self, rec: &Record) -> Result<()> {
        self.journaled(Entry::Record {
            record: Box::new(rec.clone()),
        })
    }

    fn remove_record(&self, key: &Digest) -> Result<()> {
        self.journaled(Entry::Forget { key: *key })
    }

    fn records(&self) -> Result<Vec<Record>> {
        self.all_json(&self.records, "a record")
    }

    fn get_last(&self, pipeline: &str, node: &str) -> Result<Option<Digest>> {
        self.get_json(&self.last, &last_key(pipeline, node), || {
            format!("the last key of {pipeline}.{node}")
        })
    }

    fn set_last(&self, pipeline: &str, node: &str, key: &Digest) -> Result<()> {
        self.journaled(Entry::Last {
            pipeline: pipeline.to_string(),
            node: node.to_string(),
            key: *key,
        })
    }

    fn last_keys(&self, pipeline: &str) -> Result<Vec<(String, Digest)>> {
        let prefix = last_key(pipeline, "");
        let mut out = Vec::new();
        for kv in self.last.scan_prefix(&prefix) {
            let (k, v) = kv.map_err(|e| self.db_err(e))?;
            let node = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            // A last key is a JSON string of 64 hex digits; read it without the JSON parser
            // (one per node on every run), and anything else with it.
            let hex = (v.len() == 66 && v[0] == b'"' && v[65] == b'"')
                .then(|| std::str::from_utf8(&v[1..65]).ok())
                .flatten()
                .and_then(|h| Digest::from_hex(h).ok());
            let d: Digest = match hex {
                Some(d) => d,
                None => self.decode(|| format!("the last key of {pipeline}.{node}"), &v)?,
            };
            out.push((node, d));
        }
        Ok(out)
    }

    fn stat_get(&self, k: &StatKey) -> Result<Option<Digest>> {
        let v: Option<StatValue> = self.get_json(&self.stat, k.path.as_bytes(), || {
            format!("the stat-cache entry of {}", k.path)
        })?;
        Ok(v.filter(|v| v.stat == *k).map(|v| v.digest))
    }

    fn stat_put(&self, k: &StatKey, d: &Digest) -> Result<()> {
        let value = self.encode(
            "stat-cache entry",
            &StatValue {
                stat: k.clone(),
                digest: *d,
            },
        )?;
        self.stat
            .insert(k.path.as_bytes(), value)
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    fn memo_get(&self, item_key: &Digest) -> Result<Option<Digest>> {
        self.get_json(&self.memo, &item_key.0, || {
            format!("the memo of item {item_key}")
        })
    }

    fn memo_put(&self, item_key: &Digest, blob: &Digest) -> Result<()> {
        let value = self.encode("digest", blob)?;
        self.memo
            .insert(item_key.0, value)
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    fn put_run(&self, run: &RunInfo) -> Result<()> {
        self.journaled(Entry::Run { run: run.clone() })?;
        self.flush_durable()
    }

    fn runs(&self) -> Result<Vec<RunInfo>> {
        let mut runs: Vec<RunInfo> = self.all_json(&self.runs, "a run")?;
        runs.sort_by(|a, b| {
            a.started_ms
                .cmp(&b.started_ms)
                .then_with(|| a.run_id.cmp(&b.run_id))
        });
        Ok(runs)
    }

    fn pin(&self, run_id: &str) -> Result<()> {
        self.journaled(Entry::Pin {
            run_id: run_id.to_string(),
        })?;
        self.flush_durable()
    }

    fn unpin(&self, run_id: &str) -> Result<()> {
        self.journaled(Entry::Unpin {
            run_id: run_id.to_string(),
        })?;
        self.flush_durable()
    }

    fn pins(&self) -> Result<Vec<String>> {
        self.pins
            .iter()
            .keys()
            .map(|k| {
                let k = k.map_err(|e| self.db_err(e))?;
                Ok(String::from_utf8_lossy(&k).into_owned())
            })
            .collect()
    }

    fn flush(&self) -> Result<()> {
        let bytes = self.db.flush().map_err(|e| self.db_err(e))?;
        debug!(bytes, "flushed the database");
        Ok(())
    }
}

/// Fails with [`CacheError::DbLocked`] if another open handle holds sled's lock on
/// `db_path/db` (sled itself reports this only as an I/O error). A handle of this process
/// that was just dropped releases the lock only when sled's background flusher lets go of
/// the file, a few milliseconds later (longer on a busy machine), so the lock is retried for
/// up to a second before the database counts as held.
pub(crate) fn check_not_locked(db_path: &Path) -> Result<()> {
    let lock_file = db_path.join("db");
    let file = match std::fs::OpenOptions::new().read(true).open(&lock_file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CacheError::io("cannot open", &lock_file, e)),
    };
    for attempt in 0..20 {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => {
                debug!(attempt, "the database lock is held; retrying");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(CacheError::io("cannot lock", &lock_file, e));
            }
        }
    }
    Err(CacheError::DbLocked {
        path: db_path.to_path_buf(),
    })
}

fn open_error(db_path: &Path, e: sled::Error) -> CacheError {
    match e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            CacheError::DbLocked {
                path: db_path.to_path_buf(),
            }
        }
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            CacheError::io("cannot open the database", db_path, io)
        }
        other => CacheError::DbUnreadable {
            path: db_path.to_path_buf(),
            source_msg: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::OutputRef;

    fn hit() -> Hit {
        let out = OutputRef {
            digest: Digest::of_bytes(b"x"),
            kind: "file".into(),
            dir: false,
            size: 1,
        };
        Hit {
            outputs: [("o".to_string(), out)].into_iter().collect(),
            stats: BTreeMap::new(),
        }
    }

    /// Entries written as JSON (before the binary encoding) are still read; new ones are
    /// binary; an unreadable one is made again from the record, not an error.
    #[test]
    fn hit_entries_old_new_and_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let key = Digest::of_bytes(b"key");
        store
            .hits
            .insert(key.0, serde_json::to_vec(&hit()).unwrap())
            .unwrap();
        assert_eq!(store.get_hit(&key).unwrap(), Some(hit()));
        // Read once, it is rewritten in binary.
        let stored = store.hits.get(key.0).unwrap().unwrap();
        assert_eq!(stored.first(), Some(&crate::hit_code::TAG));
        assert_eq!(store.get_hit(&key).unwrap(), Some(hit()));
        store
            .hits
            .insert(key.0, &stored[..stored.len() - 1])
            .unwrap();
        // No record behind it: absent.
        assert_eq!(store.get_hit(&key).unwrap(), None);
    }
}
