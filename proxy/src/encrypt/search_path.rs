//! The session's `search_path`: from the startup packet (`search_path` or `options -c
//! search_path=…`), else `"$user", public`; followed through `SET search_path` / `RESET`.

/// A `search_path` setting as written (names unexpanded).
pub type Setting = Vec<String>;

/// The default setting.
pub fn default_setting() -> Setting {
    vec!["$user".to_owned(), "public".to_owned()]
}

/// The setting from startup parameters, if any.
pub fn from_startup(params: &[(String, String)]) -> Option<Setting> {
    if let Some((_, v)) = params.iter().find(|(k, _)| k == "search_path") {
        return parse_list(v);
    }
    let (_, opts) = params.iter().find(|(k, _)| k == "options")?;
    let mut words = opts.split_ascii_whitespace().peekable();
    let mut found = None;
    while let Some(w) = words.next() {
        let kv = if w == "-c" {
            words.next()
        } else {
            w.strip_prefix("-c").or_else(|| w.strip_prefix("--"))
        };
        if let Some(v) = kv.and_then(|kv| kv.strip_prefix("search_path=")) {
            found = parse_list(&v.replace("\\ ", " "));
        }
    }
    found
}

/// Expands `$user` and drops empty entries: the list the rewriter resolves against.
pub fn expand(setting: &Setting, user: &str) -> Vec<String> {
    setting
        .iter()
        .map(|s| {
            if s == "$user" {
                user.to_owned()
            } else {
                s.clone()
            }
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// Parses a comma-separated list of schema names (unquoted names fold to lower case).
fn parse_list(v: &str) -> Option<Setting> {
    let mut out = Vec::new();
    for item in split_top(v) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        if let Some(inner) = item.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            out.push(inner.replace("\"\"", "\""));
        } else if let Some(inner) = item.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
            // A string literal in SET may itself hold a list: 'a, b'.
            out.extend(parse_list(&inner.replace("''", "'"))?);
        } else if item.contains(['"', '\'', ' ']) {
            return None;
        } else {
            out.push(item.to_lowercase());
        }
    }
    Some(out)
}

/// Splits on commas outside quotes.
fn split_top(v: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quote: Option<char> = None;
    let mut start = 0;
    for (i, c) in v.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ',') => {
                parts.push(v.get(start..i).unwrap_or(""));
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(v.get(start..).unwrap_or(""));
    parts
}

/// What a statement does to `search_path`, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `SET search_path TO …`.
    Set(Setting),
    /// `SET search_path TO DEFAULT` / `RESET search_path` / `RESET ALL`.
    Reset,
}

/// Looks for `SET [SESSION|LOCAL] search_path {TO|=} …` or `RESET search_path` in `sql` (each
/// `;`-separated part; the last one wins).
pub fn change_in(sql: &str) -> Option<Change> {
    // Only a part that starts with SET or RESET can change it (checked first: this runs for
    // every statement).
    let starts_with = |part: &str, kw: &[u8]| {
        part.trim_start()
            .as_bytes()
            .get(..kw.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(kw))
    };
    if !sql
        .split(';')
        .any(|p| starts_with(p, b"set") || starts_with(p, b"reset"))
    {
        return None;
    }
    sql.split(';').rev().find_map(change_in_one)
}

/// Whether `sql` may change how the server resolves unqualified names in ways the proxy cannot
/// follow from the text alone: a part starting with `SET`, `RESET` or `DISCARD` that names
/// `search_path`, a role (`SET ROLE`, `SET SESSION AUTHORIZATION`: `$user` changes), or resets
/// everything (`RESET ALL`, `DISCARD ALL`), or a call of `set_config`
/// ([`crate::rewrite::resolution`]). `SET LOCAL` and a rolled-back `SET` are undone by the
/// server at the end of the transaction, so after such a statement the session re-reads the
/// server's values at the next idle point (and again when the transaction ends).
pub fn needs_resync(sql: &str) -> bool {
    crate::rewrite::resolution::changes_resolution(sql)
}

/// The setting as the server shows it (`current_setting('search_path')`).
pub fn parse_shown(v: &str) -> Option<Setting> {
    parse_list(v)
}

fn change_in_one(stmt: &str) -> Option<Change> {
    let s = stmt.trim();
    let lower = s.to_ascii_lowercase();
    let words: Vec<&str> = lower.split_ascii_whitespace().collect();
    match words.as_slice() {
        ["reset", "all"] | ["reset", "search_path"] => return Some(Change::Reset),
        _ => {}
    }
    let mut rest = lower.strip_prefix("set")?.trim_start();
    let mut orig = s.get(s.len() - rest.len()..)?;
    for kw in ["session ", "local "] {
        if let Some(r) = rest.strip_prefix(kw) {
            rest = r.trim_start();
            orig = s.get(s.len() - rest.len()..)?;
        }
    }
    let r = rest.strip_prefix("search_path")?.trim_start();
    let r = r
        .strip_prefix("to ")
        .or_else(|| r.strip_prefix('='))
        .or_else(|| r.strip_prefix("to\t"))?;
    let value = orig.get(orig.len() - r.len()..)?.trim();
    if value.eq_ignore_ascii_case("default") {
        return Some(Change::Reset);
    }
    parse_list(value).map(Change::Set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_and_set() {
        let p = vec![("options".to_owned(), "-c search_path=app,public".to_owned())];
        assert_eq!(from_startup(&p), Some(vec!["app".into(), "public".into()]));
        let p = vec![("search_path".to_owned(), "\"My\", x".to_owned())];
        assert_eq!(from_startup(&p), Some(vec!["My".into(), "x".into()]));
        assert_eq!(from_startup(&[]), None);
        assert_eq!(
            expand(&default_setting(), "alice"),
            vec!["alice".to_owned(), "public".to_owned()]
        );
        assert_eq!(
            change_in("SET search_path TO App, \"B\""),
            Some(Change::Set(vec!["app".into(), "B".into()]))
        );
        assert_eq!(
            change_in("set session search_path = 'x, y'"),
            Some(Change::Set(vec!["x".into(), "y".into()]))
        );
        assert_eq!(change_in("SET search_path TO DEFAULT"), Some(Change::Reset));
        assert_eq!(change_in("RESET search_path"), Some(Change::Reset));
        assert_eq!(change_in("SELECT 1"), None);
        assert_eq!(change_in("SET work_mem = '1MB'"), None);
        // In any `;`-separated part, after whitespace, in any case; the last one wins.
        assert_eq!(
            change_in("SELECT 1;\n  sEt search_path TO a; SELECT 2"),
            Some(Change::Set(vec!["a".into()]))
        );
        assert_eq!(
            change_in("SET search_path TO a; reset ALL"),
            Some(Change::Reset)
        );
        assert_eq!(change_in("SELECT 'SET search_path TO a'"), None);
        assert_eq!(change_in("  \t"), None);
        assert_eq!(change_in("SE"), None);
    }

    #[test]
    fn statements_that_need_a_resync() {
        for sql in [
            "SET search_path TO a",
            "set local search_path = a",
            "BEGIN; SET LOCAL search_path TO a",
            "RESET search_path",
            "RESET ALL",
            "DISCARD ALL",
            "SET ROLE other",
            "RESET ROLE",
            "SET SESSION AUTHORIZATION other",
            "  SeT search_path TO \"odd\"\"name\"",
        ] {
            assert!(needs_resync(sql), "{sql}");
        }
        for sql in [
            "SELECT 'SET search_path TO a'",
            "SET statement_timeout = 0",
            "SET TimeZone = 'UTC'",
            "SELECT search_path FROM t",
            "DISCARD PLANS",
        ] {
            assert!(!needs_resync(sql), "{sql}");
        }
        assert_eq!(
            parse_shown("\"$user\", public, \"My Schema\""),
            Some(vec!["$user".into(), "public".into(), "My Schema".into()])
        );
    }
}
