//! Configuration: a TOML file plus environment variables for secrets.
//!
//! Secrets never appear in the file itself unless the operator chooses to store SCRAM verifiers
//! (which are not passwords). Passwords come from environment variables named in the file
//! (`password_env`, `upstream_password_env`, `scram_verifier_env`). [`Config::resolve`] loads them,
//! validates everything and gives clear messages; `pgseal-proxy check --config FILE` runs it.
//!
//! `[encryption]`, `[keyserver]` and `[[columns]]` (protected columns) are validated in
//! [`columns`] into [`Resolved::encryption`]; without `[[columns]]` the proxy is a pure
//! pass-through.

pub mod columns;

pub use columns::{ColumnConfig, EncryptionConfig, EncryptionSettings};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::client::auth_scram::ScramVerifier;
use crate::keys::KeyserverConfig;

/// A configuration problem, with a message that says which setting is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown keys.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A setting has an invalid value.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// Client-leg TLS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientTlsMode {
    /// Answer `N` to SSLRequest (local demo only).
    #[default]
    Disabled,
    /// Offer TLS; accept plaintext clients too.
    Preferred,
    /// Refuse clients that do not negotiate TLS.
    Required,
}

/// `[tls]`: TLS towards clients.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// disabled | preferred | required.
    #[serde(default)]
    pub mode: ClientTlsMode,
    /// PEM certificate chain presented to clients.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

/// Upstream TLS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    /// No TLS (unix socket or a trusted network).
    #[default]
    Disable,
    /// TLS required, certificate chain checked against `ca` and the host name checked.
    VerifyFull,
}

/// `[upstream]`: the PostgreSQL server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Host name or IP address, or a directory holding the unix socket (starts with `/`).
    pub host: String,
    /// Port (also names the unix socket file `.s.PGSQL.<port>`).
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// disable | verify-full.
    #[serde(default)]
    pub tls: UpstreamTlsMode,
    /// PEM CA certificates that sign the upstream's certificate (required with verify-full).
    pub ca: Option<PathBuf>,
    /// Name to verify in the upstream certificate; defaults to `host`.
    pub server_name: Option<String>,
    /// Optional client certificate (PEM) presented to the upstream.
    pub client_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub client_key: Option<PathBuf>,
    /// Connect + TLS + authentication timeout, milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

fn default_pg_port() -> u16 {
    5432
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}

/// `[[users]]`: a user clients log in as, and the upstream credentials it maps to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// User name clients send in the startup packet.
    pub name: String,
    /// Environment variable holding this user's password (the proxy derives a SCRAM verifier).
    pub password_env: Option<String>,
    /// A SCRAM-SHA-256 verifier in PostgreSQL's `rolpassword` format.
    pub scram_verifier: Option<String>,
    /// Environment variable holding such a verifier.
    pub scram_verifier_env: Option<String>,
    /// Upstream user; defaults to `name`.
    pub upstream_user: Option<String>,
    /// Environment variable with the upstream password (absent: trust upstream).
    pub upstream_password_env: Option<String>,
    /// Databases this user may open; absent means any.
    pub databases: Option<Vec<String>>,
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Maximum concurrent logged-in client sessions (a client takes one once it has
    /// authenticated; more get FATAL 53300).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Maximum concurrent connections that have not authenticated yet (startup packet, TLS
    /// handshake, SCRAM, cancel requests), separate from `max_connections`. When all are taken,
    /// the one starting up the longest is closed to make room for the new one.
    #[serde(default = "default_max_startup_connections")]
    pub max_startup_connections: usize,
    /// Largest message accepted, in bytes (PostgreSQL allows just under 1 GiB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Time a client has to finish startup and authentication (TLS handshake included), in
    /// total from the accept, milliseconds.
    #[serde(default = "default_startup_timeout_ms")]
    pub startup_timeout_ms: u64,
}

fn default_max_connections() -> usize {
    1000
}
fn default_max_startup_connections() -> usize {
    256
}
fn default_max_message_bytes() -> usize {
    crate::protocol::framing::LARGE_MESSAGE_LIMIT
}
fn default_startup_timeout_ms() -> u64 {
    5_000
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: default_max_connections(),
            max_startup_connections: default_max_startup_connections(),
            max_message_bytes: default_max_message_bytes(),
            startup_timeout_ms: default_startup_timeout_ms(),
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve `GET /metrics` on.
    pub listen: String,
}

/// `[shutdown]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After SIGTERM, how long in-flight queries may run before connections are closed, seconds.
    #[serde(default = "default_grace")]
    pub grace_seconds: u64,
}

fn default_grace() -> u64 {
    30
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_seconds: default_grace(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address clients connect to, e.g. `127.0.0.1:6432`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Worker threads, each running its own single-threaded runtime and accepting on the shared
    /// socket (default: one per two CPUs, at least one).
    pub workers: Option<usize>,
    /// TLS towards clients.
    #[serde(default)]
    pub tls: ClientTlsConfig,
    /// The PostgreSQL server.
    pub upstream: UpstreamConfig,
    /// Users clients log in as.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Prometheus endpoint (optional).
    pub metrics: Option<MetricsConfig>,
    /// Shutdown behaviour.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// `[encryption]`: the protected database (required with `[[columns]]`).
    pub encryption: Option<EncryptionConfig>,
    /// `[keyserver]`: how to reach pgseal-keyserver (required with `[[columns]]`).
    pub keyserver: Option<KeyserverConfig>,
    /// `[[columns]]`: protected columns.
    #[serde(default)]
    pub columns: Vec<ColumnConfig>,
}

fn default_listen() -> String {
    "127.0.0.1:6432".into()
}

/// A user with its secrets loaded.
pub struct ResolvedUser {
    /// The SCRAM verifier clients are checked against.
    pub verifier: ScramVerifier,
    /// Upstream user name.
    pub upstream_user: String,
    /// Upstream password, if any.
    pub upstream_password: Option<Zeroizing<String>>,
    /// Allowed databases (None: any).
    pub databases: Option<Vec<String>>,
}

impl std::fmt::Debug for ResolvedUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedUser")
            .field("upstream_user", &self.upstream_user)
            .field("databases", &self.databases)
            .finish_non_exhaustive()
    }
}

/// A validated configuration with secrets loaded.
#[derive(Debug)]
pub struct Resolved {
    /// The file as parsed.
    pub config: Config,
    /// Listen address.
    pub listen: SocketAddr,
    /// Metrics address.
    pub metrics_listen: Option<SocketAddr>,
    /// Users by name.
    pub users: HashMap<String, ResolvedUser>,
    /// Protected columns and how to reach their keys (None: no `[[columns]]`, pass-through).
    pub encryption: Option<EncryptionSettings>,
}

impl Config {
    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Reads and parses a file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Worker threads to run: `workers`, else one per two CPUs (at least one). Measured on a
    /// 2-vCPU machine shared with PostgreSQL and pgbench, one single-threaded event loop used the
    /// least CPU per transaction (like PgBouncer); give it more threads where cores are free.
    pub fn threads(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| (n.get() / 2).max(1))
                .unwrap_or(1)
        })
    }

    /// Validates the configuration and loads secrets from the environment.
    pub fn resolve(self) -> Result<Resolved, ConfigError> {
        self.resolve_with_env(|k| std::env::var(k).ok())
    }

    /// Like [`Config::resolve`] with an explicit environment lookup (for tests).
    pub fn resolve_with_env(
        self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Resolved, ConfigError> {
        let listen: SocketAddr = self
            .listen
            .parse()
            .map_err(|e| invalid(format!("listen = {:?}: {e}", self.listen)))?;
        let metrics_listen = match &self.metrics {
            Some(m) => Some(
                m.listen
                    .parse()
                    .map_err(|e| invalid(format!("metrics.listen = {:?}: {e}", m.listen)))?,
            ),
            None => None,
        };
        if self.workers == Some(0) {
            return Err(invalid("workers must be at least 1"));
        }
        match self.tls.mode {
            ClientTlsMode::Disabled => {}
            _ => {
                if self.tls.cert.is_none() || self.tls.key.is_none() {
                    return Err(invalid(
                        "tls.mode preferred/required needs tls.cert and tls.key",
                    ));
                }
            }
        }
        if self.upstream.host.is_empty() {
            return Err(invalid("upstream.host is empty"));
        }
        if self.upstream.tls == UpstreamTlsMode::VerifyFull {
            if self.upstream.ca.is_none() {
                return Err(invalid("upstream.tls = \"verify-full\" needs upstream.ca"));
            }
            if self.upstream.host.starts_with('/') {
                return Err(invalid(
                    "upstream.tls = \"verify-full\" needs a TCP host, not a unix socket directory",
                ));
            }
        }
        if self.upstream.client_cert.is_some() != self.upstream.client_key.is_some() {
            return Err(invalid(
                "upstream.client_cert and upstream.client_key go together",
            ));
        }
        if self.limits.max_connections == 0 {
            return Err(invalid("limits.max_connections must be at least 1"));
        }
        if self.limits.max_startup_connections == 0 {
            return Err(invalid("limits.max_startup_connections must be at least 1"));
        }
        if self.limits.startup_timeout_ms < 100 {
            return Err(invalid(
                "limits.startup_timeout_ms must be at least 100 (a client needs a few round trips to log in)",
            ));
        }
        if self.limits.max_message_bytes < 1024 {
            return Err(invalid("limits.max_message_bytes must be at least 1024"));
        }
        if self.users.is_empty() {
            return Err(invalid("no [[users]]: nobody could log in"));
        }
        let mut users = HashMap::new();
        for u in &self.users {
            if u.name.is_empty() {
                return Err(invalid("a [[users]] entry has an empty name"));
            }
            let sources = [
                u.password_env.is_some(),
                u.scram_verifier.is_some(),
                u.scram_verifier_env.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if sources != 1 {
                return Err(invalid(format!(
                    "user {:?}: set exactly one of password_env, scram_verifier, scram_verifier_env",
                    u.name
                )));
            }
            let verifier = if let Some(var) = &u.password_env {
                let pw = Zeroizing::new(env(var).ok_or_else(|| {
                    invalid(format!(
                        "user {:?}: environment variable {var} (password_env) is not set",
                        u.name
                    ))
                })?);
                if pw.is_empty() {
                    return Err(invalid(format!(
                        "user {:?}: environment variable {var} is empty",
                        u.name
                    )));
                }
                ScramVerifier::from_password(pw.as_bytes())
                    .map_err(|e| invalid(format!("user {:?}: {e}", u.name)))?
            } else {
                let text = match (&u.scram_verifier, &u.scram_verifier_env) {
                    (Some(v), _) => Zeroizing::new(v.clone()),
                    (None, Some(var)) => Zeroizing::new(env(var).ok_or_else(|| {
                        invalid(format!(
                            "user {:?}: environment variable {var} (scram_verifier_env) is not set",
                            u.name
                        ))
                    })?),
                    (None, None) => return Err(invalid("unreachable")),
                };
                ScramVerifier::parse(&text).map_err(|e| {
                    invalid(format!("user {:?}: invalid SCRAM verifier: {e}", u.name))
                })?
            };
            let upstream_password = match &u.upstream_password_env {
                Some(var) => Some(Zeroizing::new(env(var).ok_or_else(|| {
                    invalid(format!(
                        "user {:?}: environment variable {var} (upstream_password_env) is not set",
                        u.name
                    ))
                })?)),
                None => None,
            };
            let resolved = ResolvedUser {
                verifier,
                upstream_user: u.upstream_user.clone().unwrap_or_else(|| u.name.clone()),
                upstream_password,
                databases: u.databases.clone(),
            };
            if users.insert(u.name.clone(), resolved).is_some() {
                return Err(invalid(format!("user {:?} is listed twice", u.name)));
            }
        }
        let encryption = columns::settings(
            self.encryption.as_ref(),
            self.keyserver.as_ref(),
            &self.columns,
            &self.users,
        )?;
        Ok(Resolved {
            listen,
            metrics_listen,
            users,
            encryption,
            config: self,
        })
    }
}

impl Resolved {
    /// Startup timeout.
    pub fn startup_timeout(&self) -> Duration {
        Duration::from_millis(self.config.limits.startup_timeout_ms)
    }

    /// Upstream connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.config.upstream.connect_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
listen = "127.0.0.1:0"
[upstream]
host = "/tmp"
port = 5432
[[users]]
name = "app"
password_env = "APP_PW"
upstream_password_env = "UP_PW"
"#;

    #[test]
    fn resolves_with_env() {
        let r = Config::from_toml(BASE)
            .unwrap()
            .resolve_with_env(|k| match k {
                "APP_PW" => Some("secret".into()),
                "UP_PW" => Some("up".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(r.users["app"].upstream_user, "app");
        assert!(r.users["app"].upstream_password.is_some());
    }

    #[test]
    fn clear_errors() {
        let e = Config::from_toml(BASE)
            .unwrap()
            .resolve_with_env(|_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("APP_PW"), "{e}");
        let e = Config::from_toml("listen = 1").unwrap_err().to_string();
        assert!(e.contains("invalid configuration"), "{e}");
        let e = Config::from_toml(&BASE.replace("port = 5432", "port = 5432\nbogus = 1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = Config::from_toml(&BASE.replace(
            "host = \"/tmp\"",
            "host = \"/tmp\"\ntls = \"verify-full\"\nca = \"/x\"",
        ))
        .unwrap()
        .resolve_with_env(|_| Some("x".into()))
        .unwrap_err()
        .to_string();
        assert!(e.contains("unix socket"), "{e}");
    }
}
