//! A short rolling restart behind a real HAProxy: no client may see a failure.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::support::{self, PATIENCE};

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_demo(port: u16, db: &std::path::Path) -> Killed {
    let child = support::lastcall()
        .arg("demo")
        .env("PORT", port.to_string())
        .env("LASTCALL_DEMO_DB", db)
        .env("LASTCALL_DRAIN_DELAY", "1s")
        .env("LASTCALL_BUDGET", "10s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + PATIENCE;
    while get_once(port, "/health/ready") != Some(200) {
        assert!(
            Instant::now() < until,
            "the demo on port {port} never became ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Killed(child)
}

/// One request on a new connection; the status, if a whole response came back.
fn get_once(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.get(9..12)?.parse().ok()
}

/// Reads one response with a Content-Length; the status, or `None` on any failure.
fn read_response(stream: &mut TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut byte).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&byte[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))?
        .trim()
        .parse()
        .ok()?;
    while buf.len() < head_end + length {
        let n = stream.read(&mut byte).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&byte[..n]);
    }
    head.get(9..12)?.parse().ok()
}

#[test]
fn a_rolling_restart_behind_haproxy_fails_no_request() {
    if Command::new("haproxy").arg("-v").output().is_err() {
        assert!(
            std::env::var("LCTEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "haproxy is required (apt-get install haproxy)"
        );
        eprintln!("skipping: haproxy is missing");
        return;
    }
    let dir = std::env::temp_dir().join(format!("lastcall-rolling-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b, front) = (free_port(), free_port(), free_port());
    let mut instance_a = start_demo(a, &dir.join("a.sqlite3"));
    let _instance_b = start_demo(b, &dir.join("b.sqlite3"));
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 1024\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  retries 3\n  option redispatch\n  option http-keep-alive\nbackend servers\n  balance roundrobin\n  option httpchk GET /health/ready\n  default-server inter 100ms fall 1 rise 1\n  server a 127.0.0.1:{a} check\n  server b 127.0.0.1:{b} check\nfrontend front\n  bind 127.0.0.1:{front}\n  default_backend servers\n"
        ),
    )
    .unwrap();
    let _haproxy = Killed(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + PATIENCE;
    while get_once(front, "/orders/1") != Some(200) {
        assert!(Instant::now() < until, "haproxy never served");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Four keep-alive clients, bounded in count and time, until the restart is over.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut stream: Option<TcpStream> = None;
                for _ in 0..200_000 {
                    if stop.load(Ordering::Relaxed) || started.elapsed() > PATIENCE {
                        break;
                    }
                    let conn = match stream.as_mut() {
                        Some(conn) => conn,
                        None => {
                            let conn = TcpStream::connect((Ipv4Addr::LOCALHOST, front)).unwrap();
                            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                            stream.insert(conn)
                        }
                    };
                    let sent = conn
                        .write_all(b"GET /orders/1 HTTP/1.1\r\nhost: t\r\n\r\n")
                        .is_ok();
                    match sent.then(|| read_response(conn)).flatten() {
                        Some(200) => served.fetch_add(1, Ordering::Relaxed),
                        _ => {
                            stream = None;
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(500));
    let before = served.load(Ordering::Relaxed);
    kill(Pid::from_raw(instance_a.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = instance_a.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "instance A's shutdown was clean");
    let _instance_a = start_demo(a, &dir.join("a.sqlite3"));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (served, failed) = (
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    assert!(
        served > before,
        "traffic flowed during the restart ({before} then {served})"
    );
    assert_eq!(failed, 0, "{failed} of {} requests failed", served + failed);
}
