//! A minimal simple-query client over the proxy's own connect and login code, for the proxy's
//! internal connections (the catalog): send one Query, collect the text rows of each
//! statement, stop at ReadyForQuery.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWriteExt, BufStream};

use super::auth::{login, Credentials};
use super::connect::UpstreamTarget;
use super::UpstreamError;
use crate::net::Conn;
use crate::protocol::framing::{read_message, LARGE_MESSAGE_LIMIT};
use crate::protocol::messages::{self, parse_error_fields, BodyReader};
use crate::protocol::ProtocolError;

/// The rows of one statement, every value in text format (None: SQL NULL).
pub type Rows = Vec<Vec<Option<String>>>;

/// A logged-in upstream connection that runs simple queries.
#[derive(Debug)]
pub struct SimpleClient {
    conn: BufStream<Conn>,
}

impl SimpleClient {
    /// Connects and logs in (bounded by `timeout`). `creds.params` should not include `user`
    /// or `database`; `client_encoding` is set to UTF8.
    pub async fn connect(
        target: &UpstreamTarget,
        creds: &Credentials<'_>,
        timeout: Duration,
    ) -> Result<SimpleClient, UpstreamError> {
        let run = async {
            let conn = target.connect().await?;
            let login = login(conn, creds).await?;
            Ok::<_, UpstreamError>(SimpleClient {
                conn: BufStream::new(login.conn),
            })
        };
        tokio::time::timeout(timeout, run)
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }

    /// Runs `sql` (one or more statements, in one implicit transaction) and returns the rows of
    /// each statement that returned rows or completed, in order. An ErrorResponse fails the
    /// call after the server is ready again, so the connection stays usable.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Rows>, UpstreamError> {
        run_query(&mut self.conn, sql).await
    }

    /// Sends Terminate and closes the connection.
    pub async fn close(mut self) {
        let mut out = BytesMut::new();
        messages::terminate(&mut out);
        let _ = self.conn.write_all(&out).await;
        let _ = self.conn.flush().await;
        let _ = self.conn.shutdown().await;
    }
}

/// Runs `sql` on any logged-in upstream stream (the catalog's connections, and a session's
/// own connection before it is handed to the client): one Query, then the text rows of
/// each statement, up to ReadyForQuery.
///
/// Runs `sql` (one or more statements, in one implicit transaction) and returns the rows of
/// each statement that returned rows or completed, in order. An ErrorResponse fails the
/// call after the server is ready again, so the connection stays usable.
pub async fn run_query<S>(conn: &mut S, sql: &str) -> Result<Vec<Rows>, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    messages::put_message(&mut out, b'Q', |b| messages::put_cstr(b, sql));
    conn.write_all(&out).await.map_err(ProtocolError::Io)?;
    conn.flush().await.map_err(ProtocolError::Io)?;
    let mut results = Vec::new();
    let mut current: Rows = Vec::new();
    let mut error = None;
    loop {
        let msg = read_message(&mut *conn, |_| LARGE_MESSAGE_LIMIT).await?;
        match msg.tag {
            b'T' => current.clear(),
            b'D' => current.push(data_row(&msg.body)?),
            b'C' | b'I' => results.push(std::mem::take(&mut current)),
            b'E' => error = Some(parse_error_fields(&msg.body)?),
            b'Z' => {
                return match error {
                    Some(f) => Err(UpstreamError::Query(f)),
                    None => Ok(results),
                }
            }
            // Notices, parameter changes, notifications: nothing to do.
            b'N' | b'S' | b'A' => {}
            other => {
                return Err(ProtocolError::Unexpected {
                    tag: char::from(other),
                    phase: "simple query",
                }
                .into())
            }
        }
    }
}

fn data_row(body: &[u8]) -> Result<Vec<Option<String>>, ProtocolError> {
    let mut r = BodyReader::new(body, "DataRow");
    let n = r.bytes(2)?;
    let count = match n {
        [a, b] => u16::from_be_bytes([*a, *b]),
        _ => return Err(ProtocolError::malformed("DataRow")),
    };
    let mut row = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let len = r.i32()?;
        if len < 0 {
            row.push(None);
            continue;
        }
        let bytes =
            r.bytes(usize::try_from(len).map_err(|_| ProtocolError::malformed("DataRow"))?)?;
        let text = std::str::from_utf8(bytes).map_err(|_| ProtocolError::malformed("DataRow"))?;
        row.push(Some(text.to_owned()));
    }
    Ok(row)
}

/// Quotes `s` as a SQL string literal (`E'...'` when it holds a backslash), as PostgreSQL's
/// `quote_literal` does, so it is safe whatever `standard_conforming_strings` says.
pub fn quote_literal(s: &str) -> String {
    let body = s.replace('\'', "''");
    if s.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_row_parses_and_rejects_short_input() {
        let mut b = Vec::new();
        b.extend_from_slice(&2u16.to_be_bytes());
        b.extend_from_slice(&3i32.to_be_bytes());
        b.extend_from_slice(b"abc");
        b.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(data_row(&b).unwrap(), vec![Some("abc".to_owned()), None]);
        for cut in 0..b.len() {
            assert!(data_row(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = Vec::new();
        bad.extend_from_slice(&1u16.to_be_bytes());
        bad.extend_from_slice(&1i32.to_be_bytes());
        bad.push(0xff);
        assert!(data_row(&bad).is_err());
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(quote_literal("abc"), "'abc'");
        assert_eq!(quote_literal("O'Brien"), "'O''Brien'");
        assert_eq!(quote_literal("a\\b'"), "E'a\\\\b'''");
    }
}
