//! The preview proxy's fast path: a connection's plain requests for a
//! preview host are proxied as bytes, their heads read with httparse, edited
//! and written to the dev server, and the answer's head and body passed
//! back, without building a request, a header map and a body for each side
//! (what hyper and `http` cost a small proxied request is a third of its
//! CPU; see BENCHMARKS.md).
//!
//! Only what is plain goes this way: an HTTP/1.1 `GET` or `HEAD` in origin
//! form, with one `Host` naming a preview host, no body, no `Expect`, no
//! upgrade, no `Connection` option but `keep-alive` or `close`, allowed by
//! the same checks as every proxied request ([`super::admit`]) to a
//! container that runs (no wake, no share link, no auth path). The first
//! request that is not plain, every refusal and every error before a byte of
//! the answer was sent hands the connection to hyper for the rest of its
//! life, with the bytes read and not used put back in front: hyper serves
//! that request as it serves every other (so refusals, wakes, limits and
//! errors have one implementation), and the dev-server connection goes to
//! the pool. A refused or failed `GET` or `HEAD` may so reach the dev
//! server twice, as a retry of an idempotent request does.
//!
//! The request's headers are edited as the proxy edits them (see `proxy`):
//! hop-by-hop headers dropped, the gateway's cookie and tokens removed,
//! `X-Forwarded-*` and `Via` set, believed from the client only when it is a
//! trusted proxy. A unit test holds both edits equal. The answer is framed
//! as the dev server framed it: `Content-Length` (passed on as it is),
//! chunked (passed on chunk by chunk, trailers dropped), or up to the close
//! of its connection (the client's connection then closes too); informational
//! answers (1xx) are dropped, as hyper drops them.
//!
//! Each client connection keeps its dev-server connection for its next
//! requests to the same container, and replaces it once when it turns out
//! closed before an answer came (the dev server timed it out while idle).

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
use super::{AUTH_PATH, proxy};
use crate::auth::Keys;
use crate::conn::Counted;
use crate::state::AppState;

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
                out: Vec::with_capacity(4 * 1024),
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
    /// The head being written (reused).
    out: Vec<u8>,
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

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// At the close of the dev server's connection.
    Close,
}

/// A request the fast path takes, read from its head.
struct Plain {
    target: PreviewHost,
    head_len: usize,
    head_only: bool,
    close: bool,
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
            loop {
                let mut scratch = [httparse::EMPTY_HEADER; MAX_HEADERS];
                match httparse::Request::new(&mut scratch).parse(&self.buf) {
                    Ok(httparse::Status::Complete(_)) => break,
                    Ok(httparse::Status::Partial) if self.buf.len() < MAX_HEAD => {}
                    _ => return Served::HandOver,
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
            let sent = self.exchange(&authority, plain.head_only).await;
            let Some((framing, keep_up)) = sent else {
                return Served::HandOver;
            };
            let passed = self.pass_answer(state, framing, plain.close).await;
            self.buf.advance(plain.head_len);
            state.preview.fast.inc();
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
    /// once) and reads the answer's head, which it leaves, edited, in `out`
    /// (the dev server's connection keeps the rest of what it read). `None`
    /// when there is no usable answer: the request is then hyper's.
    async fn exchange(&mut self, authority: &str, head_only: bool) -> Option<(Framing, bool)> {
        if self.up.as_ref().is_some_and(|u| u.authority != authority) {
            self.up = None;
        }
        let request = std::mem::take(&mut self.out);
        let mut answer = None;
        for attempt in 0..2 {
            let reused = self.up.is_some();
            if !reused {
                let tcp = super::super::preview_state::pool::dial(authority)
                    .await
                    .ok()?
                    .into_inner();
                self.up = Some(Upstream {
                    authority: authority.to_owned(),
                    tcp,
                    buf: BytesMut::with_capacity(16 * 1024),
                });
            }
            let up = self.up.as_mut()?;
            match exchange_once(up, &request, head_only).await {
                Ok(Some(a)) => {
                    answer = Some(a);
                    break;
                }
                // Closed before answering: the dev server timed out the
                // kept connection; a new one gets the request once more.
                Ok(None) if reused && attempt == 0 => self.up = None,
                _ => {
                    self.up = None;
                    break;
                }
            }
        }
        let (framing, keep_up, head) = answer?;
        self.out = head;
        Some((framing, keep_up))
    }

    /// Writes the answer's head (in `out`) and its body, as framed. False
    /// when either side failed part way (the client's connection then
    /// closes: its answer is cut short).
    async fn pass_answer(&mut self, state: &AppState, framing: Framing, close: bool) -> bool {
        let Some(up) = self.up.as_mut() else {
            return false;
        };
        if close || framing == Framing::Close {
            let end = self.out.len() - 2;
            self.out.truncate(end);
            self.out.extend_from_slice(b"connection: close\r\n\r\n");
        }
        let down = &state.preview.down;
        let passed = match framing {
            Framing::Empty => self.io.write_all(&self.out).await.is_ok(),
            Framing::Length(n) => pass_length(&mut self.io, up, &mut self.out, n, down).await,
            Framing::Chunked => pass_chunked(&mut self.io, up, &mut self.out, down).await,
            Framing::Close => pass_to_close(&mut self.io, up, &mut self.out, down).await,
        };
        if !passed {
            self.up = None;
        }
        passed
    }

    /// The connection for hyper, with what was read and not used put back;
    /// the kept dev-server connection goes to the pool.
    async fn hand_over(mut self, state: &AppState) -> Counted {
        if let Some(up) = self.up.take()
            && up.buf.is_empty()
        {
            state.preview.pool.adopt(up.authority, up.tcp).await;
        }
        self.io.unread(self.buf.freeze());
        self.io
    }
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
    if !path.starts_with('/') || path.split('?').next() == Some(AUTH_PATH) {
        return None;
    }
    let mut host = None;
    let mut close = false;
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

/// Sends `request` on `up` and reads the answer's head. `Ok(None)`: the
/// connection closed before a byte of the answer came. `Err(())`: no
/// usable answer (broken, not HTTP/1, framed in a way this path does not
/// take, an upgrade nobody asked for). Else the framing, whether the
/// connection can serve another request, and the head for the client.
async fn exchange_once(
    up: &mut Upstream,
    request: &[u8],
    head_only: bool,
) -> Result<Option<(Framing, bool, Vec<u8>)>, ()> {
    if up.tcp.write_all(request).await.is_err() {
        return Ok(None);
    }
    up.buf.clear();
    let mut received = false;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&up.buf) {
            Ok(httparse::Status::Complete(n)) => {
                let code = resp.code.unwrap_or(0);
                if code == 101 || !(100..=999).contains(&code) {
                    return Err(());
                }
                if code < 200 {
                    // Informational: dropped, the final answer follows.
                    up.buf.advance(n);
                    continue;
                }
                let answer = edit_answer(&resp, head_only)?;
                up.buf.advance(n);
                return Ok(Some(answer));
            }
            Ok(httparse::Status::Partial) if up.buf.len() < MAX_HEAD => {}
            _ => return Err(()),
        }
        up.buf.reserve(16 * 1024);
        match up.tcp.read_buf(&mut up.buf).await {
            Ok(n) if n > 0 => received = true,
            _ if !received => return Ok(None),
            _ => return Err(()),
        }
    }
}

/// The answer's framing, whether its connection may be kept, and its head
/// for the client: hop-by-hop headers dropped (and those its `Connection`
/// lists), `Transfer-Encoding: chunked` kept for a chunked body, which is
/// passed on as it came.
fn edit_answer(
    resp: &httparse::Response<'_, '_>,
    head_only: bool,
) -> Result<(Framing, bool, Vec<u8>), ()> {
    let code = resp.code.ok_or(())?;
    let mut chunked = false;
    let mut length: Option<u64> = None;
    let mut close = resp.version != Some(1);
    let mut listed: Vec<&str> = Vec::new();
    for h in resp.headers.iter() {
        let is = |n: &str| h.name.eq_ignore_ascii_case(n);
        if is("transfer-encoding") {
            // Only a plain `chunked` (once) is taken.
            if chunked
                || !proxy::visible(h.value)
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"))
            {
                return Err(());
            }
            chunked = true;
        } else if is("content-length") {
            for v in proxy::visible(h.value).ok_or(())?.split(',') {
                let v = v.trim();
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(());
                }
                let n: u64 = v.parse().map_err(|_| ())?;
                if length.is_some_and(|l| l != n) {
                    return Err(());
                }
                length = Some(n);
            }
        } else if is("connection") {
            for option in proxy::visible(h.value).ok_or(())?.split(',').map(str::trim) {
                if option.eq_ignore_ascii_case("close") {
                    close = true;
                } else if option.eq_ignore_ascii_case("keep-alive") {
                    if resp.version == Some(0) {
                        close = false;
                    }
                } else if !option.is_empty() {
                    listed.push(option);
                }
            }
        }
    }
    let framing = if head_only || code == 204 || code == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    let mut head = Vec::with_capacity(1024);
    head.extend_from_slice(format!("HTTP/1.1 {code} ").as_bytes());
    head.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name;
        if proxy::hop_by_hop(name)
            || name.eq_ignore_ascii_case("upgrade")
            || listed.iter().any(|l| l.eq_ignore_ascii_case(name))
            || (chunked && name.eq_ignore_ascii_case("content-length"))
        {
            continue;
        }
        push_header(&mut head, name.as_bytes(), h.value);
    }
    if framing == Framing::Chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let keep = !close && framing != Framing::Close;
    Ok((framing, keep, head))
}

/// Passes a body of `n` bytes after the head in `out`.
async fn pass_length(
    io: &mut Counted,
    up: &mut Upstream,
    out: &mut Vec<u8>,
    n: u64,
    down: &prometheus_client::metrics::counter::Counter,
) -> bool {
    let mut left = n;
    let first = up
        .buf
        .len()
        .min(usize::try_from(left).unwrap_or(usize::MAX));
    out.extend_from_slice(&up.buf[..first]);
    up.buf.advance(first);
    left -= first as u64;
    if io.write_all(out).await.is_err() {
        return false;
    }
    while left > 0 {
        up.buf.reserve(64 * 1024);
        match up.tcp.read_buf(&mut up.buf).await {
            Ok(r) if r > 0 => {}
            _ => return false,
        }
        let take = up
            .buf
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        if io.write_all(&up.buf[..take]).await.is_err() {
            return false;
        }
        up.buf.advance(take);
        left -= take as u64;
    }
    down.inc_by(n);
    true
}

/// Passes a chunked body after the head in `out`, chunk by chunk as it
/// came (extensions too), its trailers dropped.
async fn pass_chunked(
    io: &mut Counted,
    up: &mut Upstream,
    out: &mut Vec<u8>,
    down: &prometheus_client::metrics::counter::Counter,
) -> bool {
    let mut total = 0u64;
    loop {
        // The size line.
        let (used, size) = loop {
            match httparse::parse_chunk_size(&up.buf) {
                Ok(httparse::Status::Complete(found)) => break found,
                Ok(httparse::Status::Partial) if up.buf.len() < MAX_CHUNK_LINE => {
                    if !fill(up).await {
                        return false;
                    }
                }
                _ => return false,
            }
        };
        if size == 0 {
            up.buf.advance(used);
            // The trailer section: lines up to an empty one, dropped.
            loop {
                match up.buf.windows(2).position(|w| w == b"\r\n") {
                    Some(0) => {
                        up.buf.advance(2);
                        break;
                    }
                    Some(i) => up.buf.advance(i + 2),
                    None if up.buf.len() < MAX_HEAD => {
                        if !fill(up).await {
                            return false;
                        }
                    }
                    None => return false,
                }
            }
            out.extend_from_slice(b"0\r\n\r\n");
            if io.write_all(out).await.is_err() {
                return false;
            }
            down.inc_by(total);
            return true;
        }
        out.extend_from_slice(&up.buf[..used]);
        up.buf.advance(used);
        total = total.saturating_add(size);
        let mut left = size;
        while left > 0 {
            if up.buf.is_empty() {
                if io.write_all(out).await.is_err() {
                    return false;
                }
                out.clear();
                if !fill(up).await {
                    return false;
                }
            }
            let take = up
                .buf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            out.extend_from_slice(&up.buf[..take]);
            up.buf.advance(take);
            left -= take as u64;
        }
        // The chunk's own line end.
        while up.buf.len() < 2 {
            if !fill(up).await {
                return false;
            }
        }
        if &up.buf[..2] != b"\r\n" {
            return false;
        }
        up.buf.advance(2);
        out.extend_from_slice(b"\r\n");
        if out.len() >= 64 * 1024 {
            if io.write_all(out).await.is_err() {
                return false;
            }
            out.clear();
        }
    }
}

/// Passes a body that ends when the dev server closes its connection.
async fn pass_to_close(
    io: &mut Counted,
    up: &mut Upstream,
    out: &mut Vec<u8>,
    down: &prometheus_client::metrics::counter::Counter,
) -> bool {
    let mut total = up.buf.len() as u64;
    out.extend_from_slice(&up.buf);
    up.buf.clear();
    if io.write_all(out).await.is_err() {
        return false;
    }
    loop {
        up.buf.reserve(64 * 1024);
        match up.tcp.read_buf(&mut up.buf).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return false,
        }
        total += up.buf.len() as u64;
        if io.write_all(&up.buf).await.is_err() {
            return false;
        }
        up.buf.clear();
    }
    down.inc_by(total);
    true
}

/// Reads more from the dev server; false at its end or on an error.
async fn fill(up: &mut Upstream) -> bool {
    up.buf.reserve(16 * 1024);
    matches!(up.tcp.read_buf(&mut up.buf).await, Ok(n) if n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderName;

    type Pairs = Vec<(String, String)>;

    /// The headers a dev server gets, as sorted (lower-case name, value)
    /// pairs, from the fast path's edit of `pairs` and from the proxy's.
    fn both_edits(keys: &Keys, pairs: &[(&str, &str)], trusted: bool) -> (Pairs, Pairs) {
        let peer: SocketAddr = "192.0.2.7:50000".parse().unwrap();
        let mut raw = b"GET /p?q=1 HTTP/1.1\r\n".to_vec();
        for (k, v) in pairs {
            push_header(&mut raw, k.as_bytes(), v.as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(&raw).unwrap().is_complete());
        let mut out = Vec::new();
        edit_request(keys, &req, trusted, &peer.ip().to_string(), &mut out);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut sent = httparse::Request::new(&mut headers);
        assert!(sent.parse(&out).unwrap().is_complete(), "{out:?}");
        assert_eq!((sent.method, sent.path), (Some("GET"), Some("/p?q=1")));
        let mut fast: Pairs = sent
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        fast.sort();

        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        let host = map.get(header::HOST).cloned();
        proxy::edit_request(keys, &mut map, host, Some(peer), trusted, false);
        let mut slow: Pairs = map
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        slow.sort();
        (fast, slow)
    }

    #[test]
    fn the_fast_path_edits_request_headers_as_the_proxy_does() {
        let keys = Keys::new(b"0123456789abcdef0123", None);
        let ours = keys.sign("u", &["demo"], 3600).unwrap();
        let bearer = format!("Bearer {ours}");
        let cookie = format!("a=1; devgate_preview={ours}; b=2");
        let cases: Vec<Vec<(&str, &str)>> = vec![
            // A browser's navigation.
            vec![
                ("Host", "web.demo.localhost:8080"),
                ("User-Agent", "Mozilla/5.0"),
                ("Accept", "text/html"),
                ("Connection", "keep-alive"),
                ("Accept-Encoding", "gzip, br"),
            ],
            // The preview cookie among the app's, in two headers.
            vec![
                ("host", "web.demo.localhost"),
                ("Cookie", &cookie),
                ("cookie", "c=3"),
            ],
            // Only the preview cookie.
            vec![
                ("host", "web.demo.localhost"),
                ("cookie", "devgate_preview=x"),
            ],
            // The gateway's token goes, the app's own stays.
            vec![("host", "web.demo.localhost"), ("authorization", &bearer)],
            vec![
                ("host", "web.demo.localhost"),
                ("Authorization", "Bearer the-apps-own"),
            ],
            vec![
                ("host", "web.demo.localhost"),
                ("authorization", "Basic dTpw"),
                ("authorization", &bearer),
            ],
            // What a client says of where it came from, and hop-by-hop ones.
            vec![
                ("host", "web.demo.localhost"),
                ("X-Forwarded-For", "10.9.9.9"),
                ("x-forwarded-for", "10.8.8.8"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "evil.example"),
                ("X-Forwarded-Port", "443"),
                ("X-Real-IP", "10.9.9.9"),
                ("Forwarded", "for=10.9.9.9"),
                ("True-Client-IP", "10.9.9.9"),
                ("X-Client-IP", "10.9.9.9"),
                ("Via", "1.1 corp"),
                ("via", "1.0 other"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Proxy-Authorization", "Basic eDp5"),
                ("Proxy-Connection", "keep-alive"),
                ("Trailer", "x"),
            ],
            // Empty and odd values.
            vec![
                ("host", "web.demo.localhost"),
                ("x-forwarded-for", ""),
                ("via", ""),
                ("cookie", ""),
                ("x-empty", ""),
            ],
            vec![
                ("host", "web.demo.localhost"),
                ("x-forwarded-for", "caf\u{e9}"),
                ("via", "1.1 caf\u{e9}"),
            ],
        ];
        for pairs in &cases {
            for trusted in [false, true] {
                let (fast, slow) = both_edits(&keys, pairs, trusted);
                assert_eq!(fast, slow, "{pairs:?}, trusted {trusted}");
            }
        }
        // The edits did something in these cases (the comparison is not of
        // two copies of the input).
        let (fast, _) = both_edits(&keys, &cases[1], false);
        assert!(
            fast.contains(&("cookie".into(), "a=1; b=2; c=3".into())),
            "{fast:?}"
        );
        let (fast, _) = both_edits(&keys, &cases[6], true);
        assert!(
            fast.contains(&("x-forwarded-for".into(), "10.9.9.9, 192.0.2.7".into())),
            "{fast:?}"
        );
        assert!(fast.contains(&("via".into(), "1.1 corp, 1.1 devgate".into())));
        let (fast, _) = both_edits(&keys, &cases[6], false);
        assert!(fast.contains(&("x-forwarded-for".into(), "192.0.2.7".into())));
        assert!(!fast.iter().any(|(k, _)| k == "x-real-ip" || k == "te"));
    }

    /// Answer heads: the framing read and the head passed on.
    fn answer(raw: &str, head_only: bool) -> Result<(Framing, bool, String), ()> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        assert!(resp.parse(raw.as_bytes()).unwrap().is_complete());
        edit_answer(&resp, head_only)
            .map(|(f, keep, head)| (f, keep, String::from_utf8(head).unwrap()))
    }

    #[test]
    fn answers_are_framed_as_the_dev_server_framed_them() {
        let (f, keep, head) = answer(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nX-App: 2\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!((f, keep), (Framing::Length(5), true));
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-App: 2\r\n\r\n"
        );
        // Chunked wins over a length, which is dropped.
        let (f, keep, head) = answer(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nTrailer: x\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!((f, keep), (Framing::Chunked, true));
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        // Neither: to the close, never kept; HTTP/1.0 is not kept either.
        let (f, keep, _) = answer("HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert_eq!((f, keep), (Framing::Close, false));
        let (f, keep, _) = answer("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false).unwrap();
        assert_eq!((f, keep), (Framing::Length(1), false));
        let (_, keep, _) = answer(
            "HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(keep);
        let (_, keep, _) = answer(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(!keep);
        // No body: HEAD, 204, 304, whatever the headers say.
        for (raw, head_only) in [
            ("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true),
            (
                "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false,
            ),
        ] {
            let (f, keep, _) = answer(raw, head_only).unwrap();
            assert_eq!((f, keep), (Framing::Empty, true), "{raw}");
        }
        // Framings this path does not take (hyper's, then).
        for raw in [
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
        ] {
            assert!(answer(raw, false).is_err(), "{raw}");
        }
        let (f, _, _) = answer("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", false).unwrap();
        assert_eq!(f, Framing::Length(5));
    }
}
