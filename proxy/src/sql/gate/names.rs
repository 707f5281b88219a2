//! The names the gate watches for: relations that are protected (configured tables, their
//! descendants, relations tainted by them), their protected columns, and the schemas that hold
//! protected tables. Built from the catalog snapshot's schema once per catalog generation.

use std::collections::BTreeSet;

use crate::rewrite::ProtectedSchema;

/// Protected names, lower case.
#[derive(Debug, Clone, Default)]
pub struct Names {
    relations: BTreeSet<String>,
    columns: BTreeSet<String>,
    schemas: BTreeSet<String>,
}

impl Names {
    /// The names of `schema` (tables, descendant aliases, tainted relations, columns).
    pub fn of(schema: &ProtectedSchema) -> Self {
        let mut n = Names::default();
        for t in schema.lower_table_names() {
            n.relations.insert(t.clone());
        }
        for (s, t) in schema.all_tables() {
            n.relations.insert(t.to_lowercase());
            n.schemas.insert(s.to_lowercase());
        }
        for (s, t) in schema.tainted_relations().map(|(k, _)| k) {
            n.relations.insert(t.to_lowercase());
            n.schemas.insert(s.to_lowercase());
        }
        for c in schema.columns() {
            n.columns.insert(c.id.column().to_lowercase());
            n.schemas.insert(c.id.schema().to_lowercase());
        }
        n
    }

    /// Whether nothing is protected.
    pub fn is_empty(&self) -> bool {
        self.relations.is_empty()
    }

    /// Whether `ident` (as PostgreSQL decoded it) may name a protected relation. Compared
    /// ignoring case: a quoted `"Patients"` is another relation to the server, but treating it
    /// as protected only costs an analysis.
    pub fn is_relation(&self, ident: &str) -> bool {
        self.relations.contains(&ident.to_lowercase())
    }

    /// Whether `ident` may name a protected column.
    pub fn is_column(&self, ident: &str) -> bool {
        self.columns.contains(&ident.to_lowercase())
    }

    /// Whether `ident` names a schema holding a protected table.
    pub fn is_schema(&self, ident: &str) -> bool {
        self.schemas.contains(&ident.to_lowercase())
    }

    /// The protected relation names (lower case).
    pub fn relations(&self) -> impl Iterator<Item = &str> {
        self.relations.iter().map(String::as_str)
    }

    /// The first protected relation name found in `text` as a case-insensitive substring.
    pub fn relation_in_text(&self, text: &str) -> Option<&str> {
        let lower = text.to_lowercase();
        self.relations().find(|r| lower.contains(r))
    }

    /// A set with the given relations (tests).
    #[cfg(test)]
    pub fn for_tests(relations: &[&str], columns: &[&str], schemas: &[&str]) -> Self {
        Names {
            relations: relations.iter().map(|s| s.to_string()).collect(),
            columns: columns.iter().map(|s| s.to_string()).collect(),
            schemas: schemas.iter().map(|s| s.to_string()).collect(),
        }
    }
}
