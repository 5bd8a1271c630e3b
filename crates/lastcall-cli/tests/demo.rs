use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Bounds a hang; not a measurement.
const PATIENCE: Duration = Duration::from_secs(30);

struct Demo {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
    _db: TempDb,
}

/// A database path of the test's own, removed afterwards.
struct TempDb(std::path::PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

impl Demo {
    fn start(name: &str, env: &[(&str, &str)]) -> Demo {
        let db = TempDb(std::env::temp_dir().join(format!(
            "lastcall-test-{name}-{}.sqlite3",
            std::process::id()
        )));
        let mut command = Command::new(env!("CARGO_BIN_EXE_lastcall"));
        command
            .arg("demo")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars() {
            if key.starts_with("LASTCALL_") && key != "LASTCALL_REQUIRE_SERVICES" {
                command.env_remove(key);
            }
        }
        command
            .env("PORT", "0")
            .env("LASTCALL_DEMO_DB", &db.0)
            .envs(env.iter().copied());
        let mut child = command.spawn().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("lastcall demo listening on http://")
            .unwrap_or_else(|| {
                panic!(
                    "no address line ({line:?}); stderr:\n{}",
                    stderr.lock().unwrap()
                )
            })
            .to_owned();
        Demo {
            child,
            addr,
            stderr,
            _db: db,
        }
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(&self.addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream
    }

    fn wait(mut self) -> (ExitStatus, String) {
        let until = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                panic!(
                    "the demo did not exit; stderr:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        std::thread::sleep(Duration::from_millis(100));
        let stderr = self.stderr.lock().unwrap().clone();
        (status, stderr)
    }
}

fn send(stream: &mut TcpStream, path: &str) {
    write!(stream, "GET {path} HTTP/1.1\r\nhost: demo\r\n\r\n").unwrap();
}

/// Reads until the server closes the connection; a reset fails the test.
fn read_to_close(stream: &mut TcpStream) -> String {
    let mut text = Vec::new();
    stream
        .read_to_end(&mut text)
        .expect("closed cleanly, not reset");
    String::from_utf8_lossy(&text).into_owned()
}

fn get(demo: &Demo, path: &str) -> String {
    let mut stream = demo.connect();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    read_to_close(&mut stream)
}

#[test]
fn a_slow_request_in_flight_at_sigterm_completes_and_the_demo_exits_0() {
    let demo = Demo::start("slow", &[("LASTCALL_DRAIN_DELAY", "300ms")]);
    let ready = get(&demo, "/health/ready");
    assert!(
        ready.starts_with("HTTP/1.1 200"),
        "{ready:?} {}",
        demo.stderr.lock().unwrap()
    );
    let order = get(&demo, "/orders/7");
    assert!(
        order.starts_with("HTTP/1.1 200") && order.contains(r#""id":7"#),
        "{order}"
    );

    let mut slow = demo.connect();
    send(&mut slow, "/reports/slow?ms=800");
    demo.signal(Signal::SIGTERM);
    // The signal is handled asynchronously: from outside, readiness is what says it arrived.
    let until = Instant::now() + PATIENCE;
    let ready = loop {
        let ready = get(&demo, "/health/ready");
        if ready.starts_with("HTTP/1.1 503") || Instant::now() > until {
            break ready;
        }
    };
    // During the drain delay: readiness says 503, other requests are still served.
    assert!(
        ready.starts_with("HTTP/1.1 503") && ready.ends_with(r#"{"ready":false}"#),
        "{ready}"
    );
    assert!(get(&demo, "/orders/8").starts_with("HTTP/1.1 200"));
    demo.signal(Signal::SIGTERM);

    let answer = read_to_close(&mut slow);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(
        answer.ends_with(r#"{"report":"ready","ms":800}"#),
        "{answer}"
    );
    let (status, stderr) = demo.wait();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("shutdown finished: clean shutdown"),
        "{stderr}"
    );
    assert!(
        stderr.contains("shutdown already in progress"),
        "the second SIGTERM is logged: {stderr}"
    );
}

#[test]
fn a_request_that_never_completes_is_cut_and_the_demo_exits_3() {
    let demo = Demo::start(
        "cut",
        &[
            ("LASTCALL_BUDGET", "3s"),
            ("LASTCALL_DRAIN_DELAY", "300ms"),
            ("LASTCALL_FLUSH_TIMEOUT", "200ms"),
            ("LASTCALL_CLOSE_TIMEOUT", "500ms"),
        ],
    );
    let mut stuck = demo.connect();
    send(&mut stuck, "/reports/slow?ms=600000");
    // Even if the signal overtakes the request, the request is read during the drain delay.
    demo.signal(Signal::SIGTERM);
    let (status, stderr) = demo.wait();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("GET /reports/slow?ms=600000"),
        "the cut request is named: {stderr}"
    );
}

#[test]
fn an_sse_client_is_ended_with_a_final_event_and_the_demo_exits_0() {
    let demo = Demo::start("sse", &[]);
    let mut events = demo.connect();
    send(&mut events, "/events");
    let mut first = [0u8; 256];
    let n = events.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).contains("text/event-stream"));
    demo.signal(Signal::SIGTERM);
    let rest = read_to_close(&mut events);
    assert!(rest.contains("event: shutdown"), "{rest}");
    assert!(rest.ends_with("0\r\n\r\n"), "a clean end: {rest:?}");
    let (status, stderr) = demo.wait();
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn bad_configuration_stops_the_demo_at_startup_with_78() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lastcall"))
        .args(["demo", "--port", "0"])
        .env("LASTCALL_BUDGET", "soon")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("LASTCALL_BUDGET=\"soon\" is not a duration"),
        "{stderr}"
    );
}
