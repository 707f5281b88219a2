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
            _ => Ok(()),
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
    }
}
