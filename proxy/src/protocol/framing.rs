//! Message framing: a type byte and a big-endian `i32` length that counts itself but not the type
//! byte. The proxy frames every message itself so unknown ones (FunctionCall `F` included) forward
//! as raw bytes, and enforces limits like PostgreSQL's.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::ProtocolError;

/// PostgreSQL's `PQ_SMALL_MESSAGE_LIMIT`: frontend messages that are never large.
pub const SMALL_MESSAGE_LIMIT: usize = 10_000;
/// PostgreSQL's `PQ_LARGE_MESSAGE_LIMIT` (0x3fffffff - 1), counting the length word.
pub const LARGE_MESSAGE_LIMIT: usize = 0x3fff_ffff - 1;
/// PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`.
pub const MAX_STARTUP_PACKET_LENGTH: usize = 10_000;
/// Size of a message header: type byte + length word.
pub const HEADER_LEN: usize = 5;

/// Limits applied to one direction of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest length word accepted for the message types PostgreSQL lets grow (Query, Parse, Bind,
    /// FunctionCall, CopyData on the frontend; everything on the backend).
    pub large: usize,
    /// Largest length word for all other frontend messages.
    pub small: usize,
}

impl Limits {
    /// Frontend (client → server) limits like PostgreSQL 15's `SocketBackend`.
    pub fn frontend(max_message_bytes: usize) -> Self {
        Limits {
            large: max_message_bytes.min(LARGE_MESSAGE_LIMIT),
            small: SMALL_MESSAGE_LIMIT.min(max_message_bytes.max(HEADER_LEN)),
        }
    }

    /// Backend (server → client) limits: one bound for every type.
    pub fn backend(max_message_bytes: usize) -> Self {
        let large = max_message_bytes.min(LARGE_MESSAGE_LIMIT);
        Limits {
            large,
            small: large,
        }
    }

    /// The limit for one message type.
    #[inline]
    pub fn for_frontend_tag(&self, tag: u8) -> usize {
        match tag {
            b'Q' | b'P' | b'B' | b'F' | b'd' => self.large,
            _ => self.small,
        }
    }
}

/// Reads the header at the start of `buf`, if complete: the type byte and the total size of the
/// message including the type byte. The length is validated against `limit_for(tag)`.
#[inline]
pub fn peek_header(
    buf: &[u8],
    limit_for: impl Fn(u8) -> usize,
) -> Result<Option<(u8, usize)>, ProtocolError> {
    let Some(head) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut head = head;
    let tag = head.get_u8();
    let len = head.get_u32() as usize;
    let limit = limit_for(tag);
    if len < 4 || len > limit {
        return Err(ProtocolError::BadLength {
            tag: char::from(tag),
            len,
            limit,
        });
    }
    Ok(Some((tag, len + 1)))
}

/// One complete message: its type byte and its body (without the header).
#[derive(Debug, Clone)]
pub struct Message {
    /// The type byte.
    pub tag: u8,
    /// The body, without the type byte and the length word.
    pub body: Bytes,
}

/// Reads exactly one message, without reading past it (used during startup and authentication,
/// where the stream may still be upgraded to TLS or handed over to the relay).
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    limit_for: impl Fn(u8) -> usize,
) -> Result<Message, ProtocolError> {
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head)
        .await
        .map_err(ProtocolError::from_read)?;
    let Some((tag, total)) = peek_header(&head, limit_for)? else {
        return Err(ProtocolError::Truncated);
    };
    let mut body = BytesMut::zeroed(total - HEADER_LEN);
    r.read_exact(&mut body)
        .await
        .map_err(ProtocolError::from_read)?;
    Ok(Message {
        tag,
        body: body.freeze(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_limits() {
        let l = Limits::frontend(1 << 20);
        assert!(peek_header(b"Q\0\0", |t| l.for_frontend_tag(t))
            .unwrap()
            .is_none());
        assert_eq!(
            peek_header(b"Q\0\0\0\x05x", |t| l.for_frontend_tag(t)).unwrap(),
            Some((b'Q', 6))
        );
        assert!(peek_header(b"Q\0\0\0\x03", |t| l.for_frontend_tag(t)).is_err());
        assert!(peek_header(b"S\0\0\x30\x00", |t| l.for_frontend_tag(t)).is_err());
        assert!(peek_header(b"Q\x7f\0\0\0", |t| l.for_frontend_tag(t)).is_err());
        assert!(peek_header(b"Q\0\x01\0\0", |t| l.for_frontend_tag(t))
            .unwrap()
            .is_some());
    }
}
