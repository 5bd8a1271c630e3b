//! The polite close: once the shutdown has begun, a connection's socket that the client still
//! writes to sends FIN and reads until the client's FIN (bounded) instead of closing with
//! unread data, which the kernel would answer with a reset.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::connection::ConnState;
use super::Listener;
use crate::{Phase, Shutdown, WorkGuard};

/// The connection's socket, which closes politely once the shutdown has begun: when hyper is
/// done with it and the client has sent bytes nobody read, the socket sends FIN and reads
/// until the client's FIN (bounded) instead of closing with unread data, which the kernel
/// would answer with a reset. With nothing unread it closes at once.
pub(super) struct Lingering<L: Listener> {
    pub(super) stream: Option<L::Io>,
    // The connection counts as work until its socket is really closed.
    pub(super) guard: Option<WorkGuard>,
    pub(super) shutdown: Shutdown,
    pub(super) linger: Duration,
    /// Shared with the connection's loop and service.
    pub(super) state: Arc<ConnState>,
}

impl<L: Listener> Lingering<L> {
    fn touch(&self) {
        self.state
            .last_io
            .store(crate::clock::read(), Ordering::Relaxed);
    }

    /// Counts a write that moved bytes as activity, for the idle timeout.
    fn wrote(&self, polled: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.touch();
            }
        }
        polled
    }

    fn stream(&mut self) -> io::Result<&mut L::Io> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl<L: Listener> AsyncRead for Lingering<L> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = match self.stream() {
            Ok(stream) => Pin::new(stream).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        };
        if buf.filled().len() > before {
            self.state.read(crate::clock::read());
        }
        polled
    }
}

impl<L: Listener> AsyncWrite for Lingering<L> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = match self.stream() {
            Ok(stream) => Pin::new(stream).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        };
        self.wrote(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = match self.stream() {
            Ok(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        };
        self.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(stream) => Pin::new(stream).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(stream) => Pin::new(stream).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<L: Listener> Drop for Lingering<L> {
    fn drop(&mut self) {
        let phase = self.shutdown.phase();
        // Before the shutdown, and once the wait deadline has passed, close as usual.
        if phase < Phase::StopAccepting || phase >= Phase::FlushTelemetry {
            return;
        }
        let Some(stream) = self.stream.take() else {
            return;
        };
        // A connection closed with its head half read always closes politely, since its
        // client is still sending, but that close is not work: its guard goes now.
        let in_head = self.state.closed_in_head.load(Ordering::Relaxed);
        if in_head {
            self.guard = None;
        }
        // Nothing unread: closing now sends FIN, not a reset, so there is nothing to linger
        // for (nginx's heuristic too). Waiting for the client's FIN would only hold the
        // process for a round trip after its last response.
        if !in_head && !L::has_unread(&stream) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let guard = self.guard.take();
        let cut = self.shutdown.cut();
        let linger = self.linger;
        runtime.spawn(async move {
            let _guard = guard;
            let _ = tokio::time::timeout(linger, async {
                tokio::select! {
                    _ = cut => {}
                    _ = close_politely(stream) => {}
                }
            })
            .await;
        });
    }
}

/// Sends FIN, then reads and discards until the client's FIN.
async fn close_politely<T: AsyncRead + AsyncWrite + Unpin>(mut stream: T) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}
