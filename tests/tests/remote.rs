//! The shared cache: two workspaces sharing a remote on a real S3 server (started by
//! `.ci/run`, which exports `EXPFLOW_TEST_S3_ENDPOINT`) and on a directory (`file://`);
//! signed records (untrusted and tampered ones are ignored with a warning naming the
//! signer); a push killed mid-way leaves no record.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use expflow_tests::{Project, blobs, expflow_bin, names, s3};
use serde_json::Value;

/// A project with the pipeline, its input, a user config dir and the remote `team`.
struct Side {
    p: Project,
    cfg: PathBuf,
    envs: Vec<(String, String)>,
}

impl Side {
    fn new(cfg: &Path, url: &str, endpoint: Option<&str>) -> Side {
        let p = Project::new();
        p.write("share.yaml", &s3::chain_pipeline("share"));
        p.write("data.txt", "alpha\nbeta\n");
        let envs = vec![
            ("EXPFLOW_CONFIG_DIR".into(), cfg.display().to_string()),
            ("AWS_ACCESS_KEY_ID".into(), "test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
        ];
        let side = Side {
            p,
            cfg: cfg.to_path_buf(),
            envs,
        };
        let mut args = vec!["--workspace", ".expflow", "remote", "add", "team", url];
        if let Some(ep) = endpoint {
            args.extend(["--endpoint", ep]);
        }
        side.ok(&args);
        side
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.envs
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect()
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        self.p.expflow_with_env(args, &self.env())
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(
            out.status.success(),
            "expflow {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn run(&self, extra: &[&str]) -> expflow_tests::RunResult {
        self.p.run_with_env("share.yaml", extra, &self.env())
    }

    fn ws(&self) -> PathBuf {
        self.p.path(".expflow")
    }

    /// The user's own key id.
    fn key_id(&self) -> String {
        let keys: Value = serde_json::from_str(&self.ok(&["keys", "list", "--json"])).unwrap();
        keys.as_array()
            .unwrap()
            .iter()
            .find(|k| k["own"] == true)
            .expect("an own key")["id"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

fn list(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Digests of the outputs each node's execution produced, from the run's events.
fn outputs_of(r: &expflow_tests::RunResult, node: &str) -> Vec<String> {
    r.events
        .iter()
        .filter(|e| e["event"] == "node_executed" && e["node"] == node)
        .flat_map(|e| {
            e["outputs"]
                .as_object()
                .unwrap()
                .values()
                .map(|d| d.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn has_blob(ws: &Path, digest: &str) -> bool {
    blobs(ws)
        .iter()
        .any(|b| b.file_name().is_some_and(|n| n == digest))
}

/// The second workspace executes nothing, downloads only what `c` needs, and can pull the
/// rest; both cases (S3 and file://) share the body.
fn two_workspaces_share(url: &str, endpoint: Option<&str>) {
    let cfg = tempfile::tempdir().unwrap();
    let first = Side::new(cfg.path(), url, endpoint);
    let r1 = first.run(&[]);
    r1.expect_code(0);
    assert_eq!(list(&r1.summary["executed"]), names(&["a", "b", "c"]));
    let pushed = first.ok(&["--workspace", ".expflow", "push"]);
    assert!(pushed.contains("3 records published"), "{pushed}");
    // A second push publishes nothing new.
    let again = first.ok(&["--workspace", ".expflow", "push", "--json"]);
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["records_published"], 0);
    assert_eq!(again["records_present"], 3);
    assert_eq!(again["blobs_uploaded"], 0);

    let second = Side::new(cfg.path(), url, endpoint);
    let r2 = second.run(&["--remote", "team"]);
    r2.expect_code(0);
    assert_eq!(list(&r2.summary["executed"]), Vec::<String>::new());
    assert_eq!(list(&r2.summary["remote"]), names(&["a", "b", "c"]));
    assert_eq!(list(&r2.summary["fetched"]), names(&["c"]));
    assert_eq!(second.p.read("out/c.txt"), first.p.read("out/c.txt"));
    for node in ["a", "b"] {
        for d in outputs_of(&r1, node) {
            assert!(
                !has_blob(&second.ws(), &d),
                "{node}'s output {d} was downloaded though nothing needed it"
            );
        }
    }
    for d in outputs_of(&r1, "c") {
        assert!(has_blob(&second.ws(), &d), "c's output {d} is missing");
    }
    // The downloaded blobs and record pass a local verify.
    second.ok(&["--workspace", ".expflow", "verify"]);
    // The remote is whole: every record's blobs exist and all re-hash.
    let v = second.ok(&[
        "--workspace",
        ".expflow",
        "verify",
        "--remote",
        "team",
        "--fraction",
        "1",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["records_checked"], 3);
    assert_eq!(v["blobs_rehashed"], v["blobs_referenced"]);
    // `pull` of the pipeline brings the rest; afterwards a plain run is all local hits.
    let pulled = second.ok(&["pull", "share.yaml", "--remote", "team", "--json"]);
    let pulled: Value = serde_json::from_str(&pulled).unwrap();
    assert_eq!(list(&pulled["fetched"]), names(&["a", "b"]));
    for d in outputs_of(&r1, "a").iter().chain(&outputs_of(&r1, "b")) {
        assert!(has_blob(&second.ws(), d), "pulled output {d} is missing");
    }
    let r3 = second.run(&[]);
    r3.expect_code(0);
    assert_eq!(list(&r3.summary["cached"]), names(&["a", "b", "c"]));
    assert_eq!(list(&r3.summary["remote"]), Vec::<String>::new());
}

#[test]
fn a_second_workspace_reuses_an_s3_remote_and_downloads_only_what_it_needs() {
    let Some(ep) = s3::endpoint() else { return };
    two_workspaces_share(
        &format!("s3://{}/{}", s3::BUCKET, s3::unique("share")),
        Some(&ep),
    );
}

#[test]
fn a_file_remote_works_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    two_workspaces_share(
        &format!("file://{}", dir.path().join("cache").display()),
        None,
    );
}

#[test]
fn untrusted_and_tampered_records_are_ignored_with_a_warning_naming_the_signer() {
    let remote_dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", remote_dir.path().display());
    let (alice_cfg, bob_cfg) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alice = Side::new(alice_cfg.path(), &url, None);
    alice.run(&[]).expect_code(0);
    alice.ok(&["--workspace", ".expflow", "push"]);
    let alice_id = alice.key_id();

    // Bob does not trust Alice yet: everything executes, and he is told whose records
    // were ignored.
    let bob = Side::new(bob_cfg.path(), &url, None);
    bob.ok(&["keys", "generate"]);
    let r = bob.run(&["--remote", "team"]);
    r.expect_code(0);
    assert_eq!(list(&r.summary["executed"]), names(&["a", "b", "c"]));
    assert!(
        r.stderr.contains(&alice_id) && r.stderr.contains("does not trust"),
        "{}",
        r.stderr
    );

    // Once he trusts her key, a fresh workspace of his executes nothing.
    bob.ok(&[
        "keys",
        "trust",
        &alice.cfg.join("signing.pub").display().to_string(),
    ]);
    let bob2 = Side::new(bob_cfg.path(), &url, None);
    let r = bob2.run(&["--remote", "team"]);
    r.expect_code(0);
    assert_eq!(list(&r.summary["executed"]), Vec::<String>::new());

    // Someone edits Alice's record of `c` on the remote (its host, say): the signature no
    // longer verifies, and the record is ignored.
    let c_key = alice_record_key(&alice, "c");
    let path = remote_dir
        .path()
        .join("records")
        .join(&c_key)
        .join(format!("{alice_id}.json"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut env: Value = serde_json::from_str(&text).unwrap();
    let mut rec: Value = serde_json::from_str(env["record"].as_str().unwrap()).unwrap();
    rec["host"] = Value::String("elsewhere".into());
    env["record"] = Value::String(rec.to_string());
    std::fs::write(&path, env.to_string()).unwrap();
    let bob3 = Side::new(bob_cfg.path(), &url, None);
    let r = bob3.run(&["--remote", "team"]);
    r.expect_code(0);
    assert_eq!(list(&r.summary["executed"]), names(&["c"]));
    assert!(
        r.stderr.contains("does not verify") && r.stderr.contains(&alice_id),
        "{}",
        r.stderr
    );
    let v = bob3.cmd(&["--workspace", ".expflow", "verify", "--remote", "team"]);
    assert_eq!(
        v.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
}

/// The key of `node`'s record in `side`'s latest run.
fn alice_record_key(side: &Side, node: &str) -> String {
    let log = std::fs::read_dir(side.ws().join("runs")).unwrap();
    for run in log.flatten() {
        for e in expflow_tests::read_events(&run.path().join("events.jsonl")) {
            if e["event"] == "node_executed" && e["node"] == node {
                return e["key"].as_str().unwrap().to_string();
            }
        }
    }
    panic!("no execution of {node}");
}

/// A pipeline with one large output, so that a push takes long enough to be killed while
/// its blobs are on their way.
const BIG: &str = r#"
pipeline: big
nodes:
  small:
    op: command
    out: {f: file}
    params: {run: "echo small > ${out.f}"}
  big:
    op: command
    out: {f: file}
    params: {run: "head -c 96M /dev/urandom > ${out.f}"}
"#;

#[test]
fn a_push_killed_mid_way_leaves_no_record_and_a_second_push_completes() {
    let Some(ep) = s3::endpoint() else { return };
    let prefix = s3::unique("kill");
    let url = format!("s3://{}/{prefix}", s3::BUCKET);
    let cfg = tempfile::tempdir().unwrap();
    let side = Side::new(cfg.path(), &url, Some(&ep));
    side.p.write("big.yaml", BIG);
    side.p
        .run_with_env("big.yaml", &[], &side.env())
        .expect_code(0);
    side.ok(&["keys", "generate"]);
    let mut child = std::process::Command::new(expflow_bin())
        .args(["--workspace", ".expflow", "push"])
        .current_dir(side.p.dir.path())
        .envs(side.env())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Small blobs go first: as soon as one is there, the large one is on its way.
    let started = Instant::now();
    while s3::keys(&ep, &format!("{prefix}/blobs/")).is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the push ended before it could be killed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no blob appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        s3::keys(&ep, &format!("{prefix}/records/")).len(),
        0,
        "a killed push published a record"
    );
    // Pushing again completes, and a second workspace then executes nothing.
    let out = side.ok(&["--workspace", ".expflow", "push"]);
    assert!(out.contains("2 records published"), "{out}");
    assert_eq!(s3::keys(&ep, &format!("{prefix}/records/")).len(), 2);
    let other = Side::new(cfg.path(), &url, Some(&ep));
    other.p.write("big.yaml", BIG);
    let r = other
        .p
        .run_with_env("big.yaml", &["--remote", "team"], &other.env());
    r.expect_code(0);
    assert_eq!(list(&r.summary["executed"]), Vec::<String>::new());
    assert_eq!(list(&r.summary["fetched"]), names(&["big", "small"]));
}
