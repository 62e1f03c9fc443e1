//! The preview proxy's fast path: a connection's plain requests for a
//! preview host are proxied as bytes, their heads read with httparse, edited
//! and written to the dev server, and the answer's head and body passed
//! back, without building a request, a header map and a body for each side
//! (the gateway spends 11–23 % less CPU on a small proxied request this
//! way; see BENCHMARKS.md).
//!
//! Only what is plain goes this way: an HTTP/1.1 `GET` or `HEAD` in origin
//! form, with one `Host` naming a preview host, no body, no `Expect`, no
//! upgrade, no `Connection` option but `keep-alive` or `close`, allowed by
//! the same checks as every proxied request ([`super::admit`]) to a
//! container that runs (no wake, no share link, no auth path). The first
//! request that is not plain, every refusal and an answer this path does not
//! take hand the connection to hyper for the rest of its life, with the
//! bytes read and not used put back in front: hyper serves that request as
//! it serves every other (so refusals, wakes, limits and errors have one
//! implementation), and the dev-server connection goes to the pool. A `GET`
//! or `HEAD` answered unusably so reaches the dev server twice, as a retry of
//! an idempotent request does. A dev server that cannot be reached gets the
//! proxy's own 502 here, one that sends no answer's head within
//! `--preview-answer-timeout` its 504.
//!
//! The request's headers are edited as the proxy edits them (see `proxy`):
//! hop-by-hop headers dropped, the gateway's cookie and tokens removed,
//! `X-Forwarded-*` and `Via` set, believed from the client only when it is a
//! trusted proxy. A unit test holds both edits equal. The answer is framed
//! as the dev server framed it: `Content-Length` (passed on as it is),
//! chunked (each chunk passed on once complete, under a size line of its
//! own, extensions and trailers dropped), or up to the close of its
//! connection (the client's connection then closes too); informational
//! answers (1xx) are dropped, as hyper drops them. While it waits for the
//! dev server, a client that leaves ends the wait.
//!
//! Each client connection keeps its dev-server connection for its next
//! requests to the same container, and replaces it once when it turns out
//! closed before an answer came (the dev server timed it out while idle),
//! or drops it when it has anything to read between two answers.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};
use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::access::Access;
use super::host::PreviewHost;
use super::{AUTH_PATH, Refusal, proxy};
use crate::auth::Keys;
use crate::conn::Counted;
use crate::preview_state::pool;
use crate::state::AppState;

mod answer;
#[cfg(test)]
mod tests;

use answer::{Down, Framing, Sent, exchange_once, pass_chunked, pass_length, pass_to_close};

/// Request headers read at most (hyper's default too); more hands over.
const MAX_HEADERS: usize = 100;

/// A request or answer head larger than this hands over (hyper answers 431
/// for a request head too large).
const MAX_HEAD: usize = 64 * 1024;

/// The longest chunk-size line (with extensions) taken from a dev server.
const MAX_CHUNK_LINE: usize = 4096;

/// What the listener runs on each new connection before hyper (its `Fast`).
#[allow(clippy::type_complexity)]
pub fn fast(
    state: AppState,
) -> impl Fn(
    Counted,
    SocketAddr,
    Duration,
    CancellationToken,
) -> Pin<Box<dyn Future<Output = Option<Counted>> + Send>>
+ Send
+ Sync
+ 'static {
    let state = Arc::new(state);
    move |io, peer, header_read_timeout, shutdown| {
        let state = state.clone();
        Box::pin(async move {
            let mut conn = Client {
                io,
                buf: BytesMut::with_capacity(8 * 1024),
                up: None,
                out: Vec::new(),
                head: Vec::new(),
            };
            match conn
                .serve(&state, peer, header_read_timeout, &shutdown)
                .await
            {
                Served::Closed => None,
                Served::HandOver => Some(conn.hand_over(&state).await),
            }
        })
    }
}

/// A client connection on the fast path.
struct Client {
    io: Counted,
    /// Read from the client, not used yet (from the current request's head
    /// on).
    buf: BytesMut,
    /// The dev-server connection of the last request, kept for the next.
    up: Option<Upstream>,
    /// The request head for the dev server (reused).
    out: Vec<u8>,
    /// The answer's head for the client, then what of its body is on the
    /// way (reused).
    head: Vec<u8>,
}

struct Upstream {
    authority: String,
    tcp: TcpStream,
    /// Read from the dev server, not used yet.
    buf: BytesMut,
}

enum Served {
    /// The connection is over (closed by either side, timed out, shut down,
    /// or an answer cut short).
    Closed,
    /// The current request (at the front of `buf`) is hyper's.
    HandOver,
}

/// A request the fast path takes, read from its head.
struct Plain {
    target: PreviewHost,
    head_len: usize,
    head_only: bool,
    close: bool,
    /// Whether a refusal is a page (a browser navigating) or JSON.
    html: bool,
}

impl Client {
    async fn serve(
        &mut self,
        state: &AppState,
        peer: SocketAddr,
        header_read_timeout: Duration,
        shutdown: &CancellationToken,
    ) -> Served {
        let trusted_peer = super::trusted(state, Some(peer));
        let ip = peer.ip().to_string();
        loop {
            if shutdown.is_cancelled() {
                return Served::Closed;
            }
            let deadline = tokio::time::Instant::now() + header_read_timeout;
            // A whole head, within the header-read timeout (which also
            // closes a connection idle between requests).
            // (Found by its blank line, so that the head is parsed once.)
            while !head_complete(&self.buf) {
                if self.buf.len() >= MAX_HEAD {
                    return Served::HandOver;
                }
                self.buf.reserve(8 * 1024);
                let idle = self.buf.is_empty();
                let read = tokio::select! {
                    biased;
                    _ = shutdown.cancelled(), if idle => return Served::Closed,
                    read = tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf)) => read,
                };
                match read {
                    Ok(Ok(n)) if n > 0 => {}
                    // Closed, broken, or too slow: as hyper, just close.
                    _ => return Served::Closed,
                }
            }
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            // Anything but a whole head here (too many headers, bad bytes,
            // blank lines before the request line) is hyper's to answer.
            let Ok(httparse::Status::Complete(head_len)) = req.parse(&self.buf) else {
                return Served::HandOver;
            };
            let Some(plain) = plain(state, &req, head_len) else {
                return Served::HandOver;
            };
            // The checks every proxied request passes; any refusal is
            // hyper's to answer.
            let mut checked = HeaderMap::new();
            for h in req.headers.iter() {
                let name = [header::COOKIE, header::AUTHORIZATION, header::VIA]
                    .into_iter()
                    .find(|n| h.name.eq_ignore_ascii_case(n.as_str()));
                if let Some(name) = name {
                    let Ok(v) = HeaderValue::from_bytes(h.value) else {
                        return Served::HandOver;
                    };
                    checked.append(name, v);
                }
            }
            if super::looped(&checked) {
                return Served::HandOver;
            }
            let Ok(admitted) = super::admit(state, &plain.target, &checked).await else {
                return Served::HandOver;
            };
            if matches!(admitted.access, Access::Share { .. }) {
                return Served::HandOver;
            }
            let Ok(Some(route)) = super::live_route(state, &plain.target, admitted.port).await
            else {
                return Served::HandOver;
            };
            let authority = route.authority();
            edit_request(&state.keys, &req, trusted_peer, &ip, &mut self.out);
            let limit = state.config.preview_answer_timeout;
            let exchanged = self.exchange(&authority, &plain, limit).await;
            let (framing, keep_up) = match exchanged {
                Sent::Answer(framing, keep_up) => (framing, keep_up),
                Sent::ClientGone => return Served::Closed,
                Sent::Closed | Sent::Unusable => return Served::HandOver,
                // The proxy's own answer; the client's connection goes on.
                refused @ (Sent::Late | Sent::NoDevServer) => {
                    self.buf.advance(plain.head_len);
                    let refusal = match refused {
                        Sent::Late => proxy::answer_timeout(state, limit),
                        _ => Refusal::BadGateway,
                    };
                    if !self.refuse(refusal, &plain).await || plain.close {
                        return Served::Closed;
                    }
                    continue;
                }
            };
            // Counted before the client can see the answer.
            state.preview.fast.inc();
            let passed = self.pass_answer(state, framing, &plain).await;
            self.buf.advance(plain.head_len);
            if !passed || framing == Framing::Close {
                return Served::Closed;
            }
            // Bytes after the answer answer nothing: such a connection is
            // not kept.
            if !keep_up || self.up.as_ref().is_some_and(|u| !u.buf.is_empty()) {
                self.up = None;
            }
            if plain.close {
                return Served::Closed;
            }
        }
    }

    /// Sends the head in `out` to `authority` (over the kept connection,
    /// or a new one; a kept one found closed before any answer is replaced
    /// once) and reads the answer's head into `head` (the dev server's
    /// connection keeps the rest of what it read). Anything but an answer
    /// leaves no dev-server connection kept. The answer's head must come
    /// within `limit` (zero: no limit) of the request's first sending, as
    /// on hyper's path: the wait for a dev server that does not listen yet
    /// comes before it and does not count (a second dial's does).
    async fn exchange(&mut self, authority: &str, plain: &Plain, limit: Duration) -> Sent {
        let mut deadline = None;
        if self
            .up
            .as_ref()
            .is_some_and(|u| u.authority != authority || stale(&u.tcp))
        {
            self.up = None;
        }
        for attempt in 0..2 {
            let reused = self.up.is_some();
            if !reused {
                // As the pool dials: a dev server that does not listen yet
                // (just started) is waited for a while; then the answer is
                // the proxy's 502.
                let mut down = Down {
                    io: &mut self.io,
                    buf: &mut self.buf,
                    head_len: plain.head_len,
                };
                // A second dial (a kept connection was found closed) is on
                // the clock the first send started, as on hyper's path.
                let late = async {
                    match deadline {
                        Some(deadline) => tokio::time::sleep_until(deadline).await,
                        None => std::future::pending().await,
                    }
                };
                let dialed = tokio::select! {
                    biased;
                    dialed = pool::dial(authority) => dialed,
                    () = answer::client_gone(&mut down) => return Sent::ClientGone,
                    () = late => return Sent::Late,
                };
                let Ok(tcp) = dialed else {
                    return Sent::NoDevServer;
                };
                let tcp = tcp.into_inner();
                self.up = Some(Upstream {
                    authority: authority.to_owned(),
                    tcp,
                    buf: BytesMut::with_capacity(16 * 1024),
                });
            }
            let Some(up) = self.up.as_mut() else {
                return Sent::Unusable;
            };
            let mut down = Down {
                io: &mut self.io,
                buf: &mut self.buf,
                head_len: plain.head_len,
            };
            let sent = exchange_once(up, &mut down, &self.out, plain.head_only, &mut self.head);
            let sent = if limit.is_zero() {
                sent.await
            } else {
                let deadline = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + limit);
                tokio::time::timeout_at(deadline, sent)
                    .await
                    .unwrap_or(Sent::Late)
            };
            match sent {
                answer @ Sent::Answer(..) => return answer,
                // Closed before answering: the dev server timed out the
                // kept connection; a new one gets the request once more.
                Sent::Closed if reused && attempt == 0 => self.up = None,
                // A new connection closed unanswered: the dev server's
                // failure, answered here (hyper's pool would send it again).
                Sent::Closed => {
                    self.up = None;
                    return Sent::NoDevServer;
                }
                other => {
                    self.up = None;
                    return other;
                }
            }
        }
        Sent::Unusable
    }

    /// Writes the answer's head (in `head`) and its body, as framed. False
    /// when either side failed part way (the client's connection then
    /// closes: its answer is cut short).
    async fn pass_answer(&mut self, state: &AppState, framing: Framing, plain: &Plain) -> bool {
        let Some(up) = self.up.as_mut() else {
            return false;
        };
        if plain.close || framing == Framing::Close {
            let end = self.head.len() - 2;
            self.head.truncate(end);
            self.head.extend_from_slice(b"connection: close\r\n\r\n");
        }
        let counted = &state.preview.down;
        let out = &mut self.head;
        let mut down = Down {
            io: &mut self.io,
            buf: &mut self.buf,
            head_len: plain.head_len,
        };
        let passed = match framing {
            Framing::Empty => down.io.write_all(out).await.is_ok(),
            Framing::Length(n) => pass_length(up, &mut down, out, n, counted).await,
            Framing::Chunked => pass_chunked(up, &mut down, out, counted).await,
            Framing::Close => pass_to_close(up, &mut down, out, counted).await,
        };
        if !passed {
            self.up = None;
        }
        passed
    }

    /// Answers with `refusal`'s page or JSON error, as the proxy does (no
    /// body for a `HEAD`). False when the client is gone.
    async fn refuse(&mut self, refusal: Refusal, plain: &Plain) -> bool {
        let (parts, body) = refusal.answer(plain.html).into_parts();
        let Ok(body) = http_body_util::BodyExt::collect(body).await else {
            return false;
        };
        let body = body.to_bytes();
        let out = &mut self.head;
        out.clear();
        out.extend_from_slice(format!("HTTP/1.1 {}\r\n", parts.status).as_bytes());
        for (name, value) in &parts.headers {
            push_header(out, name.as_str().as_bytes(), value.as_bytes());
        }
        push_header(out, b"content-length", body.len().to_string().as_bytes());
        if plain.close {
            push_header(out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        if !plain.head_only {
            out.extend_from_slice(&body);
        }
        self.io.write_all(out).await.is_ok()
    }

    /// The connection for hyper, with what was read and not used put back;
    /// the kept dev-server connection goes to the pool.
    async fn hand_over(mut self, state: &AppState) -> Counted {
        if let Some(up) = self.up.take()
            && up.buf.is_empty()
            && !stale(&up.tcp)
        {
            state.preview.pool.adopt(up.authority, up.tcp).await;
        }
        self.io.unread(self.buf.freeze());
        self.io
    }
}

/// Whether `buf` holds a blank line, which ends a head (httparse takes bare
/// LF line ends too).
fn head_complete(buf: &[u8]) -> bool {
    buf.windows(2).any(|w| w == b"\n\n") || buf.windows(3).any(|w| w == b"\n\r\n")
}

/// Whether a kept dev-server connection has something to read between two
/// answers: its end, or bytes that answer nothing (a body sent after a
/// `HEAD`'s answer, say). Either way it is not used again.
fn stale(tcp: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    !matches!(tcp.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// The request, when the fast path takes it.
fn plain(state: &AppState, req: &httparse::Request<'_, '_>, head_len: usize) -> Option<Plain> {
    if req.version != Some(1) {
        return None;
    }
    let head_only = match req.method? {
        "GET" => false,
        "HEAD" => true,
        _ => return None,
    };
    let path = req.path?;
    // Origin form, a target hyper takes too (it refuses some bytes httparse
    // lets through, and a `#`), and not the auth flow.
    if !path.starts_with('/')
        || path.contains('#')
        || path.parse::<axum::http::uri::PathAndQuery>().is_err()
        || path.split('?').next() == Some(AUTH_PATH)
    {
        return None;
    }
    let mut host = None;
    let mut close = false;
    let mut html = false;
    for h in req.headers.iter() {
        let name = h.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("host") {
            if host.is_some() {
                return None;
            }
            host = Some(proxy::visible(h.value)?);
        } else if is("content-length")
            || is("transfer-encoding")
            || is("upgrade")
            || is("expect")
            || (is("sec-websocket-protocol")
                && h.value.windows(15).any(|w| w == b"devgate.bearer."))
        {
            return None;
        } else if is("accept") {
            html |= proxy::visible(h.value).is_some_and(|v| v.contains("text/html"));
        } else if is("connection") {
            for option in proxy::visible(h.value)?.split(',').map(str::trim) {
                if option.eq_ignore_ascii_case("close") {
                    close = true;
                } else if !option.is_empty() && !option.eq_ignore_ascii_case("keep-alive") {
                    return None;
                }
            }
        }
    }
    let target = super::host::parse(
        host?,
        &state.config.preview_domain,
        state.config.preview_host_style,
    )?;
    Some(Plain {
        target,
        head_len,
        head_only,
        close,
        html,
    })
}

/// Writes the head the dev server gets into `out`: the request's, with the
/// proxy's edits (see `proxy::proxy`).
fn edit_request(
    keys: &Keys,
    req: &httparse::Request<'_, '_>,
    trusted_peer: bool,
    ip: &str,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let cookies_to_edit = req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("cookie") && proxy::mentions_preview_cookie(h.value));
    let (mut host, mut forwarded_for, mut via) = (None, None, None);
    let (mut forwarded_host, mut forwarded_proto) = (false, false);
    for h in req.headers.iter() {
        let name = h.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if proxy::hop_by_hop(name) || is("upgrade") {
            continue;
        }
        if is("cookie") && cookies_to_edit {
            continue;
        }
        if is("authorization") && proxy::gateway_bearer(keys, h.value) {
            continue;
        }
        if proxy::spoofable(name) {
            if !trusted_peer {
                continue;
            }
            if is("x-forwarded-for") {
                forwarded_for = forwarded_for.or(Some(proxy::visible(h.value)));
                continue;
            }
            forwarded_host |= is("x-forwarded-host");
            forwarded_proto |= is("x-forwarded-proto");
        }
        if is("via") {
            via = via.or(Some(proxy::visible(h.value)));
            continue;
        }
        if is("host") {
            host = Some(h.value);
        }
        push_header(out, name.as_bytes(), h.value);
    }
    if cookies_to_edit {
        let kept = proxy::other_cookies(
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
                .map(|h| h.value),
        );
        if !kept.is_empty() {
            push_header(out, b"cookie", kept.join("; ").as_bytes());
        }
    }
    if let Some(host) = host.filter(|_| !forwarded_host) {
        push_header(out, b"x-forwarded-host", host);
    }
    if !forwarded_proto {
        push_header(out, b"x-forwarded-proto", b"http");
    }
    push_header(
        out,
        b"x-forwarded-for",
        proxy::forwarded_for(forwarded_for.flatten(), ip).as_bytes(),
    );
    push_header(out, b"via", proxy::via(via.flatten()).as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
