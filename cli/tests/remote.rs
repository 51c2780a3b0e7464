//! Snapshot tests of the shared cache commands' output and usage errors (the transfers
//! themselves are tested against a real S3 server in tests/tests/remote.rs).

use std::path::Path;
use std::process::Command;

fn expflow(dir: &Path, cfg: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_expflow"))
        .args(args)
        .current_dir(dir)
        .env("EXPFLOW_CONFIG_DIR", cfg)
        .output()
        .expect("run expflow");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn remotes_are_added_listed_and_removed_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tempfile::tempdir().unwrap();
    let ws = ["--workspace", ".expflow"];
    let mut transcript = String::new();
    for args in [
        &[
            "remote",
            "add",
            "team",
            "s3://lab-cache/expflow",
            "--endpoint",
            "http://127.0.0.1:8333",
        ][..],
        &["remote", "add", "disk", "file:///srv/expflow-cache"],
        &["remote", "list"],
        &["remote", "add", "team", "s3://other"],
        &["remote", "add", "leak", "s3://AKIAXXXX:secret@lab-cache"],
        &["remote", "add", "rel", "file://cache"],
        &["remote", "add", "gcs", "gs://bucket"],
        &["remote", "add", "Bad Name", "s3://b"],
        &["remote", "remove", "disk"],
        &["remote", "remove", "disk"],
        &["push", "--remote", "nowhere"],
        &["verify", "--remote", "nowhere"],
    ] {
        let full: Vec<&str> = ws.iter().chain(args).copied().collect();
        let (code, text) = expflow(dir.path(), cfg.path(), &full);
        transcript.push_str(&format!(
            "$ expflow {}\n[exit {code}]\n{text}\n",
            args.join(" ")
        ));
    }
    insta::assert_snapshot!(transcript);
}

#[test]
fn keys_are_generated_once_and_team_keys_are_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (me, mate) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (code, text) = expflow(dir.path(), me.path(), &["keys", "generate"]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = expflow(dir.path(), me.path(), &["keys", "generate"]);
    assert_eq!(code, 1);
    assert!(text.contains("a key exists already"), "{text}");
    expflow(dir.path(), mate.path(), &["keys", "generate"]);
    let mate_pub = mate.path().join("signing.pub");
    let (code, text) = expflow(
        dir.path(),
        me.path(),
        &["keys", "trust", mate_pub.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{text}");
    let (_, listed) = expflow(dir.path(), me.path(), &["keys", "list", "--json"]);
    let keys: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys.iter().filter(|k| k["own"] == true).count(), 1);
    let pub_line = std::fs::read_to_string(&mate_pub).unwrap();
    assert!(
        keys.iter()
            .any(|k| pub_line.contains(k["key"].as_str().unwrap()) && k["own"] == false)
    );
}
