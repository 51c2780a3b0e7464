//! The append-only journal beside the database: one JSON object per line for every durable
//! write, fsynced, so that `expflow db rebuild` can recreate the index.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tracing::warn;

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
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    file: Mutex<JournalFile>,
}

/// The open file and its length (the offset of the next entry).
#[derive(Debug)]
pub(crate) struct JournalFile {
    file: File,
    pub(crate) len: u64,
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
        Ok(Journal {
            path: path.to_path_buf(),
            file: Mutex::new(JournalFile { file, len }),
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

    /// Appends `entry` as one line and, when `sync` is set, fsyncs (which also makes every
    /// earlier unsynced line durable). `jf` is the guard from [`Journal::lock`].
    pub(crate) fn append(&self, jf: &mut JournalFile, entry: &Entry, sync: bool) -> Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(|e| CacheError::Encode {
            what: "journal entry",
            reason: e.to_string(),
        })?;
        line.push(b'\n');
        let start = jf.len;
        let written = jf
            .file
            .write_all(&line)
            .map_err(|e| ("cannot append to the journal", e));
        let synced = written.and_then(|()| {
            if sync {
                jf.file
                    .sync_data()
                    .map_err(|e| ("cannot fsync the journal", e))
            } else {
                Ok(())
            }
        });
        if let Err((action, e)) = synced {
            // A full disk (or a failing one) leaves part of the line written, or the whole
            // line not durable. Take it back, so the journal ends on a complete line and the
            // entry the caller reports as failed is not replayed later; truncating needs no
            // free space. If even that fails, end the fragment so the next entry gets a line
            // of its own.
            if let Err(te) = jf.file.set_len(start) {
                warn!(journal = %self.path.display(), error = %te, "cannot take back a failed journal append");
                let _ = jf.file.write_all(b"\n");
                jf.len = jf.file.metadata().map_or(jf.len, |m| m.len());
            }
            return Err(CacheError::io(action, &self.path, e));
        }
        jf.len = start + line.len() as u64;
        Ok(())
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
