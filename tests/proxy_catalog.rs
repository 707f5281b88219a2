//! The upstream catalog source and the `check` / `schema` commands against a real PostgreSQL 15:
//! OIDs and attnums in the snapshot, refresh after DROP/CREATE, search_path resolution,
//! reconnecting after the catalog connection is killed, and the binary's column checks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

use pgseal_proxy::catalog::{CatalogSource, UpstreamCatalog};
use pgseal_proxy::rewrite::TableResolver;
use pgseal_proxy::Config;
use support::{env, proxy_env, proxy_toml};

/// `[encryption]`, `[keyserver]` (`keyserver`, or dummy files in `dir`) and `columns` for
/// database `db`.
fn encryption_block(dir: &Path, db: &str, columns: &str, keyserver: Option<&str>) -> String {
    let keyserver = match keyserver {
        Some(k) => k.to_owned(),
        None => {
            for f in ["ca.pem", "proxy.pem", "proxy-key.pem"] {
                std::fs::write(dir.join(f), "-----BEGIN CERTIFICATE-----\n").unwrap();
            }
            let d = dir.display();
            format!(
                "[keyserver]\nurl = \"https://127.0.0.1:1\"\nca = \"{d}/ca.pem\"\n\
                 cert = \"{d}/proxy.pem\"\nkey = \"{d}/proxy-key.pem\"\n"
            )
        }
    };
    format!(
        r#"
[encryption]
database = "{db}"
catalog_user = "app"

{keyserver}
{columns}"#
    )
}

fn column(dotted: &str, extra: &str) -> String {
    format!("\n[[columns]]\ncolumn = \"{dotted}\"\ntype = \"text\"\nkeyring = \"k\"\n{extra}\n")
}

/// Proxy TOML reaching the shared cluster over its unix socket (`port` overrides its port).
fn config_text(dir: &Path, db: &str, columns: &str, port: Option<u16>) -> String {
    config_text_with(dir, db, columns, port, None)
}

/// [`config_text`] with a `[keyserver]` block.
fn config_text_with(
    dir: &Path,
    db: &str,
    columns: &str,
    port: Option<u16>,
    keyserver: Option<&str>,
) -> String {
    let pg = &env().pg;
    proxy_toml(
        &format!(
            "host = \"{}\"\nport = {}\nconnect_timeout_ms = 3000",
            pg.socket_dir().display(),
            port.unwrap_or(pg.port)
        ),
        &encryption_block(dir, db, columns, keyserver),
    )
}

fn start_catalog(text: &str) -> Result<std::sync::Arc<UpstreamCatalog>, String> {
    let vars = proxy_env();
    let resolved = Config::from_toml(text)
        .unwrap()
        .resolve_with_env(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
    let settings = resolved.encryption.clone().unwrap();
    UpstreamCatalog::start(&resolved, &settings).map_err(|e| e.to_string())
}

fn attnum(db: &str, table: &str, column: &str) -> i16 {
    env()
        .pg
        .psql(
            db,
            &format!("SELECT attnum FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attname = '{column}'"),
        )
        .parse()
        .unwrap()
}

fn oid(db: &str, table: &str) -> u32 {
    env()
        .pg
        .psql(db, &format!("SELECT '{table}'::regclass::oid"))
        .parse()
        .unwrap()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn snapshot_has_oids_and_attnums_and_refresh_sees_ddl() {
    let env = env();
    let db = env.new_db("catalog");
    env.pg.psql(
        &db,
        "CREATE SCHEMA clinic AUTHORIZATION app; \
         CREATE TABLE clinic.patients (id int, dropped text, name text, email bytea); \
         ALTER TABLE clinic.patients DROP COLUMN dropped; \
         CREATE TABLE public.visits (id int); \
         CREATE VIEW public.v AS SELECT 1 AS x",
    );
    let dir = tempfile::tempdir().unwrap();
    let cols = column("clinic.patients.email", "") + &column("clinic.patients.name", "");
    let cat = start_catalog(&config_text(dir.path(), &db, &cols, None)).unwrap();

    let snap = cat.snapshot();
    let patients = oid(&db, "clinic.patients");
    let email = attnum(&db, "clinic.patients", "email");
    let name = attnum(&db, "clinic.patients", "name");
    assert_eq!(email, 4, "attnums count the dropped column");
    let info = snap.table(patients).expect("protected table known by OID");
    assert_eq!(
        (info.schema.as_str(), info.table.as_str()),
        ("clinic", "patients")
    );
    assert_eq!(
        snap.protected_at(patients, email).unwrap().id.to_string(),
        "clinic.patients.email"
    );
    assert_eq!(
        snap.protected_at(patients, name).unwrap().id.to_string(),
        "clinic.patients.name"
    );
    assert!(
        snap.protected_at(patients, 1).is_none(),
        "id is not protected"
    );
    assert!(snap.protected_at(patients, 2).is_none(), "dropped column");
    assert!(snap.has_table("public", "visits") && snap.has_table("public", "v"));
    assert!(snap.has_table("pg_catalog", "pg_class"));

    // search_path: the unqualified name resolves only where the schema is on the path.
    let pair = |a: &str, b: &str| Some((a.to_owned(), b.to_owned()));
    assert_eq!(
        snap.resolve(&s(&["patients"]), &s(&["public", "clinic"])),
        pair("clinic", "patients")
    );
    assert_eq!(snap.resolve(&s(&["patients"]), &s(&["public"])), None);
    assert_eq!(
        snap.resolve(&s(&["clinic", "patients"]), &s(&["public"])),
        pair("clinic", "patients")
    );
    assert_eq!(
        snap.resolve(&s(&["pg_class"]), &s(&["clinic"])),
        pair("pg_catalog", "pg_class")
    );

    // A table of the same name in public shadows when public comes first.
    env.pg
        .psql(&db, "CREATE TABLE public.patients (id int, email text)");
    let g0 = snap.generation();
    let t = Instant::now();
    let snap2 = cat.refresh().unwrap();
    let refresh_ms = t.elapsed().as_secs_f64() * 1000.0;
    eprintln!("refresh took {refresh_ms:.1} ms");
    assert!(snap2.generation() > g0);
    assert_eq!(cat.snapshot().generation(), snap2.generation());
    assert_eq!(
        snap2.resolve(&s(&["patients"]), &s(&["public", "clinic"])),
        pair("public", "patients")
    );
    assert!(
        !snap2.knows_oid(oid(&db, "public.patients")),
        "only tables with protected columns are loaded by OID"
    );

    // DROP + CREATE: a new OID, the old one forgotten.
    env.pg.psql(
        &db,
        "DROP TABLE clinic.patients; CREATE TABLE clinic.patients (email bytea, id int)",
    );
    let new_oid = oid(&db, "clinic.patients");
    assert_ne!(new_oid, patients);
    assert!(!cat.snapshot().knows_oid(new_oid), "not before a refresh");
    let snap3 = cat.refresh().unwrap();
    assert!(snap3.generation() > snap2.generation());
    assert!(!snap3.knows_oid(patients));
    assert_eq!(
        snap3.protected_at(new_oid, 1).unwrap().id.to_string(),
        "clinic.patients.email"
    );
    assert!(snap3.protected_at(new_oid, 2).is_none());

    // The catalog connection is killed: the next refresh reconnects.
    let killed = env.pg.psql(
        &db,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'pgseal-catalog' AND datname = current_database()",
    );
    assert_eq!(killed, "1");
    env.pg.psql(&db, "DROP TABLE public.visits");
    let snap4 = cat.refresh().unwrap();
    assert!(snap4.generation() > snap3.generation());
    assert!(!snap4.has_table("public", "visits"));

    // Concurrent refreshes from several threads all get an answer.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let c = cat.clone();
            std::thread::spawn(move || c.refresh().map(|s| s.generation()))
        })
        .collect();
    // (Nothing changed since snap4, so the generation stays: cached plans remain valid.)
    for h in handles {
        assert_eq!(h.join().unwrap().unwrap(), snap4.generation());
    }
}

#[test]
fn start_fails_clearly_when_the_upstream_is_unreachable() {
    let env = env();
    let db = env.new_db("unreach");
    let dir = tempfile::tempdir().unwrap();
    let free = support::pg::free_port();
    let text = config_text(dir.path(), &db, &column("public.t.c", ""), Some(free));
    let e = start_catalog(&text).unwrap_err();
    assert!(e.contains("cannot reach the upstream catalog"), "{e}");
    assert!(
        e.contains(&format!("database {db:?}")) && e.contains("\"app\""),
        "{e}"
    );
    // Wrong database: the login is refused, and the message says so.
    let text = config_text(dir.path(), "no_such_db", &column("public.t.c", ""), None);
    let e = start_catalog(&text).unwrap_err();
    assert!(e.contains("no_such_db") && e.contains("3D000"), "{e}");
}

/// The pgseal-proxy binary, built once (the root package's tests do not build other
/// packages' binaries).
fn proxy_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let release = profile_dir.ends_with("release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "pgseal-proxy", "--bin", "pgseal-proxy"])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap());
        if release {
            cmd.arg("--release");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "building pgseal-proxy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = profile_dir.join("pgseal-proxy");
        assert!(bin.exists(), "{} missing", bin.display());
        bin
    })
    .clone()
}

fn run(cmd: &str, config: &Path) -> Output {
    let mut c = Command::new(proxy_bin());
    c.args([cmd, "--config"]).arg(config);
    for (k, v) in proxy_env() {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).to_string()
}

#[test]
fn check_reports_columns_and_schema_prints_the_fix() {
    let env = env();
    let db = env.new_db("check");
    env.pg.psql(
        &db,
        "CREATE TABLE public.people (id int PRIMARY KEY, email text, ssn varchar(11), card bytea); \
         CREATE INDEX people_card_pgseal_bidx ON public.people ((substring(card from 1 for 16)))",
    );
    let dir = tempfile::tempdir().unwrap();
    let cols = column("public.people.email", "index = true\nunique = true")
        + &column("public.people.ssn", "")
        + &column("public.people.card", "index = true")
        + &column("public.people.nick", "index = true")
        + &column("public.ghosts.name", "");
    // `check` fetches the keys too: a real keyserver that granted keyring "k".
    let ks = support::keyserver::TestKeyserver::start();
    let identity = ks.provision_proxy("catalog-check", &["k"]);
    let ks_block = ks.keyserver_toml(&identity);
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        config_text_with(dir.path(), &db, &cols, None, Some(&ks_block)),
    )
    .unwrap();

    let out = run("check", &config);
    let stdout = text(&out.stdout);
    eprintln!("check:\n{stdout}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let line = |c: &str| {
        stdout
            .lines()
            .find(|l| l.contains(&format!(": {c}: ")))
            .unwrap_or("")
            .to_owned()
    };
    assert!(
        line("public.people.email")
            .starts_with("error: public.people.email: type is text, must be bytea"),
        "{stdout}"
    );
    assert!(
        line("public.people.email").contains("CREATE UNIQUE INDEX"),
        "the fix includes the unique index: {stdout}"
    );
    assert!(
        line("public.people.ssn").contains("type is character varying(11), must be bytea"),
        "{stdout}"
    );
    assert!(
        line("public.people.nick").contains("column \"nick\" does not exist in public.people"),
        "{stdout}"
    );
    assert!(
        line("public.ghosts.name").contains("table public.ghosts does not exist"),
        "{stdout}"
    );
    assert!(
        line("public.people.card").starts_with(
            "warning: public.people.card: no CHECK constraint \"pgseal_cell_card\" on stored cells"
        ),
        "bytea and indexed, but without the stored-cell constraint: {stdout}"
    );
    assert!(stdout.contains("pgseal-proxy schema"), "{stdout}");
    assert!(!stdout.contains("configuration OK"), "{stdout}");

    // `schema` prints only what is missing.
    let out = run("schema", &config);
    let ddl = support::ok(&out);
    eprintln!("schema:\n{ddl}");
    assert!(
        ddl.contains("ALTER TABLE \"public\".\"people\" ALTER COLUMN \"email\" TYPE bytea"),
        "{ddl}"
    );
    assert!(
        ddl.contains("CREATE UNIQUE INDEX IF NOT EXISTS \"people_email_pgseal_bidx\""),
        "{ddl}"
    );
    assert!(ddl.contains("ALTER COLUMN \"ssn\" TYPE bytea"), "{ddl}");
    assert!(!ddl.contains("ALTER COLUMN \"card\""), "{ddl}");
    assert!(
        ddl.contains("-- public.people.card: CHECK constraint on stored cells missing"),
        "{ddl}"
    );
    assert!(
        ddl.contains("ALTER TABLE \"public\".\"people\" ADD CONSTRAINT \"pgseal_cell_card\" CHECK (\"card\" LIKE E'________________\\\\001________________________________%'::bytea) NOT VALID;\n\
         ALTER TABLE \"public\".\"people\" VALIDATE CONSTRAINT \"pgseal_cell_card\";\n"),
        "{ddl}"
    );
    assert!(
        ddl.contains("-- public.people.nick: no such column upstream"),
        "{ddl}"
    );

    // Apply it (plus the missing column and table), and check passes.
    env.pg.psql(&db, &ddl);
    env.pg.psql(
        &db,
        "ALTER TABLE public.people ADD COLUMN nick bytea; \
         CREATE INDEX ON public.people ((substring(nick from 1 for 16))); \
         CREATE TABLE public.ghosts (name bytea)",
    );
    // Those two lack the stored-cell constraint: `schema` again prints just that.
    let ddl = support::ok(&run("schema", &config));
    assert_eq!(
        ddl.lines().filter(|l| !l.starts_with("--")).count(),
        4,
        "NOT VALID + VALIDATE for nick and ghosts.name: {ddl}"
    );
    env.pg.psql(&db, &ddl);
    let out = run("check", &config);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("configuration OK (5 protected column(s) checked"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("error:") && !stdout.contains("warning:") && !stdout.contains("info:"),
        "{stdout}"
    );

    // What else reaches the protected table: an inheritance child (protected like it), a view
    // over it and functions naming it (refused through the proxy) are reported, not errors.
    env.pg.psql(
        &db,
        "CREATE TABLE public.people_old () INHERITS (public.people); \
         CREATE VIEW public.people_v AS SELECT id, email FROM public.people; \
         CREATE FUNCTION public.people_rows() RETURNS SETOF public.people LANGUAGE sql \
           AS 'SELECT * FROM people'; \
         CREATE FUNCTION public.n_people(min int) RETURNS bigint LANGUAGE sql \
           BEGIN ATOMIC SELECT count(*) FROM public.people WHERE id >= min; END; \
         CREATE FUNCTION public.not_people() RETURNS text LANGUAGE sql AS $$SELECT 'people'::text$$; \
         CREATE SCHEMA archive; CREATE TABLE archive.people (id int4, email text)",
    );
    let out = run("check", &config);
    let stdout = text(&out.stdout);
    eprintln!("check with dependents:\n{stdout}");
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let has = |prefix: &str| stdout.lines().any(|l| l.starts_with(prefix));
    assert!(
        has("info: public.people_old: partition or inheritance child of protected table public.people"),
        "{stdout}"
    );
    assert!(
        has("warning: public.people_v: a view over protected table public.people"),
        "{stdout}"
    );
    assert!(
        has("warning: function public.people_rows(): its body names protected relation(s) people"),
        "{stdout}"
    );
    assert!(
        has("warning: function public.n_people(min integer): its body names"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("not_people"),
        "a string literal is not a use: {stdout}"
    );
    assert!(
        has(
            "warning: archive.people: not protected, but named like protected public.people: \
             statements through the proxy must name it archive.people"
        ),
        "{stdout}"
    );
    env.pg.psql(
        &db,
        "DROP VIEW public.people_v; DROP TABLE public.people_old; \
         DROP FUNCTION public.people_rows(); DROP FUNCTION public.n_people(int); \
         DROP FUNCTION public.not_people()",
    );

    // A non-unique index where unique = true is configured is an error; a missing plain
    // index only a warning (exit 0).
    env.pg.psql(
        &db,
        "DROP INDEX people_email_pgseal_bidx; \
         CREATE INDEX people_email_pgseal_bidx ON public.people ((substring(email from 1 for 16))); \
         DROP INDEX people_card_pgseal_bidx",
    );
    let out = run("check", &config);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        line_of(&stdout, "public.people.email")
            .starts_with("error: public.people.email: unique = true but no UNIQUE index"),
        "{stdout}"
    );
    assert!(
        line_of(&stdout, "public.people.card").starts_with("warning: public.people.card: no index"),
        "{stdout}"
    );

    // Without a reachable upstream, `schema` prints the DDL for every column and says why.
    std::fs::write(
        &config,
        config_text_with(
            dir.path(),
            &db,
            &cols,
            Some(support::pg::free_port()),
            Some(&ks_block),
        ),
    )
    .unwrap();
    let ddl = support::ok(&run("schema", &config));
    assert!(ddl.contains("-- upstream not reachable"), "{ddl}");
    assert!(ddl.contains("ALTER COLUMN \"card\" TYPE bytea"), "{ddl}");
    let out = run("check", &config);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot reach the upstream catalog"),
        "{}",
        text(&out.stderr)
    );
}

fn line_of(stdout: &str, c: &str) -> String {
    stdout
        .lines()
        .find(|l| l.contains(&format!(": {c}: ")))
        .unwrap_or("")
        .to_owned()
}

#[test]
fn catalog_over_tcp_survives_an_upstream_restart_and_stops_when_dropped() {
    // Its own cluster: this test stops and restarts the server.
    let pg = support::PgCluster::start(support::PgOptions::default());
    pg.create_role(
        support::APP_USER,
        support::UPSTREAM_PASSWORD,
        "scram-sha-256",
    );
    pg.create_database("clinic", support::APP_USER);
    pg.psql(
        "clinic",
        "CREATE TABLE public.patients (id int, email bytea)",
    );
    let dir = tempfile::tempdir().unwrap();
    // TCP with SCRAM-SHA-256 (the harness's pg_hba for 127.0.0.1).
    let text = proxy_toml(
        &format!(
            "host = \"127.0.0.1\"\nport = {}\nconnect_timeout_ms = 2000",
            pg.port
        ),
        &encryption_block(
            dir.path(),
            "clinic",
            &column("public.patients.email", ""),
            None,
        ),
    );
    let cat = start_catalog(&text).unwrap();
    let patients: u32 = pg
        .psql("clinic", "SELECT 'public.patients'::regclass::oid")
        .parse()
        .unwrap();
    assert!(cat.snapshot().protected_at(patients, 2).is_some());
    let catalog_sessions = || {
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgseal-catalog'",
        )
    };
    assert_eq!(catalog_sessions(), "1");

    // Upstream down: refresh fails within the timeout with a clear error; the last snapshot
    // stays in place.
    // (synchronous_commit is off in the harness and stop is immediate: make the DDL durable.)
    pg.psql("clinic", "CHECKPOINT");
    pg.stop();
    let g = cat.snapshot().generation();
    let t = Instant::now();
    let e = cat.refresh().unwrap_err().to_string();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(6),
        "{:?}",
        t.elapsed()
    );
    assert!(e.contains("cannot reach the upstream catalog"), "{e}");
    assert_eq!(cat.snapshot().generation(), g);
    assert!(cat.snapshot().knows_oid(patients));

    // Back up: the next refresh reconnects.
    pg.restart();
    let snap = cat.refresh().unwrap();
    // The catalog is unchanged, so the generation is too (a reload that finds the same
    // catalog keeps the snapshot).
    assert_eq!(snap.generation(), g);
    assert!(snap.protected_at(patients, 2).is_some());

    // Dropping the catalog ends its thread, which closes its connection.
    drop(cat);
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    while catalog_sessions() != "0" {
        assert!(Instant::now() < deadline, "catalog connection still open");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Refresh cost with many relations (run with `--ignored --nocapture`).
#[test]
#[ignore]
fn bench_refresh_with_many_tables() {
    let env = env();
    let db = env.new_db("many");
    env.pg.psql(
        &db,
        "DO $$ BEGIN FOR i IN 1..5000 LOOP \
           EXECUTE format('CREATE TABLE t%s (id int, v text)', i); END LOOP; END $$; \
         CREATE TABLE public.patients (id int, email bytea)",
    );
    let dir = tempfile::tempdir().unwrap();
    let cat = start_catalog(&config_text(
        dir.path(),
        &db,
        &column("public.patients.email", ""),
        None,
    ))
    .unwrap();
    assert!(cat.snapshot().has_table("public", "t5000"));
    let mut ms: Vec<f64> = (0..20)
        .map(|_| {
            let t = Instant::now();
            cat.refresh().unwrap();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    eprintln!(
        "refresh with ~5600 relations: median {:.1} ms, max {:.1} ms",
        ms[ms.len() / 2],
        ms[ms.len() - 1]
    );
}
