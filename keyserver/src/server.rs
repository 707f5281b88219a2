//! TLS (rustls, aws-lc-rs) and the accept loop: our own loop so that the verified client
//! certificate of each connection is visible and attached to its requests.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::api::PeerCert;
use crate::auth::mtls::proxy_name_from_cert;
use crate::error::KsError;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once; further clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 1024;

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

/// Serves `app` over TLS on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) -> Result<(), KsError> {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => return Ok(()),
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return Ok(()),
            },
        };
        let (tcp, addr) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(peer = %addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(peer = %addr, "TLS handshake timed out");
                    return;
                }
            };
            let peer = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                None => PeerCert::None,
                Some(der) => proxy_name_from_cert(der).map_or(PeerCert::Unusable, PeerCert::Proxy),
            };
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(peer.clone());
                app.clone().oneshot(req)
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(peer = %addr, error = %e, "connection ended with error");
            }
        });
    }
}
