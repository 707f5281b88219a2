//! Logging in to the upstream: StartupMessage, then trust / cleartext / md5 / SCRAM-SHA-256, then
//! the ParameterStatus, BackendKeyData and ReadyForQuery that follow.

use bytes::BytesMut;
use md5::{Digest, Md5};
use tokio::io::AsyncWriteExt;
use zeroize::Zeroizing;

use super::UpstreamError;
use crate::client::auth_scram::{ScramClient, MECHANISM};
use crate::net::Conn;
use crate::protocol::framing::{read_message, LARGE_MESSAGE_LIMIT};
use crate::protocol::messages::{self, auth, parse_error_fields, BodyReader};
use crate::protocol::ProtocolError;

/// An upstream connection ready for queries.
#[derive(Debug)]
pub struct UpstreamLogin {
    /// The stream.
    pub conn: Conn,
    /// ParameterStatus and NoticeResponse messages, raw, to relay to the client in order.
    pub startup_messages: BytesMut,
    /// The upstream's BackendKeyData, when it sent one.
    pub key: Option<(i32, i32)>,
}

/// What the proxy logs in with.
pub struct Credentials<'a> {
    /// Upstream user.
    pub user: &'a str,
    /// Upstream password, if any.
    pub password: Option<&'a Zeroizing<String>>,
    /// Database.
    pub database: &'a str,
    /// Other startup parameters from the client.
    pub params: &'a [(String, String)],
}

async fn send(conn: &mut Conn, buf: &[u8]) -> Result<(), UpstreamError> {
    conn.write_all(buf).await.map_err(ProtocolError::Io)?;
    conn.flush().await.map_err(ProtocolError::Io)?;
    Ok(())
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the upstream startup on `conn`.
pub async fn login(
    mut conn: Conn,
    creds: &Credentials<'_>,
) -> Result<UpstreamLogin, UpstreamError> {
    let mut out = BytesMut::new();
    let params = [("user", creds.user), ("database", creds.database)]
        .into_iter()
        .chain(creds.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    messages::startup_message(&mut out, params);
    send(&mut conn, &out).await?;
    out.clear();
    let limit = |_| LARGE_MESSAGE_LIMIT;
    let mut scram: Option<ScramClient> = None;
    let mut startup_messages = BytesMut::new();
    let mut key = None;
    let password = || {
        creds.password.ok_or_else(|| {
            UpstreamError::Auth("upstream asks for a password; none configured".into())
        })
    };
    loop {
        let msg = read_message(&mut conn, limit).await?;
        match msg.tag {
            b'R' => {
                let mut r = BodyReader::new(&msg.body, "Authentication");
                let code = r.i32()?;
                match code {
                    auth::OK => {}
                    auth::CLEARTEXT => {
                        let pw = password()?;
                        let mut data = Zeroizing::new(pw.as_bytes().to_vec());
                        data.push(0);
                        messages::password_message(&mut out, &data);
                        send(&mut conn, &out).await?;
                        out.clear();
                    }
                    auth::MD5 => {
                        let pw = password()?;
                        let salt = r.bytes(4)?;
                        let inner =
                            Zeroizing::new(md5_hex(&[pw.as_bytes(), creds.user.as_bytes()]));
                        let outer = format!("md5{}\0", md5_hex(&[inner.as_bytes(), salt]));
                        messages::password_message(&mut out, outer.as_bytes());
                        send(&mut conn, &out).await?;
                        out.clear();
                    }
                    auth::SASL => {
                        let mut offered = false;
                        loop {
                            let m = r.cstr()?;
                            if m.is_empty() {
                                break;
                            }
                            offered |= m == MECHANISM;
                        }
                        if !offered {
                            return Err(UpstreamError::Auth(
                                "upstream offers no SCRAM-SHA-256".into(),
                            ));
                        }
                        let client = ScramClient::new(password()?.as_bytes())
                            .map_err(|e| UpstreamError::Auth(e.to_string()))?;
                        messages::sasl_initial_response(
                            &mut out,
                            MECHANISM,
                            client.client_first().as_bytes(),
                        );
                        send(&mut conn, &out).await?;
                        out.clear();
                        scram = Some(client);
                    }
                    auth::SASL_CONTINUE => {
                        let client = scram.as_mut().ok_or(ProtocolError::Unexpected {
                            tag: 'R',
                            phase: "SASL",
                        })?;
                        let fin = client
                            .server_first(r.remaining())
                            .map_err(|e| UpstreamError::Auth(e.to_string()))?;
                        messages::password_message(&mut out, fin.as_bytes());
                        send(&mut conn, &out).await?;
                        out.clear();
                    }
                    auth::SASL_FINAL => {
                        let client = scram.as_ref().ok_or(ProtocolError::Unexpected {
                            tag: 'R',
                            phase: "SASL",
                        })?;
                        client.server_final(r.remaining()).map_err(|_| {
                            UpstreamError::Auth("upstream server signature does not verify".into())
                        })?;
                    }
                    other => {
                        return Err(UpstreamError::Auth(format!(
                            "unsupported upstream authentication request {other}"
                        )))
                    }
                }
            }
            b'S' | b'N' => {
                messages::put_message(&mut startup_messages, msg.tag, |b| {
                    b.extend_from_slice(&msg.body)
                });
            }
            b'K' => {
                let mut r = BodyReader::new(&msg.body, "BackendKeyData");
                key = Some((r.i32()?, r.i32()?));
            }
            b'E' => {
                return Err(UpstreamError::Rejected(parse_error_fields(&msg.body)?));
            }
            b'Z' => {
                return Ok(UpstreamLogin {
                    conn,
                    startup_messages,
                    key,
                })
            }
            b'v' => {
                // We only ask for 3.0 without options, so this should not happen; ignore it.
            }
            other => {
                return Err(ProtocolError::Unexpected {
                    tag: char::from(other),
                    phase: "upstream startup",
                }
                .into())
            }
        }
    }
}
