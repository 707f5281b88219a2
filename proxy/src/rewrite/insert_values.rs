//! `INSERT INTO t (cols) SELECT <columns of v> FROM (VALUES (…), (…)) AS v(c1, …) [ORDER BY c]`:
//! the bulk-insert form ORMs generate (SQLAlchemy 2's "insertmanyvalues" with a sentinel
//! column that keeps RETURNING in row order).
//!
//! It stores the VALUES cells exactly as `INSERT … VALUES` would, so it is rewritten the same
//! way: every cell that flows into a protected column becomes an encrypted value, and the
//! SELECT item that carries it loses its cast (`p0::VARCHAR` → `p0`: the cell is `bytea` now).
//! Anything beyond this shape (a WHERE, a join, an expression over a VALUES column, a VALUES
//! column feeding a protected and another column, ORDER BY on a protected one) is not this
//! form, and the caller refuses it as `INSERT … SELECT`.

use sqlparser::ast::{
    Expr, Ident, OrderByKind, Query, Select, SelectItem, SetExpr, TableFactor, TableWithJoins,
};

use super::ctx::{col_ref, Ctx};
use super::refusal::Refusal;
use super::schema::{fold, ProtectedColumn};
use super::scope::Scope;

/// Where each SELECT item of the bulk-insert form reads from: the index of a VALUES column.
struct Shape {
    /// For each SELECT item (= each target column), the VALUES column it reads.
    sources: Vec<usize>,
    /// The VALUES columns of the ORDER BY.
    ordered: Vec<usize>,
    /// The VALUES column names (as written).
    names: Vec<Ident>,
}

/// The column of a derived-table alias an expression names, through casts and parentheses.
fn alias_column(e: &Expr, alias: &str, columns: &[String]) -> Option<usize> {
    let inner = match e {
        Expr::Cast { expr, .. } => return alias_column(expr, alias, columns),
        Expr::Nested(inner) => return alias_column(inner, alias, columns),
        other => other,
    };
    let parts = col_ref(inner)?;
    let name = match parts.as_slice() {
        [c] => c,
        [a, c] if a == alias => c,
        _ => return None,
    };
    columns.iter().position(|c| c == name)
}

/// Whether the query is `SELECT … FROM (VALUES …) AS v(…)` with nothing else but an ORDER BY,
/// and how its items map to VALUES columns.
fn shape(src: &Query, targets: usize) -> Option<Shape> {
    if src.with.is_some()
        || src.limit_clause.is_some()
        || src.fetch.is_some()
        || !src.locks.is_empty()
        || src.for_clause.is_some()
        || src.settings.is_some()
        || src.format_clause.is_some()
        || !src.pipe_operators.is_empty()
    {
        return None;
    }
    let SetExpr::Select(select) = src.body.as_ref() else {
        return None;
    };
    let (alias, names, width) = derived_values(select)?;
    let columns: Vec<String> = names.iter().map(fold).collect();
    // Nothing but the projection and the FROM: the rendering of the whole SELECT must be just
    // that (a WHERE, GROUP BY, DISTINCT, … would show up).
    let items: Vec<String> = select.projection.iter().map(|i| i.to_string()).collect();
    let from: Vec<String> = select.from.iter().map(|f| f.to_string()).collect();
    if select.to_string() != format!("SELECT {} FROM {}", items.join(", "), from.join(", ")) {
        return None;
    }
    if select.projection.len() != targets || columns.len() != width {
        return None;
    }
    let mut sources = Vec::with_capacity(targets);
    for item in &select.projection {
        let SelectItem::UnnamedExpr(e) = item else {
            return None;
        };
        sources.push(alias_column(e, &alias, &columns)?);
    }
    let mut ordered = Vec::new();
    if let Some(ob) = &src.order_by {
        if ob.interpolate.is_some() {
            return None;
        }
        let OrderByKind::Expressions(exprs) = &ob.kind else {
            return None;
        };
        for o in exprs {
            if o.with_fill.is_some() {
                return None;
            }
            ordered.push(alias_column(&o.expr, &alias, &columns)?);
        }
    }
    Some(Shape {
        sources,
        ordered,
        names,
    })
}

/// `FROM (VALUES …) AS alias(columns)`: the folded alias, its column names and the row width.
fn derived_values(select: &Select) -> Option<(String, Vec<Ident>, usize)> {
    let [TableWithJoins { relation, joins }] = select.from.as_slice() else {
        return None;
    };
    if !joins.is_empty() {
        return None;
    }
    let TableFactor::Derived {
        lateral: false,
        subquery,
        alias: Some(alias),
        sample: None,
    } = relation
    else {
        return None;
    };
    if subquery.with.is_some()
        || subquery.order_by.is_some()
        || subquery.limit_clause.is_some()
        || subquery.fetch.is_some()
        || !subquery.locks.is_empty()
    {
        return None;
    }
    let SetExpr::Values(values) = subquery.body.as_ref() else {
        return None;
    };
    let width = values.rows.first()?.content.len();
    if values.rows.iter().any(|r| r.content.len() != width) {
        return None;
    }
    let names: Vec<Ident> = alias.columns.iter().map(|c| c.name.clone()).collect();
    Some((fold(&alias.name), names, width))
}

impl Ctx<'_> {
    /// Rewrites the bulk-insert form for `targets` (the protected column of each INSERT target,
    /// if any). `Ok(false)`: the query is not of this form (nothing was changed).
    pub(crate) fn insert_from_values(
        &mut self,
        src: &mut Query,
        targets: &[Option<ProtectedColumn>],
    ) -> Result<bool, Refusal> {
        let Some(shape) = shape(src, targets.len()) else {
            return Ok(false);
        };
        // The VALUES column behind each protected target must feed only that target and must
        // not be ordered on.
        let mut protected_of: Vec<Option<ProtectedColumn>> = Vec::new();
        for (i, col) in targets.iter().enumerate() {
            let Some(col) = col else { continue };
            let Some(&k) = shape.sources.get(i) else {
                return Ok(false);
            };
            let used = shape.sources.iter().filter(|&&s| s == k).count();
            let ordered = shape.ordered.contains(&k);
            if used != 1 || ordered {
                return Ok(false);
            }
            if protected_of.len() <= k {
                protected_of.resize(k + 1, None);
            }
            if let Some(slot) = protected_of.get_mut(k) {
                *slot = Some(col.clone());
            }
        }
        // SELECT items of protected targets: the bare VALUES column (no cast to the logical type).
        if let SetExpr::Select(select) = src.body.as_mut() {
            for (i, item) in select.projection.iter_mut().enumerate() {
                if targets.get(i).is_some_and(Option::is_some) {
                    if let (SelectItem::UnnamedExpr(e), Some(name)) =
                        (item, shape.sources.get(i).and_then(|&k| shape.names.get(k)))
                    {
                        *e = Expr::Identifier(name.clone());
                        self.modified = true;
                    }
                }
            }
            // The cells: encrypted where they feed a protected column, checked otherwise.
            let empty = Scope::default();
            if let Some(values) = values_mut(&mut select.from) {
                for row in values {
                    for (k, cell) in row.iter_mut().enumerate() {
                        match protected_of.get(k).cloned().flatten() {
                            Some(col) => self.store_value(&col, cell, &empty, false)?,
                            None => {
                                self.forbid_ref(cell, &empty, "INSERT", false)?;
                                self.general(cell, &empty)?;
                            }
                        }
                    }
                }
            }
        }
        Ok(true)
    }
}

/// The VALUES rows of `FROM (VALUES …) AS v(…)`.
fn values_mut(from: &mut [TableWithJoins]) -> Option<Vec<&mut Vec<Expr>>> {
    let TableFactor::Derived { subquery, .. } = &mut from.first_mut()?.relation else {
        return None;
    };
    let SetExpr::Values(values) = subquery.body.as_mut() else {
        return None;
    };
    Some(values.rows.iter_mut().map(|r| &mut r.content).collect())
}
