//! The DDL of a blind-index key rotation (docs/format.md §2.5): before it starts, every indexed
//! column of the keyring gets the rotation variant of its stored-cell constraint (it accepts
//! dual cells too) and every unique one a second UNIQUE index over the `to` generation's tag
//! (`pgseal_next_*`, the index `ON CONFLICT` names after the cut-over); after it finished, the
//! single-form constraint comes back and the second index goes. Also: recognising that index in
//! what PostgreSQL prints.

use super::cell_check::CellCheck;
use super::{quote_ident, ProtectedColumn, ProtectedSchema};
use crate::rewrite::plan::next_tag_sql;

/// PostgreSQL's longest identifier, in bytes.
const MAX_IDENTIFIER_BYTES: usize = 63;
/// Every second-tag index's name starts with this.
pub const NEXT_INDEX_PREFIX: &str = "pgseal_next_";

/// The name of `column`'s second-tag index: `pgseal_next_<table>_<column>`, cut to 63 bytes
/// with 8 hex digits of a hash of the whole when longer.
pub fn next_index_name(column: &ProtectedColumn) -> String {
    let base = format!("{}_{}", column.id.table(), column.id.column());
    let full = format!("{NEXT_INDEX_PREFIX}{base}");
    if full.len() <= MAX_IDENTIFIER_BYTES {
        return full;
    }
    let mut room = MAX_IDENTIFIER_BYTES - NEXT_INDEX_PREFIX.len() - 9;
    while !base.is_char_boundary(room) {
        room -= 1;
    }
    let hash = base.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!(
        "{NEXT_INDEX_PREFIX}{}_{hash:08x}",
        base.get(..room).unwrap_or_default()
    )
}

fn table_of(c: &ProtectedColumn) -> String {
    format!(
        "{}.{}",
        quote_ident(c.id.schema()),
        quote_ident(c.id.table())
    )
}

/// Whether `c` belongs to one of `keyrings` (all when empty) and has an equality index.
fn selected(c: &ProtectedColumn, keyrings: &[String]) -> bool {
    c.index.is_some() && (keyrings.is_empty() || keyrings.contains(&c.keyring))
}

/// The DDL to run before `pgseal-keyserver keyring rotate-index` for the columns of `keyrings`
/// (every keyring when empty). Online: the constraint is added `NOT VALID` and validated
/// separately (no long lock), the index built `CONCURRENTLY` (so the statements cannot run in
/// one transaction block; run them one by one, e.g. with `psql -f`).
pub fn prepare_ddl(schema: &ProtectedSchema, keyrings: &[String]) -> String {
    let mut out = String::from(
        "-- pgseal: prepare a blind-index key rotation (docs/keyserver.md, \"Rotating the blind-index key\").\n\
         -- Run before `pgseal-keyserver keyring rotate-index`; statements one by one (CREATE INDEX CONCURRENTLY).\n",
    );
    for c in schema.columns().filter(|c| selected(c, keyrings)) {
        let Some(t) = CellCheck::transition_of(c) else {
            continue;
        };
        let table = table_of(c);
        let name = quote_ident(t.name());
        out.push_str(&format!(
            "ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}, ADD CONSTRAINT {name} CHECK ({}) NOT VALID;\n",
            t.expression()
        ));
        out.push_str(&t.validate_sql(t.name()));
        out.push('\n');
        if c.index.as_ref().is_some_and(|ix| ix.unique) {
            out.push_str(&format!(
                "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {} ON {table} (({}));\n",
                quote_ident(&next_index_name(c)),
                next_tag_sql(&quote_ident(c.id.column()))
            ));
        }
    }
    out
}

/// The DDL to run after `pgseal-keyserver keyring rotate-index NAME --finish` (and after every
/// proxy confirmed it): the single-form constraint again, the second index dropped.
pub fn finish_ddl(schema: &ProtectedSchema, keyrings: &[String]) -> String {
    let mut out = String::from(
        "-- pgseal: after a blind-index key rotation finished: the single-cell constraint again, the second-tag index dropped.\n",
    );
    for c in schema.columns().filter(|c| selected(c, keyrings)) {
        let check = CellCheck::of(c);
        let table = table_of(c);
        let name = quote_ident(check.name());
        out.push_str(&format!(
            "ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}, ADD CONSTRAINT {name} CHECK ({}) NOT VALID;\n",
            check.expression()
        ));
        out.push_str(&check.validate_sql(check.name()));
        out.push('\n');
        if c.index.as_ref().is_some_and(|ix| ix.unique) {
            out.push_str(&format!(
                "DROP INDEX CONCURRENTLY IF EXISTS {}.{};\n",
                quote_ident(c.id.schema()),
                quote_ident(&next_index_name(c))
            ));
        }
    }
    out
}

/// Whether `expr`, an index's first key as `pg_get_indexdef(oid, 1, true)` prints it, is the
/// second-tag expression over `column` (blanks, parentheses, double quotes and letter case
/// ignored).
pub fn is_next_tag_expr(expr: &str, column: &str) -> bool {
    let squash = |s: &str| -> String {
        s.chars()
            .filter(|c| !matches!(c, '"' | '(' | ')') && !c.is_whitespace())
            .flat_map(char::to_lowercase)
            .collect()
    };
    squash(expr) == squash(&next_tag_sql(column))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::rewrite::IndexSpec;
    use pgseal_crypto::value::{LogicalType, Normalisation};
    use pgseal_crypto::{ColumnId, IndexGroup};

    fn col(table: &str, column: &str, unique: bool) -> ProtectedColumn {
        let id = ColumnId::new("public", table, column).unwrap();
        ProtectedColumn {
            index: Some(IndexSpec {
                group: IndexGroup::of_column(&id),
                norm: Normalisation::default(),
                unique,
            }),
            id,
            ty: LogicalType::Text,
            keyring: "k".into(),
        }
    }

    /// What PostgreSQL 15 prints for the index `prepare_ddl` creates (seen with
    /// `pg_get_indexdef(oid, 1, true)`).
    #[test]
    fn recognises_what_postgres_prints() {
        let printed = "(\nCASE\n    WHEN get_byte(email, 16) = 2 THEN SUBSTRING(email FROM 18 FOR 16)\n    ELSE SUBSTRING(email FROM 1 FOR 16)\nEND)";
        assert!(is_next_tag_expr(printed, "email"));
        assert!(!is_next_tag_expr(printed, "name"));
        assert!(!is_next_tag_expr("SUBSTRING(email FROM 1 FOR 16)", "email"));
        let other = printed.replace("FROM 18", "FROM 17");
        assert!(!is_next_tag_expr(&other, "email"));
    }

    #[test]
    fn names_fit_and_stay_distinct() {
        let a = next_index_name(&col(&"t".repeat(40), &"c".repeat(40), true));
        let b = next_index_name(&col(&"t".repeat(40), &format!("{}x", "c".repeat(39)), true));
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
        assert_eq!(
            next_index_name(&col("t", "email", true)),
            "pgseal_next_t_email"
        );
    }
}
