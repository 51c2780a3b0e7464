//! Served models with a lifecycle: the servers an inference node talks to while it runs.
//!
//! A `serve.model` node ([`super::serve_op`]) writes an *endpoint*: a directory holding
//! `endpoint.json` (which engine serves, under which name, how many replicas on how many
//! GPUs each, the model's digest) and the model itself under `model/`. It names no port: an
//! inference node given the endpoint at its `endpoint` input starts the replicas here
//! ([`Served::start`]) on free loopback ports, each in its own process group with its own
//! `CUDA_VISIBLE_DEVICES` (from the GPUs the engine gave the node), waits until each answers
//! `GET /v1/models`, sends its requests across them, and stops them ([`Served`]'s `Drop`:
//! SIGTERM to each group, SIGKILL after a grace period) when it returns, fails or is
//! cancelled. Each server's output is copied into the node's log when it stops.
//!
//! Because the endpoint holds no port, its digest depends only on the model and the serving
//! settings, and memoised answers name the model by `model_digest`: a re-run on other ports
//! or after a restart is answered from the memo. A node whose answers are all cached never
//! starts a server.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use expflow_engine::{Context, OpError};
use serde::{Deserialize, Serialize};

use crate::error::{OperatorError, Result};

/// The serving engines.
pub const ENGINES: [&str; 3] = ["expflow", "vllm", "swift"];

/// The file in an endpoint directory that describes it.
pub const ENDPOINT_FILE: &str = "endpoint.json";
/// The model's directory inside an endpoint directory.
pub const MODEL_DIR: &str = "model";

/// What `endpoint.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `expflow` (`expflow serve`), `vllm` (`vllm serve`) or `swift` (`swift deploy`).
    pub engine: String,
    /// The model's name in requests.
    pub served_name: String,
    /// The BLAKE3 digest of the served model directory: memoised answers belong to it.
    pub model_digest: String,
    pub replicas: u32,
    /// GPUs per replica (vLLM's and ms-swift's tensor-parallel size); 0 for CPU.
    pub gpus_per_replica: u32,
    /// More arguments for every replica's command line.
    pub args: Vec<String>,
    /// More environment for every replica (`FPS_MAX_FRAMES`, `VIDEO_MAX_PIXELS`).
    pub env: BTreeMap<String, String>,
    /// How long a replica may take to answer `GET /v1/models`.
    pub health_timeout_s: u64,
}

/// One replica's command: program, arguments, environment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Launch {
    pub program: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

impl Endpoint {
    /// Reads `DIR/endpoint.json`.
    pub fn read(dir: &Path) -> Result<Endpoint> {
        let path = dir.join(ENDPOINT_FILE);
        let bytes = std::fs::read(&path).map_err(|e| OperatorError::io("cannot read", &path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| OperatorError::Parse {
            path,
            format: "a serve.model endpoint",
            location: String::new(),
            message: e.to_string(),
        })
    }

    /// The replicas' commands for the model at `model`, listening on `ports` (one per
    /// replica), with `gpus` (`gpus_per_replica` per replica, in order); `expflow` is the
    /// expflow executable.
    pub fn launches(
        &self,
        model: &Path,
        expflow: &Path,
        ports: &[u16],
        gpus: &[u32],
    ) -> Result<Vec<Launch>> {
        let g = self.gpus_per_replica as usize;
        let need = g * self.replicas as usize;
        if gpus.len() < need {
            return Err(OperatorError::data(
                "serve.model",
                format!(
                    "{} replica(s) with {g} GPU(s) each need {need} GPUs and the node was given {}; \
                     declare `resources: {{gpus: {need}}}` on the node that uses the endpoint",
                    self.replicas,
                    gpus.len()
                ),
            ));
        }
        let model = model.to_string_lossy().into_owned();
        let mut out = Vec::new();
        for (r, port) in ports.iter().enumerate().take(self.replicas as usize) {
            let port = port.to_string();
            let mut env = self.env.clone();
            if g > 0 {
                let ids: Vec<String> = gpus[r * g..(r + 1) * g]
                    .iter()
                    .map(u32::to_string)
                    .collect();
                env.insert("CUDA_VISIBLE_DEVICES".into(), ids.join(","));
            }
            let tp = g.max(1).to_string();
            let (program, mut args): (String, Vec<String>) = match self.engine.as_str() {
                "expflow" => (
                    expflow.to_string_lossy().into_owned(),
                    vec![
                        "serve".into(),
                        model.clone(),
                        "--host".into(),
                        "127.0.0.1".into(),
                        "--port".into(),
                        port,
                        "--model-name".into(),
                        self.served_name.clone(),
                    ],
                ),
                "vllm" => (
                    "vllm".into(),
                    vec![
                        "serve".into(),
                        model.clone(),
                        "--host".into(),
                        "127.0.0.1".into(),
                        "--port".into(),
                        port,
                        "--served-model-name".into(),
                        self.served_name.clone(),
                        "--tensor-parallel-size".into(),
                        tp,
                    ],
                ),
                "swift" => (
                    "swift".into(),
                    vec![
                        "deploy".into(),
                        "--model".into(),
                        model.clone(),
                        "--host".into(),
                        "127.0.0.1".into(),
                        "--port".into(),
                        port,
                        "--served_model_name".into(),
                        self.served_name.clone(),
                        "--infer_backend".into(),
                        "vllm".into(),
                        "--tensor_parallel_size".into(),
                        tp,
                    ],
                ),
                other => {
                    return Err(OperatorError::data(
                        "serve.model",
                        format!(
                            "unknown engine `{other}` in the endpoint; use one of {}",
                            ENGINES.join(", ")
                        ),
                    ));
                }
            };
            args.extend(self.args.iter().cloned());
            out.push(Launch { program, args, env });
        }
        Ok(out)
    }
}

/// One running replica.
struct Replica {
    child: Child,
    log: PathBuf,
    base_url: String,
}

/// Running replicas of an endpoint; stopped (each process group) when dropped.
pub struct Served<'a> {
    ctx: &'a Context,
    replicas: Vec<Replica>,
    pub endpoint: Endpoint,
}

/// How long replicas get to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

impl<'a> Served<'a> {
    /// Starts the replicas of the endpoint directory `dir` for the node of `ctx` and waits
    /// until each answers `GET /v1/models`.
    pub fn start(ctx: &'a Context, dir: &Path) -> std::result::Result<Served<'a>, OpError> {
        let endpoint = Endpoint::read(dir)?;
        let expflow = std::env::var_os("EXPFLOW_SERVE_BIN")
            .map(PathBuf::from)
            .map_or_else(std::env::current_exe, Ok)
            .map_err(|e| format!("cannot find the expflow executable: {e}"))?;
        let ports = free_ports(endpoint.replicas as usize)?;
        let launches = endpoint.launches(&dir.join(MODEL_DIR), &expflow, &ports, ctx.gpus())?;
        let mut served = Served {
            ctx,
            replicas: Vec::new(),
            endpoint,
        };
        for (r, (launch, port)) in launches.iter().zip(&ports).enumerate() {
            let log = ctx.scratch().join(format!("serve-{r}.log"));
            let out =
                File::create(&log).map_err(|e| OperatorError::io("cannot create", &log, e))?;
            let err = out
                .try_clone()
                .map_err(|e| OperatorError::io("cannot open", &log, e))?;
            ctx.log(&format!(
                "replica {r}: {} {}{}",
                launch.program,
                launch.args.join(" "),
                launch
                    .env
                    .iter()
                    .map(|(k, v)| format!(" [{k}={v}]"))
                    .collect::<String>()
            ));
            let child = Command::new(&launch.program)
                .args(&launch.args)
                .envs(&launch.env)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .map_err(|e| {
                    format!(
                        "serve.model: cannot start `{}` for replica {r}: {e}; is it installed and on PATH?",
                        launch.program
                    )
                })?;
            served.replicas.push(Replica {
                child,
                log,
                base_url: format!("http://127.0.0.1:{port}/v1"),
            });
        }
        served.wait_healthy()?;
        Ok(served)
    }

    /// The replicas' OpenAI base URLs, in replica order.
    pub fn base_urls(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.base_url.clone()).collect()
    }

    /// The process group ids of the replicas (each replica leads its own group).
    pub fn process_groups(&self) -> Vec<u32> {
        self.replicas.iter().map(|r| r.child.id()).collect()
    }

    fn wait_healthy(&mut self) -> std::result::Result<(), OpError> {
        let deadline = Instant::now() + Duration::from_secs(self.endpoint.health_timeout_s);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .into();
        for r in 0..self.replicas.len() {
            let url = format!("{}/models", self.replicas[r].base_url);
            loop {
                self.ctx.check_cancelled()?;
                if let Ok(Some(status)) = self.replicas[r].child.try_wait() {
                    return Err(format!(
                        "serve.model: replica {r} exited ({status}) before it answered {url}; its log ends:\n{}",
                        tail(&self.replicas[r].log, 20)
                    )
                    .into());
                }
                if matches!(agent.get(&url).call(), Ok(resp) if resp.status().is_success()) {
                    self.ctx.log(&format!(
                        "replica {r} is up at {}",
                        self.replicas[r].base_url
                    ));
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "serve.model: replica {r} did not answer {url} within {} s (raise `health_timeout_s`); its log ends:\n{}",
                        self.endpoint.health_timeout_s,
                        tail(&self.replicas[r].log, 20)
                    )
                    .into());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }
}

impl Drop for Served<'_> {
    fn drop(&mut self) {
        for r in &self.replicas {
            signal_group(r.child.id(), "TERM");
        }
        let deadline = Instant::now() + GRACE;
        for (i, r) in self.replicas.iter_mut().enumerate() {
            loop {
                match r.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        signal_group(r.child.id(), "KILL");
                        let _ = r.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
            // Whatever the group's other processes still do, they go with it.
            signal_group(r.child.id(), "KILL");
            let mut text = String::new();
            if let Ok(mut f) = File::open(&r.log) {
                let _ = f.read_to_string(&mut text);
            }
            for line in text.lines() {
                self.ctx.log(&format!("[replica {i}] {line}"));
            }
            self.ctx.log(&format!("replica {i} stopped"));
        }
    }
}

/// Sends SIG`sig` to the process group `pgid` (quietly: it may be gone already).
fn signal_group(pgid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `n` free loopback ports (held together while chosen, so they differ).
fn free_ports(n: usize) -> std::result::Result<Vec<u16>, OpError> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .map_err(|e| format!("serve.model: cannot find a free port: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| format!("serve.model: cannot find a free port: {e}").into())
}

/// The last `n` lines of a log file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(engine: &str, replicas: u32, gpus: u32) -> Endpoint {
        Endpoint {
            engine: engine.into(),
            served_name: "expstar".into(),
            model_digest: "ab12".into(),
            replicas,
            gpus_per_replica: gpus,
            args: vec!["--max_model_len".into(), "32000".into()],
            env: BTreeMap::from([("FPS_MAX_FRAMES".into(), "24".into())]),
            health_timeout_s: 600,
        }
    }

    fn lines(e: &Endpoint) -> Vec<Launch> {
        e.launches(
            Path::new("/store/endpoint/model"),
            Path::new("/usr/bin/expflow"),
            &[9020, 9021, 9022, 9023],
            &[0, 1, 2, 3],
        )
        .unwrap()
    }

    #[test]
    fn vllm_replicas_get_their_own_port_and_gpus() {
        insta::assert_json_snapshot!(lines(&endpoint("vllm", 2, 2)));
    }

    #[test]
    fn swift_deploy_one_replica_per_gpu_as_deploy_multi_port() {
        insta::assert_json_snapshot!(lines(&endpoint("swift", 4, 1)));
    }

    #[test]
    fn expflow_serve_on_cpu_sets_no_devices() {
        let l = lines(&endpoint("expflow", 2, 0));
        assert!(
            l.iter()
                .all(|l| !l.env.contains_key("CUDA_VISIBLE_DEVICES"))
        );
        insta::assert_json_snapshot!(l);
    }

    #[test]
    fn too_few_gpus_name_the_fix() {
        let e = endpoint("vllm", 3, 2)
            .launches(Path::new("/m"), Path::new("/e"), &[1, 2, 3], &[0, 1])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("need 6 GPUs") && e.contains("resources: {gpus: 6}"),
            "{e}"
        );
    }

    #[test]
    fn free_ports_differ() {
        let p = free_ports(3).unwrap();
        assert!(p[0] != p[1] && p[1] != p[2] && p[0] != p[2], "{p:?}");
    }
}
