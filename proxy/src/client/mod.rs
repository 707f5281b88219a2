//! The client leg: startup packet, TLS negotiation, SCRAM-SHA-256 authentication.

pub mod auth_scram;
pub mod tls;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::ClientTlsMode;
use crate::net::Conn;
use crate::protocol::framing::{read_message, SMALL_MESSAGE_LIMIT};
use crate::protocol::messages::{self, auth, BodyReader, Severity};
use crate::protocol::startup::{is_v3_0, read_startup, StartupPacket};
use crate::protocol::ProtocolError;
use crate::server::Shared;
use auth_scram::{ScramError, ScramServer, ScramVerifier, MECHANISM};

/// Why a client could not start a session.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Protocol violation (malformed, oversized, unexpected message).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// Authentication failed (unknown user, wrong password, database not allowed, ...).
    #[error("authentication failed for user {user:?}: {reason}")]
    AuthFailed {
        /// The user name the client sent.
        user: String,
        /// The real reason (logged, never sent to the client).
        reason: String,
    },
    /// A malformed SCRAM exchange.
    #[error("SCRAM: {0}")]
    Scram(#[from] ScramError),
    /// The client did not negotiate TLS but TLS is required.
    #[error("client did not request TLS, which is required")]
    TlsRequired,
    /// The TLS handshake failed.
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    /// Startup parameters the proxy refuses.
    #[error("{0}")]
    Refused(String),
}

impl ClientError {
    /// The FATAL error sent to the client: (SQLSTATE, message).
    pub fn to_client(&self, user: Option<&str>) -> (&'static str, String) {
        match self {
            ClientError::AuthFailed { user, .. } => ("28P01", uniform_auth_error(user)),
            ClientError::Scram(ScramError::BadProof) => {
                ("28P01", uniform_auth_error(user.unwrap_or("")))
            }
            ClientError::Scram(e) => ("08P01", e.to_string()),
            ClientError::TlsRequired => ("28000", "TLS connection is required".into()),
            ClientError::Refused(m) => ("0A000", m.clone()),
            ClientError::Protocol(ProtocolError::BadLength { .. }) => {
                ("08P01", "invalid message length".into())
            }
            ClientError::Protocol(e) => ("08P01", format!("protocol violation: {e}")),
            ClientError::Tls(_) => ("08P01", "TLS handshake failed".into()),
        }
    }
}

/// The one message every failed login gets, whatever the reason.
pub fn uniform_auth_error(user: &str) -> String {
    format!("password authentication failed for user \"{user}\"")
}

/// A client that passed authentication; the proxy still owes it AuthenticationSASLFinal and
/// AuthenticationOk, sent once the upstream connection is up.
#[derive(Debug)]
pub struct ClientLogin {
    /// The stream (TLS or plain).
    pub conn: Conn,
    /// User name.
    pub user: String,
    /// Database.
    pub database: String,
    /// Startup parameters to forward upstream (without user and database).
    pub params: Vec<(String, String)>,
    /// server-final-message of the SCRAM exchange.
    pub server_final: String,
}

/// What the first packets of a connection asked for.
#[derive(Debug)]
pub enum ClientStart {
    /// A login that passed authentication.
    Login(ClientLogin),
    /// A CancelRequest.
    Cancel {
        /// Proxy-issued process id.
        pid: i32,
        /// Proxy-issued secret.
        secret: i32,
    },
}

async fn write_now(conn: &mut Conn, buf: &[u8]) -> Result<(), ProtocolError> {
    conn.write_all(buf).await?;
    conn.flush().await?;
    Ok(())
}

/// Sends a FATAL ErrorResponse, best effort.
pub async fn send_fatal(conn: &mut Conn, code: &str, message: &str) {
    let mut b = BytesMut::new();
    messages::error_response(&mut b, Severity::Fatal, code, message);
    let _ = write_now(conn, &b).await;
    let _ = conn.shutdown().await;
}

/// A failed start: the error, the stream when it is still usable for a FATAL message, and the
/// user name when the client sent one.
#[derive(Debug)]
pub struct AcceptFailure {
    /// What went wrong.
    pub error: ClientError,
    /// The stream, to send the FATAL ErrorResponse on.
    pub conn: Option<Conn>,
    /// The user name from the startup packet.
    pub user: Option<String>,
}

fn fail(error: impl Into<ClientError>, conn: Option<Conn>) -> AcceptFailure {
    AcceptFailure {
        error: error.into(),
        conn,
        user: None,
    }
}

/// Runs startup, TLS negotiation and authentication.
pub async fn accept(tcp: TcpStream, shared: &Shared) -> Result<ClientStart, AcceptFailure> {
    let mut tcp = tcp;
    let mut negotiated_encryption = false;
    let (version, params, mut conn) = loop {
        let packet = match read_startup(&mut tcp).await {
            Ok(p) => p,
            // Tell the client why, like PostgreSQL ("invalid length of startup packet").
            Err(e) => return Err(fail(e, Some(Conn::Tcp(tcp)))),
        };
        match packet {
            StartupPacket::SslRequest if !negotiated_encryption => {
                negotiated_encryption = true;
                match &shared.tls_acceptor {
                    Some(acceptor) => {
                        tcp.write_all(b"S")
                            .await
                            .map_err(|e| fail(ProtocolError::Io(e), None))?;
                        let tls = acceptor
                            .accept(tcp)
                            .await
                            .map_err(|e| fail(ClientError::Tls(e), None))?;
                        let mut conn = Conn::ServerTls(Box::new(tls));
                        match read_startup(&mut conn).await {
                            Ok(StartupPacket::Startup { version, params }) => {
                                break (version, params, conn)
                            }
                            Ok(StartupPacket::CancelRequest { pid, secret }) => {
                                return Ok(ClientStart::Cancel { pid, secret })
                            }
                            Ok(_) => {
                                return Err(fail(
                                    ProtocolError::Unexpected {
                                        tag: '\0',
                                        phase: "startup after TLS",
                                    },
                                    Some(conn),
                                ))
                            }
                            Err(e) => return Err(fail(e, Some(conn))),
                        }
                    }
                    None => tcp
                        .write_all(b"N")
                        .await
                        .map_err(|e| fail(ProtocolError::Io(e), None))?,
                }
            }
            StartupPacket::GssEncRequest if !negotiated_encryption => {
                tcp.write_all(b"N")
                    .await
                    .map_err(|e| fail(ProtocolError::Io(e), None))?;
            }
            StartupPacket::CancelRequest { pid, secret } => {
                return Ok(ClientStart::Cancel { pid, secret })
            }
            StartupPacket::Startup { version, params } => break (version, params, Conn::Tcp(tcp)),
            _ => {
                return Err(fail(
                    ProtocolError::Unexpected {
                        tag: '\0',
                        phase: "startup",
                    },
                    Some(Conn::Tcp(tcp)),
                ))
            }
        }
    };
    if shared.config.config.tls.mode == ClientTlsMode::Required && !conn.is_tls() {
        return Err(fail(ClientError::TlsRequired, Some(conn)));
    }
    let mut user = None;
    match login(&mut conn, shared, version, params, &mut user).await {
        Ok(info) => Ok(ClientStart::Login(ClientLogin {
            conn,
            user: info.user,
            database: info.database,
            params: info.params,
            server_final: info.server_final,
        })),
        Err(error) => Err(AcceptFailure {
            error,
            conn: Some(conn),
            user,
        }),
    }
}

struct LoginInfo {
    user: String,
    database: String,
    params: Vec<(String, String)>,
    server_final: String,
}

async fn login(
    conn: &mut Conn,
    shared: &Shared,
    version: u32,
    params: Vec<(String, String)>,
    user_out: &mut Option<String>,
) -> Result<LoginInfo, ClientError> {
    let mut out = BytesMut::new();
    // Protocol 3.x minor > 0 or `_pq_.` options: answer like PostgreSQL 15 does.
    let unrecognized: Vec<String> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    if !is_v3_0(version) || !unrecognized.is_empty() {
        messages::negotiate_protocol_version(&mut out, 0, &unrecognized);
    }
    let user = StartupPacket::param(&params, "user")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            ClientError::Refused("no PostgreSQL user name specified in startup packet".into())
        })?
        .to_owned();
    *user_out = Some(user.clone());
    let database = StartupPacket::param(&params, "database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_owned();
    if let Some(r) = StartupPacket::param(&params, "replication") {
        if !matches!(r, "false" | "off" | "no" | "0") {
            return Err(ClientError::Refused(
                "replication connections are not supported by pgseal-proxy".into(),
            ));
        }
    }
    let forward: Vec<(String, String)> = params
        .into_iter()
        .filter(|(k, _)| {
            !matches!(k.as_str(), "user" | "database" | "replication") && !k.starts_with("_pq_.")
        })
        .collect();

    let configured = shared.config.users.get(&user);
    let (verifier, is_mock) = match configured {
        Some(u) => (u.verifier.clone(), false),
        None => (ScramVerifier::mock(&shared.mock_secret, &user), true),
    };
    let mut scram = ScramServer::new(verifier, is_mock);

    messages::authentication_sasl(&mut out, &[MECHANISM]);
    write_now(conn, &out).await?;
    out.clear();

    let limit = |_| SMALL_MESSAGE_LIMIT;
    let msg = read_message(conn, limit).await?;
    if msg.tag != b'p' {
        return Err(ProtocolError::Unexpected {
            tag: char::from(msg.tag),
            phase: "authentication",
        }
        .into());
    }
    let mut r = BodyReader::new(&msg.body, "SASLInitialResponse");
    let mechanism = r.cstr()?;
    if mechanism != MECHANISM {
        return Err(ScramError::Unsupported("SASL mechanism").into());
    }
    let len = r.i32()?;
    let data = r.remaining();
    if usize::try_from(len).ok() != Some(data.len()) {
        return Err(ProtocolError::malformed("SASLInitialResponse").into());
    }
    let server_first = scram.client_first(data)?;
    messages::authentication(&mut out, auth::SASL_CONTINUE, server_first.as_bytes());
    write_now(conn, &out).await?;
    out.clear();

    let msg = read_message(conn, limit).await?;
    if msg.tag != b'p' {
        return Err(ProtocolError::Unexpected {
            tag: char::from(msg.tag),
            phase: "authentication",
        }
        .into());
    }
    let server_final = match scram.client_final(&msg.body) {
        Ok(f) => f,
        Err(ScramError::BadProof) => {
            return Err(ClientError::AuthFailed {
                reason: if is_mock {
                    "unknown user".into()
                } else {
                    "wrong password".into()
                },
                user,
            })
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(u) = configured {
        if let Some(dbs) = &u.databases {
            if !dbs.iter().any(|d| d == &database) {
                return Err(ClientError::AuthFailed {
                    user,
                    reason: format!("database {database:?} not allowed"),
                });
            }
        }
    }
    Ok(LoginInfo {
        user,
        database,
        params: forward,
        server_final,
    })
}

/// Completes the client's authentication after the upstream accepted the login: SASL final,
/// AuthenticationOk, the upstream's ParameterStatus (and notices), our BackendKeyData, ReadyForQuery.
pub fn finish_login(
    out: &mut BytesMut,
    server_final: &str,
    upstream_startup: &[u8],
    pid: i32,
    secret: i32,
) {
    messages::authentication(out, auth::SASL_FINAL, server_final.as_bytes());
    messages::authentication(out, auth::OK, &[]);
    out.extend_from_slice(upstream_startup);
    messages::backend_key_data(out, pid, secret);
    messages::ready_for_query(out, b'I');
}
