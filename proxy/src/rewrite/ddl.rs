//! DDL for ORMs: protected columns become `bytea`, indexes on them the blind-index expression;
//! and [`schema_ddl`] for converting an existing database.

use sqlparser::ast::{
    AlterColumnOperation, AlterTable, AlterTableOperation, ColumnDef, ColumnOption, CreateIndex,
    CreateTable, DataType, Expr,
};

use super::ctx::{col_ref, Ctx};
use super::predicate::index_prefix;
use super::refusal::Refusal;
use super::schema::{fold, ProtectedSchema};
use super::scope::{Relation, Scope, Source};

impl Ctx<'_> {
    fn protect_column_def(&mut self, s: &str, t: &str, def: &mut ColumnDef) -> Result<(), Refusal> {
        let Some(p) = self.schema.column(s, t, &fold(&def.name)).cloned() else {
            return Ok(());
        };
        for o in &def.options {
            match &o.option {
                ColumnOption::Null | ColumnOption::NotNull => {}
                other => {
                    return Err(Refusal::unsupported(
                        &p.id,
                        &format!(
                            "the column constraint {other} (declare indexes with CREATE INDEX)"
                        ),
                    ))
                }
            }
        }
        if def.data_type != DataType::Bytea {
            def.data_type = DataType::Bytea;
            self.modified = true;
        }
        Ok(())
    }

    fn table_scope(&self, s: &str, t: &str) -> Scope<'static> {
        let mut scope = Scope::default();
        scope.sources.push(Source {
            binding: t.to_owned(),
            schema: Some(s.to_owned()),
            rel: Relation::table(self.schema, s, t),
        });
        scope
    }

    /// CREATE TABLE.
    pub(crate) fn create_table(&mut self, ct: &mut CreateTable) -> Result<(), Refusal> {
        let Some((s, t)) = self.creation_target(&ct.name) else {
            return Ok(());
        };
        if self.schema.table(&s, &t).is_none() {
            if let Some(q) = &mut ct.query {
                let rel = self.query(q, None)?;
                if let Some(p) = rel.first_protected() {
                    return Err(Refusal::unsupported(&p.id, "CREATE TABLE … AS SELECT"));
                }
            }
            return Ok(());
        }
        for def in ct.columns.iter_mut() {
            self.protect_column_def(&s, &t, def)?;
        }
        let scope = self.table_scope(&s, &t);
        for c in &ct.constraints {
            self.opaque_check(&c.to_string(), &scope, "a table constraint")?;
        }
        if ct.query.is_some() || ct.like.is_some() || ct.clone.is_some() {
            return Err(Refusal::unsupported_statement(
                &format!("{s}.{t}"),
                "CREATE TABLE … AS/LIKE/CLONE",
            ));
        }
        Ok(())
    }

    /// ALTER TABLE.
    pub(crate) fn alter_table(&mut self, at: &mut AlterTable) -> Result<(), Refusal> {
        let Some((s, t)) = self.resolve_table(&at.name) else {
            return Ok(());
        };
        if self.schema.table(&s, &t).is_none() {
            return Ok(());
        }
        let scope = self.table_scope(&s, &t);
        for op in at.operations.iter_mut() {
            match op {
                AlterTableOperation::AddColumn { column_def, .. } => {
                    self.protect_column_def(&s, &t, column_def)?;
                }
                AlterTableOperation::DropColumn { .. } => {}
                AlterTableOperation::AlterColumn {
                    op: AlterColumnOperation::SetNotNull | AlterColumnOperation::DropNotNull,
                    ..
                } => {}
                other => {
                    self.opaque_check(&other.to_string(), &scope, "this ALTER TABLE operation")?
                }
            }
        }
        Ok(())
    }

    /// CREATE [UNIQUE] INDEX.
    pub(crate) fn create_index(&mut self, ci: &mut CreateIndex) -> Result<(), Refusal> {
        let Some((s, t)) = self.resolve_table(&ci.table_name) else {
            return Ok(());
        };
        if self.schema.table(&s, &t).is_none() {
            return Ok(());
        }
        let scope = self.table_scope(&s, &t);
        for c in ci.columns.iter_mut() {
            let target = match col_ref(&c.column.expr).as_deref() {
                Some([name]) => self.schema.column(&s, &t, name).cloned(),
                _ => None,
            };
            match target {
                Some(p) => {
                    if p.index.is_none() {
                        return Err(Refusal::unsupported(
                            &p.id,
                            "an index (the column has no equality index configured)",
                        ));
                    }
                    if c.operator_class.is_some() {
                        return Err(Refusal::unsupported(&p.id, "an index operator class"));
                    }
                    let col = std::mem::replace(
                        &mut c.column.expr,
                        Expr::Value(sqlparser::ast::Value::Null.into()),
                    );
                    c.column.expr = Expr::Nested(Box::new(index_prefix(col)));
                    self.modified = true;
                }
                None => self.opaque_check(&c.to_string(), &scope, "an index expression")?,
            }
        }
        if let Some(p) = &ci.predicate {
            self.opaque_check(&p.to_string(), &scope, "a partial index predicate")?;
        }
        Ok(())
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// DDL converting an existing database to the configured protection (for `pgseal-proxy schema`):
/// every protected column becomes `bytea`, every indexed one gets its expression index.
///
/// The type change cannot encrypt existing plaintext (only the proxy holds the keys), so the
/// statements are meant for empty columns: existing values are discarded (`USING NULL`), which
/// the printed header says. Migrating data means reading it first and writing it back through
/// the proxy.
pub fn schema_ddl(schema: &ProtectedSchema) -> String {
    let mut out = String::from(
        "-- pgseal: convert protected columns to bytea and create blind-index expression indexes.\n\
         -- WARNING: existing values of these columns are discarded (USING NULL); re-write them through the proxy.\n",
    );
    for c in schema.columns() {
        let table = format!(
            "{}.{}",
            quote_ident(c.id.schema()),
            quote_ident(c.id.table())
        );
        let col = quote_ident(c.id.column());
        out.push_str(&format!(
            "ALTER TABLE {table} ALTER COLUMN {col} TYPE bytea USING NULL::bytea;\n"
        ));
        if let Some(ix) = &c.index {
            let unique = if ix.unique { "UNIQUE " } else { "" };
            let name = quote_ident(&format!("{}_{}_pgseal_bidx", c.id.table(), c.id.column()));
            out.push_str(&format!(
                "CREATE {unique}INDEX IF NOT EXISTS {name} ON {table} ((substring({col} from 1 for 16)));\n"
            ));
        }
    }
    out
}
