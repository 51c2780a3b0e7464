//! The Slurm executor's ssh transport (`slurm.ssh`, a login node reached over ssh with
//! ControlMaster) against a real sshd: Debian's openssh-server, which `.ci/run` installs,
//! started here on a loopback port with generated host and user keys, in front of the real
//! Slurm `.ci/run` starts. Without either the test skips, and under CI=true it fails.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use expflow_tests::{Project, skip::skip_or_fail};

const SSHD: &str = "/usr/sbin/sshd";

/// An sshd on 127.0.0.1 that only accepts the generated key; killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    key: PathBuf,
    log: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts sshd with `SLURM_CONF` set for its sessions (a login node's Slurm).
fn sshd(dir: &Path, slurm_conf: &str) -> Sshd {
    keygen(&dir.join("host"));
    keygen(&dir.join("id"));
    std::fs::copy(dir.join("id.pub"), dir.join("authorized_keys")).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("sshd_config");
    let log = dir.join("sshd.log");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host\nAuthorizedKeysFile {d}/authorized_keys\n\
             PidFile {d}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nLogLevel VERBOSE\n\
             SetEnv SLURM_CONF={slurm_conf}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    // Privilege separation needs this directory (a service manager would make it).
    std::fs::create_dir_all("/run/sshd").unwrap();
    let child = Command::new(SSHD)
        .arg("-D")
        .arg("-f")
        .arg(&config)
        .arg("-E")
        .arg(&log)
        .stdin(Stdio::null())
        .spawn()
        .expect("start sshd");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "sshd did not listen: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Sshd {
        child,
        port,
        key: dir.join("id"),
        log,
    }
}

#[test]
fn slurm_commands_go_over_one_ssh_connection_to_the_login_node() {
    let Ok(slurm_conf) = std::env::var("SLURM_CONF") else {
        skip_or_fail(
            "no running Slurm (SLURM_CONF is not set); `.ci/run` starts one with scripts/slurm-ci.sh",
        );
        return;
    };
    if !Path::new(SSHD).exists() || Command::new("ssh").arg("-V").output().is_err() {
        skip_or_fail("openssh-server is not installed (`.ci/run` installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = sshd(dir.path(), &slurm_conf);
    let control = dir.path().join("cm");
    let p = Project::new();
    p.write(
        "chain.yaml",
        "pipeline: chain\nnodes:\n  a:\n    op: command\n    out: {o: file}\n    params: {run: \"echo one > ${out.o}\"}\n  \
         b:\n    op: command\n    in: {i: a.o}\n    out: {o: file}\n    params: {run: \"cat ${in.i} ${in.i} > ${out.o}\"}\n\
         outputs:\n  out/b.txt: b.o\n",
    );
    let opts = [
        "-p".to_string(),
        d.port.to_string(),
        "-i".into(),
        d.key.display().to_string(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "StrictHostKeyChecking=no".into(),
        "-o".into(),
        "UserKnownHostsFile=/dev/null".into(),
        "-o".into(),
        "LogLevel=ERROR".into(),
        "-o".into(),
        "ControlMaster=auto".into(),
        "-o".into(),
        format!("ControlPath={}", control.display()),
        "-o".into(),
        "ControlPersist=60".into(),
    ];
    let yaml_opts: Vec<String> = opts.iter().map(|o| format!("\"{o}\"")).collect();
    p.write(
        ".expflow/config.yaml",
        &format!(
            "executor: slurm\nslurm:\n  poll_interval_s: 0.3\n  result_grace_s: 2\n  ssh: root@127.0.0.1\n  ssh_options: [{}]\n",
            yaml_opts.join(", ")
        ),
    );
    // Without SLURM_CONF here, Slurm's commands work only on the "login node", whose sessions
    // have it: a run that succeeds went through ssh.
    let out = Command::new(expflow_tests::expflow_bin())
        .args(["run", "chain.yaml", "--json"])
        .current_dir(p.dir.path())
        .env_remove("SLURM_CONF")
        .env_remove("EXPFLOW_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        summary["executed"].as_array().unwrap().len(),
        2,
        "{summary}"
    );
    assert_eq!(p.read("out/b.txt"), "one\none\n");
    let run = summary["run_id"].as_str().unwrap();
    let jobs =
        std::fs::read_to_string(p.path(&format!(".expflow/runs/{run}/jobs/jobs.tsv"))).unwrap();
    assert_eq!(jobs.lines().count(), 2, "{jobs}");
    // Two sbatch calls, an `sbatch --version`, and status polls: one authentication, the
    // rest multiplexed over the master connection.
    let log = std::fs::read_to_string(&d.log).unwrap();
    let logins = log.matches("Accepted publickey").count();
    assert_eq!(logins, 1, "{log}");
    let sessions = log.matches("Starting session: command").count();
    assert!(sessions >= 4, "{sessions} sessions:\n{log}");
    // The master stays for ControlPersist; close it.
    let _ = Command::new("ssh")
        .args(&opts)
        .args(["-O", "exit", "root@127.0.0.1"])
        .stderr(Stdio::null())
        .status();
}
