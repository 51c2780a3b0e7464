//! `runs`, `diff` and `compare`: the history of a workspace's runs, as text, Markdown, CSV
//! or JSON. The engine's `history` module computes; this module only lays out.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use expflow_engine::events::format_utc;
use expflow_engine::history::{CompareOptions, History, RunDiff, diff, excerpt_pair, shown};
use serde_json::Value;

use crate::inspect;

/// How a table is printed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Markdown,
    Csv,
}

impl Format {
    pub fn of(json: bool, md: bool, csv: bool) -> Format {
        if json {
            Format::Json
        } else if md {
            Format::Markdown
        } else if csv {
            Format::Csv
        } else {
            Format::Text
        }
    }
}

/// Headline metrics shown per run in text: the rest are in `--json`, `--md` and `--csv`.
const HEADLINE: usize = 3;

pub fn runs(ws_arg: &Option<PathBuf>, pipeline: Option<String>, format: Format) -> Result<u8> {
    let ws = inspect::open(ws_arg, "runs")?;
    let mut h = History::open(ws.store.as_ref())?;
    let name = match &pipeline {
        Some(p) => Some(h.pipeline_named(p)?),
        None => None,
    };
    let rows = h.rows(name.as_deref())?;
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    let headers = [
        "run", "started", "pipeline", "status", "executed", "cached", "changed", "metrics",
    ];
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let changed: Vec<String> = r
                .changed
                .iter()
                .map(|c| {
                    let (old, new) = excerpt_pair(&c.old, &c.new, 40);
                    format!("{}: {old} → {new}", c.name)
                })
                .collect();
            let mut metrics: Vec<String> = r
                .metrics
                .iter()
                .map(|(k, v)| format!("{k}={}", num(*v)))
                .collect();
            if format == Format::Text && metrics.len() > HEADLINE {
                let more = metrics.len() - HEADLINE;
                metrics.truncate(HEADLINE);
                metrics.push(format!("(+{more})"));
            }
            vec![
                r.run_id.clone(),
                format_utc(r.started_ms),
                r.pipeline.clone(),
                r.status.clone(),
                r.executed.to_string(),
                r.cached.to_string(),
                changed.join("; "),
                metrics.join(" "),
            ]
        })
        .collect();
    if table.is_empty() && format == Format::Text {
        println!("no runs recorded in this workspace yet");
        return Ok(0);
    }
    print!("{}", layout(&headers, None, &table, format));
    Ok(0)
}

pub fn diff_cmd(ws_arg: &Option<PathBuf>, a: &str, b: &str, format: Format) -> Result<u8> {
    let ws = inspect::open(ws_arg, "diff")?;
    let mut h = History::open(ws.store.as_ref())?;
    let d = diff(&mut h, a, b)?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&d)?),
        Format::Markdown => print!("{}", diff_md(&d)),
        _ => print!("{}", diff_text(&d)),
    }
    Ok(0)
}

fn diff_text(d: &RunDiff) -> String {
    let mut out = format!("{} → {}\n", d.a, d.b);
    if d.params.is_empty() && d.metrics.is_empty() && d.reran.is_empty() && d.removed.is_empty() {
        out.push_str("no difference: same nodes, same keys\n");
        return out;
    }
    if !d.params.is_empty() {
        out.push_str("\nparameters:\n");
        for p in &d.params {
            let (old, new) = excerpt_pair(&p.old, &p.new, 48);
            let _ = writeln!(out, "  {}: {old} → {new}", p.name);
        }
    }
    if !d.metrics.is_empty() {
        out.push_str("\nmetrics:\n");
        for m in &d.metrics {
            let _ = writeln!(
                out,
                "  {}: {} → {}{}",
                m.name,
                m.old.map_or("-".into(), num),
                m.new.map_or("-".into(), num),
                m.delta
                    .map_or(String::new(), |x| format!(" ({})", signed(x)))
            );
            for c in &m.causes {
                let _ = writeln!(out, "      because {c}");
            }
        }
    }
    if !d.reran.is_empty() {
        out.push_str("\nnodes that re-ran:\n");
        for n in &d.reran {
            let causes: Vec<String> = n.causes.iter().map(|c| c.describe()).collect();
            let _ = writeln!(out, "  {}: {}", n.node, causes.join("; "));
        }
    }
    if !d.removed.is_empty() {
        let _ = writeln!(out, "\nnodes only in {}: {}", d.a, d.removed.join(", "));
    }
    out
}

fn diff_md(d: &RunDiff) -> String {
    let mut out = format!("## {} → {}\n", d.a, d.b);
    if !d.params.is_empty() {
        let rows: Vec<Vec<String>> = d
            .params
            .iter()
            .map(|p| {
                let (old, new) = excerpt_pair(&p.old, &p.new, 48);
                vec![p.name.clone(), old, new]
            })
            .collect();
        out.push_str("\n### Parameters\n\n");
        out.push_str(&layout(
            &["parameter", "old", "new"],
            None,
            &rows,
            Format::Markdown,
        ));
    }
    if !d.metrics.is_empty() {
        let rows: Vec<Vec<String>> = d
            .metrics
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    m.old.map_or("-".into(), num),
                    m.new.map_or("-".into(), num),
                    m.delta.map_or("-".into(), signed),
                    m.causes.join("; "),
                ]
            })
            .collect();
        out.push_str("\n### Metrics\n\n");
        out.push_str(&layout(
            &["metric", "old", "new", "difference", "because"],
            None,
            &rows,
            Format::Markdown,
        ));
    }
    if !d.reran.is_empty() {
        let rows: Vec<Vec<String>> = d
            .reran
            .iter()
            .map(|n| {
                let causes: Vec<String> = n.causes.iter().map(|c| c.describe()).collect();
                vec![n.node.clone(), causes.join("; ")]
            })
            .collect();
        out.push_str("\n### Nodes that re-ran\n\n");
        out.push_str(&layout(&["node", "cause"], None, &rows, Format::Markdown));
    }
    out
}

pub fn compare(
    ws_arg: &Option<PathBuf>,
    pipeline: &str,
    opts: CompareOptions,
    format: Format,
) -> Result<u8> {
    let ws = inspect::open(ws_arg, "compare")?;
    let mut h = History::open(ws.store.as_ref())?;
    let name = h.pipeline_named(pipeline)?;
    let t = expflow_engine::history::compare(&mut h, &name, &opts)?;
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&t)?);
        return Ok(0);
    }
    let mut headers: Vec<&str> = vec!["run", "point"];
    headers.extend(t.params.iter().map(String::as_str));
    headers.extend(t.metrics.iter().map(String::as_str));
    // CSV is for programs: whole values.
    let cell = |v: &Value| {
        if format == Format::Csv {
            shown(v)
        } else {
            short(v)
        }
    };
    let rows: Vec<Vec<String>> = t
        .rows
        .iter()
        .map(|r| {
            let mut row = vec![r.run.clone(), r.point.clone()];
            row.extend(
                t.params
                    .iter()
                    .map(|c| r.params.get(c).map_or("-".into(), cell)),
            );
            row.extend(
                t.metrics
                    .iter()
                    .map(|c| r.metrics.get(c).map_or("-".into(), |v| num(*v))),
            );
            row
        })
        .collect();
    let groups = [
        (2, ""),
        (t.params.len(), "parameters"),
        (t.metrics.len(), "metrics"),
    ];
    print!("{}", layout(&headers, Some(&groups), &rows, format));
    Ok(0)
}

/// A value in a table cell: strings without quotes, long values cut.
fn short(v: &Value) -> String {
    let s = shown(v);
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(39).collect::<String>())
    } else {
        s
    }
}

/// A number as it reads best: integers plain, others to 4 significant digits.
fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else if x.abs() >= 1e-3 && x.abs() < 1e6 {
        let digits = (3 - x.abs().log10().floor() as i32).max(0) as usize;
        format!("{x:.digits$}")
    } else {
        format!("{x:.3e}")
    }
}

fn signed(x: f64) -> String {
    if x >= 0.0 {
        format!("+{}", num(x))
    } else {
        num(x)
    }
}

/// Lays out a table. `groups` (column count, title) puts a line of group titles above the
/// headers in text and Markdown, and prefixes CSV headers with `group:`.
fn layout(
    headers: &[&str],
    groups: Option<&[(usize, &str)]>,
    rows: &[Vec<String>],
    format: Format,
) -> String {
    let group_of = |i: usize| -> &str {
        let mut at = 0;
        for (n, title) in groups.unwrap_or(&[]) {
            if i < at + n {
                return title;
            }
            at += n;
        }
        ""
    };
    match format {
        Format::Csv => {
            let mut out = String::new();
            let head: Vec<String> = headers
                .iter()
                .enumerate()
                .map(|(i, h)| match group_of(i) {
                    "" => csv_cell(h),
                    g => csv_cell(&format!("{g}:{h}")),
                })
                .collect();
            out.push_str(&head.join(","));
            out.push('\n');
            for r in rows {
                let cells: Vec<String> = r.iter().map(|c| csv_cell(c)).collect();
                out.push_str(&cells.join(","));
                out.push('\n');
            }
            out
        }
        Format::Markdown => {
            let esc = |s: &str| s.replace('|', "\\|");
            let mut out = String::new();
            let head: Vec<String> = headers
                .iter()
                .enumerate()
                .map(|(i, h)| match group_of(i) {
                    "" => esc(h),
                    g => format!("{} ({g})", esc(h)),
                })
                .collect();
            let _ = writeln!(out, "| {} |", head.join(" | "));
            let _ = writeln!(out, "|{}", " --- |".repeat(headers.len()));
            for r in rows {
                let cells: Vec<String> = r.iter().map(|c| esc(c)).collect();
                let _ = writeln!(out, "| {} |", cells.join(" | "));
            }
            out
        }
        Format::Text | Format::Json => {
            let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
            for r in rows {
                for (i, c) in r.iter().enumerate() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
            let line = |cells: Vec<String>| -> String {
                let padded: Vec<String> = cells
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
                    .collect();
                padded.join("  ").trim_end().to_string() + "\n"
            };
            let mut out = String::new();
            if let Some(groups) = groups {
                // Group titles over their columns, separated by `|`.
                let mut titles = Vec::new();
                let mut at = 0;
                for (n, title) in groups {
                    if *n == 0 {
                        continue;
                    }
                    let width: usize = widths[at..at + n].iter().sum::<usize>() + 2 * (n - 1);
                    titles.push(format!("{title:<width$}"));
                    at += n;
                }
                out.push_str(titles.join("| ").trim_end());
                out.push('\n');
            }
            out.push_str(&line(headers.iter().map(|h| h.to_string()).collect()));
            for r in rows {
                out.push_str(&line(r.clone()));
            }
            out
        }
    }
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
