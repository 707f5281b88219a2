//! Function, procedure and `DO` bodies.
//!
//! A body is code the server runs later (or, for `DO`, at once) under settings the proxy does
//! not see then: `standard_conforming_strings` when a PL/pgSQL function is first called decides
//! how its statements are split, and `EXECUTE` builds SQL from strings at run time. So the
//! analysis does not depend on a reading of the body's SQL: for a user that is not trusted for
//! migrations, a body is refused when its text (in any case, inside literals and comments
//! alike) contains the name of a protected relation or a Unicode-escaped identifier, when a
//! PL/pgSQL body contains the word `EXECUTE` (dynamic SQL), and when it is written in a
//! language whose code the proxy cannot read (anything but SQL, PL/pgSQL, C and internal).
//!
//! For a trusted migration user (`[encryption] trusted_migration_users`) bodies may touch
//! protected relations — a trust decision — but a body that holds a literal in a statement
//! naming a protected relation is still refused: it could be plaintext meant for a protected
//! column, and it would sit in the server's log and catalog.

use pg_query::protobuf::{CreateFunctionStmt, DoStmt, Node};
use pg_query::NodeEnum;

use super::names::Names;
use super::walk::walk;
use crate::rewrite::refusal::FEATURE_NOT_SUPPORTED;
use crate::rewrite::Refusal;

/// Whose body it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// An ordinary application user.
    Untrusted,
    /// A user the configuration trusts for migrations.
    Migration,
}

/// A body to check: its language and source text (None for `BEGIN ATOMIC` bodies, which are
/// part of the parse tree already).
struct Body<'a> {
    language: String,
    source: Option<&'a str>,
    what: &'static str,
}

fn refusal(message: String) -> Refusal {
    Refusal::new(FEATURE_NOT_SUPPORTED, message)
}

fn def_elems(options: &[Node]) -> impl Iterator<Item = (&str, Option<&Node>)> {
    options.iter().filter_map(|o| match o.node.as_ref() {
        Some(NodeEnum::DefElem(d)) => Some((d.defname.as_str(), d.arg.as_deref())),
        _ => None,
    })
}

fn string_of(n: &Node) -> Option<&str> {
    match n.node.as_ref() {
        Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
        _ => None,
    }
}

fn function_body(f: &CreateFunctionStmt) -> Body<'_> {
    let mut language = "sql".to_owned();
    let mut source = None;
    for (name, arg) in def_elems(&f.options) {
        match (name, arg) {
            ("language", Some(a)) => {
                if let Some(l) = string_of(a) {
                    language = l.to_ascii_lowercase();
                }
            }
            ("as", Some(a)) => {
                source = match a.node.as_ref() {
                    Some(NodeEnum::List(l)) => l.items.first().and_then(string_of),
                    _ => string_of(a),
                };
            }
            _ => {}
        }
    }
    Body {
        language,
        source,
        what: if f.is_procedure {
            "a procedure body"
        } else {
            "a function body"
        },
    }
}

fn do_body(d: &DoStmt) -> Body<'_> {
    let mut language = "plpgsql".to_owned();
    let mut source = None;
    for (name, arg) in def_elems(&d.args) {
        match (name, arg) {
            ("language", Some(a)) => {
                if let Some(l) = string_of(a) {
                    language = l.to_ascii_lowercase();
                }
            }
            ("as", Some(a)) => source = string_of(a),
            _ => {}
        }
    }
    Body {
        language,
        source,
        what: "a DO block",
    }
}

/// Whether `text` contains `word` as a whole word, ignoring ASCII case.
fn has_word(text: &str, word: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    let b = lower.as_bytes();
    let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    let mut from = 0;
    while let Some(pos) = lower.get(from..).and_then(|s| s.find(word)) {
        let at = from + pos;
        let before = at.checked_sub(1).and_then(|i| b.get(i)).copied();
        let after = b.get(at + word.len()).copied();
        if !before.is_some_and(is_word) && !after.is_some_and(is_word) {
            return true;
        }
        from = at + 1;
    }
    false
}

/// Checks the body of a `CREATE FUNCTION` / `CREATE PROCEDURE` / `DO` statement (`node`), if
/// it is one. `names_protected`/`literal`: whether the statement's own parse tree (which holds
/// a `BEGIN ATOMIC` body) names a protected relation, and holds a literal.
pub(crate) fn check(
    node: &NodeEnum,
    names: &Names,
    trust: Trust,
    names_protected: bool,
    literal: bool,
) -> Result<(), Refusal> {
    let body = match node {
        NodeEnum::CreateFunctionStmt(f) => function_body(f),
        NodeEnum::DoStmt(d) => do_body(d),
        _ => return Ok(()),
    };
    let what = body.what;
    let source = body.source.unwrap_or("");
    let named = names
        .relation_in_text(source)
        .map(str::to_owned)
        .or_else(|| {
            // A BEGIN ATOMIC body, or a signature naming a protected row type.
            names_protected.then(|| "a protected table".to_owned())
        });
    match trust {
        Trust::Untrusted => {
            if let Some(t) = named {
                return Err(refusal(format!(
                    "pgseal: {what} that names protected table {t} is refused in a session with \
                     protected tables; run it as a trusted migration user (docs/sql.md, \
                     \"Function bodies\")"
                )));
            }
            if source.contains("&\"") {
                return Err(refusal(format!(
                    "pgseal: {what} with a Unicode-escaped identifier is refused in a session \
                     with protected tables"
                )));
            }
            match body.language.as_str() {
                "sql" | "c" | "internal" => {}
                "plpgsql" => {
                    if has_word(source, "execute") {
                        return Err(refusal(format!(
                            "pgseal: {what} with dynamic SQL (EXECUTE) is refused in a session \
                             with protected tables; run it as a trusted migration user \
                             (docs/sql.md, \"Function bodies\")"
                        )));
                    }
                }
                other => {
                    return Err(refusal(format!(
                        "pgseal: {what} in language {other} cannot be analysed and is refused in \
                         a session with protected tables; run it as a trusted migration user"
                    )));
                }
            }
            Ok(())
        }
        Trust::Migration => {
            if named.is_none() {
                return Ok(());
            }
            if literal_in_protected_statement(&body, names) || (names_protected && literal) {
                return Err(refusal(format!(
                    "pgseal: {what} holds a literal in a statement on a protected table; it could \
                     be plaintext of a protected column, which must never reach the server — \
                     pass values as parameters"
                )));
            }
            Ok(())
        }
    }
}

/// Whether a statement or expression of the body whose text names a protected relation holds
/// a literal (static SQL with a value, or a string that dynamic SQL runs). A body that cannot
/// be read counts as holding one when its text names a protected relation.
fn literal_in_protected_statement(body: &Body<'_>, names: &Names) -> bool {
    let Some(source) = body.source else {
        return false;
    };
    let statements: Vec<String> = match body.language.as_str() {
        "sql" => vec![source.to_owned()],
        "plpgsql" => match plpgsql_queries(source) {
            Some(q) => q,
            None => return true,
        },
        _ => return names.relation_in_text(source).is_some(),
    };
    statements.iter().any(|sql| {
        if names.relation_in_text(sql).is_none() {
            return false;
        }
        // PL/pgSQL hands statements (mode 0), expressions (2) and assignments (3).
        let parsed = [0, 2, 3]
            .iter()
            .find_map(|&mode| pg_query::parse(sql, mode).ok());
        match parsed {
            Some(p) => p.protobuf.stmts.iter().any(|raw| walk(raw).literal),
            None => true,
        }
    })
}

/// The SQL text of every statement and expression of a PL/pgSQL body, as libpg_query's
/// PL/pgSQL parser splits it.
fn plpgsql_queries(source: &str) -> Option<Vec<String>> {
    let tag = dollar_tag(source);
    let wrapped = format!(
        "CREATE FUNCTION pgseal_body() RETURNS void LANGUAGE plpgsql AS {tag}{source}{tag}"
    );
    let tree = pg_query::parse_plpgsql(&wrapped).ok()?;
    let mut out = Vec::new();
    collect_queries(&tree, &mut out);
    Some(out)
}

fn collect_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("query", serde_json::Value::String(q)) => out.push(q.clone()),
                    _ => collect_queries(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_queries(x, out)),
        _ => {}
    }
}

/// A dollar-quote tag that does not occur in `source`.
fn dollar_tag(source: &str) -> String {
    let mut n = 0u32;
    loop {
        let tag = format!("$pgseal{n}$");
        if !source.contains(&tag) {
            return tag;
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names::for_tests(&["patients"], &["email"], &["public"])
    }

    fn run(sql: &str, trust: Trust) -> Result<(), Refusal> {
        let parsed = pg_query::parse(sql, 0).unwrap();
        let raw = &parsed.protobuf.stmts[0];
        let node = raw.stmt.as_ref().unwrap().node.as_ref().unwrap();
        let f = walk(raw);
        let protected = f.identifiers.iter().any(|i| names().is_relation(i));
        check(node, &names(), trust, protected, f.literal)
    }

    #[test]
    fn untrusted_bodies_naming_protected_tables_are_refused() {
        for sql in [
            "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ INSERT INTO patients (email) VALUES ('s') $$",
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN INSERT INTO PATIENTS VALUES ('s'); END $$",
            "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO patients (email) VALUES ('s'); END",
            "DO $$ BEGIN EXECUTE format('INSERT INTO %I VALUES (1)', 'pat' || 'ients'); END $$",
            "DO $$ BEGIN execute 'select 1'; END $$",
            "DO 'BEGIN INSERT INTO patients VALUES (1); END'",
            "DO LANGUAGE plpython3u $$ plpy.execute('x') $$",
            "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ INSERT INTO U&\"p\\0061tients\" VALUES (1) $$",
            "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO public.patients SELECT NEW.*; RETURN NEW; END $$",
        ] {
            assert!(run(sql, Trust::Untrusted).is_err(), "{sql}");
        }
    }

    #[test]
    fn untrusted_bodies_on_other_tables_pass() {
        for sql in [
            "CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql AS $$ SELECT a + 1 $$",
            "DO $$ BEGIN PERFORM 1; END $$",
            "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$",
            "CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'lib', 'sym'",
        ] {
            assert!(run(sql, Trust::Untrusted).is_ok(), "{sql}");
        }
    }

    #[test]
    fn trusted_bodies_may_touch_protected_tables_but_never_with_literals() {
        assert!(run(
            "CREATE FUNCTION f(e bytea) RETURNS void LANGUAGE sql AS $$ INSERT INTO patients (email) VALUES (e) $$",
            Trust::Migration
        )
        .is_ok());
        assert!(run(
            "DO $$ BEGIN EXECUTE 'SELECT count(*) FROM patients'; END $$",
            Trust::Migration
        )
        .is_err());
        for sql in [
            "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ INSERT INTO patients (email) VALUES ('s') $$",
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN UPDATE patients SET email = 'x'; END $$",
            "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO patients (email) VALUES ('s'); END",
        ] {
            assert!(run(sql, Trust::Migration).is_err(), "{sql}");
        }
    }

    #[test]
    fn words_are_whole_words() {
        assert!(has_word("BEGIN EXECUTE x", "execute"));
        assert!(!has_word("BEGIN executed", "execute"));
        assert!(!has_word("my_execute()", "execute"));
    }
}
