//! Textual, token-level checks used to fail closed without a full analysis.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::schema::ProtectedSchema;

/// The cheap pre-check: does the text contain (case-insensitively) the name of a protected table?
/// False means the statement cannot touch a protected table and is forwarded unparsed.
pub(crate) fn text_mentions_protected_table(sql: &str, schema: &ProtectedSchema) -> bool {
    let names = schema.lower_table_names();
    if names.is_empty() {
        return false;
    }
    let lower = sql.to_lowercase();
    names.iter().any(|n| lower.contains(n.as_str()))
}

/// Whether any identifier token of `sql` (folded as PostgreSQL folds it) satisfies `pred`.
/// A text that cannot be tokenized counts as mentioning (fail closed).
pub(crate) fn any_word(sql: &str, pred: impl Fn(&str) -> bool) -> bool {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        return true;
    };
    tokens.iter().any(|t| match t {
        Token::Word(w) => {
            if w.quote_style.is_some() {
                pred(&w.value)
            } else {
                pred(&w.value.to_lowercase())
            }
        }
        _ => false,
    })
}

/// The first identifier of `sql` naming a protected table or column, if any.
pub(crate) fn first_protected_word(
    sql: &str,
    schema: &ProtectedSchema,
    extra: &[String],
) -> Option<String> {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        return Some("(untokenizable text)".to_owned());
    };
    tokens.into_iter().find_map(|t| match t {
        Token::Word(w) => {
            let v = if w.quote_style.is_some() {
                w.value
            } else {
                w.value.to_lowercase()
            };
            (schema.is_table_name(&v) || schema.is_column_name(&v) || extra.contains(&v))
                .then_some(v)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_word_folds_unquoted_and_keeps_quoted() {
        assert!(any_word("SELECT * FROM Patients", |w| w == "patients"));
        assert!(!any_word("SELECT * FROM \"Patients\"", |w| w == "patients"));
        assert!(any_word("SELECT * FROM \"Patients\"", |w| w == "Patients"));
        assert!(!any_word("SELECT 'patients'", |w| w == "patients"));
    }
}
