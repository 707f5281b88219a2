//! Checks the configured columns against the upstream catalog (`pgseal-proxy check`) and
//! writes the DDL still needed (`pgseal-proxy schema`).
//!
//! Per column: the table exists (and is a table), the column exists, its type is `bytea`; with
//! `index = true` an index on `substring(col from 1 for 16)` exists (a missing one is a
//! warning: lookups work but scan the table); with `unique = true` a UNIQUE such index exists
//! (a missing one is an error: `ON CONFLICT (col)` fails and uniqueness is not enforced); the
//! stored-cell CHECK constraint ([`CellCheck`]) exists (a missing or not yet validated one is a
//! warning: the proxy works without it, the database just does not refuse non-cells; one named
//! `pgseal_cell_<column>` with another definition is an error: it may refuse the proxy's own
//! writes, e.g. after `index` was changed, or accept what it should not).

use std::collections::HashMap;

use pgseal_crypto::ColumnId;

use super::load::{field, protected_tables_filter};
use super::CatalogError;
use crate::rewrite::schema::cell_check::CellCheck;
use crate::rewrite::{schema_ddl, ProtectedColumn, ProtectedSchema};
use crate::upstream::simple_query::SimpleClient;

/// What the catalog says about one configured column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnState {
    /// The configured column.
    pub id: ColumnId,
    /// The relation's kind (`r`, `p`, `v`, ...), None when no such relation exists.
    pub relkind: Option<String>,
    /// The column's type as `format_type` prints it, None when no such column exists.
    pub column_type: Option<String>,
    /// An index on the blind-index prefix exists.
    pub indexed: bool,
    /// A UNIQUE index on the blind-index prefix exists.
    pub unique_indexed: bool,
    /// The stored-cell CHECK constraint.
    pub cell_check: CellCheckState,
}

/// What the catalog says about a column's stored-cell CHECK constraint ([`CellCheck`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CellCheckState {
    /// No CHECK constraint on the column has the configured definition, and none has its name.
    #[default]
    Missing,
    /// A CHECK constraint on the column has the configured definition (under any name);
    /// `validated` is false while it is `NOT VALID` (rows stored before it are unchecked).
    Present {
        /// Its name.
        name: String,
        /// `pg_constraint.convalidated`.
        validated: bool,
    },
    /// The constraint named like pgseal names it has another definition.
    Differs,
}

impl CellCheckState {
    /// The state given the CHECK constraints on the column's table: `(name, the single column
    /// it is on, or "" when it is on several, validated, pg_get_constraintdef)`.
    fn of(check: &CellCheck, column: &str, constraints: &[(&str, &str, bool, &str)]) -> Self {
        if constraints.iter().any(|(name, on, _, def)| {
            *name == check.name() && !(*on == column && check.matches_either(def))
        }) {
            return CellCheckState::Differs;
        }
        let mut found = None;
        for (name, _, validated, _) in constraints
            .iter()
            .filter(|(_, on, _, def)| *on == column && check.matches_either(def))
        {
            if found.is_none() || *validated {
                found = Some(CellCheckState::Present {
                    name: (*name).to_owned(),
                    validated: *validated,
                });
            }
        }
        found.unwrap_or_default()
    }
}

impl ColumnState {
    fn is_bytea(&self) -> bool {
        self.column_type.as_deref() == Some("bytea")
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The proxy cannot protect the column correctly: `check` exits with 1.
    Error,
    /// Works, but slowly or not as configured: reported only.
    Warning,
}

/// One problem with one configured column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The column.
    pub column: ColumnId,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong and how to fix it (one line).
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{s}: {}: {}", self.column, self.message)
    }
}

fn inspect_sql(schema: &ProtectedSchema) -> String {
    let filter = protected_tables_filter(schema);
    let from =
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace";
    format!(
        "SELECT n.nspname, c.relname, c.relkind::text {from} WHERE {filter}; \
         SELECT n.nspname, c.relname, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) \
         {from} JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         WHERE {filter}; \
         SELECT n.nspname, c.relname, i.indisunique::text, pg_catalog.pg_get_indexdef(i.indexrelid, 1, true) \
         {from} JOIN pg_catalog.pg_index i ON i.indrelid = c.oid \
         WHERE i.indnkeyatts = 1 AND i.indpred IS NULL AND i.indisvalid AND {filter}; \
         SELECT n.nspname, c.relname, k.conname, \
           coalesce(CASE WHEN pg_catalog.cardinality(k.conkey) = 1 THEN \
             (SELECT a.attname FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum = k.conkey[1]) END, ''), \
           k.convalidated::text, pg_catalog.pg_get_constraintdef(k.oid, true) \
         {from} JOIN pg_catalog.pg_constraint k ON k.conrelid = c.oid AND k.contype = 'c' \
         WHERE {filter}"
    )
}

/// Lower-cased, without quotes, blanks and parentheses: `"substring"(email, 1, 16)` (PostgreSQL
/// 15's deparse) and `SUBSTRING(email FROM 1 FOR 16)` (16's) both compare.
fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '"' | '(' | ')') && !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

fn is_prefix_expr(expr: &str, column: &str) -> bool {
    let e = squash(expr);
    let c = squash(column);
    e == format!("substring{c},1,16") || e == format!("substring{c}from1for16")
}

/// Reads the catalog facts for every configured column.
pub async fn inspect(
    client: &mut SimpleClient,
    schema: &ProtectedSchema,
) -> Result<Vec<ColumnState>, CatalogError> {
    let results = client
        .query(&inspect_sql(schema))
        .await
        .map_err(|e| CatalogError(e.to_string()))?;
    let [rels, attrs, indexes, checks] = results.as_slice() else {
        return Err(CatalogError(
            "unexpected catalog answer: expected four result sets".into(),
        ));
    };
    let mut kinds = HashMap::new();
    for r in rels {
        kinds.insert(
            (field(r, 0)?.to_owned(), field(r, 1)?.to_owned()),
            field(r, 2)?.to_owned(),
        );
    }
    let mut types = HashMap::new();
    for r in attrs {
        types.insert(
            (
                field(r, 0)?.to_owned(),
                field(r, 1)?.to_owned(),
                field(r, 2)?.to_owned(),
            ),
            field(r, 3)?.to_owned(),
        );
    }
    let mut idx: Vec<(String, String, bool, String)> = Vec::new();
    for r in indexes {
        idx.push((
            field(r, 0)?.to_owned(),
            field(r, 1)?.to_owned(),
            field(r, 2)? == "true",
            field(r, 3)?.to_owned(),
        ));
    }
    let mut constraints: Vec<(&str, &str, &str, &str, bool, &str)> = Vec::new();
    for r in checks {
        constraints.push((
            field(r, 0)?,
            field(r, 1)?,
            field(r, 2)?,
            field(r, 3)?,
            field(r, 4)? == "true",
            field(r, 5)?,
        ));
    }
    Ok(schema
        .columns()
        .map(|c| {
            let (s, t, col) = (c.id.schema(), c.id.table(), c.id.column());
            let on_table: Vec<(&str, &str, bool, &str)> = constraints
                .iter()
                .filter(|k| k.0 == s && k.1 == t)
                .map(|k| (k.2, k.3, k.4, k.5))
                .collect();
            let on_col = idx
                .iter()
                .filter(|(is, it, _, e)| is == s && it == t && is_prefix_expr(e, col));
            let mut indexed = false;
            let mut unique_indexed = false;
            for (_, _, unique, _) in on_col {
                indexed = true;
                unique_indexed |= *unique;
            }
            ColumnState {
                id: c.id.clone(),
                relkind: kinds.get(&(s.to_owned(), t.to_owned())).cloned(),
                column_type: types
                    .get(&(s.to_owned(), t.to_owned(), col.to_owned()))
                    .cloned(),
                indexed,
                unique_indexed,
                cell_check: CellCheckState::of(&CellCheck::of(c), col, &on_table),
            }
        })
        .collect())
}

/// The statements of [`schema_ddl`] for one column: the type change, the blind-index index,
/// the CHECK constraint, in that order, filtered by `keep`.
fn ddl_lines(c: &ProtectedColumn, keep: fn(&str) -> bool) -> Vec<String> {
    schema_ddl(&ProtectedSchema::from_columns([c.clone()]))
        .lines()
        .filter(|l| !l.starts_with("--") && keep(l))
        .map(str::to_owned)
        .collect()
}

fn any_statement(_: &str) -> bool {
    true
}

fn index_statement(l: &str) -> bool {
    l.starts_with("CREATE")
}

fn one(id: &ColumnId, severity: Severity, message: String) -> Finding {
    Finding {
        column: id.clone(),
        severity,
        message,
    }
}

/// The problem with the stored-cell CHECK constraint of a bytea column, if any.
fn cell_check_finding(c: &ProtectedColumn, state: &CellCheckState) -> Option<Finding> {
    let check = CellCheck::of(c);
    let add = [check.add_sql(true), check.validate_sql(check.name())];
    match state {
        CellCheckState::Present {
            validated: true, ..
        } => None,
        CellCheckState::Present {
            name,
            validated: false,
        } => Some(one(
            &c.id,
            Severity::Warning,
            format!(
                "CHECK constraint {name:?} on stored cells is NOT VALID (rows stored before it are not checked); fix: {}",
                check.validate_sql(name)
            ),
        )),
        CellCheckState::Missing => Some(one(
            &c.id,
            Severity::Warning,
            format!(
                "no CHECK constraint {:?} on stored cells: a value that is not a pgseal cell (plaintext written past the proxy) would be stored; fix: {}",
                check.name(),
                add.join(" ")
            ),
        )),
        CellCheckState::Differs => Some(one(
            &c.id,
            Severity::Error,
            format!(
                "CHECK constraint {:?} is not the stored-cell check of this column as configured (CHECK ({})): it may refuse the proxy's writes or accept values that are not pgseal cells; fix: {} {}",
                check.name(),
                check.expression(),
                check.drop_sql(check.name()),
                add.join(" ")
            ),
        )),
    }
}

/// The problems with the configured columns, in schema order.
pub fn findings(schema: &ProtectedSchema, states: &[ColumnState]) -> Vec<Finding> {
    let mut out = Vec::new();
    for c in schema.columns() {
        let Some(st) = states.iter().find(|s| s.id == c.id) else {
            continue;
        };
        let table = format!("{}.{}", c.id.schema(), c.id.table());
        let Some(kind) = &st.relkind else {
            out.push(one(
                &c.id,
                Severity::Error,
                format!("table {table} does not exist"),
            ));
            continue;
        };
        if !matches!(kind.as_str(), "r" | "p" | "f") {
            out.push(one(
                &c.id,
                Severity::Error,
                format!("{table} is not a table (relkind {kind}); protect the base table's column"),
            ));
            continue;
        }
        let Some(ty) = &st.column_type else {
            out.push(one(
                &c.id,
                Severity::Error,
                format!("column {:?} does not exist in {table}", c.id.column()),
            ));
            continue;
        };
        if !st.is_bytea() {
            out.push(one(
                &c.id,
                Severity::Error,
                format!(
                    "type is {ty}, must be bytea (it stores ciphertext): its values are still plaintext upstream; encrypt them online with `pgseal-proxy migrate` (set migration = \"encrypt\" in its [[columns]] entry; docs/migration.md), or, discarding them: {} -- or run pgseal-proxy schema",
                    ddl_lines(c, any_statement).join(" ")
                ),
            ));
            continue;
        }
        if let Some(ix) = &c.index {
            if ix.unique && !st.unique_indexed {
                out.push(one(
                    &c.id,
                    Severity::Error,
                    format!(
                        "unique = true but no UNIQUE index on (substring({} from 1 for 16)): ON CONFLICT fails and duplicates are not refused; fix: {}",
                        c.id.column(),
                        ddl_lines(c, index_statement).join(" ")
                    ),
                ));
            } else if !st.indexed {
                out.push(one(
                    &c.id,
                    Severity::Warning,
                    format!(
                        "no index on (substring({} from 1 for 16)): equality lookups scan the table; fix: {}",
                        c.id.column(),
                        ddl_lines(c, index_statement).join(" ")
                    ),
                ));
            }
        }
        out.extend(cell_check_finding(c, &st.cell_check));
    }
    out
}

/// The DDL still needed, given what the catalog says; every column gets a comment saying why
/// it is or is not in the output.
pub fn pending_ddl(schema: &ProtectedSchema, states: &[ColumnState]) -> String {
    let mut out = String::new();
    let mut body = String::new();
    let mut line = |l: &str| {
        body.push_str(l);
        body.push('\n');
    };
    for c in schema.columns() {
        let st = states.iter().find(|s| s.id == c.id);
        let id = &c.id;
        if let Some(kind) = st.and_then(|s| s.relkind.as_deref()) {
            if !matches!(kind, "r" | "p" | "f") {
                line(&format!(
                    "-- {id}: not a table (relkind {kind}); protect the base table's column"
                ));
                continue;
            }
        }
        let Some(st) = st.filter(|s| s.column_type.is_some()) else {
            line(&format!(
                "-- {id}: no such column upstream; create it as bytea (or run this again after creating it)"
            ));
            for l in ddl_lines(c, |l| !l.contains(" ALTER COLUMN ")) {
                line(&format!("-- {l}"));
            }
            continue;
        };
        if !st.is_bytea() {
            line(&format!("-- {id}: not bytea yet"));
            for l in ddl_lines(c, any_statement) {
                line(&l);
            }
            continue;
        }
        let needs_index = match &c.index {
            Some(ix) => (ix.unique && !st.unique_indexed) || !st.indexed,
            None => false,
        };
        if !needs_index
            && matches!(
                st.cell_check,
                CellCheckState::Present {
                    validated: true,
                    ..
                }
            )
        {
            line(&format!(
                "-- {id}: already bytea, indexed as configured and with its CHECK constraint"
            ));
            continue;
        }
        if needs_index {
            line(&format!("-- {id}: already bytea; index missing"));
            if st.indexed {
                line(&format!(
                    "-- {id}: a non-unique index on the blind index exists; drop it if it has the name below"
                ));
            }
            for l in ddl_lines(c, index_statement) {
                line(&l);
            }
        }
        let check = CellCheck::of(c);
        match &st.cell_check {
            CellCheckState::Present {
                validated: true, ..
            } => {}
            CellCheckState::Present {
                name,
                validated: false,
            } => {
                line(&format!(
                    "-- {id}: CHECK constraint on stored cells not validated yet (fails if a stored value is not a pgseal cell)"
                ));
                line(&check.validate_sql(name));
            }
            CellCheckState::Missing | CellCheckState::Differs => {
                if st.cell_check == CellCheckState::Differs {
                    line(&format!(
                        "-- {id}: CHECK constraint {:?} differs from the configured one; replaced",
                        check.name()
                    ));
                    line(&check.drop_sql(check.name()));
                } else {
                    line(&format!(
                        "-- {id}: CHECK constraint on stored cells missing (NOT VALID, then validated: fails if a stored value is not a pgseal cell)"
                    ));
                }
                line(&check.add_sql(true));
                line(&check.validate_sql(check.name()));
            }
        }
    }
    for l in schema_ddl(&ProtectedSchema::new()).lines() {
        out.push_str(l);
        out.push('\n');
    }
    out.push_str("-- Only what the upstream catalog shows is still missing.\n");
    out.push_str(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::IndexSpec;
    use pgseal_crypto::value::{LogicalType, Normalisation};
    use pgseal_crypto::IndexGroup;

    fn col(dotted: &str, index: bool, unique: bool) -> ProtectedColumn {
        let id = ColumnId::parse(dotted).unwrap();
        ProtectedColumn {
            index: index.then(|| IndexSpec {
                group: IndexGroup::of_column(&id),
                norm: Normalisation::default(),
                unique,
            }),
            id,
            ty: LogicalType::Text,
            keyring: "k".into(),
        }
    }

    fn state(
        dotted: &str,
        kind: Option<&str>,
        ty: Option<&str>,
        ix: bool,
        uq: bool,
    ) -> ColumnState {
        ColumnState {
            id: ColumnId::parse(dotted).unwrap(),
            relkind: kind.map(str::to_owned),
            column_type: ty.map(str::to_owned),
            indexed: ix,
            unique_indexed: uq,
            cell_check: CellCheckState::Present {
                name: "whatever".into(),
                validated: true,
            },
        }
    }

    fn with_check(mut s: ColumnState, cell_check: CellCheckState) -> ColumnState {
        s.cell_check = cell_check;
        s
    }

    #[test]
    fn prefix_expressions_of_both_deparsers_match() {
        assert!(is_prefix_expr("\"substring\"(email, 1, 16)", "email"));
        assert!(is_prefix_expr("SUBSTRING(email FROM 1 FOR 16)", "email"));
        assert!(is_prefix_expr("\"substring\"(\"E Mail\", 1, 16)", "E Mail"));
        assert!(!is_prefix_expr("\"substring\"(email, 1, 8)", "email"));
        assert!(!is_prefix_expr("\"substring\"(email2, 1, 16)", "email"));
        assert!(!is_prefix_expr("email", "email"));
    }

    #[test]
    fn findings_and_pending_ddl() {
        let schema = ProtectedSchema::from_columns([
            col("public.p.a", true, true),
            col("public.p.b", true, false),
            col("public.p.c", false, false),
            col("public.p.d", true, true),
            col("public.q.e", false, false),
            col("public.p.f", true, false),
            col("public.v.g", false, false),
        ]);
        let states = vec![
            state("public.p.a", Some("r"), Some("text"), false, false),
            state("public.p.b", Some("r"), Some("bytea"), false, false),
            state("public.p.c", Some("r"), None, false, false),
            state("public.p.d", Some("r"), Some("bytea"), true, false),
            state("public.q.e", None, None, false, false),
            state("public.p.f", Some("r"), Some("bytea"), true, false),
            state("public.v.g", Some("v"), Some("bytea"), false, false),
        ];
        let f = findings(&schema, &states);
        let text: Vec<String> = f.iter().map(ToString::to_string).collect();
        let find = |c: &str| {
            text.iter()
                .find(|l| l.contains(&format!(": {c}: ")))
                .cloned()
                .unwrap_or_default()
        };
        assert!(
            find("public.p.a").starts_with("error: public.p.a: type is text, must be bytea"),
            "{text:?}"
        );
        assert!(
            find("public.p.a")
                .contains("ALTER TABLE \"public\".\"p\" ALTER COLUMN \"a\" TYPE bytea"),
            "{text:?}"
        );
        assert!(
            find("public.p.a").contains("CREATE UNIQUE INDEX"),
            "{text:?}"
        );
        assert!(
            find("public.p.b").starts_with("warning: public.p.b: no index"),
            "{text:?}"
        );
        assert!(
            find("public.p.c")
                .starts_with("error: public.p.c: column \"c\" does not exist in public.p"),
            "{text:?}"
        );
        assert!(
            find("public.p.d").starts_with("error: public.p.d: unique = true but no UNIQUE index"),
            "{text:?}"
        );
        assert!(
            find("public.q.e").starts_with("error: public.q.e: table public.q does not exist"),
            "{text:?}"
        );
        assert!(find("public.v.g").contains("not a table"), "{text:?}");
        assert_eq!(find("public.p.f"), "", "{text:?}");
        assert_eq!(f.len(), 6);

        let ddl = pending_ddl(&schema, &states);
        assert!(
            ddl.contains("ALTER TABLE \"public\".\"p\" ALTER COLUMN \"a\" TYPE bytea"),
            "{ddl}"
        );
        assert!(!ddl.contains("ALTER COLUMN \"b\""), "{ddl}");
        assert!(
            ddl.contains("\nCREATE INDEX IF NOT EXISTS \"p_b_pgseal_bidx\""),
            "{ddl}"
        );
        assert!(
            ddl.contains("\nCREATE UNIQUE INDEX IF NOT EXISTS \"p_d_pgseal_bidx\""),
            "{ddl}"
        );
        assert!(
            ddl.contains(
                "-- public.p.f: already bytea, indexed as configured and with its CHECK constraint"
            ),
            "{ddl}"
        );
        assert!(
            !ddl.contains("\nCREATE INDEX IF NOT EXISTS \"p_f_pgseal_bidx\""),
            "{ddl}"
        );
        assert!(
            ddl.contains("-- public.q.e: no such column upstream"),
            "{ddl}"
        );
        assert!(
            ddl.contains("-- ALTER TABLE \"public\".\"q\" DROP CONSTRAINT IF EXISTS \"pgseal_cell_e\", ADD CONSTRAINT"),
            "{ddl}"
        );
        // The conversion of a non-bytea column includes the constraint, in the finding too.
        assert!(
            ddl.contains("\nALTER TABLE \"public\".\"p\" DROP CONSTRAINT IF EXISTS \"pgseal_cell_a\", ADD CONSTRAINT \"pgseal_cell_a\" CHECK (\"a\" LIKE E'________________\\\\001"),
            "{ddl}"
        );
        assert!(
            find("public.p.a").contains("ADD CONSTRAINT \"pgseal_cell_a\""),
            "{text:?}"
        );
    }

    #[test]
    fn cell_check_state_from_the_constraints_of_the_table() {
        let c = CellCheck::of(&col("public.p.a", true, false));
        // As PostgreSQL prints them (bytea_output = escape, for legibility).
        let good = "CHECK (a ~~ '________________\\001________________________________%'::bytea)";
        let unindexed = "CHECK (a ~~ '\\001________________________________%'::bytea)";
        let of = |k: &[(&str, &str, bool, &str)]| CellCheckState::of(&c, "a", k);
        assert_eq!(of(&[]), CellCheckState::Missing);
        assert_eq!(
            of(&[
                ("other", "b", true, good),
                ("x", "a", true, "CHECK (a IS NOT NULL)")
            ]),
            CellCheckState::Missing
        );
        // Under any name; a validated one wins over a NOT VALID one.
        assert_eq!(
            of(&[("mine", "a", false, good), ("mine2", "a", true, good)]),
            CellCheckState::Present {
                name: "mine2".into(),
                validated: true
            }
        );
        assert_eq!(
            of(&[("pgseal_cell_a", "a", false, good)]),
            CellCheckState::Present {
                name: "pgseal_cell_a".into(),
                validated: false
            }
        );
        // pgseal's name with another definition, or on other columns, differs (even when a
        // matching one exists under another name: the stale one may refuse the writes).
        assert_eq!(
            of(&[("pgseal_cell_a", "a", true, unindexed)]),
            CellCheckState::Differs
        );
        assert_eq!(
            of(&[("pgseal_cell_a", "", true, good), ("mine", "a", true, good)]),
            CellCheckState::Differs
        );
    }

    #[test]
    fn cell_check_findings_and_pending_ddl() {
        let schema = ProtectedSchema::from_columns([
            col("public.p.a", true, false),
            col("public.p.b", false, false),
            col("public.p.c", false, false),
            col("public.p.d", true, true),
        ]);
        let bytea = |c: &str| state(c, Some("r"), Some("bytea"), true, true);
        let states = vec![
            with_check(bytea("public.p.a"), CellCheckState::Missing),
            with_check(bytea("public.p.b"), CellCheckState::Differs),
            with_check(
                bytea("public.p.c"),
                CellCheckState::Present {
                    name: "my_check".into(),
                    validated: false,
                },
            ),
            bytea("public.p.d"),
        ];
        let text: Vec<String> = findings(&schema, &states)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(
            text[0].starts_with(
                "warning: public.p.a: no CHECK constraint \"pgseal_cell_a\" on stored cells"
            ),
            "{text:?}"
        );
        assert!(
            text[0].ends_with("CHECK (\"a\" LIKE E'________________\\\\001________________________________%'::bytea) NOT VALID; ALTER TABLE \"public\".\"p\" VALIDATE CONSTRAINT \"pgseal_cell_a\";"),
            "{text:?}"
        );
        assert!(
            text[1].starts_with("error: public.p.b: CHECK constraint \"pgseal_cell_b\" is not the stored-cell check"),
            "{text:?}"
        );
        assert!(
            text[1].contains("ALTER TABLE \"public\".\"p\" DROP CONSTRAINT \"pgseal_cell_b\"; ALTER TABLE \"public\".\"p\" ADD CONSTRAINT \"pgseal_cell_b\" CHECK (\"b\" LIKE E'\\\\001_"),
            "{text:?}"
        );
        assert!(
            text[2].starts_with(
                "warning: public.p.c: CHECK constraint \"my_check\" on stored cells is NOT VALID"
            ),
            "{text:?}"
        );
        assert!(
            text[2]
                .ends_with("fix: ALTER TABLE \"public\".\"p\" VALIDATE CONSTRAINT \"my_check\";"),
            "{text:?}"
        );

        let ddl = pending_ddl(&schema, &states);
        let lines: Vec<&str> = ddl.lines().filter(|l| !l.starts_with("--")).collect();
        let check = |c: &str| CellCheck::of(schema.column("public", "p", c).unwrap());
        assert_eq!(
            lines,
            vec![
                check("a").add_sql(true).as_str(),
                check("a").validate_sql("pgseal_cell_a").as_str(),
                check("b").drop_sql("pgseal_cell_b").as_str(),
                check("b").add_sql(true).as_str(),
                check("b").validate_sql("pgseal_cell_b").as_str(),
                check("c").validate_sql("my_check").as_str(),
            ],
            "{ddl}"
        );
        assert!(
            ddl.contains(
                "-- public.p.d: already bytea, indexed as configured and with its CHECK constraint"
            ),
            "{ddl}"
        );
    }
}
