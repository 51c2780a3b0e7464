//! The content-addressed blob store: `root/<first 2 hex>/<64 hex>`, immutable, read-only
//! files named by the BLAKE3 of their bytes.
//!
//! Every write goes to a temp file under `root/tmp`, is fsynced, made read-only and renamed
//! into place, then the shard directory is fsynced. A reader therefore sees a blob whole or
//! not at all, and a crash leaves at most a leftover in `root/tmp` ([`Cas::clean_tmp`]).

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tempfile::NamedTempFile;
use tracing::{debug, warn};

use crate::digest::{
    Digest, IO_BUF, PARALLEL_HASH_THRESHOLD, hash_file, hash_open_file, hash_opened, open_regular,
};
use crate::error::{CacheError, IoContext, Result};
use crate::manifest::{Manifest, ManifestEntry};
use crate::stat::StatKey;
use crate::store::Store;
use crate::walk::walk_files;

const BLOB_MODE: u32 = 0o444;

/// The state of one blob after a full rehash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BlobState {
    /// Present, and its bytes hash to its name.
    Ok,
    /// Not in the CAS.
    Missing,
    /// Present, but its bytes hash to `actual`.
    Corrupt { actual: Digest },
}

/// A content-addressed store rooted at one directory (the engine uses
/// `<workspace>/.expflow/cas`). Cheap to clone; safe to share between threads.
#[derive(Clone)]
pub struct Cas {
    root: PathBuf,
    tmp: PathBuf,
    /// Where the stats of blobs known to be intact are remembered (see
    /// [`Cas::with_stat_cache`]).
    stat: Option<Arc<dyn Store>>,
    tmp_dev: Arc<OnceLock<Option<u64>>>,
    /// The root directory, opened once for [`Cas::stat_blob`].
    dir: Arc<OnceLock<Option<File>>>,
}

impl std::fmt::Debug for Cas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cas")
            .field("root", &self.root)
            .field("stat_cache", &self.stat.is_some())
            .finish()
    }
}

impl Cas {
    /// Opens (creating if needed) the store at `root` and its `tmp/` directory.
    pub fn open(root: &Path) -> Result<Cas> {
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp).ctx("cannot create the CAS directory", &tmp)?;
        Ok(Cas {
            root: root.to_path_buf(),
            tmp,
            stat: None,
            tmp_dev: Arc::new(OnceLock::new()),
            dir: Arc::new(OnceLock::new()),
        })
    }

    /// Uses `store`'s stat cache for blobs: the stat of every blob this store writes, or
    /// finds already present and re-hashes, is remembered, and a blob whose stat still
    /// matches is not re-hashed when the same bytes are stored again. Without it every
    /// such blob is re-hashed.
    pub fn with_stat_cache(mut self, store: Arc<dyn Store>) -> Cas {
        self.stat = Some(store);
        self
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob named `d` lives (whether or not it exists).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    /// The stat of blob `d`, as [`StatKey::of`] gives it for [`Cas::blob_path`]; on Linux
    /// looked up from the CAS directory, opened once, rather than along the whole path.
    /// The directory is the one this store opened first: a CAS directory is not replaced
    /// while a store has it open (a workspace's is under the workspace lock).
    pub fn stat_blob(&self, d: &Digest) -> Result<StatKey> {
        let path = self.blob_path(d);
        #[cfg(target_os = "linux")]
        if let Some(dir) = self.dir.get_or_init(|| File::open(&self.root).ok()) {
            let hex = d.to_hex();
            // A directory replaced since it was opened is looked up by its path again.
            if let Ok(stat) = StatKey::of_in(dir, &format!("{}/{hex}", &hex[..2]), &path) {
                return Ok(stat);
            }
        }
        StatKey::of(&path)
    }

    /// Whether a blob named `d` exists (its content is not checked; see [`Cas::check`]).
    pub fn contains(&self, d: &Digest) -> bool {
        fs::metadata(self.blob_path(d)).is_ok_and(|m| m.is_file())
    }

    /// Stores `bytes` and returns their digest. An existing blob of that name is kept only
    /// if it is intact (see [`Cas::put_file`]).
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::of_bytes(bytes);
        let len = bytes.len() as u64;
        if self.existing_intact(&d)? {
            return Ok(d);
        }
        let mut tmp = self.new_temp()?;
        tmp.write_all(bytes).ctx("cannot write", tmp.path())?;
        self.commit(tmp, d, len)?;
        Ok(d)
    }

    /// Stores everything `r` yields, hashing while writing. If `r` fails, nothing is stored
    /// and the temp file is removed.
    pub fn put_reader(&self, mut r: impl Read) -> Result<(Digest, u64)> {
        let mut tmp = self.new_temp()?;
        let tmp_path = tmp.path().to_path_buf();
        let (d, n) = copy_hashing(&mut r, Path::new("<reader>"), tmp.as_file_mut(), &tmp_path)?;
        self.commit(tmp, d, n)?;
        Ok((d, n))
    }

    /// Copies the regular file `src` into the store and returns its digest and size.
    ///
    /// Small files are hashed while they are copied; files of 16 MiB or more are copied
    /// first and the copy is then hashed on all cores, so the name always matches the bytes
    /// stored even if `src` changes meanwhile. When a blob of that name exists already it is
    /// believed only after a hash: the stat cache vouches for it (its stat is unchanged since
    /// it was written or hashed) or it is re-hashed. An intact one is kept and the copy
    /// dropped; a damaged one (any size) is replaced by the copy, atomically, with a warning.
    pub fn put_file(&self, src: &Path) -> Result<(Digest, u64)> {
        let mut file = open_regular(src)?;
        let len = file.metadata().ctx("cannot stat", src)?.len();
        let mut tmp = self.new_temp()?;
        let (d, n) = copy_file_hashing(&mut file, src, len, &mut tmp)?;
        self.commit(tmp, d, n)?;
        Ok((d, n))
    }

    /// Moves the regular file `src` into the store (a rename when it is on the same file
    /// system as the store, else a copy) and returns its digest and size. For outputs that
    /// nobody writes any more: it saves a copy and a temp file per blob.
    pub fn put_file_move(&self, src: &Path) -> Result<(Digest, u64)> {
        use std::os::unix::fs::MetadataExt;
        let mut file = open_regular(src)?;
        let same_fs = match (file.metadata(), self.tmp_dev()) {
            (Ok(a), Some(dev)) => a.dev() == dev,
            _ => false,
        };
        if !same_fs {
            let stored = self.put_file(src)?;
            fs::remove_file(src).ctx("cannot remove", src)?;
            return Ok(stored);
        }
        // Hashed through the handle that becomes the blob: one open, no second stat.
        let (d, n) = hash_opened(&mut file, src)?;
        let path = tempfile::TempPath::try_from_path(src).ctx("cannot take over", src)?;
        let tmp = NamedTempFile::from_parts(file, path);
        self.commit(tmp, d, n)?;
        Ok((d, n))
    }

    /// The device of `tmp/` (looked up once).
    fn tmp_dev(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        *self
            .tmp_dev
            .get_or_init(|| fs::metadata(&self.tmp).ok().map(|m| m.dev()))
    }

    /// Stores every regular file under `src` and the directory's manifest. Returns the
    /// manifest's digest (the directory digest) and the total size of the files.
    /// Symbolic links, sockets, FIFOs and devices are errors naming them; empty directories
    /// are not recorded.
    pub fn put_dir(&self, src: &Path) -> Result<(Digest, u64)> {
        let files = walk_files(src)?;
        let entries = files
            .par_iter()
            .map(|f| {
                let (digest, size) = self.put_file(&f.path)?;
                Ok(ManifestEntry {
                    path: f.rel.clone(),
                    mode: f.mode,
                    digest,
                    size,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let manifest = Manifest { entries };
        manifest.validate()?;
        let d = self.put_bytes(manifest.to_text().as_bytes())?;
        debug!(dir = %src.display(), digest = %d.short(), files = manifest.entries.len(), "stored directory");
        Ok((d, manifest.total_size()))
    }

    /// Reads and parses the manifest blob `d` (checking that its bytes hash to `d`).
    pub fn read_manifest(&self, d: &Digest) -> Result<Manifest> {
        let path = self.blob_path(d);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CacheError::BlobMissing { digest: *d, path });
            }
            Err(e) => return Err(CacheError::io("cannot read", &path, e)),
        };
        let actual = Digest::of_bytes(&bytes);
        if actual != *d {
            return Err(CacheError::BlobCorrupt {
                digest: *d,
                actual,
                path,
            });
        }
        let text = String::from_utf8(bytes).map_err(|_| CacheError::BadManifest {
            digest: Some(*d),
            line: 0,
            reason: "not UTF-8 text".into(),
        })?;
        Manifest::parse_for(&text, Some(*d))
    }

    /// Writes a writable (0o644) copy of blob `d` at `dest`, replacing a file there. The
    /// copy is hashed on the way and a corrupt blob is an error; `dest` appears whole or not
    /// at all. The copy is made under a fixed name beside `dest` (`.NAME.expflow-part`), so a
    /// copy cut short by a kill is removed by the next materialisation of `dest`.
    pub fn materialize_file(&self, d: &Digest, dest: &Path) -> Result<()> {
        let parent = parent_dir(dest);
        fs::create_dir_all(parent).ctx("cannot create directory", parent)?;
        let part = staging_name(dest, "part");
        remove_any(&part)?;
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&part)
            .ctx("cannot create", &part)?;
        let copied = self.copy_verified_into(d, &mut out, &part).and_then(|()| {
            out.set_permissions(Permissions::from_mode(0o644))
                .ctx("cannot set permissions of", &part)
        });
        drop(out);
        if let Err(e) = copied.and_then(|()| fs::rename(&part, dest).ctx("cannot write", dest)) {
            let _ = fs::remove_file(&part);
            return Err(e);
        }
        Ok(())
    }

    /// Recreates the directory whose manifest is `d` at `dest`, with the recorded modes,
    /// replacing whatever is at `dest`. The tree is built beside `dest` and renamed into
    /// place, so a failure leaves the old `dest` untouched. The staging tree and the moved
    /// aside old copy have fixed names (`.NAME.expflow-part`, `.NAME.expflow-old`): what a
    /// kill leaves of them is removed by the next materialisation of `dest`.
    pub fn materialize_dir(&self, d: &Digest, dest: &Path) -> Result<()> {
        let manifest = self.read_manifest(d)?;
        let parent = parent_dir(dest);
        fs::create_dir_all(parent).ctx("cannot create directory", parent)?;
        let staged = staging_name(dest, "part");
        let old = staging_name(dest, "old");
        remove_any(&staged)?;
        remove_any(&old)?;
        fs::create_dir(&staged).ctx("cannot create directory", &staged)?;
        let built = self.build_tree(&manifest, &staged);
        if let Err(e) = built {
            let _ = fs::remove_dir_all(&staged);
            return Err(e);
        }
        let moved_aside = match fs::symlink_metadata(dest) {
            Ok(_) => {
                fs::rename(dest, &old).ctx("cannot move aside", dest)?;
                true
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(CacheError::io("cannot stat", dest, e)),
        };
        if let Err(e) = fs::rename(&staged, dest) {
            let _ = fs::remove_dir_all(&staged);
            if moved_aside {
                let _ = fs::rename(&old, dest);
            }
            return Err(CacheError::io("cannot write", dest, e));
        }
        if moved_aside && let Err(e) = remove_any(&old) {
            warn!(path = %old.display(), error = %e, "cannot remove the previous copy; remove it by hand");
        }
        Ok(())
    }

    /// Writes the files of `manifest` under the empty directory `root`.
    fn build_tree(&self, manifest: &Manifest, root: &Path) -> Result<()> {
        for e in &manifest.entries {
            let path = root.join(&e.path);
            let dir = parent_dir(&path);
            fs::create_dir_all(dir).ctx("cannot create directory", dir)?;
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .ctx("cannot create", &path)?;
            self.copy_verified_into(&e.digest, &mut out, &path)?;
            out.set_permissions(Permissions::from_mode(e.mode))
                .ctx("cannot set permissions of", &path)?;
        }
        fs::set_permissions(root, Permissions::from_mode(0o755))
            .ctx("cannot set permissions of", root)
    }

    /// Makes blob `d` available at `dest` (which must not exist): a hard link when the file
    /// system allows it, else a read-only copy. The link shares the blob's inode: callers
    /// must treat `dest` as read-only (root ignores the 0o444 mode), and `expflow verify`
    /// catches a blob changed through such a link.
    pub fn link_or_copy_file(&self, d: &Digest, dest: &Path) -> Result<()> {
        let src = self.blob_path(d);
        if !self.contains(d) {
            return Err(CacheError::BlobMissing {
                digest: *d,
                path: src,
            });
        }
        let parent = parent_dir(dest);
        fs::create_dir_all(parent).ctx("cannot create directory", parent)?;
        match fs::hard_link(&src, dest) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(CacheError::io("cannot link to", dest, e));
            }
            Err(e) => debug!(dest = %dest.display(), error = %e, "hard link failed; copying"),
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".expflow-")
            .tempfile_in(parent)
            .ctx("cannot create a temp file in", parent)?;
        self.copy_verified(d, &mut tmp)?;
        tmp.as_file()
            .set_permissions(Permissions::from_mode(BLOB_MODE))
            .ctx("cannot set permissions of", tmp.path())?;
        tmp.persist_noclobber(dest)
            .map_err(|e| CacheError::io("cannot write", dest, e.error))?;
        Ok(())
    }

    /// Rehashes blob `d` in full (remembering the stat of an intact blob in the stat cache,
    /// if this store has one).
    pub fn check(&self, d: &Digest) -> Result<BlobState> {
        let path = self.blob_path(d);
        let before = StatKey::of(&path).ok();
        match hash_file(&path) {
            Ok((actual, _)) if actual == *d => {
                if let Some(before) = before {
                    self.remember(&before, d);
                }
                Ok(BlobState::Ok)
            }
            Ok((actual, _)) => Ok(BlobState::Corrupt { actual }),
            Err(CacheError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(BlobState::Missing)
            }
            Err(CacheError::NotAFile { .. }) => Ok(BlobState::Missing),
            Err(e) => Err(e),
        }
    }

    /// Removes blob `d` (no error if it is already gone).
    pub fn remove(&self, d: &Digest) -> Result<()> {
        let path = self.blob_path(d);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                // Someone made the shard directory or the blob read-only; make them writable
                // and try once more.
                let shard = parent_dir(&path);
                fs::set_permissions(shard, Permissions::from_mode(0o755))
                    .ctx("cannot make writable", shard)?;
                let _ = fs::set_permissions(&path, Permissions::from_mode(0o644));
                fs::remove_file(&path).ctx("cannot remove", &path)
            }
            Err(e) => Err(CacheError::io("cannot remove", &path, e)),
        }
    }

    /// Every blob in the store with its size. Skips `tmp/` and any name that is not a blob.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>> {
        let mut out = Vec::new();
        for shard in fs::read_dir(&self.root).ctx("cannot list", &self.root)? {
            let shard = shard.ctx("cannot list", &self.root)?;
            let name = shard.file_name();
            let Some(prefix) = name.to_str().filter(|n| is_hex(n, 2)) else {
                continue;
            };
            let shard_path = shard.path();
            if !shard.file_type().ctx("cannot stat", &shard_path)?.is_dir() {
                continue;
            }
            for blob in fs::read_dir(&shard_path).ctx("cannot list", &shard_path)? {
                let blob = blob.ctx("cannot list", &shard_path)?;
                let name = blob.file_name();
                let Some(hex) = name
                    .to_str()
                    .filter(|n| is_hex(n, 64) && n.starts_with(prefix))
                else {
                    debug!(path = %blob.path().display(), "not a blob name; skipped");
                    continue;
                };
                let meta = blob.metadata().ctx("cannot stat", blob.path())?;
                if !meta.is_file() {
                    continue;
                }
                out.push((Digest::from_hex(hex)?, meta.len()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes everything in `tmp/` and returns how many entries went. Call it only while no
    /// put is in flight (the engine does so when it opens the workspace, holding its lock).
    pub fn clean_tmp(&self) -> Result<usize> {
        let mut n = 0;
        for entry in fs::read_dir(&self.tmp).ctx("cannot list", &self.tmp)? {
            let entry = entry.ctx("cannot list", &self.tmp)?;
            let path = entry.path();
            let is_dir = entry.file_type().ctx("cannot stat", &path)?.is_dir();
            let removed = if is_dir {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match removed {
                Ok(()) => n += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(CacheError::io("cannot remove", &path, e)),
            }
        }
        if n > 0 {
            debug!(count = n, dir = %self.tmp.display(), "removed leftover temp files");
        }
        Ok(n)
    }

    fn new_temp(&self) -> Result<NamedTempFile> {
        tempfile::Builder::new()
            .prefix("put-")
            .tempfile_in(&self.tmp)
            .ctx("cannot create a temp file in", &self.tmp)
    }

    /// Whether blob `d` exists and is intact: the stat cache vouches for it, or its bytes
    /// are re-hashed (and, when they match, its stat is remembered). A blob that is absent,
    /// not a regular file, changed while it was read, or hashes to another digest is not.
    fn existing_intact(&self, d: &Digest) -> Result<bool> {
        let path = self.blob_path(d);
        let stat = match StatKey::of(&path) {
            Ok(stat) => stat,
            Err(CacheError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        if let Some(store) = &self.stat
            && store.stat_get(&stat)? == Some(*d)
        {
            return Ok(true);
        }
        match hash_file(&path) {
            Ok((actual, _)) if actual == *d => {
                self.remember(&stat, d);
                Ok(true)
            }
            Ok((actual, _)) => {
                warn!(blob = %path.display(), actual = %actual, "a stored blob is damaged (its bytes hash to another digest)");
                Ok(false)
            }
            Err(CacheError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(false)
            }
            Err(e @ (CacheError::NotAFile { .. } | CacheError::ChangedWhileRead { .. })) => {
                warn!(blob = %path.display(), error = %e, "a stored blob is damaged");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Remembers (best effort) that the file `stat` describes holds blob `d`.
    fn remember(&self, stat: &StatKey, d: &Digest) {
        if let Some(store) = &self.stat
            && let Err(e) = store.stat_put(stat, d)
        {
            debug!(path = %stat.path, error = %e, "cannot remember a blob's stat");
        }
    }

    /// Remembers the stat of the blob just written at `path`.
    fn stamp(&self, path: &Path, d: &Digest) {
        if self.stat.is_some()
            && let Ok(stat) = StatKey::of(path)
        {
            self.remember(&stat, d);
        }
    }

    /// Makes `tmp` (holding `len` bytes that hash to `d`) the blob `d`. A blob already
    /// there is kept only if it is intact ([`Cas::existing_intact`]); a damaged one is
    /// replaced by `tmp` in one rename.
    fn commit(&self, tmp: NamedTempFile, d: Digest, len: u64) -> Result<()> {
        let dest = self.blob_path(&d);
        let file = tmp.as_file();
        file.set_permissions(Permissions::from_mode(BLOB_MODE))
            .ctx("cannot set permissions of", tmp.path())?;
        file.sync_all().ctx("cannot fsync", tmp.path())?;
        let shard = parent_dir(&dest);
        // The shard directory usually exists: rename first, and make it only when missing.
        // A concurrent put may make it between the failed rename and the retry, so
        // `AlreadyExists` is fine and the retry happens either way.
        let tmp = match tmp.persist_noclobber(&dest) {
            Err(e) if e.error.kind() == io::ErrorKind::NotFound => {
                match fs::create_dir(shard) {
                    Ok(()) => sync_dir(&self.root)?,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(CacheError::io("cannot create directory", shard, e)),
                }
                e.file.persist_noclobber(&dest)
            }
            other => other,
        };
        match tmp {
            Ok(_) => {}
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
                if self.existing_intact(&d)? {
                    // Same content already stored (perhaps by a concurrent put); the temp
                    // file is removed when `e` drops.
                    return Ok(());
                }
                warn!(blob = %dest.display(), bytes = len, "replacing a damaged blob with the bytes just produced");
                e.file
                    .persist(&dest)
                    .map_err(|e| CacheError::io("cannot write", &dest, e.error))?;
            }
            Err(e) => return Err(CacheError::io("cannot write", &dest, e.error)),
        }
        sync_dir(shard)?;
        self.stamp(&dest, &d);
        Ok(())
    }

    /// Copies blob `d` into the temp file `tmp`, checking its digest.
    fn copy_verified(&self, d: &Digest, tmp: &mut NamedTempFile) -> Result<()> {
        let path = tmp.path().to_path_buf();
        self.copy_verified_into(d, tmp.as_file_mut(), &path)
    }

    fn copy_verified_into(&self, d: &Digest, out: &mut File, out_path: &Path) -> Result<()> {
        let src = self.blob_path(d);
        let mut file = match File::open(&src) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CacheError::BlobMissing {
                    digest: *d,
                    path: src,
                });
            }
            Err(e) => return Err(CacheError::io("cannot open", &src, e)),
        };
        let len = file.metadata().ctx("cannot stat", &src)?.len();
        let (actual, _) = if len >= PARALLEL_HASH_THRESHOLD {
            io::copy(&mut file, out).ctx("cannot copy", &src)?;
            let reread = File::open(out_path).ctx("cannot open", out_path)?;
            hash_open_file(reread, out_path)?
        } else {
            copy_hashing(&mut file, &src, out, out_path)?
        };
        if actual != *d {
            return Err(CacheError::BlobCorrupt {
                digest: *d,
                actual,
                path: src,
            });
        }
        Ok(())
    }
}

/// Copies the open regular file `src` (of `len` bytes at open time) into `tmp` and returns
/// the digest and size of what was written.
fn copy_file_hashing(
    src: &mut File,
    src_path: &Path,
    len: u64,
    tmp: &mut NamedTempFile,
) -> Result<(Digest, u64)> {
    let tmp_path = tmp.path().to_path_buf();
    if len >= PARALLEL_HASH_THRESHOLD {
        // Copy (copy_file_range: in-kernel, reflinks where supported), then hash the copy
        // on all cores: the name is the hash of exactly the bytes stored.
        let n = io::copy(src, tmp.as_file_mut()).ctx("cannot copy", src_path)?;
        let reread = tmp.reopen().ctx("cannot open", &tmp_path)?;
        let (d, hashed) = hash_open_file(reread, &tmp_path)?;
        debug_assert_eq!(hashed, n);
        Ok((d, hashed))
    } else {
        copy_hashing(src, src_path, tmp.as_file_mut(), &tmp_path)
    }
}

/// One pass: read from `r`, hash, write to `out`.
fn copy_hashing(
    r: &mut impl Read,
    r_path: &Path,
    out: &mut File,
    out_path: &Path,
) -> Result<(Digest, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; IO_BUF];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CacheError::io("cannot read", r_path, e)),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).ctx("cannot write", out_path)?;
    }
    Ok((hasher.finalize().into(), hasher.count()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .ctx("cannot fsync directory", dir)
}

/// `.NAME.expflow-SUFFIX` beside `dest` (NAME: the file name of `dest`).
fn staging_name(dest: &Path, suffix: &str) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.expflow-{suffix}"))
}

/// Removes the file or directory tree at `p`; nothing there is fine.
fn remove_any(p: &Path) -> Result<()> {
    let removed = match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CacheError::io("cannot stat", p, e)),
    };
    match removed {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(CacheError::io("cannot remove", p, e)),
        _ => Ok(()),
    }
}

fn parent_dir(p: &Path) -> &Path {
    match p.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
