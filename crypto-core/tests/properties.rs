//! Property tests: every type round-trips through text, binary, canonical and envelope forms;
//! any single-bit change to an envelope is detected.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use pgseal_crypto::envelope::EnvelopeKey;
use pgseal_crypto::value::{LogicalType, Normalisation, Value};
use pgseal_crypto::{ColumnId, CryptoError, SecretKey};
use proptest::prelude::*;

/// Text literals of every supported type, including edge cases.
fn literal() -> impl Strategy<Value = (LogicalType, String)> {
    prop_oneof![
        any::<String>()
            .prop_filter("no NUL", |s| !s.contains('\0'))
            .prop_map(|s| (LogicalType::Text, s)),
        "[a-zA-Z0-9 @.]{0,40}".prop_map(|s| (LogicalType::Varchar, s)),
        any::<i16>().prop_map(|v| (LogicalType::Int2, v.to_string())),
        any::<i32>().prop_map(|v| (LogicalType::Int4, format!("{v:+}"))),
        any::<i64>().prop_map(|v| (LogicalType::Int8, v.to_string())),
        any::<bool>().prop_map(|v| (LogicalType::Bool, v.to_string())),
        any::<f64>().prop_map(|v| (LogicalType::Float8, format!("{v:e}"))),
        ("-?[0-9]{1,25}", "[0-9]{0,12}").prop_map(|(i, f)| (
            LogicalType::Numeric,
            if f.is_empty() { i } else { format!("{i}.{f}") }
        )),
        (1i64..4714, 1u32..=12, 1u32..=28, any::<bool>()).prop_map(|(y, m, d, bc)| (
            LogicalType::Date,
            format!("{y:04}-{m:02}-{d:02}{}", if bc { " BC" } else { "" })
        )),
        (
            1i64..9999,
            1u32..=12,
            1u32..=28,
            0u32..24,
            0u32..60,
            0u32..60,
            0u32..1_000_000
        )
            .prop_map(|(y, mo, d, h, mi, s, us)| (
                LogicalType::Timestamp,
                format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}")
            )),
        (1971i64..2100, 1u32..=12, 1u32..=28, 0u32..24, -14i32..=14).prop_map(
            |(y, mo, d, h, off)| (
                LogicalType::TimestampTz,
                format!("{y}-{mo:02}-{d:02} {h:02}:30:00{off:+03}")
            )
        ),
        any::<[u8; 16]>().prop_map(|u| (LogicalType::Uuid, hex::encode(u))),
        (any::<i32>(), "[a-z]{0,8}", any::<bool>()).prop_map(|(n, s, b)| (
            LogicalType::Jsonb,
            format!(r#"{{"n": {n}, "s": "{s}", "b": {b}, "a": [1.50, null]}}"#)
        )),
        proptest::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| (LogicalType::Bytea, format!("\\x{}", hex::encode(b)))),
    ]
}

fn envelope_key() -> EnvelopeKey {
    EnvelopeKey::derive(
        &SecretKey::from_bytes([9u8; 32]),
        3,
        &ColumnId::parse("public.p.c").unwrap(),
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn round_trips_every_type((ty, text) in literal()) {
        let v = ty.parse_text(&text).unwrap();
        // Text output parses back to the same value (the output form is a fixed point).
        let shown = v.to_text();
        let again = ty.parse_text(&shown).unwrap();
        prop_assert_eq!(&again.to_text(), &shown);
        // Binary wire format.
        let mut bin = Vec::new();
        v.write_binary(&mut bin);
        prop_assert_eq!(ty.parse_binary(&bin).unwrap().to_text(), shown.clone());
        // Canonical encoding through an envelope.
        let mut canonical = Vec::new();
        v.encode_canonical(&mut canonical);
        let key = envelope_key();
        let mut env = Vec::new();
        key.encrypt_into(&canonical, &mut env).unwrap();
        let mut plain = Vec::new();
        key.decrypt_into(&env, &mut plain).unwrap();
        let back = Value::decode_canonical(&plain, ty).unwrap();
        prop_assert_eq!(back.to_text(), shown);
        // Same value, same index input, whichever form the client used.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        v.index_input(Normalisation::default(), &mut a);
        again.index_input(Normalisation::default(), &mut b);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn any_bit_flip_is_detected(plain in proptest::collection::vec(any::<u8>(), 0..80), bit in any::<prop::sample::Index>()) {
        let key = envelope_key();
        let mut env = Vec::new();
        key.encrypt_into(&plain, &mut env).unwrap();
        let i = bit.index(env.len() * 8);
        env[i / 8] ^= 1 << (i % 8);
        let mut out = Vec::new();
        prop_assert!(key.decrypt_into(&env, &mut out).is_err());
        prop_assert!(out.is_empty());
    }

    #[test]
    fn truncation_and_random_bytes_are_errors(junk in proptest::collection::vec(any::<u8>(), 0..120), cut in 0usize..200) {
        let key = envelope_key();
        let mut out = Vec::new();
        prop_assert!(key.decrypt_into(&junk, &mut out).is_err());
        let mut env = Vec::new();
        key.encrypt_into(b"some value", &mut env).unwrap();
        let cut = cut % env.len();
        prop_assert!(key.decrypt_into(&env[..cut], &mut out).is_err());
    }

    #[test]
    fn malformed_literals_are_errors_not_panics(ty in prop::sample::select(LogicalType::ALL.to_vec()), s in "\\PC{0,30}", b in proptest::collection::vec(any::<u8>(), 0..40)) {
        let _ = ty.parse_text(&s);
        let _ = ty.parse_binary(&b);
        let _ = Value::decode_canonical(&b, ty);
    }
}

#[test]
fn wrong_column_is_authentication_failure() {
    let key = envelope_key();
    let other = EnvelopeKey::derive(
        &SecretKey::from_bytes([9u8; 32]),
        3,
        &ColumnId::parse("public.p.d").unwrap(),
    )
    .unwrap();
    let mut env = Vec::new();
    key.encrypt_into(b"x", &mut env).unwrap();
    assert_eq!(
        other.decrypt_into(&env, &mut Vec::new()),
        Err(CryptoError::AuthenticationFailed)
    );
}
