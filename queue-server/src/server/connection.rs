//! The connection layer under the gRPC port: the accept loop (plain TCP or
//! TLS), its back-off when `accept` fails, and [`Conn`], a connection with a
//! handshake deadline and an idle timeout.

use super::Connections;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The length of the HTTP/2 client preface (`PRI * HTTP/2.0…`).
const PREFACE_LEN: usize = 24;

/// The first back-off after a failed `accept`, and the longest.
pub(super) const ACCEPT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(5), Duration::from_secs(1));

/// Accepted connections, each with Nagle off and a handshake deadline. A
/// failed `accept` (EMFILE, ENFILE, ENOBUFS, ENOMEM: out of descriptors or
/// memory) is retried after a back-off that doubles up to a second, rather
/// than at once: tonic's own loop retried at once and spun a core until
/// connections closed.
pub(super) fn incoming(
    listener: TcpListener,
    conns: Connections,
) -> impl futures::Stream<Item = Result<Conn, std::io::Error>> {
    futures::stream::unfold(
        (listener, ACCEPT_BACKOFF.0),
        move |(listener, mut backoff)| async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        // Nagle off: with it on, small replies waited ~40 ms
                        // (p99 42–45 ms, 100-item calls fell to ~730/s).
                        let _ = stream.set_nodelay(true);
                        let conn = Conn::new(stream, conns);
                        return Some((Ok(conn), (listener, ACCEPT_BACKOFF.0)));
                    }
                    Err(e) if is_peer_error(&e) => continue,
                    Err(e) => {
                        metrics::counter!("workq_accept_errors_total").increment(1);
                        tracing::warn!(
                            "accepting a connection failed: {e}; retrying in {backoff:?}"
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                    }
                }
            }
        },
    )
}

/// The accepted connections tonic serves.
pub(super) type Incoming =
    Pin<Box<dyn futures::Stream<Item = Result<Conn, std::io::Error>> + Send>>;

/// [`incoming`] over TLS: each connection's handshake runs on a task of its
/// own (a slow client holds up no other), within the handshake timeout;
/// a failed handshake is logged at debug and dropped.
pub(super) fn incoming_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    conns: Connections,
) -> impl futures::Stream<Item = Result<Conn, std::io::Error>> {
    let handshake_timeout = conns.handshake_timeout;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Conn, std::io::Error>>(64);
    let accepted = incoming(listener, conns);
    tokio::spawn(async move {
        use futures::StreamExt;
        let mut accepted = std::pin::pin!(accepted);
        while let Some(conn) = accepted.next().await {
            let Ok(conn) = conn else { continue };
            let Io::Plain(tcp) = conn.io else { continue };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let remote = tcp.connect_info();
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let peer = crate::tls::peer_identity(stream.get_ref().1);
                        let mut conn = Conn::with_io(Io::Tls(Box::new(stream)), conns);
                        conn.info.remote = remote;
                        conn.info.peer = peer;
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// An error of one connection (reset before it was accepted), not of the
/// listener: the next accept may succeed at once.
fn is_peer_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// An accepted connection that fails its reads (and is then closed) if the
/// HTTP/2 preface has not arrived within the handshake timeout.
#[derive(Debug)]
pub struct Conn {
    io: Io,
    info: ConnInfo,
    /// Closes it after the idle timeout without an open call.
    idle: Option<crate::idle::Idle>,
    /// Until the preface has been read.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    read: usize,
}

/// A connection's transport.
#[derive(Debug)]
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// What a call learns of its connection (in its request's extensions): the
/// peer's address and, over mutual TLS, its certificate's identity.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The TCP addresses.
    pub remote: TcpConnectInfo,
    /// The verified client certificate's subject CN, if any.
    pub peer: crate::auth::PeerCertificate,
    /// Its open calls, for the idle timeout.
    pub activity: Arc<crate::idle::Activity>,
}

impl Conn {
    fn new(io: TcpStream, conns: Connections) -> Self {
        let remote = io.connect_info();
        let mut conn = Self::with_io(Io::Plain(io), conns);
        conn.info.remote = remote;
        conn
    }

    fn with_io(io: Io, conns: Connections) -> Self {
        let activity = crate::idle::Activity::new();
        Conn {
            io,
            idle: (!conns.idle_timeout.is_zero())
                .then(|| crate::idle::Idle::new(conns.idle_timeout, activity.clone())),
            info: ConnInfo {
                remote: TcpConnectInfo {
                    local_addr: None,
                    remote_addr: None,
                },
                peer: crate::auth::PeerCertificate(None),
                activity,
            },
            deadline: Some(Box::pin(tokio::time::sleep(conns.handshake_timeout))),
            read: 0,
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

/// Calls `$f` on the transport, whichever it is.
macro_rules! io {
    ($self:expr, $io:ident => $e:expr) => {
        match &mut $self.io {
            Io::Plain($io) => $e,
            Io::Tls($io) => $e,
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no HTTP/2 preface within the handshake timeout",
            )));
        }
        if let Some(idle) = &mut this.idle
            && idle.poll_expired(cx).is_ready()
        {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no open call within the idle timeout",
            )));
        }
        let before = buf.filled().len();
        let polled = io!(this, io => Pin::new(io).poll_read(cx, buf));
        if this.deadline.is_some() {
            this.read += buf.filled().len() - before;
            if this.read >= PREFACE_LEN {
                this.deadline = None;
            }
        }
        polled
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        io!(self, io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        io!(self, io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        io!(self, io => Pin::new(io).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        io!(self, io => Pin::new(io).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }
}
