//! The restart (feature `restart`) in real processes: the `restart_fixture` example, copied to a
//! temporary path so a test can replace the file as a deploy does, restarted with real
//! `SIGHUP`s under a real client load, with no balancer in front.
//!
//! The test process makes itself a child subreaper, so every generation (each one the child
//! of the one before) is reparented to it when its parent exits, and its real exit status can
//! be read with `waitpid`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lastcall::report::{Report, TriggerCause};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::support::{self, Child, Stderr, PATIENCE};

/// The running service: every generation writes to the same stdout and stderr, inherited
/// from the first.
struct Service {
    dir: PathBuf,
    exe: PathBuf,
    /// The first generation, the test's child; its pipes are every generation's.
    first: Child,
    /// Every stdout line so far, and whether a test has consumed it.
    seen: std::cell::RefCell<Vec<(String, bool)>>,
    addr: String,
    pid: u32,
}

fn fixture() -> PathBuf {
    support::example("restart_fixture")
}

/// A fresh directory for one test's copy of the binary.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lastcall-restart-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Replaces `exe` with `content` as a deploy does: a new file renamed over the old one (the
/// running binary is never written to).
fn deploy(exe: &Path, content: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let next = exe.with_extension("next");
    std::fs::write(&next, content).unwrap();
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&next, exe).unwrap();
}

fn become_subreaper() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
}

impl Service {
    fn start(name: &str, env: &[(&str, &str)]) -> Service {
        Service::start_with(name, env, |_| {})
    }

    fn start_with(name: &str, env: &[(&str, &str)], prepare: impl FnOnce(&mut Command)) -> Service {
        become_subreaper();
        let dir = temp_dir(name);
        let exe = dir.join("restart_fixture");
        deploy(&exe, &std::fs::read(fixture()).unwrap());
        let mut command = support::command(&exe, &[], env);
        prepare(&mut command);
        let mut service = Service {
            dir,
            exe,
            first: Child::spawn(&mut command, Stderr::Read),
            seen: Default::default(),
            addr: String::new(),
            pid: 0,
        };
        let (addr, pid) = service.listening();
        service.addr = addr;
        service.pid = pid;
        service.line(&format!("ready {pid}"));
        service
    }

    /// The first stdout line not consumed yet that starts with `prefix`, waiting for it.
    fn line(&self, prefix: &str) -> String {
        let mut seen = self.seen.borrow_mut();
        if let Some((line, taken)) = seen.iter_mut().find(|(l, t)| !*t && l.starts_with(prefix)) {
            *taken = true;
            return line.clone();
        }
        let until = Instant::now() + PATIENCE;
        loop {
            let line = self.first.next_line(until, prefix);
            let found = line.starts_with(prefix);
            seen.push((line.clone(), found));
            if found {
                return line;
            }
        }
    }

    /// The next `listening ADDR pid PID` line.
    fn listening(&self) -> (String, u32) {
        let line = self.line("listening ");
        let mut words = line.split(' ').skip(1);
        let addr = words.next().unwrap().to_owned();
        let pid = words.nth(1).unwrap().parse().unwrap();
        (addr, pid)
    }

    /// The report `pid` printed at the end of its shutdown.
    fn report(&self, pid: u32) -> Report {
        let line = self.line(&format!("report {pid} "));
        let json = line.splitn(3, ' ').nth(2).unwrap();
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    fn stderr(&self) -> String {
        self.first.stderr()
    }

    /// Waits until stderr holds `text`.
    fn logged(&self, text: &str) {
        let until = Instant::now() + PATIENCE;
        while !self.stderr().contains(text) {
            assert!(
                Instant::now() < until,
                "never logged {text:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn signal(&self, pid: u32, signal: Signal) {
        support::signal(pid, signal);
    }

    /// Restarts the serving generation: its successor's pid, once the old one has exited 0
    /// with a report that says `restart`.
    fn restart(&mut self) -> u32 {
        self.restart_with(Signal::SIGHUP)
    }

    /// [`Service::restart`] by `signal`.
    fn restart_with(&mut self, signal: Signal) -> u32 {
        let old = self.pid;
        self.signal(old, signal);
        let report = self.report(old);
        let status = self.reap(old);
        let TriggerCause::Restart { successor } = report.trigger else {
            panic!("generation {old} was not restarted: {report:?}");
        };
        assert_eq!(status, 0, "generation {old} exited {status}: {report:?}");
        assert_eq!(report.exit_code, 0, "{report:?}");
        assert_ne!(successor, old);
        self.pid = successor;
        successor
    }

    /// Waits for `pid` (a child, or a generation reparented to this subreaper) to exit; its
    /// exit code.
    fn reap(&mut self, pid: u32) -> i32 {
        if self.first.id() == pid {
            return self.first.wait().code().unwrap_or(-1);
        }
        let until = Instant::now() + PATIENCE;
        loop {
            match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return code,
                Ok(WaitStatus::Signaled(_, signal, _)) => return 128 + signal as i32,
                // Still running, or not reparented to us yet.
                Ok(_) | Err(nix::errno::Errno::ECHILD) => {}
                Err(e) => panic!("waitpid {pid}: {e}"),
            }
            assert!(
                Instant::now() < until,
                "{pid} did not exit; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the serving generation with SIGTERM; its exit code.
    fn stop(mut self) -> i32 {
        let pid = self.pid;
        self.signal(pid, Signal::SIGTERM);
        let _ = self.report(pid);
        let code = self.reap(pid);
        let _ = std::fs::remove_dir_all(&self.dir);
        code
    }
}

/// Whether `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// The open fds of `pid`: number and what each points to, sorted.
fn open_fds(pid: u32) -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| {
            let target = std::fs::read_link(entry.path()).unwrap_or_default();
            format!(
                "{} -> {}",
                entry.file_name().to_string_lossy(),
                target.display()
            )
        })
        .collect();
    fds.sort();
    fds
}

/// One HTTP/1.1 connection of the test's client.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// A response: status, whether the server closes the connection, body.
struct Answer {
    status: u16,
    close: bool,
    body: String,
}

impl Conn {
    fn open(addr: &str) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(PATIENCE))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    fn send(&mut self, path: &str) -> std::io::Result<()> {
        write!(self.writer, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
    }

    fn answer(&mut self) -> std::io::Result<Answer> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let (mut length, mut close) = (0usize, false);
        loop {
            let mut header = String::new();
            self.reader.read_line(&mut header)?;
            let header = header.trim_end().to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if let Some(value) = header.strip_prefix("content-length:") {
                length = value.trim().parse().unwrap_or(0);
            }
            close |= header == "connection: close";
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body)?;
        Ok(Answer {
            status,
            close,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    fn get(&mut self, path: &str) -> std::io::Result<Answer> {
        self.send(path)?;
        self.answer()
    }
}

/// A continuous client load, bounded in count and time: keep-alive clients and clients that
/// open a connection per request, each counting the requests that did not get a 200.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    pids: Arc<Mutex<std::collections::BTreeSet<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    const MAX_REQUESTS: u64 = 200_000;
    const MAX_TIME: Duration = Duration::from_secs(120);

    fn start(addr: &str) -> Load {
        let load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            ok: Arc::new(AtomicU64::new(0)),
            failures: Arc::new(Mutex::new(Vec::new())),
            pids: Arc::new(Mutex::new(Default::default())),
            threads: Vec::new(),
        };
        let mut threads = Vec::new();
        for keep_alive in [true, true, false, false] {
            let (addr, stop, ok, failures, pids) = (
                addr.to_owned(),
                load.stop.clone(),
                load.ok.clone(),
                load.failures.clone(),
                load.pids.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let started = Instant::now();
                let mut conn: Option<Conn> = None;
                while !stop.load(Ordering::Relaxed)
                    && started.elapsed() < Load::MAX_TIME
                    && ok.load(Ordering::Relaxed) < Load::MAX_REQUESTS
                {
                    let answer = match conn.take() {
                        Some(c) => Ok(c),
                        None => Conn::open(&addr),
                    }
                    .and_then(|mut c| c.get("/pid").map(|a| (c, a)));
                    match answer {
                        Ok((c, a)) if a.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            pids.lock().unwrap().insert(a.body);
                            if keep_alive && !a.close {
                                conn = Some(c);
                            }
                        }
                        Ok((_, a)) => failures
                            .lock()
                            .unwrap()
                            .push(format!("status {}", a.status)),
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            }));
        }
        Load { threads, ..load }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `more` requests have succeeded since now, so a restart happens under load.
    fn wait_for(&self, more: u64) {
        let target = self.ok() + more;
        let until = Instant::now() + PATIENCE;
        while self.ok() < target {
            assert!(Instant::now() < until, "the load made no progress");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the load: the requests that succeeded, and the failures.
    fn finish(self) -> (u64, Vec<String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let pids = self.pids.lock().unwrap().len();
        (
            self.ok.load(Ordering::Relaxed),
            self.failures.lock().unwrap().clone(),
            pids,
        )
    }
}

#[test]
fn ten_restarts_under_load_fail_no_request_and_each_generation_exits_clean() {
    let mut service = Service::start("ten", &[]);
    let load = Load::start(&service.addr);
    let mut pids = vec![service.pid];
    for _ in 0..10 {
        load.wait_for(200);
        let next = service.restart();
        assert!(!pids.contains(&next), "pid {next} served twice");
        pids.push(next);
    }
    load.wait_for(200);
    let (ok, failures, served_by) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across 10 restarts: {:?}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(20)]
    );
    assert_eq!(served_by, 11, "every generation answered requests");
    println!("10 restarts: {ok} requests answered, 0 failed");
    assert_eq!(service.stop(), 0);
}

#[test]
fn a_successor_that_fails_is_rolled_back_and_a_later_restart_works() {
    let mut service = Service::start("rollback", &[("LASTCALL_RESTART_TIMEOUT", "1s")]);
    let load = Load::start(&service.addr);
    load.wait_for(100);
    let good = std::fs::read(&service.exe).unwrap();
    let first = service.pid;

    // A successor that exits 1 at start-up.
    deploy(&service.exe, b"#!/bin/sh\nexit 1\n");
    service.signal(first, Signal::SIGHUP);
    service.logged("the new process exited before it was ready (exit status: 1)");
    load.wait_for(100);

    // One that never becomes ready: stopped after the timeout, and reaped.
    deploy(&service.exe, b"#!/bin/sh\nexec sleep 1000\n");
    service.signal(first, Signal::SIGHUP);
    service.logged("was not ready within 1s");
    load.wait_for(100);
    let stuck = service
        .stderr()
        .lines()
        .filter(|l| l.contains("new process started"))
        .filter_map(|l| l.split("pid=").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse::<u32>().ok())
        .next_back()
        .expect("the never-ready successor's pid is logged");
    assert!(
        gone(stuck),
        "the never-ready successor {stuck} was left running"
    );

    // The good binary again.
    deploy(&service.exe, &good);
    let next = service.restart();
    assert_ne!(next, first);
    let (ok, failures, _) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        ok,
        &failures[..failures.len().min(20)]
    );
    assert_eq!(service.stop(), 0);
}

#[test]
fn the_failed_restarts_are_in_the_old_generations_report() {
    let mut service = Service::start("report", &[]);
    let good = std::fs::read(&service.exe).unwrap();
    deploy(&service.exe, b"#!/bin/sh\nexit 3\n");
    service.signal(service.pid, Signal::SIGHUP);
    service.logged("exit status: 3");
    deploy(&service.exe, &good);
    let old = service.pid;
    service.signal(old, Signal::SIGHUP);
    let report = service.report(old);
    assert_eq!(service.reap(old), 0);
    assert!(
        matches!(report.trigger, TriggerCause::Restart { .. }),
        "{report:?}"
    );
    assert_eq!(report.restarts_failed.len(), 1, "{report:?}");
    assert!(
        report.restarts_failed[0].contains("exit status: 3"),
        "{report:?}"
    );
    let TriggerCause::Restart { successor } = report.trigger else {
        unreachable!()
    };
    service.pid = successor;
    assert_eq!(service.stop(), 0);
}

#[test]
fn a_request_in_flight_across_the_restart_completes_on_the_old_process() {
    let mut service = Service::start("inflight", &[]);
    let old = service.pid;
    let mut conn = Conn::open(&service.addr).unwrap();
    // This connection is the old process's: it answered on it.
    assert_eq!(conn.get("/pid").unwrap().body, old.to_string());
    conn.send("/slow?ms=1500").unwrap();
    let next = service.restart_started();
    let answer = conn.answer().unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, old.to_string(), "answered by the old process");
    assert!(
        answer.close,
        "the old process closes the connection after it"
    );
    let report = service.report(old);
    assert_eq!(service.reap(old), 0);
    assert_eq!(report.trigger, TriggerCause::Restart { successor: next });
    service.pid = next;
    assert_eq!(service.stop(), 0);
}

#[test]
fn an_sse_stream_on_the_old_process_ends_with_its_final_event() {
    let mut service = Service::start("sse", &[]);
    let old = service.pid;
    let mut conn = Conn::open(&service.addr).unwrap();
    assert_eq!(conn.get("/pid").unwrap().body, old.to_string());
    conn.send("/events").unwrap();
    // The head and a first event: the stream is the old process's, and under way.
    let mut seen = String::new();
    let mut line = String::new();
    while !seen.contains("data: 0") {
        line.clear();
        assert!(conn.reader.read_line(&mut line).unwrap() > 0, "{seen}");
        seen.push_str(&line);
    }
    let next = service.restart();
    // Everything up to the server's close: a last `shutdown` event, then the chunked
    // terminator, then a FIN (not a reset).
    let mut rest = Vec::new();
    conn.reader.read_to_end(&mut rest).unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("event: shutdown"), "{rest}");
    assert!(
        rest.ends_with("0\r\n\r\n"),
        "the stream ends cleanly: {rest:?}"
    );
    service.pid = next;
    assert_eq!(service.stop(), 0);
}

impl Service {
    /// Sends the restart signal and waits for the successor to listen; its pid (the old
    /// generation is still draining).
    fn restart_started(&mut self) -> u32 {
        self.signal(self.pid, Signal::SIGHUP);
        let (_, next) = self.listening();
        next
    }
}

#[test]
fn a_restart_while_the_previous_generation_drains_is_refused() {
    let mut service = Service::start("previous", &[]);
    let old = service.pid;
    let mut conn = Conn::open(&service.addr).unwrap();
    assert_eq!(conn.get("/pid").unwrap().body, old.to_string());
    // Holds the old generation's drain open.
    conn.send("/slow?ms=5000").unwrap();
    let next = service.restart_started();
    service.line(&format!("ready {next}"));
    service.logged("this one drains");
    service.signal(next, Signal::SIGHUP);
    service.logged(&format!(
        "the previous generation (pid {old}) is still draining"
    ));
    assert_eq!(conn.answer().unwrap().body, old.to_string());
    let report = service.report(old);
    assert_eq!(service.reap(old), 0);
    assert_eq!(report.trigger, TriggerCause::Restart { successor: next });
    // Once it has exited, the next restart goes ahead.
    service.pid = next;
    assert_ne!(service.restart(), next);
    assert_eq!(service.stop(), 0);
}

#[test]
fn a_second_restart_signal_during_a_restart_changes_nothing() {
    let mut service = Service::start("second", &[("FIXTURE_READY_DELAY_MS", "1000")]);
    let old = service.pid;
    let next = service.restart_started();
    service.signal(old, Signal::SIGHUP);
    service.logged("another restart is under way");
    let report = service.report(old);
    assert_eq!(service.reap(old), 0);
    assert_eq!(report.trigger, TriggerCause::Restart { successor: next });
    assert!(report.later_signals.is_empty(), "{report:?}");
    assert!(report.restarts_failed.is_empty(), "{report:?}");
    service.pid = next;
    service.line(&format!("ready {next}"));
    assert_eq!(service.stop(), 0);
}

#[test]
fn sigterm_during_a_restart_stops_the_successor_and_shuts_down_cleanly() {
    let mut service = Service::start("sigterm", &[("FIXTURE_READY_DELAY_MS", "3000")]);
    let old = service.pid;
    let next = service.restart_started();
    service.signal(old, Signal::SIGTERM);
    let report = service.report(old);
    assert_eq!(service.reap(old), 0);
    assert!(
        matches!(report.trigger, TriggerCause::Signal { .. }),
        "{report:?}"
    );
    // The successor was stopped and reaped by the old process, or killed as it exited and
    // then reparented here.
    let until = Instant::now() + PATIENCE;
    while !gone(next) {
        assert!(
            Instant::now() < until,
            "the successor {next} is still running"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = waitpid(Pid::from_raw(next as i32), Some(WaitPidFlag::WNOHANG));
    let _ = std::fs::remove_dir_all(&service.dir);
}

#[test]
fn twenty_restarts_leak_no_file_descriptor() {
    let mut service = Service::start("fds", &[]);
    let first = service.restart();
    service.line(&format!("ready {first}"));
    let after_first = open_fds(first);
    for _ in 1..20 {
        service.restart();
    }
    let last = service.pid;
    let after_twenty = open_fds(last);
    assert_eq!(
        after_twenty.len(),
        after_first.len(),
        "fds of the 20th generation {after_twenty:#?} vs the first successor {after_first:#?}"
    );
    assert_eq!(service.stop(), 0);
}

#[test]
fn a_blocking_listener_handed_in_is_made_non_blocking() {
    use command_fds::{CommandFdExt, FdMapping};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let service = Service::start_with(
        "blocking",
        &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "http")],
        |command| {
            command
                .fd_mappings(vec![FdMapping {
                    parent_fd: std::os::fd::OwnedFd::from(listener),
                    child_fd: 3,
                }])
                .unwrap();
        },
    );
    assert_eq!(service.addr, addr.to_string(), "served on the fd handed in");
    let mut conn = Conn::open(&service.addr).unwrap();
    assert_eq!(conn.get("/pid").unwrap().body, service.pid.to_string());
    drop(conn);
    // A blocking accept would hold the single-threaded runtime and the shutdown with it.
    assert_eq!(service.stop(), 0);
}

#[test]
fn systemd_hears_reloading_then_the_new_main_pid_and_ready() {
    let dir = temp_dir("notify");
    let socket_path = dir.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let path = socket_path.to_str().unwrap().to_owned();
    let mut service = Service::start("notify-svc", &[("NOTIFY_SOCKET", &path)]);
    let next = service.restart();
    let mut heard = Vec::new();
    let mut buf = [0u8; 4096];
    while !heard
        .iter()
        .any(|m: &String| m.contains(&format!("MAINPID={next}")))
    {
        let n = socket.recv(&mut buf).expect("a notify message");
        heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let reloading = heard
        .iter()
        .position(|m| m.contains("RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1 in {heard:?}"));
    assert!(
        heard[reloading].contains("MONOTONIC_USEC="),
        "RELOADING=1 carries MONOTONIC_USEC: {heard:?}"
    );
    let main = heard.len() - 1;
    assert!(reloading < main, "{heard:?}");
    assert!(heard[main].contains("READY=1"), "{heard:?}");
    assert_eq!(service.stop(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_restart_is_refused_before_ready_and_during_a_shutdown() {
    use lastcall::restart::RestartError;
    let controller = lastcall::Controller::builder()
        .ignore_env()
        .continue_after_run()
        .manual_readiness()
        .build()
        .unwrap();
    let restarter = controller.restarter();
    let refused = restarter.restart().await.unwrap_err();
    assert!(matches!(refused, RestartError::NotReady), "{refused}");
    assert!(!refused.is_failure());
    controller.readiness().set_ready();
    controller.trigger().trigger("test");
    let refused = restarter.restart().await.unwrap_err();
    assert!(matches!(refused, RestartError::ShuttingDown), "{refused}");
    let report = controller.run_with_report().await;
    assert!(
        report.restarts_failed.is_empty(),
        "refusals are not failures"
    );
}

#[test]
fn sigusr2_restarts_when_it_is_the_restart_signal_and_sighup_keeps_its_default_action() {
    let mut service = Service::start("usr2", &[("LASTCALL_RESTART_SIGNAL", "SIGUSR2")]);
    let first = service.pid;
    let next = service.restart_with(Signal::SIGUSR2);
    assert_ne!(next, first);
    // SIGHUP is not lastcall's any more: its default action ends the process at once.
    service.signal(next, Signal::SIGHUP);
    assert_eq!(
        service.reap(next),
        128 + Signal::SIGHUP as i32,
        "stderr:\n{}",
        service.stderr()
    );
    let _ = std::fs::remove_dir_all(&service.dir);
}

#[test]
fn with_the_restart_signal_off_sighup_starts_no_successor() {
    use std::os::unix::process::ExitStatusExt as _;

    let mut service = Service::start("off", &[("LASTCALL_RESTART_SIGNAL", "off")]);
    service.signal(service.pid, Signal::SIGHUP);
    let status = service.first.wait();
    assert_eq!(
        status.signal(),
        Some(Signal::SIGHUP as i32),
        "ended by SIGHUP's default action: {status:?}, stderr:\n{}",
        service.stderr()
    );
    assert!(
        !service.stderr().contains("new process started"),
        "{}",
        service.stderr()
    );
    let _ = std::fs::remove_dir_all(&service.dir);
}

#[test]
fn a_restart_signal_also_in_lastcall_signals_is_refused_at_start_up() {
    let output = Command::new(fixture())
        .env("LASTCALL_SIGNALS", "SIGTERM,SIGHUP")
        .env_remove("LASTCALL_RESTART_SIGNAL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("LASTCALL_RESTART_SIGNAL") && stderr.contains("LASTCALL_SIGNALS"),
        "{stderr}"
    );
}

#[test]
fn the_pid_file_follows_the_serving_process() {
    let dir = temp_dir("pidfile-path");
    let pid_file = dir.join("service.pid");
    let path = pid_file.to_str().unwrap().to_owned();
    let mut service = Service::start("pidfile", &[("LASTCALL_PID_FILE", &path)]);
    let read = || {
        std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(read(), service.pid.to_string());
    let good = std::fs::read(&service.exe).unwrap();
    deploy(&service.exe, b"#!/bin/sh\nexit 1\n");
    service.signal(service.pid, Signal::SIGHUP);
    service.logged("exit status: 1");
    assert_eq!(
        read(),
        service.pid.to_string(),
        "unchanged by a failed restart"
    );
    deploy(&service.exe, &good);
    let next = service.restart();
    assert_eq!(read(), next.to_string());
    assert_eq!(service.stop(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
