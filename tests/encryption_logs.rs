//! No SQL text, bind value or literal in the proxy's log, whatever `PGSEAL_LOG` asks for: two
//! `pgseal-proxy serve` processes in front of one PostgreSQL, one with `PGSEAL_LOG=trace`, one
//! with `PGSEAL_LOG=sqlparser=trace,trace` (sqlparser logs the statement it parses, and its
//! tokens, at debug), run statements carrying distinctive markers: on protected tables (simple
//! and extended protocol, literals and bind values), refused ones, and on a plain table in an
//! encrypting session. No marker may appear in either proxy's log, as text or hex.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use support::keyserver::ColumnSpec;
use support::{hex_encode, secret, sqlstate, EncEnv};

const KR: &str = "logs";

fn columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec::new("public.lg.secret", "text", KR).indexed(),
        ColumnSpec::new("public.lg.note", "text", KR),
        ColumnSpec::new("public.lg.n", "int8", KR).indexed(),
    ]
}

/// A distinctive int8 (16+ digits), recorded as text in `markers`.
fn number(markers: &mut Vec<String>, base: i64) -> i64 {
    let n = 7_305_811_922_604_117 + base * 1_000_003 + i64::from(std::process::id());
    markers.push(n.to_string());
    n
}

/// The statements of the test through the proxy at `port` (ids from `id0`). `protected`
/// collects the markers that must not reach PostgreSQL either, `plain` the ones that go to
/// it on purpose (plain table).
async fn workload(port: u16, id0: i32, protected: &mut Vec<String>, plain: &mut Vec<String>) {
    let c = support::app_client_at(port).await;
    // Simple protocol on the protected table: literals in INSERT, WHERE, UPDATE.
    let (s1, n1, s2) = (
        secret(protected, "logLitSecret"),
        secret(protected, "logLitNote"),
        secret(protected, "logLitUpdate"),
    );
    let k1 = number(protected, i64::from(id0));
    c.simple_query(&format!(
        "INSERT INTO lg (id, secret, note, n) VALUES ({id0}, '{s1}', '{n1}', {k1})"
    ))
    .await
    .unwrap();
    c.simple_query(&format!(
        "UPDATE lg SET note = '{s2}' WHERE secret = '{s1}' AND n = {k1}"
    ))
    .await
    .unwrap();
    let rows = c
        .simple_query(&format!("SELECT note FROM lg WHERE secret = '{s1}'"))
        .await
        .unwrap();
    let got: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(got, std::slice::from_ref(&s2));

    // Extended protocol: bind values.
    let (s3, n3) = (
        secret(protected, "logBindSecret"),
        secret(protected, "logBindNote"),
    );
    let k3 = number(protected, i64::from(id0) + 1);
    c.execute(
        "INSERT INTO lg (id, secret, note, n) VALUES ($1, $2, $3, $4)",
        &[&(id0 + 1), &s3, &n3, &k3],
    )
    .await
    .unwrap();
    let row = c
        .query_one(
            "SELECT note, n FROM lg WHERE secret = $1 AND n = $2",
            &[&s3, &k3],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), n3);

    // Refused statements (equality on a column without index), with a literal and with a
    // bind value, simple and extended.
    let r1 = secret(protected, "logRefusedLit");
    let e = c
        .simple_query(&format!("SELECT id FROM lg WHERE note = '{r1}'"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{e:?}");
    let r2 = secret(protected, "logRefusedExt");
    let e = c
        .query(
            &format!("SELECT id FROM lg WHERE note = '{r2}' AND id = $1"),
            &[&1i32],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{e:?}");

    // A plain table in the same (encrypting) session: these values go to PostgreSQL as they
    // are, but not into the proxy's log.
    let (p1, p2, p3) = (
        secret(plain, "logPlainLit"),
        secret(plain, "logPlainBind"),
        secret(plain, "logPlainErr"),
    );
    c.simple_query(&format!(
        "INSERT INTO plain_t (id, v) VALUES ({id0}, '{p1}')"
    ))
    .await
    .unwrap();
    c.execute(
        "INSERT INTO plain_t (id, v) VALUES ($1, $2)",
        &[&(id0 + 1), &p2],
    )
    .await
    .unwrap();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM plain_t WHERE v = $1 OR v = $2",
            &[&p1, &p2],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    // An error from the server about a statement carrying a value.
    let e = c
        .simple_query(&format!("SELECT '{p3}'::int4 FROM plain_t"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22P02", "{e:?}");
}

/// Panics if any of `markers` is in `log`, as text or hex (any case).
fn assert_not_in_log(what: &str, log: &str, markers: &[String]) {
    let lower = log.to_lowercase();
    for m in markers {
        assert!(
            !lower.contains(&m.to_lowercase()),
            "{m:?} found in the log of the {what}:\n{log}"
        );
        assert!(
            !lower.contains(&hex_encode(m.as_bytes())),
            "hex of {m:?} found in the log of the {what}:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sql_text_or_value_in_the_proxy_log_at_trace() {
    let env = EncEnv::start_with(&columns(), 300, "trace");
    let second = env.second_proxy("sqlparser=trace,trace");
    env.client()
        .await
        .batch_execute(
            "CREATE TABLE lg (id int4 PRIMARY KEY, secret text, note text, n int8);\
             CREATE INDEX lg_secret_idx ON lg (secret);\
             CREATE INDEX lg_n_idx ON lg (n);\
             CREATE TABLE plain_t (id int4 PRIMARY KEY, v text)",
        )
        .await
        .unwrap();
    let (mut protected, mut plain) = (Vec::new(), Vec::new());
    workload(env.proxy.port, 10, &mut protected, &mut plain).await;
    workload(second.port, 20, &mut protected, &mut plain).await;

    let all: Vec<String> = protected.iter().chain(&plain).cloned().collect();
    for (what, log) in [
        ("proxy with PGSEAL_LOG=trace", env.proxy.log()),
        ("proxy with PGSEAL_LOG=sqlparser=trace,trace", second.log()),
    ] {
        // The level took effect (pgseal's own debug lines are there), so the absence of the
        // markers means something.
        assert!(
            log.contains("DEBUG") && log.contains("session started"),
            "the {what} did not log at debug:\n{log}"
        );
        assert_not_in_log(what, &log, &all);
    }
    env.assert_no_leak(
        &protected,
        &["public.lg"],
        &[
            ("public.lg", "secret", true),
            ("public.lg", "note", false),
            ("public.lg", "n", true),
        ],
    );
}
