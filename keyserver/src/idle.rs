//! Idle detection for one connection: requests in progress and the time of the last activity.
//! Works the same for HTTP/1.1 keep-alive and HTTP/2 (where a client can keep a connection
//! open with pings and no requests).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Shared by a connection's service (which marks requests) and its watchdog.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `start` of the last request start or end.
    last_ms: AtomicU64,
}

/// Held while a request is in progress.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    /// A fresh connection (its start counts as activity).
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// Marks a request as started; it ends when the returned guard is dropped.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        Busy(self.clone())
    }

    /// Resolves once no request has been in progress for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Acquire));
            let deadline = last + idle;
            if self.in_flight.load(Ordering::Acquire) == 0 && Instant::now() >= deadline {
                return;
            }
            // While a request runs, check again after one more idle period.
            let wake = if self.in_flight.load(Ordering::Acquire) > 0 {
                Instant::now() + idle
            } else {
                deadline
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_requests_to_end() {
        let a = Activity::new();
        let t0 = Instant::now();
        a.idle_for(Duration::from_secs(5)).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(5));

        let busy = a.busy();
        let a2 = a.clone();
        let waiter = tokio::spawn(async move {
            a2.idle_for(Duration::from_secs(5)).await;
            Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert!(!waiter.is_finished(), "a request is in progress");
        drop(busy);
        let t1 = Instant::now();
        let done = waiter.await.unwrap();
        assert!(done >= t1 + Duration::from_secs(5) - Duration::from_millis(1));
    }
}
