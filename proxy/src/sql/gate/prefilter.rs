//! Which statement texts can skip the full gate: a byte-level test that does not depend on
//! how the text is lexed, so no lexer setting and no trick with quotes or comments can move a
//! statement past it.
//!
//! A statement can touch a protected relation, or change what a name or the lexer means, only
//! if its bytes contain one of:
//! - a protected relation name (as a case-insensitive substring: inside an identifier, a
//!   literal or a comment alike), checked by the caller;
//! - `&"` (a Unicode-escaped identifier `U&"…"`, whose decoded name the bytes do not spell);
//! - a word that starts a statement changing the catalog, a setting or the session, or that
//!   runs code the text does not show: see [`TRIGGER_WORDS`];
//! - a byte outside ASCII when the client encoding is not UTF-8.
//!
//! Everything else is forwarded as it is without a parse (a plain-table statement in a session
//! with protected tables costs one scan of its bytes). A word match is a superset: `create`
//! inside a literal also sends the statement to the full gate, which only costs a parse.

use memchr::memmem;

/// Words (ASCII, lower case) that send a statement to the full gate wherever they appear as a
/// whole word.
pub const TRIGGER_WORDS: &[&str] = &[
    // The catalog: new relations, renames, inheritance, views, rules, triggers, bodies.
    "alter",
    "create",
    "drop",
    "import",
    // Code the text does not show.
    "do",
    "call",
    "execute",
    "set_config",
    // Settings that change name resolution or the lexer.
    "reset",
    "discard",
    "search_path",
    "schema",
    "role",
    "session",
    "authorization",
    "names",
    "standard_conforming_strings",
    "backslash_quote",
    "client_encoding",
];

/// Whether `sql` needs the full gate by the rules above (the protected-name substring test is
/// the caller's). `client_utf8`: whether the session's client_encoding is UTF-8.
pub fn needs_gate(sql: &str, client_utf8: bool) -> bool {
    let b = sql.as_bytes();
    if !client_utf8 && !sql.is_ascii() {
        return true;
    }
    if memmem::find(b, b"&\"").is_some() {
        return true;
    }
    has_trigger_word(b)
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// Whether `b` contains one of [`TRIGGER_WORDS`] as a whole word (ASCII case-insensitive).
fn has_trigger_word(b: &[u8]) -> bool {
    let mut i = 0;
    let n = b.len();
    // Longest trigger word, to skip long identifiers without comparing.
    const LONGEST: usize = 27;
    let mut word = [0u8; LONGEST];
    while i < n {
        let Some(&c) = b.get(i) else { break };
        if !is_word_byte(c) {
            i += 1;
            continue;
        }
        let start = i;
        while b.get(i).is_some_and(|&c| is_word_byte(c)) {
            i += 1;
        }
        let len = i - start;
        if !(2..=LONGEST).contains(&len) {
            continue;
        }
        let Some(src) = b.get(start..i) else { continue };
        let Some(dst) = word.get_mut(..len) else {
            continue;
        };
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_ascii_lowercase();
        }
        let Some(w) = word.get(..len) else { continue };
        if TRIGGER_WORDS.iter().any(|t| t.as_bytes() == w) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_dml_skips_the_gate() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 7",
            "INSERT INTO history (tid, bid) VALUES (1, 2)",
            "BEGIN",
            "COMMIT",
            "SELECT 'créé' FROM t",
        ] {
            assert!(!needs_gate(sql, true), "{sql}");
        }
    }

    #[test]
    fn triggers_are_found_whatever_the_quoting() {
        for sql in [
            "CREATE TABLE k () INHERITS (x)",
            "select 1; alter table s inherit p",
            "SELECT 'a\\''; DROP TABLE x; --'",
            "INSERT INTO U&\"p\\0061tients\" VALUES (1)",
            "select pg_catalog.set_config('search_path', 'x', false)",
            "SET search_path = evil",
            "SET SCHEMA 'evil'",
            "SET ROLE app",
            "SET SESSION AUTHORIZATION app",
            "SET NAMES 'SJIS'",
            "RESET ALL",
            "DISCARD ALL",
            "DO $$ BEGIN END $$",
            "CALL p()",
            "EXECUTE s",
            "/*x*/CrEaTe/**/view v AS SELECT 1",
            "SET standard_conforming_strings = off",
        ] {
            assert!(needs_gate(sql, true), "{sql}");
        }
        // Part of a longer word: not a trigger.
        assert!(!needs_gate("SELECT created_at, dropped FROM t", true));
        // Non-ASCII text in another client encoding.
        assert!(needs_gate("SELECT 'é'", false));
        assert!(!needs_gate("SELECT 'e'", false));
    }
}
