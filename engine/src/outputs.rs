//! The `outputs:` section at compile time: where each destination may write, and which
//! node port it names.
//!
//! A destination is a relative path inside the pipeline's directory: not empty, not `.`,
//! with no `..`, not absolute, not inside the workspace (`.expflow/`), and not equal to,
//! inside or containing an input, the pipeline file or another destination. What is already
//! on disk at a destination is checked when a run starts (`materialize.rs`).

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use crate::compile::CNode;
use crate::diag::{Diagnostics, closest};
use crate::spec::{OutputSpec, PipelineSpec};

/// How two paths relate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Relation {
    Same,
    /// The first is inside the second.
    Inside,
    /// The first contains the second.
    Contains,
}

/// Checks every destination; returns each one's path relative to the pipeline's directory
/// (normalised), or `None` where it was refused (and reported at its key).
pub(crate) fn check_destinations(
    spec: &PipelineSpec,
    diags: &mut Diagnostics,
) -> Vec<Option<PathBuf>> {
    let dests: Vec<Option<PathBuf>> = spec
        .outputs
        .iter()
        .map(|o| match normalise(&o.path) {
            Ok(rel) => Some(rel),
            Err(problem) => {
                diags.push(
                    &o.key_loc,
                    format!("output {}: {problem}", quoted(&o.path)),
                    Some(format!(
                        "write a path inside the pipeline's directory, e.g. `{}`",
                        suggestion(o)
                    )),
                );
                None
            }
        })
        .collect();
    // Everything the pipeline reads: its inputs and the pipeline file itself.
    let mut read: Vec<(String, PathBuf)> = spec
        .inputs
        .iter()
        .map(|i| {
            (
                format!("the input `{}` ({})", i.name, i.path),
                lexical(&spec.dir.join(&i.path)),
            )
        })
        .collect();
    let file_name = spec
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    read.push((
        format!("the pipeline file `{file_name}`"),
        lexical(&spec.file),
    ));
    let read_real: Vec<PathBuf> = read.iter().map(|(_, p)| real(p)).collect();
    for (i, o) in spec.outputs.iter().enumerate() {
        let Some(rel) = &dests[i] else { continue };
        let abs = spec.dir.join(rel);
        let abs_real = real(&abs);
        let clash = read.iter().zip(&read_real).find_map(|((what, p), p_real)| {
            relation(&abs, p)
                .or_else(|| relation(&abs_real, p_real))
                .map(|r| (what, r))
        });
        if let Some((what, r)) = clash {
            let message = match r {
                Relation::Same => {
                    format!("output `{}` is {what}: a run would overwrite it", o.path)
                }
                Relation::Inside => format!("output `{}` is inside {what}", o.path),
                Relation::Contains => format!("output `{}` contains {what}", o.path),
            };
            diags.push(
                &o.key_loc,
                message,
                Some(format!(
                    "write outputs apart from what the pipeline reads, e.g. `{}`",
                    suggestion(o)
                )),
            );
            continue;
        }
        for (j, other) in spec.outputs.iter().enumerate().take(i) {
            // A key written twice is reported as a duplicate already.
            if other.path == o.path {
                continue;
            }
            let Some(other_rel) = &dests[j] else { continue };
            let Some(r) = relation(rel, other_rel) else {
                continue;
            };
            let place = format!("the output `{}` (line {})", other.path, other.key_loc.line);
            let message = match r {
                Relation::Same => format!("output `{}` is the same path as {place}", o.path),
                Relation::Inside => format!("output `{}` is inside {place}", o.path),
                Relation::Contains => format!("output `{}` contains {place}", o.path),
            };
            diags.push(
                &o.key_loc,
                message,
                Some("give each output its own path; one may not contain another".into()),
            );
            break;
        }
    }
    dests
}

/// Resolves each `NODE.PORT` under `outputs:` to a node index. `dests` are the checked
/// destinations (a refused one is resolved for its own errors, then left out);
/// `broken` are nodes that were declared but not built (their errors are reported).
pub(crate) fn resolve(
    spec: &PipelineSpec,
    dests: &[Option<PathBuf>],
    nodes: &[CNode],
    broken: &HashSet<String>,
    diags: &mut Diagnostics,
) -> Vec<(PathBuf, usize, String)> {
    let mut by_base: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        by_base.entry(n.base.as_str()).or_default().push(i);
        by_name.insert(n.name.as_str(), i);
    }
    let mut out = Vec::new();
    for (o, dest) in spec.outputs.iter().zip(dests) {
        let found = match o.reference.rfind(']') {
            Some(end) => Some((
                &o.reference[..=end],
                o.reference[end + 1..].strip_prefix('.').unwrap_or(""),
            )),
            None => o.reference.split_once('.'),
        };
        let Some((node, port)) = found else {
            diags.push(
                &o.loc,
                format!("output `{}`: `{}` is not `NODE.PORT`", o.path, o.reference),
                Some("name a node's output port, e.g. `train.model`".into()),
            );
            continue;
        };
        let base = node.split('[').next().unwrap_or(node);
        let matches: Vec<usize> = if node.contains('[') {
            by_name.get(node).copied().into_iter().collect()
        } else {
            by_base.get(node).cloned().unwrap_or_default()
        };
        match matches.as_slice() {
            [i] if nodes[*i].outputs.contains_key(port) => {
                if let Some(rel) = dest {
                    out.push((spec.dir.join(rel), *i, port.to_string()));
                }
            }
            [i] => {
                let names: Vec<&str> = nodes[*i].outputs.keys().map(String::as_str).collect();
                diags.push(
                    &o.loc,
                    format!("output `{}`: node `{node}` has no port `{port}`", o.path),
                    Some(format!("its outputs are: {}", names.join(", "))),
                );
            }
            // Its own errors say why it was not built.
            [] if broken.contains(base) => {}
            [] => diags.push(
                &o.loc,
                format!("output `{}`: unknown node `{node}`", o.path),
                closest(node, nodes.iter().map(|n| n.base.as_str()))
                    .map(|c| format!("did you mean `{c}`?")),
            ),
            many => diags.push(
                &o.loc,
                format!(
                    "output `{}`: `{node}` has {} sweep points",
                    o.path,
                    many.len()
                ),
                Some(format!("name one, e.g. `{}.{port}`", nodes[many[0]].name)),
            ),
        }
    }
    out
}

/// The destination as a normalised relative path, or why it may not be one.
fn normalise(path: &str) -> Result<PathBuf, String> {
    if path.trim().is_empty() {
        return Err("the destination is empty".into());
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(
            "an absolute path; outputs are written only inside the pipeline's directory".into(),
        );
    }
    let mut rel = PathBuf::new();
    for (i, c) in p.components().enumerate() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                return Err("`..` leaves the pipeline's directory".into());
            }
            Component::Normal(name) => {
                if i == 0 && name == "~" {
                    return Err(
                        "`~` is not expanded; outputs are written inside the pipeline's directory"
                            .into(),
                    );
                }
                rel.push(name);
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(
                    "an absolute path; outputs are written only inside the pipeline's directory"
                        .into(),
                );
            }
        }
    }
    match rel.components().next() {
        None => Err("`.` is the pipeline's directory itself".into()),
        Some(first) if first.as_os_str() == ".expflow" => {
            Err("inside the workspace `.expflow/`, which only expflow writes".into())
        }
        Some(_) => Ok(rel),
    }
}

/// A destination as written, quoted so that an empty or blank one is visible.
fn quoted(path: &str) -> String {
    if path.trim().is_empty() {
        format!("{path:?}")
    } else {
        format!("`{path}`")
    }
}

/// A destination to suggest instead: `results/` and the name the user wrote (or the port).
fn suggestion(o: &OutputSpec) -> String {
    let last = Path::new(&o.path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) if n != "~" => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .next_back()
        .filter(|n| n != ".expflow");
    let name = last.unwrap_or_else(|| {
        o.reference
            .rsplit('.')
            .next()
            .filter(|p| !p.is_empty())
            .unwrap_or("out")
            .to_string()
    });
    format!("results/{name}")
}

/// `a` relative to `b`, component by component.
fn relation(a: &Path, b: &Path) -> Option<Relation> {
    if a == b {
        Some(Relation::Same)
    } else if a.starts_with(b) {
        Some(Relation::Inside)
    } else if b.starts_with(a) {
        Some(Relation::Contains)
    } else {
        None
    }
}

/// `p` with `.` removed and `..` applied, without touching the disk.
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `p` with symbolic links resolved as far as it exists (the rest appended as written), so
/// that a destination reached through a link to an input is caught too.
fn real(p: &Path) -> PathBuf {
    let mut existing = p.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = std::fs::canonicalize(&existing) {
            let mut out = c;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return p.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Loc;

    #[test]
    fn normalises_and_refuses() {
        assert_eq!(
            normalise("./results//a.txt"),
            Ok(PathBuf::from("results/a.txt"))
        );
        assert!(normalise("").is_err());
        assert!(normalise("  ").is_err());
        assert!(normalise(".").is_err());
        assert!(normalise("./.").is_err());
        assert!(normalise("../precious").is_err());
        assert!(normalise("results/../../x").is_err());
        assert!(normalise("results/../x").is_err());
        assert!(normalise("/etc/x").is_err());
        assert!(normalise("~/x").is_err());
        assert!(normalise(".expflow/x").is_err());
        assert!(normalise("./.expflow").is_err());
        assert_eq!(normalise("~x/y"), Ok(PathBuf::from("~x/y")));
        assert_eq!(
            normalise("results/.expflow"),
            Ok(PathBuf::from("results/.expflow"))
        );
    }

    #[test]
    fn relations_are_by_component() {
        let r = |a: &str, b: &str| relation(Path::new(a), Path::new(b));
        assert_eq!(r("a/b", "a/b"), Some(Relation::Same));
        assert_eq!(r("a/b", "a"), Some(Relation::Inside));
        assert_eq!(r("a", "a/b"), Some(Relation::Contains));
        assert_eq!(r("ab", "a"), None);
        assert_eq!(lexical(Path::new("/x/./y/../z")), PathBuf::from("/x/z"));
    }

    #[test]
    fn suggests_a_results_path() {
        let o = |path: &str| OutputSpec {
            path: path.into(),
            key_loc: Loc::default(),
            reference: "node.model".into(),
            loc: Loc::default(),
        };
        assert_eq!(suggestion(&o("../precious")), "results/precious");
        assert_eq!(suggestion(&o(".")), "results/model");
        assert_eq!(suggestion(&o("")), "results/model");
        assert_eq!(suggestion(&o(".expflow")), "results/model");
    }
}
