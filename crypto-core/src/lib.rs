//! `pgseal-crypto`: the hot path of pgseal.
//!
//! No I/O, no async. The pieces, in the order a value meets them:
//! - [`value`]: canonical encodings of the supported PostgreSQL types (text and binary wire
//!   formats in, canonical bytes to encrypt, text or binary wire formats out);
//! - [`derive`]: HKDF-SHA256 subkeys per column (encryption) and per index group (blind index);
//! - [`envelope`]: the stored ciphertext format, AES-256-GCM-SIV via [`aead`];
//! - [`blind_index`]: HMAC-SHA256 tags for equality lookups;
//! - [`keywrap`]: wrapping of key material at rest (for the keyserver);
//! - [`key`]: the zeroizing 32-byte secret type.
//!
//! `docs/format.md` at the repository root is the normative specification.

pub mod aead;
pub mod blind_index;
pub mod derive;
pub mod envelope;
pub mod error;
pub mod hmac_sha256;
pub mod ids;
pub mod key;
pub mod keywrap;
pub mod nonce;
pub mod value;

pub use blind_index::{BlindIndex, BlindIndexKey, BLIND_INDEX_LEN};
pub use envelope::{ColumnKeys, EnvelopeKey};
pub use error::CryptoError;
pub use ids::{ColumnId, IndexGroup};
pub use key::{SecretKey, KEY_LEN};
