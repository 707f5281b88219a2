//! An ORM through the proxy: SQLAlchemy 2 with the psycopg 3 driver (server-side prepared
//! statements) creates its schema with `metadata.create_all` and runs CRUD through a Session
//! (tests/drivers/sqlalchemy_orm.py), against a real PostgreSQL, keyserver and proxy. Ends with
//! the leak scan: none of the plaintexts in the server log, the proxy log or the tables, and every
//! protected cell an envelope.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::process::Command;

use support::keyserver::ColumnSpec;
use support::{ok, run_with_input, secret, EncEnv, APP_PASSWORD, APP_USER, ENC_DB};

const KR: &str = "orm";

#[test]
fn sqlalchemy_orm_schema_and_crud() {
    let env = EncEnv::start(&[
        ColumnSpec::new("public.sa_patients.email", "text", KR).unique(),
        ColumnSpec::new("public.sa_patients.name", "text", KR),
        ColumnSpec::new("public.sa_patients.born", "date", KR),
        ColumnSpec::new("public.sa_visits.note", "text", KR),
    ]);
    let mut s = Vec::new();
    let emails: Vec<String> = (0..3)
        .map(|i| format!("{}@x.eu", secret(&mut s, &format!("sa{i}"))))
        .collect();
    let names: Vec<String> = (0..3)
        .map(|i| secret(&mut s, &format!("saName{i}")))
        .collect();
    let renamed = secret(&mut s, "saRenamed");
    let note = secret(&mut s, "saNote");
    let url = format!(
        "postgresql+psycopg://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{}/{ENC_DB}?sslmode=disable",
        env.proxy.port
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/drivers/sqlalchemy_orm.py"
    );
    let mut args = vec![url];
    args.extend(emails.iter().cloned());
    args.extend(names.iter().cloned());
    args.push(renamed.clone());
    args.push(note.clone());
    let out = run_with_input(Command::new("python3").arg(script).args(&args), None);
    assert!(ok(&out).contains("sqlalchemy ok"));
    // The ORM's DDL went through the rewriter: protected columns are bytea upstream, and the
    // unique index is on the blind-index prefix.
    let types = env.direct(
        "SELECT string_agg(table_name || '.' || column_name || ':' || data_type, ',' ORDER BY table_name, column_name) \
         FROM information_schema.columns WHERE table_name IN ('sa_patients', 'sa_visits')",
    );
    for col in [
        "sa_patients.email:bytea",
        "sa_patients.name:bytea",
        "sa_patients.born:bytea",
        "sa_patients.ward:character varying",
        "sa_visits.note:bytea",
    ] {
        assert!(types.contains(col), "{col} in {types}");
    }
    let indexes = env.direct("SELECT indexdef FROM pg_indexes WHERE tablename = 'sa_patients'");
    assert!(
        indexes
            .lines()
            .any(|l| l.contains("UNIQUE INDEX ix_sa_patients_email")
                && l.contains("SUBSTRING(email FROM 1 FOR 16)")),
        "{indexes}"
    );
    env.assert_no_leak(
        &s,
        &["public.sa_patients", "public.sa_visits"],
        &[
            ("public.sa_patients", "email", true),
            ("public.sa_patients", "name", false),
            ("public.sa_patients", "born", false),
            ("public.sa_visits", "note", false),
        ],
    );
}
