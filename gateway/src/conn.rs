//! A client connection's socket together with what keeps its place in the
//! listener's connection counts (`server`'s per-client and total slots, its
//! serving thread's load): the listener wraps every accepted socket in one,
//! hyper serves it, and the preview proxy takes it back out of a connection
//! upgraded to a WebSocket (`preview::proxy`), so the counts hold for as
//! long as the socket lives, upgraded or not. It also tells whether the
//! current code runs on one of the listener's serving threads (each a
//! single-threaded runtime of its own) and, there, which runtime runs its
//! gateway's own tasks, so that a long-lived connection can be made where
//! its users run. A leaf: it knows nothing of either side.

use std::cell::RefCell;

use tokio::net::TcpStream;

thread_local! {
    /// On a serving thread: the runtime of its gateway's own tasks (each
    /// gateway marks its own threads, so gateways in one process share
    /// nothing here).
    static SERVING: RefCell<Option<tokio::runtime::Handle>> = const { RefCell::new(None) };
}

/// Marks the current thread as one of the listener's serving threads (see
/// `server`); `shared` runs the gateway's own tasks (the idle loop,
/// upkeep, the lifecycle's background work).
pub fn set_serving_thread(shared: tokio::runtime::Handle) {
    SERVING.with(|s| *s.borrow_mut() = Some(shared));
}

/// The serving thread the caller runs on, if it runs on one (a thread's id
/// is never reused in the process).
pub fn serving_thread() -> Option<std::thread::ThreadId> {
    SERVING
        .with(|s| s.borrow().is_some())
        .then(|| std::thread::current().id())
}

/// The runtime of the gateway's own tasks, when the caller is on a serving
/// thread (elsewhere, the caller's own runtime is that one).
pub fn shared_runtime() -> Option<tokio::runtime::Handle> {
    SERVING.with(|s| s.borrow().clone())
}

/// A socket and its place in the connection counts.
pub struct Counted {
    io: TcpStream,
    /// Bytes read from the socket and given back (see [`Counted::unread`]):
    /// reads return them before anything more from the socket.
    unread: bytes::Bytes,
    /// Released when the socket goes.
    _held: Box<dyn Send>,
}

impl Counted {
    /// `io`, counted while `held` lives.
    pub fn new(io: TcpStream, held: Box<dyn Send>) -> Counted {
        Counted {
            io,
            unread: bytes::Bytes::new(),
            _held: held,
        }
    }

    /// Gives back bytes read from this socket and not used: the next reads
    /// return them first, in front of any given back before.
    pub fn unread(&mut self, bytes: bytes::Bytes) {
        if self.unread.is_empty() {
            self.unread = bytes;
        } else if !bytes.is_empty() {
            let mut joined = bytes::BytesMut::with_capacity(bytes.len() + self.unread.len());
            joined.extend_from_slice(&bytes);
            joined.extend_from_slice(&self.unread);
            self.unread = joined.freeze();
        }
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.unread.is_empty() {
            let n = buf.remaining().min(self.unread.len());
            buf.put_slice(&self.unread.split_to(n));
            if self.unread.is_empty() {
                // Let go of the buffer they were read into (the fast path's,
                // 8 KiB), which would otherwise live as long as the socket.
                self.unread = bytes::Bytes::new();
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
