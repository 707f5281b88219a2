//! HKDF-SHA256 derivation of purpose-separated subkeys from a keyring version's material.
//!
//! ```text
//! salt = "pgseal/v1/hkdf-salt"                      (constant, 19 bytes)
//! ikm  = the 32-byte key version material from the keyserver
//! info = purpose label ‖ 0x00 ‖ format version (1 byte) ‖ identity encoding
//!   encryption key: label "pgseal-column-encryption", identity = ColumnId::encode
//!   index key:      label "pgseal-blind-index",        identity = IndexGroup::encode
//! okm  = 32 bytes
//! ```
//! See `docs/format.md` for the normative description.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::envelope::FORMAT_VERSION;
use crate::ids::{ColumnId, IndexGroup};
use crate::{CryptoError, SecretKey, KEY_LEN};

/// The HKDF salt, fixed for format version 1.
pub const HKDF_SALT: &[u8] = b"pgseal/v1/hkdf-salt";
/// Purpose label of column encryption keys.
pub const ENCRYPTION_LABEL: &[u8] = b"pgseal-column-encryption";
/// Purpose label of blind-index keys.
pub const INDEX_LABEL: &[u8] = b"pgseal-blind-index";

/// The AES-256-GCM-SIV key for one column under one key version.
pub fn column_encryption_key(
    version_key: &SecretKey,
    column: &ColumnId,
) -> Result<SecretKey, CryptoError> {
    let mut info = info_prefix(ENCRYPTION_LABEL);
    column.encode(&mut info);
    expand(version_key, &info)
}

/// The blind-index HMAC key for one index group under one key version.
pub fn index_key(version_key: &SecretKey, group: &IndexGroup) -> Result<SecretKey, CryptoError> {
    let mut info = info_prefix(INDEX_LABEL);
    group.encode(&mut info);
    expand(version_key, &info)
}

fn info_prefix(label: &[u8]) -> Vec<u8> {
    let mut info = Vec::with_capacity(label.len() + 2 + 64);
    info.extend_from_slice(label);
    info.push(0);
    info.push(FORMAT_VERSION);
    info
}

/// HKDF-SHA256 with the pgseal salt to a 32-byte key.
pub fn expand(ikm: &SecretKey, info: &[u8]) -> Result<SecretKey, CryptoError> {
    hkdf_sha256(HKDF_SALT, ikm.expose_secret(), info)
}

/// Raw HKDF-SHA256 to a 32-byte key (exposed for the RFC 5869 known-answer tests).
/// Fails only if HKDF rejects the output length, which cannot happen for 32 bytes.
pub fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8]) -> Result<SecretKey, CryptoError> {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut okm = Zeroizing::new([0u8; KEY_LEN]);
    hk.expand(info, &mut okm[..])
        .map_err(|_| CryptoError::KeyDerivation)?;
    Ok(SecretKey::from_bytes(*okm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_and_identities_are_separated() {
        let ikm = SecretKey::from_bytes([1u8; 32]);
        let col = ColumnId::parse("public.patients.email").unwrap();
        let other = ColumnId::parse("public.patients.name").unwrap();
        let group = IndexGroup::of_column(&col);
        let enc = column_encryption_key(&ikm, &col).unwrap();
        let idx = index_key(&ikm, &group).unwrap();
        assert_ne!(enc, idx);
        assert_ne!(enc, column_encryption_key(&ikm, &other).unwrap());
        assert_ne!(enc.expose_secret(), &[0u8; 32]);
        // Deterministic.
        assert_eq!(enc, column_encryption_key(&ikm, &col).unwrap());
        // Different version material gives different keys.
        let ikm2 = SecretKey::from_bytes([2u8; 32]);
        assert_ne!(enc, column_encryption_key(&ikm2, &col).unwrap());
    }
}
