//! Expressions outside the supported predicate forms: a protected column may appear only where
//! explicitly allowed; everything else that touches one is refused.

use sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, InTarget, UnaryOperator,
};

use super::ctx::{name_parts, Ctx};
use super::refusal::Refusal;
use super::scope::{whole_row, Scope};

fn binop_is_comparison(op: &BinaryOperator) -> bool {
    matches!(
        op,
        BinaryOperator::Lt | BinaryOperator::LtEq | BinaryOperator::Gt | BinaryOperator::GtEq
    )
}

/// The main operand of special-syntax functions, to name the column in refusals.
fn primary_operand(e: &Expr) -> Option<(&Expr, &'static str)> {
    Some(match e {
        Expr::Substring { expr, .. } => (expr, "function substring"),
        Expr::Trim { expr, .. } => (expr, "function trim"),
        Expr::Extract { expr, .. } => (expr, "function extract"),
        Expr::Ceil { expr, .. } => (expr, "function ceil"),
        Expr::Floor { expr, .. } => (expr, "function floor"),
        Expr::Position { r#in, .. } => (r#in, "function position"),
        Expr::Overlay { expr, .. } => (expr, "function overlay"),
        Expr::Collate { expr, .. } => (expr, "COLLATE"),
        Expr::AtTimeZone { timestamp, .. } => (timestamp, "AT TIME ZONE"),
        Expr::Convert { expr, .. } => (expr, "a conversion"),
        Expr::JsonAccess { value, .. } => (value, "a JSON operator"),
        Expr::CompoundFieldAccess { root, .. } => (root, "a field or subscript access"),
        _ => return None,
    })
}

impl Ctx<'_> {
    /// Refuses if `e` is a direct reference to a protected column.
    pub(crate) fn forbid_ref(
        &self,
        e: &Expr,
        scope: &Scope<'_>,
        operation: &str,
        undefined: bool,
    ) -> Result<(), Refusal> {
        if let Some(p) = self.protected_ref(e, scope)? {
            return Err(if undefined {
                Refusal::undefined_function(&p.id, operation)
            } else {
                Refusal::unsupported(&p.id, operation)
            });
        }
        Ok(())
    }

    /// Analyses an expression in a value position (select list items other than bare columns,
    /// function arguments, …): protected columns are refused except in `count(…)` and
    /// `IS [NOT] NULL`; subqueries are analysed with `scope` as their outer scope.
    pub(crate) fn general(&mut self, e: &mut Expr, scope: &Scope<'_>) -> Result<(), Refusal> {
        match e {
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => {
                self.forbid_ref(e, scope, "use in an expression", false)
            }
            Expr::Value(_) => Ok(()),
            Expr::Nested(inner) => self.general(inner, scope),
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
                if self.protected_ref(inner, scope)?.is_some() {
                    Ok(())
                } else {
                    self.general(inner, scope)
                }
            }
            Expr::IsTrue(inner)
            | Expr::IsFalse(inner)
            | Expr::IsNotTrue(inner)
            | Expr::IsNotFalse(inner)
            | Expr::IsUnknown(inner)
            | Expr::IsNotUnknown(inner) => {
                self.forbid_ref(inner, scope, "IS TRUE/FALSE/UNKNOWN", false)?;
                self.general(inner, scope)
            }
            Expr::BinaryOp { left, op, right } => {
                if matches!(op, BinaryOperator::And | BinaryOperator::Or) {
                    self.predicate(left, scope)?;
                    return self.predicate(right, scope);
                }
                let (operation, undefined) =
                    if matches!(op, BinaryOperator::Eq | BinaryOperator::NotEq) {
                        (
                            format!("comparison {op} in this position (only in WHERE/ON)"),
                            false,
                        )
                    } else if binop_is_comparison(op) {
                        (format!("range comparison {op}"), false)
                    } else {
                        (format!("operator {op}"), true)
                    };
                self.forbid_ref(left, scope, &operation, undefined)?;
                self.forbid_ref(right, scope, &operation, undefined)?;
                self.general(left, scope)?;
                self.general(right, scope)
            }
            Expr::UnaryOp { op, expr } => {
                if matches!(op, UnaryOperator::Not) {
                    return self.predicate(expr, scope);
                }
                self.forbid_ref(expr, scope, &format!("operator {op}"), true)?;
                self.general(expr, scope)
            }
            Expr::Cast { expr, .. } => {
                self.forbid_ref(expr, scope, "a cast", true)?;
                self.general(expr, scope)
            }
            Expr::Like { expr, pattern, .. }
            | Expr::ILike { expr, pattern, .. }
            | Expr::SimilarTo { expr, pattern, .. }
            | Expr::RLike { expr, pattern, .. } => {
                self.forbid_ref(
                    expr,
                    scope,
                    "pattern matching (LIKE/ILIKE/SIMILAR TO/regex)",
                    false,
                )?;
                self.forbid_ref(
                    pattern,
                    scope,
                    "pattern matching (LIKE/ILIKE/SIMILAR TO/regex)",
                    false,
                )?;
                self.general(expr, scope)?;
                self.general(pattern, scope)
            }
            Expr::Between {
                expr, low, high, ..
            } => {
                for x in [&**expr, &**low, &**high] {
                    self.forbid_ref(x, scope, "range comparison BETWEEN", false)?;
                }
                self.general(expr, scope)?;
                self.general(low, scope)?;
                self.general(high, scope)
            }
            Expr::IsDistinctFrom(a, b) | Expr::IsNotDistinctFrom(a, b) => {
                self.forbid_ref(a, scope, "IS [NOT] DISTINCT FROM", false)?;
                self.forbid_ref(b, scope, "IS [NOT] DISTINCT FROM", false)?;
                self.general(a, scope)?;
                self.general(b, scope)
            }
            Expr::In { expr, target, .. } => {
                self.forbid_ref(expr, scope, "IN in this position (only in WHERE/ON)", false)?;
                self.general(expr, scope)?;
                match target {
                    InTarget::List(list) => {
                        for x in list.iter_mut() {
                            self.forbid_ref(x, scope, "comparison with a plaintext value", false)?;
                            self.general(x, scope)?;
                        }
                        Ok(())
                    }
                    InTarget::Subquery(q) => {
                        let rel = self.query(q, Some(scope))?;
                        match rel.first_protected() {
                            Some(p) => Err(Refusal::unsupported(
                                &p.id,
                                "comparison of a subquery's protected output with a plaintext value",
                            )),
                            None => Ok(()),
                        }
                    }
                    other => self.opaque_check(&other.to_string(), scope, "an IN target"),
                }
            }
            Expr::AnyOp { left, right, .. } | Expr::AllOp { left, right, .. } => {
                self.forbid_ref(
                    left,
                    scope,
                    "ANY/ALL in this position (only col = ANY(...) in WHERE/ON)",
                    false,
                )?;
                self.forbid_ref(right, scope, "ANY/ALL", false)?;
                self.general(left, scope)?;
                self.general(right, scope)
            }
            Expr::Exists { subquery, .. } => self.query(subquery, Some(scope)).map(|_| ()),
            Expr::Subquery(q) => {
                let rel = self.query(q, Some(scope))?;
                match rel.first_protected() {
                    Some(p) => Err(Refusal::unsupported(
                        &p.id,
                        "returning a protected column through a scalar subquery",
                    )),
                    None => Ok(()),
                }
            }
            Expr::Tuple(items) => {
                for x in items.iter_mut() {
                    self.forbid_ref(x, scope, "a row constructor", false)?;
                    self.general(x, scope)?;
                }
                Ok(())
            }
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                if let Some(o) = operand {
                    self.forbid_ref(o, scope, "CASE", false)?;
                    self.general(o, scope)?;
                }
                for w in conditions.iter_mut() {
                    if operand.is_some() {
                        self.forbid_ref(&w.condition, scope, "CASE", false)?;
                        self.general(&mut w.condition, scope)?;
                    } else {
                        self.predicate(&mut w.condition, scope)?;
                    }
                    self.forbid_ref(&w.result, scope, "returning through CASE", false)?;
                    self.general(&mut w.result, scope)?;
                }
                if let Some(x) = else_result {
                    self.forbid_ref(x, scope, "returning through CASE", false)?;
                    self.general(x, scope)?;
                }
                Ok(())
            }
            Expr::Function(f) => {
                let fname = f.name.to_string().to_lowercase();
                let is_count = fname == "count" || fname == "pg_catalog.count";
                match &mut f.args {
                    FunctionArguments::None => {}
                    FunctionArguments::Subquery(q) => {
                        let rel = self.query(q, Some(scope))?;
                        if let Some(p) = rel.first_protected() {
                            return Err(Refusal::undefined_function(
                                &p.id,
                                &format!("function {fname}"),
                            ));
                        }
                    }
                    FunctionArguments::List(list) => {
                        let distinct = list.duplicate_treatment.is_some_and(|d| {
                            matches!(d, sqlparser::ast::DuplicateTreatment::Distinct)
                        });
                        if !list.clauses.is_empty() {
                            let text = list
                                .clauses
                                .iter()
                                .map(|c| c.to_string())
                                .collect::<Vec<_>>()
                                .join(" ");
                            self.opaque_check(
                                &text,
                                scope,
                                &format!("a clause of function {fname}"),
                            )?;
                        }
                        for a in list.args.iter_mut() {
                            let arg = match a {
                                FunctionArg::Named { arg, .. }
                                | FunctionArg::ExprNamed { arg, .. }
                                | FunctionArg::Unnamed(arg) => arg,
                            };
                            match arg {
                                FunctionArgExpr::Expr(x) => {
                                    if let Some(p) = self.protected_ref(x, scope)? {
                                        if is_count && !distinct {
                                            continue;
                                        }
                                        let op = if is_count {
                                            "count(DISTINCT …)".to_owned()
                                        } else {
                                            format!("function {fname}")
                                        };
                                        return Err(if is_count {
                                            Refusal::unsupported(&p.id, &op)
                                        } else {
                                            Refusal::undefined_function(&p.id, &op)
                                        });
                                    }
                                    self.general(x, scope)?;
                                }
                                FunctionArgExpr::Wildcard => {}
                                FunctionArgExpr::QualifiedWildcard(name) => {
                                    let binding = name_parts(name)
                                        .and_then(|p| p.last().cloned())
                                        .unwrap_or_default();
                                    if let Some(p) = scope.protected_binding(&binding) {
                                        return Err(whole_row(&binding, p));
                                    }
                                    if !is_count {
                                        self.opaque_check(
                                            &name.to_string(),
                                            scope,
                                            &format!("function {fname}"),
                                        )?;
                                    }
                                }
                                other => {
                                    if !is_count {
                                        self.opaque_check(
                                            &other.to_string(),
                                            scope,
                                            &format!("function {fname}"),
                                        )?;
                                    }
                                }
                            }
                        }
                    }
                }
                let mut rest = String::new();
                if let Some(filter) = &f.filter {
                    rest.push_str(&filter.to_string());
                    rest.push(' ');
                }
                if let Some(over) = &f.over {
                    rest.push_str(&over.to_string());
                    rest.push(' ');
                }
                for w in &f.within_group {
                    rest.push_str(&w.to_string());
                    rest.push(' ');
                }
                if !rest.is_empty() {
                    self.opaque_check(
                        &rest,
                        scope,
                        &format!("FILTER/OVER/WITHIN GROUP of {fname}"),
                    )?;
                }
                Ok(())
            }
            Expr::Array(a) => {
                for x in a.elem.iter_mut() {
                    self.forbid_ref(x, scope, "an array constructor", true)?;
                    self.general(x, scope)?;
                }
                Ok(())
            }
            other => {
                if let Some((inner, what)) = primary_operand(other) {
                    self.forbid_ref(inner, scope, what, true)?;
                }
                let text = other.to_string();
                self.opaque_check(&text, scope, "an expression")
            }
        }
    }
}
