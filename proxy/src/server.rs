//! The accept loop and the state all sessions share.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

use crate::cancel::CancelRegistry;
use crate::client::tls::{self, TlsConfigError};
use crate::config::{ClientTlsMode, Resolved, UpstreamTlsMode};
use crate::metrics::Metrics;
use crate::session::{self, InterceptorFactory, PassThrough};
use crate::upstream::connect::UpstreamTarget;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding a listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// Randomness unavailable.
    #[error("no randomness: {0}")]
    Random(String),
}

/// State shared by all sessions.
pub struct Shared {
    /// The resolved configuration.
    pub config: Resolved,
    /// TLS acceptor for clients (None: answer `N` to SSLRequest).
    pub tls_acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// How to reach the upstream.
    pub upstream: UpstreamTarget,
    /// Cancel keys.
    pub cancel: Arc<CancelRegistry>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Secret for mock SCRAM exchanges with unknown users.
    pub mock_secret: [u8; 32],
    /// Builds the per-session interceptor.
    pub interceptors: Arc<dyn InterceptorFactory>,
    /// Becomes `true` when shutdown starts.
    pub shutdown: watch::Receiver<bool>,
    /// Connection limit.
    pub conn_limit: Arc<Semaphore>,
}

/// A bound, not yet running proxy.
pub struct Server {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
}

impl Server {
    /// Binds the listeners of a pass-through proxy.
    pub async fn bind(config: Resolved) -> Result<Server, ServerError> {
        Server::bind_with(config, Arc::new(PassThrough)).await
    }

    /// Binds the listeners with a custom interceptor factory (the encryption layer).
    pub async fn bind_with(
        config: Resolved,
        interceptors: Arc<dyn InterceptorFactory>,
    ) -> Result<Server, ServerError> {
        let tls_acceptor = match (
            &config.config.tls.mode,
            &config.config.tls.cert,
            &config.config.tls.key,
        ) {
            (ClientTlsMode::Disabled, _, _) => None,
            (_, Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(
                tls::server_config(cert, key)?,
            )),
            _ => None,
        };
        let up = &config.config.upstream;
        let upstream_tls = match (up.tls, &up.ca) {
            (UpstreamTlsMode::VerifyFull, Some(ca)) => {
                let client_cert = match (&up.client_cert, &up.client_key) {
                    (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                    _ => None,
                };
                let cfg = tls::client_config(ca, client_cert)?;
                let name = tls::server_name(up.server_name.as_deref().unwrap_or(&up.host))?;
                Some((tokio_rustls::TlsConnector::from(cfg), name))
            }
            _ => None,
        };
        let upstream = UpstreamTarget {
            host: up.host.clone(),
            port: up.port,
            tls: upstream_tls,
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind { addr, source })?,
            ),
            None => None,
        };
        let mut mock_secret = [0u8; 32];
        getrandom::fill(&mut mock_secret).map_err(|e| ServerError::Random(e.to_string()))?;
        let (shutdown_tx, shutdown) = watch::channel(false);
        let conn_limit = Arc::new(Semaphore::new(config.config.limits.max_connections));
        Ok(Server {
            listener,
            metrics_listener,
            shared: Arc::new(Shared {
                config,
                tls_acceptor,
                upstream,
                cancel: Arc::new(CancelRegistry::default()),
                metrics: Arc::new(Metrics::default()),
                mock_secret,
                interceptors,
                shutdown,
                conn_limit,
            }),
            shutdown_tx,
        })
    }

    /// Address clients connect to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Address of the metrics endpoint.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// Accepts connections until `shutdown` resolves, then drains sessions for up to the grace
    /// period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            listener,
            metrics_listener,
            shared,
            shutdown_tx,
        } = self;
        let metrics_task = metrics_listener
            .map(|l| tokio::spawn(crate::metrics::serve(l, shared.metrics.clone())));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok((tcp, peer)) => {
                        tokio::spawn(session::run(tcp, peer, shared.clone()));
                    }
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
        drop(listener);
        let grace = Duration::from_secs(shared.config.config.shutdown.grace_seconds);
        info!(
            active = shared.metrics.active_connections(),
            ?grace,
            "shutting down: no longer accepting"
        );
        let _ = shutdown_tx.send(true);
        let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(1);
        while shared.metrics.active_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(t) = metrics_task {
            t.abort();
        }
        info!(
            remaining = shared.metrics.active_connections(),
            "shutdown complete"
        );
    }
}
