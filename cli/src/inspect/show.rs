//! `show NODE[.PORT]`: a stored artifact, as rows of a table or as text.

use super::*;

pub fn show(
    ws_arg: &Option<PathBuf>,
    target: &str,
    pipeline: Option<String>,
    rows: usize,
    json: bool,
) -> Result<u8> {
    let ws = open(ws_arg, "show")?;
    let pipeline = pipeline_name(&ws, pipeline)?;
    let (node, port) = match target.rfind(']') {
        Some(end) => (&target[..=end], target[end + 1..].strip_prefix('.')),
        None => match target.split_once('.') {
            Some((n, p)) => (n, Some(p)),
            None => (target, None),
        },
    };
    let rec = last_record(&ws, &pipeline, node)?;
    let (port, out) = match port {
        Some(p) => match rec.outputs.get(p) {
            Some(o) => (p.to_string(), o.clone()),
            None => bail!(EngineError::Usage(format!(
                "node `{}` has no output `{p}`; it has: {}",
                rec.node,
                rec.outputs.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
        },
        None if rec.outputs.len() == 1 => {
            let (p, o) = rec.outputs.iter().next().expect("one output");
            (p.clone(), o.clone())
        }
        None => bail!(EngineError::Usage(format!(
            "node `{}` has outputs {}; name one as NODE.PORT",
            rec.node,
            rec.outputs.keys().cloned().collect::<Vec<_>>().join(", ")
        ))),
    };
    let path = ws.cas.blob_path(&out.digest);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"node": rec.node, "port": port, "kind": out.kind, "digest": out.digest.to_hex(), "size": out.size, "path": path})
            )?
        );
        return Ok(0);
    }
    println!(
        "{}.{port}: {} {} ({})",
        rec.node,
        out.kind,
        out.digest,
        human_bytes(out.size)
    );
    if out.dir {
        for e in ws.cas.read_manifest(&out.digest)?.entries {
            println!(
                "  {:o} {:>10} {} {}",
                e.mode,
                e.size,
                e.digest.short(),
                e.path
            );
        }
    } else if out.kind == "table" {
        print!("{}", expflow_operators::table_io::preview(&path, rows)?);
    } else {
        let bytes = std::fs::read(&path)?;
        match std::str::from_utf8(&bytes) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                for l in lines.iter().take(rows.max(1) * 5) {
                    println!("{l}");
                }
                if lines.len() > rows.max(1) * 5 {
                    println!(
                        "… ({} more lines; the file is {})",
                        lines.len() - rows.max(1) * 5,
                        path.display()
                    );
                }
            }
            Err(_) => println!("(binary; the file is {})", path.display()),
        }
    }
    Ok(0)
}
