//! Wrapping of key material at rest (used by the keyserver).
//!
//! A wrapped key is `WRAP_VERSION (1 B) | nonce (12 B) | AES-256-GCM-SIV(ciphertext 32 B + tag 16 B)`,
//! 61 bytes in all, sealed under a root key. The caller's `binding` (for the
//! keyserver: keyring id and version) is the associated data, so a wrapped
//! blob copied to another keyring or version fails to unwrap.

use zeroize::Zeroizing;

use crate::aead::FieldCipher;
use crate::{CryptoError, SecretKey, KEY_LEN};

/// Format version of a wrapped key blob.
pub const WRAP_VERSION: u8 = 1;
use crate::aead::{NONCE_LEN, TAG_LEN};
/// Length of a wrapped key blob in bytes.
pub const WRAPPED_LEN: usize = 1 + NONCE_LEN + KEY_LEN + TAG_LEN;
const LABEL: &[u8] = b"pgseal/keywrap/v1\0";

/// Seals `key` under `root`, bound to `binding`.
pub fn wrap_key(root: &SecretKey, key: &SecretKey, binding: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let cipher = FieldCipher::new(root)?;
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|_| CryptoError::Random)?;
    let mut sealed = [0u8; KEY_LEN];
    let mut tag = [0u8; TAG_LEN];
    cipher.seal(
        &nonce,
        &aad(binding),
        key.expose_secret(),
        &mut sealed,
        &mut tag,
    )?;
    let mut out = Vec::with_capacity(WRAPPED_LEN);
    out.push(WRAP_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens a blob made by [`wrap_key`] with the same root key and binding.
pub fn unwrap_key(
    root: &SecretKey,
    wrapped: &[u8],
    binding: &[u8],
) -> Result<SecretKey, CryptoError> {
    if wrapped.len() != WRAPPED_LEN {
        return Err(CryptoError::UnwrapFailed);
    }
    let (version, rest) = wrapped.split_first().ok_or(CryptoError::UnwrapFailed)?;
    if *version != WRAP_VERSION {
        return Err(CryptoError::UnwrapFailed);
    }
    let (nonce, rest) = rest.split_at(NONCE_LEN);
    let (body, tag) = rest.split_at(KEY_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::UnwrapFailed)?;
    let mut plain = Zeroizing::new([0u8; KEY_LEN]);
    FieldCipher::new(root)?
        .open(&nonce, &aad(binding), body, tag, &mut plain[..])
        .map_err(|_| CryptoError::UnwrapFailed)?;
    Ok(SecretKey::from_bytes(*plain))
}

fn aad(binding: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(LABEL.len() + binding.len());
    aad.extend_from_slice(LABEL);
    aad.extend_from_slice(binding);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let root = SecretKey::generate().unwrap();
        let key = SecretKey::generate().unwrap();
        let blob = wrap_key(&root, &key, b"ring-1/v1").unwrap();
        assert_eq!(blob.len(), WRAPPED_LEN);
        assert!(!blob.windows(KEY_LEN).any(|w| w == key.expose_secret()));
        assert_eq!(unwrap_key(&root, &blob, b"ring-1/v1").unwrap(), key);
    }

    #[test]
    fn wrong_root_binding_or_tamper_fails() {
        let root = SecretKey::generate().unwrap();
        let other = SecretKey::generate().unwrap();
        let key = SecretKey::generate().unwrap();
        let blob = wrap_key(&root, &key, b"ring-1/v1").unwrap();
        assert_eq!(
            unwrap_key(&other, &blob, b"ring-1/v1").unwrap_err(),
            CryptoError::UnwrapFailed
        );
        assert_eq!(
            unwrap_key(&root, &blob, b"ring-1/v2").unwrap_err(),
            CryptoError::UnwrapFailed
        );
        for i in 0..blob.len() * 8 {
            let mut bad = blob.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(unwrap_key(&root, &bad, b"ring-1/v1").is_err(), "bit {i}");
        }
        assert!(unwrap_key(&root, &blob[..WRAPPED_LEN - 1], b"ring-1/v1").is_err());
        assert!(unwrap_key(&root, &[], b"ring-1/v1").is_err());
    }
}
