//! The upstream leg: connect (TCP, unix socket, TLS verify-full) and log in with the mapped
//! credentials; [`simple_query`] runs the proxy's own queries (the catalog).

pub mod auth;
pub mod connect;
pub mod simple_query;

use crate::protocol::messages::ErrorFields;
use crate::protocol::ProtocolError;

/// Why the upstream connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP/unix connect failed or timed out.
    #[error("cannot connect to upstream: {0}")]
    Connect(std::io::Error),
    /// The upstream answered `N` to SSLRequest while TLS is required.
    #[error("upstream refused TLS")]
    TlsRefused,
    /// The TLS handshake failed (certificate not trusted, wrong name, ...).
    #[error("upstream TLS handshake: {0}")]
    Tls(std::io::Error),
    /// The upstream sent an ErrorResponse during startup.
    #[error("upstream rejected the login: {} {}", .0.code, .0.message)]
    Rejected(ErrorFields),
    /// The upstream asked for an authentication method the proxy cannot answer.
    #[error("upstream authentication: {0}")]
    Auth(String),
    /// Protocol violation by the upstream.
    #[error("upstream protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// Timed out.
    #[error("upstream timed out")]
    Timeout,
    /// A query on an internal connection (the catalog) failed.
    #[error("upstream query failed: {} {}", .0.code, .0.message)]
    Query(ErrorFields),
}

impl UpstreamError {
    /// Whether this is a login failure that the client must see as the uniform auth error
    /// (bad upstream credentials, unknown database, role not permitted to log in).
    pub fn is_login_failure(&self) -> bool {
        match self {
            UpstreamError::Rejected(f) => f.code.starts_with("28") || f.code == "3D000",
            UpstreamError::Auth(_) => true,
            _ => false,
        }
    }
}
