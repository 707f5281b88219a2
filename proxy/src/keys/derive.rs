//! Per-column subkeys derived from keyring versions and the keyring's blind-index lineage (HKDF,
//! see docs/format.md §2.4).

use pgseal_crypto::{BlindIndexKey, ColumnKeys, EnvelopeKey, SecretKey};
use pgseal_keyserver::model::IndexPhase;

use super::KeyError;
pub use crate::rewrite::plan::IndexForm;
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
    /// A blind-index key rotation in progress (docs/format.md §2.5).
    pub rotation: Option<IndexRotationKeys<'a>>,
}

/// The other generation of a blind-index key rotation in progress.
pub struct IndexRotationKeys<'a> {
    /// The rotation's phase.
    pub phase: IndexPhase,
    /// The generation other than the active one (`to` during `dual`, `from` after the cut-over).
    pub other: u32,
    /// Its material.
    pub material: &'a SecretKey,
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
    /// get its tag), then a rotation's other generation, then legacy ones. Empty when the column
    /// has no equality index.
    index: Vec<BlindIndexKey>,
    /// The cells' form (a rotation in progress or not).
    form: IndexForm,
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
            if let Some(r) = &index_keys.rotation {
                index.push(BlindIndexKey::derive(r.material, r.other, &spec.group).map_err(derr)?);
            }
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
        let form = match (&column.index, &index_keys.rotation) {
            (Some(_), Some(r)) => match r.phase {
                IndexPhase::Dual => IndexForm::Dual,
                IndexPhase::Cutover => IndexForm::Cutover,
            },
            _ => IndexForm::Single,
        };
        Ok(Self {
            envelope,
            active_version: active,
            index,
            form,
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

    /// The key of a dual cell's second tag: the rotation's `to` generation before the cut-over
    /// (None in every other form).
    pub fn second_index(&self) -> Option<&BlindIndexKey> {
        match self.form {
            IndexForm::Dual => self.index.get(1),
            IndexForm::Single | IndexForm::Cutover => None,
        }
    }

    /// The form of the column's cells.
    pub fn form(&self) -> IndexForm {
        self.form
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::rewrite::IndexSpec;
    use pgseal_crypto::value::{LogicalType, Normalisation};
    use pgseal_crypto::{ColumnId, IndexGroup};

    fn column() -> ProtectedColumn {
        let id = ColumnId::parse("public.acct.email").unwrap();
        ProtectedColumn {
            index: Some(IndexSpec {
                group: IndexGroup::of_column(&id),
                norm: Normalisation::default(),
                unique: true,
            }),
            id,
            ty: LogicalType::Text,
            keyring: "k".into(),
        }
    }

    /// The stored tag comes from the lineage: the same under every active data-key version,
    /// and different from a tag computed under a data-key version's material.
    #[test]
    fn the_stored_tag_does_not_depend_on_the_data_key_version() {
        let col = column();
        let (m1, m2, ix) = (
            SecretKey::from_bytes([1; 32]),
            SecretKey::from_bytes([2; 32]),
            SecretKey::from_bytes([9; 32]),
        );
        let index = IndexKeys {
            generation: 1,
            material: &ix,
            legacy: &[],
            rotation: None,
        };
        let v1 = ColumnCrypto::derive(&col, &[(1, &m1)], Some(1), &index).unwrap();
        let v12 = ColumnCrypto::derive(&col, &[(1, &m1), (2, &m2)], Some(2), &index).unwrap();
        let t1 = v1.active_index().unwrap().tag(b"\x01anna");
        let t2 = v12.active_index().unwrap().tag(b"\x01anna");
        assert_eq!(t1, t2);
        assert_eq!(v12.lookup_keys().len(), 1, "no tag per data-key version");
        let group = &col.index.as_ref().unwrap().group;
        let per_version = BlindIndexKey::derive(&m2, 2, group).unwrap();
        assert_ne!(per_version.tag(b"\x01anna"), t2);
    }

    /// Legacy versions are searched (after the generation's tag) only while usable, with ids
    /// that never equal a generation number; new values never get a legacy tag.
    #[test]
    fn legacy_tags_are_searched_for_usable_versions_only() {
        let col = column();
        let (m1, m2, m3) = (
            SecretKey::from_bytes([1; 32]),
            SecretKey::from_bytes([2; 32]),
            SecretKey::from_bytes([3; 32]),
        );
        // A keyring carried over with active version 3: generation 1 is version 3's material.
        let index = IndexKeys {
            generation: 1,
            material: &m3,
            legacy: &[1, 2],
            rotation: None,
        };
        let all =
            ColumnCrypto::derive(&col, &[(1, &m1), (2, &m2), (3, &m3)], Some(3), &index).unwrap();
        let ids: Vec<u32> = all.lookup_keys().iter().map(|k| k.key_version()).collect();
        assert_eq!(ids, vec![1, LEGACY_INDEX_ID | 2, LEGACY_INDEX_ID | 1]);
        let group = &col.index.as_ref().unwrap().group;
        assert_eq!(
            all.active_index().unwrap().tag(b"x"),
            BlindIndexKey::derive(&m3, 3, group).unwrap().tag(b"x")
        );
        assert_eq!(
            all.lookup_keys()[2].tag(b"x"),
            BlindIndexKey::derive(&m1, 1, group).unwrap().tag(b"x")
        );
        // Version 1 no longer usable (disabled, or below min_decryption_version).
        let fewer = ColumnCrypto::derive(&col, &[(2, &m2), (3, &m3)], Some(3), &index).unwrap();
        assert_eq!(fewer.lookup_keys().len(), 2);
    }

    /// During a rotation the other generation is searched right after the active one and is the
    /// second tag of dual cells only before the cut-over.
    #[test]
    fn a_rotation_adds_the_other_generation() {
        let col = column();
        let (m1, g1, g2) = (
            SecretKey::from_bytes([1; 32]),
            SecretKey::from_bytes([7; 32]),
            SecretKey::from_bytes([8; 32]),
        );
        let group = col.index.as_ref().unwrap().group.clone();
        let dual = IndexKeys {
            generation: 1,
            material: &g1,
            legacy: &[],
            rotation: Some(IndexRotationKeys {
                phase: IndexPhase::Dual,
                other: 2,
                material: &g2,
            }),
        };
        let c = ColumnCrypto::derive(&col, &[(1, &m1)], Some(1), &dual).unwrap();
        assert_eq!(c.form(), IndexForm::Dual);
        let ids: Vec<u32> = c.lookup_keys().iter().map(|k| k.key_version()).collect();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(
            c.second_index().unwrap().tag(b"x"),
            BlindIndexKey::derive(&g2, 2, &group).unwrap().tag(b"x")
        );
        let cut = IndexKeys {
            generation: 2,
            material: &g2,
            legacy: &[],
            rotation: Some(IndexRotationKeys {
                phase: IndexPhase::Cutover,
                other: 1,
                material: &g1,
            }),
        };
        let c = ColumnCrypto::derive(&col, &[(1, &m1)], Some(1), &cut).unwrap();
        assert_eq!(c.form(), IndexForm::Cutover);
        assert!(c.second_index().is_none());
        assert_eq!(
            c.active_index().unwrap().tag(b"x"),
            BlindIndexKey::derive(&g2, 2, &group).unwrap().tag(b"x")
        );
        let ids: Vec<u32> = c.lookup_keys().iter().map(|k| k.key_version()).collect();
        assert_eq!(ids, vec![2, 1]);
    }
}
