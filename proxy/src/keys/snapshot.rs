//! The cached state of the keyserver-backed key source: per keyring the usable versions'
//! material (zeroized `SecretKey`s shared by `Arc`), and per column the derived [`ColumnCrypto`].
//! A snapshot is immutable; a refresh builds a new one, reusing unchanged material and columns.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use pgseal_crypto::{ColumnId, SecretKey};
use pgseal_keyserver::client::{Client, ClientError};
use pgseal_keyserver::model::{IndexPhase, IndexRotation, KeyringMeta, VersionState};

use super::{ColumnCrypto, IndexKeys, IndexRotationKeys, KeyError};
use crate::rewrite::ProtectedSchema;

/// The usable versions of one keyring, with their material.
pub(crate) struct KeyringState {
    /// Keyring id (material is reused only under the same id).
    pub id: String,
    /// Revision of the metadata this state was built from.
    pub revision: u64,
    /// Version sealing new values.
    pub active: u32,
    /// Material of every usable version.
    pub versions: BTreeMap<u32, Arc<SecretKey>>,
    /// The blind-index lineage (independent of `versions`).
    pub index: IndexLineage,
}

/// The active generation of a keyring's blind-index lineage, with its material, and the other
/// generation of a rotation in progress (docs/format.md §2.5).
#[derive(Clone)]
pub(crate) struct IndexLineage {
    /// Active generation.
    pub generation: u32,
    /// Its index material.
    pub material: Arc<SecretKey>,
    /// Data-key versions whose cells may still carry a legacy tag.
    pub legacy: Vec<u32>,
    /// A rotation in progress: its phase and the material of its other generation (`to`
    /// during `dual`, `from` after the cut-over).
    pub rotation: Option<RotationKeys>,
}

/// The keys of a blind-index key rotation in progress.
#[derive(Clone)]
pub(crate) struct RotationKeys {
    /// The rotation as the keyserver states it.
    pub rotation: IndexRotation,
    /// The generation other than the active one.
    pub other: u32,
    /// Its material.
    pub material: Arc<SecretKey>,
}

/// One immutable view of every keyring and column.
#[derive(Default)]
pub(crate) struct Snapshot {
    /// Keyring name → state.
    pub keyrings: HashMap<String, KeyringState>,
    /// Column → derived keys.
    pub columns: HashMap<ColumnId, Arc<ColumnCrypto>>,
    /// Keyrings the keyserver no longer serves to this proxy (deleted or grant revoked), with
    /// the reason: their columns fail closed.
    pub revoked: HashMap<String, String>,
}

/// Versions that may be used: active or decrypt-only, and not below min_decryption_version.
pub(crate) fn usable_versions(meta: &KeyringMeta) -> BTreeSet<u32> {
    meta.versions
        .iter()
        .filter(|v| matches!(v.state, VersionState::Active | VersionState::DecryptOnly))
        .filter(|v| v.version >= meta.min_decryption_version)
        .map(|v| v.version)
        .collect()
}

/// How a fetch of one keyring went wrong.
#[derive(Debug)]
pub(crate) enum FetchError {
    /// The keyserver answered 404: the keyring does not exist or is not granted to this proxy.
    NotServed(String),
    /// Anything else (network, TLS, server error): transient.
    Failed(ClientError),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotServed(m) => f.write_str(m),
            Self::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// Fetches the metadata of `name` and the material of its usable versions; material of versions
/// present in `previous` (same keyring id) is reused, not fetched again.
pub(crate) async fn fetch_keyring(
    client: &Client,
    name: &str,
    previous: Option<&KeyringState>,
) -> Result<KeyringState, FetchError> {
    let meta = client.keyring(name).await.map_err(|e| match e {
        ClientError::Api { status: 404, .. } => FetchError::NotServed(format!(
            "keyring {name} does not exist on the keyserver or is not granted to this proxy \
             (grant it with `pgseal-keyserver proxy grant PROXY --keyring {name}`)"
        )),
        other => FetchError::Failed(other),
    })?;
    let previous = previous.filter(|p| p.id == meta.id);
    let mut versions = BTreeMap::new();
    for v in usable_versions(&meta) {
        if let Some(k) = previous.and_then(|p| p.versions.get(&v)) {
            versions.insert(v, Arc::clone(k));
            continue;
        }
        match client.material(name, v).await {
            Ok(f) if f.keyring_id == meta.id && f.version == v => {
                if matches!(f.state, VersionState::Active | VersionState::DecryptOnly) {
                    tracing::debug!(keyring = name, keyring_id = %meta.id, version = v, "fetched key material");
                    versions.insert(v, Arc::new(f.key));
                }
            }
            Ok(f) => {
                tracing::warn!(keyring = name, expected_id = %meta.id, got_id = %f.keyring_id,
                    version = v, got_version = f.version, "keyserver returned material of another keyring/version; ignored");
            }
            // The version changed state between the metadata and the material request (disabled,
            // destroyed): skip it, the change feed brings the new metadata.
            Err(ClientError::Api { status, .. })
                if status == 404 || status == 410 || status == 409 =>
            {
                tracing::info!(
                    keyring = name,
                    version = v,
                    status,
                    "key version no longer served; skipped"
                );
            }
            Err(e) => return Err(FetchError::Failed(e)),
        }
    }
    let generation = meta.index.active_generation;
    let reuse = |g: u32| -> Option<Arc<SecretKey>> {
        let ix = &previous?.index;
        if ix.generation == g {
            return Some(Arc::clone(&ix.material));
        }
        ix.rotation
            .as_ref()
            .filter(|r| r.other == g)
            .map(|r| Arc::clone(&r.material))
    };
    let material = match reuse(generation) {
        Some(m) => m,
        None => fetch_index(client, name, &meta.id, generation).await?,
    };
    let rotation = match &meta.index.rotation {
        None => None,
        Some(r) => {
            let other = match r.phase {
                IndexPhase::Dual => r.to,
                IndexPhase::Cutover => r.from,
            };
            let expected_active = match r.phase {
                IndexPhase::Dual => r.from,
                IndexPhase::Cutover => r.to,
            };
            if expected_active != generation || r.from == r.to {
                return Err(FetchError::Failed(ClientError::Decode(format!(
                    "keyserver metadata of keyring {name} states a blind-index rotation that \
                     does not fit its active generation"
                ))));
            }
            let material = match reuse(other) {
                Some(m) => m,
                None => fetch_index(client, name, &meta.id, other).await?,
            };
            Some(RotationKeys {
                rotation: r.clone(),
                other,
                material,
            })
        }
    };
    Ok(KeyringState {
        id: meta.id,
        revision: meta.revision,
        active: meta.active_version,
        versions,
        index: IndexLineage {
            generation,
            material,
            legacy: meta.index.legacy_tag_versions,
            rotation,
        },
    })
}

/// Fetches the index material of `generation` of keyring `name` (id `id`).
async fn fetch_index(
    client: &Client,
    name: &str,
    id: &str,
    generation: u32,
) -> Result<Arc<SecretKey>, FetchError> {
    let f = client
        .index_material(name, generation)
        .await
        .map_err(|e| match e {
            ClientError::Api { status: 404, .. } => FetchError::NotServed(format!(
                "the blind-index key of keyring {name} is not served to this proxy \
                 (grant it with `pgseal-keyserver proxy grant PROXY --keyring {name}`)"
            )),
            other => FetchError::Failed(other),
        })?;
    if f.keyring_id != id || f.generation != generation {
        return Err(FetchError::Failed(ClientError::Decode(format!(
            "keyserver returned index material of another keyring or generation \
             for keyring {name}"
        ))));
    }
    tracing::debug!(keyring = name, keyring_id = %id, generation, "fetched blind-index material");
    Ok(Arc::new(f.key))
}

/// Derives the keys of every column of `schema` whose keyring is in `changed`; other columns keep
/// their keys from `old`.
pub(crate) fn build_columns(
    schema: &ProtectedSchema,
    keyrings: &HashMap<String, KeyringState>,
    changed: &BTreeSet<String>,
    old: &HashMap<ColumnId, Arc<ColumnCrypto>>,
) -> Result<HashMap<ColumnId, Arc<ColumnCrypto>>, KeyError> {
    let mut out = HashMap::new();
    for col in schema.columns() {
        if !changed.contains(&col.keyring) {
            if let Some(c) = old.get(&col.id) {
                out.insert(col.id.clone(), Arc::clone(c));
            }
            continue;
        }
        let Some(state) = keyrings.get(&col.keyring) else {
            continue;
        };
        let refs: Vec<(u32, &SecretKey)> = state
            .versions
            .iter()
            .map(|(v, k)| (*v, k.as_ref()))
            .collect();
        let index = IndexKeys {
            generation: state.index.generation,
            material: &state.index.material,
            legacy: &state.index.legacy,
            rotation: state.index.rotation.as_ref().map(|r| IndexRotationKeys {
                phase: r.rotation.phase,
                other: r.other,
                material: &r.material,
            }),
        };
        let crypto = ColumnCrypto::derive(col, &refs, Some(state.active), &index)?;
        out.insert(col.id.clone(), Arc::new(crypto));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use pgseal_keyserver::model::{IndexMeta, VersionInfo};

    fn meta(min: u32, states: &[(u32, VersionState)]) -> KeyringMeta {
        KeyringMeta {
            id: "kr_1".into(),
            name: "k".into(),
            active_version: 3,
            min_decryption_version: min,
            revision: 1,
            created_at: String::new(),
            versions: states
                .iter()
                .map(|(v, s)| VersionInfo {
                    version: *v,
                    state: *s,
                    created_at: String::new(),
                })
                .collect(),
            index: IndexMeta {
                active_generation: 1,
                generations: Vec::new(),
                legacy_tag_versions: Vec::new(),
                rotation: None,
            },
        }
    }

    #[test]
    fn usable_versions_drop_disabled_destroyed_and_below_min() {
        let m = meta(
            2,
            &[
                (1, VersionState::DecryptOnly),
                (2, VersionState::Disabled),
                (3, VersionState::Active),
                (4, VersionState::Destroyed),
                (5, VersionState::DecryptOnly),
            ],
        );
        assert_eq!(
            usable_versions(&m).into_iter().collect::<Vec<_>>(),
            vec![3, 5]
        );
        let m = meta(
            0,
            &[(1, VersionState::DecryptOnly), (3, VersionState::Active)],
        );
        assert_eq!(
            usable_versions(&m).into_iter().collect::<Vec<_>>(),
            vec![1, 3]
        );
    }
}
