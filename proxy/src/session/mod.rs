//! One client connection from accept to close: client startup and authentication, upstream
//! connect and login, cancel-key registration, then the relay.

pub mod admission;
pub mod intercept;
mod relay;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

pub use intercept::{
    Frame, InterceptError, InterceptorFactory, MessageInterceptor, Outbox, PassThrough,
    SessionInfo, TagSet,
};
use relay::{Relay, RelayEnd};

use crate::client::{self, uniform_auth_error, ClientStart};
use crate::protocol::messages::{self, Severity};
use crate::server::Shared;
use crate::upstream::auth::{login, Credentials};
use crate::upstream::UpstreamError;

/// How long the FATAL message of a failed start-up may take to send.
const FATAL_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs one connection to completion. Never panics on client or upstream input; every failure
/// ends only this connection.
///
/// Until it has authenticated, the connection holds a start-up slot (see [`admission`]): at most
/// `limits.startup_timeout_ms` in all, and less when newer connections need the slot. A session
/// slot (`limits.max_connections`) is taken only once the client has authenticated.
pub async fn run(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    shared.metrics.connection_opened();
    let (mut slot, evicted) = shared.startup.admit();
    if evicted > 0 {
        shared.metrics.add_startup_evictions(evicted);
    }
    let started = tokio::select! {
        r = tokio::time::timeout(shared.config.startup_timeout(), client::accept(tcp, &shared)) => r.ok(),
        () = slot.evicted() => {
            debug!(%peer, "client start-up closed: its start-up slot went to a newer connection");
            shared.metrics.connection_closed();
            return;
        }
    };
    drop(slot);
    let Some(started) = started else {
        debug!(%peer, "client startup timed out");
        shared.metrics.add_startup_timeout();
        shared.metrics.connection_closed();
        return;
    };
    let start = match started {
        Err(fail) => {
            let (code, message) = fail.error.to_client(fail.user.as_deref());
            match &fail.error {
                client::ClientError::AuthFailed { .. }
                | client::ClientError::Scram(crate::client::auth_scram::ScramError::BadProof) => {
                    shared.metrics.add_auth_failure();
                    info!(%peer, user = fail.user.as_deref().unwrap_or(""), reason = %fail.error, "login failed");
                }
                client::ClientError::Protocol(crate::protocol::ProtocolError::Truncated) => {
                    debug!(%peer, "client closed during startup");
                }
                _ => {
                    shared.metrics.add_protocol_error();
                    warn!(%peer, error = %fail.error, "client rejected during startup");
                }
            }
            if let Some(mut conn) = fail.conn {
                // Outside the start-up slot: bounded, for a client that does not read.
                let _ = tokio::time::timeout(
                    FATAL_SEND_TIMEOUT,
                    client::send_fatal(&mut conn, code, &message),
                )
                .await;
            }
            shared.metrics.connection_closed();
            return;
        }
        Ok(s) => s,
    };
    match start {
        ClientStart::Cancel { pid, secret } => {
            if let Some((upid, usecret)) = shared.cancel.lookup(pid, secret) {
                debug!(%peer, "forwarding cancel request");
                if let Err(e) = shared.upstream.cancel(upid, usecret).await {
                    warn!(%peer, error = %e, "cancel request to upstream failed");
                }
            } else {
                debug!(%peer, "cancel request with an unknown key ignored");
            }
        }
        ClientStart::Login(mut login_info) => {
            let Ok(_permit) = shared.conn_limit.clone().try_acquire_owned() else {
                warn!(%peer, user = %login_info.user, "login refused: too many connections");
                client::send_fatal(
                    &mut login_info.conn,
                    "53300",
                    "sorry, too many clients already",
                )
                .await;
                shared.metrics.connection_closed();
                return;
            };
            serve(login_info, peer, &shared).await;
        }
    }
    shared.metrics.connection_closed();
}

async fn serve(login_info: client::ClientLogin, peer: SocketAddr, shared: &Shared) {
    let client::ClientLogin {
        mut conn,
        user,
        database,
        params,
        server_final,
    } = login_info;
    let Some(u) = shared.config.users.get(&user) else {
        client::send_fatal(&mut conn, "28P01", &uniform_auth_error(&user)).await;
        return;
    };
    let creds = Credentials {
        user: &u.upstream_user,
        password: u.upstream_password.as_ref(),
        database: &database,
        params: &params,
    };
    let up = tokio::time::timeout(shared.config.connect_timeout(), async {
        let c = shared.upstream.connect().await?;
        login(c, &creds).await
    })
    .await
    .unwrap_or(Err(UpstreamError::Timeout));
    let mut up = match up {
        Ok(up) => up,
        Err(e) if e.is_login_failure() => {
            shared.metrics.add_auth_failure();
            info!(%peer, %user, reason = %e, "login failed upstream");
            client::send_fatal(&mut conn, "28P01", &uniform_auth_error(&user)).await;
            return;
        }
        Err(UpstreamError::Rejected(f)) => {
            warn!(%peer, %user, code = %f.code, message = %f.message, "upstream refused the connection");
            let code = if f.code.len() == 5 {
                f.code.clone()
            } else {
                "08006".into()
            };
            client::send_fatal(&mut conn, &code, &f.message).await;
            return;
        }
        Err(e) => {
            warn!(%peer, %user, error = %e, "upstream unavailable");
            client::send_fatal(&mut conn, "08006", "upstream server unavailable").await;
            return;
        }
    };
    let key = match shared.cancel.register(up.key) {
        Ok(k) => k,
        Err(e) => {
            warn!(error = %e, "cannot create a cancel key");
            client::send_fatal(&mut conn, "XX000", "internal error").await;
            return;
        }
    };
    // The session's real settings, before the client can send anything (an encrypting
    // session analyses its first statement with them).
    let probe = match shared.interceptors.startup_probe(&database) {
        None => Vec::new(),
        Some((sql, columns)) => {
            let run = crate::upstream::simple_query::run_query(&mut up.conn, sql);
            match tokio::time::timeout(shared.config.connect_timeout(), run).await {
                Ok(Ok(results)) => {
                    let row = results
                        .into_iter()
                        .next()
                        .and_then(|rows| rows.into_iter().next())
                        .unwrap_or_default();
                    columns
                        .iter()
                        .zip(row)
                        .filter_map(|(c, v)| v.map(|v| ((*c).to_owned(), v)))
                        .collect()
                }
                Ok(Err(e)) => {
                    warn!(%peer, %user, error = %e, "reading the session's settings failed");
                    client::send_fatal(&mut conn, "08006", "upstream session set-up failed").await;
                    return;
                }
                Err(_) => {
                    warn!(%peer, %user, "reading the session's settings timed out");
                    client::send_fatal(&mut conn, "08006", "upstream session set-up failed").await;
                    return;
                }
            }
        }
    };
    let mut out = BytesMut::with_capacity(512);
    client::finish_login(
        &mut out,
        &server_final,
        &up.startup_messages,
        key.pid,
        key.secret,
    );
    if conn.write_all(&out).await.is_err() || conn.flush().await.is_err() {
        return;
    }
    drop(out);
    let server_params = parameter_statuses(&up.startup_messages);
    drop(up.startup_messages);
    debug!(%peer, %user, %database, "session started");
    let info = SessionInfo {
        user: user.clone(),
        upstream_user: u.upstream_user.clone(),
        database,
        params,
        server_params,
        probe,
    };
    let mut interceptor = shared.interceptors.create(&info);
    let end = Relay {
        client: &mut conn,
        upstream: &mut up.conn,
        interceptor: interceptor.as_mut(),
        metrics: &shared.metrics,
        max_message_bytes: shared.config.config.limits.max_message_bytes,
        shutdown: shared.shutdown.listen(),
        grace: std::time::Duration::from_secs(shared.config.config.shutdown.grace_seconds),
        pid_map: up.key.map(|(upid, _)| (upid, key.pid)),
    }
    .run()
    .await;
    drop(key);
    match end {
        RelayEnd::ClientClosed => {
            let mut b = BytesMut::new();
            messages::terminate(&mut b);
            let _ = up.conn.write_all(&b).await;
            debug!(%peer, %user, "session ended by client");
        }
        RelayEnd::UpstreamClosed { reported } => {
            info!(%peer, %user, "upstream closed the connection");
            if !reported {
                client::send_fatal(
                    &mut conn,
                    "08006",
                    "upstream server closed the connection unexpectedly",
                )
                .await;
            }
        }
        RelayEnd::UpstreamIo(e) => {
            info!(%peer, %user, error = %e, "upstream connection lost");
            client::send_fatal(&mut conn, "08006", "upstream server connection lost").await;
        }
        RelayEnd::ClientIo(e) => {
            debug!(%peer, %user, error = %e, "client connection lost");
        }
        RelayEnd::ClientProtocol(e) => {
            shared.metrics.add_protocol_error();
            warn!(%peer, %user, error = %e, "client protocol violation; closing");
            let msg = match e {
                crate::protocol::ProtocolError::BadLength { .. } => {
                    "invalid message length".to_string()
                }
                other => format!("protocol violation: {other}"),
            };
            client::send_fatal(&mut conn, "08P01", &msg).await;
        }
        RelayEnd::UpstreamProtocol(e) => {
            shared.metrics.add_protocol_error();
            warn!(%peer, %user, error = %e, "upstream protocol violation; closing");
            client::send_fatal(&mut conn, "08P01", "upstream protocol violation").await;
        }
        RelayEnd::Intercept(e) => {
            warn!(%peer, %user, code = e.code, error = %e.message, "session ended by the interceptor");
            client::send_fatal(&mut conn, e.code, &e.message).await;
        }
        RelayEnd::Shutdown => {
            info!(%peer, %user, "closing session for shutdown");
            let mut b = BytesMut::new();
            messages::terminate(&mut b);
            let _ = up.conn.write_all(&b).await;
            let mut e = BytesMut::new();
            messages::error_response(
                &mut e,
                Severity::Fatal,
                "57P01",
                "terminating connection due to administrator command",
            );
            let _ = conn.write_all(&e).await;
            let _ = conn.flush().await;
            let _ = conn.shutdown().await;
        }
    }
}

/// The `(name, value)` pairs of the ParameterStatus messages in `raw` (whole messages: tag,
/// length, body); anything else in it is skipped.
fn parameter_statuses(raw: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let (Some(&tag), Some(len)) = (
        rest.first(),
        rest.get(1..5)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes),
    ) {
        let end = 1 + len as usize;
        let Some(body) = rest.get(5..end) else {
            break;
        };
        if tag == b'S' {
            let mut parts = body.split(|b| *b == 0);
            if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
                out.push((
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                ));
            }
        }
        rest = rest.get(end..).unwrap_or_default();
    }
    out
}
