//! Partitions, inheritance children and views of protected tables, end to end: a real
//! PostgreSQL 15 (statement logging on), a real keyserver and `pgseal-proxy serve`.
//!
//! Descendants (partitions, sub-partitions, `INHERITS` children, tables built separately and
//! attached) are created through the proxy and directly upstream, before a proxy starts and
//! while it runs. Statements naming a descendant must encrypt, use the blind index and decrypt
//! exactly as through the root table; views and materialized views over a protected table are
//! refused by name and their values are never handed over as data. Every test ends with a leak
//! scan (server log, proxy logs, table contents) and checks that every stored cell is a pgseal
//! cell.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::sync::OnceLock;

use support::keyserver::ColumnSpec;
use support::{db_message, secret, sqlstate, EncEnv};

const KR: &str = "inherit";

fn columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec::new("public.pt.email", "text", KR).indexed(),
        ColumnSpec::new("public.pt.note", "text", KR),
        ColumnSpec::new("public.inh.secret", "text", KR).indexed(),
        ColumnSpec::new("public.vt.email", "text", KR).indexed(),
    ]
}

fn env() -> &'static EncEnv {
    static ENV: OnceLock<EncEnv> = OnceLock::new();
    ENV.get_or_init(|| EncEnv::start(&columns()))
}

/// DDL straight to PostgreSQL as the application's role (so the proxy's user owns the tables).
fn upstream_ddl(env: &EncEnv, sql: &str) {
    env.direct(&format!("SET ROLE app; {sql}"));
}

/// `(id, email, note)` of `sql`'s rows through the proxy (extended protocol), ordered by id.
async fn rows(
    c: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<(i32, Option<String>, Option<String>)> {
    let mut v: Vec<_> = c
        .query(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    v.sort();
    v
}

/// The first row of a simple-protocol query, as text.
async fn simple_rows(c: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

/// A partitioned protected table created through the proxy; partitions created through the
/// proxy, directly upstream before a proxy started (one built separately with a dropped column
/// and attached, so its attnums differ; a sub-partitioned one) and directly upstream while the
/// proxies run. Writes through the parent and through partitions, lookups, UPDATE and DELETE
/// through partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_encrypt_and_decrypt_as_the_root() {
    let env = env();
    let mut s = Vec::new();
    let c = env.client().await;
    c.batch_execute(
        "CREATE TABLE pt (id int4 NOT NULL, email text, note text) PARTITION BY RANGE (id);\
         CREATE INDEX pt_email_idx ON pt (email);\
         CREATE TABLE pt_1 PARTITION OF pt FOR VALUES FROM (0) TO (100)",
    )
    .await
    .unwrap();
    // Straight upstream, the running proxy does not know these yet. A table attached as a
    // partition must have the parent's CHECK constraints (PostgreSQL's rule), pgseal's
    // stored-cell constraints included.
    upstream_ddl(
        env,
        "CREATE TABLE pt_2 (dropme int, \
           note bytea CONSTRAINT pgseal_cell_note CHECK (note LIKE E'\\\\001________________________________%'::bytea), \
           email bytea CONSTRAINT pgseal_cell_email CHECK (email LIKE E'________________\\\\001________________________________%'::bytea), \
           id int4 NOT NULL);\
         ALTER TABLE pt_2 DROP COLUMN dropme;\
         ALTER TABLE pt ATTACH PARTITION pt_2 FOR VALUES FROM (100) TO (200);\
         CREATE TABLE pt_4 PARTITION OF pt FOR VALUES FROM (300) TO (400) PARTITION BY LIST (id);\
         CREATE TABLE pt_4a PARTITION OF pt_4 FOR VALUES IN (301, 302, 303)",
    );
    assert_ne!(
        env.direct("SELECT attnum FROM pg_attribute WHERE attrelid = 'pt_2'::regclass AND attname = 'email'"),
        env.direct("SELECT attnum FROM pg_attribute WHERE attrelid = 'pt'::regclass AND attname = 'email'"),
        "the attached partition's attnums must differ from the root's"
    );
    // A proxy started now loads the descendants with its first catalog.
    let p2 = env.second_proxy("info");
    let c2 = support::app_client_at(p2.port).await;

    // Writes through the parent (PostgreSQL routes them) and through each partition.
    let e: Vec<String> = (0..10)
        .map(|i| secret(&mut s, &format!("ptMail{i}")))
        .collect();
    let n: Vec<String> = (0..10)
        .map(|i| secret(&mut s, &format!("ptNote{i}")))
        .collect();
    c2.execute(
        "INSERT INTO pt (id, email, note) VALUES (1, $1, $2), (101, $3, $4), (301, $5, $6)",
        &[&e[0], &n[0], &e[1], &n[1], &e[2], &n[2]],
    )
    .await
    .unwrap();
    c2.execute(
        "INSERT INTO pt_2 (id, email, note) VALUES ($1, $2, $3)",
        &[&102i32, &e[3], &n[3]],
    )
    .await
    .unwrap();
    c2.batch_execute(&format!(
        "INSERT INTO pt_2 (id, email, note) VALUES (103, '{}', '{}');\
         INSERT INTO public.pt_4a (id, email, note) VALUES (302, '{}', '{}');\
         INSERT INTO pt_1 (id, email, note) VALUES (2, '{}', '{}')",
        e[4], n[4], e[5], n[5], e[6], n[6]
    ))
    .await
    .unwrap();
    // The proxy that started before pt_2 existed finds it before writing through it.
    c.execute(
        "INSERT INTO pt_2 (id, email, note) VALUES ($1, $2, $3)",
        &[&104i32, &e[7], &n[7]],
    )
    .await
    .unwrap();

    // Reads through the parent and through the partitions: plaintext, whoever wrote it.
    let all = rows(&c2, "SELECT id, email, note FROM pt", &[]).await;
    let ids: Vec<i32> = all.iter().map(|r| r.0).collect();
    assert_eq!(ids, [1, 2, 101, 102, 103, 104, 301, 302]);
    assert_eq!(all[2], (101, Some(e[1].clone()), Some(n[1].clone())));
    assert_eq!(all[5], (104, Some(e[7].clone()), Some(n[7].clone())));
    for cl in [&c, &c2] {
        assert_eq!(
            rows(cl, "SELECT id, email, note FROM pt_2 WHERE id = 102", &[]).await,
            [(102, Some(e[3].clone()), Some(n[3].clone()))]
        );
        let t = simple_rows(cl, "SELECT id, email, note FROM pt_4a WHERE id = 301").await;
        assert_eq!(t.len(), 1);
        assert_eq!(t[0][1].as_deref(), Some(e[2].as_str()));
        assert_eq!(t[0][2].as_deref(), Some(n[2].as_str()));
    }
    // Lookups through both names, literal and parameter.
    assert_eq!(
        rows(
            &c2,
            "SELECT id, email, note FROM pt WHERE email = $1",
            &[&e[4]]
        )
        .await[0]
            .0,
        103
    );
    let t = simple_rows(
        &c2,
        &format!("SELECT id, email, note FROM pt_2 WHERE email = '{}'", e[1]),
    )
    .await;
    assert_eq!(t.len(), 1);
    assert_eq!(t[0][0].as_deref(), Some("101"));
    assert_eq!(
        rows(
            &c,
            "SELECT id, email, note FROM pt_2 WHERE email IN ($1, $2)",
            &[&e[3], &e[7]]
        )
        .await
        .len(),
        2
    );
    // A partition's rows are not found under another partition's name.
    assert!(rows(
        &c2,
        "SELECT id, email, note FROM pt_1 WHERE email = $1",
        &[&e[3]]
    )
    .await
    .is_empty());
    // Equality on the unindexed column is refused through a partition as through the root.
    let err = c2
        .query("SELECT id FROM pt_2 WHERE note = $1", &[&n[1]])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "0A000", "{}", db_message(&err));
    assert!(
        db_message(&err).contains("public.pt.note"),
        "{}",
        db_message(&err)
    );

    // UPDATE and DELETE through partitions.
    let moved = secret(&mut s, "ptMoved");
    let k = c2
        .execute(
            "UPDATE pt_2 SET email = $1 WHERE email = $2",
            &[&moved, &e[3]],
        )
        .await
        .unwrap();
    assert_eq!(k, 1);
    assert_eq!(
        rows(
            &c,
            "SELECT id, email, note FROM pt WHERE email = $1",
            &[&moved]
        )
        .await[0]
            .0,
        102
    );
    let k = c2
        .simple_query(&format!("DELETE FROM pt_4a WHERE email = '{}'", e[5]))
        .await
        .unwrap();
    assert!(matches!(
        k.last(),
        Some(tokio_postgres::SimpleQueryMessage::CommandComplete(1))
    ));
    let k = c
        .execute("DELETE FROM pt_1 WHERE email = $1", &[&e[6]])
        .await
        .unwrap();
    assert_eq!(k, 1);

    // A partition created straight upstream while both proxies run: the next statement naming
    // it, at once, is analysed as the root (no waiting for a periodic refresh).
    upstream_ddl(
        env,
        "CREATE TABLE pt_3 PARTITION OF pt FOR VALUES FROM (200) TO (300)",
    );
    c.batch_execute(&format!(
        "INSERT INTO pt_3 (id, email, note) VALUES (201, '{}', '{}')",
        e[8], n[8]
    ))
    .await
    .unwrap();
    upstream_ddl(
        env,
        "CREATE TABLE pt_5 PARTITION OF pt FOR VALUES FROM (500) TO (600)",
    );
    c2.execute(
        "INSERT INTO pt_5 (id, email, note) VALUES ($1, $2, $3)",
        &[&501i32, &e[9], &n[9]],
    )
    .await
    .unwrap();
    for cl in [&c, &c2] {
        assert_eq!(
            rows(
                cl,
                "SELECT id, email, note FROM pt_3 WHERE email = $1",
                &[&e[8]]
            )
            .await,
            [(201, Some(e[8].clone()), Some(n[8].clone()))]
        );
        assert_eq!(
            rows(
                cl,
                "SELECT id, email, note FROM pt WHERE email = $1",
                &[&e[9]]
            )
            .await,
            [(501, Some(e[9].clone()), Some(n[9].clone()))]
        );
    }

    let parts = [
        "public.pt_1",
        "public.pt_2",
        "public.pt_3",
        "public.pt_4a",
        "public.pt_5",
    ];
    env.assert_no_leak(
        &s,
        &parts,
        &[("public.pt", "email", true), ("public.pt", "note", false)],
    );
    for p in parts {
        assert!(!env.stored_cells(p, "email").is_empty(), "{p}: no rows");
        for cell in env.stored_cells(p, "email") {
            support::check_cell(&cell, true).unwrap();
        }
    }
    let log = p2.log();
    for secret in &s {
        assert!(
            !log.contains(secret.as_str()),
            "plaintext in the second proxy's log"
        );
    }
}

/// A plain `INHERITS` child created directly upstream: writes through it encrypt, reads
/// through the parent (which includes the child's rows) and through the child decrypt,
/// lookups use the blind index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inheritance_children_are_analysed_as_their_parent() {
    let env = env();
    let mut s = Vec::new();
    let c = env.client().await;
    c.batch_execute("CREATE TABLE inh (id int4, secret text); CREATE INDEX ON inh (secret)")
        .await
        .unwrap();
    upstream_ddl(env, "CREATE TABLE inh_child (extra int4) INHERITS (inh)");
    let a = secret(&mut s, "inhParent");
    let b = secret(&mut s, "inhChild");
    let d = secret(&mut s, "inhChildLit");
    c.execute("INSERT INTO inh (id, secret) VALUES (1, $1)", &[&a])
        .await
        .unwrap();
    c.execute(
        "INSERT INTO inh_child (id, secret, extra) VALUES (2, $1, 7)",
        &[&b],
    )
    .await
    .unwrap();
    c.batch_execute(&format!(
        "INSERT INTO inh_child (id, secret, extra) VALUES (3, '{d}', 8)"
    ))
    .await
    .unwrap();
    let got: Vec<(i32, String)> = c
        .query("SELECT id, secret FROM inh ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(got, [(1, a.clone()), (2, b.clone()), (3, d.clone())]);
    let r = c
        .query_one(
            "SELECT id, secret, extra FROM inh_child WHERE secret = $1",
            &[&d],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            r.get::<_, i32>(0),
            r.get::<_, String>(1),
            r.get::<_, i32>(2)
        ),
        (3, d.clone(), 8)
    );
    let r = c
        .query_one("SELECT id FROM inh WHERE secret = $1", &[&b])
        .await
        .unwrap();
    assert_eq!(r.get::<_, i32>(0), 2);
    assert!(c
        .query("SELECT id FROM ONLY inh WHERE secret = $1", &[&b])
        .await
        .unwrap()
        .is_empty());
    let k = c
        .execute("UPDATE inh_child SET secret = $1 WHERE id = 2", &[&a])
        .await
        .unwrap();
    assert_eq!(k, 1);
    assert_eq!(
        c.query("SELECT id FROM inh WHERE secret = $1", &[&a])
            .await
            .unwrap()
            .len(),
        2
    );
    env.assert_no_leak(
        &s,
        &["public.inh", "public.inh_child"],
        &[
            ("public.inh", "secret", true),
            ("public.inh_child", "secret", true),
        ],
    );
}

/// Views and materialized views created directly upstream over a protected table: PostgreSQL
/// describes their columns with the view's OID; statements naming them are refused with
/// 0A000, and a result that comes from one without naming it (a cursor opened by a function)
/// fails instead of handing ciphertext to the application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_over_protected_tables_are_refused_and_never_read() {
    let env = env();
    let mut s = Vec::new();
    let c = env.client().await;
    c.batch_execute("CREATE TABLE vt (id int4, email text); CREATE INDEX ON vt (email)")
        .await
        .unwrap();
    let e = secret(&mut s, "vtMail");
    c.execute("INSERT INTO vt (id, email) VALUES (1, $1)", &[&e])
        .await
        .unwrap();
    upstream_ddl(
        env,
        "CREATE VIEW vt_view AS SELECT id, email FROM vt;\
         CREATE VIEW vt_view2 AS SELECT id AS n, email AS m FROM vt_view;\
         CREATE MATERIALIZED VIEW vt_mat AS SELECT id, email FROM vt;\
         CREATE FUNCTION open_vt_cursor() RETURNS refcursor LANGUAGE plpgsql AS \
           $f$ DECLARE c refcursor := 'vtc'; BEGIN OPEN c FOR SELECT n, m FROM vt_view2; RETURN c; END $f$",
    );
    // What PostgreSQL itself puts in RowDescription for a view's columns: the view's OID.
    let direct = support::connect(&format!(
        "host={} port={} user=postgres dbname={}",
        env.pg.socket_dir().display(),
        env.pg.port,
        support::ENC_DB
    ))
    .await;
    for (rel, col) in [("vt_view", "email"), ("vt_view2", "m"), ("vt_mat", "email")] {
        let st = direct
            .prepare(&format!("SELECT {col} FROM {rel}"))
            .await
            .unwrap();
        let oid: u32 = env
            .direct(&format!("SELECT '{rel}'::regclass::oid"))
            .parse()
            .unwrap();
        assert_eq!(st.columns()[0].table_oid(), Some(oid), "{rel}");
    }

    for sql in [
        "SELECT * FROM vt_view",
        "SELECT n FROM vt_view2 WHERE n = 1",
        "SELECT id, email FROM public.vt_mat",
        "REFRESH MATERIALIZED VIEW vt_mat",
    ] {
        let err = c.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&err), "0A000", "{sql}: {}", db_message(&err));
        let m = db_message(&err);
        assert!(
            m.contains("vt_") && m.contains("over protected table public.vt"),
            "{sql}: {m}"
        );
        let err = c.query(sql, &[]).await.unwrap_err();
        assert_eq!(sqlstate(&err), "0A000", "{sql}: {}", db_message(&err));
    }
    // A view created while the proxy runs, named at once.
    upstream_ddl(env, "CREATE VIEW late_view AS SELECT email FROM vt");
    let err = c.simple_query("SELECT * FROM late_view").await.unwrap_err();
    assert_eq!(sqlstate(&err), "0A000", "{}", db_message(&err));
    assert!(
        db_message(&err).contains("public.late_view"),
        "{}",
        db_message(&err)
    );

    // Not naming the view: the result's columns come from it, so the statement fails.
    c.batch_execute("BEGIN").await.unwrap();
    let opened = simple_rows(&c, "SELECT open_vt_cursor()").await;
    assert_eq!(opened[0][0].as_deref(), Some("vtc"));
    let err = c.simple_query("FETCH ALL FROM vtc").await.unwrap_err();
    assert_eq!(sqlstate(&err), "0A000", "{}", db_message(&err));
    assert!(
        db_message(&err).contains("public.vt_view2"),
        "{}",
        db_message(&err)
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    simple_rows(&c, "SELECT open_vt_cursor()").await;
    let err = c.query("FETCH ALL FROM vtc", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "0A000", "{}", db_message(&err));
    c.batch_execute("ROLLBACK").await.unwrap();
    // The session is still usable, and the table itself reads as plaintext.
    let r = c
        .query_one("SELECT email FROM vt WHERE email = $1", &[&e])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), e);
    // Dropping a view is allowed (it carries no values).
    c.batch_execute("DROP VIEW late_view").await.unwrap();
    env.assert_no_leak(
        &s,
        &["public.vt", "(SELECT * FROM public.vt_mat)"],
        &[("public.vt", "email", true)],
    );
}
