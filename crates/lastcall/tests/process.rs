//! The fixture example as a child process, driven with real signals from `nix`.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use lastcall::report::{PhaseOutcome, Report, StepOutcome, TriggerCause};
use lastcall::{Exit, Phase, WorkKind};
use nix::sys::signal::Signal as NixSignal;

use super::support::{self, Child, Stderr, PATIENCE};

struct Fixture {
    child: Child,
    /// Every stdout line read so far.
    stdout: Vec<String>,
}

struct Ended {
    status: ExitStatus,
    stdout: Vec<String>,
    stderr: String,
    report: Option<Report>,
}

impl Fixture {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Fixture {
        Fixture::start_with(args, env, Stderr::Read)
    }

    /// Starts the fixture with its stderr a pipe that is never read: once the pipe's buffer
    /// is full, every write to stderr blocks, as under Docker's blocking log mode.
    fn ready_with_unread_stderr(args: &[&str], env: &[(&str, &str)]) -> Fixture {
        let mut fixture = Fixture::start_with(args, env, Stderr::Unread);
        fixture.wait_for("ready");
        fixture
    }

    fn start_with(args: &[&str], env: &[(&str, &str)], stderr: Stderr) -> Fixture {
        let mut command = support::command(&support::example("fixture"), args, env);
        Fixture {
            child: Child::spawn(&mut command, stderr),
            stdout: Vec::new(),
        }
    }

    /// Starts the fixture and waits until it says it is ready.
    fn ready(args: &[&str], env: &[(&str, &str)]) -> Fixture {
        let mut fixture = Fixture::start(args, env);
        fixture.wait_for("ready");
        fixture
    }

    fn wait_for(&mut self, wanted: &str) {
        let until = Instant::now() + PATIENCE;
        loop {
            let line = self.child.next_line(until, wanted);
            let found = line == wanted;
            self.stdout.push(line);
            if found {
                return;
            }
        }
    }

    fn signal(&self, signal: NixSignal) {
        self.child.signal(signal);
    }

    fn wait(mut self) -> Ended {
        let status = self.child.wait();
        let (rest, stderr) = self.child.rest();
        self.stdout.extend(rest);
        Ended {
            status,
            stderr,
            report: support::report_in(&self.stdout),
            stdout: self.stdout,
        }
    }
}

impl Ended {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn report(&self) -> &Report {
        self.report
            .as_ref()
            .unwrap_or_else(|| panic!("no report; stderr:\n{}", self.stderr))
    }

    fn count(&self, line: &str) -> usize {
        self.stdout.iter().filter(|l| *l == line).count()
    }
}

#[test]
fn a_second_sigterm_and_a_sigint_during_the_drain_neither_restart_nor_kill_the_flow() {
    later_signals_are_recorded(&[]);
}

#[test]
fn on_a_multi_thread_runtime_the_signal_thread_hears_the_signals() {
    later_signals_are_recorded(&[("FIXTURE_WORKERS", "2")]);
    repeated_interrupt_forces_exit(&[("FIXTURE_WORKERS", "2")]);
}

fn later_signals_are_recorded(env: &[(&str, &str)]) {
    let mut env = env.to_vec();
    env.push(("LASTCALL_BUDGET", "20s"));
    let mut fixture = Fixture::ready(&["work=1500", "stop-hook"], &env);
    fixture.signal(NixSignal::SIGTERM);
    fixture.wait_for("phase wait_for_work");
    fixture.signal(NixSignal::SIGTERM);
    fixture.signal(NixSignal::SIGINT);
    let ended = fixture.wait();

    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
    let report = ended.report();
    assert_eq!(
        report.trigger,
        TriggerCause::Signal {
            signal: lastcall::Signal::Terminate
        }
    );
    // The two signals arrive together; their order is the kernel's business, not ours.
    let mut later: Vec<String> = report
        .later_signals
        .iter()
        .map(|l| l.cause.to_string())
        .collect();
    later.sort();
    assert_eq!(later, ["SIGINT", "SIGTERM"]);
    assert!(
        report
            .later_signals
            .iter()
            .all(|l| l.phase == Phase::WaitForWork),
        "{:?}",
        report.later_signals
    );
    assert_eq!(
        ended.count("hook stop_accepting ran"),
        1,
        "the hook ran once"
    );
    assert_eq!(ended.count("phase stop_accepting"), 1, "one flow");
    assert_eq!(
        report.phase(Phase::WaitForWork).unwrap().outcome,
        PhaseOutcome::Completed,
        "the job finished"
    );
    assert!(
        ended.stderr.contains("shutdown already in progress"),
        "later signals are logged"
    );
}

#[test]
fn a_repeated_interrupt_forces_exit_130_when_opted_in() {
    repeated_interrupt_forces_exit(&[]);
}

fn repeated_interrupt_forces_exit(env: &[(&str, &str)]) {
    let mut env = env.to_vec();
    env.push(("LASTCALL_FORCE_EXIT", "second-interrupt"));
    let mut fixture = Fixture::ready(&["work=never"], &env);
    fixture.signal(NixSignal::SIGINT);
    fixture.wait_for("phase wait_for_work");
    fixture.signal(NixSignal::SIGINT);
    let ended = fixture.wait();
    assert_eq!(ended.code(), Some(130));
    assert!(ended.report.is_none(), "the flow was cut short");
    assert!(
        ended
            .stderr
            .contains("a repeated interrupt forced the exit"),
        "{}",
        ended.stderr
    );
    assert!(
        ended.stderr.contains("job \"job-0\""),
        "names the work left behind: {}",
        ended.stderr
    );
}

#[test]
fn work_that_never_completes_is_cut_at_the_deadline_and_named() {
    let budget = Duration::from_secs(2);
    let fixture = Fixture::ready(
        &["work=never"],
        &[
            ("LASTCALL_BUDGET", "2s"),
            ("LASTCALL_FLUSH_TIMEOUT", "200ms"),
            ("LASTCALL_CLOSE_TIMEOUT", "300ms"),
        ],
    );
    let signalled = Instant::now();
    fixture.signal(NixSignal::SIGTERM);
    let ended = fixture.wait();
    let elapsed = signalled.elapsed();

    assert_eq!(
        ended.code(),
        Some(i32::from(Exit::WorkCut.code())),
        "stderr:\n{}",
        ended.stderr
    );
    let report = ended.report();
    let wait = report.phase(Phase::WaitForWork).unwrap();
    assert_eq!(wait.outcome, PhaseOutcome::DeadlineReached);
    assert_eq!(wait.deadline, Duration::from_millis(1500));
    let cut = report
        .work_at_deadline
        .as_ref()
        .expect("named in the report");
    assert_eq!(cut.items[0].label, "job-0");
    assert_eq!(cut.items[0].kind, WorkKind::Job);
    assert!(
        elapsed < budget + Duration::from_secs(5),
        "ended within the budget: {elapsed:?}"
    );
    assert!(
        report.total < budget,
        "the flow finished inside its budget: {:?}",
        report.total
    );
}

#[test]
fn a_close_step_that_hangs_is_cut_at_its_timeout_and_later_steps_still_run() {
    let fixture = Fixture::ready(&["close-hang"], &[("LASTCALL_BUDGET", "10s")]);
    fixture.signal(NixSignal::SIGTERM);
    let ended = fixture.wait();

    assert_eq!(
        ended.code(),
        Some(i32::from(Exit::CleanupFailed.code())),
        "stderr:\n{}",
        ended.stderr
    );
    let report = ended.report();
    let broker = &report.steps[0];
    assert_eq!(
        (broker.name.as_str(), &broker.outcome),
        ("broker", &StepOutcome::TimedOut)
    );
    assert_eq!(broker.timeout, Duration::from_millis(500));
    assert!(
        broker.duration >= Duration::from_millis(500),
        "{:?}",
        broker.duration
    );
    let database = &report.steps[1];
    assert_eq!(
        (database.name.as_str(), &database.outcome),
        ("database", &StepOutcome::Ok)
    );
    assert_eq!(ended.count("step database ran"), 1);
    assert!(
        ended.stderr.contains("step did not succeed"),
        "the failure is logged"
    );
}

#[test]
fn failing_and_panicking_close_steps_give_the_cleanup_failed_code() {
    for (arg, expected) in [
        (
            "close-fail",
            StepOutcome::Failed {
                error: "connection reset while closing".into(),
            },
        ),
        (
            "close-panic",
            StepOutcome::Panicked {
                message: "cache client panicked on close".into(),
            },
        ),
    ] {
        let fixture = Fixture::ready(&[arg], &[]);
        fixture.signal(NixSignal::SIGTERM);
        let ended = fixture.wait();
        assert_eq!(ended.code(), Some(4), "{arg}: stderr:\n{}", ended.stderr);
        assert_eq!(ended.report().steps[0].outcome, expected, "{arg}");
    }
}

#[test]
fn a_blocked_runtime_is_still_ended_by_the_hard_deadline() {
    blocked_runtime_is_ended_at_the_deadline(None);
}

#[test]
fn a_blocked_multi_thread_runtime_is_ended_at_the_hard_deadline() {
    // One worker, blocked, and `main` waiting on it.
    blocked_runtime_is_ended_at_the_deadline(Some("1"));
}

fn blocked_runtime_is_ended_at_the_deadline(workers: Option<&str>) {
    let budget = Duration::from_secs(1);
    let report_file = std::env::temp_dir().join(format!(
        "lastcall-watchdog-{}-{}.txt",
        std::process::id(),
        workers.unwrap_or("current")
    ));
    let report_path = report_file.display().to_string();
    let mut env = vec![
        ("LASTCALL_BUDGET", "1s"),
        ("LASTCALL_STOP_TIMEOUT", "100ms"),
        ("LASTCALL_FLUSH_TIMEOUT", "100ms"),
        ("LASTCALL_CLOSE_TIMEOUT", "200ms"),
        ("LASTCALL_REPORT_FILE", &report_path),
    ];
    if let Some(workers) = workers {
        env.push(("FIXTURE_WORKERS", workers));
    }
    let fixture = Fixture::ready(&["block"], &env);
    let signalled = Instant::now();
    fixture.signal(NixSignal::SIGTERM);
    let ended = fixture.wait();
    let elapsed = signalled.elapsed();

    assert_eq!(
        ended.code(),
        Some(i32::from(Exit::HardDeadline.code())),
        "stderr:\n{}",
        ended.stderr
    );
    assert!(elapsed >= budget, "not before the deadline: {elapsed:?}");
    assert!(
        elapsed < budget + Duration::from_secs(5),
        "soon after it: {elapsed:?}"
    );
    assert!(
        ended.report.is_none(),
        "the blocked flow never wrote its report"
    );
    assert!(
        ended.stderr.contains("the 1000ms budget ran out"),
        "{}",
        ended.stderr
    );
    assert!(
        ended.stderr.contains("GET /reports/blocking"),
        "names what was active: {}",
        ended.stderr
    );
    // The last words also reach the report file (Kubernetes' termination log).
    let written = std::fs::read_to_string(&report_file).unwrap();
    let _ = std::fs::remove_file(&report_file);
    assert!(written.contains("the 1000ms budget ran out"), "{written}");
}

/// The threads the fixture had when its flow finished, from its `threads:` line.
fn threads_at_exit(ended: &Ended) -> Vec<String> {
    ended
        .stdout
        .iter()
        .find_map(|l| l.strip_prefix("threads: "))
        .unwrap_or_else(|| panic!("no threads line; stdout: {:?}", ended.stdout))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The fixture's `ages` line says a guard taken 300 ms after another is young: its start time
/// was read then (a stale clock would make it about 300 ms old).
fn assert_fresh_clock(ended: &Ended) {
    let age: u128 = ended
        .stdout
        .iter()
        .find_map(|l| l.strip_prefix("age of a new guard: "))
        .and_then(|rest| rest.strip_suffix(" ms"))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no ages line; stdout: {:?}", ended.stdout));
    assert!(age < 150, "a new guard is {age} ms old");
}

#[test]
#[cfg(target_os = "linux")]
fn after_the_flow_the_watchdog_is_the_thread_of_lastcall_left() {
    // On both runtime flavours: the signal listener ended with the controller, the watchdog
    // holds the deadline until the exit, and work ages are exact without a thread refreshing
    // a cached clock.
    for env in [&[("FIXTURE_WORKERS", "2")][..], &[]] {
        let fixture = Fixture::ready(&["ages"], env);
        fixture.signal(NixSignal::SIGTERM);
        let ended = fixture.wait();
        assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
        assert_fresh_clock(&ended);
        let ours: Vec<String> = threads_at_exit(&ended)
            .into_iter()
            .filter(|t| t.starts_with("lastcall-"))
            .collect();
        // Linux keeps the first 15 bytes of a thread's name. The signal thread was told to
        // end with the controller and may still be on its way out.
        assert!(
            ours.iter().any(|t| t == "lastcall-watchd"),
            "{env:?}: {ours:?}"
        );
        assert!(
            ours.iter()
                .all(|t| t == "lastcall-watchd" || t == "lastcall-signal"),
            "{env:?}: {ours:?}"
        );
    }
}

#[test]
fn a_blocking_task_left_running_cannot_hold_the_exit() {
    blocking_task_is_waited_for_then_abandoned(&[]);
}

#[test]
fn on_a_multi_thread_runtime_the_teardown_still_waits_for_a_blocking_task() {
    // The default teardown leaves idle workers to the exit only when nothing is left: here a
    // blocking task is, so it is waited for (bounded) as on a current-thread runtime.
    blocking_task_is_waited_for_then_abandoned(&[("FIXTURE_WORKERS", "2")]);
}

#[test]
fn on_a_multi_thread_runtime_the_teardown_still_drops_a_task_left_alive() {
    let fixture = Fixture::ready(&["untracked-task"], &[("FIXTURE_WORKERS", "2")]);
    fixture.signal(NixSignal::SIGTERM);
    let ended = fixture.wait();
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
    assert_eq!(
        ended.count("untracked task dropped"),
        1,
        "its destructor ran: {:?}",
        ended.stdout
    );
}

fn blocking_task_is_waited_for_then_abandoned(env: &[(&str, &str)]) {
    // Dropping a tokio runtime waits for its blocking tasks with no limit: this one sleeps ten
    // minutes. The fixture ends its runtime through `lastcall::runtime::block_on`.
    let fixture = Fixture::ready(&["blocking-leftover"], env);
    fixture.signal(NixSignal::SIGTERM);
    let ended = fixture.wait();
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
    assert_eq!(ended.report().exit, lastcall::Exit::Clean);
    assert!(
        ended.stderr.contains("teardown outlived its limit"),
        "the abandoned task is reported: {}",
        ended.stderr
    );
}

#[test]
fn a_fatal_trigger_exits_1_after_a_clean_shutdown() {
    let fixture = Fixture::ready(&["fatal-after=50"], &[]);
    let ended = fixture.wait();
    assert_eq!(ended.code(), Some(1), "stderr:\n{}", ended.stderr);
    assert!(matches!(ended.report().trigger, TriggerCause::Fatal { .. }));
}

#[test]
fn a_configured_sighup_starts_the_shutdown() {
    // SIGHUP is the restart signal (feature `restart`) unless another one is chosen.
    let fixture = Fixture::ready(
        &[],
        &[
            ("LASTCALL_SIGNALS", "SIGHUP,SIGTERM"),
            ("LASTCALL_RESTART_SIGNAL", "SIGQUIT"),
        ],
    );
    fixture.signal(NixSignal::SIGHUP);
    let ended = fixture.wait();
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
    assert_eq!(
        ended.report().trigger,
        TriggerCause::Signal {
            signal: lastcall::Signal::Hangup
        }
    );
}

#[test]
fn bad_configuration_is_rejected_at_startup_with_exit_78() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("LASTCALL_BUDGET", "soon")],
            "LASTCALL_BUDGET=\"soon\" is not a duration",
        ),
        (&[("LASTCALL_BUDGET", "0s")], "LASTCALL_BUDGET is zero"),
        (
            &[("LASTCALL_BUDGET", "5s"), ("LASTCALL_DRAIN_DELAY", "10s")],
            "raise the budget above 11s 332ms",
        ),
        (
            &[("LASTCALL_DRAIN_DELAYS", "1s")],
            "did you mean LASTCALL_DRAIN_DELAY?",
        ),
        (
            &[("LASTCALL_SIGNALS", "SIGKILL")],
            "LASTCALL_SIGNALS=\"SIGKILL\" is not valid",
        ),
        (
            &[("LASTCALL_FORCE_EXIT", "maybe")],
            "\"never\" or \"second-interrupt\"",
        ),
        (
            &[("LASTCALL_CLOSE_TIMEOUT", "10ms")],
            "it must be at least 100ms",
        ),
        (
            &[("LASTCALL_REPORT_FILE", "/nonexistent-dir/termination-log")],
            "LASTCALL_REPORT_FILE=/nonexistent-dir/termination-log cannot be written",
        ),
    ];
    for (env, message) in cases {
        let ended = Fixture::start(&[], env).wait();
        assert_eq!(ended.code(), Some(78), "{env:?}: stderr:\n{}", ended.stderr);
        assert!(
            ended.stderr.contains(message),
            "{env:?}: expected {message:?} in:\n{}",
            ended.stderr
        );
        assert!(
            !ended.stdout.iter().any(|l| l == "ready"),
            "{env:?}: rejected before starting"
        );
    }
}

#[test]
fn the_report_summary_is_written_to_the_report_file_at_exit() {
    let report_file =
        std::env::temp_dir().join(format!("lastcall-report-{}.txt", std::process::id()));
    let path = report_file.display().to_string();
    let fixture = Fixture::ready(&["work=100"], &[("LASTCALL_REPORT_FILE", &path)]);
    fixture.signal(NixSignal::SIGTERM);
    let ended = fixture.wait();
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
    let written = std::fs::read_to_string(&report_file).unwrap();
    let _ = std::fs::remove_file(&report_file);
    assert!(
        written.starts_with("shutdown (SIGTERM) finished in"),
        "{written}"
    );
    assert!(written.contains("clean shutdown (exit 0)"), "{written}");
    assert!(
        written.contains("wait_for_work"),
        "one line per phase: {written}"
    );
}

#[test]
fn systemd_hears_ready_stopping_each_phase_and_bounded_timeout_extensions() {
    use std::os::unix::net::UnixDatagram;

    let path = std::env::temp_dir().join(format!("lastcall-notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let notify = path.display().to_string();
    let fixture = Fixture::ready(
        &["systemd", "work=2500"],
        &[
            ("NOTIFY_SOCKET", notify.as_str()),
            ("LASTCALL_BUDGET", "8s"),
            ("LASTCALL_DRAIN_DELAY", "200ms"),
            ("LASTCALL_CLOSE_TIMEOUT", "1s"),
        ],
    );
    let mut messages: Vec<String> = Vec::new();
    let mut buf = [0u8; 1024];
    let mut receive = |messages: &mut Vec<String>| {
        if let Ok(n) = socket.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    let until = Instant::now() + Duration::from_secs(10);
    while !messages.iter().any(|m| m.contains("READY=1")) && Instant::now() < until {
        receive(&mut messages);
    }
    fixture.signal(NixSignal::SIGTERM);
    let until = Instant::now() + Duration::from_secs(10);
    let last = "STATUS=shutting down: close_dependencies";
    while !messages.iter().any(|m| m.contains(last)) && Instant::now() < until {
        receive(&mut messages);
    }
    let ended = fixture.wait();
    let _ = std::fs::remove_file(&path);
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);

    let lines: Vec<&str> = messages.iter().flat_map(|m| m.lines()).collect();
    let position = |wanted: &str| {
        lines
            .iter()
            .position(|line| *line == wanted)
            .unwrap_or_else(|| panic!("no {wanted:?} in {lines:?}"))
    };
    assert_eq!(lines.first(), Some(&"STATUS=starting"), "{lines:?}");
    let ready = position("READY=1");
    let stopping = position("STOPPING=1");
    assert!(ready < stopping, "{lines:?}");
    let mut last = stopping;
    for phase in [
        "not_ready",
        "drain_delay",
        "stop_accepting",
        "wait_for_work",
        "flush_telemetry",
        "close_dependencies",
    ] {
        let at = position(&format!("STATUS=shutting down: {phase}"));
        assert!(at >= last, "phases in order: {lines:?}");
        last = at;
    }
    let extensions: Vec<u64> = lines
        .iter()
        .filter_map(|line| line.strip_prefix("EXTEND_TIMEOUT_USEC="))
        .map(|usec| usec.parse().unwrap())
        .collect();
    // The 2.5 s job keeps the wait going: renewed at least every second, each within the
    // 8 s budget and shrinking as it is spent.
    assert!(extensions.len() >= 4, "{lines:?}");
    assert!(
        extensions.iter().all(|&usec| usec > 0 && usec <= 8_000_000),
        "{extensions:?}"
    );
    assert!(
        extensions.windows(2).all(|w| w[1] <= w[0]),
        "{extensions:?}"
    );
}

#[test]
fn an_unusable_notify_socket_is_rejected_at_startup() {
    let fixture = Fixture::start(
        &["systemd"],
        &[("NOTIFY_SOCKET", "/nonexistent/lastcall/notify.sock")],
    );
    let ended = fixture.wait();
    assert_eq!(ended.code(), Some(2), "stderr:\n{}", ended.stderr);
    assert!(
        ended
            .stderr
            .contains("cannot send to NOTIFY_SOCKET=\"/nonexistent/lastcall/notify.sock\""),
        "{}",
        ended.stderr
    );
}

/// Signals the fixture and waits for its end; returns how long it took.
fn terminate_and_time(fixture: Fixture) -> (Ended, Duration) {
    let signalled = Instant::now();
    fixture.signal(NixSignal::SIGTERM);
    let ended = fixture.wait();
    (ended, signalled.elapsed())
}

/// The process ended with status 5 at the end of `budget`: not before it, and well before
/// anything else would have ended it (the fixtures here would otherwise live for minutes).
fn assert_ended_by_the_deadline(ended: &Ended, elapsed: Duration, budget: Duration) {
    assert_eq!(
        ended.code(),
        Some(i32::from(Exit::HardDeadline.code())),
        "after {elapsed:?}; stdout: {:?}; stderr:\n{}",
        ended.stdout,
        ended.stderr
    );
    assert!(elapsed >= budget, "not before the deadline: {elapsed:?}");
    assert!(
        elapsed < budget + Duration::from_secs(3),
        "soon after it: {elapsed:?}"
    );
}

#[test]
fn a_server_awaited_after_run_cannot_outlive_the_budget() {
    // The README's axum shape: `controller.run().await`, then `server.await`, which waits for
    // a request that never ends. The flow cuts it and returns, and the deadline still holds.
    let budget = Duration::from_secs(2);
    let mut fixture = Fixture::ready(&["serve-after-run"], &[("LASTCALL_BUDGET", "2s")]);
    let port = fixture
        .stdout
        .iter()
        .find_map(|l| l.strip_prefix("listening "))
        .and_then(|p| p.parse::<u16>().ok())
        .expect("the fixture prints its port");
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    std::io::Write::write_all(&mut client, b"GET /hang HTTP/1.1\r\nHost: fixture\r\n\r\n")
        .expect("send the request");
    fixture.wait_for("hang started");
    let (ended, elapsed) = terminate_and_time(fixture);
    assert_ended_by_the_deadline(&ended, elapsed, budget);
    assert!(
        ended
            .stderr
            .contains("after the shutdown flow had finished"),
        "{}",
        ended.stderr
    );
    assert!(
        ended.stderr.contains("GET /hang"),
        "names the request: {}",
        ended.stderr
    );
}

#[test]
fn under_tokio_main_a_stuck_blocking_task_cannot_outlive_the_budget() {
    // `#[tokio::main]` drops its runtime, which waits for the blocking task with no limit.
    let budget = Duration::from_secs(2);
    let fixture = Fixture::ready(
        &["blocking-leftover"],
        &[("FIXTURE_TOKIO_MAIN", "1"), ("LASTCALL_BUDGET", "2s")],
    );
    let (ended, elapsed) = terminate_and_time(fixture);
    assert_ended_by_the_deadline(&ended, elapsed, budget);
    assert_eq!(
        ended.report().exit,
        Exit::Clean,
        "the flow itself was clean"
    );
    assert!(
        ended.stderr.contains("spawn_blocking") && ended.stderr.contains("cannot be named"),
        "says honestly what it cannot name: {}",
        ended.stderr
    );
}

#[test]
fn a_stalled_stderr_cannot_hold_the_exit_of_a_blocked_runtime() {
    // Every write to stderr blocks (a full pipe nobody reads): the flow's logs, the watchdog's
    // last words. The deadline waits for its last words only briefly.
    let budget = Duration::from_secs(1);
    let fixture =
        Fixture::ready_with_unread_stderr(&["block", "fill-stderr"], &[("LASTCALL_BUDGET", "1s")]);
    let (ended, elapsed) = terminate_and_time(fixture);
    assert_ended_by_the_deadline(&ended, elapsed, budget);
}

#[test]
fn a_report_file_swapped_for_a_fifo_cannot_hold_the_exit() {
    // Accepted at start-up as a regular file, then replaced by a FIFO nobody reads: writing
    // the last words there must not block the exit.
    let budget = Duration::from_secs(1);
    let path = std::env::temp_dir().join(format!("lastcall-fifo-{}.txt", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let shown = path.display().to_string();
    let fixture = Fixture::ready(
        &["block"],
        &[("LASTCALL_BUDGET", "1s"), ("LASTCALL_REPORT_FILE", &shown)],
    );
    std::fs::remove_file(&path).expect("the builder created the report file");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let (ended, elapsed) = terminate_and_time(fixture);
    let _ = std::fs::remove_file(&path);
    assert_ended_by_the_deadline(&ended, elapsed, budget);
    assert!(
        ended.stderr.contains("the 1000ms budget ran out"),
        "the last words still reach stderr: {}",
        ended.stderr
    );
}

#[test]
fn a_report_file_that_is_not_a_regular_file_or_holds_other_data_is_refused_at_startup() {
    let dir = std::env::temp_dir();
    let fifo = dir.join(format!("lastcall-refused-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let database = dir.join(format!("lastcall-refused-db-{}", std::process::id()));
    std::fs::write(&database, b"SQLite format 3\0rest of a database").unwrap();
    for (path, problem) in [
        (&fifo, "not a regular file"),
        (&database, "does not hold an earlier report"),
    ] {
        let shown = path.display().to_string();
        let ended = Fixture::start(&[], &[("LASTCALL_REPORT_FILE", &shown)]).wait();
        assert_eq!(ended.code(), Some(78), "{shown}: stderr:\n{}", ended.stderr);
        assert!(ended.stderr.contains(problem), "{}", ended.stderr);
    }
    let kept = std::fs::read(&database).unwrap();
    let _ = std::fs::remove_file(&fifo);
    let _ = std::fs::remove_file(&database);
    assert!(
        kept.starts_with(b"SQLite format 3"),
        "the database is untouched"
    );
}

#[test]
fn a_runtime_blocked_before_the_signal_still_hears_it_and_ends_at_the_deadline() {
    // The only runtime thread is blocked before SIGTERM arrives: no task can run, so the
    // signal is heard by lastcall's own thread, which arms the deadline.
    let budget = Duration::from_secs(1);
    let mut fixture = Fixture::ready(&["block-now"], &[("LASTCALL_BUDGET", "1s")]);
    fixture.wait_for("runtime blocked");
    let (ended, elapsed) = terminate_and_time(fixture);
    assert_ended_by_the_deadline(&ended, elapsed, budget);
    assert!(
        ended.stderr.contains("the 1000ms budget ran out"),
        "{}",
        ended.stderr
    );
}

#[test]
fn an_always_ready_future_in_main_cannot_starve_the_deadline() {
    let budget = Duration::from_secs(1);
    let fixture = Fixture::ready(
        &["spin-main"],
        &[("FIXTURE_WORKERS", "2"), ("LASTCALL_BUDGET", "1s")],
    );
    let (ended, elapsed) = terminate_and_time(fixture);
    assert_ended_by_the_deadline(&ended, elapsed, budget);
}

#[test]
fn a_program_that_continues_after_run_is_not_ended_by_the_deadline() {
    let fixture = Fixture::ready(&["continue-after-run"], &[("LASTCALL_BUDGET", "1s")]);
    let (ended, elapsed) = terminate_and_time(fixture);
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
    assert_eq!(
        ended.count("alive after the budget"),
        1,
        "{:?}",
        ended.stdout
    );
    assert!(elapsed > Duration::from_secs(1), "it lived past the budget");
}

#[test]
fn with_two_controllers_the_first_deadline_to_pass_ends_the_process() {
    // The main controller waits 3 s for its job; the second one's 1 s budget passes first.
    let fixture = Fixture::ready(
        &["work=3000", "second-controller=1000"],
        &[("LASTCALL_BUDGET", "10s")],
    );
    let (ended, elapsed) = terminate_and_time(fixture);
    assert_ended_by_the_deadline(&ended, elapsed, Duration::from_secs(1));
    assert!(
        ended.stderr.contains("the 1000ms budget ran out")
            && ended.stderr.contains("second-controller-job"),
        "{}",
        ended.stderr
    );
}
