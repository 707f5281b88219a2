//! Criterion benchmarks of the encryption interceptor's hot paths (`encrypt/...`):
//! - `encrypt/plan_cache_hit`: the cached rewrite-plan lookup of a typical statement;
//! - `encrypt/plan_passthrough`: the same lookup for a statement on no protected table;
//! - `encrypt/plan_miss_literal_lookup`: analysing and rewriting a lookup whose literal is new
//!   every time (the simple protocol with inline literals misses the plan cache);
//! - `encrypt/datarow_decrypt_10col_3protected`: decrypting and re-encoding one 10-column
//!   DataRow (text format) with 3 protected columns;
//! - `encrypt/datarow_check_10col_text`: the leak guard's check of one 10-column DataRow of
//!   text the proxy does not decrypt (a function's result), forwarded unchanged;
//! - `encrypt/session_lookup_extended` and `encrypt/session_lookup_prepared`: everything one
//!   session's interceptor does for one point lookup as pgbench sends it (`-M extended`:
//!   Parse/Bind/Describe/Execute/Sync; `-M prepared`: Bind/Describe/Execute/Sync on a statement
//!   prepared once) and for the answers (one row with 3 protected columns), against a scripted
//!   upstream. This is the proxy's own CPU per encrypted lookup, without sockets.
//!
//! Run: `cargo bench --bench encrypt`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion};
use pgseal_crypto::value::{LogicalType, Normalisation};
use pgseal_crypto::{ColumnId, IndexGroup, SecretKey};
use pgseal_proxy::catalog::{CatalogSnapshot, StaticCatalog};
use pgseal_proxy::encrypt::rows::{Guard, RowPlan};
use pgseal_proxy::encrypt::wire::{BindMsg, Field, ParseMsg};
use pgseal_proxy::encrypt::{cells, wire, EncryptionFactory};
use pgseal_proxy::keys::{KeySource, StaticKeys};
use pgseal_proxy::protocol::messages::{put_message, ready_for_query};
use pgseal_proxy::rewrite::{IndexSpec, ProtectedColumn, ProtectedSchema};
use pgseal_proxy::session::{Frame, InterceptorFactory, MessageInterceptor, Outbox, SessionInfo};

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
    // A statement with its literal inline, new every time (simple protocol, client-side
    // binding as Django/psycopg do): a miss of the plan cache, analysed and rewritten.
    let mut n = 0u64;
    c.bench_function("encrypt/plan_miss_literal_lookup", |b| {
        b.iter(|| {
            n += 1;
            let sql = format!(
                "SELECT id, name, email, ssn FROM patients WHERE email = 'p{n}@example.com' AND status = 'active'"
            );
            black_box(factory.plan(black_box(&sql), &sp))
        })
    });
    // An INSERT with its values inline, new every time (simple protocol, client-side binding):
    // the gate answers from its shape cache, the rewriter parses and rewrites.
    let mut k = 0u64;
    c.bench_function("encrypt/plan_miss_literal_insert", |b| {
        b.iter(|| {
            k += 1;
            let sql = format!(
                "INSERT INTO patients (id, name, email, ssn, status) VALUES ({k}, 'name {k}', 'p{k}@example.com', {k}, 'active')"
            );
            black_box(factory.plan(black_box(&sql), &sp))
        })
    });
    // A plain-table statement with a new literal every time, in an encrypting session: the
    // gate's byte-level pre-filter lets it pass without a parse.
    let mut m = 0u64;
    c.bench_function("encrypt/plan_miss_plain_literal", |b| {
        b.iter(|| {
            m += 1;
            let sql =
                format!("SELECT id, total FROM orders WHERE customer_id = {m} AND status = 'open'");
            black_box(factory.plan(black_box(&sql), &sp))
        })
    });
    // The gate alone (PostgreSQL's grammar, the parse-tree walk, the checks) for a typical
    // lookup and insert on a protected table.
    let names = pgseal_proxy::sql::gate::Names::of(&ProtectedSchema::from_columns(cols.clone()));
    let lexer = pgseal_proxy::sql::lexer::LexerState::SERVER_DEFAULT;
    let untrusted = pgseal_proxy::sql::gate::Trust::Untrusted;
    for (id, sql) in [
        (
            "encrypt/gate_lookup",
            "SELECT id, name, email, ssn FROM patients WHERE email = $1 AND status = $2",
        ),
        (
            "encrypt/gate_insert",
            "INSERT INTO patients (id, name, email, ssn, status) VALUES ($1, $2, $3, $4, $5)",
        ),
    ] {
        assert!(pgseal_proxy::sql::gate::analyse(sql, &lexer, &names, untrusted).is_ok());
        c.bench_function(id, |b| {
            b.iter(|| {
                black_box(pgseal_proxy::sql::gate::analyse(
                    black_box(sql),
                    &lexer,
                    &names,
                    untrusted,
                ))
            })
        });
    }

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
    let body = data_row_body(&row);
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

    // The leak guard on a result the proxy does not decrypt: 10 text columns of a function's
    // result (table OID 0), ordinary values and one 200-character text with hex digits in it.
    let mut row: Vec<Vec<u8>> = (0..10).map(|i| format!("value {i}").into_bytes()).collect();
    row[9] = format!("ref 0100{} end", "7a3f".repeat(48)).into_bytes();
    let body = data_row_body(&row);
    let guarded = RowPlan::guarded(vec![None; 10], vec![Guard::for_type(25); 10], vec![0; 10]);
    assert!(guarded.inspect());
    c.bench_function("encrypt/datarow_check_10col_text", |b| {
        b.iter(|| factory.check_data_row(&guarded, black_box(&body)).unwrap())
    });
}

/// The body of a DataRow with `row`'s values (all non-NULL).
fn data_row_body(row: &[Vec<u8>]) -> Vec<u8> {
    let mut msg = BytesMut::new();
    put_message(&mut msg, b'D', |b| {
        b.put_i16(row.len() as i16);
        for v in row {
            wire::put_value(b, Some(v));
        }
    });
    msg[5..].to_vec()
}

/// Splits a buffer of complete messages into frames.
fn frames(buf: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        out.push(Frame::new(Bytes::copy_from_slice(&rest[..1 + len])));
        rest = &rest[1 + len..];
    }
    out
}

/// One session's interceptor with the relay's dispatch (only the tags it asks for).
struct Session {
    inner: Box<dyn MessageInterceptor>,
    up: BytesMut,
    client: BytesMut,
}

impl Session {
    fn new(factory: &EncryptionFactory) -> Self {
        let info = SessionInfo {
            user: "app".into(),
            upstream_user: "app".into(),
            database: "app".into(),
            params: Vec::new(),
            server_params: vec![("TimeZone".into(), "UTC".into())],
            probe: Vec::new(),
        };
        Session {
            inner: factory.create(&info),
            up: BytesMut::with_capacity(4096),
            client: BytesMut::with_capacity(4096),
        }
    }

    fn feed(&mut self, frontend: bool, frames: &[Frame]) {
        for f in frames {
            let mut out = Outbox {
                to_upstream: &mut self.up,
                to_client: &mut self.client,
            };
            let wanted = if frontend {
                self.inner.frontend_tags().contains(f.tag())
            } else {
                self.inner.backend_tags().contains(f.tag())
            };
            match (wanted, frontend) {
                (true, true) => self.inner.on_frontend(f.clone(), &mut out).unwrap(),
                (true, false) => self.inner.on_backend(f.clone(), &mut out).unwrap(),
                (false, true) => out.to_upstream.extend_from_slice(f.raw()),
                (false, false) => out.to_client.extend_from_slice(f.raw()),
            }
        }
    }
}

/// The upstream's answers to one lookup, for the result formats the proxy bound.
struct Upstream {
    fields: Vec<Field>,
    /// (id, protected cells as stored).
    row: (Vec<u8>, Vec<Vec<u8>>),
}

impl Upstream {
    /// The answers to the messages in `up` (what the proxy sent): ParseComplete, BindComplete,
    /// RowDescription (in the formats bound), DataRow, CommandComplete, ReadyForQuery.
    fn answer(&self, up: &[u8]) -> Vec<Frame> {
        let mut out = BytesMut::new();
        let mut formats = vec![0i16; self.fields.len()];
        for f in frames(up) {
            match f.tag() {
                b'P' => put_message(&mut out, b'1', |_| {}),
                b'B' => {
                    let bind = BindMsg::parse(f.body()).unwrap();
                    formats = match bind.result_formats.as_slice() {
                        [] => vec![0; self.fields.len()],
                        [one] => vec![*one; self.fields.len()],
                        many => many.to_vec(),
                    };
                    put_message(&mut out, b'2', |_| {});
                }
                b'D' => {
                    let fields: Vec<Field> = self
                        .fields
                        .iter()
                        .zip(&formats)
                        .map(|(f, fmt)| Field {
                            format: *fmt,
                            ..f.clone()
                        })
                        .collect();
                    wire::write_row_description(&mut out, &fields);
                }
                b'E' => {
                    put_message(&mut out, b'D', |b| {
                        b.put_i16(i16::try_from(self.fields.len()).unwrap());
                        wire::put_value(b, Some(&self.row.0));
                        for (cell, fmt) in self.row.1.iter().zip(&formats[1..]) {
                            if *fmt == 1 {
                                wire::put_value(b, Some(cell));
                            } else {
                                let mut hex = String::from("\\x");
                                cells::push_hex(cell, &mut hex);
                                wire::put_value(b, Some(hex.as_bytes()));
                            }
                        }
                    });
                    put_message(&mut out, b'C', |b| {
                        b.put_slice(b"SELECT 1\0");
                    });
                }
                b'S' => ready_for_query(&mut out, b'I'),
                _ => {}
            }
        }
        frames(&out)
    }
}

fn session_bench(c: &mut Criterion) {
    let (factory, keys, cols) = setup();
    let sql = "SELECT id, email, ssn, dob FROM patients WHERE email = $1";
    let email = "someone@example.com";
    let mut stored = Vec::new();
    for (col, v) in cols.iter().zip([email, "123456789", "1980-05-17"]) {
        let crypto = keys.column(&col.id).unwrap();
        let mut cell = Vec::new();
        cells::seal(&crypto, col, &col.ty.parse_text(v).unwrap(), &mut cell).unwrap();
        stored.push(cell);
    }
    let field = |name: &str, attnum: i16, type_oid: u32, typlen: i16| Field {
        name: name.into(),
        table_oid: 16400,
        attnum,
        type_oid,
        typlen,
        typmod: -1,
        format: 0,
    };
    let upstream = Upstream {
        fields: vec![
            field("id", 1, 23, 4),
            field("email", 2, 17, -1),
            field("ssn", 3, 17, -1),
            field("dob", 4, 17, -1),
        ],
        row: (b"42".to_vec(), stored),
    };
    // Bind of the lookup (text parameter) on `statement`, Describe, Execute, Sync.
    let bind_describe_execute_sync = |out: &mut BytesMut, statement: &str| {
        wire::write_bind(out, "", statement, &[(0, Some(email.as_bytes()))], &[]);
        wire::write_describe(out, b'P', "");
        put_message(out, b'E', |b| {
            b.put_slice(b"\0");
            b.put_i32(0);
        });
        put_message(out, b'S', |_| {});
    };

    // One transaction: the client's messages in, the proxy's upstream messages answered by the
    // scripted upstream, the answers out. `answers`: reuse these (the bench loop measures the
    // interceptor, not the script); the first runs compute and check them.
    let run = |s: &mut Session, client_msgs: &[Frame], answers: Option<&[Frame]>| -> usize {
        s.up.clear();
        s.client.clear();
        s.feed(true, client_msgs);
        match answers {
            Some(a) => s.feed(false, a),
            None => {
                let a = upstream.answer(&s.up);
                s.feed(false, &a);
            }
        }
        s.client.len()
    };
    // Runs a transaction twice with scripted answers and returns the answers of the second
    // (steady state), after checking that replaying them gives the same result.
    let steady = |s: &mut Session, msgs: &[Frame]| -> Vec<Frame> {
        run(s, msgs, None);
        run(s, msgs, None);
        let sent = s.up.clone();
        let answers = upstream.answer(&sent);
        let got = s.client.clone();
        run(s, msgs, Some(&answers));
        assert_eq!(
            s.up, sent,
            "the proxy sends the same upstream messages every time"
        );
        assert_eq!(s.client, got, "replayed answers give the same client bytes");
        answers
    };
    let plaintext_arrives = |s: &Session| {
        let c = &s.client[..];
        assert!(
            c.windows(email.len()).any(|w| w == email.as_bytes())
                && c.windows(10).any(|w| w == b"1980-05-17"),
            "the client did not get the decrypted row"
        );
        assert!(
            !s.up.windows(email.len()).any(|w| w == email.as_bytes()),
            "plaintext upstream"
        );
    };

    // -M extended: Parse of the unnamed statement on every transaction.
    let mut ext = BytesMut::new();
    ParseMsg {
        name: "",
        query: sql,
        param_oids: Vec::new(),
    }
    .write(&mut ext);
    bind_describe_execute_sync(&mut ext, "");
    let ext = frames(&ext);
    let mut s = Session::new(&factory);
    let answers = steady(&mut s, &ext);
    plaintext_arrives(&s);
    c.bench_function("encrypt/session_lookup_extended", |b| {
        b.iter(|| black_box(run(&mut s, black_box(&ext), Some(&answers))))
    });

    // -M prepared: Parse + Describe once, then Bind/Describe/Execute/Sync.
    let mut s = Session::new(&factory);
    let mut prep = BytesMut::new();
    ParseMsg {
        name: "P0_1",
        query: sql,
        param_oids: Vec::new(),
    }
    .write(&mut prep);
    wire::write_describe(&mut prep, b'S', "P0_1");
    put_message(&mut prep, b'S', |_| {});
    s.feed(true, &frames(&prep));
    let mut answers = BytesMut::new();
    put_message(&mut answers, b'1', |_| {});
    put_message(&mut answers, b't', |b| {
        b.put_i16(1);
        b.put_u32(17);
    });
    wire::write_row_description(&mut answers, &upstream.fields);
    ready_for_query(&mut answers, b'I');
    s.feed(false, &frames(&answers));
    let mut exec = BytesMut::new();
    bind_describe_execute_sync(&mut exec, "P0_1");
    let exec = frames(&exec);
    let answers = steady(&mut s, &exec);
    plaintext_arrives(&s);
    assert!(
        BindMsg::parse(frames(&s.up)[0].body())
            .unwrap()
            .result_formats
            == [0, 1, 1, 1],
        "protected columns are asked in binary"
    );
    c.bench_function("encrypt/session_lookup_prepared", |b| {
        b.iter(|| black_box(run(&mut s, black_box(&exec), Some(&answers))))
    });
}

criterion_group!(benches, bench, session_bench);
criterion_main!(benches);
