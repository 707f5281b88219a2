//! The fail-closed gate: what a statement touches, by PostgreSQL's own grammar.
//!
//! Every statement of a session with protected tables that may touch one (see
//! [`prefilter`]) is parsed with libpg_query — the PostgreSQL server's parser as a library —
//! under the session's lexer settings ([`LexerState`]). From its parse tree the gate decides:
//! - which relations the statement names, with identifiers decoded as the server decodes them
//!   (`U&"p\0061tients"` is `patients`, long names are truncated to 63 bytes), and whether any
//!   identifier anywhere in it (a `RangeVar`, a `DROP` list, a column, an alias) is the name
//!   of a protected relation;
//! - whether it is a **catalog barrier** (it may change what a name resolves to or which
//!   relations are protected: `CREATE TABLE … INHERITS`, `ALTER TABLE … ATTACH PARTITION`,
//!   `CREATE VIEW`, `DROP`, …), and which names it makes uncertain ([`Dirty`]);
//! - whether it may change the lexer settings or name resolution of the session;
//! - forms refused outright: renames and schema moves of protected tables and columns,
//!   assignments to a field or element of a protected column, type changes of a protected
//!   column, function and `DO` bodies that touch protected relations ([`body`]).
//!
//! Within one query string, a statement behind a barrier that uses a name the barrier made
//! uncertain and carries values (or writes) is refused: the server parses the whole string
//! before running any of it, so the proxy cannot analyse the rest with the catalog the barrier
//! leaves behind. Across a pipeline the session does the same with the barriers still in
//! flight (`encrypt::session`), and reloads the catalog once a barrier is answered.
//!
//! The rewriter (sqlparser) still rewrites what it supports; the encryption layer checks that
//! it read the same statements and relations as the gate (`rewrite::Expectation`).

pub mod body;
pub mod names;
pub mod prefilter;
mod shape_cache;
mod statement;
mod walk;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use pg_query::protobuf::ScanToken;
use pg_query::protobuf::Token;

pub use body::Trust;
pub use names::Names;
pub use shape_cache::ShapeCache;

use super::lexer::{Known, LexerState};
use crate::rewrite::refusal::{FEATURE_NOT_SUPPORTED, SYNTAX_ERROR};
use crate::rewrite::Refusal;

/// PostgreSQL's identifier limit (NAMEDATALEN - 1).
const MAX_IDENTIFIER_BYTES: usize = 63;

/// The names a barrier makes uncertain until the server has answered it and the catalog is
/// read again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dirty {
    /// The identifiers the barrier statement contains (relation names among them).
    Names(Vec<String>),
    /// Unqualified names (search_path or the role may have changed).
    Unqualified,
    /// Every name (a new schema, an extension, an unknown statement kind).
    All,
}

impl Dirty {
    /// Whether a later statement `s` uses a name this barrier made uncertain.
    pub fn touches(&self, s: &StatementFacts) -> bool {
        if s.body {
            // A body's SQL is a string constant: any uncertain name in its text counts (and
            // behind a change of every name or of unqualified ones, any body).
            return match self {
                Dirty::All | Dirty::Unqualified => true,
                Dirty::Names(names) => s.identifiers.iter().any(|i| {
                    let i = i.to_lowercase();
                    names.iter().any(|n| i.contains(&n.to_lowercase()))
                }),
            };
        }
        match self {
            Dirty::All => !s.relations.is_empty() || s.names_protected,
            Dirty::Unqualified => s.relations.iter().any(|(schema, _)| schema.is_empty()),
            Dirty::Names(names) => {
                s.relations
                    .iter()
                    .any(|(_, r)| names.iter().any(|n| n.eq_ignore_ascii_case(r)))
                    || s.identifiers
                        .iter()
                        .any(|i| names.iter().any(|n| n.eq_ignore_ascii_case(i)))
            }
        }
    }
}

/// What the gate found in one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementFacts {
    /// The statement's node type (`InsertStmt`, `CreateStmt`, …).
    pub kind: &'static str,
    /// Every `RangeVar`: (schema, relation), schema empty when unqualified.
    pub relations: Vec<(String, String)>,
    /// The `RangeVar` names (lower case) that are protected relation names.
    pub protected_relations: Vec<String>,
    /// Whether any identifier of the statement is a protected relation name.
    pub names_protected: bool,
    /// A literal or a parameter.
    pub carries_values: bool,
    /// Whether any identifier of the statement is a protected column name.
    pub names_protected_column: bool,
    /// An INSERT, UPDATE, DELETE or MERGE anywhere in it.
    pub writes: bool,
    /// A function or DO body.
    pub body: bool,
    /// The names it makes uncertain, if it is a catalog barrier.
    pub barrier: Option<Dirty>,
    /// It may change `standard_conforming_strings`, `backslash_quote` or the encoding.
    pub lexer_change: bool,
    /// It may change `search_path` or the role.
    pub resolution_change: bool,
    /// It ends (or rolls back part of) a transaction block.
    pub ends_block: bool,
    /// Every identifier outside literals.
    pub identifiers: Vec<String>,
}

/// Statement kinds that read or write rows (and carry values to them).
const DATA_KINDS: &[&str] = &[
    "SelectStmt",
    "InsertStmt",
    "UpdateStmt",
    "DeleteStmt",
    "MergeStmt",
    "CopyStmt",
    "ExplainStmt",
    "DeclareCursorStmt",
    "PrepareStmt",
    "ExecuteStmt",
    "CallStmt",
    "CreateTableAsStmt",
];

impl StatementFacts {
    /// Whether the statement can carry a value into a relation or run code with one: a data
    /// statement with a literal or parameter (or one that writes), a body, or DDL with a
    /// literal where a protected column's name appears (a `DEFAULT`, `CHECK` or index
    /// predicate on it).
    fn uses_values(&self) -> bool {
        if self.body {
            return true;
        }
        if DATA_KINDS.contains(&self.kind) {
            return self.carries_values || self.writes;
        }
        self.carries_values && self.names_protected_column
    }
}

/// What the gate found in a query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub statements: Vec<StatementFacts>,
}

impl Facts {
    /// Whether any statement names a protected relation.
    pub fn names_protected(&self) -> bool {
        self.statements.iter().any(|s| s.names_protected)
    }

    /// The barriers of the string, in order.
    pub fn barriers(&self) -> impl Iterator<Item = &Dirty> {
        self.statements.iter().filter_map(|s| s.barrier.as_ref())
    }

    /// Whether a statement may change the lexer settings.
    pub fn lexer_change(&self) -> bool {
        self.statements.iter().any(|s| s.lexer_change)
    }

    /// Whether a statement may change search_path or the role (or is a barrier for all
    /// names).
    pub fn resolution_change(&self) -> bool {
        self.statements.iter().any(|s| s.resolution_change)
    }

    /// Whether a statement ends a transaction block.
    pub fn ends_block(&self) -> bool {
        self.statements.iter().any(|s| s.ends_block)
    }

    /// Whether a barrier still in flight makes this string unsafe to forward.
    pub fn blocked_by(&self, pending: &Pending) -> bool {
        self.statements.iter().any(|s| pending.blocks(s))
    }

    /// The barriers (and changes of search_path or the role) of the string.
    pub fn pending(&self) -> Vec<Pending> {
        self.pending_after(&[])
    }

    /// The barriers of the string, sent behind `before` (still in flight): a barrier that
    /// uses a name a protected barrier made uncertain (`CREATE TABLE b () INHERITS (a)` behind
    /// `CREATE TABLE a () INHERITS (patients)`) is protected too.
    pub fn pending_after(&self, before: &[Pending]) -> Vec<Pending> {
        let mut all: Vec<Pending> = before.to_vec();
        let mut out = Vec::new();
        for s in &self.statements {
            if let Some(mut p) = Pending::of(s) {
                if all.iter().any(|q| q.protected && q.dirty.touches(s)) {
                    p.protected = true;
                }
                all.push(p.clone());
                out.push(p);
            }
        }
        out
    }
}

/// [`analyse`] through a cache of facts by statement shape ([`ShapeCache`]): a statement
/// that differs from an analysed one only in its constants costs a scan, not a parse.
/// `generation` identifies `names` (the catalog generation they were built at).
pub fn analyse_cached(
    sql: &str,
    lexer: &LexerState,
    names: &Names,
    trust: Trust,
    cache: &ShapeCache,
    generation: u64,
) -> Result<Arc<Facts>, Refusal> {
    if *lexer != LexerState::SERVER_DEFAULT {
        return analyse(sql, lexer, names, trust).map(Arc::new);
    }
    let Ok(scan) = pg_query::scan(sql) else {
        return analyse(sql, lexer, names, trust).map(Arc::new);
    };
    let key = shape_cache::shape(sql, &scan.tokens).map(|mut k| {
        k.push(u8::from(trust == Trust::Migration));
        k
    });
    if let Some(k) = &key {
        if let Some(f) = cache.get(generation, k) {
            return Ok(f);
        }
    }
    let facts = Arc::new(analyse_scanned(
        sql,
        lexer,
        names,
        trust,
        Some(&scan.tokens),
    )?);
    if let Some(k) = key {
        cache.put(generation, k, &facts);
    }
    Ok(facts)
}

/// Analyses `sql` as the server will read it. `Err` is the refusal to send instead.
pub fn analyse(
    sql: &str,
    lexer: &LexerState,
    names: &Names,
    trust: Trust,
) -> Result<Facts, Refusal> {
    analyse_scanned(sql, lexer, names, trust, None)
}

fn analyse_scanned(
    sql: &str,
    lexer: &LexerState,
    names: &Names,
    trust: Trust,
    tokens: Option<&[ScanToken]>,
) -> Result<Facts, Refusal> {
    if !lexer.client_utf8 && !sql.is_ascii() {
        return Err(Refusal::new(
            FEATURE_NOT_SUPPORTED,
            "pgseal: in a session with protected tables, statements with non-ASCII text need \
             client_encoding UTF8 (the proxy reads SQL as UTF-8)",
        ));
    }
    let mut readings = Vec::new();
    for opts in lexer.parser_options() {
        let parsed = match pg_query::parse(sql, opts) {
            Ok(p) => p,
            Err(e) => {
                if lexer.uncertain() {
                    return Err(uncertain_lexer());
                }
                return Err(Refusal::new(
                    SYNTAX_ERROR,
                    parse_error_message(&e, sql, names),
                ));
            }
        };
        let mut facts = Facts::default();
        for raw in &parsed.protobuf.stmts {
            let f = statement::facts(raw, names)?;
            if let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
                body::check(node, names, trust, f.names_protected, f.carries_values)?;
            }
            facts.statements.push(f);
        }
        readings.push(facts);
    }
    let mut readings = readings.into_iter();
    let Some(facts) = readings.next() else {
        return Err(uncertain_lexer());
    };
    for other in readings {
        if other != facts {
            return Err(uncertain_lexer());
        }
    }
    if facts.names_protected() {
        if lexer.uncertain() {
            return Err(uncertain_lexer());
        }
        if lexer.standard_conforming_strings == Known::Off {
            return Err(Refusal::new(
                FEATURE_NOT_SUPPORTED,
                "pgseal: statements on protected tables need standard_conforming_strings = on",
            ));
        }
        match tokens {
            Some(t) => check_tokens_in(sql, t, names)?,
            None => check_tokens(sql, names)?,
        }
    }
    check_barriers_in_string(&facts)?;
    Ok(facts)
}

fn uncertain_lexer() -> Refusal {
    Refusal::new(
        FEATURE_NOT_SUPPORTED,
        "pgseal: a statement that may change how the server reads SQL text \
         (standard_conforming_strings, backslash_quote, client_encoding) is still in flight; \
         this statement reads differently under the settings it may leave, so it is not \
         forwarded — wait for the answer before sending it",
    )
}

/// PostgreSQL's own message for a syntax error, without the token it quotes when that is
/// a literal (the message reaches the client only, but never carries a value), and naming
/// the protected table the text mentions, if any.
fn parse_error_message(e: &pg_query::Error, sql: &str, names: &Names) -> String {
    let pg = match e {
        pg_query::Error::Parse(m) => m.clone(),
        other => other.to_string(),
    };
    let mut message = match pg.split_once(" at or near \"") {
        Some((head, token)) => {
            let token = token.strip_suffix('"').unwrap_or(token);
            let literal = token.starts_with(['\'', '$']) || token.contains('\'');
            if literal {
                format!("{head} at or near a literal")
            } else {
                format!("{head} at or near \"{token}\"")
            }
        }
        None => pg,
    };
    if let Some(t) = names.relation_in_text(sql) {
        message.push_str(&format!(
            " (pgseal: the statement mentions protected table {t} and is not forwarded)"
        ));
    }
    message
}

/// Token-level checks of a statement that names a protected relation: a Unicode-escaped
/// identifier or string, or an identifier the server truncates, reads differently in the
/// rewriter's parser.
fn check_tokens(sql: &str, names: &Names) -> Result<(), Refusal> {
    let Ok(scan) = pg_query::scan(sql) else {
        return Err(Refusal::new(
            SYNTAX_ERROR,
            "pgseal: a statement that names a protected table could not be scanned",
        ));
    };
    check_tokens_in(sql, &scan.tokens, names)
}

fn check_tokens_in(sql: &str, tokens: &[ScanToken], names: &Names) -> Result<(), Refusal> {
    for t in tokens {
        check_token(sql, t, names)?;
    }
    Ok(())
}

fn check_token(sql: &str, t: &ScanToken, names: &Names) -> Result<(), Refusal> {
    let token = Token::try_from(t.token).unwrap_or(Token::Nul);
    match token {
        Token::Uident | Token::Usconst | Token::Uescape => Err(Refusal::new(
            FEATURE_NOT_SUPPORTED,
            "pgseal: Unicode escapes (U&\"…\", U&'…') are not supported in statements on \
             protected tables; write the name or value as it is",
        )),
        Token::Ident => {
            let start = usize::try_from(t.start).unwrap_or(0);
            let end = usize::try_from(t.end).unwrap_or(0);
            let raw = sql.get(start..end).unwrap_or("");
            let inner = raw.trim_matches('"');
            if inner.len() > MAX_IDENTIFIER_BYTES {
                let cut = inner.get(..MAX_IDENTIFIER_BYTES).unwrap_or(inner);
                if names.is_relation(cut) || names.is_column(cut) || cut.len() < inner.len() {
                    return Err(Refusal::new(
                        FEATURE_NOT_SUPPORTED,
                        "pgseal: identifiers longer than 63 bytes (which the server truncates) \
                         are not supported in statements on protected tables",
                    ));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A barrier still to be answered by the server: the names it made uncertain, and whether
/// the barrier statement itself named a protected relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub dirty: Dirty,
    pub protected: bool,
}

impl Pending {
    /// The barrier (or change of search_path / role) of statement `s`, if it is one.
    pub fn of(s: &StatementFacts) -> Option<Pending> {
        let dirty = match (&s.barrier, s.resolution_change) {
            (Some(d), _) => d.clone(),
            (None, true) => Dirty::Unqualified,
            (None, false) => return None,
        };
        Some(Pending {
            dirty,
            protected: s.names_protected,
        })
    }

    /// Whether statement `t`, sent behind this barrier, must not be forwarded: it uses a name
    /// the barrier made uncertain and carries values, and a protected relation is involved
    /// on either side.
    pub fn blocks(&self, t: &StatementFacts) -> bool {
        t.uses_values() && (self.protected || t.names_protected) && self.dirty.touches(t)
    }
}

/// Refuses a string in which a statement behind a barrier (or a change of search_path or
/// the role) uses a name it made uncertain, carries values, and a protected relation is
/// involved ([`Pending::blocks`]).
fn check_barriers_in_string(facts: &Facts) -> Result<(), Refusal> {
    let mut pendings: Vec<(usize, Pending)> = Vec::new();
    for (j, t) in facts.statements.iter().enumerate() {
        for (i, pending) in &pendings {
            if pending.blocks(t) {
                let i = *i;
                return Err(Refusal::new(
                    FEATURE_NOT_SUPPORTED,
                    format!(
                        "pgseal: statement {} of this query string changes the catalog, \
                         search_path or the role, and statement {} uses a name it affects; \
                         the proxy analyses a statement only with the catalog the server \
                         will use, so send the change as its own query first",
                        i + 1,
                        j + 1
                    ),
                ));
            }
        }
        if let Some(mut p) = Pending::of(t) {
            if pendings
                .iter()
                .any(|(_, q)| q.protected && q.dirty.touches(t))
            {
                p.protected = true;
            }
            pendings.push((j, p));
        }
    }
    Ok(())
}
