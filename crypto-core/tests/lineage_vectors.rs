//! Known-answer vectors of blind-index lineages (`tests/vectors/blind-index-lineage-v1.txt`,
//! docs/format.md §2.4): the blind index comes from the keyring's index material, so one value
//! sealed under different data-key versions carries one tag; a legacy generation (derived from a
//! data-key version's material) gives exactly the tags of `envelope-v1.txt`.
//!
//! The file was produced once by an independent Python implementation (the same code paths as
//! `tests/vectors/independent_check.py`, which CI runs on it too); never regenerate it to make a
//! failing test pass.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use pgseal_crypto::envelope::EnvelopeKey;
use pgseal_crypto::value::{LogicalType, Normalisation, Value};
use pgseal_crypto::{BlindIndexKey, ColumnId, IndexGroup, SecretKey};

const LINEAGE: &str = include_str!("vectors/blind-index-lineage-v1.txt");
const ENVELOPES: &str = include_str!("vectors/envelope-v1.txt");

fn records(text: &str) -> Vec<HashMap<String, String>> {
    text.split("\n\n")
        .map(|b| {
            b.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    l.split_once(" =")
                        .map(|(k, v)| (k.to_owned(), v.trim_start_matches(' ').to_owned()))
                })
                .collect::<HashMap<_, _>>()
        })
        .filter(|m| m.contains_key("envelope"))
        .collect()
}

fn key(hex_str: &str) -> SecretKey {
    SecretKey::from_slice(&hex::decode(hex_str).unwrap()).unwrap()
}

#[test]
fn lineage_vectors_index_and_decrypt() {
    let recs = records(LINEAGE);
    assert!(recs.len() >= 5, "{} records", recs.len());
    // (index material, index input) → tags seen, and the data-key versions they were seen under.
    let mut tags: BTreeMap<(String, String), (BTreeSet<String>, BTreeSet<u32>)> = BTreeMap::new();
    for r in &recs {
        let generation: u32 = r["generation"].parse().unwrap();
        let group = IndexGroup::new(&r["index_group"]).unwrap();
        let index = BlindIndexKey::derive(&key(&r["index_material"]), generation, &group).unwrap();
        // The equality form of the value, from its canonical encoding.
        let ty = LogicalType::from_name(&r["type"]).unwrap();
        let canonical = hex::decode(&r["canonical"]).unwrap();
        let value = Value::decode_canonical(&canonical, ty).unwrap();
        assert_eq!(value.to_text(), r["value"]);
        let mut input = Vec::new();
        value.index_input(Normalisation::default(), &mut input);
        assert_eq!(hex::encode(&input), r["index_input"]);
        let tag = index.tag(&input);
        assert_eq!(hex::encode(tag), r["blind_index"], "{r:?}");
        // The envelope under the record's data-key version.
        let version: u32 = r["key_version"].parse().unwrap();
        let column = ColumnId::parse(&r["column"]).unwrap();
        let env_key = EnvelopeKey::derive(&key(&r["material"]), version, &column).unwrap();
        let envelope = hex::decode(&r["envelope"]).unwrap();
        let mut plain = Vec::new();
        env_key.decrypt_into(&envelope, &mut plain).unwrap();
        assert_eq!(plain, canonical);
        let nonce: [u8; 12] = hex::decode(&r["nonce"]).unwrap().try_into().unwrap();
        let mut again = Vec::new();
        env_key
            .encrypt_into_with_nonce(&nonce, &plain, &mut again)
            .unwrap();
        assert_eq!(again, envelope);
        // The stored cell is the tag, then the envelope.
        let mut cell = tag.to_vec();
        cell.extend_from_slice(&envelope);
        assert_eq!(hex::encode(cell), r["cell"]);
        let entry = tags
            .entry((r["index_material"].clone(), r["index_input"].clone()))
            .or_default();
        entry.0.insert(r["blind_index"].clone());
        entry.1.insert(version);
        if r["source"] == "legacy" {
            // Generation 1 of a keyring from before lineages is today's derivation from the data-key
            // version it names.
            assert_eq!(r["derived_from_version"], r["key_version"]);
            assert_eq!(r["index_material"], r["material"]);
            let today = BlindIndexKey::derive(&key(&r["material"]), version, &group).unwrap();
            assert_eq!(today.tag(&input), tag);
        } else {
            assert_eq!(r["derived_from_version"], "");
        }
    }
    // One value, one index material: one tag, whichever data-key version sealed it.
    let multi = tags
        .values()
        .filter(|(_, versions)| versions.len() >= 3)
        .count();
    assert!(multi >= 1, "a value sealed under three data-key versions");
    for (t, versions) in tags.values() {
        assert_eq!(t.len(), 1, "tags {t:?} under versions {versions:?}");
    }
    // Another generation (other index material) gives another tag for the same value.
    let distinct: BTreeSet<&String> = recs
        .iter()
        .filter(|r| r["column"] == "public.accounts.email")
        .map(|r| &r["blind_index"])
        .collect();
    assert_eq!(distinct.len(), 2);
}

/// The legacy record is the first record of `envelope-v1.txt`, unchanged.
#[test]
fn legacy_generation_reproduces_the_committed_envelope_vectors() {
    let legacy: Vec<_> = records(LINEAGE)
        .into_iter()
        .filter(|r| r["source"] == "legacy")
        .collect();
    assert!(!legacy.is_empty());
    let committed = records(ENVELOPES);
    for l in &legacy {
        let same = committed
            .iter()
            .find(|e| e["envelope"] == l["envelope"])
            .expect("the legacy record's envelope is a committed envelope-v1 vector");
        assert_eq!(same["blind_index"], l["blind_index"]);
        assert_eq!(same["material"], l["material"]);
    }
}
