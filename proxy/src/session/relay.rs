//! The relay loop: both directions of one connection on one task.
//!
//! Each read is scanned for message boundaries with the proxy's own framing; messages nobody
//! intercepts are moved to the output buffer without copying (`split_to`/`unsplit` share the read
//! buffer's allocation), a large message is streamed through as its bytes arrive, and everything
//! gathered from one read goes out in one write. Like PostgreSQL, the relay stops reading a side
//! while a write to the other side blocks.

use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::intercept::{Frame, InterceptError, MessageInterceptor, Outbox, TagSet};
use crate::metrics::{LocalMetrics, Metrics};
use crate::net::Conn;
use crate::protocol::framing::{peek_header, Limits};
use crate::protocol::ProtocolError;

/// Spare capacity below which the read buffer grows before a read.
const MIN_READ: usize = 4096;
/// Growth step of a read buffer.
const READ_CHUNK: usize = 16 * 1024;

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// The client closed its side (after Terminate or without).
    ClientClosed,
    /// The upstream closed its side; `reported` when its last message was an ErrorResponse
    /// (PostgreSQL sends FATAL before closing on shutdown or termination).
    UpstreamClosed {
        /// The client already saw an ErrorResponse.
        reported: bool,
    },
    /// The client broke the protocol.
    ClientProtocol(ProtocolError),
    /// The upstream broke the protocol.
    UpstreamProtocol(ProtocolError),
    /// An interceptor ended the session.
    Intercept(InterceptError),
    /// I/O error towards the client.
    ClientIo(std::io::Error),
    /// I/O error towards the upstream.
    UpstreamIo(std::io::Error),
    /// Shutdown: the session was idle (or the grace period ran out).
    Shutdown,
}

/// One direction's read buffer and streaming state.
struct Pump {
    buf: BytesMut,
    /// Bytes of the current message still to stream through raw.
    pending: usize,
}

impl Pump {
    fn new() -> Self {
        Pump {
            buf: BytesMut::with_capacity(READ_CHUNK),
            pending: 0,
        }
    }

    #[inline]
    fn prepare_read(&mut self) {
        if self.buf.capacity() - self.buf.len() < MIN_READ {
            self.buf.reserve(READ_CHUNK);
        }
    }
}

/// Moves `chunk` to the end of `out`, without copying when they are adjacent.
#[inline]
fn append(out: &mut BytesMut, chunk: BytesMut) {
    if out.is_empty() {
        *out = chunk;
    } else {
        out.unsplit(chunk);
    }
}

/// Per-connection state the relay keeps; its counters are merged into the global metrics
/// periodically and on drop.
struct Flow<'m> {
    metrics: &'m Metrics,
    /// Query/Sync/FunctionCall sent minus ReadyForQuery received.
    outstanding: u64,
    busy_since: Option<Instant>,
    last_backend_tag: u8,
    terminated: bool,
    local: LocalMetrics,
}

impl Drop for Flow<'_> {
    fn drop(&mut self) {
        self.metrics.merge(&mut self.local);
    }
}

pub(crate) struct Relay<'a> {
    pub client: &'a mut Conn,
    pub upstream: &'a mut Conn,
    pub interceptor: &'a mut dyn MessageInterceptor,
    pub metrics: &'a Metrics,
    pub max_message_bytes: usize,
    pub shutdown: crate::shutdown::ShutdownListener,
    pub grace: std::time::Duration,
    /// (upstream pid, pid given to the client): NotificationResponse pids are translated so a
    /// client can recognise its own notifications.
    pub pid_map: Option<(i32, i32)>,
}

impl Relay<'_> {
    pub(crate) async fn run(mut self) -> RelayEnd {
        let fe_tags = self.interceptor.frontend_tags();
        let be_tags = self.interceptor.backend_tags();
        // ReadyForQuery is always read whole: the relay tracks idleness with it.
        let mut be_whole = be_tags.with(b'Z');
        if self.pid_map.is_some() {
            be_whole = be_whole.with(b'A');
        }
        let pid_map = self.pid_map;
        let fe_limits = Limits::frontend(self.max_message_bytes);
        let be_limits = Limits::backend(self.max_message_bytes);
        let mut fe = Pump::new();
        let mut be = Pump::new();
        let mut to_upstream = BytesMut::new();
        let mut to_client = BytesMut::new();
        let mut flow = Flow {
            metrics: self.metrics,
            outstanding: 0,
            busy_since: None,
            last_backend_tag: 0,
            terminated: false,
            local: LocalMetrics::default(),
        };
        let mut draining = self.shutdown.is_started();
        let mut deadline = draining.then(|| tokio::time::Instant::now() + self.grace);
        if draining {
            return RelayEnd::Shutdown;
        }
        loop {
            fe.prepare_read();
            be.prepare_read();
            tokio::select! {
                biased;
                _ = self.shutdown.started(), if !draining => {
                    draining = true;
                    deadline = Some(tokio::time::Instant::now() + self.grace);
                    if flow.outstanding == 0 && fe.buf.is_empty() && fe.pending == 0 {
                        return RelayEnd::Shutdown;
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    return RelayEnd::Shutdown;
                }
                r = self.client.read_buf(&mut fe.buf) => {
                    match r {
                        Ok(0) => return RelayEnd::ClientClosed,
                        Ok(n) => flow.local.add_bytes_from_client(n),
                        Err(e) => return RelayEnd::ClientIo(e),
                    }
                    let mut out = Outbox { to_upstream: &mut to_upstream, to_client: &mut to_client };
                    if let Err(e) = frontend(&mut fe, &mut out, fe_tags, &fe_limits, self.interceptor, &mut flow) {
                        return e;
                    }
                    if let Some(end) = self.flush(&mut to_client, &mut to_upstream).await {
                        return end;
                    }
                    if flow.terminated {
                        return RelayEnd::ClientClosed;
                    }
                }
                r = self.upstream.read_buf(&mut be.buf) => {
                    match r {
                        Ok(0) => {
                            return RelayEnd::UpstreamClosed { reported: flow.last_backend_tag == b'E' }
                        }
                        Ok(n) => flow.local.add_bytes_from_upstream(n),
                        Err(e) => return RelayEnd::UpstreamIo(e),
                    }
                    let mut out = Outbox { to_upstream: &mut to_upstream, to_client: &mut to_client };
                    if let Err(e) = backend(&mut be, &mut out, be_tags, be_whole, &be_limits, self.interceptor, &mut flow, self.metrics, pid_map) {
                        return e;
                    }
                    if let Some(end) = self.flush(&mut to_client, &mut to_upstream).await {
                        return end;
                    }
                    if draining && flow.outstanding == 0 && fe.buf.is_empty() && fe.pending == 0 {
                        return RelayEnd::Shutdown;
                    }
                }
            }
        }
    }

    async fn flush(
        &mut self,
        to_client: &mut BytesMut,
        to_upstream: &mut BytesMut,
    ) -> Option<RelayEnd> {
        if !to_client.is_empty() {
            if let Err(e) = write_out(self.client, to_client).await {
                return Some(RelayEnd::ClientIo(e));
            }
        }
        if !to_upstream.is_empty() {
            if let Err(e) = write_out(self.upstream, to_upstream).await {
                return Some(RelayEnd::UpstreamIo(e));
            }
        }
        None
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Writes and flushes `buf`, then releases it so the read buffer it came from can be reused.
#[inline]
async fn write_out(conn: &mut Conn, buf: &mut BytesMut) -> std::io::Result<()> {
    conn.write_all(buf).await?;
    conn.flush().await?;
    *buf = BytesMut::new();
    Ok(())
}

fn frontend(
    pump: &mut Pump,
    out: &mut Outbox<'_>,
    tags: TagSet,
    limits: &Limits,
    interceptor: &mut dyn MessageInterceptor,
    flow: &mut Flow<'_>,
) -> Result<(), RelayEnd> {
    loop {
        if pump.pending > 0 {
            if pump.buf.is_empty() {
                return Ok(());
            }
            let n = pump.pending.min(pump.buf.len());
            append(out.to_upstream, pump.buf.split_to(n));
            pump.pending -= n;
            continue;
        }
        let (tag, total) = match peek_header(&pump.buf, |t| limits.for_frontend_tag(t)) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(()),
            Err(e) => return Err(RelayEnd::ClientProtocol(e)),
        };
        match tag {
            b'Q' | b'S' | b'F' => {
                if flow.outstanding == 0 {
                    flow.busy_since = Some(Instant::now());
                }
                flow.outstanding += 1;
            }
            b'X' => flow.terminated = true,
            _ => {}
        }
        if tags.contains(tag) {
            if pump.buf.len() < total {
                pump.buf.reserve(total - pump.buf.len());
                return Ok(());
            }
            let frame = Frame::new(pump.buf.split_to(total).freeze());
            interceptor
                .on_frontend(frame, out)
                .map_err(RelayEnd::Intercept)?;
        } else {
            let n = total.min(pump.buf.len());
            append(out.to_upstream, pump.buf.split_to(n));
            pump.pending = total - n;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn backend(
    pump: &mut Pump,
    out: &mut Outbox<'_>,
    tags: TagSet,
    whole: TagSet,
    limits: &Limits,
    interceptor: &mut dyn MessageInterceptor,
    flow: &mut Flow<'_>,
    metrics: &Metrics,
    pid_map: Option<(i32, i32)>,
) -> Result<(), RelayEnd> {
    loop {
        if pump.pending > 0 {
            if pump.buf.is_empty() {
                return Ok(());
            }
            let n = pump.pending.min(pump.buf.len());
            append(out.to_client, pump.buf.split_to(n));
            pump.pending -= n;
            continue;
        }
        let (tag, total) = match peek_header(&pump.buf, |_| limits.large) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(()),
            Err(e) => return Err(RelayEnd::UpstreamProtocol(e)),
        };
        if whole.contains(tag) && pump.buf.len() < total {
            pump.buf.reserve(total - pump.buf.len());
            return Ok(());
        }
        flow.last_backend_tag = tag;
        match tag {
            b'Z' => {
                flow.outstanding = flow.outstanding.saturating_sub(1);
                if flow.outstanding == 0 {
                    if let Some(t) = flow.busy_since.take() {
                        let now = Instant::now();
                        flow.local
                            .observe_query(now.duration_since(t), now, metrics);
                    }
                } else {
                    flow.local.observe_query_count();
                }
            }
            b'E' => flow.local.add_error(),
            b'A' => {
                if let (Some((upstream_pid, client_pid)), Some(slot)) =
                    (pid_map, pump.buf.get_mut(5..9))
                {
                    if slot == upstream_pid.to_be_bytes() {
                        slot.copy_from_slice(&client_pid.to_be_bytes());
                    }
                }
            }
            _ => {}
        }
        if tags.contains(tag) {
            let frame = Frame::new(pump.buf.split_to(total).freeze());
            interceptor
                .on_backend(frame, out)
                .map_err(RelayEnd::Intercept)?;
        } else {
            let n = total.min(pump.buf.len());
            append(out.to_client, pump.buf.split_to(n));
            pump.pending = total - n;
        }
    }
}
