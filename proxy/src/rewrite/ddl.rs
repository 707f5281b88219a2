//! DDL for ORMs: protected columns become `bytea` with the stored-cell CHECK constraint
//! ([`CellCheck`]), indexes on them the blind-index expression; and [`schema_ddl`] for
//! converting an existing database.

use sqlparser::ast::{
    AlterColumnOperation, AlterTable, AlterTableOperation, CheckConstraint, ColumnDef,
    ColumnOption, ColumnOptionDef, CreateIndex, CreateTable, DataType, Expr, ForeignKeyConstraint,
    Ident, IndexColumn, TableConstraint,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::ctx::{col_ref, Ctx};
use super::predicate::index_prefix;
use super::refusal::Refusal;
use super::schema::cell_check::CellCheck;
use super::schema::{fold, quote_ident, ProtectedColumn, ProtectedSchema};
use super::scope::{Relation, Scope, Source};

impl Ctx<'_> {
    /// A column definition of table `(s, t)`: a protected column becomes `bytea` with the
    /// stored-cell CHECK constraint and may carry only NULL / NOT NULL; the options of other
    /// columns are checked like table constraints.
    fn protect_column_def(
        &mut self,
        s: &str,
        t: &str,
        def: &mut ColumnDef,
        scope: &Scope<'_>,
    ) -> Result<(), Refusal> {
        let Some(p) = self.schema.column(s, t, &fold(&def.name)).cloned() else {
            for o in &def.options {
                match &o.option {
                    ColumnOption::Null
                    | ColumnOption::NotNull
                    | ColumnOption::PrimaryKey(_)
                    | ColumnOption::Unique(_) => {}
                    ColumnOption::ForeignKey(fk) => {
                        self.foreign_key(s, t, std::slice::from_ref(&def.name), fk)?
                    }
                    other => self.opaque_check(&other.to_string(), scope, "a column constraint")?,
                }
            }
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
        def.data_type = DataType::Bytea;
        def.options.push(cell_check_option(&p)?);
        self.modified = true;
        Ok(())
    }

    /// A table constraint of table `(s, t)`. PRIMARY KEY, UNIQUE and FOREIGN KEY are judged by
    /// their column lists: on a protected column they cannot work (every ciphertext is
    /// different; uniqueness is the blind-index UNIQUE index's job), on other columns they pass
    /// even when they name a protected table. CHECK and anything else must not mention a
    /// protected name.
    fn table_constraint(
        &mut self,
        s: &str,
        t: &str,
        c: &TableConstraint,
        scope: &Scope<'_>,
    ) -> Result<(), Refusal> {
        match c {
            TableConstraint::PrimaryKey(pk) => self.key_columns(s, t, &pk.columns, "PRIMARY KEY", scope),
            TableConstraint::Unique(u) => self.key_columns(
                s,
                t,
                &u.columns,
                "a UNIQUE constraint (configure unique = true and CREATE UNIQUE INDEX on the column)",
                scope,
            ),
            TableConstraint::ForeignKey(fk) => self.foreign_key(s, t, &fk.columns, fk),
            other => self.opaque_check(&other.to_string(), scope, "a table constraint"),
        }
    }

    /// The columns of a PRIMARY KEY or UNIQUE constraint: none may be protected.
    fn key_columns(
        &mut self,
        s: &str,
        t: &str,
        columns: &[IndexColumn],
        what: &str,
        scope: &Scope<'_>,
    ) -> Result<(), Refusal> {
        for c in columns {
            match col_ref(&c.column.expr).as_deref() {
                Some([name]) => {
                    if let Some(p) = self.schema.column(s, t, name) {
                        return Err(Refusal::unsupported(&p.id, what));
                    }
                }
                _ => self.opaque_check(&c.to_string(), scope, "a key expression")?,
            }
        }
        Ok(())
    }

    /// `FOREIGN KEY (columns) REFERENCES table (referred)` declared on table `(s, t)`: neither
    /// side may be a protected column (randomized ciphertext never matches, and a plaintext
    /// column would be compared with ciphertext).
    fn foreign_key(
        &mut self,
        s: &str,
        t: &str,
        columns: &[Ident],
        fk: &ForeignKeyConstraint,
    ) -> Result<(), Refusal> {
        for c in columns {
            if let Some(p) = self.schema.column(s, t, &fold(c)) {
                return Err(Refusal::unsupported(&p.id, "a FOREIGN KEY"));
            }
        }
        let Some((fs, ft)) = self.resolve_table(&fk.foreign_table)? else {
            return Ok(());
        };
        if self.schema.table(&fs, &ft).is_none() {
            return Ok(());
        }
        if fk.referred_columns.is_empty() {
            return Err(Refusal::unsupported_statement(
                &format!("{fs}.{ft}"),
                "a FOREIGN KEY without a column list that references a protected table (name the referenced columns)",
            ));
        }
        for c in &fk.referred_columns {
            if let Some(p) = self.schema.column(&fs, &ft, &fold(c)) {
                return Err(Refusal::unsupported(&p.id, "a FOREIGN KEY reference"));
            }
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
            return self.unprotected_references(&s, &t, ct);
        }
        let scope = self.table_scope(&s, &t);
        for def in ct.columns.iter_mut() {
            self.protect_column_def(&s, &t, def, &scope)?;
        }
        for c in &ct.constraints {
            self.table_constraint(&s, &t, c, &scope)?;
        }
        if ct.query.is_some() || ct.like.is_some() || ct.clone.is_some() {
            return Err(Refusal::unsupported_statement(
                &format!("{s}.{t}"),
                "CREATE TABLE … AS/LIKE/CLONE",
            ));
        }
        Ok(())
    }

    /// The foreign keys of a new table without protected columns: they must not reference a
    /// protected column.
    fn unprotected_references(
        &mut self,
        s: &str,
        t: &str,
        ct: &CreateTable,
    ) -> Result<(), Refusal> {
        for def in &ct.columns {
            for o in &def.options {
                if let ColumnOption::ForeignKey(fk) = &o.option {
                    self.foreign_key(s, t, std::slice::from_ref(&def.name), fk)?;
                }
            }
        }
        for c in &ct.constraints {
            if let TableConstraint::ForeignKey(fk) = c {
                self.foreign_key(s, t, &fk.columns, fk)?;
            }
        }
        Ok(())
    }

    /// ALTER TABLE.
    pub(crate) fn alter_table(&mut self, at: &mut AlterTable) -> Result<(), Refusal> {
        let Some((s, t)) = self.resolve_table(&at.name)? else {
            return Ok(());
        };
        if self.schema.table(&s, &t).is_none() {
            for op in &at.operations {
                match op {
                    AlterTableOperation::AddConstraint {
                        constraint: TableConstraint::ForeignKey(fk),
                        ..
                    } => self.foreign_key(&s, &t, &fk.columns, fk)?,
                    AlterTableOperation::AddColumn { column_def, .. } => {
                        for o in &column_def.options {
                            if let ColumnOption::ForeignKey(fk) = &o.option {
                                self.foreign_key(
                                    &s,
                                    &t,
                                    std::slice::from_ref(&column_def.name),
                                    fk,
                                )?;
                            }
                        }
                    }
                    _ => {}
                }
            }
            return Ok(());
        }
        let scope = self.table_scope(&s, &t);
        for op in at.operations.iter_mut() {
            match op {
                AlterTableOperation::AddColumn { column_def, .. } => {
                    self.protect_column_def(&s, &t, column_def, &scope)?;
                }
                AlterTableOperation::AddConstraint { constraint, .. } => {
                    self.table_constraint(&s, &t, constraint, &scope)?;
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
        let Some((s, t)) = self.resolve_table(&ci.table_name)? else {
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

/// `CONSTRAINT "pgseal_cell_<column>" CHECK (…)`, the column option of [`CellCheck`].
fn cell_check_option(p: &ProtectedColumn) -> Result<ColumnOptionDef, Refusal> {
    let check = CellCheck::of(p);
    let expr = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&check.expression())
        .and_then(|mut parser| parser.parse_expr())
        .map_err(|_| {
            Refusal::new(
                "XX000",
                format!(
                    "pgseal: internal error: the CHECK constraint of {} does not parse",
                    p.id
                ),
            )
        })?;
    Ok(ColumnOptionDef {
        name: Some(Ident::with_quote('"', check.name())),
        option: ColumnOption::Check(CheckConstraint {
            name: None,
            expr: Box::new(expr),
            no_inherit: false,
            enforced: None,
        }),
    })
}

/// DDL converting an existing database to the configured protection (for `pgseal-proxy schema`):
/// every protected column becomes `bytea` with its stored-cell CHECK constraint, every indexed
/// one gets its expression index.
///
/// The type change cannot encrypt existing plaintext (only the proxy holds the keys), so the
/// statements are meant for empty columns: existing values are discarded (`USING NULL`), which
/// the printed header says. Migrating data means reading it first and writing it back through
/// the proxy.
pub fn schema_ddl(schema: &ProtectedSchema) -> String {
    let mut out = String::from(
        "-- pgseal: convert protected columns to bytea, create blind-index expression indexes and the CHECK constraints on stored cells.\n\
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
        out.push_str(&CellCheck::of(c).replace_sql());
        out.push('\n');
    }
    out
}
