//! Contact with the keyserver: when it last answered, whether it is failing now, and whether the
//! grace period of the cached keys has run out (then the key source fails closed).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Shared between the follower thread (writes) and `column()` callers (two atomic loads).
pub(crate) struct Health {
    grace: Duration,
    /// Reference point of `last_contact_ms`.
    base: Instant,
    /// Milliseconds from `base` to the last successful response.
    last_contact_ms: AtomicU64,
    failing: AtomicBool,
    expiry_logged: AtomicBool,
}

impl Health {
    /// Healthy, last contact now.
    pub(crate) fn new(grace: Duration) -> Self {
        Self {
            grace,
            base: Instant::now(),
            last_contact_ms: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            expiry_logged: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Time since the last successful response.
    fn age(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_contact_ms.load(Ordering::Acquire)),
        )
    }

    /// The keyserver answered.
    pub(crate) fn contact(&self) {
        let age = self.age();
        self.last_contact_ms.store(self.now_ms(), Ordering::Release);
        if self.failing.swap(false, Ordering::AcqRel) {
            tracing::info!(
                after_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
                "keyserver contact restored"
            );
        }
        self.expiry_logged.store(false, Ordering::Release);
    }

    /// A request failed; logs the first failure and the expiry of the grace period.
    pub(crate) fn failure(&self, error: &dyn std::fmt::Display) {
        let age = self.age();
        if !self.failing.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %error, grace_seconds = self.grace.as_secs(),
                "keyserver unreachable; serving cached keys during the grace period");
        } else {
            tracing::debug!(error = %error, "keyserver still unreachable");
        }
        if age > self.grace && !self.expiry_logged.swap(true, Ordering::AcqRel) {
            tracing::error!(
                last_contact_s = age.as_secs(),
                grace_seconds = self.grace.as_secs(),
                "keyserver grace period expired; protected columns fail closed until contact is back"
            );
        }
    }

    /// `Some(reason)` when the keyserver is failing and the last contact is older than the grace
    /// period.
    pub(crate) fn expired(&self) -> Option<String> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        let age = self.age();
        (age > self.grace).then(|| {
            format!(
                "keyserver unreachable for {}s (grace period {}s expired)",
                age.as_secs(),
                self.grace.as_secs()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_only_while_failing_after_grace() {
        let h = Health::new(Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(50));
        assert!(h.expired().is_none(), "a healthy long poll never expires");
        h.failure(&"down");
        assert!(h.expired().is_some());
        h.contact();
        assert!(h.expired().is_none());
        h.failure(&"down");
        assert!(h.expired().is_none(), "grace counts from the last contact");
        std::thread::sleep(Duration::from_millis(50));
        assert!(h.expired().is_some());
    }
}
