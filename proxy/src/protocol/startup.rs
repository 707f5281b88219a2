//! The untyped first packet of a connection: StartupMessage, SSLRequest, GSSENCRequest or
//! CancelRequest.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::framing::MAX_STARTUP_PACKET_LENGTH;
use super::messages::{
    BodyReader, CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, PROTOCOL_3_0, SSL_REQUEST_CODE,
};
use super::ProtocolError;

/// A decoded startup packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// SSLRequest.
    SslRequest,
    /// GSSENCRequest.
    GssEncRequest,
    /// CancelRequest with the key the client got in BackendKeyData.
    CancelRequest {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret key from BackendKeyData.
        secret: i32,
    },
    /// StartupMessage.
    Startup {
        /// Requested protocol version (major << 16 | minor); the major is 3.
        version: u32,
        /// Parameters in the order sent (user, database, options, application_name, ...).
        params: Vec<(String, String)>,
    },
}

impl StartupPacket {
    /// The value of a startup parameter.
    pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one startup packet, with PostgreSQL's length limits.
pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> Result<StartupPacket, ProtocolError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .await
        .map_err(ProtocolError::from_read)?;
    if len.first() == Some(&0x16) {
        return Err(ProtocolError::Unsupported(
            "direct TLS negotiation (use sslnegotiation=postgres)".into(),
        ));
    }
    let len = u32::from_be_bytes(len) as usize;
    if !(8..=MAX_STARTUP_PACKET_LENGTH).contains(&len) {
        return Err(ProtocolError::BadLength {
            tag: '\0',
            len,
            limit: MAX_STARTUP_PACKET_LENGTH,
        });
    }
    let mut body = vec![0u8; len - 4];
    r.read_exact(&mut body)
        .await
        .map_err(ProtocolError::from_read)?;
    decode_startup(&body)
}

/// Decodes the body of a startup packet (everything after the length word).
pub fn decode_startup(body: &[u8]) -> Result<StartupPacket, ProtocolError> {
    let mut r = BodyReader::new(body, "startup packet");
    let code = r.u32()?;
    match code {
        SSL_REQUEST_CODE if r.is_empty() => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE if r.is_empty() => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            let pid = r.i32()?;
            let secret = r.i32()?;
            if !r.is_empty() {
                return Err(ProtocolError::malformed("CancelRequest"));
            }
            Ok(StartupPacket::CancelRequest { pid, secret })
        }
        v if v >> 16 == 3 => {
            let mut params = Vec::new();
            loop {
                let k = r.cstr()?;
                if k.is_empty() {
                    break;
                }
                let v = r.cstr()?;
                params.push((k.to_owned(), v.to_owned()));
            }
            if !r.is_empty() {
                return Err(ProtocolError::malformed("StartupMessage"));
            }
            Ok(StartupPacket::Startup { version: v, params })
        }
        v => Err(ProtocolError::Unsupported(format!(
            "frontend protocol {}.{} (server supports 3.0)",
            v >> 16,
            v & 0xffff
        ))),
    }
}

/// Whether `version` is exactly 3.0.
pub fn is_v3_0(version: u32) -> bool {
    version == PROTOCOL_3_0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_startup() {
        let mut b = Vec::new();
        b.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        b.extend_from_slice(b"user\0app\0database\0db\0\0");
        let p = decode_startup(&b).unwrap();
        match p {
            StartupPacket::Startup { version, params } => {
                assert_eq!(version, PROTOCOL_3_0);
                assert_eq!(StartupPacket::param(&params, "user"), Some("app"));
            }
            _ => panic!("wrong packet"),
        }
        // Missing terminator, garbage, unknown code.
        assert!(decode_startup(&b[..b.len() - 1]).is_err());
        assert!(decode_startup(b"\0\x03\0\0user").is_err());
        assert!(decode_startup(&1234u32.to_be_bytes()).is_err());
        assert!(decode_startup(b"ab").is_err());
    }
}
