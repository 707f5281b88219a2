//! INSERT (VALUES, ON CONFLICT, RETURNING), UPDATE and DELETE.

use sqlparser::ast::{
    AssignmentTarget, ConflictTarget, Delete, Expr, FromTable, Insert, OnConflictAction, OnInsert,
    TableObject, Update, UpdateTableFromKind,
};

use super::ctx::{name_parts, Ctx};
use super::operand::{is_default, operand, Operand};
use super::plan::{IndexPiece, Slot, UpstreamParam};
use super::refusal::Refusal;
use super::schema::{fold, ProtectedColumn};
use super::scope::{ColKind, Relation, Scope, Source};

impl Ctx<'_> {
    /// A value stored into a protected column: literal → Value slot, `$n` → Value parameter,
    /// NULL / DEFAULT unchanged; `same_column_ok` also accepts a reference to the same column
    /// (`SET col = EXCLUDED.col`).
    pub(super) fn store_value(
        &mut self,
        col: &ProtectedColumn,
        e: &mut Expr,
        scope: &Scope<'_>,
        same_column_ok: bool,
    ) -> Result<(), Refusal> {
        if is_default(e) {
            return Ok(());
        }
        if same_column_ok {
            if let Some(p) = self.protected_ref(e, scope)? {
                if p.id == col.id {
                    return Ok(());
                }
                return Err(Refusal::unsupported(
                    &col.id,
                    &format!("assigning the value of protected column {}", p.id),
                ));
            }
        }
        match operand(e) {
            Some(Operand::Null) => Ok(()),
            Some(Operand::Literal(s)) => {
                *e = self.slot(Slot::Value {
                    column: col.id.clone(),
                    literal_text: s,
                });
                Ok(())
            }
            Some(Operand::Param(n)) => {
                *e = self.param(UpstreamParam::Value {
                    param: n,
                    column: col.id.clone(),
                });
                Ok(())
            }
            None => Err(Refusal::unsupported(
                &col.id,
                "storing a computed expression or another column (only literals, parameters, NULL and DEFAULT)",
            )),
        }
    }

    fn assignments(
        &mut self,
        assignments: &mut [sqlparser::ast::Assignment],
        target: &Relation,
        scope: &Scope<'_>,
        same_column_ok: bool,
    ) -> Result<(), Refusal> {
        for a in assignments.iter_mut() {
            let names: Vec<String> = match &a.target {
                AssignmentTarget::ColumnName(n) => vec![name_parts(n)
                    .and_then(|p| p.last().cloned())
                    .unwrap_or_default()],
                AssignmentTarget::Tuple(ns) => ns
                    .iter()
                    .map(|n| {
                        name_parts(n)
                            .and_then(|p| p.last().cloned())
                            .unwrap_or_default()
                    })
                    .collect(),
            };
            let protected: Vec<ProtectedColumn> = names
                .iter()
                .filter_map(|n| {
                    target.columns.iter().find_map(|c| match &c.kind {
                        ColKind::Protected(p) if c.name.as_deref() == Some(n.as_str()) => {
                            Some((**p).clone())
                        }
                        _ => None,
                    })
                })
                .collect();
            match (protected.as_slice(), &a.target) {
                ([], _) => {
                    self.forbid_ref(&a.value, scope, "assigning to a plaintext column", false)?;
                    self.general(&mut a.value, scope)?;
                }
                ([p], AssignmentTarget::ColumnName(_)) => {
                    self.store_value(p, &mut a.value, scope, same_column_ok)?;
                }
                ([p, ..], _) => {
                    return Err(Refusal::unsupported(
                        &p.id,
                        "a multi-column SET (a, b) = (…)",
                    ));
                }
            }
        }
        Ok(())
    }

    /// INSERT.
    pub(crate) fn insert(&mut self, ins: &mut Insert) -> Result<(), Refusal> {
        let TableObject::TableName(name) = &ins.table else {
            return self.opaque_check(
                &ins.to_string(),
                &Scope::default(),
                "INSERT into a table function",
            );
        };
        let (s, t) = self.resolve_table(name)?.unwrap_or_default();
        let table_rel = Relation::table(self.schema, &s, &t);
        let mut scope = Scope::default();
        let binding = ins
            .table_alias
            .as_ref()
            .map(|a| fold(&a.alias))
            .unwrap_or_else(|| t.clone());
        scope.sources.push(Source {
            binding,
            schema: Some(s.clone()),
            rel: table_rel.clone(),
        });
        let targets: Vec<Option<ProtectedColumn>> = ins
            .columns
            .iter()
            .map(|c| {
                let col = name_parts(c)
                    .and_then(|p| p.last().cloned())
                    .unwrap_or_default();
                self.schema.column(&s, &t, &col).cloned()
            })
            .collect();
        let table_protected = table_rel.first_protected().cloned();
        if let Some(p) = &table_protected {
            if ins.columns.is_empty() && ins.source.is_some() {
                return Err(Refusal::unsupported(
                    &p.id,
                    "INSERT without a column list (name the columns)",
                ));
            }
        }
        if !ins.assignments.is_empty() {
            self.opaque_check(&ins.to_string(), &scope, "INSERT … SET")?;
        }
        if let Some(src) = &mut ins.source {
            let simple_values = src.with.is_none()
                && src.order_by.is_none()
                && src.limit_clause.is_none()
                && matches!(src.body.as_ref(), sqlparser::ast::SetExpr::Values(_));
            if simple_values {
                if let sqlparser::ast::SetExpr::Values(v) = src.body.as_mut() {
                    let empty = Scope::default();
                    for row in v.rows.iter_mut() {
                        for (i, x) in row.content.iter_mut().enumerate() {
                            match targets.get(i).cloned().flatten() {
                                Some(col) => self.store_value(&col, x, &empty, false)?,
                                None => {
                                    self.forbid_ref(x, &empty, "INSERT", false)?;
                                    self.general(x, &empty)?;
                                }
                            }
                        }
                    }
                }
            } else if !self.insert_from_values(src, &targets)? {
                if let Some(p) = targets.iter().flatten().next() {
                    return Err(Refusal::unsupported(
                        &p.id,
                        "INSERT … SELECT into a protected column",
                    ));
                }
                let rel = self.query(src, None)?;
                if let Some(p) = rel.first_protected() {
                    return Err(Refusal::unsupported(
                        &p.id,
                        "INSERT … SELECT of a protected column",
                    ));
                }
            }
        }
        match &mut ins.on {
            None => {}
            Some(OnInsert::OnConflict(oc)) => {
                if let Some(ConflictTarget::Columns { columns, predicate }) =
                    &mut oc.conflict_target
                {
                    for c in columns.iter_mut() {
                        if let Some(p) = self.schema.column(&s, &t, &fold(c)).cloned() {
                            match &p.index {
                                Some(ix) if ix.unique => {
                                    // A raw fragment: sqlparser's AST holds only identifiers
                                    // here, while PostgreSQL accepts `((expression))`; its
                                    // expression depends on the live form of the cells (after
                                    // a blind-index rotation's cut-over, the index of the
                                    // second tag).
                                    *c = self.index_piece(IndexPiece::Conflict {
                                        col: c.to_string(),
                                        column: p.id.clone(),
                                    });
                                }
                                _ => {
                                    return Err(Refusal::unsupported(
                                        &p.id,
                                        "ON CONFLICT (the column has no unique equality index)",
                                    ))
                                }
                            }
                        }
                    }
                    if let Some(pred) = predicate {
                        self.predicate(pred, &scope)?;
                    }
                }
                if let OnConflictAction::DoUpdate(du) = &mut oc.action {
                    let mut up_scope = Scope {
                        sources: scope.sources.clone(),
                        ..Scope::default()
                    };
                    up_scope.sources.push(Source {
                        binding: "excluded".to_owned(),
                        schema: None,
                        rel: table_rel.clone(),
                    });
                    self.assignments(&mut du.assignments, &table_rel, &up_scope, true)?;
                    if let Some(sel) = &mut du.selection {
                        self.predicate(sel, &up_scope)?;
                    }
                }
            }
            Some(other) => {
                self.opaque_check(&other.to_string(), &scope, "ON DUPLICATE KEY UPDATE")?;
            }
        }
        if let Some(r) = &mut ins.returning {
            self.projection(r, &scope)?;
        }
        Ok(())
    }

    /// UPDATE.
    pub(crate) fn update(&mut self, up: &mut Update) -> Result<(), Refusal> {
        let mut scope = Scope::default();
        self.add_from_item(&mut up.table, &mut scope)?;
        let target = scope
            .sources
            .first()
            .map(|s| s.rel.clone())
            .unwrap_or_default();
        match &mut up.from {
            Some(UpdateTableFromKind::BeforeSet(v)) | Some(UpdateTableFromKind::AfterSet(v)) => {
                for twj in v.iter_mut() {
                    self.add_from_item(twj, &mut scope)?;
                }
            }
            None => {}
        }
        self.assignments(&mut up.assignments, &target, &scope, false)?;
        if let Some(w) = &mut up.selection {
            self.predicate(w, &scope)?;
        }
        if let Some(r) = &mut up.returning {
            self.projection(r, &scope)?;
        }
        let mut rest = String::new();
        for o in &up.order_by {
            rest.push_str(&format!(" {o}"));
        }
        if let Some(l) = &up.limit {
            rest.push_str(&format!(" {l}"));
        }
        if !rest.is_empty() {
            self.opaque_check(&rest, &scope, "UPDATE … ORDER BY/LIMIT")?;
        }
        Ok(())
    }

    /// DELETE.
    pub(crate) fn delete(&mut self, del: &mut Delete) -> Result<(), Refusal> {
        let mut scope = Scope::default();
        match &mut del.from {
            FromTable::WithFromKeyword(v) | FromTable::WithoutKeyword(v) => {
                for twj in v.iter_mut() {
                    self.add_from_item(twj, &mut scope)?;
                }
            }
        }
        if let Some(u) = &mut del.using {
            for twj in u.iter_mut() {
                self.add_from_item(twj, &mut scope)?;
            }
        }
        if let Some(w) = &mut del.selection {
            self.predicate(w, &scope)?;
        }
        if let Some(r) = &mut del.returning {
            self.projection(r, &scope)?;
        }
        let mut rest = String::new();
        for t in &del.tables {
            rest.push_str(&format!(" {t}"));
        }
        for o in &del.order_by {
            rest.push_str(&format!(" {o}"));
        }
        if let Some(l) = &del.limit {
            rest.push_str(&format!(" {l}"));
        }
        if !rest.is_empty() {
            self.opaque_check(&rest, &scope, "DELETE … ORDER BY/LIMIT")?;
        }
        Ok(())
    }
}
