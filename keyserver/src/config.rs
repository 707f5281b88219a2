//! The server configuration file (TOML).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::KsError;
use crate::store::sqlite::Durability;

/// Default request body limit in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024;

/// `keyserver.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on, e.g. `0.0.0.0:8443`.
    pub listen: SocketAddr,
    /// SQLite database file.
    pub database: PathBuf,
    /// Root key file (64 hex digits, mode 0600). Exactly one of this and `root_key_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_key_file: Option<PathBuf>,
    /// Environment variable holding the root key (64 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_key_env: Option<String>,
    /// SQLite durability (`normal` or `full`).
    #[serde(default)]
    pub durability: Durability,
    /// Maximum request body size in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// TLS files.
    pub tls: TlsConfig,
    /// Connection limits and timeouts (see `docs/keyserver.md`, "Limits").
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: LimitsConfig,
    /// Audit of unauthenticated requests (aggregation).
    #[serde(default, skip_serializing_if = "is_default")]
    pub audit: AuditConfig,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// `[limits]`: what a client can make the server hold, and for how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Seconds a client has to complete the TLS handshake.
    pub handshake_timeout_secs: u64,
    /// Connections in the TLS handshake at once (all sources).
    pub max_handshakes: usize,
    /// Connections in the TLS handshake at once from one source IP address.
    pub max_handshakes_per_source: usize,
    /// Connections without a verified client certificate (admins, anonymous), all sources.
    pub max_anonymous_connections: usize,
    /// Connections without a verified client certificate from one source IP address.
    pub max_anonymous_per_source: usize,
    /// Connections with a verified proxy client certificate: a reserve anonymous clients
    /// cannot use.
    pub proxy_connections: usize,
    /// Seconds a connection without a verified client certificate may stay idle (no request
    /// in progress), also between requests on a kept-alive connection.
    pub idle_timeout_secs: u64,
    /// Seconds a proxy connection (verified client certificate) may stay idle.
    pub proxy_idle_timeout_secs: u64,
    /// Seconds a client has to send the complete request headers (HTTP/1.1).
    pub header_read_timeout_secs: u64,
    /// Seconds one request may take, body included (must exceed the longest change-feed wait).
    pub request_timeout_secs: u64,
    /// Concurrent requests on one HTTP/2 connection.
    pub max_streams_per_connection: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            handshake_timeout_secs: 5,
            max_handshakes: 256,
            max_handshakes_per_source: 64,
            max_anonymous_connections: 512,
            max_anonymous_per_source: 64,
            proxy_connections: 256,
            idle_timeout_secs: 15,
            proxy_idle_timeout_secs: 300,
            header_read_timeout_secs: 10,
            request_timeout_secs: 60,
            max_streams_per_connection: 32,
        }
    }
}

impl LimitsConfig {
    /// Most connections open at once (file descriptors the listener may need).
    pub fn max_open_connections(&self) -> usize {
        self.max_handshakes
            .saturating_add(self.max_anonymous_connections)
            .saturating_add(self.proxy_connections)
    }

    fn validate(&self) -> Result<(), KsError> {
        let positive = [
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("proxy_idle_timeout_secs", self.proxy_idle_timeout_secs),
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("max_handshakes", self.max_handshakes as u64),
            (
                "max_handshakes_per_source",
                self.max_handshakes_per_source as u64,
            ),
            (
                "max_anonymous_connections",
                self.max_anonymous_connections as u64,
            ),
            (
                "max_anonymous_per_source",
                self.max_anonymous_per_source as u64,
            ),
            ("proxy_connections", self.proxy_connections as u64),
            (
                "max_streams_per_connection",
                u64::from(self.max_streams_per_connection),
            ),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(KsError::Config(format!("limits.{name} must be > 0")));
            }
        }
        let min_request = crate::api::data_plane::MAX_WAIT_SECS + 5;
        if self.request_timeout_secs < min_request {
            return Err(KsError::Config(format!(
                "limits.request_timeout_secs must be at least {min_request} (the longest change-feed wait plus 5 s)"
            )));
        }
        Ok(())
    }
}

/// `[audit]`: how failed unauthenticated requests are recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Length of an aggregation window in seconds.
    pub unauthenticated_window_secs: u64,
    /// Unauthenticated failures per source and window written as records of their own; the
    /// rest are counted into one aggregate record per source at the end of the window.
    pub unauthenticated_records_per_source: u32,
    /// Sources tracked per window; failures from further sources are counted together in one
    /// aggregate record.
    pub unauthenticated_max_sources: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            unauthenticated_window_secs: 60,
            unauthenticated_records_per_source: 3,
            unauthenticated_max_sources: 256,
        }
    }
}

impl AuditConfig {
    /// Most audit records unauthenticated clients can cause per window:
    /// `max_sources × (records_per_source + 1) + 1`.
    pub fn max_records_per_window(&self) -> u64 {
        let per_source = u64::from(self.unauthenticated_records_per_source) + 1;
        (self.unauthenticated_max_sources as u64)
            .saturating_mul(per_source)
            .saturating_add(1)
    }

    fn validate(&self) -> Result<(), KsError> {
        if self.unauthenticated_window_secs == 0 || self.unauthenticated_window_secs > 86_400 {
            return Err(KsError::Config(
                "audit.unauthenticated_window_secs must be 1 to 86400".into(),
            ));
        }
        if self.unauthenticated_max_sources == 0 {
            return Err(KsError::Config(
                "audit.unauthenticated_max_sources must be > 0".into(),
            ));
        }
        Ok(())
    }
}

fn default_max_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

/// TLS section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA certificate(s) that sign proxy client certificates (PEM).
    pub client_ca: PathBuf,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, KsError> {
        let text = std::fs::read_to_string(path).map_err(|e| KsError::io(path, e))?;
        let cfg: Config = toml::from_str(&text)
            .map_err(|e| KsError::Config(format!("{}: {e}", path.display())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks cross-field rules.
    pub fn validate(&self) -> Result<(), KsError> {
        match (&self.root_key_file, &self.root_key_env) {
            (Some(_), Some(_)) => Err(KsError::Config(
                "set only one of root_key_file and root_key_env".into(),
            )),
            (None, None) => Err(KsError::Config("set root_key_file or root_key_env".into())),
            _ if self.max_body_bytes == 0 => {
                Err(KsError::Config("max_body_bytes must be > 0".into()))
            }
            _ => {
                self.limits.validate()?;
                self.audit.validate()
            }
        }
    }

    /// Serializes to TOML.
    pub fn to_toml(&self) -> Result<String, KsError> {
        toml::to_string_pretty(self).map_err(|e| KsError::Config(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_reject() {
        let ok = r#"
listen = "127.0.0.1:8443"
database = "/tmp/ks.db"
root_key_file = "/tmp/root.key"
[tls]
cert = "a"
key = "b"
client_ca = "c"
"#;
        let c: Config = toml::from_str(ok).unwrap();
        c.validate().unwrap();
        assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        let unknown = ok.replace("listen", "lisen");
        assert!(toml::from_str::<Config>(&unknown).is_err());
        let both = ok.replace(
            "root_key_file = \"/tmp/root.key\"",
            "root_key_file = \"x\"\nroot_key_env = \"Y\"",
        );
        assert!(toml::from_str::<Config>(&both).unwrap().validate().is_err());
        assert_eq!(c.limits, LimitsConfig::default());
        assert_eq!(c.audit, AuditConfig::default());
        let limits = format!(
            "{ok}[limits]\nidle_timeout_secs = 3\n[audit]\nunauthenticated_window_secs = 2\n"
        );
        let l: Config = toml::from_str(&limits).unwrap();
        l.validate().unwrap();
        assert_eq!(l.limits.idle_timeout_secs, 3);
        assert_eq!(
            l.limits.max_handshakes,
            LimitsConfig::default().max_handshakes
        );
        assert_eq!(l.audit.unauthenticated_window_secs, 2);
        let zero = format!("{ok}[limits]\nproxy_connections = 0\n");
        assert!(toml::from_str::<Config>(&zero).unwrap().validate().is_err());
        let short = format!("{ok}[limits]\nrequest_timeout_secs = 10\n");
        assert!(toml::from_str::<Config>(&short)
            .unwrap()
            .validate()
            .is_err());
        let typo = format!("{ok}[limits]\nidle_timeout = 3\n");
        assert!(toml::from_str::<Config>(&typo).is_err());
    }
}
