//! Queries: CTEs, set operations, SELECT (FROM with joins and derived tables, projection,
//! WHERE, GROUP BY, HAVING, DISTINCT, ORDER BY).

use sqlparser::ast::{
    Distinct, Expr, GroupByExpr, JoinConstraint, JoinOperator, OrderByKind, Query, Select,
    SelectItem, SelectItemQualifiedWildcardKind, SetExpr, TableAlias, TableFactor, TableWithJoins,
    Value,
};

use super::ctx::{col_ref, name_parts, Ctx};
use super::refusal::Refusal;
use super::schema::fold;
use super::scope::{ColKind, OutCol, Relation, Scope, Source};

fn alias_columns(alias: &Option<TableAlias>) -> Vec<String> {
    alias
        .as_ref()
        .map(|a| a.columns.iter().map(|c| fold(&c.name)).collect())
        .unwrap_or_default()
}

fn join_constraint(op: &mut JoinOperator) -> Option<&mut JoinConstraint> {
    match op {
        JoinOperator::Join(c)
        | JoinOperator::Inner(c)
        | JoinOperator::Left(c)
        | JoinOperator::LeftOuter(c)
        | JoinOperator::Right(c)
        | JoinOperator::RightOuter(c)
        | JoinOperator::FullOuter(c)
        | JoinOperator::CrossJoin(c)
        | JoinOperator::Semi(c)
        | JoinOperator::LeftSemi(c)
        | JoinOperator::RightSemi(c)
        | JoinOperator::Anti(c)
        | JoinOperator::LeftAnti(c)
        | JoinOperator::RightAnti(c) => Some(c),
        _ => None,
    }
}

impl Ctx<'_> {
    /// Analyses (and rewrites) a query; returns its output columns.
    pub(crate) fn query(
        &mut self,
        q: &mut Query,
        outer: Option<&Scope<'_>>,
    ) -> Result<Relation, Refusal> {
        let mut scope = match outer {
            Some(p) => Scope::child(p),
            None => Scope::default(),
        };
        if let Some(with) = &mut q.with {
            for cte in with.cte_tables.iter_mut() {
                let name = fold(&cte.alias.name);
                let mut rel = self.query(&mut cte.query, Some(&scope))?;
                let cols: Vec<String> = cte.alias.columns.iter().map(|c| fold(&c.name)).collect();
                rel.rename(&cols)?;
                scope.ctes.push((name, rel));
            }
        }
        let rel = self.set_expr(&mut q.body, &mut scope)?;
        if let Some(ob) = &mut q.order_by {
            match &mut ob.kind {
                OrderByKind::Expressions(items) => {
                    for o in items.iter_mut() {
                        self.order_or_group(&mut o.expr, &rel, &scope, "ORDER BY")?;
                    }
                }
                OrderByKind::All(_) => {
                    if let Some(p) = rel.first_protected() {
                        return Err(Refusal::unsupported(&p.id, "ORDER BY"));
                    }
                }
            }
            if let Some(i) = &ob.interpolate {
                self.opaque_check(&format!("{i:?}"), &scope, "INTERPOLATE")?;
            }
        }
        let mut rest = String::new();
        if let Some(l) = &q.limit_clause {
            rest.push_str(&l.to_string());
        }
        if let Some(f) = &q.fetch {
            rest.push_str(&format!(" {f}"));
        }
        for l in &q.locks {
            rest.push_str(&format!(" {l}"));
        }
        if let Some(f) = &q.for_clause {
            rest.push_str(&format!(" {f}"));
        }
        if let Some(s) = &q.settings {
            for x in s {
                rest.push_str(&format!(" {x}"));
            }
        }
        if let Some(f) = &q.format_clause {
            rest.push_str(&format!(" {f}"));
        }
        for p in &q.pipe_operators {
            rest.push_str(&format!(" {p}"));
        }
        if !rest.is_empty() {
            self.opaque_check(&rest, &scope, "LIMIT/FETCH/locking clause")?;
        }
        Ok(rel)
    }

    /// ORDER BY / GROUP BY items: protected columns (by name, output alias or ordinal) refused.
    fn order_or_group(
        &mut self,
        e: &mut Expr,
        rel: &Relation,
        scope: &Scope<'_>,
        what: &str,
    ) -> Result<(), Refusal> {
        if let Expr::Value(v) = e {
            if let Value::Number(n, _) = &v.value {
                let col = n
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| rel.columns.get(i));
                if let Some(OutCol {
                    kind: ColKind::Protected(p),
                    ..
                }) = col
                {
                    return Err(Refusal::unsupported(&p.id, what));
                }
                return Ok(());
            }
        }
        if let Some(parts) = col_ref(e) {
            if let [name] = parts.as_slice() {
                let out = rel
                    .columns
                    .iter()
                    .find(|c| c.name.as_deref() == Some(name.as_str()));
                if let Some(OutCol {
                    kind: ColKind::Protected(p),
                    ..
                }) = out
                {
                    return Err(Refusal::unsupported(&p.id, what));
                }
            }
        }
        self.forbid_ref(e, scope, what, false)?;
        self.general(e, scope)
    }

    fn set_expr(&mut self, body: &mut SetExpr, scope: &mut Scope<'_>) -> Result<Relation, Refusal> {
        match body {
            SetExpr::Select(s) => self.select(s, scope),
            SetExpr::Query(q) => self.query(q, Some(scope)),
            SetExpr::SetOperation {
                left, right, op, ..
            } => {
                let what = format!("{op}");
                let l = {
                    let mut child = Scope::child(scope);
                    self.set_expr(left, &mut child)?
                };
                let r = {
                    let mut child = Scope::child(scope);
                    self.set_expr(right, &mut child)?
                };
                if let Some(p) = l.first_protected().or(r.first_protected()) {
                    return Err(Refusal::unsupported(&p.id, &what));
                }
                Ok(Relation {
                    columns: l.columns,
                    opaque: true,
                })
            }
            SetExpr::Values(v) => {
                let mut width = 0;
                for row in v.rows.iter_mut() {
                    width = width.max(row.content.len());
                    for x in row.content.iter_mut() {
                        self.general(x, scope)?;
                    }
                }
                Ok(Relation {
                    columns: (0..width)
                        .map(|i| OutCol {
                            name: Some(format!("column{}", i + 1)),
                            kind: ColKind::Plain,
                        })
                        .collect(),
                    opaque: false,
                })
            }
            other => {
                self.opaque_check(&other.to_string(), scope, "a data-modifying WITH query")?;
                Ok(Relation {
                    columns: Vec::new(),
                    opaque: true,
                })
            }
        }
    }

    /// Adds the FROM items of `twj` to `scope`, analysing join conditions.
    pub(crate) fn add_from_item(
        &mut self,
        twj: &mut TableWithJoins,
        scope: &mut Scope<'_>,
    ) -> Result<(), Refusal> {
        self.table_factor(&mut twj.relation, scope)?;
        for join in twj.joins.iter_mut() {
            self.table_factor(&mut join.relation, scope)?;
            match join_constraint(&mut join.join_operator) {
                Some(JoinConstraint::On(e)) => self.predicate(e, scope)?,
                Some(JoinConstraint::Using(cols)) | Some(JoinConstraint::UsingAlias(cols, _)) => {
                    for c in cols.iter() {
                        let Some(parts) = name_parts(c) else { continue };
                        let Some(name) = parts.last() else { continue };
                        for s in &scope.sources {
                            if let Some(OutCol {
                                kind: ColKind::Protected(p),
                                ..
                            }) = s
                                .rel
                                .columns
                                .iter()
                                .find(|x| x.name.as_deref() == Some(name.as_str()))
                            {
                                return Err(Refusal::unsupported(
                                    &p.id,
                                    "JOIN … USING (write the join as ON a.col = b.col)",
                                ));
                            }
                        }
                    }
                }
                Some(JoinConstraint::Natural) => {
                    if let Some(p) = scope.sources.iter().find_map(|s| s.rel.first_protected()) {
                        return Err(Refusal::unsupported(&p.id, "NATURAL JOIN"));
                    }
                }
                Some(JoinConstraint::None) => {}
                None => {
                    let text = join.join_operator_text();
                    self.opaque_check(&text, scope, "this kind of join")?;
                }
            }
        }
        Ok(())
    }

    fn table_factor(&mut self, tf: &mut TableFactor, scope: &mut Scope<'_>) -> Result<(), Refusal> {
        let source = match tf {
            TableFactor::Table {
                name, alias, args, ..
            } if args.is_none() => {
                let parts = name_parts(name);
                let cte = match parts.as_deref() {
                    Some([single]) => scope.cte(single).cloned(),
                    _ => None,
                };
                let (rel, schema, tname) = match cte {
                    Some(rel) => (
                        rel,
                        None,
                        parts.and_then(|p| p.last().cloned()).unwrap_or_default(),
                    ),
                    None => match self.resolve_table(name)? {
                        Some((s, t)) => {
                            let rel = Relation::table(self.schema, &s, &t);
                            (rel, Some(s), t)
                        }
                        None => (
                            Relation {
                                columns: Vec::new(),
                                opaque: true,
                            },
                            None,
                            parts.and_then(|p| p.last().cloned()).unwrap_or_default(),
                        ),
                    },
                };
                let mut rel = rel;
                rel.rename(&alias_columns(alias))?;
                match alias {
                    Some(a) => Source {
                        binding: fold(&a.name),
                        schema: None,
                        rel,
                    },
                    None => Source {
                        binding: tname,
                        schema,
                        rel,
                    },
                }
            }
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                let mut rel = self.query(subquery, Some(scope))?;
                rel.rename(&alias_columns(alias))?;
                Source {
                    binding: alias.as_ref().map(|a| fold(&a.name)).unwrap_or_default(),
                    schema: None,
                    rel,
                }
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                if alias.is_some() {
                    let mut inner = Scope::child(scope);
                    self.add_from_item(table_with_joins, &mut inner)?;
                    if let Some(p) = inner.sources.iter().find_map(|s| s.rel.first_protected()) {
                        return Err(Refusal::unsupported(&p.id, "an aliased parenthesised join"));
                    }
                    Source {
                        binding: alias.as_ref().map(|a| fold(&a.name)).unwrap_or_default(),
                        schema: None,
                        rel: Relation {
                            columns: Vec::new(),
                            opaque: true,
                        },
                    }
                } else {
                    return self.add_from_item(table_with_joins, scope);
                }
            }
            other => {
                self.opaque_check(&other.to_string(), scope, "this kind of FROM item")?;
                Source {
                    binding: String::new(),
                    schema: None,
                    rel: Relation {
                        columns: Vec::new(),
                        opaque: true,
                    },
                }
            }
        };
        scope.sources.push(source);
        Ok(())
    }

    /// A SELECT list or RETURNING list: bare protected columns are allowed (decrypted later).
    pub(crate) fn projection(
        &mut self,
        items: &mut [SelectItem],
        scope: &Scope<'_>,
    ) -> Result<Relation, Refusal> {
        let mut rel = Relation::default();
        for item in items.iter_mut() {
            match item {
                SelectItem::UnnamedExpr(_) | SelectItem::ExprWithAlias { .. } => {
                    let (e, alias) = match item {
                        SelectItem::UnnamedExpr(e) => (e, None),
                        SelectItem::ExprWithAlias { expr, alias } => (expr, Some(fold(alias))),
                        _ => continue,
                    };
                    let name = alias.or_else(|| col_ref(e).and_then(|p| p.last().cloned()));
                    match self.protected_ref(e, scope)? {
                        Some(p) => rel.columns.push(OutCol {
                            name,
                            kind: ColKind::Protected(Box::new(p)),
                        }),
                        None => {
                            self.general(e, scope)?;
                            rel.columns.push(OutCol {
                                name,
                                kind: ColKind::Plain,
                            });
                        }
                    }
                }
                SelectItem::Wildcard(_) => {
                    for s in &scope.sources {
                        rel.columns.extend(s.rel.columns.iter().cloned());
                        rel.opaque |= s.rel.opaque;
                    }
                }
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(n),
                    _,
                ) => {
                    let binding = name_parts(n)
                        .and_then(|p| p.last().cloned())
                        .unwrap_or_default();
                    match scope.source(&binding) {
                        Some(s) => {
                            rel.columns.extend(s.rel.columns.iter().cloned());
                            rel.opaque |= s.rel.opaque;
                        }
                        None => rel.opaque = true,
                    }
                }
                other => {
                    self.opaque_check(&other.to_string(), scope, "this select item")?;
                    rel.opaque = true;
                }
            }
        }
        Ok(rel)
    }

    fn select(&mut self, s: &mut Select, scope: &mut Scope<'_>) -> Result<Relation, Refusal> {
        for twj in s.from.iter_mut() {
            self.add_from_item(twj, scope)?;
        }
        let rel = self.projection(&mut s.projection, scope)?;
        if let Some(w) = &mut s.selection {
            self.predicate(w, scope)?;
        }
        match &mut s.group_by {
            GroupByExpr::Expressions(exprs, _) => {
                for e in exprs.iter_mut() {
                    self.order_or_group(e, &rel, scope, "GROUP BY")?;
                }
            }
            GroupByExpr::All(_) => {
                if let Some(p) = rel.first_protected() {
                    return Err(Refusal::unsupported(&p.id, "GROUP BY ALL"));
                }
            }
        }
        if let Some(h) = &mut s.having {
            self.predicate(h, scope)?;
        }
        match &mut s.distinct {
            Some(Distinct::Distinct) => {
                if let Some(p) = rel.first_protected() {
                    return Err(Refusal::unsupported(&p.id, "SELECT DISTINCT"));
                }
            }
            Some(Distinct::On(exprs)) => {
                for e in exprs.iter_mut() {
                    self.order_or_group(e, &rel, scope, "DISTINCT ON")?;
                }
            }
            Some(Distinct::All) | None => {}
        }
        if s.into.is_some() {
            if let Some(p) = rel.first_protected() {
                return Err(Refusal::unsupported(&p.id, "SELECT INTO"));
            }
        }
        let mut rest = String::new();
        for w in &s.named_window {
            rest.push_str(&format!(" {w}"));
        }
        if let Some(q) = &s.qualify {
            rest.push_str(&format!(" {q}"));
        }
        if let Some(q) = &s.prewhere {
            rest.push_str(&format!(" {q}"));
        }
        for x in &s.lateral_views {
            rest.push_str(&format!(" {x}"));
        }
        for x in s.cluster_by.iter().chain(&s.distribute_by) {
            rest.push_str(&format!(" {x}"));
        }
        for x in &s.sort_by {
            rest.push_str(&format!(" {x}"));
        }
        for x in &s.connect_by {
            rest.push_str(&format!(" {x}"));
        }
        if !rest.is_empty() {
            self.opaque_check(&rest, scope, "a WINDOW/QUALIFY clause")?;
        }
        Ok(rel)
    }
}

/// Display of a join's operator (for the fallback check of exotic joins).
trait JoinText {
    fn join_operator_text(&self) -> String;
}

impl JoinText for sqlparser::ast::Join {
    fn join_operator_text(&self) -> String {
        self.to_string()
    }
}
