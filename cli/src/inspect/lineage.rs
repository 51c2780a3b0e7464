//! `lineage NODE`: the tree of records that produced a node's outputs.

use super::*;

pub fn lineage(
    ws_arg: &Option<PathBuf>,
    node: &str,
    pipeline: Option<String>,
    json: bool,
) -> Result<u8> {
    let ws = open(ws_arg, "lineage")?;
    let pipeline = pipeline_name(&ws, pipeline)?;
    let rec = last_record(&ws, &pipeline, node)?;
    let records = ws.store.records()?;
    let mut producer: HashMap<Digest, &Record> = HashMap::new();
    for r in &records {
        for o in r.outputs.values() {
            producer.entry(o.digest).or_insert(r);
        }
    }
    let tree = lineage_tree(&rec, &producer, 0);
    if json {
        println!("{}", serde_json::to_string_pretty(&tree)?);
    } else {
        let mut out = String::new();
        lineage_text(&tree, 0, &mut out);
        print!("{out}");
    }
    Ok(0)
}

fn lineage_tree(
    rec: &Record,
    producer: &HashMap<Digest, &Record>,
    depth: usize,
) -> serde_json::Value {
    let material = expflow_engine::KeyMaterial::from_json(&rec.material);
    let mut inputs = Vec::new();
    if let Some(m) = &material {
        for (port, d) in &m.inputs {
            let source = m.sources.get(port).cloned().unwrap_or_default();
            let from = match producer.get(d) {
                Some(up) if depth < 64 && up.key != rec.key => {
                    lineage_tree(up, producer, depth + 1)
                }
                _ => json!({"external": source}),
            };
            inputs
                .push(json!({"port": port, "digest": d.to_hex(), "source": source, "from": from}));
        }
    }
    json!({
        "node": rec.node,
        "op": format!("{}@{}", rec.op, rec.op_version),
        "key": rec.key.to_hex(),
        "run_id": rec.run_id,
        "params": material.as_ref().map(|m| serde_json::Value::Object(m.params.clone())),
        "outputs": rec.outputs.iter().map(|(k, o)| (k.clone(), json!(o.digest.to_hex()))).collect::<serde_json::Map<_, _>>(),
        "inputs": inputs,
    })
}

fn lineage_text(v: &serde_json::Value, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let _ = writeln!(
        out,
        "{pad}{} ({}) key {} run {}",
        s("node"),
        s("op"),
        &s("key")[..12.min(s("key").len())],
        s("run_id")
    );
    if let Some(inputs) = v["inputs"].as_array() {
        for i in inputs {
            let d = i["digest"].as_str().unwrap_or_default();
            let _ = writeln!(
                out,
                "{pad}  <- {} = {} ({})",
                i["port"].as_str().unwrap_or_default(),
                i["source"].as_str().unwrap_or_default(),
                &d[..12.min(d.len())]
            );
            if i["from"].get("node").is_some() {
                lineage_text(&i["from"], depth + 2, out);
            }
        }
    }
}
