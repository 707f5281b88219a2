//! The CHECK constraint on stored cells (defence in depth), end to end: a real PostgreSQL 15
//! (statement logging on), a real keyserver and `pgseal-proxy serve`, `check` and `schema`.
//!
//! A table created straight upstream with plaintext types is converted with the DDL `schema`
//! prints; a table created and altered through the proxy gets the same constraints from the
//! DDL rewriter. Plaintext written straight into a protected column (bypassing the proxy)
//! fails in PostgreSQL with SQLSTATE 23514; values of every logical type written through the
//! proxy (literals, binary parameters, NULLs; columns with and without equality index) are
//! accepted and read back. `check` flags a missing, a not yet validated and a different
//! constraint, and `schema` prints the DDL that repairs each.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::error::Error;

use bytes::BytesMut;
use support::keyserver::ColumnSpec;
use support::{secret, sqlstate, EncEnv};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

const KR: &str = "cells";

/// The columns of `cc`: (name, logical type, upstream plaintext type, indexed).
const CC: &[(&str, &str, &str, bool)] = &[
    ("c_text", "text", "text", false),
    ("c_text_ix", "text", "text", true),
    ("c_varchar", "varchar", "varchar(80)", false),
    ("c_int2", "int2", "int2", false),
    ("c_int4", "int4", "int4", true),
    ("c_int8", "int8", "int8", true),
    ("c_bool", "bool", "bool", false),
    ("c_float8", "float8", "float8", false),
    ("c_numeric", "numeric", "numeric", false),
    ("c_date", "date", "date", false),
    ("c_ts", "timestamp", "timestamp", false),
    ("c_tstz", "timestamptz", "timestamptz", false),
    ("c_uuid", "uuid", "uuid", true),
    ("c_jsonb", "jsonb", "jsonb", false),
    ("c_bytea", "bytea", "bytea", false),
];

/// The columns of `made` (created through the proxy): (name, indexed).
const MADE: &[(&str, bool)] = &[("secret", true), ("code", false), ("extra", false)];

fn columns() -> Vec<ColumnSpec> {
    let mut c: Vec<ColumnSpec> = CC
        .iter()
        .map(|(col, ty, _, ix)| {
            let s = ColumnSpec::new(&format!("public.cc.{col}"), ty, KR);
            if *ix {
                s.indexed()
            } else {
                s
            }
        })
        .collect();
    c.push(ColumnSpec::new("public.made.secret", "text", KR).indexed());
    c.push(ColumnSpec::new("public.made.code", "int8", KR));
    c.push(ColumnSpec::new("public.made.extra", "text", KR));
    c
}

/// A parameter sent as raw binary bytes, whatever type the proxy describes.
#[derive(Debug)]
struct Raw(Vec<u8>);

impl ToSql for Raw {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }
    fn accepts(_ty: &Type) -> bool {
        true
    }
    to_sql_checked!();
}

/// `pgseal-proxy CMD --config` of the running proxy: (exit code, stdout).
fn proxy_cmd(env: &EncEnv, cmd: &str) -> (Option<i32>, String) {
    let out = env.proxy_command(&[cmd]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!(
        "pgseal-proxy {cmd}:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), stdout)
}

/// The `check` lines about `public.TABLE.COLUMN`.
fn lines_of(stdout: &str, column: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| l.contains(&format!(": {column}: ")))
        .map(str::to_owned)
        .collect()
}

/// Asserts `check` succeeds with no error or warning at all.
fn assert_check_clean(env: &EncEnv) {
    let (code, stdout) = proxy_cmd(env, "check");
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        !stdout.contains("error:") && !stdout.contains("warning:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("configuration OK (18 protected column(s)"),
        "{stdout}"
    );
}

/// Straight to PostgreSQL as the application's role (so it owns the tables).
async fn direct(env: &EncEnv) -> tokio_postgres::Client {
    support::connect(&format!(
        "host={} port={} user={} dbname={}",
        env.pg.socket_dir().display(),
        env.pg.port,
        support::APP_USER,
        support::ENC_DB
    ))
    .await
}

/// The SQLSTATE of `sql` run straight upstream, "" when it succeeds.
async fn direct_state(c: &tokio_postgres::Client, sql: &str) -> String {
    match c.simple_query(sql).await {
        Ok(_) => String::new(),
        Err(e) => sqlstate(&e),
    }
}

/// The pgseal CHECK constraints of `table`: (name, validated).
fn constraints(env: &EncEnv, table: &str) -> Vec<(String, bool)> {
    env.direct(&format!(
        "SELECT conname, convalidated FROM pg_constraint WHERE conrelid = '{table}'::regclass \
         AND contype = 'c' ORDER BY conname"
    ))
    .lines()
    .map(|l| {
        let (n, v) = l.split_once('|').unwrap();
        (n.to_owned(), v == "t")
    })
    .collect()
}

/// Plaintext renderings of a value for each `cc` column, as a client bypassing the proxy
/// would write them (PostgreSQL reads the literal as bytea).
fn plaintext(col: &str) -> &'static str {
    match col {
        "c_text" => "alice@example.com",
        "c_text_ix" => "a plaintext value that is certainly longer than forty-nine bytes",
        "c_varchar" => "Erika Mustermann",
        "c_int2" => "12345",
        "c_int4" => "1234567890",
        "c_int8" => "7305811922604117",
        "c_bool" => "true",
        "c_float8" => "1234.5678",
        "c_numeric" => "12345.678",
        "c_date" => "2000-01-11",
        "c_ts" => "2000-01-01 00:00:01.5",
        "c_tstz" => "2000-01-02 00:00:00+00",
        "c_uuid" => "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "c_jsonb" => "{\"diagnosis\": \"a plaintext value in a json document\"}",
        "c_bytea" => "\\xdeadbeef",
        other => panic!("no plaintext for {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_cell_constraint_refuses_plaintext_and_accepts_the_proxys_cells() {
    let env = EncEnv::start(&columns());
    let mut secrets = Vec::new();
    let c = env.client().await;
    let up = direct(&env).await;

    // Through the proxy: CREATE TABLE and ALTER TABLE … ADD COLUMN get the constraint.
    c.batch_execute(
        "CREATE TABLE made (id int4 PRIMARY KEY, secret text NOT NULL, code int8);\
         CREATE INDEX made_secret_idx ON made (secret);\
         ALTER TABLE made ADD COLUMN extra text",
    )
    .await
    .unwrap();
    assert_eq!(
        constraints(&env, "made"),
        [
            ("pgseal_cell_code".to_owned(), true),
            ("pgseal_cell_extra".to_owned(), true),
            ("pgseal_cell_secret".to_owned(), true),
        ]
    );

    // Straight upstream, a table with plaintext types, converted with `schema`'s DDL.
    let cols: Vec<String> = CC
        .iter()
        .map(|(col, _, ty, _)| format!("{col} {ty}"))
        .collect();
    env.direct(&format!(
        "SET ROLE app; CREATE TABLE cc (id int4 PRIMARY KEY, {})",
        cols.join(", ")
    ));
    let (code, ddl) = tokio::task::block_in_place(|| proxy_cmd(&env, "schema"));
    assert_eq!(code, Some(0));
    for (col, _, ty, ix) in CC {
        // Byte 0 (16 with an equality index) is the format version 1, then at least the 32
        // other bytes of an envelope's overhead: `_` is any byte, `\\001` the escape of 1.
        let check = format!(
            "CHECK (\"{col}\" LIKE E'{}\\\\001{}%'::bytea)",
            "_".repeat(if *ix { 16 } else { 0 }),
            "_".repeat(32)
        );
        // Converted columns get it with the type change; a column already bytea (it may hold
        // values) NOT VALID, then validated.
        let expected = if *ty == "bytea" {
            format!(
                "ALTER TABLE \"public\".\"cc\" ADD CONSTRAINT \"pgseal_cell_{col}\" {check} NOT VALID;\n\
                 ALTER TABLE \"public\".\"cc\" VALIDATE CONSTRAINT \"pgseal_cell_{col}\";\n"
            )
        } else {
            format!(
                "ALTER TABLE \"public\".\"cc\" DROP CONSTRAINT IF EXISTS \"pgseal_cell_{col}\", \
                 ADD CONSTRAINT \"pgseal_cell_{col}\" {check};\n"
            )
        };
        assert!(ddl.contains(&expected), "{col}: {ddl}");
    }
    // The rewriter's constraints are the ones `schema` would create.
    for (col, _) in MADE {
        assert!(
            ddl.contains(&format!(
                "-- public.made.{col}: already bytea, indexed as configured and with its CHECK constraint"
            )),
            "{col}: {ddl}"
        );
    }
    env.direct(&format!("SET ROLE app; {ddl}"));
    assert_eq!(constraints(&env, "cc").len(), CC.len());
    tokio::task::block_in_place(|| assert_check_clean(&env));

    // Plaintext written past the proxy fails in the database, for every protected column.
    for (i, (col, _, _, _)) in CC.iter().enumerate() {
        let p = plaintext(col).replace('\'', "''");
        let sql = format!("INSERT INTO cc (id, {col}) VALUES ({}, '{p}')", 1000 + i);
        assert_eq!(direct_state(&up, &sql).await, "23514", "{sql}");
    }
    // (`secret` is NOT NULL: the other columns' rows give it a cell of the right shape, so
    // that the plaintext is what is refused.)
    let shaped = format!("decode('{}01{}', 'hex')", "00".repeat(16), "00".repeat(32));
    let long_plaintext = "'a plaintext long enough to fill a whole cell of pgseal'";
    for (i, (col, _)) in MADE.iter().enumerate() {
        let sql = if *col == "secret" {
            format!(
                "INSERT INTO made (id, secret) VALUES ({}, {long_plaintext})",
                1000 + i
            )
        } else {
            format!(
                "INSERT INTO made (id, secret, {col}) VALUES ({}, {shaped}, {long_plaintext})",
                1000 + i
            )
        };
        assert_eq!(direct_state(&up, &sql).await, "23514", "{sql}");
    }
    assert_eq!(
        direct_state(
            &up,
            &format!("INSERT INTO made (id, secret) VALUES (1100, {shaped})")
        )
        .await,
        "",
        "a cell of the right shape passes"
    );
    up.batch_execute("DELETE FROM made WHERE id = 1100")
        .await
        .unwrap();
    // The boundaries: the minimum length with the format version where the envelope starts
    // passes (the database cannot check more without keys), one byte less or another first
    // byte does not; an envelope without its blind index in an indexed column does not.
    for (col, hex, state) in [
        ("c_text", format!("01{}", "00".repeat(32)), ""),
        ("c_text", format!("01{}", "00".repeat(31)), "23514"),
        ("c_text", format!("02{}", "00".repeat(40)), "23514"),
        (
            "c_text_ix",
            format!("{}01{}", "00".repeat(16), "00".repeat(32)),
            "",
        ),
        (
            "c_text_ix",
            format!("{}01{}", "00".repeat(16), "00".repeat(31)),
            "23514",
        ),
        ("c_text_ix", format!("01{}", "00".repeat(48)), "23514"),
    ] {
        let sql = format!("INSERT INTO cc (id, {col}) VALUES (2000, decode('{hex}', 'hex'))");
        assert_eq!(direct_state(&up, &sql).await, state, "{sql}");
        up.batch_execute("DELETE FROM cc WHERE id = 2000")
            .await
            .unwrap();
    }

    // Through the proxy every logical type is accepted: literals (simple protocol), binary
    // parameters (extended), NULLs of both.
    let t = secret(&mut secrets, "ccText");
    let ti = secret(&mut secrets, "ccIndexed");
    let v = secret(&mut secrets, "ccVarchar");
    let j = secret(&mut secrets, "ccJson");
    let b = secret(&mut secrets, "ccBytea");
    let big: i64 = 7_305_811_922_604_117;
    let json = format!("{{\"k\": \"{j}\"}}");
    // (column, SQL literal, text output, binary value)
    let cases: Vec<(&str, String, String, Vec<u8>)> = vec![
        ("c_text", format!("'{t}'"), t.clone(), t.as_bytes().to_vec()),
        (
            "c_text_ix",
            format!("'{ti}'"),
            ti.clone(),
            ti.as_bytes().to_vec(),
        ),
        (
            "c_varchar",
            format!("'{v}'"),
            v.clone(),
            v.as_bytes().to_vec(),
        ),
        (
            "c_int2",
            "-12345".into(),
            "-12345".into(),
            (-12345i16).to_be_bytes().to_vec(),
        ),
        (
            "c_int4",
            "1234567890".into(),
            "1234567890".into(),
            1234567890i32.to_be_bytes().to_vec(),
        ),
        (
            "c_int8",
            big.to_string(),
            big.to_string(),
            big.to_be_bytes().to_vec(),
        ),
        ("c_bool", "true".into(), "t".into(), vec![1]),
        (
            "c_float8",
            "1234.5678".into(),
            "1234.5678".into(),
            1234.5678f64.to_be_bytes().to_vec(),
        ),
        (
            "c_numeric",
            "12345.678".into(),
            "12345.678".into(),
            vec![0, 3, 0, 1, 0, 0, 0, 3, 0, 1, 0x09, 0x29, 0x1a, 0x7c],
        ),
        (
            "c_date",
            "'2000-01-11'".into(),
            "2000-01-11".into(),
            10i32.to_be_bytes().to_vec(),
        ),
        (
            "c_ts",
            "'2000-01-01 00:00:01.5'".into(),
            "2000-01-01 00:00:01.5".into(),
            1_500_000i64.to_be_bytes().to_vec(),
        ),
        (
            "c_tstz",
            "'2000-01-02 00:00:00+00'".into(),
            "2000-01-02 00:00:00+00".into(),
            86_400_000_000i64.to_be_bytes().to_vec(),
        ),
        (
            "c_uuid",
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'".into(),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into(),
            support::hex_decode("a0eebc999c0b4ef8bb6d6bb9bd380a11"),
        ),
        ("c_jsonb", format!("'{json}'"), json.clone(), {
            let mut x = vec![1u8];
            x.extend_from_slice(json.as_bytes());
            x
        }),
        (
            "c_bytea",
            format!("'\\x{}'", support::hex_encode(b.as_bytes())),
            format!("\\x{}", support::hex_encode(b.as_bytes())),
            b.as_bytes().to_vec(),
        ),
    ];
    assert_eq!(cases.len(), CC.len());
    let col_list = cases.iter().map(|c| c.0).collect::<Vec<_>>().join(", ");
    let lits: Vec<&str> = cases.iter().map(|c| c.1.as_str()).collect();
    c.simple_query(&format!(
        "INSERT INTO cc (id, {col_list}) VALUES (1, {})",
        lits.join(", ")
    ))
    .await
    .unwrap();
    let placeholders: Vec<String> = (2..=cases.len() + 1).map(|i| format!("${i}")).collect();
    let insert = format!(
        "INSERT INTO cc (id, {col_list}) VALUES ($1, {})",
        placeholders.join(", ")
    );
    let raws: Vec<Raw> = cases.iter().map(|c| Raw(c.3.clone())).collect();
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&2i32];
    params.extend(raws.iter().map(|r| r as &(dyn ToSql + Sync)));
    c.execute(insert.as_str(), &params).await.unwrap();
    c.simple_query(&format!(
        "INSERT INTO cc (id, {col_list}) VALUES (3, {})",
        vec!["NULL"; cases.len()].join(", ")
    ))
    .await
    .unwrap();
    let none: Option<Raw> = None;
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&4i32];
    params.extend(std::iter::repeat_n(
        &none as &(dyn ToSql + Sync),
        cases.len(),
    ));
    c.execute(insert.as_str(), &params).await.unwrap();
    // An UPDATE through the proxy passes the constraint too.
    c.execute("UPDATE cc SET c_text_ix = $1 WHERE id = 3", &[&ti])
        .await
        .unwrap();
    for id in [1, 2] {
        let msgs = c
            .simple_query(&format!("SELECT {col_list} FROM cc WHERE id = {id}"))
            .await
            .unwrap();
        let Some(tokio_postgres::SimpleQueryMessage::Row(row)) = msgs
            .iter()
            .find(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        else {
            panic!("no row {id}");
        };
        for (i, case) in cases.iter().enumerate() {
            assert_eq!(row.get(i), Some(case.2.as_str()), "{} row {id}", case.0);
        }
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM cc WHERE c_text_ix = $1", &[&ti])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "rows 1, 2 and the updated 3 found by the blind index");
    let m = secret(&mut secrets, "madeSecret");
    let e = secret(&mut secrets, "madeExtra");
    c.execute(
        "INSERT INTO made (id, secret, code, extra) VALUES ($1, $2, $3, $4)",
        &[&1i32, &m, &big, &e],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO made (id, secret, code, extra) VALUES ($1, $2, NULL, NULL)",
        &[&2i32, &m],
    )
    .await
    .unwrap();
    let mut protected: Vec<(&str, &str, bool)> = CC
        .iter()
        .map(|(col, _, _, ix)| ("public.cc", *col, *ix))
        .collect();
    protected.extend(MADE.iter().map(|(col, ix)| ("public.made", *col, *ix)));
    env.assert_no_leak(&secrets, &["public.cc", "public.made"], &protected);

    // A missing constraint: `check` warns (exit 0), and the plaintext is stored now.
    env.direct("ALTER TABLE cc DROP CONSTRAINT pgseal_cell_c_text");
    let (code, stdout) = tokio::task::block_in_place(|| proxy_cmd(&env, "check"));
    assert_eq!(code, Some(0), "{stdout}");
    let l = lines_of(&stdout, "public.cc.c_text");
    assert_eq!(l.len(), 1, "{stdout}");
    assert!(
        l[0].starts_with(
            "warning: public.cc.c_text: no CHECK constraint \"pgseal_cell_c_text\" on stored cells"
        ),
        "{stdout}"
    );
    assert_eq!(
        direct_state(
            &up,
            "INSERT INTO cc (id, c_text) VALUES (3000, 'alice@example.com')"
        )
        .await,
        "",
        "without the constraint the plaintext is stored"
    );
    // `schema` adds it NOT VALID, then validates: the validation fails while the plaintext is
    // there (and `check` says the constraint is not validated), and passes once it is gone.
    let (_, ddl) = tokio::task::block_in_place(|| proxy_cmd(&env, "schema"));
    let fix: Vec<&str> = ddl.lines().filter(|l| !l.starts_with("--")).collect();
    assert_eq!(fix.len(), 2, "{ddl}");
    assert!(
        fix[0].ends_with(" NOT VALID;")
            && fix[1].contains("VALIDATE CONSTRAINT \"pgseal_cell_c_text\""),
        "{ddl}"
    );
    assert_eq!(direct_state(&up, fix[0]).await, "");
    assert_eq!(direct_state(&up, fix[1]).await, "23514");
    let (code, stdout) = tokio::task::block_in_place(|| proxy_cmd(&env, "check"));
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        lines_of(&stdout, "public.cc.c_text")[0]
            .starts_with("warning: public.cc.c_text: CHECK constraint \"pgseal_cell_c_text\" on stored cells is NOT VALID"),
        "{stdout}"
    );
    // NOT VALID still refuses new plaintext.
    assert_eq!(
        direct_state(
            &up,
            "INSERT INTO cc (id, c_text) VALUES (3001, 'bob@example.com')"
        )
        .await,
        "23514"
    );
    up.batch_execute("DELETE FROM cc WHERE id = 3000")
        .await
        .unwrap();
    assert_eq!(direct_state(&up, fix[1]).await, "");
    tokio::task::block_in_place(|| assert_check_clean(&env));

    // A constraint of pgseal's name with another definition (here: as if c_int8 had no
    // index) is an error; `schema` replaces it.
    env.direct(
        "ALTER TABLE cc DROP CONSTRAINT pgseal_cell_c_int8, ADD CONSTRAINT pgseal_cell_c_int8 \
         CHECK (c_int8 LIKE E'\\\\001________________________________%'::bytea) NOT VALID",
    );
    let (code, stdout) = tokio::task::block_in_place(|| proxy_cmd(&env, "check"));
    assert_eq!(code, Some(1), "{stdout}");
    let l = lines_of(&stdout, "public.cc.c_int8");
    assert_eq!(l.len(), 1, "{stdout}");
    assert!(
        l[0].starts_with("error: public.cc.c_int8: CHECK constraint \"pgseal_cell_c_int8\" is not the stored-cell check"),
        "{stdout}"
    );
    let (_, ddl) = tokio::task::block_in_place(|| proxy_cmd(&env, "schema"));
    let fix: Vec<&str> = ddl.lines().filter(|l| !l.starts_with("--")).collect();
    assert_eq!(fix.len(), 3, "{ddl}");
    assert!(
        fix[0].contains("DROP CONSTRAINT \"pgseal_cell_c_int8\""),
        "{ddl}"
    );
    for l in fix {
        assert_eq!(direct_state(&up, l).await, "", "{l}");
    }
    tokio::task::block_in_place(|| assert_check_clean(&env));
    assert_eq!(
        direct_state(
            &up,
            &format!(
                "INSERT INTO cc (id, c_int8) VALUES (3002, '{}')",
                plaintext("c_int8")
            )
        )
        .await,
        "23514"
    );
}
