//! `[keyserver]`: how the proxy reaches pgseal-keyserver.

use std::path::PathBuf;

use serde::Deserialize;

/// `[keyserver]` section of the proxy configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyserverConfig {
    /// `https://host:port` of the keyserver.
    pub url: String,
    /// PEM CA certificate(s) that signed the keyserver's certificate.
    pub ca: PathBuf,
    /// This proxy's client certificate (PEM), issued by `pgseal-keyserver cert issue --proxy`.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// How long cached keys keep serving when the keyserver is unreachable, seconds, counted
    /// from the first failed contact (see `health.rs`); afterwards protected columns fail
    /// closed until the keyserver answers again.
    #[serde(default = "default_grace")]
    pub grace_seconds: u64,
    /// Long-poll wait of the change feed, seconds (rotation is noticed within about this long,
    /// usually at once).
    #[serde(default = "default_poll")]
    pub poll_wait_seconds: u64,
    /// Per-request timeout, milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_grace() -> u64 {
    300
}
fn default_poll() -> u64 {
    25
}
fn default_timeout() -> u64 {
    5_000
}
