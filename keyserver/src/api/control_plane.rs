//! Control plane: keyring lifecycle, tokens, proxy grants and the audit log. Bearer admin
//! tokens only; no endpoint here ever returns key material.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::{parse_query, parse_version, ApiError, AppState, Caller};
use crate::auth::tokens;
use crate::model::{
    AuditList, CreateKeyringRequest, CreateTokenRequest, CreatedToken, KeyringList, KeyringName,
    ProxyList, ProxyName, Role, SetMinVersionRequest, SetProxyRequest, TokenInfo, TokenList,
};
use crate::store::{Access, TokenRecord, VersionAction};
use crate::util::{now_rfc3339, now_unix};

const ADMIN: &[Role] = &[Role::KeyAdmin];
const READERS: &[Role] = &[Role::KeyAdmin, Role::Auditor];
const AUDITOR: &[Role] = &[Role::Auditor];
/// Longest allowed token lifetime via `expires_in_secs` (10 years).
const MAX_TOKEN_LIFETIME_SECS: u64 = 10 * 365 * 24 * 3600;

fn keyring_name(s: &str) -> Result<KeyringName, ApiError> {
    KeyringName::parse(s).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn proxy_name(s: &str) -> Result<ProxyName, ApiError> {
    ProxyName::parse(s).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// `GET /v1/keyrings` (key-admin, auditor).
pub async fn list_keyrings(State(st): State<AppState>, caller: Caller) -> Response {
    let ev = caller.event("keyring.list");
    let res = async {
        caller.require_admin(READERS)?;
        let ev = ev.clone();
        let keyrings = st.blocking(move |s, _| s.list_keyrings(&ev)).await?;
        Ok((StatusCode::OK, KeyringList { keyrings }))
    }
    .await;
    st.finish(ev, res).await
}

/// `POST /v1/keyrings` `{"name": "..."}` (key-admin).
pub async fn create_keyring(State(st): State<AppState>, caller: Caller, body: Body) -> Response {
    let mut ev = caller.event("keyring.create");
    let res = async {
        caller.require_admin(ADMIN)?;
        let req: CreateKeyringRequest = st.read_json(body).await?;
        ev = ev.clone().keyring(&req.name);
        let name = keyring_name(&req.name)?;
        let ev = ev.clone();
        let meta = st
            .blocking(move |s, root| s.create_keyring(&name, root, &ev))
            .await?;
        st.notify_change(meta.revision);
        Ok((StatusCode::CREATED, meta))
    }
    .await;
    st.finish(ev, res).await
}

/// `POST /v1/keyrings/{name}/rotate` (key-admin).
pub async fn rotate(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Response {
    let ev = caller.event("keyring.rotate").keyring(&name);
    let res = async {
        caller.require_admin(ADMIN)?;
        let name = keyring_name(&name)?;
        let ev = ev.clone();
        let meta = st
            .blocking(move |s, root| s.rotate(&name, root, &ev))
            .await?;
        st.notify_change(meta.revision);
        Ok((StatusCode::OK, meta))
    }
    .await;
    st.finish(ev, res).await
}

/// Which step of a blind-index key rotation an admin asks for.
#[derive(Debug, Clone, Copy)]
enum IndexStep {
    Start,
    Cutover,
    Finish,
}

async fn index_step(st: AppState, caller: Caller, name: String, step: IndexStep) -> Response {
    let action = match step {
        IndexStep::Start => "index.rotate",
        IndexStep::Cutover => "index.cutover",
        IndexStep::Finish => "index.finish",
    };
    let ev = caller.event(action).keyring(&name);
    let res = async {
        caller.require_admin(ADMIN)?;
        let name = keyring_name(&name)?;
        let ev = ev.clone();
        let meta = st
            .blocking(move |s, root| match step {
                IndexStep::Start => s.index_rotate_start(&name, root, &ev),
                IndexStep::Cutover => s.index_cutover(&name, &ev),
                IndexStep::Finish => s.index_finish(&name, &ev),
            })
            .await?;
        st.notify_change(meta.revision);
        Ok((StatusCode::OK, meta))
    }
    .await;
    st.finish(ev, res).await
}

/// `POST /v1/keyrings/{name}/index/rotate` (key-admin): starts a blind-index key rotation
/// (generation g+1 `next`, phase `dual`); 409 when one is in progress.
pub async fn index_rotate(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Response {
    index_step(st, caller, name, IndexStep::Start).await
}

/// `POST /v1/keyrings/{name}/index/cutover` (key-admin): 409 saying what is missing unless every
/// granted proxy confirmed phase `dual` and a complete re-index pass started after that.
pub async fn index_cutover(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Response {
    index_step(st, caller, name, IndexStep::Cutover).await
}

/// `POST /v1/keyrings/{name}/index/finish` (key-admin): gated like the cut-over, on phase
/// `cutover` and a complete compaction pass.
pub async fn index_finish(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Response {
    index_step(st, caller, name, IndexStep::Finish).await
}

/// `GET /v1/keyrings/{name}/index/rotation` (key-admin, auditor): the rotation, the granted
/// proxies' confirmations and the passes.
pub async fn index_rotation_status(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Response {
    let ev = caller.event("index.rotation.read").keyring(&name);
    let res = async {
        caller.require_admin(READERS)?;
        let name = keyring_name(&name)?;
        let ev = ev.clone();
        let status = st
            .blocking(move |s, _| s.index_rotation_status(&name, &ev))
            .await?;
        Ok((StatusCode::OK, status))
    }
    .await;
    st.finish(ev, res).await
}

/// `POST /v1/keyrings/{name}/versions/{version}/{disable|enable|destroy}` (key-admin).
pub async fn version_action(
    State(st): State<AppState>,
    caller: Caller,
    Path((name, version, action)): Path<(String, String, String)>,
) -> Response {
    let known = matches!(action.as_str(), "disable" | "enable" | "destroy");
    let mut ev = caller
        .event(if known {
            "version.change"
        } else {
            "unknown_route"
        })
        .keyring(&name)
        .detail(&action);
    if let Ok(v) = version.parse::<u32>() {
        ev = ev.version(v);
    }
    let res = async {
        caller.require_admin(ADMIN)?;
        let action = match action.as_str() {
            "disable" => VersionAction::Disable,
            "enable" => VersionAction::Enable,
            "destroy" => VersionAction::Destroy,
            _ => return Err(ApiError::NotFound),
        };
        let name = keyring_name(&name)?;
        let version = parse_version(&version)?;
        let ev = ev.clone();
        let meta = st
            .blocking(move |s, _| s.set_version_state(&name, version, action, &ev))
            .await?;
        st.notify_change(meta.revision);
        Ok((StatusCode::OK, meta))
    }
    .await;
    st.finish(ev, res).await
}

/// `PUT /v1/keyrings/{name}/min-decryption-version` `{"min_decryption_version": N}` (key-admin).
pub async fn set_min_version(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let mut ev = caller
        .event("keyring.set_min_decryption_version")
        .keyring(&name);
    let res = async {
        caller.require_admin(ADMIN)?;
        let name = keyring_name(&name)?;
        let req: SetMinVersionRequest = st.read_json(body).await?;
        ev = ev.clone().version(req.min_decryption_version);
        let ev = ev.clone();
        let meta = st
            .blocking(move |s, _| {
                s.set_min_decryption_version(&name, req.min_decryption_version, &ev)
            })
            .await?;
        st.notify_change(meta.revision);
        Ok((StatusCode::OK, meta))
    }
    .await;
    st.finish(ev, res).await
}

/// `POST /v1/tokens` `{"name", "role", "expires_in_secs"?}` (key-admin). The token is shown once.
pub async fn create_token(State(st): State<AppState>, caller: Caller, body: Body) -> Response {
    let mut ev = caller.event("token.create");
    let res = async {
        caller.require_admin(ADMIN)?;
        let req: CreateTokenRequest = st.read_json(body).await?;
        if req.name.trim().is_empty() || req.name.len() > 128 {
            return Err(ApiError::BadRequest(
                "token name must be 1 to 128 characters".into(),
            ));
        }
        let expires_at = match req.expires_in_secs {
            None => None,
            Some(0) => return Err(ApiError::BadRequest("expires_in_secs must be > 0".into())),
            Some(s) if s > MAX_TOKEN_LIFETIME_SECS => {
                return Err(ApiError::BadRequest("expires_in_secs is too large".into()))
            }
            Some(s) => Some(now_unix() + i64::try_from(s).map_err(|_| ApiError::Internal)?),
        };
        let new = tokens::generate().map_err(|_| ApiError::Internal)?;
        let rec = TokenRecord {
            id: new.id.clone(),
            name: req.name.clone(),
            role: req.role,
            secret_hash: new.secret_hash,
            created_at: now_rfc3339(),
            expires_at,
            revoked: false,
        };
        ev = ev
            .clone()
            .detail(format!("id={} role={}", rec.id, rec.role.as_str()));
        let info = TokenInfo {
            id: rec.id.clone(),
            name: rec.name.clone(),
            role: rec.role,
            created_at: rec.created_at.clone(),
            expires_at,
            revoked: false,
        };
        let ev = ev.clone();
        st.blocking(move |s, _| s.create_token(&rec, &ev)).await?;
        Ok((
            StatusCode::CREATED,
            CreatedToken {
                info,
                token: new.token.as_str().to_owned(),
            },
        ))
    }
    .await;
    st.finish(ev, res).await
}

/// `GET /v1/tokens` (key-admin).
pub async fn list_tokens(State(st): State<AppState>, caller: Caller) -> Response {
    let ev = caller.event("token.list");
    let res = async {
        caller.require_admin(ADMIN)?;
        let ev = ev.clone();
        let tokens = st.blocking(move |s, _| s.list_tokens(&ev)).await?;
        Ok((StatusCode::OK, TokenList { tokens }))
    }
    .await;
    st.finish(ev, res).await
}

/// `DELETE /v1/tokens/{id}` (key-admin): revokes the token.
pub async fn revoke_token(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    let ev = caller.event("token.revoke").detail(format!("id={id}"));
    let res = async {
        caller.require_admin(ADMIN)?;
        if id.len() != 36 || !id.starts_with("tok_") {
            return Err(ApiError::BadRequest(
                "token id must look like tok_<32 hex digits>".into(),
            ));
        }
        let ev = ev.clone();
        let info = st.blocking(move |s, _| s.revoke_token(&id, &ev)).await?;
        Ok((StatusCode::OK, info))
    }
    .await;
    st.finish(ev, res).await
}

/// `PUT /v1/proxies/{name}` `{"keyrings": [...]}` (key-admin): creates or replaces grants.
pub async fn set_proxy(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let mut ev = caller.event("proxy.set").detail(format!("proxy={name}"));
    let res = async {
        caller.require_admin(ADMIN)?;
        let name = proxy_name(&name)?;
        let req: SetProxyRequest = st.read_json(body).await?;
        if req.keyrings.len() > 1000 {
            return Err(ApiError::BadRequest("too many keyrings".into()));
        }
        let keyrings = req
            .keyrings
            .iter()
            .map(|k| keyring_name(k))
            .collect::<Result<Vec<_>, _>>()?;
        ev = ev
            .clone()
            .detail(format!("proxy={name} keyrings={}", req.keyrings.join(",")));
        let ev = ev.clone();
        let info = st
            .blocking(move |s, _| s.set_proxy(&name, &keyrings, &ev))
            .await?;
        if let Ok(now) = st
            .blocking(|s, _| s.changes_since(Access::Admin, u64::MAX))
            .await
        {
            st.notify_change(now.revision);
        }
        Ok((StatusCode::OK, info))
    }
    .await;
    st.finish(ev, res).await
}

/// `GET /v1/proxies` (key-admin, auditor).
pub async fn list_proxies(State(st): State<AppState>, caller: Caller) -> Response {
    let ev = caller.event("proxy.list");
    let res = async {
        caller.require_admin(READERS)?;
        let ev = ev.clone();
        let proxies = st.blocking(move |s, _| s.list_proxies(&ev)).await?;
        Ok((StatusCode::OK, ProxyList { proxies }))
    }
    .await;
    st.finish(ev, res).await
}

/// `DELETE /v1/proxies/{name}` (key-admin): removes the proxy and all its grants.
pub async fn delete_proxy(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Response {
    let ev = caller.event("proxy.delete").detail(format!("proxy={name}"));
    let res = async {
        caller.require_admin(ADMIN)?;
        let name = proxy_name(&name)?;
        let ev = ev.clone();
        st.blocking(move |s, _| s.delete_proxy(&name, &ev)).await?;
        if let Ok(now) = st
            .blocking(|s, _| s.changes_since(Access::Admin, u64::MAX))
            .await
        {
            st.notify_change(now.revision);
        }
        Ok((StatusCode::OK, serde_json::json!({"deleted": true})))
    }
    .await;
    st.finish(ev, res).await
}

/// `GET /v1/audit?after=SEQ&limit=N` (auditor): records with seq > after (limit ≤ 1000).
pub async fn audit_list(
    State(st): State<AppState>,
    caller: Caller,
    RawQuery(q): RawQuery,
) -> Response {
    let ev = caller.event("audit.read");
    let res = async {
        caller.require_admin(AUDITOR)?;
        let mut after = 0;
        let mut limit = 100u32;
        for (k, v) in parse_query(q.as_deref(), &["after", "limit"])? {
            if k == "after" {
                after = v;
            } else {
                limit = u32::try_from(v.clamp(1, 1000)).unwrap_or(1000);
            }
        }
        let ev = ev.clone();
        let records = st
            .blocking(move |s, _| s.audit_records(after, limit, Some(&ev)))
            .await?;
        Ok((StatusCode::OK, AuditList { records }))
    }
    .await;
    st.finish(ev, res).await
}

/// `GET /v1/audit/verify` (auditor): verifies the whole chain.
pub async fn audit_verify(State(st): State<AppState>, caller: Caller) -> Response {
    let ev = caller.event("audit.verify");
    let res = async {
        caller.require_admin(AUDITOR)?;
        let ev = ev.clone();
        let report = st.blocking(move |s, _| s.verify_audit(Some(&ev))).await?;
        Ok((StatusCode::OK, report))
    }
    .await;
    st.finish(ev, res).await
}
