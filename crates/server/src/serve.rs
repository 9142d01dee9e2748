//! The HTTP accept loop, with the limits a server facing the Internet needs:
//!
//! * a **connection cap** (`server.max_connections`, WebSockets included): beyond
//!   it, a new connection is closed at once;
//! * a **header-read timeout** (`server.header_read_timeout`): a client must send a
//!   request's whole head within it, and a keep-alive connection idle between
//!   requests is closed after it (a slow-header client, "slowloris", is cut off);
//! * the **request timeout** and **body size limits** are tower-http layers on the
//!   router (see `api::router`); idle WebSockets are handled in `ws` (pings).
//!
//! `axum::serve` has none of these knobs, so this is hyper's HTTP/1 connection
//! driven directly (as `axum::serve` does), with upgrades for WebSockets.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::middleware::AddExtension;
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tower::Layer;

use crate::config::TlsSection;
use crate::ServerError;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    /// Open connections at most (HTTP and WebSocket).
    pub max_connections: usize,
    /// A request head must arrive within this; also the keep-alive idle limit.
    pub header_read_timeout: Duration,
}

/// A TCP stream holding its slot under the connection cap: the slot is released
/// when the stream is dropped, also after a WebSocket upgrade (the stream moves
/// into the upgraded connection).
struct Counted {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Builds the TLS acceptor of `[server.tls]` (rustls with aws-lc-rs; HTTP/1.1 by
/// ALPN). Errors name the key and the file.
pub(crate) fn tls_acceptor(tls: &TlsSection) -> Result<TlsAcceptor, ServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |key: &str, path: &std::path::Path, message: String| ServerError::Invalid {
        key: format!("server.tls.{key}"),
        source_name: path.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            invalid(
                "cert_file",
                &tls.cert_file,
                format!("cannot read PEM certificates: {e}"),
            )
        })?;
    if certs.is_empty() {
        return Err(invalid(
            "cert_file",
            &tls.cert_file,
            "no certificate in the file".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| {
        invalid(
            "key_file",
            &tls.key_file,
            format!("cannot read a PEM private key: {e}"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("cert_file", &tls.cert_file, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            invalid(
                "key_file",
                &tls.key_file,
                format!("the key does not fit the certificate: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Whether an accept error concerns only that connection (keep accepting at once).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves `app` on `listener` until `stop` turns `true`, then lets the open HTTP
/// connections finish their request (WebSockets close themselves on `stop`).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Every connection task holds a receiver; `closed()` resolves when all are gone.
    let (open_tx, open_rx) = watch::channel(());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors or similar: back off, keep serving.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics::counter!("mesh_server_connections_refused_total").increment(1);
            tracing::warn!(
                %peer,
                max = limits.max_connections,
                "connection cap reached: connection closed"
            );
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let counted = Counted {
            stream,
            _slot: slot,
        };
        let service = TowerToHyperService::new(Extension(ConnectInfo(peer)).layer(app.clone()));
        let stop_conn = stop.clone();
        let open = open_rx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _open = open;
            match tls {
                None => connection(TokioIo::new(counted), service, limits, stop_conn, peer).await,
                Some(acceptor) => {
                    // The handshake counts as part of the request head.
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(counted))
                        .await
                    {
                        Ok(Ok(tls)) => {
                            connection(TokioIo::new(tls), service, limits, stop_conn, peer).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    drop(open_rx);
    open_tx.closed().await;
    Ok(())
}

/// The service of one connection: the router, with the peer address as
/// `ConnectInfo`.
type ConnService = TowerToHyperService<AddExtension<Router, ConnectInfo<SocketAddr>>>;

/// Serves one HTTP/1 connection (with upgrades) until it ends or `stop`.
async fn connection<I>(
    io: I,
    service: ConnService,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = async { let _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}
