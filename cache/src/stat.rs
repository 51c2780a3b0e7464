//! The stat cache: files outside the CAS are hashed once and remembered by
//! (path, device, inode, size, mtime, ctime).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tracing::{debug, trace};

use crate::digest::{Digest, hash_file};
use crate::error::{CacheError, IoContext, Result};
use crate::manifest::{Manifest, ManifestEntry};
use crate::store::Store;
use crate::walk::{kind_name, walk_files};

/// A file whose mtime is this close to the moment we hashed it is not cached: a write in
/// the same timestamp tick could change its bytes without changing its stat (the "racy
/// git" problem). Two seconds covers the coarsest common file systems.
const RACY_WINDOW_NS: i128 = 2_000_000_000;

/// What identifies a file's content without reading it. Every field must match for a
/// stat-cache hit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatKey {
    /// The absolute path (not canonicalised).
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl StatKey {
    /// Stats `path` (following symlinks).
    pub fn of(path: &Path) -> Result<StatKey> {
        let abs = std::path::absolute(path).ctx("cannot resolve", path)?;
        let m = fs::metadata(&abs).ctx("cannot stat", path)?;
        Ok(StatKey {
            path: abs.to_string_lossy().into_owned(),
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }

    /// [`StatKey::of`] for `path`, which is `rel` inside the open directory `dir`: the
    /// same fields, found by looking up `rel` from `dir` instead of walking all of `path`
    /// (the CAS checks a thousand blobs this way when a re-run finds everything cached).
    #[cfg(target_os = "linux")]
    pub fn of_in(dir: &fs::File, rel: &str, path: &Path) -> Result<StatKey> {
        use std::ffi::CString;
        use std::os::fd::AsRawFd;
        let abs = std::path::absolute(path).ctx("cannot resolve", path)?;
        let name = CString::new(rel)
            .map_err(|e| crate::CacheError::io("cannot stat", path, std::io::Error::other(e)))?;
        // SAFETY: `statx` is all zeros when empty; the name is NUL-terminated and outlives
        // the call; `buf` is a valid, exclusive place for the kernel to write the result.
        let mut buf: libc::statx = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::statx(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_STATX_SYNC_AS_STAT,
                libc::STATX_BASIC_STATS,
                &mut buf,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).ctx("cannot stat", path);
        }
        let ns =
            |t: libc::statx_timestamp| i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec);
        Ok(StatKey {
            path: abs.to_string_lossy().into_owned(),
            dev: libc::makedev(buf.stx_dev_major, buf.stx_dev_minor),
            ino: buf.stx_ino,
            size: buf.stx_size,
            mtime_ns: ns(buf.stx_mtime),
            ctime_ns: ns(buf.stx_ctime),
        })
    }
}

/// Digest and size of a file or directory outside the CAS, using the stat cache.
///
/// A regular file whose [`StatKey`] matches a cache entry is not read. Otherwise it is
/// hashed and, unless it changed while being hashed or was modified within the last two
/// seconds, remembered. A directory's digest is that of its manifest, exactly as
/// [`crate::Cas::put_dir`] would store it (each file through the stat cache); nothing is
/// written to the CAS.
pub fn digest_path_cached(path: &Path, store: &dyn Store) -> Result<(Digest, u64)> {
    let meta = fs::metadata(path).ctx("cannot stat", path)?;
    if meta.is_dir() {
        let files = walk_files(path)?;
        let entries = files
            .par_iter()
            .map(|f| {
                let (digest, size) = digest_file_cached(&f.path, store)?;
                Ok(ManifestEntry {
                    path: f.rel.clone(),
                    mode: f.mode,
                    digest,
                    size,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let m = Manifest { entries };
        return Ok((m.digest(), m.total_size()));
    }
    if !meta.is_file() {
        return Err(CacheError::NotAFile {
            path: path.to_path_buf(),
            found: kind_name(&meta.file_type()),
        });
    }
    digest_file_cached(path, store)
}

fn digest_file_cached(path: &Path, store: &dyn Store) -> Result<(Digest, u64)> {
    let before = StatKey::of(path)?;
    if let Some(d) = store.stat_get(&before)? {
        trace!(path = %path.display(), "stat cache hit");
        return Ok((d, before.size));
    }
    let started = now_ns();
    let (d, size) = hash_file(path)?;
    let after = StatKey::of(path)?;
    if after == before && size == after.size && after.mtime_ns < started - RACY_WINDOW_NS {
        store.stat_put(&after, &d)?;
    } else {
        debug!(path = %path.display(), "not caching the digest: the file changed recently or while it was hashed");
    }
    Ok((d, size))
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}
