//! `http::serve` in a real process (the `serve_fixture` example), driven with real signals:
//! slow and half-open clients at the moment of a shutdown.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use lastcall::report::Report;
use nix::sys::signal::Signal;

use super::support::{self, Child, Stderr, PATIENCE};

/// The most a head half read at stop-accepting may hold the shutdown (`serve`'s grace).
pub(super) const GRACE: Duration = Duration::from_secs(1);

pub(super) struct Served {
    child: Child,
    pub(super) addr: String,
}

pub(super) struct Exited {
    pub(super) status: ExitStatus,
    /// When the process was seen gone.
    pub(super) at: Instant,
    pub(super) report: Report,
}

impl Served {
    /// Starts `serve_fixture` and waits until it listens.
    pub(super) fn start(args: &[&str], env: &[(&str, &str)]) -> Served {
        let mut command = support::command(&support::example("serve_fixture"), args, env);
        let child = Child::spawn(&mut command, Stderr::Read);
        let line = child.next_line(Instant::now() + PATIENCE, "listening ADDR");
        let addr = line
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("expected `listening ADDR`, got {line:?}"))
            .to_owned();
        Served { child, addr }
    }

    pub(super) fn connect(&self) -> TcpStream {
        TcpStream::connect(&self.addr).unwrap()
    }

    pub(super) fn signal(&self, signal: Signal) {
        self.child.signal(signal);
    }

    pub(super) fn wait(mut self) -> Exited {
        let status = self.child.wait();
        let at = Instant::now();
        let (stdout, stderr) = self.child.rest();
        let report = support::report_in(&stdout)
            .unwrap_or_else(|| panic!("no report; stdout {stdout:?}; stderr:\n{stderr}"));
        Exited { status, at, report }
    }
}

/// Reads until the server closes; `Ok` for a FIN, `Err` for a reset.
fn read_to_close(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut all = Vec::new();
    stream.read_to_end(&mut all)?;
    Ok(all)
}

#[test]
fn a_half_sent_request_head_does_not_hold_the_shutdown() {
    // The default header-read timeout (10 s) is longer than the whole budget.
    let served = Served::start(
        &[],
        &[("LASTCALL_BUDGET", "5s"), ("LASTCALL_DRAIN_DELAY", "500ms")],
    );
    let mut half = served.connect();
    half.write_all(b"GET /hello HTTP/1.1\r\nhost: te").unwrap();
    let signalled = Instant::now();
    // The drain delay gives the server time to read those bytes before it stops accepting.
    served.signal(Signal::SIGTERM);
    let closed = read_to_close(&mut half);
    let exited = served.wait();
    assert_eq!(exited.status.code(), Some(0), "{}", exited.report);
    assert!(
        exited.report.work_at_deadline.is_none(),
        "{}",
        exited.report
    );
    assert!(
        closed.as_ref().is_ok_and(|rest| rest.is_empty()),
        "closed with FIN and no answer: {closed:?}"
    );
    let took = exited.at - signalled;
    assert!(
        took < Duration::from_millis(500) + GRACE + Duration::from_secs(1),
        "exited {took:?} after the signal"
    );
    // From the report, written before the exit (the log line may still be in the pipe).
    assert_eq!(exited.report.closed_without_request, 1, "{}", exited.report);
}

/// A slowloris client (a head trickling in) at SIGTERM is counted in the report, JSON and
/// summary, as a connection closed without a request, and the exit stays 0: no accepted work
/// was cut. A keep-alive connection that was served and sits idle is not counted.
#[test]
fn a_slowloris_client_at_sigterm_is_reported_as_closed_without_a_request() {
    let served = Served::start(
        &[],
        &[("LASTCALL_BUDGET", "5s"), ("LASTCALL_DRAIN_DELAY", "300ms")],
    );
    let mut kept = served.connect();
    kept.write_all(b"GET /hello HTTP/1.1\r\nhost: test\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 17];
    kept.read_exact(&mut answer).unwrap();
    assert_eq!(
        &answer[..],
        b"HTTP/1.1 200 OK\r\n",
        "the keep-alive connection was served"
    );
    let mut slow = served.connect();
    slow.write_all(b"GET /hello HTTP/1.1\r\nho").unwrap();
    served.signal(Signal::SIGTERM);
    // Keeps trickling, as slowloris does, until the server closes the connection.
    let trickled = std::thread::spawn(move || {
        let until = Instant::now() + PATIENCE;
        while Instant::now() < until && slow.write_all(b"s").is_ok() {
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let exited = served.wait();
    trickled.join().unwrap();
    assert_eq!(exited.status.code(), Some(0), "{}", exited.report);
    assert!(
        exited.report.work_at_deadline.is_none(),
        "{}",
        exited.report
    );
    assert_eq!(exited.report.closed_without_request, 1, "{}", exited.report);
    assert!(
        exited
            .report
            .to_json()
            .contains("\"closed_without_request\":1"),
        "{}",
        exited.report.to_json()
    );
    assert!(
        exited
            .report
            .to_string()
            .contains("connections closed without a request: 1"),
        "{}",
        exited.report
    );
}

/// Connections that send one byte of a request head every 100 ms until the server closes
/// them, on one non-blocking loop.
struct Trickle {
    streams: Vec<Option<TcpStream>>,
    head: &'static [u8],
    sent: usize,
    fins: usize,
    resets: usize,
}

impl Trickle {
    fn open(served: &Served, count: usize) -> Trickle {
        let streams = (0..count)
            .map(|_| {
                let stream = served.connect();
                stream.set_nonblocking(true).unwrap();
                Some(stream)
            })
            .collect();
        Trickle {
            streams,
            head: b"GET /hello HTTP/1.1\r\nhost: test\r\nx-slow: ",
            sent: 0,
            fins: 0,
            resets: 0,
        }
    }

    /// One byte on every open connection; notes the ones the server closed.
    fn tick(&mut self) {
        let byte = self.head.get(self.sent).copied().unwrap_or(b'a');
        self.sent += 1;
        for slot in &mut self.streams {
            let Some(stream) = slot else { continue };
            let mut probe = [0u8; 64];
            let closed = match stream.read(&mut probe) {
                Ok(0) => Some(true),
                Ok(_) => panic!("no answer is due to an incomplete head"),
                Err(e) if e.kind() == ErrorKind::WouldBlock => None,
                Err(_) => Some(false),
            };
            let closed = closed.or_else(|| match stream.write(&[byte]) {
                Ok(_) => None,
                Err(e) if e.kind() == ErrorKind::WouldBlock => None,
                Err(_) => Some(false),
            });
            match closed {
                Some(true) => self.fins += 1,
                Some(false) => self.resets += 1,
                None => continue,
            }
            *slot = None;
        }
    }

    fn open_count(&self) -> usize {
        self.streams.iter().filter(|s| s.is_some()).count()
    }
}

#[test]
fn three_hundred_clients_trickling_request_heads_do_not_hold_the_exit() {
    let served = Served::start(
        &[],
        &[("LASTCALL_BUDGET", "5s"), ("LASTCALL_DRAIN_DELAY", "0s")],
    );
    // One real request, in flight at the signal.
    let mut real = served.connect();
    real.write_all(b"GET /slow?ms=700 HTTP/1.1\r\nhost: test\r\n\r\n")
        .unwrap();
    let mut trickle = Trickle::open(&served, 300);
    // Every connection has its head started, several bytes in.
    for _ in 0..3 {
        trickle.tick();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(trickle.open_count(), 300);
    served.signal(Signal::SIGTERM);
    let answered = std::thread::spawn(move || {
        let answer = read_to_close(&mut real).expect("the real request is answered, no reset");
        (
            Instant::now(),
            String::from_utf8_lossy(&answer).into_owned(),
        )
    });
    let until = Instant::now() + PATIENCE;
    while trickle.open_count() > 0 && Instant::now() < until {
        trickle.tick();
        std::thread::sleep(Duration::from_millis(100));
    }
    let exited = served.wait();
    let (answered_at, answer) = answered.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("done"), "{answer}");
    assert_eq!(exited.status.code(), Some(0), "{}", exited.report);
    assert!(
        exited.report.work_at_deadline.is_none(),
        "{}",
        exited.report
    );
    let after = exited.at.saturating_duration_since(answered_at);
    println!(
        "300 trickling clients: exit {} ms after the last real response; {} closed with FIN, {} reset",
        after.as_millis(),
        trickle.fins,
        trickle.resets
    );
    assert_eq!(trickle.open_count(), 0, "every trickling client was closed");
    assert!(
        // Generous: about 0.6 s here in a debug build; the grace itself is measured in
        // `bench/slowloris.py`.
        after < GRACE + Duration::from_millis(1500),
        "exited {after:?} after the last real response"
    );
    // From the report, written before the exit (the log line may still be in the pipe).
    assert_eq!(
        exited.report.closed_without_request, 300,
        "{}",
        exited.report
    );
}
