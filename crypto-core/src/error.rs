//! The error type of this crate.

use thiserror::Error;

/// Everything that can go wrong in `pgseal-crypto`.
///
/// Decryption failures deliberately carry no detail beyond the category: an
/// attacker who can feed envelopes to the proxy must not learn *why* a forged
/// envelope was rejected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// The envelope is shorter than its fixed header plus tag.
    #[error("envelope too short: {len} bytes, need at least {min}")]
    EnvelopeTooShort { len: usize, min: usize },
    /// The envelope names a format version this build does not know.
    #[error("unknown envelope format version {0}")]
    UnknownFormatVersion(u8),
    /// The envelope was written under a key version the caller does not have.
    #[error("no key for key version {0}")]
    UnknownKeyVersion(u32),
    /// Authentication failed: wrong key, wrong column, or tampered bytes.
    #[error("envelope failed authentication (wrong key, wrong column or tampered data)")]
    AuthenticationFailed,
    /// The plaintext decrypted but is not a valid canonical value.
    #[error("decrypted value is not a valid canonical encoding: {0}")]
    InvalidCanonical(&'static str),
    /// A key had the wrong length.
    #[error("key must be 32 bytes, got {0}")]
    InvalidKeyLength(usize),
    /// A column identity or index group name is not acceptable.
    #[error("invalid identifier: {0}")]
    InvalidIdentifier(String),
    /// The output buffer cannot hold the result.
    #[error("value too large: {0} bytes")]
    ValueTooLarge(usize),
    /// HKDF refused to derive a key (cannot happen for 32-byte outputs).
    #[error("key derivation failed")]
    KeyDerivation,
    /// The operating system's random number generator failed.
    #[error("operating system random number generator failed")]
    Random,
    /// A wrapped key blob is malformed or failed authentication.
    #[error("wrapped key could not be unwrapped (wrong root key, wrong binding or tampered data)")]
    UnwrapFailed,
}
