//! PostgreSQL v3 wire protocol: framing, the startup packet, and the few messages the proxy builds
//! or reads itself. Everything else is forwarded as raw bytes.

pub mod framing;
pub mod messages;
pub mod startup;

/// A malformed, oversized or unexpected message. The connection it came from is closed with a
/// FATAL ErrorResponse; nothing else is affected.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The declared length is below the minimum or above the limit for that message type.
    #[error("invalid length {len} for message type {tag:?} (limit {limit})")]
    BadLength { tag: char, len: usize, limit: usize },
    /// The body ended before a field was complete, or a field has an invalid value.
    #[error("malformed {what} message")]
    Malformed { what: &'static str },
    /// A message that is not allowed at this point of the protocol.
    #[error("unexpected message type {tag:?} during {phase}")]
    Unexpected { tag: char, phase: &'static str },
    /// The startup packet asked for something the proxy does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The peer closed the connection in the middle of a message.
    #[error("connection closed in the middle of a message")]
    Truncated,
    /// An I/O error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl ProtocolError {
    pub(crate) fn malformed(what: &'static str) -> Self {
        ProtocolError::Malformed { what }
    }

    /// Maps an I/O error, turning an early EOF into [`ProtocolError::Truncated`].
    pub(crate) fn from_read(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtocolError::Truncated
        } else {
            ProtocolError::Io(e)
        }
    }
}
