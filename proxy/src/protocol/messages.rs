//! The messages the proxy builds or reads itself. Builders append one complete message to a
//! buffer; [`BodyReader`] reads fields from a message body without panicking on short input.

use bytes::{BufMut, BytesMut};

use super::ProtocolError;

/// Startup protocol codes (the `i32` after the length of an untyped startup packet).
pub const PROTOCOL_3_0: u32 = 196_608;
/// `SSLRequest` code.
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// `GSSENCRequest` code.
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// `CancelRequest` code.
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// Authentication request codes (`R` messages).
pub mod auth {
    /// AuthenticationOk.
    pub const OK: i32 = 0;
    /// AuthenticationCleartextPassword.
    pub const CLEARTEXT: i32 = 3;
    /// AuthenticationMD5Password.
    pub const MD5: i32 = 5;
    /// AuthenticationSASL.
    pub const SASL: i32 = 10;
    /// AuthenticationSASLContinue.
    pub const SASL_CONTINUE: i32 = 11;
    /// AuthenticationSASLFinal.
    pub const SASL_FINAL: i32 = 12;
}

/// Appends a typed message: `tag`, a length word, then whatever `body` writes.
#[inline]
pub fn put_message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let len_at = out.len();
    out.put_u32(0);
    body(out);
    let len = (out.len() - len_at) as u32;
    if let Some(slot) = out.get_mut(len_at..len_at + 4) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
}

/// Appends a NUL-terminated string. Interior NULs are dropped so the framing stays valid.
pub fn put_cstr(out: &mut BytesMut, s: &str) {
    let bytes = s.as_bytes();
    if bytes.contains(&0) {
        out.extend(bytes.iter().copied().filter(|b| *b != 0));
    } else {
        out.put_slice(bytes);
    }
    out.put_u8(0);
}

/// Severity of an ErrorResponse built by the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// Appends an ErrorResponse with severity, SQLSTATE and message.
pub fn error_response(out: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    put_message(out, b'E', |b| {
        b.put_u8(b'S');
        put_cstr(b, severity.as_str());
        b.put_u8(b'V');
        put_cstr(b, severity.as_str());
        b.put_u8(b'C');
        put_cstr(b, code);
        b.put_u8(b'M');
        put_cstr(b, message);
        b.put_u8(0);
    });
}

/// Appends an Authentication message with a code and extra bytes.
pub fn authentication(out: &mut BytesMut, code: i32, extra: &[u8]) {
    put_message(out, b'R', |b| {
        b.put_i32(code);
        b.put_slice(extra);
    });
}

/// Appends AuthenticationSASL advertising the given mechanisms.
pub fn authentication_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    put_message(out, b'R', |b| {
        b.put_i32(auth::SASL);
        for m in mechanisms {
            put_cstr(b, m);
        }
        b.put_u8(0);
    });
}

/// Appends BackendKeyData.
pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    put_message(out, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

/// Appends ReadyForQuery.
pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    put_message(out, b'Z', |b| b.put_u8(status));
}

/// Appends NegotiateProtocolVersion.
pub fn negotiate_protocol_version(out: &mut BytesMut, newest_minor: i32, unrecognized: &[String]) {
    put_message(out, b'v', |b| {
        b.put_i32(newest_minor);
        b.put_i32(i32::try_from(unrecognized.len()).unwrap_or(i32::MAX));
        for o in unrecognized {
            put_cstr(b, o);
        }
    });
}

/// Appends an untyped StartupMessage for protocol 3.0 with the given parameters.
pub fn startup_message<'a>(
    out: &mut BytesMut,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) {
    let start = out.len();
    out.put_u32(0);
    out.put_u32(PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(out, k);
        put_cstr(out, v);
    }
    out.put_u8(0);
    let len = (out.len() - start) as u32;
    if let Some(slot) = out.get_mut(start..start + 4) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
}

/// Appends an SSLRequest.
pub fn ssl_request(out: &mut BytesMut) {
    out.put_u32(8);
    out.put_u32(SSL_REQUEST_CODE);
}

/// Appends a CancelRequest.
pub fn cancel_request(out: &mut BytesMut, pid: i32, secret: i32) {
    out.put_u32(16);
    out.put_u32(CANCEL_REQUEST_CODE);
    out.put_i32(pid);
    out.put_i32(secret);
}

/// Appends a PasswordMessage (also used for SASL responses) with raw contents.
pub fn password_message(out: &mut BytesMut, data: &[u8]) {
    put_message(out, b'p', |b| b.put_slice(data));
}

/// Appends a SASLInitialResponse.
pub fn sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    put_message(out, b'p', |b| {
        put_cstr(b, mechanism);
        b.put_i32(i32::try_from(data.len()).unwrap_or(i32::MAX));
        b.put_slice(data);
    });
}

/// Appends Terminate.
pub fn terminate(out: &mut BytesMut) {
    put_message(out, b'X', |_| {});
}

/// Reads fields from a message body. Every accessor fails instead of panicking on short input.
#[derive(Debug)]
pub struct BodyReader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> BodyReader<'a> {
    /// A reader over `buf`; `what` names the message in errors.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        BodyReader { buf, what }
    }

    fn err(&self) -> ProtocolError {
        ProtocolError::malformed(self.what)
    }

    /// Remaining bytes.
    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    /// Takes `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if n > self.buf.len() {
            return Err(self.err());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, ProtocolError> {
        let b = self.bytes(1)?;
        b.first().copied().ok_or_else(|| self.err())
    }

    /// Reads a big-endian `i32`.
    pub fn i32(&mut self) -> Result<i32, ProtocolError> {
        let b = self.bytes(4)?;
        let arr: [u8; 4] = b.try_into().map_err(|_| self.err())?;
        Ok(i32::from_be_bytes(arr))
    }

    /// Reads a big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(self.i32()? as u32)
    }

    /// Reads a NUL-terminated UTF-8 string.
    pub fn cstr(&mut self) -> Result<&'a str, ProtocolError> {
        let end = self
            .buf
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| self.err())?;
        let s = self.bytes(end)?;
        self.bytes(1)?;
        std::str::from_utf8(s).map_err(|_| self.err())
    }

    /// True when nothing is left.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// The fields of an ErrorResponse or NoticeResponse the proxy looks at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    /// `S`/`V` severity.
    pub severity: String,
    /// `C` SQLSTATE.
    pub code: String,
    /// `M` message.
    pub message: String,
}

/// Parses the body of an ErrorResponse or NoticeResponse.
pub fn parse_error_fields(body: &[u8]) -> Result<ErrorFields, ProtocolError> {
    let mut r = BodyReader::new(body, "ErrorResponse");
    let mut f = ErrorFields::default();
    loop {
        let code = r.u8()?;
        if code == 0 {
            break;
        }
        let v = r.cstr()?;
        match code {
            b'V' => f.severity = v.to_owned(),
            b'S' if f.severity.is_empty() => f.severity = v.to_owned(),
            b'C' => f.code = v.to_owned(),
            b'M' => f.message = v.to_owned(),
            _ => {}
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_cstr_terminates_and_drops_interior_nuls() {
        let mut b = BytesMut::new();
        put_cstr(&mut b, "SELECT 1");
        assert_eq!(&b[..], b"SELECT 1\0");
        let mut b = BytesMut::new();
        put_cstr(&mut b, "a\0b\0");
        assert_eq!(&b[..], b"ab\0");
        let mut b = BytesMut::new();
        put_cstr(&mut b, "");
        assert_eq!(&b[..], b"\0");
    }

    #[test]
    fn error_roundtrip() {
        let mut b = BytesMut::new();
        error_response(&mut b, Severity::Fatal, "28P01", "nope");
        assert_eq!(b[0], b'E');
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        assert_eq!(len + 1, b.len());
        let f = parse_error_fields(&b[5..]).unwrap();
        assert_eq!(f.severity, "FATAL");
        assert_eq!(f.code, "28P01");
        assert_eq!(f.message, "nope");
    }

    #[test]
    fn reader_never_panics_on_short_input() {
        let mut r = BodyReader::new(b"ab", "x");
        assert!(r.i32().is_err());
        assert!(r.cstr().is_err());
        assert!(parse_error_fields(b"Sabc").is_err());
        assert!(parse_error_fields(b"").is_err());
    }
}
