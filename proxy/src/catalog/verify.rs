//! Checks the configured columns against the upstream catalog (`pgseal-proxy check`) and
//! writes the DDL still needed (`pgseal-proxy schema`).
//!
//! Per column: the table exists (and is a table), the column exists, its type is `bytea`; with
//! `index = true` an index on `substring(col from 1 for 16)` exists (a missing one is a
//! warning: lookups work but scan the table); with `unique = true` a UNIQUE such index exists
//! (a missing one is an error: `ON CONFLICT (col)` fails and uniqueness is not enforced).

use std::collections::HashMap;

use pgseal_crypto::ColumnId;

use super::load::{field, protected_tables_filter};
use super::CatalogError;
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
         WHERE i.indnkeyatts = 1 AND i.indpred IS NULL AND i.indisvalid AND {filter}"
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
    let [rels, attrs, indexes] = results.as_slice() else {
        return Err(CatalogError(
            "unexpected catalog answer: expected three result sets".into(),
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
    Ok(schema
        .columns()
        .map(|c| {
            let (s, t, col) = (c.id.schema(), c.id.table(), c.id.column());
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
            }
        })
        .collect())
}

/// The statements of [`schema_ddl`] for one column whose first word is `verb`.
fn ddl_lines(c: &ProtectedColumn, verb: &str) -> Vec<String> {
    schema_ddl(&ProtectedSchema::from_columns([c.clone()]))
        .lines()
        .filter(|l| l.starts_with(verb))
        .map(str::to_owned)
        .collect()
}

fn one(id: &ColumnId, severity: Severity, message: String) -> Finding {
    Finding {
        column: id.clone(),
        severity,
        message,
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
            let mut fix = ddl_lines(c, "ALTER");
            fix.extend(ddl_lines(c, "CREATE"));
            out.push(one(
                &c.id,
                Severity::Error,
                format!(
                    "type is {ty}, must be bytea (it stores ciphertext); fix (discards existing values): {} -- or run pgseal-proxy schema",
                    fix.join(" ")
                ),
            ));
            continue;
        }
        let Some(ix) = &c.index else { continue };
        if ix.unique && !st.unique_indexed {
            out.push(one(
                &c.id,
                Severity::Error,
                format!(
                    "unique = true but no UNIQUE index on (substring({} from 1 for 16)): ON CONFLICT fails and duplicates are not refused; fix: {}",
                    c.id.column(),
                    ddl_lines(c, "CREATE").join(" ")
                ),
            ));
        } else if !st.indexed {
            out.push(one(
                &c.id,
                Severity::Warning,
                format!(
                    "no index on (substring({} from 1 for 16)): equality lookups scan the table; fix: {}",
                    c.id.column(),
                    ddl_lines(c, "CREATE").join(" ")
                ),
            ));
        }
    }
    out
}

/// The DDL still needed, given what the catalog says; every column gets a comment saying why
/// it is or is not in the output.
pub fn pending_ddl(schema: &ProtectedSchema, states: &[ColumnState]) -> String {
    let mut out = String::new();
    let mut body = String::new();
    for c in schema.columns() {
        let st = states.iter().find(|s| s.id == c.id);
        let (exists, bytea, indexed, unique) = match st {
            Some(s) => (
                s.column_type.is_some(),
                s.is_bytea(),
                s.indexed,
                s.unique_indexed,
            ),
            None => (false, false, false, false),
        };
        let id = &c.id;
        if let Some(kind) = st.and_then(|s| s.relkind.as_deref()) {
            if !matches!(kind, "r" | "p" | "f") {
                body.push_str(&format!(
                    "-- {id}: not a table (relkind {kind}); protect the base table's column\n"
                ));
                continue;
            }
        }
        if !exists {
            body.push_str(&format!(
                "-- {id}: no such column upstream; create it as bytea (or run this again after creating it)\n"
            ));
            for l in ddl_lines(c, "CREATE") {
                body.push_str(&format!("-- {l}\n"));
            }
            continue;
        }
        if !bytea {
            body.push_str(&format!("-- {id}: not bytea yet\n"));
            for l in ddl_lines(c, "ALTER")
                .into_iter()
                .chain(ddl_lines(c, "CREATE"))
            {
                body.push_str(&l);
                body.push('\n');
            }
            continue;
        }
        let needs_index = match &c.index {
            Some(ix) => (ix.unique && !unique) || !indexed,
            None => false,
        };
        if !needs_index {
            body.push_str(&format!(
                "-- {id}: already bytea and indexed as configured\n"
            ));
            continue;
        }
        body.push_str(&format!("-- {id}: already bytea; index missing\n"));
        if indexed {
            body.push_str(&format!(
                "-- {id}: a non-unique index on the blind index exists; drop it if it has the name below\n"
            ));
        }
        for l in ddl_lines(c, "CREATE") {
            body.push_str(&l);
            body.push('\n');
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
        }
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
            ddl.contains("-- public.p.f: already bytea and indexed"),
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
    }
}
