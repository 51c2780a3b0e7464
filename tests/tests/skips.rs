//! A skip is visible in `cargo test`'s output, logged for `.ci/run`'s summary, and a failure
//! under `CI=true` when `.ci/run` provides the missing thing. Each case runs the probe test
//! below in a child process of this test binary, with its own environment.

use std::process::{Command, Output};

/// Skips when the parent test asks it to (`EXPFLOW_SKIP_PROBE`), passes otherwise.
#[test]
fn probe() {
    match std::env::var("EXPFLOW_SKIP_PROBE").as_deref() {
        Ok("provided") => expflow_tests::skip::skip_or_fail("ffmpeg is not installed (probe)"),
        Ok("optional") => expflow_tests::skip::skip("vLLM is not installed (probe)"),
        _ => {}
    }
}

fn run_probe(kind: &str, ci: Option<&str>, log: &std::path::Path) -> Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "probe", "--test-threads", "1"])
        .env("EXPFLOW_SKIP_PROBE", kind)
        .env("EXPFLOW_SKIP_LOG", log)
        .env_remove("CI");
    if let Some(ci) = ci {
        cmd.env("CI", ci);
    }
    cmd.output().unwrap()
}

#[test]
fn a_skip_is_shown_and_logged_outside_ci() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("skips.log");
    for kind in ["provided", "optional"] {
        let out = run_probe(kind, None, &log);
        assert!(out.status.success(), "{out:?}");
        // Without --nocapture: the harness would hide `eprintln!` of a passing test.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("SKIPPED: skips::probe: "),
            "stderr: {stderr}"
        );
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        logged,
        "SKIPPED: skips::probe: ffmpeg is not installed (probe)\n\
         SKIPPED: skips::probe: vLLM is not installed (probe)\n"
    );
}

#[test]
fn under_ci_a_provided_dependency_fails_and_an_optional_one_skips() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("skips.log");
    let out = run_probe("provided", Some("true"), &log);
    assert!(!out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("skips::probe: ffmpeg is not installed (probe). `.ci/run` provides this"),
        "stdout: {stdout}"
    );
    assert!(!log.exists(), "a failure is not logged as a skip");

    let out = run_probe("optional", Some("true"), &log);
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::read_to_string(&log).unwrap().contains("vLLM"));
}
