//! Golden keys: these literals pin the key schema. If one changes, the change altered what
//! every stored record is found by: bump KEY_SCHEMA and update docs/key-schema.md.

use std::collections::BTreeMap;

use expflow_cache::Digest;
use expflow_engine::{KEY_SCHEMA, KeyMaterial, PortType};
use serde_json::json;

fn material() -> KeyMaterial {
    KeyMaterial {
        schema: KEY_SCHEMA,
        op: "table.filter".into(),
        op_version: 1,
        params: json!({"where": "score >= 0.6", "limit": 10})
            .as_object()
            .unwrap()
            .clone(),
        inputs: BTreeMap::from([("table".to_string(), Digest::of_bytes(b"rows"))]),
        outputs: BTreeMap::from([("table".to_string(), PortType::Table)]),
        env: BTreeMap::from([("ffmpeg".to_string(), "5.1.9".to_string())]),
        seed: Some(42),
        metrics: Vec::new(),
        input_types: BTreeMap::new(),
        sources: BTreeMap::new(),
    }
}

#[test]
fn golden_key() {
    assert_eq!(
        material().key().to_hex(),
        "aa1b482ba598dc537dfb2d985874d41e8baf7dcb8f39a479a6073734a8018e03"
    );
}

#[test]
fn golden_key_of_a_minimal_command() {
    let m = KeyMaterial {
        schema: KEY_SCHEMA,
        op: "command".into(),
        op_version: 1,
        params: json!({"run": "echo hi > ${out.o}", "shell": "sh", "env": {}})
            .as_object()
            .unwrap()
            .clone(),
        inputs: BTreeMap::new(),
        outputs: BTreeMap::from([("o".to_string(), PortType::File)]),
        env: BTreeMap::new(),
        seed: None,
        metrics: Vec::new(),
        input_types: BTreeMap::new(),
        sources: BTreeMap::new(),
    };
    // Independently: printf 'expflow-node-key\0{"env":{},"inputs":{},"op":"command",
    // "op_version":1,"outputs":{"o":"file"},"params":{"env":{},"run":"echo hi > ${out.o}",
    // "shell":"sh"},"schema":1,"seed":null}' | b3sum
    assert_eq!(
        m.key().to_hex(),
        "8c9039b40a16ed10180b76089c66c3c2119dc7f9574a929d3eb577f1d603eead"
    );
    let canonical = concat!(
        "expflow-node-key\0",
        r#"{"env":{},"inputs":{},"op":"command","op_version":1,"outputs":{"o":"file"},"#,
        r#""params":{"env":{},"run":"echo hi > ${out.o}","shell":"sh"},"schema":1,"seed":null}"#
    );
    assert_eq!(m.key(), Digest::of_bytes(canonical.as_bytes()));
}

#[test]
fn every_hashed_field_changes_the_key() {
    let base = material().key();
    let mut m = material();
    m.schema += 1;
    assert_ne!(m.key(), base, "schema");
    let mut m = material();
    m.op = "table.select".into();
    assert_ne!(m.key(), base, "op");
    let mut m = material();
    m.op_version = 2;
    assert_ne!(m.key(), base, "op_version");
    let mut m = material();
    m.params.insert("limit".into(), json!(11));
    assert_ne!(m.key(), base, "params");
    let mut m = material();
    m.inputs
        .insert("table".into(), Digest::of_bytes(b"other rows"));
    assert_ne!(m.key(), base, "inputs");
    let mut m = material();
    m.outputs.insert("table".into(), PortType::File);
    assert_ne!(m.key(), base, "outputs");
    let mut m = material();
    m.env.insert("ffmpeg".into(), "6.0".into());
    assert_ne!(m.key(), base, "env");
    let mut m = material();
    m.seed = Some(43);
    assert_ne!(m.key(), base, "seed");
}

#[test]
fn annotations_and_number_spelling_do_not_change_the_key() {
    let base = material().key();
    let mut m = material();
    m.input_types.insert("table".into(), PortType::Table);
    m.sources.insert("table".into(), "load.table".into());
    assert_eq!(m.key(), base);
    let mut m = material();
    m.params.insert("limit".into(), json!(10.0));
    assert_eq!(m.key(), base, "10 and 10.0 are one number");
}

#[test]
fn material_round_trips_through_json_and_diff_names_fields() {
    let m = material();
    let back = KeyMaterial::from_json(&m.to_json()).unwrap();
    assert_eq!(back, m);
    let mut changed = material();
    changed.params.insert("limit".into(), json!(20));
    changed
        .inputs
        .insert("table".into(), Digest::of_bytes(b"new"));
    let d = changed.diff(&m);
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(d[0], "param limit: 10 → 20");
    assert!(d[1].starts_with("input table changed ("), "{}", d[1]);
}

#[test]
fn naming_metrics_outputs_changes_the_key_and_an_empty_list_does_not() {
    let plain = material();
    let mut named = material();
    named.metrics = vec!["table".into()];
    assert_ne!(plain.key(), named.key());
    // The golden key above is the key of an empty list: nodes without `metrics:` keep theirs.
    let json = plain.to_json();
    assert!(json.get("metrics").is_none(), "{json}");
    assert_eq!(KeyMaterial::from_json(&json).unwrap().key(), plain.key());
}
