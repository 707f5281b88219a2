//! `timestamptz` on protected columns follows the session's `TimeZone` exactly as PostgreSQL
//! does: a literal or text parameter without an offset is local time (daylight-saving gaps and
//! folds resolved like PostgreSQL), text results are local time with the offset, whatever the
//! zone (IANA names, POSIX strings, `SET TIME ZONE -7`, the start-up `options`).
//!
//! Every check compares a protected column with a plaintext `timestamptz` column written with
//! the same input in the same statement: PostgreSQL itself is the oracle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::error::Error;
use std::process::Command;

use support::keyserver::ColumnSpec;
use support::{check_cell, ok, run_with_input, EncEnv};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::SimpleQueryMessage;

const KR: &str = "tzring";

/// Inputs around the interesting cases: DST gap and fold in Europe, local mean time, BC,
/// explicit offsets, infinity.
const INPUTS: &[&str] = &[
    "2024-03-31 02:30",
    "2024-10-27 02:30",
    "2024-03-10 02:30",
    "2024-11-03 01:30",
    "2024-07-01 12:00:00.123456",
    "1850-01-01 00:00",
    "2024-01-01 12:00+05:30",
    "0044-03-15 12:00 BC",
    "infinity",
];

/// `SET` statements for the zones under test.
const ZONES: &[&str] = &[
    "SET TimeZone = 'Europe/Berlin'",
    "SET TimeZone = 'America/New_York'",
    "SET TimeZone = 'Asia/Kolkata'",
    "SET TimeZone = 'Australia/Lord_Howe'",
    "SET TimeZone = 'UTC+3'",
    "SET TIME ZONE -7",
    "SET TimeZone = 'UTC'",
];

/// A binary result value, whatever its type.
#[derive(Debug, PartialEq)]
struct RawOut(Vec<u8>);

impl<'a> FromSql<'a> for RawOut {
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(RawOut(raw.to_vec()))
    }
    fn accepts(_ty: &Type) -> bool {
        true
    }
}

async fn rows(c: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

fn env() -> EncEnv {
    EncEnv::start(&[
        ColumnSpec::new("public.tz.p", "timestamptz", KR),
        ColumnSpec::new("public.tz.pi", "timestamptz", KR).indexed(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literals_results_and_lookups_follow_the_session_time_zone() {
    let env = env();
    let c = env.client().await;
    c.batch_execute(
        "CREATE TABLE tz (id int4 PRIMARY KEY, zone text, input text, p timestamptz, q timestamptz, pi timestamptz); \
         CREATE INDEX ON tz (pi)",
    )
    .await
    .unwrap();
    let mut id = 0;
    for set in ZONES {
        c.batch_execute(set).await.unwrap();
        for input in INPUTS {
            id += 1;
            // Literals (simple protocol): the same text into the protected and the plain columns.
            c.batch_execute(&format!(
                "INSERT INTO tz (id, zone, input, p, q, pi) VALUES ({id}, '{}', '{input}', '{input}', '{input}', '{input}')",
                set.replace('\'', "")
            ))
            .await
            .unwrap();
        }
        // Text results in this zone, for every row written so far (in any zone).
        for r in rows(&c, "SELECT id, zone, input, p, q, pi FROM tz ORDER BY id").await {
            assert_eq!(
                r[3], r[4],
                "{set}: protected p vs plain q for {:?} written under {:?}",
                r[2], r[1]
            );
            assert_eq!(
                r[5], r[4],
                "{set}: protected pi vs plain q for {:?} written under {:?}",
                r[2], r[1]
            );
        }
        // Equality lookups with a local-time literal find exactly the rows PostgreSQL finds.
        for input in INPUTS {
            let want = rows(
                &c,
                &format!("SELECT id FROM tz WHERE q = '{input}' ORDER BY id"),
            )
            .await;
            let got = rows(
                &c,
                &format!("SELECT id FROM tz WHERE pi = '{input}' ORDER BY id"),
            )
            .await;
            assert_eq!(got, want, "{set}: lookup of {input}");
            assert!(!want.is_empty());
        }
    }
    // Binary results are instants and do not depend on the zone.
    for r in c.query("SELECT p, q, pi FROM tz", &[]).await.unwrap() {
        let (p, q, pi): (RawOut, RawOut, RawOut) = (r.get(0), r.get(1), r.get(2));
        assert_eq!(p, q);
        assert_eq!(pi, q);
    }
    for cell in env.stored_cells("public.tz", "p") {
        check_cell(&cell, false).unwrap();
    }
    for cell in env.stored_cells("public.tz", "pi") {
        check_cell(&cell, true).unwrap();
    }

    // The zone given at start-up (options=-c TimeZone=…) is followed from the first statement.
    let conn = format!("{} options='-c TimeZone=Asia/Kathmandu'", env.conn_str());
    let k = support::connect(&conn).await;
    let r = &rows(&k, "SELECT p, q FROM tz WHERE id = 5").await[0];
    assert!(r[1].as_deref().unwrap().ends_with("+05:45"), "{r:?}");
    assert_eq!(r[0], r[1]);
    k.batch_execute(
        "INSERT INTO tz (id, p, q) VALUES (1000, '2024-07-01 12:00', '2024-07-01 12:00')",
    )
    .await
    .unwrap();
    let r = &rows(&c, "SELECT p, q FROM tz WHERE id = 1000").await[0];
    assert_eq!(r[0], r[1]);
}

/// Text-format parameters and text results in the extended protocol (psycopg 3, server-side
/// prepared statements, timestamptz loaded as raw text).
#[test]
fn text_parameters_follow_the_session_time_zone() {
    let env = env();
    let script = r#"
import sys, psycopg
from psycopg.types.string import TextLoader
inputs = sys.argv[2:]
with psycopg.connect(sys.argv[1], prepare_threshold=0, autocommit=True) as conn:
    conn.adapters.register_loader("timestamptz", TextLoader)
    conn.execute("CREATE TABLE tz (id int4 PRIMARY KEY, p timestamptz, q timestamptz, pi timestamptz)")
    n = 0
    for zone in ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]:
        conn.execute("SELECT set_config('TimeZone', %s, false)", (zone,))
        for s in inputs:
            n += 1
            conn.execute("INSERT INTO tz (id, p, q, pi) VALUES (%s, %s, %s, %s)", (n, s, s, s))
        for (i, p, q, pi) in conn.execute("SELECT id, p, q, pi FROM tz ORDER BY id"):
            assert p == q == pi, (zone, i, p, q, pi)
        for s in inputs:
            want = [r[0] for r in conn.execute("SELECT id FROM tz WHERE q = %s ORDER BY id", (s,))]
            got = [r[0] for r in conn.execute("SELECT id FROM tz WHERE pi = %s ORDER BY id", (s,))]
            assert got == want and want, (zone, s, got, want)
print("timezone ok")
"#;
    let out = run_with_input(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(env.conn_str())
            .args(INPUTS),
        None,
    );
    assert!(ok(&out).contains("timezone ok"));
}
