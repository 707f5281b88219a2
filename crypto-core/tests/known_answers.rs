//! Known-answer tests through pgseal's own API: RFC 8452 (AES-256-GCM-SIV), RFC 4231
//! (HMAC-SHA256), RFC 5869 (HKDF-SHA256).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use pgseal_crypto::aead::{FieldCipher, TAG_LEN};
use pgseal_crypto::derive::hkdf_sha256;
use pgseal_crypto::hmac_sha256::HmacSha256;
use pgseal_crypto::SecretKey;

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.trim()).expect("hex")
}

#[test]
fn rfc8452_aes_256_gcm_siv() {
    let text = include_str!("vectors/rfc8452-aes256-gcm-siv.txt");
    let mut count = 0;
    for block in text.split("\n\n") {
        let fields: std::collections::HashMap<&str, Vec<u8>> = block
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(" = ") || l.ends_with(" ="))
            .filter_map(|l| l.split_once(" =").map(|(k, v)| (k.trim(), unhex(v))))
            .collect();
        let Some(key) = fields.get("key") else {
            continue;
        };
        let nonce: [u8; 12] = fields["nonce"].as_slice().try_into().unwrap();
        let (aad, pt, expected) = (&fields["aad"], &fields["plaintext"], &fields["ciphertext"]);
        assert_eq!(expected.len(), pt.len() + TAG_LEN);
        let cipher = FieldCipher::new(&SecretKey::from_slice(key).unwrap()).unwrap();
        let mut ct = vec![0u8; pt.len()];
        let mut tag = [0u8; TAG_LEN];
        cipher.seal(&nonce, aad, pt, &mut ct, &mut tag).unwrap();
        assert_eq!([ct.as_slice(), &tag].concat(), *expected, "vector {count}");
        let mut back = vec![0u8; pt.len()];
        cipher.open(&nonce, aad, &ct, &tag, &mut back).unwrap();
        assert_eq!(&back, pt);
        tag[0] ^= 1;
        assert!(cipher.open(&nonce, aad, &ct, &tag, &mut back).is_err());
        count += 1;
    }
    assert_eq!(count, 24, "all RFC 8452 C.2 vectors ran");
}

#[test]
fn rfc4231_hmac_sha256() {
    let cases: [(Vec<u8>, Vec<u8>, &str); 6] = [
        (vec![0x0b; 20], b"Hi There".to_vec(),
         "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        (b"Jefe".to_vec(), b"what do ya want for nothing?".to_vec(),
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
        (vec![0xaa; 20], vec![0xdd; 50],
         "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
        ((1..=25).collect(), vec![0xcd; 50],
         "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
        (vec![0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
        (vec![0xaa; 131], b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".to_vec(),
         "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
    ];
    for (i, (key, data, expected)) in cases.iter().enumerate() {
        assert_eq!(
            hex::encode(HmacSha256::new(key).mac(data)),
            *expected,
            "case {}",
            i + 1
        );
    }
    // Test case 5: truncation to 128 bits, which is what blind indexes store.
    let tc5 = HmacSha256::new(&[0x0c; 20]).mac(b"Test With Truncation");
    assert_eq!(hex::encode(&tc5[..16]), "a3b6167473100ee06e0c796c2955552b");
}

#[test]
fn rfc5869_hkdf_sha256() {
    // OKM = T(1) || T(2) || ...: our 32-byte output is the first 32 bytes of the RFC's OKM.
    let cases = [
        (unhex(&"0b".repeat(22)), unhex("000102030405060708090a0b0c"), unhex("f0f1f2f3f4f5f6f7f8f9"),
         "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
        ((0x00..=0x4f).collect::<Vec<u8>>(), (0x60..=0xaf).collect(), (0xb0..=0xff).collect(),
         "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87"),
        (unhex(&"0b".repeat(22)), vec![], vec![],
         "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"),
    ];
    for (i, (ikm, salt, info, okm)) in cases.iter().enumerate() {
        let key = hkdf_sha256(salt, ikm, info).unwrap();
        assert_eq!(
            hex::encode(key.expose_secret()),
            okm[..64],
            "case {}",
            i + 1
        );
    }
}

#[test]
fn interoperates_with_rustcrypto_aes_gcm_siv() {
    use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
    let key = [0x42u8; 32];
    let ours = FieldCipher::new(&SecretKey::from_bytes(key)).unwrap();
    let theirs = aes_gcm_siv::Aes256GcmSiv::new(&key.into());
    for len in [0usize, 1, 15, 16, 17, 32, 100, 4096] {
        let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let nonce = [len as u8; 12];
        let mut ct = vec![0u8; len];
        let mut tag = [0u8; TAG_LEN];
        ours.seal(&nonce, b"aad", &pt, &mut ct, &mut tag).unwrap();
        let expected = theirs
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: &pt,
                    aad: b"aad",
                },
            )
            .unwrap();
        assert_eq!([ct.as_slice(), &tag].concat(), expected, "len {len}");
    }
}
