//! Per-column subkeys derived from keyring versions (HKDF, see docs/format.md).

use pgseal_crypto::{BlindIndexKey, ColumnKeys, EnvelopeKey, SecretKey};

use super::KeyError;
use crate::rewrite::ProtectedColumn;

/// The prepared keys of one protected column.
#[derive(Debug)]
pub struct ColumnCrypto {
    /// Envelope keys of every decryptable version; `None` when no version may seal (the
    /// keyring's active version is not among the usable ones).
    envelope: Option<ColumnKeys>,
    /// Active (sealing) version, if any.
    active_version: Option<u32>,
    /// Blind-index keys, one per version that may be stored, newest first. Empty when the
    /// column has no equality index.
    index: Vec<BlindIndexKey>,
    /// Keyring name (for error messages).
    keyring: String,
    /// Column (for error messages).
    column: String,
}

impl ColumnCrypto {
    /// Derives the keys of `column` from its keyring's usable versions. `active` is the version
    /// that seals new values (None: the column is read-only until a version becomes active).
    pub fn derive(
        column: &ProtectedColumn,
        versions: &[(u32, &SecretKey)],
        active: Option<u32>,
    ) -> Result<Self, KeyError> {
        let name = column.id.to_string();
        let derr = |_| KeyError::Derivation(name.clone());
        let mut env = Vec::with_capacity(versions.len());
        for (v, k) in versions {
            env.push(EnvelopeKey::derive(k, *v, &column.id).map_err(derr)?);
        }
        let active = active.filter(|a| versions.iter().any(|(v, _)| v == a));
        let envelope = match active {
            Some(a) if !env.is_empty() => Some(ColumnKeys::new(env, a).map_err(derr)?),
            _ => None,
        };
        let mut index = Vec::new();
        if let Some(spec) = &column.index {
            let mut sorted: Vec<&(u32, &SecretKey)> = versions.iter().collect();
            sorted.sort_by_key(|e| std::cmp::Reverse(e.0));
            for (v, k) in sorted {
                index.push(BlindIndexKey::derive(k, *v, &spec.group).map_err(derr)?);
            }
        }
        Ok(Self {
            envelope,
            active_version: active,
            index,
            keyring: column.keyring.clone(),
            column: name,
        })
    }

    /// The keys that seal and open envelopes.
    pub fn envelope(&self) -> Result<&ColumnKeys, KeyError> {
        self.envelope
            .as_ref()
            .ok_or_else(|| KeyError::NoActiveVersion {
                keyring: self.keyring.clone(),
                column: self.column.clone(),
            })
    }

    /// The version new values are sealed with.
    pub fn active_version(&self) -> Option<u32> {
        self.active_version
    }

    /// The blind-index key of the active version (the tag stored with new values).
    pub fn active_index(&self) -> Option<&BlindIndexKey> {
        let a = self.active_version?;
        self.index.iter().find(|k| k.key_version() == a)
    }

    /// Blind-index keys of every version that may be stored, newest first (lookups compute one
    /// tag per key).
    pub fn lookup_keys(&self) -> &[BlindIndexKey] {
        &self.index
    }

    /// Keyring name.
    pub fn keyring(&self) -> &str {
        &self.keyring
    }
}
