//! [`ServeConfig`]: `serve`'s own timeouts and close behaviour, and hyper's HTTP/1 and HTTP/2
//! settings.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

/// HTTP/2's largest flow-control window (RFC 9113, 6.9.1).
const MAX_WINDOW: u32 = (1 << 31) - 1;

/// How [`serve`](crate::http::serve) treats connections: its own timeouts and close behaviour, and hyper's
/// HTTP/1 and HTTP/2 settings.
///
/// Needs the `http` feature.
///
/// hyper's settings that are not set here keep hyper's defaults, except HTTP/2's extended
/// CONNECT protocol (RFC 8441), which is on, as under `axum::serve`, so WebSockets work over
/// HTTP/2.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lastcall::http::ServeConfig;
///
/// let config = ServeConfig::default()
///     .header_read_timeout(Duration::from_secs(5))
///     .http1_max_headers(64)
///     .http2_max_concurrent_streams(100)
///     .http2_initial_stream_window_size(1 << 20);
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub(super) header_read_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) linger: Duration,
    pub(super) idle_close_delay: Duration,
    /// Whether each request carries axum's `ConnectInfo` of its peer.
    pub(super) connect_info: bool,
    http1: Http1Settings,
    http2: Http2Settings,
}

/// hyper's HTTP/1 settings; `None` keeps hyper's default.
#[derive(Debug, Clone, Default)]
struct Http1Settings {
    keep_alive: Option<bool>,
    max_headers: Option<usize>,
    max_buf_size: Option<usize>,
}

/// hyper's HTTP/2 settings; `None` keeps hyper's default.
#[derive(Debug, Clone)]
struct Http2Settings {
    max_concurrent_streams: Option<u32>,
    initial_stream_window_size: Option<u32>,
    initial_connection_window_size: Option<u32>,
    adaptive_window: Option<bool>,
    max_frame_size: Option<u32>,
    max_header_list_size: Option<u32>,
    keep_alive_interval: Option<Duration>,
    keep_alive_timeout: Option<Duration>,
    connect_protocol: bool,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            max_concurrent_streams: None,
            initial_stream_window_size: None,
            initial_connection_window_size: None,
            adaptive_window: None,
            max_frame_size: None,
            max_header_list_size: None,
            keep_alive_interval: None,
            keep_alive_timeout: None,
            connect_protocol: true,
        }
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            linger: Duration::from_secs(1),
            idle_close_delay: Duration::ZERO,
            connect_info: true,
            http1: Http1Settings::default(),
            http2: Http2Settings::default(),
        }
    }
}

impl ServeConfig {
    /// How long an HTTP/1 client may take to send a request's headers, from their first byte
    /// (default 10 s), so a client that trickles its headers cannot hold a connection open.
    /// Checked every half timeout: a late head is refused (the connection closed) between 1 and
    /// 1.5 timeouts after its first byte. A silent client is the idle timeout's.
    ///
    /// At stop-accepting, a head half read gets at most 1 s more (less when its timeout has
    /// less left), then its connection is closed without a request, which is not work cut.
    pub fn header_read_timeout(mut self, timeout: Duration) -> ServeConfig {
        self.header_read_timeout = timeout;
        self
    }

    /// How long a connection may go without reading or writing a byte before the server closes
    /// it (default 60 s): a silent client, or an idle keep-alive connection. A busy HTTP/1
    /// connection is not cut: its current response gets `Connection: close`.
    pub fn idle_timeout(mut self, timeout: Duration) -> ServeConfig {
        self.idle_timeout = timeout;
        self
    }

    /// How long a connection closed during the shutdown with client bytes still unread (a
    /// pipelined request, a body the handler did not read) waits for the client to close its
    /// side (default 1 s). The server sends its FIN first and reads until the client's, so
    /// that data never turns the close into a reset that could destroy the last response. A
    /// connection with nothing unread closes at once.
    pub fn linger(mut self, linger: Duration) -> ServeConfig {
        self.linger = linger;
        self
    }

    /// How long an idle HTTP/1 keep-alive connection stays open after stop-accepting, waiting
    /// for its client's next request so that request is answered (with `Connection: close`)
    /// instead of racing the close (default zero: idle connections close at once).
    ///
    /// A client that sends a request on a connection the server is closing sees it closed
    /// under the request; it may retry only what is idempotent. Behind a balancer that learns
    /// of the shutdown only from its pooled connections closing (open-source nginx, which
    /// never reads readiness), that race fails a few `POST`s per restart; a delay of 500 ms
    /// to 1 s, under load, lets every pooled connection carry one more request and close
    /// cleanly. Behind a balancer that follows readiness, nothing is sent any more at
    /// stop-accepting and zero is right.
    pub fn idle_close_delay(mut self, delay: Duration) -> ServeConfig {
        self.idle_close_delay = delay;
        self
    }

    /// Whether each request carries its peer's address as axum's `ConnectInfo` (default
    /// `true`), which handlers extract as under `axum::serve` with
    /// `into_make_service_with_connect_info`.
    ///
    /// Needs the `axum` feature.
    ///
    /// With `false` a request's extensions hold nothing of ours: a service that never
    /// extracts `ConnectInfo` saves the insert (an allocation and a map entry, about 2 % of
    /// `serve`'s own work per request; `BENCHMARKS.md`).
    #[cfg(feature = "axum")]
    pub fn connect_info(mut self, enabled: bool) -> ServeConfig {
        self.connect_info = enabled;
        self
    }

    /// Whether HTTP/1 connections are kept alive between requests (default `true`). With
    /// `false` every response says `Connection: close` and its connection closes after it.
    pub fn http1_keep_alive(mut self, enabled: bool) -> ServeConfig {
        self.http1.keep_alive = Some(enabled);
        self
    }

    /// The most header fields an HTTP/1 request may have (hyper's default: 100); a request
    /// with more is answered `431 Request Header Fields Too Large` and its connection closed.
    pub fn http1_max_headers(mut self, max: usize) -> ServeConfig {
        self.http1.max_headers = Some(max);
        self
    }

    /// The largest HTTP/1 read buffer, which bounds a request head's size (hyper's default:
    /// about 400 KiB; at least 8192). A longer head is answered `431`.
    pub fn http1_max_buf_size(mut self, max: usize) -> ServeConfig {
        self.http1.max_buf_size = Some(max.max(8192));
        self
    }

    /// The most streams an HTTP/2 client may open at once on one connection (hyper's default:
    /// 200), sent in the server's `SETTINGS`.
    pub fn http2_max_concurrent_streams(mut self, max: u32) -> ServeConfig {
        self.http2.max_concurrent_streams = Some(max);
        self
    }

    /// HTTP/2's initial flow-control window per stream, in bytes (hyper's default: 1 MiB; at
    /// most 2^31 - 1, HTTP/2's limit, to which a larger value is lowered), sent in the
    /// server's `SETTINGS`.
    pub fn http2_initial_stream_window_size(mut self, size: u32) -> ServeConfig {
        self.http2.initial_stream_window_size = Some(size.min(MAX_WINDOW));
        self
    }

    /// HTTP/2's initial flow-control window per connection, in bytes (hyper's default:
    /// 1 MiB; at most 2^31 - 1), sent as the server's first `WINDOW_UPDATE`.
    pub fn http2_initial_connection_window_size(mut self, size: u32) -> ServeConfig {
        self.http2.initial_connection_window_size = Some(size.min(MAX_WINDOW));
        self
    }

    /// Whether HTTP/2 sizes its flow-control windows from the measured bandwidth-delay product
    /// (default `false`); when on, the two window sizes above are ignored.
    pub fn http2_adaptive_window(mut self, enabled: bool) -> ServeConfig {
        self.http2.adaptive_window = Some(enabled);
        self
    }

    /// The largest HTTP/2 frame payload the server accepts, in bytes (hyper's default: 16 KiB),
    /// sent in the server's `SETTINGS`. HTTP/2 allows 16,384 to 16,777,215; a value outside is
    /// brought to the nearest bound (hyper would panic on it).
    pub fn http2_max_frame_size(mut self, size: u32) -> ServeConfig {
        self.http2.max_frame_size = Some(size.clamp(16_384, 16_777_215));
        self
    }

    /// The largest HTTP/2 header list the server accepts, in bytes (hyper's default: 16 KiB),
    /// sent in the server's `SETTINGS`.
    pub fn http2_max_header_list_size(mut self, size: u32) -> ServeConfig {
        self.http2.max_header_list_size = Some(size);
        self
    }

    /// How often an HTTP/2 connection is pinged to check it is alive (default: never), and
    /// how long a ping may go unanswered before the connection is closed (hyper's default:
    /// 20 s).
    pub fn http2_keep_alive(mut self, interval: Duration, timeout: Duration) -> ServeConfig {
        self.http2.keep_alive_interval = Some(interval);
        self.http2.keep_alive_timeout = Some(timeout);
        self
    }

    /// Whether HTTP/2 offers the extended CONNECT protocol (RFC 8441, default `true`), which
    /// WebSockets over HTTP/2 need; axum's own `serve` turns it on too.
    pub fn http2_connect_protocol(mut self, enabled: bool) -> ServeConfig {
        self.http2.connect_protocol = enabled;
        self
    }

    /// A connection builder with hyper's settings applied.
    pub(super) fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        let mut http1 = builder.http1();
        // The header-read timeout is enforced by `connection` itself, not by hyper's timer,
        // which costs a timer-wheel entry and an extra read poll per request (see `ConnState`).
        http1.header_read_timeout(None);
        if let Some(enabled) = self.http1.keep_alive {
            http1.keep_alive(enabled);
        }
        if let Some(max) = self.http1.max_headers {
            http1.max_headers(max);
        }
        if let Some(max) = self.http1.max_buf_size {
            http1.max_buf_size(max);
        }
        let mut http2 = builder.http2();
        http2.timer(TokioTimer::new());
        let h2 = &self.http2;
        if let Some(max) = h2.max_concurrent_streams {
            http2.max_concurrent_streams(max);
        }
        if let Some(size) = h2.initial_stream_window_size {
            http2.initial_stream_window_size(size);
        }
        if let Some(size) = h2.initial_connection_window_size {
            http2.initial_connection_window_size(size);
        }
        if let Some(enabled) = h2.adaptive_window {
            http2.adaptive_window(enabled);
        }
        if let Some(size) = h2.max_frame_size {
            http2.max_frame_size(size);
        }
        if let Some(size) = h2.max_header_list_size {
            http2.max_header_list_size(size);
        }
        if let Some(interval) = h2.keep_alive_interval {
            http2.keep_alive_interval(interval);
        }
        if let Some(timeout) = h2.keep_alive_timeout {
            http2.keep_alive_timeout(timeout);
        }
        if h2.connect_protocol {
            http2.enable_connect_protocol();
        }
        builder
    }
}
