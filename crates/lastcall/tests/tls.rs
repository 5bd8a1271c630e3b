//! `http::serve` over TLS (`TlsListener`, feature `tls`) in a real process (`serve_fixture
//! tls=DIR`), with a real rustls client and a self-signed certificate made for each test.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lastcall::error::TlsConfigError;
use lastcall::http::rustls::pki_types::{CertificateDer, ServerName};
use lastcall::http::rustls::{self, ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use lastcall::http::TlsListener;
use nix::sys::signal::Signal;

use super::serve::Served;
use super::support::PATIENCE;

/// A directory with a fresh self-signed certificate for `localhost` (`cert.pem`, `key.pem`),
/// removed when dropped.
struct Certs {
    dir: PathBuf,
    cert: CertificateDer<'static>,
}

impl Certs {
    fn new() -> Certs {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lastcall-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(dir.join("cert.pem"), made.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), made.signing_key.serialize_pem()).unwrap();
        Certs {
            dir,
            cert: made.cert.der().clone(),
        }
    }

    fn arg(&self) -> String {
        format!("tls={}", self.dir.display())
    }

    /// A client configuration that trusts this certificate and offers `alpn`.
    fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection to the fixture, its handshake done.
fn connect(served: &Served, config: Arc<ClientConfig>) -> Tls {
    let tcp = served.connect();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = StreamOwned::new(ClientConnection::new(config, name).unwrap(), tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    tls
}

/// Reads one HTTP/1.1 response with a `content-length`: its head and its body.
fn read_response(tls: &mut Tls) -> (String, String) {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while !bytes.ends_with(b"\r\n\r\n") {
        assert_eq!(tls.read(&mut byte).unwrap(), 1, "closed inside a head");
        bytes.push(byte[0]);
    }
    let head = String::from_utf8(bytes).unwrap().to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("a content-length")
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; length];
    tls.read_exact(&mut body).unwrap();
    (head, String::from_utf8(body).unwrap())
}

/// How the server ended a TLS connection, read to its end.
#[derive(Debug, PartialEq)]
enum End {
    /// `close_notify`, then FIN: what a clean TLS close is.
    CloseNotify,
    /// FIN without `close_notify`: a client cannot tell it from a truncation.
    Truncated,
    Other(String),
}

fn read_to_end(tls: &mut Tls) -> (Vec<u8>, End) {
    let mut rest = Vec::new();
    let end = match tls.read_to_end(&mut rest) {
        Ok(_) => End::CloseNotify,
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => End::Truncated,
        Err(e) => End::Other(e.to_string()),
    };
    (rest, end)
}

#[test]
fn a_request_over_tls_is_served_with_its_peer_address() {
    let certs = Certs::new();
    let served = Served::start(&[&certs.arg()], &[("LASTCALL_DRAIN_DELAY", "0s")]);
    let mut tls = connect(&served, certs.client(&[b"http/1.1"]));
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let local = tls.sock.local_addr().unwrap();
    tls.write_all(b"GET /peer HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut tls);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(
        body,
        local.to_string(),
        "ConnectInfo is the client's address"
    );
    served.signal(Signal::SIGTERM);
    let exited = served.wait();
    assert_eq!(exited.status.code(), Some(0), "{}", exited.report);
}

#[test]
fn an_idle_keep_alive_connection_over_tls_closes_with_close_notify_at_sigterm() {
    let certs = Certs::new();
    let served = Served::start(&[&certs.arg()], &[("LASTCALL_DRAIN_DELAY", "0s")]);
    let mut tls = connect(&served, certs.client(&[]));
    tls.write_all(b"GET /hello HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut tls);
    assert!(!head.contains("connection: close"), "{head}");
    assert_eq!(body, "hello");
    // Idle now, kept alive.
    served.signal(Signal::SIGTERM);
    let (rest, end) = read_to_end(&mut tls);
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert_eq!(end, End::CloseNotify);
    let exited = served.wait();
    assert_eq!(exited.status.code(), Some(0), "{}", exited.report);
}

#[test]
fn an_http1_request_in_flight_over_tls_completes_then_closes_with_close_notify() {
    let certs = Certs::new();
    let served = Served::start(
        &[&certs.arg()],
        &[
            ("LASTCALL_BUDGET", "10s"),
            ("LASTCALL_DRAIN_DELAY", "500ms"),
        ],
    );
    let mut tls = connect(&served, certs.client(&[b"http/1.1"]));
    tls.write_all(b"GET /slow?ms=1500 HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .unwrap();
    // The drain delay lets the server read the request before it stops accepting.
    served.signal(Signal::SIGTERM);
    let (head, body) = read_response(&mut tls);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, "done");
    let (rest, end) = read_to_end(&mut tls);
    assert!(rest.is_empty());
    assert_eq!(end, End::CloseNotify);
    let exited = served.wait();
    assert_eq!(exited.status.code(), Some(0), "{}", exited.report);
    assert!(
        exited.report.work_at_deadline.is_none(),
        "{}",
        exited.report
    );
}

#[test]
fn http2_over_tls_gets_goaway_at_sigterm_and_finishes_its_stream() {
    let certs = Certs::new();
    let served = Served::start(
        &[&certs.arg()],
        &[
            ("LASTCALL_BUDGET", "10s"),
            ("LASTCALL_DRAIN_DELAY", "500ms"),
        ],
    );
    let mut tls = connect(&served, certs.client(&[b"h2", b"http/1.1"]));
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]), "ALPN chose h2");
    tls.write_all(&h2::request("/slow?ms=1500")).unwrap();
    served.signal(Signal::SIGTERM);
    let frames = h2::read_until_close(&mut tls);
    let goaway = frames.iter().position(|f| f.kind == h2::GOAWAY);
    let end_stream = frames
        .iter()
        .position(|f| f.stream == 1 && f.flags & h2::END_STREAM != 0 && f.kind == h2::DATA);
    let kinds: Vec<u8> = frames.iter().map(|f| f.kind).collect();
    let goaway = goaway.unwrap_or_else(|| panic!("no GOAWAY in {kinds:?}"));
    let end_stream = end_stream.unwrap_or_else(|| panic!("stream 1 not finished: {kinds:?}"));
    assert!(
        goaway < end_stream,
        "GOAWAY came at stop-accepting, before the response: {kinds:?}"
    );
    assert!(
        !frames.iter().any(|f| f.kind == h2::RST_STREAM),
        "{kinds:?}"
    );
    let exited = served.wait();
    assert_eq!(exited.status.code(), Some(0), "{}", exited.report);
}

#[test]
fn clients_that_never_finish_their_handshake_do_not_hold_the_shutdown_and_are_not_work_cut() {
    let certs = Certs::new();
    let served = Served::start(
        &[&certs.arg()],
        &[
            ("LASTCALL_BUDGET", "10s"),
            ("LASTCALL_DRAIN_DELAY", "300ms"),
        ],
    );
    // One opens TCP and never sends a ClientHello; one sends half of its ClientHello.
    let mut silent = served.connect();
    let mut stalled = served.connect();
    let name = ServerName::try_from("localhost").unwrap();
    let mut hello = Vec::new();
    ClientConnection::new(certs.client(&[b"h2"]), name)
        .unwrap()
        .write_tls(&mut hello)
        .unwrap();
    stalled.write_all(&hello[..hello.len() / 2]).unwrap();
    let signalled = Instant::now();
    served.signal(Signal::SIGTERM);
    for (which, stream) in [("silent", &mut silent), ("stalled", &mut stalled)] {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut rest = Vec::new();
        let closed = stream.read_to_end(&mut rest);
        assert!(
            closed.is_ok() && rest.is_empty(),
            "{which}: closed with FIN and nothing sent: {closed:?} {rest:?}"
        );
    }
    let exited = served.wait();
    assert_eq!(exited.status.code(), Some(0), "{}", exited.report);
    assert!(
        exited.report.work_at_deadline.is_none(),
        "{}",
        exited.report
    );
    let took = exited.at - signalled;
    assert!(
        // Not a measurement: held to the budget (10 s), it would take about that; the drain
        // delay and the grace are 1.3 s.
        took < Duration::from_secs(5),
        "exited {took:?} after the signal"
    );
    // From the report, which the process writes before it exits (the log line that says the
    // same may still be in the stderr pipe when the exit is seen).
    assert_eq!(exited.report.closed_without_request, 2, "{}", exited.report);
}

#[test]
fn a_silent_client_is_closed_at_the_handshake_timeout_and_the_server_still_serves() {
    let certs = Certs::new();
    let served = Served::start(
        &[&certs.arg(), "handshake_timeout=200ms"],
        &[("LASTCALL_DRAIN_DELAY", "0s")],
    );
    let mut silent = served.connect();
    silent.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut rest = Vec::new();
    let closed = silent.read_to_end(&mut rest);
    assert!(
        closed.is_ok() && rest.is_empty(),
        "closed with FIN before PATIENCE: {closed:?}"
    );
    let mut tls = connect(&served, certs.client(&[]));
    tls.write_all(b"GET /hello HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut tls).1, "hello");
    drop(tls);
    served.signal(Signal::SIGTERM);
    let exited = served.wait();
    assert_eq!(exited.status.code(), Some(0), "{}", exited.report);
}

#[tokio::test]
async fn bad_certificate_files_are_refused_at_startup_naming_the_file() {
    let certs = Certs::new();
    let other = Certs::new();
    let cert = certs.dir.join("cert.pem");
    let key = certs.dir.join("key.pem");
    let listen = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };

    let missing = certs.dir.join("missing.pem");
    let err = TlsListener::from_pem_files(listen().await, &missing, &key).unwrap_err();
    assert!(
        matches!(err, TlsConfigError::Certificates { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("missing.pem"), "{err}");

    // The key where the certificate should be.
    let err = TlsListener::from_pem_files(listen().await, &key, &key).unwrap_err();
    assert!(
        matches!(err, TlsConfigError::NoCertificate { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("key.pem holds no PEM certificate"),
        "{err}"
    );

    // The certificate where the key should be.
    let err = TlsListener::from_pem_files(listen().await, &cert, &cert).unwrap_err();
    assert!(matches!(err, TlsConfigError::Key { .. }), "{err:?}");

    // Another certificate's key.
    let err =
        TlsListener::from_pem_files(listen().await, &cert, other.dir.join("key.pem")).unwrap_err();
    assert!(matches!(err, TlsConfigError::Refused { .. }), "{err:?}");
    assert!(
        err.to_string().contains("check that the key is the one"),
        "{err}"
    );

    assert!(TlsListener::from_pem_files(listen().await, &cert, &key).is_ok());
}

/// Just enough HTTP/2 to see the frames a server sends: one GET on stream 1.
mod h2 {
    use std::io::Read;

    pub(super) const DATA: u8 = 0x0;
    const HEADERS: u8 = 0x1;
    pub(super) const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    pub(super) const GOAWAY: u8 = 0x7;
    pub(super) const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    const ACK: u8 = 0x1;

    pub(super) struct Frame {
        pub(super) kind: u8,
        pub(super) flags: u8,
        pub(super) stream: u32,
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// The preface, an empty SETTINGS and a GET of `path` on stream 1.
    pub(super) fn request(path: &str) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "GET"),
            (":scheme", "https"),
            (":path", path),
            (":authority", "localhost"),
        ] {
            // A literal header field without indexing, new name, no Huffman coding (short
            // names and values: one-byte lengths).
            block.push(0x00);
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        out.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &block));
        out
    }

    /// Every frame until the server closes (cleanly: `close_notify`), answering SETTINGS and
    /// PING as a client must.
    pub(super) fn read_until_close(tls: &mut super::Tls) -> Vec<Frame> {
        use std::io::Write;
        let mut frames = Vec::new();
        let mut pending = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            while pending.len() >= 9 {
                let len = (usize::from(pending[0]) << 16)
                    | (usize::from(pending[1]) << 8)
                    | usize::from(pending[2]);
                if pending.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (pending[3], pending[4]);
                let stream = u32::from_be_bytes([pending[5], pending[6], pending[7], pending[8]])
                    & !(1 << 31);
                let payload: Vec<u8> = pending[9..9 + len].to_vec();
                pending.drain(..9 + len);
                let reply = match kind {
                    SETTINGS if flags & ACK == 0 => frame(SETTINGS, ACK, 0, &[]),
                    PING if flags & ACK == 0 => frame(PING, ACK, 0, &payload),
                    _ => Vec::new(),
                };
                if !reply.is_empty() {
                    // The server may be closing; a failed write shows in the read below.
                    let _ = tls.write_all(&reply);
                }
                frames.push(Frame {
                    kind,
                    flags,
                    stream,
                });
            }
            match tls.read(&mut chunk) {
                Ok(0) => return frames,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("the connection did not end cleanly: {e}"),
            }
        }
    }
}
