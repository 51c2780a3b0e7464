//! Kills, corruption, and the workspace lock.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use expflow_tests::{Project, blobs, expflow_bin, in_new_session, names, session_members};

/// Ten independent slow nodes feeding one join.
fn slow_pipeline(p: &Project) {
    let mut yaml = String::from("pipeline: slow\nnodes:\n");
    for i in 0..10 {
        yaml.push_str(&format!(
            "  s{i}:\n    op: command\n    out: {{o: file}}\n    params:\n      run: \"sleep 0.3; echo {i} > ${{out.o}}\"\n"
        ));
    }
    yaml.push_str("  join:\n    op: command\n    in: {");
    let ins: Vec<String> = (0..10).map(|i| format!("i{i}: s{i}.o")).collect();
    yaml.push_str(&ins.join(", "));
    yaml.push_str("}\n    out: {all: file}\n    params:\n      run: \"cat ");
    let cats: Vec<String> = (0..10).map(|i| format!("${{in.i{i}}}")).collect();
    yaml.push_str(&cats.join(" "));
    yaml.push_str(" > ${out.all}\"\n");
    p.write("slow.yaml", &yaml);
}

#[test]
fn a_run_killed_with_sigkill_completes_when_rerun_and_verifies_clean() {
    let p = Project::new();
    slow_pipeline(&p);
    let mut child = Command::new(expflow_bin())
        .args(["run", "slow.yaml", "--jobs", "2"])
        .current_dir(p.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until at least one node has finished, then kill mid-run.
    let runs = p.path(".expflow/runs");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = std::fs::read_dir(&runs)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| std::fs::read_to_string(e.path().join("events.jsonl")).unwrap_or_default())
            .is_some_and(|t| t.contains("node_executed"));
        if done || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let r = p.run("slow.yaml", &["--jobs", "4"]);
    r.expect_code(0);
    assert!(
        !r.cached().is_empty(),
        "work finished before the kill is reused"
    );
    assert!(r.executed().contains(&"join".to_string()));
    let verify = p.expflow(&["verify"]);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let again = p.run("slow.yaml", &[]);
    assert!(again.executed().is_empty());
}

#[test]
fn a_corrupted_or_deleted_blob_fails_verify_and_is_healed_by_the_next_run() {
    let p = Project::new();
    p.write(
        "pipe.yaml",
        "pipeline: heal\nnodes:\n  a:\n    op: command\n    out: {o: file}\n    params:\n      run: \"echo apple > ${out.o}\"\n  b:\n    op: command\n    in: {x: a.o}\n    out: {o: file}\n    params:\n      run: \"tr a-z A-Z < ${in.x} > ${out.o}\"\n",
    );
    p.run("pipe.yaml", &[]).expect_code(0);
    let ws = p.path(".expflow");
    let apple = blobs(&ws)
        .into_iter()
        .find(|b| std::fs::read_to_string(b).ok().as_deref() == Some("apple\n"))
        .expect("a's output is stored");
    // corrupt it (blobs are read-only; make it writable first, as a careless user might)
    let mut perm = std::fs::metadata(&apple).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&apple, perm).unwrap();
    std::fs::write(&apple, "apricot\n").unwrap();
    let v = p.expflow(&["verify"]);
    assert_eq!(
        v.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
    let healed = p.run("pipe.yaml", &[]);
    healed.expect_code(0);
    assert_eq!(
        healed.executed(),
        names(&["a"]),
        "b's inputs are the same bytes again"
    );
    assert_eq!(p.expflow(&["verify"]).status.code(), Some(0));
    // delete it
    std::fs::remove_file(&apple).unwrap();
    assert_eq!(p.expflow(&["verify"]).status.code(), Some(4));
    let r = p.run("pipe.yaml", &[]);
    r.expect_code(0);
    assert_eq!(r.executed(), names(&["a"]));
    assert_eq!(p.expflow(&["verify"]).status.code(), Some(0));
}

/// `run pipe.yaml` in the background, with a one-node pipeline named `hold` whose node
/// sleeps 3 s and writes `text`.
fn hold_in_background(p: &Project, text: &str) -> std::process::Child {
    p.write(
        "pipe.yaml",
        &format!(
            "pipeline: hold\nnodes:\n  a:\n    op: command\n    out: {{o: file}}\n    params:\n      run: \"sleep 3; echo {text} > ${{out.o}}\"\n"
        ),
    );
    Command::new(expflow_bin())
        .args(["run", "pipe.yaml"])
        .current_dir(p.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until `holder.json` holds `wanted`, then checks that a second run is refused with
/// exit 3, naming the holder's pid and the pipeline.
fn second_run_is_refused(p: &Project, first: &std::process::Child, wanted: &str) {
    let holder = p.path(".expflow/holder.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&holder).is_ok_and(|h| h.contains(wanted)) {
        assert!(Instant::now() < deadline, "holder.json never held {wanted}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = p.expflow(&["run", "pipe.yaml"]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.id())), "{stderr}");
    assert!(stderr.contains("pipeline hold"), "{stderr}");
}

#[test]
fn a_second_run_on_a_held_workspace_exits_3_and_names_the_holder() {
    let p = Project::new();
    let mut first = hold_in_background(&p, "once");
    second_run_is_refused(&p, &first, "\"pid\"");
    // status works meanwhile, from the run's event log
    let status = p.expflow(&["status"]);
    assert_eq!(status.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&status.stdout).contains("held by"));
    assert!(first.wait().unwrap().success());

    // In a workspace that exists, a run opens it while the pipeline compiles and names the
    // pipeline in the holder once it is known.
    let mut third = hold_in_background(&p, "again");
    second_run_is_refused(&p, &third, "\"pipeline\": \"hold\"");
    assert!(third.wait().unwrap().success());
}

#[test]
fn a_broken_pipeline_in_an_existing_workspace_is_reported_and_leaves_it_free() {
    let p = Project::new();
    let good = "pipeline: fix\nnodes:\n  a:\n    op: command\n    out: {o: file}\n    params:\n      run: \"echo > ${out.o}\"\n";
    p.write("pipe.yaml", good);
    p.run("pipe.yaml", &[]).expect_code(0);
    p.write(
        "pipe.yaml",
        "pipeline: fix\nnodes:\n  a:\n    op: no.such.op\n",
    );
    let broken = p.expflow(&["run", "pipe.yaml"]);
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert_eq!(broken.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no.such.op"), "{stderr}");
    assert!(!p.path(".expflow/holder.json").exists());
    p.write("pipe.yaml", good);
    let r = p.run("pipe.yaml", &[]);
    r.expect_code(0);
    assert_eq!(r.cached(), names(&["a"]));
}

#[test]
fn a_command_dies_with_a_run_killed_with_sigkill() {
    let p = Project::new();
    p.write(
        "pipe.yaml",
        "pipeline: orphan\nnodes:\n  a:\n    op: command\n    out: {o: file}\n    params:\n      run: \"exec sleep 60\"\n",
    );
    let mut cmd = Command::new(expflow_bin());
    cmd.args(["run", "pipe.yaml"])
        .current_dir(p.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    in_new_session(&mut cmd);
    let mut run = cmd.spawn().unwrap();
    let sid = run.id() as i32;
    let sleeping = |sid| {
        session_members(sid)
            .into_iter()
            .filter(|(_, name)| name == "sleep")
            .map(|(pid, _)| pid)
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while sleeping(sid).is_empty() {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Only expflow is killed, as the OOM killer or `kill -9 PID` would.
    run.kill().unwrap();
    run.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = sleeping(sid);
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            for pid in &left {
                // SAFETY: kill only sends a signal, to the test's own leftover.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            panic!("the command {left:?} outlived the killed run");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
