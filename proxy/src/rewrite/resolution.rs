//! Statements that change how the server resolves unqualified names: `SET`/`RESET` of
//! `search_path`, a role (`SET ROLE`, `SET SESSION AUTHORIZATION`: `"$user"` changes),
//! `RESET ALL`, `DISCARD ALL`, any call of `set_config` (which can set `search_path` from inside
//! any statement), and `DO` blocks and `CALL`s (whose bodies the proxy does not analyse).
//!
//! Within one query string, the statements after such a change are resolved by the server with
//! the new setting, which the proxy only learns by reading it back afterwards: the rewriter
//! refuses a string where one precedes a statement naming a protected table (a plain table of
//! the same name could otherwise be taken for the protected one, or the reverse — plaintext
//! upstream). The session uses the same test to decide when to read the setting back.
//!
//! Statements are read with [`for_each_word`] (comments and string literals skipped, so a
//! leading comment does not hide a `SET`). Not seen: a function that changes the session's
//! `search_path` from inside its body when called from an ordinary statement.

use super::for_each_word;

/// First words of statements that may change name resolution, whatever follows.
const ALWAYS: &[&str] = &["do", "call"];
/// First words of statements that change a setting, and the words that make it one that
/// changes name resolution.
const SETTERS: &[&str] = &["set", "reset", "discard"];
const RESOLUTION_WORDS: &[&str] = &["search_path", "role", "authorization", "all"];
/// First words of statements that end a transaction block (or roll back to a savepoint),
/// undoing a `SET LOCAL` / a rolled-back `SET`.
const BLOCK_ENDS: &[&str] = &["commit", "end", "rollback", "abort", "prepare"];

/// The statements of `sql` as `(first word, whether it may change name resolution)`, in order.
fn statements(sql: &str) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = Vec::new();
    let mut open = false;
    for_each_word(sql, |w| {
        if w == ";" {
            open = false;
            return;
        }
        if !open {
            open = true;
            let first = w.to_ascii_lowercase();
            let always = ALWAYS.contains(&first.as_str());
            out.push((first, always));
            return;
        }
        if let Some((first, changes)) = out.last_mut() {
            let w = w.to_ascii_lowercase();
            if SETTERS.contains(&first.as_str()) && RESOLUTION_WORDS.contains(&w.as_str()) {
                *changes = true;
            }
        }
    });
    out
}

/// Whether `sql` (one or more statements) may change name resolution. Cheap for statements
/// that cannot (this runs for every statement): only when a statement may start with one of
/// the words above (at the start or after a `;`, past blanks and comments) is the text read
/// word by word.
pub fn changes_resolution(sql: &str) -> bool {
    let b = sql.as_bytes();
    if calls_set_config(b) {
        return true;
    }
    let starts = std::iter::once(0).chain(memchr::memchr_iter(b';', b).map(|i| i + 1));
    let maybe = starts.map(|at| first_word_at(b, at)).any(|w| {
        ALWAYS
            .iter()
            .chain(SETTERS)
            .any(|k| w.eq_ignore_ascii_case(k.as_bytes()))
    });
    maybe && statements(sql).iter().any(|(_, changes)| *changes)
}

/// The letters starting at `at` after blanks and comments (`--` to the end of the line,
/// nested `/* */`). A `;` inside a literal or comment only adds a candidate.
fn first_word_at(b: &[u8], mut at: usize) -> &[u8] {
    let get = |i: usize| b.get(i).copied().unwrap_or(0);
    loop {
        match (get(at), get(at + 1)) {
            (c, _) if c.is_ascii_whitespace() => at += 1,
            (b'-', b'-') => {
                while at < b.len() && get(at) != b'\n' {
                    at += 1;
                }
            }
            (b'/', b'*') => {
                let mut depth = 0usize;
                while at < b.len() {
                    match (get(at), get(at + 1)) {
                        (b'/', b'*') => {
                            depth += 1;
                            at += 2;
                        }
                        (b'*', b'/') => {
                            depth -= 1;
                            at += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => at += 1,
                    }
                }
            }
            _ => break,
        }
    }
    let rest = b.get(at..).unwrap_or_default();
    let len = rest.iter().take_while(|c| c.is_ascii_alphabetic()).count();
    rest.get(..len).unwrap_or_default()
}

/// Whether `sql` ends a transaction block (`COMMIT`, `END`, `ROLLBACK` also to a savepoint,
/// `ABORT`, `PREPARE TRANSACTION`) in any of its statements; with `followed`, only when another
/// statement comes after it in the same string.
pub fn ends_block(sql: &str, followed: bool) -> bool {
    let st = statements(sql);
    st.iter().enumerate().any(|(i, (first, _))| {
        BLOCK_ENDS.contains(&first.as_str()) && (!followed || i + 1 < st.len())
    })
}

/// Whether `sql` contains the word `set_config` (any case, also quoted, qualified, or inside a
/// string literal or a `DO` body: the safe side), found from its `_` with `memchr`.
pub fn calls_set_config(sql: &[u8]) -> bool {
    const WORD: &[u8] = b"set_config";
    let ident = |c: Option<&u8>| {
        c.is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'$' || *c >= 0x80)
    };
    memchr::memchr_iter(b'_', sql).any(|i| {
        let Some(start) = i.checked_sub(3) else {
            return false;
        };
        let word = sql
            .get(start..start + WORD.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(WORD));
        let before = start.checked_sub(1).and_then(|b| sql.get(b));
        word && !ident(before) && !ident(sql.get(start + WORD.len()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_that_change_name_resolution() {
        for sql in [
            "SET search_path TO app",
            "set local search_path = 'a, b'",
            "RESET search_path",
            "RESET ALL",
            "DISCARD ALL",
            "SET ROLE admin",
            "SET SESSION AUTHORIZATION bob",
            "SELECT set_config('search_path', 'public', false)",
            "SELECT 1 WHERE pg_catalog.SET_CONFIG('search_path', 'x', true) IS NOT NULL",
            "/* a comment */ SET search_path TO app",
            "-- a comment\nset search_path to app",
            "SELECT 1; /* ; */ SET search_path TO app",
            "DO $$ BEGIN EXECUTE 'SET search_path TO app'; END $$",
            "CALL my_proc()",
            "SELECT 1;SET search_path TO app",
            "/* a /* nested */ comment */ SET search_path TO app",
        ] {
            assert!(changes_resolution(sql), "{sql}");
        }
        for sql in [
            "SET statement_timeout = 5",
            "SET TIME ZONE 'UTC'",
            "SELECT * FROM pgbench_accounts WHERE aid = $1",
            "SELECT my_set_config_value FROM t",
            "INSERT INTO config_set (x) VALUES (1)",
            "SELECT 'SET search_path TO x'",
            "UPDATE roles SET role = 'x'",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = app AS 'SELECT 1'",
            "SELECT 'x; set search_path to y'",
            "SELECT 1; -- ; set search_path to y",
            "",
        ] {
            assert!(!changes_resolution(sql), "{sql}");
        }
    }

    #[test]
    fn block_ends() {
        assert!(ends_block("COMMIT", false));
        assert!(!ends_block("COMMIT", true));
        assert!(ends_block("/* x */ commit; INSERT INTO t VALUES (1)", true));
        assert!(ends_block("ROLLBACK TO SAVEPOINT a; SELECT 1", true));
        assert!(!ends_block("SELECT 1; SELECT 2", false));
        assert!(!ends_block("SELECT 'commit'; SELECT 2", true));
    }
}
