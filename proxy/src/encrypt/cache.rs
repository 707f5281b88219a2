//! A small shared LRU of analysis outcomes keyed by (SQL text, search_path, catalog
//! generation, session variant: lexer settings and trust). Plans hold no keys or ciphertext, so
//! one cache serves every session of a factory.
//!
//! The cache is bounded in entries and in bytes (the statement texts it keeps and an estimate
//! of each plan's size): a user sending many distinct large statements cannot make the proxy
//! hold more than [`PlanCache::byte_budget`]. Statements larger than a quarter of the budget
//! are not kept at all.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use crate::rewrite::{Plan, Refusal};
use crate::sql::gate::Facts;

/// What the analysis of a statement text decided, and what PostgreSQL's grammar read in it
/// (None when the text could skip the gate: it names no protected relation and changes
/// nothing in the session, see [`crate::sql::gate::prefilter`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub result: Result<Plan, Refusal>,
    pub facts: Option<Arc<Facts>>,
}

impl Analysis {
    /// An outcome without gate facts.
    pub fn plain(result: Result<Plan, Refusal>) -> Self {
        Analysis {
            result,
            facts: None,
        }
    }

    /// An estimate of the bytes this outcome keeps alive.
    fn weight(&self, sql_len: usize) -> usize {
        let plan = match &self.result {
            // The template holds about the statement's text again, plus slots.
            Ok(Plan::Rewrite(_)) => 2 * sql_len + 512,
            Ok(Plan::PassThrough) => 0,
            Err(r) => r.message.len(),
        };
        let facts = self.facts.as_ref().map_or(0, |f| {
            f.statements
                .iter()
                .map(|s| {
                    128 + s.identifiers.iter().map(|i| i.len() + 24).sum::<usize>()
                        + s.relations
                            .iter()
                            .map(|(a, b)| a.len() + b.len() + 48)
                            .sum::<usize>()
                })
                .sum()
        });
        plan + facts + 64
    }
}

impl Deref for Analysis {
    type Target = Result<Plan, Refusal>;

    fn deref(&self) -> &Self::Target {
        &self.result
    }
}

/// A cached analysis outcome.
pub type Outcome = Arc<Analysis>;

struct Entry {
    sql: Box<str>,
    search_path: Box<[String]>,
    generation: u64,
    variant: u8,
    outcome: Outcome,
    used: u64,
    bytes: usize,
}

struct Inner {
    buckets: HashMap<u64, Vec<Entry>>,
    len: usize,
    bytes: usize,
    tick: u64,
    /// Uses in order (tick, bucket): the front is the least recently used entry once stale
    /// records (an entry used again later, or gone) are skipped. Eviction is amortised O(1);
    /// the log is rebuilt from the entries when it grows past a few times their number.
    recency: VecDeque<(u64, u64)>,
}

/// The plan cache.
pub struct PlanCache {
    inner: Mutex<Inner>,
    hasher: RandomState,
    capacity: usize,
    byte_budget: usize,
}

/// Default byte budget of the shared cache.
pub const DEFAULT_BYTE_BUDGET: usize = 64 * 1024 * 1024;

impl PlanCache {
    /// A cache holding at most `capacity` outcomes and [`DEFAULT_BYTE_BUDGET`] bytes.
    pub fn new(capacity: usize) -> Self {
        Self::with_budget(capacity, DEFAULT_BYTE_BUDGET)
    }

    /// A cache holding at most `capacity` outcomes and about `byte_budget` bytes.
    pub fn with_budget(capacity: usize, byte_budget: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                buckets: HashMap::new(),
                len: 0,
                bytes: 0,
                tick: 0,
                recency: VecDeque::new(),
            }),
            hasher: RandomState::new(),
            capacity: capacity.max(1),
            byte_budget: byte_budget.max(1024),
        }
    }

    /// The byte budget.
    pub fn byte_budget(&self) -> usize {
        self.byte_budget
    }

    fn hash(&self, sql: &str, search_path: &[String], generation: u64, variant: u8) -> u64 {
        self.hasher
            .hash_one((sql, search_path, generation, variant))
    }

    /// The cached outcome, if any.
    pub fn get(
        &self,
        sql: &str,
        search_path: &[String],
        generation: u64,
        variant: u8,
    ) -> Option<Outcome> {
        let h = self.hash(sql, search_path, generation, variant);
        let mut g = self.inner.lock().ok()?;
        g.tick += 1;
        let tick = g.tick;
        let e = g.buckets.get_mut(&h)?.iter_mut().find(|e| {
            e.generation == generation
                && e.variant == variant
                && &*e.sql == sql
                && &*e.search_path == search_path
        })?;
        e.used = tick;
        let outcome = e.outcome.clone();
        Self::note_use(&mut g, tick, h);
        Some(outcome)
    }

    /// Removes the least recently used entry; false when empty.
    fn evict_one(g: &mut Inner) -> bool {
        while let Some((tick, k)) = g.recency.pop_front() {
            let Some(b) = g.buckets.get_mut(&k) else {
                continue;
            };
            let Some(i) = b.iter().position(|e| e.used == tick) else {
                continue;
            };
            let e = b.swap_remove(i);
            g.bytes = g.bytes.saturating_sub(e.bytes);
            if b.is_empty() {
                g.buckets.remove(&k);
            }
            g.len = g.len.saturating_sub(1);
            return true;
        }
        false
    }

    /// Records a use; rebuilds the log when stale records dominate it.
    fn note_use(g: &mut Inner, tick: u64, bucket: u64) {
        g.recency.push_back((tick, bucket));
        if g.recency.len() > 4 * g.len + 64 {
            let mut live: Vec<(u64, u64)> = g
                .buckets
                .iter()
                .flat_map(|(k, v)| v.iter().map(move |e| (e.used, *k)))
                .collect();
            live.sort_unstable();
            g.recency = live.into();
        }
    }

    pub fn put(
        &self,
        sql: &str,
        search_path: &[String],
        generation: u64,
        variant: u8,
        outcome: Outcome,
    ) {
        let bytes = sql.len()
            + search_path.iter().map(|s| s.len() + 24).sum::<usize>()
            + outcome.weight(sql.len())
            + std::mem::size_of::<Entry>();
        if bytes > self.byte_budget / 4 {
            return;
        }
        let h = self.hash(sql, search_path, generation, variant);
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        g.tick += 1;
        let tick = g.tick;
        while g.len >= self.capacity || g.bytes + bytes > self.byte_budget {
            if !Self::evict_one(&mut g) {
                break;
            }
        }
        g.buckets.entry(h).or_default().push(Entry {
            sql: sql.into(),
            search_path: search_path.into(),
            generation,
            variant,
            outcome,
            used: tick,
            bytes,
        });
        g.len += 1;
        g.bytes += bytes;
        Self::note_use(&mut g, tick, h);
    }

    /// Number of cached outcomes.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.len).unwrap_or(0)
    }

    /// Bytes accounted to the cached outcomes.
    pub fn bytes(&self) -> usize {
        self.inner.lock().map(|g| g.bytes).unwrap_or(0)
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass() -> Outcome {
        Arc::new(Analysis::plain(Ok(Plan::PassThrough)))
    }

    #[test]
    fn lru_evicts_least_recently_used() {
        let c = PlanCache::new(2);
        let sp = vec!["public".to_owned()];
        let o = pass();
        c.put("a", &sp, 1, 0, o.clone());
        c.put("b", &sp, 1, 0, o.clone());
        assert!(c.get("a", &sp, 1, 0).is_some());
        c.put("c", &sp, 1, 0, o);
        assert_eq!(c.len(), 2);
        assert!(c.get("b", &sp, 1, 0).is_none());
        assert!(c.get("a", &sp, 1, 0).is_some());
        assert!(c.get("c", &sp, 1, 0).is_some());
        assert!(c.get("c", &sp, 2, 0).is_none());
        assert!(c.get("c", &[], 1, 0).is_none());
        // Another lexer setting or trust is another entry.
        assert!(c.get("c", &sp, 1, 1).is_none());
    }

    #[test]
    fn a_full_cache_of_misses_stays_at_capacity_and_keeps_the_recent_ones() {
        let c = PlanCache::new(64);
        let sp = vec!["public".to_owned()];
        let o = pass();
        c.put("hot", &sp, 1, 0, o.clone());
        for i in 0..10_000 {
            c.put(&format!("SELECT {i}"), &sp, 1, 0, o.clone());
            // A statement in use all along is never the least recently used.
            assert!(c.get("hot", &sp, 1, 0).is_some(), "after {i}");
        }
        assert_eq!(c.len(), 64);
        // "hot" and the 63 most recent others.
        assert!(c.get("SELECT 9999", &sp, 1, 0).is_some());
        assert!(c.get("SELECT 9937", &sp, 1, 0).is_some());
        assert!(c.get("SELECT 9936", &sp, 1, 0).is_none());
    }

    #[test]
    fn large_statements_stay_within_the_byte_budget() {
        let budget = 4 * 1024 * 1024;
        let c = PlanCache::with_budget(1024, budget);
        let sp = vec!["public".to_owned()];
        let o = pass();
        for i in 0..300 {
            // 300 distinct statements of 256 KiB: 75 MiB of text in all.
            let sql = format!("SELECT {i} /* {} */", "x".repeat(256 * 1024));
            c.put(&sql, &sp, 1, 0, o.clone());
            assert!(c.bytes() <= budget, "{} after {i}", c.bytes());
        }
        assert!(c.len() < 20, "{}", c.len());
        // Larger than a quarter of the budget: not kept.
        let huge = "y".repeat(budget / 2);
        c.put(&huge, &sp, 1, 0, o);
        assert!(c.get(&huge, &sp, 1, 0).is_none());
    }
}
