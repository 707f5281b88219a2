//! Blind indexes: deterministic tags that let the database compare protected values for equality.
//!
//! `tag = HMAC-SHA256(index_key, index_input)[..16]`, where `index_input` is the value's
//! equality-normalised canonical encoding ([`crate::value::Value::index_input`]) and
//! `index_key` is derived per index group and key version ([`crate::derive::index_key`]).

use subtle::ConstantTimeEq;

use crate::derive::index_key;
use crate::hmac_sha256::HmacSha256;
use crate::ids::IndexGroup;
use crate::{CryptoError, SecretKey};

/// Length of a stored blind index in bytes.
pub const BLIND_INDEX_LEN: usize = 16;

/// A blind index tag.
pub type BlindIndex = [u8; BLIND_INDEX_LEN];

/// Prepared blind-index key of one index group under one key version.
#[derive(Clone)]
pub struct BlindIndexKey {
    key_version: u32,
    mac: HmacSha256,
}

impl BlindIndexKey {
    /// Derives the index key of `group` from a keyring version's material.
    pub fn derive(
        version_material: &SecretKey,
        key_version: u32,
        group: &IndexGroup,
    ) -> Result<Self, CryptoError> {
        let key = index_key(version_material, group)?;
        Ok(Self::from_index_key(&key, key_version))
    }

    /// Uses an already derived index key.
    pub fn from_index_key(key: &SecretKey, key_version: u32) -> Self {
        Self {
            key_version,
            mac: HmacSha256::new(key.expose_secret()),
        }
    }

    /// The key version this index key belongs to.
    pub fn key_version(&self) -> u32 {
        self.key_version
    }

    /// The tag of an index input.
    #[inline]
    pub fn tag(&self, index_input: &[u8]) -> BlindIndex {
        let full = self.mac.mac(index_input);
        let mut tag = [0u8; BLIND_INDEX_LEN];
        tag.iter_mut().zip(full.iter()).for_each(|(t, f)| *t = *f);
        tag
    }

    /// Checks a tag in constant time.
    pub fn verify(&self, index_input: &[u8], tag: &[u8]) -> bool {
        self.tag(index_input).ct_eq(tag).into()
    }
}

impl std::fmt::Debug for BlindIndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlindIndexKey")
            .field("key_version", &self.key_version)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_group_separated() {
        let m = SecretKey::from_bytes([5u8; 32]);
        let a = BlindIndexKey::derive(&m, 1, &IndexGroup::new("people").unwrap()).unwrap();
        let b = BlindIndexKey::derive(&m, 1, &IndexGroup::new("other").unwrap()).unwrap();
        assert_eq!(a.tag(b"x"), a.tag(b"x"));
        assert_ne!(a.tag(b"x"), a.tag(b"y"));
        assert_ne!(a.tag(b"x"), b.tag(b"x"));
        assert!(a.verify(b"x", &a.tag(b"x")));
        assert!(!a.verify(b"x", &a.tag(b"y")));
        assert!(!a.verify(b"x", &[0u8; 3]));
    }
}
