//! The root key that wraps all key material at rest.
//!
//! [`RootKey`] is the seam: today a local 32-byte key from a file or an environment
//! variable ([`LocalRootKey`]); later a PKCS#11 HSM whose key never leaves the device
//! (the trait only asks for wrap/unwrap, never for the key itself).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use pgseal_crypto::keywrap::{unwrap_key, wrap_key};
use pgseal_crypto::SecretKey;
use zeroize::Zeroizing;

/// Root key problems; all of them stop start-up.
#[derive(Debug, thiserror::Error)]
pub enum RootKeyError {
    /// The root key file does not exist or cannot be read.
    #[error("root key file {path}: {source} (create it with `pgseal-keyserver init`)")]
    Unreadable {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The root key file may be read by others.
    #[error("root key file {0} is accessible by group or others; run `chmod 600` on it")]
    Permissions(PathBuf),
    /// The environment variable is not set.
    #[error("root key environment variable {0} is not set")]
    MissingEnv(String),
    /// The key text is not 64 hex digits.
    #[error("root key from {0} is malformed: expected 64 hex digits")]
    Malformed(String),
    /// The key does not open this database's check value.
    #[error(
        "the root key does not match this database (root-key check failed); refusing to start"
    )]
    Mismatch,
    /// Wrapping or unwrapping failed.
    #[error("key wrap failed: {0}")]
    Wrap(String),
    /// Creating the file failed.
    #[error("cannot create root key file {path}: {source}")]
    Create {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Wraps and unwraps key material under the root of trust.
pub trait RootKey: Send + Sync {
    /// Seals `key`, bound to `binding` (associated data).
    fn wrap(&self, key: &SecretKey, binding: &[u8]) -> Result<Vec<u8>, RootKeyError>;
    /// Opens a blob made by [`RootKey::wrap`] with the same binding.
    fn unwrap(&self, blob: &[u8], binding: &[u8]) -> Result<SecretKey, RootKeyError>;
    /// Where the key lives, for logs (never the key).
    fn describe(&self) -> String;
}

/// A root key held in process memory (zeroized on drop), loaded from a file or the environment.
pub struct LocalRootKey {
    key: SecretKey,
    source: String,
}

impl std::fmt::Debug for LocalRootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRootKey")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn parse_hex_key(text: &str, source: &str) -> Result<SecretKey, RootKeyError> {
    let trimmed = text.trim();
    let bytes = Zeroizing::new(
        hex::decode(trimmed).map_err(|_| RootKeyError::Malformed(source.to_owned()))?,
    );
    SecretKey::from_slice(&bytes).map_err(|_| RootKeyError::Malformed(source.to_owned()))
}

impl LocalRootKey {
    /// Wraps an existing key (tests, HSM-less set-ups).
    pub fn from_key(key: SecretKey, source: impl Into<String>) -> Self {
        Self {
            key,
            source: source.into(),
        }
    }

    /// Loads a root key file (64 hex digits); refuses files readable by group or others.
    pub fn from_file(path: &Path) -> Result<Self, RootKeyError> {
        let meta = std::fs::metadata(path).map_err(|source| RootKeyError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(RootKeyError::Permissions(path.to_owned()));
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            RootKeyError::Unreadable {
                path: path.to_owned(),
                source,
            }
        })?);
        let source = format!("file {}", path.display());
        Ok(Self {
            key: parse_hex_key(&text, &source)?,
            source,
        })
    }

    /// Loads the root key from an environment variable (64 hex digits).
    pub fn from_env(var: &str) -> Result<Self, RootKeyError> {
        let text = Zeroizing::new(
            std::env::var(var).map_err(|_| RootKeyError::MissingEnv(var.to_owned()))?,
        );
        let source = format!("environment variable {var}");
        Ok(Self {
            key: parse_hex_key(&text, &source)?,
            source,
        })
    }

    /// Generates a new root key and writes it to `path` with mode 0600 (fails if the file exists).
    pub fn create_file(path: &Path) -> Result<Self, RootKeyError> {
        let key = SecretKey::generate().map_err(|e| RootKeyError::Wrap(e.to_string()))?;
        let mut text = Zeroizing::new(hex::encode(key.expose_secret()));
        text.push('\n');
        let create_err = |source| RootKeyError::Create {
            path: path.to_owned(),
            source,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(create_err)?;
        f.write_all(text.as_bytes()).map_err(create_err)?;
        f.sync_all().map_err(create_err)?;
        Ok(Self {
            key,
            source: format!("file {}", path.display()),
        })
    }
}

impl RootKey for LocalRootKey {
    fn wrap(&self, key: &SecretKey, binding: &[u8]) -> Result<Vec<u8>, RootKeyError> {
        wrap_key(&self.key, key, binding).map_err(|e| RootKeyError::Wrap(e.to_string()))
    }
    fn unwrap(&self, blob: &[u8], binding: &[u8]) -> Result<SecretKey, RootKeyError> {
        unwrap_key(&self.key, blob, binding).map_err(|e| RootKeyError::Wrap(e.to_string()))
    }
    fn describe(&self) -> String {
        format!("local root key from {}", self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_key() {
        let var = "PGSEAL_KEYSERVER_TEST_ROOT_KEY_ENV";
        assert!(matches!(
            LocalRootKey::from_env(var),
            Err(RootKeyError::MissingEnv(_))
        ));
        std::env::set_var(var, "12".repeat(32));
        let k = LocalRootKey::from_env(var).unwrap();
        assert!(k.describe().contains(var));
        std::env::set_var(var, "xyz");
        assert!(matches!(
            LocalRootKey::from_env(var),
            Err(RootKeyError::Malformed(_))
        ));
        std::env::remove_var(var);
    }

    #[test]
    fn file_round_trip_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        let created = LocalRootKey::create_file(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let loaded = LocalRootKey::from_file(&path).unwrap();
        let k = SecretKey::generate().unwrap();
        let blob = created.wrap(&k, b"b").unwrap();
        assert_eq!(loaded.unwrap(&blob, b"b").unwrap(), k);
        assert!(
            LocalRootKey::create_file(&path).is_err(),
            "must not overwrite"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            LocalRootKey::from_file(&path),
            Err(RootKeyError::Permissions(_))
        ));
        assert!(matches!(
            LocalRootKey::from_file(&dir.path().join("missing")),
            Err(RootKeyError::Unreadable { .. })
        ));
        std::fs::write(dir.path().join("bad"), "zz").unwrap();
        std::fs::set_permissions(
            dir.path().join("bad"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert!(matches!(
            LocalRootKey::from_file(&dir.path().join("bad")),
            Err(RootKeyError::Malformed(_))
        ));
    }
}
