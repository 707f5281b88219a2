//! The gate's facts by statement **shape**: the token stream of PostgreSQL's own scanner with
//! every literal (and comment) replaced by its token kind. A grammar decides on token kinds,
//! not on the values of constants, so two statements of one shape have the same parse tree up
//! to their constants, and the gate's facts of one hold for the other (simple-protocol
//! statements with their values inline — client-side binding — differ only in literals). The
//! key keeps every identifier, keyword and operator as written.
//!
//! Facts whose content depends on a literal are never shared: those of statements with a
//! function or DO body (the body is a string constant), and refusals (their messages may quote
//! the text). Only texts read under the server's default lexer settings use the cache; the key
//! is compared in full, not only its hash. Bounded in entries and bytes; cleared when the
//! protected names change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pg_query::protobuf::Token;

use super::Facts;

/// Entries kept.
const CAPACITY: usize = 4096;
/// Bytes of keys kept.
const BYTE_BUDGET: usize = 8 * 1024 * 1024;
/// Longer statements are not keyed (rarely repeated in shape, and the key would be large).
const MAX_SQL: usize = 64 * 1024;

struct Inner {
    /// The names' generation the entries were made for.
    generation: u64,
    entries: HashMap<Vec<u8>, Arc<Facts>>,
    bytes: usize,
}

/// Facts by shape, shared by the sessions of a factory.
pub struct ShapeCache {
    inner: Mutex<Inner>,
}

impl Default for ShapeCache {
    fn default() -> Self {
        ShapeCache {
            inner: Mutex::new(Inner {
                generation: u64::MAX,
                entries: HashMap::new(),
                bytes: 0,
            }),
        }
    }
}

/// Whether a token is a constant (or comment) whose text the grammar does not look at.
fn abstracted(token: i32) -> bool {
    [
        Token::Sconst,
        Token::Usconst,
        Token::Iconst,
        Token::Fconst,
        Token::Bconst,
        Token::Xconst,
        Token::SqlComment,
        Token::CComment,
    ]
    .iter()
    .any(|t| *t as i32 == token)
}

/// The shape key of `sql` from its scanner tokens, or None when the text should not be keyed.
pub(crate) fn shape(sql: &str, tokens: &[pg_query::protobuf::ScanToken]) -> Option<Vec<u8>> {
    if sql.len() > MAX_SQL {
        return None;
    }
    let mut key = Vec::with_capacity(sql.len());
    for t in tokens {
        key.extend_from_slice(&t.token.to_le_bytes());
        if abstracted(t.token) {
            continue;
        }
        let start = usize::try_from(t.start).ok()?;
        let end = usize::try_from(t.end).ok()?;
        let text = sql.get(start..end)?;
        key.extend_from_slice(&u32::try_from(text.len()).ok()?.to_le_bytes());
        key.extend_from_slice(text.as_bytes());
    }
    Some(key)
}

impl ShapeCache {
    /// The facts of a statement of shape `key` under names of `generation`.
    pub(crate) fn get(&self, generation: u64, key: &[u8]) -> Option<Arc<Facts>> {
        let g = self.inner.lock().ok()?;
        if g.generation != generation {
            return None;
        }
        g.entries.get(key).cloned()
    }

    /// Remembers `facts` for shape `key` (not for facts with a body).
    pub(crate) fn put(&self, generation: u64, key: Vec<u8>, facts: &Arc<Facts>) {
        if facts.statements.iter().any(|s| s.body) {
            return;
        }
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        if g.generation != generation || g.entries.len() >= CAPACITY || g.bytes > BYTE_BUDGET {
            g.generation = generation;
            g.entries.clear();
            g.bytes = 0;
        }
        g.bytes += key.len();
        g.entries.insert(key, facts.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sql: &str) -> Vec<u8> {
        let scan = pg_query::scan(sql).unwrap();
        shape(sql, &scan.tokens).unwrap()
    }

    #[test]
    fn literals_and_comments_do_not_change_the_shape() {
        assert_eq!(
            key("SELECT id FROM patients WHERE email = 'a@b.eu' AND n = 5 /* x */"),
            key("SELECT id FROM patients WHERE email = 'other' AND n = 123456 /* y */")
        );
    }

    #[test]
    fn names_keywords_and_literal_kinds_do() {
        let base = key("SELECT id FROM patients WHERE email = 'x'");
        for other in [
            "SELECT id FROM patient WHERE email = 'x'",
            "SELECT id FROM patients WHERE emails = 'x'",
            "SELECT id FROM patients WHERE email = 5",
            "SELECT id FROM patients WHERE email = U&'x'",
            "SELECT id FROM U&\"patients\" WHERE email = 'x'",
            "SELECT id FROM patients WHERE email <> 'x'",
            "select id from patients where email = 'x'",
        ] {
            assert_ne!(base, key(other), "{other}");
        }
    }
}
