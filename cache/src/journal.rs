//! The append-only journal beside the database: one JSON object per line for every durable
//! write, fsynced, so that `expflow db rebuild` can recreate the index.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::digest::Digest;
use crate::error::{CacheError, IoContext, Result};
use crate::record::{Record, RunInfo};

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum Entry {
    Record {
        record: Box<Record>,
    },
    Last {
        pipeline: String,
        node: String,
        key: Digest,
    },
    Run {
        run: RunInfo,
    },
    Pin {
        run_id: String,
    },
    Unpin {
        run_id: String,
    },
    Forget {
        key: Digest,
    },
}

/// An open journal. Appends are serialised by a mutex that callers may hold across the
/// matching database write, so the journal and the database see writes in the same order.
///
/// Durable writes are committed in groups: a writer appends its line ([`Journal::stage`])
/// and then waits in [`Journal::commit`] until the line is on disk. The first waiter fsyncs
/// everything appended so far (one fsync for every line written while the previous fsync
/// ran), applies the staged entries of that group in journal order, and releases every
/// waiter whose line the fsync covered. No waiter returns before its own line is durable.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    file: Mutex<JournalFile>,
    /// A second handle on the same file, fsynced without holding `file`'s lock so that
    /// other writers can append meanwhile.
    syncer: File,
    sync: Mutex<SyncState>,
    synced: Condvar,
    /// How many group fsyncs ran (for tests and the debug log).
    fsyncs: AtomicU64,
}

/// The open file and its length (the offset of the next entry).
#[derive(Debug)]
pub(crate) struct JournalFile {
    file: File,
    pub(crate) len: u64,
    /// Bumped each time a failed fsync takes lines back (see [`SyncState::cuts`]).
    epoch: u64,
    /// Lines written but not yet fsynced, with the entries to apply once they are.
    pending: Vec<Staged>,
}

/// A line written to the journal and awaiting its fsync.
#[derive(Debug)]
pub(crate) struct Staged {
    /// Where the line starts and ends in the journal.
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) entry: Entry,
}

/// What the group commit knows.
#[derive(Debug, Default)]
struct SyncState {
    /// How much of the journal is known to be on disk.
    durable: u64,
    epoch: u64,
    /// For each past epoch, the length the journal was cut back to when an fsync failed:
    /// lines of that epoch ending at or before it were durable, the rest were taken back.
    cuts: Vec<u64>,
    /// Whether a writer is fsyncing (the leader of the current group).
    leading: bool,
    /// The last failed fsync, reported to every writer whose line it took back.
    failure: Option<(io::ErrorKind, String)>,
    /// Errors applying a durable line to the database, by line (epoch, end), for its writer.
    apply_errors: Vec<((u64, u64), CacheError)>,
}

/// A staged line: wait for it with [`Journal::commit`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    end: u64,
    epoch: u64,
}

impl Journal {
    /// Opens `path` for appending, creating it. If the last line was torn by a crash, a
    /// newline is added so that the next entry starts on a line of its own.
    pub(crate) fn open(path: &Path) -> Result<Journal> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .ctx("cannot open the journal", path)?;
        let mut len = file.metadata().ctx("cannot stat", path)?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1))
                .ctx("cannot read", path)?;
            file.read_exact(&mut last).ctx("cannot read", path)?;
            if last[0] != b'\n' {
                warn!(journal = %path.display(), "the last journal line is incomplete (interrupted write); it will be ignored");
                file.write_all(b"\n").ctx("cannot write", path)?;
                file.sync_data().ctx("cannot fsync", path)?;
                len += 1;
            }
        }
        let syncer = file.try_clone().ctx("cannot open the journal", path)?;
        Ok(Journal {
            path: path.to_path_buf(),
            file: Mutex::new(JournalFile {
                file,
                len,
                epoch: 0,
                pending: Vec::new(),
            }),
            syncer,
            sync: Mutex::new(SyncState {
                durable: len,
                ..SyncState::default()
            }),
            synced: Condvar::new(),
            fsyncs: AtomicU64::new(0),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, JournalFile> {
        self.file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn state(&self) -> MutexGuard<'_, SyncState> {
        self.sync
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends `entry` as one line, without fsync; returns where the line ends. A write
    /// that fails (a full disk) is taken back, so the journal ends on a complete line.
    /// `jf` is the guard from [`Journal::lock`].
    pub(crate) fn write(&self, jf: &mut JournalFile, entry: &Entry) -> Result<u64> {
        let mut line = serde_json::to_vec(entry).map_err(|e| CacheError::Encode {
            what: "journal entry",
            reason: e.to_string(),
        })?;
        line.push(b'\n');
        let start = jf.len;
        if let Err(e) = jf.file.write_all(&line) {
            // A full disk (or a failing one) leaves part of the line written. Take it back,
            // so the journal ends on a complete line and the entry the caller reports as
            // failed is not replayed later; truncating needs no free space. If even that
            // fails, end the fragment so the next entry gets a line of its own.
            self.take_back_to(jf, start);
            return Err(CacheError::io(
                "cannot append to the journal",
                &self.path,
                e,
            ));
        }
        jf.len = start + line.len() as u64;
        Ok(jf.len)
    }

    /// Appends `entry` (see [`Journal::write`]) and keeps it for the group commit, which
    /// hands it to the `apply` of [`Journal::commit`] once its line is durable.
    pub(crate) fn stage(&self, jf: &mut JournalFile, entry: Entry) -> Result<Ticket> {
        let start = jf.len;
        let end = self.write(jf, &entry)?;
        jf.pending.push(Staged { start, end, entry });
        Ok(Ticket {
            end,
            epoch: jf.epoch,
        })
    }

    /// Returns once the line of `t` is on disk and its entry applied. Whoever finds no
    /// fsync in flight fsyncs every line written so far and calls `apply` with the staged
    /// entries it covered (in journal order) and the journal length they reach; `apply`
    /// returns the errors of entries it could not apply, by their line's end, for their
    /// writers. A failed fsync takes back every line not known durable (the journal ends
    /// on the last durable line) and fails each of their writers.
    pub(crate) fn commit(
        &self,
        t: Ticket,
        apply: &dyn Fn(Vec<Staged>, u64) -> Vec<(u64, CacheError)>,
    ) -> Result<()> {
        let mut st = self.state();
        loop {
            if t.epoch != st.epoch {
                let cut = st.cuts.get(t.epoch as usize).copied().unwrap_or(0);
                if t.end > cut {
                    let (kind, msg) = st
                        .failure
                        .clone()
                        .unwrap_or((io::ErrorKind::Other, "fsync failed".into()));
                    return Err(CacheError::io(
                        "cannot fsync the journal",
                        &self.path,
                        io::Error::new(kind, msg),
                    ));
                }
            }
            if t.epoch != st.epoch || st.durable >= t.end {
                if let Some(i) = st
                    .apply_errors
                    .iter()
                    .position(|(at, _)| *at == (t.epoch, t.end))
                {
                    return Err(st.apply_errors.swap_remove(i).1);
                }
                return Ok(());
            }
            if st.leading {
                st = self
                    .synced
                    .wait(st)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            }
            st.leading = true;
            drop(st);
            let (target, epoch, batch) = {
                let mut jf = self.lock();
                (jf.len, jf.epoch, std::mem::take(&mut jf.pending))
            };
            let synced = self.syncer.sync_data();
            let n = self.fsyncs.fetch_add(1, Ordering::Relaxed) + 1;
            debug!(fsyncs = n, lines = batch.len(), "journal group commit");
            match synced {
                Ok(()) => {
                    let failed = apply(batch, target);
                    st = self.state();
                    st.durable = st.durable.max(target);
                    st.apply_errors
                        .extend(failed.into_iter().map(|(end, e)| ((epoch, end), e)));
                }
                Err(e) => {
                    drop(batch);
                    let mut jf = self.lock();
                    st = self.state();
                    let cut = st.durable;
                    self.take_back_to(&mut jf, cut);
                    jf.pending.clear();
                    st.cuts.push(cut);
                    st.epoch += 1;
                    jf.epoch = st.epoch;
                    st.failure = Some((e.kind(), e.to_string()));
                    warn!(journal = %self.path.display(), error = %e, "an fsync of the journal failed; the lines it did not cover were taken back");
                }
            }
            st.leading = false;
            self.synced.notify_all();
        }
    }

    /// Truncates the journal to `len` (the end of a complete line).
    fn take_back_to(&self, jf: &mut JournalFile, len: u64) {
        match jf.file.set_len(len) {
            Ok(()) => jf.len = len,
            Err(te) => {
                warn!(journal = %self.path.display(), error = %te, "cannot take back a failed journal append");
                let _ = jf.file.write_all(b"\n");
                jf.len = jf.file.metadata().map_or(jf.len, |m| m.len());
            }
        }
    }
}

/// The entries of the journal at `path`, in order, and how many lines were unreadable
/// (typically one torn last line after a crash). A missing journal is empty.
pub(crate) fn read_entries(path: &Path) -> Result<(Vec<Entry>, usize)> {
    read_entries_from(path, 0)
}

/// Like [`read_entries`], starting at byte `offset` (the start of a line).
pub(crate) fn read_entries_from(path: &Path, offset: u64) -> Result<(Vec<Entry>, usize)> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.seek(SeekFrom::Start(offset))
                .and_then(|_| f.read_to_end(&mut bytes))
                .ctx("cannot read the journal", path)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(CacheError::io("cannot read the journal", path, e)),
    }
    Ok(parse_entries(&bytes, path, offset))
}

/// The entries in journal text `bytes` (read from byte `offset` of `path`, which only names
/// it in warnings), and how many non-blank lines could not be read. Never fails: a line that
/// is not an entry is counted and skipped.
pub(crate) fn parse_entries(bytes: &[u8], path: &Path, offset: u64) -> (Vec<Entry>, usize) {
    let mut entries = Vec::new();
    let mut bad = 0;
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Entry>(line) {
            Ok(e) => entries.push(e),
            Err(e) => {
                bad += 1;
                warn!(journal = %path.display(), offset, line = i + 1, error = %e, "skipping an unreadable journal line");
            }
        }
    }
    (entries, bad)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn pin(i: usize) -> Entry {
        Entry::Pin {
            run_id: format!("r{i}"),
        }
    }

    fn ids(batch: &[Staged]) -> Vec<String> {
        batch
            .iter()
            .map(|s| match &s.entry {
                Entry::Pin { run_id } => run_id.clone(),
                other => panic!("unexpected entry {other:?}"),
            })
            .collect()
    }

    #[test]
    fn one_fsync_commits_every_line_written_before_it_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("journal.jsonl")).unwrap();
        let tickets: Vec<Ticket> = {
            let mut jf = j.lock();
            (0..3).map(|i| j.stage(&mut jf, pin(i)).unwrap()).collect()
        };
        let applied = Mutex::new(Vec::new());
        let apply = |batch: Vec<Staged>, len: u64| {
            applied.lock().unwrap().push((ids(&batch), len));
            Vec::new()
        };
        j.commit(tickets[2], &apply).unwrap();
        let len = j.lock().len;
        assert_eq!(
            *applied.lock().unwrap(),
            vec![(vec!["r0".to_string(), "r1".into(), "r2".into()], len)]
        );
        // The earlier lines are durable already: no further fsync, nothing applied twice.
        j.commit(tickets[0], &apply).unwrap();
        j.commit(tickets[1], &apply).unwrap();
        assert_eq!(j.fsyncs.load(Ordering::Relaxed), 1);
        assert_eq!(applied.lock().unwrap().len(), 1);
        let (entries, bad) = read_entries(j.path()).unwrap();
        assert_eq!((entries, bad), ((0..3).map(pin).collect(), 0));
    }

    #[test]
    fn concurrent_writers_return_only_after_their_entry_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let j = Arc::new(Journal::open(&dir.path().join("journal.jsonl")).unwrap());
        let applied = Arc::new(Mutex::new(Vec::<String>::new()));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let j = j.clone();
                let applied = applied.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let ticket = {
                            let mut jf = j.lock();
                            j.stage(&mut jf, pin(t * 100 + i)).unwrap()
                        };
                        j.commit(ticket, &|batch, _| {
                            applied.lock().unwrap().extend(ids(&batch));
                            Vec::new()
                        })
                        .unwrap();
                        let me = format!("r{}", t * 100 + i);
                        assert!(applied.lock().unwrap().contains(&me), "{me} not applied");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (entries, bad) = read_entries(j.path()).unwrap();
        assert_eq!((entries.len(), bad), (200, 0));
        // Applied exactly once each, in journal order.
        let in_journal: Vec<String> = entries
            .iter()
            .map(|e| match e {
                Entry::Pin { run_id } => run_id.clone(),
                other => panic!("unexpected entry {other:?}"),
            })
            .collect();
        assert_eq!(*applied.lock().unwrap(), in_journal);
        assert!(j.fsyncs.load(Ordering::Relaxed) <= 200);
    }
}
