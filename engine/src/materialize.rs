//! `outputs:` on disk: expflow writes a destination only where nothing is, or where what is
//! there is still exactly what expflow wrote.
//!
//! `.expflow/materialized.json` records every destination expflow wrote (path and digest;
//! for a directory, its tree digest). Before any node executes, each destination that
//! exists must be named there and still hash to the recorded digest; otherwise the run
//! stops, naming the path (`--force-outputs` overrides). A replacement is built beside the
//! destination, fsynced, and swapped in with one rename (`RENAME_EXCHANGE` on Linux), so the
//! old content stays in place until the new one is complete.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use expflow_cache::{Digest, OutputRef, digest_path_cached};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::compile::Pipeline;
use crate::error::{EngineError, Result};
use crate::workspace::Workspace;

/// The manifest's file name under the workspace.
pub const MANIFEST: &str = "materialized.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    /// Destination (relative to the workspace's parent directory when under it, else
    /// absolute) → what expflow wrote there.
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    digest: Digest,
    dir: bool,
    /// While a replacement is under way: the content being replaced, which is expflow's
    /// too. A crash between the swap and the manifest's final write leaves either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<Digest>,
    run_id: String,
}

/// What is at a destination now.
enum OnDisk {
    Absent,
    /// What expflow wrote, with this digest.
    Ours(Digest),
    /// Something expflow must not replace, and why.
    Foreign(String),
}

/// Checks, before anything executes, that every destination the selected nodes will write
/// is free or still expflow's. With `force`, only destinations inside the workspace are
/// refused.
pub fn check_destinations(
    ws: &Workspace,
    p: &Pipeline,
    selected: &[usize],
    force: bool,
) -> Result<()> {
    let manifest = read_manifest(ws)?;
    let mut wanted = vec![false; p.nodes.len()];
    for &i in selected {
        wanted[i] = true;
    }
    let mut conflicts = Vec::new();
    for (dest, node, _) in &p.outputs {
        if !wanted[*node] {
            continue;
        }
        let key = manifest_key(ws, p, dest)?;
        if force {
            continue;
        }
        if let OnDisk::Foreign(why) = on_disk(ws, &manifest, dest, &key)? {
            conflicts.push(format!("  {}: {why}", shown(p, dest)));
        }
    }
    if conflicts.is_empty() {
        return Ok(());
    }
    Err(EngineError::Usage(format!(
        "outputs: expflow replaces only what it wrote itself; nothing was run:\n{}\nhint: move these paths away (or rename the destinations under `outputs:`), or run again with --force-outputs to replace them",
        conflicts.join("\n")
    )))
}

/// Writes the artifacts named under `outputs:` to their destinations (tables as Parquet,
/// directories as trees), each replaced atomically, and records them in the manifest.
pub fn materialize(
    ws: &Workspace,
    p: &Pipeline,
    outputs: &[Option<BTreeMap<String, OutputRef>>],
    run_id: &str,
    force: bool,
) -> Result<()> {
    let on_file = read_stored(ws)?;
    // What the file holds now, to leave it alone when a run changes nothing (a re-run).
    let stored = on_file.as_ref().map(|m| m.entries.clone());
    let mut manifest = on_file.unwrap_or_default();
    let mut todo: Vec<(&Path, String, &OutputRef, Option<Digest>)> = Vec::new();
    let mut conflicts = Vec::new();
    for (dest, node, port) in &p.outputs {
        let Some(out) = outputs[*node].as_ref().and_then(|o| o.get(port)) else {
            continue;
        };
        let key = manifest_key(ws, p, dest)?;
        // Checked again: a destination may have changed while the nodes ran.
        let previous = match on_disk(ws, &manifest, dest, &key)? {
            OnDisk::Absent => None,
            OnDisk::Ours(d) if d == out.digest => {
                debug!(dest = %dest.display(), "output unchanged");
                if let Some(e) = manifest.entries.get_mut(&key) {
                    e.digest = d;
                    e.previous = None;
                }
                continue;
            }
            OnDisk::Ours(d) => Some(d),
            OnDisk::Foreign(_) if force => None,
            OnDisk::Foreign(why) => {
                conflicts.push(format!("  {}: {why}", shown(p, dest)));
                continue;
            }
        };
        todo.push((dest, key, out, previous));
    }
    if !conflicts.is_empty() {
        return Err(EngineError::Usage(format!(
            "outputs: destinations changed during the run; the results are stored, but nothing was written:\n{}\nhint: move these paths away and run again (nothing re-executes), or run again with --force-outputs",
            conflicts.join("\n")
        )));
    }
    // Build every replacement beside its destination before touching any of them.
    let mut staged: Vec<PathBuf> = Vec::with_capacity(todo.len());
    for (dest, _, out, _) in &todo {
        match stage(ws, dest, out) {
            Ok(s) => staged.push(s),
            Err(e) => {
                for s in &staged {
                    remove_tree(s);
                }
                return Err(e);
            }
        }
    }
    for (_, key, out, previous) in &todo {
        manifest.entries.insert(
            key.clone(),
            Entry {
                digest: out.digest,
                dir: out.dir,
                previous: *previous,
                run_id: run_id.to_string(),
            },
        );
    }
    if !todo.is_empty() {
        write_manifest(ws, &manifest)?;
    }
    let mut result = Ok(());
    for ((dest, key, _, previous), s) in todo.iter().zip(&staged) {
        if result.is_ok() {
            result = swap_in(s, dest).map_err(|e| EngineError::io(*dest, e));
            if result.is_ok() {
                continue;
            }
        }
        // Not swapped: the destination holds what it held before.
        remove_tree(s);
        match previous {
            Some(d) => {
                if let Some(e) = manifest.entries.get_mut(key) {
                    e.digest = *d;
                }
            }
            None => {
                manifest.entries.remove(key);
            }
        }
    }
    for e in manifest.entries.values_mut() {
        e.previous = None;
    }
    if stored.as_ref() != Some(&manifest.entries) {
        write_manifest(ws, &manifest)?;
    }
    result
}

/// What is at `dest` for the manifest entry `key`.
fn on_disk(ws: &Workspace, manifest: &Manifest, dest: &Path, key: &str) -> Result<OnDisk> {
    let meta = match fs::symlink_metadata(dest) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(OnDisk::Absent),
        Err(e) => return Err(EngineError::io(dest, e)),
    };
    if meta.file_type().is_symlink() {
        return Ok(OnDisk::Foreign(
            "is a symbolic link, which expflow never writes".into(),
        ));
    }
    let Some(entry) = manifest.entries.get(key) else {
        return Ok(OnDisk::Foreign(
            "exists, and expflow did not write it".into(),
        ));
    };
    let digest = match digest_path_cached(dest, ws.store.as_ref()) {
        Ok((d, _)) => d,
        Err(e) => {
            return Ok(OnDisk::Foreign(format!(
                "changed since expflow wrote it ({e})"
            )));
        }
    };
    if digest == entry.digest || Some(digest) == entry.previous {
        Ok(OnDisk::Ours(digest))
    } else {
        Ok(OnDisk::Foreign(format!(
            "changed since expflow wrote it (run {})",
            entry.run_id
        )))
    }
}

/// The manifest key of `dest`: relative to the workspace's parent when under it (a project
/// moved with its workspace keeps its outputs), else absolute. Refuses a destination inside
/// the workspace (possible with `--workspace`).
fn manifest_key(ws: &Workspace, p: &Pipeline, dest: &Path) -> Result<String> {
    let dir = fs::canonicalize(&p.dir).map_err(|e| EngineError::io(&p.dir, e))?;
    let rel = dest.strip_prefix(&p.dir).unwrap_or(dest);
    let real = dir.join(rel);
    if real.starts_with(ws.root()) {
        return Err(EngineError::Usage(format!(
            "output `{}` is inside the workspace {}, which only expflow writes; choose another destination under `outputs:`",
            shown(p, dest),
            ws.root().display()
        )));
    }
    let base = ws.root().parent().unwrap_or(ws.root());
    Ok(match real.strip_prefix(base) {
        Ok(r) => r.to_string_lossy().into_owned(),
        Err(_) => real.to_string_lossy().into_owned(),
    })
}

/// `dest` as the user wrote it: relative to the pipeline's directory.
fn shown(p: &Pipeline, dest: &Path) -> String {
    dest.strip_prefix(&p.dir)
        .unwrap_or(dest)
        .display()
        .to_string()
}

fn read_manifest(ws: &Workspace) -> Result<Manifest> {
    Ok(read_stored(ws)?.unwrap_or_default())
}

/// The manifest as its file holds it; `None` when there is no file yet.
fn read_stored(ws: &Workspace) -> Result<Option<Manifest>> {
    let path = ws.root().join(MANIFEST);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EngineError::io(&path, e)),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        EngineError::Other(format!(
            "{}: {e}; this file records which outputs expflow wrote: restore it, or remove it and run with --force-outputs",
            path.display()
        ))
    })
}

/// Writes the manifest durably: a temp file, fsynced, renamed over the old one, and the
/// workspace directory fsynced.
fn write_manifest(ws: &Workspace, m: &Manifest) -> Result<()> {
    let path = ws.root().join(MANIFEST);
    let tmp = ws.root().join(format!("{MANIFEST}.tmp"));
    let text = serde_json::to_vec_pretty(&Manifest {
        version: 1,
        entries: m.entries.clone(),
    })
    .map_err(|e| EngineError::Other(format!("cannot encode {}: {e}", path.display())))?;
    let mut f = File::create(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
    f.write_all(&text).map_err(|e| EngineError::io(&tmp, e))?;
    f.sync_all().map_err(|e| EngineError::io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| EngineError::io(&path, e))?;
    sync_dir(ws.root()).map_err(|e| EngineError::io(ws.root(), e))
}

/// Builds `out` beside `dest` under a fresh hidden name, every file fsynced; returns where.
fn stage(ws: &Workspace, dest: &Path, out: &OutputRef) -> Result<PathBuf> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| EngineError::io(parent, e))?;
    clear_stale(dest);
    let mut n = 0u32;
    loop {
        let path = sibling(dest, "new", n);
        let made = if out.dir {
            fs::create_dir(&path)
        } else {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map(drop)
        };
        match made {
            Ok(()) => {
                let built = if out.dir {
                    build_dir(ws, &out.digest, &path)
                } else {
                    write_blob(ws, &out.digest, &path, 0o644)
                };
                if let Err(e) = built {
                    remove_tree(&path);
                    return Err(e);
                }
                return Ok(path);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(EngineError::io(&path, e)),
        }
    }
}

/// Removes what a killed expflow left beside `dest`: staged copies (`new`) of a process that
/// is gone, and moved-aside copies (`old`) once `dest` is in place again.
fn clear_stale(dest: &Path) {
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
        return;
    };
    let prefix = format!(".{}.expflow-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    }) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(&prefix) else {
            continue;
        };
        let mut parts = rest.split('-');
        let (what, pid) = (
            parts.next(),
            parts.next().and_then(|p| p.parse::<u32>().ok()),
        );
        let Some(pid) = pid else { continue };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        let stale = match what {
            Some("new") => true,
            Some("old") => fs::symlink_metadata(dest).is_ok(),
            _ => false,
        };
        if stale {
            debug!(path = %e.path().display(), "removing what an interrupted run left");
            remove_tree(&e.path());
        }
    }
}

/// Whether process `pid` exists (signal 0 probes without sending anything).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A hidden name beside `dest`: `.NAME.expflow-WHAT-PID-N`.
fn sibling(dest: &Path, what: &str, n: u32) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.expflow-{what}-{}-{n}", std::process::id()))
}

/// Recreates the directory whose manifest is `digest` in the empty directory `root`.
fn build_dir(ws: &Workspace, digest: &Digest, root: &Path) -> Result<()> {
    let manifest = ws.cas.read_manifest(digest)?;
    let mut dirs = vec![root.to_path_buf()];
    for e in &manifest.entries {
        let path = root.join(&e.path);
        if let Some(dir) = path.parent()
            && !dirs.iter().any(|d| d == dir)
        {
            fs::create_dir_all(dir).map_err(|err| EngineError::io(dir, err))?;
            let mut d = dir.to_path_buf();
            while d != root && !dirs.contains(&d) {
                dirs.push(d.clone());
                if !d.pop() {
                    break;
                }
            }
        }
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|err| EngineError::io(&path, err))?;
        write_blob(ws, &e.digest, &path, e.mode)?;
    }
    fs::set_permissions(root, Permissions::from_mode(0o755))
        .map_err(|e| EngineError::io(root, e))?;
    // Deepest first, so that each directory's entries are durable before its parent's.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in &dirs {
        sync_dir(d).map_err(|e| EngineError::io(d, e))?;
    }
    Ok(())
}

/// Copies blob `digest` into the existing empty file `path` with `mode`, checking the bytes
/// against the digest on the way, and fsyncs it.
fn write_blob(ws: &Workspace, digest: &Digest, path: &Path, mode: u32) -> Result<()> {
    let src = ws.cas.blob_path(digest);
    let mut input = File::open(&src).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            EngineError::Other(format!(
                "the stored output {} is missing from the workspace ({}); run `expflow verify`",
                digest.short(),
                src.display()
            ))
        } else {
            EngineError::io(&src, e)
        }
    })?;
    let mut out = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| EngineError::io(path, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(EngineError::io(&src, e)),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| EngineError::io(path, e))?;
    }
    let actual = Digest::from(hasher.finalize());
    if actual != *digest {
        return Err(EngineError::Other(format!(
            "the stored output {} is corrupt (its bytes hash to {}); run `expflow verify`",
            digest.short(),
            actual.short()
        )));
    }
    out.set_permissions(Permissions::from_mode(mode))
        .map_err(|e| EngineError::io(path, e))?;
    out.sync_all().map_err(|e| EngineError::io(path, e))
}

/// Puts the complete `staged` tree or file at `dest` in one step, then removes what was
/// there before and fsyncs the directory.
fn swap_in(staged: &Path, dest: &Path) -> io::Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    let exists = match fs::symlink_metadata(dest) {
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    if !exists {
        match rename2(staged, dest, Rename2::NoReplace) {
            Ok(()) => {}
            Err(e) if unsupported(&e) => fs::rename(staged, dest)?,
            Err(e) => return Err(e),
        }
        return sync_dir(parent);
    }
    match rename2(staged, dest, Rename2::Exchange) {
        Ok(()) => {
            // `staged` now holds the old content.
            sync_dir(parent)?;
            remove_tree(staged);
        }
        Err(e) if unsupported(&e) => swap_by_renames(staged, dest)?,
        Err(e) => return Err(e),
    }
    sync_dir(parent)
}

/// [`swap_in`] where `RENAME_EXCHANGE` is not available: one rename over a file; a
/// directory is renamed aside first (and back if the second rename fails).
fn swap_by_renames(staged: &Path, dest: &Path) -> io::Result<()> {
    let both_files =
        !fs::symlink_metadata(staged)?.is_dir() && !fs::symlink_metadata(dest)?.is_dir();
    if both_files {
        return fs::rename(staged, dest);
    }
    let mut n = 0;
    let aside = loop {
        let a = sibling(dest, "old", n);
        if fs::symlink_metadata(&a).is_err() {
            break a;
        }
        n += 1;
    };
    fs::rename(dest, &aside)?;
    if let Err(e) = fs::rename(staged, dest) {
        let _ = fs::rename(&aside, dest);
        return Err(e);
    }
    sync_dir(dest.parent().unwrap_or(Path::new(".")))?;
    remove_tree(&aside);
    Ok(())
}

#[derive(Clone, Copy)]
enum Rename2 {
    NoReplace,
    Exchange,
}

/// `renameat2` with `RENAME_NOREPLACE` or `RENAME_EXCHANGE`.
#[cfg(target_os = "linux")]
fn rename2(from: &Path, to: &Path, how: Rename2) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
    };
    let (from, to) = (c(from)?, c(to)?);
    let flags = match how {
        Rename2::NoReplace => libc::RENAME_NOREPLACE,
        Rename2::Exchange => libc::RENAME_EXCHANGE,
    };
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call;
    // renameat2 only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn rename2(_from: &Path, _to: &Path, _how: Rename2) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// The kernel or file system does not offer `renameat2`'s flags.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes a file or tree that expflow built or swapped out (no error if it is gone).
fn remove_tree(path: &Path) {
    let removed = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => return,
    };
    if let Err(e) = removed {
        warn!(path = %path.display(), error = %e, "cannot remove; remove it by hand");
    }
}

#[cfg(test)]
mod tests;
