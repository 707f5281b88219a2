//! A raw wire-protocol client for tests that need exact control over the bytes (pipelines with one
//! Sync, malformed input). Authenticates with SCRAM-SHA-256 using the proxy crate's client side.

use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use pgseal_proxy::client::auth_scram::ScramClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A backend message.
#[derive(Debug, Clone)]
pub struct Msg {
    /// Type byte.
    pub tag: u8,
    /// Body.
    pub body: Vec<u8>,
}

impl Msg {
    /// For ErrorResponse/NoticeResponse: the value of field `code` (e.g. b'C' SQLSTATE).
    pub fn field(&self, code: u8) -> Option<String> {
        let mut b = &self.body[..];
        while let Some((&c, rest)) = b.split_first() {
            if c == 0 {
                break;
            }
            let end = rest.iter().position(|x| *x == 0)?;
            if c == code {
                return Some(String::from_utf8_lossy(&rest[..end]).into());
            }
            b = &rest[end + 1..];
        }
        None
    }
}

/// A connection to the proxy speaking raw protocol.
pub struct Raw {
    /// The socket.
    pub sock: TcpStream,
    buf: BytesMut,
}

/// Appends a typed message.
pub fn msg(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(body);
}

/// A startup packet for `user`/`db`.
pub fn startup(user: &str, db: &str) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_u32(196_608);
    for (k, v) in [("user", user), ("database", db)] {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = BytesMut::new();
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(&body);
    out
}

/// A startup packet for `user`/`db` with further parameters (`options`, `client_encoding`, …).
pub fn startup_with(user: &str, db: &str, extra: &[(&str, &str)]) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_u32(196_608);
    for (k, v) in [("user", user), ("database", db)].iter().chain(extra) {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = BytesMut::new();
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(&body);
    out
}

/// Parse message body for SQL given as bytes (any encoding, NULs included), with declared
/// parameter type OIDs (0: let the server infer).
pub fn parse_bytes(name: &str, sql: &[u8], types: &[u32]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b.extend_from_slice(sql);
    b.push(0);
    b.extend_from_slice(&(types.len() as u16).to_be_bytes());
    for t in types {
        b.extend_from_slice(&t.to_be_bytes());
    }
    b
}

/// Parse message body.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.push(0);
    b.extend_from_slice(&0u16.to_be_bytes());
    b
}

/// Bind body: portal, statement, text parameters, text results.
pub fn bind(portal: &str, stmt: &str, params: &[Option<&str>]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(portal.as_bytes());
    b.push(0);
    b.extend_from_slice(stmt.as_bytes());
    b.push(0);
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for p in params {
        match p {
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v.as_bytes());
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    b.extend_from_slice(&0u16.to_be_bytes());
    b
}

/// Execute body.
pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(portal.as_bytes());
    b.push(0);
    b.extend_from_slice(&max_rows.to_be_bytes());
    b
}

/// Describe/Close body: kind b'S' or b'P' and a name.
pub fn named(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b
}

/// A C string.
pub fn cstr(s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    b
}

impl Raw {
    /// Opens a TCP connection without sending anything.
    pub async fn connect(addr: std::net::SocketAddr) -> Raw {
        let sock = TcpStream::connect(addr).await.unwrap();
        sock.set_nodelay(true).unwrap();
        Raw {
            sock,
            buf: BytesMut::new(),
        }
    }

    /// Connects and logs in; returns after the first ReadyForQuery.
    pub async fn login(addr: std::net::SocketAddr, user: &str, password: &str, db: &str) -> Raw {
        let mut r = Raw::connect(addr).await;
        r.send(&startup(user, db)).await;
        let m = r.expect(b'R').await;
        assert_eq!(&m.body[..4], &10i32.to_be_bytes(), "expected SASL");
        let mut scram = ScramClient::new(password.as_bytes()).unwrap();
        let first = scram.client_first();
        let mut body = cstr("SCRAM-SHA-256");
        body.extend_from_slice(&(first.len() as i32).to_be_bytes());
        body.extend_from_slice(first.as_bytes());
        r.send_msg(b'p', &body).await;
        let m = r.expect(b'R').await;
        let fin = scram.server_first(&m.body[4..]).unwrap();
        r.send_msg(b'p', fin.as_bytes()).await;
        let m = r.expect(b'R').await;
        scram.server_final(&m.body[4..]).unwrap();
        r.until(b'Z').await;
        r
    }

    /// Logs in with further startup parameters like [`login`](Self::login), but returns the
    /// server's ErrorResponse (or a description of the failure) instead of panicking when the
    /// login is refused.
    pub async fn try_login_with(
        addr: std::net::SocketAddr,
        user: &str,
        password: &str,
        db: &str,
        extra: &[(&str, &str)],
    ) -> Result<Raw, String> {
        let mut r = Raw::connect(addr).await;
        r.send(&startup_with(user, db, extra)).await;
        let refused = |m: Option<Msg>| match m {
            Some(m) if m.tag == b'E' => format!(
                "{}: {}",
                m.field(b'C').unwrap_or_default(),
                m.field(b'M').unwrap_or_default()
            ),
            Some(m) => format!("unexpected message {:?} during login", m.tag as char),
            None => "connection closed during login".to_string(),
        };
        let m = r.next().await;
        if !m
            .as_ref()
            .is_some_and(|m| m.tag == b'R' && m.body.get(..4) == Some(&10i32.to_be_bytes()))
        {
            return Err(refused(m));
        }
        let mut scram = ScramClient::new(password.as_bytes()).map_err(|e| e.to_string())?;
        let first = scram.client_first();
        let mut body = cstr("SCRAM-SHA-256");
        body.extend_from_slice(&(first.len() as i32).to_be_bytes());
        body.extend_from_slice(first.as_bytes());
        r.send_msg(b'p', &body).await;
        let m = match r.next().await {
            Some(m) if m.tag == b'R' => m,
            other => return Err(refused(other)),
        };
        let fin = scram
            .server_first(m.body.get(4..).unwrap_or_default())
            .map_err(|e| e.to_string())?;
        r.send_msg(b'p', fin.as_bytes()).await;
        let m = match r.next().await {
            Some(m) if m.tag == b'R' => m,
            other => return Err(refused(other)),
        };
        scram
            .server_final(m.body.get(4..).unwrap_or_default())
            .map_err(|e| e.to_string())?;
        loop {
            match r.next().await {
                Some(m) if m.tag == b'Z' => return Ok(r),
                Some(m) if m.tag == b'E' => return Err(refused(Some(m))),
                Some(_) => {}
                None => return Err(refused(None)),
            }
        }
    }

    /// Sends raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.unwrap();
    }

    /// Sends one typed message.
    pub async fn send_msg(&mut self, tag: u8, body: &[u8]) {
        let mut b = BytesMut::new();
        msg(&mut b, tag, body);
        self.send(&b).await;
    }

    /// Reads the next message; None on EOF (or error). Times out after 20 s.
    pub async fn next(&mut self) -> Option<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let tag = self.buf.get_u8();
                    self.buf.advance(4);
                    let body = self.buf.split_to(len - 4).to_vec();
                    return Some(Msg { tag, body });
                }
            }
            let n =
                tokio::time::timeout(Duration::from_secs(20), self.sock.read_buf(&mut self.buf))
                    .await
                    .expect("timed out waiting for the proxy");
            match n {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads the next message and checks its type.
    pub async fn expect(&mut self, tag: u8) -> Msg {
        let m = self.next().await.expect("connection closed");
        assert_eq!(
            m.tag as char,
            tag as char,
            "unexpected message {:?} ({})",
            m.tag as char,
            m.field(b'M').unwrap_or_default()
        );
        m
    }

    /// Reads messages up to and including the first of type `tag`.
    pub async fn until(&mut self, tag: u8) -> Vec<Msg> {
        let mut v = Vec::new();
        loop {
            let m = self.next().await.expect("connection closed");
            let done = m.tag == tag;
            v.push(m);
            if done {
                return v;
            }
        }
    }

    /// Expects a FATAL ErrorResponse (returns its SQLSTATE) followed by EOF.
    pub async fn expect_fatal(&mut self) -> String {
        let m = self.expect(b'E').await;
        assert_eq!(m.field(b'S').as_deref(), Some("FATAL"), "{m:?}");
        assert!(self.next().await.is_none(), "connection should be closed");
        m.field(b'C').unwrap()
    }
}
