//! expflow's generic operators, one module each, grouped by family:
//! - `io`: `load` (a file into a table) and `export` (a table into a file);
//! - `table`: `table.select`, `table.filter`, `table.join`, `table.concat`, `table.sort`,
//!   `table.dedupe`, `table.sample`, `table.split`;
//! - `command`: run a shell command over the node's input and output paths.
//!
//! [`registry`] returns all of them. Table artifacts are read and written through
//! [`table_io`], whose pinned Parquet writer makes equal content give equal bytes.

use std::sync::Arc;

use expflow_engine::Registry;

pub mod command;
pub mod error;
pub mod io;
pub mod params;
pub mod table;
pub mod table_io;

#[cfg(test)]
mod testing;

pub use error::OperatorError;

/// Every operator of this crate, by kind.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(io::Load));
    r.register(Arc::new(io::Export));
    r.register(Arc::new(table::Select));
    r.register(Arc::new(table::Filter));
    r.register(Arc::new(table::Join));
    r.register(Arc::new(table::Concat));
    r.register(Arc::new(table::Sort));
    r.register(Arc::new(table::Dedupe));
    r.register(Arc::new(table::Sample));
    r.register(Arc::new(table::Split));
    r.register(Arc::new(command::Command));
    r
}

#[cfg(test)]
mod tests {
    use expflow_engine::params::fill_defaults;
    use expflow_engine::{Determinism, ParamKind};
    use serde_json::{Map, Value, json};

    use super::*;

    const KINDS: [&str; 11] = [
        "command",
        "export",
        "load",
        "table.concat",
        "table.dedupe",
        "table.filter",
        "table.join",
        "table.sample",
        "table.select",
        "table.sort",
        "table.split",
    ];

    /// A valid value for each required parameter, by operator and name.
    fn required_value(kind: &str, name: &str) -> Value {
        match (kind, name) {
            ("export", "format") => json!("jsonl"),
            ("table.filter", "where") => json!("x > 1"),
            ("command", "run") => json!("cat ${in.a} > ${out.b}"),
            (_, "columns" | "by") => json!(["x"]),
            (_, "group") => json!("x"),
            (k, n) => panic!("no test value for required parameter `{n}` of {k}"),
        }
    }

    #[test]
    fn registry_has_every_kind() {
        let r = registry();
        assert_eq!(r.kinds().collect::<Vec<_>>(), KINDS);
        for kind in KINDS {
            assert_eq!(r.get(kind).unwrap().kind(), kind);
        }
    }

    #[test]
    fn defaults_pass_the_schema_and_the_checks() {
        let r = registry();
        for kind in r.kinds() {
            let op = r.get(kind).unwrap();
            let sig = op.signature();
            let mut given = Map::new();
            for spec in &sig.params {
                if let Some(d) = &spec.default {
                    assert!(
                        d.is_null() || spec.kind.accepts(d),
                        "{kind}: default of `{}` is not a {}",
                        spec.name,
                        spec.kind.as_str()
                    );
                } else {
                    given.insert(spec.name.to_string(), required_value(kind, spec.name));
                }
            }
            let (filled, problems) = fill_defaults(&sig, &given);
            assert!(problems.is_empty(), "{kind}: {problems:?}");
            // Two operators need one of a pair of optional parameters.
            let mut filled = filled;
            match kind {
                "table.sample" => filled.insert("n".into(), json!(3)),
                "table.join" => filled.insert("on".into(), json!(["x"])),
                _ => None,
            };
            assert_eq!(op.check(&filled), Vec::<String>::new(), "{kind}");
        }
    }

    #[test]
    fn seeded_operators_take_a_seed() {
        let r = registry();
        for kind in r.kinds() {
            let sig = r.get(kind).unwrap().signature();
            let has_seed = sig.param("seed").is_some_and(|p| p.kind == ParamKind::Int);
            assert_eq!(
                sig.determinism == Determinism::Seeded,
                has_seed,
                "{kind}: seeded operators, and only they, have an integer `seed`"
            );
        }
    }
}
