//! A minimal HTTP/1.1 client that tells apart every way a response can end: complete, refused,
//! reset, truncated, or closed before any byte of the answer.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// How an exchange ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A whole response.
    Complete {
        status: u16,
        /// The response carried `Connection: close`.
        close: bool,
        body: Vec<u8>,
    },
    /// The connection was refused: nothing listens.
    Refused,
    /// The connection was reset.
    Reset,
    /// The response started but was cut before its end.
    Truncated,
    /// The server closed the connection cleanly before sending any byte of a response.
    ClosedBeforeResponse,
    /// Nothing happened in time.
    Timeout,
    /// Another I/O error.
    Failed(String),
}

impl Outcome {
    pub(crate) fn is_ok(&self) -> bool {
        matches!(self, Outcome::Complete { status: 200, .. })
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Outcome::Complete { status, close, .. } => {
                format!(
                    "{status}{}",
                    if *close { " + Connection: close" } else { "" }
                )
            }
            Outcome::Refused => "connection refused".into(),
            Outcome::Reset => "connection reset".into(),
            Outcome::Truncated => "truncated response".into(),
            Outcome::ClosedBeforeResponse => "closed before a response".into(),
            Outcome::Timeout => "no answer in time".into(),
            Outcome::Failed(e) => e.clone(),
        }
    }
}

/// Connects, classifying a refusal.
pub(crate) async fn connect(addr: SocketAddr) -> Result<TcpStream, Outcome> {
    match timeout(Duration::from_secs(5), TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => Err(Outcome::Refused),
        Ok(Err(e)) => Err(classify(&e)),
        Err(_) => Err(Outcome::Timeout),
    }
}

/// Sends a keep-alive GET on `stream`, with the address it is connected to as `Host`, as a
/// browser would (a server bound to host names may answer an unknown one differently).
pub(crate) async fn send(stream: &mut TcpStream, path: &str) -> Result<(), Outcome> {
    send_raw(stream, request_head(stream, path).as_bytes()).await
}

/// The head of a GET for `path` on `stream`.
pub(crate) fn request_head(stream: &TcpStream, path: &str) -> String {
    let host = stream
        .peer_addr()
        .map_or_else(|_| "localhost".to_owned(), |a| a.to_string());
    format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: lastcall-check\r\n\r\n")
}

/// Writes `bytes` on `stream`.
pub(crate) async fn send_raw(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), Outcome> {
    stream.write_all(bytes).await.map_err(|e| classify(&e))
}

/// Reads one response from `stream`, within `limit`.
pub(crate) async fn read(stream: &mut TcpStream, limit: Duration) -> Outcome {
    match timeout(limit, read_inner(stream)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Timeout,
    }
}

/// Sends a GET on a new connection and reads the answer.
/// One request of a load: on `kept` (a keep-alive connection, taken) or on a new connection,
/// answered within 5 s; the connection is kept for the next request when `reuse` is set and
/// the server left it open. Returns whether the request reused a connection, and how it went.
pub(crate) async fn exchange(
    addr: SocketAddr,
    path: &str,
    kept: &mut Option<TcpStream>,
    reuse: bool,
) -> (bool, Outcome) {
    let reused = kept.is_some();
    let mut stream = match kept.take() {
        Some(stream) => stream,
        None => match connect(addr).await {
            Ok(stream) => stream,
            Err(outcome) => return (reused, outcome),
        },
    };
    let outcome = match send(&mut stream, path).await {
        Ok(()) => read(&mut stream, Duration::from_secs(5)).await,
        Err(outcome) => outcome,
    };
    if reuse && matches!(outcome, Outcome::Complete { close: false, .. }) {
        *kept = Some(stream);
    }
    (reused, outcome)
}

pub(crate) async fn get(addr: SocketAddr, path: &str, limit: Duration) -> Outcome {
    let mut stream = match connect(addr).await {
        Ok(stream) => stream,
        Err(outcome) => return outcome,
    };
    if let Err(outcome) = send(&mut stream, path).await {
        return outcome;
    }
    read(&mut stream, limit).await
}

/// Reads until the server closes the connection: `Ok(bytes)` on a clean close, the outcome
/// otherwise.
pub(crate) async fn read_to_close(
    stream: &mut TcpStream,
    limit: Duration,
) -> Result<Vec<u8>, Outcome> {
    let deadline = Instant::now() + limit;
    let mut all = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => return Ok(all),
            Ok(Ok(n)) => all.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(classify(&e)),
            Err(_) => return Err(Outcome::Timeout),
        }
    }
}

async fn read_inner(stream: &mut TcpStream) -> Outcome {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) if buf.is_empty() => return Outcome::ClosedBeforeResponse,
            Ok(0) => return Outcome::Truncated,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return classify(&e),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
    };
    let close = header("connection").is_some_and(|v| v.contains("close"));
    let mut body = buf[head_end..].to_vec();
    let complete = |body: &[u8]| -> bool {
        if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.len() >= len
        } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            body.ends_with(b"0\r\n\r\n")
        } else {
            false
        }
    };
    let delimited = header("content-length").is_some() || header("transfer-encoding").is_some();
    while !complete(&body) {
        match stream.read(&mut chunk).await {
            // Without a length, the body ends with the connection.
            Ok(0) if !delimited => break,
            Ok(0) => return Outcome::Truncated,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) => return classify(&e),
        }
    }
    Outcome::Complete {
        status,
        close,
        body,
    }
}

fn classify(error: &std::io::Error) -> Outcome {
    match error.kind() {
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            Outcome::Reset
        }
        ErrorKind::ConnectionRefused => Outcome::Refused,
        _ => Outcome::Failed(error.to_string()),
    }
}
