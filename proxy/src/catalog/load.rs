//! The catalog queries behind a [`CatalogSnapshot`]: every relation a query can name, and the
//! attributes of the tables that hold protected columns.

use super::{CatalogError, CatalogSnapshot};
use crate::rewrite::ProtectedSchema;
use crate::upstream::simple_query::{quote_literal, Rows, SimpleClient};

/// Relations a query can name (tables, partitioned tables, views, materialized views, foreign
/// tables), except other sessions' temporary tables.
const RELATIONS_SQL: &str = "SELECT n.nspname, c.relname \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND c.relpersistence <> 't'";

/// `(n.nspname, c.relname) IN (VALUES ...)` over the tables holding protected columns, or
/// `false` when there are none.
pub(crate) fn protected_tables_filter(schema: &ProtectedSchema) -> String {
    let values: Vec<String> = schema
        .tables()
        .map(|(s, t)| format!("({}, {})", quote_literal(s), quote_literal(t)))
        .collect();
    if values.is_empty() {
        "false".to_owned()
    } else {
        format!(
            "(n.nspname::text, c.relname::text) IN (VALUES {})",
            values.join(", ")
        )
    }
}

/// The query text: relations, then `(oid, schema, table, attnum, attname)` of non-dropped
/// attributes of the protected tables, then every schema name (CREATE TABLE of an unqualified
/// name goes to the first existing schema of the search_path).
pub(crate) fn snapshot_sql(schema: &ProtectedSchema) -> String {
    format!(
        "{RELATIONS_SQL}; \
         SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {} \
         ORDER BY c.oid, a.attnum; \
         SELECT nspname FROM pg_catalog.pg_namespace",
        protected_tables_filter(schema)
    )
}

/// `(oid, schema, table, [(attnum, column name)])`, as [`CatalogSnapshot::new`] takes them.
type TableRow = (u32, String, String, Vec<(i16, String)>);

fn bad(what: &str) -> CatalogError {
    CatalogError(format!("unexpected catalog answer: {what}"))
}

/// The text of column `i` of a row (NULL and missing columns are errors).
pub(crate) fn field(row: &[Option<String>], i: usize) -> Result<&str, CatalogError> {
    row.get(i)
        .and_then(|v| v.as_deref())
        .ok_or_else(|| bad("missing or NULL column"))
}

/// Builds a snapshot from the answers to [`snapshot_sql`].
pub(crate) fn snapshot_from_rows(
    generation: u64,
    results: &[Rows],
    schema: &ProtectedSchema,
) -> Result<CatalogSnapshot, CatalogError> {
    let (relations, attributes, namespaces) = match results {
        [r, a] => (r, a, None),
        [r, a, n] => (r, a, Some(n)),
        _ => return Err(bad("expected three result sets")),
    };
    let relations = relations
        .iter()
        .map(|r| Ok((field(r, 0)?.to_owned(), field(r, 1)?.to_owned())))
        .collect::<Result<Vec<_>, CatalogError>>()?;
    let mut tables: Vec<TableRow> = Vec::new();
    for r in attributes {
        let oid: u32 = field(r, 0)?.parse().map_err(|_| bad("oid"))?;
        let attnum: i16 = field(r, 3)?.parse().map_err(|_| bad("attnum"))?;
        let attname = field(r, 4)?.to_owned();
        match tables.last_mut() {
            Some((last, _, _, cols)) if *last == oid => cols.push((attnum, attname)),
            _ => tables.push((
                oid,
                field(r, 1)?.to_owned(),
                field(r, 2)?.to_owned(),
                vec![(attnum, attname)],
            )),
        }
    }
    let snapshot = CatalogSnapshot::new(generation, relations, tables, schema);
    match namespaces {
        Some(rows) => {
            let names = rows
                .iter()
                .map(|r| Ok(field(r, 0)?.to_owned()))
                .collect::<Result<Vec<_>, CatalogError>>()?;
            Ok(snapshot.with_schemas(names))
        }
        None => Ok(snapshot),
    }
}

/// Runs the catalog queries on `client` and builds a snapshot with `generation`.
pub async fn load_snapshot(
    client: &mut SimpleClient,
    schema: &ProtectedSchema,
    generation: u64,
) -> Result<CatalogSnapshot, CatalogError> {
    let results = client
        .query(&snapshot_sql(schema))
        .await
        .map_err(|e| CatalogError(e.to_string()))?;
    snapshot_from_rows(generation, &results, schema)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::ProtectedColumn;
    use pgseal_crypto::value::LogicalType;
    use pgseal_crypto::ColumnId;

    fn schema() -> ProtectedSchema {
        ProtectedSchema::from_columns([ProtectedColumn {
            id: ColumnId::parse("app.pat'ients.email").unwrap(),
            ty: LogicalType::Text,
            keyring: "k".into(),
            index: None,
        }])
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    #[test]
    fn filter_quotes_names() {
        let f = protected_tables_filter(&schema());
        assert!(f.contains("('app', 'pat''ients')"), "{f}");
        assert_eq!(protected_tables_filter(&ProtectedSchema::new()), "false");
    }

    #[test]
    fn rows_become_a_snapshot() {
        let rels = vec![vec![s("app"), s("pat'ients")], vec![s("public"), s("x")]];
        let attrs = vec![
            vec![s("100"), s("app"), s("pat'ients"), s("1"), s("id")],
            vec![s("100"), s("app"), s("pat'ients"), s("3"), s("email")],
        ];
        let snap = snapshot_from_rows(7, &[rels, attrs], &schema()).unwrap();
        assert_eq!(snap.generation(), 7);
        assert!(snap.has_table("public", "x"));
        assert!(snap.protected_at(100, 3).is_some());
        assert!(snap.protected_at(100, 1).is_none());
        assert!(snap.knows_oid(100));
    }

    #[test]
    fn schemas_decide_where_an_unqualified_create_goes() {
        use crate::rewrite::{rewrite, Plan, TableResolver};
        let nsp = vec![vec![s("public")], vec![s("pg_catalog")]];
        let snap = snapshot_from_rows(1, &[vec![], vec![], nsp], &schema()).unwrap();
        assert!(snap.schema_exists("public") && !snap.schema_exists("alice"));
        let known = snapshot_from_rows(1, &[vec![], vec![]], &schema()).unwrap();
        assert!(
            known.schema_exists("alice"),
            "unknown schema list: assume it exists"
        );
        // search_path "$user", public for user alice, who has no schema: the table is created in
        // public, so its protected columns must become bytea.
        let mut cols = ProtectedSchema::new();
        cols.insert(ProtectedColumn {
            id: ColumnId::new("public", "people", "email").unwrap(),
            ty: LogicalType::Text,
            keyring: "k".into(),
            index: None,
        });
        let path = vec!["alice".to_owned(), "public".to_owned()];
        let snap = CatalogSnapshot::new(1, Vec::new(), Vec::new(), &cols)
            .with_schemas(["public".to_owned()]);
        match rewrite(
            "CREATE TABLE people (id int, email text)",
            &cols,
            &snap,
            &path,
        ) {
            Ok(Plan::Rewrite(p)) => {
                assert!(p.debug_sql().contains("email BYTEA"), "{}", p.debug_sql())
            }
            other => panic!("not rewritten: {other:?}"),
        }
    }

    #[test]
    fn bad_rows_are_errors_not_panics() {
        let rels = vec![vec![s("app")]];
        assert!(snapshot_from_rows(1, &[rels, vec![]], &schema()).is_err());
        let attrs = vec![vec![s("x"), s("a"), s("b"), s("1"), s("c")]];
        assert!(snapshot_from_rows(1, &[vec![], attrs], &schema()).is_err());
        let attrs = vec![vec![s("1"), s("a"), s("b"), s("99999"), s("c")]];
        assert!(snapshot_from_rows(1, &[vec![], attrs], &schema()).is_err());
        let attrs = vec![vec![s("1"), None, s("b"), s("1"), s("c")]];
        assert!(snapshot_from_rows(1, &[vec![], attrs], &schema()).is_err());
        assert!(snapshot_from_rows(1, &[vec![]], &schema()).is_err());
    }
}
