//! The service under test, as a child process in its own process group.

use std::net::SocketAddr;
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
use super::sockets;
use super::timeline::Timeline;
use super::Spec;

/// How much of the child's stderr is kept to show when it fails.
const STDERR_KEPT: usize = 16 * 1024;

/// A running service. Dropping it kills its whole process group.
pub(crate) struct Service {
    child: Child,
    pid: Pid,
    pub(crate) addr: SocketAddr,
    /// Where readiness answers: the service's own address unless `--ready-url` says otherwise.
    pub(crate) ready_addr: SocketAddr,
    pub(crate) ready_path: String,
    stderr: Arc<Mutex<String>>,
    exited: Option<(ExitStatus, Instant)>,
    /// After the exit, what still accepted on the service's port (the signal went to a wrapper).
    pub(crate) survivor: Option<String>,
    /// What went wrong while `--pre-stop` was played, before the signal.
    pub(crate) pre_stop_failure: Option<String>,
    drain_delay: Duration,
    signalled: bool,
    /// A restart is under way: a process serving the port after the exit is the successor,
    /// not a survivor.
    successor_expected: bool,
    /// What happened, for the `--html` report.
    pub(crate) timeline: Timeline,
}

impl Service {
    /// Starts the service on a free port and waits until its readiness path answers 200.
    pub(crate) async fn start(spec: &Spec) -> anyhow::Result<Service> {
        let timeline = Timeline::new();
        let port = std::net::TcpListener::bind((spec.host, 0))
            .and_then(|l| l.local_addr())
            .with_context(|| format!("finding a free port on {} (--host)", spec.host))?
            .port();
        let addr = SocketAddr::from((spec.host, port));
        let (ready_addr, ready_path) = match &spec.ready_url {
            Some(url) => parse_url(&url.replace("{port}", &port.to_string()))?,
            None => (addr, spec.ready_path.clone()),
        };
        let command_line: Vec<String> = spec
            .command
            .iter()
            .map(|arg| arg.replace("{port}", &port.to_string()))
            .collect();
        let (program, args) = command_line
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
        let mut stderr_task = None;
        if let Some(mut pipe) = child.stderr.take() {
            let sink = stderr.clone();
            stderr_task = Some(tokio::spawn(async move {
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
            }));
        }
        let mut service = Service {
            child,
            pid,
            addr,
            ready_addr,
            ready_path,
            stderr,
            exited: None,
            survivor: None,
            pre_stop_failure: None,
            drain_delay: spec.drain_delay,
            signalled: false,
            successor_expected: false,
            timeline,
        };
        let deadline = Instant::now() + spec.start_timeout;
        loop {
            if let Some(status) = service.child.try_wait().context("waiting for the child")? {
                // Its last words: the pipe ends with the process, unless a grandchild holds it.
                if let Some(task) = stderr_task.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
                }
                bail!(
                    "the service exited ({status}) before its readiness path answered 200; its stderr:\n{}",
                    service.stderr()
                );
            }
            if client::get(
                service.ready_addr,
                &service.ready_path,
                Duration::from_secs(2),
            )
            .await
            .is_ok()
            {
                service.timeline.mark(Instant::now(), "ready");
                return Ok(service);
            }
            if Instant::now() > deadline {
                bail!(
                    "readiness ({} on {}) did not answer 200 within {:?}: check that the service \
                     listens on {addr} (PORT is set; `{{port}}` in the command is replaced by \
                     it) and the readiness options (--ready-path, --ready-url), or raise \
                     --start-timeout; its stderr:\n{}",
                    service.ready_path,
                    service.ready_addr,
                    spec.start_timeout,
                    service.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the service as the platform would: plays `--pre-stop` (readiness and requests
    /// probed throughout), then sends the stop signal; returns when it was sent.
    pub(crate) async fn stop(&mut self, spec: &Spec) -> Instant {
        if !spec.pre_stop.is_zero() {
            let started = Instant::now();
            let end = started + spec.pre_stop;
            let (mut probes, mut failed) = (0u32, 0u32);
            let mut first = None;
            while Instant::now() < end {
                let ready = client::get(self.ready_addr, &self.ready_path, PROBE_LIMIT).await;
                let served = client::get(self.addr, &spec.path, PROBE_LIMIT).await;
                probes += 1;
                if !ready.is_ok() || !served.is_ok() {
                    failed += 1;
                    first.get_or_insert_with(|| {
                        format!(
                            "{} ms into the preStop, readiness got {} and {} got {}",
                            started.elapsed().as_millis(),
                            ready.describe(),
                            spec.path,
                            served.describe()
                        )
                    });
                }
                // Paced probes, not a synchronisation: the preStop is a fixed length.
                tokio::time::sleep_until(end.min(Instant::now() + Duration::from_millis(100)))
                    .await;
            }
            self.timeline.shade(started, end, "preStop");
            if let Some(first) = first {
                self.pre_stop_failure = Some(format!(
                    "{failed} of {probes} probes failed during the preStop, before any signal: \
                     {first}; fix: keep readiness at 200 and serve requests until the signal \
                     (a preStop sleep only lets the endpoint removal propagate)"
                ));
            }
        }
        self.signal(spec.signal)
    }

    /// Sends `signal` to the service process itself; the first one starts the drain delay on
    /// the timeline.
    pub(crate) fn signal(&mut self, signal: Signal) -> Instant {
        // The process may be gone already; what it did is judged from its exit.
        let _ = kill(self.pid, signal);
        let at = Instant::now();
        if !self.signalled && !self.drain_delay.is_zero() {
            self.timeline
                .shade(at, at + self.drain_delay, "drain delay");
        }
        self.signalled = true;
        self.timeline.signal(at, signal.as_str());
        at
    }

    /// Sends the restart signal: from now on the port is expected to outlive the process.
    pub(crate) fn restart(&mut self, signal: Signal) -> Instant {
        self.successor_expected = true;
        let _ = kill(self.pid, signal);
        let at = Instant::now();
        self.signalled = true;
        self.timeline.signal(at, signal.as_str());
        at
    }

    /// The pid of the process the checker started.
    pub(crate) fn pid(&self) -> u32 {
        self.pid.as_raw().unsigned_abs()
    }

    /// The exit status, if the process has exited by now (recorded as [`Service::exit`] does).
    pub(crate) fn exited_now(&mut self) -> Option<(ExitStatus, Instant)> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                let at = Instant::now();
                self.timeline.mark(at, super::describe_status(status));
                self.exited = Some((status, at));
            }
        }
        self.exited
    }

    /// Waits (at most `limit`) for the service to exit; returns its status and when it exited.
    pub(crate) async fn exit(&mut self, limit: Duration) -> Option<(ExitStatus, Instant)> {
        if self.exited.is_none() {
            if let Ok(Ok(status)) = tokio::time::timeout(limit, self.child.wait()).await {
                let at = Instant::now();
                self.timeline.mark(at, super::describe_status(status));
                self.exited = Some((status, at));
                self.survivor = self.survivor(status).await;
            }
        }
        self.exited
    }

    /// After a scenario: if the process has exited without a scenario waiting for it (one that
    /// stopped early), records the exit and looks for a survivor on the port all the same.
    pub(crate) async fn settle(&mut self) {
        if self.exited.is_some() || !self.signalled {
            return;
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            let at = Instant::now();
            self.timeline.mark(at, super::describe_status(status));
            self.exited = Some((status, at));
            self.survivor = self.survivor(status).await;
        }
    }

    /// Polls readiness until it answers 503 or the listener refuses; returns what it saw first
    /// and when.
    pub(crate) async fn watch_readiness(&mut self, limit: Duration) -> (Outcome, Instant) {
        let deadline = Instant::now() + limit;
        loop {
            let outcome = client::get(self.ready_addr, &self.ready_path, PROBE_LIMIT).await;
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

    /// After the process exited: whatever still accepts on its port, with the fix.
    async fn survivor(&self, status: ExitStatus) -> Option<String> {
        if self.successor_expected {
            return None;
        }
        let mut holders: Vec<u32> = sockets::listening(self.addr.port())
            .into_iter()
            .map(|h| h.pid)
            .collect();
        holders.dedup();
        let accepts = client::connect(self.addr).await.is_ok();
        if holders.is_empty() && !accepts {
            return None;
        }
        let who = if holders.is_empty() {
            "something still accepts connections on it".to_owned()
        } else {
            holders
                .iter()
                .map(|pid| {
                    format!(
                        "pid {pid} (`{}`) still listens on it",
                        sockets::cmdline(*pid)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        Some(format!(
            "the process that got the signal exited ({}), but port {} is still served: {who}. \
             The signal went to a wrapper, not to the server; fix: `exec` the server in the \
             wrapper script (`sh -c 'exec my-server'`), or run it directly and pass the port \
             with `{{port}}` in the command",
            super::describe_status(status),
            self.addr.port()
        ))
    }

    pub(crate) fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// How long one probe (readiness, a quick request) may take.
const PROBE_LIMIT: Duration = Duration::from_secs(2);

/// Splits `http://host:port/path` into an address and a path.
fn parse_url(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url.strip_prefix("http://").with_context(|| {
        format!("--ready-url {url:?} is not an http:// URL (http://127.0.0.1:9901/ready)")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .with_context(|| {
            format!("--ready-url {url:?}: {authority:?} is not a host:port (127.0.0.1:9901)")
        })?;
    Ok((addr, path.to_owned()))
}

impl Drop for Service {
    fn drop(&mut self) {
        // The whole group: a wrapper script's children must not outlive the check.
        let _ = killpg(self.pid, Signal::SIGKILL);
    }
}
