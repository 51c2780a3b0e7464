//! `command`: run a shell command that reads the node's inputs and writes its outputs.
//!
//! Inputs may have any names and types; outputs are declared by the node's `out:` map. In
//! `run`, `${in.PORT}` and `${out.PORT}` expand to the absolute, shell-quoted paths of the
//! node's private copy of the input artifact (never the stored blob: see
//! [`Context::input_copies`]) and of the output slot. `${params.…}` and `${matrix.…}` have already been
//! expanded by the engine, which also turns the escape `$${` into `${`; so any other `${…}`
//! left in `run` (such as `${HOME}`) is the user's shell text and reaches the shell as
//! written. The command runs as `SHELL -c RUN` in the node's scratch directory with `env`
//! added to the environment; its stdout and stderr go to the node log.
//!
//! Secrets (`secrets:` in the pipeline file): `${secrets.NAME}` in `run` expands to
//! `"$EXPFLOW_SECRET_NAME"`, a quoted reference to a variable that holds the value in the
//! command's environment, so the value is in no command line (`ps`), log line or error; in
//! an `env` value it is replaced by the value itself. The node's key keeps the placeholder.
//!
//! A command that modified, truncated, renamed or deleted one of its inputs fails the node
//! with an error naming the port (the stored input is unharmed). A non-zero exit fails the
//! node with the exit code and the last lines of the log. After a successful exit every
//! declared output must exist: a file for file-like types (a `table`
//! must be Parquet, `metrics` must be JSON), the directory (created empty beforehand) for
//! directory types.
//!
//! The operator is declared deterministic: the user asserts that the command is, and
//! `expflow audit` re-runs it and compares digests to catch one that is not.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command as Process;

use expflow_engine::interp::{InterpError, Reference, expand, references, shell_quote};
use expflow_engine::{
    Context, Determinism, InputChange, InputCopies, OpError, Operator, ParamKind, ParamSpec,
    PortType, Ports, Resources, Signature,
};
use serde_json::{Map, Value, json};

use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct Command;

const KIND: &str = "command";
/// Lines of the node log quoted in the error of a failed command.
const LOG_TAIL_LINES: usize = 20;

struct Config {
    run: String,
    shell: String,
    env: BTreeMap<String, String>,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let run = protect_literals(p.str("run")?);
        if let Err(e) = references(&run) {
            return Err(interp_error(&run, e));
        }
        let shell = p.str("shell")?.to_string();
        if shell.is_empty() {
            return Err(OperatorError::param(
                KIND,
                "shell",
                "is empty; use e.g. sh or bash",
            ));
        }
        Ok(Config {
            run,
            shell,
            env: p.string_map("env")?,
        })
    }
}

/// Returns `run` with every `${` that does not open an `${in.…}`, `${out.…}` or
/// `${secrets.…}` reference escaped as `$${`, so that it reaches the shell as written (see
/// the module docs). An existing `$${` escape is kept as it is.
fn protect_literals(run: &str) -> String {
    let mut out = String::with_capacity(run.len() + 8);
    let mut rest = run;
    while let Some(i) = rest.find("${") {
        let (before, after) = rest.split_at(i);
        out.push_str(before);
        let body = &after[2..];
        let escaped = before.ends_with('$');
        if escaped
            || body.starts_with("in.")
            || body.starts_with("out.")
            || body.starts_with("secrets.")
        {
            out.push_str("${");
        } else {
            out.push_str("$${");
        }
        rest = body;
    }
    out.push_str(rest);
    out
}

/// A bad `${in.…}`/`${out.…}` reference in (protected) `run`, quoted in the message.
fn interp_error(run: &str, e: InterpError) -> OperatorError {
    let tail = &run[e.offset..];
    let end = tail.find('}').map_or(tail.len(), |i| i + 1);
    let snippet: String = tail[..end].chars().take(60).collect();
    OperatorError::param(
        KIND,
        "run",
        format!("has a bad reference `{snippet}`: {}", e.message),
    )
}

/// The variable that holds secret `name` in a command's environment.
fn secret_var(name: &str) -> String {
    format!("EXPFLOW_SECRET_{name}")
}

/// The input ports `run` refers to.
fn input_ports(run: &str) -> Vec<String> {
    references(run)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.ns == "in")
        .map(|r| r.path)
        .collect()
}

/// `run` with `${in.PORT}` (the private copy in `copies`) and `${out.PORT}` replaced by
/// quoted paths, and `${secrets.NAME}` by a quoted variable reference, whose (variable,
/// value) pairs go into `env`.
fn expand_paths(
    ctx: &Context,
    copies: &InputCopies,
    run: &str,
    env: &mut BTreeMap<String, String>,
) -> Result<String> {
    let mut secret_problem = None;
    let resolve = |r: &Reference| -> Result<Option<Value>, InterpError> {
        let path = match r.ns.as_str() {
            "secrets" => {
                return match ctx.secret_value(&r.path) {
                    Ok(value) => {
                        let var = secret_var(&r.path);
                        env.insert(var.clone(), value);
                        Ok(Some(Value::String(format!("\"${var}\""))))
                    }
                    Err(e) => {
                        secret_problem = Some(e.to_string());
                        Ok(Some(Value::String(String::new())))
                    }
                };
            }
            "in" => copies.path(&r.path),
            "out" => ctx.outputs().get(&r.path).map(|o| o.path.as_path()),
            _ => {
                return Err(InterpError {
                    message: format!(
                        "`${{{}.{}}}` was not expanded before the command ran",
                        r.ns, r.path
                    ),
                    offset: r.start,
                });
            }
        };
        match path {
            Some(p) => {
                // The command runs in the scratch directory, so relative paths would break.
                let p = std::path::absolute(p).map_err(|e| InterpError {
                    message: format!("cannot make {} absolute: {e}", p.display()),
                    offset: r.start,
                })?;
                Ok(Some(Value::String(shell_quote(&p.to_string_lossy()))))
            }
            None => {
                let (side, known) = if r.ns == "in" {
                    ("input", ctx.inputs().keys().cloned().collect::<Vec<_>>())
                } else {
                    ("output", ctx.outputs().keys().cloned().collect::<Vec<_>>())
                };
                Err(InterpError {
                    message: format!(
                        "`${{{}.{}}}` names no {side} port of this node (ports: {})",
                        r.ns,
                        r.path,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                    offset: r.start,
                })
            }
        }
    };
    let expanded = match expand(run, resolve) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(e) => return Err(interp_error(run, e)),
    };
    match secret_problem {
        Some(p) => Err(OperatorError::param(KIND, "run", p)),
        None => Ok(expanded),
    }
}

/// Checks that output `port` was produced at `path` as its type requires.
fn check_output(port: &str, ty: PortType, path: &Path) -> Result<()> {
    let missing = |what: &str| {
        OperatorError::command(format!(
            "output `{port}` ({ty}) {what} at {}; write it to ${{out.{port}}}",
            path.display()
        ))
    };
    if ty.is_dir() {
        return if path.is_dir() {
            Ok(())
        } else {
            Err(missing("is not a directory"))
        };
    }
    if !path.is_file() {
        return Err(missing("was not written"));
    }
    let bytes = || std::fs::read(path).map_err(|e| OperatorError::io("cannot read", path, e));
    let problem = match ty {
        PortType::Table => {
            let b = bytes()?;
            (!(b.starts_with(b"PAR1") && b.ends_with(b"PAR1"))).then_some("is not a Parquet file")
        }
        PortType::Metrics => serde_json::from_slice::<Value>(&bytes()?)
            .is_err()
            .then_some("is not valid JSON"),
        _ => None,
    };
    problem.map_or(Ok(()), |p| Err(missing(p)))
}

/// The error for a command that changed inputs: one line per port, then what to do.
fn changed_inputs(node: &str, changes: &[InputChange], exit: Option<String>) -> String {
    let mut msg = String::new();
    for c in changes {
        msg.push_str(&format!(
            "command node `{node}` changed its input ${{in.{}}}: its copy {} {}\n",
            c.port,
            c.path.display(),
            c.what
        ));
    }
    if let Some(exit) = exit {
        msg.push_str(&format!("the command also {exit}\n"));
    }
    msg.push_str(
        "the stored input is unharmed and nothing was recorded; a command must not modify, \
         move or delete ${in.…} paths: copy the input first (`cp ${in.x} work.txt`) and change the copy",
    );
    msg
}

impl Operator for Command {
    /// Tables named under the node's `metrics:`: their numeric columns.
    fn read_series(
        &self,
        path: &std::path::Path,
    ) -> Option<Result<expflow_engine::Series, OpError>> {
        Some(crate::table_io::numeric_columns(path).map_err(OpError::from))
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Any,
            outputs: Ports::Declared,
            params: vec![
                ParamSpec::required(
                    "run",
                    ParamKind::String,
                    "the command; ${in.PORT} and ${out.PORT} expand to paths, ${secrets.NAME} to a variable holding the secret",
                )
                .takes_secrets(),
                ParamSpec::with_default(
                    "shell",
                    ParamKind::String,
                    json!("sh"),
                    "runs `SHELL -c RUN`",
                ),
                ParamSpec::with_default(
                    "env",
                    ParamKind::Map,
                    json!({}),
                    "extra environment variables (name to string value; ${secrets.NAME} allowed)",
                )
                .takes_secrets(),
            ],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let ports = input_ports(&cfg.run);
        let copies = ctx.input_copies(ports.iter().map(String::as_str))?;
        let mut env = BTreeMap::new();
        for (k, v) in &cfg.env {
            env.insert(k.clone(), ctx.reveal(v)?);
        }
        // The script names secrets by variable, so it can be logged and quoted in errors.
        let script = expand_paths(ctx, &copies, &cfg.run, &mut env)?;
        ctx.log(&format!("$ {script}"));
        tracing::debug!(node = ctx.node(), script = %script, "running command");
        let mut process = Process::new(&cfg.shell);
        process
            .arg("-c")
            .arg(&script)
            .current_dir(ctx.scratch())
            .envs(&env);
        let status = ctx.run_command(&mut process)?;
        let how = match status.code() {
            _ if status.success() => None,
            Some(code) => Some(format!("exited with code {code}")),
            None => {
                use std::os::unix::process::ExitStatusExt;
                Some(format!(
                    "was killed by signal {}",
                    status.signal().unwrap_or(0)
                ))
            }
        };
        let changes = copies.changes();
        if !changes.is_empty() {
            return Err(OperatorError::command(changed_inputs(ctx.node(), &changes, how)).into());
        }
        if let Some(how) = how {
            return Err(OperatorError::command(format!(
                "`{script}` {how}; last lines of the log:\n{}",
                ctx.log_tail(LOG_TAIL_LINES)
            ))
            .into());
        }
        for (port, out) in ctx.outputs() {
            check_output(port, out.ty, &out.path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{InputBytes, run_op};

    fn text_input<'a>(port: &'a str, text: &str) -> InputBytes<'a> {
        InputBytes {
            port,
            ty: PortType::File,
            bytes: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn expands_paths_and_writes_outputs() {
        let out = run_op(
            &Command,
            &[text_input("rows", "a\nb\nc\n")],
            json!({"run": "head -n 2 ${in.rows} > ${out.sample} && printf '%s' \"$GREETING\" > ${out.note}",
                   "env": {"GREETING": "hi there"}}),
            &[("sample", PortType::File), ("note", PortType::File)],
        )
        .unwrap();
        assert_eq!(out["sample"], b"a\nb\n");
        assert_eq!(out["note"], b"hi there");
    }

    #[test]
    fn runs_in_the_scratch_directory_and_fills_directory_outputs() {
        let out = run_op(
            &Command,
            &[],
            json!({"run": "touch here && ls > ${out.listing} && echo x > ${out.d}/f.txt"}),
            &[("listing", PortType::File), ("d", PortType::Dir)],
        )
        .unwrap();
        assert_eq!(out["listing"], b"here\n");
    }

    #[test]
    fn non_zero_exit_reports_code_and_log_tail() {
        let e = run_op(
            &Command,
            &[],
            json!({"run": "echo starting; echo 'disk on fire' >&2; exit 3"}),
            &[("x", PortType::File)],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("exited with code 3"), "{e}");
        assert!(e.contains("disk on fire"), "{e}");
    }

    #[test]
    fn a_missing_output_is_named() {
        let e = run_op(
            &Command,
            &[],
            json!({"run": "true"}),
            &[("result", PortType::File)],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("output `result` (file) was not written at "),
            "{e}"
        );
        let e = run_op(
            &Command,
            &[],
            json!({"run": "echo hi > ${out.t}"}),
            &[("t", PortType::Table)],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("output `t` (table) is not a Parquet file"),
            "{e}"
        );
    }

    #[test]
    fn unknown_port_and_bad_syntax_are_errors() {
        let e = run_op(&Command, &[], json!({"run": "cat ${in.nope}"}), &[])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("`${in.nope}` names no input port of this node (ports: none)"),
            "{e}"
        );
        let mut m = Map::new();
        m.insert("run".into(), json!("echo ${HOME} ${in.x"));
        m.insert("shell".into(), json!("sh"));
        let problems = Command.check(&m);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("parameter `run` has a bad reference `${in.x`: unclosed"),
            "{problems:?}"
        );
        m.insert("run".into(), json!("cat ${in.my file}"));
        assert!(Command.check(&m)[0].contains("`${in.my file}` is not a reference"));
        m.insert(
            "run".into(),
            json!("echo ${HOME} $${PATH} ${#x} ${in.x} > ${out.y}"),
        );
        assert!(Command.check(&m).is_empty());
    }

    #[test]
    fn shell_braces_reach_the_shell() {
        // `${V}` is what the engine leaves of `$${V}`; a kept `$${W}` escape works too. The
        // test workspace path contains a space, so this also exercises path quoting.
        let out = run_op(
            &Command,
            &[text_input("src", "x")],
            json!({"run": "V=ok W=!; printf '%s%s' \"${V}\" \"$${W}\" > ${out.o}; cat ${in.src} >> ${out.o}"}),
            &[("o", PortType::File)],
        )
        .unwrap();
        assert_eq!(out["o"], b"ok!x");
    }

    #[test]
    fn secrets_reach_the_command_by_variable_and_the_log_masks_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = expflow_engine::harness::Harness::new(dir.path()).unwrap();
        let value = "pa55 w0rd's";
        h.set_secrets(expflow_engine::Secrets::new([(
            "TOKEN".to_string(),
            value.to_string(),
        )]));
        let run = h
            .run(
                &Command,
                &[],
                json!({
                    "run": "printf '%s' ${secrets.TOKEN} > ${out.plain}; printf '%s' \"$AUTH\" > ${out.env}; echo \"said $AUTH\"; echo ${secrets.TOKEN} >&2",
                    "env": {"AUTH": "Bearer ${secrets.TOKEN} $${HOME}"},
                }),
                &[("plain", PortType::File), ("env", PortType::File)],
            )
            .unwrap();
        let read = |p: &str| std::fs::read_to_string(&run.outputs[p]).unwrap();
        assert_eq!(read("plain"), value, "quoted: spaces and quotes survive");
        assert_eq!(read("env"), format!("Bearer {value} ${{HOME}}"));
        assert!(!run.log.contains(value), "{}", run.log);
        assert!(run.log.contains("said Bearer *** ${HOME}"), "{}", run.log);
        assert!(run.log.contains("\"$EXPFLOW_SECRET_TOKEN\""), "{}", run.log);
        // An undeclared secret is an error naming it.
        let e = h
            .run(&Command, &[], json!({"run": "echo ${secrets.OTHER}"}), &[])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no secret `OTHER` is declared"), "{e}");
    }

    #[test]
    fn literals_are_protected_and_escapes_kept() {
        assert_eq!(
            protect_literals("a ${HOME} $${X} ${in.p} ${out.q} ${inx}"),
            "a $${HOME} $${X} ${in.p} ${out.q} $${inx}"
        );
    }
}
