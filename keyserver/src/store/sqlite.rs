//! SQLite implementation of [`KeyStore`]: one connection behind a mutex, WAL mode,
//! `secure_delete` on, every change in an `IMMEDIATE` transaction with its audit record.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use pgseal_crypto::SecretKey;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::{
    migrations, Access, IndexMaterial, KeyStore, Material, StoreError, TokenRecord, VersionAction,
};
use crate::audit::{record_hash, verify_chain, AuditEvent, GENESIS_HASH};
use crate::model::{
    AuditRecord, AuditVerifyReport, ChangedKeyring, ChangesResponse, IndexGenerationInfo,
    IndexMeta, IndexPassInfo, IndexPassReport, IndexPhase, IndexProxyConfirmation, IndexRotation,
    IndexRotationStatus, IndexState, KeyringMeta, KeyringName, KeyringSummary, ProxyInfo,
    ProxyName, Role, TokenInfo, VersionInfo, VersionState,
};
use crate::rootkey::{RootKey, RootKeyError};
use crate::util::{now_rfc3339, random_id};

const ROOT_CHECK_BINDING: &[u8] = b"pgseal-keyserver/root-check";

/// Most passes of one keyring that may be open (started, not reported) at a time.
pub const MAX_OPEN_INDEX_PASSES: i64 = 16;
/// An open pass older than this (seconds) counts as abandoned (its `reencrypt` died) and is
/// dropped when the next pass starts.
pub const ABANDONED_PASS_SECS: i64 = 24 * 3600;
/// Reported passes kept per keyring (besides the newest complete one); older ones are dropped
/// (the audit log keeps every report).
const KEPT_REPORTED_PASSES: i64 = 32;

/// How hard SQLite syncs to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// WAL + `synchronous=NORMAL`: durable against process crashes; a power loss may lose the
    /// last transactions (never corrupts).
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is fsynced.
    Full,
}

/// SQLite-backed key store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

/// Binding (AAD) of a wrapped version: keyring id and version.
pub fn binding(keyring_id: &str, version: u32) -> Vec<u8> {
    format!("{keyring_id}/{version}").into_bytes()
}

/// Binding (AAD) of a wrapped blind-index generation: keyring id and generation, in a
/// namespace of its own (a data-key blob does not unwrap as index material, nor the reverse).
pub fn index_binding(keyring_id: &str, generation: u32) -> Vec<u8> {
    format!("{keyring_id}/index/{generation}").into_bytes()
}

struct KeyringRow {
    id: String,
    name: String,
    created_at: String,
    active_version: u32,
    min_decryption_version: u32,
    revision: u64,
    active_index_generation: u32,
    legacy_tags: bool,
}

fn to_u32(v: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} out of range")))
}

fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} out of range")))
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match durability {
                Durability::Normal => "NORMAL",
                Durability::Full => "FULL",
            },
        )?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        migrations::migrate(&mut conn)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Runs `f` in an IMMEDIATE transaction; on success appends `ev` (outcome `ok`) and commits.
    fn write_tx<R>(
        &self,
        ev: Option<&AuditEvent>,
        f: impl FnOnce(&Transaction<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        if let Some(ev) = ev {
            append_audit_tx(&tx, ev, "ok")?;
        }
        tx.commit()?;
        Ok(out)
    }

    /// Moves WAL content into the main file and truncates the WAL, so erased pages
    /// do not linger in the WAL file.
    fn checkpoint_truncate(&self) -> Result<(), StoreError> {
        let conn = self.lock()?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

fn get_meta(tx: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(tx
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

fn set_meta(tx: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?
        .execute([key, value])?;
    Ok(())
}

fn bump_revision(tx: &Connection) -> Result<i64, StoreError> {
    let cur: i64 = get_meta(tx, "revision")?
        .unwrap_or_default()
        .parse()
        .map_err(|_| StoreError::Corrupt("revision".into()))?;
    let next = cur + 1;
    set_meta(tx, "revision", &next.to_string())?;
    Ok(next)
}

/// Records that `proxy`'s grants changed at revision `rev` (the change feed tells the proxy).
fn record_grant_change(tx: &Connection, proxy: &str, rev: i64) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO grant_changes (proxy, revision) VALUES (?1, ?2) \
         ON CONFLICT(proxy) DO UPDATE SET revision = excluded.revision",
    )?
    .execute(params![proxy, rev])?;
    Ok(())
}

fn current_revision(c: &Connection) -> Result<u64, StoreError> {
    get_meta(c, "revision")?
        .unwrap_or_default()
        .parse()
        .map_err(|_| StoreError::Corrupt("revision".into()))
}

fn append_audit_tx(tx: &Connection, ev: &AuditEvent, outcome: &str) -> Result<(), StoreError> {
    let head_seq: u64 = match get_meta(tx, "audit_head_seq")? {
        Some(s) => s
            .parse()
            .map_err(|_| StoreError::Corrupt("audit head".into()))?,
        None => 0,
    };
    let prev_hash = get_meta(tx, "audit_head_hash")?.unwrap_or_else(|| GENESIS_HASH.to_owned());
    let mut rec = AuditRecord {
        seq: head_seq + 1,
        ts: now_rfc3339(),
        actor: ev.actor.clone(),
        action: ev.action.clone(),
        keyring: ev.keyring.clone(),
        version: ev.version,
        outcome: outcome.to_owned(),
        detail: ev.detail.clone(),
        prev_hash,
        hash: String::new(),
    };
    rec.hash = record_hash(&rec);
    let seq = i64::try_from(rec.seq).map_err(|_| StoreError::Corrupt("audit seq".into()))?;
    tx.prepare_cached(
        "INSERT INTO audit (seq, ts, actor, action, keyring, version, outcome, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        seq,
        rec.ts,
        rec.actor,
        rec.action,
        rec.keyring,
        rec.version,
        rec.outcome,
        rec.detail,
        rec.prev_hash,
        rec.hash
    ])?;
    set_meta(tx, "audit_head_seq", &rec.seq.to_string())?;
    set_meta(tx, "audit_head_hash", &rec.hash)?;
    Ok(())
}

fn load_keyring(tx: &Connection, name: &KeyringName) -> Result<Option<KeyringRow>, StoreError> {
    let row = tx
        .prepare_cached(
            "SELECT id, name, created_at, active_version, min_decryption_version, revision, \
             active_index_generation, legacy_tags FROM keyrings WHERE name = ?1",
        )?
        .query_row([name.as_str()], |r| {
            Ok((
                (
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ),
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })
        .optional()?;
    match row {
        None => Ok(None),
        Some(((id, name, created_at), a, m, rev, g, legacy)) => Ok(Some(KeyringRow {
            id,
            name,
            created_at,
            active_version: to_u32(a, "active_version")?,
            min_decryption_version: to_u32(m, "min_decryption_version")?,
            revision: to_u64(rev, "revision")?,
            active_index_generation: to_u32(g, "active_index_generation")?,
            legacy_tags: legacy != 0,
        })),
    }
}

fn load_accessible(
    tx: &Connection,
    access: Access<'_>,
    name: &KeyringName,
) -> Result<KeyringRow, StoreError> {
    let row = load_keyring(tx, name)?.ok_or(StoreError::NotFound)?;
    if let Access::Proxy(p) = access {
        let granted = tx
            .prepare_cached("SELECT 1 FROM proxy_grants WHERE proxy = ?1 AND keyring_id = ?2")?
            .query_row([p.as_str(), row.id.as_str()], |_| Ok(()))
            .optional()?
            .is_some();
        if !granted {
            return Err(StoreError::NotFound);
        }
    }
    Ok(row)
}

fn versions(tx: &Connection, keyring_id: &str) -> Result<Vec<VersionInfo>, StoreError> {
    let mut stmt =
        tx.prepare_cached("SELECT version, state, created_at FROM key_versions WHERE keyring_id = ?1 ORDER BY version")?;
    let rows = stmt.query_map([keyring_id], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (v, s, created_at) = row?;
        out.push(VersionInfo {
            version: to_u32(v, "version")?,
            state: VersionState::parse(&s)
                .ok_or_else(|| StoreError::Corrupt(format!("version state {s}")))?,
            created_at,
        });
    }
    Ok(out)
}

/// The generations of a keyring's blind-index lineage, ascending.
fn index_generations(
    tx: &Connection,
    keyring_id: &str,
) -> Result<Vec<IndexGenerationInfo>, StoreError> {
    let mut stmt = tx.prepare_cached(
        "SELECT generation, state, created_at, source_version FROM index_generations \
         WHERE keyring_id = ?1 ORDER BY generation",
    )?;
    let rows = stmt.query_map([keyring_id], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<i64>>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (g, state, created_at, source) = row?;
        out.push(IndexGenerationInfo {
            generation: to_u32(g, "index generation")?,
            state: IndexState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("index generation state {state}")))?,
            created_at,
            derived_from_version: source.map(|v| to_u32(v, "source_version")).transpose()?,
        });
    }
    Ok(out)
}

/// The lineage metadata: generations, and the data-key versions whose cells may still carry a
/// tag of the previous format (those below the version generation 1 is derived from, not
/// destroyed and not below `min_decryption_version`).
fn index_meta(
    tx: &Connection,
    row: &KeyringRow,
    versions: &[VersionInfo],
) -> Result<IndexMeta, StoreError> {
    let generations = index_generations(tx, &row.id)?;
    let legacy_tag_versions = match generations.iter().find_map(|g| g.derived_from_version) {
        Some(source) if row.legacy_tags => versions
            .iter()
            .filter(|v| {
                v.version < source
                    && v.version >= row.min_decryption_version
                    && v.state != VersionState::Destroyed
            })
            .map(|v| v.version)
            .collect(),
        _ => Vec::new(),
    };
    Ok(IndexMeta {
        active_generation: row.active_index_generation,
        generations,
        legacy_tag_versions,
        rotation: load_rotation(tx, &row.id)?,
    })
}

fn meta_of(tx: &Connection, row: KeyringRow) -> Result<KeyringMeta, StoreError> {
    let versions = versions(tx, &row.id)?;
    let index = index_meta(tx, &row, &versions)?;
    Ok(KeyringMeta {
        id: row.id,
        name: row.name,
        active_version: row.active_version,
        min_decryption_version: row.min_decryption_version,
        revision: row.revision,
        created_at: row.created_at,
        versions,
        index,
    })
}

/// Generation `generation` of a lineage, with fresh random index material.
fn insert_index_generation(
    tx: &Connection,
    keyring_id: &str,
    generation: u32,
    state: IndexState,
    root: &dyn RootKey,
    created_at: &str,
) -> Result<(), StoreError> {
    let key = SecretKey::generate().map_err(|_| StoreError::Random)?;
    let wrapped = root.wrap(&key, &index_binding(keyring_id, generation))?;
    tx.prepare_cached(
        "INSERT INTO index_generations (keyring_id, generation, state, wrapped, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        keyring_id,
        generation,
        state.as_str(),
        wrapped,
        created_at
    ])?;
    Ok(())
}

/// The blind-index key rotation in progress, if any.
fn load_rotation(tx: &Connection, keyring_id: &str) -> Result<Option<IndexRotation>, StoreError> {
    let row = tx
        .prepare_cached(
            "SELECT from_generation, to_generation, phase FROM index_rotations \
             WHERE keyring_id = ?1",
        )?
        .query_row([keyring_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .optional()?;
    let Some((from, to, phase)) = row else {
        return Ok(None);
    };
    Ok(Some(IndexRotation {
        from: to_u32(from, "rotation from")?,
        to: to_u32(to, "rotation to")?,
        phase: IndexPhase::parse(&phase)
            .ok_or_else(|| StoreError::Corrupt(format!("rotation phase {phase}")))?,
    }))
}

/// Next value of the rotation sequence (confirmations and pass starts are ordered by it).
fn next_index_seq(tx: &Connection) -> Result<i64, StoreError> {
    let cur: i64 = get_meta(tx, "index_seq")?
        .unwrap_or_else(|| "0".to_owned())
        .parse()
        .map_err(|_| StoreError::Corrupt("index_seq".into()))?;
    let next = cur
        .checked_add(1)
        .ok_or_else(|| StoreError::Corrupt("index_seq overflow".into()))?;
    set_meta(tx, "index_seq", &next.to_string())?;
    Ok(next)
}

/// Who holds the keyring's grant and whether each confirmed `phase` of generation `to`.
struct Confirmations {
    /// (proxy, first confirmation time) for every granted proxy, by name.
    granted: Vec<(String, Option<String>)>,
    /// Highest sequence number among the granted proxies' confirmations (0: none).
    last_seq: i64,
}

impl Confirmations {
    fn missing(&self) -> Vec<&str> {
        self.granted
            .iter()
            .filter(|(_, at)| at.is_none())
            .map(|(p, _)| p.as_str())
            .collect()
    }
}

fn confirmations(
    tx: &Connection,
    keyring_id: &str,
    to: u32,
    phase: IndexPhase,
) -> Result<Confirmations, StoreError> {
    let mut stmt = tx.prepare_cached(
        "SELECT g.proxy, c.seq, c.confirmed_at FROM proxy_grants g \
         LEFT JOIN index_confirmations c ON c.keyring_id = g.keyring_id AND c.proxy = g.proxy \
              AND c.generation = ?2 AND c.phase = ?3 \
         WHERE g.keyring_id = ?1 ORDER BY g.proxy",
    )?;
    let rows = stmt.query_map(params![keyring_id, to, phase.as_str()], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Option<i64>>(1)?,
            r.get::<_, Option<String>>(2)?,
        ))
    })?;
    let mut out = Confirmations {
        granted: Vec::new(),
        last_seq: 0,
    };
    for row in rows {
        let (proxy, seq, at) = row?;
        out.last_seq = out.last_seq.max(seq.unwrap_or(0));
        out.granted.push((proxy, at));
    }
    Ok(out)
}

/// What the next step of rotation `rot` (the cut-over after `dual`, the finish after
/// `cutover`) still waits for; `None` when it may be taken now.
fn step_gate(
    tx: &Connection,
    keyring_id: &str,
    rot: &IndexRotation,
) -> Result<Option<String>, StoreError> {
    let c = confirmations(tx, keyring_id, rot.to, rot.phase)?;
    let missing = c.missing();
    let phase = rot.phase.as_str();
    if !missing.is_empty() {
        return Ok(Some(format!(
            "{} of {} granted proxies have not confirmed phase {phase} of generation {}: {}",
            missing.len(),
            c.granted.len(),
            rot.to,
            missing.join(", ")
        )));
    }
    let passed = tx
        .prepare_cached(
            "SELECT 1 FROM index_passes WHERE keyring_id = ?1 AND generation = ?2 AND phase = ?3 \
             AND complete = 1 AND start_seq > ?4",
        )?
        .exists(params![keyring_id, rot.to, phase, c.last_seq])?;
    if !passed {
        let kind = match rot.phase {
            IndexPhase::Dual => "re-index",
            IndexPhase::Cutover => "compaction",
        };
        return Ok(Some(format!(
            "no complete {kind} pass (phase {phase} of generation {}) reported that started \
             after the last confirmation: run pgseal-proxy reencrypt",
            rot.to
        )));
    }
    Ok(None)
}

fn no_rotation(name: &KeyringName) -> StoreError {
    StoreError::Conflict(
        "no_index_rotation",
        format!(
            "no blind-index key rotation is in progress for keyring {name} \
             (start one with `keyring rotate-index {name}`)"
        ),
    )
}

/// The rotation, if it is at `phase` of generation `generation`; else the stale-proxy conflict.
fn current_rotation(
    tx: &Connection,
    keyring_id: &str,
    generation: u32,
    phase: IndexPhase,
) -> Result<IndexRotation, StoreError> {
    let rot = load_rotation(tx, keyring_id)?;
    match rot {
        Some(r) if r.to == generation && r.phase == phase => Ok(r),
        Some(r) => Err(StoreError::Conflict(
            "index_rotation_stale",
            format!(
                "the blind-index key rotation is at phase {} of generation {}, not phase {} of \
                 generation {generation}: re-read the keyring metadata",
                r.phase.as_str(),
                r.to,
                phase.as_str()
            ),
        )),
        None => Err(StoreError::Conflict(
            "index_rotation_stale",
            format!(
                "no blind-index key rotation is in progress (phase {} of generation \
                 {generation} is over): re-read the keyring metadata",
                phase.as_str()
            ),
        )),
    }
}

/// Bumps the server revision and marks the keyring changed at it.
fn touch_keyring(tx: &Connection, keyring_id: &str) -> Result<(), StoreError> {
    let rev = bump_revision(tx)?;
    tx.prepare_cached("UPDATE keyrings SET revision = ?1 WHERE id = ?2")?
        .execute(params![rev, keyring_id])?;
    Ok(())
}

fn index_passes(
    tx: &Connection,
    keyring_id: &str,
    generation: u32,
) -> Result<Vec<IndexPassInfo>, StoreError> {
    let mut stmt = tx.prepare_cached(
        "SELECT id, proxy, generation, phase, started_at, ended_at, complete, rewritten \
         FROM index_passes WHERE keyring_id = ?1 AND generation = ?2 ORDER BY start_seq",
    )?;
    let rows = stmt.query_map(params![keyring_id, generation], |r| {
        Ok((
            (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, Option<String>>(5)?,
            r.get::<_, Option<i64>>(6)?,
            r.get::<_, Option<i64>>(7)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let ((id, proxy), g, phase, started_at, ended_at, complete, rewritten) = row?;
        out.push(IndexPassInfo {
            id,
            proxy,
            generation: to_u32(g, "pass generation")?,
            phase: IndexPhase::parse(&phase)
                .ok_or_else(|| StoreError::Corrupt(format!("pass phase {phase}")))?,
            started_at,
            ended_at,
            complete: complete.map(|c| c != 0),
            rewritten: rewritten.map(|n| to_u64(n, "rewritten")).transpose()?,
        });
    }
    Ok(out)
}

fn insert_version(
    tx: &Connection,
    keyring_id: &str,
    version: u32,
    root: &dyn RootKey,
    created_at: &str,
) -> Result<(), StoreError> {
    let key = SecretKey::generate().map_err(|_| StoreError::Random)?;
    let wrapped = root.wrap(&key, &binding(keyring_id, version))?;
    tx.prepare_cached(
        "INSERT INTO key_versions (keyring_id, version, state, wrapped, created_at) VALUES (?1, ?2, 'active', ?3, ?4)",
    )?
    .execute(params![keyring_id, version, wrapped, created_at])?;
    Ok(())
}

fn version_state(
    tx: &Connection,
    keyring_id: &str,
    version: u32,
) -> Result<VersionState, StoreError> {
    let s: String = tx
        .prepare_cached("SELECT state FROM key_versions WHERE keyring_id = ?1 AND version = ?2")?
        .query_row(params![keyring_id, version], |r| r.get(0))
        .optional()?
        .ok_or(StoreError::NotFound)?;
    VersionState::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("version state {s}")))
}

fn token_info(rec: &TokenRecord) -> TokenInfo {
    TokenInfo {
        id: rec.id.clone(),
        name: rec.name.clone(),
        role: rec.role,
        created_at: rec.created_at.clone(),
        expires_at: rec.expires_at,
        revoked: rec.revoked,
    }
}

fn load_token(c: &Connection, id: &str) -> Result<Option<TokenRecord>, StoreError> {
    let row = c
        .prepare_cached("SELECT id, name, role, secret_hash, created_at, expires_at, revoked_at FROM tokens WHERE id = ?1")?
        .query_row([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, Option<String>>(6)?,
            ))
        })
        .optional()?;
    let Some((id, name, role, hash, created_at, expires_at, revoked_at)) = row else {
        return Ok(None);
    };
    Ok(Some(TokenRecord {
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("token role {role}")))?,
        secret_hash: hash
            .try_into()
            .map_err(|_| StoreError::Corrupt("token hash length".into()))?,
        id,
        name,
        created_at,
        expires_at,
        revoked: revoked_at.is_some(),
    }))
}

fn proxy_info(c: &Connection, name: &str) -> Result<ProxyInfo, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT k.name FROM proxy_grants g JOIN keyrings k ON k.id = g.keyring_id WHERE g.proxy = ?1 ORDER BY k.name",
    )?;
    let keyrings = stmt
        .query_map([name], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ProxyInfo {
        name: name.to_owned(),
        keyrings,
    })
}

fn read_audit(c: &Connection, after: u64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let mut stmt = c.prepare_cached(
        "SELECT seq, ts, actor, action, keyring, version, outcome, detail, prev_hash, hash
         FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after, limit], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, Option<i64>>(5)?,
            r.get::<_, String>(6)?,
            r.get::<_, Option<String>>(7)?,
            r.get::<_, String>(8)?,
            r.get::<_, String>(9)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, ts, actor, action, keyring, version, outcome, detail, prev_hash, hash) = row?;
        out.push(AuditRecord {
            seq: to_u64(seq, "audit seq")?,
            ts,
            actor,
            action,
            keyring,
            version: version.map(|v| to_u32(v, "audit version")).transpose()?,
            outcome,
            detail,
            prev_hash,
            hash,
        });
    }
    Ok(out)
}

fn audit_head(c: &Connection) -> Result<Option<(u64, String)>, StoreError> {
    let seq = get_meta(c, "audit_head_seq")?;
    let hash = get_meta(c, "audit_head_hash")?;
    match (seq, hash) {
        (Some(s), Some(h)) => Ok(Some((
            s.parse()
                .map_err(|_| StoreError::Corrupt("audit head".into()))?,
            h,
        ))),
        _ => Ok(None),
    }
}

fn verify_all(c: &Connection) -> Result<AuditVerifyReport, StoreError> {
    // Read in pages so a long log does not need one huge statement result.
    let head = audit_head(c)?;
    let mut all = Vec::new();
    let mut after = 0u64;
    loop {
        let page = read_audit(c, after, 10_000)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        all.extend(page);
    }
    Ok(verify_chain(all, head))
}

impl KeyStore for SqliteStore {
    fn check_root_key(&self, root: &dyn RootKey) -> Result<(), StoreError> {
        let conn = self.lock()?;
        match get_meta(&conn, "root_check")? {
            Some(hex_blob) => {
                let blob =
                    hex::decode(hex_blob).map_err(|_| StoreError::Corrupt("root check".into()))?;
                root.unwrap(&blob, ROOT_CHECK_BINDING)
                    .map_err(|_| RootKeyError::Mismatch)?;
                Ok(())
            }
            None => {
                let probe = SecretKey::generate().map_err(|_| StoreError::Random)?;
                let blob = root.wrap(&probe, ROOT_CHECK_BINDING)?;
                set_meta(&conn, "root_check", &hex::encode(blob))
            }
        }
    }

    fn append_audit(&self, ev: &AuditEvent, outcome: &str) -> Result<(), StoreError> {
        self.write_tx(None, |tx| append_audit_tx(tx, ev, outcome))
    }

    fn create_keyring(
        &self,
        name: &KeyringName,
        root: &dyn RootKey,
        ev: &AuditEvent,
    ) -> Result<KeyringMeta, StoreError> {
        self.write_tx(Some(ev), |tx| {
            if load_keyring(tx, name)?.is_some() {
                return Err(StoreError::AlreadyExists);
            }
            let id = random_id("kr").map_err(|_| StoreError::Random)?;
            let now = now_rfc3339();
            let rev = bump_revision(tx)?;
            tx.prepare_cached(
                "INSERT INTO keyrings (id, name, created_at, active_version, min_decryption_version, revision)
                 VALUES (?1, ?2, ?3, 1, 1, ?4)",
            )?
            .execute(params![id, name.as_str(), now, rev])?;
            insert_version(tx, &id, 1, root, &now)?;
            insert_index_generation(tx, &id, 1, IndexState::Active, root, &now)?;
            let row = load_keyring(tx, name)?.ok_or(StoreError::NotFound)?;
            meta_of(tx, row)
        })
    }

    fn keyring(
        &self,
        access: Access<'_>,
        name: &KeyringName,
        ev: &AuditEvent,
    ) -> Result<KeyringMeta, StoreError> {
        self.write_tx(Some(ev), |tx| {
            let row = load_accessible(tx, access, name)?;
            meta_of(tx, row)
        })
    }

    fn list_keyrings(&self, ev: &AuditEvent) -> Result<Vec<KeyringSummary>, StoreError> {
        self.write_tx(Some(ev), |tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT id, name, active_version, min_decryption_version, revision FROM keyrings ORDER BY name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?, r.get::<_, i64>(4)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, name, a, m, rev) = row?;
                out.push(KeyringSummary {
                    id,
                    name,
                    active_version: to_u32(a, "active_version")?,
                    min_decryption_version: to_u32(m, "min_decryption_version")?,
                    revision: to_u64(rev, "revision")?,
                });
            }
            Ok(out)
        })
    }

    fn rotate(
        &self,
        name: &KeyringName,
        root: &dyn RootKey,
        ev: &AuditEvent,
    ) -> Result<KeyringMeta, StoreError> {
        self.write_tx(Some(ev), |tx| {
            let row = load_keyring(tx, name)?.ok_or(StoreError::NotFound)?;
            let max: i64 = tx
                .prepare_cached("SELECT COALESCE(MAX(version), 0) FROM key_versions WHERE keyring_id = ?1")?
                .query_row([row.id.as_str()], |r| r.get(0))?;
            let next = to_u32(max, "version")?
                .checked_add(1)
                .ok_or_else(|| StoreError::Conflict("version_overflow", "no more versions".into()))?;
            tx.prepare_cached("UPDATE key_versions SET state = 'decrypt_only' WHERE keyring_id = ?1 AND state = 'active'")?
                .execute([row.id.as_str()])?;
            let now = now_rfc3339();
            insert_version(tx, &row.id, next, root, &now)?;
            let rev = bump_revision(tx)?;
            tx.prepare_cached("UPDATE keyrings SET active_version = ?1, revision = ?2 WHERE id = ?3")?
                .execute(params![next, rev, row.id])?;
            let row = load_keyring(tx, name)?.ok_or(StoreError::NotFound)?;
            meta_of(tx, row)
        })
    }

    fn set_version_state(
        &self,
        name: &KeyringName,
        version: u32,
        action: VersionAction,
        ev: &AuditEvent,
    ) -> Result<KeyringMeta, StoreError> {
        let meta = self.write_tx(Some(ev), |tx| {
            let row = load_keyring(tx, name)?.ok_or(StoreError::NotFound)?;
            let state = version_state(tx, &row.id, version)?;
            let conflict =
                |code: &'static str, msg: &str| Err(StoreError::Conflict(code, msg.to_owned()));
            let new_state = match (action, state) {
                (_, VersionState::Destroyed) => {
                    return conflict("version_destroyed", "the version is destroyed")
                }
                (_, VersionState::Active) => {
                    return conflict(
                        "version_active",
                        "the active version cannot be changed; rotate first",
                    )
                }
                (VersionAction::Disable, VersionState::DecryptOnly) => VersionState::Disabled,
                (VersionAction::Disable, VersionState::Disabled) => {
                    return conflict("already_disabled", "the version is already disabled")
                }
                (VersionAction::Enable, VersionState::Disabled) => VersionState::DecryptOnly,
                (VersionAction::Enable, VersionState::DecryptOnly) => {
                    return conflict("already_enabled", "the version is already enabled")
                }
                (VersionAction::Destroy, VersionState::Disabled) => VersionState::Destroyed,
                (VersionAction::Destroy, VersionState::DecryptOnly) => {
                    return conflict("not_disabled", "disable the version before destroying it")
                }
            };
            if new_state == VersionState::Destroyed {
                let index_source = tx
                    .prepare_cached(
                        "SELECT generation FROM index_generations \
                         WHERE keyring_id = ?1 AND source_version = ?2 AND state <> 'retired'",
                    )?
                    .query_row(params![row.id, version], |r| r.get::<_, i64>(0))
                    .optional()?;
                if let Some(g) = index_source {
                    return conflict(
                        "index_source",
                        &format!(
                            "blind-index generation {g} of this keyring is derived from version \
                             {version}: destroying it would lose every stored blind index \
                             (rotate the blind-index key first, docs/keyserver.md)"
                        ),
                    );
                }
                tx.prepare_cached(
                    "UPDATE key_versions SET state = 'destroyed', wrapped = NULL, destroyed_at = ?1
                     WHERE keyring_id = ?2 AND version = ?3",
                )?
                .execute(params![now_rfc3339(), row.id, version])?;
            } else {
                tx.prepare_cached(
                    "UPDATE key_versions SET state = ?1 WHERE keyring_id = ?2 AND version = ?3",
                )?
                .execute(params![new_state.as_str(), row.id, version])?;
            }
            let rev = bump_revision(tx)?;
            tx.prepare_cached("UPDATE keyrings SET revision = ?1 WHERE id = ?2")?
                .execute(params![rev, row.id])?;
            let row = load_keyring(tx, name)?.ok_or(StoreError::NotFound)?;
            meta_of(tx, row)
        })?;
        if action == VersionAction::Destroy {
            self.checkpoint_truncate()?;
        }
        Ok(meta)
    }

    fn set_min_decryption_version(
        &self,
        name: &KeyringName,
        min: u32,
        ev: &AuditEvent,
    ) -> Result<KeyringMeta, StoreError> {
        self.write_tx(Some(ev), |tx| {
            let row = load_keyring(tx, name)?.ok_or(StoreError::NotFound)?;
            if min == 0 || min > row.active_version {
                return Err(StoreError::Invalid(format!(
                    "min_decryption_version must be between 1 and the active version {}",
                    row.active_version
                )));
            }
            let rev = bump_revision(tx)?;
            tx.prepare_cached(
                "UPDATE keyrings SET min_decryption_version = ?1, revision = ?2 WHERE id = ?3",
            )?
            .execute(params![min, rev, row.id])?;
            let row = load_keyring(tx, name)?.ok_or(StoreError::NotFound)?;
            meta_of(tx, row)
        })
    }

    fn fetch_material(
        &self,
        proxy: &ProxyName,
        name: &KeyringName,
        version: u32,
        root: &dyn RootKey,
        ev: &AuditEvent,
    ) -> Result<Material, StoreError> {
        self.write_tx(Some(ev), |tx| {
            let row = load_accessible(tx, Access::Proxy(proxy), name)?;
            let (state, wrapped): (String, Option<Vec<u8>>) = tx
                .prepare_cached("SELECT state, wrapped FROM key_versions WHERE keyring_id = ?1 AND version = ?2")?
                .query_row(params![row.id, version], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .ok_or(StoreError::NotFound)?;
            let state = VersionState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("version state {state}")))?;
            match state {
                VersionState::Destroyed => return Err(StoreError::Destroyed),
                VersionState::Disabled => {
                    return Err(StoreError::Conflict("version_disabled", "the version is disabled".into()))
                }
                VersionState::Active | VersionState::DecryptOnly => {}
            }
            if version < row.min_decryption_version {
                return Err(StoreError::Conflict(
                    "below_min_decryption_version",
                    format!("version {version} is below min_decryption_version {}", row.min_decryption_version),
                ));
            }
            let wrapped = wrapped.ok_or_else(|| StoreError::Corrupt("missing wrapped key".into()))?;
            let key = root.unwrap(&wrapped, &binding(&row.id, version))?;
            Ok(Material { keyring_id: row.id, version, state, key })
        })
    }

    fn fetch_index_material(
        &self,
        proxy: &ProxyName,
        name: &KeyringName,
        generation: u32,
        root: &dyn RootKey,
        ev: &AuditEvent,
    ) -> Result<IndexMaterial, StoreError> {
        self.write_tx(Some(ev), |tx| {
            let row = load_accessible(tx, Access::Proxy(proxy), name)?;
            let (state, wrapped, source): (String, Option<Vec<u8>>, Option<i64>) = tx
                .prepare_cached(
                    "SELECT state, wrapped, source_version FROM index_generations \
                     WHERE keyring_id = ?1 AND generation = ?2",
                )?
                .query_row(params![row.id, generation], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?
                .ok_or(StoreError::NotFound)?;
            let state = IndexState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("index generation state {state}")))?;
            if !state.is_served() {
                return Err(StoreError::IndexRetired);
            }
            let key = match (wrapped, source) {
                (Some(w), None) => root.unwrap(&w, &index_binding(&row.id, generation))?,
                (None, Some(v)) => {
                    // Generation 1 of a keyring from before lineages: that version's material
                    // (destroying it is refused while the generation exists).
                    let v = to_u32(v, "source_version")?;
                    let w: Option<Vec<u8>> = tx
                        .prepare_cached(
                            "SELECT wrapped FROM key_versions WHERE keyring_id = ?1 AND version = ?2",
                        )?
                        .query_row(params![row.id, v], |r| r.get(0))
                        .optional()?
                        .flatten();
                    let w = w.ok_or_else(|| {
                        StoreError::Corrupt("index source version has no material".into())
                    })?;
                    root.unwrap(&w, &binding(&row.id, v))?
                }
                _ => return Err(StoreError::Corrupt("index generation material".into())),
            };
            Ok(IndexMaterial {
                keyring_id: row.id,
                generation,
                key,
            })
        })
    }

    fn index_rotate_start(
        &self,
        name: &KeyringName,
        root: &dyn RootKey,
        ev: &AuditEvent,
    ) -> Result<KeyringMeta, StoreError> {
        self.write_tx(Some(ev), |tx| {
            let row = load_keyring(tx, name)?.ok_or(StoreError::NotFound)?;
            if let Some(r) = load_rotation(tx, &row.id)? {
                return Err(StoreError::Conflict(
                    "index_rotation_in_progress",
                    format!(
                        "a blind-index key rotation of keyring {name} from generation {} to {} \
                         is in progress (phase {}): finish it first",
                        r.from,
                        r.to,
                        r.phase.as_str()
                    ),
                ));
            }
            let max: i64 = tx
                .prepare_cached(
                    "SELECT COALESCE(MAX(generation), 0) FROM index_generations \
                     WHERE keyring_id = ?1",
                )?
                .query_row([row.id.as_str()], |r| r.get(0))?;
            let next = to_u32(max, "index generation")?
                .checked_add(1)
                .ok_or_else(|| {
                    StoreError::Conflict("generation_overflow", "no more generations".into())
                })?;
            let now = now_rfc3339();
            insert_index_generation(tx, &row.id, next, IndexState::Next, root, &now)?;
            // Nothing of an earlier rotation is left (finish clears it); be sure.
            tx.prepare_cached("DELETE FROM index_confirmations WHERE keyring_id = ?1")?
                .execute([row.id.as_str()])?;
            tx.prepare_cached("DELETE FROM index_passes WHERE keyring_id = ?1")?
                .execute([row.id.as_str()])?;
            tx.prepare_cached(
                "INSERT INTO index_rotations (keyring_id, from_generation, to_generation, phase, \
                 started_at) VALUES (?1, ?2, ?3, 'dual', ?4)",
            )?
            .execute(params![row.id, row.active_index_generation, next, now])?;
            touch_keyring(tx, &row.id)?;
            let row = load_keyring(tx, name)?.ok_or(StoreError::NotFound)?;
            meta_of(tx, row)
        })
    }

    fn index_cutover(
        &self,
        name: &KeyringName,
        ev: &AuditEvent,
    ) -> Result<KeyringMeta, StoreError> {
        self.write_tx(Some(ev), |tx| {
            let row = load_keyring(tx, name)?.ok_or(StoreError::NotFound)?;
            let rot = load_rotation(tx, &row.id)?.ok_or_else(|| no_rotation(name))?;
            if rot.phase != IndexPhase::Dual {
                return Err(StoreError::Conflict(
                    "index_phase",
                    format!(
                        "the rotation of keyring {name} to generation {} is past the cut-over \
                         (phase cutover): the next step is --finish",
                        rot.to
                    ),
                ));
            }
            if let Some(msg) = step_gate(tx, &row.id, &rot)? {
                return Err(StoreError::Conflict("index_rotation_not_ready", msg));
            }
            // In this order: at most one generation is active at any moment.
            let a = tx
                .prepare_cached(
                    "UPDATE index_generations SET state = 'retiring' \
                     WHERE keyring_id = ?1 AND generation = ?2 AND state = 'active'",
                )?
                .execute(params![row.id, rot.from])?;
            let b = tx
                .prepare_cached(
                    "UPDATE index_generations SET state = 'active' \
                     WHERE keyring_id = ?1 AND generation = ?2 AND state = 'next'",
                )?
                .execute(params![row.id, rot.to])?;
            if a != 1 || b != 1 {
                return Err(StoreError::Corrupt(
                    "rotation generations not in the states of phase dual".into(),
                ));
            }
            tx.prepare_cached(
                "UPDATE index_rotations SET phase = 'cutover' WHERE keyring_id = ?1",
            )?
            .execute([row.id.as_str()])?;
            tx.prepare_cached("UPDATE keyrings SET active_index_generation = ?1 WHERE id = ?2")?
                .execute(params![rot.to, row.id])?;
            touch_keyring(tx, &row.id)?;
            let row = load_keyring(tx, name)?.ok_or(StoreError::NotFound)?;
            meta_of(tx, row)
        })
    }

    fn index_finish(&self, name: &KeyringName, ev: &AuditEvent) -> Result<KeyringMeta, StoreError> {
        let meta = self.write_tx(Some(ev), |tx| {
            let row = load_keyring(tx, name)?.ok_or(StoreError::NotFound)?;
            let rot = load_rotation(tx, &row.id)?.ok_or_else(|| no_rotation(name))?;
            if rot.phase != IndexPhase::Cutover {
                return Err(StoreError::Conflict(
                    "index_phase",
                    format!(
                        "the rotation of keyring {name} to generation {} has not been cut over \
                         yet (phase dual): the next step is --cutover",
                        rot.to
                    ),
                ));
            }
            if let Some(msg) = step_gate(tx, &row.id, &rot)? {
                return Err(StoreError::Conflict("index_rotation_not_ready", msg));
            }
            // The random material is erased (secure_delete, then the WAL is truncated below);
            // a derived generation keeps only the number of its source version, which can
            // then be destroyed.
            let n = tx
                .prepare_cached(
                    "UPDATE index_generations SET state = 'retired', wrapped = NULL, \
                     retired_at = ?1 WHERE keyring_id = ?2 AND generation = ?3 \
                     AND state = 'retiring'",
                )?
                .execute(params![now_rfc3339(), row.id, rot.from])?;
            if n != 1 {
                return Err(StoreError::Corrupt(
                    "rotation generation not in the state of phase cutover".into(),
                ));
            }
            for sql in [
                "DELETE FROM index_rotations WHERE keyring_id = ?1",
                "DELETE FROM index_confirmations WHERE keyring_id = ?1",
                "DELETE FROM index_passes WHERE keyring_id = ?1",
            ] {
                tx.prepare_cached(sql)?.execute([row.id.as_str()])?;
            }
            touch_keyring(tx, &row.id)?;
            let row = load_keyring(tx, name)?.ok_or(StoreError::NotFound)?;
            meta_of(tx, row)
        })?;
        self.checkpoint_truncate()?;
        Ok(meta)
    }

    fn index_rotation_status(
        &self,
        name: &KeyringName,
        ev: &AuditEvent,
    ) -> Result<IndexRotationStatus, StoreError> {
        self.write_tx(Some(ev), |tx| {
            let row = load_keyring(tx, name)?.ok_or(StoreError::NotFound)?;
            let rotation = load_rotation(tx, &row.id)?;
            let (proxies, passes, next_step_blocked_by) = match &rotation {
                None => (Vec::new(), Vec::new(), None),
                Some(rot) => {
                    let c = confirmations(tx, &row.id, rot.to, rot.phase)?;
                    let proxies = c
                        .granted
                        .into_iter()
                        .map(|(proxy, at)| IndexProxyConfirmation {
                            proxy,
                            confirmed: at.is_some(),
                            confirmed_at: at,
                        })
                        .collect();
                    (
                        proxies,
                        index_passes(tx, &row.id, rot.to)?,
                        step_gate(tx, &row.id, rot)?,
                    )
                }
            };
            Ok(IndexRotationStatus {
                keyring: row.name,
                active_generation: row.active_index_generation,
                rotation,
                proxies,
                passes,
                next_step_blocked_by,
            })
        })
    }

    fn index_confirm(
        &self,
        proxy: &ProxyName,
        name: &KeyringName,
        generation: u32,
        phase: IndexPhase,
        ev: &AuditEvent,
    ) -> Result<(), StoreError> {
        self.write_tx(Some(ev), |tx| {
            let row = load_accessible(tx, Access::Proxy(proxy), name)?;
            current_rotation(tx, &row.id, generation, phase)?;
            let known = tx
                .prepare_cached(
                    "SELECT 1 FROM index_confirmations WHERE keyring_id = ?1 AND generation = ?2 \
                     AND phase = ?3 AND proxy = ?4",
                )?
                .exists(params![row.id, generation, phase.as_str(), proxy.as_str()])?;
            if !known {
                // The first confirmation counts: "after the last confirmation" cannot be moved
                // by a proxy repeating itself.
                let seq = next_index_seq(tx)?;
                tx.prepare_cached(
                    "INSERT INTO index_confirmations (keyring_id, generation, phase, proxy, seq, \
                     confirmed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    row.id,
                    generation,
                    phase.as_str(),
                    proxy.as_str(),
                    seq,
                    now_rfc3339()
                ])?;
            }
            Ok(())
        })
    }

    fn index_pass_start(
        &self,
        proxy: &ProxyName,
        name: &KeyringName,
        generation: u32,
        phase: IndexPhase,
        pass_id: &str,
        ev: &AuditEvent,
    ) -> Result<(), StoreError> {
        self.write_tx(Some(ev), |tx| {
            let row = load_accessible(tx, Access::Proxy(proxy), name)?;
            current_rotation(tx, &row.id, generation, phase)?;
            let c = confirmations(tx, &row.id, generation, phase)?;
            let missing = c.missing().len();
            if missing > 0 {
                // Counts only: a proxy does not learn the names of the others.
                return Err(StoreError::Conflict(
                    "index_phase_unconfirmed",
                    format!(
                        "{missing} of {} proxies granted keyring {name} have not confirmed \
                         phase {} of generation {generation} yet; retry when they have",
                        c.granted.len(),
                        phase.as_str()
                    ),
                ));
            }
            let now = crate::util::now_unix();
            tx.prepare_cached(
                "DELETE FROM index_passes WHERE keyring_id = ?1 AND ended_at IS NULL \
                 AND started_unix < ?2",
            )?
            .execute(params![row.id, now.saturating_sub(ABANDONED_PASS_SECS)])?;
            let open: i64 = tx
                .prepare_cached(
                    "SELECT COUNT(*) FROM index_passes WHERE keyring_id = ?1 AND ended_at IS NULL",
                )?
                .query_row([row.id.as_str()], |r| r.get(0))?;
            if open >= MAX_OPEN_INDEX_PASSES {
                return Err(StoreError::Conflict(
                    "too_many_open_passes",
                    format!(
                        "{open} passes of keyring {name} are open (started, not reported); at \
                         most {MAX_OPEN_INDEX_PASSES} may be: report them, or wait until they \
                         are {} hours old and count as abandoned",
                        ABANDONED_PASS_SECS / 3600
                    ),
                ));
            }
            let seq = next_index_seq(tx)?;
            tx.prepare_cached(
                "INSERT INTO index_passes (id, keyring_id, generation, phase, proxy, start_seq, \
                 started_at, started_unix) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                pass_id,
                row.id,
                generation,
                phase.as_str(),
                proxy.as_str(),
                seq,
                now_rfc3339(),
                now
            ])?;
            Ok(())
        })
    }

    fn index_pass_report(
        &self,
        proxy: &ProxyName,
        name: &KeyringName,
        pass_id: &str,
        report: &IndexPassReport,
        ev: &AuditEvent,
    ) -> Result<(), StoreError> {
        self.write_tx(Some(ev), |tx| {
            let row = load_accessible(tx, Access::Proxy(proxy), name)?;
            let pass = tx
                .prepare_cached(
                    "SELECT generation, phase, ended_at IS NOT NULL FROM index_passes \
                     WHERE id = ?1 AND keyring_id = ?2 AND proxy = ?3",
                )?
                .query_row(params![pass_id, row.id, proxy.as_str()], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, bool>(2)?,
                    ))
                })
                .optional()?;
            // Unknown, of another keyring or started by another proxy: all look alike.
            let (generation, phase, reported) = pass.ok_or(StoreError::NotFound)?;
            if reported {
                return Err(StoreError::Conflict(
                    "index_pass_reported",
                    "the pass was already reported".into(),
                ));
            }
            let generation = to_u32(generation, "pass generation")?;
            let phase = IndexPhase::parse(&phase)
                .ok_or_else(|| StoreError::Corrupt(format!("pass phase {phase}")))?;
            current_rotation(tx, &row.id, generation, phase)?;
            let rewritten = i64::try_from(report.rewritten)
                .map_err(|_| StoreError::Invalid("rewritten is too large".into()))?;
            tx.prepare_cached(
                "UPDATE index_passes SET ended_at = ?1, complete = ?2, rewritten = ?3 \
                 WHERE id = ?4",
            )?
            .execute(params![now_rfc3339(), report.complete, rewritten, pass_id])?;
            // Bounded: keep the newest reported passes and the newest complete one (the only
            // one the gates need).
            tx.prepare_cached(
                "DELETE FROM index_passes WHERE keyring_id = ?1 AND ended_at IS NOT NULL \
                 AND id NOT IN (SELECT id FROM index_passes WHERE keyring_id = ?1 \
                     AND ended_at IS NOT NULL ORDER BY start_seq DESC LIMIT ?2) \
                 AND id NOT IN (SELECT id FROM index_passes WHERE keyring_id = ?1 \
                     AND complete = 1 ORDER BY start_seq DESC LIMIT 1)",
            )?
            .execute(params![row.id, KEPT_REPORTED_PASSES])?;
            Ok(())
        })
    }

    fn changes_since(&self, access: Access<'_>, since: u64) -> Result<ChangesResponse, StoreError> {
        let conn = self.lock()?;
        let revision = current_revision(&conn)?;
        let since = i64::try_from(since).unwrap_or(i64::MAX);
        let rows: Vec<(String, String, i64)> = match access {
            Access::Admin => conn
                .prepare_cached("SELECT id, name, revision FROM keyrings WHERE revision > ?1 ORDER BY revision")?
                .query_map([since], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?,
            Access::Proxy(p) => conn
                .prepare_cached(
                    "SELECT k.id, k.name, k.revision FROM keyrings k JOIN proxy_grants g ON g.keyring_id = k.id
                     WHERE g.proxy = ?1 AND k.revision > ?2 ORDER BY k.revision",
                )?
                .query_map(params![p.as_str(), since], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?,
        };
        let changed = rows
            .into_iter()
            .map(|(id, name, rev)| {
                Ok(ChangedKeyring {
                    id,
                    name,
                    revision: to_u64(rev, "revision")?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        let grants_changed = match access {
            Access::Admin => false,
            Access::Proxy(p) => conn
                .prepare_cached("SELECT 1 FROM grant_changes WHERE proxy = ?1 AND revision > ?2")?
                .exists(params![p.as_str(), since])?,
        };
        Ok(ChangesResponse {
            revision,
            changed,
            grants_changed,
        })
    }

    fn create_token(&self, rec: &TokenRecord, ev: &AuditEvent) -> Result<(), StoreError> {
        self.write_tx(Some(ev), |tx| {
            tx.prepare_cached(
                "INSERT INTO tokens (id, name, role, secret_hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![rec.id, rec.name, rec.role.as_str(), rec.secret_hash.to_vec(), rec.created_at, rec.expires_at])?;
            Ok(())
        })
    }

    fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let conn = self.lock()?;
        load_token(&conn, id)
    }

    fn list_tokens(&self, ev: &AuditEvent) -> Result<Vec<TokenInfo>, StoreError> {
        self.write_tx(Some(ev), |tx| {
            let ids: Vec<String> = tx
                .prepare_cached("SELECT id FROM tokens ORDER BY created_at, id")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut out = Vec::new();
            for id in ids {
                if let Some(rec) = load_token(tx, &id)? {
                    out.push(token_info(&rec));
                }
            }
            Ok(out)
        })
    }

    fn revoke_token(&self, id: &str, ev: &AuditEvent) -> Result<TokenInfo, StoreError> {
        self.write_tx(Some(ev), |tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
                )?
                .execute(params![now_rfc3339(), id])?;
            let rec = load_token(tx, id)?.ok_or(StoreError::NotFound)?;
            if n == 0 {
                return Err(StoreError::Conflict(
                    "already_revoked",
                    "the token is already revoked".into(),
                ));
            }
            Ok(token_info(&rec))
        })
    }

    fn set_proxy(
        &self,
        name: &ProxyName,
        keyrings: &[KeyringName],
        ev: &AuditEvent,
    ) -> Result<ProxyInfo, StoreError> {
        self.write_tx(Some(ev), |tx| {
            let mut ids = Vec::new();
            for k in keyrings {
                let row = load_keyring(tx, k)?.ok_or_else(|| StoreError::Invalid(format!("unknown keyring {k}")))?;
                ids.push(row.id);
            }
            tx.prepare_cached("INSERT INTO proxies (name, created_at) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING")?
                .execute(params![name.as_str(), now_rfc3339()])?;
            tx.prepare_cached("DELETE FROM proxy_grants WHERE proxy = ?1")?.execute([name.as_str()])?;
            // Granted keyrings count as changed, so a proxy polling the change feed picks up new
            // grants; the grant change itself is recorded for withdrawn ones.
            let rev = bump_revision(tx)?;
            record_grant_change(tx, name.as_str(), rev)?;
            for id in ids {
                tx.prepare_cached("INSERT OR IGNORE INTO proxy_grants (proxy, keyring_id) VALUES (?1, ?2)")?
                    .execute([name.as_str(), id.as_str()])?;
                tx.prepare_cached("UPDATE keyrings SET revision = ?1 WHERE id = ?2")?.execute(params![rev, id])?;
            }
            // A withdrawn grant takes the proxy's rotation confirmations with it: granted again,
            // it confirms again (after re-reading the keyring).
            tx.prepare_cached(
                "DELETE FROM index_confirmations WHERE proxy = ?1 AND keyring_id NOT IN \
                 (SELECT keyring_id FROM proxy_grants WHERE proxy = ?1)",
            )?
            .execute([name.as_str()])?;
            proxy_info(tx, name.as_str())
        })
    }

    fn list_proxies(&self, ev: &AuditEvent) -> Result<Vec<ProxyInfo>, StoreError> {
        self.write_tx(Some(ev), |tx| {
            let names: Vec<String> = tx
                .prepare_cached("SELECT name FROM proxies ORDER BY name")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            names.iter().map(|n| proxy_info(tx, n)).collect()
        })
    }

    fn delete_proxy(&self, name: &ProxyName, ev: &AuditEvent) -> Result<(), StoreError> {
        self.write_tx(Some(ev), |tx| {
            tx.prepare_cached("DELETE FROM proxy_grants WHERE proxy = ?1")?
                .execute([name.as_str()])?;
            tx.prepare_cached("DELETE FROM index_confirmations WHERE proxy = ?1")?
                .execute([name.as_str()])?;
            let n = tx
                .prepare_cached("DELETE FROM proxies WHERE name = ?1")?
                .execute([name.as_str()])?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            let rev = bump_revision(tx)?;
            record_grant_change(tx, name.as_str(), rev)
        })
    }

    fn audit_records(
        &self,
        after: u64,
        limit: u32,
        ev: Option<&AuditEvent>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.write_tx(ev, |tx| read_audit(tx, after, limit))
    }

    fn verify_audit(&self, ev: Option<&AuditEvent>) -> Result<AuditVerifyReport, StoreError> {
        match ev {
            // Verify first, then record the verification (so the report covers the log as it was).
            Some(ev) => self.write_tx(Some(ev), |tx| verify_all(tx)),
            None => {
                let conn = self.lock()?;
                verify_all(&conn)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootkey::LocalRootKey;

    fn store() -> (tempfile::TempDir, SqliteStore, LocalRootKey) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("ks.db"), Durability::Normal).unwrap();
        let root = LocalRootKey::from_key(SecretKey::generate().unwrap(), "test");
        s.check_root_key(&root).unwrap();
        (dir, s, root)
    }

    #[test]
    fn data_key_and_index_blobs_do_not_unwrap_as_each_other() {
        let root = LocalRootKey::from_key(SecretKey::generate().unwrap(), "test");
        let key = SecretKey::generate().unwrap();
        let as_version = root.wrap(&key, &binding("kr1", 1)).unwrap();
        let as_index = root.wrap(&key, &index_binding("kr1", 1)).unwrap();
        assert!(root.unwrap(&as_version, &binding("kr1", 1)).is_ok());
        assert!(root.unwrap(&as_index, &index_binding("kr1", 1)).is_ok());
        assert!(root.unwrap(&as_version, &index_binding("kr1", 1)).is_err());
        assert!(root.unwrap(&as_index, &binding("kr1", 1)).is_err());
        assert!(root.unwrap(&as_index, &index_binding("kr2", 1)).is_err());
        assert!(root.unwrap(&as_index, &index_binding("kr1", 2)).is_err());
    }

    #[test]
    fn lifecycle() {
        let (_d, s, root) = store();
        let ev = AuditEvent::new("t", "x");
        let name = KeyringName::parse("patients").unwrap();
        let m = s.create_keyring(&name, &root, &ev).unwrap();
        assert_eq!(m.active_version, 1);
        assert!(matches!(
            s.create_keyring(&name, &root, &ev),
            Err(StoreError::AlreadyExists)
        ));
        let m = s.rotate(&name, &root, &ev).unwrap();
        assert_eq!(m.active_version, 2);
        assert_eq!(m.versions[0].state, VersionState::DecryptOnly);
        assert_eq!(m.versions[1].state, VersionState::Active);
        assert!(matches!(
            s.set_version_state(&name, 2, VersionAction::Disable, &ev),
            Err(StoreError::Conflict("version_active", _))
        ));
        assert!(matches!(
            s.set_version_state(&name, 1, VersionAction::Destroy, &ev),
            Err(StoreError::Conflict("not_disabled", _))
        ));
        s.set_version_state(&name, 1, VersionAction::Disable, &ev)
            .unwrap();
        s.set_version_state(&name, 1, VersionAction::Enable, &ev)
            .unwrap();
        s.set_version_state(&name, 1, VersionAction::Disable, &ev)
            .unwrap();
        let m = s
            .set_version_state(&name, 1, VersionAction::Destroy, &ev)
            .unwrap();
        assert_eq!(m.versions[0].state, VersionState::Destroyed);
        assert!(matches!(
            s.set_min_decryption_version(&name, 3, &ev),
            Err(StoreError::Invalid(_))
        ));
        let m = s.set_min_decryption_version(&name, 2, &ev).unwrap();
        assert_eq!(m.min_decryption_version, 2);
        assert!(s.verify_audit(None).unwrap().ok);
    }

    /// A new keyring's blind-index generation 1 has material of its own, served only to a
    /// granted proxy, unchanged by data-key rotations, and not unwrappable as a data-key blob.
    #[test]
    fn index_lineage_is_independent_of_data_key_versions() {
        let (_d, s, root) = store();
        let ev = AuditEvent::new("t", "x");
        let name = KeyringName::parse("people").unwrap();
        let m = s.create_keyring(&name, &root, &ev).unwrap();
        assert_eq!(m.index.active_generation, 1);
        assert_eq!(m.index.generations.len(), 1);
        assert_eq!(m.index.generations[0].derived_from_version, None);
        assert!(m.index.legacy_tag_versions.is_empty());
        let p = ProxyName::parse("p1").unwrap();
        assert!(matches!(
            s.fetch_index_material(&p, &name, 1, &root, &ev),
            Err(StoreError::NotFound)
        ));
        s.set_proxy(&p, std::slice::from_ref(&name), &ev).unwrap();
        let before = s.fetch_index_material(&p, &name, 1, &root, &ev).unwrap();
        let v1 = s.fetch_material(&p, &name, 1, &root, &ev).unwrap();
        assert_ne!(before.key, v1.key);
        let m = s.rotate(&name, &root, &ev).unwrap();
        assert_eq!(m.index.active_generation, 1);
        let after = s.fetch_index_material(&p, &name, 1, &root, &ev).unwrap();
        assert_eq!(before.key, after.key);
        assert!(matches!(
            s.fetch_index_material(&p, &name, 2, &root, &ev),
            Err(StoreError::NotFound)
        ));
        // Data-key version 1 can be destroyed: the lineage does not depend on it.
        s.set_version_state(&name, 1, VersionAction::Disable, &ev)
            .unwrap();
        s.set_version_state(&name, 1, VersionAction::Destroy, &ev)
            .unwrap();
        let again = s.fetch_index_material(&p, &name, 1, &root, &ev).unwrap();
        assert_eq!(before.key, again.key);
        let n = s.audit_records(0, 1000, None).unwrap().len();
        assert!(n > 0);
    }

    /// A keyring from before lineages (generation 1 derived from its active version): the
    /// index material is that version's material, older versions are legacy, and the source
    /// version cannot be destroyed.
    #[test]
    fn legacy_lineage_uses_the_source_version_and_protects_it() {
        let (_d, s, root) = store();
        let ev = AuditEvent::new("t", "x");
        let name = KeyringName::parse("old").unwrap();
        s.create_keyring(&name, &root, &ev).unwrap();
        s.rotate(&name, &root, &ev).unwrap();
        {
            // What migration 3 does for a keyring with active version 2.
            let conn = s.lock().unwrap();
            conn.execute_batch(
                "UPDATE index_generations SET wrapped = NULL, source_version = 2; \
                 UPDATE keyrings SET legacy_tags = 1;",
            )
            .unwrap();
        }
        let p = ProxyName::parse("p1").unwrap();
        s.set_proxy(&p, std::slice::from_ref(&name), &ev).unwrap();
        let m = s.keyring(Access::Proxy(&p), &name, &ev).unwrap();
        assert_eq!(m.index.generations[0].derived_from_version, Some(2));
        assert_eq!(m.index.legacy_tag_versions, vec![1]);
        let ix = s.fetch_index_material(&p, &name, 1, &root, &ev).unwrap();
        let v2 = s.fetch_material(&p, &name, 2, &root, &ev).unwrap();
        assert_eq!(ix.key, v2.key);
        s.rotate(&name, &root, &ev).unwrap();
        s.set_version_state(&name, 2, VersionAction::Disable, &ev)
            .unwrap();
        assert!(matches!(
            s.set_version_state(&name, 2, VersionAction::Destroy, &ev),
            Err(StoreError::Conflict("index_source", _))
        ));
        // Version 1 (legacy) can go; then it is no longer listed.
        s.set_version_state(&name, 1, VersionAction::Disable, &ev)
            .unwrap();
        let m = s
            .set_version_state(&name, 1, VersionAction::Destroy, &ev)
            .unwrap();
        assert!(m.index.legacy_tag_versions.is_empty());
    }

    /// A database of schema 3 (as the previous release left it) opens under schema 4 with its
    /// keyrings, their index material (random and derived) and a valid audit chain.
    #[test]
    fn upgrade_from_schema_3_keeps_keyrings_and_index_material() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ks.db");
        let root = LocalRootKey::from_key(SecretKey::generate().unwrap(), "test");
        let ev = AuditEvent::new("t", "x");
        let (fresh, old) = (
            KeyringName::parse("fresh").unwrap(),
            KeyringName::parse("old").unwrap(),
        );
        let p = ProxyName::parse("p1").unwrap();
        let (k_fresh, k_old) = {
            let s = SqliteStore::open(&path, Durability::Normal).unwrap();
            s.check_root_key(&root).unwrap();
            s.create_keyring(&fresh, &root, &ev).unwrap();
            s.create_keyring(&old, &root, &ev).unwrap();
            s.rotate(&old, &root, &ev).unwrap();
            s.set_proxy(&p, &[fresh.clone(), old.clone()], &ev).unwrap();
            let k_fresh = s.fetch_index_material(&p, &fresh, 1, &root, &ev).unwrap();
            let k_old = s.fetch_material(&p, &old, 2, &root, &ev).unwrap();
            let conn = s.lock().unwrap();
            // Back to the schema-3 shape: old generations table, no rotation tables; `old`
            // is a keyring migration 3 derived from its active version 2.
            conn.execute_batch(
                "UPDATE index_generations SET wrapped = NULL, source_version = 2 \
                     WHERE keyring_id = (SELECT id FROM keyrings WHERE name = 'old');
                 UPDATE keyrings SET legacy_tags = 1 WHERE name = 'old';
                 CREATE TABLE ig3 (
                     keyring_id TEXT NOT NULL REFERENCES keyrings(id),
                     generation INTEGER NOT NULL,
                     state TEXT NOT NULL
                         CHECK (state IN ('next', 'active', 'retiring', 'retired', 'destroyed')),
                     wrapped BLOB, source_version INTEGER, created_at TEXT NOT NULL,
                     PRIMARY KEY (keyring_id, generation),
                     CHECK ((state = 'destroyed' AND wrapped IS NULL AND source_version IS NULL)
                         OR (state <> 'destroyed' AND (wrapped IS NULL) <> (source_version IS NULL))));
                 INSERT INTO ig3 SELECT keyring_id, generation, state, wrapped, source_version,
                     created_at FROM index_generations;
                 DROP TABLE index_generations;
                 ALTER TABLE ig3 RENAME TO index_generations;
                 DROP TABLE index_rotations; DROP TABLE index_confirmations;
                 DROP TABLE index_passes; DELETE FROM meta WHERE key = 'index_seq';
                 PRAGMA user_version = 3;",
            )
            .unwrap();
            (k_fresh.key, k_old.key)
        };
        let s = SqliteStore::open(&path, Durability::Normal).unwrap();
        s.check_root_key(&root).unwrap();
        let v: u32 = s
            .lock()
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, migrations::SCHEMA_VERSION);
        let m = s.keyring(Access::Admin, &old, &ev).unwrap();
        assert_eq!(m.index.generations[0].derived_from_version, Some(2));
        assert_eq!(m.index.legacy_tag_versions, vec![1]);
        assert_eq!(m.index.rotation, None);
        let f = s.fetch_index_material(&p, &fresh, 1, &root, &ev).unwrap();
        assert_eq!(f.key, k_fresh);
        let o = s.fetch_index_material(&p, &old, 1, &root, &ev).unwrap();
        assert_eq!(o.key, k_old);
        assert!(s.verify_audit(None).unwrap().ok);
        // And the rotation works on the upgraded database.
        let m = s.index_rotate_start(&old, &root, &ev).unwrap();
        assert_eq!(m.index.generations[1].state, IndexState::Next);
        let g2 = s.fetch_index_material(&p, &old, 2, &root, &ev).unwrap();
        assert_ne!(g2.key, k_old);
    }

    #[test]
    fn wrong_root_key_is_detected() {
        let (_d, s, _root) = store();
        let other = LocalRootKey::from_key(SecretKey::generate().unwrap(), "other");
        assert!(matches!(
            s.check_root_key(&other),
            Err(StoreError::RootKey(RootKeyError::Mismatch))
        ));
    }

    #[test]
    fn failed_change_leaves_no_audit_record_and_no_change() {
        let (_d, s, root) = store();
        let ev = AuditEvent::new("t", "x");
        let name = KeyringName::parse("k").unwrap();
        s.create_keyring(&name, &root, &ev).unwrap();
        let before = s.audit_records(0, 100, None).unwrap().len();
        assert!(s.set_min_decryption_version(&name, 9, &ev).is_err());
        assert_eq!(s.audit_records(0, 100, None).unwrap().len(), before);
    }
}
