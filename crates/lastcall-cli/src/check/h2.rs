//! A minimal HTTP/2 cleartext client (prior knowledge): one GET on stream 1, then every frame
//! the server sends until the connection ends, GOAWAY included. Raw frames, so that the checker
//! sees exactly what a client would: whether a GOAWAY came before the close.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use super::client::{self, Outcome};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

/// A connection whose server answered the preface with its SETTINGS, with a GET in flight on
/// stream 1.
pub(crate) struct Connection {
    stream: TcpStream,
    pending: Vec<u8>,
}

/// What the client saw, from the request to the end of the connection.
#[derive(Debug, Default)]
pub(crate) struct Ending {
    /// The response's status, when its headers came and could be read.
    pub(crate) status: Option<u16>,
    pub(crate) body_bytes: usize,
    /// Stream 1 ended with END_STREAM.
    pub(crate) complete: bool,
    pub(crate) completed_at: Option<Instant>,
    /// RST_STREAM's error code on stream 1.
    pub(crate) reset: Option<u32>,
    /// The first GOAWAY: when, its last stream id, its error code.
    pub(crate) goaway: Option<(Instant, u32, u32)>,
    /// How the TCP connection ended: `None` for a clean close.
    pub(crate) tcp: Option<Outcome>,
}

/// Opens a connection and sends `GET path` on stream 1; `Err` says why the server does not
/// speak HTTP/2 cleartext with prior knowledge.
pub(crate) async fn open(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> Result<Connection, String> {
    let mut stream = client::connect(addr).await.map_err(|o| o.describe())?;
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", path),
        (":authority", &addr.to_string()),
        ("user-agent", "lastcall-check"),
    ] {
        // A literal header field without indexing, new name, no Huffman coding.
        block.push(0x00);
        integer(&mut block, name.len(), 7, 0);
        block.extend_from_slice(name.as_bytes());
        integer(&mut block, value.len(), 7, 0);
        block.extend_from_slice(value.as_bytes());
    }
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &block));
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut connection = Connection {
        stream,
        pending: Vec::new(),
    };
    // The server's first frame must be its SETTINGS.
    let deadline = Instant::now() + limit;
    let mut chunk = [0u8; 4096];
    while connection.pending.len() < 9 {
        match timeout_at(deadline, connection.stream.read(&mut chunk)).await {
            Ok(Ok(0)) => return Err("it closed the connection at the preface".into()),
            Ok(Ok(n)) => connection.pending.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no answer to the preface in time".into()),
        }
    }
    if connection.pending[3] != SETTINGS {
        let text = String::from_utf8_lossy(&connection.pending);
        let first = text
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(40)
            .collect::<String>();
        return Err(format!("it answered {first:?}, not a SETTINGS frame"));
    }
    Ok(connection)
}

impl Connection {
    /// Reads frames until the connection ends (acknowledging SETTINGS and PING as a client
    /// must), or `limit` passes.
    pub(crate) async fn until_end(mut self, limit: Duration) -> Ending {
        let deadline = Instant::now() + limit;
        let mut ending = Ending::default();
        let mut chunk = [0u8; 16384];
        loop {
            while let Some((kind, flags, id, payload, used)) = parse(&self.pending) {
                self.pending.drain(..used);
                let mut reply = Vec::new();
                match kind {
                    SETTINGS if flags & ACK == 0 => reply = frame(SETTINGS, ACK, 0, &[]),
                    PING if flags & ACK == 0 => reply = frame(PING, ACK, 0, &payload),
                    HEADERS if id == 1 => {
                        ending.status = ending.status.or_else(|| status(&payload, flags));
                        if flags & END_STREAM != 0 {
                            ending.complete = true;
                            ending.completed_at = Some(Instant::now());
                        }
                    }
                    DATA if id == 1 => {
                        ending.body_bytes += payload.len();
                        if flags & END_STREAM != 0 {
                            ending.complete = true;
                            ending.completed_at = Some(Instant::now());
                        }
                    }
                    RST_STREAM if id == 1 => ending.reset = Some(word(&payload, 0)),
                    GOAWAY if ending.goaway.is_none() => {
                        ending.goaway = Some((
                            Instant::now(),
                            word(&payload, 0) & 0x7fff_ffff,
                            word(&payload, 4),
                        ));
                    }
                    _ => {}
                }
                if !reply.is_empty() {
                    let _ = self.stream.write_all(&reply).await;
                }
            }
            match timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) => return ending,
                Ok(Ok(n)) => self.pending.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => {
                    ending.tcp = Some(match e.kind() {
                        std::io::ErrorKind::ConnectionReset => Outcome::Reset,
                        _ => Outcome::Failed(e.to_string()),
                    });
                    return ending;
                }
                Err(_) => {
                    ending.tcp = Some(Outcome::Timeout);
                    return ending;
                }
            }
        }
    }
}

/// A frame: 9 bytes of header, then the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// One whole frame at the start of `buf`: type, flags, stream id, payload, bytes used.
fn parse(buf: &[u8]) -> Option<(u8, u8, u32, Vec<u8>, usize)> {
    let head = buf.get(..9)?;
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let id = word(head, 5) & 0x7fff_ffff;
    let payload = buf.get(9..9 + len)?.to_vec();
    Some((head[3], head[4], id, payload, 9 + len))
}

fn word(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

/// An HPACK integer with an `prefix`-bit prefix, after `high` bits.
fn integer(out: &mut Vec<u8>, value: usize, prefix: u32, high: u8) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// The `:status` of a response header block, where it comes first, as servers send it: from
/// the static table (`0x88` is 200) or as a literal with the static name and a plain value.
fn status(block: &[u8], flags: u8) -> Option<u16> {
    // A PADDED or PRIORITY header block: skip what precedes the fragment.
    let mut at = 0;
    let mut block = block;
    if flags & 0x8 != 0 {
        let pad = usize::from(*block.first()?);
        at += 1;
        block = block.get(..block.len().checked_sub(pad)?)?;
    }
    if flags & 0x20 != 0 {
        at += 5;
    }
    let first = *block.get(at)?;
    let indexed = [
        (0x88, 200),
        (0x89, 204),
        (0x8a, 206),
        (0x8b, 304),
        (0x8c, 400),
        (0x8d, 404),
        (0x8e, 500),
    ];
    if let Some((_, code)) = indexed.iter().find(|(byte, _)| *byte == first) {
        return Some(*code);
    }
    // Literal with incremental indexing (0x48), without (0x08) or never indexed (0x18), name 8.
    if matches!(first, 0x48 | 0x08 | 0x18) {
        let len = *block.get(at + 1)?;
        if len & 0x80 == 0 {
            let value = block.get(at + 2..at + 2 + usize::from(len))?;
            return std::str::from_utf8(value).ok()?.parse().ok();
        }
    }
    None
}
