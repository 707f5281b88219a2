//! Keys through the whole system: a real PostgreSQL, a real pgseal-keyserver over mTLS and the
//! `pgseal-proxy` binary.
//!
//! - A keyserver outage: within the grace period the cached keys keep serving; after it every
//!   statement that needs a key fails with 58000 naming the keyring (nothing encrypted with stale
//!   keys, no plaintext upstream, no ciphertext handed to the app as data), statements on other
//!   columns keep working on the same connection, and everything recovers when the keyserver is
//!   back.
//! - `pgseal-proxy check` fetches the keys as `serve` does: it passes against the running
//!   keyserver and fails, naming the keyserver or the column, when the keyserver is down or a
//!   keyring has no grant.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::keyserver::{cargo_bin, ColumnSpec};
use support::{check_cell, db_message, secret, sqlstate, EncEnv};

const KR: &str = "vaultring";
/// Grace period of the proxy under test (seconds).
const GRACE: u64 = 3;

fn columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec::new("public.vault.secret", "text", KR).indexed(),
        ColumnSpec::new("public.vault.note", "text", KR),
    ]
}

/// The statements that need keys, each with the error it must get once the grace period is over.
async fn assert_needs_keys_fails(
    c: &tokio_postgres::Client,
    what: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) {
    let e = c
        .query(sql, params)
        .await
        .err()
        .unwrap_or_else(|| panic!("{what}: succeeded without keys"));
    assert_eq!(sqlstate(&e), "58000", "{what}: {e:?}");
    let msg = db_message(&e);
    assert!(
        msg.contains(KR),
        "{what}: the error names the keyring: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyserver_outage_grace_then_fail_closed_then_recovery() {
    let mut env = EncEnv::start_with_grace(&columns(), GRACE);
    let mut s = Vec::new();
    let c = env.client().await;
    c.batch_execute("CREATE TABLE vault (id int4 PRIMARY KEY, secret text, note text); CREATE INDEX ON vault (secret)")
        .await
        .unwrap();
    let before = secret(&mut s, "before");
    let note = secret(&mut s, "note");
    c.execute(
        "INSERT INTO vault (id, secret, note) VALUES (1, $1, $2)",
        &[&before, &note],
    )
    .await
    .unwrap();

    tokio::task::block_in_place(|| env.ks.stop());
    let down = Instant::now();
    // Within the grace period the cached keys serve reads, lookups and writes.
    let within = secret(&mut s, "within");
    c.execute("INSERT INTO vault (id, secret) VALUES (2, $1)", &[&within])
        .await
        .unwrap();
    let rows = c
        .query("SELECT id, note FROM vault WHERE secret = $1", &[&before])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(1), note);
    assert!(
        down.elapsed() < Duration::from_secs(GRACE),
        "the within-grace statements took too long to prove anything"
    );

    // Then the proxy fails closed (bounded wait: grace + one poll + slack).
    let closed = loop {
        match c.query("SELECT note FROM vault WHERE id = 1", &[]).await {
            Ok(rows) => assert_eq!(rows[0].get::<_, String>(0), note, "data, never ciphertext"),
            Err(e) => {
                assert_eq!(sqlstate(&e), "58000", "{e:?}");
                break down.elapsed();
            }
        }
        assert!(
            down.elapsed() < Duration::from_secs(GRACE + 10),
            "the proxy kept serving keys {:?} after the keyserver went down (grace {GRACE} s)",
            down.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("failed closed {closed:?} after the keyserver went down (grace {GRACE} s)");
    assert!(
        closed >= Duration::from_secs(GRACE.saturating_sub(2)),
        "failed closed before the grace period could have run out: {closed:?}"
    );

    // Every kind of statement that needs a key fails, naming the keyring.
    let lost = secret(&mut s, "lost");
    assert_needs_keys_fails(
        &c,
        "read of a protected column",
        "SELECT secret FROM vault WHERE id = 1",
        &[],
    )
    .await;
    assert_needs_keys_fails(
        &c,
        "lookup by parameter",
        "SELECT id FROM vault WHERE secret = $1",
        &[&before],
    )
    .await;
    assert_needs_keys_fails(
        &c,
        "insert by parameter",
        "INSERT INTO vault (id, secret) VALUES (3, $1)",
        &[&lost],
    )
    .await;
    let e = c
        .simple_query(&format!(
            "INSERT INTO vault (id, secret) VALUES (4, '{lost}')"
        ))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "58000", "insert by literal: {e:?}");
    assert!(db_message(&e).contains(KR));
    // Nothing was written, the plaintext went nowhere (leak scan below), and the connection
    // still serves statements that need no key.
    let ids = tokio::task::block_in_place(|| {
        env.direct("SELECT string_agg(id::text, ',' ORDER BY id) FROM vault")
    });
    assert_eq!(
        ids.trim(),
        "1,2",
        "rows written while keys were unavailable"
    );
    let rows = c.query("SELECT count(*) FROM vault", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 2);
    let rows = c
        .query("SELECT id FROM vault WHERE id = 2", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);

    // The keyserver comes back: the proxy recovers by itself, on the same connection.
    tokio::task::block_in_place(|| env.ks.resume());
    let back = Instant::now();
    loop {
        match c
            .query("SELECT note FROM vault WHERE secret = $1", &[&before])
            .await
        {
            Ok(rows) => {
                assert_eq!(rows.len(), 1);
                assert_eq!(rows[0].get::<_, String>(0), note);
                break;
            }
            Err(e) => assert_eq!(sqlstate(&e), "58000", "{e:?}"),
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "the proxy did not recover after the keyserver came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "recovered {:?} after the keyserver came back",
        back.elapsed()
    );
    let after = secret(&mut s, "after");
    c.execute("INSERT INTO vault (id, secret) VALUES (5, $1)", &[&after])
        .await
        .unwrap();
    for v in [&before, &within, &after] {
        let rows = c
            .query("SELECT secret FROM vault WHERE secret = $1", &[v])
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{v} not found");
        assert_eq!(rows[0].get::<_, String>(0), **v);
    }
    for cell in env.stored_cells("public.vault", "secret") {
        check_cell(&cell, true).unwrap();
    }
    tokio::task::block_in_place(|| {
        env.assert_no_leak(
            &s,
            &["public.vault"],
            &[
                ("public.vault", "secret", true),
                ("public.vault", "note", false),
            ],
        )
    });
}

fn check(env: &EncEnv) -> (bool, String) {
    let out = env.proxy_command(&["check"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_fetches_keys_from_the_keyserver() {
    let mut env = EncEnv::start(&columns());
    env.direct("CREATE TABLE vault (id int4 PRIMARY KEY, secret bytea, note bytea)");
    env.direct("CREATE INDEX ON vault ((substring(secret from 1 for 16)))");
    let (ok, text) = check(&env);
    assert!(ok, "{text}");
    assert!(
        text.contains("configuration OK") && text.contains("keys of 1 keyring(s) fetched from"),
        "{text}"
    );

    // A keyring the proxy has no grant for: error naming the column.
    env.ks.create_keyring("other");
    let mut more = env.proxy.config_path();
    more.set_file_name("more.toml");
    let extra = ColumnSpec::new("public.vault.other", "text", "other").to_toml();
    env.direct("ALTER TABLE vault ADD COLUMN other bytea");
    std::fs::write(
        &more,
        std::fs::read_to_string(env.proxy.config_path()).unwrap() + "\n" + &extra,
    )
    .unwrap();
    let out = Command::new(cargo_bin("pgseal-proxy", "PGSEAL_PROXY_BIN"))
        .args(["check", "--config"])
        .arg(&more)
        .envs(support::proxy_env())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("error: keyserver") || text.contains("error: public.vault.other"),
        "{text}"
    );
    assert!(
        text.contains("other"),
        "the error names the keyring: {text}"
    );
    eprintln!("check without a grant:\n{text}");

    // Keyserver down: check fails and says which keyserver.
    env.ks.stop();
    let (ok, text) = check(&env);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("error: keyserver {}", env.ks.url)),
        "{text}"
    );
    assert!(text.contains("problem(s)"), "{text}");
    env.ks.resume();
    let (ok, text) = check(&env);
    assert!(ok, "{text}");
}

/// Rotation completed: `pgseal-proxy reencrypt` rewrites every old-version cell under the active
/// version (ciphertext only upstream), reports cells it cannot open, and afterwards the old
/// version can be disabled with every row still readable and found by equality.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_after_rotation_then_disable_the_old_version() {
    let env = EncEnv::start(&columns());
    let mut s = Vec::new();
    let c = env.client().await;
    c.batch_execute("CREATE TABLE vault (id int4 PRIMARY KEY, secret text, note text); CREATE INDEX ON vault (secret)")
        .await
        .unwrap();
    let mut rows = Vec::new();
    for i in 0..40 {
        let v = secret(&mut s, &format!("re{i}"));
        let note = (i % 3 != 0).then(|| secret(&mut s, &format!("reNote{i}")));
        c.execute(
            "INSERT INTO vault (id, secret, note) VALUES ($1, $2, $3)",
            &[&i, &v, &note],
        )
        .await
        .unwrap();
        rows.push((i, v, note));
    }
    assert_eq!(tokio::task::block_in_place(|| env.ks.rotate(KR)), 2);
    // Wait (bounded) until the proxy writes under version 2, then write a few more rows.
    let start = Instant::now();
    let mut i = 100;
    loop {
        let v = secret(&mut s, "reLate");
        c.execute("INSERT INTO vault (id, secret) VALUES ($1, $2)", &[&i, &v])
            .await
            .unwrap();
        rows.push((i, v, None));
        let cell = env.direct(&format!(
            "SELECT encode(secret, 'hex') FROM vault WHERE id = {i}"
        ));
        i += 1;
        if check_cell(&support::hex_decode(cell.trim()), true).unwrap() == 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "rotation not noticed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One cell that cannot be opened (garbage written straight into PostgreSQL, past the
    // stored-cell CHECK constraint, which refuses it: whoever can write can drop it).
    env.direct("ALTER TABLE vault DROP CONSTRAINT pgseal_cell_note");
    env.direct("UPDATE vault SET note = '\\x01000000019999'::bytea WHERE id = 1");
    let versions = |col: &str| -> Vec<u32> {
        env.stored_cells("public.vault", col)
            .iter()
            .filter_map(|c| check_cell(c, col == "secret").ok())
            .collect()
    };
    let old_secrets = versions("secret").iter().filter(|v| **v == 1).count();
    let old_notes = versions("note").iter().filter(|v| **v == 1).count();
    assert!(
        old_secrets >= 40 && old_notes == 25,
        "{old_secrets} {old_notes}"
    );

    let run = || {
        let out = Command::new(cargo_bin("pgseal-proxy", "PGSEAL_PROXY_BIN"))
            .args(["reencrypt", "--config"])
            .arg(env.proxy.config_path())
            .envs(support::proxy_env())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, err) = tokio::task::block_in_place(run);
    eprintln!("reencrypt:\n{out}{err}");
    assert!(!ok, "an unreadable cell must fail the run: {out}{err}");
    assert!(
        out.contains(&format!(
            "public.vault.secret: {old_secrets} cell(s) rewritten to key version 2\n"
        )),
        "{out}"
    );
    assert!(
        out.contains(
            "public.vault.note: 25 cell(s) rewritten to key version 2, 1 could not be opened"
        ),
        "{out}"
    );
    assert!(err.contains("1 cell(s) could not be opened"), "{err}");
    // Clear the garbage; a second run has nothing left to do and succeeds.
    env.direct("UPDATE vault SET note = NULL WHERE id = 1");
    let (ok, out, err) = tokio::task::block_in_place(run);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("public.vault.secret: 0 cell(s) rewritten"),
        "{out}"
    );
    assert!(versions("secret").iter().all(|v| *v == 2));
    assert!(versions("note").iter().all(|v| *v == 2));

    // Version 1 can go: every row is still readable and found by equality.
    tokio::task::block_in_place(|| env.ks.disable(KR, 1));
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (id, v, note) in &rows {
        let note = if *id == 1 { None } else { note.clone() };
        let got = c
            .query("SELECT id, note FROM vault WHERE secret = $1", &[v])
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "row {id} not found after re-encryption");
        assert_eq!(got[0].get::<_, i32>(0), *id);
        assert_eq!(got[0].get::<_, Option<String>>(1), note);
    }
    tokio::task::block_in_place(|| {
        env.assert_no_leak(
            &s,
            &["public.vault"],
            &[
                ("public.vault", "secret", true),
                ("public.vault", "note", false),
            ],
        )
    });
}
