//! Statement dispatch: which statements are analysed, which are refused, which pass.

use sqlparser::ast::{CopySource, Statement};

use super::ctx::Ctx;
use super::mention;
use super::refusal::Refusal;

/// What kind of statement was analysed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatementKind {
    Dml,
    Ddl,
}

impl Ctx<'_> {
    /// Analyses and rewrites one statement in place.
    pub(crate) fn statement(&mut self, st: &mut Statement) -> Result<StatementKind, Refusal> {
        match st {
            Statement::Query(q) => self.query(q, None).map(|_| StatementKind::Dml),
            Statement::Insert(i) => self.insert(i).map(|_| StatementKind::Dml),
            Statement::Update(u) => self.update(u).map(|_| StatementKind::Dml),
            Statement::Delete(d) => self.delete(d).map(|_| StatementKind::Dml),
            Statement::CreateTable(ct) => self.create_table(ct).map(|_| StatementKind::Ddl),
            Statement::AlterTable(at) => self.alter_table(at).map(|_| StatementKind::Ddl),
            Statement::CreateIndex(ci) => self.create_index(ci).map(|_| StatementKind::Ddl),
            // Statements that carry no values of protected columns.
            Statement::Drop { .. }
            | Statement::Truncate(_)
            | Statement::Analyze(_)
            | Statement::Grant(_)
            | Statement::Revoke(_)
            | Statement::Comment { .. }
            | Statement::Lock(_)
            | Statement::Vacuum(_) => Ok(StatementKind::Ddl),
            // DECLARE c CURSOR FOR <query> (psycopg's named cursors): analyse the query.
            Statement::Declare { stmts, .. } => {
                for d in stmts.iter_mut() {
                    match (&mut d.for_query, &d.assignment) {
                        (Some(q), None) => {
                            self.query(q, None)?;
                        }
                        (None, None) => {}
                        _ => {
                            let text = d.to_string();
                            if mention::any_word(&text, |w| self.schema.is_table_name(w)) {
                                return Err(Refusal::unsupported_statement(
                                    &first_table(self, &text),
                                    "this DECLARE",
                                ));
                            }
                        }
                    }
                }
                Ok(StatementKind::Dml)
            }
            // EXPLAIN [ANALYZE] runs (or plans) the inner statement: rewrite it the same way.
            Statement::Explain { statement, .. } => self.statement(statement),
            Statement::Copy { source, .. } => {
                match source {
                    CopySource::Table { table_name, .. } => {
                        if let Some((s, t)) = self.resolve_table(table_name)? {
                            if self.schema.table(&s, &t).is_some() {
                                return Err(Refusal::unsupported_statement(
                                    &format!("{s}.{t}"),
                                    "COPY",
                                ));
                            }
                        }
                    }
                    CopySource::Query(q) => {
                        let text = q.to_string();
                        if mention::any_word(&text, |w| self.schema.is_table_name(w)) {
                            return Err(Refusal::unsupported_statement(
                                &first_table(self, &text),
                                "COPY (query)",
                            ));
                        }
                    }
                }
                Ok(StatementKind::Dml)
            }
            other => {
                let text = other.to_string();
                if mention::any_word(&text, |w| self.schema.is_table_name(w)) {
                    return Err(Refusal::unsupported_statement(
                        &first_table(self, &text),
                        "this kind of statement",
                    ));
                }
                Ok(StatementKind::Dml)
            }
        }
    }
}

fn first_table(ctx: &Ctx<'_>, text: &str) -> String {
    ctx.schema
        .all_tables()
        .find(|(_, t)| mention::any_word(text, |w| w == *t))
        .map(|(s, t)| format!("{s}.{t}"))
        .unwrap_or_default()
}
