//! The description of the protected columns, and how table names resolve (search_path).

use std::collections::{BTreeMap, BTreeSet};

use pgseal_crypto::value::{LogicalType, Normalisation};
use pgseal_crypto::{ColumnId, IndexGroup};

pub mod cell_check;
pub mod rotation_ddl;

/// The equality (blind) index of a protected column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    /// Columns of one group share a blind-index key and can be joined on equality.
    pub group: IndexGroup,
    /// Normalisation applied before indexing (text types).
    pub norm: Normalisation,
    /// Whether a UNIQUE expression index exists (needed for `ON CONFLICT (col)`).
    pub unique: bool,
}

/// One protected column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedColumn {
    /// `schema.table.column` (unquoted, case-sensitive PostgreSQL names).
    pub id: ColumnId,
    /// The type the application sees.
    pub ty: LogicalType,
    /// The keyserver keyring holding the column's keys.
    pub keyring: String,
    /// The equality index, if any (equality predicates are refused without one).
    pub index: Option<IndexSpec>,
}

/// All protected columns, by (schema, table, column).
#[derive(Debug, Clone, Default)]
pub struct ProtectedSchema {
    /// schema → table → column → description.
    tables: BTreeMap<String, BTreeMap<String, BTreeMap<String, ProtectedColumn>>>,
    /// Lower-cased table names, for the cheap textual pre-check (configured tables, their
    /// descendants and tainted relations).
    lower_table_names: BTreeSet<String>,
    /// Descendants (partitions, inheritance children) that stand for a configured table:
    /// `(schema, child)` → `(schema, root)`. Their entries in `tables` are the root's columns.
    aliases: BTreeMap<(String, String), (String, String)>,
    /// Relations that must not be named at all: `(schema, name)` → why (names the protected
    /// table). Views and materialized views over protected tables, ambiguous descendants.
    tainted: BTreeMap<(String, String), String>,
    /// Folded names of the tainted relations (any schema), for the token-level check.
    tainted_names: BTreeSet<String>,
}

impl ProtectedSchema {
    /// An empty schema (every statement passes through).
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a schema from columns (a later duplicate replaces an earlier one).
    pub fn from_columns(columns: impl IntoIterator<Item = ProtectedColumn>) -> Self {
        let mut s = Self::new();
        for c in columns {
            s.insert(c);
        }
        s
    }

    /// Adds (or replaces) a protected column.
    pub fn insert(&mut self, column: ProtectedColumn) {
        self.lower_table_names
            .insert(column.id.table().to_lowercase());
        self.tables
            .entry(column.id.schema().to_owned())
            .or_default()
            .entry(column.id.table().to_owned())
            .or_default()
            .insert(column.id.column().to_owned(), column);
    }

    /// Removes a column (a column an online migration serves as plaintext for now); the table
    /// goes when it has no protected column left, and with it its name from the pre-check's
    /// names (unless another protected, descendant or tainted relation has it).
    pub fn remove_column(&mut self, id: &ColumnId) {
        let Some(tables) = self.tables.get_mut(id.schema()) else {
            return;
        };
        if let Some(cols) = tables.get_mut(id.table()) {
            cols.remove(id.column());
            if cols.is_empty() {
                tables.remove(id.table());
            }
        }
        if tables.is_empty() {
            self.tables.remove(id.schema());
        }
        let lower = id.table().to_lowercase();
        let still_named = self
            .tables
            .values()
            .flat_map(|t| t.keys())
            .chain(self.tainted.keys().map(|(_, n)| n))
            .any(|n| n.to_lowercase() == lower);
        if !still_named {
            self.lower_table_names.remove(&lower);
        }
    }

    /// Makes `(schema, child)` stand for the configured table `(root_schema, root)`: statements
    /// naming the child are analysed with the root's protected columns (and their column
    /// identities, so values are sealed and indexed exactly as through the root). Does nothing
    /// when the root has no protected columns.
    pub fn insert_alias(&mut self, schema: &str, child: &str, root_schema: &str, root: &str) {
        let Some(cols) = self.table(root_schema, root).cloned() else {
            return;
        };
        self.lower_table_names.insert(child.to_lowercase());
        self.tables
            .entry(schema.to_owned())
            .or_default()
            .insert(child.to_owned(), cols);
        self.aliases.insert(
            (schema.to_owned(), child.to_owned()),
            (root_schema.to_owned(), root.to_owned()),
        );
    }

    /// Marks `(schema, name)` as a relation no statement may name; `why` completes the refusal
    /// message ("is a view over protected table public.patients").
    pub fn insert_tainted(&mut self, schema: &str, name: &str, why: String) {
        self.lower_table_names.insert(name.to_lowercase());
        self.tainted_names.insert(name.to_owned());
        self.tainted
            .insert((schema.to_owned(), name.to_owned()), why);
    }

    /// The configured table `(schema, table)` stands for, when it is a descendant alias.
    pub fn alias_of(&self, schema: &str, table: &str) -> Option<(&str, &str)> {
        self.aliases
            .get(&(schema.to_owned(), table.to_owned()))
            .map(|(s, t)| (s.as_str(), t.as_str()))
    }

    /// Every descendant alias: `((schema, child), (root schema, root))`.
    pub fn aliases(&self) -> impl Iterator<Item = (&(String, String), &(String, String))> {
        self.aliases.iter()
    }

    /// Every tainted relation: `((schema, name), why)`.
    pub fn tainted_relations(&self) -> impl Iterator<Item = (&(String, String), &str)> {
        self.tainted.iter().map(|(k, v)| (k, v.as_str()))
    }

    /// Why `(schema, name)` must not be named, when it is tainted.
    pub fn tainted(&self, schema: &str, name: &str) -> Option<&str> {
        self.tainted
            .get(&(schema.to_owned(), name.to_owned()))
            .map(String::as_str)
    }

    /// Whether any relation is tainted.
    pub(crate) fn has_tainted(&self) -> bool {
        !self.tainted.is_empty()
    }

    /// The tainted relation named `name` (folded) in any schema, with why.
    pub(crate) fn tainted_by_name(&self, name: &str) -> Option<(&str, &str, &str)> {
        if !self.tainted_names.contains(name) {
            return None;
        }
        self.tainted
            .iter()
            .find(|((_, n), _)| n == name)
            .map(|((s, n), why)| (s.as_str(), n.as_str(), why.as_str()))
    }

    /// A protected table (configured or a descendant standing for one) or a tainted relation
    /// named `name` (folded), in any schema: `schema.name`.
    pub(crate) fn protected_relation_named(&self, name: &str) -> Option<String> {
        self.tables
            .iter()
            .find(|(_, ts)| ts.contains_key(name))
            .map(|(s, _)| format!("{s}.{name}"))
            .or_else(|| {
                self.tainted_by_name(name)
                    .map(|(s, n, _)| format!("{s}.{n}"))
            })
    }

    /// The protected column `schema.table.column`, if configured.
    pub fn column(&self, schema: &str, table: &str, column: &str) -> Option<&ProtectedColumn> {
        self.table(schema, table).and_then(|t| t.get(column))
    }

    /// The protected columns of a table (None if the table has none).
    pub fn table(&self, schema: &str, table: &str) -> Option<&BTreeMap<String, ProtectedColumn>> {
        self.tables.get(schema).and_then(|s| s.get(table))
    }

    /// Every protected column, ordered by schema, table, column (configured tables only, not
    /// descendant aliases).
    pub fn columns(&self) -> impl Iterator<Item = &ProtectedColumn> {
        self.tables()
            .filter_map(|(s, t)| self.table(s, t))
            .flat_map(|t| t.values())
    }

    /// Every configured (schema, table) with at least one protected column (not descendant
    /// aliases).
    pub fn tables(&self) -> impl Iterator<Item = (&str, &str)> {
        self.all_tables().filter(|(s, t)| {
            !self
                .aliases
                .contains_key(&((*s).to_owned(), (*t).to_owned()))
        })
    }

    /// Every (schema, table) analysed as protected: configured tables and descendant aliases.
    pub(crate) fn all_tables(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tables
            .iter()
            .flat_map(|(s, ts)| ts.keys().map(move |t| (s.as_str(), t.as_str())))
    }

    /// Whether no column is protected.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Lower-cased names of protected tables (for the textual pre-check).
    pub(crate) fn lower_table_names(&self) -> &BTreeSet<String> {
        &self.lower_table_names
    }

    /// Whether `name` (already folded) is the name of a protected table (configured or a
    /// descendant) or of a tainted relation in any schema.
    pub(crate) fn is_table_name(&self, name: &str) -> bool {
        self.tables.values().any(|ts| ts.contains_key(name)) || self.tainted_names.contains(name)
    }

    /// Whether `name` (already folded) is the name of a protected column in any table.
    pub(crate) fn is_column_name(&self, name: &str) -> bool {
        self.tables
            .values()
            .flat_map(|ts| ts.values())
            .any(|t| t.contains_key(name))
    }
}

/// Tells which schema a table name resolves to, as PostgreSQL would for the session.
pub trait TableResolver {
    /// `name_parts` are folded identifiers (unquoted ones lower-cased): `[table]`,
    /// `[schema, table]` or `[database, schema, table]`. Returns `(schema, table)` of the
    /// existing table, or None if no such table exists.
    fn resolve(&self, name_parts: &[String], search_path: &[String]) -> Option<(String, String)>;

    /// Whether `schema` exists (CREATE of an unqualified name uses the first existing schema of
    /// the search_path, like PostgreSQL). Resolvers that do not know answer true.
    fn schema_exists(&self, _schema: &str) -> bool {
        true
    }

    /// A schema other than `except` holding a relation named `table`, if the resolver knows
    /// one (the catalog snapshot does; resolvers of fixed test tables answer None).
    fn schema_elsewhere(&self, _table: &str, _except: &str) -> Option<String> {
        None
    }
}

/// A [`TableResolver`] over a fixed set of existing tables (tests, and the catalog snapshot).
#[derive(Debug, Clone, Default)]
pub struct InMemoryResolver {
    tables: BTreeSet<(String, String)>,
}

impl InMemoryResolver {
    /// A resolver knowing the given `(schema, table)` pairs.
    pub fn new<S: Into<String>, T: Into<String>>(tables: impl IntoIterator<Item = (S, T)>) -> Self {
        Self {
            tables: tables
                .into_iter()
                .map(|(s, t)| (s.into(), t.into()))
                .collect(),
        }
    }

    /// Adds an existing table.
    pub fn add(&mut self, schema: &str, table: &str) {
        self.tables.insert((schema.to_owned(), table.to_owned()));
    }

    fn has(&self, schema: &str, table: &str) -> bool {
        self.tables.contains(&(schema.to_owned(), table.to_owned()))
    }
}

impl TableResolver for InMemoryResolver {
    fn resolve(&self, name_parts: &[String], search_path: &[String]) -> Option<(String, String)> {
        match name_parts {
            [table] => std::iter::once("pg_catalog")
                .chain(search_path.iter().map(String::as_str))
                .find(|s| self.has(s, table))
                .map(|s| (s.to_owned(), table.clone())),
            [schema, table] | [_, schema, table] => self
                .has(schema, table)
                .then(|| (schema.clone(), table.clone())),
            _ => None,
        }
    }
}

/// Quotes a PostgreSQL identifier (always, doubling embedded quotes): `My "T"` becomes
/// `"My ""T"""`.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Folds an identifier as PostgreSQL does: unquoted names are lower-cased.
pub(crate) fn fold(ident: &sqlparser::ast::Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn resolver_follows_search_path_with_pg_catalog_first() {
        let r = InMemoryResolver::new([
            ("public", "t"),
            ("app", "t"),
            ("pg_catalog", "pg_class"),
            ("app", "pg_class"),
        ]);
        let pair = |a: &str, b: &str| Some((a.to_owned(), b.to_owned()));
        assert_eq!(
            r.resolve(&s(&["t"]), &s(&["app", "public"])),
            pair("app", "t")
        );
        assert_eq!(
            r.resolve(&s(&["t"]), &s(&["public", "app"])),
            pair("public", "t")
        );
        assert_eq!(r.resolve(&s(&["t"]), &s(&["other"])), None);
        assert_eq!(
            r.resolve(&s(&["pg_class"]), &s(&["app"])),
            pair("pg_catalog", "pg_class")
        );
        assert_eq!(r.resolve(&s(&["app", "t"]), &s(&[])), pair("app", "t"));
        assert_eq!(
            r.resolve(&s(&["db", "app", "t"]), &s(&[])),
            pair("app", "t")
        );
        assert_eq!(r.resolve(&s(&["nope", "t"]), &s(&["app"])), None);
    }

    #[test]
    fn fold_lowercases_only_unquoted() {
        assert_eq!(fold(&sqlparser::ast::Ident::new("Patients")), "patients");
        assert_eq!(
            fold(&sqlparser::ast::Ident::with_quote('"', "Patients")),
            "Patients"
        );
    }
}
