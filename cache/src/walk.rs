//! Walking a directory artifact: regular files only, no symlink following.

use std::fs::{self, FileType};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{CacheError, IoContext, Result};

/// One regular file found under a directory.
#[derive(Debug, Clone)]
pub(crate) struct WalkEntry {
    /// Relative, '/'-separated path, valid UTF-8, no newline.
    pub rel: String,
    /// Absolute (or root-joined) path on disk.
    pub path: PathBuf,
    /// 0o755 if any execute bit is set, else 0o644.
    pub mode: u32,
}

/// Normalises file permissions to the two modes a manifest knows.
pub(crate) fn manifest_mode(perm_mode: u32) -> u32 {
    if perm_mode & 0o111 != 0 { 0o755 } else { 0o644 }
}

/// A word for a file type, for error messages.
pub(crate) fn kind_name(ft: &FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_file() {
        "a regular file"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else {
        "an unknown file type"
    }
}

/// All regular files under `root`, sorted by relative path. A symlink, FIFO, socket or
/// device anywhere below is an error naming it; so is a name that is not valid UTF-8 or
/// contains a newline. Empty directories are not represented.
pub(crate) fn walk_files(root: &Path) -> Result<Vec<WalkEntry>> {
    let meta = fs::symlink_metadata(root).ctx("cannot stat", root)?;
    if meta.file_type().is_symlink() {
        return Err(CacheError::Symlink {
            path: root.to_path_buf(),
        });
    }
    if !meta.is_dir() {
        return Err(CacheError::NotADirectory {
            path: root.to_path_buf(),
            found: kind_name(&meta.file_type()),
        });
    }
    let mut out = Vec::new();
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for entry in fs::read_dir(&dir).ctx("cannot list", &dir)? {
            let entry = entry.ctx("cannot list", &dir)?;
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(CacheError::BadPath {
                    path,
                    reason: "the name is not valid UTF-8",
                });
            };
            if name.contains('\n') {
                return Err(CacheError::BadPath {
                    path,
                    reason: "the name contains a newline",
                });
            }
            let rel = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            };
            let ft = entry.file_type().ctx("cannot stat", &path)?;
            if ft.is_symlink() {
                return Err(CacheError::Symlink { path });
            } else if ft.is_dir() {
                stack.push((path, rel));
            } else if ft.is_file() {
                let mode = fs::symlink_metadata(&path)
                    .ctx("cannot stat", &path)?
                    .permissions()
                    .mode();
                out.push(WalkEntry {
                    rel,
                    path,
                    mode: manifest_mode(mode),
                });
            } else {
                return Err(CacheError::SpecialFile {
                    found: kind_name(&ft),
                    path,
                });
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// Checks that a manifest path is relative, '/'-separated and cannot escape its root.
pub(crate) fn check_rel_path(rel: &str) -> std::result::Result<(), &'static str> {
    if rel.is_empty() {
        return Err("empty path");
    }
    if rel.contains('\n') {
        return Err("path contains a newline");
    }
    if rel.contains('\0') {
        return Err("path contains a NUL byte");
    }
    if rel.starts_with('/') {
        return Err("path is absolute");
    }
    for part in rel.split('/') {
        match part {
            "" => return Err("path has an empty component"),
            "." | ".." => return Err("path has a '.' or '..' component"),
            _ => {}
        }
    }
    Ok(())
}
