//! What else in the database reaches the protected tables, for `pgseal-proxy check`: partitions
//! and inheritance children (protected like their root), views and other relations over
//! protected tables (refused), and functions whose body names a protected table (the protected
//! values they return are refused by the result check, so calling them through the proxy
//! fails), and plain relations named like a protected one (usable only by their qualified
//! name). Notes only: none of these is a configuration error.

use std::collections::BTreeSet;

use super::load::field;
use super::{CatalogError, CatalogSnapshot};
use crate::rewrite::for_each_word;
use crate::upstream::simple_query::{quote_literal, SimpleClient};

/// How much a note matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Works as configured; worth knowing.
    Info,
    /// Statements using it through the proxy are refused.
    Warning,
    /// The catalog no longer matches the configuration (drift done directly upstream): the
    /// relation is refused until the configuration matches again. `check` fails.
    Error,
}

/// One note about one relation or function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Info or warning.
    pub level: Level,
    /// `schema.name` (functions with their argument types).
    pub object: String,
    /// What it means (one line).
    pub message: String,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = match self.level {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
        };
        write!(f, "{l}: {}: {}", self.object, self.message)
    }
}

/// Notes on the descendants and tainted relations of `snapshot` (a full catalog load).
pub fn relation_notes(snapshot: &CatalogSnapshot) -> Vec<Note> {
    let schema = snapshot.schema();
    let mut notes: Vec<Note> = schema
        .aliases()
        .map(|((s, t), (rs, rt))| Note {
            level: Level::Info,
            object: format!("{s}.{t}"),
            message: format!(
                "partition or inheritance child of protected table {rs}.{rt}: its columns of \
                 that name are encrypted and decrypted like {rs}.{rt}'s"
            ),
        })
        .collect();
    let drifted = |s: &str, n: &str| {
        snapshot
            .drift()
            .iter()
            .any(|d| d.schema == s && d.name == n)
    };
    notes.extend(schema.tainted_relations().map(|((s, n), why)| Note {
        level: if drifted(s, n) {
            Level::Error
        } else {
            Level::Warning
        },
        object: format!("{s}.{n}"),
        message: format!(
            "{why}: statements naming it through the proxy are refused and its result columns \
             are not handed over"
        ),
    }));
    // Plain relations named like a protected one: reachable only by their qualified name.
    notes.extend(snapshot.relations().filter_map(|(s, n)| {
        if schema.table(s, n).is_some() || schema.tainted(s, n).is_some() {
            return None;
        }
        let protected = schema.protected_relation_named(n)?;
        Some(Note {
            level: Level::Warning,
            object: format!("{s}.{n}"),
            message: format!(
                "not protected, but named like protected {protected}: statements through the \
                 proxy must name it {s}.{n} (unqualified, the name is refused: the server's \
                 search_path could make it mean {protected})"
            ),
        })
    }));
    notes
}

/// The query for user functions (not C or internal) whose source may name one of `names`
/// (lower-cased relation names): `(schema, name, identity arguments, source)`. SQL-standard
/// bodies (`BEGIN ATOMIC`) have no source text; their definition is used instead.
fn functions_sql(names: &BTreeSet<String>) -> String {
    let patterns: Vec<String> = names
        .iter()
        .map(|n| {
            let escaped = n
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            quote_literal(&format!("%{escaped}%"))
        })
        .collect();
    format!(
        "SELECT n.nspname::text, p.proname::text, \
           pg_catalog.pg_get_function_identity_arguments(p.oid), src \
         FROM pg_catalog.pg_proc p \
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         JOIN pg_catalog.pg_language l ON l.oid = p.prolang, \
         LATERAL (SELECT CASE WHEN p.prosrc <> '' THEN p.prosrc \
                  ELSE pg_catalog.pg_get_functiondef(p.oid) END AS src) b \
         WHERE l.lanname NOT IN ('internal', 'c') \
           AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
           AND n.nspname NOT LIKE 'pg\\_%' \
           AND src ILIKE ANY (ARRAY[{}]::text[]) \
         ORDER BY 1, 2, 3",
        patterns.join(", ")
    )
}

/// Notes on functions whose body names a protected table, a descendant or a tainted relation
/// (as a word of its SQL, string literals aside: a heuristic, not an analysis).
pub async fn function_notes(
    client: &mut SimpleClient,
    snapshot: &CatalogSnapshot,
) -> Result<Vec<Note>, CatalogError> {
    let schema = snapshot.schema();
    let names: BTreeSet<String> = schema
        .tables()
        .map(|(_, t)| t.to_lowercase())
        .chain(schema.aliases().map(|((_, c), _)| c.to_lowercase()))
        .chain(
            schema
                .tainted_relations()
                .map(|((_, n), _)| n.to_lowercase()),
        )
        .collect();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let results = client
        .query(&functions_sql(&names))
        .await
        .map_err(|e| CatalogError(e.to_string()))?;
    let mut notes = Vec::new();
    for r in results.first().map(Vec::as_slice).unwrap_or_default() {
        let (s, f, args, src) = (field(r, 0)?, field(r, 1)?, field(r, 2)?, field(r, 3)?);
        let mut named = BTreeSet::new();
        for_each_word(src, |w| {
            let w = w.to_lowercase();
            if names.contains(&w) {
                named.insert(w);
            }
        });
        if named.is_empty() {
            continue;
        }
        let list: Vec<String> = named.into_iter().collect();
        notes.push(Note {
            level: Level::Warning,
            object: format!("function {s}.{f}({args})"),
            message: format!(
                "its body names protected relation(s) {}: protected values it returns are \
                 refused through the proxy (0A000); query the tables through the proxy instead",
                list.join(", ")
            ),
        });
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn function_patterns_escape_like_and_quotes() {
        let names: BTreeSet<String> = ["pat_ients".to_owned(), "o'neil%".to_owned()].into();
        let sql = functions_sql(&names);
        assert!(
            // LIKE escapes (`\%`, `\_`) inside an E'' literal (its backslashes doubled).
            sql.contains(r"E'%o''neil\\%%'"),
            "{sql}"
        );
        assert!(sql.contains(r"pat\\_ients"), "{sql}");
    }
}
