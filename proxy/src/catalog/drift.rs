//! Catalog drift done directly upstream: a protected table renamed or moved to another schema, a
//! protected column renamed, a relation that holds pgseal's stored cells without being
//! configured, and plain tables whose rows include a protected table's (inheritance parents).
//! Each is tainted in the snapshot: statements naming it are refused and result columns from it
//! are never handed over, until the configuration matches the catalog again.
//!
//! Two witnesses, so that drift is seen both by a running proxy and by one started after it:
//! - **OID memory** ([`OidMemory`], kept by the catalog thread for the life of the process): the
//!   OID of every configured table the first time a load sees it, with the attnums of its
//!   protected columns. A remembered OID under another name, or a remembered attnum under
//!   another column name, is drift.
//! - **Stored-cell constraints** (`pgseal_cell_<column>`, see `rewrite::schema::cell_check`):
//!   they stay with the table and column through renames and schema moves. A constraint on a
//!   relation that is neither configured nor a descendant of a configured table, or on a column
//!   other than the one its name was made for, is drift.
//!
//! The queries are plain scans of `pg_class`, `pg_attribute`, `pg_constraint` and
//! `pg_inherits` with OID arrays (no per-table text comparison), so their cost grows with the
//! catalog, not with the product of catalog and configuration.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::load::{field, TableRow};
use super::CatalogError;
use crate::migrate::state::Names;
use crate::rewrite::schema::cell_check::CellCheck;
use crate::rewrite::ProtectedSchema;
use crate::upstream::simple_query::Rows;

/// A relation to taint because of drift: `(oid, schema, name, why)`, where `why` completes
/// "…, which is {why}".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// The relation's OID.
    pub oid: u32,
    /// Its schema now.
    pub schema: String,
    /// Its name now.
    pub name: String,
    /// Why it is tainted.
    pub why: String,
}

/// A relation's current `(schema, name, [(attnum, column name)])`.
pub(crate) type Current = (String, String, Vec<(i16, String)>);

/// What the OID memory knows of one configured table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Remembered {
    /// The configured `(schema, table)` it was first seen as.
    schema: String,
    table: String,
    /// Its protected columns by attnum, as first seen.
    columns: BTreeMap<i16, String>,
}

/// The OIDs of configured tables seen by this process (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct OidMemory {
    tables: HashMap<u32, Remembered>,
}

/// Entries the memory keeps at most (a configuration has far fewer tables).
const MEMORY_CAP: usize = 100_000;

impl OidMemory {
    /// The remembered OIDs, as a PostgreSQL array literal (`'{1,2}'`), for [`remembered_sql`].
    fn oid_array(&self) -> String {
        let mut oids: Vec<u32> = self.tables.keys().copied().collect();
        oids.sort_unstable();
        let list: Vec<String> = oids.iter().map(u32::to_string).collect();
        format!("'{{{}}}'", list.join(","))
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// The drift of the remembered tables, given their current rows (`remembered` answer), and
    /// the memory after this load: gone OIDs forgotten, dropped columns forgotten, configured
    /// tables and columns seen for the first time learnt from `configured` (the attribute
    /// answer: `(oid, schema, table, [(attnum, name)])` of the configured tables by name).
    fn follow(
        &self,
        current: &BTreeMap<u32, Current>,
        configured: &[TableRow],
        schema: &ProtectedSchema,
    ) -> (Vec<Drift>, OidMemory) {
        let mut drift = Vec::new();
        let mut next = OidMemory::default();
        for (oid, r) in &self.tables {
            let Some((s, t, attrs)) = current.get(oid) else {
                continue; // dropped
            };
            let mut kept = r.clone();
            // An online migration's cut-over renames the column at attnum k to
            // `pgseal_old_<k>` (and its shadow to the column's name): not drift; the column's
            // new attnum is learnt below.
            kept.columns.retain(|k, _| {
                attrs
                    .iter()
                    .any(|(a, n)| a == k && *n != Names::new(*oid, *k).old)
            });
            if (s, t) != (&r.schema, &r.table) {
                drift.push(Drift {
                    oid: *oid,
                    schema: s.clone(),
                    name: t.clone(),
                    why: format!(
                        "protected table {}.{} renamed or moved directly upstream (configure it under its new name, or rename it back)",
                        r.schema, r.table
                    ),
                });
            } else {
                for (k, was) in &kept.columns {
                    if let Some((_, now)) = attrs.iter().find(|(a, n)| a == k && n != was) {
                        drift.push(Drift {
                            oid: *oid,
                            schema: s.clone(),
                            name: t.clone(),
                            why: format!(
                                "a protected table whose protected column {was} was renamed directly upstream to {now} (configure the new name, or rename it back)"
                            ),
                        });
                        break;
                    }
                }
            }
            next.tables.insert(*oid, kept);
        }
        for (oid, s, t, attrs) in configured {
            if next.tables.len() >= MEMORY_CAP && !next.tables.contains_key(oid) {
                break;
            }
            let entry = next.tables.entry(*oid).or_insert_with(|| Remembered {
                schema: s.clone(),
                table: t.clone(),
                columns: BTreeMap::new(),
            });
            if (&entry.schema, &entry.table) != (s, t) {
                continue; // drifted under another configured name: keep what was first seen
            }
            for (attnum, name) in attrs {
                let configured_here = schema.column(s, t, name).is_some();
                let known_name = entry.columns.values().any(|n| n == name);
                if configured_here && !known_name && !entry.columns.contains_key(attnum) {
                    entry.columns.insert(*attnum, name.clone());
                }
            }
        }
        (drift, next)
    }
}

/// `(oid, schema, name, attnum, attname)` of the remembered OIDs (one row per non-dropped
/// attribute; a relation without attributes has one row with NULL attnum).
pub(crate) fn remembered_sql(memory: &OidMemory) -> String {
    format!(
        "SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         WHERE c.oid = ANY ({}::pg_catalog.oid[]) \
         ORDER BY c.oid, a.attnum",
        memory.oid_array()
    )
}

/// `(oid, schema, name, constraint, attname)` of every stored-cell constraint of a relation that
/// other sessions can name.
pub(crate) const MARKERS_SQL: &str =
    "SELECT con.conrelid, n.nspname, c.relname, con.conname, a.attname \
     FROM pg_catalog.pg_constraint con \
     JOIN pg_catalog.pg_class c ON c.oid = con.conrelid \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = con.conkey[1] \
     WHERE con.contype = 'c' AND con.conname LIKE 'pgseal\\_cell\\_%' AND c.relpersistence <> 't' \
     ORDER BY con.conrelid, con.conname";

/// Rows of [`remembered_sql`] by OID.
pub(crate) fn remembered_from_rows(rows: &Rows) -> Result<BTreeMap<u32, Current>, CatalogError> {
    let mut out: BTreeMap<u32, Current> = BTreeMap::new();
    for r in rows {
        let oid: u32 = field(r, 0)?.parse().map_err(|_| bad("oid"))?;
        let e = out
            .entry(oid)
            .or_insert_with(|| (String::new(), String::new(), Vec::new()));
        e.0 = field(r, 1)?.to_owned();
        e.1 = field(r, 2)?.to_owned();
        if let (Some(Some(k)), Some(Some(n))) = (r.get(3), r.get(4)) {
            e.2.push((k.parse().map_err(|_| bad("attnum"))?, n.clone()));
        }
    }
    Ok(out)
}

fn bad(what: &str) -> CatalogError {
    CatalogError(format!("unexpected catalog answer: {what}"))
}

/// Drift seen by the stored-cell constraints: `rows` of [`MARKERS_SQL`]; `descendants` are the
/// OIDs of partitions and inheritance children of configured tables (their constraints are
/// inherited and checked through their root).
pub(crate) fn marker_drift(
    rows: &Rows,
    schema: &ProtectedSchema,
    descendants: &HashSet<u32>,
) -> Result<Vec<Drift>, CatalogError> {
    let mut out: Vec<Drift> = Vec::new();
    for r in rows {
        let oid: u32 = field(r, 0)?.parse().map_err(|_| bad("oid"))?;
        if descendants.contains(&oid) || out.iter().any(|d| d.oid == oid) {
            continue;
        }
        let (s, t, conname) = (field(r, 1)?, field(r, 2)?, field(r, 3)?);
        let attname = r.get(4).and_then(|v| v.as_deref()).unwrap_or("?");
        let why = match schema.table(s, t) {
            None => format!(
                "not configured but holds pgseal's stored cells (constraint {conname} on column {attname}): a protected table renamed, moved or copied directly upstream (configure it, or drop the constraint if it holds no pgseal values)"
            ),
            Some(columns) => {
                let owner = columns
                    .values()
                    .find(|c| CellCheck::of(c).name() == conname);
                match owner {
                    Some(c) if c.id.column() == attname => continue,
                    Some(c) => format!(
                        "a protected table whose protected column {} was renamed directly upstream to {attname} (constraint {conname}; configure the new name, or rename it back)",
                        c.id.column()
                    ),
                    None => format!(
                        "a protected table whose column {attname} holds pgseal's stored cells (constraint {conname}) but is not configured as protected (a protected column renamed directly upstream?)"
                    ),
                }
            }
        };
        out.push(Drift {
            oid,
            schema: s.to_owned(),
            name: t.to_owned(),
            why,
        });
    }
    Ok(out)
}

/// Drift of this load: the OID memory's and the constraints', one entry per relation (the
/// memory's first), and the memory after the load.
pub(crate) fn drift_of_load(
    memory: &OidMemory,
    remembered: &Rows,
    markers: &Rows,
    configured: &[TableRow],
    descendants: &HashSet<u32>,
    schema: &ProtectedSchema,
) -> Result<(Vec<Drift>, OidMemory), CatalogError> {
    let current = remembered_from_rows(remembered)?;
    let (mut drift, next) = memory.follow(&current, configured, schema);
    for d in marker_drift(markers, schema, descendants)? {
        if !drift.iter().any(|x| x.oid == d.oid) {
            drift.push(d);
        }
    }
    drift.sort_by_key(|d| d.oid);
    Ok((drift, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::ProtectedColumn;
    use pgseal_crypto::value::LogicalType;
    use pgseal_crypto::ColumnId;

    fn schema() -> ProtectedSchema {
        ProtectedSchema::from_columns([ProtectedColumn {
            id: ColumnId::parse("public.patients.email").unwrap(),
            ty: LogicalType::Text,
            keyring: "k".into(),
            index: None,
        }])
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    fn configured() -> Vec<TableRow> {
        vec![(
            100,
            "public".into(),
            "patients".into(),
            vec![(1, "id".into()), (2, "email".into()), (3, "info".into())],
        )]
    }

    fn remembered(rows: &[(&str, &str, &str, &str, &str)]) -> Rows {
        rows.iter()
            .map(|(o, n, c, k, a)| vec![s(o), s(n), s(c), s(k), s(a)])
            .collect()
    }

    fn learnt() -> OidMemory {
        let (d, m) = OidMemory::default().follow(&BTreeMap::new(), &configured(), &schema());
        assert!(d.is_empty());
        m
    }

    #[test]
    fn memory_learns_configured_tables_and_their_protected_attnums() {
        let m = learnt();
        assert_eq!(m.oid_array(), "'{100}'");
        assert_eq!(
            m.tables[&100].columns,
            BTreeMap::from([(2, "email".to_owned())])
        );
        assert!(remembered_sql(&m).contains("ANY ('{100}'::pg_catalog.oid[])"));
        assert!(remembered_sql(&OidMemory::default()).contains("ANY ('{}'::"));
    }

    #[test]
    fn a_renamed_or_moved_table_is_drift_under_its_new_name() {
        let m = learnt();
        let rows = remembered(&[("100", "other", "p2", "2", "email")]);
        let (d, next) = drift_of_load(&m, &rows, &vec![], &[], &HashSet::new(), &schema()).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].schema.as_str(), d[0].name.as_str()), ("other", "p2"));
        assert!(
            d[0].why.contains("public.patients renamed or moved"),
            "{}",
            d[0].why
        );
        assert!(!next.is_empty(), "the drifted table stays remembered");
    }

    #[test]
    fn a_renamed_or_swapped_protected_column_is_drift_of_the_table() {
        let m = learnt();
        for rows in [
            remembered(&[("100", "public", "patients", "2", "e1")]),
            remembered(&[
                ("100", "public", "patients", "2", "x"),
                ("100", "public", "patients", "3", "email"),
            ]),
        ] {
            let now = vec![(
                100,
                "public".to_owned(),
                "patients".to_owned(),
                vec![(2, "x".to_owned()), (3, "email".to_owned())],
            )];
            let (d, next) =
                drift_of_load(&m, &rows, &vec![], &now, &HashSet::new(), &schema()).unwrap();
            assert_eq!(d.len(), 1, "{d:?}");
            assert_eq!(d[0].name, "patients");
            assert!(
                d[0].why.contains("column email was renamed"),
                "{}",
                d[0].why
            );
            // The swap is not learnt as the truth: the next load still sees the drift.
            assert_eq!(
                next.tables[&100].columns.get(&2).map(String::as_str),
                Some("email")
            );
        }
    }

    #[test]
    fn dropped_tables_and_columns_are_forgotten_and_recreated_ones_learnt() {
        let m = learnt();
        let (d, next) =
            drift_of_load(&m, &vec![], &vec![], &[], &HashSet::new(), &schema()).unwrap();
        assert!(d.is_empty() && next.is_empty());
        // email dropped and added again (new attnum): not drift, the new attnum is learnt.
        let rows = remembered(&[("100", "public", "patients", "1", "id")]);
        let now = vec![(
            100,
            "public".to_owned(),
            "patients".to_owned(),
            vec![(1, "id".to_owned()), (4, "email".to_owned())],
        )];
        let (d, next) =
            drift_of_load(&m, &rows, &vec![], &now, &HashSet::new(), &schema()).unwrap();
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(
            next.tables[&100].columns,
            BTreeMap::from([(4, "email".to_owned())])
        );
    }

    #[test]
    fn stored_cell_constraints_reveal_drift_without_memory() {
        let sch = schema();
        let rows = vec![
            // In place, on the right column: fine.
            vec![
                s("100"),
                s("public"),
                s("patients"),
                s("pgseal_cell_email"),
                s("email"),
            ],
            // The configured table's protected column renamed.
            vec![
                s("101"),
                s("public"),
                s("patients"),
                s("pgseal_cell_email"),
                s("e1"),
            ],
            // An unconfigured table holding stored cells (renamed, moved, LIKE … INCLUDING).
            vec![
                s("102"),
                s("shadow"),
                s("p2"),
                s("pgseal_cell_email"),
                s("email"),
            ],
            // A descendant: inherited constraint, checked through the root.
            vec![
                s("103"),
                s("public"),
                s("p_2024"),
                s("pgseal_cell_email"),
                s("email"),
            ],
            // A configured table with a constraint of a column not configured.
            vec![
                s("104"),
                s("public"),
                s("patients"),
                s("pgseal_cell_name"),
                s("name"),
            ],
        ];
        let d = marker_drift(&rows, &sch, &HashSet::from([103])).unwrap();
        let oids: Vec<u32> = d.iter().map(|d| d.oid).collect();
        assert_eq!(oids, vec![101, 102, 104], "{d:?}");
        assert!(d[0]
            .why
            .contains("email was renamed directly upstream to e1"));
        assert!(d[1]
            .why
            .contains("not configured but holds pgseal's stored cells"));
        assert!(d[2].why.contains("not configured as protected"));
        let bad = vec![vec![s("x"), s("a"), s("b"), s("c"), s("d")]];
        assert!(marker_drift(&bad, &sch, &HashSet::new()).is_err());
    }
}
