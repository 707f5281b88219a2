//! Domain types and the JSON shapes of the HTTP API (shared by server and client).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Maximum length of keyring and proxy names.
pub const MAX_NAME_LEN: usize = 63;

/// Why a name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} name: {reason}")]
pub struct NameError {
    /// What kind of name ("keyring", "proxy").
    pub kind: &'static str,
    /// Human readable reason.
    pub reason: &'static str,
}

fn check_name(s: &str, kind: &'static str, allow_dot: bool) -> Result<(), NameError> {
    let err = |reason| NameError { kind, reason };
    if s.is_empty() {
        return Err(err("must not be empty"));
    }
    if s.len() > MAX_NAME_LEN {
        return Err(err("must be at most 63 characters"));
    }
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit() => {}
        _ => return Err(err("must start with a lowercase letter or digit")),
    }
    if !s.chars().all(|c| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || c == '-'
            || c == '_'
            || (allow_dot && c == '.')
    }) {
        return Err(err(if allow_dot {
            "may contain only a-z, 0-9, '-', '_' and '.'"
        } else {
            "may contain only a-z, 0-9, '-' and '_'"
        }));
    }
    Ok(())
}

/// A validated keyring name: `[a-z0-9][a-z0-9_-]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyringName(String);

impl KeyringName {
    /// Validates a keyring name.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        check_name(s, "keyring", false)?;
        Ok(Self(s.to_owned()))
    }
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyringName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated proxy identity (the client certificate's common name): `[a-z0-9][a-z0-9._-]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxyName(String);

impl ProxyName {
    /// Validates a proxy name.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        check_name(s, "proxy", true)?;
        Ok(Self(s.to_owned()))
    }
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProxyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// State of one key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionState {
    /// Newest version, used for new writes (exactly one per keyring).
    Active,
    /// Older version, still usable for decryption.
    DecryptOnly,
    /// Reversibly disabled: material kept but not served.
    Disabled,
    /// Material erased for good; metadata kept as a tombstone.
    Destroyed,
}

impl VersionState {
    /// Database / wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::DecryptOnly => "decrypt_only",
            Self::Disabled => "disabled",
            Self::Destroyed => "destroyed",
        }
    }
    /// Parses the database spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => Self::Active,
            "decrypt_only" => Self::DecryptOnly,
            "disabled" => Self::Disabled,
            "destroyed" => Self::Destroyed,
            _ => return None,
        })
    }
}

/// Role of an admin token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Manages keyrings, versions, proxies and tokens; never reads key material.
    KeyAdmin,
    /// Reads metadata and the audit log.
    Auditor,
}

impl Role {
    /// Wire / database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyAdmin => "key-admin",
            Self::Auditor => "auditor",
        }
    }
    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "key-admin" => Some(Self::KeyAdmin),
            "auditor" => Some(Self::Auditor),
            _ => None,
        }
    }
}

/// One version in keyring metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionInfo {
    /// Version number, starting at 1.
    pub version: u32,
    /// Current state.
    pub state: VersionState,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// Keyring metadata (`GET /v1/keyrings/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyringMeta {
    /// Non-enumerable id (`kr_` + 32 hex digits).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Version used for new writes.
    pub active_version: u32,
    /// Versions below this must not be used for decryption.
    pub min_decryption_version: u32,
    /// Server-wide revision at the last change of this keyring (monotonic).
    pub revision: u64,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// All versions, ascending.
    pub versions: Vec<VersionInfo>,
    /// The keyring's blind-index key lineage (docs/format.md §2.4): independent of the data-key
    /// versions above, so a data-key rotation never changes a stored value's blind index.
    pub index: IndexMeta,
}

/// State of one blind-index key generation (docs/format.md §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexState {
    /// The generation whose tags are stored with new single-tag cells and searched by lookups.
    Active,
    /// During a blind-index key rotation, before the cut-over: the generation being introduced
    /// (its tag is the second tag of dual cells; lookups search it too).
    Next,
    /// During a blind-index key rotation, after the cut-over: the generation being replaced
    /// (dual cells still carry its tag first; lookups search it too).
    Retiring,
    /// Replaced by a completed rotation: its material is no longer served (and, when it was
    /// random, destroyed).
    Retired,
}

impl IndexState {
    /// Database / wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Next => "next",
            Self::Retiring => "retiring",
            Self::Retired => "retired",
        }
    }
    /// Parses the database spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "next" => Some(Self::Next),
            "retiring" => Some(Self::Retiring),
            "retired" => Some(Self::Retired),
            _ => None,
        }
    }
    /// Whether its material is served to granted proxies.
    pub fn is_served(self) -> bool {
        !matches!(self, Self::Retired)
    }
}

/// The phase of a blind-index key rotation from generation `from` to `to` (docs/format.md §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexPhase {
    /// Before the cut-over: proxies write dual cells (`tag_from ‖ 0x02 ‖ tag_to ‖ envelope`),
    /// lookups search both tags; `reencrypt` re-indexes single cells into dual ones.
    Dual,
    /// After the cut-over: proxies write single cells under `to`, lookups search both tags,
    /// `ON CONFLICT` targets the second-tag index; `reencrypt` compacts dual cells.
    Cutover,
}

impl IndexPhase {
    /// Database / wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dual => "dual",
            Self::Cutover => "cutover",
        }
    }
    /// Parses the database / wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "dual" => Some(Self::Dual),
            "cutover" => Some(Self::Cutover),
            _ => None,
        }
    }
}

/// A blind-index key rotation in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexRotation {
    /// The generation being replaced.
    pub from: u32,
    /// The generation being introduced.
    pub to: u32,
    /// Current phase.
    pub phase: IndexPhase,
}

/// One generation of a keyring's blind-index key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexGenerationInfo {
    /// Generation number, from 1.
    pub generation: u32,
    /// Current state.
    pub state: IndexState,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// For a keyring created before blind-index lineages existed: the data-key version whose
    /// material is this generation's index material (its tags are those today's proxies
    /// already stored). `None`: independent random material.
    pub derived_from_version: Option<u32>,
}

/// The blind-index key lineage of a keyring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexMeta {
    /// Generation whose tags new values get.
    pub active_generation: u32,
    /// Every generation, ascending.
    pub generations: Vec<IndexGenerationInfo>,
    /// Data-key versions (not destroyed, not below `min_decryption_version`) whose cells may
    /// still carry a tag of the previous format (computed under that data-key version's own
    /// material): lookups search those tags too, and
    /// `pgseal-proxy reencrypt` re-tags the cells. Empty for keyrings created with lineages.
    pub legacy_tag_versions: Vec<u32>,
    /// A blind-index key rotation in progress (absent when none is: a proxy of an earlier
    /// release then still reads the metadata, and fails closed once one starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<IndexRotation>,
}

/// `POST /v1/keyrings/{name}/index/confirm` (proxies): the caller has taken in `phase` of the
/// rotation to `generation` (it writes and searches as that phase says, docs/format.md §2.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfirmRequest {
    /// The rotation's `to` generation.
    pub generation: u32,
    /// The phase taken in.
    pub phase: IndexPhase,
}

/// `POST /v1/keyrings/{name}/index/passes` (proxies, run by `pgseal-proxy reencrypt`): starts a
/// re-index (phase `dual`) or compaction (phase `cutover`) pass; refused (409) until every proxy
/// granted the keyring has confirmed the phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexPassRequest {
    /// The rotation's `to` generation.
    pub generation: u32,
    /// The phase the pass belongs to.
    pub phase: IndexPhase,
}

/// Answer to [`IndexPassRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexPassResponse {
    /// Non-enumerable pass id (`ip_` + 32 hex digits), to report the pass's end with.
    pub pass: String,
}

/// `POST /v1/keyrings/{name}/index/passes/{pass}` (the proxy identity that started the pass):
/// the pass ended. `complete` means it went over every configured column of the keyring and
/// left no cell in the form of the previous phase (a single cell under `from` for `dual`, a dual
/// cell for `cutover`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexPassReport {
    /// Whether no cell of the previous phase's form is left.
    pub complete: bool,
    /// Cells rewritten by the pass.
    pub rewritten: u64,
}

/// `GET /v1/keyrings/{name}/index/rotation` (admins): the state of a blind-index key rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexRotationStatus {
    /// Keyring name.
    pub keyring: String,
    /// Generation whose tags new single-tag cells get.
    pub active_generation: u32,
    /// The rotation in progress, if any (`None`: nothing to confirm, no passes).
    pub rotation: Option<IndexRotation>,
    /// Every proxy currently granted the keyring, by name, and whether it confirmed the current
    /// phase (empty without a rotation).
    pub proxies: Vec<IndexProxyConfirmation>,
    /// The re-index (`dual`) and compaction (`cutover`) passes of this rotation, oldest first.
    pub passes: Vec<IndexPassInfo>,
    /// What the next step (`--cutover` in phase `dual`, `--finish` in phase `cutover`) still
    /// waits for; `None` when it would be accepted now (or without a rotation).
    pub next_step_blocked_by: Option<String>,
}

/// Whether one granted proxy confirmed the current phase of a rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexProxyConfirmation {
    /// Proxy name.
    pub proxy: String,
    /// Whether it confirmed the current phase of the rotation's `to` generation.
    pub confirmed: bool,
    /// RFC 3339 time of its (first) confirmation.
    pub confirmed_at: Option<String>,
}

/// One re-index or compaction pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexPassInfo {
    /// Pass id (`ip_…`).
    pub id: String,
    /// Proxy identity that started it (the only one that may report it).
    pub proxy: String,
    /// The rotation's `to` generation.
    pub generation: u32,
    /// The phase it belongs to.
    pub phase: IndexPhase,
    /// RFC 3339 start time.
    pub started_at: String,
    /// RFC 3339 end time (`None`: not reported yet).
    pub ended_at: Option<String>,
    /// As reported (`None`: not reported yet).
    pub complete: Option<bool>,
    /// Cells rewritten, as reported.
    pub rewritten: Option<u64>,
}

/// Entry of `GET /v1/keyrings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyringSummary {
    /// Keyring id.
    pub id: String,
    /// Keyring name.
    pub name: String,
    /// Active version.
    pub active_version: u32,
    /// Minimum decryption version.
    pub min_decryption_version: u32,
    /// Revision of the last change.
    pub revision: u64,
}

/// `GET /v1/keyrings` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyringList {
    /// Keyrings sorted by name.
    pub keyrings: Vec<KeyringSummary>,
}

/// `GET /v1/keyrings/{name}/versions/{n}/material` response.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaterialResponse {
    /// Keyring id.
    pub keyring_id: String,
    /// Keyring name.
    pub keyring: String,
    /// Version number.
    pub version: u32,
    /// State of the version (active or decrypt_only).
    pub state: VersionState,
    /// 32 bytes of key material, standard base64 with padding.
    pub material: String,
}

impl fmt::Debug for MaterialResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaterialResponse")
            .field("keyring_id", &self.keyring_id)
            .field("keyring", &self.keyring)
            .field("version", &self.version)
            .field("state", &self.state)
            .field("material", &"<redacted>")
            .finish()
    }
}

/// `GET /v1/keyrings/{name}/index/{generation}/material` response.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexMaterialResponse {
    /// Keyring id.
    pub keyring_id: String,
    /// Keyring name.
    pub keyring: String,
    /// Generation number.
    pub generation: u32,
    /// 32 bytes of index material, standard base64 with padding.
    pub material: String,
}

impl fmt::Debug for IndexMaterialResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndexMaterialResponse")
            .field("keyring_id", &self.keyring_id)
            .field("keyring", &self.keyring)
            .field("generation", &self.generation)
            .field("material", &"<redacted>")
            .finish()
    }
}

/// One entry of the change feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangedKeyring {
    /// Keyring id.
    pub id: String,
    /// Keyring name.
    pub name: String,
    /// Revision of its last change.
    pub revision: u64,
}

/// `GET /v1/changes?since=REV[&wait=SECS]` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesResponse {
    /// Current server-wide revision; pass it as `since` next time.
    pub revision: u64,
    /// Keyrings visible to the caller changed after `since`.
    pub changed: Vec<ChangedKeyring>,
    /// For a proxy: its grants changed after `since` (a keyring may have been withdrawn, which
    /// `changed` cannot show); the proxy re-reads every keyring it uses.
    #[serde(default)]
    pub grants_changed: bool,
}

/// `POST /v1/keyrings` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyringRequest {
    /// Name of the new keyring.
    pub name: String,
}

/// `PUT /v1/keyrings/{name}/min-decryption-version` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetMinVersionRequest {
    /// New minimum decryption version (1..=active_version).
    pub min_decryption_version: u32,
}

/// `POST /v1/tokens` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Label (who or what uses the token).
    pub name: String,
    /// Role.
    pub role: Role,
    /// Optional lifetime in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

/// Token metadata (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenInfo {
    /// Token id (`tok_` + 32 hex digits).
    pub id: String,
    /// Label.
    pub name: String,
    /// Role.
    pub role: Role,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Expiry as unix seconds, if any.
    pub expires_at: Option<i64>,
    /// Whether the token was revoked.
    pub revoked: bool,
}

/// `POST /v1/tokens` response: the only time the secret is shown.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatedToken {
    /// Metadata.
    pub info: TokenInfo,
    /// The bearer token; shown once.
    pub token: String,
}

impl fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedToken")
            .field("info", &self.info)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// `GET /v1/tokens` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenList {
    /// All tokens.
    pub tokens: Vec<TokenInfo>,
}

/// `PUT /v1/proxies/{name}` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetProxyRequest {
    /// Keyrings the proxy may read (replaces the previous list).
    pub keyrings: Vec<String>,
}

/// A proxy identity and its grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyInfo {
    /// Proxy name (certificate common name).
    pub name: String,
    /// Keyring names it may read.
    pub keyrings: Vec<String>,
}

/// `GET /v1/proxies` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyList {
    /// All proxies.
    pub proxies: Vec<ProxyInfo>,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Sequence number, from 1, contiguous.
    pub seq: u64,
    /// RFC 3339 UTC time.
    pub ts: String,
    /// Caller identity (`proxy:NAME`, `token:ID`, `anonymous`, `local:…`).
    pub actor: String,
    /// Action (e.g. `keyring.rotate`).
    pub action: String,
    /// Keyring name, if any.
    pub keyring: Option<String>,
    /// Version, if any.
    pub version: Option<u32>,
    /// `ok` or an error code.
    pub outcome: String,
    /// Extra detail (never secrets).
    pub detail: Option<String>,
    /// Hash of the previous record (64 zeros for the first).
    pub prev_hash: String,
    /// SHA-256 over this record's fields and `prev_hash`.
    pub hash: String,
}

/// `GET /v1/audit` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditList {
    /// Records in ascending order.
    pub records: Vec<AuditRecord>,
}

/// First bad record found by audit verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditProblem {
    /// Sequence number of the first bad record (or where a record is missing).
    pub seq: u64,
    /// What is wrong.
    pub reason: String,
}

/// Result of verifying the audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditVerifyReport {
    /// Whether the whole chain is intact.
    pub ok: bool,
    /// Number of records checked.
    pub records: u64,
    /// Hash of the last good record.
    pub head_hash: String,
    /// First problem, if any.
    pub first_bad: Option<AuditProblem>,
}

/// `GET /v1/health` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Always `ok` when the server answers.
    pub status: String,
}

/// Error body of every non-2xx response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// Stable machine-readable code.
    pub error: String,
    /// Human readable message.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(KeyringName::parse("patients").is_ok());
        assert!(KeyringName::parse("a-b_c9").is_ok());
        assert!(KeyringName::parse("").is_err());
        assert!(KeyringName::parse("Patients").is_err());
        assert!(KeyringName::parse("-x").is_err());
        assert!(KeyringName::parse("a.b").is_err());
        assert!(KeyringName::parse("a/b").is_err());
        assert!(KeyringName::parse(&"a".repeat(64)).is_err());
        assert!(KeyringName::parse(&"a".repeat(63)).is_ok());
        assert!(ProxyName::parse("proxy-eu.1").is_ok());
        assert!(ProxyName::parse("proxy eu").is_err());
    }

    #[test]
    fn state_round_trip() {
        for s in [
            VersionState::Active,
            VersionState::DecryptOnly,
            VersionState::Disabled,
            VersionState::Destroyed,
        ] {
            assert_eq!(VersionState::parse(s.as_str()), Some(s));
        }
        assert_eq!(VersionState::parse("nope"), None);
        assert_eq!(Role::parse("key-admin"), Some(Role::KeyAdmin));
        assert_eq!(Role::parse("proxy"), None);
    }
}
