//! TLS (rustls, aws-lc-rs) and the accept loop: our own loop so that the verified client
//! certificate of each connection is visible and attached to its requests, and so that each
//! connection is admitted ([`Admission`]) and timed out (handshake, idle, headers, request).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::admission::Admission;
use crate::api::{PeerAddr, PeerCert};
use crate::auth::mtls::proxy_name_from_cert;
use crate::config::LimitsConfig;
use crate::error::KsError;
use crate::idle::Activity;

/// The crypto provider used everywhere (aws-lc-rs), passed explicitly.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> KsError {
    KsError::Tls(e.to_string())
}

/// Parses all certificates in a PEM buffer.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, KsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(tls_err)?;
    if certs.is_empty() {
        return Err(KsError::Tls("no certificate found in PEM".into()));
    }
    Ok(certs)
}

/// Builds the server TLS config from PEM buffers: server chain, server key, client CA(s).
/// Client certificates are optional at the TLS layer (admins use tokens) but, when presented,
/// must chain to the client CA, or the handshake fails.
pub fn server_tls_from_pem(
    cert: &[u8],
    key: &[u8],
    client_ca: &[u8],
) -> Result<Arc<ServerConfig>, KsError> {
    let provider = provider();
    let chain = certs_from_pem(cert)?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(tls_err)?;
    let mut roots = RootCertStore::empty();
    for ca in certs_from_pem(client_ca)? {
        roots.add(ca).map_err(tls_err)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(tls_err)?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_err)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Builds the server TLS config from files.
pub fn server_tls_from_files(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<Arc<ServerConfig>, KsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| KsError::io(p, e));
    server_tls_from_pem(&read(cert)?, &read(key)?, &read(client_ca)?)
}

/// Timeouts applied to each connection, from [`LimitsConfig`].
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    handshake: Duration,
    idle_anonymous: Duration,
    idle_proxy: Duration,
    header_read: Duration,
    request: Duration,
    max_streams: u32,
}

impl From<&LimitsConfig> for Timeouts {
    fn from(l: &LimitsConfig) -> Self {
        Self {
            handshake: Duration::from_secs(l.handshake_timeout_secs),
            idle_anonymous: Duration::from_secs(l.idle_timeout_secs),
            idle_proxy: Duration::from_secs(l.proxy_idle_timeout_secs),
            header_read: Duration::from_secs(l.header_read_timeout_secs),
            request: Duration::from_secs(l.request_timeout_secs),
            max_streams: l.max_streams_per_connection,
        }
    }
}

/// How long a connection told to shut down (idle) may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `app` over TLS on `listener` until `shutdown` resolves, with the default limits.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) -> Result<(), KsError> {
    serve_with_limits(listener, tls, app, &LimitsConfig::default(), shutdown).await
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves. Every accepted connection
/// must get a slot from [`Admission`] or is closed at once; see `docs/keyserver.md`, "Limits".
pub async fn serve_with_limits(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    limits: &LimitsConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), KsError> {
    let acceptor = TlsAcceptor::from(tls);
    let admission = Admission::new(limits);
    let timeouts = Timeouts::from(limits);
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors or similar: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ip = addr.ip().to_canonical();
        let handshake_slot = match admission.handshake(ip) {
            Ok(s) => s,
            Err(why) => {
                tracing::debug!(peer = %addr, reason = %why, "connection refused");
                drop(tcp);
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let admission = admission.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(timeouts.handshake, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %addr, "TLS handshake timed out");
                    return;
                }
            };
            drop(handshake_slot);
            let peer = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                None => PeerCert::None,
                Some(der) => proxy_name_from_cert(der).map_or(PeerCert::Unusable, PeerCert::Proxy),
            };
            let (slot, idle) = match &peer {
                PeerCert::Proxy(_) => (admission.proxy(), timeouts.idle_proxy),
                _ => (admission.anonymous(ip), timeouts.idle_anonymous),
            };
            let _slot = match slot {
                Ok(s) => s,
                Err(why) => {
                    tracing::debug!(peer = %addr, reason = %why, "connection refused");
                    return;
                }
            };
            serve_connection(tls, peer, ip, app, timeouts, idle).await;
        });
    }
}

async fn serve_connection(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: PeerCert,
    ip: std::net::IpAddr,
    app: Router,
    timeouts: Timeouts,
    idle: Duration,
) {
    let activity = Activity::new();
    let svc_activity = activity.clone();
    let request_timeout = timeouts.request;
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(peer.clone());
        req.extensions_mut().insert(PeerAddr(ip));
        let busy = svc_activity.busy();
        let app = app.clone();
        async move {
            let _busy = busy;
            match tokio::time::timeout(request_timeout, app.oneshot(req)).await {
                Ok(r) => r,
                Err(_) => Ok(timed_out()),
            }
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(timeouts.max_streams);
    let conn = builder.serve_connection(TokioIo::new(tls), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(peer = %ip, error = %e, "connection ended with error");
            }
        }
        () = activity.idle_for(idle) => {
            tracing::debug!(peer = %ip, "closing idle connection");
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await;
        }
    }
}

fn timed_out() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        http::StatusCode::REQUEST_TIMEOUT,
        axum::Json(crate::model::ErrorBody {
            error: "request_timeout".into(),
            message: "the request took too long".into(),
        }),
    )
        .into_response()
}
