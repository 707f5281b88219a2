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
