//! The last-hits file of a pipeline (`.expflow/last-hits/<name digest>`): each node's key at
//! its last run and the hit-index entries of those keys, as of one state of the journal.
//!
//! A no-op re-run needs nothing else from the database, and opening sled (its recovery scan,
//! a new snapshot file, two fsyncs) cost more than the rest of such a run. The file is
//! derived data, like the hit index it copies: it is trusted only while the journal is the
//! one it was written against (same file, same length, same last bytes), since every change
//! to the records and last keys is a journal line; anything else about it (missing,
//! truncated, damaged, another format) only means the database is opened as before.
//!
//! Layout, integers little-endian: [`MAGIC`]; the journal's [`Stamp`] (dev, ino, length as
//! u64, the BLAKE3 digest of its last [`TAIL`] bytes); the journal length the database had
//! caught up to (u64); the device and inode of the database's file `db/db` (u64 each); the
//! pipeline name (string); the number of last keys (u32), each as
//! node (string) and key (32 bytes); the number of hits (u32), each as key (32 bytes) and a
//! hit-index entry (string of [`crate::hit_code`] bytes); the number of stat-cache entries
//! (u32), each as path (string), dev, ino, size (u64), mtime_ns, ctime_ns (i128) and digest
//! (32 bytes); the BLAKE3 digest of everything before it. A string is its length (u32) and
//! its bytes.
//!
//! The stat-cache entries are those the run looked up (its inputs, its `outputs:`
//! destinations): like the database's, an entry counts only when every field of the file's
//! stat still matches.
//!
//! The database's file is named too: a database replaced since (deleted, recreated, or
//! swapped for a broken one) is opened, so that a run still reports one it cannot open.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::hit_code::{self, Reader, put_stat, put_str, put_u32};
use crate::record::Hit;
use crate::stat::StatKey;

const MAGIC: &[u8; 8] = b"EXLHITS2";
/// How many of the journal's last bytes the stamp hashes.
const TAIL: u64 = 4096;

/// Which journal, at which length: equal stamps mean nothing was appended, cut or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    pub(crate) len: u64,
    tail: [u8; 32],
}

impl Stamp {
    /// The stamp of the journal at `path` as it is now; None if it cannot be read.
    pub(crate) fn of(path: &Path) -> Option<Stamp> {
        let mut f = File::open(path).ok()?;
        let meta = f.metadata().ok()?;
        let len = meta.len();
        let (dev, ino) = ids(&meta);
        let start = len.saturating_sub(TAIL);
        let mut tail = Vec::with_capacity((len - start) as usize);
        f.seek(SeekFrom::Start(start)).ok()?;
        f.take(len - start).read_to_end(&mut tail).ok()?;
        if tail.len() as u64 != len - start {
            return None;
        }
        Some(Stamp {
            dev,
            ino,
            len,
            tail: *blake3::hash(&tail).as_bytes(),
        })
    }

    fn bytes(&self) -> [u8; STAMP_LEN] {
        let mut b = [0u8; STAMP_LEN];
        b[..8].copy_from_slice(&self.dev.to_le_bytes());
        b[8..16].copy_from_slice(&self.ino.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b[24..].copy_from_slice(&self.tail);
        b
    }
}

/// The stamp's size in the file; it starts right after [`MAGIC`].
const STAMP_LEN: usize = 56;

/// The device and inode of the database's file in the sled directory `db_dir`, if it is a
/// regular file.
pub(crate) fn db_file(db_dir: &Path) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(db_dir.join("db")).ok()?;
    meta.is_file().then(|| ids(&meta))
}

#[cfg(unix)]
fn ids(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn ids(_meta: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// What the file holds, as written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Contents {
    pub(crate) stamp: Stamp,
    /// How far into the journal the database had applied when the file was written; the
    /// lines after it (runs recorded without opening the database) are replayed when it
    /// next opens.
    pub(crate) db_mark: u64,
    /// The device and inode of `db/db` ([`db_file`]).
    pub(crate) db_file: (u64, u64),
    pub(crate) pipeline: String,
    /// Node → its last key, sorted by node.
    pub(crate) last: Vec<(String, Digest)>,
    pub(crate) hits: HashMap<Digest, Hit>,
    /// Stat-cache entries (file stat → digest), sorted by path.
    pub(crate) stats: Vec<(StatKey, Digest)>,
}

/// The file as read: everything but the hits decoded; a hit is decoded when it is looked
/// up (a run looks each up once).
#[derive(Debug, Clone)]
pub(crate) struct LastHits {
    pub(crate) stamp: Stamp,
    pub(crate) db_mark: u64,
    /// The device and inode of `db/db` ([`db_file`]).
    pub(crate) db_file: (u64, u64),
    pub(crate) pipeline: String,
    pub(crate) last: Vec<(String, Digest)>,
    pub(crate) stats: Vec<(StatKey, Digest)>,
    /// Key → where its hit-index entry is in `bytes`.
    hits: HashMap<Digest, (usize, usize)>,
    bytes: Vec<u8>,
}

/// The file for `pipeline` in workspace `root` (`.expflow`).
pub(crate) fn path(root: &Path, pipeline: &str) -> PathBuf {
    let name = Digest::of_bytes(pipeline.as_bytes()).to_hex();
    root.join("last-hits").join(&name[..32])
}

impl Contents {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.last.len() * 48 + self.hits.len() * 200);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.stamp.bytes());
        out.extend_from_slice(&self.db_mark.to_le_bytes());
        out.extend_from_slice(&self.db_file.0.to_le_bytes());
        out.extend_from_slice(&self.db_file.1.to_le_bytes());
        put_str(&mut out, &self.pipeline);
        put_u32(&mut out, self.last.len());
        for (node, key) in &self.last {
            put_str(&mut out, node);
            out.extend_from_slice(&key.0);
        }
        // In key order, so that the same state gives the same bytes.
        let mut hits: Vec<(&Digest, &Hit)> = self.hits.iter().collect();
        hits.sort_by_key(|(k, _)| k.0);
        put_u32(&mut out, hits.len());
        for (key, hit) in hits {
            out.extend_from_slice(&key.0);
            let code = hit_code::encode(hit);
            put_u32(&mut out, code.len());
            out.extend_from_slice(&code);
        }
        put_u32(&mut out, self.stats.len());
        for (s, d) in &self.stats {
            put_stat(&mut out, s);
            out.extend_from_slice(&d.0);
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// Writes the file (to a temporary name, then renamed over the old one). Not fsynced:
    /// a file lost or torn by a crash fails its checksum or stamp and is not used.
    pub(crate) fn save(&self, root: &Path) -> std::io::Result<()> {
        let file = path(root, &self.pipeline);
        let dir = file.parent().expect("the file is in a directory");
        std::fs::create_dir_all(dir)?;
        // One writer at a time (the workspace lock): a name of its own is not needed, and
        // a file left by a crash is replaced by the next write.
        let tmp = dir.join(".tmp");
        std::fs::write(&tmp, self.encode())?;
        std::fs::rename(&tmp, &file).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

impl LastHits {
    /// Reads what [`Contents::encode`] wrote; the reason it cannot, if it cannot.
    pub(crate) fn decode(bytes: Vec<u8>) -> Result<LastHits, String> {
        let body_len = bytes
            .len()
            .checked_sub(32)
            .ok_or("shorter than its checksum")?;
        let (body, sum) = bytes.split_at(body_len);
        if blake3::hash(body).as_bytes() != sum {
            return Err("its checksum does not match (torn or damaged)".into());
        }
        let mut r = Reader { bytes: body, at: 0 };
        if r.take(MAGIC.len())? != MAGIC {
            return Err("not a last-hits file of this version".into());
        }
        let stamp = Stamp {
            dev: r.u64()?,
            ino: r.u64()?,
            len: r.u64()?,
            tail: r.take(32)?.try_into().expect("32 bytes"),
        };
        let db_mark = r.u64()?;
        let db_file = (r.u64()?, r.u64()?);
        let pipeline = r.string()?;
        let n = r.u32()? as usize;
        let mut last = Vec::with_capacity(n.min(body.len() / 36));
        for _ in 0..n {
            let node = r.string()?;
            last.push((node, Digest(r.take(32)?.try_into().expect("32 bytes"))));
        }
        let n = r.u32()? as usize;
        let mut hits = HashMap::with_capacity(n.min(body.len() / 36));
        for _ in 0..n {
            let key = Digest(r.take(32)?.try_into().expect("32 bytes"));
            let len = r.u32()? as usize;
            let start = r.at;
            r.take(len)?;
            hits.insert(key, (start, len));
        }
        let n = r.u32()? as usize;
        let mut stats = Vec::with_capacity(n.min(body.len() / 100));
        for _ in 0..n {
            let stat = r.stat()?;
            stats.push((stat, Digest(r.take(32)?.try_into().expect("32 bytes"))));
        }
        if r.at != body.len() {
            return Err(format!("{} bytes after the last entry", body.len() - r.at));
        }
        Ok(LastHits {
            stamp,
            db_mark,
            db_file,
            pipeline,
            last,
            stats,
            hits,
            bytes,
        })
    }

    /// The hit of `key`, if the file has one (an entry that cannot be decoded counts as
    /// none: the database is asked instead).
    pub(crate) fn hit(&self, key: &Digest) -> Option<Hit> {
        let &(start, len) = self.hits.get(key)?;
        hit_code::decode(&self.bytes[start..start + len]).ok()
    }

    /// The file's bytes, as read.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The file for `pipeline` in `root`, if it can be read and was written against the
    /// journal as it is now (`journal`: its stamp).
    pub(crate) fn load(root: &Path, pipeline: &str, journal: &Stamp) -> Option<LastHits> {
        let file = path(root, pipeline);
        let bytes = std::fs::read(&file).ok()?;
        match LastHits::decode(bytes) {
            Ok(l) if l.pipeline == pipeline && l.stamp == *journal => Some(l),
            Ok(_) => {
                tracing::debug!(file = %file.display(), "the last-hits file is out of date");
                None
            }
            Err(reason) => {
                tracing::debug!(file = %file.display(), reason, "the last-hits file cannot be read");
                None
            }
        }
    }
}

/// Rewrites the stamp (and the checksum) of the file for `pipeline`, whose bytes are
/// `bytes` (a copy of [`LastHits::bytes`]), for a journal that only gained lines that do
/// not change what the file holds (runs). In place: a crash between the two writes leaves a
/// checksum that does not match, and the file is not used.
pub(crate) fn restamp(
    root: &Path,
    pipeline: &str,
    bytes: &mut [u8],
    stamp: &Stamp,
) -> std::io::Result<()> {
    let at = MAGIC.len();
    let body_len = bytes.len() - 32;
    bytes[at..at + STAMP_LEN].copy_from_slice(&stamp.bytes());
    let sum = *blake3::hash(&bytes[..body_len]).as_bytes();
    bytes[body_len..].copy_from_slice(&sum);
    let file = path(root, pipeline);
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&file)?;
        if f.metadata()?.len() == bytes.len() as u64 {
            f.write_all_at(&bytes[at..at + STAMP_LEN], at as u64)?;
            return f.write_all_at(&sum, body_len as u64);
        }
    }
    std::fs::write(&file, bytes)
}
