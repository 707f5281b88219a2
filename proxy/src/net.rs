//! The byte streams the proxy talks over: plain TCP, unix sockets, and TLS on either leg.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A connection to a client or to the upstream server.
pub enum Conn {
    /// Plain TCP.
    Tcp(TcpStream),
    /// Unix-domain socket (upstream only).
    Unix(UnixStream),
    /// TLS terminated by the proxy (client leg).
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS initiated by the proxy (upstream leg).
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    /// Whether the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::ServerTls(_) | Conn::ClientTls(_))
    }

    /// One non-blocking write of `buf` without registering for wake-ups: the bytes written, or
    /// `WouldBlock` when the socket is not known to be writable. TLS streams always answer
    /// `WouldBlock` (their writes go through the async path, which also flushes the TLS layer).
    #[inline]
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.try_write(buf),
            Conn::Unix(s) => s.try_write(buf),
            Conn::ServerTls(_) | Conn::ClientTls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Tcp(_) => "Conn::Tcp",
            Conn::Unix(_) => "Conn::Unix",
            Conn::ServerTls(_) => "Conn::ServerTls",
            Conn::ClientTls(_) => "Conn::ClientTls",
        })
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Conn::ServerTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::ClientTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Conn::ServerTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::ClientTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Unix(s) => Pin::new(s).poll_flush(cx),
            Conn::ServerTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::ClientTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Conn::ServerTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::ClientTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
