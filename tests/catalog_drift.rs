//! Catalog drift done directly upstream (issue 13, item 3), end to end against a real
//! PostgreSQL 15 (statement logging on), a real keyserver and `pgseal-proxy serve`.
//!
//! The database host renames a protected table, moves it to another schema, renames a protected
//! column, or makes a plain table an inheritance parent of a protected one — behind the proxy's
//! back, right before the application writes. The proxy must notice (by the table's OID, and by
//! pgseal's stored-cell constraints for a proxy started after the drift) and refuse statements on
//! the drifted relation; `check` must report it as an error; undoing the drift makes the table
//! usable again. Every plaintext written is searched in the server log, the proxy log and dumps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use support::keyserver::ColumnSpec;
use support::{db_message, secret, sqlstate, EncEnv};

const KR: &str = "drift";
const TABLES: &[&str] = &["dr_tab", "dr_col", "dr_swap", "dr_nsp", "dr_kid"];

fn columns() -> Vec<ColumnSpec> {
    TABLES
        .iter()
        .map(|t| ColumnSpec::new(&format!("public.{t}.email"), "text", KR).indexed())
        .collect()
}

/// Asserts `sql` is refused with 0A000 and a message containing `why`.
async fn refused(c: &tokio_postgres::Client, sql: &str, why: &str) {
    match c.simple_query(sql).await {
        Ok(_) => panic!("accepted: {sql}"),
        Err(e) => {
            assert_eq!(sqlstate(&e), "0A000", "{sql}: {e:?}");
            let m = db_message(&e);
            assert!(m.contains(why), "{sql}: {m}");
        }
    }
}

/// `pgseal-proxy check` of `env`'s configuration: (exit code, stdout).
fn check(env: &EncEnv) -> (Option<i32>, String) {
    let out = env.proxy_command(&["check"]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_done_upstream_is_refused_until_undone() {
    let env = EncEnv::start(&columns());
    let app = env.client().await;
    let mut secrets = Vec::new();
    for t in TABLES {
        app.batch_execute(&format!(
            "CREATE TABLE {t} (id int4 PRIMARY KEY, email text, info text)"
        ))
        .await
        .unwrap();
        let s = secret(&mut secrets, "seed");
        app.execute(
            &format!("INSERT INTO {t} (id, email) VALUES (1, $1)"),
            &[&s],
        )
        .await
        .unwrap();
    }
    // Let the periodic load see the tables (and remember their OIDs).
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;

    // Drift, each right before the write (inside the proxy's reload interval).
    env.direct("ALTER TABLE dr_tab RENAME TO dr_tab_moved");
    let s = secret(&mut secrets, "renamed-table");
    refused(
        &app,
        &format!("INSERT INTO dr_tab_moved (id, email) VALUES (2, '{s}')"),
        "public.dr_tab renamed or moved directly upstream",
    )
    .await;
    refused(&app, "SELECT email FROM dr_tab_moved", "renamed or moved").await;

    env.direct("ALTER TABLE dr_col RENAME COLUMN email TO e_mail");
    let s = secret(&mut secrets, "renamed-column");
    refused(
        &app,
        &format!("INSERT INTO dr_col (id, e_mail) VALUES (2, '{s}')"),
        "protected column email was renamed directly upstream to e_mail",
    )
    .await;

    env.direct(
        "ALTER TABLE dr_swap RENAME COLUMN email TO x_mail; \
         ALTER TABLE dr_swap RENAME COLUMN info TO email",
    );
    let s = secret(&mut secrets, "swapped");
    refused(
        &app,
        &format!("INSERT INTO dr_swap (id, x_mail) VALUES (2, '{s}')"),
        "column email was renamed",
    )
    .await;

    env.direct("CREATE SCHEMA dr_s AUTHORIZATION app; ALTER TABLE dr_nsp SET SCHEMA dr_s");
    let s = secret(&mut secrets, "moved-schema");
    refused(
        &app,
        &format!("INSERT INTO dr_s.dr_nsp (id, email) VALUES (2, '{s}')"),
        "public.dr_nsp renamed or moved",
    )
    .await;

    // A plain parent: a scan of it returns the protected child's rows (ciphertext as data).
    env.direct(
        "CREATE TABLE dr_parent (id int4, email bytea); ALTER TABLE dr_parent OWNER TO app; \
         ALTER TABLE dr_kid INHERIT dr_parent",
    );
    refused(
        &app,
        "SELECT email FROM dr_parent",
        "inheritance parent of protected table public.dr_kid",
    )
    .await;

    // A proxy started after the drift has no OID memory: the stored-cell constraints tell.
    let second = env.second_proxy("info");
    let fresh = support::app_client_at(second.port).await;
    let s = secret(&mut secrets, "fresh-proxy");
    refused(
        &fresh,
        &format!("INSERT INTO dr_tab_moved (id, email) VALUES (3, '{s}')"),
        "not configured but holds pgseal's stored cells",
    )
    .await;
    refused(
        &fresh,
        &format!("INSERT INTO dr_col (id, e_mail) VALUES (3, '{s}')"),
        "email was renamed directly upstream to e_mail",
    )
    .await;
    refused(
        &fresh,
        &format!("INSERT INTO dr_s.dr_nsp (id, email) VALUES (3, '{s}')"),
        "not configured but holds pgseal's stored cells",
    )
    .await;
    refused(&fresh, "SELECT * FROM dr_parent", "inheritance parent").await;

    // check fails and names each drifted relation.
    let (code, out) = tokio::task::block_in_place(|| check(&env));
    assert_ne!(code, Some(0), "check passed with drift:\n{out}");
    for rel in [
        "public.dr_tab_moved",
        "public.dr_col",
        "public.dr_swap",
        "dr_s.dr_nsp",
        "public.dr_parent",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("error: ") && l.contains(rel)),
            "{rel} not reported as an error:\n{out}"
        );
    }

    // Undone upstream: usable again through the proxy, encrypted as before.
    env.direct(
        "ALTER TABLE dr_tab_moved RENAME TO dr_tab; \
         ALTER TABLE dr_col RENAME COLUMN e_mail TO email; \
         ALTER TABLE dr_swap RENAME COLUMN email TO info; \
         ALTER TABLE dr_swap RENAME COLUMN x_mail TO email; \
         ALTER TABLE dr_s.dr_nsp SET SCHEMA public; \
         ALTER TABLE dr_kid NO INHERIT dr_parent",
    );
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    for t in TABLES {
        let s = secret(&mut secrets, "after");
        app.execute(
            &format!("INSERT INTO {t} (id, email) VALUES (9, $1)"),
            &[&s],
        )
        .await
        .unwrap_or_else(|e| panic!("{t} after undoing the drift: {e:?}"));
        let row = app
            .query_one(&format!("SELECT email FROM {t} WHERE email = $1"), &[&s])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), s);
    }
    let (code, out) = tokio::task::block_in_place(|| check(&env));
    assert!(
        !out.lines().any(|l| l.starts_with("error: ")),
        "check still reports errors after undoing the drift (exit {code:?}):\n{out}"
    );
    drop(fresh);
    drop(second);
    let protected: Vec<(&str, &str, bool)> = TABLES.iter().map(|t| (*t, "email", true)).collect();
    env.assert_no_leak(&secrets, TABLES, &protected);
}
