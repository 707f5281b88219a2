//! Opening the byte stream to the upstream server.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::UpstreamError;
use crate::client::tls::{self, TlsConfigError};
use crate::config::{UpstreamConfig, UpstreamTlsMode};
use crate::net::Conn;
use crate::protocol::messages;

/// How to reach the upstream, built once from the configuration.
#[derive(Clone)]
pub struct UpstreamTarget {
    /// Host name, IP, or unix socket directory.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS (verify-full) when set.
    pub tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl std::fmt::Debug for UpstreamTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl UpstreamTarget {
    /// Builds the target from `[upstream]` (loads the TLS material for verify-full).
    pub fn from_config(up: &UpstreamConfig) -> Result<UpstreamTarget, TlsConfigError> {
        let tls = match (up.tls, &up.ca) {
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
        Ok(UpstreamTarget {
            host: up.host.clone(),
            port: up.port,
            tls,
        })
    }

    /// Opens a stream; with TLS configured, sends SSLRequest and requires `S` (fail closed).
    pub async fn connect(&self) -> Result<Conn, UpstreamError> {
        if self.host.starts_with('/') {
            let path = format!("{}/.s.PGSQL.{}", self.host, self.port);
            let s = UnixStream::connect(path)
                .await
                .map_err(UpstreamError::Connect)?;
            return Ok(Conn::Unix(s));
        }
        let mut tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(UpstreamError::Connect)?;
        tcp.set_nodelay(true).map_err(UpstreamError::Connect)?;
        let Some((connector, name)) = &self.tls else {
            return Ok(Conn::Tcp(tcp));
        };
        let mut req = BytesMut::new();
        messages::ssl_request(&mut req);
        tcp.write_all(&req).await.map_err(UpstreamError::Connect)?;
        let answer = tcp.read_u8().await.map_err(UpstreamError::Connect)?;
        if answer != b'S' {
            return Err(UpstreamError::TlsRefused);
        }
        let tls = connector
            .connect(name.clone(), tcp)
            .await
            .map_err(UpstreamError::Tls)?;
        Ok(Conn::ClientTls(Box::new(tls)))
    }

    /// Sends a CancelRequest with the upstream's own key and waits for the server to close.
    pub async fn cancel(&self, pid: i32, secret: i32) -> Result<(), UpstreamError> {
        let mut conn = self.connect().await?;
        let mut req = BytesMut::new();
        messages::cancel_request(&mut req, pid, secret);
        conn.write_all(&req).await.map_err(UpstreamError::Connect)?;
        conn.flush().await.map_err(UpstreamError::Connect)?;
        let mut sink = [0u8; 16];
        let _ = conn.read(&mut sink).await;
        Ok(())
    }
}
