//! Real clients through the proxy: psql scripts (including \copy and large objects, which use the
//! FunctionCall protocol), Python psycopg 3 with server-side prepared statements and pipeline
//! mode, and pgbench (-i, then -S in simple, extended and prepared mode) with zero failures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::process::Command;

use support::{env, ok, psql_proxy, run_with_input, APP_PASSWORD, APP_USER};

#[test]
fn psql_script() {
    let env = env();
    let db = env.new_db("psql");
    let dir = tempfile::tempdir().unwrap();
    let lo_src = support::write_file(dir.path(), "blob.txt", &"large object ".repeat(10_000));
    let lo_dst = dir.path().join("blob.out");
    let script = format!(
        r#"
\set ON_ERROR_STOP 1
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price numeric(10,2), tags text[]);
INSERT INTO items (name, price, tags) VALUES ('a', 1.50, '{{x,y}}'), ('b', 2.25, NULL); SELECT 'multi' AS stmt;
\copy items (name, price) FROM stdin
c	3.00
d	4.75
\.
BEGIN;
UPDATE items SET price = price * 2 WHERE name = 'a';
SAVEPOINT s1;
DELETE FROM items;
ROLLBACK TO SAVEPOINT s1;
COMMIT;
PREPARE byname(text) AS SELECT id, price FROM items WHERE name = $1;
EXECUTE byname('a');
DEALLOCATE byname;
DO $$ BEGIN RAISE NOTICE 'notice from plpgsql'; END $$;
LISTEN ch;
NOTIFY ch, 'psql payload';
SELECT count(*) AS n, sum(price) AS total FROM items \gset
\echo count=:n total=:total
\copy (SELECT name, price FROM items ORDER BY id) TO stdout
\lo_import {src}
SELECT lo_export(:LASTOID, '/dev/null') IS NOT NULL AS server_side_export_allowed \gset
\lo_export :LASTOID {dst}
\lo_unlink :LASTOID
SELECT 'done';
"#,
        src = lo_src.display(),
        dst = lo_dst.display(),
    );
    // lo_export on the server side needs superuser; drop that line for the app role.
    let script = script.replace(
        "SELECT lo_export(:LASTOID, '/dev/null') IS NOT NULL AS server_side_export_allowed \\gset\n",
        "",
    );
    let out = psql_proxy(env.proxy.port(), &db, &["-f", "-"], Some(&script));
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("multi"), "{stdout}");
    assert!(stdout.contains("count=4 total=13.00"), "{stdout}");
    assert!(
        stdout.contains("a\t3.00\nb\t2.25\nc\t3.00\nd\t4.75"),
        "{stdout}"
    );
    assert!(stdout.contains("done"), "{stdout}");
    assert!(stderr.contains("NOTICE:  notice from plpgsql"), "{stderr}");
    assert!(
        stdout.contains("Asynchronous notification \"ch\" with payload \"psql payload\""),
        "{stdout}"
    );
    // Large objects went through FunctionCall messages both ways.
    assert_eq!(
        std::fs::read_to_string(&lo_dst).unwrap(),
        "large object ".repeat(10_000)
    );
    // An error stops the script with the server's message.
    let out = psql_proxy(
        env.proxy.port(),
        &db,
        &["-c", "SELECT * FROM no_such_table"],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("relation \"no_such_table\" does not exist")
    );
}

#[test]
fn python_psycopg_server_side_prepared_statements() {
    let env = env();
    let db = env.new_db("psycopg");
    let script = r#"
import sys, psycopg
conninfo = sys.argv[1]
with psycopg.connect(conninfo, prepare_threshold=0, autocommit=True) as conn:
    conn.execute("CREATE TABLE t (id int8 PRIMARY KEY, name text, score float8, data bytea)")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO t VALUES (%s, %s, %s, %s)",
                        [(i, f"name-{i}", i / 4, bytes([i % 256]) * i) for i in range(200)])
    # Server-side prepared statements really were used (prepare_threshold=0).
    for i in range(5):
        row = conn.execute("SELECT name, score FROM t WHERE id = %s", (i,)).fetchone()
        assert row == (f"name-{i}", i / 4), row
    prepared = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
    assert prepared >= 2, prepared
    # Binary results.
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT id, data FROM t WHERE id = %s", (7,))
        assert cur.fetchone() == (7, bytes([7]) * 7)
    # Pipeline mode: many statements, one sync; an error inside it.
    with conn.pipeline() as p:
        cur = conn.cursor()
        for i in range(50):
            cur.execute("SELECT %s::int * 2", (i,))
        p.sync()
        assert cur.fetchone() == (98,)
    try:
        with conn.pipeline():
            conn.execute("SELECT 1")
            conn.execute("SELECT 1/0")
            conn.execute("SELECT 2")
        raise SystemExit("expected an error")
    except psycopg.errors.DivisionByZero:
        pass
    assert conn.execute("SELECT 3").fetchone() == (3,)
    # COPY both ways.
    with conn.cursor() as cur:
        with cur.copy("COPY t (id, name) FROM STDIN") as cp:
            for i in range(1000, 3000):
                cp.write_row((i, f"copied-{i}"))
        out = bytearray()
        with cur.copy("COPY (SELECT id FROM t WHERE id >= 1000 ORDER BY id) TO STDOUT") as cp:
            for chunk in cp:
                out += chunk
        assert out.decode().split() == [str(i) for i in range(1000, 3000)]
    # Transactions.
    with psycopg.connect(conninfo, prepare_threshold=0) as c2:
        c2.execute("INSERT INTO t (id) VALUES (-1)")
        c2.rollback()
        assert c2.execute("SELECT count(*) FROM t WHERE id = -1").fetchone() == (0,)
print("psycopg ok")
"#;
    let conninfo = format!(
        "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname={db} sslmode=disable",
        env.proxy.port()
    );
    let out = run_with_input(
        Command::new("python3").args(["-c", script, &conninfo]),
        None,
    );
    assert!(ok(&out).contains("psycopg ok"));
}

#[test]
fn pgbench_init_and_select_only_in_every_protocol_mode() {
    let env = env();
    let db = env.new_db("pgbench");
    let bin = support::pg::bindir().join("pgbench");
    let base = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(["-h", "127.0.0.1", "-p"])
            .arg(env.proxy.port().to_string())
            .args(["-U", APP_USER])
            .args(args)
            .arg(&db)
            .env("PGPASSWORD", APP_PASSWORD)
            .env("PGSSLMODE", "disable");
        run_with_input(&mut c, None)
    };
    let out = base(&["-i", "-s", "1", "-q"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "pgbench -i: {stderr}");
    assert!(stderr.contains("done in"), "{stderr}");
    for mode in ["simple", "extended", "prepared"] {
        let out = base(&["-S", "-M", mode, "-c", "4", "-j", "2", "-t", "200", "-n"]);
        let stdout = ok(&out);
        assert!(
            stdout.contains("number of transactions actually processed: 800/800"),
            "{mode}: {stdout}"
        );
        assert!(
            stdout.contains("number of failed transactions: 0 "),
            "{mode}: {stdout}"
        );
    }
    // Read-write TPC-B-like run too, short.
    let out = base(&["-M", "extended", "-c", "2", "-t", "50", "-n"]);
    let stdout = ok(&out);
    assert!(
        stdout.contains("number of failed transactions: 0 "),
        "{stdout}"
    );
}
