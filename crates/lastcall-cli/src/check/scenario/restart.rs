//! The `restart` scenario: the restart signal under a bounded load, graded from outside. The
//! successor is not a child of the checker, so it is found where any server leaves a trace: as
//! a new holder of the listening socket in `/proc` (or in `--pid-file`); which generation
//! answered a request is told by which process holds the server's end of its connection.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{getpgid, getpgrp, Pid};
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::load::{paced_client, Sample};
use super::slow::{slow_request, SlowView};
use super::{ms, patience, Finding};
use crate::check::client::{self, Outcome};
use crate::check::service::Service;
use crate::check::{describe_status, sockets, Spec};

/// What the `restart` scenario measured, as `--json` reports it under `restart`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// The restart signal sent.
    signal: &'static str,
    old_pid: u32,
    /// The process that took over the listening socket, if one did.
    new_pid: Option<u32>,
    /// The old process re-executed itself (same pid, a listening socket bound anew).
    in_place: bool,
    /// Whether the successor is in the process group the checker started (so that killing
    /// the group reaches it); the checker kills it by pid in any case.
    successor_in_process_group: Option<bool>,
    /// From the signal to the first response a new process served.
    new_serving_ms: Option<u64>,
    /// How the old process exited, and when, after the signal.
    old_exit: Option<String>,
    old_exit_ms: Option<u64>,
    /// Requests sent from the signal on (keep-alive and new connections, and the probes).
    requests: usize,
    reused: usize,
    failed: usize,
    /// Failed requests by kind: `refused`, `reset`, `truncated`, `closed before a response`,
    /// `no answer in time`, `not 200`, `other error`.
    failures: BTreeMap<&'static str, usize>,
    /// The first few failures, when and on what connection.
    examples: Vec<String>,
    /// Reused connections closed before any byte of an answer: clients retry those.
    retried: usize,
    /// What the request in flight at the signal got.
    in_flight: Option<String>,
    /// The pid `--pid-file` named after the restart.
    pid_file_pid: Option<u32>,
}

/// How long the request in flight at the signal lasts after it.
const SLOW_LENGTH: Duration = Duration::from_millis(1000);
/// After the old process exits, how long something may take to serve the port before the
/// restart counts as a stop.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// How long the load goes on once the restart is over, to catch what fails right after it.
const TAIL: Duration = Duration::from_millis(300);
/// How often the listener's holders are looked up and a probe is sent.
const WATCH_EVERY: Duration = Duration::from_millis(20);
const KEEP_ALIVE_CLIENTS: usize = 3;
const NEW_CONNECTION_CLIENTS: usize = 2;
const MAX_REQUESTS: usize = 20_000;
const FAILURE_EXAMPLES: usize = 3;

/// How the watch after the signal ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// A new process served, and the old one exited (or was replaced in place).
    Restarted,
    /// The old process exited and nothing served the port within [`STOP_GRACE`].
    Stopped,
    /// Nothing new appeared within `--restart-timeout`; the old process still serves.
    Ignored,
    /// A new process appeared, but the old one did not exit within the budget after it (or
    /// nothing new ever answered).
    OldStayed,
}

/// 15. Under a bounded load and with a request in flight, the restart signal: a new process
///     serves, the old one finishes its work and exits cleanly, and no request fails.
pub(super) async fn restart(spec: &Spec, service: &mut Service) -> Finding {
    let port = service.addr.port();
    let old_pid = service.pid();
    let before = sockets::listening(port);
    if before.is_empty() {
        return Finding::skip(format!(
            "no process is seen holding a listening socket on port {port} in /proc/net/tcp: \
             the old and the new generation cannot be told apart here"
        ));
    }
    let old_pids: BTreeSet<u32> = before.iter().map(|h| h.pid).collect();
    let old_inodes: BTreeSet<u64> = before.iter().map(|h| h.inode).collect();
    let mut successors = Successors::default();
    let load = Load::start(service.addr, &spec.path);
    if tokio::time::timeout(patience(spec), load.first.notified())
        .await
        .is_err()
    {
        load.finish().await;
        return Finding::fail(
            "",
            "no request of the load was answered before the signal; fix: check --path and --host",
        );
    }
    let mut slow = match slow_request(spec, service, SLOW_LENGTH).await {
        Ok(slow) => slow,
        Err(finding) => {
            load.finish().await;
            return finding;
        }
    };
    let signalled = service.restart(spec.restart_signal);
    let slow_limit = patience(spec) + spec.restart_timeout;
    let slow_view = SlowView {
        sent: slow.sent,
        asked: slow.asked,
    };
    let slow_task = tokio::spawn(async move {
        let outcome = client::read(&mut slow.stream, slow_limit).await;
        (outcome, Instant::now())
    });

    let mut probes = Vec::new();
    let mut new: Option<(u32, Instant)> = None;
    let mut in_place = false;
    let mut serving: Option<(u32, Instant)> = None;
    let mut old_exit: Option<(ExitStatus, Instant)>;
    let mut pid_file_pid = None;
    let ended = loop {
        old_exit = service.exited_now();
        let now = Instant::now();
        let holders = sockets::listening(port);
        for holder in &holders {
            let fresh_pid = !old_pids.contains(&holder.pid);
            let fresh_socket = !old_inodes.contains(&holder.inode);
            if fresh_pid {
                successors.add(holder.pid);
            }
            if (fresh_pid || fresh_socket) && new.is_none() {
                new = Some((holder.pid, now));
                in_place = !fresh_pid;
                service.timeline.mark(
                    now,
                    if in_place {
                        format!("pid {} listens anew", holder.pid)
                    } else {
                        format!("pid {} holds the listener", holder.pid)
                    },
                );
            }
        }
        // A successor still starting holds no listener yet, but is killed at the end too.
        if old_exit.is_none() {
            for child in sockets::children(old_pid) {
                successors.add(child);
            }
        }
        // Read, never killed on its word: a stale file may name a pid reused since.
        if let Some(pid) = spec.pid_file.as_deref().and_then(read_pid) {
            pid_file_pid = Some(pid);
        }
        // The old listening socket closed, none bound anew: the port refuses for now.
        let old_listener_gone = !holders.iter().any(|h| old_inodes.contains(&h.inode));
        if serving.is_none() {
            let candidates: BTreeSet<u32> = holders
                .iter()
                .map(|h| h.pid)
                .chain(old_pids.iter().copied())
                .chain(pid_file_pid)
                .collect();
            let (sample, owner) = probe(service.addr, &spec.path, candidates).await;
            let answered = Instant::now();
            if sample.outcome.is_ok() {
                // With the old process gone, or its listening socket closed and another one
                // bound, whoever answered is the new generation.
                let nothing_old = old_exit.is_some() || (old_listener_gone && new.is_some());
                let who = match owner {
                    Some(pid) if !old_pids.contains(&pid) => Some(pid),
                    _ if nothing_old => Some(owner.or(new.map(|n| n.0)).unwrap_or(old_pid)),
                    _ => None,
                };
                if let Some(pid) = who {
                    serving = Some((pid, answered));
                    service
                        .timeline
                        .mark(answered, format!("first answer from pid {pid}"));
                }
            }
            probes.push(sample);
        }
        let now = Instant::now();
        if serving.is_some() && (old_exit.is_some() || in_place) {
            break Ended::Restarted;
        }
        if let Some((_, exited)) = old_exit {
            if serving.is_none() && now > exited + STOP_GRACE {
                break Ended::Stopped;
            }
        }
        if new.is_none()
            && serving.is_none()
            && !old_listener_gone
            && now > signalled + spec.restart_timeout
        {
            break Ended::Ignored;
        }
        let old_limit = new.map_or(signalled + spec.restart_timeout, |(_, at)| at) + patience(spec);
        if now > old_limit {
            break Ended::OldStayed;
        }
        tokio::time::sleep(WATCH_EVERY).await;
    };
    // A fixed stretch of load after the restart, not a synchronisation.
    tokio::time::sleep(TAIL).await;
    let mut samples = load.finish().await;
    samples.extend(probes);
    samples.sort_by_key(|s| s.sent);
    let (slow_outcome, slow_ended) = match slow_task.await {
        Ok(done) => done,
        Err(err) => (Outcome::Failed(err.to_string()), Instant::now()),
    };
    service.timeline.span(
        slow_view.sent,
        slow_ended,
        format!("slow request: {}", slow_outcome.describe()),
        slow_outcome.is_ok(),
    );
    if let Some(pid) = spec.pid_file.as_deref().and_then(read_pid) {
        pid_file_pid = Some(pid);
    }

    let after: Vec<&Sample> = samples.iter().filter(|s| s.sent >= signalled).collect();
    let retried = |s: &Sample| s.reused && s.outcome == Outcome::ClosedBeforeResponse;
    let failed: Vec<&&Sample> = after
        .iter()
        .filter(|s| !s.outcome.is_ok() && !retried(s))
        .collect();
    let mut failures = BTreeMap::new();
    for sample in &failed {
        *failures.entry(kind(&sample.outcome)).or_insert(0) += 1;
    }
    let examples: Vec<String> = failed
        .iter()
        .take(FAILURE_EXAMPLES)
        .map(|s| {
            format!(
                "+{} ms, {} connection: {}",
                ms(s.sent.saturating_duration_since(signalled)),
                if s.reused { "reused" } else { "new" },
                s.outcome.describe()
            )
        })
        .collect();
    if let (Some(first), Some(last)) = (after.first(), after.last()) {
        service.timeline.span(
            first.sent,
            last.sent,
            format!("{} requests: {} failed", after.len(), failed.len()),
            failed.is_empty(),
        );
    }
    let new_pid = serving.map(|s| s.0).or(new.map(|n| n.0));
    let since = |at: Instant| ms(at.saturating_duration_since(signalled)) as u64;
    let report = Report {
        signal: spec.restart_signal.as_str(),
        old_pid,
        new_pid,
        in_place,
        successor_in_process_group: new_pid
            .filter(|pid| *pid != old_pid)
            .and_then(|pid| in_group(pid, old_pid)),
        new_serving_ms: serving.map(|(_, at)| since(at)),
        old_exit: old_exit.map(|(status, _)| describe_status(status)),
        old_exit_ms: old_exit.map(|(_, at)| since(at)),
        requests: after.len(),
        reused: after.iter().filter(|s| s.reused).count(),
        failed: failed.len(),
        failures,
        examples,
        retried: after.iter().filter(|s| retried(s)).count(),
        in_flight: Some(slow_outcome.describe()),
        pid_file_pid,
    };
    // The successor is killed when `successors` drops, at the end of this function: now.
    drop(successors);
    let verdict = grade(
        spec,
        &report,
        ended,
        old_exit.map(|(status, _)| status),
        port,
        &slow_outcome,
        slow_view.not_slow(&slow_outcome, slow_ended),
    );
    Finding {
        restart: Some(report),
        ..verdict
    }
}

/// The verdict, from the most serious failure down.
fn grade(
    spec: &Spec,
    report: &Report,
    ended: Ended,
    old_status: Option<ExitStatus>,
    port: u16,
    slow: &Outcome,
    not_slow: Option<String>,
) -> Finding {
    let signal = spec.restart_signal;
    let measurement = measurement(report);
    let fix = format!(
        "fix: on {signal}, start the successor with the listening socket itself (LISTEN_FDS=1, \
         fd 3), keep accepting until it says ready, then drain and exit 0 (lastcall: the \
         `restart` feature)"
    );
    match ended {
        Ended::Stopped => {
            let exit = report.old_exit.clone().unwrap_or_default();
            let why = if exit == format!("killed by {signal}") {
                format!("{signal} killed the service ({exit}: the default action of a signal it does not handle)")
            } else {
                format!(
                    "the old process exited ({exit}) {} ms after {signal}",
                    report.old_exit_ms.unwrap_or(0)
                )
            };
            return Finding::fail(
                measurement,
                format!(
                    "{why} and nothing served port {port} within {} ms: the restart is a stop; {fix}",
                    ms(STOP_GRACE)
                ),
            );
        }
        Ended::Ignored => {
            return Finding::fail(
                measurement,
                format!(
                    "{} ms after {signal}, pid {} alone still holds the listener and no other \
                     process serves port {port}: the restart signal was ignored (or the \
                     successor failed and was rolled back); {fix}; or pass the signal it \
                     restarts on with --restart-signal, or raise --restart-timeout if its \
                     successor needs longer to be ready",
                    ms(spec.restart_timeout),
                    report.old_pid
                ),
            );
        }
        Ended::Restarted | Ended::OldStayed => {}
    }
    if report.failed > 0 {
        let kinds = report
            .failures
            .iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect::<Vec<_>>()
            .join(", ");
        let advice = if report.failures.contains_key("refused") {
            "connections were refused: for a while nothing listened on the port (the listener \
             was closed before a successor had it); fix: hand the listening socket itself to \
             the successor (LISTEN_FDS) instead of closing it and binding anew, and keep \
             accepting until the successor is ready"
                .to_owned()
        } else {
            "fix: let the old process answer every request it accepted (those in flight, and \
             the next one on each keep-alive connection, with Connection: close) before it \
             exits; never reset a connection"
                .to_owned()
        };
        return Finding::fail(
            measurement,
            format!(
                "{} requests failed across the restart ({kinds}; the first: {}): {advice}",
                report.failed,
                report.examples.first().map_or("", String::as_str)
            ),
        );
    }
    if report.new_serving_ms.is_none() {
        let who = match report.new_pid {
            Some(pid) => format!("pid {pid} took the listener, but no answer came from it"),
            None => format!("no new process served port {port}"),
        };
        let old = if old_status.is_none() {
            format!(
                "; the old process (pid {}) kept serving: the successor failed or never said \
                 ready (a restart rolled back, or stuck)",
                report.old_pid
            )
        } else {
            String::new()
        };
        return Finding::fail(
            measurement,
            format!(
                "{who} within the restart timeout and the budget plus the tolerance{old}; {fix}"
            ),
        );
    }
    if !slow.is_ok() {
        return Finding::fail(
            measurement,
            format!(
                "the request in flight at {signal} got {} instead of 200; fix: the old process \
                 must finish its requests in flight before it exits",
                slow.describe()
            ),
        );
    }
    if let Some(reason) = not_slow {
        return Finding::fail(measurement, reason);
    }
    if !report.in_place {
        match (old_status, ended) {
            (None, _) | (_, Ended::OldStayed) => {
                return Finding::fail(
                    measurement,
                    format!(
                        "the old process (pid {}) was still running the budget plus the \
                         tolerance after its successor took the listener; fix: once the \
                         successor is ready, drain through the normal shutdown (no drain delay: \
                         the listener never closes) and exit",
                        report.old_pid
                    ),
                );
            }
            (Some(status), _) => {
                if !spec.clean_exit.accepts_code(status) {
                    return Finding::fail(
                        measurement,
                        format!(
                            "the old process exited with {} after handing over, where a \
                             clean drain ends with {}; fix: exit the old generation as a clean \
                             shutdown does",
                            describe_status(status),
                            spec.clean_exit.describe(spec.signal)
                        ),
                    );
                }
            }
        }
    }
    if let Some(path) = &spec.pid_file {
        let named_new = report
            .pid_file_pid
            .is_some_and(|pid| Some(pid) == report.new_pid && pid != report.old_pid);
        if !named_new {
            return Finding::fail(
                measurement,
                format!(
                    "--pid-file {} names {} after the restart, not the successor (pid {}): \
                     systemd (PIDFile=) and scripts would signal the wrong process; fix: \
                     rewrite the PID file with the successor's pid (write, then rename) once \
                     it is ready",
                    path.display(),
                    report
                        .pid_file_pid
                        .map_or("no pid".to_owned(), |pid| format!("pid {pid}")),
                    report.new_pid.unwrap_or(0)
                ),
            );
        }
    }
    Finding::pass(measurement)
}

/// For people: `pid 101 -> 202: serving +85 ms, old exit 0 +1210 ms; 2310 requests, 0 failed`.
fn measurement(report: &Report) -> String {
    let new = match (report.new_pid, report.in_place) {
        (Some(pid), false) => format!("pid {} -> {pid}", report.old_pid),
        (Some(pid), true) => format!("pid {pid} re-executed in place"),
        (None, _) => format!("pid {}, no successor", report.old_pid),
    };
    let serving = report
        .new_serving_ms
        .map_or("nothing new served".to_owned(), |at| {
            format!("new serving +{at} ms")
        });
    let exit = match (&report.old_exit, report.old_exit_ms) {
        (Some(exit), Some(at)) => format!("old {exit} +{at} ms"),
        _ if report.in_place => "no exit (the same process went on)".to_owned(),
        _ => "old did not exit".to_owned(),
    };
    format!(
        "{new}: {serving}, {exit}; {} requests ({} reused), {} failed",
        report.requests, report.reused, report.failed
    )
}

/// A failure's kind, as `Report::failures` counts it.
fn kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Refused => "refused",
        Outcome::Reset => "reset",
        Outcome::Truncated => "truncated",
        Outcome::ClosedBeforeResponse => "closed before a response",
        Outcome::Timeout => "no answer in time",
        Outcome::Complete { .. } => "not 200",
        Outcome::Failed(_) => "other error",
    }
}

/// The pid a PID file names, if it names one.
fn read_pid(path: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` is in the process group the checker started (the old process's).
fn in_group(pid: u32, old_pid: u32) -> Option<bool> {
    let group = getpgid(Some(Pid::from_raw(i32::try_from(pid).ok()?))).ok()?;
    Some(group.as_raw() == i32::try_from(old_pid).ok()?)
}

/// One request on a new connection; while the connection is still open, which of
/// `candidates` accepted it.
async fn probe(
    addr: std::net::SocketAddr,
    path: &str,
    candidates: BTreeSet<u32>,
) -> (Sample, Option<u32>) {
    let sent = Instant::now();
    let mut stream = match client::connect(addr).await {
        Ok(stream) => stream,
        Err(outcome) => {
            let sample = Sample {
                sent,
                reused: false,
                outcome,
            };
            return (sample, None);
        }
    };
    let outcome = match client::send(&mut stream, path).await {
        Ok(()) => client::read(&mut stream, Duration::from_secs(5)).await,
        Err(outcome) => outcome,
    };
    let owner = match stream.local_addr() {
        Ok(local) if outcome.is_ok() => {
            sockets::connection_owner(addr.port(), local.port(), candidates)
        }
        _ => None,
    };
    let sample = Sample {
        sent,
        reused: false,
        outcome,
    };
    (sample, owner)
}

/// The processes that appeared during the restart; dropping this kills them (and their
/// process group, unless it is the checker's own), whether or not they are in the group the
/// checker started.
#[derive(Debug, Default)]
struct Successors {
    /// Each with its start time: a pid the kernel reused since is someone else's.
    procs: Vec<(u32, Option<u64>)>,
}

impl Successors {
    fn add(&mut self, pid: u32) {
        if !self.procs.iter().any(|(p, _)| *p == pid) {
            self.procs.push((pid, sockets::start_time(pid)));
        }
    }
}

impl Drop for Successors {
    fn drop(&mut self) {
        let ours = getpgrp();
        for (pid, started) in &self.procs {
            if started.is_none() || sockets::start_time(*pid) != *started {
                continue;
            }
            let Ok(raw) = i32::try_from(*pid) else {
                continue;
            };
            let pid = Pid::from_raw(raw);
            if let Ok(group) = getpgid(Some(pid)) {
                if group != ours {
                    let _ = killpg(group, Signal::SIGKILL);
                }
            }
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
}

/// A bounded load: keep-alive clients (each reconnecting when its connection closes) and
/// clients that open a new connection for every request, until stopped, at most
/// [`MAX_REQUESTS`] requests and the restart timeout plus two minutes.
struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    /// Woken by each answer: the first one says the load is running.
    first: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, path: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let first = Arc::new(Notify::new());
        let until = Instant::now() + Duration::from_secs(300);
        let mut tasks = Vec::new();
        for worker in 0..KEEP_ALIVE_CLIENTS + NEW_CONNECTION_CLIENTS {
            let reuse = worker < KEEP_ALIVE_CLIENTS;
            let (stop, count, samples, first) =
                (stop.clone(), count.clone(), samples.clone(), first.clone());
            let path = path.to_owned();
            tasks.push(tokio::spawn(async move {
                let more = || {
                    !stop.load(Ordering::Relaxed)
                        && Instant::now() < until
                        && count.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
                };
                paced_client(addr, &path, reuse, &samples, more, || first.notify_one()).await;
            }));
        }
        Load {
            stop,
            samples,
            first,
            tasks,
        }
    }

    /// Stops the load; every request it sent.
    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
