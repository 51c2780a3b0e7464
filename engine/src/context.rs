//! What an operator sees while it runs: inputs, output slots, params, log, progress,
//! cancellation, devices, scratch space, a seed, and per-item memoisation.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use expflow_cache::{Cas, Digest, Store};
use serde_json::{Map, Value};

use crate::canonical;
use crate::operator::{OpError, PortType};
use crate::secrets::{Scrubber, Secrets};

/// A shared flag that is set when the run is cancelled (Ctrl-C, or a failure under `stop`).
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// An input artifact, ready to read. `path` is read-only.
#[derive(Clone, Debug)]
pub struct Input {
    pub path: PathBuf,
    pub ty: PortType,
    pub digest: Digest,
}

/// Where an operator writes one output. Directory outputs are created empty beforehand.
#[derive(Clone, Debug)]
pub struct Output {
    pub path: PathBuf,
    pub ty: PortType,
}

/// One progress report of a node: `done` of `total` `unit`s (`steps`, `prompts`), and a
/// short `detail` (a rate such as `41 tok/s`, the epoch).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub unit: String,
    pub detail: String,
}

/// Progress reports of the node.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Counters of per-item memoisation for one node execution.
#[derive(Debug, Default)]
pub struct MemoStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

/// The run-time context handed to [`crate::Operator::run`].
pub struct Context {
    pub(crate) node: String,
    pub(crate) op_kind: String,
    pub(crate) op_version: u32,
    pub(crate) params: Map<String, Value>,
    pub(crate) inputs: BTreeMap<String, Input>,
    pub(crate) outputs: BTreeMap<String, Output>,
    /// Created on first use (most operators never need one).
    pub(crate) scratch: PathBuf,
    pub(crate) scratch_ready: std::sync::OnceLock<()>,
    /// Where [`Context::input_copies`] puts copies of file inputs (made on first use,
    /// removed with the scratch space).
    pub(crate) copies: PathBuf,
    /// Resumable state of this node key (see [`Context::resume_dir`]).
    pub(crate) resume: PathBuf,
    /// Opened on first write, so a quiet node leaves no file behind.
    pub(crate) log: Mutex<Option<File>>,
    pub(crate) log_path: PathBuf,
    pub(crate) cancel: CancelToken,
    pub(crate) gpus: Vec<u32>,
    pub(crate) seed: u64,
    pub(crate) cas: Cas,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) items: Mutex<Vec<Digest>>,
    /// Whether per-item memoisation reads and writes the store; off when `audit`
    /// re-executes a node, so that every item is computed again and the workspace's memo
    /// is left as it was.
    pub(crate) memo_store: bool,
    pub(crate) memo_stats: MemoStats,
    pub(crate) progress: ProgressFn,
    /// Names of the secrets this execution read (recorded; never their values).
    pub(crate) secrets: Mutex<Vec<String>>,
    /// The run's declared secrets (`secrets:` in the pipeline file).
    pub(crate) vault: Secrets,
    /// Values read through [`Context::secret`], masked in the log like declared ones.
    pub(crate) revealed: Mutex<Vec<String>>,
    /// Figures about this execution (see [`Context::note`]).
    pub(crate) notes: Mutex<Map<String, Value>>,
}

impl Context {
    /// The node's name (with its matrix point, e.g. `sweep[lr=0.0001]`).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Parameters with defaults filled in and interpolation done.
    pub fn params(&self) -> &Map<String, Value> {
        &self.params
    }

    pub fn param(&self, name: &str) -> Option<&Value> {
        self.params.get(name).filter(|v| !v.is_null())
    }

    pub fn param_str(&self, name: &str) -> Result<&str, OpError> {
        self.param(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("parameter `{name}` must be a string").into())
    }

    pub fn param_u64(&self, name: &str) -> Result<u64, OpError> {
        self.param(name)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("parameter `{name}` must be a non-negative integer").into())
    }

    pub fn param_f64(&self, name: &str) -> Result<f64, OpError> {
        self.param(name)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("parameter `{name}` must be a number").into())
    }

    pub fn param_bool(&self, name: &str) -> Result<bool, OpError> {
        self.param(name)
            .and_then(Value::as_bool)
            .ok_or_else(|| format!("parameter `{name}` must be true or false").into())
    }

    /// A list parameter of strings (a single string counts as a list of one).
    pub fn param_strings(&self, name: &str) -> Result<Vec<String>, OpError> {
        match self.param(name) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_owned).ok_or_else(|| {
                        OpError::from(format!("parameter `{name}` must be a list of strings"))
                    })
                })
                .collect(),
            Some(_) => Err(format!("parameter `{name}` must be a list of strings").into()),
        }
    }

    pub fn input(&self, port: &str) -> Result<&Input, OpError> {
        self.inputs
            .get(port)
            .ok_or_else(|| format!("input port `{port}` is not connected").into())
    }

    /// All connected inputs, by port name (sorted).
    pub fn inputs(&self) -> &BTreeMap<String, Input> {
        &self.inputs
    }

    pub fn output(&self, port: &str) -> Result<&Output, OpError> {
        self.outputs
            .get(port)
            .ok_or_else(|| format!("output port `{port}` is not declared").into())
    }

    /// All output slots, by port name (sorted).
    pub fn outputs(&self) -> &BTreeMap<String, Output> {
        &self.outputs
    }

    /// A private directory for temporary files; removed after the node finishes.
    pub fn scratch(&self) -> &Path {
        self.scratch_ready.get_or_init(|| {
            if let Err(e) = std::fs::create_dir_all(&self.scratch) {
                tracing::warn!("cannot create {}: {e}", self.scratch.display());
            }
        });
        &self.scratch
    }

    /// A directory for state that lets a long node resume where an interrupted attempt
    /// stopped (training checkpoints): one per node key, kept when the node fails or the run
    /// is interrupted, found again by the next run of the same key, and removed once the
    /// node's outputs are stored. Never an output: nothing in it is recorded. Created on
    /// first call.
    pub fn resume_dir(&self) -> Result<&Path, OpError> {
        std::fs::create_dir_all(&self.resume).map_err(|e| {
            OpError::from(format!(
                "cannot create the resume directory {}: {e}",
                self.resume.display()
            ))
        })?;
        Ok(&self.resume)
    }

    /// The node log file, opened (appending) on first use.
    fn log_file(&self) -> Result<std::sync::MutexGuard<'_, Option<File>>, OpError> {
        let mut guard = self.log.lock().map_err(|_| "node log lock poisoned")?;
        if guard.is_none() {
            if let Some(dir) = self.log_path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log_path)
                .map_err(|e| {
                    format!("cannot open the node log {}: {e}", self.log_path.display())
                })?;
            *guard = Some(f);
        }
        Ok(guard)
    }

    /// The seed: the node's `seed` parameter when it has one, else 0.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// GPU ordinals assigned to this node (also in `CUDA_VISIBLE_DEVICES` for children).
    pub fn gpus(&self) -> &[u32] {
        &self.gpus
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Returns an error if the run was cancelled; call it between units of work.
    pub fn check_cancelled(&self) -> Result<(), OpError> {
        if self.is_cancelled() {
            Err("cancelled".into())
        } else {
            Ok(())
        }
    }

    /// Appends a line to the node's log (secret values masked).
    pub fn log(&self, line: &str) {
        let line = self.scrub(line);
        // A failing log write must not fail the node; the log is advisory.
        if let Ok(mut guard) = self.log_file()
            && let Some(f) = guard.as_mut()
        {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Notes a figure about this execution rather than about the data: requests sent,
    /// retries, items taken from the memo store, tokens per second. Such figures depend on
    /// what happened to be cached and on the machine, so they never belong in an output
    /// (whose bytes must be a function of the node's key); a note goes to the node's log and
    /// to its `node_executed` event, where `expflow log` shows it. Noting a name again
    /// replaces its value.
    pub fn note(&self, name: &str, value: impl Into<Value>) {
        let value = value.into();
        self.log(&format!("note: {name} = {value}"));
        if let Ok(mut notes) = self.notes.lock() {
            notes.insert(name.to_string(), value);
        }
    }

    /// The figures noted so far (see [`Context::note`]).
    pub fn notes(&self) -> Map<String, Value> {
        self.notes.lock().map(|n| n.clone()).unwrap_or_default()
    }

    /// Reports progress of the node: `done` of `total` items.
    pub fn progress(&self, done: u64, total: u64) {
        self.progress_of(done, total, "", "");
    }

    /// Reports progress of the node: `done` of `total` `unit`s (`steps`, `prompts`), with a
    /// short `detail` (a rate, the epoch) that the terminal shows beside it.
    pub fn progress_of(&self, done: u64, total: u64, unit: &str, detail: &str) {
        (self.progress)(&Progress {
            done,
            total,
            unit: unit.to_string(),
            detail: detail.to_string(),
        });
    }

    /// The last `n` lines of the node's log (for error messages).
    pub fn log_tail(&self, n: usize) -> String {
        crate::events::tail_lines(&self.log_path, n)
    }

    /// Runs an external program with its stdout and stderr appended to the node log, in its
    /// own process group, with `CUDA_VISIBLE_DEVICES` set to the node's GPUs. If the run is
    /// cancelled the whole process group is killed and an error is returned. When the node
    /// knows secrets, the output passes through a scrubber that masks their values.
    pub fn run_command(&self, cmd: &mut Command) -> Result<ExitStatus, OpError> {
        use std::os::unix::process::CommandExt;
        let guard = self.log_file()?;
        let log = guard.as_ref().ok_or("the node log is not open")?;
        let out = log.try_clone()?;
        let err = log.try_clone()?;
        drop(guard);
        let values = self.scrub_values();
        let gpus: Vec<String> = self.gpus.iter().map(u32::to_string).collect();
        cmd.stdin(Stdio::null())
            .env("CUDA_VISIBLE_DEVICES", gpus.join(","))
            .process_group(0);
        // If expflow itself dies (SIGKILL, the OOM killer), the child gets SIGKILL too
        // instead of running on unobserved. The signal follows the death of the thread that
        // spawned the child, which is this one: it waits for the child below.
        #[cfg(target_os = "linux")]
        let parent = std::process::id() as libc::pid_t;
        #[cfg(target_os = "linux")]
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork
        // and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl took effect.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("expflow exited"));
                }
                Ok(())
            });
        }
        let sinks = if values.is_empty() {
            cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
            None
        } else {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            Some([out, err])
        };
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
        let pid = child.id() as i32;
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let mut pumps = 0;
        let streams: [Option<Box<dyn std::io::Read + Send>>; 2] = [
            child.stdout.take().map(|r| Box::new(r) as _),
            child.stderr.take().map(|r| Box::new(r) as _),
        ];
        for (stream, sink) in streams.into_iter().zip(sinks.into_iter().flatten()) {
            let Some(stream) = stream else { continue };
            let scrubber = Scrubber::new(&values);
            let tx = done_tx.clone();
            pumps += 1;
            std::thread::spawn(move || {
                pump(stream, scrubber, sink);
                let _ = tx.send(());
            });
        }
        let exited = ExitWatch::new(pid);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if self.is_cancelled() {
                kill_group(pid);
                let _ = child.wait();
                return Err("cancelled; the child process group was killed".into());
            }
            exited.wait(CANCEL_POLL);
        };
        // The streams end when the last process holding them exits; one left running in the
        // background keeps its output flowing into the log without holding up the node.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        for _ in 0..pumps {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if done_rx.recv_timeout(left).is_err() {
                break;
            }
        }
        Ok(status)
    }

    /// The value of the declared secret `name` (`secrets:` in the pipeline file), for the
    /// process or client that needs it; it must not be written anywhere. The record notes
    /// that `name` was used.
    pub fn secret_value(&self, name: &str) -> Result<String, OpError> {
        let value = self.vault.get(name).ok_or_else(|| {
            format!("no secret `{name}` is declared (`secrets:` in the pipeline file)")
        })?;
        self.note_secret(name);
        Ok(value.to_string())
    }

    /// A parameter string with each `${secrets.NAME}` replaced by the secret's value (see
    /// [`crate::secrets::reveal`]). The result must not be written anywhere.
    pub fn reveal(&self, text: &str) -> Result<String, OpError> {
        crate::secrets::reveal(text, |name| {
            self.secret_value(name).map_err(|e| e.to_string())
        })
        .map_err(OpError::from)
    }

    /// `text` with the value of every secret this node knows replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let values = self.scrub_values();
        crate::secrets::scrub(text, &values)
    }

    fn scrub_values(&self) -> Vec<String> {
        let mut values: Vec<String> = self.vault.values().map(str::to_owned).collect();
        if let Ok(more) = self.revealed.lock() {
            values.extend(more.iter().cloned());
        }
        values
    }

    fn note_secret(&self, name: &str) {
        if let Ok(mut used) = self.secrets.lock()
            && !used.iter().any(|v| v == name)
        {
            used.push(name.to_string());
        }
    }

    /// Per-item memoisation: returns the bytes computed for `item` by this operator kind and
    /// version, computing and storing them only when they are not in the cache yet. `item`
    /// must describe everything the computation depends on (its input bytes' digest, its
    /// parameters).
    pub fn memo<F>(&self, item: &Value, compute: F) -> Result<Vec<u8>, OpError>
    where
        F: FnOnce() -> Result<Vec<u8>, OpError>,
    {
        let key = self.item_key(item);
        if let Some(blob) = self.memo_lookup(&key)? {
            return Ok(std::fs::read(self.cas.blob_path(&blob))?);
        }
        let bytes = compute()?;
        let blob = self.cas.put_bytes(&bytes)?;
        self.memo_commit(&key, blob)?;
        Ok(bytes)
    }

    /// Per-item memoisation of a file: `compute` writes the item's file at the given path;
    /// the returned path is the stored, read-only blob.
    pub fn memo_file<F>(&self, item: &Value, compute: F) -> Result<PathBuf, OpError>
    where
        F: FnOnce(&Path) -> Result<(), OpError>,
    {
        let key = self.item_key(item);
        if let Some(blob) = self.memo_lookup(&key)? {
            return Ok(self.cas.blob_path(&blob));
        }
        let tmp = self.scratch().join(format!("item-{}", key.to_hex()));
        compute(&tmp)?;
        let (blob, _) = self.cas.put_file_move(&tmp)?;
        self.memo_commit(&key, blob)?;
        Ok(self.cas.blob_path(&blob))
    }

    /// (hits, misses) of per-item memoisation so far.
    pub fn memo_counts(&self) -> (u64, u64) {
        (
            self.memo_stats.hits.load(Ordering::Relaxed),
            self.memo_stats.misses.load(Ordering::Relaxed),
        )
    }

    /// Reads a secret (an API key) from the environment variable `var`. Its value never
    /// enters keys, records or logs; the record notes only that `var` was used.
    pub fn secret(&self, var: &str) -> Result<String, OpError> {
        let value = std::env::var(var).map_err(|_| {
            format!("the environment variable `{var}` is not set; export it before running")
        })?;
        self.note_secret(var);
        if !value.is_empty()
            && let Ok(mut masked) = self.revealed.lock()
            && !masked.contains(&value)
        {
            masked.push(value.clone());
        }
        Ok(value)
    }

    fn item_key(&self, item: &Value) -> Digest {
        let material = serde_json::json!({
            "op": self.op_kind,
            "op_version": self.op_version,
            "item": item,
        });
        Digest::of_bytes(&canonical::encode(&material, b"expflow-item-v1\0"))
    }

    fn memo_lookup(&self, key: &Digest) -> Result<Option<Digest>, OpError> {
        if !self.memo_store {
            return Ok(None);
        }
        // A memoised blob is believed only through a hash (the stat cache, else a re-hash);
        // a damaged one is removed and the item computed again.
        if let Some(blob) = self.store.memo_get(key)?
            && crate::node::blob_ok(&self.cas, self.store.as_ref(), &blob)?
        {
            self.items.lock().map_err(|_| "poisoned")?.push(blob);
            self.memo_stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(blob));
        }
        Ok(None)
    }

    fn memo_commit(&self, key: &Digest, blob: Digest) -> Result<(), OpError> {
        if self.memo_store {
            self.store.memo_put(key, &blob)?;
        }
        self.items.lock().map_err(|_| "poisoned")?.push(blob);
        self.memo_stats.misses.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Copies a child's output stream into the node log through `scrubber`.
fn pump(mut stream: impl std::io::Read, mut scrubber: Scrubber, mut sink: File) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let out = scrubber.push(&buf[..n]);
                if !out.is_empty() && sink.write_all(&out).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = sink.write_all(&scrubber.finish());
}

/// Kills a process group with SIGTERM, then SIGKILL after a short grace period.
/// How often a node waiting for its child process looks at the cancel token.
const CANCEL_POLL: Duration = Duration::from_millis(20);

/// Waits for a child process to exit, or for a timeout, whichever comes first, without
/// reaping it (the caller's `try_wait` does). On Linux through a pidfd, which wakes the
/// moment the child exits: a node's command is often done in a few milliseconds, and a fixed
/// 20 ms sleep between looks made each such node take 20 ms (a 1,000-node pipeline of
/// short commands spent most of its time asleep). Elsewhere, or without a pidfd, it sleeps
/// for a time that doubles from 0.1 ms up to the timeout.
struct ExitWatch {
    #[cfg(target_os = "linux")]
    pidfd: Option<std::os::fd::OwnedFd>,
    backoff: std::cell::Cell<Duration>,
}

impl ExitWatch {
    fn new(pid: i32) -> ExitWatch {
        #[cfg(target_os = "linux")]
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; the
        // descriptor is owned by the OwnedFd from here on.
        let pidfd = unsafe {
            let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
            (fd >= 0).then(|| {
                use std::os::fd::FromRawFd;
                std::os::fd::OwnedFd::from_raw_fd(fd as i32)
            })
        };
        #[cfg(not(target_os = "linux"))]
        let _ = pid;
        ExitWatch {
            #[cfg(target_os = "linux")]
            pidfd,
            backoff: std::cell::Cell::new(Duration::from_micros(100)),
        }
    }

    fn wait(&self, timeout: Duration) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.pidfd {
            use std::os::fd::AsRawFd;
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; the result only decides when to look again.
            let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
            if n >= 0 {
                return;
            }
        }
        let d = self.backoff.get();
        std::thread::sleep(d.min(timeout));
        self.backoff.set((d * 2).min(timeout));
    }
}

pub(crate) fn kill_group(pgid: i32) {
    // SAFETY: killpg only sends a signal; a stale pgid yields ESRCH, which we ignore.
    unsafe {
        libc::killpg(pgid, libc::SIGTERM);
    }
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: as above.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn waiting_for_a_child_wakes_when_it_exits_not_at_the_timeout() {
        let mut child = Command::new("sleep").arg("0.05").spawn().unwrap();
        let watch = ExitWatch::new(child.id() as i32);
        let started = std::time::Instant::now();
        watch.wait(Duration::from_secs(30));
        let waited = started.elapsed();
        // Woken by the exit (the child is there to reap), long before the timeout.
        assert!(
            child.try_wait().unwrap().is_some(),
            "woke before the child exited"
        );
        assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    }

    #[test]
    fn waiting_for_a_child_that_runs_on_ends_at_the_timeout() {
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let watch = ExitWatch::new(child.id() as i32);
        let started = std::time::Instant::now();
        watch.wait(Duration::from_millis(50));
        assert!(started.elapsed() >= Duration::from_millis(40));
        assert!(child.try_wait().unwrap().is_none());
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
