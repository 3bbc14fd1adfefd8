//! Helpers for Warden's end-to-end tests: find the real binaries, start them as child
//! processes on loopback port 0, read the addresses they log, run the `warden` CLI.
//!
//! The binaries are the workspace's debug builds next to the test executable;
//! `./test.sh` builds them (`cargo build --workspace --bins`) before `cargo test`.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // test support: panics are failures

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Path of a workspace binary next to the running test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run ./test.sh, or `cargo build --workspace --bins` before `cargo test`",
        path.display()
    );
    path
}

/// A running `warden-ca` process.
#[derive(Debug)]
pub struct CaProcess {
    pub child: Child,
    pub data_dir: PathBuf,
    pub grpc_addr: String,
    pub monitoring_addr: String,
    pub log: mpsc::Receiver<String>,
}

impl CaProcess {
    /// Starts `warden-ca run` with JSON logs and waits for its "serving" line.
    // The child is killed and reaped in `Drop`, or reaped in `terminate`.
    #[allow(clippy::zombie_processes)]
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(bin("warden-ca"))
            .args([
                "run",
                "--grpc-addr",
                "127.0.0.1:0",
                "--monitoring-addr",
                "127.0.0.1:0",
            ])
            .args(["--log-format", "json"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("warden-ca did not report serving within 30s");
            let v: serde_json::Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if v["message"] == "warden-ca serving" {
                return Self {
                    child,
                    data_dir: data_dir.to_path_buf(),
                    grpc_addr: v["grpc_addr"].as_str().unwrap().to_string(),
                    monitoring_addr: v["monitoring_addr"].as_str().unwrap().to_string(),
                    log: rx,
                };
            }
        }
    }

    /// `https://localhost:PORT` for clients that verify the serving certificate.
    pub fn url(&self) -> String {
        format!(
            "https://localhost:{}",
            self.grpc_addr.rsplit(':').next().unwrap()
        )
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.data_dir.join("admin.sock")
    }

    /// Runs the `warden` CLI against this CA's admin socket.
    pub fn warden(&self, args: &[&str]) -> Output {
        warden(
            &[
                &["--admin-socket", self.admin_socket().to_str().unwrap()],
                args,
            ]
            .concat(),
        )
    }

    /// Sends SIGTERM and waits for exit; returns the exit code and the remaining log.
    pub fn terminate(mut self) -> (Option<i32>, Vec<String>) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "warden-ca did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        (status.code(), self.log.try_iter().collect())
    }
}

impl Drop for CaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `warden` CLI.
pub fn warden(args: &[&str]) -> Output {
    Command::new(bin("warden")).args(args).output().unwrap()
}

/// Stdout of a successful command, or a panic showing its stderr.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Stderr of a command that must fail.
pub fn fails(out: Output) -> String {
    assert!(
        !out.status.success(),
        "command should fail but printed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}
