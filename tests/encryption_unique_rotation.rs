//! UNIQUE and `ON CONFLICT` on a protected `unique = true` column across data-key rotations and
//! `pgseal-proxy reencrypt`, with two concurrent writers (real PostgreSQL 15, keyserver and
//! `pgseal-proxy serve`).
//!
//! The blind index of a value must not depend on the data-key version that seals its envelope
//! (docs/format.md §2.4): otherwise, after `keyring rotate`, equal values get different tags,
//! the UNIQUE index on the tag accepts a duplicate, `ON CONFLICT (email) DO UPDATE` inserts a
//! second row, and `reencrypt` then stops with 23505.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::keyserver::ColumnSpec;
use support::{check_cell, secret, sqlstate, EncEnv};

const KR: &str = "uniquering";
/// Distinct e-mail addresses the concurrent writer upserts.
const WRITER_KEYS: usize = 12;
/// Upper bound of the writer's statements (it normally stops much earlier).
const WRITER_MAX_OPS: usize = 4000;

/// What the concurrent writer saw.
#[derive(Default, Debug)]
struct Ledger {
    /// E-mail → number of upserts that succeeded (the row's `n` must end up equal).
    upserts: BTreeMap<String, i32>,
    /// Plain INSERTs of an existing e-mail that PostgreSQL accepted (must stay 0).
    duplicates_accepted: u32,
    /// Plain INSERTs of an existing e-mail refused with 23505.
    duplicates_refused: u32,
    /// Any other error (must stay empty).
    errors: Vec<String>,
}

/// Writes under the proxy until `stop`: upserts over `emails` (`ON CONFLICT (email) DO UPDATE`)
/// and plain INSERTs of an already stored e-mail, recording everything in a ledger.
async fn writer(
    env_conn: String,
    emails: Vec<String>,
    existing: String,
    first_id: i32,
    stop: Arc<AtomicBool>,
) -> Ledger {
    let c = support::connect(&env_conn).await;
    let upsert = c
        .prepare(
            "INSERT INTO acct (id, email, n) VALUES ($1, $2, 1) \
             ON CONFLICT (email) DO UPDATE SET n = acct.n + 1",
        )
        .await
        .unwrap();
    let insert = c
        .prepare("INSERT INTO acct (id, email, n) VALUES ($1, $2, 0)")
        .await
        .unwrap();
    let mut ledger = Ledger::default();
    let mut id = first_id;
    for op in 0..WRITER_MAX_OPS {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        id += 1;
        if op % 5 == 4 {
            match c.execute(&insert, &[&id, &existing]).await {
                Ok(_) => ledger.duplicates_accepted += 1,
                Err(e) if e.code().map(|s| s.code()) == Some("23505") => {
                    ledger.duplicates_refused += 1
                }
                Err(e) => ledger.errors.push(format!("duplicate INSERT: {e:?}")),
            }
        } else {
            let email = &emails[op % emails.len()];
            match c.execute(&upsert, &[&id, email]).await {
                Ok(1) => *ledger.upserts.entry(email.clone()).or_default() += 1,
                Ok(n) => ledger.errors.push(format!("upsert changed {n} rows")),
                Err(e) => ledger.errors.push(format!("upsert: {e:?}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    ledger
}

/// Inserts fresh rows (bounded) until one is sealed under `version`.
async fn wait_for_version(env: &EncEnv, c: &tokio_postgres::Client, id: &mut i32, version: u32) {
    let start = Instant::now();
    loop {
        *id += 1;
        let email = format!("probe{id}@example.org");
        c.execute(
            "INSERT INTO acct (id, email, n) VALUES ($1, $2, 0)",
            &[&*id, &email],
        )
        .await
        .unwrap();
        let cell = env.direct(&format!(
            "SELECT encode(email, 'hex') FROM acct WHERE id = {id}"
        ));
        if check_cell(&support::hex_decode(cell.trim()), true).unwrap() == version {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "key version {version} not noticed by the proxy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A plain INSERT of `email` (already stored) must be refused with 23505.
async fn assert_duplicate_refused(c: &tokio_postgres::Client, id: i32, email: &str, when: &str) {
    let e = c
        .execute(
            "INSERT INTO acct (id, email, n) VALUES ($1, $2, 0)",
            &[&id, &email],
        )
        .await
        .expect_err(&format!("a duplicate e-mail was accepted {when}"));
    assert_eq!(sqlstate(&e), "23505", "{when}: {e:?}");
}

fn reencrypt(env: &EncEnv) -> (bool, String) {
    let out = env.proxy_command(&["reencrypt"]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_and_on_conflict_hold_across_two_rotations_and_a_reencrypt() {
    let env = EncEnv::start(&[
        ColumnSpec::new("public.acct.email", "text", KR).unique(),
        ColumnSpec::new("public.acct.note", "text", KR),
    ]);
    let mut s = Vec::new();
    let c = env.client().await;
    c.batch_execute(
        "CREATE TABLE acct (id int4 PRIMARY KEY, email text, n int4, note text); \
         CREATE UNIQUE INDEX acct_email_key ON acct (email)",
    )
    .await
    .unwrap();
    // Rows written under data-key version 1.
    let mut base = Vec::new();
    for i in 0..30i32 {
        let email = secret(&mut s, &format!("base{i}"));
        let note = secret(&mut s, &format!("note{i}"));
        c.execute(
            "INSERT INTO acct (id, email, n, note) VALUES ($1, $2, 0, $3)",
            &[&i, &email, &note],
        )
        .await
        .unwrap();
        base.push(email);
    }
    assert_duplicate_refused(&c, 900, &base[0], "before any rotation").await;

    let emails: Vec<String> = (0..WRITER_KEYS)
        .map(|k| secret(&mut s, &format!("w{k}")))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    // Two concurrent writers upserting the same e-mails (PostgreSQL's speculative insertion
    // races them on the UNIQUE index), each with its own ids.
    let tasks: Vec<_> = [10_000i32, 20_000]
        .into_iter()
        .map(|first_id| {
            tokio::spawn(writer(
                env.conn_str(),
                emails.clone(),
                base[1].clone(),
                first_id,
                Arc::clone(&stop),
            ))
        })
        .collect();

    let mut id = 1000i32;
    // Two rotations; after each, once the proxy seals under the new version, values stored
    // under older versions still conflict.
    for (round, version) in [(1, 2u32), (2, 3u32)] {
        assert_eq!(tokio::task::block_in_place(|| env.ks.rotate(KR)), version);
        wait_for_version(&env, &c, &mut id, version).await;
        for (i, email) in base.iter().enumerate().step_by(7) {
            id += 1;
            assert_duplicate_refused(&c, id, email, &format!("after rotation {round} (base{i})"))
                .await;
        }
        // ON CONFLICT (email) DO UPDATE finds the version-1 row and updates it.
        id += 1;
        let n: i32 = c
            .query_one(
                "INSERT INTO acct (id, email, n) VALUES ($1, $2, 1) \
                 ON CONFLICT (email) DO UPDATE SET n = acct.n + 1 RETURNING n",
                &[&id, &base[2]],
            )
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{}", env.proxy.log()))
            .get(0);
        assert_eq!(n, round, "ON CONFLICT after rotation {round} updated base2");
    }

    // Re-encryption while the writer keeps going: it must complete (no 23505).
    let (ok, out) = tokio::task::block_in_place(|| reencrypt(&env));
    assert!(ok, "reencrypt under a concurrent writer failed:\n{out}");
    stop.store(true, Ordering::SeqCst);
    let mut ledger = Ledger::default();
    for t in tasks {
        let l = t.await.unwrap();
        for (email, n) in l.upserts {
            *ledger.upserts.entry(email).or_default() += n;
        }
        ledger.duplicates_accepted += l.duplicates_accepted;
        ledger.duplicates_refused += l.duplicates_refused;
        ledger.errors.extend(l.errors);
    }
    assert!(
        ledger.errors.is_empty(),
        "writer errors: {:?}\nproxy log:\n{}",
        ledger.errors,
        env.proxy.log()
    );
    assert_eq!(ledger.duplicates_accepted, 0, "{ledger:?}");
    assert!(ledger.duplicates_refused > 0, "{ledger:?}");
    // Rows the writer updated between reencrypt's read and write were left alone: a second
    // run, with the writer stopped, rewrites them.
    let (ok, out) = tokio::task::block_in_place(|| reencrypt(&env));
    assert!(ok, "second reencrypt failed:\n{out}");

    // Every cell is on the newest version, and every tag is unique.
    for col in ["email", "note"] {
        let versions: Vec<u32> = env
            .stored_cells("public.acct", col)
            .iter()
            .map(|cell| check_cell(cell, col == "email").unwrap())
            .collect();
        assert!(!versions.is_empty());
        assert!(
            versions.iter().all(|v| *v == 3),
            "{col}: versions after reencrypt {versions:?}\n{out}"
        );
    }
    let counts = env.direct(
        "SELECT count(*) || ' ' || count(DISTINCT substring(email from 1 for 16)) FROM acct",
    );
    let (rows, tags) = counts.trim().split_once(' ').unwrap();
    assert_eq!(rows, tags, "stored rows vs distinct blind indexes");

    // Client-side ledger against the table: one row per e-mail, `n` = upserts.
    for email in &emails {
        let got = c
            .query("SELECT n FROM acct WHERE email = $1", &[email])
            .await
            .unwrap();
        let expected = ledger.upserts.get(email).copied().unwrap_or(0);
        if expected == 0 {
            assert!(got.is_empty(), "{email}: {} rows, never written", got.len());
            continue;
        }
        assert_eq!(got.len(), 1, "{email}: rows");
        assert_eq!(got[0].get::<_, i32>(0), expected, "{email}: n vs ledger");
    }
    for (i, email) in base.iter().enumerate() {
        let got = c
            .query("SELECT id FROM acct WHERE email = $1", &[email])
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "base{i}");
        assert_eq!(got[0].get::<_, i32>(0), i as i32, "base{i}");
    }
    let total: i64 = c
        .query_one(
            "SELECT count(*) FROM acct WHERE id < 1000 OR id >= 10000",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let upserted = ledger.upserts.len() as i64;
    assert_eq!(total, 30 + upserted, "rows of base and writer e-mails");
    assert_duplicate_refused(&c, 999, &base[3], "after reencrypt").await;
    tokio::task::block_in_place(|| {
        env.assert_no_leak(
            &s,
            &["public.acct"],
            &[
                ("public.acct", "email", true),
                ("public.acct", "note", false),
            ],
        )
    });
}

/// Sets the keyring's blind-index generation 1 to "the material of data-key version
/// `source`", with legacy tags below it when `legacy` — what keyserver schema migration 3 does
/// for a keyring whose active version is `source` when a release before lineages is upgraded
/// (docs/format.md §2.4) — and restarts the proxy so that it fetches the lineage afresh.
fn stage_carried_over_lineage(env: &mut EncEnv, source: u32, legacy: bool) {
    env.ks.stop();
    let sql = format!(
        "UPDATE index_generations SET wrapped = NULL, source_version = {source}; \
         UPDATE keyrings SET legacy_tags = {};",
        u8::from(legacy)
    );
    let out = Command::new("sqlite3")
        .arg(env.ks.db_path())
        .arg(&sql)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.ks.resume();
    env.restart_proxy();
}

/// The upgrade path of a keyring carried over from a release that keyed blind indexes per
/// data-key version: cells of the version generation 1 comes from keep their tags; cells of an
/// older version carry legacy tags that lookups still find, `reencrypt` re-tags them, and then
/// UNIQUE compares every cell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carried_over_keyring_legacy_tags_are_found_then_retagged() {
    const LKR: &str = "legacyring";
    let mut env = EncEnv::start(&[ColumnSpec::new("public.leg.email", "text", LKR).unique()]);
    let mut s = Vec::new();
    // An earlier release at data-key version 1: its tags are those of version 1's material.
    stage_carried_over_lineage(&mut env, 1, false);
    let c = env.client().await;
    c.batch_execute(
        "CREATE TABLE leg (id int4 PRIMARY KEY, email text); \
         CREATE UNIQUE INDEX leg_email_key ON leg (email)",
    )
    .await
    .unwrap();
    let old: Vec<String> = (0..20)
        .map(|i| secret(&mut s, &format!("old{i}")))
        .collect();
    for (i, e) in old.iter().enumerate() {
        c.execute(
            "INSERT INTO leg (id, email) VALUES ($1, $2)",
            &[&(i as i32), e],
        )
        .await
        .unwrap();
    }
    // The earlier release rotated to version 2, then the keyserver was upgraded: generation 1
    // is version 2's material, version 1's cells carry legacy tags.
    assert_eq!(tokio::task::block_in_place(|| env.ks.rotate(LKR)), 2);
    tokio::task::block_in_place(|| stage_carried_over_lineage(&mut env, 2, true));
    let shown = env.ks.admin_ok(&["keyring", "show", LKR]);
    assert!(
        shown.contains("legacy tags under:       version(s) 1"),
        "{shown}"
    );
    let c = env.client().await;
    let mut id = 100i32;
    wait_for_version_in(&env, &c, "leg", &mut id, 2).await;
    let new: Vec<String> = (0..5).map(|i| secret(&mut s, &format!("new{i}"))).collect();
    for e in &new {
        id += 1;
        c.execute("INSERT INTO leg (id, email) VALUES ($1, $2)", &[&id, e])
            .await
            .unwrap();
    }
    let tags_of = |env: &EncEnv| -> Vec<String> {
        env.direct("SELECT encode(substring(email from 1 for 16), 'hex') FROM leg WHERE id < 20 ORDER BY id")
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let legacy_tags = tags_of(&env);
    // Lookups find rows under legacy tags and under the generation's.
    for e in old.iter().chain(&new) {
        let rows = c
            .query("SELECT email FROM leg WHERE email = $1", &[e])
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{e} before re-tagging");
    }
    // Until they are re-tagged, the UNIQUE index does not compare legacy cells with new ones
    // (docs/format.md §2.4): a duplicate of a version-1 value gets in, as it did across a
    // rotation before lineages. Re-encryption then stops on that column naming the index; once
    // the duplicate is removed through the proxy it completes.
    c.execute("INSERT INTO leg (id, email) VALUES (999, $1)", &[&old[7]])
        .await
        .unwrap();
    let (ok, out) = tokio::task::block_in_place(|| reencrypt(&env));
    assert!(!ok, "{out}");
    assert!(
        out.contains("public.leg.email: two rows hold the same value of this unique column")
            && out.contains("leg_email_key"),
        "{out}"
    );
    c.execute("DELETE FROM leg WHERE id = 999", &[])
        .await
        .unwrap();
    // Re-encryption re-tags the version-1 cells.
    let (ok, out) = tokio::task::block_in_place(|| reencrypt(&env));
    assert!(ok, "{out}");
    // (The stopped run's batch was rolled back; the rerun rewrites all 20.)
    assert!(
        out.contains("public.leg.email: 20 cell(s) rewritten to key version 2"),
        "{out}"
    );
    let retagged = tags_of(&env);
    assert_eq!(retagged.len(), 20);
    for (a, b) in legacy_tags.iter().zip(&retagged) {
        assert_ne!(a, b, "a legacy tag was left");
    }
    // UNIQUE now compares them with new writes, and ON CONFLICT finds them.
    for e in old.iter().step_by(5) {
        id += 1;
        assert_duplicate_refused_in(&c, "leg", id, e).await;
    }
    id += 1;
    let n = c
        .execute(
            "INSERT INTO leg (id, email) VALUES ($1, $2) ON CONFLICT (email) DO NOTHING",
            &[&id, &old[3]],
        )
        .await
        .unwrap();
    assert_eq!(n, 0, "ON CONFLICT found the re-tagged row");
    // Raising min_decryption_version ends the legacy lookups; every row is still found.
    tokio::task::block_in_place(|| env.ks.admin_ok(&["keyring", "set-min-version", LKR, "2"]));
    let start = Instant::now();
    loop {
        let shown = env.ks.admin_ok(&["keyring", "show", LKR]);
        if !shown.contains("legacy tags under") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{shown}");
    }
    for e in old.iter().chain(&new) {
        let rows = c
            .query("SELECT email FROM leg WHERE email = $1", &[e])
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{e} after re-tagging");
    }
    let counts = env.direct(
        "SELECT count(*) || ' ' || count(DISTINCT substring(email from 1 for 16)) FROM leg",
    );
    let (rows, tags) = counts.trim().split_once(' ').unwrap();
    assert_eq!(rows, tags);
}

/// [`wait_for_version`] on another table with an `(id, email)` shape.
async fn wait_for_version_in(
    env: &EncEnv,
    c: &tokio_postgres::Client,
    table: &str,
    id: &mut i32,
    version: u32,
) {
    let start = Instant::now();
    loop {
        *id += 1;
        let email = format!("probe{id}@example.org");
        c.execute(
            &format!("INSERT INTO {table} (id, email) VALUES ($1, $2)"),
            &[&*id, &email],
        )
        .await
        .unwrap();
        let cell = env.direct(&format!(
            "SELECT encode(email, 'hex') FROM {table} WHERE id = {id}"
        ));
        if check_cell(&support::hex_decode(cell.trim()), true).unwrap() == version {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "key version {version} not noticed by the proxy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn assert_duplicate_refused_in(
    c: &tokio_postgres::Client,
    table: &str,
    id: i32,
    email: &str,
) {
    let e = c
        .execute(
            &format!("INSERT INTO {table} (id, email) VALUES ($1, $2)"),
            &[&id, &email],
        )
        .await
        .expect_err("a duplicate e-mail was accepted");
    assert_eq!(sqlstate(&e), "23505", "{e:?}");
}
