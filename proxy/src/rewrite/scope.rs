//! Name resolution: which FROM items are visible, and whether a column reference is protected.

use super::refusal::Refusal;
use super::schema::{ProtectedColumn, ProtectedSchema};

/// What a column reference (or an output column) is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ColKind {
    /// A protected column's ciphertext (possibly through aliases, derived tables and CTEs).
    Protected(Box<ProtectedColumn>),
    /// Anything else.
    Plain,
}

/// One output column of a relation.
#[derive(Debug, Clone)]
pub(crate) struct OutCol {
    pub(crate) name: Option<String>,
    pub(crate) kind: ColKind,
}

/// The columns a FROM item provides. `opaque` = it may have further (plain) columns we do not
/// know of (base tables: only the protected columns are known).
#[derive(Debug, Clone, Default)]
pub(crate) struct Relation {
    pub(crate) columns: Vec<OutCol>,
    pub(crate) opaque: bool,
}

impl Relation {
    /// A base table: its protected columns, plus unknown plain ones.
    pub(crate) fn table(schema: &ProtectedSchema, s: &str, t: &str) -> Self {
        let columns = schema
            .table(s, t)
            .map(|cols| {
                cols.values()
                    .map(|c| OutCol {
                        name: Some(c.id.column().to_owned()),
                        kind: ColKind::Protected(Box::new(c.clone())),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            columns,
            opaque: true,
        }
    }

    /// Whether any output column is protected.
    pub(crate) fn has_protected(&self) -> bool {
        self.columns
            .iter()
            .any(|c| matches!(c.kind, ColKind::Protected(_)))
    }

    /// The first protected column.
    pub(crate) fn first_protected(&self) -> Option<&ProtectedColumn> {
        self.columns.iter().find_map(|c| match &c.kind {
            ColKind::Protected(p) => Some(p.as_ref()),
            ColKind::Plain => None,
        })
    }

    /// Applies a column alias list `AS x(a, b)`.
    pub(crate) fn rename(&mut self, names: &[String]) -> Result<(), Refusal> {
        if names.is_empty() {
            return Ok(());
        }
        if self.opaque && self.has_protected() {
            let col = self
                .first_protected()
                .map(|c| c.id.to_string())
                .unwrap_or_default();
            return Err(Refusal::unsupported(
                &col,
                "a column alias list over a relation whose column order is unknown",
            ));
        }
        for (i, n) in names.iter().enumerate() {
            if let Some(c) = self.columns.get_mut(i) {
                c.name = Some(n.clone());
            }
        }
        Ok(())
    }
}

/// A visible FROM item.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// The alias, or the table name when not aliased ("" when unreferenceable).
    pub(crate) binding: String,
    /// For a non-aliased base table, its schema (to match `schema.table.column`).
    pub(crate) schema: Option<String>,
    pub(crate) rel: Relation,
}

/// One query level's FROM items and CTEs, with the enclosing levels.
#[derive(Debug, Default)]
pub(crate) struct Scope<'a> {
    pub(crate) sources: Vec<Source>,
    pub(crate) ctes: Vec<(String, Relation)>,
    pub(crate) parent: Option<&'a Scope<'a>>,
}

/// `SELECT p FROM patients p`, `row_to_json(p)`: the whole row would be ciphertext.
pub(crate) fn whole_row(binding: &str, p: &ProtectedColumn) -> Refusal {
    Refusal::unsupported(
        &p.id,
        &format!("a whole-row reference to {binding} (name the columns)"),
    )
}

fn ambiguous(name: &str) -> Refusal {
    Refusal::new(
        super::refusal::FEATURE_NOT_SUPPORTED,
        format!(
            "pgseal: the reference to column {name} is ambiguous with a protected column; qualify it with its table"
        ),
    )
}

impl<'a> Scope<'a> {
    /// A child scope (subquery) of `parent`.
    pub(crate) fn child(parent: &'a Scope<'a>) -> Self {
        Self {
            sources: Vec::new(),
            ctes: Vec::new(),
            parent: Some(parent),
        }
    }

    /// The CTE named `name`, searching outwards.
    pub(crate) fn cte(&self, name: &str) -> Option<&Relation> {
        self.ctes
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r)
            .or_else(|| self.parent.and_then(|p| p.cte(name)))
    }

    fn protected_somewhere(&self, col: &str) -> bool {
        self.sources.iter().any(|s| {
            s.rel
                .columns
                .iter()
                .any(|c| c.name.as_deref() == Some(col) && matches!(c.kind, ColKind::Protected(_)))
        }) || self.parent.is_some_and(|p| p.protected_somewhere(col))
    }

    /// Resolves a folded column reference (`[col]`, `[rel, col]`, `[schema, rel, col]`).
    pub(crate) fn resolve(&self, parts: &[String]) -> Result<ColKind, Refusal> {
        match parts {
            [col] => self.resolve_unqualified(col),
            [rel, col] => Ok(self.resolve_qualified(None, rel, col)),
            [schema, rel, col] => Ok(self.resolve_qualified(Some(schema), rel, col)),
            _ => Ok(ColKind::Plain),
        }
    }

    fn resolve_unqualified(&self, col: &str) -> Result<ColKind, Refusal> {
        let mut protected = Vec::new();
        let mut plain = 0usize;
        let mut opaque = false;
        for s in &self.sources {
            for c in &s.rel.columns {
                if c.name.as_deref() == Some(col) {
                    match &c.kind {
                        ColKind::Protected(p) => protected.push(p),
                        ColKind::Plain => plain += 1,
                    }
                }
            }
            opaque |= s.rel.opaque;
        }
        match (protected.as_slice(), plain) {
            ([p], 0) => Ok(ColKind::Protected((*p).clone())),
            ([], 0) => {
                // No column of that name: PostgreSQL reads it as the whole row of the table
                // bound to that name.
                if let Some(p) = self
                    .sources
                    .iter()
                    .find(|s| s.binding == col)
                    .and_then(|s| s.rel.first_protected())
                {
                    return Err(whole_row(col, p));
                }
                if opaque {
                    // An unknown plain column here would shadow an outer protected one (or the
                    // whole row of an outer protected table).
                    if self.parent.is_some_and(|p| {
                        p.protected_somewhere(col) || p.protected_binding(col).is_some()
                    }) {
                        return Err(ambiguous(col));
                    }
                    Ok(ColKind::Plain)
                } else {
                    match self.parent {
                        Some(p) => p.resolve_unqualified(col),
                        None => Ok(ColKind::Plain),
                    }
                }
            }
            ([], _) => Ok(ColKind::Plain),
            _ => Err(ambiguous(col)),
        }
    }

    fn resolve_qualified(&self, schema: Option<&String>, rel: &str, col: &str) -> ColKind {
        let found = self
            .sources
            .iter()
            .find(|s| s.binding == rel && (schema.is_none() || s.schema.as_ref() == schema));
        match found {
            Some(s) => s
                .rel
                .columns
                .iter()
                .find(|c| c.name.as_deref() == Some(col))
                .map(|c| c.kind.clone())
                .unwrap_or(ColKind::Plain),
            None => match self.parent {
                Some(p) => p.resolve_qualified(schema, rel, col),
                None => ColKind::Plain,
            },
        }
    }

    /// The first protected column of the source bound to `rel` (innermost first), if any.
    pub(crate) fn protected_binding(&self, rel: &str) -> Option<&ProtectedColumn> {
        self.source(rel).and_then(|s| s.rel.first_protected())
    }

    /// The source bound to `rel` (innermost first).
    pub(crate) fn source(&self, rel: &str) -> Option<&Source> {
        self.sources
            .iter()
            .find(|s| s.binding == rel)
            .or_else(|| self.parent.and_then(|p| p.source(rel)))
    }

    /// Names under which protected columns are visible (for the textual fallback check).
    pub(crate) fn protected_names(&self, out: &mut Vec<String>) {
        for s in &self.sources {
            for c in &s.rel.columns {
                if let (Some(n), ColKind::Protected(_)) = (&c.name, &c.kind) {
                    out.push(n.clone());
                }
            }
        }
        for (_, r) in &self.ctes {
            for c in &r.columns {
                if let (Some(n), ColKind::Protected(_)) = (&c.name, &c.kind) {
                    out.push(n.clone());
                }
            }
        }
        if let Some(p) = self.parent {
            p.protected_names(out);
        }
    }
}
