//! Contact with the keyserver: whether it is failing now, since when, and whether the grace
//! period of the cached keys has run out (then the key source fails closed).
//!
//! **Contact** is a request of this proxy to the keyserver: the change feed's long poll, a short
//! read of the feed, a keyring or key-material fetch, or the liveness check (`GET /v1/health`)
//! made while a long poll is open. A **successful contact** is an authorized answer of the feed
//! (and the refresh of what it announced); only that ends a failure. A **failed contact** is a
//! request that is refused, breaks, answers with an error status or times out. The grace period
//! starts at the **first failed contact** after the last successful one and lasts exactly
//! `grace_seconds`; a failure counts from the moment the request was sent, except for the long
//! poll (which may legitimately stay open for `poll_wait_seconds`), which counts from the moment
//! it failed. Never earlier than the last successful contact.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `failing_since_ms` while the keyserver answers.
const HEALTHY: u64 = u64::MAX;

/// Shared between the follower thread (writes) and `column()` callers (one atomic load).
pub(crate) struct Health {
    grace: Duration,
    /// Reference point of the millisecond fields.
    base: Instant,
    /// Milliseconds from `base` to the last successful contact.
    last_contact_ms: AtomicU64,
    /// Milliseconds from `base` to the first failed contact of the current failure, or
    /// [`HEALTHY`].
    failing_since_ms: AtomicU64,
    expiry_logged: AtomicBool,
}

impl Health {
    /// Healthy, last contact now.
    pub(crate) fn new(grace: Duration) -> Self {
        Self {
            grace,
            base: Instant::now(),
            last_contact_ms: AtomicU64::new(0),
            failing_since_ms: AtomicU64::new(HEALTHY),
            expiry_logged: AtomicBool::new(false),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis())
            .unwrap_or(HEALTHY - 1)
            .min(HEALTHY - 1)
    }

    fn now_ms(&self) -> u64 {
        self.ms(Instant::now())
    }

    /// Whether the current state is a failure (the follower then retries with short requests).
    pub(crate) fn is_failing(&self) -> bool {
        self.failing_since_ms.load(Ordering::Acquire) != HEALTHY
    }

    /// Time since the first failed contact of the current failure (`None`: healthy).
    fn failing_for(&self) -> Option<Duration> {
        let since = self.failing_since_ms.load(Ordering::Acquire);
        (since != HEALTHY).then(|| Duration::from_millis(self.now_ms().saturating_sub(since)))
    }

    /// A successful contact: ends any failure at once.
    pub(crate) fn contact(&self) {
        self.last_contact_ms.store(self.now_ms(), Ordering::Release);
        if let Some(down) = self.failing_for() {
            self.failing_since_ms.store(HEALTHY, Ordering::Release);
            tracing::info!(
                after_ms = u64::try_from(down.as_millis()).unwrap_or(u64::MAX),
                "keyserver contact restored"
            );
        }
        self.expiry_logged.store(false, Ordering::Release);
    }

    /// A failed contact of a request sent at `sent` (see the module documentation for which
    /// instant to pass); logs the first failure and the expiry of the grace period.
    pub(crate) fn failure(&self, sent: Instant, error: &dyn std::fmt::Display) {
        let since = self
            .ms(sent)
            .max(self.last_contact_ms.load(Ordering::Acquire));
        if self
            .failing_since_ms
            .compare_exchange(HEALTHY, since, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::warn!(error = %error, grace_seconds = self.grace.as_secs(),
                "keyserver unreachable; serving cached keys during the grace period");
        } else {
            tracing::debug!(error = %error, "keyserver still unreachable");
        }
        if self.expired().is_some() && !self.expiry_logged.swap(true, Ordering::AcqRel) {
            tracing::error!(
                grace_seconds = self.grace.as_secs(),
                "keyserver grace period expired; protected columns fail closed until contact is back"
            );
        }
    }

    /// `Some(reason)` when the first failed contact of the current failure is older than the
    /// grace period.
    pub(crate) fn expired(&self) -> Option<String> {
        let down = self.failing_for()?;
        (down > self.grace).then(|| {
            format!(
                "keyserver unreachable for {:.1}s (grace period {}s expired)",
                down.as_secs_f64(),
                self.grace.as_secs()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_counts_from_the_first_failed_contact() {
        let h = Health::new(Duration::from_millis(60));
        std::thread::sleep(Duration::from_millis(100));
        assert!(h.expired().is_none(), "a healthy long poll never expires");
        // The last contact is 100 ms old, longer than the grace: still the full grace from now.
        h.failure(Instant::now(), &"down");
        assert!(h.is_failing());
        assert!(h.expired().is_none(), "grace counts from the failure");
        std::thread::sleep(Duration::from_millis(30));
        h.failure(Instant::now(), &"still down");
        assert!(h.expired().is_none(), "later failures do not restart it");
        std::thread::sleep(Duration::from_millis(50));
        assert!(h.expired().is_some(), "first failure + grace has passed");
        h.contact();
        assert!(!h.is_failing());
        assert!(
            h.expired().is_none(),
            "a contact clears the failure at once"
        );
    }

    #[test]
    fn a_failure_counts_from_when_the_request_was_sent_but_not_before_the_last_contact() {
        let h = Health::new(Duration::from_millis(50));
        let sent = Instant::now();
        std::thread::sleep(Duration::from_millis(70));
        h.failure(sent, &"timed out");
        assert!(h.expired().is_some(), "counted from the send time");
        h.contact();
        let sent = Instant::now()
            .checked_sub(Duration::from_secs(10))
            .unwrap_or_else(Instant::now);
        h.failure(sent, &"timed out");
        assert!(
            h.expired().is_none(),
            "never counted from before the last successful contact"
        );
    }
}
