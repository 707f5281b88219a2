//! The operands pgseal can encrypt or index: literals and `$n` parameters (through casts).

use sqlparser::ast::{Expr, UnaryOperator, Value};

/// A value compared with, or stored into, a protected column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Operand {
    /// A literal's text (unquoted, unescaped).
    Literal(String),
    /// Client parameter `$n`.
    Param(usize),
    /// SQL NULL.
    Null,
}

/// Parses `$n`.
pub(crate) fn placeholder_number(p: &str) -> Option<usize> {
    p.strip_prefix('$')?.parse().ok().filter(|n| *n > 0)
}

fn value_operand(v: &Value) -> Option<Operand> {
    Some(match v {
        Value::SingleQuotedString(s)
        | Value::EscapedStringLiteral(s)
        | Value::UnicodeStringLiteral(s)
        | Value::NationalStringLiteral(s)
        | Value::Number(s, _) => Operand::Literal(s.clone()),
        Value::DollarQuotedString(d) => Operand::Literal(d.value.clone()),
        Value::Boolean(b) => Operand::Literal(b.to_string()),
        Value::Null => Operand::Null,
        Value::Placeholder(p) => Operand::Param(placeholder_number(p)?),
        _ => return None,
    })
}

/// The operand an expression is, if it is a literal or parameter (possibly cast or signed).
pub(crate) fn operand(e: &Expr) -> Option<Operand> {
    match e {
        Expr::Value(v) => value_operand(&v.value),
        Expr::Nested(inner) => operand(inner),
        Expr::Cast { expr, .. } => operand(expr),
        Expr::TypedString(t) => value_operand(&t.value.value),
        Expr::UnaryOp { op, expr } => match (op, operand(expr)?) {
            (UnaryOperator::Minus, Operand::Literal(s))
                if matches!(expr.as_ref(), Expr::Value(_)) =>
            {
                Some(Operand::Literal(format!("-{s}")))
            }
            (UnaryOperator::Plus, o @ Operand::Literal(_)) => Some(o),
            _ => None,
        },
        _ => None,
    }
}

/// Whether the expression is the keyword DEFAULT (in VALUES or SET).
pub(crate) fn is_default(e: &Expr) -> bool {
    matches!(e, Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"))
}
