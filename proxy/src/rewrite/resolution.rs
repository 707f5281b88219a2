//! Statements that change how the server resolves unqualified names: `SET`/`RESET` of
//! `search_path`, a role (`SET ROLE`, `SET SESSION AUTHORIZATION`: `"$user"` changes),
//! `RESET ALL`, `DISCARD ALL`, and any call of `set_config` (which can set `search_path` from
//! inside any statement).
//!
//! Within one query string, the statements after such a change are resolved by the server with
//! the new setting, which the proxy only learns by reading it back afterwards: the rewriter
//! refuses a string where one precedes a statement naming a protected table (a plain table of
//! the same name could otherwise be taken for the protected one, or the reverse — plaintext
//! upstream). The session uses the same test to decide when to read the setting back.

/// Whether `part` (one statement's text) may change name resolution.
pub fn changes_resolution(part: &str) -> bool {
    let p = part.trim_start().as_bytes();
    let starts = |k: &[u8]| p.get(..k.len()).is_some_and(|b| b.eq_ignore_ascii_case(k));
    if starts(b"set") || starts(b"reset") || starts(b"discard") {
        let named = [&b"search_path"[..], b"role", b"authorization", b" all"]
            .iter()
            .any(|w| contains_ignore_ascii_case(p, w));
        if named {
            return true;
        }
    }
    calls_set_config(p)
}

/// Whether `sql` contains the word `set_config` (any case, also quoted or qualified), found
/// from its `_` with `memchr` (this runs for every statement). In a string literal or comment
/// it counts too (the safe side).
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

fn contains_ignore_ascii_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
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
        ] {
            assert!(changes_resolution(sql), "{sql}");
        }
        for sql in [
            "SET statement_timeout = 5",
            "SET TIME ZONE 'UTC'",
            "SELECT * FROM pgbench_accounts WHERE aid = $1",
            "SELECT my_set_config_value FROM t",
            "INSERT INTO config_set (x) VALUES (1)",
            "",
        ] {
            assert!(!changes_resolution(sql), "{sql}");
        }
    }
}
