//! pgseal-proxy: a transparent PostgreSQL wire-protocol proxy.
//!
//! The proxy terminates the client connection (optional TLS, SCRAM-SHA-256 against the users in its
//! configuration), opens one upstream connection per client (TCP or unix socket, optional TLS with
//! verify-full, SCRAM/md5/password/trust with the mapped upstream credentials) and relays the
//! protocol in both directions. Messages are framed by the proxy itself (type byte + length) so any
//! message, known or not, forwards as raw bytes; only message types an [`session::MessageInterceptor`]
//! asks for are cut out and handed to it. The default interceptor is pass-through and costs nothing.
//!
//! Module map:
//! - [`protocol`]: framing and size limits, the startup packet, the messages the proxy builds or reads.
//! - [`client`]: the client leg (TLS negotiation, SCRAM-SHA-256 server).
//! - [`upstream`]: the upstream leg (connect over TCP/unix/TLS, authenticate).
//! - [`rewrite`]: SQL analysis and rewriting for protected (encrypted) columns.
//! - [`encrypt`]: the encryption interceptor (statements, parameters, results).
//! - [`keys`]: key material for protected columns (keyserver client cache, rotation, grace period).
//! - [`catalog`]: upstream catalog facts (existing tables, protected `(table OID, attnum)`).
//! - [`migrate`]: online migration of existing plaintext columns to pgseal cells and back.
//! - [`session`]: one client connection end to end, the relay loop and the interceptor seam.
//! - [`cancel`]: the proxy's own BackendKeyData and its map to the upstream's keys.
//! - [`config`], [`metrics`], [`shutdown`], [`server`] (accept loop), [`net`] (stream types).

pub mod cancel;
pub mod catalog;
pub mod client;
pub mod config;
pub mod encrypt;
pub mod keys;
pub mod metrics;
pub mod migrate;
pub mod net;
pub mod protocol;
pub mod reencrypt;
pub mod rewrite;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod sql;
pub mod upstream;

pub use config::{Config, ConfigError};
pub use server::{Server, ServerError};
pub use session::{InterceptorFactory, MessageInterceptor, PassThrough};
