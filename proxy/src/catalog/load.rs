//! The catalog queries behind a [`CatalogSnapshot`]: every relation a query can name, the
//! attributes of the tables that hold protected columns, the descendants (partitions and
//! inheritance children, recursively through `pg_inherits`) of those tables with their
//! attributes, and the relations whose rewrite rules depend on them (views and materialized
//! views, recursively through `pg_depend` / `pg_rewrite`).

use std::collections::{BTreeMap, HashSet};

use super::drift::{drift_of_load, remembered_sql, Drift, OidMemory, MARKERS_SQL};
use super::{CatalogError, CatalogSnapshot, DependentRelation, Descendant};
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

/// `WITH RECURSIVE` CTEs: `roots(oid, rs, rt)` the configured tables, `d(oid, rs, rt)` their
/// descendants with the root they descend from.
fn descendants_ctes(filter: &str) -> String {
    format!(
        "WITH RECURSIVE roots(oid, rs, rt) AS ( \
           SELECT c.oid, n.nspname::text, c.relname::text \
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
           WHERE c.relkind IN ('r', 'p', 'f') AND {filter}), \
         d(oid, rs, rt) AS ( \
           SELECT i.inhrelid, r.rs, r.rt FROM pg_catalog.pg_inherits i JOIN roots r ON r.oid = i.inhparent \
           UNION \
           SELECT i.inhrelid, d.rs, d.rt FROM pg_catalog.pg_inherits i JOIN d ON d.oid = i.inhparent)"
    )
}

/// The query text: relations, then `(oid, schema, table, attnum, attname)` of non-dropped
/// attributes of the protected tables, then every schema name (CREATE TABLE of an unqualified
/// name goes to the first existing schema of the search_path), then `(oid, schema, table,
/// temporary, root schema, root table, attnum, attname)` of the descendants, then `(oid,
/// schema, name, relkind, schema, table)` of relations whose rules depend on a protected table
/// or a descendant (one protected table each).
pub(crate) fn snapshot_sql(schema: &ProtectedSchema, memory: &OidMemory) -> String {
    let filter = protected_tables_filter(schema);
    let ctes = descendants_ctes(&filter);
    let remembered = remembered_sql(memory);
    format!(
        "{RELATIONS_SQL}; \
         SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {filter} \
         ORDER BY c.oid, a.attnum; \
         SELECT nspname FROM pg_catalog.pg_namespace; \
         {ctes} \
         SELECT d.oid, n.nspname, c.relname, c.relpersistence = 't', d.rs, d.rt, a.attnum, a.attname \
         FROM d JOIN pg_catalog.pg_class c ON c.oid = d.oid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = d.oid AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY d.oid, d.rs, d.rt, a.attnum; \
         {ctes}, \
         base(oid, rs, rt) AS (SELECT oid, rs, rt FROM roots UNION SELECT oid, rs, rt FROM d), \
         v(oid, rs, rt) AS ( \
           SELECT r.ev_class, b.rs, b.rt FROM pg_catalog.pg_depend dep \
           JOIN pg_catalog.pg_rewrite r ON dep.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND dep.objid = r.oid \
           JOIN base b ON dep.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND dep.refobjid = b.oid \
           WHERE r.ev_class <> dep.refobjid \
           UNION \
           SELECT r.ev_class, v.rs, v.rt FROM pg_catalog.pg_depend dep \
           JOIN pg_catalog.pg_rewrite r ON dep.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND dep.objid = r.oid \
           JOIN v ON dep.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND dep.refobjid = v.oid \
           WHERE r.ev_class <> dep.refobjid) \
         SELECT DISTINCT ON (v.oid) v.oid, n.nspname, c.relname, c.relkind, v.rs, v.rt \
         FROM v JOIN pg_catalog.pg_class c ON c.oid = v.oid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE v.oid NOT IN (SELECT oid FROM base) \
         ORDER BY v.oid, v.rs, v.rt; \
         {remembered}; \
         {MARKERS_SQL}; \
         {ctes}, \
         base(oid, rs, rt) AS (SELECT oid, rs, rt FROM roots UNION SELECT oid, rs, rt FROM d), \
         up(oid, rs, rt) AS ( \
           SELECT i.inhparent, b.rs, b.rt FROM pg_catalog.pg_inherits i JOIN base b ON b.oid = i.inhrelid \
           UNION \
           SELECT i.inhparent, up.rs, up.rt FROM pg_catalog.pg_inherits i JOIN up ON up.oid = i.inhrelid) \
         SELECT DISTINCT ON (up.oid) up.oid, n.nspname, c.relname, up.rs, up.rt \
         FROM up JOIN pg_catalog.pg_class c ON c.oid = up.oid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE up.oid NOT IN (SELECT oid FROM base) \
         ORDER BY up.oid, up.rs, up.rt"
    )
}

/// `(oid, schema, table, [(attnum, column name)])`, as [`CatalogSnapshot::new`] takes them.
pub(crate) type TableRow = (u32, String, String, Vec<(i16, String)>);

fn bad(what: &str) -> CatalogError {
    CatalogError(format!("unexpected catalog answer: {what}"))
}

/// The text of column `i` of a row (NULL and missing columns are errors).
pub(crate) fn field(row: &[Option<String>], i: usize) -> Result<&str, CatalogError> {
    row.get(i)
        .and_then(|v| v.as_deref())
        .ok_or_else(|| bad("missing or NULL column"))
}

/// Builds a snapshot from the answers to [`snapshot_sql`], with a fresh OID memory.
#[cfg(test)]
pub(crate) fn snapshot_from_rows(
    generation: u64,
    results: &[Rows],
    schema: &ProtectedSchema,
) -> Result<CatalogSnapshot, CatalogError> {
    Ok(snapshot_following(generation, results, schema, &OidMemory::default())?.0)
}

/// Builds a snapshot from the answers to [`snapshot_sql`] asked with `memory`, and the memory
/// after this load (see [`super::drift`]).
pub(crate) fn snapshot_following(
    generation: u64,
    results: &[Rows],
    schema: &ProtectedSchema,
    memory: &OidMemory,
) -> Result<(CatalogSnapshot, OidMemory), CatalogError> {
    let (relations, attributes, namespaces, dependents, drift) = match results {
        [r, a] => (r, a, None, None, None),
        [r, a, n] => (r, a, Some(n), None, None),
        [r, a, n, d, v] => (r, a, Some(n), Some((d, v)), None),
        [r, a, n, d, v, m, k, up] => (r, a, Some(n), Some((d, v)), Some((m, k, up))),
        _ => return Err(bad("expected eight result sets")),
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
    let mut next_memory = memory.clone();
    let mut drifts: Vec<Drift> = Vec::new();
    let mut snapshot = CatalogSnapshot::new(generation, relations, tables.clone(), schema);
    if let Some((d, v)) = dependents {
        let descendants = descendants_from_rows(d)?;
        let dependents = dependents_from_rows(v)?;
        if let Some((m, k, up)) = drift {
            let below: HashSet<u32> = descendants.iter().map(|d| d.oid).collect();
            let (found, next) = drift_of_load(memory, m, k, &tables, &below, schema)?;
            drifts = found;
            next_memory = next;
            for a in ancestors_from_rows(up)? {
                if !drifts.iter().any(|d| d.oid == a.oid) {
                    drifts.push(a);
                }
            }
        }
        snapshot = snapshot.with_dependents(schema, descendants, dependents);
    }
    snapshot = snapshot.with_drift(schema, drifts);
    let snapshot = match namespaces {
        Some(rows) => {
            let names = rows
                .iter()
                .map(|r| Ok(field(r, 0)?.to_owned()))
                .collect::<Result<Vec<_>, CatalogError>>()?;
            snapshot.with_schemas(names)
        }
        None => snapshot,
    };
    Ok((snapshot, next_memory))
}

/// Inheritance ancestors of configured tables and their descendants that are neither, from
/// `(oid, schema, name, root schema, root table)` rows: a scan of one returns the protected
/// table's rows, so they are tainted as drift (the configuration does not cover them).
fn ancestors_from_rows(rows: &Rows) -> Result<Vec<Drift>, CatalogError> {
    rows.iter()
        .map(|r| {
            let (rs, rt) = (field(r, 3)?, field(r, 4)?);
            Ok(Drift {
                oid: field(r, 0)?.parse().map_err(|_| bad("oid"))?,
                schema: field(r, 1)?.to_owned(),
                name: field(r, 2)?.to_owned(),
                why: format!(
                    "an inheritance parent of protected table {rs}.{rt} (a scan of it returns that table's rows; configure the parent, or undo the INHERIT / ATTACH PARTITION)"
                ),
            })
        })
        .collect()
}

/// Descendants from `(oid, schema, table, temporary, root schema, root table, attnum, attname)`
/// rows (one row per root and attribute).
fn descendants_from_rows(rows: &Rows) -> Result<Vec<Descendant>, CatalogError> {
    let mut by_oid: BTreeMap<u32, Descendant> = BTreeMap::new();
    for r in rows {
        let oid: u32 = field(r, 0)?.parse().map_err(|_| bad("oid"))?;
        let temporary = field(r, 3)? == "t";
        let root = (field(r, 4)?.to_owned(), field(r, 5)?.to_owned());
        let attnum: i16 = field(r, 6)?.parse().map_err(|_| bad("attnum"))?;
        let attname = field(r, 7)?.to_owned();
        let d = match by_oid.entry(oid) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(Descendant {
                oid,
                schema: field(r, 1)?.to_owned(),
                table: field(r, 2)?.to_owned(),
                temporary,
                roots: Vec::new(),
                columns: Vec::new(),
            }),
        };
        if !d.roots.contains(&root) {
            d.roots.push(root);
        }
        if !d.columns.iter().any(|(n, _)| *n == attnum) {
            d.columns.push((attnum, attname));
        }
    }
    Ok(by_oid.into_values().collect())
}

/// Dependent relations from `(oid, schema, name, relkind, schema, table)` rows.
fn dependents_from_rows(rows: &Rows) -> Result<Vec<DependentRelation>, CatalogError> {
    rows.iter()
        .map(|r| {
            Ok(DependentRelation {
                oid: field(r, 0)?.parse().map_err(|_| bad("oid"))?,
                schema: field(r, 1)?.to_owned(),
                name: field(r, 2)?.to_owned(),
                relkind: field(r, 3)?.chars().next().unwrap_or('?'),
                over: (field(r, 4)?.to_owned(), field(r, 5)?.to_owned()),
            })
        })
        .collect()
}

/// Runs the catalog queries on `client` and builds a snapshot with `generation`.
pub async fn load_snapshot(
    client: &mut SimpleClient,
    schema: &ProtectedSchema,
    generation: u64,
) -> Result<CatalogSnapshot, CatalogError> {
    Ok(
        load_following(client, schema, generation, &OidMemory::default())
            .await?
            .0,
    )
}

/// Runs the catalog queries on `client` with `memory` (the OIDs of configured tables seen
/// before) and builds a snapshot with `generation`, and the memory after this load.
pub async fn load_following(
    client: &mut SimpleClient,
    schema: &ProtectedSchema,
    generation: u64,
    memory: &OidMemory,
) -> Result<(CatalogSnapshot, OidMemory), CatalogError> {
    let results = client
        .query(&snapshot_sql(schema, memory))
        .await
        .map_err(|e| CatalogError(e.to_string()))?;
    snapshot_following(generation, &results, schema, memory)
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

    /// The five result sets for: app.pat'ients (oid 100: id 1, email 3), its partition
    /// app.p_2024 (oid 200, attached after building it separately: email is attnum 5),
    /// a sub-partition public.p_2024_q1 (oid 300), a temporary child (oid 400), a child of two
    /// protected roots (oid 500), and a view (oid 600) and materialized view (oid 700) over it.
    fn family() -> Vec<Rows> {
        let rels = vec![
            vec![s("app"), s("pat'ients")],
            vec![s("app"), s("p_2024")],
            vec![s("public"), s("p_2024_q1")],
            vec![s("public"), s("v_pat")],
            vec![s("public"), s("mv_pat")],
        ];
        let attrs = vec![
            vec![s("100"), s("app"), s("pat'ients"), s("1"), s("id")],
            vec![s("100"), s("app"), s("pat'ients"), s("3"), s("email")],
        ];
        let nsp = vec![vec![s("app")], vec![s("public")]];
        let d = |oid: &str, sch: &str, t: &str, temp: &str, rt: &str, n: &str, name: &str| {
            vec![
                s(oid),
                s(sch),
                s(t),
                s(temp),
                s("app"),
                s(rt),
                s(n),
                s(name),
            ]
        };
        let desc = vec![
            d("200", "app", "p_2024", "f", "pat'ients", "2", "id"),
            d("200", "app", "p_2024", "f", "pat'ients", "5", "email"),
            d("300", "public", "p_2024_q1", "f", "pat'ients", "1", "email"),
            d("300", "public", "p_2024_q1", "f", "pat'ients", "2", "id"),
            d(
                "400",
                "pg_temp_3",
                "tmp_child",
                "t",
                "pat'ients",
                "3",
                "email",
            ),
            d("500", "public", "two_roots", "f", "pat'ients", "3", "email"),
            d("500", "public", "two_roots", "f", "other", "3", "email"),
        ];
        let views = vec![
            vec![
                s("600"),
                s("public"),
                s("v_pat"),
                s("v"),
                s("app"),
                s("pat'ients"),
            ],
            vec![
                s("700"),
                s("public"),
                s("mv_pat"),
                s("m"),
                s("app"),
                s("pat'ients"),
            ],
        ];
        vec![rels, attrs, nsp, desc, views]
    }

    #[test]
    fn descendants_map_to_the_root_column_by_name() {
        let snap = snapshot_from_rows(3, &family(), &schema()).unwrap();
        let root = snap.protected_at(100, 3).unwrap().clone();
        // The partition's email is attnum 5, the sub-partition's attnum 1: both are the root's
        // column, with the root's identity (the associated data of the envelopes).
        assert_eq!(snap.protected_at(200, 5), Some(&root));
        assert_eq!(snap.protected_at(300, 1), Some(&root));
        assert_eq!(
            root.id.to_string(),
            ColumnId::parse("app.pat'ients.email").unwrap().to_string()
        );
        assert!(snap.protected_at(200, 3).is_none() && snap.protected_at(200, 2).is_none());
        assert!(snap.protected_at(300, 2).is_none());
        // The analyser's schema sees the descendants as their root.
        let eff = snap.schema();
        assert_eq!(eff.column("app", "p_2024", "email"), Some(&root));
        assert_eq!(eff.column("public", "p_2024_q1", "email"), Some(&root));
        assert_eq!(
            eff.alias_of("public", "p_2024_q1"),
            Some(("app", "pat'ients"))
        );
        // ...but the configured tables are still only the root.
        assert_eq!(eff.tables().collect::<Vec<_>>(), [("app", "pat'ients")]);
        assert_eq!(eff.columns().count(), 1);
        for n in [
            "p_2024",
            "p_2024_q1",
            "v_pat",
            "mv_pat",
            "tmp_child",
            "two_roots",
        ] {
            assert!(snap.extra_lower_names().iter().any(|x| x == n), "{n}");
        }
    }

    #[test]
    fn ambiguous_descendants_and_dependent_views_are_tainted() {
        let snap = snapshot_from_rows(3, &family(), &schema()).unwrap();
        for (oid, what) in [
            (400, "temporary inheritance child"),
            (500, "more than one protected table"),
            (600, "a view over protected table app.pat'ients"),
            (
                700,
                "a materialized view over protected table app.pat'ients",
            ),
        ] {
            let why = snap
                .tainted(oid)
                .unwrap_or_else(|| panic!("{oid} not tainted"));
            assert!(why.contains(what), "{why}");
            assert!(snap.knows_oid(oid));
            assert!(snap.protected_at(oid, 3).is_none());
        }
        assert!(snap.tainted(100).is_none() && snap.tainted(200).is_none());
        let eff = snap.schema();
        assert!(eff.tainted("public", "v_pat").is_some());
        assert!(eff.column("public", "two_roots", "email").is_none());
    }

    #[test]
    fn a_configured_table_that_is_also_a_descendant_is_tainted() {
        let mut cols = schema();
        cols.insert(ProtectedColumn {
            id: ColumnId::parse("app.p_2024.email").unwrap(),
            ty: LogicalType::Text,
            keyring: "k".into(),
            index: None,
        });
        let snap = snapshot_from_rows(3, &family(), &cols).unwrap();
        let why = snap.tainted(200).unwrap();
        assert!(why.contains("configure the root table only"), "{why}");
    }

    #[test]
    fn statements_on_descendants_are_analysed_as_the_root() {
        use crate::rewrite::{rewrite, Plan, Slot};
        let snap = snapshot_from_rows(3, &family(), &schema()).unwrap();
        let path = vec!["public".to_owned()];
        let root = ColumnId::parse("app.pat'ients.email").unwrap();
        for sql in [
            "INSERT INTO app.p_2024 (id, email) VALUES (1, 'a@b')",
            "INSERT INTO p_2024_q1 (id, email) VALUES (1, 'a@b')",
            "UPDATE P_2024_Q1 SET email = 'a@b' WHERE id = 1",
        ] {
            match rewrite(sql, snap.schema(), &snap, &path) {
                Ok(Plan::Rewrite(p)) => {
                    assert!(!p.debug_sql().contains("a@b"), "{}", p.debug_sql());
                    assert!(
                        p.slots
                            .iter()
                            .any(|s| matches!(s, Slot::Value { column, .. } if *column == root)),
                        "{sql}: {:?}",
                        p.slots
                    );
                }
                other => panic!("{sql}: {other:?}"),
            }
        }
        // No blind index on the column: equality through the partition is refused like on the
        // root, never compared with plaintext.
        let r = rewrite(
            "SELECT id FROM p_2024_q1 WHERE email = 'a@b'",
            snap.schema(),
            &snap,
            &path,
        )
        .unwrap_err();
        assert_eq!(r.sqlstate, "0A000");
        assert!(r.message.contains("app.pat'ients.email"), "{}", r.message);
    }

    #[test]
    fn statements_naming_tainted_relations_are_refused() {
        use crate::rewrite::{rewrite, Plan};
        let snap = snapshot_from_rows(3, &family(), &schema()).unwrap();
        let path = vec!["public".to_owned()];
        for sql in [
            "SELECT * FROM v_pat",
            "SELECT id FROM public.mv_pat WHERE id = 1",
            "REFRESH MATERIALIZED VIEW mv_pat",
            "INSERT INTO two_roots (email) VALUES ('x')",
            "SELECT 1; SELECT * FROM \"v_pat\"",
            "SELECT * FROM x JOIN v_pat USING (id",
        ] {
            let r = rewrite(sql, snap.schema(), &snap, &path).unwrap_err();
            assert!(matches!(r.sqlstate, "0A000" | "42601"), "{sql}: {r:?}");
            if r.sqlstate == "0A000" {
                assert!(
                    r.message.contains("over protected table app.pat'ients")
                        || r.message.contains("more than one"),
                    "{}",
                    r.message
                );
            }
        }
        assert!(matches!(
            rewrite("DROP VIEW v_pat", snap.schema(), &snap, &path),
            Ok(Plan::PassThrough)
        ));
        assert!(matches!(
            rewrite("SELECT 'v_pat' FROM plain", snap.schema(), &snap, &path),
            Ok(Plan::PassThrough)
        ));
    }

    #[test]
    fn unchanged_catalogs_compare_equal() {
        let a = snapshot_from_rows(3, &family(), &schema()).unwrap();
        let b = snapshot_from_rows(4, &family(), &schema()).unwrap();
        assert!(a.same_content(&b));
        let mut rows = family();
        rows[4].pop();
        let c = snapshot_from_rows(5, &rows, &schema()).unwrap();
        assert!(!a.same_content(&c));
    }
}
