//! The encryption interceptor in-process (StaticKeys, a catalog snapshot read from the real
//! PostgreSQL) through tokio-postgres and psql: protocol corners (pipelined refusals, 25P02 in a
//! transaction, row-limited portals, cursors, bytea_output = escape, tamper).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use pgseal_crypto::value::{LogicalType, Normalisation};
use pgseal_crypto::{ColumnId, IndexGroup, SecretKey};
use pgseal_proxy::catalog::{CatalogSnapshot, StaticCatalog};
use pgseal_proxy::encrypt::EncryptionFactory;
use pgseal_proxy::keys::StaticKeys;
use pgseal_proxy::rewrite::{IndexSpec, ProtectedColumn, ProtectedSchema};
use pgseal_proxy::{Config, Server};
use support::*;

fn col(column: &str, ty: LogicalType, indexed: bool) -> ProtectedColumn {
    let id = ColumnId::new("public", "patients", column).unwrap();
    ProtectedColumn {
        index: indexed.then(|| IndexSpec {
            group: IndexGroup::of_column(&id),
            norm: Normalisation::default(),
            unique: true,
        }),
        id,
        ty,
        keyring: "patients".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_corners_through_the_encrypting_interceptor() {
    let pg = PgCluster::start(PgOptions::default());
    pg.create_role(APP_USER, UPSTREAM_PASSWORD, "scram-sha-256");
    pg.create_database("app", APP_USER);
    pg.psql("app", "CREATE TABLE patients (id int PRIMARY KEY, email bytea, ssn bytea, notes bytea); \
        CREATE UNIQUE INDEX ON patients ((substring(email from 1 for 16))); ALTER TABLE patients OWNER TO app; \
        CREATE TABLE plain (id int, data bytea); ALTER TABLE plain OWNER TO app;");
    let oid: u32 = pg
        .psql("app", "SELECT 'public.patients'::regclass::oid")
        .parse()
        .unwrap();
    let schema = Arc::new(ProtectedSchema::from_columns([
        col("email", LogicalType::Text, true),
        col("ssn", LogicalType::Int8, true),
        col("notes", LogicalType::Text, false),
    ]));
    let mut keyrings = HashMap::new();
    keyrings.insert(
        "patients".to_owned(),
        vec![(1, SecretKey::from_bytes([3; 32]))],
    );
    let keys = Arc::new(StaticKeys::new(&schema, &keyrings).unwrap());
    let snap = CatalogSnapshot::new(
        1,
        [
            ("public".to_owned(), "patients".to_owned()),
            ("public".to_owned(), "plain".to_owned()),
        ],
        [(
            oid,
            "public".to_owned(),
            "patients".to_owned(),
            vec![
                (1, "id".to_owned()),
                (2, "email".to_owned()),
                (3, "ssn".to_owned()),
                (4, "notes".to_owned()),
            ],
        )],
        &schema,
    );
    let factory = EncryptionFactory::new(
        schema,
        "app".into(),
        keys,
        Arc::new(StaticCatalog(Arc::new(snap))),
    );
    let toml = proxy_toml(
        &format!(
            "host = \"{}\"\nport = {}",
            pg.socket_dir().display(),
            pg.port
        ),
        "",
    );
    let env: HashMap<String, String> = proxy_env()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let resolved = Config::from_toml(&toml)
        .unwrap()
        .resolve_with_env(|k| env.get(k).cloned())
        .unwrap();
    let server = Server::bind_sync(resolved, Arc::new(factory)).unwrap();
    let port = server.local_addr().unwrap().port();
    tokio::spawn(server.run(std::future::pending()));
    let cs =
        format!("host=127.0.0.1 port={port} user={APP_USER} password={APP_PASSWORD} dbname=app");
    let c = connect(&cs).await;

    // Extended protocol with binary params (tokio-postgres).
    let n = c
        .execute(
            "INSERT INTO patients (id, email, ssn, notes) VALUES ($1, $2, $3, $4)",
            &[&1i32, &"alice@example.com", &123456789i64, &"note one"],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    // Simple protocol literals.
    c.batch_execute("INSERT INTO patients (id, email, ssn) VALUES (2, 'bob@example.com', 42)")
        .await
        .unwrap();
    // Upstream sees no plaintext.
    let raw = pg.psql(
        "app",
        "SELECT email::text || ssn::text || coalesce(notes::text,'') FROM patients ORDER BY id",
    );
    assert!(
        !raw.contains("alice") && !raw.contains("bob") && !raw.contains("123456789"),
        "{raw}"
    );
    // Reads: lookup by param, decrypted with logical types.
    let rows = c
        .query(
            "SELECT id, email, ssn, notes FROM patients WHERE email = $1",
            &[&"alice@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(1), "alice@example.com");
    assert_eq!(rows[0].get::<_, i64>(2), 123456789);
    assert_eq!(rows[0].get::<_, String>(3), "note one");
    let rows = c
        .query(
            "SELECT p.email AS e FROM patients p WHERE p.ssn IN (42, 7) ",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "bob@example.com");
    let rows = c
        .query(
            "SELECT email FROM patients WHERE email = ANY($1)",
            &[&vec!["bob@example.com", "x"]],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    // Simple protocol SELECT *.
    let msgs = c
        .simple_query("SELECT * FROM patients ORDER BY id")
        .await
        .unwrap();
    let vals: Vec<String> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(1).unwrap().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(vals, vec!["alice@example.com", "bob@example.com"]);
    // UPDATE and ON CONFLICT.
    c.execute(
        "UPDATE patients SET email = $1 WHERE email = $2",
        &[&"alice2@example.com", &"alice@example.com"],
    )
    .await
    .unwrap();
    c.execute("INSERT INTO patients (id, email) VALUES (3, 'bob@example.com') ON CONFLICT (email) DO NOTHING", &[]).await.unwrap();
    let rows = c.query("SELECT count(*) FROM patients", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 2);
    // Refusal, connection usable afterwards; in a transaction the upstream aborts it.
    let e = c
        .query("SELECT email FROM patients ORDER BY email", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "0A000", "{e:?}");
    let e = c
        .simple_query("SELECT email FROM patients ORDER BY email")
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "0A000", "{e:?}");
    c.batch_execute("BEGIN").await.unwrap();
    assert!(c
        .query("SELECT email FROM patients ORDER BY email", &[])
        .await
        .is_err());
    let e = c.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "25P02", "{e:?}");
    c.batch_execute("ROLLBACK").await.unwrap();
    // Bad value.
    let e = c
        .execute("INSERT INTO patients (id, ssn) VALUES (9, $1)", &[&"nope"])
        .await
        .unwrap_err();
    println!("bad value: {e:?}");
    // Cursor.
    c.batch_execute("BEGIN; DECLARE cur CURSOR FOR SELECT email FROM patients ORDER BY id")
        .await
        .unwrap();
    let msgs = c.simple_query("FETCH 1 FROM cur").await.unwrap();
    assert!(
        matches!(&msgs[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("alice2@example.com")),
        "{:?}",
        msgs.len()
    );
    c.batch_execute("COMMIT").await.unwrap();
    // Tamper: swap ciphertexts between columns → XX001, session continues.
    pg.psql(
        "app",
        "UPDATE patients SET notes = substring(email from 17) WHERE id = 2",
    );
    let e = c
        .query("SELECT notes FROM patients WHERE id = 2", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "XX001", "{e:?}");
    let rows = c
        .query("SELECT id FROM patients ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    // Unprotected bytea passes.
    c.execute("INSERT INTO plain VALUES (1, '\\x0102')", &[])
        .await
        .unwrap();
    let rows = c.query("SELECT data FROM plain", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, Vec<u8>>(0), vec![1, 2]);
    // An indexed column's envelope without its blind index, copied into a plain bytea column
    // directly upstream: the result guard still knows it (issue 13, item 8).
    pg.psql(
        "app",
        "INSERT INTO plain VALUES (2, (SELECT substring(email from 17) FROM patients WHERE id = 1))",
    );
    let e = c
        .query("SELECT data FROM plain WHERE id = 2", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "0A000", "{e:?}");
    pg.psql("app", "DELETE FROM plain WHERE id = 2");
    // Pipeline: a refused statement between two good ones.
    let q1 = c.query("SELECT email FROM patients WHERE id = 1", &[]);
    let q2 = c.query("SELECT email FROM patients ORDER BY email", &[]);
    let q3 = c.query("SELECT email FROM patients WHERE ssn = $1", &[&42i64]);
    let (r1, r2, r3) = tokio::join!(q1, q2, q3);
    assert_eq!(r1.unwrap()[0].get::<_, String>(0), "alice2@example.com");
    assert_eq!(r2.unwrap_err().code().unwrap().code(), "0A000");
    assert_eq!(r3.unwrap()[0].get::<_, String>(0), "bob@example.com");
    // Prepared statement reused; portal with row limits.
    let st = c
        .prepare("SELECT email FROM patients WHERE ssn = ANY($1) ORDER BY id")
        .await
        .unwrap();
    for _ in 0..3 {
        let r = c.query(&st, &[&vec![42i64, 123456789]]).await.unwrap();
        assert_eq!(r.len(), 2);
    }
    let mut c2 = connect(&cs).await;
    let tx = c2.transaction().await.unwrap();
    let st = tx
        .prepare("SELECT email FROM patients ORDER BY id")
        .await
        .unwrap();
    let portal = tx.bind(&st, &[]).await.unwrap();
    let a = tx.query_portal(&portal, 1).await.unwrap();
    let b = tx.query_portal(&portal, 1).await.unwrap();
    assert_eq!(a[0].get::<_, String>(0), "alice2@example.com");
    assert_eq!(b[0].get::<_, String>(0), "bob@example.com");
    tx.commit().await.unwrap();
    // DDL through the proxy: protected columns become bytea.
    c.batch_execute("CREATE TABLE patients2 (id int)")
        .await
        .unwrap();
    // search_path
    c.batch_execute("SET search_path TO nowhere").await.unwrap();
    let r = c.simple_query("SELECT 1").await.unwrap();
    assert!(!r.is_empty());
    c.batch_execute("RESET search_path").await.unwrap();
    let r = c
        .query(
            "SELECT email FROM patients WHERE email = $1",
            &[&"bob@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    c.batch_execute("SET bytea_output = escape").await.unwrap();
    let msgs = c
        .simple_query("SELECT email FROM patients ORDER BY id")
        .await
        .unwrap();
    assert!(
        matches!(&msgs[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("alice2@example.com"))
    );
    // psql (simple protocol) through the proxy.
    let out = psql_proxy(
        port,
        "app",
        &[
            "-A",
            "-t",
            "-c",
            "SELECT email, ssn FROM patients WHERE ssn = 42",
        ],
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "bob@example.com|42",
        "{out:?}"
    );
    println!("smoke ok");
}
