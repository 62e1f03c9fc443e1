//! The keep-alive connection pool to dev servers: plain HTTP/1 connections
//! (`hyper::client::conn::http1`), handed out one request at a time and
//! taken back when the answer's body has been read to its end.
//!
//! A checked-out connection is driven by the task serving the browser's
//! request (the request future, then the answer's body, poll its I/O), not
//! by a task of its own: a proxied request then wakes one task instead of
//! two that hand the request and the answer to each other across threads,
//! which is most of what a small proxied request costs on two cores.
//! hyper-util's pooled client adds more per request (a task spawned per
//! answer to return its connection, a checkout future, an executor hop), so
//! the proxy keeps this small pool of its own.
//!
//! Idle connections are kept per thread (a shard of the pool each): the
//! listener serves a client connection on one thread for its whole life
//! (see `server.rs`), and a dev-server connection dialed there has its
//! readiness reported to that thread's reactor; handing it to a request on
//! another thread would wake that thread for every read of it. A thread
//! whose shard is empty dials anew, as each nginx worker keeps its own
//! keepalive pool.
//!
//! An upgrade (a WebSocket) gets a fresh connection with a driver task of its
//! own, never returned: it belongs to the upgraded stream.

use std::collections::HashMap;
use std::future::{Future as _, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, Response};
use bytes::Bytes;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;

/// How long a connection may sit idle before it is closed (dev servers
/// usually close theirs after 5 s to 2 min; a closed one is noticed on
/// checkout and skipped).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle connections kept per upstream in each shard; more are closed when
/// returned.
const MAX_IDLE_PER_UPSTREAM: usize = 1024;

/// Shards of the pool; a thread uses the one of its sequence number (the
/// order in which threads first used a pool) modulo this.
const SHARDS: usize = 16;

/// Idle connections by upstream authority (`host:port`), newest last.
type Shard = HashMap<String, Vec<Idle>>;

static NEXT_THREAD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    /// This thread's shard in every pool.
    static SHARD: usize = NEXT_THREAD.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SHARDS;
}

/// How long a pooled connection may take to become ready again.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// How often every upstream's expired idle connections are closed.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// A reused connection idle at least this long may have been closed by the
/// dev server just as a request goes out on it (keep-alive timeouts are a
/// second or more; Python's test servers here use 0.5 s).
const REPLAY_AFTER_IDLE: Duration = Duration::from_millis(100);

/// How long dialing a dev server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request got no answer from the dev server.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PoolError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    #[error("http/1 handshake with {0}: {1}")]
    Handshake(String, hyper::Error),
    #[error("request to {0}: {1}")]
    Request(String, hyper::Error),
}

/// Idle connections, a shard per thread.
pub(crate) struct Pool {
    shards: [Mutex<Shard>; SHARDS],
    last_sweep: Mutex<Instant>,
}

impl Default for Pool {
    fn default() -> Pool {
        Pool {
            shards: std::array::from_fn(|_| Mutex::default()),
            last_sweep: Mutex::new(Instant::now()),
        }
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// One HTTP/1 connection: its request handle and its I/O driver.
struct Conn {
    sender: SendRequest<Body>,
    driver: Connection<TokioIo<TcpStream>, Body>,
    closed: bool,
}

impl Conn {
    /// Lets the connection do its reads and writes; false once it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if self.closed {
            return false;
        }
        if let Poll::Ready(r) = Pin::new(&mut self.driver).poll(cx) {
            if let Err(error) = r {
                tracing::debug!(error = %crate::error::Chain(&error), "dev server connection ended");
            }
            self.closed = true;
        }
        !self.closed
    }

    /// Sends `req` and drives the connection until the answer's head is in.
    async fn exchange(
        &mut self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, TrySendError<Request<Body>>> {
        let mut answer = std::pin::pin!(self.sender.try_send_request(req));
        poll_fn(|cx| {
            let _ = self.drive(cx);
            answer.as_mut().poll(cx)
        })
        .await
    }
}

impl Pool {
    /// Sends `req` (origin-form URI, `Host` set) to `authority` on a pooled
    /// connection, or a new one. A request without a body that fails on a
    /// reused connection (the dev server closed it while it sat idle) is
    /// sent once more on a fresh connection, as nginx does. An upgrade
    /// request always gets a fresh connection, never pooled afterwards.
    /// `connected` is told once a connection is in hand, before the request
    /// goes out (after any wait for a dev server that is just starting; a
    /// second dial, after a kept connection failed, comes after it).
    pub(crate) async fn send(
        self: &Arc<Self>,
        authority: &str,
        req: Request<Body>,
        upgrade: bool,
        down: Counter,
        connected: tokio::sync::oneshot::Sender<()>,
    ) -> Result<Response<PooledBody>, PoolError> {
        if upgrade {
            let mut sender = connect_upgradable(authority).await?;
            let _ = connected.send(());
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| PoolError::Request(authority.to_owned(), e))?;
            let (parts, body) = resp.into_parts();
            let body = PooledBody {
                body,
                back: None,
                down,
            };
            return Ok(Response::from_parts(parts, body));
        }
        let (mut conn, idle_for) = match self.checkout(authority).await {
            Some((c, idle_for)) => (c, Some(idle_for)),
            None => (connect(authority).await?, None),
        };
        let _ = connected.send(());
        // Kept for a second try only when it can be sent twice safely (no
        // body, a method whose repeat changes nothing more: RFC 9110 section
        // 9.2.2) and the connection sat idle long enough for the dev server
        // to time it out; a connection reused at once (the busy case) costs
        // no copy of the headers.
        let replay = (idle_for.is_some_and(|d| d >= REPLAY_AFTER_IDLE)
            && req.method().is_idempotent()
            && axum::body::HttpBody::is_end_stream(req.body()))
        .then(|| {
            let mut copy = Request::new(Body::empty());
            *copy.method_mut() = req.method().clone();
            *copy.uri_mut() = req.uri().clone();
            *copy.version_mut() = req.version();
            *copy.headers_mut() = req.headers().clone();
            copy
        });
        let resp = match conn.exchange(req).await {
            Ok(resp) => resp,
            Err(mut e) => match e.take_message().or(replay) {
                Some(req) => {
                    conn = connect(authority).await?;
                    conn.exchange(req)
                        .await
                        .map_err(|e| PoolError::Request(authority.to_owned(), e.into_error()))?
                }
                None => return Err(PoolError::Request(authority.to_owned(), e.into_error())),
            },
        };
        let (parts, body) = resp.into_parts();
        let mut body = PooledBody {
            body,
            back: Some(Back {
                conn,
                pool: self.clone(),
                authority: authority.to_owned(),
            }),
            down,
        };
        if parts.status == axum::http::StatusCode::SWITCHING_PROTOCOLS {
            // Not asked for; the connection cannot serve anything else now.
            body.back = None;
        } else if body.body.is_end_stream() {
            // No body to read (204, 304, HEAD): the server may never poll it.
            body.release();
        }
        Ok(Response::from_parts(parts, body))
    }

    /// This thread's shard.
    fn shard(&self) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[SHARD.with(|s| *s)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The newest idle connection to `authority` in this thread's shard
    /// that is still open, and how long it sat idle.
    async fn checkout(&self, authority: &str) -> Option<(Conn, Duration)> {
        loop {
            let idle = self.shard().get_mut(authority)?.pop()?;
            let idle_for = idle.since.elapsed();
            if idle_for >= IDLE_TIMEOUT || idle.conn.sender.is_closed() {
                continue;
            }
            let mut conn = idle.conn;
            // Idle connections are not driven: this reads what arrived while
            // it sat in the pool (the dev server closing it, say) and waits
            // for hyper to mark it ready for the next request.
            let ready = poll_fn(|cx| {
                if !conn.drive(cx) {
                    return Poll::Ready(false);
                }
                conn.sender.poll_ready(cx).map(|r| r.is_ok())
            });
            if tokio::time::timeout(READY_TIMEOUT, ready)
                .await
                .unwrap_or(false)
            {
                return Some((conn, idle_for));
            }
        }
    }

    /// Takes in an idle connection to `authority` dialed elsewhere (the
    /// preview fast path's, when it hands its client connection to hyper
    /// between two requests): the next request to that dev server on this
    /// thread goes over it.
    pub(crate) async fn adopt(&self, authority: String, tcp: TcpStream) {
        match http1::handshake::<_, Body>(TokioIo::new(tcp)).await {
            Ok((sender, driver)) => self.checkin(
                authority,
                Conn {
                    sender,
                    driver,
                    closed: false,
                },
            ),
            Err(error) => {
                tracing::debug!(error = %crate::error::Chain(&error), "cannot adopt a dev server connection");
            }
        }
    }

    fn checkin(&self, authority: String, conn: Conn) {
        if conn.closed || conn.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let sweep = {
            let mut last = self.last_sweep.lock().unwrap_or_else(|p| p.into_inner());
            let due = now.duration_since(*last) >= SWEEP_EVERY;
            if due {
                *last = now;
            }
            due
        };
        if sweep {
            // Upstreams no longer asked for (a stopped container) keep no
            // sockets open past the idle timeout, in any shard.
            for shard in &self.shards {
                let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
                map.retain(|_, list| {
                    list.retain(|i| now.duration_since(i.since) < IDLE_TIMEOUT);
                    !list.is_empty()
                });
            }
        }
        let mut map = self.shard();
        let list = map.entry(authority).or_default();
        // Drop the ones that aged out (oldest first) while here.
        let fresh = list
            .iter()
            .position(|i| now.duration_since(i.since) < IDLE_TIMEOUT)
            .unwrap_or(list.len());
        list.drain(..fresh);
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push(Idle { conn, since: now });
        }
    }
}

/// How long a dial keeps trying a port that refuses connections. Routes
/// lead only to containers the runtime says run, so a refusal almost always
/// means a dev server that was just started (a start, a wake, a restart
/// after hibernation) and does not listen yet: the request waits for it
/// rather than showing the browser a 502. Nothing was sent yet, so waiting
/// is safe for any method; the connection caps bound what waiting costs.
const STARTING_WAIT: Duration = Duration::from_secs(15);

/// Dials `authority` (waiting up to [`STARTING_WAIT`] for a dev server that
/// does not listen yet), with `TCP_NODELAY` set.
pub(crate) async fn dial(authority: &str) -> Result<TokioIo<TcpStream>, PoolError> {
    let deadline = tokio::time::Instant::now() + STARTING_WAIT;
    let tcp = loop {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority)).await {
            Err(_) => return Err(PoolError::ConnectTimeout(authority.to_owned())),
            Ok(Ok(tcp)) => break tcp,
            Ok(Err(e))
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(e)) => return Err(PoolError::Connect(authority.to_owned(), e)),
        }
    };
    // Small answers must not wait for Nagle's algorithm.
    let _ = tcp.set_nodelay(true);
    Ok(TokioIo::new(tcp))
}

/// Dials `authority` for a pooled connection, driven by its users.
async fn connect(authority: &str) -> Result<Conn, PoolError> {
    let (sender, driver) = http1::handshake(dial(authority).await?)
        .await
        .map_err(|e| PoolError::Handshake(authority.to_owned(), e))?;
    Ok(Conn {
        sender,
        driver,
        closed: false,
    })
}

/// Dials `authority` for an upgrade: the connection gets a driver task of
/// its own, which hands the stream over once the dev server switches
/// protocols.
async fn connect_upgradable(authority: &str) -> Result<SendRequest<Body>, PoolError> {
    let (sender, driver) = http1::handshake(dial(authority).await?)
        .await
        .map_err(|e| PoolError::Handshake(authority.to_owned(), e))?;
    let authority = authority.to_owned();
    tokio::spawn(async move {
        if let Err(error) = driver.with_upgrades().await {
            tracing::debug!(error = %crate::error::Chain(&error), upstream = %authority, "dev server connection ended");
        }
    });
    Ok(sender)
}

/// Where a connection goes back when its answer has been read.
struct Back {
    conn: Conn,
    pool: Arc<Pool>,
    authority: String,
}

/// A dev server's answer body: drives its connection, counts the bytes
/// passed to the browser, and gives the connection back to the pool once
/// the body has ended.
pub(crate) struct PooledBody {
    body: Incoming,
    back: Option<Back>,
    down: Counter,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(b) = self.back.take() {
            b.pool.checkin(b.authority, b.conn);
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        // The connection's reads feed the body: drive it first. Once it has
        // ended, what it read is already in the body's channel.
        if let Some(b) = &mut this.back {
            let _ = b.conn.drive(cx);
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.down.inc_by(d.len() as u64);
                }
                if this.body.is_end_stream() {
                    this.release();
                }
            }
            Poll::Ready(None) => this.release(),
            // A broken body leaves the connection unusable: drop it.
            Poll::Ready(Some(Err(_))) => this.back = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
