//! A minimal WebSocket client: the upgrade, then the frames a server sends as it goes away.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use super::client::{self, Outcome};

/// The key of RFC 6455's example handshake, and the accept value it implies.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// An open WebSocket session, with the bytes that came after the handshake.
pub(crate) struct Session {
    stream: TcpStream,
    pending: Vec<u8>,
}

/// How a session ended, as the client saw it.
#[derive(Debug)]
pub(crate) struct Ending {
    /// The close frame's code (`Some(None)`: a close frame without a code), if one came.
    pub(crate) close: Option<Option<u16>>,
    pub(crate) close_at: Option<Instant>,
    /// How the TCP connection ended after that (or instead): `None` for a clean close.
    pub(crate) tcp: Option<Outcome>,
}

/// Opens a session on `path`; `Err` says why the server does not speak WebSocket there.
pub(crate) async fn open(addr: SocketAddr, path: &str, limit: Duration) -> Result<Session, String> {
    let mut stream = client::connect(addr).await.map_err(|o| o.describe())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nuser-agent: lastcall-check\r\nupgrade: websocket\r\n\
         connection: Upgrade\r\nsec-websocket-key: {KEY}\r\nsec-websocket-version: 13\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => return Err("closed before answering the upgrade".into()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no answer to the upgrade in time".into()),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status = head.lines().next().unwrap_or("").to_owned();
    if !status.starts_with("http/1.1 101") {
        return Err(format!("it answered {status:?}"));
    }
    if !head.contains(&ACCEPT.to_ascii_lowercase()) {
        return Err("101 without the right sec-websocket-accept".into());
    }
    Ok(Session {
        stream,
        pending: buf[end..].to_vec(),
    })
}

impl Session {
    /// Reads frames until the connection ends, answering a close frame with one of ours.
    pub(crate) async fn until_end(mut self, limit: Duration) -> Ending {
        let deadline = Instant::now() + limit;
        let mut ending = Ending {
            close: None,
            close_at: None,
            tcp: None,
        };
        let mut chunk = [0u8; 8192];
        loop {
            while let Some((opcode, payload, used)) = frame(&self.pending) {
                self.pending.drain(..used);
                if opcode == 0x8 {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    ending.close = Some(code);
                    ending.close_at = Some(Instant::now());
                    // Our close frame, masked as a client's must be, echoing the code.
                    let mut reply = vec![0x88, 0x80 | 2, 1, 2, 3, 4];
                    let code = code.unwrap_or(1000).to_be_bytes();
                    reply.extend_from_slice(&[code[0] ^ 1, code[1] ^ 2]);
                    let _ = self.stream.write_all(&reply).await;
                    ending.tcp = client::read_to_close(
                        &mut self.stream,
                        deadline.saturating_duration_since(Instant::now()),
                    )
                    .await
                    .err();
                    return ending;
                }
            }
            match timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) => {
                    ending.tcp = Some(Outcome::ClosedBeforeResponse);
                    return ending;
                }
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

/// One whole server frame at the start of `buf`: its opcode, payload and length in bytes.
fn frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (&first, &second) = (buf.first()?, buf.get(1)?);
    let masked = second & 0x80 != 0;
    let (len, mut at) = match second & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(bytes), 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        let mask: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(mask)
    } else {
        None
    };
    let len = usize::try_from(len).ok()?;
    let mut payload = buf.get(at..at.checked_add(len)?)?.to_vec();
    if let Some(mask) = mask {
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i % 4];
        }
    }
    Some((first & 0x0f, payload, at + len))
}
