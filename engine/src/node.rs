//! The blocking work of one node: checking a cached record, ingesting external inputs,
//! executing an operator and committing its outputs.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use expflow_cache::{
    Cas, Digest, Hit, OutputRef, Record, StatKey, Store, digest_path_cached, hash_file,
};

use crate::compile::CNode;
use crate::context::{CancelToken, Context, Input, MemoStats, Output, ProgressFn};
use crate::error::{EngineError, Result};
use crate::events::now_ms;
use crate::key::KeyMaterial;
use crate::operator::PortType;

/// Handles a node execution needs.
#[derive(Clone)]
pub struct NodeEnv {
    pub cas: Cas,
    pub store: Arc<dyn Store>,
    pub pipeline: String,
    pub run_id: String,
    pub run_dir: PathBuf,
    pub scratch_dir: PathBuf,
    /// Where nodes keep resumable state between attempts and runs, one directory per key
    /// (see [`Context::resume_dir`]).
    pub resume_root: PathBuf,
    pub cancel: CancelToken,
    /// The run's declared secrets, read from the environment when it started.
    pub secrets: crate::secrets::Secrets,
    /// Whether nodes read and write the per-item memo store (off for `audit`, which
    /// computes every item again and leaves the memo as it was).
    pub memo_store: bool,
}

/// Whether a stored blob is present and has the bytes its name says. Uses the stat cache
/// (a blob whose stat is unchanged since it was checked is trusted); otherwise rehashes.
/// A corrupt blob is removed so that re-running the node can store it again.
pub fn blob_ok(cas: &Cas, store: &dyn Store, d: &Digest) -> Result<bool> {
    let path = cas.blob_path(d);
    let Ok(stat) = StatKey::of(&path) else {
        return Ok(false);
    };
    if store.stat_get(&stat)? == Some(*d) {
        return Ok(true);
    }
    let (actual, _) = hash_file(&path)?;
    if actual == *d {
        store.stat_put(&stat, d)?;
        Ok(true)
    } else {
        tracing::warn!(
            "blob {} is corrupt (its bytes hash to {}); removing it",
            d,
            actual
        );
        cas.remove(d)?;
        Ok(false)
    }
}

/// Whether a stored artifact is intact: the blob, and for a directory its manifest's files.
pub(crate) fn artifact_ok(
    cas: &Cas,
    store: &dyn Store,
    digest: &Digest,
    dir: bool,
) -> Result<bool> {
    if !blob_ok(cas, store, digest)? {
        return Ok(false);
    }
    if dir {
        let Ok(m) = cas.read_manifest(digest) else {
            return Ok(false);
        };
        for e in &m.entries {
            if !blob_ok(cas, store, &e.digest)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Whether every output of a record is intact.
pub fn record_ok(cas: &Cas, store: &dyn Store, rec: &Record) -> Result<bool> {
    outputs_ok(cas, store, &rec.outputs)
}

/// Whether every output of a cache hit is intact. A file output whose blob's stat equals the
/// one kept in the hit entry is trusted without another lookup (the stat-cache rule, with the
/// stat kept beside the outputs); others are checked as [`artifact_ok`] does, and the hit
/// entry is stored again with their stats.
pub fn hit_ok(cas: &Cas, store: &dyn Store, key: &Digest, hit: &mut Hit) -> Result<bool> {
    let mut changed = false;
    for (port, out) in &hit.outputs {
        if out.dir {
            if !artifact_ok(cas, store, &out.digest, true)? {
                return Ok(false);
            }
            continue;
        }
        let Ok(stat) = cas.stat_blob(&out.digest) else {
            return Ok(false);
        };
        if hit.stats.get(port) == Some(&stat) {
            continue;
        }
        if !blob_ok(cas, store, &out.digest)? {
            return Ok(false);
        }
        hit.stats.insert(port.clone(), stat);
        changed = true;
    }
    if changed {
        store.put_hit(key, hit)?;
    }
    Ok(true)
}

/// The hit on `key` when there is one and its blobs are intact ([`hit_ok`]).
pub fn intact_hit(cas: &Cas, store: &dyn Store, key: &Digest) -> Result<Option<Hit>> {
    match store.get_hit(key)? {
        Some(mut hit) => Ok(hit_ok(cas, store, key, &mut hit)?.then_some(hit)),
        None => Ok(None),
    }
}

/// Whether every one of a record's outputs is intact.
pub fn outputs_ok(
    cas: &Cas,
    store: &dyn Store,
    outputs: &BTreeMap<String, OutputRef>,
) -> Result<bool> {
    for out in outputs.values() {
        if !artifact_ok(cas, store, &out.digest, out.dir)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Stores an external input (file or directory) in the CAS and returns its digest. Hashing
/// goes through the stat cache (unchanged files are not re-read), and an input whose bytes
/// are already stored intact is not copied again. With `keep` false only the digest is
/// computed (for `plan`), nothing is stored.
pub fn ingest_input(
    cas: &Cas,
    store: &dyn Store,
    path: &Path,
    keep: bool,
) -> Result<(Digest, PortType)> {
    let dir = std::fs::metadata(path)
        .map_err(|e| EngineError::io(path, e))?
        .is_dir();
    let ty = if dir { PortType::Dir } else { PortType::File };
    let (digest, _) = digest_path_cached(path, store)?;
    if !keep || artifact_ok(cas, store, &digest, dir)? {
        return Ok((digest, ty));
    }
    let (stored, _) = if dir {
        cas.put_dir(path)?
    } else {
        cas.put_file(path)?
    };
    if stored != digest {
        // It changed between hashing and copying: trust what was stored.
        tracing::warn!(
            "{} changed while it was read; using its current content",
            path.display()
        );
    }
    Ok((stored, ty))
}

/// The file name an output is written under. Tables get `.parquet` and metrics `.json`, so
/// tools that look at extensions behave.
pub fn output_file_name(port: &str, ty: PortType) -> String {
    match ty {
        PortType::Table => format!("{port}.parquet"),
        PortType::Metrics => format!("{port}.json"),
        _ => port.to_string(),
    }
}

/// A file-system-safe form of a node name.
pub fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-=.,[]".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What a successful execution produced.
pub struct Executed {
    pub outputs: BTreeMap<String, OutputRef>,
    pub duration_ms: u64,
    pub memo: (u64, u64),
    /// Figures the operator noted about this execution ([`Context::note`]).
    pub notes: serde_json::Map<String, serde_json::Value>,
    /// What the record keeps besides the outputs.
    pub facts: Facts,
}

/// What a node's record keeps besides its outputs, as the execution found it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Facts {
    pub started_ms: u64,
    pub items: Vec<Digest>,
    pub secrets: Vec<String>,
    pub metrics: expflow_cache::Metrics,
    pub threads: u32,
    pub host: String,
}

/// Writes the record of a node whose outputs are stored (its log, if any, is stored too).
/// The caller has made sure the outputs are intact.
#[allow(clippy::too_many_arguments)]
pub fn commit_record(
    env: &NodeEnv,
    node_name: &str,
    determinism: &str,
    material: &KeyMaterial,
    key: &Digest,
    outputs: &BTreeMap<String, OutputRef>,
    duration_ms: u64,
    facts: &Facts,
) -> Result<()> {
    let log_path = env
        .run_dir
        .join("logs")
        .join(format!("{}.log", safe_name(node_name)));
    let log_empty = std::fs::metadata(&log_path).map_or(true, |m| m.len() == 0);
    let log_digest = if log_empty {
        None
    } else {
        env.cas.put_file(&log_path).ok().map(|(d, _)| d)
    };
    let rec = Record {
        key: *key,
        pipeline: env.pipeline.clone(),
        node: node_name.to_string(),
        op: material.op.clone(),
        op_version: material.op_version,
        determinism: determinism.into(),
        outputs: outputs.clone(),
        material: material.to_json(),
        started_ms: facts.started_ms,
        duration_ms,
        host: facts.host.clone(),
        engine_version: crate::ENGINE_VERSION.into(),
        log: log_digest,
        run_id: env.run_id.clone(),
        secrets: facts.secrets.clone(),
        items: facts.items.clone(),
        threads: facts.threads,
        metrics: facts.metrics.clone(),
    };
    env.store.put_record(&rec)?;
    env.store.set_last(&env.pipeline, node_name, key)?;
    // The hit-index entry the next run looks up, with the stats of the blobs checked
    // intact just now (as a hit check would make it): the next run of this node is then
    // answered without reading the record, or the database (see `LazyStore`).
    let mut stats = BTreeMap::new();
    for (port, out) in outputs.iter().filter(|(_, o)| !o.dir) {
        match env.cas.stat_blob(&out.digest) {
            Ok(stat) => stats.insert(port.clone(), stat),
            Err(_) => return Ok(()),
        };
    }
    let hit = Hit {
        outputs: outputs.clone(),
        stats,
    };
    if let Err(e) = env.store.put_hit(key, &hit) {
        tracing::debug!("{e}; the next run checks the record's blobs instead");
    }
    Ok(())
}

/// Runs `node` with the given input digests, stores its outputs and, when `commit` is set,
/// writes its record. Never writes a record for a failed or cancelled execution.
#[allow(clippy::too_many_arguments)]
pub fn execute(
    env: &NodeEnv,
    node: &CNode,
    material: &KeyMaterial,
    key: &Digest,
    input_types: &BTreeMap<String, PortType>,
    gpus: Vec<u32>,
    attempt: u32,
    progress: ProgressFn,
    commit: bool,
) -> std::result::Result<Executed, String> {
    let started = now_ms();
    // Everything this execution makes lives in the run's scratch directory under names
    // prefixed `NODE-ATTEMPT.`: outputs, `.in-PORT` for directory inputs, `.tmp` for the
    // operator's scratch space (made on first use). No directory of its own: allocating
    // and freeing inodes is most of what a small node costs.
    // Spread over 16 subdirectories by key: creating a file takes its directory's lock,
    // and concurrent nodes creating and renaming their outputs in one directory wait on
    // each other (most of a small node's kernel time, in `perf`).
    let prefix = env
        .scratch_dir
        .join(format!("{:x}", key.0[0] & 0xf))
        .join(format!("{}-{attempt}", safe_name(&node.name)));
    let mut made = Vec::new();
    let result = run_in(
        env,
        node,
        material,
        key,
        input_types,
        gpus,
        attempt,
        progress,
        commit,
        &prefix,
        &mut made,
        started,
    );
    // Before the node's partial outputs are removed: a full disk explains a failure that
    // the node log may not (a child's message about it could not be written either).
    let result = result.map_err(|msg| match disk_full_note(&env.scratch_dir) {
        Some(note) => format!("{msg}\n{note}"),
        None => msg,
    });
    for p in made {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => drop(std::fs::remove_dir_all(&p)),
            Ok(_) => drop(std::fs::remove_file(&p)),
            Err(_) => {}
        }
    }
    result
}

/// Below this many free bytes the workspace's file system counts as full.
const FULL_BELOW: u64 = 64 * 1024;

/// A note for a node's error when the file system holding `dir` (the run's scratch space, in
/// the workspace) is full.
fn disk_full_note(dir: &Path) -> Option<String> {
    let free = free_bytes(dir)?;
    (free < FULL_BELOW).then(|| {
        format!(
            "no space left on device: the file system holding the workspace ({}) is full \
             ({free} bytes free); free space (e.g. `expflow gc`) or put the workspace on a \
             larger disk (`--workspace DIR`), then run again",
            dir.parent().and_then(Path::parent).unwrap_or(dir).display()
        )
    })
}

/// Bytes an unprivileged writer may still use on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `path` is a valid NUL-terminated string and `s` a writable statvfs.
    let s = unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut s) != 0 {
            return None;
        }
        s
    };
    Some(s.f_bavail as u64 * s.f_frsize as u64)
}

/// `PREFIX.suffix`.
fn beside(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

#[allow(clippy::too_many_arguments)]
fn run_in(
    env: &NodeEnv,
    node: &CNode,
    material: &KeyMaterial,
    key: &Digest,
    input_types: &BTreeMap<String, PortType>,
    gpus: Vec<u32>,
    attempt: u32,
    progress: ProgressFn,
    commit: bool,
    prefix: &Path,
    made: &mut Vec<PathBuf>,
    started: u64,
) -> std::result::Result<Executed, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    if let Some(dir) = prefix.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut inputs = BTreeMap::new();
    for (port, digest) in &material.inputs {
        let ty = input_types.get(port).copied().unwrap_or(PortType::File);
        let path = if ty.is_dir() {
            let p = beside(prefix, &format!("in-{port}"));
            made.push(p.clone());
            env.cas.materialize_dir(digest, &p).map_err(|e| err(&e))?;
            p
        } else {
            env.cas.blob_path(digest)
        };
        inputs.insert(
            port.clone(),
            Input {
                path,
                ty,
                digest: *digest,
            },
        );
    }
    let mut outputs = BTreeMap::new();
    for (port, ty) in &node.outputs {
        let path = beside(prefix, &output_file_name(port, *ty));
        made.push(path.clone());
        if ty.is_dir() {
            std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        outputs.insert(port.clone(), Output { path, ty: *ty });
    }
    let log_path = env
        .run_dir
        .join("logs")
        .join(format!("{}.log", safe_name(&node.name)));
    let ctx = Context {
        node: node.name.clone(),
        op_kind: material.op.clone(),
        op_version: material.op_version,
        params: node.params.clone(),
        inputs,
        outputs,
        scratch: {
            let tmp = beside(prefix, "tmp");
            made.push(tmp.clone());
            tmp
        },
        scratch_ready: std::sync::OnceLock::new(),
        copies: {
            let copies = beside(prefix, "inputs");
            made.push(copies.clone());
            copies
        },
        resume: env.resume_root.join(key.to_hex()),
        log: Mutex::new(None),
        log_path: log_path.clone(),
        cancel: env.cancel.clone(),
        gpus,
        seed: material.seed.unwrap_or(0),
        cas: env.cas.clone(),
        store: env.store.clone(),
        items: Mutex::new(Vec::new()),
        memo_store: env.memo_store,
        memo_stats: MemoStats::default(),
        progress,
        secrets: Mutex::new(Vec::new()),
        vault: env.secrets.clone(),
        revealed: Mutex::new(Vec::new()),
        notes: Mutex::new(serde_json::Map::new()),
    };
    if attempt > 1 {
        ctx.log(&format!("--- attempt {attempt} ---"));
    }
    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| node.op.run(&ctx)));
    match ran {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let mut msg = e.to_string();
            let mut src = e.source();
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            // The error goes into events and onto the terminal: no secret value in it.
            let msg = ctx.scrub(&msg);
            ctx.log(&format!("error: {msg}"));
            return Err(msg);
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "operator panicked".into());
            let msg = ctx.scrub(&msg);
            ctx.log(&format!("panic: {msg}"));
            return Err(format!("operator panicked: {msg}"));
        }
    }
    if ctx.is_cancelled() {
        return Err("cancelled".into());
    }
    // Read before the outputs are moved into the store.
    let paths = ctx
        .outputs
        .iter()
        .map(|(port, o)| (port.clone(), o.path.as_path()))
        .collect();
    let (metrics, notes) = crate::metrics::extract(node, &paths);
    for n in notes {
        ctx.log(&n);
    }
    let mut refs = BTreeMap::new();
    for (port, out) in &ctx.outputs {
        let stored = if out.ty.is_dir() {
            if !out.path.is_dir() {
                return Err(format!(
                    "output `{port}` was not written (expected the directory {})",
                    out.path.display()
                ));
            }
            env.cas.put_dir(&out.path)
        } else {
            if !out.path.is_file() {
                return Err(format!(
                    "output `{port}` was not written (expected the file {})",
                    out.path.display()
                ));
            }
            env.cas.put_file_move(&out.path)
        };
        // The CAS remembers the stat of every blob it writes or re-hashes (it shares the
        // workspace's stat cache), so later checks need not re-hash them.
        let (digest, size) = stored.map_err(|e| err(&e))?;
        refs.insert(
            port.clone(),
            OutputRef {
                digest,
                kind: out.ty.as_str().into(),
                dir: out.ty.is_dir(),
                size,
            },
        );
    }
    // The outputs are stored: resumable state has served its purpose.
    if ctx.resume.exists() {
        drop(std::fs::remove_dir_all(&ctx.resume));
    }
    let duration_ms = now_ms().saturating_sub(started);
    let memo = ctx.memo_counts();
    let facts = Facts {
        started_ms: started,
        items: ctx.items.lock().map(|v| v.clone()).unwrap_or_default(),
        secrets: ctx.secrets.lock().map(|v| v.clone()).unwrap_or_default(),
        metrics,
        threads: compute_threads(),
        host: hostname(),
    };
    if commit {
        commit_record(
            env,
            &node.name,
            node.determinism.as_str(),
            material,
            key,
            &refs,
            duration_ms,
            &facts,
        )
        .map_err(|e| err(&e))?;
    }
    Ok(Executed {
        outputs: refs,
        duration_ms,
        memo,
        notes: ctx.notes(),
        facts,
    })
}

/// The compute threads of this process: `RAYON_NUM_THREADS` when set to a positive number
/// (the model runtime's thread pools read it), else the available cores.
pub fn compute_threads() -> u32 {
    // The cores are looked up once: `available_parallelism` reads several cgroup files.
    static CORES: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            *CORES
                .get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
        })
}

/// This machine's host name, read once per process.
pub fn hostname() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    })
    .clone()
}
