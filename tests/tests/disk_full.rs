//! A full disk: the workspace on a small tmpfs, nodes that write more than fits. The run
//! fails cleanly (exit 1, the node and "no space left on device" in the error), nothing
//! partial is recorded, the journal stays readable, `verify` exits 0, and once space is freed
//! the re-run completes.
//!
//! The test mounts its own tmpfs, which needs root (`.ci/run` runs as root). Without root it
//! fails under `CI=true` and says SKIPPED otherwise.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use expflow_tests::{Project, check_journal, expflow_bin, records_missing_blobs};

/// A tmpfs mounted on a temporary directory, unmounted (lazily, so even a file left open
/// cannot keep it) when dropped, also when the test fails.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let target = CString::new(dir.path().as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        let opts = CString::new(format!("size={size},mode=0755")).expect("no NUL");
        // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(format!(
                "mount -t tmpfs on {}: {}",
                dir.path().display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes free for an unprivileged writer.
    fn free(&self) -> u64 {
        let p = CString::new(self.path().as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: statvfs fills the zeroed struct; p is a valid path.
        unsafe {
            let mut s: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(p.as_ptr(), &mut s), 0);
            s.f_bavail * s.f_frsize
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let p = CString::new(self.path().as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: p is a valid path; MNT_DETACH unmounts even if something is still open.
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A mounted tmpfs, or `None` (after printing SKIPPED) where this is not root outside CI.
fn tmpfs(size: &str) -> Option<Tmpfs> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let why = if root {
        match Tmpfs::mount(size) {
            Ok(t) => return Some(t),
            Err(e) => e,
        }
    } else {
        "mounting a tmpfs needs root".to_string()
    };
    assert!(
        !ci,
        "the disk-full tests need a tmpfs ({why}); .ci/run runs them as root"
    );
    println!("SKIPPED: {why}");
    None
}

fn expflow(p: &Project, ws: &Path, args: &[&str]) -> Output {
    std::process::Command::new(expflow_bin())
        .arg("--workspace")
        .arg(ws)
        .args(args)
        .current_dir(p.dir.path())
        .env_remove("EXPFLOW_LOG")
        .output()
        .expect("run expflow")
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// The checks after a run that hit a full disk: the journal reads, no record of `failed`
/// nodes, no record names a missing blob, `verify` exits 0, and what the failed node wrote
/// is gone.
fn check_clean(p: &Project, ws: &Path, failed: &[&str], recorded: &[&str]) {
    let journal = check_journal(ws).unwrap_or_else(|e| panic!("journal: {e}"));
    assert!(!journal.torn_tail, "the journal ends in a torn line");
    let nodes: Vec<&str> = journal
        .records
        .values()
        .filter_map(|r| r["node"].as_str())
        .collect();
    for n in failed {
        assert!(!nodes.contains(n), "{n} is recorded: {nodes:?}");
    }
    for n in recorded {
        assert!(nodes.contains(n), "{n} is not recorded: {nodes:?}");
    }
    let missing = records_missing_blobs(ws, &journal);
    assert!(missing.is_empty(), "{missing:#?}");
    let v = expflow(p, ws, &["verify"]);
    assert_eq!(
        v.status.code(),
        Some(0),
        "verify: {}{}",
        text(&v.stdout),
        text(&v.stderr)
    );
    for dir in ["cas/tmp", "scratch"] {
        let left: Vec<PathBuf> = std::fs::read_dir(ws.join(dir))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "left in {dir}: {left:?}");
    }
}

/// The error line `failed: NODE: ...` of a run's stderr.
fn failure_of<'a>(stderr: &'a str, node: &str) -> &'a str {
    let tag = format!("failed: {node}: ");
    let start = stderr
        .find(&tag)
        .unwrap_or_else(|| panic!("no `{tag}` in:\n{stderr}"));
    &stderr[start..]
}

fn assert_no_space(stderr: &str, node: &str) {
    let err = failure_of(stderr, node);
    assert!(
        err.to_lowercase().contains("no space left on device"),
        "{node}'s error does not say the disk is full:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

const COMMAND: &str = r#"
pipeline: full
params:
  mb: 64
nodes:
  small:
    op: command
    out: {o: file}
    params: {run: "echo small > ${out.o}"}
  big:
    op: command
    in: {x: small.o}
    out: {o: file}
    params: {run: "head -c ${params.mb}M /dev/zero > ${out.o}"}
  after:
    op: command
    in: {b: big.o}
    out: {o: file}
    params: {run: "wc -c < ${in.b} > ${out.o}"}
outputs:
  out/after.txt: after.o
"#;

#[test]
fn a_command_that_fills_the_disk_fails_cleanly_and_the_rerun_completes() {
    let Some(fs) = tmpfs("8m") else { return };
    let ws = fs.path().join("ws");
    let p = Project::new();
    p.write("full.yaml", COMMAND);
    let r = expflow(&p, &ws, &["run", "full.yaml"]);
    let stderr = text(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert_no_space(&stderr, "big");
    check_clean(&p, &ws, &["big", "after"], &["small"]);
    assert!(
        fs.free() > 4 << 20,
        "the failed node's bytes are freed: {} free",
        fs.free()
    );
    // Space for what the node writes now: the re-run completes, reusing `small`.
    let r = expflow(&p, &ws, &["run", "full.yaml", "--set", "mb=1", "--json"]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&r.stdout).expect("json");
    assert_eq!(summary["cached"], serde_json::json!(["small"]));
    assert_eq!(p.read("out/after.txt").trim(), (1u64 << 20).to_string());
    check_clean(&p, &ws, &[], &["small", "big", "after"]);
}

const DIR_OUTPUT: &str = r#"
pipeline: full_dir
params:
  mb: 3
nodes:
  tree:
    op: command
    out: {d: dir}
    params: {run: "head -c ${params.mb}M /dev/urandom > ${out.d}/a && head -c ${params.mb}M /dev/urandom > ${out.d}/b"}
"#;

/// The node's own writes fit; storing them in the CAS (a copy for directory outputs) does not.
#[test]
fn a_directory_output_too_large_to_store_fails_cleanly() {
    let Some(fs) = tmpfs("8m") else { return };
    let ws = fs.path().join("ws");
    let p = Project::new();
    p.write("dir.yaml", DIR_OUTPUT);
    let r = expflow(&p, &ws, &["run", "dir.yaml"]);
    let stderr = text(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert_no_space(&stderr, "tree");
    check_clean(&p, &ws, &["tree"], &[]);
    let r = expflow(&p, &ws, &["run", "dir.yaml", "--set", "mb=1"]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r.stderr));
    check_clean(&p, &ws, &[], &["tree"]);
}

const FILLER: &str = r#"
pipeline: filler
params:
  fill: FILL
nodes:
  first:
    op: command
    out: {o: file}
    params: {run: "echo first > ${out.o}"}
  filler:
    op: command
    in: {x: first.o}
    out: {o: file}
    params: {run: "echo done > ${out.o}; head -c 64M /dev/zero > ${params.fill} 2>/dev/null; true # PAD"}
  next:
    op: command
    in: {x: filler.o}
    out: {o: file}
    params: {run: "cat ${in.x} ${in.x} > ${out.o}"}
"#;

/// A node that succeeds but leaves the disk full (as another process on the machine might):
/// its output is stored (a rename needs no space) but its record's journal line does not fit
/// (the command, and so the key material in the record, is padded past a page), and sled's
/// flush at the end of the run fails too. The node fails cleanly with the journal ending on
/// a whole line; the database catches up from the journal when space is back.
#[test]
fn a_disk_filled_behind_the_engines_back_fails_the_run_cleanly() {
    let Some(fs) = tmpfs("8m") else { return };
    let ws = fs.path().join("ws");
    let fill = fs.path().join("filler");
    let p = Project::new();
    p.write(
        "fill.yaml",
        &FILLER
            .replace("FILL", &fill.display().to_string())
            .replace("PAD", &"x".repeat(6000)),
    );
    let r = expflow(&p, &ws, &["run", "fill.yaml"]);
    let stderr = text(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert_no_space(&stderr, "filler");
    assert!(
        failure_of(&stderr, "filler").contains("cannot append to the journal"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("ERROR"),
        "one error, not sled's log: {stderr}"
    );
    std::fs::remove_file(&fill).expect("the node filled the disk");
    check_clean(&p, &ws, &["filler", "next"], &["first"]);
    let r = expflow(
        &p,
        &ws,
        &["run", "fill.yaml", "--set", "fill=/dev/null", "--json"],
    );
    assert_eq!(r.status.code(), Some(0), "{}", text(&r.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&r.stdout).expect("json");
    assert_eq!(summary["cached"], serde_json::json!(["first"]));
    check_clean(&p, &ws, &[], &["first", "filler", "next"]);
}
