//! A session's memo of its last few statement plans. The shared [`super::PlanCache`] hashes
//! the whole SQL text and takes a lock; a session mostly repeats a handful of statements (an
//! unnamed statement is parsed again on every execution), which the memo answers with a length
//! check and one comparison. Entries are valid for one catalog generation under the session's
//! current `search_path` (the session clears the memo when that changes); only plans, never
//! refusals, are remembered (a refusal may come from a failed catalog refresh).
//!
//! An entry also keeps the result columns a statement with that plan was last described with:
//! a hint for the next execution of the same statement (see the session's Bind), never used to
//! decrypt rows without the RowDescription that confirms it.

use std::sync::Arc;

use super::rows::RowPlan;
use super::Outcome;

/// How many plans a session remembers.
const CAPACITY: usize = 8;
/// Longer statements are not remembered (they are rarely repeated, and would pin memory).
const MAX_SQL: usize = 4096;

/// A remembered plan.
struct Entry {
    sql: Box<str>,
    generation: u64,
    outcome: Outcome,
    /// The result columns a statement with this plan was last described with.
    rows: Option<Arc<RowPlan>>,
}

/// The memo of one session.
#[derive(Default)]
pub struct PlanMemo {
    entries: Vec<Entry>,
    /// The slot the next new entry replaces once the memo is full.
    next: usize,
}

impl PlanMemo {
    /// The plan remembered for `sql` at catalog `generation`.
    pub fn get(&self, sql: &str, generation: u64) -> Option<Outcome> {
        self.entries
            .iter()
            .find(|e| e.generation == generation && *e.sql == *sql)
            .map(|e| e.outcome.clone())
    }

    /// The result columns last described for a statement planned as `outcome` (the very
    /// plan this memo handed out: same text, search_path and catalog generation).
    pub fn rows_hint(&self, outcome: &Outcome) -> Option<Arc<RowPlan>> {
        self.entries
            .iter()
            .find(|e| Arc::ptr_eq(&e.outcome, outcome))
            .and_then(|e| e.rows.clone())
    }

    /// Remembers the result columns a statement planned as `outcome` was described with.
    pub fn set_rows_hint(&mut self, outcome: &Outcome, rows: &Arc<RowPlan>) {
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| Arc::ptr_eq(&e.outcome, outcome))
        {
            e.rows = Some(rows.clone());
        }
    }

    /// Remembers `outcome` for `sql` at catalog `generation` (refusals and long statements
    /// are not remembered).
    pub fn put(&mut self, sql: &str, generation: u64, outcome: &Outcome) {
        if outcome.is_err() || sql.len() > MAX_SQL {
            return;
        }
        let entry = Entry {
            sql: sql.into(),
            generation,
            outcome: outcome.clone(),
            rows: None,
        };
        if self.entries.len() < CAPACITY {
            self.entries.push(entry);
            return;
        }
        if let Some(slot) = self.entries.get_mut(self.next) {
            *slot = entry;
        }
        self.next = (self.next + 1) % CAPACITY;
    }

    /// Forgets every remembered set of result columns (one turned out wrong).
    pub fn forget_rows_hints(&mut self) {
        for e in &mut self.entries {
            e.rows = None;
        }
    }

    /// Forgets everything (the session's `search_path` changed).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.next = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::{Plan, Refusal};
    use std::sync::Arc;

    fn pass() -> Outcome {
        Arc::new(crate::encrypt::Analysis::plain(Ok(Plan::PassThrough)))
    }

    #[test]
    fn remembers_plans_per_generation() {
        let mut m = PlanMemo::default();
        let o = pass();
        m.put("SELECT 1", 3, &o);
        assert!(m.get("SELECT 1", 3).is_some_and(|g| Arc::ptr_eq(&g, &o)));
        assert!(m.get("SELECT 1", 4).is_none(), "another catalog generation");
        assert!(m.get("SELECT 2", 3).is_none());
        assert!(m.get("SELECT 1 ", 3).is_none());
        // Result columns are remembered per plan handed out (by identity).
        let rows = Arc::new(RowPlan::default());
        assert!(m.rows_hint(&o).is_none());
        m.set_rows_hint(&o, &rows);
        assert!(m.rows_hint(&o).is_some_and(|r| Arc::ptr_eq(&r, &rows)));
        assert!(
            m.rows_hint(&pass()).is_none(),
            "an equal plan, not the same one"
        );
        m.forget_rows_hints();
        assert!(m.rows_hint(&o).is_none());
        assert!(m.get("SELECT 1", 3).is_some(), "the plan stays");
        m.set_rows_hint(&o, &rows);
        m.clear();
        assert!(m.get("SELECT 1", 3).is_none());
        assert!(m.rows_hint(&o).is_none());
    }

    #[test]
    fn refusals_and_long_statements_are_not_remembered() {
        let mut m = PlanMemo::default();
        let refused: Outcome = Arc::new(crate::encrypt::Analysis::plain(Err(Refusal::new(
            "58000",
            "catalog refresh failed",
        ))));
        m.put("SELECT x", 1, &refused);
        assert!(m.get("SELECT x", 1).is_none());
        let long = format!("SELECT '{}'", "a".repeat(MAX_SQL));
        m.put(&long, 1, &pass());
        assert!(m.get(&long, 1).is_none());
    }

    #[test]
    fn keeps_the_last_capacity_plans() {
        let mut m = PlanMemo::default();
        let sql: Vec<String> = (0..=CAPACITY).map(|i| format!("SELECT {i}")).collect();
        for s in &sql {
            m.put(s, 1, &pass());
        }
        assert!(m.get(&sql[0], 1).is_none(), "the oldest was replaced");
        assert!(sql[1..].iter().all(|s| m.get(s, 1).is_some()));
    }
}
