//! The relay loop: both directions of one connection on one task.
//!
//! Each read is scanned for message boundaries with the proxy's own framing. In a direction where
//! the interceptor asks for no message (always, in pass-through), the scanned bytes are written
//! straight from the read buffer, one write per read, and the buffer then skips past them: no
//! copy, no allocation, no reference counting. Where the interceptor wants messages, those are cut
//! out as [`Frame`]s and the others are moved to the output buffer without copying
//! (`split_to`/`unsplit` share the read buffer's allocation); everything gathered from one read
//! goes out in one write. Either way a large message is streamed through as its bytes arrive.
//! Like PostgreSQL, the relay stops reading a side while a write to the other side blocks.
//!
//! The loop polls, on each wake-up: shutdown (one atomic load; the task's waker is registered
//! with it once), the grace deadline while draining, the client, then the upstream. Each side's
//! reads register their own waker ([`SideWake`]), which notes that the side fired before waking
//! the task, so a side that is waiting for data and has not fired is not polled (and its waker
//! not re-registered) when the other side wakes the task.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use bytes::{Buf, BytesMut};
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
    fn prepare_read(&mut self, direct: bool) {
        if self.buf.capacity() - self.buf.len() < MIN_READ {
            if direct {
                // Forwarded bytes were `advance`d past: asking for no more than the allocation
                // holds lets `reserve` move the unsent rest to the front instead of growing.
                self.buf
                    .reserve(READ_CHUNK.saturating_sub(self.buf.len()).max(MIN_READ));
            } else {
                self.buf.reserve(READ_CHUNK);
            }
        }
    }
}

/// What woke the relay.
enum Event {
    Shutdown,
    Deadline,
    Client(std::io::Result<usize>),
    Upstream(std::io::Result<usize>),
}

/// The waker one side's reads register: it records that this side's I/O fired, then wakes the
/// relay task. A wake-up then polls only the sides that fired (and those not yet waiting), instead
/// of re-registering both on every wake-up.
#[derive(Default)]
struct SideWake {
    fired: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        let task = match self.task.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(w) = task.as_ref() {
            w.wake_by_ref();
        }
    }
}

/// One side's read readiness as the relay tracks it.
struct Side {
    state: Arc<SideWake>,
    waker: Waker,
    /// A read returned Pending with `waker` registered, and it has not fired since.
    waiting: bool,
}

impl Side {
    fn new() -> Self {
        let state = Arc::new(SideWake::default());
        Side {
            waker: Waker::from(state.clone()),
            state,
            waiting: false,
        }
    }

    fn set_task(&self, task: &Waker) {
        let mut slot = match self.state.task.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = Some(task.clone());
    }

    /// Polls a read into `buf` unless this side is waiting and has not fired.
    #[inline]
    fn poll_read(&mut self, conn: &mut Conn, buf: &mut BytesMut) -> Poll<std::io::Result<usize>> {
        if self.waiting {
            if !self.state.fired.load(Ordering::Acquire) {
                return Poll::Pending;
            }
            self.waiting = false;
        }
        self.state.fired.store(false, Ordering::Release);
        let mut cx = Context::from_waker(&self.waker);
        let r = poll_read(conn, &mut cx, buf);
        self.waiting = r.is_pending();
        r
    }
}

/// One non-blocking attempt to read from `conn` into the spare capacity of `buf`.
#[inline]
fn poll_read(
    conn: &mut Conn,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    std::pin::pin!(conn.read_buf(buf)).poll(cx)
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
        // A direction nobody intercepts is forwarded straight from its read buffer: one write of
        // the bytes that form whole (or streaming) messages, then the buffer skips past them.
        let fe_direct = fe_tags.is_empty();
        let be_direct = be_tags.is_empty();
        if self.shutdown.is_started() {
            return RelayEnd::Shutdown;
        }
        let mut draining = false;
        let mut grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut client_side = Side::new();
        let mut upstream_side = Side::new();
        let mut task_waker: Option<Waker> = None;
        loop {
            fe.prepare_read(fe_direct);
            be.prepare_read(be_direct);
            // Polled in this order: shutdown, grace deadline, client, upstream.
            let event = {
                let client = &mut *self.client;
                let upstream = &mut *self.upstream;
                let shutdown = &mut self.shutdown;
                let (fe_buf, be_buf) = (&mut fe.buf, &mut be.buf);
                let grace = &mut grace;
                let (client_side, upstream_side) = (&mut client_side, &mut upstream_side);
                let task_waker = &mut task_waker;
                std::future::poll_fn(|cx| {
                    if !task_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        client_side.set_task(cx.waker());
                        upstream_side.set_task(cx.waker());
                        shutdown.register(cx.waker());
                        *task_waker = Some(cx.waker().clone());
                    }
                    if !draining && shutdown.is_started() {
                        return Poll::Ready(Event::Shutdown);
                    }
                    if let Some(sleep) = grace.as_mut() {
                        if sleep.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Event::Deadline);
                        }
                    }
                    if let Poll::Ready(r) = client_side.poll_read(client, fe_buf) {
                        return Poll::Ready(Event::Client(r));
                    }
                    if let Poll::Ready(r) = upstream_side.poll_read(upstream, be_buf) {
                        return Poll::Ready(Event::Upstream(r));
                    }
                    Poll::Pending
                })
                .await
            };
            match event {
                Event::Shutdown => {
                    draining = true;
                    grace = Some(Box::pin(tokio::time::sleep(self.grace)));
                    if flow.outstanding == 0 && fe.buf.is_empty() && fe.pending == 0 {
                        return RelayEnd::Shutdown;
                    }
                }
                Event::Deadline => return RelayEnd::Shutdown,
                Event::Client(r) => {
                    match r {
                        Ok(0) => return RelayEnd::ClientClosed,
                        Ok(n) => flow.local.add_bytes_from_client(n),
                        Err(e) => return RelayEnd::ClientIo(e),
                    }
                    if fe_direct {
                        let n = match scan_frontend(&mut fe, &fe_limits, &mut flow) {
                            Ok(n) => n,
                            Err(e) => return e,
                        };
                        // Nothing is queued here (every branch flushes), but keep the order.
                        if let Some(end) = self.flush(&mut to_client, &mut to_upstream).await {
                            return end;
                        }
                        if let Err(e) = forward(self.upstream, &mut fe.buf, n).await {
                            return RelayEnd::UpstreamIo(e);
                        }
                    } else {
                        let mut out = Outbox {
                            to_upstream: &mut to_upstream,
                            to_client: &mut to_client,
                        };
                        if let Err(e) = frontend(
                            &mut fe,
                            &mut out,
                            fe_tags,
                            &fe_limits,
                            self.interceptor,
                            &mut flow,
                        ) {
                            return e;
                        }
                        if let Some(end) = self.flush(&mut to_client, &mut to_upstream).await {
                            return end;
                        }
                    }
                    if flow.terminated {
                        return RelayEnd::ClientClosed;
                    }
                }
                Event::Upstream(r) => {
                    match r {
                        Ok(0) => {
                            return RelayEnd::UpstreamClosed {
                                reported: flow.last_backend_tag == b'E',
                            }
                        }
                        Ok(n) => flow.local.add_bytes_from_upstream(n),
                        Err(e) => return RelayEnd::UpstreamIo(e),
                    }
                    if be_direct {
                        let n = match scan_backend(
                            &mut be,
                            be_whole,
                            &be_limits,
                            &mut flow,
                            self.metrics,
                            pid_map,
                        ) {
                            Ok(n) => n,
                            Err(e) => return e,
                        };
                        if let Some(end) = self.flush(&mut to_client, &mut to_upstream).await {
                            return end;
                        }
                        if let Err(e) = forward(self.client, &mut be.buf, n).await {
                            return RelayEnd::ClientIo(e);
                        }
                    } else {
                        let mut out = Outbox {
                            to_upstream: &mut to_upstream,
                            to_client: &mut to_client,
                        };
                        if let Err(e) = backend(
                            &mut be,
                            &mut out,
                            be_tags,
                            be_whole,
                            &be_limits,
                            self.interceptor,
                            &mut flow,
                            self.metrics,
                            pid_map,
                        ) {
                            return e;
                        }
                        if let Some(end) = self.flush(&mut to_client, &mut to_upstream).await {
                            return end;
                        }
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

/// Writes the first `n` bytes of `buf` to `conn` and skips past them (no copy, no allocation).
/// A plain socket is first tried with one non-blocking write; whatever it did not take (and
/// everything on TLS) goes through the async write, which waits for the socket.
#[inline]
async fn forward(conn: &mut Conn, buf: &mut BytesMut, n: usize) -> std::io::Result<()> {
    let n = n.min(buf.len());
    if n == 0 {
        return Ok(());
    }
    if let Some(bytes) = buf.get(..n) {
        let written = match conn.try_write(bytes) {
            Ok(w) => w,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if let Some(rest) = bytes.get(written..).filter(|r| !r.is_empty()) {
            conn.write_all(rest).await?;
        }
        if conn.is_tls() {
            conn.flush().await?;
        }
    }
    buf.advance(n);
    Ok(())
}

/// Writes and flushes `buf`, then releases it so the read buffer it came from can be reused.
#[inline]
async fn write_out(conn: &mut Conn, buf: &mut BytesMut) -> std::io::Result<()> {
    conn.write_all(buf).await?;
    conn.flush().await?;
    *buf = BytesMut::new();
    Ok(())
}

/// Bookkeeping for one frontend message of type `tag`: busy periods and Terminate.
#[inline]
fn account_frontend(tag: u8, flow: &mut Flow<'_>) {
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
}

/// Bookkeeping for one backend message of type `tag` starting at `msg[0]`: ReadyForQuery ends a
/// busy period, ErrorResponse counts, and a NotificationResponse (whole in `msg`) gets the pid the
/// client knows.
#[inline]
fn account_backend(
    tag: u8,
    msg: &mut [u8],
    flow: &mut Flow<'_>,
    metrics: &Metrics,
    pid_map: Option<(i32, i32)>,
) {
    flow.last_backend_tag = tag;
    match tag {
        b'Z' => {
            flow.outstanding = flow.outstanding.saturating_sub(1);
            if flow.outstanding == 0 {
                if let Some(t) = flow.busy_since.take() {
                    let now = Instant::now();
                    flow.local.observe_query(t, now, metrics);
                }
            } else {
                flow.local.observe_query_count();
            }
        }
        b'E' => flow.local.add_error(),
        b'A' => {
            if let (Some((upstream_pid, client_pid)), Some(slot)) = (pid_map, msg.get_mut(5..9)) {
                if slot == upstream_pid.to_be_bytes() {
                    slot.copy_from_slice(&client_pid.to_be_bytes());
                }
            }
        }
        _ => {}
    }
}

/// Direct path of the frontend (no message intercepted): scans the read buffer from its start,
/// does the bookkeeping, and returns how many leading bytes can go upstream now — every complete
/// message plus the part of a message that has arrived (large messages stream through; the
/// rest of one is remembered in `pending`). A partial header stays in the buffer.
fn scan_frontend(pump: &mut Pump, limits: &Limits, flow: &mut Flow<'_>) -> Result<usize, RelayEnd> {
    let len = pump.buf.len();
    let mut at = pump.pending.min(len);
    pump.pending -= at;
    if pump.pending > 0 {
        return Ok(at);
    }
    while let Some(rest) = pump.buf.get(at..) {
        let (tag, total) = match peek_header(rest, |t| limits.for_frontend_tag(t)) {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(e) => return Err(RelayEnd::ClientProtocol(e)),
        };
        account_frontend(tag, flow);
        if total > rest.len() {
            pump.pending = total - rest.len();
            return Ok(len);
        }
        at += total;
    }
    Ok(at)
}

/// Direct path of the backend (no message intercepted): like [`scan_frontend`], but messages in
/// `whole` (ReadyForQuery, and NotificationResponse when pids are mapped) wait until complete.
fn scan_backend(
    pump: &mut Pump,
    whole: TagSet,
    limits: &Limits,
    flow: &mut Flow<'_>,
    metrics: &Metrics,
    pid_map: Option<(i32, i32)>,
) -> Result<usize, RelayEnd> {
    let len = pump.buf.len();
    let mut at = pump.pending.min(len);
    pump.pending -= at;
    if pump.pending > 0 {
        return Ok(at);
    }
    while let Some(rest) = pump.buf.get_mut(at..) {
        let (tag, total) = match peek_header(rest, |_| limits.large) {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(e) => return Err(RelayEnd::UpstreamProtocol(e)),
        };
        let have = rest.len();
        if total > have && whole.contains(tag) {
            pump.buf.reserve(total - have);
            break;
        }
        account_backend(tag, rest, flow, metrics, pid_map);
        if total > have {
            pump.pending = total - have;
            return Ok(len);
        }
        at += total;
    }
    Ok(at)
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
        account_frontend(tag, flow);
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
        account_backend(tag, &mut pump.buf, flow, metrics, pid_map);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn flow(metrics: &Metrics) -> Flow<'_> {
        Flow {
            metrics,
            outstanding: 0,
            busy_since: None,
            last_backend_tag: 0,
            terminated: false,
            local: LocalMetrics::default(),
        }
    }

    fn pump(bytes: &[u8]) -> Pump {
        let mut p = Pump::new();
        p.buf.extend_from_slice(bytes);
        p
    }

    #[test]
    fn frontend_forwards_whole_messages_and_keeps_a_partial_header() {
        let metrics = Metrics::default();
        let mut f = flow(&metrics);
        let limits = Limits::frontend(1 << 20);
        let mut input = msg(b'P', b"\0select 1\0\0\0");
        input.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
        input.extend(msg(b'S', b""));
        let whole = input.len();
        input.extend_from_slice(b"Q\0\0"); // three bytes of the next header
        let mut p = pump(&input);
        assert_eq!(scan_frontend(&mut p, &limits, &mut f).unwrap(), whole);
        assert_eq!(p.pending, 0);
        assert_eq!(f.outstanding, 1, "Sync starts a busy period");
        assert!(f.busy_since.is_some());
        // Forwarding leaves the partial header at the front.
        p.buf.advance(whole);
        assert_eq!(&p.buf[..], b"Q\0\0");
        p.buf.extend_from_slice(b"\0\x05x");
        assert_eq!(scan_frontend(&mut p, &limits, &mut f).unwrap(), 6);
        assert_eq!(f.outstanding, 2);
    }

    #[test]
    fn frontend_streams_a_large_message_as_it_arrives() {
        let metrics = Metrics::default();
        let mut f = flow(&metrics);
        let limits = Limits::frontend(1 << 20);
        let body = vec![b'x'; 10_000];
        let m = msg(b'd', &body);
        let mut p = pump(&m[..3000]);
        assert_eq!(scan_frontend(&mut p, &limits, &mut f).unwrap(), 3000);
        assert_eq!(p.pending, m.len() - 3000);
        p.buf.advance(3000);
        // The rest of the message and the start of a Terminate.
        p.buf.extend_from_slice(&m[3000..]);
        p.buf.extend_from_slice(&msg(b'X', b""));
        let n = scan_frontend(&mut p, &limits, &mut f).unwrap();
        assert_eq!(n, m.len() - 3000 + 5);
        assert_eq!(p.pending, 0);
        assert!(f.terminated);
    }

    #[test]
    fn frontend_rejects_an_oversized_small_message() {
        let metrics = Metrics::default();
        let mut f = flow(&metrics);
        let limits = Limits::frontend(1 << 20);
        // A Sync claiming 20,000 bytes: over PostgreSQL's limit for small messages.
        let mut p = pump(b"S\0\0\x4e\x20");
        assert!(matches!(
            scan_frontend(&mut p, &limits, &mut f),
            Err(RelayEnd::ClientProtocol(ProtocolError::BadLength { .. }))
        ));
    }

    #[test]
    fn backend_waits_for_whole_ready_for_query_and_counts_it() {
        let metrics = Metrics::default();
        let mut f = flow(&metrics);
        f.outstanding = 1;
        f.busy_since = Some(Instant::now());
        let limits = Limits::backend(1 << 20);
        let whole = TagSet::EMPTY.with(b'Z');
        let mut input = msg(b'2', b"");
        input.extend(msg(b'D', b"\0\x01\0\0\0\x011"));
        input.extend(msg(b'C', b"SELECT 1\0"));
        let before_z = input.len();
        let z = msg(b'Z', b"I");
        input.extend_from_slice(&z[..3]);
        let mut p = pump(&input);
        assert_eq!(
            scan_backend(&mut p, whole, &limits, &mut f, &metrics, None).unwrap(),
            before_z,
            "a partial ReadyForQuery is held back"
        );
        assert_eq!(f.outstanding, 1);
        p.buf.advance(before_z);
        p.buf.extend_from_slice(&z[3..]);
        assert_eq!(
            scan_backend(&mut p, whole, &limits, &mut f, &metrics, None).unwrap(),
            z.len()
        );
        assert_eq!(f.outstanding, 0);
        assert!(f.busy_since.is_none());
        assert_eq!(f.last_backend_tag, b'Z');
    }

    #[test]
    fn backend_streams_big_data_rows_and_maps_notification_pids() {
        let metrics = Metrics::default();
        let mut f = flow(&metrics);
        let limits = Limits::backend(1 << 20);
        let whole = TagSet::EMPTY.with(b'Z').with(b'A');
        // A big DataRow streams through partially.
        let row = msg(b'D', &vec![7u8; 50_000]);
        let mut p = pump(&row[..1000]);
        assert_eq!(
            scan_backend(&mut p, whole, &limits, &mut f, &metrics, Some((111, 222))).unwrap(),
            1000
        );
        p.buf.advance(1000);
        p.buf.extend_from_slice(&row[1000..]);
        let mut note = 111i32.to_be_bytes().to_vec();
        note.extend_from_slice(b"chan\0payload\0");
        let n = msg(b'A', &note);
        p.buf.extend_from_slice(&n);
        let got = scan_backend(&mut p, whole, &limits, &mut f, &metrics, Some((111, 222))).unwrap();
        assert_eq!(got, row.len() - 1000 + n.len());
        let forwarded = &p.buf[row.len() - 1000..];
        assert_eq!(
            &forwarded[5..9],
            &222i32.to_be_bytes(),
            "pid translated in place"
        );
        assert_eq!(&forwarded[9..], b"chan\0payload\0");
    }

    #[test]
    fn backend_rejects_a_bad_length() {
        let metrics = Metrics::default();
        let mut f = flow(&metrics);
        let limits = Limits::backend(1 << 20);
        let mut p = pump(b"D\0\0\0\x02");
        assert!(matches!(
            scan_backend(&mut p, TagSet::EMPTY, &limits, &mut f, &metrics, None),
            Err(RelayEnd::UpstreamProtocol(ProtocolError::BadLength { .. }))
        ));
    }

    #[test]
    fn direct_read_buffer_is_reused_not_grown() {
        let mut p = Pump::new();
        for _ in 0..100 {
            p.prepare_read(true);
            assert!(p.buf.capacity() - p.buf.len() >= MIN_READ);
            // A read of 3,000 bytes, all forwarded but the last 7 (a partial message).
            p.buf.extend_from_slice(&[0u8; 3000]);
            let n = p.buf.len() - 7;
            p.buf.advance(n);
            assert!(p.buf.capacity() <= READ_CHUNK, "{}", p.buf.capacity());
        }
    }

    #[test]
    fn side_waker_records_the_side_and_wakes_the_task() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let task = Arc::new(Count(Default::default()));
        let side = Side::new();
        side.set_task(&Waker::from(task.clone()));
        assert!(!side.state.fired.load(Ordering::SeqCst));
        side.waker.wake_by_ref();
        assert!(side.state.fired.load(Ordering::SeqCst));
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
    }
}
