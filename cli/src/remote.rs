//! The shared cache commands: `remote add|list|remove`, `push`, `pull`, `keys
//! generate|trust|list`, and the remote parts of `run --remote` and `verify --remote`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use expflow_engine::{CancelToken, EngineError, RunOptions, Workspace, workspace};
use expflow_remote::{KeyPair, Remote, RemoteSpec, Remotes, Trust, config_dir};

use crate::code;
use crate::inspect::human_bytes;

#[derive(Subcommand)]
pub enum Commands {
    /// The workspace's remote caches (S3 or a directory) shared with other workspaces.
    Remote {
        #[command(subcommand)]
        command: RemoteCommand,
    },
    /// Upload a run's records and the blobs they name to a remote, signed with your key.
    Push {
        /// The run (default: the latest).
        run_id: Option<String>,
        /// Which remote (default: the workspace's only one).
        #[arg(long, value_name = "NAME")]
        remote: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Download trusted records and their blobs from a remote.
    ///
    /// With a pipeline file: its nodes as they are now (nothing executes); with a pipeline
    /// name: every record of that pipeline; with neither: every record.
    Pull {
        /// A pipeline file (its nodes as they are now) or a pipeline name (every record).
        pipeline: Option<String>,
        /// With a pipeline file: only this node and what it needs; repeatable.
        #[arg(long, value_name = "NODE")]
        target: Vec<String>,
        /// Override a global parameter of the pipeline file.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        sets: Vec<String>,
        #[arg(long, value_name = "NAME")]
        remote: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Your signing key and the keys whose records you accept.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
pub enum RemoteCommand {
    /// Add a remote: `s3://BUCKET/PREFIX` (credentials from AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY) or `file:///DIR`.
    Add {
        name: String,
        url: String,
        /// An S3-compatible server (SeaweedFS, MinIO, Ceph), e.g. http://127.0.0.1:8333.
        #[arg(long, value_name = "URL")]
        endpoint: Option<String>,
    },
    /// List the workspace's remotes.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Forget a remote (nothing on it is deleted).
    Remove { name: String },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create your ed25519 signing key (push creates it on first use).
    Generate,
    /// Accept records signed by the public key in FILE (a team mate's signing.pub).
    Trust { file: PathBuf },
    /// The keys whose records you accept (your own included).
    List {
        #[arg(long)]
        json: bool,
    },
}

fn ws_root(ws_arg: &Option<PathBuf>) -> Result<PathBuf> {
    Ok(Workspace::discover(ws_arg.as_deref())?)
}

/// Opens the remote `name` (or the only one) of the workspace at `root`.
pub fn open(root: &Path, name: Option<&str>) -> Result<Remote> {
    let remotes = Remotes::load(root)?;
    let spec = match name {
        Some(n) => remotes.get(n)?.clone(),
        None => match remotes.remotes.as_slice() {
            [one] => one.clone(),
            [] => anyhow::bail!(EngineError::Usage(
                "this workspace has no remote; add one with `expflow remote add NAME URL`".into()
            )),
            many => anyhow::bail!(EngineError::Usage(format!(
                "this workspace has several remotes ({}); choose one with --remote NAME",
                many.iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        },
    };
    let trust = Trust::load(&config_dir())?;
    Ok(Remote::open(&spec, trust)?)
}

/// The shared cache for `run --remote NAME`.
pub fn shared(root: &Path, name: &str) -> Result<Arc<dyn expflow_engine::shared::SharedCache>> {
    Ok(Arc::new(open(root, Some(name)).map_err(usage_code)?))
}

/// A remote's usage errors (a bad URL, an unknown remote) exit with 2 like the engine's.
fn usage_code(e: anyhow::Error) -> anyhow::Error {
    match e.downcast_ref::<expflow_remote::RemoteError>() {
        Some(expflow_remote::RemoteError::Usage(msg)) => EngineError::Usage(msg.clone()).into(),
        _ => e,
    }
}

pub fn dispatch(ws_arg: &Option<PathBuf>, cmd: Commands) -> Result<u8> {
    dispatch_inner(ws_arg, cmd).map_err(usage_code)
}

fn dispatch_inner(ws_arg: &Option<PathBuf>, cmd: Commands) -> Result<u8> {
    match cmd {
        Commands::Remote { command } => remote_cmd(ws_arg, command),
        Commands::Push {
            run_id,
            remote,
            json,
        } => push(ws_arg, run_id, remote, json),
        Commands::Pull {
            pipeline,
            target,
            sets,
            remote,
            json,
        } => pull(ws_arg, pipeline, target, sets, remote, json),
        Commands::Keys { command } => keys(command),
    }
}

fn remote_cmd(ws_arg: &Option<PathBuf>, cmd: RemoteCommand) -> Result<u8> {
    let root = ws_root(ws_arg)?;
    let mut remotes = Remotes::load(&root)?;
    match cmd {
        RemoteCommand::Add {
            name,
            url,
            endpoint,
        } => {
            remotes.add(RemoteSpec {
                name: name.clone(),
                url: url.clone(),
                endpoint,
            })?;
            remotes.save(&root)?;
            println!("added remote {name}: {url}");
        }
        RemoteCommand::List { json } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&remotes.remotes)?);
            } else {
                for r in &remotes.remotes {
                    match &r.endpoint {
                        Some(ep) => println!("{}\t{}\t(endpoint {ep})", r.name, r.url),
                        None => println!("{}\t{}", r.name, r.url),
                    }
                }
            }
        }
        RemoteCommand::Remove { name } => {
            remotes.remove(&name)?;
            remotes.save(&root)?;
            println!("removed remote {name} (nothing on it was deleted)");
        }
    }
    Ok(0)
}

fn push(
    ws_arg: &Option<PathBuf>,
    run_id: Option<String>,
    remote: Option<String>,
    json: bool,
) -> Result<u8> {
    let root = ws_root(ws_arg)?;
    let ws = Workspace::open(&root, workspace::holder("push", "", None))?;
    let runs = ws.store.runs()?;
    let run = match &run_id {
        Some(id) => {
            let found: Vec<_> = runs
                .iter()
                .filter(|r| r.run_id.starts_with(id.as_str()))
                .collect();
            match found.as_slice() {
                [one] => *one,
                [] => anyhow::bail!(EngineError::Usage(format!(
                    "no run {id} in this workspace; `expflow runs` lists them"
                ))),
                _ => anyhow::bail!(EngineError::Usage(format!(
                    "run id {id} is ambiguous; give more of it"
                ))),
            }
        }
        None => runs.last().ok_or_else(|| {
            EngineError::Usage("this workspace has no run to push; run a pipeline first".into())
        })?,
    };
    let mut records = Vec::new();
    for (_, key) in &run.nodes {
        // A node that was a remote hit and never downloaded has no local record: the
        // remote has it already.
        if let Some(rec) = ws.store.get_record(key)? {
            records.push(rec);
        }
    }
    let r = open(&root, remote.as_deref())?;
    let (key, created) = KeyPair::load_or_generate(&config_dir())?;
    if created {
        eprintln!(
            "created your signing key {} ({}) in {}; team mates trust it with `expflow keys trust signing.pub`",
            key.public.id(),
            key.public.label,
            config_dir().display()
        );
    }
    let report = r.push(&ws.cas, &records, &key)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "pushed run {} to remote {}: {} records published, {} already there; {} blobs uploaded ({}, {}/s), {} already there",
            run.run_id,
            r.name(),
            report.records_published,
            report.records_present,
            report.blobs_uploaded,
            human_bytes(report.bytes_uploaded),
            human_bytes((report.bytes_uploaded as f64 / report.seconds.max(1e-3)) as u64),
            report.blobs_present
        );
    }
    Ok(0)
}

fn pull(
    ws_arg: &Option<PathBuf>,
    pipeline: Option<String>,
    target: Vec<String>,
    sets: Vec<String>,
    remote: Option<String>,
    json: bool,
) -> Result<u8> {
    let file = pipeline.as_deref().map(Path::new).filter(|p| p.is_file());
    let Some(file) = file else {
        anyhow::ensure!(
            target.is_empty() && sets.is_empty(),
            EngineError::Usage("--target and --set need a pipeline file".into())
        );
        let root = ws_root(ws_arg)?;
        let ws = Workspace::open(
            &root,
            workspace::holder("pull", pipeline.as_deref().unwrap_or(""), None),
        )?;
        let r = open(&root, remote.as_deref())?;
        let report = r.pull_all(&ws.cas, ws.store.as_ref(), pipeline.as_deref())?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "pulled {} records from remote {} ({} blobs, {}); {} were here already",
                report.records,
                r.name(),
                report.blobs,
                human_bytes(report.bytes),
                report.present
            );
        }
        return Ok(0);
    };
    let args = crate::PipelineArgs {
        pipeline: file.to_path_buf(),
        sets,
        inputs: Vec::new(),
        profile: Vec::new(),
        max_nodes: expflow_engine::limits::DEFAULT_MAX_NODES,
    };
    let p = crate::load(&args)?;
    let root = Workspace::locate(file, ws_arg.as_deref());
    let ws = Workspace::open(&root, workspace::holder("pull", &p.name, None))?;
    let remote = open(ws.root(), remote.as_deref())?;
    let name = remote.name().to_string();
    let opts = RunOptions {
        targets: target,
        shared: Some(Arc::new(remote)),
        fetch_only: true,
        ..RunOptions::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let run_id = workspace::new_run_id();
    let summary = rt.block_on(expflow_engine::run(
        &ws,
        &p,
        &run_id,
        &opts,
        CancelToken::new(),
    ))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "pulled {} nodes of {} from remote {name}; {} were here already; {} are in neither cache",
            summary.fetched.len(),
            p.name,
            summary.cached.len() - summary.remote.len(),
            summary.skipped.len()
        );
        for (node, err) in &summary.errors {
            eprintln!("failed: {node}: {err}");
        }
    }
    Ok(if summary.failed.is_empty() {
        0
    } else {
        code::FAILED
    })
}

fn keys(cmd: KeysCommand) -> Result<u8> {
    let dir = config_dir();
    match cmd {
        KeysCommand::Generate => {
            let k = KeyPair::generate(&dir)?;
            println!(
                "created key {} ({}); your public key is {} (give it to team mates: `expflow keys trust FILE`)",
                k.public.id(),
                k.public.label,
                dir.join("signing.pub").display()
            );
        }
        KeysCommand::Trust { file } => {
            let k = Trust::add_file(&dir, &file)?;
            println!("trusting key {} ({})", k.id(), k.label);
        }
        KeysCommand::List { json } => {
            let trust = Trust::load(&dir)?;
            if json {
                let v: Vec<_> = trust
                    .list()
                    .iter()
                    .map(|(k, own)| serde_json::json!({"id": k.id(), "key": k.to_hex(), "label": k.label, "own": own}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for (k, own) in trust.list() {
                    println!(
                        "{}\t{}{}",
                        k.id(),
                        k.label,
                        if own { "\t(yours)" } else { "" }
                    );
                }
            }
        }
    }
    Ok(0)
}

/// `verify --remote NAME`: exit 4 when a blob is missing or corrupt or a signature is bad.
pub fn verify(ws_arg: &Option<PathBuf>, name: &str, fraction: f64, json: bool) -> Result<u8> {
    let root = ws_root(ws_arg)?;
    let r = open(&root, Some(name)).map_err(usage_code)?;
    let report = r.verify(fraction).map_err(|e| usage_code(e.into()))?;
    let clean = report.is_clean();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "remote {name}: checked {} records and {} blobs; re-hashed {} blobs ({})",
            report.records_checked,
            report.blobs_referenced,
            report.blobs_rehashed,
            human_bytes(report.bytes_rehashed)
        );
        for m in &report.missing {
            println!("missing: {m}");
        }
        for c in &report.corrupt {
            println!("corrupt: {c}");
        }
        for r in &report.rejected {
            println!("not used: {r}");
        }
        println!("{}", if clean { "ok" } else { "MISMATCH" });
    }
    Ok(if clean { 0 } else { code::MISMATCH })
}
