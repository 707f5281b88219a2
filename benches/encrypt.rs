//! Criterion benchmarks of the encryption interceptor's hot paths (`encrypt/...`):
//! - `encrypt/plan_cache_hit`: the cached rewrite-plan lookup of a typical statement;
//! - `encrypt/plan_passthrough`: the same lookup for a statement on no protected table;
//! - `encrypt/datarow_decrypt_10col_3protected`: decrypting and re-encoding one 10-column
//!   DataRow (text format) with 3 protected columns.
//!
//! Run: `cargo bench --bench encrypt`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion};
use pgseal_crypto::value::{LogicalType, Normalisation};
use pgseal_crypto::{ColumnId, IndexGroup, SecretKey};
use pgseal_proxy::catalog::{CatalogSnapshot, StaticCatalog};
use pgseal_proxy::encrypt::rows::RowPlan;
use pgseal_proxy::encrypt::{cells, wire, EncryptionFactory};
use pgseal_proxy::keys::{KeySource, StaticKeys};
use pgseal_proxy::protocol::messages::put_message;
use pgseal_proxy::rewrite::{IndexSpec, ProtectedColumn, ProtectedSchema};

fn col(column: &str, ty: LogicalType, indexed: bool) -> ProtectedColumn {
    let id = ColumnId::new("public", "patients", column).unwrap();
    ProtectedColumn {
        index: indexed.then(|| IndexSpec {
            group: IndexGroup::of_column(&id),
            norm: Normalisation::default(),
            unique: false,
        }),
        id,
        ty,
        keyring: "patients".into(),
    }
}

fn setup() -> (EncryptionFactory, Arc<StaticKeys>, Vec<ProtectedColumn>) {
    let cols = vec![
        col("email", LogicalType::Text, true),
        col("ssn", LogicalType::Int8, true),
        col("dob", LogicalType::Date, false),
    ];
    let schema = Arc::new(ProtectedSchema::from_columns(cols.clone()));
    let mut keyrings = HashMap::new();
    keyrings.insert(
        "patients".to_owned(),
        vec![(1, SecretKey::from_bytes([9; 32]))],
    );
    let keys = Arc::new(StaticKeys::new(&schema, &keyrings).unwrap());
    let snapshot = CatalogSnapshot::new(
        1,
        [("public".to_owned(), "patients".to_owned())],
        [(
            16400,
            "public".to_owned(),
            "patients".to_owned(),
            vec![
                (2, "email".to_owned()),
                (3, "ssn".to_owned()),
                (4, "dob".to_owned()),
            ],
        )],
        &schema,
    );
    let catalog = Arc::new(StaticCatalog(Arc::new(snapshot)));
    let factory = EncryptionFactory::new(schema, "app".into(), keys.clone(), catalog);
    (factory, keys, cols)
}

fn bench(c: &mut Criterion) {
    let (factory, keys, cols) = setup();
    let sp = vec!["app".to_owned(), "public".to_owned()];
    let sql = "SELECT id, name, email, ssn FROM patients WHERE email = $1 AND status = $2";
    assert!(factory.plan(sql, &sp).is_ok());
    c.bench_function("encrypt/plan_cache_hit", |b| {
        b.iter(|| black_box(factory.plan(black_box(sql), &sp)))
    });
    let plain = "SELECT id, total FROM orders WHERE customer_id = $1 AND status = $2";
    c.bench_function("encrypt/plan_passthrough", |b| {
        b.iter(|| black_box(factory.plan(black_box(plain), &sp)))
    });

    // 10 columns: 7 plain text values, 3 protected (text, int8, date) in bytea text format.
    let samples = ["someone@example.com", "123456789", "1980-05-17"];
    let mut plan_cols = vec![None; 10];
    let mut row: Vec<Vec<u8>> = (0..10).map(|i| format!("value {i}").into_bytes()).collect();
    for (k, (c, s)) in cols.iter().zip(samples).enumerate() {
        let pos = 2 + k * 3;
        let crypto = keys.column(&c.id).unwrap();
        let mut stored = Vec::new();
        cells::seal(&crypto, c, &c.ty.parse_text(s).unwrap(), &mut stored).unwrap();
        let mut hex = String::from("\\x");
        cells::push_hex(&stored, &mut hex);
        row[pos] = hex.into_bytes();
        plan_cols[pos] = Some(c.clone());
    }
    let plan = RowPlan::new(plan_cols, vec![0; 10]);
    let mut msg = BytesMut::new();
    put_message(&mut msg, b'D', |b| {
        b.put_i16(10);
        for v in &row {
            wire::put_value(b, Some(v));
        }
    });
    let body = msg[5..].to_vec();
    let mut out = BytesMut::with_capacity(1024);
    c.bench_function("encrypt/datarow_decrypt_10col_3protected", |b| {
        b.iter(|| {
            out.clear();
            factory
                .decrypt_data_row(&plan, black_box(&body), &mut out)
                .unwrap();
            black_box(&out);
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
