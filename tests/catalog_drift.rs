//! Catalog drift done directly upstream, end to end: a real PostgreSQL 15 (statement and
//! parameter logging on), a real keyserver and `pgseal-proxy serve`.
//!
//! Each test creates a protected table through the proxy, writes and reads one encrypted row
//! through it (so the proxy's catalog has loaded the table and its OID), then changes the
//! catalog straight upstream, behind the proxy's back: renames the table, moves it to another
//! schema, renames its schema, renames the protected column, or makes it a partition or an
//! inheritance child of a plain table. Through the proxy it then tries writes carrying marker
//! literals (simple and extended protocol) and reads: every write must be refused (no marker in
//! the server log nor in a direct dump), no read may hand ciphertext out as data. Then the
//! change is undone upstream and the table works again; `pgseal-proxy check` reports the drift
//! as an error with the fix.
//!
//! The proxy reloads its catalog when a statement names a word it does not know as a relation
//! (a renamed table's new name, a new schema) and every 2 s. A drift that introduces no new
//! name (a plain table that already existed becomes a partition's parent) is noticed at the
//! next reload: the tests force one with a statement naming a fresh word, so nothing depends
//! on timing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::process::Command;
use std::sync::OnceLock;

use support::keyserver::{cargo_bin, ColumnSpec};
use support::{check_cell, db_message, hex_decode, hex_encode, secret, EncEnv};
use tokio_postgres::{Client, SimpleQueryMessage};

const KR: &str = "drift";

fn columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec::new("public.rn.email", "text", KR),
        ColumnSpec::new("public.ss.email", "text", KR),
        ColumnSpec::new("sch.sr.email", "text", KR),
        ColumnSpec::new("public.rc.email", "text", KR),
        ColumnSpec::new("public.part.email", "text", KR),
        ColumnSpec::new("public.inhc.email", "text", KR),
    ]
}

fn env() -> &'static EncEnv {
    static ENV: OnceLock<EncEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let env = EncEnv::start(&columns());
        env.direct("CREATE SCHEMA sch AUTHORIZATION app; CREATE SCHEMA other AUTHORIZATION app");
        env
    })
}

/// DDL straight to PostgreSQL as the application's role.
fn upstream(env: &EncEnv, sql: &str) {
    env.direct(&format!("SET ROLE app; {sql}"));
}

/// Makes the proxy reload its catalog now: a statement naming a word it does not know.
async fn force_refresh(c: &Client, s: &mut Vec<String>) {
    let word = secret(s, "refresh").to_lowercase();
    s.pop();
    c.simple_query(&format!("SELECT 1 AS {word}"))
        .await
        .unwrap();
}

/// What went wrong in one test (all cases are tried; the test fails at the end with the list).
#[derive(Default)]
struct Report {
    failures: Vec<String>,
    refusals: Vec<String>,
}

impl Report {
    fn finish(&self, case: &str) {
        for r in &self.refusals {
            eprintln!("{case}: refused: {r}");
        }
        assert!(
            self.failures.is_empty(),
            "{case}: {} failure(s):\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

/// Where `marker` reached PostgreSQL: the server log, or a direct dump of `tables`.
fn marker_upstream(env: &EncEnv, marker: &str, tables: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    let hex = hex_encode(marker.as_bytes());
    let mut hay = vec![("server log".to_owned(), env.pg.log())];
    for t in tables {
        hay.push((
            format!("dump of {t}"),
            env.direct(&format!("COPY (SELECT * FROM {t}) TO STDOUT")),
        ));
    }
    for (what, text) in hay {
        let lower = text.to_lowercase();
        if lower.contains(&marker.to_lowercase()) || lower.contains(&hex) {
            found.push(what);
        }
    }
    found
}

/// A write through the simple protocol: `sql` with `{m}` replaced by a fresh marker.
async fn write_simple(
    env: &EncEnv,
    c: &Client,
    r: &mut Report,
    s: &mut Vec<String>,
    sql: &str,
    tables: &[&str],
) {
    let marker = secret(s, "drift");
    let text = sql.replace("{m}", &marker);
    match c.simple_query(&text).await {
        Ok(_) => r.failures.push(format!("accepted (simple): {sql}")),
        Err(e) => r.refusals.push(format!("{sql}: {}", db_message(&e))),
    }
    for w in marker_upstream(env, &marker, tables) {
        r.failures
            .push(format!("marker of (simple) {sql} found in the {w}"));
    }
}

/// A write through the extended protocol: `sql` with `$1` a fresh marker (sent as bytes, the
/// column being bytea upstream) and `$2` = `id`.
async fn write_extended(
    env: &EncEnv,
    c: &Client,
    r: &mut Report,
    s: &mut Vec<String>,
    sql: &str,
    id: i32,
    tables: &[&str],
) {
    let marker = secret(s, "drift");
    let bytes: &[u8] = marker.as_bytes();
    match c.execute(sql, &[&bytes, &id]).await {
        Ok(_) => r.failures.push(format!("accepted (extended): {sql}")),
        Err(e) => r.refusals.push(format!("{sql}: {}", db_message(&e))),
    }
    for w in marker_upstream(env, &marker, tables) {
        r.failures
            .push(format!("marker of (extended) {sql} found in the {w}"));
    }
}

/// `COPY … FROM STDIN` of one row `(id, marker)` into `target` (`name (id, col)`).
async fn write_copy(
    env: &EncEnv,
    c: &Client,
    r: &mut Report,
    s: &mut Vec<String>,
    target: &str,
    id: i32,
    tables: &[&str],
) {
    use futures_util::SinkExt as _;
    let marker = secret(s, "drift");
    let sql = format!("COPY {target} FROM STDIN");
    let outcome = async {
        let sink = c.copy_in(&sql).await?;
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from(format!("{id}\t{marker}\n")))
            .await?;
        sink.finish().await
    }
    .await;
    match outcome {
        Ok(_) => r.failures.push(format!("accepted (copy): {sql}")),
        Err(e) => r.refusals.push(format!("{sql}: {}", db_message(&e))),
    }
    for w in marker_upstream(env, &marker, tables) {
        r.failures.push(format!("marker of {sql} found in the {w}"));
    }
}

/// A read through both protocols: refused, or at least no pgseal cell handed out as data.
async fn read_both(c: &Client, r: &mut Report, sql: &str) {
    match c.simple_query(sql).await {
        Err(e) => r.refusals.push(format!("{sql}: {}", db_message(&e))),
        Ok(msgs) => {
            let mut cipher = false;
            for m in msgs {
                if let SimpleQueryMessage::Row(row) = m {
                    for i in 0..row.len() {
                        if let Some(v) = row.get(i).and_then(|v| v.strip_prefix("\\x")) {
                            cipher |= check_cell(&hex_decode(v), false).is_ok();
                        }
                    }
                }
            }
            r.failures.push(if cipher {
                format!("ciphertext handed out as data (simple): {sql}")
            } else {
                format!("read accepted (simple): {sql}")
            });
        }
    }
    match c.query(sql, &[]).await {
        Err(e) => r
            .refusals
            .push(format!("{sql} (extended): {}", db_message(&e))),
        Ok(rows) => {
            let cipher = rows.iter().any(|row| {
                (0..row.len()).any(|i| {
                    row.try_get::<_, Option<Vec<u8>>>(i)
                        .ok()
                        .flatten()
                        .is_some_and(|v| check_cell(&v, false).is_ok())
                })
            });
            r.failures.push(if cipher {
                format!("ciphertext handed out as data (extended): {sql}")
            } else {
                format!("read accepted (extended): {sql}")
            });
        }
    }
}

/// Creates `table` (`id int4, email text`) through the proxy, writes one encrypted row and
/// reads it back decrypted (the proxy's catalog has then loaded the table and its OID).
async fn protected_table(c: &Client, s: &mut Vec<String>, table: &str, extra_ddl: &str) {
    c.batch_execute(&format!(
        "CREATE TABLE {table} (id int4 NOT NULL, email text){extra_ddl}"
    ))
    .await
    .unwrap();
    round_trip(c, s, table, 1).await;
}

/// Writes row `id` with a fresh secret through the proxy and reads it back decrypted.
async fn round_trip(c: &Client, s: &mut Vec<String>, table: &str, id: i32) {
    let v = secret(s, "kept");
    c.execute(
        &format!("INSERT INTO {table} (id, email) VALUES ($1, $2)"),
        &[&id, &v],
    )
    .await
    .unwrap_or_else(|e| panic!("insert into {table}: {}", db_message(&e)));
    let got: Option<String> = c
        .query_one(&format!("SELECT email FROM {table} WHERE id = $1"), &[&id])
        .await
        .unwrap_or_else(|e| panic!("read {table}: {}", db_message(&e)))
        .get(0);
    assert_eq!(got.as_deref(), Some(v.as_str()), "{table}");
}

/// `pgseal-proxy check` with the proxy's configuration: (exit success, output).
fn check(env: &EncEnv) -> (bool, String) {
    let out = Command::new(cargo_bin("pgseal-proxy", "PGSEAL_PROXY_BIN"))
        .arg("check")
        .arg("--config")
        .arg(env.proxy.config_path())
        .envs(support::proxy_env())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The `check` line about `object` (`schema.table.column` or `schema.table`), if any.
fn check_line(text: &str, object: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with("error: ") && l.contains(&format!(" {object}: ")))
        .map(str::to_owned)
}

/// Reads, then writes (simple and extended INSERT and UPDATE, COPY) naming `name`, whose email
/// column is called `col`, after a drift.
async fn attempts(
    env: &EncEnv,
    c: &Client,
    r: &mut Report,
    s: &mut Vec<String>,
    name: &str,
    col: &str,
    dump: &[&str],
) {
    // Reads first, while the stored cell is still the encrypted one.
    read_both(c, r, &format!("SELECT id, {col} FROM {name}")).await;
    write_simple(
        env,
        c,
        r,
        s,
        &format!("INSERT INTO {name} (id, {col}) VALUES (2, '{{m}}')"),
        dump,
    )
    .await;
    write_simple(
        env,
        c,
        r,
        s,
        &format!("UPDATE {name} SET {col} = '{{m}}' WHERE id = 1"),
        dump,
    )
    .await;
    write_extended(
        env,
        c,
        r,
        s,
        &format!("INSERT INTO {name} ({col}, id) VALUES ($1, $2)"),
        3,
        dump,
    )
    .await;
    write_extended(
        env,
        c,
        r,
        s,
        &format!("UPDATE {name} SET {col} = $1 WHERE id = $2"),
        1,
        dump,
    )
    .await;
    write_copy(env, c, r, s, &format!("{name} (id, {col})"), 2, dump).await;
}

/// Refusals must say which configured table they are about and how to fix the configuration.
fn refusals_name(r: &mut Report, configured: &str) {
    if !r
        .refusals
        .iter()
        .any(|m| m.contains(configured) && m.contains("[[columns]]"))
    {
        r.failures.push(format!(
            "no refusal names configured table {configured} and the fix ([[columns]])"
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_renamed_upstream_is_refused_until_renamed_back() {
    let env = env();
    let mut s = Vec::new();
    let mut r = Report::default();
    let c = env.client().await;
    protected_table(&c, &mut s, "rn", "").await;
    upstream(env, "ALTER TABLE public.rn RENAME TO rn2");
    attempts(env, &c, &mut r, &mut s, "rn2", "email", &["public.rn2"]).await;
    attempts(
        env,
        &c,
        &mut r,
        &mut s,
        "public.rn2",
        "email",
        &["public.rn2"],
    )
    .await;
    refusals_name(&mut r, "public.rn");
    // The old name is still analysed as the protected table: encrypted, never plaintext (the
    // server then says it does not exist).
    let mut old = Report::default();
    write_simple(
        env,
        &c,
        &mut old,
        &mut s,
        "INSERT INTO rn (id, email) VALUES (4, '{m}')",
        &["public.rn2"],
    )
    .await;
    r.failures
        .extend(old.failures.into_iter().filter(|f| f.contains("found in")));
    let (ok, text) = check(env);
    match check_line(&text, "public.rn.email") {
        Some(l) if l.contains("rn2") && l.contains("[[columns]]") => eprintln!("check: {l}"),
        other => r.failures.push(format!(
            "check does not report the rename: {other:?}\n{text}"
        )),
    }
    if ok {
        r.failures.push("check passed after the rename".into());
    }
    r.finish("rename table");

    upstream(env, "ALTER TABLE public.rn2 RENAME TO rn");
    force_refresh(&c, &mut s).await;
    round_trip(&c, &mut s, "rn", 5).await;
    env.assert_no_leak(&s, &["public.rn"], &[("public.rn", "email", false)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_moved_to_another_schema_upstream_is_refused() {
    let env = env();
    let mut s = Vec::new();
    let mut r = Report::default();
    let c = env.client().await;
    protected_table(&c, &mut s, "ss", "").await;
    upstream(env, "ALTER TABLE public.ss SET SCHEMA other");
    attempts(env, &c, &mut r, &mut s, "other.ss", "email", &["other.ss"]).await;
    refusals_name(&mut r, "public.ss");
    let (_, text) = check(env);
    match check_line(&text, "public.ss.email") {
        Some(l) if l.contains("other.ss") => eprintln!("check: {l}"),
        other => r
            .failures
            .push(format!("check does not report the move: {other:?}\n{text}")),
    }
    r.finish("set schema");

    upstream(env, "ALTER TABLE other.ss SET SCHEMA public");
    force_refresh(&c, &mut s).await;
    round_trip(&c, &mut s, "ss", 5).await;
    env.assert_no_leak(&s, &["public.ss"], &[("public.ss", "email", false)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_renamed_upstream_is_refused() {
    let env = env();
    let mut s = Vec::new();
    let mut r = Report::default();
    let c = env.client().await;
    protected_table(&c, &mut s, "sch.sr", "").await;
    upstream(env, "ALTER SCHEMA sch RENAME TO sch2");
    attempts(env, &c, &mut r, &mut s, "sch2.sr", "email", &["sch2.sr"]).await;
    refusals_name(&mut r, "sch.sr");
    let (_, text) = check(env);
    match check_line(&text, "sch.sr.email") {
        Some(l) if l.contains("sch2.sr") => eprintln!("check: {l}"),
        other => r.failures.push(format!(
            "check does not report the schema rename: {other:?}\n{text}"
        )),
    }
    r.finish("rename schema");

    upstream(env, "ALTER SCHEMA sch2 RENAME TO sch");
    force_refresh(&c, &mut s).await;
    round_trip(&c, &mut s, "sch.sr", 5).await;
    env.assert_no_leak(&s, &["sch.sr"], &[("sch.sr", "email", false)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_column_renamed_upstream_is_refused() {
    let env = env();
    let mut s = Vec::new();
    let mut r = Report::default();
    let c = env.client().await;
    protected_table(&c, &mut s, "rc", "").await;
    upstream(env, "ALTER TABLE public.rc RENAME COLUMN email TO e2");
    attempts(env, &c, &mut r, &mut s, "rc", "e2", &["public.rc"]).await;
    refusals_name(&mut r, "public.rc");
    let (_, text) = check(env);
    match check_line(&text, "public.rc.email") {
        Some(l) if l.contains("e2") => eprintln!("check: {l}"),
        other => r.failures.push(format!(
            "check does not report the column rename: {other:?}\n{text}"
        )),
    }
    r.finish("rename column");

    upstream(env, "ALTER TABLE public.rc RENAME COLUMN e2 TO email");
    force_refresh(&c, &mut s).await;
    round_trip(&c, &mut s, "rc", 5).await;
    env.assert_no_leak(&s, &["public.rc"], &[("public.rc", "email", false)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_parent_of_a_protected_partition_is_refused() {
    let env = env();
    let mut s = Vec::new();
    let mut r = Report::default();
    let c = env.client().await;
    protected_table(&c, &mut s, "part", "").await;
    // A plain partitioned table the proxy already knows (no new name appears afterwards).
    c.batch_execute(
        "CREATE TABLE all_people (id int4 NOT NULL, email bytea) PARTITION BY LIST (id);\
         CREATE TABLE all_people_rest PARTITION OF all_people DEFAULT",
    )
    .await
    .unwrap();
    c.simple_query("SELECT count(*) FROM all_people")
        .await
        .unwrap();
    upstream(
        env,
        "ALTER TABLE all_people ATTACH PARTITION part FOR VALUES IN (1, 2, 3)",
    );
    force_refresh(&c, &mut s).await;
    attempts(
        env,
        &c,
        &mut r,
        &mut s,
        "all_people",
        "email",
        &["public.part", "public.all_people"],
    )
    .await;
    refusals_name(&mut r, "public.part");
    let (ok, text) = check(env);
    match check_line(&text, "public.part.email") {
        Some(l) if l.contains("all_people") => eprintln!("check: {l}"),
        other => r.failures.push(format!(
            "check does not report the plain parent: {other:?}\n{text}"
        )),
    }
    if ok {
        r.failures.push("check passed with a plain parent".into());
    }
    r.finish("attach partition");

    upstream(env, "ALTER TABLE all_people DETACH PARTITION part");
    force_refresh(&c, &mut s).await;
    round_trip(&c, &mut s, "part", 5).await;
    env.assert_no_leak(
        &s,
        &["public.part", "public.all_people_rest"],
        &[("public.part", "email", false)],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_parent_of_a_protected_inheritance_child_is_refused() {
    let env = env();
    let mut s = Vec::new();
    let mut r = Report::default();
    let c = env.client().await;
    protected_table(&c, &mut s, "inhc", "").await;
    c.batch_execute("CREATE TABLE inh_top (id int4 NOT NULL, email bytea)")
        .await
        .unwrap();
    c.batch_execute("CREATE TABLE inh_mid (id int4 NOT NULL, email bytea)")
        .await
        .unwrap();
    c.simple_query("SELECT count(*) FROM inh_top, inh_mid")
        .await
        .unwrap();
    // Two levels: inh_top ⊃ inh_mid ⊃ inhc.
    upstream(
        env,
        "ALTER TABLE inh_mid INHERIT inh_top; ALTER TABLE inhc INHERIT inh_mid",
    );
    force_refresh(&c, &mut s).await;
    let dump = [
        "ONLY public.inhc",
        "ONLY public.inh_mid",
        "ONLY public.inh_top",
    ];
    for parent in ["inh_mid", "inh_top"] {
        read_both(&c, &mut r, &format!("SELECT id, email FROM {parent}")).await;
        write_simple(
            env,
            &c,
            &mut r,
            &mut s,
            &format!("UPDATE {parent} SET email = '{{m}}' WHERE id = 1"),
            &dump,
        )
        .await;
        write_extended(
            env,
            &c,
            &mut r,
            &mut s,
            &format!("UPDATE {parent} SET email = $1 WHERE id = $2"),
            1,
            &dump,
        )
        .await;
    }
    refusals_name(&mut r, "public.inhc");
    let (_, text) = check(env);
    match check_line(&text, "public.inhc.email") {
        Some(l) if l.contains("inh_mid") => eprintln!("check: {l}"),
        other => r.failures.push(format!(
            "check does not report the plain parent: {other:?}\n{text}"
        )),
    }
    r.finish("inherit");

    upstream(env, "ALTER TABLE inhc NO INHERIT inh_mid");
    force_refresh(&c, &mut s).await;
    round_trip(&c, &mut s, "inhc", 5).await;
    env.assert_no_leak(
        &s,
        &["public.inhc", "public.inh_mid", "public.inh_top"],
        &[("public.inhc", "email", false)],
    );
}
