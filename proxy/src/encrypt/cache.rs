//! A small shared LRU of rewrite outcomes keyed by (SQL text, search_path, catalog generation).
//! Plans hold no keys or ciphertext, so one cache serves every session of a factory.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use crate::rewrite::{Plan, Refusal};

/// A cached analysis outcome.
pub type Outcome = Arc<Result<Plan, Refusal>>;

struct Entry {
    sql: Box<str>,
    search_path: Box<[String]>,
    generation: u64,
    outcome: Outcome,
    used: u64,
}

struct Inner {
    buckets: HashMap<u64, Vec<Entry>>,
    len: usize,
    tick: u64,
}

/// The plan cache.
pub struct PlanCache {
    inner: Mutex<Inner>,
    hasher: RandomState,
    capacity: usize,
}

impl PlanCache {
    /// A cache holding at most `capacity` outcomes.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                buckets: HashMap::new(),
                len: 0,
                tick: 0,
            }),
            hasher: RandomState::new(),
            capacity: capacity.max(1),
        }
    }

    fn hash(&self, sql: &str, search_path: &[String], generation: u64) -> u64 {
        self.hasher.hash_one((sql, search_path, generation))
    }

    /// The cached outcome, if any.
    pub fn get(&self, sql: &str, search_path: &[String], generation: u64) -> Option<Outcome> {
        let h = self.hash(sql, search_path, generation);
        let mut g = self.inner.lock().ok()?;
        g.tick += 1;
        let tick = g.tick;
        let e = g.buckets.get_mut(&h)?.iter_mut().find(|e| {
            e.generation == generation && &*e.sql == sql && &*e.search_path == search_path
        })?;
        e.used = tick;
        Some(e.outcome.clone())
    }

    /// Stores an outcome, evicting the least recently used one when full.
    pub fn put(&self, sql: &str, search_path: &[String], generation: u64, outcome: Outcome) {
        let h = self.hash(sql, search_path, generation);
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        g.tick += 1;
        let tick = g.tick;
        if g.len >= self.capacity {
            let oldest = g
                .buckets
                .iter()
                .flat_map(|(k, v)| v.iter().enumerate().map(move |(i, e)| (e.used, *k, i)))
                .min();
            if let Some((_, k, i)) = oldest {
                if let Some(b) = g.buckets.get_mut(&k) {
                    if i < b.len() {
                        b.swap_remove(i);
                    }
                    if b.is_empty() {
                        g.buckets.remove(&k);
                    }
                }
                g.len = g.len.saturating_sub(1);
            }
        }
        g.buckets.entry(h).or_default().push(Entry {
            sql: sql.into(),
            search_path: search_path.into(),
            generation,
            outcome,
            used: tick,
        });
        g.len += 1;
    }

    /// Number of cached outcomes.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.len).unwrap_or(0)
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_least_recently_used() {
        let c = PlanCache::new(2);
        let sp = vec!["public".to_owned()];
        let o: Outcome = Arc::new(Ok(Plan::PassThrough));
        c.put("a", &sp, 1, o.clone());
        c.put("b", &sp, 1, o.clone());
        assert!(c.get("a", &sp, 1).is_some());
        c.put("c", &sp, 1, o);
        assert_eq!(c.len(), 2);
        assert!(c.get("b", &sp, 1).is_none());
        assert!(c.get("a", &sp, 1).is_some());
        assert!(c.get("c", &sp, 1).is_some());
        assert!(c.get("c", &sp, 2).is_none());
        assert!(c.get("c", &[], 1).is_none());
    }

    #[test]
    fn a_full_cache_of_misses_stays_at_capacity_and_keeps_the_recent_ones() {
        let c = PlanCache::new(64);
        let sp = vec!["public".to_owned()];
        let o: Outcome = Arc::new(Ok(Plan::PassThrough));
        c.put("hot", &sp, 1, o.clone());
        for i in 0..10_000 {
            c.put(&format!("SELECT {i}"), &sp, 1, o.clone());
            // A statement in use all along is never the least recently used.
            assert!(c.get("hot", &sp, 1).is_some(), "after {i}");
        }
        assert_eq!(c.len(), 64);
        // "hot" and the 63 most recent others.
        assert!(c.get("SELECT 9999", &sp, 1).is_some());
        assert!(c.get("SELECT 9937", &sp, 1).is_some());
        assert!(c.get("SELECT 9936", &sp, 1).is_none());
    }
}
