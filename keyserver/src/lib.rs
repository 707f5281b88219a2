//! pgseal-keyserver: keyrings with versions, rotation, mTLS data plane for proxies, token-based
//! control plane for admins, hash-chained audit log. See `docs/keyserver.md`.

pub mod admission;
pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod fd_limit;
pub mod idle;
pub mod logging;
pub mod model;
pub mod pki;
pub mod rootkey;
pub mod server;
pub mod store;
pub mod unauth_audit;
pub mod util;

use std::sync::Arc;

pub use error::KsError;

use crate::api::AppState;
use crate::config::Config;
use crate::rootkey::{LocalRootKey, RootKey};
use crate::store::{KeyStore, SqliteStore};

/// Installs aws-lc-rs as the process-wide rustls provider (idempotent). The library always
/// passes the provider explicitly; this only matters for code using `ClientConfig::builder()`.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Loads the root key named by the configuration.
pub fn load_root_key(cfg: &Config) -> Result<Arc<dyn RootKey>, KsError> {
    let key = match (&cfg.root_key_file, &cfg.root_key_env) {
        (Some(path), None) => LocalRootKey::from_file(path)?,
        (None, Some(var)) => LocalRootKey::from_env(var)?,
        _ => {
            return Err(KsError::Config(
                "set exactly one of root_key_file and root_key_env".into(),
            ))
        }
    };
    Ok(Arc::new(key))
}

/// Opens an existing database and checks the root key against it.
pub fn open_store(cfg: &Config, root: &dyn RootKey) -> Result<Arc<SqliteStore>, KsError> {
    if !cfg.database.exists() {
        return Err(KsError::Config(format!(
            "database {} does not exist; create it with `pgseal-keyserver init`",
            cfg.database.display()
        )));
    }
    let store = SqliteStore::open(&cfg.database, cfg.durability)?;
    store.check_root_key(root)?;
    Ok(store.into())
}

/// Opens everything `serve` needs: root key, store, state, TLS config.
pub fn prepare(cfg: &Config) -> Result<(AppState, Arc<rustls::ServerConfig>), KsError> {
    let root = load_root_key(cfg)?;
    let store = open_store(cfg, root.as_ref())?;
    tracing::info!(root = %root.describe(), db = %cfg.database.display(), "keyserver opened");
    let tls = server::server_tls_from_files(&cfg.tls.cert, &cfg.tls.key, &cfg.tls.client_ca)?;
    let state = AppState::with_audit(store, root, cfg.max_body_bytes, &cfg.audit);
    Ok((state, tls))
}

/// Runs the server until Ctrl-C / SIGTERM.
pub async fn run(cfg: &Config) -> Result<(), KsError> {
    let (state, tls) = prepare(cfg)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| KsError::Tls(format!("bind {}: {e}", cfg.listen)))?;
    tracing::info!(listen = %cfg.listen, "keyserver listening");
    fd_limit::ensure(cfg.limits.max_open_connections());
    let res = server::serve_with_limits(
        listener,
        tls,
        api::router(state.clone()),
        &cfg.limits,
        shutdown_signal(),
    )
    .await;
    // Counts of the current window go to the chain before the process ends.
    state.flush_unauthenticated(true).await;
    res
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
