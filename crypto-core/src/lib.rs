//! `pgseal-crypto`: the hot path of pgseal.
pub mod error;
pub mod key;
pub mod keywrap;
pub use error::CryptoError;
pub use key::{SecretKey, KEY_LEN};
