//! Point lookups through prepared statements across key rotations, end to end (real
//! PostgreSQL 15, keyserver and `pgseal-proxy serve`): the proxy renders `col = $1` as a scalar
//! comparison per live blind-index key; the blind index comes from the keyring's index lineage
//! (docs/format.md §2.4), so a data-key rotation does not change it and a statement prepared
//! before a rotation keeps its single comparison and finds rows of every version; and
//! PostgreSQL's plan cache must settle on a generic plan for the lookup.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::time::{Duration, Instant};

use support::keyserver::ColumnSpec;
use support::{check_cell, secret, EncEnv};

const KR: &str = "lookupring";

/// Polls `f` (bounded) until it returns true.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_prepared_before_a_rotation_finds_rows_of_every_version() {
    let env = EncEnv::start(&[ColumnSpec::new("public.lk.v", "text", KR).indexed()]);
    let mut s = Vec::new();
    let c = env.client().await;
    c.batch_execute("CREATE TABLE lk (id int4 PRIMARY KEY, v text); CREATE INDEX ON lk (v)")
        .await
        .unwrap();
    // Named server-side statements, prepared while the keyring has one version.
    let insert = c
        .prepare("INSERT INTO lk (id, v) VALUES ($1, $2)")
        .await
        .unwrap();
    let lookup = c
        .prepare("SELECT id, v FROM lk WHERE v = $1")
        .await
        .unwrap();
    let not_equal = c
        .prepare("SELECT count(*) FROM lk WHERE v <> $1")
        .await
        .unwrap();
    // Enough rows that an index scan matters to the planner.
    let mut id = 0i32;
    for _ in 0..300 {
        c.execute(&insert, &[&id, &secret(&mut s, "lkfill")])
            .await
            .unwrap();
        id += 1;
    }
    let old = secret(&mut s, "lkold");
    c.execute(&insert, &[&id, &old]).await.unwrap();
    let old_id = id;
    id += 1;
    c.batch_execute("ANALYZE lk").await.unwrap();
    // A lookup; `Err` only for the refusal a lookup may meet while a version is being disabled
    // (see below), any other error fails the test with the proxy's log.
    let try_find = |v: String| {
        let c = &c;
        let lookup = &lookup;
        let env = &env;
        async move {
            match c.query(lookup, &[&v]).await {
                Ok(rows) => Ok(rows
                    .iter()
                    .map(|r| (r.get::<_, i32>(0), r.get::<_, String>(1)))
                    .collect::<Vec<_>>()),
                Err(e) => {
                    let db = e.as_db_error();
                    match db {
                        Some(d)
                            if d.code().code() == "58000"
                                && d.message().contains("key version 1 of keyring") =>
                        {
                            Err(d.message().to_owned())
                        }
                        _ => panic!("lookup failed: {e:?}\nproxy log:\n{}", env.proxy.log()),
                    }
                }
            }
        }
    };
    let find = |v: String| {
        let f = try_find(v);
        async move { f.await.unwrap_or_else(|e| panic!("lookup refused: {e}")) }
    };
    for _ in 0..8 {
        assert_eq!(find(old.clone()).await, vec![(old_id, old.clone())]);
    }
    // PostgreSQL's plan cache settles on a generic plan for the scalar lookup (the former
    // `= ANY($1::bytea[])` kept it re-planning every execution).
    let all: Vec<String> = c
        .query("SELECT statement FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plans = c
        .query_opt(
            "SELECT generic_plans, custom_plans, name FROM pg_prepared_statements \
             WHERE statement LIKE '%SUBSTRING(v FROM 1 FOR 16) = $1::bytea%' \
             AND statement NOT LIKE '%pg_prepared_statements%'",
            &[],
        )
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("lookup statement not found among {all:?}"));
    let (generic, custom): (i64, i64) = (plans.get(0), plans.get(1));
    let name: String = plans.get(2);
    assert!(
        generic >= 1 && custom <= 5,
        "lookup plans: {generic} generic, {custom} custom"
    );
    // The plan PostgreSQL now uses (EXPLAIN EXECUTE in the same session, with the stored tag
    // of the row): the generic plan (`$1` in the condition), and an index scan on the
    // blind-index expression. (With `= ANY($1::bytea[])` the generic plan estimates 10 rows and
    // is a sequential scan at this size; at 20,000 rows PostgreSQL keeps custom plans.)
    let tag = env.direct(&format!(
        "SELECT encode(substring(v from 1 for 16), 'hex') FROM lk WHERE id = {old_id}"
    ));
    let explain: Vec<String> = c
        .simple_query(&format!("EXPLAIN EXECUTE {name}('\\x{tag}'::bytea)"))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    let explain = explain.join("\n");
    assert!(
        explain.contains("Index Scan") && explain.contains("= $1)"),
        "{explain}"
    );

    // Rotation: version 2 becomes active; wait until new writes use it.
    let v = tokio::task::block_in_place(|| env.ks.rotate(KR));
    assert_eq!(v, 2);
    let mut new = String::new();
    let mut new_id = 0;
    eventually("new writes use key version 2", || {
        new = secret(&mut s, "lknew");
        new_id = id;
        id += 1;
        let (c, insert, env, val, this_id) = (&c, &insert, &env, new.clone(), new_id);
        async move {
            c.execute(insert, &[&this_id, &val]).await.unwrap();
            let cell = env.direct(&format!(
                "SELECT encode(v, 'hex') FROM lk WHERE id = {this_id}"
            ));
            check_cell(&support::hex_decode(&cell), true).unwrap() == 2
        }
    })
    .await;
    // The statement prepared before the rotation finds rows of both versions.
    assert_eq!(find(old.clone()).await, vec![(old_id, old.clone())]);
    assert_eq!(find(new.clone()).await, vec![(new_id, new.clone())]);
    let total: i64 = c
        .query_one("SELECT count(*) FROM lk", &[])
        .await
        .unwrap()
        .get(0);
    let others: i64 = c.query_one(&not_equal, &[&old]).await.unwrap().get(0);
    assert_eq!(others, total - 1, "<> excludes the version-1 row");
    // … through the same single-tag statement (a data-key rotation does not change the blind
    // index), still on its generic plan; no lookup searches two tags.
    for _ in 0..8 {
        assert_eq!(find(new.clone()).await.len(), 1);
    }
    let generic: i64 = c
        .query_one(
            &format!("SELECT generic_plans FROM pg_prepared_statements WHERE name = '{name}'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        generic >= 9,
        "lookup after the rotation: {generic} generic plans"
    );
    let two_tags: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_prepared_statements \
             WHERE statement LIKE '%SUBSTRING(v FROM 1 FOR 16) IN ($1::bytea, $2::bytea)%' \
             AND statement NOT LIKE '%pg_prepared_statements%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(two_tags, 0, "a lookup was re-prepared for two tags");

    // Version 1 disabled: its row is still found by its blind index (the index does not
    // depend on the version), and opening it is refused (fail closed, 58000, naming the
    // version); enabled again: it reads again, through the same statement.
    tokio::task::block_in_place(|| env.ks.disable(KR, 1));
    eventually("reading the version-1 row is refused", || {
        let f = try_find(old.clone());
        async move { f.await.is_err() }
    })
    .await;
    for _ in 0..5 {
        assert!(
            try_find(old.clone()).await.is_err(),
            "a version-1 row read while version 1 is disabled"
        );
    }
    assert_eq!(find(new.clone()).await, vec![(new_id, new.clone())]);
    tokio::task::block_in_place(|| env.ks.enable(KR, 1));
    eventually("the version-1 row is found again", || {
        // Refused until the proxy has seen the change (it follows the keyserver's feed).
        let f = try_find(old.clone());
        async move { f.await.is_ok_and(|rows| rows.len() == 1) }
    })
    .await;
    assert_eq!(find(new.clone()).await, vec![(new_id, new.clone())]);

    env.assert_no_leak(&s, &["public.lk"], &[("public.lk", "v", true)]);
}

/// The columns of a DataRow body in text format.
fn data_row(body: &[u8]) -> Vec<Option<String>> {
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    (0..n)
        .map(|_| {
            let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
            at += 4;
            (len >= 0).then(|| {
                let v = String::from_utf8_lossy(&body[at..at + len as usize]).into_owned();
                at += len as usize;
                v
            })
        })
        .collect()
}

/// A portal left suspended (Execute with a row limit, inside a transaction block) keeps its
/// remaining rows across a data-key rotation, and a second portal of its statement bound after
/// the rotation finds every row through the same single-tag statement. (When the set of
/// blind-index keys does change — legacy tags, a future index-key rotation — the proxy
/// re-prepares with a hidden Close and Parse and keeps the portal's result plan; the unit tests
/// in proxy/src/encrypt/tests.rs cover that path.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_suspended_across_a_rotation_keeps_its_rows() {
    use support::raw::{bind, cstr, execute, named, parse, Raw};
    let env = EncEnv::start(&[ColumnSpec::new("public.sp.v", "text", KR).indexed()]);
    let mut s = Vec::new();
    let c = env.client().await;
    c.batch_execute("CREATE TABLE sp (id int4 PRIMARY KEY, v text); CREATE INDEX ON sp (v)")
        .await
        .unwrap();
    let same = secret(&mut s, "spsame");
    for id in 1..=3i32 {
        c.execute("INSERT INTO sp (id, v) VALUES ($1, $2)", &[&id, &same])
            .await
            .unwrap();
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], env.proxy.port));
    let mut r = Raw::login(
        addr,
        support::APP_USER,
        support::APP_PASSWORD,
        support::ENC_DB,
    )
    .await;
    r.send_msg(b'Q', &cstr("BEGIN")).await;
    r.until(b'Z').await;
    let lookup = "SELECT id, v FROM sp WHERE v = $1 ORDER BY id";
    r.send_msg(b'P', &parse("S", lookup)).await;
    r.send_msg(b'B', &bind("P", "S", &[Some(&same)])).await;
    r.send_msg(b'D', &named(b'P', "P")).await;
    r.send_msg(b'E', &execute("P", 1)).await;
    r.send_msg(b'S', &[]).await;
    let got = r.until(b'Z').await;
    let tags: String = got.iter().map(|m| m.tag as char).collect();
    assert_eq!(tags, "12TDsZ", "{got:?}");
    assert_eq!(
        data_row(&got[3].body),
        vec![Some("1".into()), Some(same.clone())]
    );

    let v = tokio::task::block_in_place(|| env.ks.rotate(KR));
    assert_eq!(v, 2);
    let mut id = 100;
    eventually("new writes use key version 2", || {
        id += 1;
        let (c, env, val, this_id) = (&c, &env, secret(&mut s, "spnew"), id);
        async move {
            c.execute("INSERT INTO sp (id, v) VALUES ($1, $2)", &[&this_id, &val])
                .await
                .unwrap();
            let cell = env.direct(&format!(
                "SELECT encode(v, 'hex') FROM sp WHERE id = {this_id}"
            ));
            check_cell(&support::hex_decode(&cell), true).unwrap() == 2
        }
    })
    .await;

    // A second portal on the same statement, after the rotation: it finds all three rows (the
    // blind index did not change with the data-key version).
    r.send_msg(b'B', &bind("P2", "S", &[Some(&same)])).await;
    r.send_msg(b'E', &execute("P2", 0)).await;
    r.send_msg(b'S', &[]).await;
    let got = r.until(b'Z').await;
    let tags: String = got.iter().map(|m| m.tag as char).collect();
    assert_eq!(tags, "2DDDCZ", "{got:?}\nproxy log:\n{}", env.proxy.log());
    // The statement still searches one tag upstream.
    r.send_msg(
        b'Q',
        &cstr("SELECT count(*) FROM pg_prepared_statements WHERE name = 'S' AND statement LIKE '%= $1::bytea%'"),
    )
    .await;
    let got = r.until(b'Z').await;
    let counted: Vec<_> = got.iter().filter(|m| m.tag == b'D').collect();
    assert_eq!(
        data_row(&counted[0].body),
        vec![Some("1".into())],
        "{got:?}"
    );
    // The first portal goes on where it stopped.
    r.send_msg(b'E', &execute("P", 0)).await;
    r.send_msg(b'S', &[]).await;
    let got = r.until(b'Z').await;
    let tags: String = got.iter().map(|m| m.tag as char).collect();
    assert_eq!(tags, "DDCZ", "{got:?}\nproxy log:\n{}", env.proxy.log());
    let rows: Vec<_> = got
        .iter()
        .filter(|m| m.tag == b'D')
        .map(|m| data_row(&m.body))
        .collect();
    assert_eq!(
        rows,
        vec![
            vec![Some("2".into()), Some(same.clone())],
            vec![Some("3".into()), Some(same.clone())],
        ]
    );
    r.send_msg(b'Q', &cstr("COMMIT")).await;
    r.until(b'Z').await;
    env.assert_no_leak(&s, &["public.sp"], &[("public.sp", "v", true)]);
}
