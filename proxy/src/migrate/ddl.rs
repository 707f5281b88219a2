//! The SQL of an online column migration, per column: what `prepare` creates, what the
//! cut-over swaps, what `cleanup` and `--abort` drop. Text only (the runner decides what is
//! still missing); every statement names the objects of [`Names`].

use crate::migrate::state::{Direction, Names, SCHEMA};
use crate::rewrite::schema::cell_check::CellCheck;
use crate::rewrite::schema::quote_ident;
use crate::rewrite::ProtectedColumn;

/// One column of a migration with what the runner learnt of it upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPlan {
    /// The configured column (its identity seals the cells, before and after the swap).
    pub col: ProtectedColumn,
    /// Which way.
    pub direction: Direction,
    /// The table's OID.
    pub table_oid: u32,
    /// The names of the migration's objects.
    pub names: Names,
    /// Whether the source column is NOT NULL (the shadow becomes NOT NULL at the cut-over).
    pub not_null: bool,
}

impl ColumnPlan {
    /// `"schema"."table"`.
    pub fn table(&self) -> String {
        format!(
            "{}.{}",
            quote_ident(self.col.id.schema()),
            quote_ident(self.col.id.table())
        )
    }

    /// The quoted column name.
    pub fn column(&self) -> String {
        quote_ident(self.col.id.column())
    }

    /// The quoted shadow column name.
    pub fn shadow(&self) -> String {
        quote_ident(&self.names.shadow)
    }

    /// The quoted old column name.
    pub fn old(&self) -> String {
        quote_ident(&self.names.old)
    }

    /// The shadow column's type: `bytea` (cells) or the logical type's PostgreSQL type.
    pub fn shadow_type(&self) -> &'static str {
        match self.direction {
            Direction::Encrypt => "bytea",
            Direction::Decrypt => self.col.ty.name(),
        }
    }

    /// The qualified, quoted trigger function.
    fn function(&self) -> String {
        format!(
            "{}.{}",
            quote_ident(SCHEMA),
            quote_ident(&self.names.function)
        )
    }

    /// SQL: a row still to fill (a source value without its shadow).
    pub fn pending_sql(&self) -> String {
        format!(
            "({} IS NULL AND {} IS NOT NULL)",
            self.shadow(),
            self.column()
        )
    }

    /// The stored-cell constraint on the shadow column while it fills (encrypt only): the
    /// column's stored-cell check, under the migration's own name until the cut-over renames it
    /// to the column's `pgseal_cell_*` name.
    pub fn shadow_check(&self) -> Option<CellCheck> {
        (self.direction == Direction::Encrypt)
            .then(|| CellCheck::of(&self.col).on_column(&self.names.shadow, &self.names.check))
    }

    /// `ALTER TABLE … ADD COLUMN IF NOT EXISTS` the shadow.
    pub fn add_shadow_sql(&self) -> String {
        format!(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
            self.table(),
            self.shadow(),
            self.shadow_type()
        )
    }

    /// The change trigger's function: a source value that changes clears its shadow, which the
    /// runner then fills again. `CREATE OR REPLACE`.
    pub fn function_sql(&self) -> String {
        format!(
            "CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS \
             $pgseal$ BEGIN NEW.{s} := NULL; RETURN NEW; END $pgseal$",
            f = self.function(),
            s = self.shadow()
        )
    }

    /// The change trigger (`CREATE OR REPLACE`): before every UPDATE that assigns the source
    /// column, whatever the value (no `WHEN (NEW.c IS DISTINCT FROM OLD.c)`: values that
    /// compare equal can differ — `1.5`/`1.50`, `0`/`-0`, a case-insensitive collation — and
    /// the shadow must be the new one's form). An INSERT writes no shadow (NULL: to fill).
    pub fn trigger_sql(&self) -> String {
        format!(
            "CREATE OR REPLACE TRIGGER {trg} BEFORE UPDATE OF {c} ON {t} FOR EACH ROW \
             EXECUTE FUNCTION {f}()",
            trg = quote_ident(&self.names.trigger),
            c = self.column(),
            t = self.table(),
            f = self.function()
        )
    }

    /// The shadow's index, when the column has an equality index: the blind-index expression
    /// index (`UNIQUE` for unique columns) when encrypting, a plain (or unique) index on the
    /// values when decrypting. `CONCURRENTLY`: statements on the table go on meanwhile.
    pub fn index_sql(&self) -> Option<String> {
        let spec = self.col.index.as_ref()?;
        let unique = if spec.unique { "UNIQUE " } else { "" };
        let on = match self.direction {
            Direction::Encrypt => format!(
                "(substring({} from 1 for {}))",
                self.shadow(),
                pgseal_crypto::BLIND_INDEX_LEN
            ),
            Direction::Decrypt => format!("({})", self.shadow()),
        };
        Some(format!(
            "CREATE {unique}INDEX CONCURRENTLY IF NOT EXISTS {ix} ON {t} {on}",
            ix = quote_ident(&self.names.index),
            t = self.table()
        ))
    }

    /// Drops the shadow's index (an invalid one left by an interrupted `CONCURRENTLY`).
    pub fn drop_index_sql(&self) -> String {
        format!(
            "DROP INDEX CONCURRENTLY IF EXISTS {}.{}",
            quote_ident(self.col.id.schema()),
            quote_ident(&self.names.index)
        )
    }

    /// The cut-over's statements for this column, inside the runner's transaction that holds
    /// the table's ACCESS EXCLUSIVE lock and has filled every pending row: the shadow takes the
    /// column's name, the source becomes the old column (nullable: nobody writes it any more).
    pub fn swap_sql(&self) -> Vec<String> {
        let t = self.table();
        let mut out = Vec::new();
        if self.not_null {
            out.push(format!(
                "ALTER TABLE {t} ALTER COLUMN {} SET NOT NULL",
                self.shadow()
            ));
        }
        out.push(format!(
            "DROP TRIGGER IF EXISTS {} ON {t}",
            quote_ident(&self.names.trigger)
        ));
        out.push(format!(
            "ALTER TABLE {t} RENAME COLUMN {} TO {}",
            self.column(),
            self.old()
        ));
        out.push(format!(
            "ALTER TABLE {t} RENAME COLUMN {} TO {}",
            self.shadow(),
            self.column()
        ));
        let cell = CellCheck::of(&self.col);
        match self.direction {
            Direction::Encrypt => out.push(format!(
                "ALTER TABLE {t} RENAME CONSTRAINT {} TO {}",
                quote_ident(&self.names.check),
                quote_ident(cell.name())
            )),
            // The stored-cell constraint now sits on the old column (catalog drift would see
            // it there).
            Direction::Decrypt => out.push(format!(
                "ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {}",
                quote_ident(cell.name())
            )),
        }
        if self.not_null {
            out.push(format!(
                "ALTER TABLE {t} ALTER COLUMN {} DROP NOT NULL",
                self.old()
            ));
        }
        out
    }

    /// `cleanup`: the old column (with its indexes and constraints) and the trigger function.
    pub fn cleanup_sql(&self) -> Vec<String> {
        vec![
            format!(
                "ALTER TABLE {} DROP COLUMN IF EXISTS {}",
                self.table(),
                self.old()
            ),
            format!("DROP FUNCTION IF EXISTS {}()", self.function()),
        ]
    }

    /// `--abort` before the cut-over: trigger, shadow column (with its index and constraint)
    /// and function.
    pub fn abort_sql(&self) -> Vec<String> {
        vec![
            format!(
                "DROP TRIGGER IF EXISTS {} ON {}",
                quote_ident(&self.names.trigger),
                self.table()
            ),
            format!(
                "ALTER TABLE {} DROP COLUMN IF EXISTS {}",
                self.table(),
                self.shadow()
            ),
            format!("DROP FUNCTION IF EXISTS {}()", self.function()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::IndexSpec;
    use pgseal_crypto::value::{LogicalType, Normalisation};
    use pgseal_crypto::{ColumnId, IndexGroup};

    fn plan(direction: Direction, unique: bool) -> ColumnPlan {
        let id = ColumnId::parse("app.pat\"ients.e mail").unwrap();
        ColumnPlan {
            col: ProtectedColumn {
                id: id.clone(),
                ty: LogicalType::Text,
                keyring: "k".into(),
                index: Some(IndexSpec {
                    group: IndexGroup::of_column(&id),
                    norm: Normalisation::default(),
                    unique,
                }),
            },
            direction,
            table_oid: 16_400,
            names: Names::new(16_400, 3),
            not_null: true,
        }
    }

    #[test]
    fn encrypt_prepares_a_checked_bytea_shadow_with_a_unique_blind_index() {
        let p = plan(Direction::Encrypt, true);
        assert_eq!(
            p.add_shadow_sql(),
            "ALTER TABLE \"app\".\"pat\"\"ients\" ADD COLUMN IF NOT EXISTS \"pgseal_shadow_3\" bytea"
        );
        let check = p.shadow_check().unwrap();
        assert_eq!(check.name(), "pgseal_shadow_check_3");
        assert!(
            check.expression().starts_with("\"pgseal_shadow_3\" LIKE"),
            "{}",
            check.expression()
        );
        assert_eq!(
            p.index_sql().unwrap(),
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS \"pgseal_shadow_ix_16400_3\" ON \"app\".\"pat\"\"ients\" (substring(\"pgseal_shadow_3\" from 1 for 16))"
        );
        assert!(p.trigger_sql().contains("BEFORE UPDATE OF \"e mail\""));
        assert!(
            !p.trigger_sql().contains("WHEN"),
            "every assignment clears the shadow"
        );
        assert!(p.function_sql().contains("NEW.\"pgseal_shadow_3\" := NULL"));
        assert_eq!(
            p.pending_sql(),
            "(\"pgseal_shadow_3\" IS NULL AND \"e mail\" IS NOT NULL)"
        );
    }

    #[test]
    fn the_swap_renames_both_columns_and_the_constraint_in_order() {
        let p = plan(Direction::Encrypt, false);
        let swap = p.swap_sql();
        let pos = |needle: &str| swap.iter().position(|s| s.contains(needle)).unwrap();
        assert!(pos("SET NOT NULL") < pos("RENAME COLUMN \"e mail\" TO \"pgseal_old_3\""));
        assert!(
            pos("RENAME COLUMN \"e mail\" TO \"pgseal_old_3\"")
                < pos("RENAME COLUMN \"pgseal_shadow_3\" TO \"e mail\"")
        );
        assert!(swap[pos("RENAME CONSTRAINT")].ends_with("TO \"pgseal_cell_e mail\""));
        assert!(swap
            .last()
            .unwrap()
            .contains("\"pgseal_old_3\" DROP NOT NULL"));
        assert!(swap.iter().any(|s| s.starts_with("DROP TRIGGER")));
    }

    #[test]
    fn decrypt_uses_the_logical_type_and_drops_the_cell_constraint_at_the_swap() {
        let p = plan(Direction::Decrypt, true);
        assert!(p.add_shadow_sql().ends_with("\"pgseal_shadow_3\" text"));
        assert!(p.shadow_check().is_none());
        assert!(p.index_sql().unwrap().ends_with("(\"pgseal_shadow_3\")"));
        assert!(p
            .swap_sql()
            .iter()
            .any(|s| s.contains("DROP CONSTRAINT IF EXISTS \"pgseal_cell_e mail\"")));
        assert!(p.cleanup_sql()[0].contains("DROP COLUMN IF EXISTS \"pgseal_old_3\""));
        assert!(p.abort_sql()[1].contains("DROP COLUMN IF EXISTS \"pgseal_shadow_3\""));
        let mut plain = p;
        plain.col.index = None;
        assert_eq!(plain.index_sql(), None);
    }
}
