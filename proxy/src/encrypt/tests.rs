//! Tests of the encryption interceptor, driven with real protocol bytes: what the client sends,
//! what reaches the upstream, what the upstream answers and what reaches the client.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use pgseal_crypto::value::{LogicalType, Normalisation, Value};
use pgseal_crypto::{ColumnId, IndexGroup, SecretKey};

use super::cells;
use super::rows::RowPlan;
use super::session::{ABORT_SQL, RESYNC_SQL};
use super::wire::{self, BindMsg, Field, ParseMsg};
use super::EncryptionFactory;
use crate::catalog::{CatalogSnapshot, StaticCatalog};
use crate::keys::{KeySource, StaticKeys};
use crate::protocol::messages::{parse_error_fields, put_cstr, put_message};
use crate::rewrite::{IndexSpec, ProtectedColumn, ProtectedSchema};
use crate::session::{Frame, InterceptorFactory, MessageInterceptor, Outbox, SessionInfo};

const PATIENTS: u32 = 16400;
const TYPED: u32 = 16500;

fn col(table: &str, column: &str, ty: LogicalType, indexed: bool) -> ProtectedColumn {
    let id = ColumnId::new("public", table, column).unwrap();
    ProtectedColumn {
        index: indexed.then(|| IndexSpec {
            group: IndexGroup::of_column(&id),
            norm: Normalisation::default(),
            unique: true,
        }),
        id,
        ty,
        keyring: "patients".into(),
    }
}

fn typed_name(ty: LogicalType) -> String {
    format!("c_{}", ty.name())
}

fn schema() -> ProtectedSchema {
    let mut cols = vec![
        col("patients", "email", LogicalType::Text, true),
        col("patients", "ssn", LogicalType::Int8, true),
        col("patients", "notes", LogicalType::Text, false),
    ];
    for ty in LogicalType::ALL {
        cols.push(col("typed", &typed_name(ty), ty, false));
    }
    ProtectedSchema::from_columns(cols)
}

struct Harness {
    factory: EncryptionFactory,
    keys: Arc<StaticKeys>,
    schema: Arc<ProtectedSchema>,
    session: Box<dyn MessageInterceptor>,
}

/// Static keys of the `patients` keyring with the given versions (material `[version; 32]`,
/// except version 1: `[7; 32]`, the default harness's).
fn keys_with_versions(schema: &ProtectedSchema, versions: &[u32]) -> Arc<StaticKeys> {
    let mut keyrings = HashMap::new();
    let material = |v: u32| SecretKey::from_bytes([if v == 1 { 7 } else { v as u8 }; 32]);
    keyrings.insert(
        "patients".to_owned(),
        versions.iter().map(|v| (*v, material(*v))).collect(),
    );
    Arc::new(StaticKeys::new(schema, &keyrings).unwrap())
}

/// A key source whose keys the test replaces (a rotation as the keyserver source follows it).
struct SwapKeys(std::sync::Mutex<Arc<StaticKeys>>);

impl KeySource for SwapKeys {
    fn column(
        &self,
        column: &ColumnId,
    ) -> Result<Arc<crate::keys::ColumnCrypto>, crate::keys::KeyError> {
        self.0.lock().unwrap().column(column)
    }
}

fn harness() -> Harness {
    let schema = Arc::new(schema());
    let keys = keys_with_versions(&schema, &[1]);
    harness_with(schema, keys.clone(), keys)
}

fn harness_with(
    schema: Arc<ProtectedSchema>,
    keys: Arc<StaticKeys>,
    source: Arc<dyn KeySource>,
) -> Harness {
    let typed_cols: Vec<(i16, String)> = LogicalType::ALL
        .iter()
        .enumerate()
        .map(|(i, t)| (i as i16 + 1, typed_name(*t)))
        .collect();
    let snapshot = CatalogSnapshot::new(
        1,
        [
            ("public".to_owned(), "patients".to_owned()),
            ("public".to_owned(), "typed".to_owned()),
            ("public".to_owned(), "plain".to_owned()),
        ],
        [
            (
                PATIENTS,
                "public".to_owned(),
                "patients".to_owned(),
                vec![
                    (1, "id".to_owned()),
                    (2, "email".to_owned()),
                    (3, "ssn".to_owned()),
                    (4, "notes".to_owned()),
                ],
            ),
            (TYPED, "public".to_owned(), "typed".to_owned(), typed_cols),
        ],
        &schema,
    );
    let catalog = Arc::new(StaticCatalog(Arc::new(snapshot)));
    let factory = EncryptionFactory::new(schema.clone(), "app".into(), source, catalog);
    let session = factory.create(&info("app"));
    Harness {
        factory,
        keys,
        schema,
        session,
    }
}

fn info(db: &str) -> SessionInfo {
    SessionInfo {
        user: "app".into(),
        upstream_user: "app".into(),
        database: db.into(),
        params: Vec::new(),
        server_params: Vec::new(),
        probe: Vec::new(),
    }
}

/// Splits a byte stream into (tag, body) messages.
fn frames(b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let len = u32::from_be_bytes(b[at + 1..at + 5].try_into().unwrap()) as usize;
        out.push((b[at], b[at + 5..at + 1 + len].to_vec()));
        at += 1 + len;
    }
    out
}

fn tags(b: &[u8]) -> String {
    frames(b).iter().map(|(t, _)| char::from(*t)).collect()
}

impl Harness {
    fn drive(&mut self, input: &[u8], frontend: bool) -> (BytesMut, BytesMut) {
        let mut up = BytesMut::new();
        let mut cl = BytesMut::new();
        let mut at = 0;
        while at < input.len() {
            let len = u32::from_be_bytes(input[at + 1..at + 5].try_into().unwrap()) as usize;
            self.feed(&input[at..at + 1 + len], frontend, &mut up, &mut cl)
                .unwrap();
            at += 1 + len;
        }
        (up, cl)
    }

    /// One whole message from the client (`frontend`) or the server, as the relay hands it
    /// over: to the session when it asks for that type, else straight through.
    fn feed(
        &mut self,
        msg: &[u8],
        frontend: bool,
        up: &mut BytesMut,
        cl: &mut BytesMut,
    ) -> Result<(), crate::session::InterceptError> {
        let tag = msg[0];
        let mut out = Outbox {
            to_upstream: up,
            to_client: cl,
        };
        let wanted = if frontend {
            self.session.frontend_tags().contains(tag)
        } else {
            self.session.backend_tags().contains(tag) || tag == b'Z'
        };
        if !wanted {
            if frontend {
                out.to_upstream.extend_from_slice(msg);
            } else {
                out.to_client.extend_from_slice(msg);
            }
            return Ok(());
        }
        let frame = Frame::new(bytes::Bytes::copy_from_slice(msg));
        if frontend {
            self.session.on_frontend(frame, &mut out)
        } else {
            self.session.on_backend(frame, &mut out)
        }
    }

    /// Client → proxy: returns (to upstream, to client).
    /// Parse + Describe Statement + Sync of `sql` as `name`, answered by the server with
    /// ParseComplete, a ParameterDescription of `param_oids`, `result` (a RowDescription or
    /// NoData) and ReadyForQuery. Returns what went upstream and what the client got.
    fn prepare_described(
        &mut self,
        name: &str,
        sql: &str,
        param_oids: &[u32],
        result: &[u8],
    ) -> (BytesMut, BytesMut) {
        let (up, _) = self.client(&cat(&[
            &parse(name, sql, &[]),
            &describe(b'S', name),
            &simple(b'S'),
        ]));
        let pd = parameter_description(param_oids);
        let cl = self.server(&cat(&[&simple(b'1'), &pd, result, &ready(b'I')]));
        (up, cl)
    }

    fn client(&mut self, input: &[u8]) -> (BytesMut, BytesMut) {
        self.drive(input, true)
    }

    /// Upstream → proxy: returns what reaches the client.
    fn server(&mut self, input: &[u8]) -> BytesMut {
        let (up, cl) = self.drive(input, false);
        assert!(up.is_empty());
        cl
    }

    fn column(&self, table: &str, column: &str) -> ProtectedColumn {
        self.schema.column("public", table, column).unwrap().clone()
    }

    fn seal(&self, table: &str, column: &str, text: &str) -> Vec<u8> {
        let c = self.column(table, column);
        let crypto = self.keys.column(&c.id).unwrap();
        let mut out = Vec::new();
        cells::seal(&crypto, &c, &c.ty.parse_text(text).unwrap(), &mut out).unwrap();
        out
    }

    fn open(&self, table: &str, column: &str, stored: &[u8]) -> Value {
        let c = self.column(table, column);
        cells::open(&self.keys.column(&c.id).unwrap(), &c, stored).unwrap()
    }

    fn tag(&self, column: &str, text: &str) -> Vec<u8> {
        let c = self.column("patients", column);
        let mut tags = Vec::new();
        cells::lookup_tags(
            &self.keys.column(&c.id).unwrap(),
            &c,
            &c.ty.parse_text(text).unwrap(),
            &mut tags,
        )
        .unwrap();
        assert_eq!(tags.len(), 1);
        tags[0].to_vec()
    }
}

// ---- message builders ----

#[path = "tests_fuzz.rs"]
mod fuzz;

fn query(sql: &str) -> BytesMut {
    let mut b = BytesMut::new();
    wire::write_query(&mut b, sql);
    b
}

fn parse(name: &str, sql: &str, oids: &[u32]) -> BytesMut {
    let mut b = BytesMut::new();
    ParseMsg {
        name,
        query: sql,
        param_oids: oids.to_vec(),
    }
    .write(&mut b);
    b
}

fn bind(
    portal: &str,
    stmt: &str,
    formats: &[i16],
    params: &[Option<&[u8]>],
    results: &[i16],
) -> BytesMut {
    let mut b = BytesMut::new();
    put_message(&mut b, b'B', |b| {
        put_cstr(b, portal);
        put_cstr(b, stmt);
        b.put_i16(formats.len() as i16);
        for f in formats {
            b.put_i16(*f);
        }
        b.put_i16(params.len() as i16);
        for p in params {
            wire::put_value(b, *p);
        }
        b.put_i16(results.len() as i16);
        for f in results {
            b.put_i16(*f);
        }
    });
    b
}

fn describe(kind: u8, name: &str) -> BytesMut {
    let mut b = BytesMut::new();
    wire::write_describe(&mut b, kind, name);
    b
}

fn execute(portal: &str, max: i32) -> BytesMut {
    let mut b = BytesMut::new();
    put_message(&mut b, b'E', |b| {
        put_cstr(b, portal);
        b.put_i32(max);
    });
    b
}

fn simple(tag: u8) -> BytesMut {
    let mut b = BytesMut::new();
    put_message(&mut b, tag, |_| {});
    b
}

fn parameter_description(oids: &[u32]) -> BytesMut {
    let mut b = BytesMut::new();
    wire::write_parameter_description(&mut b, oids);
    b
}

fn ready(status: u8) -> BytesMut {
    let mut b = BytesMut::new();
    put_message(&mut b, b'Z', |b| b.put_u8(status));
    b
}

fn complete(tag: &str) -> BytesMut {
    let mut b = BytesMut::new();
    put_message(&mut b, b'C', |b| put_cstr(b, tag));
    b
}

fn error(code: &str) -> BytesMut {
    let mut b = BytesMut::new();
    crate::protocol::messages::error_response(
        &mut b,
        crate::protocol::messages::Severity::Error,
        code,
        "upstream error",
    );
    b
}

fn field(name: &str, table: u32, attnum: i16, ty: u32, format: i16) -> Field {
    Field {
        name: name.into(),
        table_oid: table,
        attnum,
        type_oid: ty,
        typlen: if ty == 23 { 4 } else { -1 },
        typmod: -1,
        format,
    }
}

fn row_description(fields: &[Field]) -> BytesMut {
    let mut b = BytesMut::new();
    wire::write_row_description(&mut b, fields);
    b
}

/// The upstream's RowDescription of `SELECT id, email FROM patients` (text formats).
fn patients_id_email() -> BytesMut {
    row_description(&[
        field("id", PATIENTS, 1, 23, 0),
        field("email", PATIENTS, 2, 17, 0),
    ])
}

fn data_row(values: &[Option<&[u8]>]) -> BytesMut {
    let mut b = BytesMut::new();
    put_message(&mut b, b'D', |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            wire::put_value(b, *v);
        }
    });
    b
}

fn hex_text(stored: &[u8]) -> Vec<u8> {
    let mut s = String::from("\\x");
    cells::push_hex(stored, &mut s);
    s.into_bytes()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The bytes of every `E'\\x…'` literal in `sql`, in order.
fn literals(sql: &str) -> Vec<Vec<u8>> {
    sql.split("E'\\\\x")
        .skip(1)
        .map(|s| {
            let hex = &s[..s.find('\'').unwrap()];
            let mut out = Vec::new();
            cells::decode_bytea_text(format!("\\x{hex}").as_bytes(), &mut out).unwrap();
            out
        })
        .collect()
}

fn error_of(body: &[u8]) -> (String, String) {
    let f = parse_error_fields(body).unwrap();
    assert_eq!(f.severity, "ERROR");
    (f.code, f.message)
}

// ---- tests ----

#[test]
fn other_databases_pass_through() {
    let h = harness();
    let s = h.factory.create(&info("postgres"));
    assert!(s.frontend_tags().is_empty() && s.backend_tags().is_empty());
    assert!(!h.session.frontend_tags().is_empty());
}

#[test]
fn simple_insert_then_select_round_trip() {
    let mut h = harness();
    let (up, cl) = h.client(&query(
        "INSERT INTO patients (id, email, ssn, notes) VALUES (1, 'alice@example.com', 123456789, NULL) RETURNING id",
    ));
    assert!(cl.is_empty());
    let f = frames(&up);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].0, b'Q');
    let sql = wire::parse_query(&f[0].1).unwrap().to_owned();
    assert!(!sql.contains("alice"), "{sql}");
    assert!(!sql.contains("123456789"), "{sql}");
    let lits = literals(&sql);
    assert_eq!(lits.len(), 2, "{sql}");
    assert_eq!(lits[0][..16], h.tag("email", "alice@example.com")[..]);
    assert_eq!(
        h.open("patients", "email", &lits[0]),
        Value::Text("alice@example.com".into())
    );
    assert_eq!(h.open("patients", "ssn", &lits[1]), Value::Int8(123456789));
    let cl = h.server(&cat(&[
        &row_description(&[field("id", PATIENTS, 1, 23, 0)]),
        &data_row(&[Some(b"1")]),
        &complete("INSERT 0 1"),
        &ready(b'I'),
    ]));
    assert_eq!(tags(&cl), "TDCZ");

    // SELECT passes through unchanged; the result is decrypted.
    let q = query("SELECT id, email, ssn, notes FROM patients");
    let (up, _) = h.client(&q);
    assert_eq!(&up[..], &q[..]);
    let email = h.seal("patients", "email", "alice@example.com");
    let ssn = h.seal("patients", "ssn", "123456789");
    let cl = h.server(&cat(&[
        &row_description(&[
            field("id", PATIENTS, 1, 23, 0),
            field("email", PATIENTS, 2, 17, 0),
            field("ssn", PATIENTS, 3, 17, 0),
            field("notes", PATIENTS, 4, 17, 0),
        ]),
        &data_row(&[
            Some(b"1"),
            Some(&hex_text(&email)),
            Some(&hex_text(&ssn)),
            None,
        ]),
        &complete("SELECT 1"),
        &ready(b'I'),
    ]));
    let f = frames(&cl);
    assert_eq!(tags(&cl), "TDCZ");
    let fields = wire::parse_row_description(&f[0].1).unwrap();
    assert_eq!(fields[0].type_oid, 23);
    assert_eq!(
        (fields[1].type_oid, fields[1].typlen, fields[1].typmod),
        (25, -1, -1)
    );
    assert_eq!((fields[2].type_oid, fields[2].typlen), (20, 8));
    assert_eq!(fields[3].type_oid, 25);
    let row = wire::parse_data_row(&f[1].1).unwrap();
    assert_eq!(
        row,
        vec![
            Some(&b"1"[..]),
            Some(&b"alice@example.com"[..]),
            Some(&b"123456789"[..]),
            None
        ]
    );
}

#[test]
fn simple_select_with_literal_lookup() {
    let mut h = harness();
    let (up, _) = h.client(&query("SELECT id FROM patients WHERE email = 'bob@x.org'"));
    let sql = wire::parse_query(&frames(&up)[0].1).unwrap().to_owned();
    assert!(!sql.contains("bob"), "{sql}");
    assert!(sql.contains("::bytea[]"), "{sql}");
    assert_eq!(literals(&sql), vec![h.tag("email", "bob@x.org")]);
}

#[test]
fn extended_insert_text_and_binary_params() {
    let mut h = harness();
    let sql = "INSERT INTO patients (id, email, ssn) VALUES ($1, $2, $3)";
    let input = cat(&[
        &parse("", sql, &[23]),
        &bind(
            "",
            "",
            &[0, 0, 1],
            &[Some(b"7"), Some(b"bob@x.org"), Some(&42i64.to_be_bytes())],
            &[],
        ),
        &execute("", 0),
        &simple(b'S'),
    ]);
    let (up, cl) = h.client(&input);
    assert!(cl.is_empty());
    assert!(!contains(&up, b"bob@x.org"));
    let f = frames(&up);
    assert_eq!(
        tags(&up),
        "PBDES",
        "the proxy describes an undescribed portal"
    );
    let p = ParseMsg::parse(&f[0].1).unwrap();
    assert_eq!(p.param_oids, vec![23, 17, 17]);
    assert!(p.query.contains("$2::bytea"), "{}", p.query);
    let b = BindMsg::parse(&f[1].1).unwrap();
    assert_eq!(b.param_formats, vec![0, 1, 1]);
    assert_eq!(b.params[0], Some(&b"7"[..]));
    let email = b.params[1].unwrap();
    assert_eq!(email[..16], h.tag("email", "bob@x.org")[..]);
    assert_eq!(
        h.open("patients", "email", email),
        Value::Text("bob@x.org".into())
    );
    assert_eq!(
        h.open("patients", "ssn", b.params[2].unwrap()),
        Value::Int8(42)
    );

    let cl = h.server(&cat(&[
        &simple(b'1'),
        &simple(b'2'),
        &simple(b'n'),
        &complete("INSERT 0 1"),
        &ready(b'I'),
    ]));
    assert_eq!(
        tags(&cl),
        "12CZ",
        "the internal Describe's answer is swallowed"
    );
}

#[test]
fn extended_single_format_code_and_null() {
    let mut h = harness();
    let sql = "INSERT INTO patients (id, email, ssn) VALUES ($1, $2, $3)";
    let (up, _) = h.client(&cat(&[
        &parse("s", sql, &[]),
        &bind(
            "",
            "s",
            &[1],
            &[Some(&7i32.to_be_bytes()), Some(b"carol"), None],
            &[],
        ),
    ]));
    let f = frames(&up);
    let b = BindMsg::parse(&f[1].1).unwrap();
    assert_eq!(b.param_formats, vec![1, 1, 1]);
    assert_eq!(b.params[0], Some(&7i32.to_be_bytes()[..]));
    assert_eq!(
        h.open("patients", "email", b.params[1].unwrap()),
        Value::Text("carol".into())
    );
    assert_eq!(b.params[2], None);
    assert!(!contains(&up, b"carol"));
}

#[test]
fn describe_statement_and_binary_results() {
    let mut h = harness();
    let (up, cl) = h.prepare_described(
        "s1",
        "SELECT id, email FROM patients WHERE email = $1",
        &[17],
        &patients_id_email(),
    );
    assert_eq!(
        ParseMsg::parse(&frames(&up)[0].1).unwrap().param_oids,
        vec![17]
    );
    let f = frames(&cl);
    assert_eq!(tags(&cl), "1tTZ");
    assert_eq!(
        wire::parse_parameter_description(&f[1].1).unwrap(),
        vec![25]
    );
    assert_eq!(
        wire::parse_row_description(&f[2].1).unwrap()[1].type_oid,
        25
    );

    // Bind with binary results: no extra Describe, the tag is a binary bytea (one key version).
    let (up, _) = h.client(&cat(&[
        &bind("", "s1", &[], &[Some(b"alice")], &[1]),
        &execute("", 0),
        &simple(b'S'),
    ]));
    assert_eq!(tags(&up), "BES");
    let f = frames(&up);
    let b = BindMsg::parse(&f[0].1).unwrap();
    assert_eq!(b.param_formats, vec![1]);
    assert_eq!(b.params, vec![Some(&h.tag("email", "alice")[..])]);
    assert!(!contains(&up, b"alice"));
    let stored = h.seal("patients", "email", "alice");
    let cl = h.server(&cat(&[
        &simple(b'2'),
        &data_row(&[Some(&1i32.to_be_bytes()), Some(&stored)]),
        &complete("SELECT 1"),
        &ready(b'I'),
    ]));
    let f = frames(&cl);
    assert_eq!(tags(&cl), "2DCZ");
    assert_eq!(
        wire::parse_data_row(&f[1].1).unwrap(),
        vec![Some(&1i32.to_be_bytes()[..]), Some(&b"alice"[..])]
    );
}

/// The unnamed statement of `-M extended` / `PQexecParams` is parsed again for every execution:
/// the columns the same plan was last described with are used as a hint to ask for protected
/// columns in binary, and the RowDescription (which always comes before rows) must confirm it.
#[test]
fn unnamed_statements_ask_binary_results_from_a_confirmed_hint() {
    let mut h = harness();
    let stored = h.seal("patients", "email", "alice");
    let sql = "SELECT id, email FROM patients WHERE email = $1";
    let lookup = |h: &mut Harness| {
        let (up, _) = h.client(&cat(&[
            &parse("", sql, &[]),
            &bind("", "", &[], &[Some(b"alice")], &[]),
            &describe(b'P', ""),
            &execute("", 0),
            &simple(b'S'),
        ]));
        let f = frames(&up);
        let result_formats = BindMsg::parse(&f[1].1).unwrap().result_formats;
        (up, result_formats)
    };
    let answer = |formats: [i16; 2], email: &[u8]| {
        cat(&[
            &simple(b'1'),
            &simple(b'2'),
            &row_description(&[
                field("id", PATIENTS, 1, 23, formats[0]),
                field("email", PATIENTS, 2, 17, formats[1]),
            ]),
            &data_row(&[Some(b"1"), Some(email)]),
            &complete("SELECT 1"),
            &ready(b'I'),
        ])
    };
    let text_row = |cl: &[u8]| {
        let f = frames(cl);
        let d = f.iter().find(|(t, _)| *t == b'D').unwrap();
        let r =
            wire::parse_row_description(&f.iter().find(|(t, _)| *t == b'T').unwrap().1).unwrap();
        let formats: Vec<i16> = r.iter().map(|f| f.format).collect();
        let values: Vec<Vec<u8>> = wire::parse_data_row(&d.1)
            .unwrap()
            .iter()
            .map(|v| v.unwrap().to_vec())
            .collect();
        (formats, values)
    };
    let expected = (vec![0, 0], vec![b"1".to_vec(), b"alice".to_vec()]);
    // First execution: nothing known, text as the client asked.
    let (_, formats) = lookup(&mut h);
    assert_eq!(formats, Vec::<i16>::new());
    let cl = h.server(&answer([0, 0], &hex_text(&stored)));
    assert_eq!(text_row(&cl), expected);
    // Next executions: the protected column is asked in binary; the client still gets text.
    for _ in 0..2 {
        let (up, formats) = lookup(&mut h);
        assert_eq!(formats, vec![0, 1]);
        assert!(!contains(&up, b"alice"));
        let cl = h.server(&answer([0, 1], &stored));
        assert_eq!(text_row(&cl), expected);
    }
    // The hint turns out wrong (the column is plain now, the catalog not reloaded yet): the
    // result fails, the plain column's binary bytes never reach the client.
    lookup(&mut h);
    let cl = h.server(&cat(&[
        &simple(b'1'),
        &simple(b'2'),
        &row_description(&[field("id", PATIENTS, 1, 23, 0), field("email", 0, 0, 17, 1)]),
        &data_row(&[Some(b"1"), Some(b"\x00raw")]),
        &complete("SELECT 1"),
        &ready(b'I'),
    ]));
    assert_eq!(tags(&cl), "12EZ");
    assert_eq!(error_of(&frames(&cl)[2].1).0, "XX000");
    assert!(!contains(&cl, b"\x00raw"));
    // … and is dropped: the next execution asks as the client did, and succeeds.
    let (_, formats) = lookup(&mut h);
    assert_eq!(formats, Vec::<i16>::new());
    let cl = h.server(&answer([0, 0], &hex_text(&stored)));
    assert_eq!(text_row(&cl), expected);
    // A statement that writes is never hinted.
    let insert = "INSERT INTO patients (id, email) VALUES (2, $1) RETURNING email";
    for round in 0..2 {
        let (up, _) = h.client(&cat(&[
            &parse("", insert, &[]),
            &bind("", "", &[], &[Some(b"bob")], &[]),
            &describe(b'P', ""),
            &execute("", 0),
            &simple(b'S'),
        ]));
        let f = frames(&up);
        let b = BindMsg::parse(&f[1].1).unwrap();
        assert_eq!(b.result_formats, Vec::<i16>::new(), "round {round}");
        let bob = h.seal("patients", "email", "bob");
        h.server(&cat(&[
            &simple(b'1'),
            &simple(b'2'),
            &row_description(&[field("email", PATIENTS, 2, 17, 0)]),
            &data_row(&[Some(&hex_text(&bob))]),
            &complete("INSERT 0 1"),
            &ready(b'I'),
        ]));
    }
}

#[test]
fn protected_results_are_asked_in_binary_once_the_statement_is_described() {
    let mut h = harness();
    let (up, _) = h.client(&cat(&[
        &parse("s2", "SELECT id, email FROM patients WHERE email = $1", &[]),
        &simple(b'S'),
    ]));
    assert_eq!(tags(&up), "PS");
    h.server(&cat(&[&simple(b'1'), &ready(b'I')]));
    let stored = h.seal("patients", "email", "alice");
    // libpq's PQexecPrepared: Bind (text results), Describe portal, Execute, Sync.
    let run = |h: &mut Harness| {
        h.client(&cat(&[
            &bind("", "s2", &[], &[Some(b"alice")], &[]),
            &describe(b'P', ""),
            &execute("", 0),
            &simple(b'S'),
        ]))
        .0
    };
    // First execution: the columns are not known at Bind, the result formats go as sent.
    let up = run(&mut h);
    assert_eq!(tags(&up), "BDES");
    assert!(BindMsg::parse(&frames(&up)[0].1)
        .unwrap()
        .result_formats
        .is_empty());
    let cl = h.server(&cat(&[
        &simple(b'2'),
        &row_description(&[
            field("id", PATIENTS, 1, 23, 0),
            field("email", PATIENTS, 2, 17, 0),
        ]),
        &data_row(&[Some(b"1"), Some(&hex_text(&stored))]),
        &complete("SELECT 1"),
        &ready(b'I'),
    ]));
    assert_eq!(tags(&cl), "2TDCZ");
    assert_eq!(
        wire::parse_data_row(&frames(&cl)[2].1).unwrap(),
        vec![Some(&b"1"[..]), Some(&b"alice"[..])]
    );
    // Second execution: the Describe taught the proxy the columns; the protected one is asked
    // for in binary, the client still sees text.
    let up = run(&mut h);
    assert_eq!(
        BindMsg::parse(&frames(&up)[0].1).unwrap().result_formats,
        vec![0, 1]
    );
    let cl = h.server(&cat(&[
        &simple(b'2'),
        &row_description(&[
            field("id", PATIENTS, 1, 23, 0),
            field("email", PATIENTS, 2, 17, 1),
        ]),
        &data_row(&[Some(b"1"), Some(&stored)]),
        &complete("SELECT 1"),
        &ready(b'I'),
    ]));
    assert_eq!(tags(&cl), "2TDCZ");
    let f = frames(&cl);
    let rd = wire::parse_row_description(&f[1].1).unwrap();
    assert_eq!(
        (rd[1].type_oid, rd[1].format),
        (25, 0),
        "the client's format"
    );
    assert_eq!(rd[0].format, 0);
    assert_eq!(
        wire::parse_data_row(&f[2].1).unwrap(),
        vec![Some(&b"1"[..]), Some(&b"alice"[..])]
    );
    // A plain column arriving in binary where the client asked for text (the columns changed
    // under the statement): the result is refused, not handed over.
    run(&mut h);
    let cl = h.server(&cat(&[
        &simple(b'2'),
        &row_description(&[
            field("id", PATIENTS, 1, 23, 1),
            field("email", PATIENTS, 2, 17, 1),
        ]),
        &data_row(&[Some(&1i32.to_be_bytes()), Some(&stored)]),
        &complete("SELECT 1"),
        &ready(b'I'),
    ]));
    assert_eq!(tags(&cl), "2EZ");
    assert!(!contains(&cl, b"alice"));
}

#[test]
fn binary_upstream_rebinds_well_formed_binds_only() {
    let mut h = harness();
    // Nothing to rewrite in the statement itself; its results are decrypted.
    h.prepare_described(
        "s3",
        "SELECT id, email FROM patients WHERE id = $1",
        &[23],
        &patients_id_email(),
    );
    // Well formed: re-encoded with the same parameters, the protected column asked in binary.
    let b = bind("", "s3", &[0], &[Some(b"7")], &[]);
    let (up, _) = h.client(&cat(&[&b, &execute("", 0), &simple(b'S')]));
    let f = frames(&up);
    let sent = BindMsg::parse(&f[0].1).unwrap();
    assert_eq!(sent.result_formats, vec![0, 1]);
    assert_eq!(sent.params, vec![Some(&b"7"[..])]);
    assert_eq!(sent.param_format(0), 0);
    h.server(&cat(&[&simple(b'2'), &complete("SELECT 0"), &ready(b'I')]));
    // Two parameter format codes for one parameter: PostgreSQL must see it as sent and reject
    // it, not a corrected copy.
    let b = bind("", "s3", &[0, 0], &[Some(b"7")], &[]);
    let (up, _) = h.client(&cat(&[&b, &execute("", 0), &simple(b'S')]));
    assert_eq!(&up[..b.len()], &b[..]);
}

#[test]
fn declared_parameter_type_is_honoured() {
    let mut h = harness();
    // ssn is int8; the client declares int4 and sends 4 binary bytes.
    let (up, _) = h.client(&cat(&[
        &parse(
            "",
            "INSERT INTO patients (id, ssn) VALUES ($1, $2)",
            &[23, 23],
        ),
        &describe(b'S', ""),
        &bind(
            "",
            "",
            &[1],
            &[Some(&1i32.to_be_bytes()), Some(&77i32.to_be_bytes())],
            &[],
        ),
        &simple(b'S'),
    ]));
    let f = frames(&up);
    assert_eq!(ParseMsg::parse(&f[0].1).unwrap().param_oids, vec![23, 17]);
    let b = BindMsg::parse(&f[2].1).unwrap();
    assert_eq!(
        h.open("patients", "ssn", b.params[1].unwrap()),
        Value::Int8(77)
    );
    let pd = parameter_description(&[23, 17]);
    let cl = h.server(&cat(&[
        &simple(b'1'),
        &pd,
        &simple(b'n'),
        &simple(b'2'),
        &ready(b'I'),
    ]));
    assert_eq!(
        wire::parse_parameter_description(&frames(&cl)[1].1).unwrap(),
        vec![23, 23]
    );
}

#[test]
fn any_array_parameter() {
    let mut h = harness();
    let (up, _) = h.client(&cat(&[
        &parse("", "SELECT id FROM patients WHERE email = ANY($1)", &[]),
        &describe(b'S', ""),
        &bind("", "", &[], &[Some(br#"{a@x,"b@y",NULL}"#)], &[]),
        &simple(b'S'),
    ]));
    let f = frames(&up);
    let b = BindMsg::parse(&f[2].1).unwrap();
    let els = cells::array_elements(1, b.params[0].unwrap()).unwrap();
    assert_eq!(els, vec![h.tag("email", "a@x"), h.tag("email", "b@y")]);
    let pd = parameter_description(&[1001]);
    let cl = h.server(&cat(&[
        &simple(b'1'),
        &pd,
        &simple(b'n'),
        &simple(b'2'),
        &ready(b'I'),
    ]));
    let f = frames(&cl);
    assert_eq!(
        wire::parse_parameter_description(&f[1].1).unwrap(),
        vec![1009]
    );
}

#[test]
fn refusal_in_a_pipeline_keeps_protocol_order() {
    let mut h = harness();
    let (up, cl) = h.client(&cat(&[
        &parse("a", "SELECT 1", &[]),
        &bind("", "a", &[], &[], &[]),
        &execute("", 0),
        &parse("b", "SELECT email FROM patients ORDER BY email", &[]),
        &bind("", "b", &[], &[], &[]),
        &execute("", 0),
        &simple(b'S'),
        &query("SELECT 2"),
    ]));
    assert!(cl.is_empty());
    // First statement as sent (plus the proxy's Describe), then a decoy Parse, nothing until Sync.
    assert_eq!(tags(&up), "PBDEPSQ");
    let f = frames(&up);
    let decoy = ParseMsg::parse(&f[4].1).unwrap();
    assert_eq!(decoy.name, "b");
    assert!(!decoy.query.contains("patients"));
    let cl = h.server(&cat(&[
        &simple(b'1'),
        &simple(b'2'),
        &row_description(&[field("?column?", 0, 0, 23, 0)]),
        &data_row(&[Some(b"1")]),
        &complete("SELECT 1"),
        &error("42601"),
        &ready(b'I'),
        &row_description(&[field("?column?", 0, 0, 23, 0)]),
        &data_row(&[Some(b"2")]),
        &complete("SELECT 1"),
        &ready(b'I'),
    ]));
    assert_eq!(tags(&cl), "12DCEZTDCZ");
    let f = frames(&cl);
    let (code, msg) = error_of(&f[4].1);
    assert_eq!(code, "0A000");
    assert!(msg.contains("email"), "{msg}");
}

#[test]
fn upstream_error_earlier_in_the_batch_suppresses_the_refusal() {
    let mut h = harness();
    let (up, _) = h.client(&cat(&[
        &parse("a", "SELECT nope", &[]),
        &parse("b", "SELECT email FROM patients ORDER BY email", &[]),
        &simple(b'S'),
    ]));
    assert_eq!(tags(&up), "PPS");
    let cl = h.server(&cat(&[&error("42703"), &ready(b'I')]));
    assert_eq!(tags(&cl), "EZ");
    assert_eq!(error_of(&frames(&cl)[0].1).0, "42703");
}

#[test]
fn simple_refusal_answers_in_order_with_upstream_status() {
    let mut h = harness();
    let (up, cl) = h.client(&query("SELECT email FROM patients ORDER BY email"));
    assert!(cl.is_empty());
    let sql = wire::parse_query(&frames(&up)[0].1).unwrap().to_owned();
    assert!(!sql.contains("patients"));
    let cl = h.server(&cat(&[&error("42601"), &ready(b'E')]));
    assert_eq!(tags(&cl), "EZ");
    let f = frames(&cl);
    assert_eq!(error_of(&f[0].1).0, "0A000");
    assert_eq!(f[1].1, vec![b'E']);
}

#[test]
fn bad_parameter_value_is_refused_without_forwarding_it() {
    let mut h = harness();
    let (up, _) = h.client(&cat(&[
        &parse("", "INSERT INTO patients (id, ssn) VALUES ($1, $2)", &[]),
        &bind(
            "",
            "",
            &[],
            &[Some(b"1"), Some(b"secret-not-a-number")],
            &[],
        ),
        &execute("", 0),
        &simple(b'S'),
    ]));
    assert_eq!(tags(&up), "PBS");
    assert!(!contains(&up, b"secret-not-a-number"));
    let f = frames(&up);
    let b = BindMsg::parse(&f[1].1).unwrap();
    assert!(b.params.is_empty());
    let cl = h.server(&cat(&[&simple(b'1'), &error("26000"), &ready(b'I')]));
    assert_eq!(tags(&cl), "1EZ");
    let (code, msg) = error_of(&frames(&cl)[1].1);
    assert_eq!(code, "22P02");
    assert!(msg.contains("public.patients.ssn"), "{msg}");
    assert!(!msg.contains("secret"), "{msg}");
}

#[test]
fn bad_literal_is_refused() {
    let mut h = harness();
    let (up, _) = h.client(&query(
        "INSERT INTO patients (id, ssn) VALUES (1, 'zzz-secret')",
    ));
    assert!(!contains(&up, b"zzz-secret"));
    let cl = h.server(&cat(&[&error("42601"), &ready(b'I')]));
    assert_eq!(error_of(&frames(&cl)[0].1).0, "22P02");
}

/// A result the proxy fails inside a transaction block: the server, which saw no error, is
/// made to fail the transaction too (a statement it rejects, answers swallowed), so the client's
/// ReadyForQuery says E and a COMMIT cannot commit what came before. Outside a block, or with
/// more of the client's messages already in flight, the server's ReadyForQuery is forwarded.
#[test]
fn failed_result_in_a_transaction_block_aborts_it_upstream() {
    let mut h = harness();
    let mut bad = h.seal("patients", "email", "dave@example.com");
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let desc = row_description(&[field("email", PATIENTS, 2, 17, 0)]);
    let broken = |status: u8| {
        cat(&[
            &desc,
            &data_row(&[Some(&hex_text(&bad))]),
            &complete("SELECT 1"),
            &ready(status),
        ])
    };
    // Simple protocol, in a transaction block.
    h.client(&query("SELECT email FROM patients"));
    let (up, cl) = h.drive(&broken(b'T'), false);
    assert_eq!(tags(&cl), "TE", "the server's ReadyForQuery T is held back");
    assert_eq!(error_of(&frames(&cl)[1].1).0, "XX001");
    assert_eq!(tags(&up), "Q");
    assert!(contains(&up, ABORT_SQL.as_bytes()));
    let cl = h.server(&cat(&[&error("42601"), &ready(b'E')]));
    assert_eq!(tags(&cl), "Z", "the abort's error is not forwarded");
    assert_eq!(frames(&cl)[0].1, b"E");
    // The session goes on: the next statement's answers pass.
    h.client(&query("ROLLBACK"));
    let cl = h.server(&cat(&[&complete("ROLLBACK"), &ready(b'I')]));
    assert_eq!(tags(&cl), "CZ");

    // Extended protocol, in a transaction block.
    h.client(&cat(&[
        &parse("", "SELECT email FROM patients", &[]),
        &bind("", "", &[], &[], &[]),
        &describe(b'P', ""),
        &execute("", 0),
        &simple(b'S'),
    ]));
    let (up, cl) = h.drive(&cat(&[&simple(b'1'), &simple(b'2'), &broken(b'T')]), false);
    assert_eq!(tags(&cl), "12TE");
    assert!(contains(&up, ABORT_SQL.as_bytes()));
    let cl = h.server(&cat(&[&error("42601"), &ready(b'E')]));
    assert_eq!(
        (tags(&cl), frames(&cl)[0].1.clone()),
        ("Z".into(), b"E".to_vec())
    );

    // Not in a block: nothing to abort.
    h.client(&query("SELECT email FROM patients"));
    let (up, cl) = h.drive(&broken(b'I'), false);
    assert_eq!(tags(&cl), "TEZ");
    assert!(up.is_empty());

    // In a block, but the client already sent its next statement: it would run before the
    // abort, so the proxy does not reorder; the server's status is forwarded.
    h.client(&cat(&[
        &query("SELECT email FROM patients"),
        &query("SELECT 1"),
    ]));
    let (up, cl) = h.drive(&broken(b'T'), false);
    assert_eq!(tags(&cl), "TEZ");
    assert!(up.is_empty());
    let cl = h.server(&cat(&[&complete("SELECT 1"), &ready(b'T')]));
    assert_eq!(tags(&cl), "CZ", "a later clean result does not abort");
}

#[test]
fn tampered_value_is_xx001_and_the_session_continues() {
    let mut h = harness();
    let mut email = h.seal("patients", "email", "dave@example.com");
    let last = email.len() - 1;
    email[last] ^= 1;
    let good = h.seal("patients", "email", "eve@example.com");
    h.client(&query("SELECT email FROM patients"));
    let desc = row_description(&[field("email", PATIENTS, 2, 17, 0)]);
    let cl = h.server(&cat(&[
        &desc,
        &data_row(&[Some(&hex_text(&good))]),
        &data_row(&[Some(&hex_text(&email))]),
        &data_row(&[Some(&hex_text(&good))]),
        &complete("SELECT 3"),
        &ready(b'I'),
    ]));
    assert_eq!(tags(&cl), "TDEZ");
    let f = frames(&cl);
    let (code, msg) = error_of(&f[2].1);
    assert_eq!(code, "XX001");
    assert!(msg.contains("public.patients.email"), "{msg}");
    assert!(!contains(&cl, &hex_text(&email)));
    // Garbage that is not even hex, then the session goes on.
    h.client(&query("SELECT email FROM patients"));
    let cl = h.server(&cat(&[
        &desc,
        &data_row(&[Some(b"garbage")]),
        &complete("SELECT 1"),
        &ready(b'I'),
    ]));
    assert_eq!(tags(&cl), "TEZ");
    h.client(&query("SELECT email FROM patients"));
    let cl = h.server(&cat(&[
        &desc,
        &data_row(&[Some(&hex_text(&good))]),
        &complete("SELECT 1"),
        &ready(b'I'),
    ]));
    assert_eq!(tags(&cl), "TDCZ");
    assert!(contains(&cl, b"eve@example.com"));
}

#[test]
fn value_moved_between_columns_is_refused() {
    let mut h = harness();
    let notes = h.seal("patients", "notes", "secret note");
    h.client(&query("SELECT email FROM patients"));
    let mut moved = h.tag("email", "x");
    moved.extend_from_slice(&notes);
    let cl = h.server(&cat(&[
        &row_description(&[field("email", PATIENTS, 2, 17, 1)]),
        &data_row(&[Some(&moved)]),
        &ready(b'I'),
    ]));
    assert_eq!(tags(&cl), "TEZ");
    assert!(!contains(&cl, b"secret note"));
}

#[test]
fn portal_with_row_limit_and_suspension() {
    let mut h = harness();
    let a = h.seal("patients", "email", "a@x");
    let b = h.seal("patients", "email", "b@x");
    let (up, _) = h.client(&cat(&[
        &parse("", "SELECT email FROM patients", &[]),
        &bind("c", "", &[], &[], &[0]),
        &describe(b'P', "c"),
        &execute("c", 1),
        &simple(b'H'),
    ]));
    assert_eq!(tags(&up), "PBDEH");
    let cl = h.server(&cat(&[
        &simple(b'1'),
        &simple(b'2'),
        &row_description(&[field("email", PATIENTS, 2, 17, 0)]),
        &data_row(&[Some(&hex_text(&a))]),
        &simple(b's'),
    ]));
    assert_eq!(tags(&cl), "12TDs");
    assert!(contains(&cl, b"a@x"));
    let (up, _) = h.client(&cat(&[&execute("c", 1), &simple(b'S')]));
    assert_eq!(tags(&up), "ES");
    let cl = h.server(&cat(&[
        &data_row(&[Some(&hex_text(&b))]),
        &complete("SELECT 1"),
        &ready(b'T'),
    ]));
    assert_eq!(tags(&cl), "DCZ");
    assert!(contains(&cl, b"b@x"));
}

#[test]
fn cursor_fetch_in_simple_protocol_is_decrypted() {
    let mut h = harness();
    let a = h.seal("patients", "ssn", "99");
    h.client(&query("DECLARE c CURSOR FOR SELECT ssn FROM patients"));
    h.server(&cat(&[&complete("DECLARE CURSOR"), &ready(b'T')]));
    let (up, _) = h.client(&query("FETCH 1 FROM c"));
    assert_eq!(tags(&up), "Q");
    let cl = h.server(&cat(&[
        &row_description(&[field("ssn", PATIENTS, 3, 17, 0)]),
        &data_row(&[Some(&hex_text(&a))]),
        &complete("FETCH 1"),
        &ready(b'T'),
    ]));
    let f = frames(&cl);
    assert_eq!(
        wire::parse_data_row(&f[1].1).unwrap(),
        vec![Some(&b"99"[..])]
    );
}

#[test]
fn unprotected_results_are_forwarded_byte_for_byte() {
    let mut h = harness();
    h.client(&query("SELECT data FROM plain"));
    let input = cat(&[
        &row_description(&[field("data", 99999, 1, 17, 0)]),
        &data_row(&[Some(b"\\x00")]),
        &complete("SELECT 1"),
        &ready(b'I'),
    ]);
    let cl = h.server(&input);
    assert_eq!(&cl[..], &input[..]);
}

#[test]
fn protected_values_in_columns_the_proxy_does_not_decrypt_are_refused() {
    let mut h = harness();
    let email = h.seal("patients", "email", "guarded@example.com");
    let notes = h.seal("patients", "notes", "guarded note");
    // Looks like an envelope (format 1, key version 1) but no key opens it.
    let mut lookalike = vec![1u8, 0, 0, 0, 1];
    lookalike.extend_from_slice(&[0x5a; 60]);
    // `SELECT * FROM f()` where f returns patients rows: table OID 0, bytea columns.
    let desc = row_description(&[
        field("id", 0, 0, 23, 0),
        field("email", 0, 0, 17, 0),
        field("notes", 0, 0, 17, 0),
    ]);
    h.client(&query("SELECT * FROM f()"));
    let cl = h.server(&cat(&[
        &desc,
        &data_row(&[Some(b"1"), Some(b"\\x00"), Some(&hex_text(&lookalike))]),
        &data_row(&[Some(b"2"), Some(&hex_text(&email)), None]),
        &complete("SELECT 2"),
        &ready(b'I'),
    ]));
    assert_eq!(tags(&cl), "TDEZ");
    let f = frames(&cl);
    let (code, msg) = error_of(&f[2].1);
    assert_eq!(code, "0A000");
    assert!(
        msg.contains("column 2") && msg.contains("public.patients.email"),
        "{msg}"
    );
    assert!(!contains(&cl, &hex_text(&email)));
    // Binary cells (a binary cursor), an unindexed column's envelope at offset 0.
    let bin = row_description(&[field("id", 0, 0, 23, 1), field("notes", 0, 0, 17, 1)]);
    h.client(&query("FETCH 1 FROM c"));
    let cl = h.server(&cat(&[
        &bin,
        &data_row(&[Some(&[0, 0, 0, 7]), Some(&notes)]),
        &complete("FETCH 1"),
        &ready(b'I'),
    ]));
    let f = frames(&cl);
    assert_eq!(tags(&cl), "TEZ");
    let (code, msg) = error_of(&f[1].1);
    assert_eq!(code, "0A000");
    assert!(msg.contains("public.patients.notes"), "{msg}");
    assert!(!contains(&cl, &notes));
    // A plain table's bytea column that ciphertext was copied into directly upstream.
    h.client(&query("SELECT data FROM plain"));
    let cl = h.server(&cat(&[
        &row_description(&[field("data", 99999, 1, 17, 0)]),
        &data_row(&[Some(&hex_text(&notes))]),
        &complete("SELECT 1"),
        &ready(b'I'),
    ]));
    assert_eq!(tags(&cl), "TEZ");
    // Values embedded in arrays, records and user-defined types (a domain over bytea).
    let array_text = {
        let mut v = b"{\"\\\\".to_vec();
        v.extend_from_slice(&hex_text(&notes)[1..]);
        v.extend_from_slice(b"\"}");
        v
    };
    let record_binary = {
        let mut v = vec![0, 0, 0, 1, 0, 0, 0, 17];
        v.extend_from_slice(&(email.len() as u32).to_be_bytes());
        v.extend_from_slice(&email);
        v
    };
    for (ty, format, cell, column) in [
        (1001u32, 0i16, array_text, "notes"),
        (2249, 1, record_binary, "email"),
        (16999, 0, hex_text(&notes), "notes"),
    ] {
        h.client(&query("SELECT f()"));
        let cl = h.server(&cat(&[
            &row_description(&[field("f", 0, 0, ty, format)]),
            &data_row(&[Some(&cell)]),
            &complete("SELECT 1"),
            &ready(b'I'),
        ]));
        assert_eq!(tags(&cl), "TEZ", "type {ty}");
        let (code, msg) = error_of(&frames(&cl)[1].1);
        assert_eq!(code, "0A000");
        assert!(msg.contains(&format!("public.patients.{column}")), "{msg}");
    }
    // Plain values, look-alikes included, pass byte for byte, and the session goes on.
    let plain_array = format!("{{\"\\\\x0100000001{}\"}}", "5a".repeat(40));
    h.client(&query("SELECT f()"));
    let input = cat(&[
        &row_description(&[field("f", 0, 0, 1001, 0), field("e", 0, 0, 16998, 0)]),
        &data_row(&[Some(plain_array.as_bytes()), Some(b"an enum value")]),
        &complete("SELECT 1"),
        &ready(b'I'),
    ]);
    assert_eq!(&h.server(&input)[..], &input[..]);
    h.client(&query("SELECT * FROM f()"));
    let input = cat(&[
        &desc,
        &data_row(&[Some(b"3"), Some(&hex_text(&lookalike)), Some(b"\\x")]),
        &data_row(&[Some(b"4"), Some(&lookalike[..20]), None]),
        &complete("SELECT 2"),
        &ready(b'I'),
    ]);
    let cl = h.server(&input);
    assert_eq!(&cl[..], &input[..]);
}

/// `encode(bytes, 'base64')` as PostgreSQL renders it (a line break every 76 characters).
fn base64_text(bytes: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let flat = base64::engine::general_purpose::STANDARD.encode(bytes);
    flat.as_bytes().chunks(76).collect::<Vec<_>>().join(&b'\n')
}

/// `encode(bytes, 'escape')` as PostgreSQL renders it.
fn escape_text(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in bytes {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x20..=0x7e => out.push(*b),
            _ => out.extend_from_slice(format!("\\{b:03o}").as_bytes()),
        }
    }
    out
}

#[test]
fn hex_renderings_of_protected_values_in_text_results_are_refused() {
    let mut h = harness();
    let email = h.seal("patients", "email", "texted@example.com");
    let notes = h.seal("patients", "notes", "texted note");
    let bare = |stored: &[u8]| hex_text(stored)[2..].to_vec();
    // A dual cell of a blind-index key rotation (docs/format.md §2.5): tag, 0x02, second tag,
    // envelope.
    let dual = [&email[..16], &[2u8][..], &[0x77u8; 16][..], &email[16..]].concat();
    let json = {
        let mut v = b"{\"n\": \"\\\\".to_vec();
        v.extend_from_slice(&hex_text(&notes)[1..]);
        v.extend_from_slice(b"\"}");
        v
    };
    // What a function that re-encodes a protected table's values returns: encode(…, 'hex'),
    // upper(…) of it, a cast to text, to_json, text glued behind a label; also a plain
    // table's text column the hex was copied into directly upstream.
    for (ty, table, format, cell, column) in [
        (25u32, 0u32, 0i16, bare(&email), "email"),
        (25, 0, 1, bare(&notes).to_ascii_uppercase(), "notes"),
        (1043, 0, 0, hex_text(&notes), "notes"),
        (114, 0, 0, json, "notes"),
        (
            25,
            0,
            0,
            [&b"ID: "[..], &bare(&email)[..], b" (copy)"].concat(),
            "email",
        ),
        (2275, 0, 0, hex_text(&email), "email"),
        (25, 99999, 0, bare(&notes), "notes"),
        // encode(…, 'base64') (wrapped at 76 characters, as PostgreSQL does), and of the
        // envelope alone; encode(…, 'escape').
        (25, 0, 0, base64_text(&email), "email"),
        (25, 0, 0, base64_text(&email[16..]), "email"),
        (
            25,
            0,
            0,
            [&b"b64: "[..], &base64_text(&notes)[..]].concat(),
            "notes",
        ),
        (25, 0, 0, escape_text(&notes), "notes"),
        (1043, 0, 0, escape_text(&email), "email"),
        // A dual cell, as bytea and re-encoded.
        (17, 0, 0, hex_text(&dual), "email"),
        (25, 0, 0, bare(&dual), "email"),
        (25, 0, 0, base64_text(&dual), "email"),
        (1043, 0, 0, escape_text(&dual), "email"),
    ] {
        h.client(&query("SELECT f()"));
        let cl = h.server(&cat(&[
            &row_description(&[field("id", 0, 0, 23, 0), field("f", table, 1, ty, format)]),
            &data_row(&[Some(b"1"), Some(&cell)]),
            &complete("SELECT 1"),
            &ready(b'I'),
        ]));
        assert_eq!(tags(&cl), "TEZ", "type {ty}");
        let (code, msg) = error_of(&frames(&cl)[1].1);
        assert_eq!(code, "0A000");
        assert!(
            msg.contains(&format!("public.patients.{column}")) && msg.contains("column 2"),
            "{msg}"
        );
        assert!(!contains(&cl, &cell), "type {ty}");
    }
    // Plain text passes byte for byte: ordinary text, a look-alike header that no key opens,
    // and a long run of header digits (each run is decoded at most twice, so this is linear).
    let mut lookalike = vec![1u8, 0, 0, 0, 1];
    lookalike.extend_from_slice(&[0x5a; 60]);
    let many = "010000".repeat(64 * 1024);
    let started = std::time::Instant::now();
    h.client(&query("SELECT f()"));
    let input = cat(&[
        &row_description(&[field("a", 0, 0, 25, 0), field("b", 0, 0, 25, 0)]),
        &data_row(&[Some(b"note 1"), Some(&bare(&lookalike))]),
        &data_row(&[Some(many.as_bytes()), Some(b"0100000001")]),
        &data_row(&[
            Some(&base64_text(&lookalike)),
            Some(&escape_text(&lookalike)),
        ]),
        &complete("SELECT 3"),
        &ready(b'I'),
    ]);
    assert_eq!(&h.server(&input)[..], &input[..]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

fn copy_out_response(binary: bool, columns: i16) -> BytesMut {
    let mut b = BytesMut::new();
    put_message(&mut b, b'H', |b| {
        b.put_u8(u8::from(binary));
        b.put_i16(columns);
        for _ in 0..columns {
            b.put_i16(i16::from(binary));
        }
    });
    b
}

fn copy_data(data: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    put_message(&mut b, b'd', |b| b.put_slice(data));
    b
}

#[test]
fn copy_out_of_protected_values_is_refused() {
    let mut h = harness();
    let email = h.seal("patients", "email", "copied@example.com");
    let notes = h.seal("patients", "notes", "copied note");
    let mut lookalike = vec![1u8, 0, 0, 0, 1];
    lookalike.extend_from_slice(&[0x5a; 60]);
    let text_row = |id: &str, v: &[u8]| {
        // COPY text format doubles the backslash of bytea hex output.
        let mut r = format!("{id}\t\\").into_bytes();
        r.extend_from_slice(&hex_text(v));
        r.push(b'\n');
        r
    };
    let binary_row = |v: &[u8]| {
        let mut r = vec![0u8, 2, 0, 0, 0, 4, 0, 0, 0, 9];
        r.extend_from_slice(&(v.len() as u32).to_be_bytes());
        r.extend_from_slice(v);
        r
    };
    let csv_row = |v: &[u8]| {
        let mut r = b"9,".to_vec();
        r.extend_from_slice(&hex_text(v));
        r.push(b'\n');
        r
    };
    for (binary, ok_row, bad_row, column) in [
        (
            false,
            text_row("1", &lookalike),
            text_row("2", &email),
            "email",
        ),
        (false, csv_row(&lookalike), csv_row(&notes), "notes"),
        (true, binary_row(&lookalike), binary_row(&email), "email"),
        (true, binary_row(&lookalike), binary_row(&notes), "notes"),
    ] {
        h.client(&query("COPY (SELECT * FROM f()) TO STDOUT"));
        let cl = h.server(&cat(&[
            &copy_out_response(binary, 2),
            &copy_data(&ok_row),
            &copy_data(&bad_row),
            &simple(b'c'),
            &complete("COPY 2"),
            &ready(b'I'),
        ]));
        assert_eq!(tags(&cl), "HdEZ", "binary: {binary}, {column}");
        let f = frames(&cl);
        let (code, msg) = error_of(&f[2].1);
        assert_eq!(code, "0A000");
        assert!(msg.contains(&format!("public.patients.{column}")), "{msg}");
        assert!(!contains(&cl, &bad_row));
        // Plain data (look-alikes included) passes byte for byte.
        h.client(&query("COPY plain TO STDOUT"));
        let input = cat(&[
            &copy_out_response(binary, 2),
            &copy_data(&ok_row),
            &simple(b'c'),
            &complete("COPY 1"),
            &ready(b'I'),
        ]);
        assert_eq!(&h.server(&input)[..], &input[..]);
    }
}

/// Samples of every logical type in PostgreSQL text format.
fn sample(ty: LogicalType) -> &'static str {
    match ty {
        LogicalType::Text | LogicalType::Varchar => "héllo",
        LogicalType::Int2 => "-12",
        LogicalType::Int4 => "123456",
        LogicalType::Int8 => "-9000000000",
        LogicalType::Bool => "t",
        LogicalType::Float8 => "1.5",
        LogicalType::Numeric => "12.340",
        LogicalType::Date => "2024-02-29",
        LogicalType::Timestamp => "2024-02-29 12:34:56.789",
        LogicalType::TimestampTz => "2024-02-29 12:34:56+00",
        LogicalType::Uuid => "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        LogicalType::Jsonb => r#"{"a": [1, 2]}"#,
        _ => "\\x00ff",
    }
}

#[test]
fn every_type_renders_in_text_and_binary() {
    let h = harness();
    for ty in LogicalType::ALL {
        let name = typed_name(ty);
        let c = h.column("typed", &name);
        let value = ty.parse_text(sample(ty)).unwrap();
        let stored = h.seal("typed", &name, sample(ty));
        let mut want_bin = Vec::new();
        value.write_binary(&mut want_bin);
        let mut want_text = Vec::new();
        value.write_text(&mut want_text);
        for (format, cell, want) in [
            (1i16, stored.clone(), &want_bin),
            (0, hex_text(&stored), &want_text),
        ] {
            let plan = RowPlan::new(vec![None, Some(c.clone())], vec![0, format]);
            let body = data_row(&[Some(b"x"), Some(&cell)]);
            let mut out = BytesMut::new();
            h.factory
                .decrypt_data_row(&plan, &body[5..], &mut out)
                .unwrap();
            let row = wire::parse_data_row(&out[5..]).unwrap();
            assert_eq!(row[0], Some(&b"x"[..]));
            assert_eq!(row[1], Some(&want[..]), "{ty} format {format}");
            // The client's binary value parses back to the same value.
            if format == 1 {
                assert_eq!(ty.parse_binary(row[1].unwrap()).unwrap(), value, "{ty}");
            }
        }
        // Asked of the upstream in binary (the proxy does that once it knows the columns)
        // while the client wants text or binary.
        for (client, want) in [(0i16, &want_text), (1, &want_bin)] {
            let described = RowPlan::new(vec![None, Some(c.clone())], vec![0, 0]);
            let plan = match described.with_binary_upstream(&[client]) {
                Some((plan, upstream)) => {
                    assert_eq!(upstream, vec![client, 1]);
                    plan
                }
                None => described.with_result_formats(&[client]),
            };
            let body = data_row(&[Some(b"x"), Some(&stored)]);
            let mut out = BytesMut::new();
            h.factory
                .decrypt_data_row(&plan, &body[5..], &mut out)
                .unwrap();
            let row = wire::parse_data_row(&out[5..]).unwrap();
            assert_eq!(row[0], Some(&b"x"[..]));
            assert_eq!(row[1], Some(&want[..]), "{ty} client format {client}");
        }
        // Through the session: RowDescription carries the logical type and typlen.
        let mut s = h.factory.create(&info("app"));
        let mut up = BytesMut::new();
        let mut cl = BytesMut::new();
        let q = query(&format!("SELECT {name} FROM typed"));
        s.on_frontend(
            Frame::new(q.freeze()),
            &mut Outbox {
                to_upstream: &mut up,
                to_client: &mut cl,
            },
        )
        .unwrap();
        let rd = row_description(&[field(&name, TYPED, ty_attnum(ty), 17, 1)]);
        s.on_backend(
            Frame::new(rd.freeze()),
            &mut Outbox {
                to_upstream: &mut up,
                to_client: &mut cl,
            },
        )
        .unwrap();
        let d = data_row(&[Some(&stored)]);
        s.on_backend(
            Frame::new(d.freeze()),
            &mut Outbox {
                to_upstream: &mut up,
                to_client: &mut cl,
            },
        )
        .unwrap();
        let f = frames(&cl);
        let fd = &wire::parse_row_description(&f[0].1).unwrap()[0];
        assert_eq!(
            (fd.type_oid, fd.typlen, fd.typmod),
            (ty.oid(), cells::typlen(ty), -1)
        );
        assert_eq!(
            wire::parse_data_row(&f[1].1).unwrap()[0],
            Some(&want_bin[..])
        );
    }
}

fn ty_attnum(ty: LogicalType) -> i16 {
    LogicalType::ALL.iter().position(|t| *t == ty).unwrap() as i16 + 1
}

#[test]
fn plan_cache_returns_the_same_outcome() {
    let h = harness();
    let sp = vec!["public".to_owned()];
    let a = h
        .factory
        .plan("SELECT id FROM patients WHERE email = $1", &sp);
    let b = h
        .factory
        .plan("SELECT id FROM patients WHERE email = $1", &sp);
    assert!(Arc::ptr_eq(&a, &b));
    assert!(h.factory.shared.cache.len() == 1);
    let c = h.factory.plan("SELECT 1", &sp);
    assert!(matches!(&**c, Ok(crate::rewrite::Plan::PassThrough)));
    assert_eq!(
        h.factory.shared.cache.len(),
        1,
        "unmentioned statements are not cached"
    );
}

#[test]
fn set_search_path_is_followed() {
    let mut h = harness();
    // With search_path = other, "patients" resolves to other.patients, a plain table named like
    // the protected public.patients: refused, not rewritten for the protected table.
    h.client(&query("SET search_path TO other"));
    h.settle(&cat(&[&complete("SET"), &ready(b'I')]), "other", "app");
    let q = query("SELECT id FROM patients WHERE email = 'x'");
    let (up, _) = h.client(&q);
    assert!(contains(&up, b"pgseal_statement_refused_by_proxy"));
    let cl = h.server(&cat(&[&error("42601"), &ready(b'I')]));
    let (code, msg) = error_of(&frames(&cl)[0].1);
    assert_eq!(code, "0A000");
    assert!(msg.contains("public.patients"), "{msg}");
    h.client(&query("RESET search_path"));
    h.settle(
        &cat(&[&complete("RESET"), &ready(b'I')]),
        "\"$user\", public",
        "app",
    );
    let (up, _) = h.client(&q);
    assert_ne!(&up[..], &q[..]);
}

/// The answers of the proxy's own search_path query.
fn resync_answer(search_path: &str, user: &str, status: u8) -> Vec<u8> {
    cat(&[
        &row_description(&[
            field("current_setting", 0, 0, 25, 0),
            field("current_user", 0, 0, 19, 0),
        ]),
        &data_row(&[Some(search_path.as_bytes()), Some(user.as_bytes())]),
        &complete("SELECT 1"),
        &ready(status),
    ])
}

impl Harness {
    /// Feeds the server's answers to a statement that may change name resolution: the proxy
    /// holds its ReadyForQuery back and asks the server; `search_path` and `user` are the
    /// server's answer. Returns what the client got (its own ReadyForQuery last).
    fn settle(&mut self, answers: &[u8], search_path: &str, user: &str) -> BytesMut {
        let status = *frames(answers).last().unwrap().1.first().unwrap();
        let (up, mut cl) = self.drive(answers, false);
        assert_eq!(tags(&up), "Q", "the proxy asks the server");
        assert!(contains(&up, RESYNC_SQL.as_bytes()));
        assert!(
            !tags(&cl).ends_with('Z'),
            "the client's ReadyForQuery waits"
        );
        cl.extend_from_slice(&self.server(&resync_answer(search_path, user, status)));
        assert!(tags(&cl).ends_with('Z'));
        cl
    }
}

/// A statement naming a protected table, pipelined behind a `SET search_path` the server has
/// not answered yet, would run under a setting the proxy does not know: refused, in order.
#[test]
fn statements_pipelined_behind_a_search_path_change_are_refused() {
    let mut h = harness();
    let (up, cl) = h.client(&cat(&[
        &parse("", "SET search_path TO other, public", &[]),
        &bind("", "", &[], &[], &[]),
        &execute("", 0),
        &parse(
            "s2",
            "INSERT INTO patients (id, email) VALUES (1, 'pipelined@x.org')",
            &[],
        ),
        &bind("p2", "s2", &[], &[], &[]),
        &execute("p2", 0),
        &simple(b'S'),
    ]));
    assert!(cl.is_empty());
    assert!(!contains(&up, b"pipelined@x.org"));
    assert!(contains(&up, b"pgseal_statement_refused_by_proxy"));
    let answers = cat(&[
        &simple(b'1'),
        &simple(b'2'),
        &simple(b'n'),
        &complete("SET"),
        &error("42601"),
        &ready(b'I'),
    ]);
    let cl = h.settle(&answers, "other, public", "app");
    assert_eq!(tags(&cl), "12CEZ");
    let (code, msg) = error_of(&frames(&cl)[3].1);
    assert_eq!(code, "0A000");
    assert!(msg.contains("search_path"), "{msg}");
    // Once settled, the same statement is analysed under the new setting.
    let (up, _) = h.client(&query(
        "INSERT INTO patients (id, email) VALUES (1, 'settled@x.org')",
    ));
    assert!(!contains(&up, b"pgseal_statement_refused_by_proxy"));
}

/// The end of a block that set search_path locally restores the server's setting: statements
/// naming a protected table sent behind it, in the same string or pipelined before its answer,
/// are refused.
#[test]
fn statements_behind_the_end_of_a_block_that_set_search_path_are_refused() {
    let mut h = harness();
    let set_local = |h: &mut Harness| {
        h.client(&query("BEGIN; SET LOCAL search_path TO other"));
        h.settle(
            &cat(&[&complete("BEGIN"), &complete("SET"), &ready(b'T')]),
            "other",
            "app",
        );
    };
    set_local(&mut h);
    let (up, _) = h.client(&query(
        "COMMIT; INSERT INTO patients (id, email) VALUES (1, 'behind@x.org')",
    ));
    assert!(!contains(&up, b"behind@x.org"));
    assert!(contains(&up, b"pgseal_statement_refused_by_proxy"));
    let cl = h.server(&cat(&[&error("42601"), &ready(b'E')]));
    assert_eq!(tags(&cl), "EZ");
    assert_eq!(error_of(&frames(&cl)[0].1).0, "0A000");
    h.client(&query("ROLLBACK"));
    h.settle(
        &cat(&[&complete("ROLLBACK"), &ready(b'I')]),
        "\"$user\", public",
        "app",
    );
    // Pipelined behind the COMMIT.
    set_local(&mut h);
    let (up, _) = h.client(&cat(&[
        &query("COMMIT"),
        &parse(
            "",
            "INSERT INTO patients (id, email) VALUES (2, 'pipelined-behind@x.org')",
            &[],
        ),
        &bind("", "", &[], &[], &[]),
        &execute("", 0),
        &simple(b'S'),
    ]));
    assert!(!contains(&up, b"pipelined-behind@x.org"));
    assert!(contains(&up, b"pgseal_statement_refused_by_proxy"));
}

/// `SET LOCAL search_path` ends with its transaction, and a rolled-back `SET` is undone: the
/// proxy re-reads the server's values instead of keeping its own guess, so a protected table
/// named without its schema afterwards is encrypted again.
#[test]
fn search_path_undone_by_the_server_is_read_back() {
    let mut h = harness();
    let insert = query("INSERT INTO patients (id, email) VALUES (1, 'zz-resync@example.com')");
    let encrypted = |h: &mut Harness| {
        let (up, _) = h.client(&insert);
        h.server(&cat(&[&complete("INSERT 0 1"), &ready(b'I')]));
        !contains(&up, b"zz-resync")
    };
    assert!(encrypted(&mut h));
    // SET LOCAL in a block: followed inside it, re-read at its end.
    h.client(&query("BEGIN; SET LOCAL search_path TO other"));
    let cl = h.settle(
        &cat(&[&complete("BEGIN"), &complete("SET"), &ready(b'T')]),
        "other",
        "app",
    );
    assert_eq!(tags(&cl), "CCZ");
    let (up, _) = h.client(&query("SELECT email FROM patients"));
    assert!(
        contains(&up, b"pgseal_statement_refused_by_proxy"),
        "other.patients is not protected: refused"
    );
    h.server(&cat(&[&error("42601"), &ready(b'E')]));
    // The refusal aborted the block: COMMIT rolls it back.
    h.client(&query("COMMIT"));
    h.settle(
        &cat(&[&complete("ROLLBACK"), &ready(b'I')]),
        "\"$user\", public",
        "app",
    );
    assert!(
        encrypted(&mut h),
        "after COMMIT the server's search_path is back"
    );
    // A SET rolled back.
    h.client(&query("BEGIN"));
    h.server(&cat(&[&complete("BEGIN"), &ready(b'T')]));
    h.client(&query("SET search_path TO other"));
    h.settle(&cat(&[&complete("SET"), &ready(b'T')]), "other", "app");
    h.client(&query("ROLLBACK"));
    h.settle(
        &cat(&[&complete("ROLLBACK"), &ready(b'I')]),
        "\"$user\", public",
        "app",
    );
    assert!(encrypted(&mut h), "after ROLLBACK");
    // SET ROLE: "$user" follows the server's current_user.
    h.client(&query("SET ROLE other"));
    h.settle(
        &cat(&[&complete("SET"), &ready(b'I')]),
        "\"$user\"",
        "other",
    );
    let (up, _) = h.client(&insert);
    assert!(
        contains(&up, b"pgseal_statement_refused_by_proxy") && !contains(&up, b"zz-resync"),
        "$user is now other: other.patients, a plain table named like a protected one, refused"
    );
    h.server(&cat(&[&error("42601"), &ready(b'I')]));
    // An unrelated SET asks nothing.
    h.client(&query("SET statement_timeout = 0"));
    let cl = h.server(&cat(&[&complete("SET"), &ready(b'I')]));
    assert_eq!(tags(&cl), "CZ");
}

#[test]
fn undecodable_bind_is_answered_in_order_without_forwarding() {
    let mut h = harness();
    let mut b = BytesMut::new();
    put_message(&mut b, b'B', |b| {
        b.put_slice(&[0, 0, 0, 0, 0, 1, 0, 0, 0, 9, b'x'])
    });
    let (up, cl) = h.client(&cat(&[
        &parse("", "SELECT $1::text", &[]),
        &b,
        &execute("", 0),
        &simple(b'S'),
    ]));
    assert!(cl.is_empty());
    assert_eq!(tags(&up), "PBS");
    let f = frames(&up);
    assert_eq!(
        BindMsg::parse(&f[1].1).unwrap().statement,
        super::session::DECOY_STATEMENT
    );
    let cl = h.server(&cat(&[&simple(b'1'), &error("26000"), &ready(b'I')]));
    assert_eq!(tags(&cl), "1EZ");
    assert_eq!(error_of(&frames(&cl)[1].1).0, "08P01");
}

#[test]
fn copy_in_with_sync_sent_early_keeps_the_queue_aligned() {
    let mut h = harness();
    // tokio-postgres: Bind, Execute, Sync, then the data, CopyDone, Sync. The server ignores
    // the first Sync (copy-in mode) and answers one ReadyForQuery.
    h.prepare_described("s", "COPY plain FROM STDIN", &[], &simple(b'n'));
    let mut copy_data = BytesMut::new();
    put_message(&mut copy_data, b'd', |b| b.put_slice(b"1\t\\x00\n"));
    let (up, _) = h.client(&cat(&[
        &bind("", "s", &[], &[], &[]),
        &execute("", 0),
        &simple(b'S'),
    ]));
    assert_eq!(tags(&up), "BES");
    let mut g = BytesMut::new();
    put_message(&mut g, b'G', |b| {
        b.put_u8(0);
        b.put_i16(0);
    });
    let cl = h.server(&cat(&[&simple(b'2'), &g]));
    assert_eq!(tags(&cl), "2G");
    h.client(&cat(&[&copy_data, &simple(b'c'), &simple(b'S')]));
    let cl = h.server(&cat(&[&complete("COPY 1"), &ready(b'I')]));
    assert_eq!(tags(&cl), "CZ");
    // The next batch lines up: its NoData reaches the client.
    let (_, cl) = h.prepare_described("t", "SELECT 1", &[], &simple(b'n'));
    assert_eq!(tags(&cl), "1tnZ");
    let (up, _) = h.client(&cat(&[
        &bind("", "t", &[], &[], &[]),
        &execute("", 0),
        &simple(b'S'),
    ]));
    assert_eq!(
        tags(&up),
        "BES",
        "no Describe injected: the statement was described"
    );
}

/// A catalog that counts refreshes and learns a table on the first one.
struct LearningCatalog {
    before: Arc<CatalogSnapshot>,
    after: Arc<CatalogSnapshot>,
    refreshes: std::sync::atomic::AtomicUsize,
}

impl crate::catalog::CatalogSource for LearningCatalog {
    fn snapshot(&self) -> Arc<CatalogSnapshot> {
        if self.refreshes.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            self.before.clone()
        } else {
            self.after.clone()
        }
    }
    fn refresh(&self) -> Result<Arc<CatalogSnapshot>, crate::catalog::CatalogError> {
        self.refreshes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(self.after.clone())
    }
}

#[test]
fn unknown_table_oid_refreshes_the_catalog_once() {
    let h = harness();
    let rel = [("public".to_owned(), "patients".to_owned())];
    let cols = vec![(2i16, "email".to_owned())];
    let before = Arc::new(CatalogSnapshot::new(1, rel.clone(), [], &h.schema));
    let after = Arc::new(CatalogSnapshot::new(
        2,
        rel,
        [(PATIENTS, "public".to_owned(), "patients".to_owned(), cols)],
        &h.schema,
    ));
    let catalog = Arc::new(LearningCatalog {
        before,
        after,
        refreshes: Default::default(),
    });
    let factory = EncryptionFactory::new(
        h.schema.clone(),
        "app".into(),
        h.keys.clone(),
        catalog.clone(),
    );
    let mut h2 = Harness {
        session: factory.create(&info("app")),
        factory,
        keys: h.keys.clone(),
        schema: h.schema.clone(),
    };
    let stored = h2.seal("patients", "email", "x@y");
    for _ in 0..2 {
        h2.client(&query("SELECT email, data FROM patients, plain"));
        let cl = h2.server(&cat(&[
            &row_description(&[
                field("email", PATIENTS, 2, 17, 0),
                field("data", 777, 1, 17, 0),
            ]),
            &data_row(&[Some(&hex_text(&stored)), Some(b"\\x00")]),
            &complete("SELECT 1"),
            &ready(b'I'),
        ]));
        assert!(contains(&cl, b"x@y"));
    }
    // One refresh for the words the catalog does not know as relations ("plain" may be a
    // partition created since the last load), one for the unknown table OID 777; neither is
    // repeated at the same generation.
    assert_eq!(
        catalog.refreshes.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    // Another session does not refresh again for the unprotected table 777 nor for the words.
    let mut s = h2.factory.create(&info("app"));
    std::mem::swap(&mut s, &mut h2.session);
    for _ in 0..2 {
        h2.client(&query("SELECT data FROM plain"));
        h2.server(&cat(&[
            &row_description(&[field("data", 777, 1, 17, 0)]),
            &ready(b'I'),
        ]));
    }
    assert_eq!(
        catalog.refreshes.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

#[test]
fn bind_with_missing_parameters_is_refused_like_postgres() {
    let mut h = harness();
    let (up, _) = h.client(&cat(&[
        &parse("", "INSERT INTO patients (id, email) VALUES ($1, $2)", &[]),
        &bind("", "", &[], &[Some(b"1")], &[]),
        &execute("", 0),
        &simple(b'S'),
    ]));
    assert_eq!(tags(&up), "PBS");
    let cl = h.server(&cat(&[&simple(b'1'), &error("26000"), &ready(b'I')]));
    let (code, msg) = error_of(&frames(&cl)[1].1);
    assert_eq!(code, "08P01");
    assert!(msg.contains("supplies 1 parameters"), "{msg}");
}

#[test]
fn parameter_used_as_value_and_lookup_becomes_two_upstream_parameters() {
    let mut h = harness();
    let (up, _) = h.client(&cat(&[
        &parse(
            "u",
            "INSERT INTO patients (id, email) VALUES ($1, $2) ON CONFLICT (email) DO UPDATE SET email = EXCLUDED.email RETURNING email",
            &[],
        ),
        &describe(b'S', "u"),
        &bind("", "u", &[], &[Some(b"5"), Some(b"zed@x")], &[]),
        &execute("", 0),
        &simple(b'S'),
    ]));
    assert!(!contains(&up, b"zed@x"));
    let f = frames(&up);
    let p = ParseMsg::parse(&f[0].1).unwrap();
    assert_eq!(p.param_oids, vec![0, 17]);
    let b = BindMsg::parse(&f[2].1).unwrap();
    assert_eq!(
        h.open("patients", "email", b.params[1].unwrap()),
        Value::Text("zed@x".into())
    );

    let mut h = harness();
    let (up, _) = h.client(&cat(&[
        &parse(
            "w",
            "UPDATE patients SET email = $1 WHERE email = $1 OR ssn = $2",
            &[],
        ),
        &describe(b'S', "w"),
        &bind("", "w", &[], &[Some(b"a@b"), Some(b"9")], &[]),
        &simple(b'S'),
    ]));
    assert!(!contains(&up, b"a@b"));
    let f = frames(&up);
    let p = ParseMsg::parse(&f[0].1).unwrap();
    let b = BindMsg::parse(&f[2].1).unwrap();
    assert_eq!(b.params.len(), p.param_oids.len());
    // $1 as a value, $1 and $2 as lookups: three bytea parameters
    assert_eq!(p.param_oids, vec![17, 17, 17]);
    assert!(p.query.contains("SET email = $1::bytea"), "{}", p.query);
    let value_at = 0;
    assert_eq!(
        h.open("patients", "email", b.params[value_at].unwrap()),
        Value::Text("a@b".into())
    );
    let pd = parameter_description(&p.param_oids);
    let cl = h.server(&cat(&[
        &simple(b'1'),
        &pd,
        &simple(b'n'),
        &simple(b'2'),
        &ready(b'I'),
    ]));
    assert_eq!(
        wire::parse_parameter_description(&frames(&cl)[1].1).unwrap(),
        vec![25, 20]
    );
}

#[test]
fn pipelined_unnamed_portals_keep_their_own_columns() {
    let mut h = harness();
    let stored = h.seal("patients", "email", "p@q");
    let (up, _) = h.client(&cat(&[
        &parse("a", "SELECT email FROM patients", &[]),
        &parse("b", "SELECT data FROM plain", &[]),
        &bind("", "a", &[], &[], &[]),
        &execute("", 0),
        &bind("", "b", &[], &[], &[]),
        &execute("", 0),
        &simple(b'S'),
    ]));
    assert_eq!(tags(&up), "PPBDEBDES");
    let cl = h.server(&cat(&[
        &simple(b'1'),
        &simple(b'1'),
        &simple(b'2'),
        &row_description(&[field("email", PATIENTS, 2, 17, 0)]),
        &data_row(&[Some(&hex_text(&stored))]),
        &complete("SELECT 1"),
        &simple(b'2'),
        &row_description(&[field("data", 0, 0, 17, 0)]),
        &data_row(&[Some(b"\\x01")]),
        &complete("SELECT 1"),
        &ready(b'I'),
    ]));
    assert_eq!(
        tags(&cl),
        "112DC2DCZ",
        "the proxy's Describe answers are swallowed"
    );
    let f = frames(&cl);
    let rows: Vec<_> = f
        .iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, b)| wire::parse_data_row(b).unwrap()[0].unwrap().to_vec())
        .collect();
    assert_eq!(rows, vec![b"p@q".to_vec(), b"\\x01".to_vec()]);
}

#[test]
fn statement_described_late_does_not_leak_into_a_newer_one_of_the_same_name() {
    let mut h = harness();
    let stored = h.seal("patients", "email", "p@q");
    h.client(&cat(&[
        &parse("", "SELECT email FROM patients", &[]),
        &describe(b'S', ""),
        &parse("", "SELECT data FROM plain", &[]),
        &bind("", "", &[], &[], &[]),
        &execute("", 0),
        &simple(b'S'),
    ]));
    let pd = parameter_description(&[]);
    let cl = h.server(&cat(&[
        &simple(b'1'),
        &pd,
        &row_description(&[field("email", PATIENTS, 2, 17, 0)]),
        &simple(b'1'),
        &simple(b'2'),
        &row_description(&[field("data", 0, 0, 17, 0)]),
        &data_row(&[Some(&hex_text(&stored))]),
        &complete("SELECT 1"),
        &ready(b'I'),
    ]));
    // The second statement's bytea is not decrypted with the first one's description; holding
    // ciphertext in a column the proxy does not decrypt, it is refused (leak guard).
    assert_eq!(tags(&cl), "1tT12EZ");
    assert!(!contains(&cl, b"p@q"));
    assert!(!contains(&cl, &hex_text(&stored)));
    let (code, _) = error_of(&frames(&cl)[5].1);
    assert_eq!(code, "0A000");
}

/// The blind-index tags of `text` in `column` under `keys` (newest version first).
fn tags_under(keys: &StaticKeys, h: &Harness, column: &str, text: &str) -> Vec<Vec<u8>> {
    let c = h.column("patients", column);
    let mut tags = Vec::new();
    cells::lookup_tags(
        &keys.column(&c.id).unwrap(),
        &c,
        &c.ty.parse_text(text).unwrap(),
        &mut tags,
    )
    .unwrap();
    tags.into_iter().map(|t| t.to_vec()).collect()
}

#[test]
fn scalar_lookup_is_re_prepared_when_the_key_versions_change() {
    let schema = Arc::new(schema());
    let v1 = keys_with_versions(&schema, &[1]);
    let v12 = keys_with_versions(&schema, &[1, 2]);
    let v2 = keys_with_versions(&schema, &[2]);
    let source = Arc::new(SwapKeys(std::sync::Mutex::new(v1.clone())));
    let mut h = harness_with(schema, v1.clone(), source.clone());
    let sql = "SELECT id FROM patients WHERE email = $1 AND id <> $2";

    // Prepared under one version: a scalar `= $1::bytea`.
    let (up, _) = h.client(&cat(&[&parse("s", sql, &[]), &simple(b'S')]));
    let f = frames(&up);
    let p = ParseMsg::parse(&f[0].1).unwrap();
    assert_eq!(
        p.query,
        "SELECT id FROM patients WHERE SUBSTRING(email FROM 1 FOR 16) = $1::bytea AND id <> $2"
    );
    assert_eq!(p.param_oids, vec![17, 0]);
    assert_eq!(tags(&h.server(&cat(&[&simple(b'1'), &ready(b'I')]))), "1Z");
    let bind_s = |h: &mut Harness| {
        h.client(&cat(&[
            &bind("", "s", &[], &[Some(b"alice"), Some(b"3")], &[]),
            &simple(b'S'),
        ]))
        .0
    };
    let up = bind_s(&mut h);
    assert_eq!(tags(&up), "BS");
    let f = frames(&up);
    let b = BindMsg::parse(&f[0].1).unwrap();
    let t1 = tags_under(&v1, &h, "email", "alice");
    assert_eq!(b.params, vec![Some(&t1[0][..]), Some(&b"3"[..])]);
    assert_eq!(tags(&h.server(&cat(&[&simple(b'2'), &ready(b'I')]))), "2Z");

    // Rotation: version 2 added. The next Bind re-prepares (hidden Close + Parse) for two
    // versions and sends both tags; the client sees only its BindComplete.
    *source.0.lock().unwrap() = v12.clone();
    let up = bind_s(&mut h);
    assert_eq!(tags(&up), "CPBS");
    let f = frames(&up);
    assert_eq!(f[0].1, b"Ss\0");
    let p = ParseMsg::parse(&f[1].1).unwrap();
    assert_eq!(p.name, "s");
    assert_eq!(
        p.query,
        "SELECT id FROM patients WHERE SUBSTRING(email FROM 1 FOR 16) IN ($1::bytea, $3::bytea) AND id <> $2"
    );
    assert_eq!(p.param_oids, vec![17, 0, 17]);
    let b = BindMsg::parse(&f[2].1).unwrap();
    let t12 = tags_under(&v12, &h, "email", "alice");
    assert_eq!(t12.len(), 2);
    assert_eq!(t12[1], t1[0], "version 1's tag is still searched");
    assert_eq!(
        b.params,
        vec![Some(&t12[0][..]), Some(&b"3"[..]), Some(&t12[1][..])]
    );
    let cl = h.server(&cat(&[
        &simple(b'3'),
        &simple(b'1'),
        &simple(b'2'),
        &ready(b'I'),
    ]));
    assert_eq!(tags(&cl), "2Z");

    // Same versions: no re-prepare.
    let up = bind_s(&mut h);
    assert_eq!(tags(&up), "BS");
    assert_eq!(BindMsg::parse(&frames(&up)[0].1).unwrap().params.len(), 3);
    assert_eq!(tags(&h.server(&cat(&[&simple(b'2'), &ready(b'I')]))), "2Z");

    // Version 1 retired: re-prepared for one version again.
    *source.0.lock().unwrap() = v2.clone();
    let up = bind_s(&mut h);
    assert_eq!(tags(&up), "CPBS");
    let f = frames(&up);
    let p = ParseMsg::parse(&f[1].1).unwrap();
    assert!(p.query.contains("= $1::bytea AND"), "{}", p.query);
    let b = BindMsg::parse(&f[2].1).unwrap();
    let t2 = tags_under(&v2, &h, "email", "alice");
    assert_eq!(b.params, vec![Some(&t2[0][..]), Some(&b"3"[..])]);

    // The hidden Parse fails upstream: the client gets the error for its Bind, and the next
    // Bind re-prepares again (the upstream statement is gone).
    let cl = h.server(&cat(&[&simple(b'3'), &error("42P01"), &ready(b'I')]));
    assert_eq!(tags(&cl), "EZ");
    let up = bind_s(&mut h);
    assert_eq!(tags(&up), "CPBS");
    let cl = h.server(&cat(&[
        &simple(b'3'),
        &simple(b'1'),
        &simple(b'2'),
        &ready(b'I'),
    ]));
    assert_eq!(tags(&cl), "2Z");
    let up = bind_s(&mut h);
    assert_eq!(tags(&up), "BS");
}

#[test]
fn unnamed_statement_and_literal_lookup_follow_rotation() {
    let schema = Arc::new(schema());
    let v1 = keys_with_versions(&schema, &[1]);
    let v12 = keys_with_versions(&schema, &[1, 2]);
    let source = Arc::new(SwapKeys(std::sync::Mutex::new(v1.clone())));
    let mut h = harness_with(schema, v1.clone(), source.clone());

    // Unnamed statement: re-prepared by a Parse alone (it replaces the unnamed statement).
    let (up, _) = h.client(&parse("", "SELECT id FROM patients WHERE ssn = $1", &[]));
    assert_eq!(tags(&up), "P");
    *source.0.lock().unwrap() = v12.clone();
    let (up, _) = h.client(&cat(&[
        &bind("", "", &[], &[Some(b"42")], &[]),
        &simple(b'S'),
    ]));
    assert_eq!(tags(&up), "PBS");
    let f = frames(&up);
    let p = ParseMsg::parse(&f[0].1).unwrap();
    assert!(
        p.query.ends_with("IN ($1::bytea, $2::bytea)"),
        "{}",
        p.query
    );
    let cl = h.server(&cat(&[
        &simple(b'1'),
        &simple(b'1'),
        &simple(b'2'),
        &ready(b'I'),
    ]));
    assert_eq!(tags(&cl), "12Z");

    // A literal lookup prepared before the rotation renders the old versions' tags into the
    // SQL: re-prepared so that the new version's tag is searched too.
    *source.0.lock().unwrap() = v1.clone();
    let (up, _) = h.client(&parse(
        "lit",
        "SELECT id FROM patients WHERE email = 'bob'",
        &[],
    ));
    assert!(!contains(&up, b"bob"));
    *source.0.lock().unwrap() = v12.clone();
    let (up, _) = h.client(&cat(&[&bind("", "lit", &[], &[], &[]), &simple(b'S')]));
    assert_eq!(tags(&up), "CPBS");
    let f = frames(&up);
    let p = ParseMsg::parse(&f[1].1).unwrap();
    let hex = |t: &[u8]| t.iter().map(|b| format!("{b:02x}")).collect::<String>();
    for t in tags_under(&v12, &h, "email", "bob") {
        assert!(p.query.contains(&hex(&t)), "{}", p.query);
    }
    assert!(!contains(&up, b"bob"));

    // A value sealed into a prepared statement's SQL: sealed again under the new active version
    // (and prepared again) after the rotation, not written under the old one for good.
    *source.0.lock().unwrap() = v1.clone();
    // The answer to the previous Bind/Sync.
    assert_eq!(tags(&h.server(&cat(&[&simple(b'2'), &ready(b'I')]))), "2Z");
    let (up, _) = h.client(&parse(
        "ins",
        "INSERT INTO patients (id, email) VALUES (7, 'carol')",
        &[],
    ));
    assert_eq!(tags(&up), "P");
    let before = ParseMsg::parse(&frames(&up)[0].1).unwrap().query.to_owned();
    let (up, _) = h.client(&cat(&[&bind("", "ins", &[], &[], &[]), &simple(b'S')]));
    assert_eq!(tags(&up), "BS", "same keys: no re-prepare");
    *source.0.lock().unwrap() = v12.clone();
    let (up, _) = h.client(&cat(&[&bind("", "ins", &[], &[], &[]), &simple(b'S')]));
    assert_eq!(tags(&up), "CPBS", "re-prepared after the rotation");
    let after = ParseMsg::parse(&frames(&up)[1].1).unwrap().query.to_owned();
    assert_ne!(before, after);
    // The envelope's key version (bytes 17..21 of the stored cell, after the 16-byte tag and
    // the format byte) is the new active one.
    let hex_of = |q: &str| {
        let at = q.find("\\\\x").unwrap() + 3;
        q[at..]
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .collect::<String>()
    };
    assert_eq!(&hex_of(&before)[34..42], "00000001", "{before}");
    assert_eq!(&hex_of(&after)[34..42], "00000002", "{after}");
    assert!(!contains(&up, b"carol"));
}

/// `before`: the catalog knows patients only; `after` (what a refresh finds): a partition
/// `patients_new` (OID 16401, email at attnum 3) created directly upstream, and a view `v_pat`
/// (OID 16402) over patients.
fn grown_catalog(h: &Harness) -> Arc<LearningCatalog> {
    use crate::catalog::{DependentRelation, Descendant};
    let p = |s: &str, t: &str| (s.to_owned(), t.to_owned());
    let patients = || {
        [(
            PATIENTS,
            "public".to_owned(),
            "patients".to_owned(),
            vec![(1i16, "id".to_owned()), (2, "email".to_owned())],
        )]
    };
    let before = Arc::new(CatalogSnapshot::new(
        1,
        [p("public", "patients")],
        patients(),
        &h.schema,
    ));
    let after = Arc::new(
        CatalogSnapshot::new(
            2,
            [
                p("public", "patients"),
                p("public", "patients_new"),
                p("public", "v_pat"),
            ],
            patients(),
            &h.schema,
        )
        .with_dependents(
            &h.schema,
            [Descendant {
                oid: 16401,
                schema: "public".into(),
                table: "patients_new".into(),
                temporary: false,
                roots: vec![p("public", "patients")],
                columns: vec![(1, "id".into()), (3, "email".into())],
            }],
            [DependentRelation {
                oid: 16402,
                schema: "public".into(),
                name: "v_pat".into(),
                relkind: 'v',
                over: p("public", "patients"),
            }],
        ),
    );
    Arc::new(LearningCatalog {
        before,
        after,
        refreshes: Default::default(),
    })
}

fn harness_with_catalog(catalog: Arc<LearningCatalog>) -> Harness {
    let h = harness();
    let factory = EncryptionFactory::new(h.schema.clone(), "app".into(), h.keys.clone(), catalog);
    Harness {
        session: factory.create(&info("app")),
        factory,
        keys: h.keys.clone(),
        schema: h.schema.clone(),
    }
}

#[test]
fn a_write_naming_a_partition_the_snapshot_lacks_refreshes_and_encrypts() {
    let catalog = grown_catalog(&harness());
    let mut h = harness_with_catalog(catalog.clone());
    let (up, cl) = h.client(&query(
        "INSERT INTO patients_new (id, email) VALUES (1, 'secret@example.org')",
    ));
    assert!(cl.is_empty(), "{}", tags(&cl));
    assert!(contains(&up, b"INSERT"), "{up:?}");
    assert!(
        !contains(&up, b"secret@example.org"),
        "plaintext went upstream"
    );
    assert_eq!(
        catalog.refreshes.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    // The stored cell is sealed under the root's identity: it opens as patients.email.
    let sql = String::from_utf8_lossy(&up).into_owned();
    let cells = literals(&sql);
    assert_eq!(cells.len(), 1, "{sql}");
    let c = h.column("patients", "email");
    let crypto = h.keys.column(&c.id).unwrap();
    let v = cells::open(&crypto, &c, &cells[0]).unwrap();
    assert_eq!(v, Value::Text("secret@example.org".into()));
}

#[test]
fn reads_through_a_partition_decrypt_and_views_are_never_handed_over() {
    let catalog = grown_catalog(&harness());
    let mut h = harness_with_catalog(catalog.clone());
    let stored = h.seal("patients", "email", "x@y.example");
    // A partition's RowDescription (email at attnum 3 there) decrypts with the root's column.
    h.client(&query("SELECT id, email FROM patients_new"));
    let cl = h.server(&cat(&[
        &row_description(&[
            field("id", 16401, 1, 23, 0),
            field("email", 16401, 3, 17, 0),
        ]),
        &data_row(&[Some(b"1"), Some(&hex_text(&stored))]),
        &complete("SELECT 1"),
        &ready(b'I'),
    ]));
    assert!(contains(&cl, b"x@y.example"), "{}", tags(&cl));
    // A result from a tainted view: an error, and neither ciphertext nor any row.
    let mut s = h.factory.create(&info("app"));
    std::mem::swap(&mut s, &mut h.session);
    h.client(&query("SELECT id, e FROM some_function_over_a_view()"));
    let cl = h.server(&cat(&[
        &row_description(&[field("id", 16402, 1, 23, 0), field("e", 16402, 2, 17, 0)]),
        &data_row(&[Some(b"1"), Some(&hex_text(&stored))]),
        &complete("SELECT 1"),
        &ready(b'I'),
    ]));
    assert_eq!(tags(&cl), "EZ", "{cl:?}");
    assert!(contains(&cl, b"0A000") && contains(&cl, b"public.v_pat"));
    assert!(!contains(&cl, &hex_text(&stored)));
    // Naming the view is refused: only the decoy reaches the upstream.
    let (up, _) = h.client(&query("SELECT * FROM v_pat"));
    assert!(!up.is_empty() && !contains(&up, b"v_pat"), "{up:?}");
}

#[test]
fn savepoint_and_cursor_names_do_not_refresh_but_later_statements_do() {
    let catalog = grown_catalog(&harness());
    let h = harness_with_catalog(catalog.clone());
    let path = vec!["public".to_owned()];
    for i in 0..5 {
        let o = h.factory.plan(
            &format!("SAVEPOINT sp_{i}; RELEASE SAVEPOINT sp_{i}"),
            &path,
        );
        assert!(matches!(o.result, Ok(crate::rewrite::Plan::PassThrough)));
        h.factory.plan(&format!("FETCH 10 FROM cur_{i}"), &path);
    }
    assert_eq!(
        catalog.refreshes.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let o = h.factory.plan(
        "SAVEPOINT sp_x; INSERT INTO patients_new (id, email) VALUES (1, 'a@b.example')",
        &path,
    );
    assert_eq!(
        catalog.refreshes.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    match &**o {
        Ok(crate::rewrite::Plan::Rewrite(p)) => {
            assert!(!p.debug_sql().contains("a@b.example"), "{}", p.debug_sql())
        }
        other => panic!("{other:?}"),
    }
}

fn parameter_status(name: &str, value: &str) -> BytesMut {
    let mut b = BytesMut::new();
    put_message(&mut b, b'S', |m| {
        put_cstr(m, name);
        put_cstr(m, value);
    });
    b
}

/// A write pipelined behind a catalog barrier (DDL that makes a new name a child of a
/// protected table) that the server has not answered: refused, nothing of it forwarded; a
/// statement on another table in the same pipeline passes.
#[test]
fn writes_pipelined_behind_a_catalog_barrier_are_refused() {
    let mut h = harness();
    let (up, cl) = h.client(&cat(&[
        &parse("", "CREATE TABLE k () INHERITS (patients)", &[]),
        &bind("", "", &[], &[], &[]),
        &execute("", 0),
        &parse(
            "s2",
            "INSERT INTO k (id, email) VALUES (1, 'behindbarrier@x.org')",
            &[],
        ),
        &bind("p2", "s2", &[], &[], &[]),
        &execute("p2", 0),
        &simple(b'S'),
    ]));
    assert!(cl.is_empty());
    assert!(!contains(&up, b"behindbarrier"));
    assert!(contains(&up, b"pgseal_statement_refused_by_proxy"));
    // Parsed first, executed later: the barrier counts from its Parse.
    let mut h = harness();
    let (up, _) = h.client(&cat(&[
        &parse("d", "ALTER TABLE s INHERIT patients", &[]),
        &parse(
            "w",
            "INSERT INTO s (id, email) VALUES (1, 'parsedfirst@x.org')",
            &[],
        ),
        &simple(b'S'),
    ]));
    assert!(!contains(&up, b"parsedfirst"));
    // Unrelated statements behind the barrier pass.
    let mut h = harness();
    let (up, _) = h.client(&cat(&[
        &parse("", "CREATE TABLE k () INHERITS (patients)", &[]),
        &bind("", "", &[], &[], &[]),
        &execute("", 0),
        &parse("s3", "INSERT INTO plain (id) VALUES (7)", &[]),
        &simple(b'S'),
    ]));
    assert!(contains(&up, b"INSERT INTO plain (id) VALUES (7)"));
}

/// `standard_conforming_strings` as the server reports it decides how statements are read:
/// off (a start-up option or role default: no SET to see) refuses statements on protected
/// tables; a change still in flight makes every reading count.
#[test]
fn the_lexer_follows_the_servers_reports() {
    let mut h = harness();
    let _ = h.server(&parameter_status("standard_conforming_strings", "off"));
    let (up, _) = h.client(&query(
        "INSERT INTO patients (id, email) VALUES (1, 'scsoff@x.org')",
    ));
    assert!(!contains(&up, b"scsoff"));
    assert!(contains(&up, b"pgseal_statement_refused_by_proxy"));
    // The trick of the review: one literal with the setting off, three statements with it on.
    // The proxy knows it is off: one harmless SELECT, forwarded as the server reads it.
    let (up, _) = h.client(&query(
        "SELECT 'a\\'; INSERT INTO patients (email) VALUES (1); SELECT ''';",
    ));
    assert!(!contains(&up, b"pgseal_statement_refused_by_proxy"));
    let _ = h.server(&cat(&[
        &complete("SELECT 1"),
        &complete("SELECT 1"),
        &ready(b'I'),
    ]));
    let _ = h.server(&parameter_status("standard_conforming_strings", "on"));
    // Pipelined behind a SET that may change it: read under both settings.
    let mut h = harness();
    let (up, _) = h.client(&cat(&[
        &parse("", "SET standard_conforming_strings = off", &[]),
        &bind("", "", &[], &[], &[]),
        &execute("", 0),
        &parse(
            "t",
            "SELECT 'a\\'; INSERT INTO patients (email) VALUES (''inflight''); --'",
            &[],
        ),
        &simple(b'S'),
    ]));
    assert!(!contains(&up, b"inflight"));
    assert!(contains(&up, b"pgseal_statement_refused_by_proxy"));
}
