//! Storage of keyrings, versions, tokens, proxy grants and the audit log.
//!
//! [`KeyStore`] is the seam for a later PostgreSQL backend; [`sqlite::SqliteStore`] is the
//! single-node default. Every mutating call takes the [`AuditEvent`] describing the request and
//! writes it in the same transaction as the change: either both are stored or neither.

pub mod migrations;
pub mod sqlite;

use pgseal_crypto::SecretKey;

use crate::audit::AuditEvent;
use crate::model::{
    AuditRecord, AuditVerifyReport, ChangesResponse, IndexPassReport, IndexPhase,
    IndexRotationStatus, KeyringMeta, KeyringName, KeyringSummary, ProxyInfo, ProxyName, Role,
    TokenInfo, VersionState,
};
use crate::rootkey::{RootKey, RootKeyError};

pub use sqlite::SqliteStore;

/// Storage errors. Domain errors (`NotFound`, `Conflict`, …) roll the transaction back.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The keyring/version/token does not exist, or the caller may not see it.
    #[error("not found")]
    NotFound,
    /// A keyring or proxy with that name exists already.
    #[error("already exists")]
    AlreadyExists,
    /// The request conflicts with the current state (code, message).
    #[error("{1}")]
    Conflict(&'static str, String),
    /// The request is invalid for this data (message).
    #[error("{0}")]
    Invalid(String),
    /// The version was destroyed.
    #[error("key version destroyed")]
    Destroyed,
    /// The blind-index generation was retired by a completed rotation.
    #[error("blind-index generation retired")]
    IndexRetired,
    /// Root key failure.
    #[error(transparent)]
    RootKey(#[from] RootKeyError),
    /// SQLite failure.
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// Data in the database is not what this code wrote.
    #[error("database content is corrupt: {0}")]
    Corrupt(String),
    /// A previous panic poisoned the connection lock.
    #[error("storage lock poisoned")]
    Poisoned,
    /// The OS random number generator failed.
    #[error("random number generator failed")]
    Random,
}

/// Who is reading a keyring.
#[derive(Debug, Clone, Copy)]
pub enum Access<'a> {
    /// An admin token (key-admin or auditor): sees every keyring.
    Admin,
    /// A proxy: sees only keyrings granted to it.
    Proxy(&'a ProxyName),
}

/// State change of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionAction {
    /// decrypt_only → disabled.
    Disable,
    /// disabled → decrypt_only.
    Enable,
    /// disabled → destroyed (material erased).
    Destroy,
}

/// A stored admin token (only the hash of its secret).
#[derive(Debug, Clone)]
pub struct TokenRecord {
    /// `tok_…` id.
    pub id: String,
    /// Label.
    pub name: String,
    /// Role.
    pub role: Role,
    /// SHA-256 of the secret part.
    pub secret_hash: [u8; 32],
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Expiry (unix seconds).
    pub expires_at: Option<i64>,
    /// Revoked?
    pub revoked: bool,
}

/// Unwrapped material of one usable version.
pub struct Material {
    /// Keyring id.
    pub keyring_id: String,
    /// Version.
    pub version: u32,
    /// State (active or decrypt_only).
    pub state: VersionState,
    /// The key.
    pub key: SecretKey,
}

/// Unwrapped material of one blind-index generation.
pub struct IndexMaterial {
    /// Keyring id.
    pub keyring_id: String,
    /// Generation.
    pub generation: u32,
    /// The index material (blind-index keys are derived from it, docs/format.md §2.4).
    pub key: SecretKey,
}

/// The storage backend.
pub trait KeyStore: Send + Sync {
    /// Stores a root-key check value (first start) or verifies it (later starts).
    fn check_root_key(&self, root: &dyn RootKey) -> Result<(), StoreError>;
    /// Appends one audit record in its own transaction.
    fn append_audit(&self, ev: &AuditEvent, outcome: &str) -> Result<(), StoreError>;
    /// Creates a keyring with version 1 active.
    fn create_keyring(
        &self,
        name: &KeyringName,
        root: &dyn RootKey,
        ev: &AuditEvent,
    ) -> Result<KeyringMeta, StoreError>;
    /// Reads keyring metadata.
    fn keyring(
        &self,
        access: Access<'_>,
        name: &KeyringName,
        ev: &AuditEvent,
    ) -> Result<KeyringMeta, StoreError>;
    /// Lists all keyrings.
    fn list_keyrings(&self, ev: &AuditEvent) -> Result<Vec<KeyringSummary>, StoreError>;
    /// Adds a version, makes it active, turns the previous active one decrypt-only.
    fn rotate(
        &self,
        name: &KeyringName,
        root: &dyn RootKey,
        ev: &AuditEvent,
    ) -> Result<KeyringMeta, StoreError>;
    /// Disables, enables or destroys a version.
    fn set_version_state(
        &self,
        name: &KeyringName,
        version: u32,
        action: VersionAction,
        ev: &AuditEvent,
    ) -> Result<KeyringMeta, StoreError>;
    /// Sets `min_decryption_version` (1..=active_version).
    fn set_min_decryption_version(
        &self,
        name: &KeyringName,
        min: u32,
        ev: &AuditEvent,
    ) -> Result<KeyringMeta, StoreError>;
    /// Unwraps the material of a usable version for a proxy holding a grant.
    fn fetch_material(
        &self,
        proxy: &ProxyName,
        name: &KeyringName,
        version: u32,
        root: &dyn RootKey,
        ev: &AuditEvent,
    ) -> Result<Material, StoreError>;
    /// Unwraps the material of a blind-index generation for a proxy holding a grant.
    fn fetch_index_material(
        &self,
        proxy: &ProxyName,
        name: &KeyringName,
        generation: u32,
        root: &dyn RootKey,
        ev: &AuditEvent,
    ) -> Result<IndexMaterial, StoreError>;
    /// Starts a blind-index key rotation: generation g+1 (fresh random material) in state
    /// `next`, phase `dual`. Conflict when one is in progress.
    fn index_rotate_start(
        &self,
        name: &KeyringName,
        root: &dyn RootKey,
        ev: &AuditEvent,
    ) -> Result<KeyringMeta, StoreError>;
    /// The cut-over: g+1 `active`, g `retiring`, phase `cutover`. Conflict (saying what is
    /// missing) unless every granted proxy confirmed phase `dual` and a complete `dual` pass
    /// started after the last of those confirmations.
    fn index_cutover(&self, name: &KeyringName, ev: &AuditEvent)
        -> Result<KeyringMeta, StoreError>;
    /// Ends the rotation: g `retired` (its random material erased), no rotation. Gated like
    /// the cut-over, on phase `cutover`.
    fn index_finish(&self, name: &KeyringName, ev: &AuditEvent) -> Result<KeyringMeta, StoreError>;
    /// The rotation, its confirmations and passes (admins).
    fn index_rotation_status(
        &self,
        name: &KeyringName,
        ev: &AuditEvent,
    ) -> Result<IndexRotationStatus, StoreError>;
    /// Records that `proxy` (holding the grant) took in `phase` of the rotation to `generation`;
    /// a repeat keeps the first confirmation. Conflict when that is not the current phase.
    fn index_confirm(
        &self,
        proxy: &ProxyName,
        name: &KeyringName,
        generation: u32,
        phase: IndexPhase,
        ev: &AuditEvent,
    ) -> Result<(), StoreError>;
    /// Starts pass `pass_id` of `proxy`; Conflict unless the phase is current and every granted
    /// proxy confirmed it, or when too many passes of the keyring are open.
    fn index_pass_start(
        &self,
        proxy: &ProxyName,
        name: &KeyringName,
        generation: u32,
        phase: IndexPhase,
        pass_id: &str,
        ev: &AuditEvent,
    ) -> Result<(), StoreError>;
    /// Records the end of a pass started by `proxy` (NotFound for any other pass id).
    fn index_pass_report(
        &self,
        proxy: &ProxyName,
        name: &KeyringName,
        pass_id: &str,
        report: &IndexPassReport,
        ev: &AuditEvent,
    ) -> Result<(), StoreError>;
    /// Keyrings visible to `access` changed after revision `since` (not audited: the caller audits).
    fn changes_since(&self, access: Access<'_>, since: u64) -> Result<ChangesResponse, StoreError>;
    /// Stores a new token.
    fn create_token(&self, rec: &TokenRecord, ev: &AuditEvent) -> Result<(), StoreError>;
    /// Looks a token up by id (authentication; not audited here).
    fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Lists tokens (no secrets).
    fn list_tokens(&self, ev: &AuditEvent) -> Result<Vec<TokenInfo>, StoreError>;
    /// Revokes a token.
    fn revoke_token(&self, id: &str, ev: &AuditEvent) -> Result<TokenInfo, StoreError>;
    /// Creates or replaces a proxy identity and its keyring grants.
    fn set_proxy(
        &self,
        name: &ProxyName,
        keyrings: &[KeyringName],
        ev: &AuditEvent,
    ) -> Result<ProxyInfo, StoreError>;
    /// Lists proxies.
    fn list_proxies(&self, ev: &AuditEvent) -> Result<Vec<ProxyInfo>, StoreError>;
    /// Removes a proxy and its grants.
    fn delete_proxy(&self, name: &ProxyName, ev: &AuditEvent) -> Result<(), StoreError>;
    /// Audit records with `seq > after`, at most `limit`; audits the read when `ev` is given.
    fn audit_records(
        &self,
        after: u64,
        limit: u32,
        ev: Option<&AuditEvent>,
    ) -> Result<Vec<AuditRecord>, StoreError>;
    /// Verifies the whole chain; audits the verification when `ev` is given.
    fn verify_audit(&self, ev: Option<&AuditEvent>) -> Result<AuditVerifyReport, StoreError>;
}
