//! Sockets on a shard's executor: glommio's io_uring network API or tokio's,
//! whichever event loop the shard's I/O engine runs (see [`NetStack`]).
//!
//! Every shard binds its own listening socket to the server's address with
//! `SO_REUSEPORT`; the kernel spreads incoming connections over the shards,
//! and the shard that accepted a connection serves it to the end.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use socket2::{Domain, Protocol, Socket, Type};

use crate::io::NetStack;

/// Pending connections the kernel queues per shard listener.
const LISTEN_BACKLOG: i32 = 1024;

pub enum Listener {
    Glommio(glommio::net::TcpListener),
    Tokio(tokio::net::TcpListener),
}

pub enum Stream {
    Glommio(glommio::net::TcpStream),
    Tokio(tokio::net::TcpStream),
    GlommioTls(Box<futures_rustls::server::TlsStream<glommio::net::TcpStream>>),
    TokioTls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

/// A listening socket for `addr` with `SO_REUSEPORT`, so every shard can
/// bind the same address.
fn reuseport_socket(addr: SocketAddr) -> io::Result<Socket> {
    let sk = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sk.set_reuse_address(true)?;
    sk.set_reuse_port(true)?;
    sk.bind(&addr.into())?;
    sk.listen(LISTEN_BACKLOG)?;
    Ok(sk)
}

impl Listener {
    /// Binds this shard's listener for `addr` on the current executor.
    pub fn bind(stack: NetStack, addr: SocketAddr) -> io::Result<Listener> {
        let sk = reuseport_socket(addr)?;
        match stack {
            NetStack::Glommio => {
                use std::os::fd::{FromRawFd, IntoRawFd};
                // SAFETY: the fd is a bound, listening TCP socket we own;
                // ownership moves into the glommio listener.
                let l = unsafe { glommio::net::TcpListener::from_raw_fd(sk.into_raw_fd()) };
                Ok(Listener::Glommio(l))
            }
            NetStack::Tokio => {
                sk.set_nonblocking(true)?;
                let std: std::net::TcpListener = sk.into();
                Ok(Listener::Tokio(tokio::net::TcpListener::from_std(std)?))
            }
        }
    }

    pub async fn accept(&self) -> io::Result<(Stream, Option<SocketAddr>)> {
        match self {
            Listener::Glommio(l) => {
                let s = l.accept().await.map_err(io::Error::from)?;
                let peer = s.peer_addr().ok();
                Ok((Stream::Glommio(s), peer))
            }
            Listener::Tokio(l) => {
                let (s, peer) = l.accept().await?;
                Ok((Stream::Tokio(s), Some(peer)))
            }
        }
    }
}

impl Stream {
    pub fn set_nodelay(&self) {
        let _ = match self {
            Stream::Glommio(s) => s.set_nodelay(true).map_err(io::Error::from),
            Stream::Tokio(s) => s.set_nodelay(true),
            Stream::GlommioTls(s) => s.get_ref().0.set_nodelay(true).map_err(io::Error::from),
            Stream::TokioTls(s) => s.get_ref().0.set_nodelay(true),
        };
    }

    /// The TLS handshake (as the server), within
    /// [`crate::auth::tls::HANDSHAKE_TIMEOUT`].
    pub async fn accept_tls(
        self,
        tls: &crate::auth::tls::Tls,
        stack: NetStack,
    ) -> io::Result<Stream> {
        let handshake = async {
            match self {
                Stream::Glommio(s) => Ok(Stream::GlommioTls(Box::new(
                    tls.futures_acceptor().accept(s).await?,
                ))),
                Stream::Tokio(s) => Ok(Stream::TokioTls(Box::new(
                    tls.tokio_acceptor().accept(s).await?,
                ))),
                tls_already => Ok(tls_already),
            }
        };
        let timeout = async {
            crate::io::sleep(stack, crate::auth::tls::HANDSHAKE_TIMEOUT).await;
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the TLS handshake took too long",
            ))
        };
        futures_lite::future::or(handshake, timeout).await
    }

    /// Reads into `buf`; 0 means the peer closed its side.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Glommio(s) => s.read(buf).await,
            Stream::Tokio(s) => tokio::io::AsyncReadExt::read(s, buf).await,
            Stream::GlommioTls(s) => s.read(buf).await,
            Stream::TokioTls(s) => tokio::io::AsyncReadExt::read(s, buf).await,
        }
    }

    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Glommio(s) => s.write_all(buf).await,
            Stream::Tokio(s) => tokio::io::AsyncWriteExt::write_all(s, buf).await,
            Stream::GlommioTls(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
            Stream::TokioTls(s) => {
                tokio::io::AsyncWriteExt::write_all(s, buf).await?;
                tokio::io::AsyncWriteExt::flush(s).await
            }
        }
    }
}

/// A futures-io stream (glommio's) as hyper's I/O traits. (hyper-util's
/// `TokioIo` does the same for tokio streams.)
pub struct FuturesIo<T>(pub T);

impl<T: AsyncRead + Unpin> hyper::rt::Read for FuturesIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: the uninitialized tail is zeroed before it is viewed as
        // bytes, and `advance` covers only what the read filled.
        let tail = unsafe { buf.as_mut() };
        tail.fill(MaybeUninit::new(0));
        let bytes = unsafe { &mut *(tail as *mut [MaybeUninit<u8>] as *mut [u8]) };
        match Pin::new(&mut self.0).poll_read(cx, bytes) {
            Poll::Ready(Ok(n)) => {
                unsafe { buf.advance(n) };
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for FuturesIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}
