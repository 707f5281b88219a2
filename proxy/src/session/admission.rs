//! Start-up slots: connections that have not authenticated yet (startup packet, TLS handshake,
//! SCRAM exchange, or a cancel request) have a cap of their own, `limits.max_startup_connections`,
//! separate from logged-in sessions (`limits.max_connections`), so they can never take a
//! session's place.
//!
//! When every start-up slot is taken, a new connection is still admitted and the one that has
//! been starting up the longest is closed to make room. A real client finishes its start-up in a
//! few round trips; a connection that holds its slot without finishing (silent sockets, a byte a
//! second, an SSLRequest or a TLS handshake left hanging) is what a flood is made of. So however
//! many such connections are opened, and however fast, a client that logs in within the time it
//! takes `max_startup_connections` newer connections to arrive is never turned away. Besides
//! eviction, each start-up ends after `limits.startup_timeout_ms` in total (not per byte).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How often, at most, a warning about evictions is logged (per connection they go to debug).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The start-up slots of one proxy (shared by every worker thread).
#[derive(Debug)]
pub struct StartupSlots {
    cap: usize,
    next_id: AtomicU64,
    /// Connections starting up, oldest first (ids grow), each with the sender that closes it.
    waiting: Mutex<BTreeMap<u64, oneshot::Sender<()>>>,
    evictions: AtomicU64,
    base: Instant,
    /// Milliseconds from `base` to the last eviction warning (`u64::MAX`: none yet).
    last_warn_ms: AtomicU64,
}

/// One connection's start-up slot; released on drop.
#[derive(Debug)]
pub struct StartupSlot {
    id: u64,
    slots: Arc<StartupSlots>,
    evicted: oneshot::Receiver<()>,
}

impl StartupSlots {
    /// `cap` slots (at least one).
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            next_id: AtomicU64::new(0),
            waiting: Mutex::new(BTreeMap::new()),
            evictions: AtomicU64::new(0),
            base: Instant::now(),
            last_warn_ms: AtomicU64::new(u64::MAX),
        })
    }

    /// A slot for a new connection, closing the connections starting up the longest when all
    /// are taken. Returns the slot and how many connections were evicted for it.
    pub fn admit(self: &Arc<Self>) -> (StartupSlot, usize) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut evicted = 0;
        {
            let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            while waiting.len() >= self.cap {
                let Some((_, oldest)) = waiting.pop_first() else {
                    break;
                };
                // The receiver may be gone already (that connection is finishing): fine.
                let _ = oldest.send(());
                evicted += 1;
            }
            waiting.insert(id, tx);
        }
        if evicted > 0 {
            let total =
                self.evictions.fetch_add(evicted as u64, Ordering::Relaxed) + evicted as u64;
            self.warn_rate_limited(total);
        }
        (
            StartupSlot {
                id,
                slots: Arc::clone(self),
                evicted: rx,
            },
            evicted,
        )
    }

    fn warn_rate_limited(&self, total: u64) {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX
            || now.saturating_sub(last) >= u64::try_from(WARN_EVERY.as_millis()).unwrap_or(0);
        if due
            && self
                .last_warn_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                max_startup_connections = self.cap,
                evicted_total = total,
                "all start-up slots taken: closing the connections that have been starting up the \
                 longest (a flood of connections that do not log in?)"
            );
        }
    }

    /// Connections starting up now.
    pub fn len(&self) -> usize {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no connection is starting up.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections evicted so far.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

impl StartupSlot {
    /// Resolves when this connection is evicted to make room for a newer one.
    pub async fn evicted(&mut self) {
        let _ = (&mut self.evicted).await;
    }
}

impl Drop for StartupSlot {
    fn drop(&mut self) {
        self.slots
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_slots_evict_the_oldest_and_released_slots_free_room() {
        let slots = StartupSlots::new(2);
        let (mut a, e) = slots.admit();
        assert_eq!(e, 0);
        let (mut b, e) = slots.admit();
        assert_eq!(e, 0);
        assert_eq!(slots.len(), 2);
        let (c, e) = slots.admit();
        assert_eq!(e, 1, "the third connection evicts one");
        assert_eq!(slots.len(), 2);
        tokio::time::timeout(Duration::from_secs(1), a.evicted())
            .await
            .expect("the oldest is evicted");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.evicted())
                .await
                .is_err(),
            "the newer one keeps its slot"
        );
        drop(c);
        assert_eq!(slots.len(), 1);
        let (_d, e) = slots.admit();
        assert_eq!(e, 0, "a released slot is free again");
        drop(a);
        assert_eq!(slots.len(), 2, "dropping an evicted slot changes nothing");
        assert_eq!(slots.evictions(), 1);
    }
}
