//! HTTP API: routing, caller authentication, body parsing and the audit-or-fail rule.

pub mod control_plane;
pub mod data_plane;
pub mod errors;

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::audit::AuditEvent;
use crate::auth::{tokens, AuthFailure, Principal};
use crate::config::AuditConfig;
use crate::model::{Health, ProxyName, Role};
use crate::rootkey::RootKey;
use crate::store::{KeyStore, StoreError};
use crate::unauth_audit::{Decision, UnauthAudit};

pub use errors::ApiError;

/// What the TLS layer learned about the peer; inserted into every request of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerCert {
    /// No client certificate.
    None,
    /// A verified client certificate with a usable common name.
    Proxy(ProxyName),
    /// A verified client certificate without a usable common name.
    Unusable,
}

/// The source IP address of the connection; inserted into every request of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub IpAddr);

struct Inner {
    store: Arc<dyn KeyStore>,
    root: Arc<dyn RootKey>,
    changes: watch::Sender<u64>,
    max_body: usize,
    unauth: UnauthAudit,
    flusher_started: std::sync::atomic::AtomicBool,
}

/// Shared server state.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl AppState {
    /// Builds the state from a store and a root key (the root key must already be checked).
    pub fn new(store: Arc<dyn KeyStore>, root: Arc<dyn RootKey>, max_body: usize) -> Self {
        Self::with_audit(store, root, max_body, &AuditConfig::default())
    }

    /// Like [`new`](Self::new), with the aggregation settings for unauthenticated failures.
    pub fn with_audit(
        store: Arc<dyn KeyStore>,
        root: Arc<dyn RootKey>,
        max_body: usize,
        audit: &AuditConfig,
    ) -> Self {
        let (changes, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                store,
                root,
                changes,
                max_body,
                unauth: UnauthAudit::new(audit),
                flusher_started: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Writes the aggregate records of ended windows (all windows when `all`) to the chain.
    /// Returns how many were written; failed writes are kept for the next call.
    pub async fn flush_unauthenticated(&self, all: bool) -> usize {
        let due = self.inner.unauth.take_due(all);
        let mut failed = Vec::new();
        let mut written = 0;
        for agg in due {
            let (ev, outcome) = (agg.event.clone(), agg.outcome.clone());
            match self
                .blocking(move |s, _| s.append_audit(&ev, &outcome))
                .await
            {
                Ok(()) => written += 1,
                Err(_) => failed.push(agg),
            }
        }
        if !failed.is_empty() {
            tracing::error!(
                records = failed.len(),
                "could not write aggregate audit records; retrying"
            );
            self.inner.unauth.requeue(failed);
        }
        written
    }

    /// Starts (once) the task that writes aggregate records as their windows end. It holds
    /// only a weak reference and ends with the state.
    fn ensure_flusher(&self) {
        if self
            .inner
            .flusher_started
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let period = std::time::Duration::from_secs(self.inner.unauth.window_secs().clamp(1, 5));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                AppState { inner }.flush_unauthenticated(false).await;
            }
        });
    }

    /// Runs a storage call on the blocking pool.
    pub(crate) async fn blocking<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn KeyStore, &dyn RootKey) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(inner.store.as_ref(), inner.root.as_ref()))
            .await
            .map_err(|_| ApiError::Internal)?
            .map_err(ApiError::from)
    }

    /// Audits a failure (or an un-audited success) and renders the response. If the audit
    /// write fails, the request fails with 500: no unaudited access.
    pub(crate) async fn finish<T: Serialize>(
        &self,
        ev: AuditEvent,
        res: Result<(StatusCode, T), ApiError>,
    ) -> Response {
        match res {
            Ok((status, body)) => (status, Json(body)).into_response(),
            Err(err) => {
                let outcome = err.audit_outcome();
                let ev = if matches!(err, ApiError::Unauthorized(_)) {
                    match self.inner.unauth.record(&ev, &outcome) {
                        Decision::Counted => {
                            self.ensure_flusher();
                            return err.into_response();
                        }
                        Decision::Write => match ev.source {
                            Some(ip) => {
                                let d = ev.detail.clone().map_or_else(
                                    || format!("source={ip}"),
                                    |d| format!("{d}; source={ip}"),
                                );
                                ev.detail(d)
                            }
                            None => ev,
                        },
                    }
                } else {
                    ev
                };
                match self
                    .blocking(move |s, _| s.append_audit(&ev, &outcome))
                    .await
                {
                    Ok(()) => err.into_response(),
                    Err(_) => ApiError::Internal.into_response(),
                }
            }
        }
    }

    /// Tells long-polling change-feed readers that the revision moved.
    pub(crate) fn notify_change(&self, revision: u64) {
        self.inner.changes.send_if_modified(|cur| {
            if revision > *cur {
                *cur = revision;
                true
            } else {
                false
            }
        });
    }

    pub(crate) fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Reads and parses a size-limited JSON body (unknown fields are rejected by the types).
    pub(crate) async fn read_json<T: DeserializeOwned>(&self, body: Body) -> Result<T, ApiError> {
        let max = self.inner.max_body;
        let collected = Limited::new(body, max).collect().await.map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                ApiError::PayloadTooLarge(max)
            } else {
                ApiError::BadRequest("could not read the request body".into())
            }
        })?;
        let bytes = collected.to_bytes();
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

/// The authenticated (or not) caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The principal, or why there is none.
    pub result: Result<Principal, AuthFailure>,
    /// Identity for the audit log.
    pub actor: String,
    /// Source IP address of the connection.
    pub source: Option<IpAddr>,
}

impl Caller {
    /// Starts an audit event for this caller.
    pub fn event(&self, action: &str) -> AuditEvent {
        AuditEvent::new(self.actor.clone(), action).source(self.source)
    }

    /// Requires an admin token with one of `roles`.
    pub fn require_admin(&self, roles: &[Role]) -> Result<Role, ApiError> {
        match &self.result {
            Err(f) => Err(ApiError::Unauthorized(*f)),
            Ok(Principal::Admin { role, .. }) if roles.contains(role) => Ok(*role),
            Ok(_) => Err(ApiError::Forbidden),
        }
    }

    /// Requires a proxy client certificate.
    pub fn require_proxy(&self) -> Result<ProxyName, ApiError> {
        match &self.result {
            Err(f) => Err(ApiError::Unauthorized(*f)),
            Ok(Principal::Proxy(p)) => Ok(p.clone()),
            Ok(_) => Err(ApiError::Forbidden),
        }
    }

    /// Requires any authenticated caller.
    pub fn require_any(&self) -> Result<&Principal, ApiError> {
        self.result.as_ref().map_err(|f| ApiError::Unauthorized(*f))
    }
}

async fn authenticate(parts: &Parts, state: &AppState) -> Caller {
    let source = parts.extensions.get::<PeerAddr>().map(|a| a.0);
    let mut caller = authenticate_inner(parts, state).await;
    caller.source = source;
    caller
}

async fn authenticate_inner(parts: &Parts, state: &AppState) -> Caller {
    let peer = parts
        .extensions
        .get::<PeerCert>()
        .cloned()
        .unwrap_or(PeerCert::None);
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        let presented = value
            .to_str()
            .ok()
            .and_then(|s| s.strip_prefix("Bearer "))
            .map(|s| Zeroizing::new(s.trim().to_owned()));
        let Some(presented) = presented else {
            return Caller {
                result: Err(AuthFailure::Invalid),
                actor: "invalid-authorization".into(),
                source: None,
            };
        };
        let Some((id, _)) = tokens::parse(&presented) else {
            return Caller {
                result: Err(AuthFailure::Invalid),
                actor: "invalid-token".into(),
                source: None,
            };
        };
        let id = id.to_owned();
        let lookup_id = id.clone();
        let rec = state.blocking(move |s, _| s.token(&lookup_id)).await;
        let result = match rec {
            Ok(Some(rec)) => match tokens::parse(&presented) {
                Some((_, secret)) if tokens::verify(&rec, secret) => Ok(Principal::Admin {
                    token_id: rec.id.clone(),
                    role: rec.role,
                }),
                _ => Err(AuthFailure::Invalid),
            },
            _ => Err(AuthFailure::Invalid),
        };
        let actor = match &result {
            Ok(p) => p.audit_actor(),
            Err(_) => format!("invalid-token:{id}"),
        };
        return Caller {
            result,
            actor,
            source: None,
        };
    }
    match peer {
        PeerCert::Proxy(p) => {
            let principal = Principal::Proxy(p);
            Caller {
                actor: principal.audit_actor(),
                result: Ok(principal),
                source: None,
            }
        }
        PeerCert::Unusable => Caller {
            result: Err(AuthFailure::Invalid),
            actor: "invalid-certificate-name".into(),
            source: None,
        },
        PeerCert::None => Caller {
            result: Err(AuthFailure::Missing),
            actor: "anonymous".into(),
            source: None,
        },
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(authenticate(parts, state).await)
    }
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

async fn fallback(
    State(st): State<AppState>,
    caller: Caller,
    method: Method,
    uri: Uri,
) -> Response {
    let ev = caller
        .event("unknown_route")
        .detail(format!("{method} {}", uri.path()));
    let res: Result<(StatusCode, ()), ApiError> = match caller.require_any() {
        Err(e) => Err(e),
        Ok(_) => Err(ApiError::NotFound),
    };
    st.finish(ev, res).await
}

/// Percent-decodes a path; `None` when the result is not UTF-8 (a router parameter could not
/// be extracted from it).
fn decoded_path_is_utf8(path: &str) -> bool {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |j: usize| b.get(j).and_then(|h| (*h as char).to_digit(16));
        match (c, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap_or(0));
                i += 3;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&out).is_ok()
}

/// Requests whose path does not decode to UTF-8 are answered 400 here, and audited like every
/// other failure (axum's path extractor would reject them before any handler runs).
async fn reject_non_utf8_path(
    State(st): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if decoded_path_is_utf8(req.uri().path()) {
        return next.run(req).await;
    }
    let (parts, _body) = req.into_parts();
    let caller = authenticate(&parts, &st).await;
    // The raw path is percent-encoded ASCII: it is recorded exactly as received.
    let ev = caller
        .event("invalid_path")
        .detail(format!("{} {}", parts.method, parts.uri.path()));
    let res: Result<(StatusCode, ()), ApiError> = match caller.require_any() {
        Err(e) => Err(e),
        Ok(_) => Err(ApiError::BadRequest(
            "the request path is not valid UTF-8 after percent-decoding".into(),
        )),
    };
    st.finish(ev, res).await
}

/// Builds the router with all `/v1` routes.
pub fn router(state: AppState) -> Router {
    use control_plane as cp;
    use data_plane as dp;
    Router::new()
        .route("/v1/health", get(health))
        .route(
            "/v1/keyrings",
            get(cp::list_keyrings).post(cp::create_keyring),
        )
        .route("/v1/keyrings/{name}", get(dp::get_keyring))
        .route("/v1/keyrings/{name}/rotate", post(cp::rotate))
        .route(
            "/v1/keyrings/{name}/min-decryption-version",
            put(cp::set_min_version),
        )
        .route(
            "/v1/keyrings/{name}/versions/{version}/material",
            get(dp::get_material),
        )
        .route(
            "/v1/keyrings/{name}/index/{generation}/material",
            get(dp::get_index_material),
        )
        .route("/v1/keyrings/{name}/index/rotate", post(cp::index_rotate))
        .route("/v1/keyrings/{name}/index/cutover", post(cp::index_cutover))
        .route("/v1/keyrings/{name}/index/finish", post(cp::index_finish))
        .route(
            "/v1/keyrings/{name}/index/rotation",
            get(cp::index_rotation_status),
        )
        .route("/v1/keyrings/{name}/index/confirm", post(dp::index_confirm))
        .route(
            "/v1/keyrings/{name}/index/passes",
            post(dp::index_pass_start),
        )
        .route(
            "/v1/keyrings/{name}/index/passes/{pass}",
            post(dp::index_pass_report),
        )
        .route(
            "/v1/keyrings/{name}/versions/{version}/{action}",
            post(cp::version_action),
        )
        .route("/v1/changes", get(dp::changes))
        .route("/v1/tokens", get(cp::list_tokens).post(cp::create_token))
        .route("/v1/tokens/{id}", axum::routing::delete(cp::revoke_token))
        .route("/v1/proxies", get(cp::list_proxies))
        .route(
            "/v1/proxies/{name}",
            put(cp::set_proxy).delete(cp::delete_proxy),
        )
        .route("/v1/audit", get(cp::audit_list))
        .route("/v1/audit/verify", get(cp::audit_verify))
        .fallback(fallback)
        .method_not_allowed_fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            reject_non_utf8_path,
        ))
        .with_state(state)
}

/// Parses a version path segment.
pub(crate) fn parse_version(s: &str) -> Result<u32, ApiError> {
    match s.parse::<u32>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(ApiError::BadRequest(
            "version must be a positive integer".into(),
        )),
    }
}

/// Parses `a=1&b=2` query strings into known numeric parameters; unknown keys are rejected.
pub(crate) fn parse_query(
    raw: Option<&str>,
    allowed: &[&str],
) -> Result<Vec<(String, u64)>, ApiError> {
    let mut out = Vec::new();
    let Some(raw) = raw else { return Ok(out) };
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| ApiError::BadRequest(format!("bad query parameter {pair:?}")))?;
        if !allowed.contains(&k) {
            return Err(ApiError::BadRequest(format!(
                "unknown query parameter {k:?}"
            )));
        }
        let n = v
            .parse::<u64>()
            .map_err(|_| ApiError::BadRequest(format!("query parameter {k} must be a number")))?;
        out.push((k.to_owned(), n));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::decoded_path_is_utf8;

    #[test]
    fn utf8_paths() {
        assert!(decoded_path_is_utf8("/v1/keyrings/abc"));
        assert!(decoded_path_is_utf8("/v1/keyrings/%C3%A4%1b"));
        assert!(decoded_path_is_utf8("/v1/keyrings/%zz%"));
        assert!(!decoded_path_is_utf8("/v1/keyrings/%ff"));
        assert!(!decoded_path_is_utf8("/v1/keyrings/%C3"));
    }
}
