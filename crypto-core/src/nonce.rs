//! Nonces for the field cipher.
//!
//! Each thread draws nonces from `rand`'s thread-local ChaCha12 generator, seeded and periodically
//! reseeded from the operating system. A syscall per value would cost more than the encryption.
//! AES-GCM-SIV is nonce-misuse resistant: even a (2^-96-unlikely) repeated nonce only reveals
//! that two plaintexts of one column are equal, never the plaintext or the key.

use rand::Rng;

use crate::aead::NONCE_LEN;

/// A fresh random 96-bit nonce.
#[inline]
pub fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    nonce
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn nonces_do_not_repeat() {
        let seen: HashSet<[u8; NONCE_LEN]> = (0..10_000).map(|_| random_nonce()).collect();
        assert_eq!(seen.len(), 10_000);
    }
}
