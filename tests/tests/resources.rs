//! GPU pinning and Ctrl-C.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use expflow_tests::{Project, expflow_bin};

#[test]
fn gpus_are_pinned_through_cuda_visible_devices() {
    let p = Project::new();
    p.write(
        "pipe.yaml",
        "pipeline: g\nnodes:\n  a:\n    op: command\n    out: {o: file}\n    resources: {gpus: 1}\n    params:\n      run: \"echo $CUDA_VISIBLE_DEVICES > ${out.o}\"\n  b:\n    op: command\n    out: {o: file}\n    resources: {gpus: 2}\n    params:\n      run: \"echo $CUDA_VISIBLE_DEVICES > ${out.o}; true\"\noutputs:\n  a.txt: a.o\n  b.txt: b.o\n",
    );
    let out = Command::new(expflow_bin())
        .args(["run", "pipe.yaml", "--jobs", "2"])
        .current_dir(p.dir.path())
        .env("EXPFLOW_GPUS", "3,5")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // (b's command differs from a's: with equal commands they would share one key, as
    // resources are not part of a key.) Two GPUs in all: the nodes cannot overlap, and
    // each sees only its own.
    assert_eq!(p.read("a.txt").trim(), "3");
    assert_eq!(p.read("b.txt").trim(), "3,5");
    // Without GPUs the node fails with a message that says what to set.
    let q = Project::new();
    q.write("pipe.yaml", "pipeline: g\nnodes:\n  a:\n    op: command\n    out: {o: file}\n    resources: {gpus: 1}\n    params:\n      run: \"echo > ${out.o}\"\n");
    let out = Command::new(expflow_bin())
        .args(["run", "pipe.yaml"])
        .current_dir(q.dir.path())
        .env_remove("EXPFLOW_GPUS")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CUDA_VISIBLE_DEVICES"));
}

#[test]
fn ctrl_c_kills_children_and_records_nothing() {
    let p = Project::new();
    let marker = p.path("child-finished");
    p.write(
        "pipe.yaml",
        &format!(
            "pipeline: c\nnodes:\n  long:\n    op: command\n    out: {{o: file}}\n    params:\n      run: \"echo started > ${{out.o}}; sleep 20; touch {}\"\n",
            marker.display()
        ),
    );
    let mut child = Command::new(expflow_bin())
        .args(["run", "pipe.yaml"])
        .current_dir(p.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let started = std::fs::read_dir(p.path(".expflow/runs"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| std::fs::read_to_string(e.path().join("events.jsonl")).unwrap_or_default())
            .is_some_and(|t| t.contains("node_started"));
        if started || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    // SAFETY: sending SIGINT to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(t.elapsed() < Duration::from_secs(10), "stopped promptly");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!marker.exists(), "the child's process group was killed");
    let plan = p.expflow(&["plan", "pipe.yaml", "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan[0]["state"], "run", "nothing was recorded");
}
