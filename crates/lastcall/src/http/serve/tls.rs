//! TLS for `serve` (feature `tls`): [`TlsListener`], a TCP listener whose connections are
//! served through rustls once their handshake, run in each connection's own task, is done.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::listener::{peek_unread, sealed, Listener};
use crate::error::TlsConfigError;

/// The ALPN protocols a [`TlsListener`] offers when its configuration names none: HTTP/2
/// first, then HTTP/1.1.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A TCP listener whose connections [`serve`](crate::http::serve) serves over TLS (rustls,
/// through tokio-rustls, with the `ring` provider). Needs the `tls` feature.
///
/// Everything [`serve`](crate::http::serve) does at a shutdown holds over TLS: idle keep-alive
/// connections close with a TLS `close_notify` before the FIN (a client sees a clean end, not a
/// truncation), busy HTTP/1 ones answer with `Connection: close`, HTTP/2 ones (chosen by ALPN)
/// get GOAWAY, handlers get the peer's `ConnectInfo<SocketAddr>`.
///
/// Each connection's handshake runs in that connection's own task, never in the accept loop,
/// so a slow client cannot stall accepting. It may take at most the
/// [handshake timeout](TlsListener::handshake_timeout) (default 10 s). A handshake still in
/// progress at stop-accepting gets the same short grace as a request head half read (at most
/// 1 s, and never past the wait-for-work deadline), then its connection is closed; it counts
/// as a connection closed without a request, never as work cut.
///
/// If the configuration offers no ALPN protocols, the listener offers `h2` and `http/1.1`, so
/// HTTP/2 clients get HTTP/2; a configuration that names its own is used as it is.
///
/// # Examples
///
/// From PEM files, with the `ring` provider and ALPN set:
///
/// ```no_run
/// use lastcall::http::{listen, serve, DrainLayer, ServeConfig, TlsListener};
/// use lastcall::Controller;
/// use tower::Layer;
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let controller = Controller::from_env()?;
/// let shutdown = controller.shutdown();
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
/// let app = DrainLayer::new(shutdown.clone()).layer(app);
/// // A bad file is refused here, at startup, with the path and the fix in the error.
/// let listener = TlsListener::from_pem_files(
///     listen(([127, 0, 0, 1], 8443).into())?,
///     "/etc/orders/tls/cert.pem",
///     "/etc/orders/tls/key.pem",
/// )?;
/// let server = tokio::spawn(serve(listener, app, shutdown, ServeConfig::default()));
/// let code = controller.run().await;
/// let _ = server.await;
/// # let _ = code; Ok(()) }
/// ```
///
/// From a rustls configuration of your own (client certificates, a certificate resolver...),
/// built with the rustls this crate re-exports, [`lastcall::http::rustls`](crate::http::rustls):
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use lastcall::http::rustls::{self, pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer}};
/// use lastcall::http::TlsListener;
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let chain = CertificateDer::pem_file_iter("cert.pem")?.collect::<Result<Vec<_>, _>>()?;
/// let key = PrivateKeyDer::from_pem_file("key.pem")?;
/// let provider = Arc::new(rustls::crypto::ring::default_provider());
/// let config = rustls::ServerConfig::builder_with_provider(provider)
///     .with_safe_default_protocol_versions()?
///     .with_no_client_auth()
///     .with_single_cert(chain, key)?;
/// let tcp = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
/// let listener = TlsListener::new(tcp, Arc::new(config)).handshake_timeout(Duration::from_secs(5));
/// # let _ = listener; Ok(()) }
/// ```
#[derive(Debug)]
pub struct TlsListener {
    listener: TcpListener,
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
}

impl TlsListener {
    /// Serves `listener`'s connections over TLS with `config`, offering ALPN `h2` and
    /// `http/1.1` if `config` offers no protocols.
    ///
    /// Needs the `tls` feature.
    ///
    /// # Examples
    ///
    /// See [`TlsListener`].
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> TlsListener {
        let config = if config.alpn_protocols.is_empty() {
            let mut config = ServerConfig::clone(&config);
            config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
            Arc::new(config)
        } else {
            config
        };
        TlsListener {
            listener,
            config,
            handshake_timeout: Duration::from_secs(10),
        }
    }

    /// Serves `listener`'s connections over TLS with the certificate chain in the PEM file
    /// `cert` (the server's certificate first, then its intermediates) and the private key in
    /// the PEM file `key` (PKCS#8, PKCS#1 or SEC1), with rustls's safe default protocol
    /// versions, the `ring` provider, no client authentication and ALPN `h2` and `http/1.1`.
    ///
    /// Needs the `tls` feature.
    ///
    /// # Examples
    ///
    /// See [`TlsListener`].
    ///
    /// # Errors
    ///
    /// A [`TlsConfigError`] naming the file and the fix, when a file cannot be read, holds no
    /// certificate or key, or the key is not the certificate's.
    pub fn from_pem_files(
        listener: TcpListener,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsListener, TlsConfigError> {
        let config = server_config(cert.as_ref(), key.as_ref())?;
        Ok(TlsListener::new(listener, Arc::new(config)))
    }

    /// How long a client may take to complete its TLS handshake, from its connection's accept
    /// (default 10 s); then the connection is closed. At stop-accepting a handshake in
    /// progress gets at most 1 s more.
    ///
    /// Needs the `tls` feature.
    ///
    /// # Examples
    ///
    /// See [`TlsListener`].
    pub fn handshake_timeout(mut self, timeout: Duration) -> TlsListener {
        self.handshake_timeout = timeout;
        self
    }

    /// The local address the listener is bound to.
    ///
    /// Needs the `tls` feature.
    ///
    /// # Examples
    ///
    /// See [`TlsListener`].
    ///
    /// # Errors
    ///
    /// As [`TcpListener::local_addr`].
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl Listener for TlsListener {}

/// A connection accepted by a [`TlsListener`], before its handshake.
#[allow(unreachable_pub)] // Named only as `<TlsListener as Accept>::Accepted`, which is sealed.
#[derive(Debug)]
pub struct Accepted {
    stream: TcpStream,
    config: Arc<ServerConfig>,
    timeout: Duration,
}

impl sealed::Accept for TlsListener {
    type Accepted = Accepted;
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;
    type Handshake = tokio_rustls::Accept<TcpStream>;

    async fn accept_one(&self) -> io::Result<(Accepted, SocketAddr)> {
        let (stream, peer) = self.listener.accept().await?;
        let accepted = Accepted {
            stream,
            config: self.config.clone(),
            timeout: self.handshake_timeout,
        };
        Ok((accepted, peer))
    }

    fn describe(&self) -> String {
        match self.listener.local_addr() {
            Ok(addr) => format!("{addr} (TLS)"),
            Err(_) => "a TLS listener".to_owned(),
        }
    }

    fn prepare(accepted: &Accepted) {
        <TcpListener as sealed::Accept>::prepare(&accepted.stream);
    }

    fn handshake(accepted: Accepted) -> sealed::Handshake<Self::Io, Self::Handshake> {
        sealed::Handshake::Start {
            handshake: TlsAcceptor::from(accepted.config).accept(accepted.stream),
            timeout: accepted.timeout,
        }
    }

    fn has_unread(io: &Self::Io) -> bool {
        peek_unread(socket2::SockRef::from(io.get_ref().0))
    }
}

/// rustls's server configuration from PEM files (see [`TlsListener::from_pem_files`]).
fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsConfigError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsConfigError::Certificates {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsConfigError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsConfigError::Key {
        path: key.to_owned(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| {
            builder
                .with_no_client_auth()
                .with_single_cert(chain, key_der)
        })
        .map_err(|source| TlsConfigError::Refused {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
