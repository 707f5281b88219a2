//! Boolean positions (WHERE, ON, HAVING, CASE WHEN): the supported comparisons on protected
//! columns are rewritten to blind-index comparisons on `substring(col from 1 for 16)`: with
//! literals `= ANY(<tag array>)`, with a parameter `$n` one scalar comparison sized to the live
//! key versions ([`super::plan::Piece::Lookup`]), with an array parameter `= ANY($k::bytea[])`.

use sqlparser::ast::{BinaryOperator, Expr, InTarget, Value};

use super::ctx::Ctx;
use super::operand::{operand, Operand};
use super::plan::{IndexPiece, Slot, UpstreamParam};
use super::refusal::Refusal;
use super::schema::ProtectedColumn;
use super::scope::Scope;

/// `substring(<col> from 1 for 16)`: the blind-index prefix of a stored value.
pub(crate) fn index_prefix(col: Expr) -> Expr {
    let num = |n: &str| Expr::Value(Value::Number(n.to_owned(), false).into());
    Expr::Substring {
        expr: Box::new(col),
        substring_from: Some(Box::new(num("1"))),
        substring_for: Some(Box::new(num("16"))),
        special: false,
        shorthand: false,
    }
}

fn require_index(col: &ProtectedColumn, operation: &str) -> Result<(), Refusal> {
    if col.index.is_none() {
        return Err(Refusal::unsupported(
            &col.id,
            &format!("{operation} (the column has no equality index)"),
        ));
    }
    Ok(())
}

fn combine(mut terms: Vec<Expr>, op: BinaryOperator) -> Option<Expr> {
    let first = if terms.is_empty() {
        return None;
    } else {
        terms.remove(0)
    };
    let single = terms.is_empty();
    let e = terms.into_iter().fold(first, |acc, t| Expr::BinaryOp {
        left: Box::new(acc),
        op: op.clone(),
        right: Box::new(t),
    });
    Some(if single { e } else { Expr::Nested(Box::new(e)) })
}

impl Ctx<'_> {
    /// Analyses a boolean expression, rewriting supported protected-column predicates.
    pub(crate) fn predicate(&mut self, e: &mut Expr, scope: &Scope<'_>) -> Result<(), Refusal> {
        match e {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And | BinaryOperator::Or,
                right,
            } => {
                self.predicate(left, scope)?;
                self.predicate(right, scope)
            }
            Expr::UnaryOp {
                op: sqlparser::ast::UnaryOperator::Not,
                expr,
            } => self.predicate(expr, scope),
            Expr::Nested(inner) => self.predicate(inner, scope),
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
                if self.protected_ref(inner, scope)?.is_some() {
                    Ok(())
                } else {
                    self.general(inner, scope)
                }
            }
            Expr::BinaryOp {
                left,
                op: op @ (BinaryOperator::Eq | BinaryOperator::NotEq),
                right,
            } => {
                let negated = matches!(op, BinaryOperator::NotEq);
                let l = self.protected_ref(left, scope)?;
                let r = self.protected_ref(right, scope)?;
                let new = match (l, r) {
                    (None, None) => return self.general(e, scope),
                    (Some(a), Some(b)) => self.join(a, b, left, right, negated)?,
                    (Some(a), None) => self.compare(&a, left, vec![&**right], negated)?,
                    (None, Some(b)) => self.compare(&b, right, vec![&**left], negated)?,
                };
                *e = new;
                Ok(())
            }
            Expr::In {
                expr,
                target: InTarget::List(list),
                negated,
                ..
            } => match self.protected_ref(expr, scope)? {
                None => self.general(e, scope),
                Some(col) => {
                    for x in list.iter() {
                        if self.protected_ref(x, scope)?.is_some() {
                            return Err(Refusal::unsupported(&col.id, "IN with column operands"));
                        }
                    }
                    let operation = if *negated { "NOT IN" } else { "IN" };
                    let new =
                        self.compare_as(&col, expr, list.iter().collect(), *negated, operation)?;
                    *e = new;
                    Ok(())
                }
            },
            Expr::AnyOp {
                left,
                compare_op: BinaryOperator::Eq,
                right,
                ..
            } => match self.protected_ref(left, scope)? {
                None => self.general(e, scope),
                Some(col) => {
                    let new = self.any_array(&col, left, right, false)?;
                    *e = new;
                    Ok(())
                }
            },
            Expr::AllOp {
                left,
                compare_op: BinaryOperator::NotEq,
                right,
            } => match self.protected_ref(left, scope)? {
                None => self.general(e, scope),
                Some(col) => {
                    let new = self.any_array(&col, left, right, true)?;
                    *e = new;
                    Ok(())
                }
            },
            _ => self.general(e, scope),
        }
    }

    /// `a.col = b.col` between protected columns: allowed within one index group.
    fn join(
        &mut self,
        a: ProtectedColumn,
        b: ProtectedColumn,
        left: &Expr,
        right: &Expr,
        negated: bool,
    ) -> Result<Expr, Refusal> {
        let operation = format!("comparison with protected column {}", b.id);
        require_index(&a, &operation)?;
        require_index(&b, &format!("comparison with protected column {}", a.id))?;
        let same = match (&a.index, &b.index) {
            (Some(x), Some(y)) => x.group == y.group && x.norm == y.norm,
            _ => false,
        };
        if !same {
            return Err(Refusal::unsupported(
                &a.id,
                &format!("{operation} of another index group"),
            ));
        }
        // Rendered for the live form of the cells (a blind-index rotation in progress compares
        // both tags, docs/format.md §2.5).
        Ok(Expr::Identifier(self.index_piece(IndexPiece::Join {
            left: left.to_string(),
            right: right.to_string(),
            negated,
            column: a.id.clone(),
        })))
    }

    fn compare(
        &mut self,
        col: &ProtectedColumn,
        col_expr: &Expr,
        operands: Vec<&Expr>,
        negated: bool,
    ) -> Result<Expr, Refusal> {
        let operation = if negated {
            "comparison <>"
        } else {
            "comparison ="
        };
        self.compare_as(col, col_expr, operands, negated, operation)
    }

    /// `col = x`, `col <> x`, `col [NOT] IN (x, …)` with literal / parameter operands.
    fn compare_as(
        &mut self,
        col: &ProtectedColumn,
        col_expr: &Expr,
        operands: Vec<&Expr>,
        negated: bool,
        operation: &str,
    ) -> Result<Expr, Refusal> {
        let mut literals = Vec::new();
        let mut params = Vec::new();
        let mut has_null = false;
        for x in operands {
            match operand(x) {
                Some(Operand::Literal(s)) => literals.push(s),
                Some(Operand::Param(n)) => params.push(n),
                Some(Operand::Null) => has_null = true,
                None => {
                    return Err(Refusal::unsupported(
                        &col.id,
                        &format!("{operation} with a plaintext column or computed expression"),
                    ))
                }
            }
        }
        require_index(col, operation)?;
        let prefix = index_prefix(col_expr.clone());
        let term = |right: Expr| {
            if negated {
                Expr::AllOp {
                    left: Box::new(prefix.clone()),
                    compare_op: BinaryOperator::NotEq,
                    right: Box::new(right),
                }
            } else {
                Expr::AnyOp {
                    left: Box::new(prefix.clone()),
                    compare_op: BinaryOperator::Eq,
                    right: Box::new(right),
                    is_some: false,
                }
            }
        };
        let mut terms = Vec::new();
        if !literals.is_empty() {
            let s = self.slot(Slot::Lookup {
                column: col.id.clone(),
                literal_texts: literals,
                negated,
            });
            terms.push(term(s));
        }
        for n in params {
            // A scalar comparison per blind-index key (`= $k` or `IN ($k, …)`), not an array:
            // PostgreSQL's generic plan then estimates it like the custom plan does, so a
            // prepared lookup is planned once.
            let p = UpstreamParam::Lookup {
                param: n,
                column: col.id.clone(),
            };
            terms.push(self.lookup_param(p, &prefix, negated));
        }
        if has_null {
            terms.push(Expr::BinaryOp {
                left: Box::new(prefix.clone()),
                op: if negated {
                    BinaryOperator::NotEq
                } else {
                    BinaryOperator::Eq
                },
                right: Box::new(Expr::Value(Value::Null.into())),
            });
        }
        self.modified = true;
        let op = if negated {
            BinaryOperator::And
        } else {
            BinaryOperator::Or
        };
        combine(terms, op).ok_or_else(|| Refusal::unsupported(&col.id, operation))
    }

    /// `col = ANY($n | ARRAY[…])` and `col <> ALL(…)`.
    fn any_array(
        &mut self,
        col: &ProtectedColumn,
        col_expr: &Expr,
        right: &Expr,
        negated: bool,
    ) -> Result<Expr, Refusal> {
        let operation = if negated { "<> ALL(…)" } else { "= ANY(…)" };
        match right {
            Expr::Array(a) => {
                let elems: Vec<&Expr> = a.elem.iter().collect();
                self.compare_as(col, col_expr, elems, negated, operation)
            }
            Expr::Nested(inner) => self.any_array(col, col_expr, inner, negated),
            other => match operand(other) {
                Some(Operand::Param(n)) => {
                    require_index(col, operation)?;
                    let p = self.param(UpstreamParam::LookupArray {
                        param: n,
                        column: col.id.clone(),
                    });
                    let prefix = index_prefix(col_expr.clone());
                    Ok(if negated {
                        Expr::AllOp {
                            left: Box::new(prefix),
                            compare_op: BinaryOperator::NotEq,
                            right: Box::new(p),
                        }
                    } else {
                        Expr::AnyOp {
                            left: Box::new(prefix),
                            compare_op: BinaryOperator::Eq,
                            right: Box::new(p),
                            is_some: false,
                        }
                    })
                }
                _ => Err(Refusal::unsupported(
                    &col.id,
                    &format!(
                        "{operation} with an operand other than a parameter or ARRAY[literals]"
                    ),
                )),
            },
        }
    }
}
