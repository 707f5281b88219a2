//! HMAC-SHA256 (RFC 2104) with the keyed inner and outer states prepared once.
//!
//! Built on `sha2`'s SHA-256 compression function (hardware SHA-NI when the CPU has it). A short
//! message then costs exactly two compressions and no allocation or state copy beyond two
//! 32-byte arrays; the generic `hmac` crate's clone-per-value costs about 15% more here
//! (`docs/benchmarks.md`). Checked against RFC 4231 and, by property test, against the `hmac`
//! crate.

use sha2::block_api::compress256;
use zeroize::{Zeroize, ZeroizeOnDrop};

const BLOCK: usize = 64;
const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// A prepared HMAC-SHA256 key: the SHA-256 states after absorbing `key ⊕ ipad` and `key ⊕ opad`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct HmacSha256 {
    inner: [u32; 8],
    outer: [u32; 8],
}

impl HmacSha256 {
    /// Prepares a key of any length (keys longer than 64 bytes are hashed first, per RFC 2104).
    pub fn new(key: &[u8]) -> Self {
        let mut block = [0u8; BLOCK];
        if key.len() > BLOCK {
            let digest = sha256(key);
            block
                .iter_mut()
                .zip(digest.iter())
                .for_each(|(b, k)| *b = *k);
        } else {
            block.iter_mut().zip(key).for_each(|(b, k)| *b = *k);
        }
        let mut ipad = block;
        let mut opad = block;
        ipad.iter_mut().for_each(|b| *b ^= 0x36);
        opad.iter_mut().for_each(|b| *b ^= 0x5c);
        let mut inner = IV;
        let mut outer = IV;
        compress256(&mut inner, &[ipad]);
        compress256(&mut outer, &[opad]);
        block.zeroize();
        ipad.zeroize();
        opad.zeroize();
        Self { inner, outer }
    }

    /// The full 32-byte MAC of `msg`.
    #[inline]
    pub fn mac(&self, msg: &[u8]) -> [u8; 32] {
        let mut state = self.inner;
        absorb_final(&mut state, msg, BLOCK as u64);
        let mut outer_block = [0u8; BLOCK];
        write_state(&state, &mut outer_block);
        // Outer message: 32-byte inner digest, then padding for 64 + 32 bytes.
        pad_single_block(&mut outer_block, 32, (BLOCK + 32) as u64);
        let mut out_state = self.outer;
        compress256(&mut out_state, &[outer_block]);
        let mut out = [0u8; 32];
        write_state(&out_state, &mut out);
        state.zeroize();
        out
    }
}

impl std::fmt::Debug for HmacSha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacSha256(..)")
    }
}

/// Plain SHA-256 of `msg`.
pub fn sha256(msg: &[u8]) -> [u8; 32] {
    let mut state = IV;
    absorb_final(&mut state, msg, 0);
    let mut out = [0u8; 32];
    write_state(&state, &mut out);
    out
}

/// Absorbs `msg` and the SHA-256 padding; `prefix_len` bytes were absorbed before.
#[inline]
fn absorb_final(state: &mut [u32; 8], msg: &[u8], prefix_len: u64) {
    let mut chunks = msg.chunks_exact(BLOCK);
    for chunk in &mut chunks {
        if let Ok(block) = <&[u8; BLOCK]>::try_from(chunk) {
            compress256(state, core::slice::from_ref(block));
        }
    }
    let rem = chunks.remainder();
    let bit_len = (prefix_len + msg.len() as u64).wrapping_mul(8);
    let mut last = [[0u8; BLOCK]; 2];
    let [first, second] = &mut last;
    first.iter_mut().zip(rem).for_each(|(b, m)| *b = *m);
    if rem.len() < BLOCK - 8 {
        pad_single_block(first, rem.len(), bit_len / 8);
        compress256(state, core::slice::from_ref(first));
    } else {
        if let Some(b) = first.get_mut(rem.len()) {
            *b = 0x80;
        }
        if let Some(tail) = second.get_mut(BLOCK - 8..) {
            tail.copy_from_slice(&bit_len.to_be_bytes());
        }
        compress256(state, &last);
    }
}

/// Writes the `0x80` marker at `used` and the total byte length `total_len` as bits at the end.
#[inline]
fn pad_single_block(block: &mut [u8; BLOCK], used: usize, total_len: u64) {
    if let Some(b) = block.get_mut(used) {
        *b = 0x80;
    }
    if let Some(tail) = block.get_mut(BLOCK - 8..) {
        tail.copy_from_slice(&total_len.wrapping_mul(8).to_be_bytes());
    }
}

#[inline]
fn write_state(state: &[u32; 8], out: &mut [u8]) {
    for (word, dst) in state.iter().zip(out.chunks_exact_mut(4)) {
        dst.copy_from_slice(&word.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{KeyInit, Mac};
    use proptest::prelude::*;

    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            hex::encode(sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex::encode(sha256(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    proptest! {
        #[test]
        fn matches_hmac_crate(key in proptest::collection::vec(any::<u8>(), 0..150),
                              msg in proptest::collection::vec(any::<u8>(), 0..300)) {
            let ours = HmacSha256::new(&key).mac(&msg);
            let mut theirs = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).unwrap();
            theirs.update(&msg);
            prop_assert_eq!(&ours[..], &theirs.finalize().into_bytes()[..]);
        }
    }

    #[test]
    fn every_length_around_block_boundaries() {
        let key = [9u8; 32];
        let ours = HmacSha256::new(&key);
        for len in 0..200 {
            let msg = vec![len as u8; len];
            let mut theirs = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).unwrap();
            theirs.update(&msg);
            assert_eq!(
                &ours.mac(&msg)[..],
                &theirs.finalize().into_bytes()[..],
                "len {len}"
            );
        }
    }
}
