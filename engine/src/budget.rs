//! How much a pipeline file may expand into when it compiles. A short file can ask for a
//! huge graph: a matrix of 30 variables with 2 values each is 2^30 nodes, and a parameter
//! written once can be copied into every node through `${params.…}`. Compiling charges every
//! node instance and every copied value to one budget, proportional to the file's length
//! with a floor that no honest pipeline reaches, and reports the node that overdraws it
//! instead of running out of memory.

use std::cell::Cell;

use serde_json::Value;

use crate::yaml::{Node, YValue};

/// The least budget, in JSON values: about 150 MB of compiled parameters.
pub const MIN_VALUES: usize = 1_000_000;

pub struct Budget {
    limit: usize,
    spent: Cell<usize>,
}

impl Budget {
    /// The budget for a pipeline file of `text_len` bytes.
    pub fn for_text(text_len: usize) -> Budget {
        Budget {
            limit: MIN_VALUES.max(text_len),
            spent: Cell::new(0),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Charges `values`; false once the budget is overdrawn (and from then on).
    pub fn charge(&self, values: usize) -> bool {
        let spent = self.spent.get().saturating_add(values);
        self.spent.set(spent);
        spent <= self.limit
    }
}

/// The number of values in `v` (a scalar is one; a list or map is one plus its items).
pub fn json_values(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(json_values).sum::<usize>(),
        Value::Object(m) => 1 + m.values().map(json_values).sum::<usize>(),
        _ => 1,
    }
}

/// The number of values in `n`, as [`json_values`] counts its JSON.
pub fn yaml_values(n: &Node) -> usize {
    match &n.value {
        YValue::Seq(items) => 1 + items.iter().map(yaml_values).sum::<usize>(),
        YValue::Map(entries) => 1 + entries.iter().map(|(_, v)| yaml_values(v)).sum::<usize>(),
        _ => 1,
    }
}
