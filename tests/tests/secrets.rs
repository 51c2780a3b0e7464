//! Secrets end to end with the real binary: a pipeline declares `secrets:`, a `command` uses
//! the secret in `run` and in `env`, and an `infer.chat` node sends it as the API key to
//! `expflow serve --api-key` (which refuses requests without it). Afterwards no file in the
//! workspace or the materialised outputs, and nothing `run`, `explain`, `lineage`, `log`,
//! `status` or `show` prints, contains the value; the node log shows `***` where a program
//! printed it. The key depends on the secret's name only; an unset secret stops the run
//! before any node executes.

use std::path::{Path, PathBuf};

use expflow_tests::Project;
use expflow_tests::server::{Server, fixture, http};
use serde_json::Value;

const VAR: &str = "EXPFLOW_E2E_TOKEN";
const VALUE: &str = "sk-e2e-7Qz9-never-stored-31415";

const PIPE: &str = r#"
pipeline: secretive
secrets: [EXPFLOW_E2E_TOKEN]
params:
  url: URL
  note: one
inputs:
  prompts: prompts.jsonl
nodes:
  shell:
    op: command
    out: {n: file, check: file}
    params:
      run: >-
        printf '%s' ${secrets.EXPFLOW_E2E_TOKEN} | wc -c > ${out.n};
        echo "env says $EXPFLOW_E2E_TOKEN";
        echo "auth: $AUTH" >&2;
        test "$AUTH" = "Bearer $EXPFLOW_E2E_TOKEN" && echo ${params.note} > ${out.check}
      env: {AUTH: "Bearer ${secrets.EXPFLOW_E2E_TOKEN}"}
  prompts:
    op: load
    in: {src: inputs.prompts}
  chat:
    op: infer.chat
    in: {prompts: prompts.table}
    params:
      backend: openai
      base_url: ${params.url}
      model: tiny
      max_tokens: 4
      api_key: ${secrets.EXPFLOW_E2E_TOKEN}
  answers:
    op: export
    in: {table: chat.table}
    params: {format: jsonl}
outputs:
  out/n.txt: shell.n
  out/check.txt: shell.check
  out/answers.jsonl: answers.file
"#;

const FAILING: &str = r#"
pipeline: leaky
secrets: [EXPFLOW_E2E_TOKEN]
nodes:
  oops:
    op: command
    out: {x: file}
    params:
      run: "echo \"the token is ${secrets.EXPFLOW_E2E_TOKEN}\" >&2; exit 3"
"#;

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Panics naming every file under `dir` that holds `VALUE`; returns how many were read.
fn assert_no_file_holds_the_value(dir: &Path) -> usize {
    let all = files(dir);
    let leaks: Vec<&PathBuf> = all
        .iter()
        .filter(|p| contains(&std::fs::read(p).unwrap_or_default(), VALUE))
        .collect();
    assert!(leaks.is_empty(), "the secret value is in {leaks:?}");
    all.len()
}

fn stdout_and_stderr(p: &Project, args: &[&str]) -> (i32, String) {
    let out = p.expflow_with_env(args, &[(VAR, VALUE)]);
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn a_secret_reaches_the_command_and_the_server_and_nothing_else() {
    let server = Server::start(
        &fixture("tiny"),
        "tiny",
        0,
        &[("EXPFLOW_SERVE_API_KEY", VALUE)],
    );
    let (status, _) = server.http("GET", "/v1/models", None);
    assert_eq!(status, 401, "the server wants the key");
    let (status, _) = http(&server.addr, "GET", "/v1/models", None, Some(VALUE));
    assert_eq!(status, 200);

    let p = Project::new();
    p.write("pipe.yaml", &PIPE.replace("URL", &server.base_url()));
    p.write(
        "prompts.jsonl",
        "{\"user\": \"hello\"}\n{\"user\": \"add yeast\"}\n",
    );

    // Declared but not set: exit 2 before any node executes; `plan` needs no secret.
    let unset = p.run("pipe.yaml", &[]);
    unset.expect_code(2);
    assert!(
        unset.stderr.contains(&format!("`{VAR}` is not set")) && unset.stderr.contains("export"),
        "{}",
        unset.stderr
    );
    assert!(
        !p.path(".expflow/runs").exists()
            || std::fs::read_dir(p.path(".expflow/runs")).unwrap().count() == 0,
        "no run was started"
    );
    let plan = p.expflow(&["plan", "pipe.yaml"]);
    assert_eq!(plan.status.code(), Some(0), "{plan:?}");

    // The run: the command sees the value in `run` and `env`, the server gets it as the key.
    let first = p.run_with_env("pipe.yaml", &[], &[(VAR, VALUE)]);
    first.expect_code(0);
    assert_eq!(
        p.read("out/n.txt").trim(),
        VALUE.len().to_string(),
        "`run` had the value"
    );
    assert_eq!(p.read("out/check.txt").trim(), "one", "`env` had the value");
    assert_eq!(p.read("out/answers.jsonl").lines().count(), 2);
    assert!(!contains(first.stdout.as_bytes(), VALUE));
    assert!(!contains(first.stderr.as_bytes(), VALUE));

    // What the command printed is in its log, masked.
    let (code, log) = stdout_and_stderr(&p, &["log", "shell"]);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("env says ***"), "{log}");
    assert!(log.contains("auth: Bearer ***"), "{log}");
    assert!(
        log.contains("\"$EXPFLOW_SECRET_EXPFLOW_E2E_TOKEN\""),
        "the logged command names the variable: {log}"
    );

    // Inspection commands show the placeholder, never the value.
    let (_, explain) = stdout_and_stderr(&p, &["explain", "pipe.yaml", "chat", "--json"]);
    assert!(
        explain.contains("${secrets.EXPFLOW_E2E_TOKEN}"),
        "{explain}"
    );
    for args in [
        &["explain", "pipe.yaml", "shell"][..],
        &["explain", "pipe.yaml", "chat"],
        &["lineage", "answers"],
        &["lineage", "shell", "--json"],
        &["log"],
        &["log", "--json"],
        &["log", "chat"],
        &["status", "--json"],
        &["show", "shell.n"],
        &["show", "chat.table"],
    ] {
        let (code, text) = stdout_and_stderr(&p, args);
        assert_eq!(code, 0, "{args:?}: {text}");
        assert!(!text.contains(VALUE), "{args:?} printed the secret: {text}");
    }

    // The records name the secret used, and only its name.
    let journal = p.read(".expflow/journal.jsonl");
    assert!(journal.contains(&format!("\"{VAR}\"")), "{journal}");

    // Another value, the same name: the same keys, nothing re-runs.
    let again = p.run_with_env("pipe.yaml", &[], &[(VAR, "another-value-entirely")]);
    again.expect_code(0);
    assert!(again.executed().is_empty(), "{:?}", again.executed());

    // A command that prints the secret and fails: the error (terminal, events) is masked.
    p.write("fail.yaml", FAILING);
    let failed = p.run_with_env("fail.yaml", &[], &[(VAR, VALUE)]);
    failed.expect_code(1);
    assert!(!contains(failed.stdout.as_bytes(), VALUE));
    assert!(!contains(failed.stderr.as_bytes(), VALUE));
    // Without `--json`, the terminal gets the error with the log's last lines.
    let plain = p.expflow_with_env(&["run", "fail.yaml"], &[(VAR, VALUE)]);
    assert_eq!(plain.status.code(), Some(1));
    let terminal = String::from_utf8_lossy(&plain.stderr).into_owned()
        + &String::from_utf8_lossy(&plain.stdout);
    assert!(terminal.contains("the token is ***"), "{terminal}");
    assert!(!terminal.contains(VALUE), "{terminal}");
    let error = failed
        .events
        .iter()
        .find(|e| e["event"] == "node_failed")
        .map(|e| e["error"].clone())
        .unwrap_or(Value::Null);
    assert!(
        error
            .as_str()
            .is_some_and(|e| e.contains("the token is ***")),
        "{error}"
    );

    // Nothing expflow wrote anywhere holds the value: CAS blobs, journal, database, events,
    // logs, outputs.
    let n = assert_no_file_holds_the_value(p.dir.path());
    assert!(n > 20, "the workspace was searched ({n} files)");
}
