//! Name resolution in a session: what a statement may do to `search_path` and the role, and
//! the refusals that keep the proxy's analysis in step with the server's (statements sent
//! before a change is answered, statements behind the end of a block that set it locally,
//! prepared statements whose meaning a change altered). See [`crate::rewrite::resolution`].

use super::{Effects, EncryptSession, Pending, Refused};
use crate::encrypt::search_path;
use crate::encrypt::wire::ParseMsg;
use crate::encrypt::Outcome;
use crate::rewrite::refusal::FEATURE_NOT_SUPPORTED;
use crate::sql::gate;

/// A `0A000` refusal with `message`.
fn refused(message: &str) -> Refused {
    (FEATURE_NOT_SUPPORTED, message.to_owned())
}

impl EncryptSession {
    /// Whether `sql` names a protected table (or a descendant or view of one), by text.
    fn names_protected(&self, sql: &str) -> bool {
        let snapshot = self.shared.catalog.snapshot();
        self.shared.mentions_protected(sql, &snapshot)
    }

    /// Whether a statement sent now may run after a change of name resolution the proxy has
    /// not applied yet (a `SET search_path`, `set_config`… still in flight, or its read-back
    /// pending): the server would resolve it with a setting the proxy does not know.
    fn resolution_unsettled(&self) -> bool {
        self.resync_pending
            || self.queue.iter().any(|p| match p {
                Pending::Execute { effects, .. } => effects.changes_resolution(),
                Pending::Query(q) => q.effects.changes_resolution(),
                Pending::Resync { .. } => true,
                _ => false,
            })
    }

    /// What `sql` (analysed as `outcome`) may do to name resolution and the lexer. Ending a
    /// transaction block in which search_path or a lexer setting was set locally (or set and
    /// rolled back to a savepoint) counts as a change.
    pub(super) fn effects(&self, sql: &str, outcome: &Outcome) -> Effects {
        let facts = outcome.facts.clone();
        let ends_block = self.resync_at_txn_end
            && (crate::rewrite::resolution::ends_block(sql, false)
                || facts.as_ref().is_some_and(|f| f.ends_block()));
        let pending = facts
            .as_ref()
            .map(|f| f.pending_after(&self.barriers_in_flight()))
            .unwrap_or_default();
        Effects {
            search_path: search_path::change_in(sql),
            resync: search_path::needs_resync(sql) || ends_block,
            lexer: facts.as_ref().is_some_and(|f| f.lexer_change()) || ends_block,
            facts,
            pending,
        }
    }

    /// The catalog barriers (and changes of search_path or the role) still in flight.
    pub(super) fn barriers_in_flight(&self) -> Vec<gate::Pending> {
        let mut out = self.parsed_barriers.clone();
        let mut add = |e: &Effects| out.extend(e.pending.iter().cloned());
        for p in &self.queue {
            match p {
                Pending::Execute { effects, .. } => add(effects),
                Pending::Query(q) => add(&q.effects),
                _ => {}
            }
        }
        out
    }

    /// The refusal of a statement sent while a catalog barrier is still in flight, when it
    /// uses a name the barrier may have changed, carries values, and a protected relation is
    /// involved ([`gate::Pending::blocks`]): the server runs it with the catalog the barrier
    /// leaves, which the proxy has not read yet.
    pub(super) fn behind_barrier(&self, sql: &str, outcome: &Outcome) -> Option<Refused> {
        let pending = self.barriers_in_flight();
        if pending.is_empty() {
            return None;
        }
        let facts = match &outcome.facts {
            Some(f) => f.clone(),
            None => match self.shared.facts(sql, &self.gate_input()) {
                Ok(f) => f,
                Err(r) => return Some((r.sqlstate, r.message)),
            },
        };
        pending.iter().any(|p| facts.blocked_by(p)).then(|| {
            refused(
                "pgseal: this statement was sent before the server answered a statement that \
                 changes the catalog, search_path or the role, and it uses a name that \
                 statement affects; wait for that answer before sending it",
            )
        })
    }

    /// The refusal of a query string that ends a transaction block in which search_path was
    /// set locally and then, in the same string, names a protected table (the server resolves
    /// it with the setting restored at the block's end, which the proxy reads back only after).
    pub(super) fn behind_block_end(&self, sql: &str) -> Option<Refused> {
        if !self.resync_at_txn_end || !crate::rewrite::resolution::ends_block(sql, true) {
            return None;
        }
        self.names_protected(sql).then(|| {
            refused(
                "pgseal: this query string ends a transaction block that changed search_path \
                 and then names a protected table; send the statements after the block's end \
                 in their own query",
            )
        })
    }

    /// The refusal of `sql` when it names a protected table and was sent before a change of
    /// name resolution was settled.
    pub(super) fn ahead_of_resolution_change(&self, sql: &str) -> Option<Refused> {
        if !self.resolution_unsettled() {
            return None;
        }
        self.names_protected(sql).then(|| {
            refused(
                "pgseal: this statement names a protected table and was sent before the \
                 server answered a statement changing search_path or the role; wait for \
                 that answer before sending it",
            )
        })
    }

    /// The refusal of a Bind of statement `name` when the statement was analysed under another
    /// name resolution than the one it will run under (PostgreSQL analyses a prepared statement
    /// again after a search_path change), or under another catalog (an online migration's
    /// cut-over turned a column it uses from plaintext to cells or back), and that changes its
    /// plan. A statement whose plan is unchanged is marked as checked at the current epoch and
    /// catalog generation.
    pub(super) fn analysed_under_other_resolution(&mut self, name: &str) -> Option<Refused> {
        let unsettled = self.resolution_unsettled();
        let epoch = self.path_epoch;
        let generation = self.shared.catalog.snapshot().generation();
        let stmt = self.statements.get(name)?;
        if stmt.path_epoch == epoch && stmt.catalog == generation && !unsettled {
            return None;
        }
        let path_changed = stmt.path_epoch != epoch;
        let parse = stmt.parse.clone();
        let old = stmt.outcome.clone();
        let sql = ParseMsg::parse(parse.get(5..).unwrap_or_default())
            .map(|m| m.query)
            .unwrap_or_default();
        if !self.names_protected(sql) {
            self.mark_checked(name, epoch, generation);
            return None;
        }
        let new = self.plan(sql);
        if unsettled || (path_changed && new.result != old.result) {
            return Some(refused(
                "pgseal: this prepared statement names a protected table and search_path or \
                 the role changed since it was prepared, which changes what it refers to; \
                 prepare it again",
            ));
        }
        if new.result != old.result {
            return Some(match &new.result {
                // The table is refused now (being cut over): that refusal.
                Err(r) => (r.sqlstate, r.message.clone()),
                // PostgreSQL's own words for a prepared statement whose table changed under it
                // (drivers such as pgjdbc prepare again on it).
                Ok(_) => refused(
                    "cached plan must not change result type (pgseal: a column this prepared \
                     statement uses was migrated between plaintext and encrypted since it was \
                     prepared; prepare it again)",
                ),
            });
        }
        self.mark_checked(name, epoch, generation);
        None
    }

    /// Records that statement `name` plans the same at `epoch` and catalog `generation`.
    fn mark_checked(&mut self, name: &str, epoch: u64, generation: u64) {
        if let Some(s) = self.statements.get_mut(name) {
            s.path_epoch = epoch;
            s.catalog = generation;
        }
    }

    /// The search_path statements are analysed with from now on.
    pub(super) fn set_search_path(&mut self, path: Vec<String>) {
        if path != self.search_path {
            self.search_path = path;
            self.path_epoch += 1;
        }
        self.plan_memo.clear();
    }
}
