//! The accept loop and the state all sessions share.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::cancel::CancelRegistry;
use crate::client::tls::{self, TlsConfigError};
use crate::config::{ClientTlsMode, Resolved};
use crate::metrics::Metrics;
use crate::session::admission::StartupSlots;
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
    /// Signals shutdown to sessions.
    pub shutdown: Arc<crate::shutdown::ShutdownRegistry>,
    /// Logged-in sessions (`limits.max_connections`): taken once a client has authenticated.
    pub conn_limit: Arc<Semaphore>,
    /// Connections that have not authenticated yet (`limits.max_startup_connections`).
    pub startup: Arc<StartupSlots>,
}

/// A bound, not yet running proxy.
pub struct Server {
    listener: std::net::TcpListener,
    metrics_listener: Option<std::net::TcpListener>,
    shared: Arc<Shared>,
}

fn bind_std(addr: SocketAddr) -> Result<std::net::TcpListener, ServerError> {
    let l =
        std::net::TcpListener::bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
    l.set_nonblocking(true)
        .map_err(|source| ServerError::Bind { addr, source })?;
    Ok(l)
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
        Server::bind_sync(config, interceptors)
    }

    /// Like [`Server::bind_with`], outside any runtime.
    pub fn bind_sync(
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
        let upstream = UpstreamTarget::from_config(&config.config.upstream)?;
        let listener = bind_std(config.listen)?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(bind_std(addr)?),
            None => None,
        };
        let mut mock_secret = [0u8; 32];
        getrandom::fill(&mut mock_secret).map_err(|e| ServerError::Random(e.to_string()))?;
        let conn_limit = Arc::new(Semaphore::new(config.config.limits.max_connections));
        let startup = StartupSlots::new(config.config.limits.max_startup_connections);
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
                shutdown: Arc::new(crate::shutdown::ShutdownRegistry::default()),
                conn_limit,
                startup,
            }),
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

    /// Accepts connections on the current tokio runtime until `shutdown` resolves, then drains
    /// sessions for up to the grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            listener,
            metrics_listener,
            shared,
        } = self;
        let metrics_task = spawn_metrics(metrics_listener, &shared);
        let stop = shared.shutdown.listen();
        tokio::select! {
            _ = shutdown => shared.shutdown.trigger(),
            _ = accept_loop(listener, shared.clone()) => {}
        }
        drop(stop);
        drain(&shared).await;
        if let Some(t) = metrics_task {
            t.abort();
        }
    }

    /// Runs on `threads` single-threaded runtimes, one per thread, all accepting on the same
    /// socket (thread per core: no work-stealing wake-ups between threads). Blocks until
    /// `shutdown` resolves and sessions have drained.
    pub fn run_threaded(
        self,
        threads: usize,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Server {
            listener,
            metrics_listener,
            shared,
        } = self;
        let mut handles = Vec::new();
        for i in 1..threads.max(1) {
            let l = listener.try_clone()?;
            let shared = shared.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("pgseal-proxy-{i}"))
                    .spawn(move || -> std::io::Result<()> {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()?;
                        rt.block_on(async {
                            accept_loop(l, shared.clone()).await;
                            drain(&shared).await;
                        });
                        Ok(())
                    })?,
            );
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let metrics_task = spawn_metrics(metrics_listener, &shared);
            let trigger = shared.clone();
            tokio::spawn(async move {
                shutdown.await;
                trigger.shutdown.trigger();
            });
            accept_loop(listener, shared.clone()).await;
            drain(&shared).await;
            if let Some(t) = metrics_task {
                t.abort();
            }
        });
        for h in handles {
            let _ = h.join();
        }
        Ok(())
    }
}

fn spawn_metrics(
    l: Option<std::net::TcpListener>,
    shared: &Arc<Shared>,
) -> Option<tokio::task::JoinHandle<()>> {
    let l = l?;
    match TcpListener::from_std(l) {
        Ok(l) => Some(tokio::spawn(crate::metrics::serve(
            l,
            shared.metrics.clone(),
        ))),
        Err(e) => {
            warn!(error = %e, "metrics listener unusable");
            None
        }
    }
}

/// Accepts until shutdown starts.
async fn accept_loop(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "listener unusable");
            return;
        }
    };
    let stop = shared.shutdown.listen();
    loop {
        tokio::select! {
            _ = stop.started() => break,
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
}

/// Waits for sessions to end, up to the grace period (plus a second for the goodbyes).
async fn drain(shared: &Shared) {
    let grace = Duration::from_secs(shared.config.config.shutdown.grace_seconds);
    info!(
        active = shared.metrics.active_connections(),
        ?grace,
        "shutting down: no longer accepting"
    );
    let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(1);
    while shared.metrics.active_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    info!(
        remaining = shared.metrics.active_connections(),
        "shutdown complete"
    );
}
