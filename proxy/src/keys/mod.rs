//! Key material for protected columns: what the encryption layer asks for, and where it comes
//! from.
//!
//! The encryption layer sees only [`KeySource`]: for a protected column it gets a
//! [`ColumnCrypto`] — the envelope keys of every version that may still be stored (the active one
//! seals new values) and the blind-index keys of those versions (lookups search all of them).
//! Sources:
//! - [`StaticKeys`]: fixed keyring material given in code (unit tests, benchmarks).
//! - [`KeyserverKeys`] (`keyserver.rs`): fetches over mTLS, caches in zeroized memory,
//!   follows rotation through the change feed, serves from cache for a grace period counted
//!   from the first failed contact with the keyserver (`health.rs`), then fails closed.

pub mod config;
mod confirm;
mod derive;
mod follow;
mod health;
pub mod keyserver;
mod snapshot;

use std::collections::HashMap;
use std::sync::Arc;

use pgseal_crypto::{ColumnId, SecretKey};

pub use config::KeyserverConfig;
pub use derive::{ColumnCrypto, IndexForm, IndexKeys, IndexRotationKeys, LEGACY_INDEX_ID};
pub use keyserver::KeyserverKeys;

use crate::rewrite::ProtectedSchema;

/// Why keys for a column are not available. Messages name the keyring and column, never key
/// material.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyError {
    /// The column is not configured as protected.
    #[error("pgseal: column {0} is not a protected column")]
    UnknownColumn(String),
    /// The keyring has no version usable for the operation.
    #[error("pgseal: keyring {keyring} has no active key version (column {column})")]
    NoActiveVersion {
        /// Keyring name.
        keyring: String,
        /// Column.
        column: String,
    },
    /// A stored value names a key version the proxy does not hold (destroyed, disabled, below
    /// min_decryption_version, or unknown).
    #[error("pgseal: key version {version} of keyring {keyring} is not available for decryption (column {column})")]
    VersionUnavailable {
        /// Keyring name.
        keyring: String,
        /// Column.
        column: String,
        /// Version.
        version: u32,
    },
    /// The keyserver cannot be reached and the cached keys are older than the grace period (or
    /// were never fetched).
    #[error("pgseal: keys of keyring {keyring} are unavailable: {reason}")]
    Unavailable {
        /// Keyring name.
        keyring: String,
        /// Why (no key material in it).
        reason: String,
    },
    /// Deriving subkeys failed.
    #[error("pgseal: key derivation failed for column {0}")]
    Derivation(String),
}

/// Where the encryption layer gets keys. Implementations are cheap to call on every statement
/// (a read lock and an `Arc` clone) and never block on the network.
pub trait KeySource: Send + Sync {
    /// Keys for `column`: envelope keys of every decryptable version (active one seals), and
    /// blind-index keys of every version that may be stored.
    fn column(&self, column: &ColumnId) -> Result<Arc<ColumnCrypto>, KeyError>;

    /// An epoch that changes whenever an answer of [`KeySource::column`] may change (new key
    /// material, a version disabled, a grant revoked…); `None` when answers must not be reused
    /// (the default, and while the source fails closed). Callers may keep answers for as long
    /// as the epoch stays the same.
    fn epoch(&self) -> Option<u64> {
        None
    }
}

/// Keyring material given in code: keyring name → (version → material), active = highest.
/// The blind-index lineage is that of a keyring carried over from before lineages existed
/// (docs/format.md §2.4): generation 1 is the highest version's material, the other versions
/// are legacy tags. For unit tests and benchmarks; the server uses the keyserver-backed source.
pub struct StaticKeys {
    columns: HashMap<ColumnId, Arc<ColumnCrypto>>,
}

impl StaticKeys {
    /// Derives the keys of every column of `schema` from `keyrings`.
    pub fn new(
        schema: &ProtectedSchema,
        keyrings: &HashMap<String, Vec<(u32, SecretKey)>>,
    ) -> Result<Self, KeyError> {
        let mut columns = HashMap::new();
        for col in schema.columns() {
            let Some(versions) = keyrings.get(&col.keyring) else {
                continue;
            };
            let refs: Vec<(u32, &SecretKey)> = versions.iter().map(|(v, k)| (*v, k)).collect();
            let active = refs.iter().map(|(v, _)| *v).max();
            let Some((_, source)) = refs.iter().find(|(v, _)| Some(*v) == active) else {
                continue;
            };
            let legacy: Vec<u32> = refs
                .iter()
                .map(|(v, _)| *v)
                .filter(|v| Some(*v) != active)
                .collect();
            let index = IndexKeys {
                generation: 1,
                material: source,
                legacy: &legacy,
                rotation: None,
            };
            let crypto = ColumnCrypto::derive(col, &refs, active, &index)?;
            columns.insert(col.id.clone(), Arc::new(crypto));
        }
        Ok(Self { columns })
    }
}

impl KeySource for StaticKeys {
    fn column(&self, column: &ColumnId) -> Result<Arc<ColumnCrypto>, KeyError> {
        self.columns
            .get(column)
            .cloned()
            .ok_or_else(|| KeyError::UnknownColumn(column.to_string()))
    }

    fn epoch(&self) -> Option<u64> {
        Some(0)
    }
}
