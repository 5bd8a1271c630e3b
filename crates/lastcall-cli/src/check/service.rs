//! The service under test, as a child process in its own process group.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::client::{self, Outcome};
use super::timeline::Timeline;
use super::Spec;

/// How much of the child's stderr is kept to show when it fails.
const STDERR_KEPT: usize = 16 * 1024;

/// A running service. Dropping it kills its whole process group.
pub(crate) struct Service {
    child: Child,
    pid: Pid,
    pub(crate) addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    exited: Option<(ExitStatus, Instant)>,
    /// What happened, for the `--html` report.
    pub(crate) timeline: Timeline,
}

impl Service {
    /// Starts the service on a free port and waits until its readiness path answers 200.
    pub(crate) async fn start(spec: &Spec) -> anyhow::Result<Service> {
        let timeline = Timeline::new();
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .context("finding a free port")?
            .port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let (program, args) = spec
            .command
            .split_first()
            .context("no command to run: pass one after `--`, or use --demo")?;
        let mut command = Command::new(program);
        command
            .args(args)
            .env("PORT", port.to_string())
            .env(&spec.budget_var, format!("{}ms", spec.budget.as_millis()))
            .env(
                &spec.drain_delay_var,
                format!("{}ms", spec.drain_delay.as_millis()),
            )
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own group, so the checker can clean up grandchildren too, and so the
            // terminal's Ctrl+C reaches the checker only.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {program:?}"))?;
        let pid = Pid::from_raw(child.id().context("the child has no pid")? as i32);
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let sink = stderr.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut kept = sink.lock().unwrap_or_else(|e| e.into_inner());
                    kept.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if kept.len() > STDERR_KEPT {
                        let cut = kept.len() - STDERR_KEPT;
                        let cut = (cut..kept.len())
                            .find(|i| kept.is_char_boundary(*i))
                            .unwrap_or(0);
                        kept.drain(..cut);
                    }
                }
            });
        }
        let mut service = Service {
            child,
            pid,
            addr,
            stderr,
            exited: None,
            timeline,
        };
        let deadline = Instant::now() + spec.start_timeout;
        loop {
            if let Some(status) = service.child.try_wait().context("waiting for the child")? {
                bail!(
                    "the service exited ({status}) before its readiness path answered 200; its stderr:\n{}",
                    service.stderr()
                );
            }
            if client::get(addr, &spec.ready_path, Duration::from_secs(2))
                .await
                .is_ok()
            {
                service.timeline.mark(Instant::now(), "ready");
                return Ok(service);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer 200 on {addr} within {:?}; its stderr:\n{}",
                    spec.ready_path,
                    spec.start_timeout,
                    service.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` to the service process itself.
    pub(crate) fn signal(&mut self, signal: Signal) -> Instant {
        let _ = kill(self.pid, signal);
        let at = Instant::now();
        self.timeline.mark(at, signal.as_str());
        at
    }

    /// Waits (at most `limit`) for the service to exit; returns its status and when it exited.
    pub(crate) async fn exit(&mut self, limit: Duration) -> Option<(ExitStatus, Instant)> {
        if self.exited.is_none() {
            if let Ok(Ok(status)) = tokio::time::timeout(limit, self.child.wait()).await {
                let at = Instant::now();
                self.timeline.mark(at, format!("exit ({status})"));
                self.exited = Some((status, at));
            }
        }
        self.exited
    }

    /// Polls readiness until it answers 503 or the listener refuses; returns what it saw first
    /// and when.
    pub(crate) async fn watch_readiness(
        &mut self,
        spec: &Spec,
        limit: Duration,
    ) -> (Outcome, Instant) {
        let deadline = Instant::now() + limit;
        loop {
            let outcome = client::get(self.addr, &spec.ready_path, Duration::from_secs(2)).await;
            let done = !matches!(outcome, Outcome::Complete { status: 200, .. });
            if done || Instant::now() > deadline {
                let at = Instant::now();
                self.timeline
                    .mark(at, format!("readiness: {}", outcome.describe()));
                return (outcome, at);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls connecting until the listener refuses; returns when, or `None` if it still
    /// accepted at `limit`.
    pub(crate) async fn wait_listener_closed(&mut self, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match client::connect(self.addr).await {
                Err(Outcome::Refused) => {
                    let at = Instant::now();
                    self.timeline.mark(at, "listener closed");
                    return Some(at);
                }
                Err(_) => {}
                Ok(stream) => drop(stream),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    pub(crate) fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // The whole group: a wrapper script's children must not outlive the check.
        let _ = killpg(self.pid, Signal::SIGKILL);
    }
}
