//! Committed envelope and blind-index vectors (`tests/vectors/envelope-v1.txt`).
//!
//! Every future version of pgseal must keep decrypting these. The file was produced once by the
//! ignored `print_vectors` test below; never regenerate it to make a failing test pass.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;

use pgseal_crypto::envelope::EnvelopeKey;
use pgseal_crypto::value::{LogicalType, Normalisation, Value};
use pgseal_crypto::{BlindIndexKey, ColumnId, IndexGroup, SecretKey};

const VECTORS: &str = include_str!("vectors/envelope-v1.txt");

fn blocks() -> Vec<HashMap<String, String>> {
    VECTORS
        .split("\n\n")
        .map(|b| {
            b.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    l.split_once(" = ")
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .collect::<HashMap<_, _>>()
        })
        .filter(|m| m.contains_key("envelope"))
        .collect()
}

fn norm(s: &str) -> Normalisation {
    Normalisation {
        case_insensitive: s.contains("case_insensitive"),
        trim: s.contains("trim"),
    }
}

#[test]
fn committed_vectors_still_decrypt_and_index() {
    let vectors = blocks();
    assert!(
        vectors.len() >= 14,
        "one vector per type at least, found {}",
        vectors.len()
    );
    for v in &vectors {
        let material = SecretKey::from_slice(&hex::decode(&v["material"]).unwrap()).unwrap();
        let version: u32 = v["key_version"].parse().unwrap();
        let column = ColumnId::parse(&v["column"]).unwrap();
        let ty = LogicalType::from_name(&v["type"]).unwrap();
        let key = EnvelopeKey::derive(&material, version, &column).unwrap();
        let envelope = hex::decode(&v["envelope"]).unwrap();
        let mut plain = Vec::new();
        key.decrypt_into(&envelope, &mut plain).unwrap();
        assert_eq!(hex::encode(&plain), v["canonical"], "{}", v["column"]);
        let value = Value::decode_canonical(&plain, ty).unwrap();
        assert_eq!(value.to_text(), v["value"]);
        // Sealing again with the recorded nonce reproduces the envelope byte for byte.
        let nonce: [u8; 12] = hex::decode(&v["nonce"]).unwrap().try_into().unwrap();
        let mut again = Vec::new();
        key.encrypt_into_with_nonce(&nonce, &plain, &mut again)
            .unwrap();
        assert_eq!(again, envelope);
        let group = IndexGroup::new(&v["index_group"]).unwrap();
        let index_key = BlindIndexKey::derive(&material, version, &group).unwrap();
        let mut input = Vec::new();
        value.index_input(norm(&v["normalisation"]), &mut input);
        assert_eq!(hex::encode(index_key.tag(&input)), v["blind_index"]);
    }
}

/// Prints the vector file. Run once: `cargo test -p pgseal-crypto --test vectors -- --ignored --nocapture`.
#[test]
#[ignore]
fn print_vectors() {
    let cases: &[(LogicalType, &str, &str, &str, &str)] = &[
        (
            LogicalType::Text,
            "public.patients.name",
            "Anna Müller",
            "public.patients.name",
            "",
        ),
        (
            LogicalType::Varchar,
            "public.patients.email",
            "Anna.Mueller@Example.org",
            "emails",
            "case_insensitive,trim",
        ),
        (
            LogicalType::Int2,
            "public.visits.room",
            "-12",
            "public.visits.room",
            "",
        ),
        (
            LogicalType::Int4,
            "public.patients.insurance_no",
            "042",
            "ids",
            "",
        ),
        (
            LogicalType::Int8,
            "public.visits.insurance_no",
            "42",
            "ids",
            "",
        ),
        (
            LogicalType::Bool,
            "public.patients.consent",
            "yes",
            "public.patients.consent",
            "",
        ),
        (
            LogicalType::Float8,
            "public.labs.value",
            "1.5e-10",
            "public.labs.value",
            "",
        ),
        (
            LogicalType::Numeric,
            "public.bills.amount",
            "1234.5000",
            "public.bills.amount",
            "",
        ),
        (
            LogicalType::Date,
            "public.patients.birth_date",
            "1984-02-29",
            "public.patients.birth_date",
            "",
        ),
        (
            LogicalType::Timestamp,
            "public.visits.at",
            "2024-05-06 07:08:09.123456",
            "public.visits.at",
            "",
        ),
        (
            LogicalType::TimestampTz,
            "public.visits.at_tz",
            "2024-05-06 07:08:09+02",
            "public.visits.at_tz",
            "",
        ),
        (
            LogicalType::Uuid,
            "public.patients.external_id",
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "public.patients.external_id",
            "",
        ),
        (
            LogicalType::Jsonb,
            "public.patients.profile",
            r#"{"b": [1, 2.50], "a": "x"}"#,
            "public.patients.profile",
            "",
        ),
        (
            LogicalType::Bytea,
            "public.patients.scan",
            "\\xdeadbeef00",
            "public.patients.scan",
            "",
        ),
        (
            LogicalType::Text,
            "public.patients.notes",
            "",
            "public.patients.notes",
            "",
        ),
    ];
    println!("# pgseal envelope format 1: committed test vectors (docs/format.md).");
    println!(
        "# material: key version material; value: PostgreSQL text output of the decrypted value."
    );
    for (i, (ty, column, input, group, normalisation)) in cases.iter().enumerate() {
        let material = SecretKey::from_bytes([i as u8 + 1; 32]);
        let version = 1 + i as u32 * 1000;
        let nonce = [0xa0 ^ i as u8; 12];
        let value = ty.parse_text(input).unwrap();
        let mut canonical = Vec::new();
        value.encode_canonical(&mut canonical);
        let key =
            EnvelopeKey::derive(&material, version, &ColumnId::parse(column).unwrap()).unwrap();
        let mut envelope = Vec::new();
        key.encrypt_into_with_nonce(&nonce, &canonical, &mut envelope)
            .unwrap();
        let index_key =
            BlindIndexKey::derive(&material, version, &IndexGroup::new(group).unwrap()).unwrap();
        let mut idx = Vec::new();
        value.index_input(norm(normalisation), &mut idx);
        println!();
        println!("material = {}", hex::encode(material.expose_secret()));
        println!("key_version = {version}");
        println!("column = {column}");
        println!("type = {}", ty.name());
        println!("value = {}", value.to_text());
        println!("index_group = {group}");
        println!(
            "normalisation = {}",
            if normalisation.is_empty() {
                "none"
            } else {
                normalisation
            }
        );
        println!("index_input = {}", hex::encode(&idx));
        println!("nonce = {}", hex::encode(nonce));
        println!("canonical = {}", hex::encode(&canonical));
        println!("envelope = {}", hex::encode(&envelope));
        println!("blind_index = {}", hex::encode(index_key.tag(&idx)));
    }
}
