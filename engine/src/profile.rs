//! Profiles: named overlays declared under `profiles:` in a pipeline file, chosen with
//! `--profile NAME` (several, comma-separated, apply in order).
//!
//! A profile is merged into the YAML tree before the spec is read, so every value keeps the
//! place it was written: an error in a node a profile changed points at the profile's line
//! for what the profile wrote and at the base for the rest. The rules:
//! - `params`, `inputs`, `outputs`: entries override or add; `null` removes one.
//! - `nodes`: a node the base declares is deep-merged (maps merge recursively, scalars and
//!   lists replace, `null` removes a key), unless the profile gives it another `op`: then the
//!   profile's node replaces it whole (another operator has other ports and parameters);
//!   `NODE: null` removes the node; a node absent from the base is added (with its `op`).
//! - `description`: shown by `expflow check`.

use crate::diag::{Diagnostics, Loc, closest};
use crate::spec::describe;
use crate::yaml::{Node, YValue};

/// The keys a profile may have.
pub const PROFILE_KEYS: [&str; 5] = ["description", "params", "inputs", "nodes", "outputs"];

/// A declared profile.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileInfo {
    pub name: String,
    pub description: Option<String>,
    pub loc: Loc,
}

/// Reads `profiles:` from the top-level map of `root` (leaving it there; the spec reader
/// skips it), checks every declared profile's structure, and merges the `selected` ones in
/// order into the rest of the tree. Returns the declared profiles.
pub fn apply(root: &mut Node, selected: &[String], diags: &mut Diagnostics) -> Vec<ProfileInfo> {
    let YValue::Map(top) = &mut root.value else {
        return Vec::new();
    };
    let section = top
        .iter()
        .rev()
        .find(|(k, _)| k.as_key().as_deref() == Some("profiles"))
        .map(|(_, v)| v.clone());
    let profiles = match &section {
        Some(s) => read_section(s, diags),
        None => Vec::new(),
    };
    let infos: Vec<ProfileInfo> = profiles
        .iter()
        .map(|p| ProfileInfo {
            name: p.name.clone(),
            description: p.description.clone(),
            loc: p.loc.clone(),
        })
        .collect();
    for name in selected {
        match profiles.iter().find(|p| p.name == *name) {
            Some(p) => merge_profile(top, p, diags),
            None => {
                let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
                let hint = if names.is_empty() {
                    "this file declares no profiles; add a `profiles:` map, or drop --profile"
                        .to_string()
                } else {
                    match closest(name, names.iter().copied()) {
                        Some(c) => {
                            format!("did you mean `{c}`? the profiles are: {}", names.join(", "))
                        }
                        None => format!("the profiles are: {}", names.join(", ")),
                    }
                };
                diags.push(
                    &Loc::default(),
                    format!("--profile {name}: no profile `{name}`"),
                    Some(hint),
                );
            }
        }
    }
    infos
}

/// One profile as written: its sections (each a map or absent).
struct Profile {
    name: String,
    loc: Loc,
    description: Option<String>,
    params: Option<Node>,
    inputs: Option<Node>,
    nodes: Option<Node>,
    outputs: Option<Node>,
}

fn read_section(section: &Node, diags: &mut Diagnostics) -> Vec<Profile> {
    if section.is_null() {
        return Vec::new();
    }
    let Some(entries) = section.as_map() else {
        diags.push(
            &section.loc,
            format!(
                "`profiles` must be a map of named profiles, found {}",
                describe(section)
            ),
            Some("for example `profiles: {gpu: {params: {lr: 0.0001}}}`".into()),
        );
        return Vec::new();
    };
    let mut out: Vec<Profile> = Vec::new();
    for (k, v) in entries {
        let Some(name) = k.as_key() else {
            diags.push(
                &k.loc,
                format!("a profile name must be a name, found {}", describe(k)),
                None,
            );
            continue;
        };
        if let Some(first) = out.iter().find(|p| p.name == name) {
            diags.push(
                &k.loc,
                format!(
                    "duplicate profile `{name}` (first defined at line {}, column {})",
                    first.loc.line, first.loc.column
                ),
                Some("names must be unique: rename or remove one of them".into()),
            );
            continue;
        }
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            diags.push(
                &k.loc,
                format!("profile name `{name}` is not valid"),
                Some(
                    "use letters, digits, `_` and `-` (no commas: `--profile a,b` applies two)"
                        .into(),
                ),
            );
        }
        let mut p = Profile {
            name,
            loc: k.loc.clone(),
            description: None,
            params: None,
            inputs: None,
            nodes: None,
            outputs: None,
        };
        read_profile(&mut p, v, diags);
        out.push(p);
    }
    out
}

fn read_profile(p: &mut Profile, v: &Node, diags: &mut Diagnostics) {
    if v.is_null() {
        return;
    }
    let Some(entries) = v.as_map() else {
        diags.push(
            &v.loc,
            format!("profile `{}` must be a map, found {}", p.name, describe(v)),
            Some(format!("a profile has: {}", PROFILE_KEYS.join(", "))),
        );
        return;
    };
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in entries {
        let key = k.as_key().unwrap_or_default();
        if seen.contains(&key) {
            diags.push(
                &k.loc,
                format!("duplicate key `{key}` in profile `{}`", p.name),
                Some("merge the two into one".into()),
            );
            continue;
        }
        seen.push(key.clone());
        let slot = match key.as_str() {
            "description" => {
                match v.as_str() {
                    Some(s) => p.description = Some(s.to_string()),
                    None => diags.push(
                        &v.loc,
                        format!(
                            "`description` of profile `{}` must be a string, found {}",
                            p.name,
                            describe(v)
                        ),
                        None,
                    ),
                }
                continue;
            }
            "params" => &mut p.params,
            "inputs" => &mut p.inputs,
            "nodes" => &mut p.nodes,
            "outputs" => &mut p.outputs,
            _ => {
                diags.push(
                    &k.loc,
                    format!("unknown key `{key}` in profile `{}`", p.name),
                    Some(match closest(&key, PROFILE_KEYS) {
                        Some(c) => format!("did you mean `{c}`?"),
                        None => format!("a profile has: {}", PROFILE_KEYS.join(", ")),
                    }),
                );
                continue;
            }
        };
        if v.is_null() {
            continue;
        }
        if v.as_map().is_none() {
            diags.push(
                &v.loc,
                format!(
                    "`{key}` of profile `{}` must be a map, found {}",
                    p.name,
                    describe(v)
                ),
                None,
            );
            continue;
        }
        *slot = Some(v.clone());
    }
}

/// Merges one profile into the top-level entries.
fn merge_profile(top: &mut Vec<(Node, Node)>, p: &Profile, diags: &mut Diagnostics) {
    for (section, over) in [
        ("params", &p.params),
        ("inputs", &p.inputs),
        ("outputs", &p.outputs),
    ] {
        if let Some(over) = over {
            let base = section_of(top, section, &over.loc);
            if section == "params" {
                merge(base, over);
            } else {
                merge_entries(base, over, &p.name, section, diags);
            }
        }
    }
    if let Some(over) = &p.nodes {
        let base = section_of(top, "nodes", &over.loc);
        merge_nodes(base, over, &p.name, diags);
    }
}

/// The value of a top-level section, created (as an empty map where the profile wrote it)
/// if the base lacks it or left it empty.
fn section_of<'a>(top: &'a mut Vec<(Node, Node)>, name: &str, loc: &Loc) -> &'a mut Node {
    let at = match top
        .iter()
        .rposition(|(k, _)| k.as_key().as_deref() == Some(name))
    {
        Some(i) => i,
        None => {
            top.push((
                Node {
                    loc: loc.clone(),
                    value: YValue::Str(name.to_string()),
                },
                Node {
                    loc: loc.clone(),
                    value: YValue::Null,
                },
            ));
            top.len() - 1
        }
    };
    let v = &mut top[at].1;
    if v.is_null() {
        *v = Node {
            loc: loc.clone(),
            value: YValue::Map(Vec::new()),
        };
    }
    v
}

/// Deep merge: maps merge recursively, anything else replaces; `null` removes a key.
pub fn merge(base: &mut Node, over: &Node) {
    let (YValue::Map(b), YValue::Map(o)) = (&mut base.value, &over.value) else {
        *base = over.clone();
        return;
    };
    for (k, v) in o {
        let key = k.as_key();
        let at = b.iter().rposition(|(bk, _)| bk.as_key() == key);
        match at {
            Some(_) if v.is_null() => b.retain(|(bk, _)| bk.as_key() != key),
            Some(i) => merge(&mut b[i].1, v),
            None if v.is_null() => {}
            None => b.push((k.clone(), v.clone())),
        }
    }
}

/// `inputs` and `outputs`: entries replace or add; `null` removes (and must name one).
fn merge_entries(
    base: &mut Node,
    over: &Node,
    profile: &str,
    section: &str,
    diags: &mut Diagnostics,
) {
    let (YValue::Map(b), Some(o)) = (&mut base.value, over.as_map()) else {
        // The base section is not a map: the spec reader reports it.
        return;
    };
    for (k, v) in o {
        let key = k.as_key();
        let present = b.iter().any(|(bk, _)| bk.as_key() == key);
        if v.is_null() {
            if !present {
                let name = key.clone().unwrap_or_default();
                let names: Vec<String> = b.iter().filter_map(|(k, _)| k.as_key()).collect();
                diags.push(
                    &k.loc,
                    format!("profile `{profile}` removes `{name}` from `{section}`, which does not declare it"),
                    Some(match closest(&name, names.iter().map(String::as_str)) {
                        Some(c) => format!("did you mean `{c}`?"),
                        None => format!("`{section}` has: {}", names.join(", ")),
                    }),
                );
            }
            b.retain(|(bk, _)| bk.as_key() != key);
        } else if let Some(i) = b.iter().rposition(|(bk, _)| bk.as_key() == key) {
            b[i].1 = v.clone();
        } else {
            b.push((k.clone(), v.clone()));
        }
    }
}

/// `nodes`: deep merge into a declared node, `null` removes one, a new node is added.
fn merge_nodes(base: &mut Node, over: &Node, profile: &str, diags: &mut Diagnostics) {
    let (YValue::Map(b), Some(o)) = (&mut base.value, over.as_map()) else {
        return;
    };
    for (k, v) in o {
        let key = k.as_key();
        let at = b.iter().rposition(|(bk, _)| bk.as_key() == key);
        let name = key.clone().unwrap_or_default();
        let names: Vec<String> = b.iter().filter_map(|(k, _)| k.as_key()).collect();
        let suggest = || match closest(&name, names.iter().map(String::as_str)) {
            Some(c) => format!("did you mean `{c}`?"),
            None => "name a node the pipeline declares under `nodes:`".to_string(),
        };
        match at {
            Some(_) if v.is_null() => b.retain(|(bk, _)| bk.as_key() != key),
            // Another operator has other ports and parameters: the node is replaced whole.
            Some(i) if op_of(v).is_some_and(|op| op_of(&b[i].1) != Some(op)) => b[i].1 = v.clone(),
            Some(i) => merge(&mut b[i].1, v),
            None if v.is_null() => diags.push(
                &k.loc,
                format!(
                    "profile `{profile}` removes node `{name}`, which the pipeline does not declare"
                ),
                Some(suggest()),
            ),
            None => {
                let has_op = v
                    .as_map()
                    .is_some_and(|m| m.iter().any(|(k, _)| k.as_key().as_deref() == Some("op")));
                if has_op || v.as_map().is_none() {
                    // A new node (or not a map: the spec reader says so at this place).
                    b.push((k.clone(), v.clone()));
                } else {
                    diags.push(
                        &k.loc,
                        format!(
                            "profile `{profile}` changes node `{name}`, which the pipeline does not declare"
                        ),
                        Some(format!(
                            "{}; a node the profile adds needs its own `op`",
                            suggest()
                        )),
                    );
                }
            }
        }
    }
}

/// The `op` a node map names.
fn op_of(node: &Node) -> Option<&str> {
    node.as_map()?
        .iter()
        .rev()
        .find(|(k, _)| k.as_key().as_deref() == Some("op"))
        .and_then(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests;
