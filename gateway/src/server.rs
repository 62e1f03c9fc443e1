//! The listener: accepts TCP connections and serves HTTP/1.1 on each, with the
//! limits a public server needs before any request reaches the router: a
//! header-read timeout (which also closes keep-alive connections idle between
//! requests), a cap on open connections per client address and in total (a
//! connection above either cap gets 503 with the contract's JSON error and is
//! closed, while the others go on being served), and 400 for a request with
//! two `Host` headers (RFC 9112 section 3.2), which would otherwise be routed
//! by the first.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, header};
use axum::response::IntoResponse as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::conn::Counted;
use crate::error::Error;

/// The connection limits (from the config).
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Peers counted only in the total (a proxy carries many clients).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Counts connections refused by a cap.
    pub refused: prometheus_client::metrics::counter::Counter,
    /// Open client connections now.
    pub open: prometheus_client::metrics::gauge::Gauge,
}

/// What the listener calls before the router for every request: it takes
/// the request (and answers it) or gives it back for the router. The preview
/// proxy uses it, so that a request for a preview host costs no router
/// clone, no route match and no middleware.
pub type Front = Arc<dyn Fn(Request<Body>) -> Result<Answer, Request<Body>> + Send + Sync>;

/// What serves a connection's requests: the fast path first (if any), then
/// hyper, each request given to the front, else the router.
pub struct Services {
    pub app: Router,
    pub front: Front,
    pub fast: Option<Fast>,
}

/// What the listener may run on a new connection before hyper (the preview
/// proxy's fast path): it serves the connection's requests itself for as
/// long as it can, then ends the connection (`None`) or gives it back
/// (`Some`), with the bytes it read and did not use put back in front
/// ([`Counted::unread`]), for hyper to serve the rest of its life. It gets
/// the client's address, the header-read timeout and the shutdown signal.
pub type Fast = Arc<
    dyn Fn(Counted, SocketAddr, Duration, CancellationToken) -> BoxFuture<'static, Option<Counted>>
        + Send
        + Sync,
>;

/// An answer on its way (the listener's services never fail: errors are
/// answers too).
pub type Answer = BoxFuture<'static, Result<Response<Body>, Infallible>>;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Serves `services` on `listener` until `shutdown` is
/// cancelled, then lets open requests finish within `grace` (WebSocket and
/// other upgraded connections end on their own, through the same
/// cancellation).
///
/// Connections are accepted here, counted against the caps, and each is
/// then served for its whole life on one of `threads` threads, each with a
/// single-threaded Tokio runtime of its own (thread per core, as nginx's
/// workers): a request, the tasks it spawns and its dev-server connection
/// (`preview_state::pool` keeps a shard per thread) stay on one thread, so
/// a proxied request wakes no other thread. A new connection goes to the
/// thread with the fewest open. With `threads` 0, connections are served on
/// the calling runtime's workers instead. The threads are given back (their
/// runtimes, and what requests left on them, dropped) by
/// [`Threads::release`], after the caller has shut down what may still use
/// them.
pub async fn serve(
    listener: TcpListener,
    services: Services,
    limits: Limits,
    shutdown: CancellationToken,
    grace: Duration,
    threads: usize,
) -> std::io::Result<Threads> {
    let Services { app, front, fast } = services;
    let mut serving = Threads::start(threads)?;
    let limits = Arc::new(limits);
    let counts = Arc::new(Counts {
        open: limits.open.clone(),
        ..Counts::default()
    });
    // Every served connection is tracked, so that shutdown can wait for
    // them (each ends gracefully: the request in flight is answered, then
    // the connection closes).
    let tracker = tokio_util::task::TaskTracker::new();
    // Refusals write a few bytes and linger briefly; bound how many do so at
    // once, so a flood of refused connections costs a fixed amount.
    let refusals = Arc::new(tokio::sync::Semaphore::new(256));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: the condition
                    // passes as connections close; do not spin meanwhile.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = counts.admit(peer.ip(), &limits) else {
            limits.refused.inc();
            if let Ok(permit) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(tcp).await;
                    drop(permit);
                });
            }
            continue;
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let svc = ConnectionService {
            app: app.clone(),
            front: front.clone(),
            peer,
        };
        let accepted = Accepted {
            slot,
            svc,
            tracked: tracker.token(),
            fast: fast.clone(),
            header_read_timeout: limits.header_read_timeout,
            shutdown: shutdown.clone(),
        };
        serving.dispatch(tcp, accepted);
    }
    drop(listener);
    tracker.close();
    // No more connections for the threads: they serve what they hold.
    let threads = serving.stop_accepting();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("grace period over with requests still in flight");
    }
    Ok(threads)
}

/// An admitted connection on its way to the thread that serves it.
struct Accepted {
    slot: Slot,
    svc: ConnectionService,
    /// Keeps shutdown waiting until the connection has ended.
    tracked: tokio_util::task::task_tracker::TaskTrackerToken,
    fast: Option<Fast>,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
}

impl Accepted {
    /// Serves the connection on the current runtime; `load` counts it on its
    /// thread until the socket closes.
    fn spawn(self, tcp: TcpStream, load: Option<Load>) {
        // The slot goes with the socket, so a connection upgraded to a
        // WebSocket (which hyper hands over) still counts until it closes.
        let io = Counted::new(tcp, Box::new((self.slot, load)));
        let tracked = self.tracked;
        let served = serve_connection(
            io,
            self.svc,
            self.fast,
            self.header_read_timeout,
            self.shutdown,
        );
        tokio::spawn(async move {
            served.await;
            drop(tracked);
        });
    }
}

/// The threads that serve connections (see [`serve`]).
struct Serving {
    workers: Vec<Worker>,
    /// Where the search for the least loaded thread starts (turns, so that
    /// ties are spread).
    next: usize,
    threads: Threads,
}

struct Worker {
    tx: tokio::sync::mpsc::UnboundedSender<(std::net::TcpStream, Accepted)>,
    /// Connections open on this thread (upgraded ones too).
    open: Arc<AtomicUsize>,
}

/// The serving threads, kept until [`Threads::release`].
pub struct Threads {
    handles: Vec<std::thread::JoinHandle<()>>,
    release: CancellationToken,
}

/// A connection's place in its thread's count.
struct Load(Arc<AtomicUsize>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Threads {
    /// Starts `n` serving threads (none for 0: see [`serve`]).
    fn start(n: usize) -> std::io::Result<Serving> {
        let release = CancellationToken::new();
        // The runtime this is called on runs the gateway's own tasks.
        let shared = tokio::runtime::Handle::current();
        let mut workers = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, mut rx) =
                tokio::sync::mpsc::unbounded_channel::<(std::net::TcpStream, Accepted)>();
            let open = Arc::new(AtomicUsize::new(0));
            let (count, release, shared) = (open.clone(), release.clone(), shared.clone());
            let handle = std::thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || {
                    crate::conn::set_serving_thread(shared);
                    rt.block_on(async move {
                        while let Some((tcp, accepted)) = rx.recv().await {
                            // Registered with this thread's reactor.
                            match TcpStream::from_std(tcp) {
                                Ok(tcp) => accepted.spawn(tcp, Some(Load(count.clone()))),
                                Err(error) => {
                                    count.fetch_sub(1, Ordering::Relaxed);
                                    tracing::warn!(%error, "cannot register a connection");
                                }
                            }
                        }
                        // Keep the runtime (its reactor, timers and tasks)
                        // until nothing made here is used any more.
                        release.cancelled().await;
                    });
                })?;
            workers.push(Worker { tx, open });
            handles.push(handle);
        }
        Ok(Serving {
            workers,
            next: 0,
            threads: Threads { handles, release },
        })
    }

    /// Ends the serving threads and waits for them (their runtimes drop
    /// every task still on them).
    pub async fn release(self) {
        self.release.cancel();
        let handles = self.handles;
        let joined = tokio::task::spawn_blocking(move || {
            for h in handles {
                let _ = h.join();
            }
        });
        if tokio::time::timeout(Duration::from_secs(5), joined)
            .await
            .is_err()
        {
            tracing::warn!("serving threads still running at exit");
        }
    }
}

impl Serving {
    /// Hands `accepted` to the least loaded thread, or serves it here.
    fn dispatch(&mut self, tcp: TcpStream, accepted: Accepted) {
        let n = self.workers.len();
        if n == 0 {
            accepted.spawn(tcp, None);
            return;
        }
        let start = self.next;
        self.next = (self.next + 1) % n;
        let pick = (0..n)
            .map(|k| (start + k) % n)
            .min_by_key(|&i| self.workers[i].open.load(Ordering::Relaxed))
            .unwrap_or(0);
        let worker = &self.workers[pick];
        // Leaves this runtime's reactor for the chosen thread's.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(error) => {
                tracing::warn!(%error, "cannot hand a connection over");
                return;
            }
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        if worker.tx.send((tcp, accepted)).is_err() {
            worker.open.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!("a serving thread has ended");
        }
    }

    /// Closes the threads' queues: each serves what it holds, then waits for
    /// [`Threads::release`].
    fn stop_accepting(self) -> Threads {
        drop(self.workers);
        self.threads
    }
}

/// Serves HTTP/1.1 on one connection (after the fast path, if any, gave it
/// back) until the client closes it, it idles
/// past the header-read timeout, or `shutdown` (then the request in flight
/// is answered first). HTTP/1.1 only: browsers speak it to a plain-http
/// listener, and HTTP/2's streams would need limits of their own; hyper's
/// own HTTP/1 server, without hyper-util's protocol-sniffing wrapper.
async fn serve_connection(
    io: Counted,
    svc: ConnectionService,
    fast: Option<Fast>,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
) {
    let io = match fast {
        Some(fast) => match fast(io, svc.peer, header_read_timeout, shutdown.clone()).await {
            Some(io) => io,
            None => return,
        },
        None => io,
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        biased;
        ended = conn.as_mut() => ended,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = ended {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// One connection's service: the front (preview hosts), else the router,
/// with the peer's address in the request's extensions (as axum's
/// `ConnectInfo`) and the duplicate-`Host` check before either.
#[derive(Clone)]
struct ConnectionService {
    app: Router,
    front: Front,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<hyper::body::Incoming>> for ConnectionService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: Request<hyper::body::Incoming>) -> Self::Future {
        use tower::ServiceExt as _;
        let mut req = req.map(Body::new);
        if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
            let resp = Error::BadRequest("a request may carry only one Host header".into())
                .into_response();
            return Box::pin(async move { Ok(resp) });
        }
        req.extensions_mut().insert(ConnectInfo(self.peer));
        match (self.front)(req) {
            Ok(answer) => answer,
            Err(req) => Box::pin(self.app.clone().oneshot(req)),
        }
    }
}

/// Open connections, in total and per client address.
#[derive(Default)]
struct Counts {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    open: prometheus_client::metrics::gauge::Gauge,
}

/// A connection's place in [`Counts`], given back when dropped.
struct Slot {
    counts: Arc<Counts>,
    key: Option<IpAddr>,
    /// Whether the connection was admitted (counted in the open gauge).
    admitted: bool,
}

impl Counts {
    /// A slot for a new connection from `ip`, unless a cap is reached.
    fn admit(self: &Arc<Self>, ip: IpAddr, limits: &Limits) -> Option<Slot> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let mut slot = Slot {
            counts: self.clone(),
            key: None,
            admitted: false,
        };
        if limits.trusted_proxies.iter().any(|n| n.contains(&ip)) {
            self.open.inc();
            slot.admitted = true;
            return Some(slot);
        }
        let key = client_key(ip);
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = per_ip.entry(key).or_default();
        if *n >= limits.max_connections_per_ip {
            // `slot` gives the total back when dropped here.
            return None;
        }
        *n += 1;
        slot.key = Some(key);
        slot.admitted = true;
        self.open.inc();
        Some(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counts.total.fetch_sub(1, Ordering::AcqRel);
        if self.admitted {
            self.counts.open.dec();
        }
        if let Some(key) = self.key {
            let mut per_ip = self.counts.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = per_ip.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&key);
                }
            }
        }
    }
}

/// The address a client is counted under: IPv4 as is (IPv4-mapped IPv6
/// too), IPv6 by its /64, the smallest block one subscriber usually gets.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(o.into())
            }
        },
    }
}

/// Answers a connection over a cap: 503 with the contract's JSON error, then
/// closes it. What the client already sent is read first (briefly), so that
/// closing does not reset the connection before the answer is read.
async fn refuse(mut tcp: TcpStream) {
    let body = serde_json::json!({"error": {
        "code": "unavailable",
        "message": "too many open connections; retry later",
    }})
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut buf = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut buf)).await;
    let written = tokio::time::timeout(Duration::from_secs(1), async {
        tcp.write_all(answer.as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
    if matches!(written, Ok(Ok(()))) {
        // Drain (bounded) until the client closes, as a lingering close does.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let mut total = 0usize;
            while let Ok(n) = tcp.read(&mut buf).await {
                total += n;
                if n == 0 || total > 64 << 10 {
                    break;
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize) -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: total,
            max_connections_per_ip: per_ip,
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            refused: Default::default(),
            open: Default::default(),
        }
    }

    #[test]
    fn caps_per_ip_and_in_total() {
        let counts = Arc::new(Counts::default());
        let l = limits(5, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = counts.admit(a, &l).unwrap();
        let _a2 = counts.admit(a, &l).unwrap();
        assert!(counts.admit(a, &l).is_none(), "third from one address");
        let _b1 = counts.admit(b, &l).unwrap();
        drop(a1);
        let _a3 = counts
            .admit(a, &l)
            .expect("a slot given back is free again");
        // A trusted proxy counts only in the total.
        let p: IpAddr = "10.1.2.3".parse().unwrap();
        let _p1 = counts.admit(p, &l).unwrap();
        let _p2 = counts.admit(p, &l).unwrap();
        assert_eq!(counts.total.load(Ordering::Relaxed), 5);
        assert!(counts.admit(p, &l).is_none(), "over the total");
        assert_eq!(counts.total.load(Ordering::Relaxed), 5);
        assert_eq!(counts.open.get(), 5);
    }

    #[test]
    fn slots_are_given_back() {
        let counts = Arc::new(Counts::default());
        let l = limits(10, 10);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let slots: Vec<_> = (0..10).map(|_| counts.admit(ip, &l).unwrap()).collect();
        assert_eq!(counts.open.get(), 10);
        drop(slots);
        assert_eq!(counts.total.load(Ordering::Relaxed), 0);
        assert_eq!(counts.open.get(), 0);
        assert!(counts.per_ip.lock().unwrap().is_empty());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
