//! The `expflow` command line.
//!
//! Dependencies: every library crate it exposes (engine, cache, operators, serve, and the
//! runtime crates for `score`, `synth` and `serve`); the only crate that may use anyhow.
//! Nothing depends on it.

mod check;
mod history;
mod inspect;
mod maint;
mod nodelog;
mod progress;
mod remote;
mod report;
mod score;
mod serve;
mod synth;
mod synth_mac;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use expflow_engine::run::Prefetch;
use expflow_engine::{CancelToken, EngineError, Registry, RunOptions, Workspace, workspace};

/// Exit codes (a public contract): 0 success, 1 a node failed, 2 invalid pipeline or usage,
/// 3 workspace held by another run, 4 verify or audit found a mismatch, 130 interrupted.
mod code {
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const HELD: u8 = 3;
    pub const MISMATCH: u8 = 4;
    pub const INTERRUPTED: u8 = 130;
}

/// Runs declarative ML-experiment pipelines: a YAML file compiles to a content-hashed DAG;
/// finished nodes are recorded, outputs stored by content, and a re-run executes only what
/// an edit changed.
#[derive(Parser)]
#[command(name = "expflow", version, about, long_about = None)]
struct Cli {
    /// The workspace directory (default: `.expflow` next to the pipeline file, or found in
    /// the current directory or its parents).
    #[arg(long, global = true, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// How `runs` and `compare` print their table (text by default).
#[derive(clap::Args, Clone, Copy)]
struct TableFormat {
    #[arg(long, group = "table_format")]
    json: bool,
    /// A Markdown table.
    #[arg(long, group = "table_format")]
    md: bool,
    #[arg(long, group = "table_format")]
    csv: bool,
}

impl TableFormat {
    fn get(self) -> history::Format {
        history::Format::of(self.json, self.md, self.csv)
    }
}

#[derive(clap::Args, Clone)]
struct PipelineArgs {
    /// The pipeline file.
    pipeline: PathBuf,
    /// Override a global parameter, e.g. `--set seed=7` or `--set train.lr=2e-4`.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    sets: Vec<String>,
    /// Refuse a pipeline whose matrices expand to more nodes than this.
    #[arg(long, value_name = "N", default_value_t = expflow_engine::limits::DEFAULT_MAX_NODES)]
    max_nodes: usize,
    /// Read a declared input from another path, e.g. `--input datasets=/data/mac` (relative
    /// to the current directory); repeatable. Keys see the content only.
    #[arg(long = "input", value_name = "NAME=PATH")]
    inputs: Vec<String>,
    /// Merge a profile declared under `profiles:` (comma-separated: applied in order).
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    profile: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline: execute what changed, reuse the rest.
    Run {
        #[command(flatten)]
        p: PipelineArgs,
        /// Run only this node (and what it needs); repeatable.
        #[arg(long, value_name = "NODE")]
        target: Vec<String>,
        /// How many nodes may execute at once (default: the number of CPUs).
        #[arg(long, short)]
        jobs: Option<usize>,
        /// Keep running independent nodes after a node fails.
        #[arg(long)]
        keep_going: bool,
        /// Print one JSON object at the end: run_id, executed, cached, failed, skipped.
        #[arg(long)]
        json: bool,
        /// Replace what is at an `outputs:` destination even if expflow did not write it
        /// (or it was edited since); the old content is replaced atomically.
        #[arg(long)]
        force_outputs: bool,
        /// On a local miss, use the record of this remote cache (downloading only the
        /// blobs the targets need).
        #[arg(long, value_name = "NAME")]
        remote: Option<String>,
        /// Where nodes that name no `executor:` run: `local` (this machine) or `slurm`
        /// (settings in .expflow/config.yaml or ~/.config/expflow/config.yaml).
        #[arg(long, value_name = "NAME")]
        executor: Option<String>,
        /// How cluster jobs reach the data: `shared` (the workspace is on a file system the
        /// compute nodes share) or `object` (through the `--remote` cache; no shared file
        /// system). Default: `slurm.data` in the config, else `shared`.
        #[arg(long, value_name = "MODE")]
        data: Option<String>,
    },
    /// Show what a run would do, and why, without running anything.
    Plan {
        #[command(flatten)]
        p: PipelineArgs,
        #[arg(long, value_name = "NODE")]
        target: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Explain a node's key: what changed since its last run, field by field.
    Explain {
        #[command(flatten)]
        p: PipelineArgs,
        /// The node (a matrix node explains every sweep point).
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// Validate a pipeline file completely, its base and every profile (or the named ones),
    /// without needing its inputs to exist; exit 2 on a problem.
    Check {
        #[command(flatten)]
        p: PipelineArgs,
        #[arg(long)]
        json: bool,
    },
    /// The workspace: runs, records, stored bytes, and who holds it.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// A run's events, or one node's log.
    Log {
        /// A node: print its log from the run that produced its current record (or from
        /// --run).
        node: Option<String>,
        /// The run (default: the latest; for a node, the run that produced its record).
        #[arg(long, value_name = "RUN_ID")]
        run: Option<String>,
        /// The pipeline of NODE (default: the latest run's).
        #[arg(long)]
        pipeline: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One line per run: when, status, nodes executed and cached, the parameters that
    /// changed since the previous run, and its metrics.
    Runs {
        /// A pipeline name or file (default: every pipeline).
        pipeline: Option<String>,
        #[command(flatten)]
        format: TableFormat,
    },
    /// What changed from RUN_A to RUN_B: parameters, metrics (with the causes upstream of
    /// each), and every node that re-ran with why.
    Diff {
        /// A run id (or a unique prefix of one).
        run_a: String,
        run_b: String,
        #[arg(long)]
        json: bool,
        #[arg(long, conflicts_with = "json")]
        md: bool,
    },
    /// A table of every run of a pipeline, one row per run and matrix point, columns
    /// grouped as parameters | metrics.
    Compare {
        /// A pipeline name or file.
        pipeline: String,
        /// Only the columns whose values differ between rows (the default on a terminal).
        #[arg(long)]
        only_changed: bool,
        /// Every column, also on a terminal.
        #[arg(long, conflicts_with = "only_changed")]
        all: bool,
        /// Sort rows by a metric column, highest first (`NAME:asc`: lowest first).
        #[arg(long, value_name = "METRIC")]
        sort: Option<String>,
        #[command(flatten)]
        format: TableFormat,
    },
    /// Write one self-contained HTML file about a run, for reading offline: DAG, timeline,
    /// node records and logs, metrics, training curves, and what changed since --baseline.
    Report {
        /// A run id (or a unique prefix), or a pipeline name or file for its latest run
        /// (default: the workspace's latest run).
        run: Option<String>,
        /// A run to compare with (as `expflow diff BASELINE RUN`).
        #[arg(long, value_name = "RUN_ID")]
        baseline: Option<String>,
        /// The HTML file to write.
        #[arg(long, value_name = "FILE.html")]
        out: PathBuf,
    },
    /// Where a node's output came from: its inputs, recursively, with keys and digests.
    Lineage {
        node: String,
        /// The pipeline name (default: the latest run's).
        #[arg(long)]
        pipeline: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show a node's output (a table's first rows, a file, a directory listing).
    Show {
        /// NODE or NODE.PORT.
        target: String,
        #[arg(long)]
        pipeline: Option<String>,
        /// Rows of a table to print.
        #[arg(long, default_value_t = 10)]
        rows: usize,
        #[arg(long)]
        json: bool,
    },
    /// Print the pipeline's graph.
    Graph {
        #[command(flatten)]
        p: PipelineArgs,
        #[arg(long, value_enum, default_value = "dot")]
        format: inspect::GraphFormat,
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every stored blob and check every record; exit 4 on a mismatch.
    Verify {
        /// Check this remote instead: every record's blobs exist, a sample is re-hashed.
        #[arg(long, value_name = "NAME")]
        remote: Option<String>,
        /// With --remote: the fraction of blobs to download and re-hash.
        #[arg(long, default_value_t = 0.1, requires = "remote")]
        fraction: f64,
        #[arg(long)]
        json: bool,
    },
    /// Verify, then re-execute a sample of recorded nodes and compare what their class allows.
    Audit {
        /// Fraction of recorded nodes to re-execute.
        #[arg(long, default_value_t = 0.1)]
        fraction: f64,
        /// Seed of the sample.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// How far metrics may move where a node's class allows it (nondeterministic nodes;
        /// seeded ones re-executed with other threads or on another host): absolute for
        /// values up to 1, relative above.
        #[arg(long, default_value_t = 0.05)]
        tolerance: f64,
        #[arg(long)]
        json: bool,
    },
    /// Delete what the last N runs of each pipeline and pinned runs do not reach.
    Gc {
        /// Report what would go, and how many bytes, without deleting.
        #[arg(long)]
        dry_run: bool,
        /// Runs to keep per pipeline.
        #[arg(long, default_value_t = 3)]
        keep: usize,
        /// Also delete the resumable state of interrupted training nodes (.expflow/resume).
        #[arg(long)]
        drop_resume: bool,
        #[arg(long)]
        json: bool,
    },
    /// Keep a run's results through gc.
    Pin { run_id: String },
    /// Let gc collect a pinned run again.
    Unpin { run_id: String },
    /// Score a JSONL file of hypotheses and references (or MAC responses) outside a pipeline.
    Score {
        /// Rows `{"hyp", "refs"}`, ExpStar's `{"gt": {"feedback"}, "pred": {"feedback"}}`,
        /// or MAC's `{"response", "answer"}` for accuracy.
        file: PathBuf,
        /// Comma-separated: bleu, rouge_l, meteor, cider_d, accuracy.
        #[arg(long, default_value = "bleu,rouge_l,meteor,cider_d")]
        metrics: String,
        /// WordNet 3.0 directory for METEOR (default /usr/share/wordnet, package wordnet-base).
        #[arg(long, value_name = "DIR")]
        wordnet: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Serve a model directory over an OpenAI-compatible HTTP API until Ctrl-C.
    Serve(serve::ServeArgs),
    /// Write synthetic data (deterministic for a seed) for tests and benchmarks.
    Synth {
        #[command(subcommand)]
        command: synth::SynthCommand,
    },
    #[command(flatten)]
    Shared(remote::Commands),
    /// The record database.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Run one task file inside a cluster job (written by `run --executor slurm`).
    #[command(hide = true)]
    Worker {
        /// The task file (`.expflow/runs/RUN/tasks/NODE.ATTEMPT.json`), or in the object
        /// data mode the task's object path on the remote (`jobs/RUN/tasks/…`).
        task: PathBuf,
        /// The object data mode: the remote the task, inputs and outputs travel through
        /// (`--workspace` is then the job's own workspace).
        #[arg(long, value_name = "NAME", requires = "remote_url")]
        remote_name: Option<String>,
        #[arg(long, value_name = "URL", requires = "remote_name")]
        remote_url: Option<String>,
        #[arg(long, value_name = "URL", requires = "remote_url")]
        remote_endpoint: Option<String>,
    },
}

#[derive(Subcommand)]
enum DbCommand {
    /// Recreate the record index from the journal and the CAS (the old one is kept aside).
    Rebuild,
}

/// Lets `expflow show ... | head` end quietly when the reader closes the pipe, as other
/// command-line tools do, instead of panicking in `println!`. Rust ignores SIGPIPE by
/// default; commands that write (run, gc, ...) and the server keep that, so a closed pipe
/// never stops them half-way.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called once at start-up, before any thread is spawned; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Read-only commands whose output is often piped into `head` or `less`.
    if matches!(
        cli.command,
        Command::Plan { .. }
            | Command::Explain { .. }
            | Command::Check { .. }
            | Command::Runs { .. }
            | Command::Diff { .. }
            | Command::Compare { .. }
            | Command::Status { .. }
            | Command::Log { .. }
            | Command::Lineage { .. }
            | Command::Show { .. }
            | Command::Graph { .. }
    ) {
        restore_sigpipe();
    }
    // hnsw_rs logs its build parameters at info level through `log`; keep that for -vv.
    // sled reports its own I/O failures at error level, several lines each, before the
    // store turns them into one error with the path; its logs show only from -vv on.
    let filter = match cli.verbose {
        0 => "warn,sled=off",
        1 => "info,hnsw_rs=warn,sled=off",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EXPFLOW_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<EngineError>() {
        Some(EngineError::Invalid(_) | EngineError::Usage(_)) => code::USAGE,
        Some(EngineError::Held { .. }) => code::HELD,
        Some(EngineError::Cache(expflow_cache::CacheError::DbLocked { .. })) => code::HELD,
        _ => code::FAILED,
    }
}

fn registry() -> Registry {
    expflow_operators::registry()
}

/// Parses `--set a.b=v`: the value is read as YAML (numbers, booleans, lists), else a string.
fn parse_sets(sets: &[String]) -> Result<Vec<(String, serde_json::Value)>> {
    sets.iter()
        .map(|s| {
            let (k, v) = s.split_once('=').ok_or_else(|| {
                EngineError::Usage(format!("--set {s}: write NAME=VALUE, e.g. --set seed=7"))
            })?;
            let value = match expflow_engine::yaml::parse(v) {
                Ok(node) if !node.is_null() || v.trim() == "null" => node.to_json(),
                _ => serde_json::Value::String(v.to_string()),
            };
            Ok((k.trim().to_string(), value))
        })
        .collect()
}

fn load(p: &PipelineArgs) -> Result<expflow_engine::Pipeline> {
    let opts = check::options(p)?;
    Ok(expflow_engine::compile::load_with(
        &p.pipeline,
        &registry(),
        &opts,
    )?)
}

/// Compiles the pipeline and opens its workspace. A workspace that exists already opens
/// on a second thread while the pipeline compiles (the record store's recovery, the lock,
/// leftovers of killed runs), and with `prefetch` that thread goes on to look up what a
/// run (or a plan) of the pipeline the file names looks up first ([`Prefetch`]); the holder names
/// the pipeline once it is known. A new workspace is created only after the pipeline has
/// compiled, so that a broken pipeline file leaves no `.expflow/` behind. A pipeline error
/// wins over a workspace error, as when the two ran one after the other.
fn load_and_open(
    cli_ws: &Option<PathBuf>,
    p: &PipelineArgs,
    command: &str,
    run_id: Option<String>,
    prefetch: bool,
) -> Result<(expflow_engine::Pipeline, Workspace, Option<Prefetch>)> {
    let root = Workspace::locate(&p.pipeline, cli_ws.as_deref());
    if !root.join("db").is_dir() {
        let pipeline = load(p)?;
        let ws = Workspace::open(&root, workspace::holder(command, &pipeline.name, run_id))?;
        return Ok((pipeline, ws, None));
    }
    let (pipeline, opened) = std::thread::scope(|s| {
        let opening = s.spawn(|| {
            let name = prefetch
                .then(|| std::fs::read_to_string(&p.pipeline).ok())
                .flatten()
                .and_then(|text| expflow_engine::yaml::top_level_scalar(&text, "pipeline"));
            let holder = workspace::holder(command, "", run_id.clone());
            let ws = Workspace::open_for(&root, holder, name.as_deref())?;
            let found = name.and_then(|name| match Prefetch::gather(&ws, &name) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::debug!("looking up the last run ahead: {e}");
                    None
                }
            });
            Ok::<_, EngineError>((ws, found))
        });
        let pipeline = load(p);
        let opened = opening
            .join()
            .map_err(|_| anyhow::anyhow!("opening the workspace panicked"));
        (pipeline, opened)
    });
    let pipeline = pipeline?;
    let (ws, found) = opened??;
    ws.set_holder(&workspace::holder(command, &pipeline.name, run_id))?;
    Ok((pipeline, ws, found))
}

fn dispatch(cli: Cli) -> Result<u8> {
    let ws_arg = cli.workspace.clone();
    match cli.command {
        Command::Run {
            p,
            target,
            jobs,
            keep_going,
            json,
            force_outputs,
            remote,
            executor,
            data,
        } => run(
            &ws_arg,
            &p,
            RunFlags {
                targets: target,
                jobs,
                keep_going,
                json,
                force_outputs,
                remote,
                executor,
                data,
            },
        ),
        Command::Plan { p, target, json } => {
            let (pipeline, ws, prefetch) = load_and_open(&ws_arg, &p, "plan", None, true)?;
            let entries = expflow_engine::plan_prefetched(&ws, &pipeline, &target, prefetch)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print!("{}", inspect::plan_text(&entries));
            }
            Ok(0)
        }
        Command::Explain { p, node, json } => {
            let (pipeline, ws, _) = load_and_open(&ws_arg, &p, "explain", None, false)?;
            let ex = expflow_engine::explain(&ws, &pipeline, &node)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ex)?);
            } else {
                print!("{}", inspect::explain_text(&ex));
            }
            Ok(0)
        }
        Command::Check { p, json } => check::run(&p, json),
        Command::Status { json } => inspect::status(&ws_arg, json),
        Command::Log {
            node,
            run,
            pipeline,
            json,
        } => inspect::log(&ws_arg, node, run, pipeline, json),
        Command::Runs { pipeline, format } => history::runs(&ws_arg, pipeline, format.get()),
        Command::Diff {
            run_a,
            run_b,
            json,
            md,
        } => history::diff_cmd(
            &ws_arg,
            &run_a,
            &run_b,
            history::Format::of(json, md, false),
        ),
        Command::Compare {
            pipeline,
            only_changed,
            all,
            sort,
            format,
        } => {
            use std::io::IsTerminal as _;
            let format = format.get();
            let only_changed = only_changed
                || (!all && format == history::Format::Text && std::io::stdout().is_terminal());
            let opts = expflow_engine::history::CompareOptions { only_changed, sort };
            history::compare(&ws_arg, &pipeline, opts, format)
        }
        Command::Report { run, baseline, out } => {
            report::report(&ws_arg, run.as_deref(), baseline.as_deref(), &out)
        }
        Command::Lineage {
            node,
            pipeline,
            json,
        } => inspect::lineage(&ws_arg, &node, pipeline, json),
        Command::Show {
            target,
            pipeline,
            rows,
            json,
        } => inspect::show(&ws_arg, &target, pipeline, rows, json),
        Command::Graph { p, format, json } => {
            let pipeline = load(&p)?;
            print!("{}", inspect::graph(&pipeline, format, json)?);
            Ok(0)
        }
        Command::Verify {
            remote: Some(name),
            fraction,
            json,
        } => remote::verify(&ws_arg, &name, fraction, json),
        Command::Verify { json, .. } => maint::verify(&ws_arg, json),
        Command::Shared(cmd) => remote::dispatch(&ws_arg, cmd),
        Command::Audit {
            fraction,
            seed,
            tolerance,
            json,
        } => maint::audit(
            &ws_arg,
            &registry(),
            expflow_engine::audit::AuditOptions {
                fraction,
                seed,
                tolerance,
            },
            json,
        ),
        Command::Gc {
            dry_run,
            keep,
            drop_resume,
            json,
        } => maint::gc(&ws_arg, keep, dry_run, drop_resume, json),
        Command::Pin { run_id } => maint::pin(&ws_arg, &run_id, true),
        Command::Unpin { run_id } => maint::pin(&ws_arg, &run_id, false),
        Command::Score {
            file,
            metrics,
            wordnet,
            json,
        } => score::run(&file, &metrics, json, wordnet.as_deref()),
        Command::Serve(args) => serve::run(args),
        Command::Synth { command } => synth::run(command),
        Command::Db {
            command: DbCommand::Rebuild,
        } => maint::rebuild(&ws_arg),
        Command::Worker {
            task,
            remote_name,
            remote_url,
            remote_endpoint,
        } => match (remote_name, remote_url) {
            (Some(name), Some(url)) => worker::run_object(
                &task,
                expflow_remote::RemoteSpec {
                    name,
                    url,
                    endpoint: remote_endpoint,
                },
                ws_arg.as_deref(),
                &registry(),
            ),
            _ => worker::run(&task, &registry()),
        },
    }
}

/// `expflow run`'s own flags.
struct RunFlags {
    targets: Vec<String>,
    jobs: Option<usize>,
    keep_going: bool,
    json: bool,
    force_outputs: bool,
    remote: Option<String>,
    executor: Option<String>,
    data: Option<String>,
}

fn run(ws_arg: &Option<PathBuf>, p: &PipelineArgs, flags: RunFlags) -> Result<u8> {
    let RunFlags {
        targets,
        jobs,
        keep_going,
        json,
        force_outputs,
        remote,
        executor,
        data,
    } = flags;
    let run_id = workspace::new_run_id();
    let (pipeline, ws, prefetch) = load_and_open(ws_arg, p, "run", Some(run_id.clone()), true)?;
    let mut opts = RunOptions {
        keep_going,
        targets,
        force_outputs,
        executor,
        executors: expflow_engine::executor::config::load(ws.root())?,
        ..RunOptions::default()
    };
    if let Some(j) = jobs {
        anyhow::ensure!(
            j > 0,
            EngineError::Usage("--jobs must be at least 1".into())
        );
        opts.jobs = j;
        opts.cpus = opts.cpus.max(j as u32);
    }
    if let Some(mode) = &data {
        opts.executors.slurm.data = expflow_engine::executor::config::DataMode::parse(mode)?;
    }
    if let Some(name) = &remote {
        opts.shared = Some(remote::shared(ws.root(), name)?);
    }
    let display = progress::Display::new(json);
    opts.observer = Some(display.observer());
    let cancel = CancelToken::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let summary = rt.block_on(async {
        let c = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: stopping running nodes; nothing partial is recorded");
                c.cancel();
            }
        });
        expflow_engine::run::run_prefetched(
            &ws,
            &pipeline,
            &run_id,
            &opts,
            cancel.clone(),
            prefetch,
        )
        .await
    })?;
    display.finish();
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprintln!(
            "run {}: {} executed, {} cached, {} failed, {} skipped ({:.1} s)",
            summary.run_id,
            summary.executed.len(),
            summary.cached.len(),
            summary.failed.len(),
            summary.skipped.len(),
            summary.duration_ms as f64 / 1000.0
        );
        for (node, err) in &summary.errors {
            eprintln!("failed: {node}: {err}");
        }
    }
    // Closing the workspace flushes the record store and syncs it; the compiled pipeline
    // (a thousand nodes' parameters, references and types) is freed meanwhile.
    std::thread::scope(|s| {
        s.spawn(move || drop(pipeline));
        drop(ws);
    });
    Ok(match summary.status.as_str() {
        "ok" => 0,
        "cancelled" => code::INTERRUPTED,
        _ => code::FAILED,
    })
}
