//! `outputs:` writes only where the user meant, and never replaces what expflow did not
//! write: destinations are checked when the pipeline compiles, and what is on disk before
//! any node executes.

use std::path::Path;
use std::process::Command;

fn expflow(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_expflow"))
        .args(args)
        .current_dir(dir)
        .env_remove("EXPFLOW_LOG")
        .output()
        .expect("run expflow");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A node with a file port and a directory port, and a marker file (an absolute path given
/// with `--set marker=...`) that it appends to whenever it executes.
const NODE: &str = r#"nodes:
  a:
    op: command
    out: {o: file, d: dir}
    params:
      run: "echo ran >> ${params.marker}; echo ${params.text} > ${out.o}; mkdir -p ${out.d}/sub; echo ${params.text} > ${out.d}/sub/f"
"#;

fn pipeline(outputs: &str) -> String {
    format!("pipeline: p\nparams: {{text: one, marker: none}}\n{NODE}outputs:\n{outputs}")
}

/// Runs `expflow ARGS... --set marker=MARKER` in `proj`.
fn run(proj: &Path, marker: &Path, args: &[&str]) -> (i32, String) {
    let set = format!("marker={}", marker.display());
    let mut all = args.to_vec();
    all.extend(["--set", &set]);
    let (code, _, stderr) = expflow(proj, &all);
    (code, stderr)
}

fn runs(proj: &Path) -> usize {
    std::fs::read_dir(proj.join(".expflow/runs")).map_or(0, |d| d.count())
}

#[test]
fn a_destination_outside_the_pipeline_directory_is_refused_and_nothing_is_touched() {
    let root = tempfile::tempdir().unwrap();
    let proj = root.path().join("proj");
    let precious = root.path().join("precious");
    write(&precious.join("thesis.tex"), "years of work\n");
    write(&proj.join("p.yaml"), &pipeline("  ../precious: a.d\n"));
    let marker = root.path().join("marker");
    for cmd in ["plan", "run"] {
        let (code, stderr) = run(&proj, &marker, &[cmd, "p.yaml"]);
        assert_eq!(code, 2, "{cmd}: {stderr}");
        insta::assert_snapshot!(format!("parent_{cmd}"), stderr);
    }
    assert_eq!(read(&precious.join("thesis.tex")), "years of work\n");
    assert_eq!(std::fs::read_dir(&precious).unwrap().count(), 1);
    assert!(!marker.exists(), "no node ran");
    assert!(
        !proj.join(".expflow").exists(),
        "the workspace was not even opened"
    );
}

#[test]
fn every_unsafe_destination_is_refused_at_its_key() {
    let root = tempfile::tempdir().unwrap();
    let proj = root.path().join("proj");
    write(&proj.join("data/raw.txt"), "input\n");
    let outputs = r#"  ../precious: a.d
  /etc/expflow-never: a.o
  .: a.d
  "": a.o
  ./.expflow/x: a.o
  ~/x: a.o
  data/raw.txt: a.o
  data/raw.txt/inner: a.o
  data: a.d
  p.yaml: a.o
  results: a.d
  results/sub/x: a.o
  results/./: a.d
  fine/one.txt: a.o
"#;
    let text = pipeline(outputs).replace("nodes:\n", "inputs:\n  raw: data/raw.txt\nnodes:\n");
    write(&proj.join("p.yaml"), &text);
    let marker = root.path().join("marker");
    let (code, stderr) = run(&proj, &marker, &["run", "p.yaml"]);
    assert_eq!(code, 2, "{stderr}");
    insta::assert_snapshot!(stderr);
    // One error per refused destination, none for the good one.
    assert!(stderr.contains("has 12 problems"), "{stderr}");
    assert!(!stderr.contains("fine/one.txt"), "{stderr}");
    assert_eq!(read(&proj.join("data/raw.txt")), "input\n");
    assert!(!marker.exists(), "no node ran");
}

#[test]
fn a_destination_reached_through_a_link_to_an_input_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let proj = root.path().join("proj");
    write(&proj.join("data/raw.txt"), "input\n");
    std::os::unix::fs::symlink(proj.join("data"), proj.join("linked")).unwrap();
    let text = pipeline("  linked/raw.txt: a.o\n")
        .replace("nodes:\n", "inputs:\n  raw: data/raw.txt\nnodes:\n");
    write(&proj.join("p.yaml"), &text);
    let (code, stderr) = run(&proj, &root.path().join("m"), &["plan", "p.yaml"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("output `linked/raw.txt` is the input `raw` (data/raw.txt)"),
        "{stderr}"
    );
}

#[test]
fn a_user_file_at_a_destination_stops_the_run_until_forced() {
    let root = tempfile::tempdir().unwrap();
    let proj = root.path().join("proj");
    let marker = root.path().join("marker");
    write(
        &proj.join("p.yaml"),
        &pipeline("  results/out.txt: a.o\n  results/tree: a.d\n"),
    );
    write(&proj.join("results/out.txt"), "mine\n");
    write(&proj.join("results/tree/notes.md"), "my notes\n");

    let (code, stderr) = run(&proj, &marker, &["run", "p.yaml"]);
    assert_eq!(code, 2, "{stderr}");
    insta::assert_snapshot!("user_files", stderr);
    assert!(!marker.exists(), "no node executed");
    assert_eq!(runs(&proj), 0, "no run was started");
    assert_eq!(read(&proj.join("results/out.txt")), "mine\n");
    assert_eq!(read(&proj.join("results/tree/notes.md")), "my notes\n");

    // Deliberately: --force-outputs replaces them.
    let (code, stderr) = run(&proj, &marker, &["run", "p.yaml", "--force-outputs"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(read(&marker), "ran\n");
    assert_eq!(read(&proj.join("results/out.txt")), "one\n");
    assert_eq!(read(&proj.join("results/tree/sub/f")), "one\n");
    assert!(!proj.join("results/tree/notes.md").exists());
    assert_eq!(leftovers(&proj.join("results")), Vec::<String>::new());

    // Now they are expflow's: a plain run is fine, and executes nothing.
    let (code, stderr) = run(&proj, &marker, &["run", "p.yaml"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(read(&marker), "ran\n");
}

#[test]
fn rerunning_replaces_what_expflow_wrote_and_refuses_user_edits() {
    let root = tempfile::tempdir().unwrap();
    let proj = root.path().join("proj");
    let marker = root.path().join("marker");
    write(
        &proj.join("p.yaml"),
        &pipeline("  results/out.txt: a.o\n  results/tree: a.d\n"),
    );
    let (code, stderr) = run(&proj, &marker, &["run", "p.yaml"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(read(&proj.join("results/out.txt")), "one\n");
    assert_eq!(read(&proj.join("results/tree/sub/f")), "one\n");
    let manifest = read(&proj.join(".expflow/materialized.json"));
    assert!(manifest.contains("\"results/out.txt\""), "{manifest}");
    assert!(manifest.contains("\"results/tree\""), "{manifest}");

    // A re-run that changes nothing leaves the manifest file as it is (not rewritten).
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let manifest_path = proj.join(".expflow/materialized.json");
    let before = inode(&manifest_path);
    let (code, stderr) = run(&proj, &marker, &["run", "p.yaml"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(inode(&manifest_path), before, "the manifest was replaced");
    assert_eq!(read(&manifest_path), manifest);

    // A new value replaces both (the file and the directory port).
    let (code, stderr) = run(&proj, &marker, &["run", "p.yaml", "--set", "text=two"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(read(&proj.join("results/out.txt")), "two\n");
    assert_eq!(read(&proj.join("results/tree/sub/f")), "two\n");
    assert_eq!(leftovers(&proj.join("results")), Vec::<String>::new());

    // The user edits the materialised file, and adds a file to the directory.
    write(&proj.join("results/out.txt"), "edited by hand\n");
    write(&proj.join("results/tree/extra.txt"), "mine\n");
    let before = read(&marker);
    let (code, stderr) = run(&proj, &marker, &["run", "p.yaml", "--set", "text=three"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("results/out.txt: changed since expflow wrote it"),
        "{stderr}"
    );
    assert!(
        stderr.contains("results/tree: changed since expflow wrote it"),
        "{stderr}"
    );
    assert_eq!(read(&marker), before, "no node executed");
    assert_eq!(read(&proj.join("results/out.txt")), "edited by hand\n");
    assert_eq!(read(&proj.join("results/tree/extra.txt")), "mine\n");

    // Removing the edits (or moving them away) makes the run go ahead.
    std::fs::remove_file(proj.join("results/out.txt")).unwrap();
    std::fs::remove_file(proj.join("results/tree/extra.txt")).unwrap();
    let (code, stderr) = run(&proj, &marker, &["run", "p.yaml", "--set", "text=three"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(read(&proj.join("results/out.txt")), "three\n");
    assert_eq!(read(&proj.join("results/tree/sub/f")), "three\n");
}

#[test]
fn a_destination_inside_an_explicit_workspace_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let proj = root.path().join("proj");
    let marker = root.path().join("marker");
    write(&proj.join("p.yaml"), &pipeline("  state/out.txt: a.o\n"));
    let (code, stderr) = run(
        &proj,
        &marker,
        &["run", "p.yaml", "--workspace", "state", "--force-outputs"],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("output `state/out.txt` is inside the workspace"),
        "{stderr}"
    );
    assert!(!marker.exists());
}

/// Hidden names expflow builds beside destinations; none may survive a run.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".expflow-"))
        .collect()
}
