//! The seam where column encryption plugs in.
//!
//! A [`MessageInterceptor`] is created per client connection by an [`InterceptorFactory`]. It says
//! which message types it wants to see in each direction ([`TagSet`]); the relay cuts exactly
//! those messages out as complete [`Frame`]s and hands them over, and streams everything else
//! through as raw bytes without copying or decoding. The default [`PassThrough`] asks for nothing,
//! so the relay never calls it.
//!
//! Both directions of one connection run on the same task, so the interceptor is `&mut self` in
//! both hooks and can keep per-connection state (prepared statements, portals, the queue of
//! in-flight statements) without locks.

use bytes::{Bytes, BytesMut};

/// A set of message type bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TagSet([u64; 4]);

impl TagSet {
    /// The empty set.
    pub const EMPTY: TagSet = TagSet([0; 4]);

    /// The set with `tag` added.
    pub const fn with(self, tag: u8) -> TagSet {
        let mut bits = self.0;
        let word = (tag >> 6) as usize;
        // `word` is at most 3, so this index is in bounds; written with a match for clippy.
        match word {
            0 => bits[0] |= 1 << (tag & 63),
            1 => bits[1] |= 1 << (tag & 63),
            2 => bits[2] |= 1 << (tag & 63),
            _ => bits[3] |= 1 << (tag & 63),
        }
        TagSet(bits)
    }

    /// Set union.
    pub const fn union(self, other: TagSet) -> TagSet {
        TagSet([
            self.0[0] | other.0[0],
            self.0[1] | other.0[1],
            self.0[2] | other.0[2],
            self.0[3] | other.0[3],
        ])
    }

    /// Whether `tag` is in the set.
    #[inline]
    pub fn contains(&self, tag: u8) -> bool {
        let word = self.0.get((tag >> 6) as usize).copied().unwrap_or(0);
        word & (1 << (tag & 63)) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }
}

/// One complete protocol message: type byte, length word and body.
#[derive(Debug, Clone)]
pub struct Frame(Bytes);

impl Frame {
    /// Wraps a complete message (header included).
    pub fn new(raw: Bytes) -> Self {
        Frame(raw)
    }

    /// The type byte.
    pub fn tag(&self) -> u8 {
        self.0.first().copied().unwrap_or(0)
    }

    /// The body, after the 5-byte header.
    pub fn body(&self) -> &[u8] {
        self.0.get(5..).unwrap_or(&[])
    }

    /// The whole message as it came off the wire.
    pub fn raw(&self) -> &Bytes {
        &self.0
    }

    /// Consumes the frame, returning the raw bytes.
    pub fn into_raw(self) -> Bytes {
        self.0
    }
}

/// Where an interceptor writes what it forwards or answers. Both buffers are flushed after every
/// batch of messages, `to_client` first.
pub struct Outbox<'a> {
    /// Bytes for the upstream server.
    pub to_upstream: &'a mut BytesMut,
    /// Bytes for the client.
    pub to_client: &'a mut BytesMut,
}

/// An interceptor error: the session ends with a FATAL ErrorResponse carrying this SQLSTATE and
/// message. (For statement-level refusals, write an ErrorResponse into the outbox instead, in
/// protocol order, and keep going.)
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct InterceptError {
    /// SQLSTATE.
    pub code: &'static str,
    /// Message for the client (must not contain plaintext of protected values).
    pub message: String,
}

/// Who the session is for, given to the factory.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// User the client logged in as.
    pub user: String,
    /// Upstream user.
    pub upstream_user: String,
    /// Database.
    pub database: String,
    /// Startup parameters the client sent (`search_path`, `options`, …).
    pub params: Vec<(String, String)>,
    /// The server's ParameterStatus values at start-up (`TimeZone`, `DateStyle`, …).
    pub server_params: Vec<(String, String)>,
    /// The answer to the factory's [`InterceptorFactory::startup_probe`], read on the
    /// session's own upstream connection before the client got its ReadyForQuery: the
    /// setting name → value pairs of the probe's first row (empty without a probe).
    pub probe: Vec<(String, String)>,
}

/// Per-connection message hook. Frontend messages of interest are Query, Parse, Bind, Describe,
/// Close, Execute; backend ones RowDescription, DataRow, ParameterDescription, CommandComplete,
/// ErrorResponse, ReadyForQuery.
pub trait MessageInterceptor: Send {
    /// Frontend (client → upstream) message types to hand to [`Self::on_frontend`].
    fn frontend_tags(&self) -> TagSet {
        TagSet::EMPTY
    }

    /// Backend (upstream → client) message types to hand to [`Self::on_backend`].
    fn backend_tags(&self) -> TagSet {
        TagSet::EMPTY
    }

    /// Called for each frontend message in `frontend_tags`. Default: forward unchanged.
    fn on_frontend(&mut self, frame: Frame, out: &mut Outbox<'_>) -> Result<(), InterceptError> {
        out.to_upstream.extend_from_slice(frame.raw());
        Ok(())
    }

    /// Called for each backend message in `backend_tags`. Default: forward unchanged.
    fn on_backend(&mut self, frame: Frame, out: &mut Outbox<'_>) -> Result<(), InterceptError> {
        out.to_client.extend_from_slice(frame.raw());
        Ok(())
    }
}

/// Builds one interceptor per session.
pub trait InterceptorFactory: Send + Sync {
    /// Creates the interceptor for a new session.
    fn create(&self, info: &SessionInfo) -> Box<dyn MessageInterceptor>;

    /// A query to run on a new session's upstream connection before the client may send
    /// anything, and the names of its result columns: the session's real settings (with role
    /// and database defaults applied). None: no probe.
    fn startup_probe(&self, _database: &str) -> Option<(&'static str, &'static [&'static str])> {
        None
    }
}

/// Forwards everything untouched; the relay never calls it.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough;

impl MessageInterceptor for PassThrough {}

impl InterceptorFactory for PassThrough {
    fn create(&self, _info: &SessionInfo) -> Box<dyn MessageInterceptor> {
        Box::new(PassThrough)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagset() {
        let s = TagSet::EMPTY.with(b'P').with(b'B').with(255).with(0);
        assert!(s.contains(b'P') && s.contains(b'B') && s.contains(255) && s.contains(0));
        assert!(!s.contains(b'Q'));
        assert!(TagSet::EMPTY.is_empty());
        assert!(s.union(TagSet::EMPTY.with(b'Q')).contains(b'Q'));
    }
}
