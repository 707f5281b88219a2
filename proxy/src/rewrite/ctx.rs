//! The per-call analysis state: slots, protected parameter uses, raw fragments.

use sqlparser::ast::{Expr, Ident, ObjectName, ObjectNamePart};

use super::mention;
use super::plan::{IndexPiece, Slot, UpstreamParam};
use super::refusal::Refusal;
use super::schema::{fold, ProtectedColumn, ProtectedSchema, TableResolver};
use super::scope::{ColKind, Scope};
use super::template::{ParamUse, Sentinels};

/// Analysis state of one `rewrite` call.
pub(crate) struct Ctx<'a> {
    pub(crate) schema: &'a ProtectedSchema,
    resolver: &'a dyn TableResolver,
    search_path: &'a [String],
    pub(crate) sentinels: Sentinels,
    pub(crate) slots: Vec<Slot>,
    pub(crate) params: Vec<ParamUse>,
    pub(crate) raws: Vec<IndexPiece>,
    /// Set when the AST was changed (the statement must be re-printed).
    pub(crate) modified: bool,
    /// The relation names (last part, folded) the analysis resolved, in order: compared with
    /// what PostgreSQL's grammar reads ([`super::Expectation`]).
    pub(crate) seen: std::cell::RefCell<Vec<String>>,
}

/// Folded parts of an object name (None if a part is not a plain identifier).
pub(crate) fn name_parts(name: &ObjectName) -> Option<Vec<String>> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(fold(i)),
            ObjectNamePart::Function(_) => None,
        })
        .collect()
}

/// The folded parts of a column reference expression, if it is one.
pub(crate) fn col_ref(e: &Expr) -> Option<Vec<String>> {
    match e {
        Expr::Identifier(i) => Some(vec![fold(i)]),
        Expr::CompoundIdentifier(is) => Some(is.iter().map(fold).collect()),
        Expr::Nested(inner) => col_ref(inner),
        _ => None,
    }
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        sql: &str,
        schema: &'a ProtectedSchema,
        resolver: &'a dyn TableResolver,
        search_path: &'a [String],
    ) -> Self {
        Self {
            schema,
            resolver,
            search_path,
            sentinels: Sentinels::new(sql),
            slots: Vec::new(),
            params: Vec::new(),
            raws: Vec::new(),
            modified: false,
            seen: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// Resolves a table name to (schema, table). A name the resolver does not know but that
    /// names a protected table in a search_path schema is taken to be that table (fail closed).
    /// An unqualified name that does not resolve to a protected table while a protected
    /// relation of that name exists is refused ([`Ctx::not_shadowing`]).
    pub(crate) fn resolve_table(
        &self,
        name: &ObjectName,
    ) -> Result<Option<(String, String)>, Refusal> {
        let Some(parts) = name_parts(name) else {
            return Ok(None);
        };
        if let Some(last) = parts.last() {
            self.seen.borrow_mut().push(last.clone());
        }
        let resolved = match self.resolver.resolve(&parts, self.search_path) {
            Some(r) => Some(r),
            None => match parts.as_slice() {
                [t] => self
                    .search_path
                    .iter()
                    .find(|s| self.schema.table(s, t).is_some())
                    .map(|s| (s.clone(), t.clone())),
                [s, t] | [_, s, t] => Some((s.clone(), t.clone())),
                _ => None,
            },
        };
        if let [t] = parts.as_slice() {
            self.not_shadowing(resolved.as_ref(), t)?;
        }
        Ok(resolved)
    }

    /// Refuses an unqualified name `table` that resolved to `resolved` — a relation that is not
    /// protected, or nothing on the search_path the proxy knows — while a protected table (or
    /// a view over one) of the same name exists. The server resolves the name with the
    /// session's search_path as it is when the statement runs; the proxy knows it as of the
    /// last change it saw, and a function can change it unseen (`set_config` in its body). Had
    /// the two diverged, the plaintext meant for the protected table would reach it. Qualified
    /// names are taken as written.
    fn not_shadowing(
        &self,
        resolved: Option<&(String, String)>,
        table: &str,
    ) -> Result<(), Refusal> {
        if let Some((s, t)) = resolved {
            // Tainted: refused with its own reason where it is named.
            if self.schema.tainted(s, t).is_some() {
                return Ok(());
            }
            if self.schema.table(s, t).is_some() {
                // Protected, and no other relation of that name: the server cannot resolve
                // the name to anything else whatever its search_path.
                let Some(other) = self.resolver.schema_elsewhere(t, s) else {
                    return Ok(());
                };
                return Err(Refusal::new(
                    super::refusal::FEATURE_NOT_SUPPORTED,
                    format!(
                        "pgseal: {table} resolves to protected table {s}.{t}, but {other}.{t} \
                         exists too and the server could resolve the name to it (a function \
                         can change the search_path unseen); qualify the name ({s}.{t})"
                    ),
                ));
            }
        }
        let Some(protected) = self.schema.protected_relation_named(table) else {
            return Ok(());
        };
        let message = match resolved {
            Some((s, t)) => {
                let later = match self.search_path.iter().position(|p| p == s) {
                    Some(i) => self.search_path.get(i + 1..).unwrap_or_default(),
                    None => self.search_path,
                };
                match later.iter().find(|p| self.schema.table(p, t).is_some()) {
                    Some(p) => format!(
                        "pgseal: {table} resolves to {s}.{t}, which is not protected but \
                         comes before protected table {p}.{t} on the search_path; qualify the \
                         name ({p}.{t} or {s}.{t})"
                    ),
                    None => format!(
                        "pgseal: {table} resolves to {s}.{t}, which is not protected, while \
                         {protected} is protected; the server could resolve the name \
                         differently (a function can change the search_path unseen); qualify \
                         the name ({protected} or {s}.{t})"
                    ),
                }
            }
            None => format!(
                "pgseal: {table} names no relation on the search_path, while {protected} is \
                 protected; the server could resolve the name differently (a function can change \
                 the search_path unseen); qualify the name"
            ),
        };
        Err(Refusal::new(super::refusal::FEATURE_NOT_SUPPORTED, message))
    }

    /// The schema a new table named `name` is created in (first search_path schema).
    pub(crate) fn creation_target(&self, name: &ObjectName) -> Option<(String, String)> {
        let parts = name_parts(name)?;
        if let Some(last) = parts.last() {
            self.seen.borrow_mut().push(last.clone());
        }
        match parts.as_slice() {
            [t] => self
                .search_path
                .iter()
                .find(|s| {
                    s.as_str() != "pg_catalog"
                        && !s.starts_with('$')
                        && self.resolver.schema_exists(s)
                })
                .map(|s| (s.clone(), t.clone())),
            [s, t] | [_, s, t] => Some((s.clone(), t.clone())),
            _ => None,
        }
    }

    /// The protected column an expression refers to directly, if any.
    pub(crate) fn protected_ref(
        &self,
        e: &Expr,
        scope: &Scope<'_>,
    ) -> Result<Option<ProtectedColumn>, Refusal> {
        match col_ref(e) {
            Some(parts) => Ok(match scope.resolve(&parts)? {
                ColKind::Protected(p) => Some(*p),
                ColKind::Plain => None,
            }),
            None => Ok(None),
        }
    }

    /// Adds a slot; returns the expression standing for it.
    pub(crate) fn slot(&mut self, slot: Slot) -> Expr {
        let i = self.slots.len();
        self.slots.push(slot);
        self.modified = true;
        Expr::Identifier(self.sentinels.slot(i))
    }

    /// Adds a protected parameter use; returns the expression standing for it.
    pub(crate) fn param(&mut self, p: UpstreamParam) -> Expr {
        self.param_use(ParamUse {
            param: p,
            lookup: None,
        })
    }

    /// Adds a scalar lookup comparison `<prefix> = <tags of p>` (`<>` when `negated`); returns
    /// the expression standing for the whole comparison (a [`super::plan::Piece::Lookup`]).
    pub(crate) fn lookup_param(&mut self, p: UpstreamParam, prefix: &Expr, negated: bool) -> Expr {
        self.param_use(ParamUse {
            param: p,
            lookup: Some((prefix.to_string(), negated)),
        })
    }

    fn param_use(&mut self, u: ParamUse) -> Expr {
        let i = self.params.len();
        self.params.push(u);
        self.modified = true;
        Expr::Identifier(self.sentinels.param(i))
    }

    /// Adds a raw SQL fragment; returns the identifier standing for it.
    /// Adds SQL over an indexed column's tags, rendered for the live form of its cells; returns
    /// the identifier standing for it.
    pub(crate) fn index_piece(&mut self, piece: IndexPiece) -> Ident {
        let i = self.raws.len();
        self.raws.push(piece);
        self.modified = true;
        self.sentinels.raw(i)
    }

    /// Fail-closed check for a node not analysed in detail: refuse if its text names a protected
    /// table, a protected column, or a name under which a protected column is visible.
    pub(crate) fn opaque_check(
        &self,
        text: &str,
        scope: &Scope<'_>,
        what: &str,
    ) -> Result<(), Refusal> {
        let mut extra = Vec::new();
        scope.protected_names(&mut extra);
        match mention::first_protected_word(text, self.schema, &extra) {
            None => Ok(()),
            Some(name) => Err(Refusal::new(
                super::refusal::FEATURE_NOT_SUPPORTED,
                format!("pgseal: {what} that mentions the protected name {name} is not supported"),
            )),
        }
    }
}
