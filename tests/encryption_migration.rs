//! Online migration of existing plaintext columns (`pgseal-proxy migrate`, docs/migration.md)
//! against real PostgreSQL 15, keyserver and `pgseal-proxy serve`: a concurrent writer through
//! the proxy (inserts, updates, deletes, upserts on a unique column, lookups, `SELECT *`) with a
//! client-side ledger runs through every phase while the migrator is killed with SIGKILL once
//! in each phase and resumed; then the values, the lookups and a direct dump are checked. The way
//! back restores every type's exact plaintext; refusals name their reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::keyserver::{cargo_bin, ColumnSpec};
use support::{check_cell, proxy_env, secret, EncEnv, APP_USER};

const KR: &str = "migring";

/// Creates `sql`'s table directly upstream, owned by the application's user (who runs migrate).
fn create_table(env: &EncEnv, table: &str, sql: &str) {
    env.direct(sql);
    env.direct(&format!("ALTER TABLE {table} OWNER TO {APP_USER}"));
}

/// Runs `pgseal-proxy migrate ARGS`; with `kill_at`, kills it (SIGKILL) as soon as a line of its
/// output contains that text. Returns (output lines, exit code; None when killed).
fn migrate(env: &EncEnv, args: &[&str], kill_at: Option<&str>) -> (Vec<String>, Option<i32>) {
    migrate_signalled(env, args, kill_at.map(|k| (k, "KILL")))
}

/// [`migrate`], sending `signal` (`KILL`, `INT`) when a line contains the text; the exit code is
/// None after a KILL.
fn migrate_signalled(
    env: &EncEnv,
    args: &[&str],
    at: Option<(&str, &str)>,
) -> (Vec<String>, Option<i32>) {
    let kill_at = at.map(|(k, _)| k);
    let signal = at.map(|(_, s)| s).unwrap_or("KILL");
    let mut child = Command::new(cargo_bin("pgseal-proxy", "PGSEAL_PROXY_BIN"))
        .arg("migrate")
        .args(args)
        .arg("--config")
        .arg(env.proxy.config_path())
        .envs(proxy_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let mut lines = Vec::new();
    let mut killed = false;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let hit = kill_at.is_some_and(|k| line.contains(k));
        lines.push(line);
        if hit && signal == "KILL" {
            child.kill().unwrap();
            killed = true;
            break;
        }
        if hit {
            let ok = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill -{signal}");
        }
    }
    let status = child.wait().unwrap();
    lines.extend(err_thread.join().unwrap());
    (lines, if killed { None } else { status.code() })
}

fn migrate_ok(env: &EncEnv, args: &[&str]) -> Vec<String> {
    let (lines, code) = migrate(env, args, None);
    assert_eq!(
        code,
        Some(0),
        "migrate {args:?} failed:\n{}",
        lines.join("\n")
    );
    lines
}

/// The expected row of the ledger: (email, note ("" for NULL), born (a year)).
type Row = (String, String, i32);

/// What the writer saw.
#[derive(Default, Debug)]
struct Ledger {
    rows: BTreeMap<i32, Row>,
    ops: u64,
    lookups: u64,
    /// Statements refused while a table was being cut over (retried; not lost).
    retried: u64,
    /// Prepared statements prepared again after a cut-over.
    reprepared: u64,
    errors: Vec<String>,
}

/// Whether `e` is one of the documented transient answers around a cut-over, after which the
/// client retries (the statement did not run).
fn transient(e: &tokio_postgres::Error) -> bool {
    let Some(db) = e.as_db_error() else {
        return false;
    };
    db.code().code() == "0A000"
        && (db.message().contains("being cut over")
            || db.message().contains("could not be refreshed in time"))
}

fn needs_reprepare(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        d.message()
            .starts_with("cached plan must not change result type")
    })
}

struct Stmts {
    insert: tokio_postgres::Statement,
    update_note: tokio_postgres::Statement,
    update_email: tokio_postgres::Statement,
    delete: tokio_postgres::Statement,
    upsert: tokio_postgres::Statement,
    lookup: tokio_postgres::Statement,
    star: tokio_postgres::Statement,
}

async fn prepare(c: &tokio_postgres::Client) -> Result<Stmts, tokio_postgres::Error> {
    Ok(Stmts {
        insert: c
            .prepare("INSERT INTO patients (id, email, note, born) VALUES ($1, $2, $3, $4)")
            .await?,
        update_note: c
            .prepare("UPDATE patients SET note = $2 WHERE id = $1")
            .await?,
        update_email: c
            .prepare("UPDATE patients SET email = $2 WHERE id = $1")
            .await?,
        delete: c.prepare("DELETE FROM patients WHERE id = $1").await?,
        upsert: c
            .prepare(
                "INSERT INTO patients (id, email, note, born) VALUES ($1, $2, $3, 1950) \
                 ON CONFLICT (email) DO UPDATE SET note = EXCLUDED.note",
            )
            .await?,
        lookup: c
            .prepare("SELECT id, note, born FROM patients WHERE email = $1")
            .await?,
        star: c.prepare("SELECT * FROM patients WHERE id = $1").await?,
    })
}

/// One operation of the writer (None: done; Some(Err): failed).
enum Op {
    Insert(i32, Row),
    Note(i32, String),
    Email(i32, String),
    Delete(i32),
    Upsert(String, String),
    Lookup(i32),
}

async fn writer(conn: String, seed: BTreeMap<i32, Row>, stop: Arc<AtomicBool>) -> Ledger {
    let c = support::connect(&conn).await;
    let mut s = prepare(&c).await.unwrap();
    let mut l = Ledger {
        rows: seed,
        ..Ledger::default()
    };
    let mut secrets = Vec::new();
    let mut next_id = 1_000_000;
    let mut n: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let ids: Vec<i32> = l.rows.keys().copied().collect();
        let pick = ids[(n as usize * 7919) % ids.len()];
        let op = match n % 7 {
            0 | 1 => {
                next_id += 1;
                let row = (
                    secret(&mut secrets, "mail") + "@example.org",
                    secret(&mut secrets, "note"),
                    1900 + (n % 120) as i32,
                );
                Op::Insert(next_id, row)
            }
            2 => Op::Note(pick, secret(&mut secrets, "note")),
            3 => Op::Email(pick, secret(&mut secrets, "mail") + "@example.org"),
            4 if ids.len() > 50 => Op::Delete(pick),
            5 => Op::Upsert(l.rows[&pick].0.clone(), secret(&mut secrets, "note")),
            _ => Op::Lookup(pick),
        };
        loop {
            let r = run_op(&c, &s, &op, &l).await;
            match r {
                Ok(()) => break,
                Err(e) if transient(&e) => {
                    l.retried += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) if needs_reprepare(&e) => {
                    l.reprepared += 1;
                    s = prepare(&c).await.unwrap();
                }
                Err(e) => {
                    l.errors.push(format!("{e:?}"));
                    break;
                }
            }
        }
        // Apply to the ledger what succeeded (an error above leaves it as it was).
        if l.errors.is_empty() {
            l.ops += 1;
            match op {
                Op::Insert(id, row) => {
                    l.rows.insert(id, row);
                }
                Op::Note(id, note) => {
                    l.rows.get_mut(&id).unwrap().1 = note;
                }
                Op::Email(id, email) => {
                    l.rows.get_mut(&id).unwrap().0 = email;
                }
                Op::Delete(id) => {
                    l.rows.remove(&id);
                }
                Op::Upsert(email, note) => {
                    let id = l
                        .rows
                        .iter()
                        .find(|(_, r)| r.0 == email)
                        .map(|(id, _)| *id)
                        .unwrap();
                    l.rows.get_mut(&id).unwrap().1 = note;
                }
                Op::Lookup(_) => l.lookups += 1,
            }
        } else {
            break;
        }
    }
    l
}

async fn run_op(
    c: &tokio_postgres::Client,
    s: &Stmts,
    op: &Op,
    l: &Ledger,
) -> Result<(), tokio_postgres::Error> {
    let expect_one = |n: u64, what: &str| {
        assert_eq!(n, 1, "{what} changed {n} rows");
    };
    match op {
        Op::Insert(id, (email, note, born)) => {
            expect_one(
                c.execute(&s.insert, &[id, email, note, born]).await?,
                "insert",
            );
        }
        Op::Note(id, note) => expect_one(c.execute(&s.update_note, &[id, note]).await?, "update"),
        Op::Email(id, email) => expect_one(
            c.execute(&s.update_email, &[id, email]).await?,
            "update email",
        ),
        Op::Delete(id) => expect_one(c.execute(&s.delete, &[id]).await?, "delete"),
        Op::Upsert(email, note) => {
            let id = 0i32;
            expect_one(c.execute(&s.upsert, &[&id, email, note]).await?, "upsert");
        }
        Op::Lookup(id) => {
            let (email, note, born) = &l.rows[id];
            let rows = c.query(&s.lookup, &[email]).await?;
            assert_eq!(
                rows.len(),
                1,
                "lookup of row {id} found {} rows",
                rows.len()
            );
            assert_eq!(rows[0].get::<_, i32>(0), *id);
            assert_eq!(
                &rows[0].get::<_, Option<String>>(1).unwrap_or_default(),
                note
            );
            assert_eq!(&rows[0].get::<_, i32>(2), born);
            let star = c.query(&s.star, &[id]).await?;
            assert_eq!(star.len(), 1);
            // Exactly the application's columns (after the cut-over the migrated ones come
            // last, in PostgreSQL's column order: docs/migration.md).
            let mut names: Vec<&str> = star[0].columns().iter().map(|c| c.name()).collect();
            names.sort_unstable();
            assert_eq!(names, ["born", "email", "id", "note"], "SELECT * columns");
            assert_eq!(&star[0].get::<_, String>("email"), email);
        }
    }
    Ok(())
}

fn columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec::new("public.patients.email", "text", KR)
            .unique()
            .migrating("encrypt"),
        ColumnSpec::new("public.patients.note", "text", KR).migrating("encrypt"),
        ColumnSpec::new("public.patients.born", "int4", KR)
            .indexed()
            .migrating("encrypt"),
    ]
}

/// The writer runs through every phase; migrate is killed once in each and resumed.
#[test]
fn encrypts_online_through_kills_in_every_phase_with_a_writer_running() {
    let env = EncEnv::start(&columns());
    // No primary key: rows are addressed by ctid and xmin.
    create_table(
        &env,
        "patients",
        "CREATE TABLE patients (id int NOT NULL, email text NOT NULL UNIQUE, note text, born int4)",
    );
    let mut secrets = Vec::new();
    let mut seed = BTreeMap::new();
    let mut values = Vec::new();
    for id in 1..=3000 {
        let row = (
            secret(&mut secrets, "seedmail") + "@example.org",
            secret(&mut secrets, "seednote"),
            1900 + id % 120,
        );
        values.push(format!("({id}, '{}', '{}', {})", row.0, row.1, row.2));
        seed.insert(id, row);
    }
    for chunk in values.chunks(500) {
        env.direct(&format!("INSERT INTO patients VALUES {}", chunk.join(", ")));
    }
    env.direct("UPDATE patients SET note = NULL WHERE id % 10 = 0");
    for id in (10..=3000).step_by(10) {
        seed.get_mut(&id).unwrap().1.clear();
    }
    let dry = migrate_ok(&env, &["--dry-run"]);
    assert!(
        dry.iter()
            .any(|l| l.contains("ADD COLUMN IF NOT EXISTS \"pgseal_shadow_2\" bytea")),
        "{dry:?}"
    );
    assert_eq!(
        env.direct("SELECT count(*) FROM pg_catalog.pg_class WHERE relname = 'migrations'")
            .trim(),
        "0",
        "dry run changes nothing"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let seed_nulls: BTreeMap<i32, Row> = seed.clone();
    let handle = rt.spawn(writer(env.conn_str(), seed_nulls, stop.clone()));
    std::thread::sleep(Duration::from_secs(1));

    let args = ["--rate", "4000", "--batch", "300"];
    let kills = [
        ("announced; waiting", "preparing"),
        ("building the shadow's index", "preparing"),
        ("pass=backfill batch=3 ", "backfill"),
        ("pass=verify batch=2 ", "backfill"),
        ("cut-over announced", "cutting"),
        ("migrate: cut over", "cutover"),
    ];
    let started = Instant::now();
    for (at, phase) in kills {
        let (lines, code) = migrate(&env, &args, Some(at));
        assert_eq!(
            code,
            None,
            "migrate ended before {at:?}:\n{}",
            lines.join("\n")
        );
        let state = env.direct("SELECT DISTINCT phase FROM pgseal.migrations");
        // The last kill races with the cleanup, which takes milliseconds: `done` is fine too.
        assert!(
            state
                .lines()
                .any(|l| l.trim() == phase || (phase == "cutover" && l.trim() == "done")),
            "after a kill at {at:?}: phases {state:?}, expected {phase}"
        );
        if phase == "backfill" {
            // Mid-migration, check reports the phase and is clean otherwise.
            let check = env.proxy_command(&["check"]);
            let out = String::from_utf8_lossy(&check.stdout).to_string();
            assert!(check.status.success(), "check mid-migration: {out}");
            assert!(out.contains("phase backfill (served as plaintext"), "{out}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let last = migrate_ok(&env, &args);
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let ledger = rt.block_on(handle).unwrap();
    assert!(
        ledger.errors.is_empty(),
        "writer errors: {:?}",
        ledger.errors
    );
    assert!(ledger.ops > 500, "the writer kept working: {ledger:?}");
    eprintln!(
        "migration with kills took {took:?}; writer: {} ops, {} lookups, {} retried around the cut-over, {} re-prepared",
        ledger.ops, ledger.lookups, ledger.retried, ledger.reprepared
    );
    assert!(last.iter().any(|l| l.contains("phase done")), "{last:?}");
    assert_eq!(
        env.direct("SELECT DISTINCT phase FROM pgseal.migrations")
            .trim(),
        "done"
    );

    // Every row as the ledger says, through the proxy; every lookup exact.
    let (rows, lookups_ok) = rt.block_on(async {
        let c = env.client().await;
        let rows = c
            .query("SELECT id, email, note, born FROM patients", &[])
            .await
            .unwrap();
        let mut ok = 0;
        for (id, (email, _, _)) in ledger.rows.iter().take(300) {
            let r = c
                .query("SELECT id FROM patients WHERE email = $1", &[email])
                .await
                .unwrap();
            assert_eq!(r.len(), 1, "lookup of {id}");
            assert_eq!(r[0].get::<_, i32>(0), *id);
            ok += 1;
        }
        (rows, ok)
    });
    let got: BTreeMap<i32, Row> = rows
        .iter()
        .map(|r| {
            let note: Option<String> = r.get(2);
            (r.get(0), (r.get(1), note.unwrap_or_default(), r.get(3)))
        })
        .collect();
    assert_eq!(got.len(), ledger.rows.len(), "0 rows lost or doubled");
    let different: Vec<_> = ledger
        .rows
        .iter()
        .filter(|(id, row)| got.get(id) != Some(row))
        .take(5)
        .collect();
    assert!(
        different.is_empty(),
        "values differ from the ledger: {different:?}"
    );
    assert_eq!(lookups_ok, 300.min(ledger.rows.len()));

    // Upstream: no migration objects left, every cell a pgseal cell, no plaintext in a dump.
    let cols = env.direct(
        "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'patients'::regclass AND attnum > 0 AND NOT attisdropped",
    );
    // The migrated columns come last now (PostgreSQL appends the shadow columns).
    assert_eq!(cols.trim(), "id,born,email,note");
    assert_eq!(
        env.direct("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'patients'::regclass")
            .trim(),
        "0"
    );
    for (col, indexed) in [("email", true), ("note", false), ("born", true)] {
        let cells = env.stored_cells("patients", col);
        assert!(!cells.is_empty());
        for cell in cells {
            check_cell(&cell, indexed).unwrap();
        }
    }
    let dump = env.direct("COPY patients TO STDOUT").to_lowercase();
    let mut all: Vec<String> = secrets;
    for (e, n, _) in ledger.rows.values() {
        all.push(e.clone());
        if !n.is_empty() {
            all.push(n.clone());
        }
    }
    for s in &all {
        assert!(
            !dump.contains(&s.to_lowercase()),
            "plaintext {s} in a direct dump"
        );
    }
    // The proxy's check is clean.
    let check = env.proxy_command(&["check"]);
    assert!(
        check.status.success(),
        "check: {}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// Every logical type, with NULLs and edge values: encrypted online, then decrypted online back
/// to exactly the plaintext it was (as PostgreSQL prints it) and to the logical type's column
/// type.
#[test]
fn the_way_back_restores_every_types_exact_plaintext() {
    let types = [
        ("text", "text", "'Grüße, 世界 \\ '' \"x\"'", true),
        ("varchar", "varchar", "''", true),
        ("int2", "int2", "-32768", true),
        ("int4", "int4", "2147483647", false),
        ("int8", "int8", "-9223372036854775808", true),
        ("bool", "bool", "true", false),
        ("float8", "float8", "0.1", false),
        ("numeric", "numeric", "12345678901234567890.000123000", true),
        ("date", "date", "'0044-03-15'", true),
        (
            "timestamp",
            "timestamp",
            "'2024-02-29 23:59:59.999999'",
            false,
        ),
        (
            "timestamptz",
            "timestamptz",
            "'2024-06-01 12:00:00.5+02'",
            true,
        ),
        (
            "uuid",
            "uuid",
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            true,
        ),
        (
            "jsonb",
            "jsonb",
            "'{\"a\": [1, 2.50, {\"b\": null}], \"ü\": \"x\"}'",
            false,
        ),
        ("bytea", "bytea", "'\\x00ff10'", true),
    ];
    let specs: Vec<ColumnSpec> = types
        .iter()
        .map(|(name, ty, _, indexed)| {
            let c = ColumnSpec::new(&format!("public.typed.c_{name}"), ty, KR);
            let c = if *indexed { c.indexed() } else { c };
            c.migrating("encrypt")
        })
        .collect();
    let mut env = EncEnv::start(&specs);
    let cols: Vec<String> = types
        .iter()
        .map(|(name, ty, _, _)| format!("c_{name} {ty}"))
        .collect();
    create_table(
        &env,
        "typed",
        &format!(
            "CREATE TABLE typed (id int PRIMARY KEY, {})",
            cols.join(", ")
        ),
    );
    let values: Vec<&str> = types.iter().map(|t| t.2).collect();
    env.direct(&format!(
        "INSERT INTO typed VALUES (1, {})",
        values.join(", ")
    ));
    env.direct(&format!(
        "INSERT INTO typed (id) VALUES (2); INSERT INTO typed VALUES (3, {})",
        [
            "'a'",
            "'b'",
            "0",
            "0",
            "0",
            "false",
            "-1.5e-300",
            "-0.5",
            "'2000-01-01'",
            "'1999-12-31 00:00:00'",
            "'1970-01-01 00:00:00+00'",
            "'00000000-0000-0000-0000-000000000000'",
            "'[]'",
            "''",
        ]
        .join(", ")
    ));
    let text_of = |env: &EncEnv| {
        let list: Vec<String> = types.iter().map(|(n, _, _, _)| format!("c_{n}")).collect();
        env.direct(&format!(
            "SET TimeZone = 'UTC'; SELECT id, {} FROM typed ORDER BY id",
            list.join(", ")
        ))
    };
    let before = text_of(&env);
    migrate_ok(&env, &["--rate", "0"]);
    let encrypted = env.direct(
        "SELECT string_agg(DISTINCT format_type(atttypid, atttypmod), ',') FROM pg_attribute WHERE attrelid = 'typed'::regclass AND attname LIKE 'c\\_%' AND NOT attisdropped",
    );
    assert_eq!(encrypted.trim(), "bytea", "every column is cells now");
    // Through the proxy: every value as stored before (psql, text).
    let list: Vec<String> = types.iter().map(|(n, _, _, _)| format!("c_{n}")).collect();
    let select = format!("SELECT id, {} FROM typed ORDER BY id", list.join(", "));
    let through = support::ok(&support::psql_proxy(
        env.proxy.port,
        support::ENC_DB,
        &[
            "-q",
            "-A",
            "-t",
            "-c",
            &format!("SET TimeZone = 'UTC'; {select}"),
        ],
        None,
    ));
    assert_eq!(
        through.trim(),
        before.trim(),
        "through the proxy, encrypted"
    );

    // The way back: the same columns with migration = "decrypt".
    let path = env.proxy.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("migration = \"encrypt\"", "migration = \"decrypt\""),
    )
    .unwrap();
    env.restart_proxy();
    let through = support::ok(&support::psql_proxy(
        env.proxy.port,
        support::ENC_DB,
        &[
            "-q",
            "-A",
            "-t",
            "-c",
            &format!("SET TimeZone = 'UTC'; {select}"),
        ],
        None,
    ));
    assert_eq!(
        through.trim(),
        before.trim(),
        "through the proxy, before decrypting"
    );
    migrate_ok(&env, &["--rate", "0"]);
    assert_eq!(
        text_of(&env).trim(),
        before.trim(),
        "the exact plaintext is back"
    );
    let types_now = env.direct(
        "SELECT string_agg(format_type(atttypid, atttypmod), ',' ORDER BY attname) FROM pg_attribute WHERE attrelid = 'typed'::regclass AND attname LIKE 'c\\_%' AND NOT attisdropped",
    );
    assert_eq!(
        types_now.trim(),
        "boolean,bytea,date,double precision,smallint,integer,bigint,jsonb,numeric,text,timestamp without time zone,timestamp with time zone,uuid,character varying"
    );
    let through = support::ok(&support::psql_proxy(
        env.proxy.port,
        support::ENC_DB,
        &[
            "-q",
            "-A",
            "-t",
            "-c",
            &format!("SET TimeZone = 'UTC'; {select}"),
        ],
        None,
    ));
    assert_eq!(
        through.trim(),
        before.trim(),
        "through the proxy, decrypted"
    );
}

/// What migrate refuses, and why (nothing is changed).
#[test]
fn refusals_name_the_reason_and_change_nothing() {
    let env = EncEnv::start(&[
        ColumnSpec::new("public.parent.code", "text", KR)
            .indexed()
            .migrating("encrypt"),
        ColumnSpec::new("public.child.parent_code", "text", KR).migrating("encrypt"),
        ColumnSpec::new("public.enc.secret", "text", KR).migrating("encrypt"),
        ColumnSpec::new("public.parent.nope", "text", KR).migrating("encrypt"),
        ColumnSpec::new("public.viewed.v", "int4", KR).migrating("encrypt"),
        ColumnSpec::new("public.parted.p", "int4", KR).migrating("encrypt"),
        ColumnSpec::new("public.defaulted.d", "int4", KR).migrating("encrypt"),
        ColumnSpec::new("public.nosuch.x", "text", KR).migrating("encrypt"),
        ColumnSpec::new("public.plain.x", "text", KR),
    ]);
    for (table, sql) in [
        ("parent", "CREATE TABLE parent (id int, code text UNIQUE)"),
        (
            "child",
            "CREATE TABLE child (id int, parent_code text REFERENCES parent (code))",
        ),
        ("enc", "CREATE TABLE enc (id int, secret bytea)"),
        ("viewed", "CREATE TABLE viewed (id int, v int4)"),
        (
            "parted",
            "CREATE TABLE parted (p int4) PARTITION BY RANGE (p)",
        ),
        ("defaulted", "CREATE TABLE defaulted (d int4 DEFAULT 7)"),
        ("plain", "CREATE TABLE plain (x text)"),
    ] {
        create_table(&env, table, sql);
    }
    env.direct("CREATE VIEW v_viewed AS SELECT v FROM viewed");
    for (column, reason) in [
        ("public.parent.code", "foreign key"),
        ("public.child.parent_code", "foreign key"),
        ("public.enc.secret", "already encrypted"),
        ("public.parent.nope", "no such column"),
        ("public.viewed.v", "view or rule"),
        ("public.parted.p", "not an ordinary table"),
        ("public.defaulted.d", "default"),
        ("public.nosuch.x", "no such table"),
        ("public.plain.x", "no migration"),
        ("public.unknown.y", "not a configured column"),
    ] {
        let (lines, code) = migrate(&env, &["--column", column], None);
        assert_eq!(code, Some(1), "{column}: {lines:?}");
        assert!(
            lines.iter().any(|l| l.contains(reason)),
            "{column}: expected {reason:?} in {lines:?}"
        );
    }
    // Nothing was started.
    assert_eq!(
        env.direct("SELECT count(*) FROM pgseal.migrations").trim(),
        "0"
    );
    assert_eq!(
        env.direct("SELECT count(*) FROM pg_attribute WHERE attname LIKE 'pgseal%'")
            .trim(),
        "0"
    );
}

/// Two tables of one index group migrate together (one cut-over transaction): the equality join
/// between them finds the same rows before (plaintext) and after (blind indexes).
#[test]
fn an_index_group_is_cut_over_together_and_its_join_stays_exact() {
    let env = EncEnv::start(&[
        ColumnSpec::new("public.acct.email", "text", KR)
            .group("mail")
            .migrating("encrypt"),
        ColumnSpec::new("public.alias.email", "text", KR)
            .group("mail")
            .migrating("encrypt"),
    ]);
    create_table(
        &env,
        "acct",
        "CREATE TABLE acct (id int PRIMARY KEY, email text)",
    );
    create_table(
        &env,
        "alias",
        "CREATE TABLE alias (id int PRIMARY KEY, email text)",
    );
    env.direct(
        "INSERT INTO acct SELECT g, 'm' || g || '@example.org' FROM generate_series(1, 500) g; \
         INSERT INTO alias SELECT g, 'm' || (g * 3) || '@example.org' FROM generate_series(1, 300) g",
    );
    let join =
        "SELECT a.id, x.id FROM acct a JOIN alias x ON a.email = x.email ORDER BY a.id, x.id";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pairs = |env: &EncEnv| {
        rt.block_on(async {
            let c = env.client().await;
            c.query(join, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<_, i32>(0), r.get::<_, i32>(1)))
                .collect::<Vec<_>>()
        })
    };
    let before = pairs(&env);
    assert_eq!(before.len(), 166, "ids 3, 6, … 498 have an alias");
    // One side alone is refused: the group migrates together.
    let (lines, code) = migrate(&env, &["--column", "public.acct.email"], None);
    assert_eq!(code, Some(1));
    assert!(
        lines.iter().any(|l| l.contains("migrate together")),
        "{lines:?}"
    );
    let out = migrate_ok(&env, &["--rate", "0"]);
    assert!(
        out.iter()
            .any(|l| l.contains("cut over 2 column(s) of 2 table(s)")),
        "{out:?}"
    );
    for t in ["acct", "alias"] {
        assert_eq!(
            env.direct(&format!("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '{t}'::regclass AND attname = 'email'")).trim(),
            "bytea"
        );
    }
    assert_eq!(
        pairs(&env),
        before,
        "the join finds the same rows through the blind indexes"
    );
}

/// Ctrl-C stops after the current batch (exit status 130, state kept), a later run resumes;
/// `--abort` before the cut-over removes every trace and the column is served as before.
#[test]
fn ctrl_c_stops_after_a_batch_and_abort_undoes_the_migration() {
    let env = EncEnv::start(&[ColumnSpec::new("public.notes.body", "text", KR)
        .indexed()
        .migrating("encrypt")]);
    create_table(&env, "notes", "CREATE TABLE notes (id int, body text)");
    env.direct("INSERT INTO notes SELECT g, 'body ' || g FROM generate_series(1, 4000) g");
    let (lines, code) = migrate_signalled(
        &env,
        &["--rate", "2000", "--batch", "200"],
        Some(("pass=backfill batch=2 ", "INT")),
    );
    assert_eq!(code, Some(130), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("(interrupted)")),
        "{lines:?}"
    );
    assert_eq!(
        env.direct("SELECT phase FROM pgseal.migrations").trim(),
        "backfill"
    );
    let filled: u64 = env
        .direct("SELECT count(*) FROM notes WHERE pgseal_shadow_2 IS NOT NULL")
        .trim()
        .parse()
        .unwrap();
    assert!(filled > 0 && filled < 4000, "stopped part-way: {filled}");
    // Served as plaintext meanwhile, without the shadow.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let look = |env: &EncEnv| {
        rt.block_on(async {
            let c = env.client().await;
            let rows = c
                .query("SELECT * FROM notes WHERE body = 'body 17'", &[])
                .await
                .unwrap();
            (rows.len(), rows.first().map(|r| r.columns().len()))
        })
    };
    assert_eq!(look(&env), (1, Some(2)));
    // Resume to the end of the backfill, then abort.
    migrate_ok(&env, &["--rate", "0", "--stop-after", "backfill"]);
    let out = migrate_ok(&env, &["--abort"]);
    assert!(out.iter().any(|l| l.contains("aborted")), "{out:?}");
    assert_eq!(
        env.direct("SELECT count(*) FROM pgseal.migrations").trim(),
        "0"
    );
    assert_eq!(
        env.direct("SELECT count(*) FROM pg_attribute WHERE attrelid = 'notes'::regclass AND attname LIKE 'pgseal%' AND NOT attisdropped").trim(),
        "0"
    );
    assert_eq!(
        env.direct("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'notes'::regclass")
            .trim(),
        "0"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(look(&env), (1, Some(2)));
    // And it can start again from scratch.
    migrate_ok(&env, &["--rate", "0"]);
    assert_eq!(look(&env), (1, Some(2)));
    assert_eq!(
        env.direct("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'notes'::regclass AND attname = 'body'").trim(),
        "bytea"
    );
}
