//! The gate against the rewriter, over a generated corpus of statements on protected tables:
//! table and column names spelled every way PostgreSQL accepts, values in every literal form,
//! statements wrapped and prefixed by what changes their meaning (other statements, barriers,
//! settings), under the lexer settings a session can be in.
//!
//! - **Differential**: the rewriter's own view (sqlparser, without the gate's expectation) is
//!   compared with libpg_query's for every statement; where they disagree about a protected
//!   relation, the combined path must refuse. The test fails if no disagreement is found (the
//!   check could then not be shown to fire) and prints how many there were.
//! - **Invariant**: whatever the outcome, no marker literal is forwarded where the server would
//!   read it in a statement on a protected relation: a refusal forwards nothing, a rewrite's
//!   SQL text must not contain the marker (values become sealed slots), and a pass-through is
//!   checked against the server's reading (libpg_query under the session's real settings).

use std::sync::Arc;

use pgseal_crypto::value::{LogicalType, Normalisation};
use pgseal_crypto::{ColumnId, IndexGroup};

use super::{GateInput, Shared};
use crate::catalog::{CatalogSnapshot, StaticCatalog};
use crate::keys::StaticKeys;
use crate::rewrite::plan::Piece;
use crate::rewrite::{rewrite, IndexSpec, Plan, ProtectedColumn, ProtectedSchema};
use crate::sql::gate::{Names, Trust};
use crate::sql::lexer::{Known, LexerState};

const MARKER: &str = "leakme";

fn col(column: &str, indexed: bool) -> ProtectedColumn {
    let id = ColumnId::new("public", "patients", column).unwrap();
    ProtectedColumn {
        index: indexed.then(|| IndexSpec {
            group: IndexGroup::of_column(&id),
            norm: Normalisation::default(),
            unique: true,
        }),
        id,
        ty: LogicalType::Text,
        keyring: "patients".into(),
    }
}

fn setup() -> (Arc<Shared>, Arc<ProtectedSchema>, Arc<CatalogSnapshot>) {
    let schema = Arc::new(ProtectedSchema::from_columns([
        col("email", true),
        col("notes", false),
    ]));
    let snapshot = Arc::new(CatalogSnapshot::new(
        1,
        [
            ("public".to_owned(), "patients".to_owned()),
            ("public".to_owned(), "plain".to_owned()),
            ("other".to_owned(), "plain".to_owned()),
        ],
        [(
            16400,
            "public".to_owned(),
            "patients".to_owned(),
            vec![
                (1, "id".to_owned()),
                (2, "email".to_owned()),
                (3, "notes".to_owned()),
            ],
        )],
        &schema,
    ));
    let keys = Arc::new(StaticKeys::new(&schema, &Default::default()).unwrap());
    let factory = super::EncryptionFactory::new(
        schema.clone(),
        "app".into(),
        keys,
        Arc::new(StaticCatalog(snapshot.clone())),
    );
    (factory.shared, schema, snapshot)
}

const TABLES: &[&str] = &[
    "patients",
    "public.patients",
    "PATIENTS",
    "\"patients\"",
    "\"public\".\"patients\"",
    "public . patients",
    "/* x */ patients",
    "U&\"p\\0061tients\"",
    "U&\"p!0061tients\" UESCAPE '!'",
    "u&\"PUBLIC\".patients",
];

const COLUMNS: &[&str] = &["email", "EMAIL", "\"email\"", "U&\"em\\0061il\"", "notes"];

const VALUES: &[&str] = &[
    "'leakme1'",
    "E'leakme\\x32'",
    "$$leakme3$$",
    "$q$leakme4$q$",
    "U&'leakme\\0035'",
    "('leakme6')",
    "'leak' 'me7'",
    "'leakme8'::text",
];

const TEMPLATES: &[&str] = &[
    "INSERT INTO {T} ({C}) VALUES ({V})",
    "INSERT INTO {T} (id, {C}) VALUES (1, {V}) ON CONFLICT DO NOTHING",
    "UPDATE {T} SET {C} = {V} WHERE id = 1",
    "SELECT id FROM {T} WHERE {C} = {V}",
    "DELETE FROM {T} WHERE {C} = {V}",
    "WITH w AS (SELECT 1) INSERT INTO {T} ({C}) VALUES ({V})",
    "EXPLAIN ANALYZE INSERT INTO {T} ({C}) VALUES ({V})",
    "PREPARE q AS INSERT INTO {T} ({C}) VALUES ({V})",
    "UPDATE {T} SET {C}.x = {V}",
    "INSERT INTO {T} ({C}[1]) VALUES ({V})",
    "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $fn$ INSERT INTO {T} ({C}) VALUES ({V}) $fn$",
    "DO $do$ BEGIN INSERT INTO {T} ({C}) VALUES ({V}); END $do$",
    "MERGE INTO {T} t USING (SELECT 1 AS id) s ON t.id = s.id WHEN NOT MATCHED THEN INSERT ({C}) VALUES ({V})",
    "SELECT id FROM {T} WHERE {C} IN ({V}, 'x')",
];

const PREFIXES: &[&str] = &[
    "",
    "SELECT 1; ",
    "CREATE TABLE k () INHERITS (patients); ",
    "SET search_path = other, public; ",
    "BEGIN; ",
    "/* ; */ ",
    "SELECT 'a\\'; ",
    "SET standard_conforming_strings = off; ",
    "ALTER TABLE patients RENAME TO p2; ",
    "SELECT 'x'; -- \n",
];

fn lexers() -> [LexerState; 3] {
    [
        LexerState::SERVER_DEFAULT,
        LexerState {
            standard_conforming_strings: Known::Off,
            ..LexerState::SERVER_DEFAULT
        },
        LexerState::SERVER_DEFAULT.unsettled(),
    ]
}

/// The corpus: every template with every table and column spelling, each value and prefix
/// in turn (a Latin-square walk rather than the full product, which would be 100 000 texts).
fn corpus() -> Vec<String> {
    let mut out = Vec::new();
    let mut k = 0usize;
    for t in TEMPLATES {
        for (ti, table) in TABLES.iter().enumerate() {
            for (ci, column) in COLUMNS.iter().enumerate() {
                for round in 0..2 {
                    k += 1;
                    let v = VALUES[(ti + ci + k) % VALUES.len()];
                    let p = PREFIXES[(ti * 3 + ci + round * 5 + k) % PREFIXES.len()];
                    out.push(format!(
                        "{p}{}",
                        t.replace("{T}", table)
                            .replace("{C}", column)
                            .replace("{V}", v)
                    ));
                }
            }
        }
    }
    out
}

/// Whether the server, reading `sql` under `lexer`, would find the marker in a statement that
/// names a protected relation (or could not parse it at all while the text holds the marker:
/// the server logs the text of a statement it rejects).
fn server_sees_marker_on_protected(sql: &str, lexer: &LexerState, names: &Names) -> bool {
    for opts in lexer.parser_options() {
        let Ok(parsed) = pg_query::parse(sql, opts) else {
            if sql.to_lowercase().contains(MARKER) && names.relation_in_text(sql).is_some() {
                return true;
            }
            continue;
        };
        for raw in &parsed.protobuf.stmts {
            let json = serde_json::to_string(raw)
                .unwrap_or_default()
                .to_lowercase();
            let protected = names
                .relations()
                .any(|r| json.contains(&format!("\"{r}\"")));
            if protected && json.contains(MARKER) {
                return true;
            }
        }
    }
    false
}

/// Whether PostgreSQL's grammar (standard strings) reads a `RangeVar` of a protected relation
/// in `sql`.
fn server_names_protected(sql: &str, names: &Names) -> bool {
    let Ok(parsed) = pg_query::parse(sql, 0) else {
        return false;
    };
    let json = serde_json::to_string(&parsed.protobuf)
        .unwrap_or_default()
        .to_lowercase();
    names
        .relations()
        .any(|r| json.contains(&format!("\"relname\":\"{r}\"")))
}

#[test]
fn the_gate_and_the_rewriter_agree_or_the_statement_is_refused() {
    let (shared, schema, snapshot) = setup();
    let names = Names::of(&schema);
    let path = vec!["public".to_owned()];
    let corpus = corpus();
    let mut differential = 0usize;
    let mut refused = 0usize;
    let mut leaks = Vec::new();
    for sql in &corpus {
        for lexer in lexers() {
            let input = GateInput {
                lexer,
                trust: Trust::Untrusted,
            };
            let outcome = shared.plan(sql, &path, &input);
            // The rewriter alone, as before the gate (standard strings only: it has no other
            // mode).
            if lexer == LexerState::SERVER_DEFAULT {
                let alone = rewrite(sql, &schema, &*snapshot, &path);
                let gate_sees = server_names_protected(sql, &names);
                if gate_sees && matches!(alone, Ok(Plan::PassThrough)) {
                    differential += 1;
                    assert!(
                        outcome.result.is_err(),
                        "read differently but forwarded: {sql}"
                    );
                }
            }
            match &outcome.result {
                Err(_) => refused += 1,
                Ok(Plan::PassThrough) => {
                    if server_sees_marker_on_protected(sql, &lexer, &names) {
                        leaks.push(format!("pass-through under {lexer:?}: {sql}"));
                    }
                }
                Ok(Plan::Rewrite(plan)) => {
                    for piece in &plan.template {
                        if let Piece::Sql(text) = piece {
                            if text.to_lowercase().contains(MARKER) {
                                leaks.push(format!("rewritten under {lexer:?}: {sql}"));
                            }
                        }
                    }
                }
            }
        }
    }
    println!(
        "gate corpus: {} texts x 3 lexer states, {refused} refused, {differential} read \
         differently by the rewriter alone (all refused)",
        corpus.len()
    );
    assert!(
        leaks.is_empty(),
        "{} leaks:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
    assert!(
        differential > 0,
        "the corpus should contain statements the rewriter alone reads differently"
    );
}

#[test]
fn statements_on_plain_tables_pass_without_analysis_and_unchanged() {
    let (shared, _, _) = setup();
    let path = vec!["public".to_owned()];
    for sql in [
        "SELECT * FROM plain WHERE note = 'x'",
        "INSERT INTO plain (note) VALUES ('x')",
        "UPDATE plain SET note = 'y' WHERE id = 3",
        "BEGIN",
        "COMMIT",
    ] {
        let o = shared.plan(sql, &path, &GateInput::default());
        assert!(matches!(o.result, Ok(Plan::PassThrough)), "{sql}");
        assert!(
            o.facts.is_none(),
            "{sql}: parsed although it could skip the gate"
        );
    }
    // The same text with a lexer setting off the default goes through the gate.
    let off = GateInput {
        lexer: LexerState {
            standard_conforming_strings: Known::Off,
            ..LexerState::SERVER_DEFAULT
        },
        trust: Trust::Untrusted,
    };
    let o = shared.plan("SELECT * FROM plain WHERE note = 'x'", &path, &off);
    assert!(o.facts.is_some());
}

#[test]
fn facts_by_shape_equal_a_full_analysis() {
    let (_, schema, _) = setup();
    let names = Names::of(&schema);
    let cache = crate::sql::gate::ShapeCache::default();
    let lexer = LexerState::SERVER_DEFAULT;
    let mut hits = 0usize;
    for sql in corpus() {
        // Warm the cache with the same shape and other constants.
        let variant = sql.replace(MARKER, "othervalue").replace("1,", "2,");
        let _ =
            crate::sql::gate::analyse_cached(&variant, &lexer, &names, Trust::Untrusted, &cache, 1);
        let full = crate::sql::gate::analyse(&sql, &lexer, &names, Trust::Untrusted);
        let cached =
            crate::sql::gate::analyse_cached(&sql, &lexer, &names, Trust::Untrusted, &cache, 1);
        match (&full, &cached) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, &**b, "{sql}");
                hits += 1;
            }
            (Err(_), Err(_)) => {}
            _ => panic!("full {full:?} vs cached {cached:?} for {sql}"),
        }
    }
    assert!(hits > 50, "{hits}");
}

/// An unqualified name of a protected table is refused when a relation of the same name
/// exists in another schema: a function can change the session's search_path unseen, and the
/// server would then store the row (sealed, but for the wrong table) in the other one.
#[test]
fn unqualified_protected_names_with_a_namesake_elsewhere_are_refused() {
    let schema = ProtectedSchema::from_columns([col("email", true)]);
    let snapshot = CatalogSnapshot::new(
        1,
        [
            ("public".to_owned(), "patients".to_owned()),
            ("shadow".to_owned(), "patients".to_owned()),
        ],
        [(
            16400,
            "public".to_owned(),
            "patients".to_owned(),
            vec![(1, "id".to_owned()), (2, "email".to_owned())],
        )],
        &schema,
    );
    let path = vec!["public".to_owned()];
    let r = rewrite(
        "INSERT INTO patients (email) VALUES ('x')",
        &schema,
        &snapshot,
        &path,
    );
    let e = r.unwrap_err();
    assert!(e.message.contains("shadow.patients"), "{}", e.message);
    assert!(matches!(
        rewrite(
            "INSERT INTO public.patients (email) VALUES ('x')",
            &schema,
            &snapshot,
            &path
        ),
        Ok(Plan::Rewrite(_))
    ));
}
