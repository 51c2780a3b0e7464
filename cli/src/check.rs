//! `expflow check`: compiles a pipeline file as `run` would, for its base and every declared
//! profile (or the profiles named with `--profile`), without needing its inputs to exist
//! (missing inputs are notes). Also how every pipeline command turns `--set`, `--input` and
//! `--profile` into compile options.

use std::path::PathBuf;

use anyhow::Result;
use expflow_engine::compile::compile_with;
use expflow_engine::diag::Diagnostic;
use expflow_engine::{CompileOptions, Diagnostics, EngineError, Pipeline};
use serde_json::{Value, json};

use crate::{PipelineArgs, code, parse_sets, registry};

/// The compile options of `--set`, `--input`, `--profile` and `--max-nodes`.
pub fn options(p: &PipelineArgs) -> Result<CompileOptions> {
    Ok(CompileOptions {
        overrides: parse_sets(&p.sets)?,
        max_nodes: p.max_nodes,
        profiles: p.profile.iter().map(|s| s.trim().to_string()).collect(),
        inputs: parse_inputs(&p.inputs)?,
        missing_inputs_ok: false,
    })
}

/// Parses `--input NAME=PATH`; a relative path is taken from the current directory.
fn parse_inputs(inputs: &[String]) -> Result<Vec<(String, PathBuf)>> {
    inputs
        .iter()
        .map(|s| {
            let usage = || {
                EngineError::Usage(format!(
                    "--input {s}: write NAME=PATH, e.g. --input datasets=/data/mac"
                ))
            };
            let (name, path) = s.split_once('=').ok_or_else(usage)?;
            let (name, path) = (name.trim(), path.trim());
            if name.is_empty() || path.is_empty() {
                return Err(usage().into());
            }
            let path = std::path::absolute(path)
                .map_err(|e| EngineError::Usage(format!("--input {s}: {e}")))?;
            Ok((name.to_string(), path))
        })
        .collect()
}

/// One checked configuration: the base file, or the file with some profiles merged in.
struct Checked {
    profiles: Vec<String>,
    description: Option<String>,
    result: std::result::Result<Pipeline, Diagnostics>,
}

pub fn run(p: &PipelineArgs, json: bool) -> Result<u8> {
    let text = std::fs::read_to_string(&p.pipeline).map_err(|e| {
        EngineError::Usage(format!(
            "cannot read the pipeline file {}: {e}",
            p.pipeline.display()
        ))
    })?;
    let file = std::path::absolute(&p.pipeline)?;
    let mut opts = options(p)?;
    opts.missing_inputs_ok = true;
    let reg = registry();
    let declared = expflow_engine::spec::read(&file, &text, &mut Diagnostics::new("")).profiles;
    // Named profiles: that one configuration. Otherwise the base, then each profile alone.
    let configs: Vec<(Vec<String>, Option<String>)> = if opts.profiles.is_empty() {
        std::iter::once((Vec::new(), None))
            .chain(
                declared
                    .iter()
                    .map(|d| (vec![d.name.clone()], d.description.clone())),
            )
            .collect()
    } else {
        let description = match opts.profiles.as_slice() {
            [one] => declared
                .iter()
                .find(|d| d.name == *one)
                .and_then(|d| d.description.clone()),
            _ => None,
        };
        vec![(opts.profiles.clone(), description)]
    };
    let mut checked = Vec::new();
    for (profiles, description) in configs {
        let o = CompileOptions {
            profiles: profiles.clone(),
            ..opts.clone()
        };
        checked.push(Checked {
            profiles,
            description,
            result: compile_with(&file, &text, &reg, &o),
        });
    }
    // A problem of the base shows once, under the base: a profile lists only its own.
    if let Some(Err(base)) = checked.first().map(|c| &c.result)
        && checked.first().is_some_and(|c| c.profiles.is_empty())
    {
        let base = base.items.clone();
        for c in checked.iter_mut().skip(1) {
            if let Err(d) = &mut c.result {
                d.items.retain(|i| !base.contains(i));
            }
        }
    }
    let valid = checked.iter().all(|c| c.result.is_ok());
    let name = p.pipeline.display().to_string();
    if json {
        let configs: Vec<Value> = checked.iter().map(config_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "file": name,
                "valid": valid,
                "configurations": configs,
            }))?
        );
    } else {
        for c in &checked {
            print_text(&name, c);
        }
    }
    Ok(if valid { 0 } else { code::USAGE })
}

fn label(profiles: &[String]) -> String {
    if profiles.is_empty() {
        "base".to_string()
    } else {
        format!("--profile {}", profiles.join(","))
    }
}

fn print_text(file: &str, c: &Checked) {
    let about = c
        .description
        .as_deref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default();
    match &c.result {
        Ok(p) => {
            println!(
                "{file} ({}{about}): valid, {} node{}, {} output{}",
                label(&c.profiles),
                p.nodes.len(),
                if p.nodes.len() == 1 { "" } else { "s" },
                p.outputs.len(),
                if p.outputs.len() == 1 { "" } else { "s" },
            );
            for (name, path) in &p.missing_inputs {
                println!(
                    "  note: input `{name}` is not here ({}); `run` needs it, or `--input {name}=PATH`",
                    path.display()
                );
            }
        }
        // Every problem it had was the base's, reported above.
        Err(d) if d.is_empty() => println!(
            "{file} ({}{about}): invalid, through the problems above",
            label(&c.profiles)
        ),
        Err(d) => {
            println!("{file} ({}{about}): invalid", label(&c.profiles));
            print!("{d}");
        }
    }
}

fn config_json(c: &Checked) -> Value {
    let problem = |d: &Diagnostic| {
        json!({
            "line": d.loc.line,
            "column": d.loc.column,
            "message": d.message,
            "hint": d.hint,
        })
    };
    let (valid, nodes, outputs, missing, problems) = match &c.result {
        Ok(p) => (
            true,
            Some(p.nodes.len()),
            Some(p.outputs.len()),
            p.missing_inputs
                .iter()
                .map(|(n, path)| json!({"name": n, "path": path.display().to_string()}))
                .collect(),
            Vec::new(),
        ),
        Err(d) => (
            false,
            None,
            None,
            Vec::new(),
            d.items.iter().map(problem).collect(),
        ),
    };
    json!({
        "profiles": c.profiles,
        "description": c.description,
        "valid": valid,
        "nodes": nodes,
        "outputs": outputs,
        "missing_inputs": missing,
        "problems": problems,
    })
}
