//! What `migrate` checks before it touches a column, and the refusals: a table or column that
//! does not exist, a partitioned or inheritance table, a column already in the target form, a
//! type the configured logical type cannot read, a foreign key on the column (either end),
//! views, rules, policies, triggers or generated columns that use it, a default or identity.

use pgseal_crypto::value::LogicalType;

use super::ddl::ColumnPlan;
use super::state::{Direction, Names};
use super::MigrateError;
use crate::rewrite::schema::cell_check::CellCheck;
use crate::rewrite::ProtectedColumn;
use crate::upstream::simple_query::{quote_literal, SimpleClient};

/// `bytea`'s type OID.
const BYTEA_OID: u32 = 17;

/// What the catalog says about one column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The table's OID, relkind, and whether it takes part in inheritance or partitioning.
    pub table: Option<(u32, char, bool)>,
    /// The column's attnum, type OID, type as printed, NOT NULL, default, identity or
    /// generated.
    pub column: Option<ColumnFacts>,
    /// Foreign keys on the column (either end).
    pub foreign_keys: Option<String>,
    /// Views, rules, policies, other triggers and generated columns that use the column.
    pub dependents: Option<String>,
    /// Whether the column's stored-cell constraint exists.
    pub cell_check: bool,
}

/// The column's own facts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnFacts {
    /// attnum.
    pub attnum: i16,
    /// Type OID.
    pub type_oid: u32,
    /// `format_type`.
    pub type_name: String,
    /// NOT NULL.
    pub not_null: bool,
    /// A default, identity or generation expression.
    pub has_default: bool,
}

fn facts_sql(col: &ProtectedColumn) -> String {
    let cell = CellCheck::of(col);
    format!(
        "SELECT c.oid, c.relkind, c.relispartition OR EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid OR i.inhparent = c.oid), \
           a.attnum, a.atttypid, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, \
           a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '', \
           (SELECT string_agg(con.conname || ' on ' || con.conrelid::regclass::text, ', ') FROM pg_catalog.pg_constraint con \
              WHERE con.contype = 'f' AND ((con.conrelid = c.oid AND a.attnum = ANY (con.conkey)) OR (con.confrelid = c.oid AND a.attnum = ANY (con.confkey)))), \
           (SELECT string_agg(DISTINCT d.what, ', ') FROM ( \
              SELECT 'view or rule ' || r.ev_class::regclass::text AS what FROM pg_catalog.pg_depend dep \
                JOIN pg_catalog.pg_rewrite r ON dep.classid = 'pg_catalog.pg_rewrite'::regclass AND dep.objid = r.oid \
                WHERE dep.refclassid = 'pg_catalog.pg_class'::regclass AND dep.refobjid = c.oid AND dep.refobjsubid = a.attnum AND r.ev_class <> c.oid \
              UNION ALL SELECT 'policy ' || p.polname FROM pg_catalog.pg_depend dep \
                JOIN pg_catalog.pg_policy p ON dep.classid = 'pg_catalog.pg_policy'::regclass AND dep.objid = p.oid \
                WHERE dep.refobjid = c.oid AND dep.refobjsubid = a.attnum \
              UNION ALL SELECT 'trigger ' || t.tgname FROM pg_catalog.pg_depend dep \
                JOIN pg_catalog.pg_trigger t ON dep.classid = 'pg_catalog.pg_trigger'::regclass AND dep.objid = t.oid \
                WHERE dep.refobjid = c.oid AND dep.refobjsubid = a.attnum AND t.tgname NOT LIKE 'pgseal\\_migrate\\_%' \
              UNION ALL SELECT 'generated column ' || g.attname FROM pg_catalog.pg_depend dep \
                JOIN pg_catalog.pg_attrdef ad ON dep.classid = 'pg_catalog.pg_attrdef'::regclass AND dep.objid = ad.oid \
                JOIN pg_catalog.pg_attribute g ON g.attrelid = ad.adrelid AND g.attnum = ad.adnum \
                WHERE dep.refobjid = c.oid AND dep.refobjsubid = a.attnum AND ad.adnum <> a.attnum) d), \
           EXISTS (SELECT 1 FROM pg_catalog.pg_constraint con WHERE con.conrelid = c.oid AND con.conname = {cell}) \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = {column} AND a.attnum > 0 AND NOT a.attisdropped \
         WHERE n.nspname = {schema} AND c.relname = {table} AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
        cell = quote_literal(cell.name()),
        column = quote_literal(col.id.column()),
        schema = quote_literal(col.id.schema()),
        table = quote_literal(col.id.table()),
    )
}

/// Reads the facts of `col`.
pub async fn facts(
    client: &mut SimpleClient,
    col: &ProtectedColumn,
) -> Result<Facts, MigrateError> {
    let rows = client
        .query(&facts_sql(col))
        .await
        .map_err(|source| MigrateError::Upstream {
            what: col.id.to_string(),
            source,
        })?;
    let Some(r) = rows.first().and_then(|r| r.first()) else {
        return Ok(Facts::default());
    };
    let f = |i: usize| r.get(i).and_then(|v| v.as_deref());
    let table = match (
        f(0).and_then(|v| v.parse().ok()),
        f(1).and_then(|v| v.chars().next()),
    ) {
        (Some(oid), Some(kind)) => Some((oid, kind, f(2) == Some("t"))),
        _ => None,
    };
    let column = match (
        f(3).and_then(|v| v.parse().ok()),
        f(4).and_then(|v| v.parse().ok()),
    ) {
        (Some(attnum), Some(type_oid)) => Some(ColumnFacts {
            attnum,
            type_oid,
            type_name: f(5).unwrap_or_default().to_owned(),
            not_null: f(6) == Some("t"),
            has_default: f(7) == Some("t"),
        }),
        _ => None,
    };
    Ok(Facts {
        table,
        column,
        foreign_keys: f(8).map(str::to_owned),
        dependents: f(9).map(str::to_owned),
        cell_check: f(10) == Some("t"),
    })
}

/// Whether a plaintext column of type `type_oid` holds values the logical type reads exactly
/// from their text form.
fn readable_as(ty: LogicalType, type_oid: u32) -> bool {
    match LogicalType::from_oid(type_oid) {
        Some(t) if t == ty => true,
        Some(t) => {
            use LogicalType::{Int2, Int4, Int8, Text, Varchar};
            matches!(
                (t, ty),
                (Text | Varchar, Text | Varchar) | (Int2, Int4 | Int8) | (Int4, Int8)
            )
        }
        None => false,
    }
}

/// The plan of one column that has no migration in progress, or the refusal.
pub fn plan(
    col: &ProtectedColumn,
    direction: Direction,
    facts: &Facts,
) -> Result<ColumnPlan, MigrateError> {
    let refuse = |why: String| Err(MigrateError::Refused(format!("{}: {why}", col.id)));
    let Some((table_oid, kind, inherits)) = facts.table else {
        return refuse("no such table upstream".into());
    };
    if kind != 'r' {
        return refuse(format!(
            "not an ordinary table (relkind {kind:?}); partitioned tables, views and foreign tables are not migrated online"
        ));
    }
    if inherits {
        return refuse(
            "a partition, an inheritance parent or an inheritance child: not migrated online (migrate each partition's data with the table detached, or copy it into an ordinary table)".into(),
        );
    }
    let Some(c) = &facts.column else {
        return refuse("no such column upstream".into());
    };
    if let Some(fk) = &facts.foreign_keys {
        return refuse(format!(
            "a foreign key uses the column ({fk}): an encrypted column cannot take part in a foreign key; drop the constraint first"
        ));
    }
    if let Some(d) = &facts.dependents {
        return refuse(format!(
            "used by {d}: they would keep the old column after the cut-over; drop them first and create them again afterwards"
        ));
    }
    if c.has_default {
        return refuse(
            "the column has a default, identity or generation expression: the upstream cannot compute a pgseal cell; drop it first".into(),
        );
    }
    match direction {
        Direction::Encrypt => {
            if facts.cell_check || (c.type_oid == BYTEA_OID && col.ty != LogicalType::Bytea) {
                return refuse(format!(
                    "already encrypted (type {}{}); nothing to migrate",
                    c.type_name,
                    if facts.cell_check {
                        ", stored-cell constraint present"
                    } else {
                        ""
                    }
                ));
            }
            if !readable_as(col.ty, c.type_oid) {
                return refuse(format!(
                    "type {} upstream cannot be read as the configured type {} (configure the column's own type)",
                    c.type_name, col.ty
                ));
            }
        }
        Direction::Decrypt => {
            if c.type_oid != BYTEA_OID {
                return refuse(format!(
                    "not encrypted upstream (type {}); nothing to decrypt",
                    c.type_name
                ));
            }
        }
    }
    Ok(ColumnPlan {
        col: col.clone(),
        direction,
        table_oid,
        names: Names::new(table_oid, c.attnum),
        not_null: c.not_null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgseal_crypto::ColumnId;

    fn col(ty: LogicalType) -> ProtectedColumn {
        ProtectedColumn {
            id: ColumnId::parse("public.patients.email").unwrap(),
            ty,
            keyring: "k".into(),
            index: None,
        }
    }

    fn facts(type_oid: u32) -> Facts {
        Facts {
            table: Some((100, 'r', false)),
            column: Some(ColumnFacts {
                attnum: 3,
                type_oid,
                type_name: "text".into(),
                not_null: true,
                has_default: false,
            }),
            ..Facts::default()
        }
    }

    fn refusal(r: Result<ColumnPlan, MigrateError>) -> String {
        match r {
            Err(MigrateError::Refused(m)) => m,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_plain_column_of_the_right_type_is_planned() {
        let p = plan(&col(LogicalType::Text), Direction::Encrypt, &facts(25)).unwrap();
        assert_eq!(p.names.shadow, "pgseal_shadow_3");
        assert!(p.not_null);
        assert_eq!(p.table_oid, 100);
        // varchar read as text, int4 as int8.
        assert!(plan(&col(LogicalType::Text), Direction::Encrypt, &facts(1043)).is_ok());
        assert!(plan(&col(LogicalType::Int8), Direction::Encrypt, &facts(23)).is_ok());
    }

    #[test]
    fn refusals_name_the_reason() {
        let c = col(LogicalType::Text);
        assert!(refusal(plan(&c, Direction::Encrypt, &Facts::default())).contains("no such table"));
        let mut f = facts(25);
        f.column = None;
        assert!(refusal(plan(&c, Direction::Encrypt, &f)).contains("no such column"));
        let mut f = facts(25);
        f.foreign_keys = Some("fk_x on public.visits".into());
        assert!(refusal(plan(&c, Direction::Encrypt, &f)).contains("foreign key"));
        let mut f = facts(25);
        f.dependents = Some("view or rule v".into());
        assert!(refusal(plan(&c, Direction::Encrypt, &f)).contains("view or rule v"));
        let mut f = facts(25);
        f.table = Some((100, 'p', false));
        assert!(refusal(plan(&c, Direction::Encrypt, &f)).contains("not an ordinary table"));
        let mut f = facts(25);
        f.table = Some((100, 'r', true));
        assert!(refusal(plan(&c, Direction::Encrypt, &f)).contains("inheritance"));
        let mut f = facts(25);
        f.column.as_mut().unwrap().has_default = true;
        assert!(refusal(plan(&c, Direction::Encrypt, &f)).contains("default"));
        // Already encrypted: bytea for a non-bytea type, or the stored-cell constraint.
        assert!(refusal(plan(&c, Direction::Encrypt, &facts(17))).contains("already encrypted"));
        let mut f = facts(17);
        f.cell_check = true;
        assert!(
            refusal(plan(&col(LogicalType::Bytea), Direction::Encrypt, &f))
                .contains("already encrypted")
        );
        assert!(plan(&col(LogicalType::Bytea), Direction::Encrypt, &facts(17)).is_ok());
        // A type the logical type cannot read.
        assert!(refusal(plan(
            &col(LogicalType::Int4),
            Direction::Encrypt,
            &facts(25)
        ))
        .contains("cannot be read"));
        assert!(refusal(plan(
            &col(LogicalType::Int2),
            Direction::Encrypt,
            &facts(20)
        ))
        .contains("cannot be read"));
        // Decrypting a column that is not encrypted.
        assert!(refusal(plan(&c, Direction::Decrypt, &facts(25))).contains("not encrypted"));
        assert!(plan(&c, Direction::Decrypt, &facts(17)).is_ok());
    }
}
