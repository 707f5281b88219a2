//! Per-column subkeys derived from keyring versions and the keyring's blind-index lineage (HKDF,
//! see docs/format.md §2.4).

use pgseal_crypto::{BlindIndexKey, ColumnKeys, EnvelopeKey, SecretKey};

use super::KeyError;
use crate::rewrite::ProtectedColumn;

/// Id bit of a blind-index key that is a legacy one (derived from a data-key version), so that
/// its id never equals a generation number (ids tell cached lookups that the key set changed).
pub const LEGACY_INDEX_ID: u32 = 0x8000_0000;

/// Where a keyring's blind-index keys come from.
pub struct IndexKeys<'a> {
    /// The active generation of the lineage.
    pub generation: u32,
    /// Its index material.
    pub material: &'a SecretKey,
    /// Data-key versions whose cells may still carry a tag of the previous format (derived from
    /// that version's material): searched by lookups, replaced by `reencrypt`.
    pub legacy: &'a [u32],
}

/// The prepared keys of one protected column.
#[derive(Debug)]
pub struct ColumnCrypto {
    /// Envelope keys of every decryptable version; `None` when no version may seal (the
    /// keyring's active version is not among the usable ones).
    envelope: Option<ColumnKeys>,
    /// Active (sealing) version, if any.
    active_version: Option<u32>,
    /// Blind-index keys whose tags may be stored: the active generation's first (new values
    /// get its tag), then legacy ones. Empty when the column has no equality index.
    index: Vec<BlindIndexKey>,
    /// Keyring name (for error messages).
    keyring: String,
    /// Column (for error messages).
    column: String,
}

impl ColumnCrypto {
    /// Derives the keys of `column` from its keyring's usable versions and blind-index lineage.
    /// `active` is the version that seals new values (None: the column is read-only until a
    /// version becomes active). The blind index never depends on the data-key versions (except
    /// legacy tags of usable versions listed in `index.legacy`).
    pub fn derive(
        column: &ProtectedColumn,
        versions: &[(u32, &SecretKey)],
        active: Option<u32>,
        index_keys: &IndexKeys<'_>,
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
            index.push(
                BlindIndexKey::derive(index_keys.material, index_keys.generation, &spec.group)
                    .map_err(derr)?,
            );
            let mut legacy: Vec<&(u32, &SecretKey)> = versions
                .iter()
                .filter(|(v, _)| index_keys.legacy.contains(v))
                .collect();
            legacy.sort_by_key(|e| std::cmp::Reverse(e.0));
            for (v, k) in legacy {
                index.push(
                    BlindIndexKey::derive(k, LEGACY_INDEX_ID | *v, &spec.group).map_err(derr)?,
                );
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

    /// The blind-index key of the lineage's active generation (the tag stored with new values;
    /// the same whichever data-key version seals the envelope).
    pub fn active_index(&self) -> Option<&BlindIndexKey> {
        self.index.first()
    }

    /// Blind-index keys whose tags may be stored, active generation first (lookups compute one
    /// tag per key).
    pub fn lookup_keys(&self) -> &[BlindIndexKey] {
        &self.index
    }

    /// Keyring name.
    pub fn keyring(&self) -> &str {
        &self.keyring
    }
}
