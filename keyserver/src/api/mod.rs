//! HTTP API: routing, caller authentication, body parsing and the audit-or-fail rule.

pub mod control_plane;
pub mod data_plane;
pub mod errors;

use std::convert::Infallible;
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
use crate::model::{Health, ProxyName, Role};
use crate::rootkey::RootKey;
use crate::store::{KeyStore, StoreError};

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

struct Inner {
    store: Arc<dyn KeyStore>,
    root: Arc<dyn RootKey>,
    changes: watch::Sender<u64>,
    max_body: usize,
}

/// Shared server state.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl AppState {
    /// Builds the state from a store and a root key (the root key must already be checked).
    pub fn new(store: Arc<dyn KeyStore>, root: Arc<dyn RootKey>, max_body: usize) -> Self {
        let (changes, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                store,
                root,
                changes,
                max_body,
            }),
        }
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
}

impl Caller {
    /// Starts an audit event for this caller.
    pub fn event(&self, action: &str) -> AuditEvent {
        AuditEvent::new(self.actor.clone(), action)
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
            };
        };
        let Some((id, _)) = tokens::parse(&presented) else {
            return Caller {
                result: Err(AuthFailure::Invalid),
                actor: "invalid-token".into(),
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
        return Caller { result, actor };
    }
    match peer {
        PeerCert::Proxy(p) => {
            let principal = Principal::Proxy(p);
            Caller {
                actor: principal.audit_actor(),
                result: Ok(principal),
            }
        }
        PeerCert::Unusable => Caller {
            result: Err(AuthFailure::Invalid),
            actor: "invalid-certificate-name".into(),
        },
        PeerCert::None => Caller {
            result: Err(AuthFailure::Missing),
            actor: "anonymous".into(),
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
