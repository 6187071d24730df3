//! The real `loglet` binary under test: started with a config in a work dir, its stdout and
//! stderr captured to files, its metrics endpoint found from its own log, stopped with SIGTERM or
//! killed with SIGKILL.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Loglet {
    child: Option<Child>,
    pub work: PathBuf,
    pub metrics_addr: String,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// The state directory the tests give loglet (relative to the node root, like every host path).
pub const STATE_DIR: &str = "/var/lib/loglet";

/// A config for tests: JSON logs (to find the metrics address), an ephemeral metrics port,
/// quick timers, and the given sinks block (YAML, already indented under `sinks:`).
pub fn config(extra: &str, sinks: &str) -> String {
    format!(
        "state_dir: {STATE_DIR}\nmetrics:\n  listen: 127.0.0.1:0\nlog:\n  level: info,loglet=debug\n  format: json\npipeline:\n  checkpoint_interval: 100ms\n  shutdown_grace: 10s\n{extra}\nsinks:\n{sinks}\n"
    )
}

impl Loglet {
    /// Starts loglet on `root` and waits until its metrics endpoint answers.
    pub fn start(root: &Path, work: &Path, config_yaml: &str) -> Loglet {
        Self::start_with_env(root, work, config_yaml, &[])
    }

    pub fn start_with_env(
        root: &Path,
        work: &Path,
        config_yaml: &str,
        env: &[(&str, &str)],
    ) -> Loglet {
        Self::start_under(&[], root, work, config_yaml, env)
    }

    /// Starts loglet under a wrapper command, e.g. `["prlimit", "--nofile=64", "--"]`.
    pub fn start_under(
        wrapper: &[&str],
        root: &Path,
        work: &Path,
        config_yaml: &str,
        env: &[(&str, &str)],
    ) -> Loglet {
        std::fs::create_dir_all(work).expect("work dir");
        let config = work.join("config.yaml");
        std::fs::write(&config, config_yaml).expect("config");
        // Each start appends to the same files, so a test sees everything across restarts.
        let stdout = work.join("stdout.ndjson");
        let stderr_path = work.join(format!("stderr-{}.log", unique()));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stdout)
            .expect("stdout");
        let err = std::fs::File::create(&stderr_path).expect("stderr");
        let bin = env!("CARGO_BIN_EXE_loglet");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(root)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env_remove("RUST_LOG")
            .env_remove("KUBECONFIG")
            .env_remove("NODE_NAME")
            .env_remove("POD_UID");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn loglet");
        let mut l = Loglet {
            child: Some(child),
            work: work.to_path_buf(),
            metrics_addr: String::new(),
            stdout,
            stderr: stderr_path,
        };
        l.metrics_addr = l.wait_for_log_field("serving /metrics", "addr", Duration::from_secs(20));
        l
    }

    /// Waits for a log line containing `message` and returns its field `field`.
    pub fn wait_for_log_field(&mut self, message: &str, field: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            for line in text.lines() {
                if !line.contains(message) {
                    continue;
                }
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                    && let Some(val) = v["fields"][field].as_str()
                {
                    return val.to_string();
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("loglet exited ({status}) before logging {message:?}:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "no {message:?} in loglet's log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// GET a path of the metrics server: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.metrics_addr, path)
    }

    /// The value of a metric series (`name{labels}` exactly as exposed), or 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.get("/metrics");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }

    /// SIGTERM, then wait for exit; returns the exit code.
    pub fn stop(mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        signal(&child, "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "loglet did not stop within 30 s of SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no flush, no final checkpoint.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        signal(&child, "KILL");
        let _ = child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A memory figure of the process from /proc/PID/status, KiB: `VmRSS` now or `VmHWM`, the
    /// peak so far.
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
    }

    /// Records printed by a stdout sink so far, parsed.
    pub fn stdout_records(&self) -> Vec<serde_json::Value> {
        read_ndjson(&self.stdout)
    }
}

impl Drop for Loglet {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(child: &Child, sig: &str) {
    // Already gone is fine: the caller waits for the exit status next.
    let _ = Command::new("kill")
        .args(["-s", sig, &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Parses NDJSON from a file (a partly written last line is left out).
pub fn read_ndjson(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A minimal HTTP/1.1 GET, enough for /metrics, /healthz and /readyz.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to loglet's metrics server");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Polls `f` until it returns Some, up to `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
