//! Contact with the keyserver: when it last answered, whether it is failing now, and whether the
//! grace period of the cached keys has run out (then the key source fails closed).

use std::sync::Mutex;
use std::time::{Duration, Instant};

struct State {
    last_contact: Instant,
    failing: bool,
    expiry_logged: bool,
}

/// Shared between the follower thread (writes) and `column()` callers (read).
pub(crate) struct Health {
    grace: Duration,
    state: Mutex<State>,
}

impl Health {
    /// Healthy, last contact now.
    pub(crate) fn new(grace: Duration) -> Self {
        Self {
            grace,
            state: Mutex::new(State {
                last_contact: Instant::now(),
                failing: false,
                expiry_logged: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The keyserver answered.
    pub(crate) fn contact(&self) {
        let mut s = self.lock();
        if s.failing {
            tracing::info!(
                after_ms = s.last_contact.elapsed().as_millis() as u64,
                "keyserver contact restored"
            );
        }
        s.last_contact = Instant::now();
        s.failing = false;
        s.expiry_logged = false;
    }

    /// A request failed; logs the first failure and the expiry of the grace period.
    pub(crate) fn failure(&self, error: &dyn std::fmt::Display) {
        let mut s = self.lock();
        let age = s.last_contact.elapsed();
        if !s.failing {
            s.failing = true;
            tracing::warn!(error = %error, grace_seconds = self.grace.as_secs(),
                "keyserver unreachable; serving cached keys during the grace period");
        } else {
            tracing::debug!(error = %error, "keyserver still unreachable");
        }
        if age > self.grace && !s.expiry_logged {
            s.expiry_logged = true;
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
        let s = self.lock();
        let age = s.last_contact.elapsed();
        (s.failing && age > self.grace).then(|| {
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
