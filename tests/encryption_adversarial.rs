//! Adversarial SQL against the encrypting proxy: statements written to make it leak.
//!
//! One real PostgreSQL 15 (`log_statement = all`, parameter logging), one keyserver and one
//! `pgseal-proxy serve` at `PGSEAL_LOG=trace`. Every case has its own protected table
//! `patNNN (id int4 PRIMARY KEY, email text /*indexed*/, name text, info text /*plain*/)`
//! (plus, where it needs them, a 63-byte table name, a partitioned table, a table in its own
//! schema) and one marker `qzadvNNNNm` that the statement destines for a protected column:
//! the marker can only reach PostgreSQL in plaintext if the proxy leaked it. The classes follow
//! issue 13 ("Why" 1–8) and go beyond it; see [`Class`].
//!
//! Each case declares what must happen ([`Expect`]): `Refused` (the proxy answers with an
//! error; accepted, or an error PostgreSQL raised on a statement the proxy forwarded, is a
//! fail-open) or `Either` (refused, or handled correctly: every value the case wrote through
//! the proxy is stored as a pgseal cell and reads back right through the proxy). After all
//! cases: `CHECKPOINT`, then every marker is searched for (literally and hex-encoded) in the
//! server log, a `pg_dump` of the database, the bytes of every file under the data directory
//! (heap, WAL, …) and the proxy's trace log; and every stored cell of every protected column
//! must parse. A case whose marker becomes protected only through DDL it sends (an inheritance
//! child, a rule, …) says how to check that the DDL took effect ([`Case::only_if`]); when the
//! proxy refused the DDL, plaintext reaching the then plain relation is no leak.
//!
//! The per-case results go to `target/adversarial-report.txt` (marker found upstream,
//! fail-open, wrong value or cell, marker in the proxy log, per case and per class); the test
//! fails once, listing every failing case with its class and where its marker was found.
//!
//! Run: `cargo test -p pgseal --test encryption_adversarial` (about 2½ minutes; the report is
//! written to the target directory the test binary runs from).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use futures_util::SinkExt as _;
use support::keyserver::ColumnSpec;
use support::markers;
use support::raw::{self, Raw};
use support::{check_cell, EncEnv, APP_PASSWORD, APP_USER, ENC_DB};
use tokio_postgres::types::{Format, IsNull, ToSql, Type};

const KR: &str = "adv";
/// Longest a single case may take (the proxy or the server hanging is a failure too).
const CASE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longer than the proxy's periodic catalog load (every 2 s): direct DDL is then known to it.
const CATALOG_SETTLE: Duration = Duration::from_millis(3000);

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

/// Attack classes (issue 13, "Why" 1–7, and beyond; "Why" 8, logs, is the proxy-log scan).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// Identifiers PostgreSQL decodes and a naive parser does not.
    Identifiers,
    /// Lexer settings and lexer corner cases.
    Lexer,
    /// DDL that changes what a name means, then a write in the same string or pipeline.
    Ddl,
    /// Renames and schema moves, through the proxy and directly upstream.
    Renames,
    /// Function, procedure, DO, trigger and rule bodies; defaults and constraints.
    Bodies,
    /// Composite field, subscript and multi-column targets; value expressions.
    Indirection,
    /// Settings made upstream or at start-up that change name resolution.
    Settings,
    /// Prepared statements, cursors, COPY, MERGE, upserts, CTEs, EXPLAIN ANALYZE, odd bytes.
    Beyond,
}

impl Class {
    fn label(self) -> &'static str {
        match self {
            Class::Identifiers => "1 identifiers",
            Class::Lexer => "2 lexer settings",
            Class::Ddl => "3 DDL + write in one string/pipeline",
            Class::Renames => "4 renames and schema moves",
            Class::Bodies => "5 bodies",
            Class::Indirection => "6 composite/indirection targets",
            Class::Settings => "7 settings made upstream",
            Class::Beyond => "8 beyond",
        }
    }
}

/// What the proxy must do.
#[derive(Clone, Debug)]
enum Expect {
    /// Answer with an error; with SQLSTATEs given, one of them.
    Refused(&'static [&'static str]),
    /// Refuse, or handle correctly (the case's [`Verify`] entries then hold).
    Either,
}

/// One step of a session driven by tokio-postgres.
#[derive(Clone, Debug)]
enum Step {
    /// A simple-protocol Query.
    Q(String),
    /// Extended protocol: prepare, then execute with text-format parameters.
    X(String, Vec<String>),
    /// `COPY … FROM STDIN` (extended protocol) with the given data.
    Copy(String, Vec<u8>),
}

/// A message (or a group of them) of a raw-protocol session.
#[derive(Clone, Debug)]
enum RawMsg {
    /// Query with the SQL given as bytes.
    Q(Vec<u8>),
    /// Parse (unnamed, declared parameter types) + Bind (text parameters) + Execute.
    Pbe(Vec<u8>, Vec<u32>, Vec<Vec<u8>>),
    /// Sync.
    Sync,
    /// Send what is queued and read every answer before going on.
    Wait,
    /// Query `COPY … FROM STDIN`, then the data and CopyDone once the server asks for it.
    Copy(Vec<u8>, Vec<u8>),
}

/// How a case talks to the proxy.
#[derive(Clone, Debug)]
enum Run {
    /// Steps one after the other on one fresh connection; the first error ends the case.
    Steps {
        /// The connection string's `options` (start-up `-c name=value`).
        options: Option<String>,
        steps: Vec<Step>,
    },
    /// The steps issued concurrently on one connection (tokio-postgres pipelines them).
    Join(Vec<Step>),
    /// A raw-protocol session; everything between two [`RawMsg::Wait`] goes out in one write.
    Raw {
        startup: Vec<(String, String)>,
        msgs: Vec<RawMsg>,
    },
}

/// After an accepted case: `rel.col` of row `id` must be a pgseal cell upstream and read back
/// through the proxy as `expected`.
#[derive(Clone, Debug)]
struct Verify {
    rel: String,
    col: String,
    id: i32,
    expected: String,
    indexed: bool,
}

/// Protected tables a case needs besides its `patNNN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Extra {
    /// `@L`: a table whose name is 63 bytes long (PostgreSQL truncates longer names to it).
    Long,
    /// `@D` with the protected column `@C`, a 63-byte column name.
    LongCol,
    /// `@P`: a protected table partitioned by range of `id` (no partitions yet).
    Part,
    /// `@Q.@G`: a protected table in the case's own schema `@Q`.
    Schema,
    /// `patNNN.email` is configured `unique` and has its unique blind-index index.
    Unique,
}

#[derive(Clone, Debug)]
struct Case {
    n: usize,
    class: Class,
    what: String,
    extras: Vec<Extra>,
    /// Direct SQL (superuser) run before any case, before the proxy's catalog settles.
    setup: Vec<String>,
    /// Direct SQL run right before the case (no time for the proxy to notice).
    now: Vec<String>,
    /// Direct SQL run right after the case.
    teardown: Vec<String>,
    /// Runs alone after the others (role and database settings apply to every new session).
    exclusive: bool,
    /// Runs after every other case (it breaks what the others rely on).
    last: bool,
    /// Wait for the proxy's periodic catalog load after the `now` SQL.
    settle: bool,
    run: Option<Run>,
    expect: Expect,
    verify: Vec<Verify>,
    /// Direct SQL answering `t` when the DDL that would make the marker's target protected took
    /// effect; when it did not (the proxy refused it), plaintext the case wrote went to a plain
    /// relation or to none, and hits in the server, the dump and the data directory are not
    /// held against the proxy (the proxy log still is).
    only_if: Option<String>,
}

/// The names of case `n`, substituted for `@X` placeholders in every string of the case.
struct Names {
    subs: Vec<(&'static str, String)>,
}

fn long_table(n: usize) -> String {
    let mut s = format!("plong{n:03}_");
    while s.len() < 63 {
        s.push('x');
    }
    s
}

fn long_column(n: usize) -> String {
    let mut s = format!("col_{n:03}_");
    while s.len() < 63 {
        s.push('y');
    }
    s
}

impl Names {
    fn new(n: usize) -> Names {
        let n3 = format!("{n:03}");
        let t = format!("pat{n3}");
        let m = markers::marker(n);
        let full_escape: String = t.chars().map(|c| format!("\\{:04x}", c as u32)).collect();
        let hex: String = m.bytes().map(|b| format!("{b:02x}")).collect();
        Names {
            subs: vec![
                ("@T", t.clone()),
                ("@U", format!("U&\"p\\0061t{n3}\"")),
                ("@W", format!("U&\"{full_escape}\"")),
                ("@K", format!("k{n3}")),
                ("@J", format!("j{n3}")),
                ("@S", format!("s{n3}")),
                ("@V", format!("v{n3}")),
                ("@F", format!("f{n3}")),
                ("@R", format!("r{n3}")),
                ("@P", format!("pp{n3}")),
                ("@Q", format!("q{n3}")),
                ("@G", format!("qt{n3}")),
                ("@D", format!("lc{n3}")),
                ("@C", long_column(n)),
                ("@L", long_table(n)),
                ("@N", n3),
                ("@M", m.clone()),
                ("@Z", m[markers::PREFIX.len()..].to_string()),
                ("@Y", format!("\\x71{}", &m[1..])),
                ("@H", hex),
            ],
        }
    }

    fn fill(&self, s: &str) -> String {
        let mut out = s.to_string();
        for (k, v) in &self.subs {
            out = out.replace(k, v);
        }
        out
    }
}

impl Case {
    fn names(&self) -> Names {
        Names::new(self.n)
    }

    fn fill(&self, s: &str) -> String {
        self.names().fill(s)
    }

    fn steps_mut(&mut self) -> &mut Vec<Step> {
        if self.run.is_none() {
            self.run = Some(Run::Steps {
                options: None,
                steps: Vec::new(),
            });
        }
        match self.run.as_mut() {
            Some(Run::Steps { steps, .. }) => steps,
            _ => panic!("case {}: steps mixed with another run kind", self.n),
        }
    }

    fn raw_mut(&mut self) -> (&mut Vec<(String, String)>, &mut Vec<RawMsg>) {
        if self.run.is_none() {
            self.run = Some(Run::Raw {
                startup: Vec::new(),
                msgs: Vec::new(),
            });
        }
        match self.run.as_mut() {
            Some(Run::Raw { startup, msgs }) => (startup, msgs),
            _ => panic!("case {}: raw messages mixed with another run kind", self.n),
        }
    }

    /// A simple-protocol Query step.
    fn q(&mut self, sql: &str) -> &mut Self {
        let s = self.fill(sql);
        self.steps_mut().push(Step::Q(s));
        self
    }

    /// An extended-protocol step with text parameters.
    fn x(&mut self, sql: &str, params: &[&str]) -> &mut Self {
        let s = self.fill(sql);
        let p = params.iter().map(|p| self.fill(p)).collect();
        self.steps_mut().push(Step::X(s, p));
        self
    }

    /// A `COPY … FROM STDIN` step (extended protocol).
    fn copy(&mut self, sql: &str, data: &str) -> &mut Self {
        let s = self.fill(sql);
        let d = self.fill(data).into_bytes();
        self.steps_mut().push(Step::Copy(s, d));
        self
    }

    /// Start-up `options` for a steps session.
    fn opts(&mut self, o: &str) -> &mut Self {
        let o = self.fill(o);
        self.steps_mut();
        if let Some(Run::Steps { options, .. }) = self.run.as_mut() {
            *options = Some(o);
        }
        self
    }

    /// Issue the steps concurrently (pipelined by tokio-postgres).
    fn join(&mut self) -> &mut Self {
        let steps = std::mem::take(self.steps_mut());
        self.run = Some(Run::Join(steps));
        self
    }

    /// A raw Query.
    fn rq(&mut self, sql: &str) -> &mut Self {
        let s = self.fill(sql).into_bytes();
        self.raw_mut().1.push(RawMsg::Q(s));
        self
    }

    /// A raw Query with the SQL as bytes (not filled).
    fn rqb(&mut self, sql: Vec<u8>) -> &mut Self {
        self.raw_mut().1.push(RawMsg::Q(sql));
        self
    }

    /// Raw Parse/Bind/Execute with text parameters (types inferred).
    fn rx(&mut self, sql: &str, params: &[&str]) -> &mut Self {
        self.rxt(sql, &[], params)
    }

    /// Raw Parse/Bind/Execute with declared parameter types.
    fn rxt(&mut self, sql: &str, types: &[u32], params: &[&str]) -> &mut Self {
        let s = self.fill(sql).into_bytes();
        let p = params.iter().map(|p| self.fill(p).into_bytes()).collect();
        self.raw_mut().1.push(RawMsg::Pbe(s, types.to_vec(), p));
        self
    }

    /// Raw Parse/Bind/Execute with the SQL and the parameters as bytes.
    fn rxb(&mut self, sql: Vec<u8>, params: Vec<Vec<u8>>) -> &mut Self {
        self.raw_mut().1.push(RawMsg::Pbe(sql, Vec::new(), params));
        self
    }

    fn rsync(&mut self) -> &mut Self {
        self.raw_mut().1.push(RawMsg::Sync);
        self
    }

    fn rwait(&mut self) -> &mut Self {
        self.raw_mut().1.push(RawMsg::Wait);
        self
    }

    /// Raw `COPY … FROM STDIN` with data (filled).
    fn rcopy(&mut self, sql: &str, data: &str) -> &mut Self {
        let d = self.fill(data).into_bytes();
        self.rcopyb(sql, d)
    }

    /// Raw `COPY … FROM STDIN` with data as bytes.
    fn rcopyb(&mut self, sql: &str, data: Vec<u8>) -> &mut Self {
        let s = self.fill(sql).into_bytes();
        self.raw_mut().1.push(RawMsg::Copy(s, data));
        self
    }

    /// A start-up parameter of a raw session.
    fn rstart(&mut self, k: &str, v: &str) -> &mut Self {
        let v = self.fill(v);
        self.raw_mut().0.push((k.to_string(), v));
        self
    }

    fn setup(&mut self, sql: &str) -> &mut Self {
        let s = self.fill(sql);
        self.setup.push(s);
        self
    }

    fn now(&mut self, sql: &str) -> &mut Self {
        let s = self.fill(sql);
        self.now.push(s);
        self
    }

    fn teardown(&mut self, sql: &str) -> &mut Self {
        let s = self.fill(sql);
        self.teardown.push(s);
        self
    }

    fn exclusive(&mut self) -> &mut Self {
        self.exclusive = true;
        self
    }

    fn settle(&mut self) -> &mut Self {
        self.settle = true;
        self
    }

    fn last(&mut self) -> &mut Self {
        self.exclusive = true;
        self.last = true;
        self
    }

    fn refused(&mut self) -> &mut Self {
        self.expect = Expect::Refused(&[]);
        self
    }

    fn refused_with(&mut self, codes: &'static [&'static str]) -> &mut Self {
        self.expect = Expect::Refused(codes);
        self
    }

    fn extra(&mut self, e: Extra) -> &mut Self {
        self.extras.push(e);
        self
    }

    fn only_if(&mut self, sql: &str) -> &mut Self {
        self.only_if = Some(self.fill(sql));
        self
    }

    /// Verify `rel.col` of row `id` reads back as `expected` (all filled).
    fn v(&mut self, rel: &str, col: &str, id: i32, expected: &str, indexed: bool) -> &mut Self {
        let v = Verify {
            rel: self.fill(rel),
            col: self.fill(col),
            id,
            expected: self.fill(expected),
            indexed,
        };
        self.verify.push(v);
        self
    }

    /// Verify `patNNN.email` of row 2 is the marker.
    fn ve(&mut self) -> &mut Self {
        self.v("@T", "email", 2, "@M", true)
    }

    /// Verify `patNNN.name` of row 2 is the marker.
    fn vn(&mut self) -> &mut Self {
        self.v("@T", "name", 2, "@M", false)
    }

    /// Verify `patNNN.email` of row 1 (the seeded row, updated) is the marker.
    fn ve1(&mut self) -> &mut Self {
        self.v("@T", "email", 1, "@M", true)
    }

    /// Verify `patNNN.name` of row 1 is the marker.
    fn vn1(&mut self) -> &mut Self {
        self.v("@T", "name", 1, "@M", false)
    }
}

/// Collects the cases, numbering them.
#[derive(Default)]
struct Book {
    cases: Vec<Case>,
}

impl Book {
    fn add(&mut self, class: Class, what: &str) -> &mut Case {
        let n = self.cases.len() + 1;
        self.cases.push(Case {
            n,
            class,
            what: what.to_string(),
            extras: Vec::new(),
            setup: Vec::new(),
            now: Vec::new(),
            teardown: Vec::new(),
            exclusive: false,
            last: false,
            settle: false,
            run: None,
            expect: Expect::Either,
            verify: Vec::new(),
            only_if: None,
        });
        self.cases.last_mut().unwrap()
    }
}

/// `prefix` + bytes + `suffix`, both filled for case `c`.
fn bytes3(c: &Case, prefix: &str, mid: &[u8], suffix: &str) -> Vec<u8> {
    let mut v = c.fill(prefix).into_bytes();
    v.extend_from_slice(mid);
    v.extend_from_slice(c.fill(suffix).as_bytes());
    v
}

// ---------------------------------------------------------------------------------------------
// 1. Identifiers PostgreSQL decodes and a naive parser does not
// ---------------------------------------------------------------------------------------------

fn identifiers(b: &mut Book) {
    use Class::Identifiers as C;
    let ins = "INSERT INTO {} (id, email) VALUES (2, '@M')";
    for (what, target) in [
        ("U& table name", "@U"),
        ("U& table name, UESCAPE '!'", "U&\"p!0061t@N\" UESCAPE '!'"),
        (
            "U& table name, UESCAPE without spaces",
            "U&\"p!0061t@N\"UESCAPE'!'",
        ),
        ("U& table name, every character escaped", "@W"),
        ("U& table name, 6-digit escape", "U&\"p\\+000061t@N\""),
        ("u& (lower case) table name", "u&\"p\\0061t@N\""),
        ("U& table name, schema-qualified", "public.@U"),
        ("U& schema name", "U&\"p\\0075blic\".@T"),
        ("U& schema and table names", "U&\"p\\0075blic\".@W"),
        ("quoted schema and table", "\"public\".\"@T\""),
        ("upper-case unquoted names", "PUBLIC.PAT@N"),
        ("three-part name with the database", "app.public.@T"),
        ("three-part name, quoted, U& table", "\"app\".\"public\".@U"),
    ] {
        b.add(C, &format!("INSERT INTO {what}"))
            .q(&ins.replace("{}", target))
            .ve();
    }
    b.add(C, "INSERT with mixed-case unquoted names")
        .q("INSERT INTO Pat@N (Id, eMail) VALUES (2, '@M')")
        .ve();
    b.add(C, "INSERT, U& column name")
        .q("INSERT INTO @T (id, U&\"em\\0061il\") VALUES (2, '@M')")
        .ve();
    b.add(C, "INSERT, U& column name with UESCAPE")
        .q("INSERT INTO @T (id, U&\"n!0061me\" UESCAPE '!') VALUES (2, '@M')")
        .vn();
    b.add(C, "INSERT, U& table and column names")
        .q("INSERT INTO @U (id, U&\"em\\0061il\") VALUES (2, '@M')")
        .ve();
    b.add(C, "UPDATE U& table")
        .q("UPDATE @U SET email = '@M' WHERE id = 1")
        .ve1();
    b.add(C, "UPDATE, U& column")
        .q("UPDATE @T SET U&\"em\\0061il\" = '@M' WHERE id = 1")
        .ve1();
    b.add(C, "UPDATE U& table with alias")
        .q("UPDATE @U AS x SET name = '@M' WHERE x.id = 1")
        .vn1();
    b.add(C, "DELETE FROM U& table WHERE email = literal")
        .q("DELETE FROM @U WHERE email = '@M'");
    b.add(C, "DELETE WHERE U& column = literal")
        .q("DELETE FROM @T WHERE U&\"em\\0061il\" = '@M'");
    b.add(C, "SELECT FROM U& table WHERE email = literal")
        .q("SELECT id FROM @U WHERE email = '@M'");
    b.add(C, "SELECT WHERE U& column = literal")
        .q("SELECT id FROM @T WHERE U&\"em\\0061il\" = '@M'");
    b.add(C, "SELECT WHERE alias.U& column = literal")
        .q("SELECT id FROM @T x WHERE x.U&\"em\\0061il\" = '@M'");
    b.add(C, "scalar subquery on U& table")
        .q("SELECT (SELECT id FROM @U WHERE email = '@M')");
    b.add(C, "EXISTS subquery on U& table, non-indexed column")
        .q("SELECT 1 WHERE EXISTS (SELECT 1 FROM @U WHERE name = '@M')");
    b.add(C, "CTE then INSERT INTO U& table")
        .q("WITH x AS (SELECT 1) INSERT INTO @U (id, email) VALUES (2, '@M')")
        .ve();
    b.add(C, "data-modifying CTE on U& table")
        .q("WITH x AS (INSERT INTO @U (id, email) VALUES (2, '@M') RETURNING id) SELECT id FROM x")
        .ve();
    b.add(C, "INSERT INTO U& table SELECT literal")
        .q("INSERT INTO @U (id, email) SELECT 2, '@M'")
        .ve();
    b.add(C, "COPY U& table FROM STDIN (simple protocol)")
        .rcopy("COPY @U (id, email) FROM STDIN", "2\t@M\n")
        .ve();
    b.add(C, "COPY FROM STDIN, U& column (simple protocol)")
        .rcopy("COPY @T (id, U&\"em\\0061il\") FROM STDIN", "2\t@M\n")
        .ve();
    b.add(C, "COPY U& table FROM STDIN (extended protocol)")
        .copy("COPY @U (id, email) FROM STDIN", "2\t@M\n")
        .ve();
    b.add(C, "COPY UESCAPE table FROM STDIN CSV (simple protocol)")
        .rcopy(
            "COPY U&\"p!0061t@N\" UESCAPE '!' (id, email) FROM STDIN WITH (FORMAT csv)",
            "2,@M\n",
        )
        .ve();
    b.add(C, "extended INSERT INTO U& table, parameters")
        .x("INSERT INTO @U (id, email) VALUES ($1, $2)", &["2", "@M"])
        .ve();
    b.add(C, "extended INSERT, U& column, parameters")
        .x(
            "INSERT INTO @T (id, U&\"em\\0061il\") VALUES ($1, $2)",
            &["2", "@M"],
        )
        .ve();
    b.add(C, "extended UPDATE U& table, parameter")
        .x("UPDATE @U SET name = $1 WHERE id = 1", &["@M"])
        .vn1();
    b.add(C, "extended SELECT FROM U& table WHERE email = $1")
        .x("SELECT id FROM @U WHERE email = $1", &["@M"]);
    b.add(
        C,
        "INSERT, 66-byte name truncated to the protected 63-byte one",
    )
    .extra(Extra::Long)
    .q("INSERT INTO @Lzzz (id, email) VALUES (2, '@M')")
    .v("@L", "email", 2, "@M", true);
    b.add(C, "INSERT, schema-qualified over-long name")
        .extra(Extra::Long)
        .q("INSERT INTO public.@Lzzzzzzzzzz (id, email) VALUES (2, '@M')")
        .v("@L", "email", 2, "@M", true);
    b.add(C, "INSERT, quoted over-long name")
        .extra(Extra::Long)
        .q("INSERT INTO \"@Lqq\" (id, email) VALUES (2, '@M')")
        .v("@L", "email", 2, "@M", true);
    b.add(C, "UPDATE, over-long name")
        .extra(Extra::Long)
        .q("UPDATE @Lzz SET name = '@M' WHERE id = 1")
        .v("@L", "name", 1, "@M", false);
    b.add(C, "extended INSERT, over-long name, parameters")
        .extra(Extra::Long)
        .x("INSERT INTO @Lzz (id, email) VALUES ($1, $2)", &["2", "@M"])
        .v("@L", "email", 2, "@M", true);
    b.add(C, "INSERT, over-long name spelt with U& escapes")
        .extra(Extra::Long)
        .q("INSERT INTO U&\"@L\\0041\\0042\" (id, email) VALUES (2, '@M')")
        .v("@L", "email", 2, "@M", true);
    b.add(C, "COPY over-long name FROM STDIN")
        .extra(Extra::Long)
        .rcopy("COPY @Lzzz (id, email) FROM STDIN", "2\t@M\n")
        .v("@L", "email", 2, "@M", true);
    b.add(C, "SELECT over-long name WHERE email = literal")
        .extra(Extra::Long)
        .q("SELECT id FROM @Lzzz WHERE email = '@M'");
    b.add(
        C,
        "INSERT, over-long column name truncated to the protected one",
    )
    .extra(Extra::LongCol)
    .q("INSERT INTO @D (id, @Czz) VALUES (2, '@M')")
    .v("@D", "@C", 2, "@M", false);
    b.add(C, "UPDATE, over-long column name")
        .extra(Extra::LongCol)
        .q("UPDATE @D SET @Czzzz = '@M' WHERE id = 1")
        .v("@D", "@C", 1, "@M", false);
    b.add(C, "MERGE INTO U& table")
        .q("MERGE INTO @U t USING (SELECT 2 AS id) s ON t.id = s.id \
            WHEN NOT MATCHED THEN INSERT (id, email) VALUES (s.id, '@M')")
        .ve();
    b.add(C, "INSERT INTO U& table ON CONFLICT DO UPDATE")
        .q("INSERT INTO @U AS x (id, email) VALUES (1, 'c') \
            ON CONFLICT (id) DO UPDATE SET email = '@M'")
        .ve1();
    b.add(C, "multi-assignment with U& column")
        .q("UPDATE @T SET (U&\"em\\0061il\") = ROW('@M') WHERE id = 1")
        .ve1();
    b.add(C, "cursor over U& table with lookup")
        .q("BEGIN")
        .q("DECLARE c CURSOR FOR SELECT id FROM @U WHERE email = '@M'")
        .q("FETCH 1 FROM c")
        .q("COMMIT");
    b.add(C, "EXPLAIN ANALYZE INSERT INTO U& table")
        .q("EXPLAIN ANALYZE INSERT INTO @U (id, email) VALUES (2, '@M')")
        .ve();
    b.add(C, "PREPARE/EXECUTE INSERT INTO U& table")
        .q("PREPARE p@N AS INSERT INTO @U (id, email) VALUES (2, '@M')")
        .q("EXECUTE p@N")
        .ve();
    b.add(
        C,
        "PREPARE U& table with a bytea parameter, EXECUTE with the literal",
    )
    .q("PREPARE p@N(bytea) AS INSERT INTO @U (id, email) VALUES (2, $1)")
    .q("EXECUTE p@N('@M')")
    .ve();
    b.add(C, "U& string literal value into a U& table")
        .q("INSERT INTO @U (id, email) VALUES (2, U&'@M')")
        .ve();
}

// ---------------------------------------------------------------------------------------------
// 2. Lexer settings and lexer corner cases
// ---------------------------------------------------------------------------------------------

/// With `standard_conforming_strings = off`: `'a\''` is a whole literal, so PostgreSQL runs the
/// INSERT; a lexer assuming `on` sees one literal running to the last quote (the value is
/// dollar-quoted so that no quote inside breaks that literal).
const SCS_PAYLOAD: &str =
    r"SELECT 'a\''; INSERT INTO @T (id, email) VALUES (2, $$@M$$); SELECT 1 --'";

/// [`SCS_PAYLOAD`] with the value in single quotes.
const SCS_PAYLOAD_Q: &str =
    r"SELECT 'a\''; INSERT INTO @T (id, email) VALUES (2, '@M'); SELECT 1 --'";

/// `{open}; INSERT …; SELECT 1 --'` with the value quoted by `quote` (`'…'` or `$$…$$`).
fn with_open(open: &str, quote: &str) -> String {
    format!("SELECT {open}; INSERT INTO @T (id, email) VALUES (2, {quote}@M{quote}); SELECT 1 --'")
}

fn lexer(b: &mut Book) {
    use Class::Lexer as C;
    for (what, set) in [
        ("SET scs = off", "SET standard_conforming_strings = off"),
        ("SET scs TO 'off'", "SET standard_conforming_strings TO 'off'"),
        ("SET SESSION scs = false", "SET SESSION standard_conforming_strings = false"),
        ("set SCS=0 (upper case, 0)", "set STANDARD_CONFORMING_STRINGS=0"),
        ("SET \"scs\" = no (quoted name)", "SET \"standard_conforming_strings\" = no"),
        (
            "set_config('scs', 'off', false)",
            "SELECT set_config('standard_conforming_strings', 'off', false)",
        ),
        (
            "pg_catalog.set_config in FROM",
            "SELECT * FROM pg_catalog.set_config('standard_conforming_strings', 'off', false)",
        ),
        (
            "set_config in a subquery",
            "SELECT count(*) FROM (SELECT set_config('standard_conforming_strings', 'off', false)) s",
        ),
        (
            "UPDATE pg_settings",
            "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
        ),
        (
            "DO block calling set_config",
            "DO $$BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); END$$",
        ),
        (
            "DO block EXECUTE 'SET …'",
            "DO $$BEGIN EXECUTE 'SET standard_conforming_strings = off'; END$$",
        ),
    ] {
        b.add(C, &format!("{what}, then a string the lexers split differently"))
            .q(set)
            .q(SCS_PAYLOAD)
            .ve();
    }
    b.add(C, "SET scs = off, then the payload with the value in '…'")
        .q("SET standard_conforming_strings = off")
        .q(SCS_PAYLOAD_Q)
        .ve();
    b.add(
        C,
        "start-up options -c scs=off, then the payload with the value in '…'",
    )
    .opts("-c standard_conforming_strings=off")
    .q(SCS_PAYLOAD_Q)
    .ve();
    b.add(
        C,
        "set_config through the extended protocol, then the payload",
    )
    .x(
        "SELECT set_config($1, $2, false)",
        &["standard_conforming_strings", "off"],
    )
    .q(SCS_PAYLOAD)
    .ve();
    b.add(C, "BEGIN; SET LOCAL scs = off; payload; COMMIT")
        .q("BEGIN")
        .q("SET LOCAL standard_conforming_strings = off")
        .q(SCS_PAYLOAD)
        .q("COMMIT")
        .ve();
    b.add(
        C,
        "SET scs = off in a committed transaction, then the payload",
    )
    .q("BEGIN; SET standard_conforming_strings = off; COMMIT")
    .q(SCS_PAYLOAD)
    .ve();
    b.add(
        C,
        "SET and payload pipelined (sent before the SET's answer)",
    )
    .rq("SET standard_conforming_strings = off")
    .rq(SCS_PAYLOAD)
    .ve();
    b.add(C, "start-up options -c scs=off (no SET to see)")
        .opts("-c standard_conforming_strings=off")
        .q(SCS_PAYLOAD)
        .ve();
    b.add(C, "start-up options --scs=off")
        .opts("--standard_conforming_strings=off")
        .q(SCS_PAYLOAD)
        .ve();
    b.add(
        C,
        "start-up parameter standard_conforming_strings=off (raw)",
    )
    .rstart("standard_conforming_strings", "off")
    .rq(SCS_PAYLOAD)
    .ve();
    b.add(C, "start-up parameter options=-c scs=off (raw)")
        .rstart("options", "-c standard_conforming_strings=off")
        .rq(SCS_PAYLOAD)
        .ve();
    b.add(
        C,
        "ALTER ROLE app SET scs = off upstream, before the session",
    )
    .exclusive()
    .now("ALTER ROLE app SET standard_conforming_strings = off")
    .teardown("ALTER ROLE app RESET standard_conforming_strings")
    .q(SCS_PAYLOAD)
    .ve();
    b.add(C, "ALTER DATABASE app SET scs = off upstream")
        .exclusive()
        .now("ALTER DATABASE app SET standard_conforming_strings = off")
        .teardown("ALTER DATABASE app RESET standard_conforming_strings")
        .q(SCS_PAYLOAD)
        .ve();
    b.add(C, "ALTER ROLE app IN DATABASE app SET scs = off upstream")
        .exclusive()
        .now("ALTER ROLE app IN DATABASE app SET standard_conforming_strings = off")
        .teardown("ALTER ROLE app IN DATABASE app RESET standard_conforming_strings")
        .q(SCS_PAYLOAD)
        .ve();
    b.add(C, "role default scs = off, value with \\\\ (one statement)")
        .exclusive()
        .now("ALTER ROLE app SET standard_conforming_strings = off")
        .teardown("ALTER ROLE app RESET standard_conforming_strings")
        .q(r"INSERT INTO @T (id, email) VALUES (2, '@M\\x')")
        .v("@T", "email", 2, r"@M\x", true);
    b.add(C, "scs = off, value with \\' (one statement)")
        .q("SET standard_conforming_strings = off")
        .q(r"INSERT INTO @T (id, email) VALUES (2, '@M\'')")
        .v("@T", "email", 2, "@M'", true);
    b.add(C, "scs = off, value with \\\\n, extended protocol")
        .q("SET standard_conforming_strings = off")
        .x(r"INSERT INTO @T (id, email) VALUES (2, '@M\\n')", &[])
        .v("@T", "email", 2, r"@M\n", true);
    b.add(C, "scs = off, UPDATE value with \\t escape")
        .q("SET standard_conforming_strings = off")
        .q(r"UPDATE @T SET name = '@M\t' WHERE id = 1")
        .v("@T", "name", 1, "@M\t", false);
    for (what, open) in [
        ("E'\\'' closes", r"E'\''"),
        ("e'\\'' (lower case) closes", r"e'\''"),
        ("E'\\\\\\'' closes", r"E'\\\''"),
        ("$a$ ' $a$ is a string", "$a$ ' $a$"),
        ("$$ ' $$ is a string", "$$ ' $$"),
        ("$_$ ' $_$ is a string", "$_$ ' $_$"),
        ("non-ASCII dollar tag $ä$ ' $ä$", "$ä$ ' $ä$"),
        ("$a$ $b$ ' $a$: inner tag does not close", "$a$ $b$ ' $a$"),
        ("\"'\" is an identifier", "1 AS \"'\""),
        ("\"a\"\"'\" is an identifier", "1 AS \"a\"\"'\""),
        ("/* ' */ is a comment", "1 /* ' */"),
        ("nested /* /* */ ' */ is one comment", "1 /* /* */ ' */"),
        (
            "/* -- */ ' is a literal after a comment",
            "1 /* -- */, ''''",
        ),
    ] {
        for (quoted, quote) in [("'…'", "'"), ("$$…$$", "$$")] {
            b.add(C, &format!("{what}, then INSERT (value {quoted})"))
                .q(&with_open(open, quote))
                .ve();
        }
    }
    b.add(C, "identifiers a$b$ / c$b$ are not dollar quotes")
        .q("SELECT 1 AS a$b$; INSERT INTO @T (id, email) VALUES (2, '@M'); SELECT 2 AS c$b$")
        .ve();
    b.add(C, "$$ inside block comments")
        .q("SELECT 1 /* $$ */; INSERT INTO @T (id, email) VALUES (2, '@M'); SELECT 2 /* $$ */")
        .ve();
    b.add(C, "$$ inside line comments")
        .q("SELECT 1 -- $$\n; INSERT INTO @T (id, email) VALUES (2, '@M'); SELECT 2 -- $$")
        .ve();
    b.add(C, "nested comment hides a quote, value in dollar quotes")
        .q("SELECT 1 /* /* */ ' */; INSERT INTO @T (id, email) VALUES (2, $$@M$$); SELECT 2 -- '")
        .ve();
    b.add(C, "nested comment hides a dollar quote")
        .q("SELECT 1 /* /* */ $$ */; INSERT INTO @T (id, email) VALUES (2, '@M'); SELECT 2 /* $$ */")
        .ve();
    b.add(C, "-- comment ended by a bare CR")
        .q("SELECT 1 --x\r; INSERT INTO @T (id, email) VALUES (2, '@M')")
        .ve();
    b.add(C, "-- comment hiding a ; before a newline")
        .q("SELECT 1 -- ; not a statement\nINSERT INTO @T (id, email) VALUES (2, '@M')")
        .refused_with(&["42601"]);
    b.add(C, "/* in a string is not a comment")
        .q("SELECT '/*'; INSERT INTO @T (id, email) VALUES (2, '@M'); SELECT '*/'")
        .ve();
    b.add(C, "-- in a string is not a comment")
        .q("SELECT '--'; INSERT INTO @T (id, email) VALUES (2, '@M')")
        .ve();
    // client_encoding: PostgreSQL converts the query to UTF-8 before lexing it, so a trail byte
    // 0x5C of a multibyte character is no backslash to it.
    for (enc, ch) in [
        ("SJIS", [0x95u8, 0x5c]),
        ("BIG5", [0xa5, 0x5c]),
        ("GBK", [0x81, 0x5c]),
        ("GB18030", [0x81, 0x5c]),
    ] {
        let c = b.add(C, &format!("client_encoding {enc}, trail byte \\ in E''"));
        let q = bytes3(
            c,
            "SELECT E'",
            &ch,
            "'; INSERT INTO @T (id, email) VALUES (2, $$@M$$); SELECT 1 --'",
        );
        c.rq(&format!("SET client_encoding = '{enc}'"))
            .rwait()
            .rqb(q)
            .ve();
    }
    // Valid UTF-8 (so a UTF-8 reader accepts it) whose last bytes plus the next `\` form one
    // character in the client encoding: PostgreSQL (converting first) sees no backslash.
    for (enc, ch) in [
        ("SJIS", "〇"),
        ("GBK", "中"),
        ("GBK", "表"),
        ("BIG5", "中"),
        ("GB18030", "＇"),
    ] {
        b.add(
            C,
            &format!("client_encoding {enc}: valid UTF-8 {ch} swallows the \\ of E'…\\'"),
        )
        .rq(&format!("SET client_encoding = '{enc}'"))
        .rwait()
        .rq(&format!(
            "SELECT E'{ch}\\'; INSERT INTO @T (id, email) VALUES (2, $$@M$$); SELECT 1 --'"
        ))
        .ve();
    }
    b.add(
        C,
        "GBK + scs = off: valid UTF-8 中 swallows the \\ of a plain literal",
    )
    .rq("SET client_encoding = 'GBK'")
    .rq("SET standard_conforming_strings = off")
    .rwait()
    .rq(r"SELECT '中\'; INSERT INTO @T (id, email) VALUES (2, $$@M$$); SELECT 1 --'")
    .ve();
    b.add(
        C,
        "client_encoding GBK as a start-up parameter, valid UTF-8 中\\",
    )
    .rstart("client_encoding", "GBK")
    .rq(r"SELECT E'中\'; INSERT INTO @T (id, email) VALUES (2, $$@M$$); SELECT 1 --'")
    .ve();
    b.add(
        C,
        "ALTER ROLE app SET client_encoding = GBK upstream, valid UTF-8 中\\",
    )
    .exclusive()
    .now("ALTER ROLE app SET client_encoding = 'GBK'")
    .teardown("ALTER ROLE app RESET client_encoding")
    .rq(r"SELECT E'中\'; INSERT INTO @T (id, email) VALUES (2, $$@M$$); SELECT 1 --'")
    .ve();
    b.add(
        C,
        "GBK: the proxy reads the value as part of a plain column's literal",
    )
    .rq("SET client_encoding = 'GBK'")
    .rwait()
    .rq(r"INSERT INTO @T (id, info, email) VALUES (2, E'中\', $$@M$$) --', 'x')")
    .ve();
    b.add(C, "GBK: valid UTF-8 中\\ inside the INSERT's own value")
        .rq("SET client_encoding = 'GBK'")
        .rwait()
        .rq(r"INSERT INTO @T (id, name, email) VALUES (2, E'中\', '@M')")
        .ve();
    {
        let c = b.add(C, "SJIS + scs = off, trail byte \\ in a plain literal");
        let q = bytes3(
            c,
            "SELECT '",
            &[0x95, 0x5c],
            "'; INSERT INTO @T (id, email) VALUES (2, $$@M$$); SELECT 1 --'",
        );
        c.rq("SET client_encoding = 'SJIS'")
            .rq("SET standard_conforming_strings = off")
            .rwait()
            .rqb(q)
            .ve();
    }
    {
        let c = b.add(C, "client_encoding SJIS as a start-up parameter");
        let q = bytes3(
            c,
            "SELECT E'",
            &[0x95, 0x5c],
            "'; INSERT INTO @T (id, email) VALUES (2, $$@M$$); SELECT 1 --'",
        );
        c.rstart("client_encoding", "SJIS").rqb(q).ve();
    }
    {
        let c = b.add(C, "SET NAMES 'SJIS', trail byte \\");
        let q = bytes3(
            c,
            "SELECT E'",
            &[0x95, 0x5c],
            "'; INSERT INTO @T (id, email) VALUES (2, $$@M$$); SELECT 1 --'",
        );
        c.rq("SET NAMES 'SJIS'").rwait().rqb(q).ve();
    }
    {
        let c = b.add(C, "ALTER ROLE app SET client_encoding = SJIS upstream");
        let q = bytes3(
            c,
            "SELECT E'",
            &[0x95, 0x5c],
            "'; INSERT INTO @T (id, email) VALUES (2, $$@M$$); SELECT 1 --'",
        );
        c.exclusive()
            .now("ALTER ROLE app SET client_encoding = 'SJIS'")
            .teardown("ALTER ROLE app RESET client_encoding")
            .rqb(q)
            .ve();
    }
    b.add(C, "SJIS + backslash_quote = on + scs = off, then \\'")
        .rq("SET client_encoding = 'SJIS'")
        .rq("SET backslash_quote = on")
        .rq("SET standard_conforming_strings = off")
        .rwait()
        .rq(SCS_PAYLOAD)
        .ve();
    {
        let c = b.add(C, "SJIS value ending in trail byte \\ next to the marker");
        let q = bytes3(
            c,
            "INSERT INTO @T (id, name, email) VALUES (2, E'",
            &[0x95, 0x5c],
            "', '@M')",
        );
        c.rq("SET client_encoding = 'SJIS'").rwait().rqb(q).ve();
    }
    {
        let c = b.add(
            C,
            "LATIN1 client_encoding, non-UTF-8 byte next to the marker",
        );
        let q = bytes3(
            c,
            "INSERT INTO @T (id, name, email) VALUES (2, 'caf",
            &[0xe9],
            "', '@M')",
        );
        c.rq("SET client_encoding = 'LATIN1'").rwait().rqb(q).ve();
    }
    b.add(C, "E'' value with \\' escape")
        .q(r"INSERT INTO @T (id, email) VALUES (2, E'@M\'x')")
        .v("@T", "email", 2, "@M'x", true);
    b.add(C, "E'' value spelt with a \\x escape")
        .q("INSERT INTO @T (id, email) VALUES (2, E'@Y')")
        .ve();
    b.add(C, "E'' value with octal and unicode escapes")
        .q(r"INSERT INTO @T (id, email) VALUES (2, E'@M\047\u0041')")
        .v("@T", "email", 2, "@M'A", true);
    b.add(C, "U&'' value with escapes and UESCAPE")
        .q("INSERT INTO @T (id, email) VALUES (2, U&'@M!0041' UESCAPE '!')")
        .v("@T", "email", 2, "@MA", true);
    b.add(C, "adjacent literals joined by a newline")
        .q("INSERT INTO @T (id, email) VALUES (2, 'qzadv'\n'@Z')")
        .ve();
    b.add(C, "dollar-quoted value")
        .q("INSERT INTO @T (id, email) VALUES (2, $q$@M$q$)")
        .ve();
    b.add(C, "N'' (national character) value")
        .q("INSERT INTO @T (id, email) VALUES (2, N'@M')")
        .ve();
}

// ---------------------------------------------------------------------------------------------
// 3. DDL that changes what a name means, followed by a write
// ---------------------------------------------------------------------------------------------

/// One DDL form: setup (direct), the DDL statements, the write (simple, and extended with
/// `$1` = id, `$2` = the marker), the relation/column written, and a direct check that the DDL
/// took effect.
struct DdlForm {
    what: &'static str,
    extras: &'static [Extra],
    setup: &'static [&'static str],
    ddl: &'static [&'static str],
    write: &'static str,
    write_ext: &'static str,
    rel: &'static str,
    col: &'static str,
    effect: &'static str,
    /// The written relation exists before the DDL (a plain one).
    pre_existing: bool,
}

/// A plain table shaped like `patNNN` upstream (`bytea` where `patNNN` is protected), owned by
/// the app.
const PLAIN_K: &[&str] = &[
    "CREATE TABLE @K (id int4 PRIMARY KEY, email bytea, name bytea, info text)",
    "ALTER TABLE @K OWNER TO app",
];

fn ddl_forms() -> Vec<DdlForm> {
    vec![
        DdlForm {
            what: "CREATE TABLE k () INHERITS (patNNN)",
            extras: &[],
            setup: &[],
            ddl: &["CREATE TABLE @K () INHERITS (@T)"],
            write: "INSERT INTO @K (id, email) VALUES (2, '@M')",
            write_ext: "INSERT INTO @K (id, email) VALUES ($1, $2)",
            rel: "@K",
            col: "email",
            effect: "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass('@K') AND inhparent = '@T'::regclass)",
            pre_existing: false,
        },
        DdlForm {
            what: "CREATE TABLE k PARTITION OF pp",
            extras: &[Extra::Part],
            setup: &[],
            ddl: &["CREATE TABLE @K PARTITION OF @P FOR VALUES FROM (0) TO (100)"],
            write: "INSERT INTO @K (id, email) VALUES (2, '@M')",
            write_ext: "INSERT INTO @K (id, email) VALUES ($1, $2)",
            rel: "@K",
            col: "email",
            effect: "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass('@K') AND inhparent = '@P'::regclass)",
            pre_existing: false,
        },
        DdlForm {
            what: "ALTER TABLE k INHERIT patNNN (k a plain table)",
            extras: &[],
            setup: PLAIN_K,
            ddl: &["ALTER TABLE @K INHERIT @T"],
            write: "INSERT INTO @K (id, email) VALUES (2, '@M')",
            write_ext: "INSERT INTO @K (id, email) VALUES ($1, $2)",
            rel: "@K",
            col: "email",
            effect: "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = '@K'::regclass AND inhparent = '@T'::regclass)",
            pre_existing: true,
        },
        DdlForm {
            what: "ALTER TABLE pp ATTACH PARTITION k (k a plain table)",
            extras: &[Extra::Part],
            setup: &[
                "CREATE TABLE @K (id int4, email bytea, name bytea, info text)",
                "ALTER TABLE @K OWNER TO app",
            ],
            ddl: &["ALTER TABLE @P ATTACH PARTITION @K FOR VALUES FROM (0) TO (100)"],
            write: "INSERT INTO @K (id, email) VALUES (2, '@M')",
            write_ext: "INSERT INTO @K (id, email) VALUES ($1, $2)",
            rel: "@K",
            col: "email",
            effect: "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = '@K'::regclass AND inhparent = '@P'::regclass)",
            pre_existing: true,
        },
        DdlForm {
            what: "CREATE VIEW v AS SELECT * FROM patNNN, INSERT INTO v",
            extras: &[],
            setup: &[],
            ddl: &["CREATE VIEW @V AS SELECT * FROM @T"],
            write: "INSERT INTO @V (id, email) VALUES (2, '@M')",
            write_ext: "INSERT INTO @V (id, email) VALUES ($1, $2)",
            rel: "@T",
            col: "email",
            effect: "SELECT to_regclass('@V') IS NOT NULL",
            pre_existing: false,
        },
        DdlForm {
            what: "CREATE OR REPLACE VIEW v (over a plain table) AS SELECT * FROM patNNN",
            extras: &[],
            setup: &[
                "CREATE TABLE @K (id int4 PRIMARY KEY, email bytea, name bytea, info text)",
                "ALTER TABLE @K OWNER TO app",
                "CREATE VIEW @V AS SELECT * FROM @K",
                "ALTER VIEW @V OWNER TO app",
            ],
            ddl: &["CREATE OR REPLACE VIEW @V AS SELECT * FROM @T"],
            write: "INSERT INTO @V (id, email) VALUES (2, '@M')",
            write_ext: "INSERT INTO @V (id, email) VALUES ($1, $2)",
            rel: "@T",
            col: "email",
            effect: "SELECT EXISTS (SELECT 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid WHERE r.ev_class = '@V'::regclass AND d.refobjid = '@T'::regclass)",
            pre_existing: true,
        },
        DdlForm {
            what: "CREATE RULE on a plain table DO INSTEAD INSERT INTO patNNN",
            extras: &[],
            setup: PLAIN_K,
            ddl: &["CREATE RULE r@N AS ON INSERT TO @K DO INSTEAD INSERT INTO @T VALUES (NEW.*)"],
            write: "INSERT INTO @K (id, email) VALUES (2, '@M')",
            write_ext: "INSERT INTO @K (id, email) VALUES ($1, $2)",
            rel: "@T",
            col: "email",
            effect: "SELECT EXISTS (SELECT 1 FROM pg_rewrite WHERE rulename = 'r@N')",
            pre_existing: true,
        },
        DdlForm {
            what: "CREATE FUNCTION + CREATE TRIGGER on a plain table copying into patNNN",
            extras: &[],
            setup: &[
                "CREATE TABLE @K (id int4 PRIMARY KEY, email text, name text, info text)",
                "ALTER TABLE @K OWNER TO app",
            ],
            ddl: &[
                "CREATE FUNCTION @F() RETURNS trigger LANGUAGE plpgsql AS $b$BEGIN INSERT INTO @T (id, email) VALUES (NEW.id, convert_to(NEW.email, 'UTF8')); RETURN NULL; END$b$",
                "CREATE TRIGGER tr@N BEFORE INSERT ON @K FOR EACH ROW EXECUTE FUNCTION @F()",
            ],
            write: "INSERT INTO @K (id, email) VALUES (2, '@M')",
            write_ext: "INSERT INTO @K (id, email) VALUES ($1, $2)",
            rel: "@T",
            col: "email",
            effect: "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'tr@N')",
            pre_existing: true,
        },
        DdlForm {
            what: "SET search_path to a schema with a plain patNNN",
            extras: &[],
            setup: &[
                "CREATE SCHEMA @S AUTHORIZATION app",
                "CREATE TABLE @S.@T (id int4 PRIMARY KEY, email text, name text, info text)",
                "ALTER TABLE @S.@T OWNER TO app",
            ],
            ddl: &["SET search_path = @S, public"],
            write: "INSERT INTO @T (id, email) VALUES (2, '@M')",
            write_ext: "INSERT INTO @T (id, email) VALUES ($1, $2)",
            rel: "@T",
            col: "email",
            effect: "SELECT true",
            pre_existing: true,
        },
        DdlForm {
            what: "CREATE SCHEMA + CREATE TABLE there + SET search_path",
            extras: &[],
            setup: &[],
            ddl: &[
                "CREATE SCHEMA @S",
                "CREATE TABLE @S.@T (id int4 PRIMARY KEY, email text, name text, info text)",
                "SET search_path = @S, public",
            ],
            write: "INSERT INTO @T (id, email) VALUES (2, '@M')",
            write_ext: "INSERT INTO @T (id, email) VALUES ($1, $2)",
            rel: "@T",
            col: "email",
            effect: "SELECT to_regclass('@S.@T') IS NOT NULL",
            pre_existing: false,
        },
        DdlForm {
            what: "CREATE TABLE k (…bytea…); ALTER TABLE k INHERIT patNNN",
            extras: &[],
            setup: &[],
            ddl: &[
                "CREATE TABLE @K (id int4 PRIMARY KEY, email bytea, name bytea, info text)",
                "ALTER TABLE @K INHERIT @T",
            ],
            write: "INSERT INTO @K (id, email) VALUES (2, '@M')",
            write_ext: "INSERT INTO @K (id, email) VALUES ($1, $2)",
            rel: "@K",
            col: "email",
            effect: "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass('@K') AND inhparent = '@T'::regclass)",
            pre_existing: false,
        },
    ]
}

fn ddl(b: &mut Book) {
    use Class::Ddl as C;
    for f in ddl_forms() {
        // (mode, refused?) — the search_path forms must be refused (the unqualified name then
        // means a plain relation while a protected one of that name exists); the others may be
        // handled (the write encrypted) or refused.
        let must_refuse = f.what.contains("search_path");
        let modes: &[&str] = match (f.pre_existing, f.ddl.len()) {
            (true, _) => &["string", "steps", "pipeline-ext", "join", "pipeline-simple"],
            (false, 1) => &["string", "steps", "pipeline-ext", "join", "pipeline-simple"],
            (false, _) => &["string", "pipeline-ext", "join"],
        };
        for mode in modes {
            let c = b.add(C, &format!("{} then write, {mode}", f.what));
            for e in f.extras {
                c.extra(*e);
            }
            for s in f.setup {
                c.setup(s);
            }
            match *mode {
                "string" => {
                    let mut all: Vec<&str> = f.ddl.to_vec();
                    all.push(f.write);
                    c.q(&all.join("; "));
                }
                "steps" => {
                    for d in f.ddl {
                        c.q(d);
                    }
                    c.q(f.write);
                }
                "pipeline-ext" => {
                    // One Sync: a refusal skips the rest, as PostgreSQL does.
                    for d in f.ddl {
                        c.rx(d, &[]);
                    }
                    c.rx(f.write_ext, &["2", "@M"]).rsync();
                }
                "join" => {
                    c.q(&f.ddl.join("; ")).x(f.write_ext, &["2", "@M"]).join();
                }
                "pipeline-simple" => {
                    c.rq(&f.ddl.join("; ")).rq(f.write);
                }
                _ => unreachable!(),
            }
            // Refused DDL leaves the written name plain (or missing): plaintext reaching it is
            // then no leak, whichever way the proxy forwarded the write.
            c.only_if(f.effect);
            if must_refuse {
                c.refused();
            } else {
                c.v(f.rel, f.col, 2, "@M", true);
            }
        }
    }
    b.add(
        C,
        "two levels of INHERITS in one string, INSERT into the grandchild",
    )
    .q(
        "CREATE TABLE @K () INHERITS (@T); CREATE TABLE @J () INHERITS (@K); \
            INSERT INTO @J (id, email) VALUES (2, '@M')",
    )
    .v("@J", "email", 2, "@M", true);
    b.add(C, "TEMP inheritance child in one string")
        .q("CREATE TEMP TABLE @K () INHERITS (@T); INSERT INTO @K (id, email) VALUES (2, '@M')");
    b.add(C, "multiple inheritance (patNNN and a plain table) in one string")
        .setup("CREATE TABLE @J (extra text)")
        .setup("ALTER TABLE @J OWNER TO app")
        .q("CREATE TABLE @K () INHERITS (@T, @J); INSERT INTO @K (id, email, extra) VALUES (2, '@M', 'x')")
        .v("@K", "email", 2, "@M", true);
    b.add(
        C,
        "CREATE TABLE … (LIKE patNNN) INHERITS (patNNN) in one string",
    )
    .q("CREATE TABLE @K (LIKE @T) INHERITS (@T); INSERT INTO @K (id, email) VALUES (2, '@M')")
    .v("@K", "email", 2, "@M", true);
    b.add(C, "ALTER TABLE IF EXISTS ONLY k INHERIT public.patNNN in one string")
        .setup(PLAIN_K[0])
        .setup(PLAIN_K[1])
        .q("ALTER TABLE IF EXISTS ONLY @K INHERIT public.@T; INSERT INTO @K (id, email) VALUES (2, '@M')")
        .v("@K", "email", 2, "@M", true);
    b.add(C, "SELECT INTO with a lookup on a protected column")
        .q("SELECT id INTO @K FROM @T WHERE email = '@M'");
    b.add(C, "CREATE TABLE AS with a lookup on a protected column")
        .q("CREATE TABLE @K AS SELECT id FROM @T WHERE email = '@M'");
    b.add(C, "CREATE MATERIALIZED VIEW with a lookup")
        .q("CREATE MATERIALIZED VIEW @V AS SELECT id FROM @T WHERE email = '@M'");
    b.add(C, "ALTER COLUMN TYPE text then INSERT in one string")
        .q(
            "ALTER TABLE @T ALTER COLUMN email TYPE text USING encode(email, 'hex'); \
            INSERT INTO @T (id, email) VALUES (2, '@M')",
        )
        .refused();
    b.add(C, "DROP COLUMN + ADD COLUMN then INSERT in one string")
        .q(
            "ALTER TABLE @T DROP COLUMN name; ALTER TABLE @T ADD COLUMN name text; \
            INSERT INTO @T (id, name) VALUES (2, '@M')",
        )
        .vn();
}

// ---------------------------------------------------------------------------------------------
// 4. Renames and schema moves
// ---------------------------------------------------------------------------------------------

fn renames(b: &mut Book) {
    use Class::Renames as C;
    let ins_r = "INSERT INTO @R (id, email) VALUES (2, '@M')";
    // Through the proxy: the rename must be refused (steps stop at the first error).
    for (what, stmt) in [
        ("ALTER TABLE RENAME TO", "ALTER TABLE @T RENAME TO @R"),
        (
            "ALTER TABLE IF EXISTS RENAME TO",
            "ALTER TABLE IF EXISTS @T RENAME TO @R",
        ),
        (
            "ALTER INDEX (on a table) RENAME TO",
            "ALTER INDEX @T RENAME TO @R",
        ),
        (
            "ALTER TABLE U& name RENAME TO",
            "ALTER TABLE @U RENAME TO @R",
        ),
        (
            "ALTER TABLE public.t RENAME TO quoted",
            "ALTER TABLE public.@T RENAME TO \"@R\"",
        ),
        (
            "DO block renaming",
            "DO $$BEGIN ALTER TABLE @T RENAME TO @R; END$$",
        ),
        (
            "DO block renaming through EXECUTE with a built name",
            "DO $$BEGIN EXECUTE 'ALTER TABLE p' || 'at@N RENAME TO @R'; END$$",
        ),
    ] {
        b.add(C, &format!("{what}, then INSERT INTO the new name"))
            .q(stmt)
            .q(ins_r)
            .refused();
    }
    b.add(C, "rename and INSERT in one string")
        .q("ALTER TABLE @T RENAME TO @R; INSERT INTO @R (id, email) VALUES (2, '@M')")
        .refused();
    b.add(C, "rename, INSERT, rename back in one string")
        .q(
            "ALTER TABLE @T RENAME TO @R; INSERT INTO @R (id, email) VALUES (2, '@M'); \
            ALTER TABLE @R RENAME TO @T",
        )
        .refused();
    b.add(C, "rename and INSERT in a transaction")
        .q("BEGIN")
        .q("ALTER TABLE @T RENAME TO @R")
        .q(ins_r)
        .q("COMMIT")
        .refused();
    b.add(
        C,
        "rename and INSERT pipelined, extended protocol, one Sync",
    )
    .rx("ALTER TABLE @T RENAME TO @R", &[])
    .rx("INSERT INTO @R (id, email) VALUES ($1, $2)", &["2", "@M"])
    .rsync()
    .refused();
    b.add(C, "rename and INSERT pipelined, simple protocol")
        .rq("ALTER TABLE @T RENAME TO @R")
        .rq(ins_r)
        .only_if("SELECT to_regclass('@R') IS NOT NULL")
        .refused();
    b.add(
        C,
        "rename and INSERT issued concurrently (tokio-postgres pipeline)",
    )
    .q("ALTER TABLE @T RENAME TO @R")
    .x("INSERT INTO @R (id, email) VALUES ($1, $2)", &["2", "@M"])
    .join()
    .refused();
    for (what, stmts, write) in [
        (
            "RENAME COLUMN",
            &["ALTER TABLE @T RENAME COLUMN email TO e@N"][..],
            "INSERT INTO @T (id, e@N) VALUES (2, '@M')",
        ),
        (
            "RENAME (without COLUMN)",
            &["ALTER TABLE @T RENAME email TO e@N"][..],
            "INSERT INTO @T (id, e@N) VALUES (2, '@M')",
        ),
        (
            "RENAME COLUMN spelt with U&",
            &["ALTER TABLE @T RENAME COLUMN U&\"em\\0061il\" TO e@N"][..],
            "INSERT INTO @T (id, e@N) VALUES (2, '@M')",
        ),
        (
            "swap a protected and a plain column",
            &[
                "ALTER TABLE @T RENAME COLUMN email TO x@N",
                "ALTER TABLE @T RENAME COLUMN info TO email",
            ][..],
            "INSERT INTO @T (id, x@N) VALUES (2, '@M')",
        ),
    ] {
        let c = b.add(C, &format!("{what}, then INSERT into the new column name"));
        for s in stmts {
            c.q(s);
        }
        c.q(write).refused();
        let c = b.add(C, &format!("{what} and INSERT in one string"));
        let mut all: Vec<&str> = stmts.to_vec();
        all.push(write);
        c.q(&all.join("; ")).refused();
    }
    b.add(C, "SET SCHEMA, then INSERT INTO the moved table")
        .setup("CREATE SCHEMA @S AUTHORIZATION app")
        .q("ALTER TABLE @T SET SCHEMA @S")
        .q("INSERT INTO @S.@T (id, email) VALUES (2, '@M')")
        .refused();
    b.add(C, "SET SCHEMA + RENAME + INSERT in one string")
        .setup("CREATE SCHEMA @S AUTHORIZATION app")
        .q(
            "ALTER TABLE @T SET SCHEMA @S; ALTER TABLE @S.@T RENAME TO @R; \
            INSERT INTO @S.@R (id, email) VALUES (2, '@M')",
        )
        .refused();
    b.add(
        C,
        "ALTER SCHEMA RENAME of a protected table's schema, then INSERT",
    )
    .extra(Extra::Schema)
    .q("ALTER SCHEMA @Q RENAME TO @S")
    .q("INSERT INTO @S.@G (id, email) VALUES (2, '@M')")
    .refused();
    // Directly upstream (before the proxy's catalog settles), then writes through the proxy.
    for (what, setup, run) in [
        (
            "table renamed upstream, INSERT INTO the new name",
            &["ALTER TABLE @T RENAME TO @R"][..],
            Step::Q(ins_r.into()),
        ),
        (
            "table renamed upstream, extended INSERT INTO the new name",
            &["ALTER TABLE @T RENAME TO @R"][..],
            Step::X(
                "INSERT INTO @R (id, email) VALUES ($1, $2)".into(),
                vec!["2".into(), "@M".into()],
            ),
        ),
        (
            "table renamed upstream, UPDATE the new name",
            &["ALTER TABLE @T RENAME TO @R"][..],
            Step::Q("UPDATE @R SET email = '@M' WHERE id = 1".into()),
        ),
        (
            "table renamed upstream, lookup on the new name",
            &["ALTER TABLE @T RENAME TO @R"][..],
            Step::Q("SELECT id FROM @R WHERE email = '@M'".into()),
        ),
        (
            "table renamed upstream, COPY into the new name",
            &["ALTER TABLE @T RENAME TO @R"][..],
            Step::Copy("COPY @R (id, email) FROM STDIN".into(), b"2\t@M\n".to_vec()),
        ),
        (
            "renamed upstream and a plain table created under the old name",
            &[
                "ALTER TABLE @T RENAME TO @R",
                "CREATE TABLE @T (id int4 PRIMARY KEY, email bytea, name bytea, info text)",
                "ALTER TABLE @T OWNER TO app",
            ][..],
            Step::Q(ins_r.into()),
        ),
        (
            "column renamed upstream, INSERT into the new column name",
            &["ALTER TABLE @T RENAME COLUMN email TO e@N"][..],
            Step::Q("INSERT INTO @T (id, e@N) VALUES (2, '@M')".into()),
        ),
        (
            "protected and plain column swapped upstream",
            &[
                "ALTER TABLE @T RENAME COLUMN email TO x@N",
                "ALTER TABLE @T RENAME COLUMN info TO email",
            ][..],
            Step::Q("INSERT INTO @T (id, x@N) VALUES (2, '@M')".into()),
        ),
        (
            "table moved to another schema upstream",
            &[
                "CREATE SCHEMA @S AUTHORIZATION app",
                "ALTER TABLE @T SET SCHEMA @S",
            ][..],
            Step::Q("INSERT INTO @S.@T (id, email) VALUES (2, '@M')".into()),
        ),
        (
            "schema renamed upstream",
            &["ALTER SCHEMA @Q RENAME TO @S"][..],
            Step::Q("INSERT INTO @S.@G (id, email) VALUES (2, '@M')".into()),
        ),
    ] {
        let c = b.add(C, what);
        if what.contains("schema renamed") {
            c.extra(Extra::Schema);
        }
        for s in setup {
            c.setup(s);
        }
        let step = match run {
            Step::Q(s) => Step::Q(c.fill(&s)),
            Step::X(s, p) => Step::X(c.fill(&s), p.iter().map(|p| c.fill(p)).collect()),
            Step::Copy(s, d) => Step::Copy(
                c.fill(&s),
                c.fill(&String::from_utf8(d).unwrap()).into_bytes(),
            ),
        };
        c.steps_mut().push(step);
        c.refused();
    }
    // Directly upstream right before the write (inside the proxy's reload interval).
    for (what, now, write) in [
        (
            "table renamed upstream just before the INSERT",
            &["ALTER TABLE @T RENAME TO @R"][..],
            ins_r,
        ),
        (
            "column renamed upstream just before the INSERT",
            &["ALTER TABLE @T RENAME COLUMN email TO e@N"][..],
            "INSERT INTO @T (id, e@N) VALUES (2, '@M')",
        ),
        (
            "table moved to another schema upstream just before the INSERT",
            &[
                "CREATE SCHEMA @S AUTHORIZATION app",
                "ALTER TABLE @T SET SCHEMA @S",
            ][..],
            "INSERT INTO @S.@T (id, email) VALUES (2, '@M')",
        ),
    ] {
        let c = b.add(C, what);
        for s in now {
            c.now(s);
        }
        c.q(write).refused();
    }
    b.add(C, "ALTER SCHEMA public RENAME, then INSERT INTO the new name")
        .last()
        .q("ALTER SCHEMA public RENAME TO @S")
        .q("INSERT INTO @S.@T (id, email) VALUES (2, '@M')")
        .teardown("DO $$BEGIN IF to_regnamespace('@S') IS NOT NULL THEN ALTER SCHEMA @S RENAME TO public; END IF; END$$")
        .refused();
}

// ---------------------------------------------------------------------------------------------
// 5. Bodies: functions, procedures, DO, triggers, rules; defaults and constraints
// ---------------------------------------------------------------------------------------------

fn bodies(b: &mut Book) {
    use Class::Bodies as C;
    let ins = "INSERT INTO @T (id, email) VALUES (2, '@M')";
    for (what, create, call) in [
        (
            "SQL function, $$ body",
            "CREATE FUNCTION @F() RETURNS void LANGUAGE sql AS $$ INSERT INTO @T (id, email) VALUES (2, '@M') $$",
            "SELECT @F()",
        ),
        (
            "SQL function, '' body",
            "CREATE FUNCTION @F() RETURNS void LANGUAGE sql AS 'INSERT INTO @T (id, email) VALUES (2, ''@M'')'",
            "SELECT @F()",
        ),
        (
            "SQL function, E'' body",
            r"CREATE FUNCTION @F() RETURNS void LANGUAGE sql AS E'INSERT INTO @T (id, email) VALUES (2, \'@M\')'",
            "SELECT @F()",
        ),
        (
            "SQL function, tagged dollar body",
            "CREATE FUNCTION @F() RETURNS void LANGUAGE sql AS $body$ INSERT INTO @T (id, email) VALUES (2, '@M') $body$",
            "SELECT @F()",
        ),
        (
            "SQL function, BEGIN ATOMIC",
            "CREATE FUNCTION @F() RETURNS void LANGUAGE sql BEGIN ATOMIC INSERT INTO @T (id, email) VALUES (2, '@M'); END",
            "SELECT @F()",
        ),
        (
            "SQL procedure, BEGIN ATOMIC",
            "CREATE PROCEDURE @F() LANGUAGE sql BEGIN ATOMIC INSERT INTO @T (id, email) VALUES (2, '@M'); END",
            "CALL @F()",
        ),
        (
            "SQL procedure, $$ body",
            "CREATE PROCEDURE @F() LANGUAGE sql AS $$ INSERT INTO @T (id, email) VALUES (2, '@M') $$",
            "CALL @F()",
        ),
        (
            "PL/pgSQL function",
            "CREATE FUNCTION @F() RETURNS void LANGUAGE plpgsql AS $$BEGIN INSERT INTO @T (id, email) VALUES (2, '@M'); END$$",
            "SELECT @F()",
        ),
        (
            "PL/pgSQL procedure",
            "CREATE PROCEDURE @F() LANGUAGE plpgsql AS $$BEGIN INSERT INTO @T (id, email) VALUES (2, '@M'); END$$",
            "CALL @F()",
        ),
        (
            "PL/pgSQL function, LANGUAGE after the body",
            "CREATE FUNCTION @F() RETURNS void AS $$BEGIN INSERT INTO @T (id, email) VALUES (2, '@M'); END$$ LANGUAGE plpgsql",
            "SELECT @F()",
        ),
        (
            "PL/pgSQL function, LANGUAGE 'plpgsql' quoted",
            "CREATE FUNCTION @F() RETURNS void LANGUAGE 'plpgsql' AS $$BEGIN INSERT INTO @T (id, email) VALUES (2, '@M'); END$$",
            "SELECT @F()",
        ),
        (
            "PL/pgSQL function, E'' body",
            r"CREATE FUNCTION @F() RETURNS void LANGUAGE plpgsql AS E'BEGIN INSERT INTO @T (id, email) VALUES (2, \'@M\'); END'",
            "SELECT @F()",
        ),
        (
            "SQL function writing a U& table",
            "CREATE FUNCTION @F() RETURNS void LANGUAGE sql AS $$ INSERT INTO @U (id, email) VALUES (2, '@M') $$",
            "SELECT @F()",
        ),
        (
            "SQL function with a lookup",
            "CREATE FUNCTION @F() RETURNS SETOF int LANGUAGE sql AS $$ SELECT id FROM @T WHERE email = '@M' $$",
            "SELECT * FROM @F()",
        ),
        (
            "SQL function with an UPDATE",
            "CREATE FUNCTION @F() RETURNS void LANGUAGE sql AS $$ UPDATE @T SET name = '@M' WHERE id = 1 $$",
            "SELECT @F()",
        ),
        (
            "SQL function, value from its argument",
            "CREATE FUNCTION @F(e text) RETURNS void LANGUAGE sql AS $$ INSERT INTO @T (id, email) VALUES (2, convert_to(e, 'UTF8')) $$",
            "SELECT @F('@M')",
        ),
        (
            "PL/pgSQL function, value from its argument",
            "CREATE FUNCTION @F(e text) RETURNS void LANGUAGE plpgsql AS $$BEGIN INSERT INTO @T (id, email) VALUES (2, convert_to(e, 'UTF8')); END$$",
            "SELECT @F('@M')",
        ),
        (
            "procedure, value from its argument",
            "CREATE PROCEDURE @F(e text) LANGUAGE sql AS $$ INSERT INTO @T (id, email) VALUES (2, convert_to(e, 'UTF8')) $$",
            "CALL @F('@M')",
        ),
        (
            "PL/pgSQL function with dynamic SQL (format %I %L)",
            "CREATE FUNCTION @F() RETURNS void LANGUAGE plpgsql AS $$BEGIN EXECUTE format('INSERT INTO %I (id, email) VALUES (2, %L)', 'pat' || '@N', '@M'); END$$",
            "SELECT @F()",
        ),
        (
            "PL/pgSQL function with dynamic SQL built with chr()",
            "CREATE FUNCTION @F() RETURNS void LANGUAGE plpgsql AS $$BEGIN EXECUTE 'INSERT INTO ' || chr(112) || 'at@N (id, email) VALUES (2, ''@M'')'; END$$",
            "SELECT @F()",
        ),
    ] {
        b.add(C, &format!("{what}, created and called"))
            .q(create)
            .q(call)
            .refused();
    }
    b.add(C, "CREATE OR REPLACE of a harmless function with a writing body")
        .q("CREATE FUNCTION @F() RETURNS void LANGUAGE sql AS $$ SELECT $$")
        .q("CREATE OR REPLACE FUNCTION @F() RETURNS void LANGUAGE sql AS $$ INSERT INTO @T (id, email) VALUES (2, '@M') $$")
        .q("SELECT @F()")
        .refused();
    b.add(C, "function created and called in one string")
        .q(&format!(
            "CREATE FUNCTION @F() RETURNS void LANGUAGE sql AS $$ {ins} $$; SELECT @F()"
        ))
        .refused();
    b.add(C, "SQL function body with the value spelt with a \\x escape")
        .q(r"CREATE FUNCTION @F() RETURNS void LANGUAGE sql AS E'INSERT INTO @T (id, email) VALUES (2, E\'@Y\')'")
        .q("SELECT @F()")
        .refused();
    for (what, body) in [
        ("DO, static INSERT", format!("DO $$BEGIN {ins}; END$$")),
        (
            "DO LANGUAGE plpgsql, static INSERT",
            format!("DO LANGUAGE plpgsql $$BEGIN {ins}; END$$"),
        ),
        (
            "DO with a '' body",
            "DO 'BEGIN INSERT INTO @T (id, email) VALUES (2, ''@M''); END'".into(),
        ),
        (
            "DO with an E'' body",
            r"DO E'BEGIN INSERT INTO @T (id, email) VALUES (2, \'@M\'); END'".into(),
        ),
        (
            "DO, dynamic SQL with format %I %L",
            "DO $$BEGIN EXECUTE format('INSERT INTO %I (id, email) VALUES (2, %L)', 'pat' || '@N', '@M'); END$$".into(),
        ),
        (
            "DO, dynamic SQL, name and value built from pieces",
            "DO $$BEGIN EXECUTE 'INSERT INTO p' || 'at@N (id, email) VALUES (2, ' || quote_literal('qzadv' || '@Z') || ')'; END$$".into(),
        ),
        (
            "DO, dynamic SQL with USING",
            "DO $$BEGIN EXECUTE 'INSERT INTO ' || quote_ident('pat' || '@N') || ' (id, email) VALUES ($1, $2)' USING 2, convert_to('@M', 'UTF8'); END$$".into(),
        ),
        (
            "DO with nested dollar tags",
            "DO $o$BEGIN EXECUTE $i$INSERT INTO @T (id, email) VALUES (2, '@M')$i$; END$o$".into(),
        ),
        (
            "DO with a lookup",
            "DO $$DECLARE x int; BEGIN SELECT id INTO x FROM @T WHERE email = '@M'; END$$".into(),
        ),
        (
            "DO updating a U& table",
            "DO $$BEGIN UPDATE @U SET name = '@M' WHERE id = 1; END$$".into(),
        ),
        (
            "DO with SET LOCAL search_path and an unqualified INSERT",
            "DO $$BEGIN SET LOCAL search_path = public; INSERT INTO @T (id, email) VALUES (2, '@M'); END$$".into(),
        ),
    ] {
        b.add(C, what).q(&body).refused();
    }
    b.add(C, "trigger function and BEFORE INSERT trigger on patNNN, one string")
        .q("CREATE FUNCTION @F() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.email := convert_to('@M', 'UTF8'); RETURN NEW; END$$; \
            CREATE TRIGGER tr@N BEFORE INSERT ON @T FOR EACH ROW EXECUTE FUNCTION @F()")
        .q("INSERT INTO @T (id, email) VALUES (2, 'x')")
        .refused();
    b.add(C, "trigger on a plain table copying into patNNN, then INSERT into the plain table")
        .setup("CREATE TABLE @K (id int4 PRIMARY KEY, email text, name text, info text)")
        .setup("ALTER TABLE @K OWNER TO app")
        .q("CREATE FUNCTION @F() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN INSERT INTO @T (id, email) VALUES (NEW.id, convert_to(NEW.email, 'UTF8')); RETURN NULL; END$$")
        .q("CREATE TRIGGER tr@N BEFORE INSERT ON @K FOR EACH ROW EXECUTE FUNCTION @F()")
        .q("INSERT INTO @K (id, email) VALUES (2, '@M')")
        .refused();
    b.add(
        C,
        "rule with the value on a plain table, then INSERT into it",
    )
    .setup(PLAIN_K[0])
    .setup(PLAIN_K[1])
    .q("CREATE RULE r@N AS ON INSERT TO @K DO ALSO INSERT INTO @T (id, email) VALUES (2, '@M')")
    .q("INSERT INTO @K (id) VALUES (5)")
    .refused();
    b.add(C, "column DEFAULT with the value, then INSERT without it")
        .q("ALTER TABLE @T ALTER COLUMN email SET DEFAULT '@M'")
        .q("INSERT INTO @T (id) VALUES (2)")
        .refused();
    b.add(C, "column DEFAULT expression with the value")
        .q("ALTER TABLE @T ALTER COLUMN name SET DEFAULT convert_to('@M', 'UTF8')")
        .q("INSERT INTO @T (id) VALUES (2)")
        .refused();
    b.add(
        C,
        "DEFAULT with the value on an inheritance child's protected column",
    )
    .q("CREATE TABLE @K () INHERITS (@T)")
    .q("ALTER TABLE @K ALTER COLUMN email SET DEFAULT '@M'")
    .q("INSERT INTO @K (id) VALUES (2)")
    .refused();
    b.add(C, "CHECK constraint with the value")
        .q("ALTER TABLE @T ADD CONSTRAINT c@N CHECK (email <> '@M')");
    b.add(C, "partial index with the value")
        .q("CREATE INDEX ON @T (id) WHERE email = '@M'");
    b.add(C, "CREATE VIEW with the value in WHERE")
        .q("CREATE VIEW @V AS SELECT id FROM @T WHERE email = '@M'");
}

// ---------------------------------------------------------------------------------------------
// 6. Composite field, subscript and multi-column targets; value expressions
// ---------------------------------------------------------------------------------------------

fn indirection(b: &mut Book) {
    use Class::Indirection as C;
    for (what, sql) in [
        (
            "UPDATE SET name.x = literal",
            "UPDATE @T SET name.x = '@M' WHERE id = 1",
        ),
        (
            "UPDATE SET email.x = literal",
            "UPDATE @T SET email.x = '@M' WHERE id = 1",
        ),
        (
            "UPDATE SET email.a.b = literal",
            "UPDATE @T SET email.a.b = '@M' WHERE id = 1",
        ),
        (
            "INSERT (email.x)",
            "INSERT INTO @T (id, email.x) VALUES (2, '@M')",
        ),
        (
            "INSERT (name.a.b)",
            "INSERT INTO @T (id, name.a.b) VALUES (2, '@M')",
        ),
        (
            "UPDATE SET email[1] = literal",
            "UPDATE @T SET email[1] = '@M' WHERE id = 1",
        ),
        (
            "UPDATE SET email[1:2] = literal",
            "UPDATE @T SET email[1:2] = '@M' WHERE id = 1",
        ),
        (
            "INSERT (email[1])",
            "INSERT INTO @T (id, email[1]) VALUES (2, '@M')",
        ),
        (
            "INSERT (name[1].x)",
            "INSERT INTO @T (id, name[1].x) VALUES (2, '@M')",
        ),
        (
            "UPDATE SET (email.x, id) = (…)",
            "UPDATE @T SET (email.x, id) = ('@M', 1) WHERE id = 1",
        ),
    ] {
        b.add(C, what).q(sql).refused();
    }
    b.add(C, "extended UPDATE SET name.x = $1")
        .x("UPDATE @T SET name.x = $1 WHERE id = 1", &["@M"])
        .refused();
    b.add(C, "multi-assignment SET (email, name) = (…)")
        .q("UPDATE @T SET (email, name) = ('@M', '@M') WHERE id = 1")
        .ve1()
        .vn1();
    b.add(C, "multi-assignment SET (email) = ROW(…)")
        .q("UPDATE @T SET (email) = ROW('@M') WHERE id = 1")
        .ve1();
    b.add(C, "multi-assignment SET (email, name) = (SELECT …)")
        .q("UPDATE @T SET (email, name) = (SELECT '@M', 'x') WHERE id = 1")
        .ve1();
    b.add(C, "multi-assignment SET (id, email) = (…)")
        .q("UPDATE @T SET (id, email) = (1, '@M') WHERE id = 1")
        .ve1();
    b.add(C, "extended multi-assignment SET (email, name) = ($1, $2)")
        .x(
            "UPDATE @T SET (email, name) = ($1, $2) WHERE id = 1",
            &["@M", "@M"],
        )
        .ve1();
    for (what, value) in [
        ("ROW(literal)", "ROW('@M')"),
        ("literal::text", "'@M'::text"),
        ("CAST(literal AS text)", "CAST('@M' AS text)"),
        ("text 'literal' (typed literal)", "text '@M'"),
        ("literal::bytea", "'@M'::bytea"),
        ("decode(hex, 'hex')", "decode('@H', 'hex')"),
        ("convert_to(literal, 'UTF8')", "convert_to('@M', 'UTF8')"),
        ("literal COLLATE \"C\"", "'@M' COLLATE \"C\""),
        ("concat(literal)", "concat('@M')"),
        ("literal || ''", "'@M' || ''"),
        ("(SELECT literal)", "(SELECT '@M')"),
        (
            "CASE WHEN true THEN literal END",
            "CASE WHEN true THEN '@M' END",
        ),
        ("COALESCE(literal, NULL)", "COALESCE('@M', NULL)"),
        ("('literal') in parentheses", "('@M')"),
    ] {
        b.add(C, &format!("INSERT value {what}"))
            .q(&format!("INSERT INTO @T (id, email) VALUES (2, {value})"))
            .ve();
    }
    b.add(C, "UPDATE SET email = (SELECT literal)")
        .q("UPDATE @T SET email = (SELECT '@M') WHERE id = 1")
        .ve1();
    b.add(C, "UPDATE SET email = CASE … END")
        .q("UPDATE @T SET email = CASE WHEN id = 1 THEN '@M' END WHERE id = 1")
        .ve1();
    b.add(C, "INSERT naming the column twice")
        .q("INSERT INTO @T (id, email, email) VALUES (2, 'x', '@M')");
    b.add(C, "UPDATE assigning the column twice")
        .q("UPDATE @T SET email = 'x', email = '@M' WHERE id = 1");
    b.add(C, "UPDATE SET DEFAULT and a literal")
        .q("UPDATE @T SET email = DEFAULT, name = '@M' WHERE id = 1")
        .vn1();
    b.add(C, "UPDATE … FROM with a literal")
        .q("UPDATE @T SET name = '@M' FROM (SELECT 1 AS one) s WHERE @T.id = s.one")
        .vn1();
    b.add(C, "INSERT … SELECT FROM VALUES")
        .q("INSERT INTO @T (id, email) SELECT * FROM (VALUES (2, '@M')) v")
        .ve();
    b.add(C, "INSERT without a column list")
        .q("INSERT INTO @T VALUES (2, '@M')")
        .ve();
    b.add(C, "INSERT without a column list, all columns")
        .q("INSERT INTO @T VALUES (2, '@M', 'n', 'i')")
        .ve();
    b.add(C, "INSERT SELECT without a column list")
        .q("INSERT INTO @T SELECT 2, '@M'")
        .ve();
}

// ---------------------------------------------------------------------------------------------
// 7. Settings made upstream (or at start-up) that change name resolution
// ---------------------------------------------------------------------------------------------

/// A plain `@S.@T` shadowing the protected `public.@T`.
const SHADOW: &[&str] = &[
    "CREATE SCHEMA @S AUTHORIZATION app",
    "CREATE TABLE @S.@T (id int4 PRIMARY KEY, email text, name text, info text)",
    "ALTER TABLE @S.@T OWNER TO app",
];

fn settings(b: &mut Book) {
    use Class::Settings as C;
    let ins = "INSERT INTO @T (id, email) VALUES (2, '@M')";
    for (what, set, reset) in [
        (
            "ALTER ROLE app SET search_path = shadow, public",
            "ALTER ROLE app SET search_path = @S, public",
            "ALTER ROLE app RESET search_path",
        ),
        (
            "ALTER DATABASE app SET search_path = shadow, public",
            "ALTER DATABASE app SET search_path = @S, public",
            "ALTER DATABASE app RESET search_path",
        ),
        (
            "ALTER ROLE app IN DATABASE app SET search_path = shadow, public",
            "ALTER ROLE app IN DATABASE app SET search_path = @S, public",
            "ALTER ROLE app IN DATABASE app RESET search_path",
        ),
        (
            "ALTER ROLE app SET search_path = shadow (no public)",
            "ALTER ROLE app SET search_path = @S",
            "ALTER ROLE app RESET search_path",
        ),
    ] {
        let c = b.add(C, &format!("{what}, unqualified INSERT"));
        for s in SHADOW {
            c.setup(s);
        }
        c.exclusive().now(set).teardown(reset).q(ins).refused();
    }
    {
        let c = b.add(C, "role search_path to a shadow, extended INSERT");
        for s in SHADOW {
            c.setup(s);
        }
        c.exclusive()
            .now("ALTER ROLE app SET search_path = @S, public")
            .teardown("ALTER ROLE app RESET search_path")
            .x("INSERT INTO @T (id, email) VALUES ($1, $2)", &["2", "@M"])
            .refused();
    }
    {
        let c = b.add(C, "role search_path to a shadow, lookup");
        for s in SHADOW {
            c.setup(s);
        }
        c.exclusive()
            .now("ALTER ROLE app SET search_path = @S, public")
            .teardown("ALTER ROLE app RESET search_path")
            .q("SELECT id FROM @T WHERE email = '@M'")
            .refused();
    }
    {
        let c = b.add(C, "role search_path to a shadow, COPY FROM STDIN");
        for s in SHADOW {
            c.setup(s);
        }
        c.exclusive()
            .now("ALTER ROLE app SET search_path = @S, public")
            .teardown("ALTER ROLE app RESET search_path")
            .rcopy("COPY @T (id, email) FROM STDIN", "2\t@M\n")
            .refused();
    }
    b.add(
        C,
        "ALTER ROLE app SET role: \"$user\" becomes a role with a shadow schema",
    )
    .setup("CREATE ROLE advr@N")
    .setup("GRANT advr@N TO app")
    .setup("CREATE SCHEMA advr@N AUTHORIZATION advr@N")
    .setup("CREATE TABLE advr@N.@T (id int4 PRIMARY KEY, email text, name text, info text)")
    .setup("ALTER TABLE advr@N.@T OWNER TO advr@N")
    .exclusive()
    .now("ALTER ROLE app SET role = 'advr@N'")
    .teardown("ALTER ROLE app RESET role")
    .q(ins)
    .refused();
    let c = b.add(C, "start-up options -c search_path=shadow,public");
    for s in SHADOW {
        c.setup(s);
    }
    c.opts("-c search_path=@S,public").q(ins).refused();
    let c = b.add(C, "start-up parameter search_path=shadow,public (raw)");
    for s in SHADOW {
        c.setup(s);
    }
    c.rstart("search_path", "@S,public").rq(ins).refused();
    let c = b.add(C, "start-up options -c search_path, extended INSERT");
    for s in SHADOW {
        c.setup(s);
    }
    c.opts("-c search_path=@S,public")
        .x("INSERT INTO @T (id, email) VALUES ($1, $2)", &["2", "@M"])
        .refused();
    // Exclusive: a schema `app` would take every unqualified CREATE of the other cases.
    b.add(
        C,
        "schema named after the user with a plain patNNN (\"$user\" first)",
    )
    .exclusive()
    .now("CREATE SCHEMA app AUTHORIZATION app")
    .now("CREATE TABLE app.@T (id int4 PRIMARY KEY, email text, name text, info text)")
    .now("ALTER TABLE app.@T OWNER TO app")
    .settle()
    .teardown("DROP SCHEMA app CASCADE")
    .q(ins)
    .refused();
    b.add(
        C,
        "temporary table shadowing patNNN (pg_temp is searched first)",
    )
    .q("CREATE TEMP TABLE @T (id int4 PRIMARY KEY, email bytea, name bytea, info text)")
    .q(ins)
    .refused();
    b.add(
        C,
        "temporary table shadowing patNNN, created as pg_temp.patNNN",
    )
    .q("CREATE TABLE pg_temp.@T (id int4 PRIMARY KEY, email bytea, name bytea, info text)")
    .q(ins)
    .refused();
    b.add(
        C,
        "SET search_path as its own statement, then an unqualified INSERT",
    )
    .setup(SHADOW[0])
    .setup(SHADOW[1])
    .setup(SHADOW[2])
    .q("SET search_path = @S, public")
    .q(ins)
    .refused();
    b.add(
        C,
        "set_config('search_path') in a SELECT, then an unqualified INSERT",
    )
    .setup(SHADOW[0])
    .setup(SHADOW[1])
    .setup(SHADOW[2])
    .q("SELECT set_config('search_path', '@S, public', false)")
    .q(ins)
    .refused();
    b.add(C, "search_path set by a function the app calls, then an unqualified INSERT")
        .setup(SHADOW[0])
        .setup(SHADOW[1])
        .setup(SHADOW[2])
        .setup("CREATE FUNCTION @F() RETURNS void LANGUAGE plpgsql AS $$BEGIN PERFORM set_config('search_path', '@S, public', false); END$$")
        .q("SELECT @F()")
        .q(ins)
        .refused();
}

// ---------------------------------------------------------------------------------------------
// 8. Beyond: prepared statements, cursors, COPY, MERGE, upserts, CTEs, EXPLAIN, odd bytes
// ---------------------------------------------------------------------------------------------

/// A binary COPY stream of one row (id int4, email as text bytes).
fn binary_copy_row(id: i32, email: &str) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    v.extend_from_slice(&0i32.to_be_bytes());
    v.extend_from_slice(&0i32.to_be_bytes());
    v.extend_from_slice(&2i16.to_be_bytes());
    v.extend_from_slice(&4i32.to_be_bytes());
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&(email.len() as i32).to_be_bytes());
    v.extend_from_slice(email.as_bytes());
    v.extend_from_slice(&(-1i16).to_be_bytes());
    v
}

fn beyond(b: &mut Book) {
    use Class::Beyond as C;
    let ins = "INSERT INTO @T (id, email) VALUES (2, '@M')";
    // Prepared statements (SQL level).
    b.add(C, "PREPARE with the literal, EXECUTE")
        .q("PREPARE p@N AS INSERT INTO @T (id, email) VALUES (2, '@M')")
        .q("EXECUTE p@N")
        .ve();
    b.add(C, "PREPARE with a parameter, EXECUTE with the literal")
        .q("PREPARE p@N(text) AS INSERT INTO @T (id, email) VALUES (2, $1)")
        .q("EXECUTE p@N('@M')")
        .ve();
    b.add(
        C,
        "PREPARE (bytea parameter), EXECUTE with the literal, one string",
    )
    .q("PREPARE p@N(bytea) AS INSERT INTO @T (id, email) VALUES (2, $1); EXECUTE p@N('@M')")
    .ve();
    b.add(C, "PREPARE of a lookup, EXECUTE with the literal")
        .q("PREPARE p@N(text) AS SELECT id FROM @T WHERE email = $1")
        .q("EXECUTE p@N('@M')");
    b.add(
        C,
        "PREPARE sent through the extended protocol, EXECUTE with the literal",
    )
    .x(
        "PREPARE p@N(text) AS UPDATE @T SET name = $1 WHERE id = 1",
        &[],
    )
    .q("EXECUTE p@N('@M')")
    .vn1();
    // Cursors.
    b.add(C, "DECLARE … FOR UPDATE; UPDATE … WHERE CURRENT OF")
        .q("BEGIN")
        .q("DECLARE c CURSOR FOR SELECT id FROM @T WHERE id = 1 FOR UPDATE")
        .q("FETCH 1 FROM c")
        .q("UPDATE @T SET email = '@M' WHERE CURRENT OF c")
        .q("COMMIT")
        .ve1();
    b.add(
        C,
        "cursor over a U& name; UPDATE … WHERE CURRENT OF, one string",
    )
    .q(
        "BEGIN; DECLARE c CURSOR FOR SELECT id FROM @U FOR UPDATE; FETCH 1 FROM c; \
            UPDATE @U SET name = '@M' WHERE CURRENT OF c; COMMIT",
    )
    .vn1();
    b.add(C, "cursor FOR UPDATE with a lookup")
        .q("BEGIN")
        .q("DECLARE c CURSOR FOR SELECT id FROM @T WHERE email = '@M' FOR UPDATE")
        .q("COMMIT");
    b.add(C, "cursor WITH HOLD with a lookup")
        .q("DECLARE c CURSOR WITH HOLD FOR SELECT id FROM @T WHERE email = '@M'")
        .q("FETCH ALL FROM c");
    // COPY FROM STDIN.
    b.add(C, "COPY FROM STDIN (simple protocol)")
        .rcopy("COPY @T (id, email) FROM STDIN", "2\t@M\n")
        .ve();
    b.add(C, "COPY FROM STDIN (extended protocol)")
        .copy("COPY @T (id, email) FROM STDIN", "2\t@M\n")
        .ve();
    b.add(C, "COPY FROM STDIN CSV, columns reordered")
        .rcopy(
            "COPY @T (email, info, id) FROM STDIN WITH (FORMAT csv)",
            "@M,plain,2\n",
        )
        .ve();
    b.add(C, "COPY FROM STDIN without a column list")
        .rcopy("COPY @T FROM STDIN", "2\t@M\t\\N\tplain\n")
        .ve();
    {
        let c = b.add(C, "COPY FROM STDIN binary");
        let data = binary_copy_row(2, &c.fill("@M"));
        c.rcopyb("COPY @T (id, email) FROM STDIN WITH (FORMAT binary)", data)
            .ve();
    }
    b.add(C, "COPY into an inheritance child created upstream")
        .setup("CREATE TABLE @K () INHERITS (@T)")
        .setup("ALTER TABLE @K OWNER TO app")
        .rcopy("COPY @K (id, email) FROM STDIN", "2\t@M\n")
        .v("@K", "email", 2, "@M", true);
    b.add(C, "COPY into a view over patNNN created upstream")
        .setup("CREATE VIEW @V AS SELECT * FROM @T")
        .setup("ALTER VIEW @V OWNER TO app")
        .rcopy("COPY @V (id, email) FROM STDIN", "2\t@M\n");
    b.add(C, "COPY FROM STDIN in a multi-statement string")
        .rcopy("SELECT 1; COPY @T (id, email) FROM STDIN", "2\t@M\n")
        .ve();
    b.add(C, "COPY (SELECT … WHERE email = literal) TO STDOUT")
        .q("COPY (SELECT id FROM @T WHERE email = '@M') TO STDOUT");
    // MERGE, upserts.
    b.add(C, "MERGE WHEN NOT MATCHED THEN INSERT literal")
        .q("MERGE INTO @T t USING (SELECT 2 AS id) s ON t.id = s.id \
            WHEN NOT MATCHED THEN INSERT (id, email) VALUES (s.id, '@M')")
        .ve();
    b.add(C, "MERGE WHEN MATCHED THEN UPDATE SET literal")
        .q("MERGE INTO @T t USING (SELECT 1 AS id) s ON t.id = s.id \
            WHEN MATCHED THEN UPDATE SET email = '@M'")
        .ve1();
    b.add(C, "MERGE with the value in the source")
        .q(
            "MERGE INTO @T t USING (VALUES (2, '@M')) s(id, e) ON t.id = s.id \
            WHEN NOT MATCHED THEN INSERT (id, email) VALUES (s.id, s.e)",
        )
        .ve();
    b.add(C, "MERGE, extended protocol with parameters")
        .x(
            "MERGE INTO @T t USING (SELECT $1::int4 AS id) s ON t.id = s.id \
             WHEN NOT MATCHED THEN INSERT (id, email) VALUES (s.id, $2)",
            &["2", "@M"],
        )
        .ve();
    b.add(C, "ON CONFLICT (id) DO UPDATE SET literal")
        .q("INSERT INTO @T (id, email) VALUES (1, 'c') ON CONFLICT (id) DO UPDATE SET email = '@M'")
        .ve1();
    b.add(C, "ON CONFLICT ON CONSTRAINT DO UPDATE SET literal")
        .q(
            "INSERT INTO @T (id, email) VALUES (1, 'c') ON CONFLICT ON CONSTRAINT @T_pkey \
            DO UPDATE SET name = '@M'",
        )
        .vn1();
    b.add(C, "ON CONFLICT DO UPDATE SET … WHERE lookup").q(
        "INSERT INTO @T (id, name) VALUES (1, 'c') ON CONFLICT (id) DO UPDATE SET info = 'i' \
            WHERE @T.email = '@M'",
    );
    b.add(
        C,
        "ON CONFLICT (email) on a unique column DO UPDATE SET literal",
    )
    .extra(Extra::Unique)
    .q(
        "INSERT INTO @T (id, email) VALUES (3, 'seed-e') ON CONFLICT (email) \
            DO UPDATE SET name = '@M'",
    )
    .vn1();
    b.add(C, "ON CONFLICT DO NOTHING with the value")
        .q("INSERT INTO @T (id, email) VALUES (2, '@M') ON CONFLICT DO NOTHING")
        .ve();
    b.add(C, "ON CONFLICT DO UPDATE SET EXCLUDED.email")
        .q("INSERT INTO @T (id, email) VALUES (1, '@M') ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email")
        .ve1();
    // CTEs, RETURNING, EXPLAIN ANALYZE.
    b.add(C, "data-modifying CTE INSERT")
        .q("WITH x AS (INSERT INTO @T (id, email) VALUES (2, '@M') RETURNING id) SELECT id FROM x")
        .ve();
    b.add(C, "data-modifying CTE UPDATE")
        .q("WITH x AS (UPDATE @T SET email = '@M' WHERE id = 1 RETURNING id) SELECT 1")
        .ve1();
    b.add(C, "CTE providing the value to INSERT … SELECT")
        .q("WITH x AS (SELECT '@M' AS e) INSERT INTO @T (id, email) SELECT 2, e FROM x")
        .ve();
    b.add(C, "nested data-modifying CTE")
        .q("WITH a AS (SELECT 1), b AS (INSERT INTO @T (id, email) VALUES (2, '@M') RETURNING id) \
            SELECT * FROM a, b")
        .ve();
    b.add(C, "WITH RECURSIVE around an INSERT")
        .q(
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 2) \
            INSERT INTO @T (id, email) SELECT 2, '@M'",
        )
        .ve();
    b.add(C, "INSERT … RETURNING the protected column")
        .q("INSERT INTO @T (id, email) VALUES (2, '@M') RETURNING email")
        .ve();
    b.add(C, "UPDATE … RETURNING *")
        .q("UPDATE @T SET email = '@M' WHERE id = 1 RETURNING *")
        .ve1();
    b.add(C, "DELETE … WHERE lookup RETURNING *")
        .q("DELETE FROM @T WHERE email = '@M' RETURNING *");
    b.add(C, "EXPLAIN ANALYZE INSERT")
        .q("EXPLAIN ANALYZE INSERT INTO @T (id, email) VALUES (2, '@M')")
        .ve();
    b.add(C, "EXPLAIN (ANALYZE, BUFFERS) UPDATE")
        .q("EXPLAIN (ANALYZE, BUFFERS) UPDATE @T SET email = '@M' WHERE id = 1")
        .ve1();
    b.add(
        C,
        "EXPLAIN (ANALYZE true, FORMAT json) INSERT, extended protocol",
    )
    .x(
        "EXPLAIN (ANALYZE true, FORMAT json) INSERT INTO @T (id, email) VALUES ($1, $2)",
        &["2", "@M"],
    )
    .ve();
    b.add(C, "EXPLAIN with a lookup (not executed)")
        .q("EXPLAIN SELECT id FROM @T WHERE name = '@M'");
    // Transactions and multi-statement strings.
    b.add(C, "BEGIN; INSERT; COMMIT in one string")
        .q(&format!("BEGIN; {ins}; COMMIT"))
        .ve();
    b.add(
        C,
        "BEGIN; SELECT 1; INSERT INTO U& table; COMMIT in one string",
    )
    .q("BEGIN; SELECT 1; INSERT INTO @U (id, email) VALUES (2, '@M'); COMMIT")
    .ve();
    b.add(C, "SAVEPOINT … RELEASE around the INSERT")
        .q(&format!("BEGIN; SAVEPOINT a; {ins}; RELEASE a; COMMIT"))
        .ve();
    b.add(C, "comments between every token")
        .q("INSERT/**/INTO/**/@T/**/(/**/id/**/,/**/email/**/)/**/VALUES/**/(/**/2/**/,/**/'@M'/**/)")
        .ve();
    b.add(C, "line comments between every token")
        .q("INSERT--a\nINTO--b\n@T--c\n(id,--d\nemail)--e\nVALUES--f\n(2,--g\n'@M')--h\n")
        .ve();
    b.add(C, "nested comments between tokens")
        .q("INSERT /* /* x */ */ INTO /* a /* b */ c */ @T (id, email) VALUES (2, /*/**/*/ '@M')")
        .ve();
    b.add(C, "no whitespace at all")
        .q("INSERT INTO @T(id,email)VALUES(2,'@M')")
        .ve();
    b.add(C, "tabs, CRs and form feeds as whitespace")
        .q("INSERT\tINTO\r@T\x0c(id,\temail)\rVALUES\x0c(2,\t'@M')")
        .ve();
    b.add(C, "mixed-case keywords")
        .q("iNsErT iNtO @T (id, email) vAlUeS (2, '@M')")
        .ve();
    b.add(C, "; inside literals of the same statement")
        .q("INSERT INTO @T (id, email, info) VALUES (2, '@M', 'a;b'); SELECT ';'")
        .ve();
    b.add(C, "statement split by ; inside a literal of a plain column")
        .q("INSERT INTO @T (id, info, email) VALUES (2, ';INSERT INTO x VALUES (', '@M')")
        .ve();
    b.add(C, "OVERRIDING SYSTEM VALUE")
        .q("INSERT INTO @T (id, email) OVERRIDING SYSTEM VALUE VALUES (2, '@M')")
        .ve();
    b.add(C, "UPDATE ONLY")
        .q("UPDATE ONLY @T SET email = '@M' WHERE id = 1")
        .ve1();
    b.add(C, "UPDATE t * (legacy inheritance star)")
        .q("UPDATE @T * SET email = '@M' WHERE id = 1")
        .ve1();
    b.add(C, "DELETE FROM ONLY with a lookup")
        .q("DELETE FROM ONLY @T WHERE email = '@M'");
    // Lookups in places a walker may skip.
    for (what, sql) in [
        (
            "FROM alias column list",
            "SELECT * FROM @T AS x(a, b) WHERE b = '@M'",
        ),
        (
            "FROM alias column list, qualified",
            "SELECT * FROM @T x(i, e) WHERE x.e = '@M'",
        ),
        (
            "derived table column alias",
            "SELECT * FROM (SELECT email AS e FROM @T) s WHERE s.e = '@M'",
        ),
        (
            "row comparison",
            "SELECT id FROM @T WHERE (email, id) = ('@M', 1)",
        ),
        (
            "ROW() comparison",
            "SELECT id FROM @T WHERE ROW(email) = ROW('@M')",
        ),
        (
            "parenthesised column",
            "SELECT id FROM @T WHERE (email) = ('@M')",
        ),
        (
            "= ANY(array literal string)",
            "SELECT id FROM @T WHERE email = ANY('{@M}')",
        ),
        (
            "= ANY(ARRAY[…])",
            "SELECT id FROM @T WHERE email = ANY(ARRAY['@M'])",
        ),
        ("IN list", "SELECT id FROM @T WHERE email IN ('@M', 'x')"),
        ("literal = column", "SELECT id FROM @T WHERE '@M' = email"),
        (
            "NOT (col <> literal)",
            "SELECT id FROM @T WHERE NOT (email <> '@M')",
        ),
        (
            "COLLATE on the literal",
            "SELECT id FROM @T WHERE email = '@M' COLLATE \"C\"",
        ),
        (
            "FILTER clause",
            "SELECT count(*) FILTER (WHERE email = '@M') FROM @T",
        ),
        (
            "HAVING bool_or",
            "SELECT id FROM @T GROUP BY id HAVING bool_or(email = '@M')",
        ),
        (
            "LATERAL subquery",
            "SELECT * FROM @T, LATERAL (SELECT @T.email = '@M' AS hit) s",
        ),
        (
            "EXISTS on a second alias",
            "SELECT 1 FROM @T a WHERE EXISTS (SELECT 1 FROM @T b WHERE b.email = '@M')",
        ),
        (
            "scalar subquery in VALUES",
            "VALUES ((SELECT id FROM @T WHERE email = '@M'))",
        ),
        (
            "join with VALUES",
            "SELECT 1 FROM @T JOIN (VALUES ('@M')) v(e) ON @T.email = v.e",
        ),
        (
            "CTE of values compared",
            "WITH c(e) AS (VALUES ('@M')) SELECT 1 FROM @T, c WHERE @T.email = c.e",
        ),
        (
            "= (SELECT literal)",
            "SELECT id FROM @T WHERE email = (SELECT '@M')",
        ),
        (
            "NATURAL JOIN with a literal column",
            "SELECT * FROM @T NATURAL JOIN (SELECT '@M' AS email) s",
        ),
        (
            "JOIN USING with a literal column",
            "SELECT * FROM @T JOIN (SELECT '@M'::bytea AS email) s USING (email)",
        ),
        (
            "window with a lookup",
            "SELECT count(*) OVER (ORDER BY id) FROM @T WHERE email = '@M'",
        ),
        (
            "UNION ALL branch",
            "SELECT id FROM @T WHERE email = '@M' UNION ALL SELECT 1",
        ),
        (
            "json_agg with a lookup",
            "SELECT json_agg(id) FROM @T WHERE name = '@M'",
        ),
        (
            "IS NOT DISTINCT FROM",
            "SELECT id FROM @T WHERE email IS NOT DISTINCT FROM '@M'",
        ),
        (
            "CASE in WHERE",
            "SELECT id FROM @T WHERE CASE WHEN email = '@M' THEN true END",
        ),
        (
            "lookup on a non-indexed column",
            "SELECT id FROM @T WHERE name = '@M'",
        ),
        (
            "function over the column",
            "SELECT id FROM @T WHERE md5(email) = '@M'",
        ),
        (
            "cast of the column",
            "SELECT id FROM @T WHERE email::text = '@M'",
        ),
        ("LIKE pattern", "SELECT id FROM @T WHERE name LIKE '@M%'"),
        (
            "FOR UPDATE with a lookup",
            "SELECT id FROM @T WHERE email = '@M' FOR UPDATE",
        ),
    ] {
        b.add(C, &format!("lookup: {what}")).q(sql);
    }
    // Extended protocol oddities.
    b.add(C, "Parse with two statements (INSERT; SELECT)")
        .rx(&format!("{ins}; SELECT 1"), &[])
        .rsync();
    b.add(
        C,
        "Parse with two statements (SELECT; INSERT INTO U& table)",
    )
    .rx("SELECT 1; INSERT INTO @U (id, email) VALUES (2, '@M')", &[])
    .rsync();
    b.add(C, "Parse with two statements and a parameter")
        .rx(
            "SELECT $1::int4; INSERT INTO @T (id, email) VALUES (2, '@M')",
            &["1"],
        )
        .rsync();
    b.add(C, "Parse declaring the value parameter bytea")
        .rxt(
            "INSERT INTO @T (id, email) VALUES ($1, $2)",
            &[23, 17],
            &["2", "@M"],
        )
        .rsync()
        .ve();
    b.add(C, "Parse declaring the value parameter unknown")
        .rxt(
            "INSERT INTO @T (id, email) VALUES ($1, $2)",
            &[23, 705],
            &["2", "@M"],
        )
        .rsync()
        .ve();
    b.add(C, "extended INSERT with the value parameter cast to bytea")
        .x(
            "INSERT INTO @T (id, email) VALUES ($1, $2::bytea)",
            &["2", "@M"],
        )
        .ve();
    b.add(C, "extended INSERT with the value parameter cast to text")
        .x(
            "INSERT INTO @T (id, email) VALUES ($1, $2::text)",
            &["2", "@M"],
        )
        .ve();
    b.add(C, "extended INSERT, value through a CTE parameter")
        .x(
            "WITH v(e) AS (SELECT $1) INSERT INTO @T (id, email) SELECT 2, e FROM v",
            &["@M"],
        )
        .ve();
    b.add(C, "pipelined extended INSERTs, one Sync")
        .rx("INSERT INTO @T (id, email) VALUES ($1, $2)", &["2", "@M"])
        .rx("INSERT INTO @T (id, email) VALUES ($1, $2)", &["3", "x"])
        .rsync()
        .ve();
    // Size and bytes.
    {
        let c = b.add(C, "very long statement: 1 MiB of comment before the INSERT");
        let sql = format!("/* {} */ {}", "x".repeat(1 << 20), c.fill(ins));
        c.rqb(sql.into_bytes()).ve();
    }
    {
        let c = b.add(C, "very long value: the marker then 256 KiB");
        let long = format!("{}{}", c.fill("@M"), "y".repeat(256 << 10));
        let sql = c.fill(&format!("INSERT INTO @T (id, email) VALUES (2, '{long}')"));
        c.rqb(sql.into_bytes()).v("@T", "email", 2, &long, true);
    }
    {
        let c = b.add(C, "5000-row VALUES list with the marker in the last row");
        let mut sql = c.fill("INSERT INTO @T (id, name) VALUES ");
        for i in 0..5000 {
            let _ = write!(sql, "({}, 'r{i}'), ", 10 + i);
        }
        sql.push_str(&c.fill("(2, '@M')"));
        c.rqb(sql.into_bytes()).vn();
    }
    {
        let c = b.add(C, "NUL byte after the statement in a Query message");
        let q = bytes3(c, ins, b"\0", "; SELECT 1");
        c.rqb(q);
    }
    {
        let c = b.add(C, "NUL byte inside a literal in a Query message");
        let q = bytes3(c, "INSERT INTO @T (id, email) VALUES (2, '@M", b"\0", "x')");
        c.rqb(q);
    }
    b.add(C, "NUL byte in a text parameter").rx(
        "INSERT INTO @T (id, email) VALUES ($1, $2)",
        &["2", "@M\0x"],
    );
    {
        let c = b.add(C, "invalid UTF-8 inside the value literal");
        let q = bytes3(
            c,
            "INSERT INTO @T (id, email) VALUES (2, '@M",
            b"\xff\xfe",
            "')",
        );
        c.rqb(q);
    }
    {
        let c = b.add(C, "invalid UTF-8 in a comment before the INSERT");
        let q = bytes3(
            c,
            "/* ",
            b"\xc3\x28",
            " */ INSERT INTO @T (id, email) VALUES (2, '@M')",
        );
        c.rqb(q);
    }
    {
        let c = b.add(C, "overlong UTF-8 encoding of a letter of the table name");
        let q = bytes3(
            c,
            "INSERT INTO p",
            b"\xc1\xa1",
            "t@N (id, email) VALUES (2, '@M')",
        );
        c.rqb(q);
    }
    {
        let c = b.add(C, "invalid UTF-8 in Parse");
        let q = bytes3(
            c,
            "INSERT INTO @T (id, email) VALUES (2, '@M",
            b"\x80",
            "')",
        );
        c.rxb(q, Vec::new()).rsync();
    }
    {
        let c = b.add(C, "invalid UTF-8 in a text parameter");
        let sql = c
            .fill("INSERT INTO @T (id, email) VALUES ($1, $2)")
            .into_bytes();
        let v = bytes3(c, "@M", b"\xff", "");
        c.rxb(sql, vec![b"2".to_vec(), v]).rsync();
    }
    b.add(C, "bytea hex literal text stored as a value")
        .q("INSERT INTO @T (id, email) VALUES (2, '\\x@H')")
        .v("@T", "email", 2, "\\x@H", true);
}

fn all_cases() -> Vec<Case> {
    let mut b = Book::default();
    identifiers(&mut b);
    lexer(&mut b);
    ddl(&mut b);
    renames(&mut b);
    bodies(&mut b);
    indirection(&mut b);
    settings(&mut b);
    beyond(&mut b);
    b.cases
}

// ---------------------------------------------------------------------------------------------
// Protected tables of the cases
// ---------------------------------------------------------------------------------------------

/// Every protected column of every case: (`schema.table`, column, indexed, unique).
fn protected_of(c: &Case) -> Vec<(String, String, bool, bool)> {
    let unique = c.extras.contains(&Extra::Unique);
    let mut v = vec![
        (c.fill("public.@T"), "email".to_string(), true, unique),
        (c.fill("public.@T"), "name".to_string(), false, false),
    ];
    for e in &c.extras {
        match e {
            Extra::Long => {
                v.push((c.fill("public.@L"), "email".into(), true, false));
                v.push((c.fill("public.@L"), "name".into(), false, false));
            }
            Extra::LongCol => v.push((c.fill("public.@D"), c.fill("@C"), false, false)),
            Extra::Part => {
                v.push((c.fill("public.@P"), "email".into(), true, false));
                v.push((c.fill("public.@P"), "name".into(), false, false));
            }
            Extra::Schema => {
                v.push((c.fill("@Q.@G"), "email".into(), true, false));
                v.push((c.fill("@Q.@G"), "name".into(), false, false));
            }
            Extra::Unique => {}
        }
    }
    v
}

fn column_specs(cases: &[Case]) -> Vec<ColumnSpec> {
    let mut specs = Vec::new();
    for c in cases {
        for (table, col, indexed, unique) in protected_of(c) {
            let mut s = ColumnSpec::new(&format!("{table}.{col}"), "text", KR);
            if unique {
                s = s.unique();
            } else if indexed {
                s = s.indexed();
            }
            specs.push(s);
        }
    }
    specs
}

/// DDL (through the proxy) and seed rows of a case's protected tables.
fn tables_of(c: &Case) -> (Vec<String>, Vec<String>) {
    let mut ddl =
        vec![c.fill("CREATE TABLE @T (id int4 PRIMARY KEY, email text, name text, info text)")];
    let mut seed =
        vec![c.fill("INSERT INTO @T (id, email, name, info) VALUES (1, 'seed-e', 'seed-n', 'i1')")];
    for e in &c.extras {
        match e {
            Extra::Long => {
                ddl.push(c.fill("CREATE TABLE @L (id int4 PRIMARY KEY, email text, name text)"));
                seed.push(c.fill("INSERT INTO @L (id, email, name) VALUES (1, 'seed-e', 'seed-n')"));
            }
            Extra::LongCol => {
                ddl.push(c.fill("CREATE TABLE @D (id int4 PRIMARY KEY, @C text)"));
                seed.push(c.fill("INSERT INTO @D (id, @C) VALUES (1, 'seed')"));
            }
            Extra::Part => ddl.push(c.fill(
                "CREATE TABLE @P (id int4, email text, name text, info text) PARTITION BY RANGE (id)",
            )),
            Extra::Schema => {
                ddl.push(c.fill("CREATE SCHEMA @Q"));
                ddl.push(c.fill("CREATE TABLE @Q.@G (id int4 PRIMARY KEY, email text, name text)"));
                seed.push(c.fill("INSERT INTO @Q.@G (id, email, name) VALUES (1, 'seed-e', 'seed-n')"));
            }
            Extra::Unique => ddl.push(c.fill("CREATE UNIQUE INDEX ON @T (email)")),
        }
    }
    (ddl, seed)
}

// ---------------------------------------------------------------------------------------------
// Running a case
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Outcome {
    Accepted,
    Refused {
        code: String,
        msg: String,
    },
    /// The case could not be run as written (a harness or case bug, a hang).
    Harness(String),
}

impl Outcome {
    fn describe(&self) -> String {
        match self {
            Outcome::Accepted => "accepted".into(),
            Outcome::Refused { code, msg } => format!("refused {code}: {}", clip(msg, 140)),
            Outcome::Harness(m) => format!("harness: {}", clip(m, 200)),
        }
    }
}

fn clip(s: &str, n: usize) -> String {
    let one_line = s.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= n {
        one_line
    } else {
        let mut t: String = one_line.chars().take(n).collect();
        t.push('…');
        t
    }
}

/// A parameter sent in text format whatever type the server describes.
#[derive(Debug)]
struct TextParam(Vec<u8>);

impl ToSql for TextParam {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }
    fn accepts(_ty: &Type) -> bool {
        true
    }
    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }
    tokio_postgres::types::to_sql_checked!();
}

/// Any value, raw (binary format).
struct RawOut(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for RawOut {
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(RawOut(raw.to_vec()))
    }
    fn accepts(_ty: &Type) -> bool {
        true
    }
}

/// A tokio-postgres error as `SQLSTATE: message` (server errors) or its description.
fn pg_err(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}

fn refusal(e: &tokio_postgres::Error) -> Outcome {
    match e.as_db_error() {
        Some(d) => Outcome::Refused {
            code: d.code().code().to_string(),
            msg: d.message().to_string(),
        },
        None => Outcome::Refused {
            code: "no-sqlstate".into(),
            msg: e.to_string(),
        },
    }
}

async fn connect(conn_str: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn step(c: &tokio_postgres::Client, s: &Step) -> Result<(), tokio_postgres::Error> {
    match s {
        Step::Q(sql) => c.simple_query(sql).await.map(drop),
        Step::X(sql, params) => {
            let ps: Vec<TextParam> = params
                .iter()
                .map(|p| TextParam(p.as_bytes().to_vec()))
                .collect();
            let refs: Vec<&(dyn ToSql + Sync)> =
                ps.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            c.execute(sql.as_str(), &refs).await.map(drop)
        }
        Step::Copy(sql, data) => {
            let sink = c.copy_in::<_, bytes::Bytes>(sql.as_str()).await?;
            let mut sink = Box::pin(sink);
            sink.send(bytes::Bytes::from(data.clone())).await?;
            sink.as_mut().finish().await.map(drop)
        }
    }
}

async fn run_case(run: Run, conn_str: String, addr: SocketAddr) -> Outcome {
    match run {
        Run::Steps { options, steps } => {
            let cs = match &options {
                Some(o) => format!(
                    "{conn_str} options='{}'",
                    o.replace('\\', "\\\\").replace('\'', "\\'")
                ),
                None => conn_str,
            };
            let client = match connect(&cs).await {
                Ok(c) => c,
                Err(e) => return refusal(&e),
            };
            for s in &steps {
                if let Err(e) = step(&client, s).await {
                    return refusal(&e);
                }
            }
            Outcome::Accepted
        }
        Run::Join(steps) => {
            let client = match connect(&conn_str).await {
                Ok(c) => c,
                Err(e) => return refusal(&e),
            };
            let results =
                futures_util::future::join_all(steps.iter().map(|s| step(&client, s))).await;
            for r in results {
                if let Err(e) = r {
                    return refusal(&e);
                }
            }
            Outcome::Accepted
        }
        Run::Raw { startup, msgs } => run_raw(addr, startup, msgs).await,
    }
}

fn cbytes(b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    v.push(0);
    v
}

/// Bind body: unnamed portal and statement, text parameters given as bytes, text results.
fn bind_bytes(params: &[Vec<u8>]) -> Vec<u8> {
    let mut b = vec![0u8, 0u8];
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p);
    }
    b.extend_from_slice(&0u16.to_be_bytes());
    b
}

/// State of a raw session: what is queued, how many ReadyForQuery are owed, errors seen.
struct RawRun {
    r: Raw,
    out: BytesMut,
    pending: usize,
    errors: Vec<(String, String)>,
    closed: bool,
}

impl RawRun {
    async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt as _;
        if self.closed || bytes.is_empty() {
            return;
        }
        if self.r.sock.write_all(bytes).await.is_err() {
            self.closed = true;
            self.errors.push(("closed".into(), "write failed".into()));
        }
    }

    /// Sends what is queued and reads until every owed ReadyForQuery arrived.
    async fn drain(&mut self) {
        let out = std::mem::take(&mut self.out);
        self.send(&out).await;
        while self.pending > 0 && !self.closed {
            match self.r.next().await {
                None => {
                    self.closed = true;
                    self.errors
                        .push(("closed".into(), "connection closed".into()));
                }
                Some(m) => match m.tag {
                    b'E' => self.errors.push((
                        m.field(b'C').unwrap_or_default(),
                        m.field(b'M').unwrap_or_default(),
                    )),
                    b'Z' => self.pending -= 1,
                    b'G' => {
                        let mut f = BytesMut::new();
                        raw::msg(&mut f, b'f', b"unexpected COPY\0");
                        self.send(&f).await;
                    }
                    _ => {}
                },
            }
        }
    }

    async fn copy(&mut self, sql: &[u8], data: &[u8]) {
        self.drain().await;
        let mut q = BytesMut::new();
        raw::msg(&mut q, b'Q', &cbytes(sql));
        self.send(&q).await;
        while !self.closed {
            match self.r.next().await {
                None => {
                    self.closed = true;
                    self.errors
                        .push(("closed".into(), "connection closed".into()));
                }
                Some(m) => match m.tag {
                    b'G' => {
                        let mut d = BytesMut::new();
                        raw::msg(&mut d, b'd', data);
                        raw::msg(&mut d, b'c', &[]);
                        self.send(&d).await;
                    }
                    b'E' => self.errors.push((
                        m.field(b'C').unwrap_or_default(),
                        m.field(b'M').unwrap_or_default(),
                    )),
                    b'Z' => return,
                    _ => {}
                },
            }
        }
    }
}

async fn run_raw(addr: SocketAddr, startup: Vec<(String, String)>, msgs: Vec<RawMsg>) -> Outcome {
    let extra: Vec<(&str, &str)> = startup
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = match Raw::try_login_with(addr, APP_USER, APP_PASSWORD, ENC_DB, &extra).await {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Refused {
                code: "login".into(),
                msg: e,
            }
        }
    };
    let mut s = RawRun {
        r,
        out: BytesMut::new(),
        pending: 0,
        errors: Vec::new(),
        closed: false,
    };
    for m in &msgs {
        if s.closed {
            break;
        }
        match m {
            RawMsg::Q(sql) => {
                raw::msg(&mut s.out, b'Q', &cbytes(sql));
                s.pending += 1;
            }
            RawMsg::Pbe(sql, types, params) => {
                raw::msg(&mut s.out, b'P', &raw::parse_bytes("", sql, types));
                raw::msg(&mut s.out, b'B', &bind_bytes(params));
                raw::msg(&mut s.out, b'E', &raw::execute("", 0));
            }
            RawMsg::Sync => {
                s.out.put_u8(b'S');
                s.out.put_u32(4);
                s.pending += 1;
            }
            RawMsg::Wait => s.drain().await,
            RawMsg::Copy(sql, data) => s.copy(sql, data).await,
        }
    }
    s.drain().await;
    match s.errors.into_iter().next() {
        None => Outcome::Accepted,
        Some((code, msg)) => Outcome::Refused { code, msg },
    }
}

// ---------------------------------------------------------------------------------------------
// Checks after a case and after all of them
// ---------------------------------------------------------------------------------------------

/// Checks one [`Verify`] of an accepted case; problems found.
async fn verify(direct: &tokio_postgres::Client, conn_str: &str, v: &Verify) -> Vec<String> {
    let mut problems = Vec::new();
    let sql = format!("SELECT {} FROM {} WHERE id = {}", v.col, v.rel, v.id);
    match direct.query_opt(sql.as_str(), &[]).await {
        Err(e) => problems.push(format!(
            "accepted, but {}.{} of row {} cannot be read directly: {}",
            v.rel,
            v.col,
            v.id,
            clip(&pg_err(&e), 120)
        )),
        Ok(None) => problems.push(format!(
            "accepted, but there is no row {} in {}",
            v.id, v.rel
        )),
        Ok(Some(row)) => match row.try_get::<_, Option<RawOut>>(0) {
            Ok(Some(RawOut(cell))) => {
                if let Err(e) = check_cell(&cell, v.indexed) {
                    problems.push(format!(
                        "stored {}.{} of row {} is not a pgseal cell ({e}): {:?}",
                        v.rel,
                        v.col,
                        v.id,
                        clip(&String::from_utf8_lossy(&cell), 60)
                    ));
                }
            }
            Ok(None) => problems.push(format!(
                "accepted, but {}.{} of row {} is NULL",
                v.rel, v.col, v.id
            )),
            Err(e) => problems.push(format!("reading {}.{}: {}", v.rel, v.col, pg_err(&e))),
        },
    }
    let back = async {
        let c = connect(conn_str).await.map_err(|e| pg_err(&e))?;
        let msgs = c.simple_query(&sql).await.map_err(|e| pg_err(&e))?;
        for m in msgs {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                return Ok(r.get(0).map(str::to_string));
            }
        }
        Ok::<Option<String>, String>(None)
    }
    .await;
    match back {
        Ok(Some(got)) if got == v.expected => {}
        Ok(got) => problems.push(format!(
            "{}.{} of row {} reads back through the proxy as {:?}, expected {:?}",
            v.rel,
            v.col,
            v.id,
            got.map(|g| clip(&g, 60)),
            clip(&v.expected, 60)
        )),
        Err(e) => problems.push(format!(
            "{}.{} of row {} cannot be read back through the proxy: {}",
            v.rel,
            v.col,
            v.id,
            clip(&e, 120)
        )),
    }
    problems
}

/// Where markers of a case were found: location → snippet.
type Found = BTreeMap<String, String>;

struct CaseResult {
    outcome: Outcome,
    /// The error came from PostgreSQL: the proxy forwarded the statement.
    by_server: bool,
    /// Fail-open, wrong SQLSTATE, bad cells, wrong values, harness trouble.
    problems: Vec<String>,
    /// Markers found upstream (server log, dump, data directory).
    upstream: Found,
    /// Markers found in the proxy log.
    proxy_log: Found,
    /// The DDL the marker's protection depended on did not take effect.
    effect_absent: bool,
    /// Upstream hits not held against the proxy (see [`Case::only_if`]).
    ignored: Found,
}

impl CaseResult {
    fn failed(&self) -> bool {
        !self.problems.is_empty() || !self.upstream.is_empty() || !self.proxy_log.is_empty()
    }
}

async fn direct_exec(direct: &tokio_postgres::Client, sql: &str) -> Result<(), String> {
    direct
        .batch_execute(sql)
        .await
        .map_err(|e| format!("direct SQL {:?} failed: {}", clip(sql, 80), pg_err(&e)))
}

/// Whether the server logged `ERROR:  {msg}` after byte `from` of its log: the error came from
/// PostgreSQL (the proxy forwarded the statement), not from the proxy.
fn server_logged_error(log: &Path, from: u64, msg: &str) -> bool {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let Ok(mut f) = std::fs::File::open(log) else {
        return false;
    };
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_err() || f.read_to_end(&mut buf).is_err() {
        return false;
    }
    String::from_utf8_lossy(&buf).contains(&format!("ERROR:  {msg}"))
}

async fn run_one(
    case: &Case,
    direct: &tokio_postgres::Client,
    conn_str: &str,
    addr: SocketAddr,
    server_log: &Path,
) -> CaseResult {
    let mut problems = Vec::new();
    let log_from = std::fs::metadata(server_log).map(|m| m.len()).unwrap_or(0);
    for s in &case.now {
        if let Err(e) = direct_exec(direct, s).await {
            problems.push(format!("harness: {e}"));
        }
    }
    if case.settle {
        tokio::time::sleep(CATALOG_SETTLE).await;
    }
    let run = case.run.clone().expect("every case has a run");
    let task = tokio::spawn(run_case(run, conn_str.to_string(), addr));
    let outcome = match tokio::time::timeout(CASE_TIMEOUT, task).await {
        Err(_) => Outcome::Harness(format!("no answer within {CASE_TIMEOUT:?}")),
        Ok(Err(e)) => Outcome::Harness(format!("case task failed: {e}")),
        Ok(Ok(o)) => o,
    };
    let effect_absent = match &case.only_if {
        None => false,
        Some(q) => match direct.query_one(q.as_str(), &[]).await {
            Ok(row) => !row.get::<_, bool>(0),
            Err(e) => {
                problems.push(format!("harness: effect check failed: {}", pg_err(&e)));
                false
            }
        },
    };
    let by_server = matches!(&outcome, Outcome::Refused { msg, .. }
        if server_logged_error(server_log, log_from, msg));
    match (&case.expect, &outcome) {
        (_, Outcome::Harness(m)) => problems.push(format!("harness: {m}")),
        (Expect::Refused(_), Outcome::Refused { code, msg }) if by_server => {
            problems.push(format!(
                "FAIL-OPEN: forwarded; PostgreSQL, not the proxy, refused it ({code}: {})",
                clip(msg, 80)
            ))
        }
        (Expect::Refused(_), Outcome::Accepted) => {
            problems.push("FAIL-OPEN: accepted, must be refused".into())
        }
        (Expect::Refused(codes), Outcome::Refused { code, msg })
            if !codes.is_empty() && !codes.contains(&code.as_str()) =>
        {
            problems.push(format!(
                "refused with {code} ({}), expected one of {codes:?}",
                clip(msg, 80)
            ))
        }
        (Expect::Either, Outcome::Accepted) => {
            for v in &case.verify {
                problems.extend(verify(direct, conn_str, v).await);
            }
        }
        _ => {}
    }
    for s in &case.teardown {
        if let Err(e) = direct_exec(direct, s).await {
            problems.push(format!("harness: {e}"));
        }
    }
    CaseResult {
        outcome,
        by_server,
        problems,
        upstream: Found::new(),
        proxy_log: Found::new(),
        effect_absent,
        ignored: Found::new(),
    }
}

/// Every stored cell of every protected column that still exists must parse; problems per case.
async fn check_all_cells(
    direct: &tokio_postgres::Client,
    cases: &[Case],
    accepted: &BTreeSet<usize>,
) -> BTreeMap<usize, Vec<String>> {
    let mut out: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for c in cases {
        for (table, col, indexed, _) in protected_of(c) {
            let exists = direct
                .query_one(
                    // Only a bytea column can hold stored cells: after a swap done upstream
                    // the protected name may be a plain text column (drift, refused).
                    "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) \
                     AND attname = $2 AND NOT attisdropped \
                     AND atttypid = 'pg_catalog.bytea'::pg_catalog.regtype)",
                    &[&table, &col],
                )
                .await
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false);
            if !exists {
                continue;
            }
            let rows = match direct
                .query(
                    format!("SELECT id, {col} FROM {table} WHERE {col} IS NOT NULL").as_str(),
                    &[],
                )
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    out.entry(c.n).or_default().push(format!(
                        "cannot read {table}.{col} directly: {}",
                        pg_err(&e)
                    ));
                    continue;
                }
            };
            for row in rows {
                let id: Option<i32> = row.try_get(0).ok();
                let Ok(RawOut(cell)) = row.try_get::<_, RawOut>(1) else {
                    continue;
                };
                let bare = table.rsplit('.').next().unwrap_or(&table);
                // Already reported by the case's own check.
                let verified = accepted.contains(&c.n)
                    && c.verify
                        .iter()
                        .any(|v| v.rel == bare && v.col == col && Some(v.id) == id);
                if verified {
                    continue;
                }
                if let Err(e) = check_cell(&cell, indexed) {
                    out.entry(c.n).or_default().push(format!(
                        "stored cell {table}.{col} (id {id:?}) is not a pgseal cell ({e}): {:?}",
                        clip(&String::from_utf8_lossy(&cell), 60)
                    ));
                }
            }
        }
    }
    out
}

/// The target directory (`target/`, or `CARGO_TARGET_DIR`) the test binary runs from.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn location_of(hit: &markers::Hit, server_log: &Path, dump: &Path, data: &Path) -> String {
    let enc = if hit.hex { " (hex)" } else { "" };
    if hit.file == server_log {
        format!("server log{enc}")
    } else if hit.file == dump {
        format!("pg_dump{enc}")
    } else if let Ok(rel) = hit.file.strip_prefix(data) {
        format!("data dir {}{enc}", rel.display())
    } else {
        format!("proxy log{enc}")
    }
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// The marker search finds literal and hex markers in any letter case, and nothing else.
#[test]
fn markers_are_decoded_literal_and_hex() {
    let m = markers::marker(42);
    assert_eq!(m, "qzadv0042m");
    let hex: String = m.bytes().map(|b| format!("{b:02x}")).collect();
    let text = format!("x {m} y \\x{} z QZADV0007M", hex.to_uppercase());
    assert_eq!(
        markers::decode_all(text.as_bytes()),
        vec![(42, false), (42, true), (7, false)]
    );
    assert!(markers::decode_all(b"qzadv004m qzadv00x1m qzadv0042").is_empty());
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f.bin");
    std::fs::write(
        &f,
        [b"\0\xff".as_slice(), text.as_bytes(), b"\n\0"].concat(),
    )
    .unwrap();
    let hits = markers::scan_dir(dir.path());
    let found: Vec<(usize, bool)> = hits.iter().map(|h| (h.n, h.hex)).collect();
    assert_eq!(found, vec![(42, false), (42, true), (7, false)]);
    assert!(hits.iter().all(|h| h.file == f));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_sql_leaks_no_marker_and_never_fails_open() {
    let started = Instant::now();
    let cases = all_cases();
    assert!(cases.len() >= 170, "only {} cases", cases.len());
    let env = EncEnv::start_with_log(&column_specs(&cases), 300, "trace");
    let started_env = started.elapsed();
    let direct = support::connect(&format!(
        "host={} port={} user={} dbname={ENC_DB}",
        env.pg.socket_dir().display(),
        env.pg.port,
        support::pg::SUPERUSER
    ))
    .await;
    let conn_str = env.conn_str();
    let addr: SocketAddr = ([127, 0, 0, 1], env.proxy.port).into();

    // Protected tables through the proxy (their columns become bytea), seed rows, then the
    // direct setups; the proxy's periodic catalog load then sees them all.
    let app = env.client().await;
    let mut ddl = Vec::new();
    let mut seed = Vec::new();
    for c in &cases {
        let (d, s) = tables_of(c);
        ddl.extend(d);
        seed.extend(s);
    }
    for chunk in ddl.chunks(20).chain(seed.chunks(20)) {
        if let Err(e) = app.batch_execute(&chunk.join(";\n")).await {
            panic!("creating the protected tables through the proxy failed: {e:?}");
        }
    }
    let mut results: BTreeMap<usize, CaseResult> = BTreeMap::new();
    let mut setup_problems: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for c in &cases {
        for s in &c.setup {
            if let Err(e) = direct_exec(&direct, s).await {
                setup_problems
                    .entry(c.n)
                    .or_default()
                    .push(format!("harness: {e}"));
            }
        }
    }
    tokio::time::sleep(CATALOG_SETTLE).await;
    let started_cases = Instant::now();

    let mut order: Vec<&Case> = cases.iter().filter(|c| !c.exclusive).collect();
    order.extend(cases.iter().filter(|c| c.exclusive && !c.last));
    order.extend(cases.iter().filter(|c| c.last));
    for c in order {
        let mut r = run_one(c, &direct, &conn_str, addr, &env.pg.log_path()).await;
        if let Some(p) = setup_problems.remove(&c.n) {
            r.problems.extend(p);
        }
        results.insert(c.n, r);
    }
    let cases_time = started_cases.elapsed();

    let accepted: BTreeSet<usize> = results
        .iter()
        .filter(|(_, r)| matches!(r.outcome, Outcome::Accepted))
        .map(|(n, _)| *n)
        .collect();
    for (n, p) in check_all_cells(&direct, &cases, &accepted).await {
        if let Some(r) = results.get_mut(&n) {
            r.problems.extend(p);
        }
    }

    // CHECKPOINT, dump, then search every marker everywhere.
    direct.batch_execute("CHECKPOINT").await.unwrap();
    let scan_dir = tempfile::tempdir().unwrap();
    let dump = scan_dir.path().join("app.sql");
    let out = std::process::Command::new(support::pg::bindir().join("pg_dump"))
        .arg("-h")
        .arg(env.pg.socket_dir())
        .args(["-p", &env.pg.port.to_string(), "-U", support::pg::SUPERUSER])
        .args(["-d", ENC_DB, "-f"])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server_log = env.pg.log_path();
    let data = env.pg.data_path();
    let mut files = vec![server_log.clone(), dump.clone()];
    files.extend(env.proxy.log_paths());
    let mut hits = markers::scan_files(&files);
    hits.extend(markers::scan_dir(&data));
    let mut stray = BTreeSet::new();
    for h in &hits {
        let loc = location_of(h, &server_log, &dump, &data);
        let Some(r) = results.get_mut(&h.n) else {
            stray.insert(h.n);
            continue;
        };
        let map = if loc.starts_with("proxy log") {
            &mut r.proxy_log
        } else if r.effect_absent {
            &mut r.ignored
        } else {
            &mut r.upstream
        };
        map.entry(loc).or_insert_with(|| clip(&h.snippet, 160));
    }
    let total = started.elapsed();

    // Report.
    let mut report = String::new();
    let by_n: BTreeMap<usize, &Case> = cases.iter().map(|c| (c.n, c)).collect();
    let _ = writeln!(
        report,
        "pgseal adversarial SQL suite: {} cases; environment {:.1}s, cases {:.1}s, total {:.1}s",
        cases.len(),
        started_env.as_secs_f64(),
        cases_time.as_secs_f64(),
        total.as_secs_f64()
    );
    let _ = writeln!(
        report,
        "columns: class | cases | failed | marker upstream | fail-open | other problems | marker in proxy log\n"
    );
    let mut classes: BTreeMap<Class, [usize; 6]> = BTreeMap::new();
    for (n, r) in &results {
        let e = classes.entry(by_n[n].class).or_default();
        e[0] += 1;
        e[1] += usize::from(r.failed());
        e[2] += usize::from(!r.upstream.is_empty());
        e[3] += usize::from(r.problems.iter().any(|p| p.starts_with("FAIL-OPEN")));
        e[4] += usize::from(r.problems.iter().any(|p| !p.starts_with("FAIL-OPEN")));
        e[5] += usize::from(!r.proxy_log.is_empty());
    }
    for (class, e) in &classes {
        let _ = writeln!(
            report,
            "{:<40} {:>4} {:>4} {:>4} {:>4} {:>4} {:>4}",
            class.label(),
            e[0],
            e[1],
            e[2],
            e[3],
            e[4],
            e[5]
        );
    }
    let _ = writeln!(report);
    let mut failures = String::new();
    for (n, r) in &results {
        let c = by_n[n];
        let verdict = if r.failed() { "FAIL" } else { "ok  " };
        let mut line = format!(
            "{verdict} {n:04} [{}] {} — {}{}",
            c.class.label(),
            c.what,
            r.outcome.describe(),
            if r.by_server { " (by PostgreSQL)" } else { "" }
        );
        for p in &r.problems {
            let _ = write!(line, "\n       problem: {p}");
        }
        for (loc, snip) in &r.upstream {
            let _ = write!(line, "\n       marker upstream in {loc}: {snip}");
        }
        for (loc, snip) in &r.proxy_log {
            let _ = write!(line, "\n       marker in {loc}: {snip}");
        }
        for loc in r.ignored.keys() {
            let _ = write!(
                line,
                "\n       (not counted: marker in {loc}, the DDL it depended on did not take effect)"
            );
        }
        let _ = writeln!(report, "{line}");
        if r.failed() {
            let _ = writeln!(failures, "{line}");
        }
    }
    for n in &stray {
        let _ = writeln!(failures, "marker {n} of no case was found");
    }
    let path = target_dir().join("adversarial-report.txt");
    std::fs::write(&path, &report).unwrap();
    eprintln!("adversarial report: {}", path.display());
    let failed = results.iter().filter(|(_, r)| r.failed()).count();
    assert!(
        failures.is_empty(),
        "{failed} of {} adversarial cases failed (report: {}):\n{failures}",
        cases.len(),
        path.display()
    );
}
