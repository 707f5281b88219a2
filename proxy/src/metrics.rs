//! Prometheus metrics: connections, queries, errors, bytes and a query latency histogram, served
//! as text on `GET /metrics`. Counters are relaxed atomics; nothing here logs or stores SQL.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// The proxy's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    connections_total: AtomicU64,
    connections_active: AtomicI64,
    auth_failures: AtomicU64,
    protocol_errors: AtomicU64,
    startup_timeouts: AtomicU64,
    startup_evictions: AtomicU64,
    queries: AtomicU64,
    errors: AtomicU64,
    bytes_from_client: AtomicU64,
    bytes_from_upstream: AtomicU64,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
}

/// Counters one session accumulates locally and merges into [`Metrics`] at most about once a
/// second while busy and when it ends, so the hot path touches no shared cache line.
#[derive(Debug)]
pub struct LocalMetrics {
    queries: u64,
    errors: u64,
    bytes_from_client: u64,
    bytes_from_upstream: u64,
    latency_buckets: [u64; BUCKETS.len()],
    latency_sum_us: u64,
    latency_count: u64,
    /// When a busy session next merges its counters.
    next_flush: std::time::Instant,
}

impl Default for LocalMetrics {
    fn default() -> Self {
        LocalMetrics {
            queries: 0,
            errors: 0,
            bytes_from_client: 0,
            bytes_from_upstream: 0,
            latency_buckets: [0; BUCKETS.len()],
            latency_sum_us: 0,
            latency_count: 0,
            next_flush: flush_after(std::time::Instant::now()),
        }
    }
}

/// How often a busy session merges its counters.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

fn flush_after(now: std::time::Instant) -> std::time::Instant {
    now.checked_add(FLUSH_EVERY).unwrap_or(now)
}

impl LocalMetrics {
    #[inline]
    pub(crate) fn add_bytes_from_client(&mut self, n: usize) {
        self.bytes_from_client += n as u64;
    }
    #[inline]
    pub(crate) fn add_bytes_from_upstream(&mut self, n: usize) {
        self.bytes_from_upstream += n as u64;
    }
    #[inline]
    pub(crate) fn add_error(&mut self) {
        self.errors += 1;
    }
    /// A ReadyForQuery that is not the end of a busy period (pipelined syncs).
    #[inline]
    pub(crate) fn observe_query_count(&mut self) {
        self.queries += 1;
    }
    /// A ReadyForQuery that ends the busy period begun at `started`; `now` is the current time.
    #[inline]
    pub(crate) fn observe_query(
        &mut self,
        started: std::time::Instant,
        now: std::time::Instant,
        global: &Metrics,
    ) {
        let elapsed = now.saturating_duration_since(started);
        self.queries += 1;
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            if let Some(b) = self.latency_buckets.get_mut(i) {
                *b += 1;
            }
        }
        self.latency_sum_us += u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency_count += 1;
        if now >= self.next_flush {
            global.merge(self);
            self.next_flush = flush_after(now);
        }
    }
}

impl Metrics {
    /// Adds a session's local counters and resets them.
    pub(crate) fn merge(&self, l: &mut LocalMetrics) {
        self.queries
            .fetch_add(std::mem::take(&mut l.queries), Relaxed);
        self.errors
            .fetch_add(std::mem::take(&mut l.errors), Relaxed);
        self.bytes_from_client
            .fetch_add(std::mem::take(&mut l.bytes_from_client), Relaxed);
        self.bytes_from_upstream
            .fetch_add(std::mem::take(&mut l.bytes_from_upstream), Relaxed);
        for (g, b) in self
            .latency_buckets
            .iter()
            .zip(l.latency_buckets.iter_mut())
        {
            let v = std::mem::take(b);
            if v > 0 {
                g.fetch_add(v, Relaxed);
            }
        }
        self.latency_sum_us
            .fetch_add(std::mem::take(&mut l.latency_sum_us), Relaxed);
        self.latency_count
            .fetch_add(std::mem::take(&mut l.latency_count), Relaxed);
    }

    pub(crate) fn connection_opened(&self) {
        self.connections_total.fetch_add(1, Relaxed);
        self.connections_active.fetch_add(1, Relaxed);
    }
    pub(crate) fn connection_closed(&self) {
        self.connections_active.fetch_sub(1, Relaxed);
    }
    pub(crate) fn add_auth_failure(&self) {
        self.auth_failures.fetch_add(1, Relaxed);
    }
    pub(crate) fn add_protocol_error(&self) {
        self.protocol_errors.fetch_add(1, Relaxed);
    }
    pub(crate) fn add_startup_timeout(&self) {
        self.startup_timeouts.fetch_add(1, Relaxed);
    }
    pub(crate) fn add_startup_evictions(&self, n: usize) {
        self.startup_evictions.fetch_add(n as u64, Relaxed);
    }
    /// Connections closed because they did not finish start-up in time.
    pub fn startup_timeouts(&self) -> u64 {
        self.startup_timeouts.load(Relaxed)
    }
    /// Connections closed during start-up to make room for newer ones.
    pub fn startup_evictions(&self) -> u64 {
        self.startup_evictions.load(Relaxed)
    }
    /// Active client connections.
    pub fn active_connections(&self) -> i64 {
        self.connections_active.load(Relaxed)
    }
    /// Failed logins so far.
    pub fn auth_failures(&self) -> u64 {
        self.auth_failures.load(Relaxed)
    }
    /// Protocol errors so far.
    pub fn protocol_errors(&self) -> u64 {
        self.protocol_errors.load(Relaxed)
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(2048);
        let mut counter = |name: &str, help: &str, kind: &str, v: String| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        counter(
            "pgseal_proxy_connections_total",
            "Client connections accepted.",
            "counter",
            self.connections_total.load(Relaxed).to_string(),
        );
        counter(
            "pgseal_proxy_connections_active",
            "Client connections open.",
            "gauge",
            self.connections_active.load(Relaxed).to_string(),
        );
        counter(
            "pgseal_proxy_auth_failures_total",
            "Failed logins.",
            "counter",
            self.auth_failures.load(Relaxed).to_string(),
        );
        counter(
            "pgseal_proxy_protocol_errors_total",
            "Connections closed for protocol violations.",
            "counter",
            self.protocol_errors.load(Relaxed).to_string(),
        );
        counter(
            "pgseal_proxy_startup_timeouts_total",
            "Connections closed because they did not authenticate within limits.startup_timeout_ms.",
            "counter",
            self.startup_timeouts.load(Relaxed).to_string(),
        );
        counter(
            "pgseal_proxy_startup_evictions_total",
            "Connections closed during start-up to make room for newer ones (start-up slots full).",
            "counter",
            self.startup_evictions.load(Relaxed).to_string(),
        );
        counter(
            "pgseal_proxy_queries_total",
            "ReadyForQuery messages relayed (one per simple query or Sync).",
            "counter",
            self.queries.load(Relaxed).to_string(),
        );
        counter(
            "pgseal_proxy_errors_total",
            "ErrorResponse messages relayed from upstream.",
            "counter",
            self.errors.load(Relaxed).to_string(),
        );
        counter(
            "pgseal_proxy_client_bytes_total",
            "Bytes received from clients.",
            "counter",
            self.bytes_from_client.load(Relaxed).to_string(),
        );
        counter(
            "pgseal_proxy_upstream_bytes_total",
            "Bytes received from upstream.",
            "counter",
            self.bytes_from_upstream.load(Relaxed).to_string(),
        );
        let _ = writeln!(s, "# HELP pgseal_proxy_query_duration_seconds Time from the first request after idle to ReadyForQuery.");
        let _ = writeln!(s, "# TYPE pgseal_proxy_query_duration_seconds histogram");
        let mut cumulative = 0u64;
        for (b, bound) in self.latency_buckets.iter().zip(BUCKETS) {
            cumulative += b.load(Relaxed);
            let _ = writeln!(
                s,
                "pgseal_proxy_query_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            s,
            "pgseal_proxy_query_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            s,
            "pgseal_proxy_query_duration_seconds_sum {}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(s, "pgseal_proxy_query_duration_seconds_count {count}");
        s
    }
}

/// Serves `GET /metrics` until the listener task is dropped.
pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut req = Vec::with_capacity(512);
            let mut buf = [0u8; 512];
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => req.extend_from_slice(buf.get(..n).unwrap_or(&[])),
                    }
                }
                true
            })
            .await;
            if read != Ok(true) {
                return;
            }
            let resp = if req.starts_with(b"GET /metrics ") || req.starts_with(b"GET / ") {
                let body = metrics.render();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
            };
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
