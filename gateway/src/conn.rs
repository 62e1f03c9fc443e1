//! A client connection's socket together with what keeps its place in the
//! listener's connection counts (`server`'s per-client and total slots, its
//! serving thread's load): the listener wraps every accepted socket in one,
//! hyper serves it, and the preview proxy takes it back out of a connection
//! upgraded to a WebSocket (`preview::proxy`), so the counts hold for as
//! long as the socket lives, upgraded or not. It also names the serving
//! thread the current code runs on ([`serving_thread`]), so that what a
//! request uses (an agent's connection, say) can be kept on that thread. A
//! leaf: it knows nothing of either side.

use std::cell::Cell;

use tokio::net::TcpStream;

thread_local! {
    static SERVING_THREAD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Marks the current thread as the listener's serving thread `index` (each
/// runs a single-threaded runtime of its own: `server`).
pub fn set_serving_thread(index: usize) {
    SERVING_THREAD.with(|t| t.set(Some(index)));
}

/// Which of the listener's serving threads the caller runs on, if any.
pub fn serving_thread() -> Option<usize> {
    SERVING_THREAD.with(Cell::get)
}

/// A socket and its place in the connection counts.
pub struct Counted {
    io: TcpStream,
    /// Released when the socket goes.
    _held: Box<dyn Send>,
}

impl Counted {
    /// `io`, counted while `held` lives.
    pub fn new(io: TcpStream, held: Box<dyn Send>) -> Counted {
        Counted { io, _held: held }
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
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
