//! The CHECK constraint on a protected column's stored cells (defence in depth).
//!
//! A protected column holds only NULL or `[blind index (16 bytes), if the column has an
//! equality index] ‖ envelope` (docs/format.md, sections 1 and 3). The constraint accepts
//! exactly that shape as far as the database can tell without keys: at least the prefix and
//! the envelope overhead (format byte, key version, nonce, tag), and the known format version
//! where the envelope starts. A plaintext that slips past the proxy into the column (a bug, a
//! client connected to the database directly) then fails with SQLSTATE 23514 instead of being
//! stored. NULL passes (a CHECK is satisfied by NULL).
//!
//! The expression is one bytea `LIKE`: `col LIKE E'<P × _>\\001<32 × _>%'::bytea` (`_` is
//! any one byte, `%` any rest), i.e. byte P is 0x01 and there are at least P + 33 bytes. One
//! operator, because PostgreSQL prepares CHECK expressions again for every statement (about
//! 2 µs of CPU per function or operator in it, measured): `octet_length(c) >= 49 AND substr(c,
//! 17, 1) = '\x01'` cost twice as much per INSERT. It never raises an error of its own (a
//! short value does not match), and PostgreSQL 15 and later print it alike (`c ~~
//! '\x5f…'::bytea`).

use pgseal_crypto::envelope::{FORMAT_VERSION, OVERHEAD};
use pgseal_crypto::BLIND_INDEX_LEN;

use super::{quote_ident, ProtectedColumn};

/// PostgreSQL's longest identifier, in bytes (NAMEDATALEN - 1); longer names are truncated.
const MAX_IDENTIFIER_BYTES: usize = 63;
/// Every constraint name starts with this.
const NAME_PREFIX: &str = "pgseal_cell_";

/// The stored-cell constraint of one protected column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellCheck {
    table: String,
    column: String,
    name: String,
    prefix_len: usize,
    /// The variant in force during a blind-index key rotation (indexed columns only): it also
    /// accepts the dual form `tag ‖ 0x02 ‖ tag ‖ envelope` (docs/format.md §2.5).
    transition: bool,
}

/// How a LIKE pattern is printed (hex or escape bytea output).
type Render = dyn Fn(&[u8]) -> String;

/// Byte 16 of a dual cell.
const DUAL_MARKER: u8 = 0x02;

impl CellCheck {
    /// The constraint for `column` as configured.
    pub fn of(column: &ProtectedColumn) -> CellCheck {
        CellCheck {
            table: format!(
                "{}.{}",
                quote_ident(column.id.schema()),
                quote_ident(column.id.table())
            ),
            column: column.id.column().to_owned(),
            name: constraint_name(column.id.column()),
            prefix_len: if column.index.is_some() {
                BLIND_INDEX_LEN
            } else {
                0
            },
            transition: false,
        }
    }

    /// The variant for a blind-index key rotation: accepts single and dual cells (`None` for a
    /// column without equality index, which has no tags). Same name as [`Self::of`]: it
    /// replaces that constraint for the rotation and is replaced by it afterwards.
    pub fn transition_of(column: &ProtectedColumn) -> Option<CellCheck> {
        column.index.as_ref()?;
        Some(CellCheck {
            transition: true,
            ..Self::of(column)
        })
    }

    /// The same check on another physical column under another constraint name (an online
    /// migration's shadow column, whose constraint takes this check's name at the cut-over).
    pub fn on_column(self, column: &str, name: &str) -> CellCheck {
        CellCheck {
            column: column.to_owned(),
            name: name.to_owned(),
            ..self
        }
    }

    /// Whether this is the rotation variant.
    pub fn is_transition(&self) -> bool {
        self.transition
    }

    /// Its name: `pgseal_cell_<column>`, or for long column names a 63-byte cut of it ending
    /// in `_` and 8 hex digits of a hash of the whole column name (distinct columns keep
    /// distinct names; PostgreSQL would otherwise truncate the name silently).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shortest value accepted, in bytes.
    pub fn min_len(&self) -> usize {
        self.prefix_len + OVERHEAD
    }

    /// The bytes the stored cell must match with `LIKE`: `_` for every byte of the blind
    /// index, the format version, `_` for every other byte of the envelope's overhead, `%`.
    fn pattern(&self) -> Vec<u8> {
        let mut p = vec![b'_'; self.prefix_len];
        p.push(FORMAT_VERSION);
        p.extend(std::iter::repeat_n(b'_', OVERHEAD - 1));
        p.push(b'%');
        p
    }

    /// The pattern of a dual cell: tag, marker, tag, then as [`Self::pattern`].
    fn dual_pattern(&self) -> Vec<u8> {
        let mut p = vec![b'_'; BLIND_INDEX_LEN];
        p.push(DUAL_MARKER);
        p.extend(self.pattern());
        p
    }

    /// The patterns the constraint accepts a cell with.
    fn patterns(&self) -> Vec<Vec<u8>> {
        if self.transition {
            vec![self.pattern(), self.dual_pattern()]
        } else {
            vec![self.pattern()]
        }
    }

    /// The boolean expression, e.g. `"note" LIKE E'\\001________________________________%'::bytea`
    /// (an escape string, the same whatever `standard_conforming_strings` says; in it `\\001`
    /// is the bytea escape of the format version byte, 1). The rotation variant is two such
    /// `LIKE`s joined by `OR`.
    pub fn expression(&self) -> String {
        let like = |bytes: Vec<u8>| {
            let mut pattern = String::new();
            for b in bytes {
                match b {
                    b'_' | b'%' => pattern.push(char::from(b)),
                    other => pattern.push_str(&format!("\\\\{other:03o}")),
                }
            }
            format!("{} LIKE E'{pattern}'::bytea", quote_ident(&self.column))
        };
        self.patterns()
            .into_iter()
            .map(like)
            .collect::<Vec<_>>()
            .join(" OR ")
    }

    /// `ALTER TABLE … ADD CONSTRAINT …` (with `NOT VALID`: existing rows are not checked,
    /// only new and updated ones, until [`validate_sql`](Self::validate_sql)).
    pub fn add_sql(&self, not_valid: bool) -> String {
        format!(
            "ALTER TABLE {} ADD CONSTRAINT {} CHECK ({}){};",
            self.table,
            quote_ident(&self.name),
            self.expression(),
            if not_valid { " NOT VALID" } else { "" }
        )
    }

    /// `ALTER TABLE … DROP CONSTRAINT IF EXISTS …, ADD CONSTRAINT …`: (re)creates the
    /// constraint whether or not one of that name exists (for `schema` without a catalog).
    pub fn replace_sql(&self) -> String {
        let name = quote_ident(&self.name);
        format!(
            "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {name}, ADD CONSTRAINT {name} CHECK ({});",
            self.table,
            self.expression()
        )
    }

    /// `ALTER TABLE … DROP CONSTRAINT` of the constraint named `name` on this table.
    pub fn drop_sql(&self, name: &str) -> String {
        format!(
            "ALTER TABLE {} DROP CONSTRAINT {};",
            self.table,
            quote_ident(name)
        )
    }

    /// `ALTER TABLE … VALIDATE CONSTRAINT` of the constraint named `name` on this table.
    pub fn validate_sql(&self, name: &str) -> String {
        format!(
            "ALTER TABLE {} VALIDATE CONSTRAINT {};",
            self.table,
            quote_ident(name)
        )
    }

    /// Whether a CHECK constraint on (exactly) this column whose `pg_get_constraintdef` is
    /// `definition` is this constraint. Blanks, parentheses and double quotes are ignored
    /// (PostgreSQL adds parentheses and quotes only the names that need it); a trailing
    /// `NOT VALID` is ignored too (the caller reads `convalidated`). `NO INHERIT` or any other
    /// difference makes it another constraint.
    ///
    /// PostgreSQL prints the pattern as its `bytea_output` says: hex (`'\x5f5f…0125'`, the
    /// default) or escape (`'__…\001…%'`); both are recognised.
    pub fn matches(&self, definition: &str) -> bool {
        let definition = definition.trim_end();
        let definition = squash(definition.strip_suffix("NOT VALID").unwrap_or(definition));
        let hex = |pattern: &[u8]| -> String {
            let digits: String = pattern.iter().map(|b| format!("{b:02x}")).collect();
            format!("\\x{digits}")
        };
        let escape = |pattern: &[u8]| -> String {
            pattern
                .iter()
                .map(|b| match b {
                    b'_' | b'%' => char::from(*b).to_string(),
                    other => format!("\\{other:03o}"),
                })
                .collect()
        };
        let patterns = self.patterns();
        let renders: [&Render; 2] = [&hex, &escape];
        renders.iter().any(|render| {
            let terms: Vec<String> = patterns
                .iter()
                .map(|p| format!("{} ~~ '{}'::bytea", self.column, render(p)))
                .collect();
            definition == squash(&format!("CHECK ({})", terms.join(" OR ")))
        })
    }

    /// Whether `definition` is either variant of this column's constraint (single, or the
    /// rotation's when the column has tags).
    pub fn matches_either(&self, definition: &str) -> bool {
        self.matches(definition)
            || (self.prefix_len > 0
                && CellCheck {
                    transition: !self.transition,
                    ..self.clone()
                }
                .matches(definition))
    }
}

/// Without blanks, parentheses and double quotes; `\\` read as `\` (a literal printed with
/// `standard_conforming_strings = off`).
fn squash(s: &str) -> String {
    s.replace("\\\\", "\\")
        .chars()
        .filter(|c| !matches!(c, '"' | '(' | ')') && !c.is_whitespace())
        .collect()
}

/// See [`CellCheck::name`].
fn constraint_name(column: &str) -> String {
    let full = format!("{NAME_PREFIX}{column}");
    if full.len() <= MAX_IDENTIFIER_BYTES {
        return full;
    }
    let mut room = MAX_IDENTIFIER_BYTES - NAME_PREFIX.len() - 9;
    while !column.is_char_boundary(room) {
        room -= 1;
    }
    let head = column.get(..room).unwrap_or_default();
    format!("{NAME_PREFIX}{head}_{:08x}", fnv1a(column.as_bytes()))
}

/// 32-bit FNV-1a: short, stable across builds and platforms (the name must not change).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::IndexSpec;
    use pgseal_crypto::value::{LogicalType, Normalisation};
    use pgseal_crypto::{ColumnId, IndexGroup};

    fn col(schema: &str, table: &str, column: &str, indexed: bool) -> ProtectedColumn {
        let id = ColumnId::new(schema, table, column).unwrap();
        ProtectedColumn {
            index: indexed.then(|| IndexSpec {
                group: IndexGroup::of_column(&id),
                norm: Normalisation::default(),
                unique: false,
            }),
            id,
            ty: LogicalType::Text,
            keyring: "k".into(),
        }
    }

    /// `n` bytes `_`.
    fn any(n: usize) -> String {
        "_".repeat(n)
    }

    #[test]
    fn expression_and_statements() {
        let plain = CellCheck::of(&col("public", "p", "note", false));
        assert_eq!(plain.name(), "pgseal_cell_note");
        assert_eq!(plain.min_len(), 33);
        assert_eq!(
            plain.expression(),
            format!(r#""note" LIKE E'\\001{}%'::bytea"#, any(32))
        );
        let indexed = CellCheck::of(&col("app", "My \"T\"", "E Mail", true));
        assert_eq!(indexed.min_len(), 49);
        assert_eq!(
            indexed.add_sql(true),
            format!(
                r#"ALTER TABLE "app"."My ""T""" ADD CONSTRAINT "pgseal_cell_E Mail" CHECK ("E Mail" LIKE E'{}\\001{}%'::bytea) NOT VALID;"#,
                any(16),
                any(32)
            )
        );
        assert_eq!(
            indexed.validate_sql("x"),
            r#"ALTER TABLE "app"."My ""T""" VALIDATE CONSTRAINT "x";"#
        );
        assert_eq!(
            indexed.drop_sql("x"),
            r#"ALTER TABLE "app"."My ""T""" DROP CONSTRAINT "x";"#
        );
        assert!(indexed
            .replace_sql()
            .starts_with(r#"ALTER TABLE "app"."My ""T""" DROP CONSTRAINT IF EXISTS "pgseal_cell_E Mail", ADD CONSTRAINT "pgseal_cell_E Mail" CHECK ("E Mail" LIKE E'"#));
    }

    #[test]
    fn long_names_fit_the_identifier_limit_and_stay_distinct() {
        let a = "a".repeat(60) + "x";
        let b = "a".repeat(60) + "y";
        let (na, nb) = (constraint_name(&a), constraint_name(&b));
        assert_eq!(na.len(), 63, "{na}");
        assert_ne!(na, nb);
        assert!(na.starts_with("pgseal_cell_aaaa"), "{na}");
        // Cut on a character boundary.
        let u = "é".repeat(30);
        let nu = constraint_name(&u);
        assert!(nu.len() <= 63, "{nu}");
        assert!(nu.starts_with("pgseal_cell_éé"), "{nu}");
        // Short names are used as they are; stable hash.
        assert_eq!(constraint_name("email"), "pgseal_cell_email");
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
    }

    #[test]
    fn matches_what_postgres_prints() {
        // pg_get_constraintdef(oid) and pg_get_constraintdef(oid, true) of PostgreSQL 15, with
        // bytea_output = hex and escape, standard_conforming_strings on and off.
        let hex = |p: usize| {
            format!(
                "5f{}01{}25",
                "5f".repeat(p.saturating_sub(1)),
                "5f".repeat(32)
            )
        };
        let ix = hex(16);
        let no_ix = "01".to_owned() + &"5f".repeat(32) + "25";
        assert_eq!(ix.len(), 2 * 50);
        let c = CellCheck::of(&col("public", "t", "c", true));
        for def in [
            format!(r"CHECK ((c ~~ '\x{ix}'::bytea))"),
            format!(r"CHECK (c ~~ '\x{ix}'::bytea)"),
            format!(r"CHECK (c ~~ '\x{ix}'::bytea) NOT VALID"),
            format!(r"CHECK (c ~~ '\\x{ix}'::bytea)"),
            format!(r"CHECK (c ~~ '{}\001{}%'::bytea)", any(16), any(32)),
            format!(r"CHECK (c ~~ '{}\\001{}%'::bytea)", any(16), any(32)),
        ] {
            assert!(c.matches(&def), "{def}");
        }
        let q = CellCheck::of(&col("public", "t", "E Mail", false));
        assert!(q.matches(&format!(r#"CHECK ("E Mail" ~~ '\x{no_ix}'::bytea)"#)));
        for def in [
            // the pattern of a column without index, or none where there is one
            format!(r"CHECK (c ~~ '\x{no_ix}'::bytea)"),
            format!(r"CHECK (c ~~ '\x{}'::bytea)", ix.replacen("01", "02", 1)),
            format!(r"CHECK (c ~~ '\x{}'::bytea)", &ix[2..]),
            format!(r"CHECK (c ~~ '\x{ix}'::bytea) NO INHERIT"),
            format!(r"CHECK (c !~~ '\x{ix}'::bytea)"),
            format!(r"CHECK (d ~~ '\x{ix}'::bytea)"),
            r"CHECK (octet_length(c) >= 49 AND substr(c, 17, 1) = '\x01'::bytea)".to_owned(),
        ] {
            assert!(!c.matches(&def), "{def}");
        }
    }

    /// The rotation variant accepts dual cells as well, prints as two LIKEs, and is recognised
    /// in what PostgreSQL prints (seen with pg_get_constraintdef on PostgreSQL 15).
    #[test]
    fn the_rotation_variant() {
        let c = col("public", "t", "email", true);
        let t = CellCheck::transition_of(&c).unwrap();
        assert_eq!(t.name(), CellCheck::of(&c).name());
        assert_eq!(
            t.expression(),
            format!(
                r#""email" LIKE E'{}\\001{}%'::bytea OR "email" LIKE E'{}\\002{}\\001{}%'::bytea"#,
                any(16),
                any(32),
                any(16),
                any(16),
                any(32)
            )
        );
        let ix = "5f".repeat(16);
        let env = "5f".repeat(32);
        let printed = format!(
            r"CHECK (((email ~~ '\x{ix}01{env}25'::bytea) OR (email ~~ '\x{ix}02{ix}01{env}25'::bytea)))"
        );
        assert!(t.matches(&printed));
        assert!(!CellCheck::of(&c).matches(&printed));
        assert!(CellCheck::of(&c).matches_either(&printed));
        assert!(CellCheck::transition_of(&col("public", "t", "n", false)).is_none());
    }
}
