//! Data plane: keyring metadata, key material and the change feed. Material is served only to
//! proxies (client certificate) holding a grant for the keyring.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;

use super::{parse_query, parse_version, ApiError, AppState, Caller};
use crate::auth::Principal;
use crate::model::{
    IndexConfirmRequest, IndexMaterialResponse, IndexPassReport, IndexPassRequest,
    IndexPassResponse, KeyringName, MaterialResponse,
};
use crate::store::Access;
use crate::util::random_id;

/// Longest long-poll wait for `GET /v1/changes`.
pub const MAX_WAIT_SECS: u64 = 30;

fn keyring_name(s: &str) -> Result<KeyringName, ApiError> {
    KeyringName::parse(s).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// `GET /v1/keyrings/{name}`: proxies (granted keyrings only) and admins of any role.
pub async fn get_keyring(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Response {
    let ev = caller.event("keyring.read").keyring(&name);
    let res = async {
        let principal = caller.require_any()?.clone();
        let name = keyring_name(&name)?;
        let ev = ev.clone();
        let meta = st
            .blocking(move |s, _| {
                let access = match &principal {
                    Principal::Proxy(p) => Access::Proxy(p),
                    Principal::Admin { .. } => Access::Admin,
                };
                s.keyring(access, &name, &ev)
            })
            .await?;
        Ok((StatusCode::OK, meta))
    }
    .await;
    st.finish(ev, res).await
}

/// `GET /v1/keyrings/{name}/versions/{version}/material`: proxies only.
pub async fn get_material(
    State(st): State<AppState>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    let mut ev = caller.event("material.read").keyring(&name);
    if let Ok(v) = version.parse::<u32>() {
        ev = ev.version(v);
    }
    let res = async {
        let proxy = caller.require_proxy()?;
        let name = keyring_name(&name)?;
        let version = parse_version(&version)?;
        let ev = ev.clone();
        let keyring = name.to_string();
        let m = st
            .blocking(move |s, root| s.fetch_material(&proxy, &name, version, root, &ev))
            .await?;
        Ok((
            StatusCode::OK,
            MaterialResponse {
                keyring_id: m.keyring_id.clone(),
                keyring,
                version: m.version,
                state: m.state,
                material: base64::engine::general_purpose::STANDARD.encode(m.key.expose_secret()),
            },
        ))
    }
    .await;
    st.finish(ev, res).await
}

/// `GET /v1/keyrings/{name}/index/{generation}/material`: proxies only (granted keyrings);
/// audited as `index_material.read` with the generation in the detail.
pub async fn get_index_material(
    State(st): State<AppState>,
    caller: Caller,
    Path((name, generation)): Path<(String, String)>,
) -> Response {
    let mut ev = caller.event("index_material.read").keyring(&name);
    if let Ok(g) = generation.parse::<u32>() {
        ev = ev.detail(format!("generation={g}"));
    }
    let res = async {
        let proxy = caller.require_proxy()?;
        let name = keyring_name(&name)?;
        let generation = parse_version(&generation)?;
        let ev = ev.clone();
        let keyring = name.to_string();
        let m = st
            .blocking(move |s, root| s.fetch_index_material(&proxy, &name, generation, root, &ev))
            .await?;
        Ok((
            StatusCode::OK,
            IndexMaterialResponse {
                keyring_id: m.keyring_id.clone(),
                keyring,
                generation: m.generation,
                material: base64::engine::general_purpose::STANDARD.encode(m.key.expose_secret()),
            },
        ))
    }
    .await;
    st.finish(ev, res).await
}

/// `POST /v1/keyrings/{name}/index/confirm` `{"generation", "phase"}`: proxies only (granted
/// keyrings; else the uniform 404); 409 when that is not the rotation's current phase.
pub async fn index_confirm(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let mut ev = caller.event("index_phase.confirm").keyring(&name);
    let res = async {
        let proxy = caller.require_proxy()?;
        let name = keyring_name(&name)?;
        let req: IndexConfirmRequest = st.read_json(body).await?;
        ev = ev.clone().detail(format!(
            "generation={} phase={}",
            req.generation,
            req.phase.as_str()
        ));
        let ev = ev.clone();
        st.blocking(move |s, _| s.index_confirm(&proxy, &name, req.generation, req.phase, &ev))
            .await?;
        Ok((StatusCode::OK, serde_json::json!({})))
    }
    .await;
    st.finish(ev, res).await
}

/// `POST /v1/keyrings/{name}/index/passes` `{"generation", "phase"}`: proxies only; 201 with
/// the pass id, 409 until every granted proxy confirmed the phase (counts only in the message).
pub async fn index_pass_start(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let mut ev = caller.event("index_pass.start").keyring(&name);
    let res = async {
        let proxy = caller.require_proxy()?;
        let name = keyring_name(&name)?;
        let req: IndexPassRequest = st.read_json(body).await?;
        let pass = random_id("ip").map_err(|_| ApiError::Internal)?;
        ev = ev.clone().detail(format!(
            "generation={} phase={} pass={pass}",
            req.generation,
            req.phase.as_str()
        ));
        let ev = ev.clone();
        let id = pass.clone();
        st.blocking(move |s, _| {
            s.index_pass_start(&proxy, &name, req.generation, req.phase, &id, &ev)
        })
        .await?;
        Ok((StatusCode::CREATED, IndexPassResponse { pass }))
    }
    .await;
    st.finish(ev, res).await
}

/// Whether `s` looks like a pass id (`ip_` + 32 lowercase hex digits).
fn is_pass_id(s: &str) -> bool {
    s.len() == 35
        && s.starts_with("ip_")
        && s.bytes()
            .skip(3)
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `POST /v1/keyrings/{name}/index/passes/{pass}` `{"complete", "rewritten"}`: only the proxy
/// that started the pass (any other caller, and any unknown id, gets the uniform 404); 409 when
/// the rotation moved on since the pass started.
pub async fn index_pass_report(
    State(st): State<AppState>,
    caller: Caller,
    Path((name, pass)): Path<(String, String)>,
    body: Body,
) -> Response {
    let mut ev = caller
        .event("index_pass.report")
        .keyring(&name)
        .detail(format!("pass={pass}"));
    let res = async {
        let proxy = caller.require_proxy()?;
        let name = keyring_name(&name)?;
        if !is_pass_id(&pass) {
            return Err(ApiError::NotFound);
        }
        let report: IndexPassReport = st.read_json(body).await?;
        ev = ev.clone().detail(format!(
            "pass={pass} complete={} rewritten={}",
            report.complete, report.rewritten
        ));
        let ev = ev.clone();
        st.blocking(move |s, _| s.index_pass_report(&proxy, &name, &pass, &report, &ev))
            .await?;
        Ok((StatusCode::OK, serde_json::json!({})))
    }
    .await;
    st.finish(ev, res).await
}

/// `GET /v1/changes?since=REV&wait=SECS`: keyrings visible to the caller changed after `since`;
/// with `wait`, blocks up to that many seconds (max 30) until something changes.
pub async fn changes(
    State(st): State<AppState>,
    caller: Caller,
    RawQuery(q): RawQuery,
) -> Response {
    let ev = caller.event("changes.read");
    let res = async {
        let principal = caller.require_any()?.clone();
        let mut since = 0;
        let mut wait = 0;
        for (k, v) in parse_query(q.as_deref(), &["since", "wait"])? {
            if k == "since" {
                since = v;
            } else {
                wait = v.min(MAX_WAIT_SECS);
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        let mut rx = st.subscribe_changes();
        let resp = loop {
            rx.borrow_and_update();
            let p = principal.clone();
            let resp = st
                .blocking(move |s, _| {
                    let access = match &p {
                        Principal::Proxy(p) => Access::Proxy(p),
                        Principal::Admin { .. } => Access::Admin,
                    };
                    s.changes_since(access, since)
                })
                .await?;
            if !resp.changed.is_empty()
                || resp.grants_changed
                || tokio::time::Instant::now() >= deadline
            {
                break resp;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                break resp;
            }
        };
        let ev = ev
            .clone()
            .detail(format!("since={since} revision={}", resp.revision));
        st.blocking(move |s, _| s.append_audit(&ev, "ok")).await?;
        Ok((StatusCode::OK, resp))
    }
    .await;
    st.finish(ev, res).await
}
