//! Cheap change detection for an artifact on disk (a file, or a directory of files): the
//! stat of every regular file, and its digest computed without the stat cache.
//!
//! The engine uses it on the private copies of inputs it gives to external commands: it
//! pins every file's mtime to [`pinned_mtime`] and takes a [`TreeStat`]; after the command a
//! different `TreeStat` means something may have changed, and only then is the copy
//! re-hashed ([`digest_path`]) and compared with the input's digest.

use std::fs::{self, File, FileTimes};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use crate::digest::{Digest, hash_file};
use crate::error::{CacheError, IoContext, Result};
use crate::manifest::{Manifest, ManifestEntry};
use crate::walk::{kind_name, walk_files};

/// The mtime [`TreeStat::pin_mtimes`] gives every file: 2000-01-01T00:00:00Z. Any write
/// sets a file's mtime to the current time, which differs from it whatever the file
/// system's timestamp granularity.
pub fn pinned_mtime() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(946_684_800)
}

/// What is compared of one file: identity, size, times and permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStat {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    mode: u32,
}

impl FileStat {
    fn of(m: &fs::Metadata) -> FileStat {
        FileStat {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            mode: m.mode(),
        }
    }
}

/// The stats of an artifact's regular files, by relative path ("" for a single file).
/// Equal `TreeStat`s taken before and after something ran mean no file was written,
/// truncated, replaced, added, removed or renamed (short of deliberately restoring both
/// mtime and ctime, which only the kernel's clock can do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeStat {
    files: Vec<(String, FileStat)>,
    /// Total size of the files.
    pub size: u64,
}

impl TreeStat {
    /// Stats the file or directory at `path` (not following symbolic links; a link, FIFO,
    /// socket or device is an error naming it, as in [`crate::Cas::put_dir`]).
    pub fn of(path: &Path) -> Result<TreeStat> {
        let meta = fs::symlink_metadata(path).ctx("cannot stat", path)?;
        let files = if meta.is_file() {
            vec![(String::new(), FileStat::of(&meta))]
        } else if meta.is_dir() {
            walk_files(path)?
                .into_iter()
                .map(|f| {
                    let m = fs::symlink_metadata(&f.path).ctx("cannot stat", &f.path)?;
                    Ok((f.rel, FileStat::of(&m)))
                })
                .collect::<Result<Vec<_>>>()?
        } else if meta.file_type().is_symlink() {
            return Err(CacheError::Symlink {
                path: path.to_path_buf(),
            });
        } else {
            return Err(CacheError::NotAFile {
                path: path.to_path_buf(),
                found: kind_name(&meta.file_type()),
            });
        };
        let size = files.iter().map(|(_, s)| s.size).sum();
        Ok(TreeStat { files, size })
    }

    /// Sets the mtime of every regular file at or under `path` to [`pinned_mtime`], then
    /// stats them.
    pub fn pin_mtimes(path: &Path) -> Result<TreeStat> {
        let times = FileTimes::new().set_modified(pinned_mtime());
        let pin = |p: &Path| {
            // Opened for reading: setting times needs ownership (or root), not write access.
            File::open(p)
                .and_then(|f| f.set_times(times))
                .ctx("cannot set the modification time of", p)
        };
        if fs::symlink_metadata(path)
            .ctx("cannot stat", path)?
            .is_dir()
        {
            for f in walk_files(path)? {
                pin(&f.path)?;
            }
        } else {
            pin(path)?;
        }
        TreeStat::of(path)
    }

    /// How many regular files it covers.
    pub fn files(&self) -> usize {
        self.files.len()
    }
}

/// Digest and size of the file or directory at `path`, hashing every file (no stat cache,
/// nothing stored). A directory's digest is that of its manifest, as [`crate::Cas::put_dir`]
/// would store it.
pub fn digest_path(path: &Path) -> Result<(Digest, u64)> {
    let meta = fs::symlink_metadata(path).ctx("cannot stat", path)?;
    if !meta.is_dir() {
        return hash_file(path);
    }
    let entries = walk_files(path)?
        .par_iter()
        .map(|f| {
            let (digest, size) = hash_file(&f.path)?;
            Ok(ManifestEntry {
                path: f.rel.clone(),
                mode: f.mode,
                digest,
                size,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let m = Manifest { entries };
    Ok((m.digest(), m.total_size()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn pinned_stats_change_with_any_write_and_digest_path_matches_put_dir() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("art");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("a.txt"), b"alpha").unwrap();
        fs::write(root.join("sub/b.txt"), b"beta").unwrap();
        let pinned = TreeStat::pin_mtimes(&root).unwrap();
        assert_eq!((pinned.files(), pinned.size), (2, 9));
        assert_eq!(TreeStat::of(&root).unwrap(), pinned, "stat is stable");
        let cas = crate::Cas::open(&dir.path().join("cas")).unwrap();
        let (stored, _) = cas.put_dir(&root).unwrap();
        assert_eq!(digest_path(&root).unwrap().0, stored);

        // Same size, same bytes count: an in-place overwrite still changes the stat.
        let mut f = File::options()
            .write(true)
            .open(root.join("a.txt"))
            .unwrap();
        f.write_all(b"ALPHA").unwrap();
        drop(f);
        assert_ne!(TreeStat::of(&root).unwrap(), pinned);
        assert_ne!(digest_path(&root).unwrap().0, stored);

        // A new empty file is a change too.
        let pinned = TreeStat::pin_mtimes(&root).unwrap();
        File::create(root.join("sub/c.txt")).unwrap();
        assert_ne!(TreeStat::of(&root).unwrap(), pinned);
    }

    #[test]
    fn a_single_file_and_its_removal() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"xyz").unwrap();
        let pinned = TreeStat::pin_mtimes(&file).unwrap();
        assert_eq!(
            fs::metadata(&file).unwrap().modified().unwrap(),
            pinned_mtime()
        );
        assert_eq!((pinned.files(), pinned.size), (1, 3));
        assert_eq!(digest_path(&file).unwrap(), (Digest::of_bytes(b"xyz"), 3));
        fs::remove_file(&file).unwrap();
        let err = TreeStat::of(&file).unwrap_err();
        assert!(
            matches!(&err, CacheError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
            "{err}"
        );
    }
}
