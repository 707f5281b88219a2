//! Library-level error type (start-up, configuration, files, certificates).

use std::path::PathBuf;

use crate::rootkey::RootKeyError;
use crate::store::StoreError;

/// Errors of the keyserver library outside the request path.
#[derive(Debug, thiserror::Error)]
pub enum KsError {
    /// The configuration is missing or invalid.
    #[error("configuration error: {0}")]
    Config(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The root key could not be loaded or does not fit the database.
    #[error(transparent)]
    RootKey(#[from] RootKeyError),
    /// The database could not be opened or migrated.
    #[error("storage error: {0}")]
    Store(#[from] StoreError),
    /// TLS set-up failed.
    #[error("TLS error: {0}")]
    Tls(String),
    /// Certificate generation failed.
    #[error("certificate error: {0}")]
    Pki(String),
}

impl KsError {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
