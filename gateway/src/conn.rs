//! A client connection's socket together with what keeps its place in the
//! listener's connection counts (`server`'s per-client and total slots, its
//! serving thread's load): the listener wraps every accepted socket in one,
//! hyper serves it, and the preview proxy takes it back out of a connection
//! upgraded to a WebSocket (`preview::proxy`), so the counts hold for as
//! long as the socket lives, upgraded or not. It also tells which runtime
//! the current code runs on: one of the listener's serving threads
//! ([`serving_thread`]), each a single-threaded runtime of its own, or the
//! shared runtime ([`shared_runtime`]), so that a long-lived connection can
//! be made where its users run. A leaf: it knows nothing of either side.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;

thread_local! {
    static SERVING_THREAD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Serving threads marked so far (their ids are never reused).
static SERVING_THREADS: AtomicUsize = AtomicUsize::new(0);

/// The runtime of the gateway's own tasks (the idle loop, upkeep, the
/// lifecycle's background work), set once at start.
static SHARED_RUNTIME: OnceLock<tokio::runtime::Handle> = OnceLock::new();

/// Marks the current thread as one of the listener's serving threads (see
/// `server`), with an id no other thread of the process gets.
pub fn set_serving_thread() {
    let id = SERVING_THREADS.fetch_add(1, Ordering::Relaxed);
    SERVING_THREAD.with(|t| t.set(Some(id)));
}

/// The id of the serving thread the caller runs on, if it runs on one.
pub fn serving_thread() -> Option<usize> {
    SERVING_THREAD.with(Cell::get)
}

/// Records the shared runtime (the first call wins).
pub fn set_shared_runtime(handle: tokio::runtime::Handle) {
    let _ = SHARED_RUNTIME.set(handle);
}

/// The shared runtime, once recorded.
pub fn shared_runtime() -> Option<&'static tokio::runtime::Handle> {
    SHARED_RUNTIME.get()
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
