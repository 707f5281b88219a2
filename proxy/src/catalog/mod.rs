//! What the upstream database's catalog says about tables: which tables exist (so unqualified
//! names resolve through `search_path` as PostgreSQL resolves them) and which `(table OID,
//! attnum)` pairs are protected columns (so result columns described by RowDescription can be
//! decrypted).
//!
//! The encryption layer sees only [`CatalogSource`]. A [`CatalogSnapshot`] is immutable; a
//! source swaps in a new one after a refresh. Refreshes happen at start-up, after DDL passes
//! through the proxy, and when a RowDescription names a table OID the snapshot does not know
//! (a dropped and recreated table), and periodically (see [`upstream`]).
//!
//! # Descendants and dependent relations
//! Partitions and inheritance children (recursively) of a configured table are *descendants*:
//! their OIDs map to the root configured table's protected columns, matched by column name
//! (attnums differ after dropped columns or `ATTACH PARTITION`), with the root's column
//! identity (rows PostgreSQL routes into a partition were sealed under the root's identity).
//! The analyser sees them through [`CatalogSnapshot::schema`], where each descendant is an
//! alias of its root. Views, materialized views and other relations whose rewrite rules
//! depend (directly or through other views) on a protected table or a descendant are
//! *tainted*: statements naming them are refused and result columns from them are never
//! handed over. Descendants that are ambiguous (children of two protected roots, configured
//! tables that are also descendants, temporary children) are tainted too.
//!
//! [`UpstreamCatalog`] is the source the proxy runs with (its own thread and upstream
//! connection); [`StaticCatalog`] serves a fixed snapshot for tests. [`verify`] inspects the
//! configured columns for `pgseal-proxy check` and `pgseal-proxy schema`; [`dependents`] lists what
//! else reaches the protected tables (descendants, views, functions) for `check`.

pub mod connection;
pub mod dependents;
pub mod drift;
pub mod load;
pub mod migrations;
pub mod upstream;
pub mod verify;

pub use connection::CatalogConnector;
pub use upstream::UpstreamCatalog;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::rewrite::{ProtectedColumn, ProtectedSchema, TableResolver};

/// A catalog problem (upstream unreachable, query failed). Messages carry no data values.
#[derive(Debug, Clone, thiserror::Error)]
#[error("pgseal: catalog lookup failed: {0}")]
pub struct CatalogError(pub String);

/// One table as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Protected columns of this table by attnum.
    pub protected: HashMap<i16, ProtectedColumn>,
    /// Columns of an online migration's that no client sees (the shadow column being filled,
    /// the old column after the cut-over): dropped from RowDescription and DataRow.
    pub hidden: BTreeSet<i16>,
    /// The names of those columns (a column added since the last load is hidden by its name
    /// until a load knows its attnum).
    pub hidden_names: BTreeSet<String>,
}

/// A partition or inheritance child of configured tables, as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descendant {
    /// The descendant's OID.
    pub oid: u32,
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub table: String,
    /// Whether it is a temporary table.
    pub temporary: bool,
    /// The configured tables it descends from (normally exactly one).
    pub roots: Vec<(String, String)>,
    /// Its non-dropped columns `(attnum, name)`.
    pub columns: Vec<(i16, String)>,
}

/// A relation whose rewrite rules depend on a protected table (a view, a materialized view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependentRelation {
    /// Its OID.
    pub oid: u32,
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// `pg_class.relkind` (`v`, `m`, …).
    pub relkind: char,
    /// A configured table it depends on.
    pub over: (String, String),
}

/// An immutable view of the catalog.
#[derive(Debug, Clone, Default)]
pub struct CatalogSnapshot {
    /// Every (schema, table) that exists (relations of any kind a query can name).
    tables: BTreeSet<(String, String)>,
    /// The names of those relations, in any schema.
    names: HashSet<String>,
    /// Tables by OID (at least every table holding a protected column).
    by_oid: HashMap<u32, TableInfo>,
    /// Monotonic generation, bumped by every refresh.
    generation: u64,
    /// Every schema that exists, when known (None: assume any schema exists).
    schemas: Option<BTreeSet<String>>,
    /// Tainted relations by OID: why a result column from them is not handed over.
    tainted: HashMap<u32, String>,
    /// The protected schema the analyser uses: the configured columns, descendants as aliases
    /// of their roots, tainted relations.
    effective: Arc<ProtectedSchema>,
    /// Lower-cased names of descendants and tainted relations (the pre-check's extra names).
    extra_lower_names: Vec<String>,
    /// Relations tainted because of drift done directly upstream.
    drift: Vec<drift::Drift>,
    /// Whether online column migrations changed the analysed schema (which may then be empty
    /// although columns are configured).
    migrated: bool,
}

impl CatalogSnapshot {
    /// Builds a snapshot from the existing relations and the `(oid, schema, table,
    /// [(attnum, column name)])` of tables that may hold protected columns; the protected ones
    /// are picked out with `schema`.
    pub fn new(
        generation: u64,
        relations: impl IntoIterator<Item = (String, String)>,
        tables: impl IntoIterator<Item = (u32, String, String, Vec<(i16, String)>)>,
        schema: &ProtectedSchema,
    ) -> Self {
        let mut by_oid = HashMap::new();
        for (oid, s, t, cols) in tables {
            let protected = cols
                .into_iter()
                .filter_map(|(attnum, name)| {
                    schema.column(&s, &t, &name).map(|c| (attnum, c.clone()))
                })
                .collect();
            by_oid.insert(
                oid,
                TableInfo {
                    schema: s,
                    table: t,
                    protected,
                    hidden: BTreeSet::new(),
                    hidden_names: BTreeSet::new(),
                },
            );
        }
        let tables: BTreeSet<(String, String)> = relations.into_iter().collect();
        let names = tables.iter().map(|(_, t)| t.clone()).collect();
        Self {
            tables,
            names,
            by_oid,
            generation,
            schemas: None,
            tainted: HashMap::new(),
            effective: Arc::new(schema.clone()),
            extra_lower_names: Vec::new(),
            drift: Vec::new(),
            migrated: false,
        }
    }

    /// The same snapshot, knowing the descendants of the configured tables and the relations
    /// that depend on them. `schema` is the configured schema.
    pub fn with_dependents(
        mut self,
        schema: &ProtectedSchema,
        descendants: impl IntoIterator<Item = Descendant>,
        dependents: impl IntoIterator<Item = DependentRelation>,
    ) -> Self {
        let mut effective = schema.clone();
        for d in descendants {
            let why = match d.roots.as_slice() {
                [] => continue,
                [_, _, ..] => Some(format!(
                    "an inheritance child of more than one protected table ({})",
                    d.roots
                        .iter()
                        .map(|(s, t)| format!("{s}.{t}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                [(rs, rt)] if d.temporary => Some(format!(
                    "a temporary inheritance child of protected table {rs}.{rt}"
                )),
                [(rs, rt)] if schema.table(&d.schema, &d.table).is_some() => Some(format!(
                    "configured as a protected table and also a partition or inheritance child of protected table {rs}.{rt} (configure the root table only)"
                )),
                [(rs, rt)] => {
                    let protected = d
                        .columns
                        .iter()
                        .filter_map(|(attnum, name)| {
                            schema.column(rs, rt, name).map(|c| (*attnum, c.clone()))
                        })
                        .collect();
                    effective.insert_alias(&d.schema, &d.table, rs, rt);
                    self.by_oid.insert(
                        d.oid,
                        TableInfo {
                            schema: d.schema.clone(),
                            table: d.table.clone(),
                            protected,
                            hidden: BTreeSet::new(),
                            hidden_names: BTreeSet::new(),
                        },
                    );
                    None
                }
            };
            if let Some(why) = why {
                self.taint(&mut effective, d.oid, &d.schema, &d.table, why);
            }
        }
        for v in dependents {
            let (os, ot) = &v.over;
            let why = match v.relkind {
                'v' => format!("a view over protected table {os}.{ot}"),
                'm' => format!("a materialized view over protected table {os}.{ot}"),
                _ => format!("a relation with rewrite rules over protected table {os}.{ot}"),
            };
            self.taint(&mut effective, v.oid, &v.schema, &v.name, why);
        }
        self.set_effective(schema, effective);
        self
    }

    /// The same snapshot, with the relations that drifted directly upstream tainted (see
    /// [`drift`]): statements naming them are refused, result columns from them withheld.
    /// `schema` is the configured schema.
    pub fn with_drift(mut self, schema: &ProtectedSchema, drifts: Vec<drift::Drift>) -> Self {
        if drifts.is_empty() {
            return self;
        }
        let mut effective = (*self.effective).clone();
        for d in &drifts {
            self.by_oid.remove(&d.oid);
            self.taint(&mut effective, d.oid, &d.schema, &d.name, d.why.clone());
        }
        self.drift = drifts;
        self.set_effective(schema, effective);
        self
    }

    /// The same snapshot as online column migrations ask it to be served (see
    /// [`migrations`]): columns served as plaintext for now leave the analysed schema, columns
    /// served encrypted sit at the attnum the migration's query saw, migration-owned columns
    /// are hidden from results, and tables being cut over are tainted. `schema` is the
    /// configured schema.
    pub fn with_migrations(
        mut self,
        schema: &ProtectedSchema,
        overrides: &migrations::Overrides,
    ) -> Self {
        if overrides.is_empty() {
            return self;
        }
        let mut effective = (*self.effective).clone();
        for id in &overrides.plain {
            effective.remove_column(id);
            for t in self.by_oid.values_mut() {
                t.protected.retain(|_, c| &c.id != id);
            }
        }
        for (oid, attnum, col) in &overrides.protected {
            if let Some(t) = self.by_oid.get_mut(oid) {
                t.protected.retain(|_, c| c.id != col.id);
                t.protected.insert(*attnum, col.clone());
            }
        }
        for (oid, attnum) in &overrides.hidden {
            if let Some(t) = self.by_oid.get_mut(oid) {
                t.hidden.insert(*attnum);
            }
        }
        for (oid, name) in &overrides.hidden_names {
            if let Some(t) = self.by_oid.get_mut(oid) {
                t.hidden_names.insert(name.clone());
            }
        }
        for r in &overrides.refused {
            self.by_oid.remove(&r.oid);
            self.taint(&mut effective, r.oid, &r.schema, &r.table, r.why.clone());
        }
        self.set_effective(schema, effective);
        self.migrated = true;
        self
    }

    /// The schema statements are analysed with: this snapshot's, or `configured` when the
    /// snapshot was never loaded (it knows nothing yet).
    pub fn analysed_schema<'a>(&'a self, configured: &'a ProtectedSchema) -> &'a ProtectedSchema {
        if self.effective.is_empty() && !self.migrated {
            configured
        } else {
            &self.effective
        }
    }

    /// The same snapshot with another generation (a degraded copy must not share cached plans
    /// with the snapshot it was made from).
    pub(crate) fn with_generation(mut self, generation: u64) -> Self {
        self.generation = generation;
        self
    }

    /// The OID of the known table `schema.table`.
    pub fn oid_of(&self, schema: &str, table: &str) -> Option<u32> {
        self.by_oid
            .iter()
            .find(|(_, t)| t.schema == schema && t.table == table)
            .map(|(oid, _)| *oid)
    }

    /// Whether the result column `name` from `(table_oid, attnum)` is hidden from results (an
    /// online migration's shadow or old column, by attnum or, for a column added since the
    /// last load, by its name).
    pub fn hidden_at(&self, table_oid: u32, attnum: i16, name: &str) -> bool {
        self.by_oid
            .get(&table_oid)
            .is_some_and(|t| t.hidden.contains(&attnum) || t.hidden_names.contains(name))
    }

    /// The relations tainted because of drift done directly upstream.
    pub fn drift(&self) -> &[drift::Drift] {
        &self.drift
    }

    /// Installs `effective` as the analysed schema and derives the pre-check's extra names (those
    /// beyond the configured tables of `schema`).
    fn set_effective(&mut self, schema: &ProtectedSchema, effective: ProtectedSchema) {
        let configured = schema.lower_table_names();
        self.extra_lower_names = effective
            .lower_table_names()
            .iter()
            .filter(|n| !configured.contains(*n))
            .cloned()
            .collect();
        self.effective = Arc::new(effective);
    }

    fn taint(
        &mut self,
        effective: &mut ProtectedSchema,
        oid: u32,
        schema: &str,
        name: &str,
        why: String,
    ) {
        self.tainted.insert(
            oid,
            format!("pgseal: a result column comes from relation {schema}.{name}, which is {why}; pgseal does not hand its values over (query the protected table through the proxy instead)"),
        );
        effective.insert_tainted(schema, name, why);
    }

    /// The protected schema statements are analysed with: the configured columns, descendants
    /// as aliases of their root tables, tainted relations.
    pub fn schema(&self) -> &Arc<ProtectedSchema> {
        &self.effective
    }

    /// Lower-cased names of descendants and tainted relations (beyond the configured tables).
    pub fn extra_lower_names(&self) -> &[String] {
        &self.extra_lower_names
    }

    /// Why result columns of `table_oid` must not be handed over, when it is tainted.
    pub fn tainted(&self, table_oid: u32) -> Option<&str> {
        self.tainted.get(&table_oid).map(String::as_str)
    }

    /// Whether `other` describes the same catalog (generation aside).
    pub fn same_content(&self, other: &CatalogSnapshot) -> bool {
        self.tables == other.tables
            && self.by_oid == other.by_oid
            && self.schemas == other.schemas
            && self.tainted == other.tainted
    }

    /// The same snapshot, knowing which schemas exist.
    pub fn with_schemas(mut self, schemas: impl IntoIterator<Item = String>) -> Self {
        self.schemas = Some(schemas.into_iter().collect());
        self
    }

    /// The protected column at `(table_oid, attnum)` (RowDescription fields), if any.
    pub fn protected_at(&self, table_oid: u32, attnum: i16) -> Option<&ProtectedColumn> {
        self.by_oid.get(&table_oid)?.protected.get(&attnum)
    }

    /// Whether the snapshot knows `table_oid` (a protected table, a descendant, or tainted).
    pub fn knows_oid(&self, table_oid: u32) -> bool {
        self.by_oid.contains_key(&table_oid) || self.tainted.contains_key(&table_oid)
    }

    /// The table with `table_oid`, if known.
    pub fn table(&self, table_oid: u32) -> Option<&TableInfo> {
        self.by_oid.get(&table_oid)
    }

    /// The refresh generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether a relation named `name` exists in some schema.
    pub fn has_relation_named(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Every relation a query can name, as `(schema, name)`.
    pub fn relations(&self) -> impl Iterator<Item = &(String, String)> {
        self.tables.iter()
    }

    /// Whether `(schema, table)` exists.
    pub fn has_table(&self, schema: &str, table: &str) -> bool {
        self.tables.contains(&(schema.to_owned(), table.to_owned()))
    }
}

impl TableResolver for CatalogSnapshot {
    fn schema_elsewhere(&self, table: &str, except: &str) -> Option<String> {
        if !self.has_relation_named(table) {
            return None;
        }
        self.tables
            .iter()
            .find(|(s, t)| t == table && s != except)
            .map(|(s, _)| s.clone())
    }

    fn resolve(&self, name_parts: &[String], search_path: &[String]) -> Option<(String, String)> {
        match name_parts {
            [table] => std::iter::once("pg_catalog")
                .chain(search_path.iter().map(String::as_str))
                .find(|s| self.has_table(s, table))
                .map(|s| (s.to_owned(), table.clone())),
            [schema, table] | [_, schema, table] => self
                .has_table(schema, table)
                .then(|| (schema.clone(), table.clone())),
            _ => None,
        }
    }

    fn schema_exists(&self, schema: &str) -> bool {
        self.schemas.as_ref().is_none_or(|s| s.contains(schema))
    }
}

/// Where the encryption layer gets catalog snapshots.
pub trait CatalogSource: Send + Sync {
    /// The current snapshot (cheap: a read lock and an `Arc` clone).
    fn snapshot(&self) -> Arc<CatalogSnapshot>;

    /// Reloads from the upstream now and returns the new snapshot. Blocks the calling thread
    /// (bounded by a timeout); called only when a statement needs catalog facts the snapshot
    /// lacks (an unknown table OID, a table created or altered through the proxy).
    fn refresh(&self) -> Result<Arc<CatalogSnapshot>, CatalogError>;
}

/// A fixed snapshot (unit tests, benchmarks). `refresh` returns it unchanged.
pub struct StaticCatalog(pub Arc<CatalogSnapshot>);

impl CatalogSource for StaticCatalog {
    fn snapshot(&self) -> Arc<CatalogSnapshot> {
        self.0.clone()
    }
    fn refresh(&self) -> Result<Arc<CatalogSnapshot>, CatalogError> {
        Ok(self.0.clone())
    }
}
