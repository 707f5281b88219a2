//! What the upstream database's catalog says about tables: which tables exist (so unqualified
//! names resolve through `search_path` as PostgreSQL resolves them) and which `(table OID,
//! attnum)` pairs are protected columns (so result columns described by RowDescription can be
//! decrypted).
//!
//! The encryption layer sees only [`CatalogSource`]. A [`CatalogSnapshot`] is immutable; a
//! source swaps in a new one after a refresh. Refreshes happen at start-up, after DDL passes
//! through the proxy, and when a RowDescription names a table OID the snapshot does not know
//! (a dropped and recreated table).
//!
//! [`UpstreamCatalog`] is the source the proxy runs with (its own thread and upstream
//! connection); [`StaticCatalog`] serves a fixed snapshot for tests. [`verify`] inspects the
//! configured columns for `pgseal-proxy check` and `pgseal-proxy schema`.

pub mod connection;
pub mod load;
pub mod upstream;
pub mod verify;

pub use connection::CatalogConnector;
pub use upstream::UpstreamCatalog;

use std::collections::{BTreeSet, HashMap};
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
}

/// An immutable view of the catalog.
#[derive(Debug, Clone, Default)]
pub struct CatalogSnapshot {
    /// Every (schema, table) that exists (relations of any kind a query can name).
    tables: BTreeSet<(String, String)>,
    /// Tables by OID (at least every table holding a protected column).
    by_oid: HashMap<u32, TableInfo>,
    /// Monotonic generation, bumped by every refresh.
    generation: u64,
    /// Every schema that exists, when known (None: assume any schema exists).
    schemas: Option<BTreeSet<String>>,
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
                },
            );
        }
        Self {
            tables: relations.into_iter().collect(),
            by_oid,
            generation,
            schemas: None,
        }
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

    /// Whether the snapshot knows `table_oid`.
    pub fn knows_oid(&self, table_oid: u32) -> bool {
        self.by_oid.contains_key(&table_oid)
    }

    /// The table with `table_oid`, if known.
    pub fn table(&self, table_oid: u32) -> Option<&TableInfo> {
        self.by_oid.get(&table_oid)
    }

    /// The refresh generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether `(schema, table)` exists.
    pub fn has_table(&self, schema: &str, table: &str) -> bool {
        self.tables.contains(&(schema.to_owned(), table.to_owned()))
    }
}

impl TableResolver for CatalogSnapshot {
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
