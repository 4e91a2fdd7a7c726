//! Native TLS for the main and S3 listeners (`--tls-cert`, `--tls-key`): rustls, HTTP/1.1,
//! the certificate reloaded when its files change.
//!
//! The accept loop hands each accepted connection to [`Tls::accept`] inside the connection's
//! own task, with the header-read deadline, so a slow handshake holds no one else up. The
//! certificate lives behind a resolver: a reload swaps it for new handshakes while open
//! connections keep theirs.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn::ServerIo;

/// How often the certificate files are checked for changes.
const RELOAD_CHECK_EVERY: Duration = Duration::from_secs(2);

/// The current certificate, swapped on reload.
#[derive(Debug)]
struct CertStore {
    /// Guards the certificate handed to new handshakes (read per handshake, written on reload).
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.current.read() {
            Ok(k) => Some(Arc::clone(&k)),
            Err(poisoned) => Some(Arc::clone(&poisoned.into_inner())),
        }
    }
}

/// A TLS acceptor over a reloading certificate. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

/// Reads and parses the PEM chain and key (blocking file I/O on the blocking pool).
async fn load(cert: PathBuf, key: PathBuf) -> io::Result<CertifiedKey> {
    let certs = tokio::fs::read(&cert)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", cert.display())))?;
    let keys = tokio::fs::read(&key)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", key.display())))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&certs)
        .collect::<Result<_, _>>()
        .map_err(|e| io::Error::other(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(io::Error::other(format!(
            "{}: no certificate in the file",
            cert.display()
        )));
    }
    let private = PrivateKeyDer::from_pem_slice(&keys)
        .map_err(|e| io::Error::other(format!("{}: {e}", key.display())))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| io::Error::other(format!("{}: {e}", key.display())))?;
    Ok(CertifiedKey::new(chain, signing))
}

async fn modified(path: &Path) -> Option<SystemTime> {
    tokio::fs::metadata(path).await.ok()?.modified().ok()
}

impl Tls {
    /// The acceptor for `--tls-cert`/`--tls-key`, or `None` when TLS is off. Starts a task
    /// that reloads the certificate when either file changes, until `shutdown`.
    pub(crate) async fn from_config(
        config: &crate::config::Config,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> io::Result<Option<Tls>> {
        let (Some(cert), Some(key)) = (config.tls_cert.clone(), config.tls_key.clone()) else {
            return Ok(None);
        };
        let first = load(cert.clone(), key.clone()).await?;
        let store = Arc::new(CertStore {
            current: RwLock::new(Arc::new(first)),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| io::Error::other(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&store) as Arc<dyn ResolvesServerCert>);
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let reloading = Arc::clone(&store);
        tokio::spawn(async move {
            let mut seen = (modified(&cert).await, modified(&key).await);
            let mut tick = tokio::time::interval(RELOAD_CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = crate::services::notification::until_true(&mut shutdown) => return,
                }
                let now = (modified(&cert).await, modified(&key).await);
                if now == seen {
                    continue;
                }
                match load(cert.clone(), key.clone()).await {
                    Ok(k) => {
                        if let Ok(mut slot) = reloading.current.write() {
                            *slot = Arc::new(k);
                        }
                        seen = now;
                        tracing::info!(cert = %cert.display(), "reloaded the TLS certificate");
                    }
                    // Half-written (cert renewed before key): keep the old one, try again.
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificate reload failed; keeping the current one")
                    }
                }
            }
        });
        Ok(Some(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            handshake_timeout: config.header_read_timeout,
        }))
    }

    /// The TLS handshake on an accepted connection, within the header-read deadline.
    pub(crate) async fn accept(&self, io: ServerIo) -> io::Result<MaybeTls> {
        match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(io)).await {
            Ok(Ok(stream)) => Ok(MaybeTls::Tls(Box::new(stream))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake deadline",
            )),
        }
    }
}

/// A connection as served: plain, or TLS over it.
#[derive(Debug)]
pub(crate) enum MaybeTls {
    Plain(ServerIo),
    Tls(Box<tokio_rustls::server::TlsStream<ServerIo>>),
}

impl MaybeTls {
    /// Performs the handshake when `tls` is set.
    pub(crate) async fn wrap(io: ServerIo, tls: Option<&Tls>) -> io::Result<MaybeTls> {
        match tls {
            None => Ok(MaybeTls::Plain(io)),
            Some(tls) => tls.accept(io).await,
        }
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_read(cx, buf),
            MaybeTls::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_write(cx, buf),
            MaybeTls::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_flush(cx),
            MaybeTls::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_shutdown(cx),
            MaybeTls::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}
