//! Rotating a keyring's blind-index key online (docs/format.md §2.5), against real PostgreSQL
//! 15, keyserver and `pgseal-proxy serve`: prepare DDL, `keyring rotate-index` (dual cells),
//! the re-index pass of `pgseal-proxy reencrypt`, `--cutover`, the compaction pass, `--finish`,
//! the clean-up DDL — with two concurrent writers upserting, inserting duplicates and looking
//! values up (extended and simple protocol, and an equality self-join) the whole time, every
//! outcome checked against a client-side ledger: no upsert lost, no duplicate accepted, no
//! lookup missing a row or finding two.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::keyserver::ColumnSpec;
use support::{check_cell, secret, EncEnv};

const KR: &str = "bidxring";
/// Distinct e-mail addresses the writers upsert (shared by both, so their upserts race).
const SHARED_KEYS: usize = 10;
/// How long the writers go on in a phase before the next step.
const PHASE_TIME: Duration = Duration::from_secs(3);
/// Upper bound of a writer's operations (it normally stops much earlier).
const WRITER_MAX_OPS: usize = 20_000;

/// What one writer saw.
#[derive(Default, Debug)]
struct Ledger {
    /// E-mail → upserts that succeeded (the row's `n` must end up equal to the sum).
    upserts: BTreeMap<String, i32>,
    /// Upserts refused with 23505 (an upsert rendered for one phase meeting a row written
    /// under the next phase's index in the instant the proxy switches; not lost: the client
    /// was told).
    upserts_refused: u32,
    /// Plain INSERTs of an already stored e-mail that were accepted (must stay 0).
    duplicates_accepted: u32,
    /// Plain INSERTs of an already stored e-mail refused with 23505.
    duplicates_refused: u32,
    /// Lookups of a stored e-mail (extended, simple, join) that found no row (must stay 0).
    lookups_missed: u32,
    /// Lookups that found more than one row (must stay 0).
    lookups_doubled: u32,
    /// Lookups made.
    lookups: u32,
    /// Any other error (must stay empty).
    errors: Vec<String>,
}

impl Ledger {
    fn add(&mut self, other: Ledger) {
        for (k, n) in other.upserts {
            *self.upserts.entry(k).or_default() += n;
        }
        self.upserts_refused += other.upserts_refused;
        self.duplicates_accepted += other.duplicates_accepted;
        self.duplicates_refused += other.duplicates_refused;
        self.lookups_missed += other.lookups_missed;
        self.lookups_doubled += other.lookups_doubled;
        self.lookups += other.lookups;
        self.errors.extend(other.errors);
    }

    fn lookup(&mut self, what: &str, rows: usize) {
        self.lookups += 1;
        match rows {
            1 => {}
            0 => {
                self.lookups_missed += 1;
                self.errors.push(format!("{what}: no row"));
            }
            n => {
                self.lookups_doubled += 1;
                self.errors.push(format!("{what}: {n} rows"));
            }
        }
    }
}

/// Writes and reads through the proxy until `stop`.
async fn writer(
    conn: String,
    shared: Vec<String>,
    base: Vec<(i32, String)>,
    first_id: i32,
    stop: Arc<AtomicBool>,
) -> Ledger {
    let c = support::connect(&conn).await;
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
    let lookup = c
        .prepare("SELECT id FROM acct WHERE email = $1")
        .await
        .unwrap();
    let join = c
        .prepare("SELECT b.id FROM acct a JOIN acct b ON a.email = b.email WHERE a.id = $1")
        .await
        .unwrap();
    let alias_insert = c
        .prepare("INSERT INTO alias (id, email) VALUES ($1, $2)")
        .await
        .unwrap();
    let alias_join = c
        .prepare("SELECT a.id FROM acct a JOIN alias x ON a.email = x.email WHERE x.id = $1")
        .await
        .unwrap();
    // (alias id, acct id) of the alias rows written so far.
    let mut aliases: Vec<(i32, i32)> = Vec::new();
    let mut l = Ledger::default();
    // This writer's own e-mails: each inserted once, then looked up.
    let mut own: Vec<(i32, String)> = Vec::new();
    let mut id = first_id;
    for op in 0..WRITER_MAX_OPS {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        id += 1;
        match op % 6 {
            0 | 1 => {
                let email = &shared[op % shared.len()];
                match c.execute(&upsert, &[&id, email]).await {
                    Ok(1) => *l.upserts.entry(email.clone()).or_default() += 1,
                    Ok(n) => l.errors.push(format!("upsert changed {n} rows")),
                    Err(e) if e.code().map(|s| s.code()) == Some("23505") => l.upserts_refused += 1,
                    Err(e) => l.errors.push(format!("upsert: {e:?}")),
                }
            }
            2 => {
                let email = format!("own{id}-{}@example.org", first_id);
                match c.execute(&insert, &[&id, &email]).await {
                    Ok(_) => own.push((id, email)),
                    Err(e) => l.errors.push(format!("insert: {e:?}")),
                }
                // An alias row (other table, same index group) for a row stored some time
                // ago — often in an earlier phase of the rotation, so joins compare cells of
                // different forms and generations.
                let target = if op % 12 == 2 {
                    Some(base[op % base.len()].clone())
                } else {
                    own.len().checked_sub(20).map(|k| own[k].clone())
                };
                if let Some((acct_id, email)) = target {
                    match c.execute(&alias_insert, &[&id, &email]).await {
                        Ok(_) => aliases.push((id, acct_id)),
                        Err(e) => l.errors.push(format!("alias insert: {e:?}")),
                    }
                }
            }
            3 => {
                // A duplicate of a base row or of one of this writer's rows.
                let email = match own.len() {
                    0 => base[op % base.len()].1.clone(),
                    n => own[op % n].1.clone(),
                };
                match c.execute(&insert, &[&id, &email]).await {
                    Ok(_) => l.duplicates_accepted += 1,
                    Err(e) if e.code().map(|s| s.code()) == Some("23505") => {
                        l.duplicates_refused += 1
                    }
                    Err(e) => l.errors.push(format!("duplicate INSERT: {e:?}")),
                }
            }
            4 => {
                // Extended-protocol lookup and an equality join on the protected column.
                let (want, email) = if own.is_empty() || op % 12 == 4 {
                    base[op % base.len()].clone()
                } else {
                    own[op % own.len()].clone()
                };
                match c.query(&lookup, &[&email]).await {
                    Ok(rows) => {
                        l.lookup("lookup", rows.len());
                        if rows.first().map(|r| r.get::<_, i32>(0)) != Some(want) && rows.len() == 1
                        {
                            l.errors.push("lookup: wrong row".into());
                        }
                    }
                    Err(e) => l.errors.push(format!("lookup: {e:?}")),
                }
                match c.query(&join, &[&want]).await {
                    Ok(rows) => l.lookup("join", rows.len()),
                    Err(e) => l.errors.push(format!("join: {e:?}")),
                }
                if !aliases.is_empty() {
                    let (alias_id, acct_id) = aliases[op % aliases.len()];
                    match c.query(&alias_join, &[&alias_id]).await {
                        Ok(rows) => {
                            l.lookup("alias join", rows.len());
                            if rows.len() == 1 && rows[0].get::<_, i32>(0) != acct_id {
                                l.errors.push("alias join: wrong row".into());
                            }
                        }
                        Err(e) => l.errors.push(format!("alias join: {e:?}")),
                    }
                }
            }
            _ => {
                // Simple-protocol lookup with an inline literal.
                let (want, email) = match own.len() {
                    0 => base[op % base.len()].clone(),
                    n => own[op % n].clone(),
                };
                match c
                    .simple_query(&format!("SELECT id FROM acct WHERE email = '{email}'"))
                    .await
                {
                    Ok(msgs) => {
                        let ids: Vec<String> = msgs
                            .iter()
                            .filter_map(|m| match m {
                                tokio_postgres::SimpleQueryMessage::Row(r) => {
                                    r.get(0).map(str::to_owned)
                                }
                                _ => None,
                            })
                            .collect();
                        l.lookup("simple lookup", ids.len());
                        if ids.len() == 1 && ids[0] != want.to_string() {
                            l.errors.push("simple lookup: wrong row".into());
                        }
                    }
                    Err(e) => l.errors.push(format!("simple lookup: {e:?}")),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    l
}

fn proxy_cmd(env: &EncEnv, args: &[&str]) -> (bool, String) {
    let out = env.proxy_command(args);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs the DDL `pgseal-proxy schema` prints, one statement per line, straight upstream.
fn run_ddl(env: &EncEnv, flag: &str) {
    let (ok, ddl) = proxy_cmd(env, &["schema", flag, "--keyring", KR]);
    assert!(ok, "schema {flag}: {ddl}");
    let statements: Vec<&str> = ddl
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("--"))
        .collect();
    assert!(
        !statements.is_empty(),
        "schema {flag} printed no DDL:\n{ddl}"
    );
    for s in statements {
        env.direct(s);
    }
}

/// Waits until every granted proxy confirmed the current phase (bounded).
fn wait_for_confirmation(env: &EncEnv, phase: &str) {
    let start = Instant::now();
    loop {
        let status = env
            .ks
            .admin_ok(&["keyring", "rotate-index", KR, "--status", "--json"]);
        let squashed: String = status.chars().filter(|c| !c.is_whitespace()).collect();
        if squashed.contains(&format!("\"phase\":\"{phase}\""))
            && squashed.contains("\"confirmed\":true")
            && !squashed.contains("\"confirmed\":false")
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the proxy did not confirm phase {phase}:\n{status}\n{}",
            env.proxy.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The number of stored e-mail cells that are dual (byte 16 = 2), and all of them.
fn dual_cells(env: &EncEnv) -> (usize, usize) {
    let cells = env.stored_cells("public.acct", "email");
    let dual = cells.iter().filter(|c| c.get(16) == Some(&2)).count();
    (dual, cells.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blind_index_key_rotation_under_concurrent_writers_checked_against_a_ledger() {
    let env = EncEnv::start(&[
        ColumnSpec::new("public.acct.email", "text", KR)
            .unique()
            .group("mail"),
        ColumnSpec::new("public.acct.note", "text", KR),
        ColumnSpec::new("public.alias.email", "text", KR).group("mail"),
    ]);
    let mut s = Vec::new();
    let c = env.client().await;
    c.batch_execute(
        "CREATE TABLE acct (id int4 PRIMARY KEY, email text, n int4, note text); \
         CREATE UNIQUE INDEX acct_email_key ON acct (email)",
    )
    .await
    .unwrap();
    c.batch_execute("CREATE TABLE alias (id int4 PRIMARY KEY, email text)")
        .await
        .unwrap();
    let mut base = Vec::new();
    for i in 0..40i32 {
        let email = secret(&mut s, &format!("base{i}"));
        let note = secret(&mut s, &format!("note{i}"));
        c.execute(
            "INSERT INTO acct (id, email, n, note) VALUES ($1, $2, 0, $3)",
            &[&i, &email, &note],
        )
        .await
        .unwrap();
        base.push((i, email));
    }
    let tag_of = |env: &EncEnv, id: i32| {
        env.direct(&format!(
            "SELECT encode(substring(email from 1 for 16), 'hex') FROM acct WHERE id = {id}"
        ))
        .trim()
        .to_owned()
    };
    let tags_before: Vec<String> = base.iter().map(|(i, _)| tag_of(&env, *i)).collect();

    // Refused without the prepare DDL: a rotation cannot start a pass on an unprepared table.
    let shared: Vec<String> = (0..SHARED_KEYS)
        .map(|k| secret(&mut s, &format!("w{k}")))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = [10_000i32, 20_000]
        .into_iter()
        .map(|first_id| {
            tokio::spawn(writer(
                env.conn_str(),
                shared.clone(),
                base.clone(),
                first_id,
                Arc::clone(&stop),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    tokio::task::block_in_place(|| {
        // Phase 0: prepare (rotation variant of the CHECK, second UNIQUE index), online.
        run_ddl(&env, "--index-rotation");
        // Phase 1: dual cells.
        env.ks.admin_ok(&["keyring", "rotate-index", KR]);
        wait_for_confirmation(&env, "dual");
        // Writers go on in each phase for a while (cells of every form get mixed).
        std::thread::sleep(PHASE_TIME);
        // The cut-over is refused before a complete re-index pass.
        let early = env.ks.admin(&["keyring", "rotate-index", KR, "--cutover"]);
        assert!(
            !early.status.success(),
            "cut-over accepted before a re-index pass"
        );
        // Phase 2: re-index, while the writers go on.
        let (ok, out) = proxy_cmd(&env, &["reencrypt"]);
        assert!(ok, "re-index pass failed:\n{out}");
        assert!(
            out.contains("re-index pass") && out.contains("complete"),
            "{out}"
        );
        let (dual, all) = dual_cells(&env);
        assert_eq!(dual, all, "every cell dual after the re-index pass");
        // Phase 3: cut-over.
        env.ks
            .admin_ok(&["keyring", "rotate-index", KR, "--cutover"]);
        wait_for_confirmation(&env, "cutover");
        std::thread::sleep(PHASE_TIME);
        let early = env.ks.admin(&["keyring", "rotate-index", KR, "--finish"]);
        assert!(
            !early.status.success(),
            "finish accepted before a compaction pass"
        );
        // Phase 4: compaction.
        let (ok, out) = proxy_cmd(&env, &["reencrypt"]);
        assert!(ok, "compaction pass failed:\n{out}");
        assert!(
            out.contains("compaction pass") && out.contains("complete"),
            "{out}"
        );
        let (dual, all) = dual_cells(&env);
        assert_eq!(dual, 0, "no dual cell of {all} after the compaction pass");
        // Phase 5: finish, then (once the proxy has taken it in) the clean-up DDL.
        env.ks
            .admin_ok(&["keyring", "rotate-index", KR, "--finish"]);
        std::thread::sleep(Duration::from_secs(3));
        run_ddl(&env, "--index-rotation-done");
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::SeqCst);
    let mut ledger = Ledger::default();
    for t in tasks {
        ledger.add(t.await.unwrap());
    }
    eprintln!(
        "ledger: {} lookups, {} upserts ({} refused at a phase switch), {} duplicates refused",
        ledger.lookups,
        ledger.upserts.values().sum::<i32>(),
        ledger.upserts_refused,
        ledger.duplicates_refused
    );
    assert!(
        ledger.errors.is_empty(),
        "writer errors: {:?}\nproxy log:\n{}",
        ledger.errors,
        env.proxy.log()
    );
    assert_eq!(ledger.duplicates_accepted, 0, "{ledger:?}");
    assert_eq!(ledger.lookups_missed, 0, "{ledger:?}");
    assert_eq!(ledger.lookups_doubled, 0, "{ledger:?}");
    assert!(
        ledger.duplicates_refused > 0 && ledger.lookups > 50,
        "{ledger:?}"
    );
    assert!(ledger.upserts_refused <= 4, "{ledger:?}");

    // Every base row's tag changed (a new generation), every cell is a single cell, tags are
    // unique, and the values are all still found.
    for ((i, _), before) in base.iter().zip(&tags_before) {
        assert_ne!(
            &tag_of(&env, *i),
            before,
            "base{i}: tag unchanged by the rotation"
        );
    }
    for cell in env.stored_cells("public.acct", "email") {
        check_cell(&cell, true).unwrap();
    }
    let counts = env.direct(
        "SELECT count(*) || ' ' || count(DISTINCT substring(email from 1 for 16)) FROM acct",
    );
    let (rows, tags) = counts.trim().split_once(' ').unwrap();
    assert_eq!(rows, tags, "stored rows vs distinct blind indexes");
    for (i, email) in &base {
        let got = c
            .query("SELECT id FROM acct WHERE email = $1", &[email])
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "base{i}");
        assert_eq!(got[0].get::<_, i32>(0), *i);
    }
    for email in &shared {
        let got = c
            .query("SELECT n FROM acct WHERE email = $1", &[email])
            .await
            .unwrap();
        let expected = ledger.upserts.get(email).copied().unwrap_or(0);
        if expected == 0 {
            assert!(got.is_empty(), "{email}: never upserted");
            continue;
        }
        assert_eq!(got.len(), 1, "{email}: rows");
        assert_eq!(got[0].get::<_, i32>(0), expected, "{email}: n vs ledger");
    }
    // UNIQUE and ON CONFLICT after the rotation, with the second index gone.
    let e = c
        .execute(
            "INSERT INTO acct (id, email, n) VALUES (999, $1, 0)",
            &[&base[5].1],
        )
        .await
        .expect_err("a duplicate was accepted after the rotation");
    assert_eq!(support::sqlstate(&e), "23505");
    let n: i32 = c
        .query_one(
            "INSERT INTO acct (id, email, n) VALUES (998, $1, 1) \
             ON CONFLICT (email) DO UPDATE SET n = acct.n + 7 RETURNING n",
            &[&base[6].1],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 7);
    assert_eq!(
        env.direct("SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'pgseal_next%'")
            .trim(),
        "0"
    );
    tokio::task::block_in_place(|| {
        env.assert_no_leak(
            &s,
            &["public.acct", "public.alias"],
            &[
                ("public.acct", "email", true),
                ("public.acct", "note", false),
                ("public.alias", "email", true),
            ],
        )
    });
}

/// `reencrypt` refuses the re-index pass while the table is not prepared, and names the DDL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_on_an_unprepared_table_is_refused() {
    let env = EncEnv::start(&[ColumnSpec::new("public.acct.email", "text", KR).unique()]);
    let c = env.client().await;
    c.batch_execute(
        "CREATE TABLE acct (id int4 PRIMARY KEY, email text); \
         CREATE UNIQUE INDEX acct_email_key ON acct (email)",
    )
    .await
    .unwrap();
    c.batch_execute("INSERT INTO acct (id, email) VALUES (1, 'a@example.org')")
        .await
        .unwrap();
    tokio::task::block_in_place(|| {
        env.ks.admin_ok(&["keyring", "rotate-index", KR]);
        wait_for_confirmation(&env, "dual");
        let (ok, out) = proxy_cmd(&env, &["reencrypt"]);
        assert!(!ok, "a pass ran on an unprepared table:\n{out}");
        assert!(out.contains("schema --index-rotation"), "{out}");
        // One reencrypt at a time: while another session holds the run's advisory lock, a
        // second run stops before rewriting anything.
        std::thread::scope(|scope| {
            let holder = scope.spawn(|| {
                env.direct("SELECT pg_advisory_lock(1885693281, 1), pg_sleep(6)");
            });
            let start = Instant::now();
            while env
                .direct("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
                .trim()
                == "0"
            {
                assert!(start.elapsed() < Duration::from_secs(5), "lock not taken");
                std::thread::sleep(Duration::from_millis(50));
            }
            let (ok, out) = proxy_cmd(&env, &["reencrypt"]);
            assert!(!ok, "a second reencrypt ran:\n{out}");
            assert!(
                out.contains("another pgseal-proxy reencrypt is running"),
                "{out}"
            );
            holder.join().unwrap();
        });
        let (ok, out) = proxy_cmd(&env, &["check"]);
        assert!(
            !ok,
            "check passed on an unprepared table during a rotation:\n{out}"
        );
        assert!(
            out.contains("blind-index key rotation 1 → 2 in phase dual")
                && out.contains("does not accept two-tag cells"),
            "{out}"
        );
    });
    // Writes in the dual phase are refused by the single-cell CHECK constraint (fail closed,
    // nothing stored), and work once the DDL ran.
    let e = c
        .execute(
            "INSERT INTO acct (id, email) VALUES (2, 'b@example.org')",
            &[],
        )
        .await
        .expect_err("a dual cell passed the single-cell constraint");
    assert_eq!(support::sqlstate(&e), "23514", "{e:?}");
    tokio::task::block_in_place(|| {
        run_ddl(&env, "--index-rotation");
        let (ok, out) = proxy_cmd(&env, &["check"]);
        assert!(ok, "check after the prepare DDL:\n{out}");
    });
    c.execute(
        "INSERT INTO acct (id, email) VALUES (2, 'b@example.org')",
        &[],
    )
    .await
    .unwrap();
    let got = c
        .query("SELECT id FROM acct WHERE email = 'a@example.org'", &[])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
}
