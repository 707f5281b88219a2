//! Attacks on `pgseal-proxy migrate` (online migration) from the review of 2026-12-02: query
//! strings and pipelines straddling the cut-over, a REPEATABLE READ transaction across it,
//! updates to equal-but-different values, a hostile upstream deleting the state, an idle
//! transaction, a view created mid-migration. Each was seen failing before its fix; they assert
//! the promised behaviour.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::keyserver::{cargo_bin, ColumnSpec};
use support::{proxy_env, EncEnv, APP_USER};

const KR: &str = "attackring";

fn create_table(env: &EncEnv, table: &str, sql: &str) {
    env.direct(sql);
    env.direct(&format!("ALTER TABLE {table} OWNER TO {APP_USER}"));
}

fn migrate(env: &EncEnv, args: &[&str]) -> (String, Option<i32>) {
    let out = Command::new(cargo_bin("pgseal-proxy", "PGSEAL_PROXY_BIN"))
        .arg("migrate")
        .args(args)
        .arg("--config")
        .arg(env.proxy.config_path())
        .envs(proxy_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text, out.status.code())
}

fn migrate_ok(env: &EncEnv, args: &[&str]) -> String {
    let (text, code) = migrate(env, args);
    assert_eq!(code, Some(0), "migrate {args:?} failed:\n{text}");
    text
}

fn db_err(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!(
            "{} {} {}",
            d.code().code(),
            d.message(),
            d.detail().unwrap_or("")
        ),
        None => e.to_string(),
    }
}

/// F1: a REPEATABLE READ transaction whose snapshot predates the backfill would read NULL for
/// every migrated value after the cut-over (the renamed shadow column of the row versions it
/// sees is NULL). The cut-over waits for it (serving the table meanwhile) and happens only after
/// it ended; its reads before were the plaintext values.
#[test]
fn repeatable_read_transaction_across_the_cutover_reads_nulls() {
    let env =
        EncEnv::start(&[ColumnSpec::new("public.acct.email", "text", KR).migrating("encrypt")]);
    create_table(
        &env,
        "acct",
        "CREATE TABLE acct (id int PRIMARY KEY, email text NOT NULL)",
    );
    env.direct(
        "INSERT INTO acct SELECT g, 'user' || g || '@example.org' FROM generate_series(1, 50) g",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = rt.block_on(env.client());
    rt.block_on(async {
        c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .unwrap();
        // Takes the snapshot; no lock on acct.
        c.simple_query("SELECT 1").await.unwrap();
    });
    let handle = {
        let proxy_config = env.proxy.config_path();
        std::thread::spawn(move || {
            let out = Command::new(cargo_bin("pgseal-proxy", "PGSEAL_PROXY_BIN"))
                .args(["migrate", "--rate", "0", "--config"])
                .arg(proxy_config)
                .envs(proxy_env())
                .output()
                .unwrap();
            (
                String::from_utf8_lossy(&out.stdout).to_string(),
                out.status.code(),
            )
        })
    };
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(
        env.direct("SELECT phase FROM pgseal.migrations").trim(),
        "verified",
        "the cut-over waits for the old transaction, serving the table"
    );
    let got = rt.block_on(async {
        c.query("SELECT id, email FROM acct ORDER BY id LIMIT 5", &[])
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| (r.get::<_, i32>(0), r.get::<_, Option<String>>(1)))
                    .collect::<Vec<_>>()
            })
            .map_err(|e| db_err(&e))
    });
    let rows = got.expect("the read is answered");
    assert!(
        rows.iter().all(|(_, e)| e.is_some()),
        "NOT NULL email read as NULL: {rows:?}"
    );
    rt.block_on(c.batch_execute("COMMIT")).unwrap();
    let (out, code) = handle.join().unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("waiting for sessions that started earlier"),
        "{out}"
    );
    assert_eq!(
        env.direct("SELECT phase FROM pgseal.migrations").trim(),
        "done"
    );
}

/// F2: an UPDATE between the row's verification and the cut-over that changes the value to one
/// that is `=`-equal but different (numeric scale, jsonb number scale, a nondeterministic
/// collation, -0) does not fire the change trigger (`WHEN NEW.c IS DISTINCT FROM OLD.c`), so the
/// shadow keeps the old value's cell and the write is lost at the cut-over.
#[test]
fn equal_but_different_updates_after_verify_are_lost() {
    let env = EncEnv::start(&[
        ColumnSpec::new("public.pay.amount", "numeric", KR).migrating("encrypt"),
        ColumnSpec::new("public.pay.doc", "jsonb", KR).migrating("encrypt"),
        ColumnSpec::new("public.pay.name", "text", KR).migrating("encrypt"),
        ColumnSpec::new("public.pay.f", "float8", KR).migrating("encrypt"),
    ]);
    env.direct(
        "CREATE COLLATION IF NOT EXISTS ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)",
    );
    create_table(
        &env,
        "pay",
        "CREATE TABLE pay (id int PRIMARY KEY, amount numeric, doc jsonb, name text COLLATE ci, f float8)",
    );
    env.direct("INSERT INTO pay VALUES (1, 1.5, '{\"x\": 1.5}', 'alice smith', 0)");
    migrate_ok(&env, &["--rate", "0", "--stop-after", "verified"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = env.client().await;
        c.batch_execute(
            "UPDATE pay SET amount = 1.50, doc = '{\"x\": 1.50}', name = 'Alice Smith', f = '-0' WHERE id = 1",
        )
        .await
        .unwrap();
        let r = c
            .simple_query("SELECT amount::text, doc::text, name, f::text FROM pay WHERE id = 1")
            .await
            .unwrap();
        eprintln!("F2 before the cut-over (through the proxy): {r:?}");
    });
    migrate_ok(&env, &["--rate", "0"]);
    std::thread::sleep(Duration::from_secs(1));
    let after = rt.block_on(async {
        let c = env.client().await;
        let r = c
            .simple_query("SELECT amount, doc, name, f FROM pay WHERE id = 1")
            .await
            .map_err(|e| db_err(&e))
            .unwrap();
        let mut out = Vec::new();
        for m in r {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
                for i in 0..4 {
                    out.push(row.get(i).unwrap_or("NULL").to_owned());
                }
            }
        }
        out.join(" | ")
    });
    eprintln!("F2 after the cut-over (through the proxy): {after}");
    assert!(
        after.contains("1.50") && after.contains("Alice Smith") && after.contains("-0"),
        "writes made before the cut-over are lost: {after}"
    );
}

/// F3: a multi-statement simple query analysed while the column is still served as plaintext,
/// whose statement on the table runs upstream after the cut-over (PostgreSQL analyses each
/// statement of a query string when it gets to it): the proxy sends the plaintext into the
/// now-encrypted column. A value that starts like a cell passes the stored-cell constraint and
/// is stored as garbage; a plain value reaches the upstream (statement log, error DETAIL) after
/// the cut-over.
#[test]
fn a_query_string_straddling_the_cutover_writes_plaintext_into_the_cell_column() {
    let env =
        EncEnv::start(&[ColumnSpec::new("public.notes.body", "text", KR).migrating("encrypt")]);
    create_table(
        &env,
        "notes",
        "CREATE TABLE notes (id int PRIMARY KEY, body text)",
    );
    env.direct("INSERT INTO notes SELECT g, 'seed ' || g FROM generate_series(1, 20) g");
    migrate_ok(&env, &["--rate", "0", "--stop-after", "verified"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let conn = env.conn_str();
    let writer = rt.spawn(async move {
        let c = support::connect(&conn).await;
        // 1: a plain secret; 2: a value shaped like an unindexed cell (\001 + 40 bytes).
        let a = c
            .batch_execute(
                "SELECT pg_sleep(6); UPDATE notes SET body = 'straddle-secret-4711' WHERE id = 1",
            )
            .await
            .map_err(|e| db_err(&e));
        let c2 = c;
        (a, c2)
    });
    let conn2 = env.conn_str();
    let writer2 = rt.spawn(async move {
        let c = support::connect(&conn2).await;
        c.batch_execute(&format!(
            "SELECT pg_sleep(6); UPDATE notes SET body = E'\\001{}' WHERE id = 2",
            "g".repeat(40)
        ))
        .await
        .map_err(|e| db_err(&e))
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let out = migrate_ok(&env, &["--rate", "0"]);
    eprintln!("F3 migrate took {:?}:\n{out}", started.elapsed());
    let (a, _c) = rt.block_on(writer).unwrap();
    let b = rt.block_on(writer2).unwrap();
    eprintln!("F3 plain secret write: {a:?}");
    eprintln!("F3 cell-shaped write: {b:?}");
    std::thread::sleep(Duration::from_secs(1));
    let read = rt.block_on(async {
        let c = env.client().await;
        let mut out = Vec::new();
        for id in [1, 2] {
            out.push(
                c.query("SELECT body FROM notes WHERE id = $1", &[&id])
                    .await
                    .map(|r| r[0].get::<_, Option<String>>(0))
                    .map_err(|e| db_err(&e)),
            );
        }
        out
    });
    eprintln!("F3 reads after: {read:?}");
    let log = env.pg.log();
    let leaked: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("straddle-secret-4711") || l.contains("7374726164646c652d736563726574")
        })
        .collect();
    eprintln!("F3 upstream log lines with the secret: {leaked:#?}");
    let stored =
        env.direct("SELECT id, encode(body, 'hex') FROM notes WHERE id IN (1, 2) ORDER BY id");
    eprintln!("F3 stored upstream: {stored}");
    assert!(
        b.is_err() || read[1].is_ok(),
        "a write was accepted and stored as an undecryptable cell: {b:?} then {:?}",
        read[1]
    );
}

/// F4: after `done`, while the entries still say `migration = "encrypt"` (docs: remove it at
/// the next restart), a proxy that restarts and a hostile upstream that deletes its state row
/// make the proxy serve the column as plaintext again: lookups and writes carry the plaintext
/// upstream although the column holds cells.
#[test]
fn hostile_upstream_deleting_the_state_row_after_done_gets_plaintext() {
    let mut env = EncEnv::start(&[ColumnSpec::new("public.ppl.email", "text", KR)
        .indexed()
        .migrating("encrypt")]);
    create_table(
        &env,
        "ppl",
        "CREATE TABLE ppl (id int PRIMARY KEY, email text)",
    );
    env.direct(
        "INSERT INTO ppl SELECT g, 'p' || g || '@example.org' FROM generate_series(1, 20) g",
    );
    migrate_ok(&env, &["--rate", "0"]);
    // The hostile upstream deletes the state (any time before a proxy (re)starts: a crash, a
    // rolling restart, autoscaling).
    env.direct("DELETE FROM pgseal.migrations");
    env.restart_proxy();
    std::thread::sleep(Duration::from_secs(1));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (lookup, write) = rt.block_on(async {
        let c = env.client().await;
        let l = c
            .query(
                "SELECT id FROM ppl WHERE email = 'hostile-lookup-0815@example.org'",
                &[],
            )
            .await
            .map(|r| r.len())
            .map_err(|e| db_err(&e));
        let w = c
            .execute(
                "INSERT INTO ppl (id, email) VALUES (99, $1)",
                &[&"hostile-write-0815@example.org"],
            )
            .await
            .map_err(|e| db_err(&e));
        (l, w)
    });
    eprintln!("F4 lookup: {lookup:?}; write: {write:?}");
    let log = env.pg.log();
    let leaked: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("hostile-lookup-0815") || l.contains("hostile-write-0815"))
        .collect();
    eprintln!("F4 upstream log lines with the plaintext: {leaked:#?}");
    assert!(
        leaked.is_empty(),
        "plaintext of a protected column reached the upstream"
    );
}

/// F5: the way back. A query string analysed while the column is still served encrypted, whose
/// write runs upstream after the decrypt cut-over: the proxy's `$n::bytea` cell goes into the
/// now-`text` column through PostgreSQL's assignment I/O cast (bytea → text is allowed in
/// assignment), so the row silently holds the cell's hex as its "plaintext".
#[test]
fn decrypt_cutover_straddled_by_a_query_string_stores_ciphertext_as_text() {
    let mut env =
        EncEnv::start(&[ColumnSpec::new("public.memo.body", "text", KR).migrating("encrypt")]);
    create_table(
        &env,
        "memo",
        "CREATE TABLE memo (id int PRIMARY KEY, body text)",
    );
    env.direct("INSERT INTO memo SELECT g, 'seed ' || g FROM generate_series(1, 20) g");
    migrate_ok(&env, &["--rate", "0"]);
    let path = env.proxy.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("migration = \"encrypt\"", "migration = \"decrypt\""),
    )
    .unwrap();
    env.restart_proxy();
    migrate_ok(&env, &["--rate", "0", "--stop-after", "verified"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let conn = env.conn_str();
    let w = rt.spawn(async move {
        let c = support::connect(&conn).await;
        let simple = c
            .batch_execute(
                "SELECT pg_sleep(6); UPDATE memo SET body = 'written-while-encrypted' WHERE id = 1",
            )
            .await
            .map_err(|e| db_err(&e));
        simple
    });
    // The extended protocol, pipelined (one Sync): a slow statement, then the write.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", env.proxy.port).parse().unwrap();
    let w2 = rt.spawn(async move {
        use support::raw::{bind, execute, parse, Raw};
        let mut r = Raw::login(addr, APP_USER, support::APP_PASSWORD, support::ENC_DB).await;
        let mut out = bytes::BytesMut::new();
        support::raw::msg(&mut out, b'P', &parse("", "SELECT pg_sleep(6)"));
        support::raw::msg(&mut out, b'B', &bind("", "", &[]));
        support::raw::msg(&mut out, b'E', &execute("", 0));
        support::raw::msg(
            &mut out,
            b'P',
            &parse("", "UPDATE memo SET body = $1 WHERE id = 2"),
        );
        support::raw::msg(
            &mut out,
            b'B',
            &bind("", "", &[Some("pipelined-while-encrypted")]),
        );
        support::raw::msg(&mut out, b'E', &execute("", 0));
        support::raw::msg(&mut out, b'S', &[]);
        r.send(&out).await;
        let msgs = r.until(b'Z').await;
        msgs.iter()
            .map(|m| match m.tag {
                b'E' => format!("E:{}", m.field(b'M').unwrap_or_default()),
                t => format!("{}", t as char),
            })
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(300));
    let out = migrate_ok(&env, &["--rate", "0"]);
    eprintln!("F5 migrate:\n{out}");
    let a = rt.block_on(w).unwrap();
    let b = rt.block_on(w2).unwrap();
    eprintln!("F5 simple: {a:?}; pipelined: {b:?}");
    std::thread::sleep(Duration::from_secs(1));
    let stored = env.direct("SELECT id, body FROM memo WHERE id IN (1, 2) ORDER BY id");
    eprintln!("F5 stored upstream (now plaintext column):\n{stored}");
    let through = rt.block_on(async {
        let c = env.client().await;
        c.simple_query("SELECT id, body FROM memo WHERE id IN (1, 2) ORDER BY id")
            .await
            .map(|m| {
                m.into_iter()
                    .filter_map(|x| match x {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            Some(format!("{:?}", (r.get(0), r.get(1))))
                        }
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            })
            .map_err(|e| db_err(&e))
    });
    eprintln!("F5 through the proxy: {through:?}");
    assert!(
        !stored.contains("\\x"),
        "ciphertext stored as the plaintext value: {stored}"
    );
}

/// F6: one idle-in-transaction session that read the table keeps the cut-over from getting its
/// lock; the phase stays `cutting` through all 5 attempts (5 s lock timeout each, plus back-off),
/// so every proxy refuses the table for ~40 s instead of the documented ~3 s, and migrate then
/// fails.
#[test]
fn an_idle_transaction_keeps_the_table_refused_through_every_cutover_attempt() {
    let env = EncEnv::start(&[ColumnSpec::new("public.busy.v", "text", KR).migrating("encrypt")]);
    create_table(
        &env,
        "busy",
        "CREATE TABLE busy (id int PRIMARY KEY, v text)",
    );
    env.direct("INSERT INTO busy SELECT g, 'v' || g FROM generate_series(1, 20) g");
    migrate_ok(&env, &["--rate", "0", "--stop-after", "verified"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let idle = rt.block_on(async {
        let c = env.client().await;
        c.batch_execute("BEGIN; SELECT id FROM busy LIMIT 1")
            .await
            .unwrap();
        c
    });
    let conn = env.conn_str();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let prober = rt.spawn(async move {
        let c = support::connect(&conn).await;
        let (mut ok, mut refused) = (0u32, 0u32);
        let mut first_refused = None;
        let mut last_refused = None;
        let t0 = Instant::now();
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            match c.simple_query("SELECT count(*) FROM busy").await {
                Ok(_) => ok += 1,
                Err(_) => {
                    refused += 1;
                    first_refused.get_or_insert(t0.elapsed());
                    last_refused = Some(t0.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (ok, refused, first_refused, last_refused)
    });
    let started = Instant::now();
    let (out, code) = migrate(&env, &["--rate", "0"]);
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let probe = rt.block_on(prober).unwrap();
    drop(idle);
    eprintln!("F6 migrate exit {code:?} after {took:?}:\n{out}\nF6 other session (ok, refused, first, last refusal): {probe:?}");
    let refused_for = match (probe.2, probe.3) {
        (Some(a), Some(b)) => b - a,
        _ => Duration::ZERO,
    };
    assert!(
        refused_for < Duration::from_secs(10),
        "the table was refused for {refused_for:?}"
    );
}

/// F7: a view the application creates after migrate's preflight (during the backfill, through
/// the proxy) is not checked again: after the cut-over it keeps pointing to the old plaintext
/// column (no longer written), and cleanup cannot drop that column.
#[test]
fn a_view_created_mid_migration_keeps_the_old_column() {
    let env =
        EncEnv::start(&[ColumnSpec::new("public.cust.email", "text", KR).migrating("encrypt")]);
    create_table(
        &env,
        "cust",
        "CREATE TABLE cust (id int PRIMARY KEY, email text)",
    );
    env.direct(
        "INSERT INTO cust SELECT g, 'c' || g || '@example.org' FROM generate_series(1, 20) g",
    );
    migrate_ok(&env, &["--rate", "0", "--stop-after", "backfill"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let made = rt.block_on(async {
        let c = env.client().await;
        c.batch_execute("CREATE VIEW cust_v AS SELECT id, email FROM cust")
            .await
            .map_err(|e| db_err(&e))
    });
    eprintln!("F7 CREATE VIEW through the proxy during the backfill: {made:?}");
    let (out, code) = migrate(&env, &["--rate", "0"]);
    eprintln!("F7 migrate exit {code:?}:\n{out}");
    std::thread::sleep(Duration::from_secs(1));
    let read = rt.block_on(async {
        let c = env.client().await;
        let u = c
            .batch_execute(
                "UPDATE cust SET email = 'changed-after-cutover@example.org' WHERE id = 1",
            )
            .await
            .map_err(|e| db_err(&e));
        let v = c
            .simple_query("SELECT id, email FROM cust_v WHERE id = 1")
            .await
            .map(|m| {
                m.into_iter()
                    .filter_map(|x| match x {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            Some(format!("{:?}", (r.get(0), r.get(1))))
                        }
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            })
            .map_err(|e| db_err(&e));
        (u, v)
    });
    eprintln!(
        "F7 after the refused cut-over: update {:?}; view {:?}",
        read.0, read.1
    );
    // The cut-over refuses: the view would keep the old column.
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("uses the column now"), "{out}");
    assert_eq!(
        env.direct("SELECT phase FROM pgseal.migrations").trim(),
        "verified"
    );
    assert!(read.0.is_ok(), "the table is served again: {:?}", read.0);
    // Without the view it goes through.
    env.direct("DROP VIEW cust_v");
    migrate_ok(&env, &["--rate", "0"]);
    assert_eq!(
        env.direct("SELECT phase FROM pgseal.migrations").trim(),
        "done"
    );
}
