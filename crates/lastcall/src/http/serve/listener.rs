//! What `serve` accepts connections from: TCP and Unix listeners ([`Listener`], sealed), and
//! [`listen`], which binds with the system's largest backlog.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

/// A source of connections for [`serve`](crate::http::serve): a [`tokio::net::TcpListener`], on Unix a
/// [`tokio::net::UnixListener`], or with the `tls` feature a `TlsListener`.
///
/// Needs the `http` feature.
///
/// Sealed: [`serve`](crate::http::serve) needs to know a socket's kind to close it without a reset.
pub trait Listener: sealed::Accept {}

impl Listener for TcpListener {}

#[cfg(unix)]
impl Listener for tokio::net::UnixListener {}

pub(super) mod sealed {
    use std::future::Future;
    use std::io;
    use std::time::Duration;

    use tokio::io::{AsyncRead, AsyncWrite};

    /// What [`serve`](crate::http::serve) needs of a listener and its sockets.
    #[allow(unreachable_pub)] // Sealed: nameable only through `Listener`.
    pub trait Accept: Send + 'static {
        /// An accepted connection before its handshake (TCP and Unix: the socket itself).
        type Accepted: Send + 'static;
        /// An accepted connection's stream, once its handshake is done.
        type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
        /// A peer's address, inserted into each request's extensions.
        type Addr: Clone + std::fmt::Debug + Send + Sync + 'static;
        /// The handshake of a connection that has one (TLS).
        type Handshake: Future<Output = io::Result<Self::Io>> + Send;

        /// Accepts one connection. Nothing is read here: a handshake runs in the
        /// connection's own task ([`Accept::handshake`]), so a slow client cannot stall
        /// accepting.
        fn accept_one(
            &self,
        ) -> impl Future<Output = io::Result<(Self::Accepted, Self::Addr)>> + Send;

        /// The listening address, for the logs.
        fn describe(&self) -> String;

        /// Prepares an accepted socket (no Nagle delay for TCP).
        fn prepare(accepted: &Self::Accepted);

        /// The stream to serve at once, or the handshake to complete first; called in the
        /// connection's task.
        fn handshake(accepted: Self::Accepted) -> Handshake<Self::Io, Self::Handshake>;

        /// Whether the client has sent bytes nobody read.
        fn has_unread(io: &Self::Io) -> bool;
    }

    /// What an accepted connection needs before it is served.
    #[allow(unreachable_pub)] // Sealed with `Accept`.
    #[derive(Debug)]
    pub enum Handshake<Io, F> {
        /// Nothing: the socket is the stream (TCP, Unix).
        Ready(Io),
        /// A handshake, which may take at most `timeout` (TLS).
        Start {
            /// Completes the handshake.
            handshake: F,
            /// The listener's handshake timeout.
            timeout: Duration,
        },
    }
}

impl sealed::Accept for TcpListener {
    type Accepted = TcpStream;
    type Io = TcpStream;
    type Addr = SocketAddr;
    type Handshake = std::future::Ready<io::Result<TcpStream>>;

    fn accept_one(&self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        self.accept()
    }

    fn describe(&self) -> String {
        match self.local_addr() {
            Ok(addr) => addr.to_string(),
            Err(_) => "a TCP listener".to_owned(),
        }
    }

    fn prepare(io: &TcpStream) {
        let _ = io.set_nodelay(true);
    }

    fn handshake(accepted: TcpStream) -> sealed::Handshake<TcpStream, Self::Handshake> {
        sealed::Handshake::Ready(accepted)
    }

    fn has_unread(io: &TcpStream) -> bool {
        peek_unread(socket2::SockRef::from(io))
    }
}

#[cfg(unix)]
impl sealed::Accept for tokio::net::UnixListener {
    type Accepted = tokio::net::UnixStream;
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;
    type Handshake = std::future::Ready<io::Result<tokio::net::UnixStream>>;

    fn accept_one(
        &self,
    ) -> impl Future<Output = io::Result<(tokio::net::UnixStream, tokio::net::unix::SocketAddr)>> + Send
    {
        self.accept()
    }

    fn describe(&self) -> String {
        match self.local_addr() {
            Ok(addr) => format!("{addr:?}"),
            Err(_) => "a Unix listener".to_owned(),
        }
    }

    fn prepare(_: &tokio::net::UnixStream) {}

    fn handshake(
        accepted: tokio::net::UnixStream,
    ) -> sealed::Handshake<tokio::net::UnixStream, Self::Handshake> {
        sealed::Handshake::Ready(accepted)
    }

    fn has_unread(io: &tokio::net::UnixStream) -> bool {
        peek_unread(socket2::SockRef::from(io))
    }
}

/// Binds a TCP listener on `addr` with the system's largest accept backlog, so a burst of
/// connections at the moment of a shutdown waits in the kernel's queue for [`serve`](crate::http::serve) to take
/// it rather than being dropped or reset.
///
/// Needs the `http` feature.
///
/// `tokio::net::TcpListener::bind` asks for a backlog of 1,024, and many servers 128; a
/// connection that finds the queue full has its handshake dropped, and retried a second
/// later, by which time the listener may be closed. On Linux the backlog is
/// `/proc/sys/net/core/somaxconn` (4,096 since Linux 5.4), elsewhere 1,024. `SO_REUSEADDR` is
/// set, as `TcpListener::bind` does, so a restarted service can bind at once.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// let listener = lastcall::http::listen(([127, 0, 0, 1], 3000).into())?;
/// # let _ = listener; Ok(()) }
/// ```
///
/// # Errors
///
/// If the socket cannot be created, bound (the address is in use, say) or listened on.
///
/// # Panics
///
/// Outside a tokio runtime with I/O enabled, as [`TcpListener::from_std`].
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(max_backlog())?;
    TcpListener::from_std(socket.into())
}

/// The system's largest accept backlog: Linux's `net.core.somaxconn`, else 1,024.
fn max_backlog() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1024)
}

/// Whether the client has sent bytes nobody read (a pipelined request, an unread body):
/// closing the socket now would answer them with a reset, which can destroy the response still
/// on its way to the client. A closed or failed socket has nothing unread.
pub(super) fn peek_unread(socket: socket2::SockRef<'_>) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    // A non-blocking peek: `WouldBlock` when nothing is there, `Ok(0)` after the client's FIN.
    matches!(socket.peek(&mut byte), Ok(n) if n > 0)
}
