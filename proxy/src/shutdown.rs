//! Graceful shutdown: on SIGTERM (or SIGINT) the proxy stops accepting, idle sessions are closed
//! with FATAL 57P01 at once, busy ones when their current queries finish or the grace period ends.

/// Resolves on SIGTERM or SIGINT.
pub async fn terminate_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

/// Tells every session that shutdown has started. Polling a [`ShutdownListener`] costs two
/// atomic operations and no lock (it sits in every session's relay loop).
#[derive(Debug, Default)]
pub struct ShutdownRegistry {
    started: AtomicBool,
    next: AtomicU64,
    listeners: Mutex<HashMap<u64, Arc<AtomicWaker>>>,
}

impl ShutdownRegistry {
    /// Whether shutdown has started.
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Starts shutdown and wakes every listener.
    pub fn trigger(&self) {
        self.started.store(true, Ordering::Release);
        if let Ok(map) = self.listeners.lock() {
            for w in map.values() {
                w.wake();
            }
        }
    }

    /// A listener for one session; unregisters on drop.
    pub fn listen(self: &Arc<Self>) -> ShutdownListener {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let waker = Arc::new(AtomicWaker::new());
        if let Ok(mut map) = self.listeners.lock() {
            map.insert(id, waker.clone());
        }
        ShutdownListener {
            registry: self.clone(),
            id,
            waker,
        }
    }
}

/// One session's view of shutdown.
#[derive(Debug)]
pub struct ShutdownListener {
    registry: Arc<ShutdownRegistry>,
    id: u64,
    waker: Arc<AtomicWaker>,
}

impl ShutdownListener {
    /// Whether shutdown has started.
    pub fn is_started(&self) -> bool {
        self.registry.is_started()
    }

    /// Resolves once shutdown has started.
    pub fn started(&self) -> Started<'_> {
        Started(self)
    }

    /// Registers `waker` to be woken when shutdown starts, for a task that polls
    /// [`ShutdownListener::is_started`] itself on every wake-up and registers again only when its
    /// waker changes (the relay). Check `is_started` after registering.
    pub fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }
}

impl Drop for ShutdownListener {
    fn drop(&mut self) {
        if let Ok(mut map) = self.registry.listeners.lock() {
            map.remove(&self.id);
        }
    }
}

/// Future returned by [`ShutdownListener::started`].
#[derive(Debug)]
pub struct Started<'a>(&'a ShutdownListener);

impl Future for Started<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.is_started() {
            return Poll::Ready(());
        }
        self.0.waker.register(cx.waker());
        if self.0.is_started() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
