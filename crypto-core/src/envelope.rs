//! The envelope: how one encrypted value is laid out.
//!
//! ```text
//! offset  size  field
//! 0       1     format version (1)
//! 1       4     key version, u32 big-endian
//! 5       12    nonce
//! 17      n     AES-256-GCM-SIV ciphertext of the canonical value (n = plaintext length)
//! 17+n    16    tag
//! ```
//! Associated data (not stored):
//! `"pgseal-envelope" ‖ 0x00 ‖ format version ‖ key version (u32 BE) ‖ ColumnId::encode`.
//! The AAD binds the ciphertext to its column and to the header, so a value copied to another
//! column, or a header edited to claim another version, fails authentication.

use crate::aead::{FieldCipher, NONCE_LEN, TAG_LEN};
use crate::derive::column_encryption_key;
use crate::ids::ColumnId;
use crate::nonce::random_nonce;
use crate::{CryptoError, SecretKey};

/// The only envelope format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes before the ciphertext.
pub const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
/// Bytes an envelope adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Domain-separation label at the start of the AAD.
pub const AAD_LABEL: &[u8] = b"pgseal-envelope";

/// Length of the envelope for a plaintext of `plaintext_len` bytes.
#[inline]
pub const fn envelope_len(plaintext_len: usize) -> usize {
    plaintext_len + OVERHEAD
}

/// The cleartext header of an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeHeader {
    /// Format version byte.
    pub format_version: u8,
    /// Key version that sealed the value.
    pub key_version: u32,
}

/// Reads and checks the header without decrypting. Fails on short input or unknown formats.
pub fn parse_header(envelope: &[u8]) -> Result<EnvelopeHeader, CryptoError> {
    if envelope.len() < OVERHEAD {
        return Err(CryptoError::EnvelopeTooShort {
            len: envelope.len(),
            min: OVERHEAD,
        });
    }
    let (&format_version, rest) = envelope
        .split_first()
        .ok_or(CryptoError::EnvelopeTooShort {
            len: 0,
            min: OVERHEAD,
        })?;
    if format_version != FORMAT_VERSION {
        return Err(CryptoError::UnknownFormatVersion(format_version));
    }
    let version_bytes: [u8; 4] =
        rest.get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or(CryptoError::EnvelopeTooShort {
                len: envelope.len(),
                min: OVERHEAD,
            })?;
    Ok(EnvelopeHeader {
        format_version,
        key_version: u32::from_be_bytes(version_bytes),
    })
}

/// The sealing and opening key of one column under one key version, with its AAD prepared.
pub struct EnvelopeKey {
    key_version: u32,
    cipher: FieldCipher,
    aad: Box<[u8]>,
}

impl EnvelopeKey {
    /// Derives the column key from a keyring version's material (HKDF, see [`crate::derive`]).
    pub fn derive(
        version_material: &SecretKey,
        key_version: u32,
        column: &ColumnId,
    ) -> Result<Self, CryptoError> {
        let column_key = column_encryption_key(version_material, column)?;
        Self::from_column_key(&column_key, key_version, column)
    }

    /// Uses an already derived column key.
    pub fn from_column_key(
        column_key: &SecretKey,
        key_version: u32,
        column: &ColumnId,
    ) -> Result<Self, CryptoError> {
        let mut aad = Vec::with_capacity(AAD_LABEL.len() + 6 + 64);
        aad.extend_from_slice(AAD_LABEL);
        aad.push(0);
        aad.push(FORMAT_VERSION);
        aad.extend_from_slice(&key_version.to_be_bytes());
        column.encode(&mut aad);
        Ok(Self {
            key_version,
            cipher: FieldCipher::new(column_key)?,
            aad: aad.into_boxed_slice(),
        })
    }

    /// The key version written into envelopes.
    pub fn key_version(&self) -> u32 {
        self.key_version
    }

    /// Appends the envelope of `plaintext` to `out`, with a fresh random nonce.
    /// Allocates only if `out` lacks capacity.
    #[inline]
    pub fn encrypt_into(&self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        self.encrypt_into_with_nonce(&random_nonce(), plaintext, out)
    }

    /// As [`Self::encrypt_into`] with a caller-chosen nonce. Only for test vectors: reusing a
    /// nonce reveals equality of plaintexts.
    pub fn encrypt_into_with_nonce(
        &self,
        nonce: &[u8; NONCE_LEN],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let start = out.len();
        out.resize(start + envelope_len(plaintext.len()), 0);
        let result = out
            .get_mut(start..)
            .ok_or(CryptoError::ValueTooLarge(plaintext.len()))
            .and_then(|slot| self.seal_into_slot(nonce, plaintext, slot));
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// Writes the envelope into `out`, which must be exactly `envelope_len(plaintext.len())`.
    pub fn encrypt_to_slice(&self, plaintext: &[u8], out: &mut [u8]) -> Result<(), CryptoError> {
        if out.len() != envelope_len(plaintext.len()) {
            return Err(CryptoError::ValueTooLarge(plaintext.len()));
        }
        self.seal_into_slot(&random_nonce(), plaintext, out)
    }

    fn seal_into_slot(
        &self,
        nonce: &[u8; NONCE_LEN],
        plaintext: &[u8],
        slot: &mut [u8],
    ) -> Result<(), CryptoError> {
        let too_large = CryptoError::ValueTooLarge(plaintext.len());
        let (header, body) = slot
            .split_at_mut_checked(HEADER_LEN)
            .ok_or(too_large.clone())?;
        let (ciphertext, tag) = body
            .split_at_mut_checked(plaintext.len())
            .ok_or(too_large.clone())?;
        let tag: &mut [u8; TAG_LEN] = tag.try_into().map_err(|_| too_large)?;
        let (format, rest) = header.split_at_mut(1);
        let (version, nonce_slot) = rest.split_at_mut(4);
        format.copy_from_slice(&[FORMAT_VERSION]);
        version.copy_from_slice(&self.key_version.to_be_bytes());
        nonce_slot.copy_from_slice(nonce);
        self.cipher
            .seal(nonce, &self.aad, plaintext, ciphertext, tag)
    }

    /// Authenticates `envelope` and appends its plaintext to `out`.
    ///
    /// Any failure (wrong key, wrong column, tampering, truncation, unknown format) is an error
    /// and leaves `out` as it was.
    pub fn decrypt_into(&self, envelope: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        let header = parse_header(envelope)?;
        if header.key_version != self.key_version {
            return Err(CryptoError::UnknownKeyVersion(header.key_version));
        }
        let start = out.len();
        let ct_len = envelope.len() - OVERHEAD; // parse_header checked len >= OVERHEAD
        out.resize(start + ct_len, 0);
        let result = self.open_parts(envelope, ct_len, out.get_mut(start..).unwrap_or_default());
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn open_parts(
        &self,
        envelope: &[u8],
        ct_len: usize,
        plain: &mut [u8],
    ) -> Result<(), CryptoError> {
        let short = || CryptoError::EnvelopeTooShort {
            len: envelope.len(),
            min: OVERHEAD,
        };
        let nonce: &[u8; NONCE_LEN] = envelope
            .get(5..HEADER_LEN)
            .and_then(|n| n.try_into().ok())
            .ok_or_else(short)?;
        let ciphertext = envelope
            .get(HEADER_LEN..HEADER_LEN + ct_len)
            .ok_or_else(short)?;
        let tag = envelope.get(HEADER_LEN + ct_len..).ok_or_else(short)?;
        self.cipher.open(nonce, &self.aad, ciphertext, tag, plain)
    }
}

impl std::fmt::Debug for EnvelopeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvelopeKey")
            .field("key_version", &self.key_version)
            .finish_non_exhaustive()
    }
}

/// All key versions of one column: the active one seals, any known one opens.
#[derive(Debug)]
pub struct ColumnKeys {
    active: usize,
    versions: Vec<EnvelopeKey>,
}

impl ColumnKeys {
    /// Builds the set from per-version keys; `active_version` must be among them.
    pub fn new(versions: Vec<EnvelopeKey>, active_version: u32) -> Result<Self, CryptoError> {
        let active = versions
            .iter()
            .position(|k| k.key_version == active_version)
            .ok_or(CryptoError::UnknownKeyVersion(active_version))?;
        Ok(Self { active, versions })
    }

    /// The key that seals new values.
    pub fn active(&self) -> Option<&EnvelopeKey> {
        self.versions.get(self.active)
    }

    /// The key of a given version, if this set holds it.
    pub fn version(&self, key_version: u32) -> Option<&EnvelopeKey> {
        self.versions.iter().find(|k| k.key_version == key_version)
    }

    /// Seals under the active version.
    pub fn encrypt_into(&self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        self.active()
            .ok_or(CryptoError::UnknownKeyVersion(0))?
            .encrypt_into(plaintext, out)
    }

    /// Opens an envelope of any version in the set.
    pub fn decrypt_into(&self, envelope: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        let header = parse_header(envelope)?;
        self.version(header.key_version)
            .ok_or(CryptoError::UnknownKeyVersion(header.key_version))?
            .decrypt_into(envelope, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(v: u32, byte: u8, col: &str) -> EnvelopeKey {
        EnvelopeKey::derive(
            &SecretKey::from_bytes([byte; 32]),
            v,
            &ColumnId::parse(col).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn round_trip_and_layout() {
        let k = key(7, 1, "public.t.c");
        let mut out = vec![0xEE]; // existing content must be kept
        k.encrypt_into(b"hello", &mut out).unwrap();
        assert_eq!(out.len(), 1 + envelope_len(5));
        let env = &out[1..];
        assert_eq!(env[0], FORMAT_VERSION);
        assert_eq!(&env[1..5], &7u32.to_be_bytes());
        let mut plain = Vec::new();
        k.decrypt_into(env, &mut plain).unwrap();
        assert_eq!(plain, b"hello");
    }

    #[test]
    fn randomized() {
        let k = key(1, 1, "public.t.c");
        let (mut a, mut b) = (Vec::new(), Vec::new());
        k.encrypt_into(b"same", &mut a).unwrap();
        k.encrypt_into(b"same", &mut b).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn wrong_key_column_version_fail() {
        let k = key(1, 1, "public.t.c");
        let mut env = Vec::new();
        k.encrypt_into(b"secret", &mut env).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            key(1, 2, "public.t.c").decrypt_into(&env, &mut out),
            Err(CryptoError::AuthenticationFailed)
        );
        assert_eq!(
            key(1, 1, "public.t.d").decrypt_into(&env, &mut out),
            Err(CryptoError::AuthenticationFailed)
        );
        assert_eq!(
            key(2, 1, "public.t.c").decrypt_into(&env, &mut out),
            Err(CryptoError::UnknownKeyVersion(1))
        );
        // Header edited to claim version 2, opened with a version-2 key of the same material:
        // the AAD binds the version, so it fails.
        let mut edited = env.clone();
        edited[1..5].copy_from_slice(&2u32.to_be_bytes());
        assert_eq!(
            key(2, 1, "public.t.c").decrypt_into(&edited, &mut out),
            Err(CryptoError::AuthenticationFailed)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn malformed_inputs() {
        let k = key(1, 1, "public.t.c");
        let mut out = Vec::new();
        for len in 0..OVERHEAD {
            let junk = vec![FORMAT_VERSION; len];
            assert!(matches!(
                k.decrypt_into(&junk, &mut out),
                Err(CryptoError::EnvelopeTooShort { .. })
            ));
        }
        let mut env = Vec::new();
        k.encrypt_into(b"x", &mut env).unwrap();
        env[0] = 9;
        assert_eq!(
            k.decrypt_into(&env, &mut out),
            Err(CryptoError::UnknownFormatVersion(9))
        );
    }

    #[test]
    fn column_keys_dispatch_by_version() {
        let ks = ColumnKeys::new(vec![key(1, 1, "s.t.c"), key(2, 2, "s.t.c")], 2).unwrap();
        let mut old = Vec::new();
        key(1, 1, "s.t.c").encrypt_into(b"old", &mut old).unwrap();
        let mut new = Vec::new();
        ks.encrypt_into(b"new", &mut new).unwrap();
        assert_eq!(parse_header(&new).unwrap().key_version, 2);
        let mut out = Vec::new();
        ks.decrypt_into(&old, &mut out).unwrap();
        ks.decrypt_into(&new, &mut out).unwrap();
        assert_eq!(out, b"oldnew");
        let mut v3 = Vec::new();
        key(3, 3, "s.t.c").encrypt_into(b"x", &mut v3).unwrap();
        assert_eq!(
            ks.decrypt_into(&v3, &mut out),
            Err(CryptoError::UnknownKeyVersion(3))
        );
        assert!(ColumnKeys::new(vec![key(1, 1, "s.t.c")], 5).is_err());
    }
}
