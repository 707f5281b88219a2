//! Configured tables followed by OID: renames, schema moves and column renames done directly
//! upstream, which the proxy's name-based view of the catalog cannot see.
//!
//! [`Remembered`] keeps, for the lifetime of the catalog's loader (the proxy process), the OID
//! of every configured table from the first load that finds it by its configured name, with
//! the attnums of its protected columns. Every load also reads those OIDs; [`Remembered::drift`]
//! compares what they are now with what the configuration says:
//! - the OID exists under another schema or name ([`Drift::Moved`]: `ALTER TABLE … RENAME TO`,
//!   `SET SCHEMA`, `ALTER SCHEMA … RENAME`);
//! - the OID is still the configured table, but a protected column's attnum has another name
//!   ([`Drift::ColumnRenamed`]: `ALTER TABLE … RENAME COLUMN`).
//!
//! The snapshot taints such relations (and their descendants) until the configuration
//! matches again (renamed back upstream, or `[[columns]]` updated and the proxy restarted).
//! An OID that no longer exists is forgotten (the table was dropped); a dropped column's
//! attnum too.

use std::collections::BTreeMap;

use crate::rewrite::ProtectedSchema;

/// `(oid, schema, table, [(attnum, column name)])`: a table's non-dropped attributes.
pub(crate) type TableRow = (u32, String, String, Vec<(i16, String)>);

/// What one remembered OID stood for when it was first found.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Known {
    /// The configured `(schema, table)` it was found as.
    configured: (String, String),
    /// attnum → configured column name, for its protected columns.
    columns: BTreeMap<i16, String>,
}

/// The OIDs of configured tables, learnt from loads and kept across them.
#[derive(Debug, Clone, Default)]
pub struct Remembered {
    by_oid: BTreeMap<u32, Known>,
}

/// A configured table whose remembered OID no longer matches the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// The OID is now `now` (another schema or name).
    Moved {
        /// The table's OID.
        oid: u32,
        /// The configured `(schema, table)`.
        configured: (String, String),
        /// Its `(schema, name)` now.
        now: (String, String),
        /// Whether the configured schema exists (else the schema itself may have been
        /// renamed).
        schema_exists: bool,
    },
    /// A protected column of the configured table has another name now.
    ColumnRenamed {
        /// The table's OID.
        oid: u32,
        /// The configured `(schema, table)` (also its name now).
        configured: (String, String),
        /// The configured column name.
        column: String,
        /// The column's name now.
        now: String,
    },
}

impl Drift {
    /// The OID of the drifted table.
    pub fn oid(&self) -> u32 {
        match self {
            Drift::Moved { oid, .. } | Drift::ColumnRenamed { oid, .. } => *oid,
        }
    }

    /// Where the relation is now: `(schema, name)`.
    pub fn now(&self) -> (&str, &str) {
        match self {
            Drift::Moved { now, .. } => (&now.0, &now.1),
            Drift::ColumnRenamed { configured, .. } => (&configured.0, &configured.1),
        }
    }

    /// Why the relation is tainted (completes "relation x.y is …"): names the configured
    /// table and says how to make the configuration match.
    pub fn why(&self) -> String {
        match self {
            Drift::Moved {
                configured: (cs, ct),
                now: (s, t),
                schema_exists,
                ..
            } => format!(
                "configured table {cs}.{ct}, renamed or moved directly upstream; the proxy's \
                 configuration does not match, so it is refused until it does: rename it back \
                 directly upstream ({}), or update [[columns]] to name {s}.{t} and restart the \
                 proxy",
                rename_back((s, t), (cs, ct), *schema_exists)
            ),
            Drift::ColumnRenamed {
                configured: (s, t),
                column,
                now,
                ..
            } => format!(
                "protected table {s}.{t}, whose protected column {column} was renamed directly \
                 upstream to {now}; the proxy's configuration does not match, so the table is \
                 refused until it does: rename the column back directly upstream (ALTER TABLE \
                 {s}.{t} RENAME COLUMN {now} TO {column}), or update [[columns]] to name \
                 {s}.{t}.{now} and restart the proxy"
            ),
        }
    }
}

/// The DDL that gives relation `now` the name `configured` again; `schema_exists`: whether
/// the configured schema exists (else the schema was renamed: rename it back).
pub(crate) fn rename_back(
    now: (&str, &str),
    configured: (&str, &str),
    schema_exists: bool,
) -> String {
    let ((s, t), (cs, ct)) = (now, configured);
    let rename = (t != ct).then(|| format!("ALTER TABLE {s}.{t} RENAME TO {ct}"));
    let relocate = match (s == cs, schema_exists) {
        (true, _) => None,
        (false, true) => Some(format!("ALTER TABLE {s}.{ct} SET SCHEMA {cs}")),
        (false, false) => Some(format!("ALTER SCHEMA {s} RENAME TO {cs}")),
    };
    rename
        .into_iter()
        .chain(relocate)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Remembered {
    /// Nothing remembered yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The remembered OIDs with the configured `(schema, table)` each was found as.
    pub fn oids(&self) -> impl Iterator<Item = (u32, &str, &str)> {
        self.by_oid
            .iter()
            .map(|(o, k)| (*o, k.configured.0.as_str(), k.configured.1.as_str()))
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.by_oid.is_empty()
    }

    /// The drift of the remembered OIDs, given the attributes a load found (of the configured
    /// tables by name and of the remembered OIDs) and which schemas exist.
    pub fn drift(&self, tables: &[TableRow], schema_exists: &dyn Fn(&str) -> bool) -> Vec<Drift> {
        let mut out = Vec::new();
        for (oid, s, t, cols) in tables {
            let Some(known) = self.by_oid.get(oid) else {
                continue;
            };
            let (cs, ct) = &known.configured;
            if cs != s || ct != t {
                out.push(Drift::Moved {
                    oid: *oid,
                    configured: known.configured.clone(),
                    now: (s.clone(), t.clone()),
                    schema_exists: schema_exists(cs),
                });
                continue;
            }
            for (attnum, column) in &known.columns {
                let now = cols.iter().find(|(n, _)| n == attnum).map(|(_, name)| name);
                if let Some(now) = now.filter(|now| *now != column) {
                    out.push(Drift::ColumnRenamed {
                        oid: *oid,
                        configured: known.configured.clone(),
                        column: column.clone(),
                        now: now.clone(),
                    });
                }
            }
        }
        out
    }

    /// Learns from a successful load: OIDs of configured tables found by name (an OID
    /// remembered already keeps what it was first found as), the attnums of their protected
    /// columns; forgets OIDs the load did not find and attnums that no longer exist.
    pub fn learn(&mut self, tables: &[TableRow], schema: &ProtectedSchema) {
        self.by_oid
            .retain(|oid, _| tables.iter().any(|(o, ..)| o == oid));
        for (oid, s, t, cols) in tables {
            if let Some(k) = self.by_oid.get_mut(oid) {
                k.columns
                    .retain(|attnum, _| cols.iter().any(|(n, _)| n == attnum));
            }
            let Some(protected) = schema.table(s, t) else {
                continue;
            };
            if schema.alias_of(s, t).is_some() {
                continue;
            }
            let known = self.by_oid.entry(*oid).or_insert_with(|| Known {
                configured: (s.clone(), t.clone()),
                columns: BTreeMap::new(),
            });
            if known.configured.0 != *s || known.configured.1 != *t {
                continue;
            }
            for (attnum, name) in cols {
                if protected.contains_key(name) {
                    let taken = known.columns.values().any(|c| c == name);
                    if !taken {
                        known.columns.insert(*attnum, name.clone());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::ProtectedColumn;
    use pgseal_crypto::value::LogicalType;
    use pgseal_crypto::ColumnId;

    fn schema() -> ProtectedSchema {
        ProtectedSchema::from_columns(["public.rn.email", "public.rn.ssn"].map(|c| {
            ProtectedColumn {
                id: ColumnId::parse(c).unwrap(),
                ty: LogicalType::Text,
                keyring: "k".into(),
                index: None,
            }
        }))
    }

    fn row(oid: u32, s: &str, t: &str, cols: &[(i16, &str)]) -> TableRow {
        (
            oid,
            s.into(),
            t.into(),
            cols.iter().map(|(n, c)| (*n, (*c).to_owned())).collect(),
        )
    }

    fn all(_: &str) -> bool {
        true
    }

    #[test]
    fn a_rename_is_drift_until_renamed_back() {
        let mut m = Remembered::new();
        let first = [row(
            10,
            "public",
            "rn",
            &[(1, "id"), (2, "email"), (3, "ssn")],
        )];
        assert!(m.drift(&first, &all).is_empty());
        m.learn(&first, &schema());
        assert_eq!(m.oids().collect::<Vec<_>>(), [(10, "public", "rn")]);

        let moved = [row(
            10,
            "other",
            "rn2",
            &[(1, "id"), (2, "email"), (3, "ssn")],
        )];
        let d = m.drift(&moved, &all);
        assert_eq!(
            d,
            [Drift::Moved {
                oid: 10,
                configured: ("public".into(), "rn".into()),
                now: ("other".into(), "rn2".into()),
                schema_exists: true,
            }]
        );
        assert_eq!(d[0].now(), ("other", "rn2"));
        let why = d[0].why();
        assert!(why.contains("configured table public.rn"), "{why}");
        assert!(why.contains("[[columns]] to name other.rn2"), "{why}");
        assert!(
            why.contains(
                "ALTER TABLE other.rn2 RENAME TO rn; ALTER TABLE other.rn SET SCHEMA public"
            ),
            "{why}"
        );
        // Learning from the moved table changes nothing: it is still remembered as public.rn.
        m.learn(&moved, &schema());
        assert_eq!(m.drift(&moved, &all).len(), 1);
        assert!(m.drift(&first, &all).is_empty());
    }

    #[test]
    fn a_renamed_protected_column_is_drift() {
        let mut m = Remembered::new();
        m.learn(
            &[row(
                10,
                "public",
                "rn",
                &[(1, "id"), (2, "email"), (3, "ssn")],
            )],
            &schema(),
        );
        let renamed = [row(10, "public", "rn", &[(1, "id"), (2, "e2"), (3, "ssn")])];
        let d = m.drift(&renamed, &all);
        assert_eq!(
            d,
            [Drift::ColumnRenamed {
                oid: 10,
                configured: ("public".into(), "rn".into()),
                column: "email".into(),
                now: "e2".into(),
            }]
        );
        assert!(
            d[0].why().contains("RENAME COLUMN e2 TO email"),
            "{}",
            d[0].why()
        );
        // A new column of the configured name does not hide the renamed one.
        let readded = [row(
            10,
            "public",
            "rn",
            &[(1, "id"), (2, "e2"), (3, "ssn"), (4, "email")],
        )];
        m.learn(&readded, &schema());
        assert_eq!(m.drift(&readded, &all).len(), 1);
        // Dropped (the attnum is gone): the old column no longer matters.
        let dropped = [row(
            10,
            "public",
            "rn",
            &[(1, "id"), (3, "ssn"), (4, "email")],
        )];
        m.learn(&dropped, &schema());
        assert!(m.drift(&dropped, &all).is_empty());
        // The id column is not protected: renaming it is no drift.
        let plain = [row(
            10,
            "public",
            "rn",
            &[(1, "ident"), (3, "ssn"), (4, "email")],
        )];
        assert!(m.drift(&plain, &all).is_empty());
    }

    #[test]
    fn dropped_tables_are_forgotten_and_a_new_table_is_learnt() {
        let mut m = Remembered::new();
        m.learn(&[row(10, "public", "rn", &[(2, "email")])], &schema());
        // Dropped and created again: a new OID under the configured name.
        let again = [row(11, "public", "rn", &[(1, "email")])];
        assert!(m.drift(&again, &all).is_empty());
        m.learn(&again, &schema());
        assert_eq!(m.oids().collect::<Vec<_>>(), [(11, "public", "rn")]);
        // Renamed, and a new table created under the configured name: the old OID drifts.
        let both = [
            row(11, "public", "rn_old", &[(1, "email")]),
            row(12, "public", "rn", &[(1, "email")]),
        ];
        let d = m.drift(&both, &all);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].oid(), 11);
        m.learn(&both, &schema());
        assert_eq!(m.oids().count(), 2);
        assert_eq!(m.drift(&both, &all).len(), 1);
    }

    #[test]
    fn a_renamed_schema_is_renamed_back() {
        let mut m = Remembered::new();
        m.learn(&[row(10, "public", "rn", &[(2, "email")])], &schema());
        let d = m.drift(&[row(10, "x", "rn", &[(2, "email")])], &|s| s != "public");
        assert!(
            d[0].why().contains("(ALTER SCHEMA x RENAME TO public)"),
            "{}",
            d[0].why()
        );
    }

    #[test]
    fn fixes_for_each_kind_of_move() {
        let p = ("public", "p");
        assert_eq!(
            rename_back(("public", "p2"), p, true),
            "ALTER TABLE public.p2 RENAME TO p"
        );
        assert_eq!(
            rename_back(("x", "p"), p, true),
            "ALTER TABLE x.p SET SCHEMA public"
        );
        assert_eq!(
            rename_back(("x", "p"), p, false),
            "ALTER SCHEMA x RENAME TO public"
        );
        assert_eq!(
            rename_back(("x", "p2"), p, true),
            "ALTER TABLE x.p2 RENAME TO p; ALTER TABLE x.p SET SCHEMA public"
        );
    }
}
