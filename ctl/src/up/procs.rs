//! The processes `warden up` starts: each with its output in a log file of its own,
//! waited on until ready, watched while it runs, and stopped with SIGTERM, then
//! SIGKILL after a grace period, so none outlives `warden up`.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use super::probe;
use super::state::Component;

/// A started process.
#[derive(Debug)]
pub struct Proc {
    pub info: Component,
    child: tokio::process::Child,
    /// Set once it has exited.
    pub exit: Option<ExitStatus>,
}

impl Proc {
    /// `running`, or how it exited.
    pub fn state(&self) -> String {
        match self.exit {
            None => "running".to_string(),
            Some(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                (Some(c), _) => format!("exited ({c})"),
                (None, Some(sig)) => format!("killed (signal {sig})"),
                _ => "exited".to_string(),
            },
        }
    }
}

/// Every process started, in start order.
#[derive(Debug, Default)]
pub struct Procs {
    pub list: Vec<Proc>,
}

impl Procs {
    /// Starts `exe args` as `info.name`, output appended to `info.log`. The child is
    /// killed if this is dropped without [`Procs::stop`] (a panic, say).
    pub fn spawn(
        &mut self,
        mut info: Component,
        exe: &Path,
        args: &[String],
    ) -> anyhow::Result<usize> {
        let log = std::fs::File::create(&info.log)
            .with_context(|| format!("creating {}", info.log.display()))?;
        let err = log.try_clone()?;
        let child = tokio::process::Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({})", info.name, exe.display()))?;
        info.pid = child.id().unwrap_or_default();
        info.exe = exe.to_path_buf();
        self.list.push(Proc {
            info,
            child,
            exit: None,
        });
        Ok(self.list.len() - 1)
    }

    /// Notes which processes have exited.
    pub fn poll(&mut self) {
        for p in &mut self.list {
            if p.exit.is_none()
                && let Ok(Some(s)) = p.child.try_wait()
            {
                p.exit = Some(s);
            }
        }
    }

    /// Waits until `url` answers 200, or fails when process `i` exits first or
    /// `timeout` passes (naming the process and the end of its log).
    pub async fn wait_ready(
        &mut self,
        i: usize,
        url: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            self.poll();
            let p = &self.list[i];
            if p.exit.is_some() {
                bail!(
                    "{} {} before it was ready; the end of {}:\n{}",
                    p.info.name,
                    p.state(),
                    p.info.log.display(),
                    tail(&p.info.log, 12)
                );
            }
            let last = match probe::get(url, Duration::from_secs(2)).await {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("{status} {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if start.elapsed() > timeout {
                return Err(anyhow!(
                    "{} not ready after {timeout:?} ({url}: {last}); the end of {}:\n{}",
                    p.info.name,
                    p.info.log.display(),
                    tail(&p.info.log, 12)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM to every running process, then up to `grace` for them to exit, then
    /// SIGKILL for the rest; every child is reaped. Returns how many were killed.
    pub async fn stop(&mut self, grace: Duration) -> usize {
        self.poll();
        let pids: Vec<String> = self
            .list
            .iter()
            .rev()
            .filter(|p| p.exit.is_none() && p.info.pid != 0)
            .map(|p| p.info.pid.to_string())
            .collect();
        if !pids.is_empty() {
            // No signal API without `unsafe` or a new crate: kill(1) does it.
            let _ = tokio::process::Command::new("kill")
                .arg("-TERM")
                .args(&pids)
                .stderr(Stdio::null())
                .status()
                .await;
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.list.iter().any(|p| p.exit.is_none()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.poll();
        }
        let mut killed = 0;
        for p in &mut self.list {
            if p.exit.is_none() {
                killed += 1;
                let _ = p.child.start_kill();
                p.exit = p.child.wait().await.ok();
            }
        }
        killed
    }
}

/// The last `n` lines of a log file, indented.
pub fn tail(path: &PathBuf, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(dir: &Path, name: &str) -> Component {
        Component {
            name: name.into(),
            pid: 0,
            exe: PathBuf::new(),
            log: dir.join(format!("{name}.log")),
            spiffe_id: None,
            address: None,
            metrics_url: None,
            expiry_metric: None,
        }
    }

    #[tokio::test]
    async fn stop_terminates_then_kills_and_reaps_everyone() {
        let dir = std::env::temp_dir().join(format!("warden-up-procs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut procs = Procs::default();
        let sh = Path::new("/bin/sh");
        // One stops on SIGTERM; one ignores it and must be killed.
        procs
            .spawn(
                component(&dir, "polite"),
                sh,
                &["-c".into(), "sleep 30".into()],
            )
            .unwrap();
        procs
            .spawn(
                component(&dir, "stubborn"),
                sh,
                &[
                    "-c".into(),
                    "trap '' TERM; echo started; while :; do sleep 0.1; done".into(),
                ],
            )
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pids: Vec<u32> = procs.list.iter().map(|p| p.info.pid).collect();
        let killed = procs.stop(Duration::from_millis(500)).await;
        assert_eq!(killed, 1);
        assert_eq!(procs.list[0].state(), "killed (signal 15)");
        for pid in pids {
            assert!(!super::super::state::alive(pid), "{pid} still alive");
        }
        assert!(
            std::fs::read_to_string(dir.join("stubborn.log"))
                .unwrap()
                .contains("started")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_process_that_exits_before_ready_is_reported_with_its_log() {
        let dir = std::env::temp_dir().join(format!("warden-up-procs2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut procs = Procs::default();
        let i = procs
            .spawn(
                component(&dir, "broken"),
                Path::new("/bin/sh"),
                &["-c".into(), "echo bad flag >&2; exit 2".into()],
            )
            .unwrap();
        let e = procs
            .wait_ready(i, "http://127.0.0.1:1/ready", Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("broken exited (2)") && e.contains("bad flag"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
