//! Private copies of a node's inputs for programs that might write to what they are given
//! (the `command` operator's shell commands).
//!
//! A file input's path is its blob in the CAS. Root ignores the blob's read-only mode, and a
//! hard link would share its inode, so a command given that path could change the store
//! (`echo >> ${in.x}`). [`Context::input_copies`] instead gives each file input a copy in the
//! node's scratch space: a reflink (`FICLONE`, no data copied) where the file system has
//! them, else a plain copy. Directory inputs are already private copies (the engine
//! materialises them per execution). Every copied file gets the mtime
//! [`expflow_cache::pinned_mtime`] and its stat is remembered; [`InputCopies::changes`]
//! compares stats after the program ran and re-hashes only an input whose stat changed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use expflow_cache::{Digest, TreeStat, digest_path};

use crate::context::Context;
use crate::node::{blob_ok, safe_name};
use crate::operator::OpError;

/// One input as handed to the program.
struct Copy {
    path: PathBuf,
    digest: Digest,
    stat: TreeStat,
}

/// Private copies of some of a node's inputs (see the module docs).
pub struct InputCopies {
    copies: BTreeMap<String, Copy>,
}

/// What happened to an input copy while the program ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputChange {
    pub port: String,
    /// The copy the program was given.
    pub path: PathBuf,
    /// "was deleted or moved away", "was modified: …".
    pub what: String,
}

impl Context {
    /// Private copies of the inputs on `ports` (unconnected names are skipped): paths a
    /// program may be given without any write through them reaching the CAS. A file input's
    /// blob is checked first (stat cache, else re-hash); a damaged one is removed and is an
    /// error naming the port.
    pub fn input_copies<'a>(
        &self,
        ports: impl IntoIterator<Item = &'a str>,
    ) -> Result<InputCopies, OpError> {
        let wanted: BTreeSet<&str> = ports.into_iter().collect();
        let mut copies = BTreeMap::new();
        for port in wanted {
            let Some(input) = self.inputs.get(port) else {
                continue;
            };
            let path = if input.ty.is_dir() {
                // Already a private, verified copy made for this execution.
                input.path.clone()
            } else {
                if !blob_ok(&self.cas, self.store.as_ref(), &input.digest)? {
                    return Err(format!(
                        "input `{port}`: its blob {} is missing or corrupt in the CAS (a \
                         corrupt one has been removed); run again to recompute it, and run \
                         `expflow verify` to find other damage",
                        input.digest
                    )
                    .into());
                }
                std::fs::create_dir_all(&self.copies)
                    .map_err(|e| format!("cannot create {}: {e}", self.copies.display()))?;
                let dest = self.copies.join(safe_name(port));
                clone_or_copy(&self.cas.blob_path(&input.digest), &dest)
                    .map_err(|e| format!("input `{port}`: cannot copy it for the command: {e}"))?;
                dest
            };
            let stat = TreeStat::pin_mtimes(&path).map_err(|e| format!("input `{port}`: {e}"))?;
            copies.insert(
                port.to_string(),
                Copy {
                    path,
                    digest: input.digest,
                    stat,
                },
            );
        }
        Ok(InputCopies { copies })
    }
}

impl InputCopies {
    /// The copy of input `port`, if it was asked for and is connected.
    pub fn path(&self, port: &str) -> Option<&Path> {
        self.copies.get(port).map(|c| c.path.as_path())
    }

    /// Every copy that was modified, truncated, replaced, renamed or deleted, by port. An
    /// unchanged stat is trusted; a changed one is re-hashed, and a copy whose bytes still
    /// hash to the input's digest (only touched, or rewritten with the same bytes) counts
    /// as unchanged.
    pub fn changes(&self) -> Vec<InputChange> {
        let mut out = Vec::new();
        for (port, copy) in &self.copies {
            if let Some(what) = change_of(copy) {
                out.push(InputChange {
                    port: port.clone(),
                    path: copy.path.clone(),
                    what,
                });
            }
        }
        out
    }
}

/// How `copy` changed, if it did.
fn change_of(copy: &Copy) -> Option<String> {
    let now = match TreeStat::of(&copy.path) {
        Ok(now) if now == copy.stat => return None,
        Ok(now) => now,
        Err(expflow_cache::CacheError::Io { source, .. })
            if source.kind() == io::ErrorKind::NotFound =>
        {
            return Some("was deleted or moved away".into());
        }
        Err(e) => return Some(format!("is no longer readable as it was given: {e}")),
    };
    match digest_path(&copy.path) {
        Ok((d, _)) if d == copy.digest => None,
        Ok((d, size)) => Some(format!(
            "was modified: it held {} bytes ({} file(s)) with digest {}, and now holds {size} \
             bytes ({} file(s)) with digest {}",
            copy.stat.size,
            copy.stat.files(),
            copy.digest.short(),
            now.files(),
            d.short()
        )),
        Err(e) => Some(format!("is no longer readable as it was given: {e}")),
    }
}

/// Makes `dest` (which must not exist) a read-only copy of `src`: a reflink when the file
/// system supports one, else a copy of the bytes.
fn clone_or_copy(src: &Path, dest: &Path) -> io::Result<()> {
    let from = File::open(src)?;
    let mut to = OpenOptions::new().write(true).create_new(true).open(dest)?;
    if !reflink(&from, &to) {
        let mut from = &from;
        io::copy(&mut from, &mut to)?;
    }
    to.set_permissions(Permissions::from_mode(0o444))
}

/// Whether `FICLONE` made `to` share `from`'s extents.
#[cfg(target_os = "linux")]
fn reflink(from: &File, to: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: both descriptors are open for the duration of the call; FICLONE takes the
    // source descriptor as its argument and only reads it.
    let rc = unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) };
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn reflink(_from: &File, _to: &File) -> bool {
    false
}
