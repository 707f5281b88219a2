//! The 32-byte secret key type.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::CryptoError;

/// Length of every key handled by pgseal, in bytes.
pub const KEY_LEN: usize = 32;

/// A 32-byte secret: a keyring version's material, a root key, or a derived
/// subkey.
///
/// The bytes are wiped when the value is dropped, `Debug` prints only
/// `SecretKey(..)`, and there is no `Display`, `Clone` or serialisation, so a
/// key cannot end up in a log line or a copy by accident. Equality is
/// constant-time.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SecretKey(Box<[u8; KEY_LEN]>);

impl SecretKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut key = Box::new([0u8; KEY_LEN]);
        getrandom::fill(&mut key[..]).map_err(|_| CryptoError::Random)?;
        Ok(Self(key))
    }

    /// Takes ownership of 32 bytes. The caller should wipe its own copy.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let mut bytes = bytes;
        let key = Box::new(bytes);
        bytes.zeroize();
        Self(key)
    }

    /// Copies a slice that must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let mut key = Box::new([0u8; KEY_LEN]);
        if bytes.len() != KEY_LEN {
            return Err(CryptoError::InvalidKeyLength(bytes.len()));
        }
        key.copy_from_slice(bytes);
        Ok(Self(key))
    }

    /// The raw bytes. Named loudly so that every use is easy to find in review.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// An explicit copy (`Clone` is deliberately not implemented).
    pub fn duplicate(&self) -> Self {
        Self(Box::new(*self.0))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        self.0[..].ct_eq(&other.0[..]).into()
    }
}

impl Eq for SecretKey {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_material() {
        let key = SecretKey::from_bytes([0xab; KEY_LEN]);
        let shown = format!("{key:?}");
        assert_eq!(shown, "SecretKey(..)");
        assert!(!shown.to_lowercase().contains("ab"));
    }

    #[test]
    fn generated_keys_differ() {
        let a = SecretKey::generate().unwrap();
        let b = SecretKey::generate().unwrap();
        assert_ne!(a, b);
        assert_ne!(a.expose_secret(), &[0u8; KEY_LEN]);
    }

    #[test]
    fn from_slice_checks_length() {
        assert_eq!(
            SecretKey::from_slice(&[1u8; 31]).unwrap_err(),
            CryptoError::InvalidKeyLength(31)
        );
        assert!(SecretKey::from_slice(&[1u8; 32]).is_ok());
    }

    #[test]
    fn zeroize_wipes_bytes() {
        let mut key = SecretKey::from_bytes([7u8; KEY_LEN]);
        key.zeroize();
        assert_eq!(key.expose_secret(), &[0u8; KEY_LEN]);
    }
}
