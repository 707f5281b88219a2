//! Textual, token-level checks used to fail closed without a full analysis.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::refusal::{Refusal, FEATURE_NOT_SUPPORTED};
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

/// `schema.table` of the first protected table whose name occurs in `sql` (case-insensitive
/// substring, like [`text_mentions_protected_table`]), for refusal messages; empty when none.
pub(crate) fn first_protected_table(sql: &str, schema: &ProtectedSchema) -> String {
    let lower = sql.to_lowercase();
    schema
        .all_tables()
        .find(|(_, t)| lower.contains(&t.to_lowercase()))
        .map(|(s, t)| format!("{s}.{t}"))
        .unwrap_or_default()
}

/// Calls `f` with every word of `sql` (identifiers and keywords; unquoted ones ASCII-lowercased
/// as PostgreSQL folds them, quoted ones as written), skipping string literals (standard,
/// `E'…'` and dollar-quoted), comments and numbers. A hand-written scanner: it runs on every
/// statement, and allocates only for quoted identifiers with `""` escapes and for unquoted
/// words with upper-case letters. A `;` between statements is passed as the word `";"`.
pub fn for_each_word(sql: &str, mut f: impl FnMut(&str)) {
    let b = sql.as_bytes();
    let n = b.len();
    let at = |i: usize| b.get(i).copied().unwrap_or(0);
    let is_start = |c: u8| c.is_ascii_alphabetic() || c == b'_' || c >= 0x80;
    let is_cont = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    let mut lower = String::new();
    let mut i = 0;
    while i < n {
        let c = at(i);
        if c == b'-' && at(i + 1) == b'-' {
            while i < n && at(i) != b'\n' {
                i += 1;
            }
        } else if c == b'/' && at(i + 1) == b'*' {
            let mut depth = 1usize;
            i += 2;
            while i < n && depth > 0 {
                if at(i) == b'/' && at(i + 1) == b'*' {
                    depth += 1;
                    i += 2;
                } else if at(i) == b'*' && at(i + 1) == b'/' {
                    depth -= 1;
                    i += 2;
                } else {
                    i += 1;
                }
            }
        } else if c == b'\'' {
            let escapes =
                i > 0 && matches!(at(i - 1), b'e' | b'E') && (i < 2 || !is_cont(at(i - 2)));
            i += 1;
            while i < n {
                match at(i) {
                    b'\\' if escapes => i += 2,
                    b'\'' if at(i + 1) == b'\'' => i += 2,
                    b'\'' => break,
                    _ => i += 1,
                }
            }
            i += 1;
        } else if c == b'"' {
            let start = i + 1;
            i = start;
            let mut escaped = false;
            while i < n {
                if at(i) == b'"' {
                    if at(i + 1) == b'"' {
                        escaped = true;
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            if let Some(w) = sql.get(start..i.min(n)) {
                if escaped {
                    f(&w.replace("\"\"", "\""));
                } else {
                    f(w);
                }
            }
            i += 1;
        } else if c == b'$'
            && (at(i + 1) == b'$' || is_start(at(i + 1)))
            && (i == 0 || !is_cont(at(i - 1)))
        {
            // A dollar quote $tag$…$tag$ (a tag that does not end in `$` is not one).
            let mut j = i + 1;
            while j < n && is_cont(at(j)) && at(j) != b'$' {
                j += 1;
            }
            if at(j) != b'$' {
                i = j;
                continue;
            }
            let tag = b.get(i..=j).unwrap_or_default();
            let body = j + 1;
            i = b
                .get(body..)
                .and_then(|rest| rest.windows(tag.len()).position(|w| w == tag))
                .map_or(n, |p| body + p + tag.len());
        } else if c == b';' {
            f(";");
            i += 1;
        } else if c.is_ascii_digit() {
            while i < n && (is_cont(at(i)) || at(i) == b'.') {
                i += 1;
            }
        } else if is_start(c) {
            let start = i;
            while i < n && is_cont(at(i)) {
                i += 1;
            }
            if let Some(w) = sql.get(start..i) {
                if w.bytes().any(|c| c.is_ascii_uppercase()) {
                    lower.clear();
                    lower.push_str(w);
                    lower.make_ascii_lowercase();
                    f(&lower);
                } else {
                    f(w);
                }
            }
        } else {
            i += 1;
        }
    }
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

/// The refusal for a statement text naming a tainted relation (a view or materialized view over
/// a protected table, an ambiguous descendant), if it names one. Names are matched in any
/// schema: a same-named plain relation elsewhere is refused too (fail closed).
pub(crate) fn tainted_refusal(sql: &str, schema: &ProtectedSchema) -> Option<Refusal> {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        return Some(Refusal::new(
            FEATURE_NOT_SUPPORTED,
            "pgseal: a statement that may name a relation over a protected table could not be tokenized",
        ));
    };
    tokens.into_iter().find_map(|t| match t {
        Token::Word(w) => {
            let v = if w.quote_style.is_some() {
                w.value
            } else {
                w.value.to_lowercase()
            };
            schema.tainted_by_name(&v).map(|(s, n, why)| {
                Refusal::new(
                    FEATURE_NOT_SUPPORTED,
                    format!(
                        "pgseal: relation {s}.{n} is {why}; pgseal cannot protect or decrypt its columns, so statements naming it are refused (query the protected table through the proxy instead)"
                    ),
                )
            })
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(sql: &str) -> Vec<String> {
        let mut v = Vec::new();
        for_each_word(sql, |w| v.push(w.to_owned()));
        v
    }

    #[test]
    fn words_skip_literals_comments_and_numbers() {
        assert_eq!(
            words("INSERT INTO Part_1 (id) VALUES (12e3, 'a''b', E'x\\'y', $$ in $$) -- c\n/* d /* e */ */ RETURNING \"Q\"\"x\""),
            ["insert", "into", "part_1", "id", "values", "e", "returning", "Q\"x"]
        );
        assert_eq!(
            words("SAVEPOINT s1; INSERT INTO t VALUES (';')"),
            ["savepoint", "s1", ";", "insert", "into", "t", "values"]
        );
        assert_eq!(
            words("SELECT $1, $tag$ t $tag$, x$y FROM s.t"),
            ["select", "x$y", "from", "s", "t"]
        );
        assert_eq!(words("SELECT 'C:\\' , w"), ["select", "w"]);
        assert_eq!(words("UPDATE \"unterminated"), ["update", "unterminated"]);
        assert_eq!(words("SELECT 'unterminated"), ["select"]);
        assert_eq!(words("SELECT $a$ open"), ["select"]);
        assert_eq!(words("ÄBC äbc"), ["Äbc", "äbc"]);
    }

    #[test]
    fn any_word_folds_unquoted_and_keeps_quoted() {
        assert!(any_word("SELECT * FROM Patients", |w| w == "patients"));
        assert!(!any_word("SELECT * FROM \"Patients\"", |w| w == "patients"));
        assert!(any_word("SELECT * FROM \"Patients\"", |w| w == "Patients"));
        assert!(!any_word("SELECT 'patients'", |w| w == "patients"));
    }
}
